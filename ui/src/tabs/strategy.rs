//! The strategy tab: the editor's fields, the validation of the plan they make (redone on
//! every edit), and the Simulate button.

use std::ops::RangeInclusive;

use pangu_strategies::strategy::CpComm;
use pangu_strategies::{Attention, GradAccumulation, OptShard, Precision, RankOrder};

use crate::editor::{Editor, DERIVED};
use crate::palette;
use crate::widgets::choose;
use crate::{Command, Tab, View};

/// The strategy tab (no state of its own: the editor's fields are the app's inputs).
#[derive(Debug, Clone, Default)]
pub struct StrategyTab;

impl StrategyTab {
    /// Draws the tab; edited fields and the Simulate button become commands.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        let mut e = view.editor.clone();
        fields(ui, &mut e);
        if e != *view.editor {
            out.push(Command::Edit(e));
        }
        ui.separator();
        match view.validation {
            Ok(p) => {
                let mem = p.max_memory();
                ui.colored_label(
                    palette::VALID,
                    format!(
                        "valid: {} — {:.2} GiB per device at most, {:.2} GiB usable, bubble {:.1} %",
                        p.strategy.summary(),
                        mem.total.0 as f64 / (1u64 << 30) as f64,
                        p.capacity.0 as f64 / (1u64 << 30) as f64,
                        100.0 * p.bubble_fraction()
                    ),
                );
            }
            Err(e) => {
                ui.colored_label(palette::ERROR, format!("invalid: {e}"));
            }
        }
        ui.horizontal(|ui| {
            let can = view.validation.is_ok() && !view.simulating;
            if ui.add_enabled(can, egui::Button::new("Simulate")).clicked() {
                out.push(Command::Simulate);
                out.push(Command::Show(Tab::Results));
            }
            if view.simulating {
                ui.spinner();
                ui.label("simulating…");
            }
        });
    }
}

/// The editor's widgets, editing `e` in place.
fn fields(ui: &mut egui::Ui, e: &mut Editor) {
    egui::Grid::new("strategy").num_columns(2).show(ui, |ui| {
        number(ui, "dp (0 = fill)", &mut e.dp, 0..=65536);
        number(ui, "tp", &mut e.tp, 1..=64);
        number(ui, "pp", &mut e.pp, 1..=256);
        number(ui, "cp (context parallel)", &mut e.cp, 1..=64);
        ui.label("cp exchange");
        choose(
            ui,
            "cp_comm",
            &mut e.cp_comm,
            [CpComm::Ring, CpComm::AllGather],
        );
        ui.end_row();
        number(
            ui,
            "micro-batches (0 = derive)",
            &mut e.micro_batches,
            0..=4096,
        );
        number(ui, "micro-batch size", &mut e.micro_batch_size, 1..=64);
        ui.label("schedule");
        choose(
            ui,
            "schedule",
            &mut e.schedule,
            ["gpipe", "1f1b", "interleaved:2", "interleaved:4"].map(String::from),
        );
        ui.end_row();
        ui.label("optimizer sharding");
        choose(ui, "opt_shard", &mut e.opt_shard, OptShard::ALL);
        ui.end_row();
        ui.label("remat");
        choose(
            ui,
            "remat",
            &mut e.remat,
            ["none", "selective", "full", "every:2", "every:4"].map(String::from),
        );
        ui.end_row();
        ui.label("sequence parallel");
        ui.checkbox(&mut e.seq_parallel, "");
        ui.end_row();
        ui.label("tp comm overlap");
        ui.checkbox(&mut e.tp_comm_overlap, "")
            .on_hover_text("Megatron's --tp-comm-overlap: needs tp > 1 and sequence parallel");
        ui.end_row();
        ui.label("grad accumulation");
        choose(
            ui,
            "grad_accumulation",
            &mut e.grad_accumulation,
            [GradAccumulation::Fused, GradAccumulation::Separate],
        );
        ui.end_row();
        ui.label("blocking p2p");
        ui.checkbox(&mut e.p2p_blocking, "").on_hover_text(
            "A pipeline stage waits for each send to finish (Megatron without --overlap-p2p-communication)",
        );
        ui.end_row();
        ui.label("rank order");
        choose(ui, "rank_order", &mut e.rank_order, RankOrder::all());
        ui.end_row();
        derived_or(ui, "precision", &mut e.precision, Precision::ALL);
        derived_or(ui, "attention", &mut e.attention, Attention::ALL);
    });
}

/// A grid row: a label and a choice of [`DERIVED`] or one of `options` (kept as text).
fn derived_or<T: std::fmt::Display>(
    ui: &mut egui::Ui,
    label: &str,
    value: &mut String,
    options: impl IntoIterator<Item = T>,
) {
    ui.label(label);
    let all =
        std::iter::once(DERIVED.to_string()).chain(options.into_iter().map(|o| o.to_string()));
    choose(ui, label, value, all);
    ui.end_row();
}

/// A grid row: a label and a number dragged within `range`.
fn number(ui: &mut egui::Ui, label: &str, v: &mut u32, range: RangeInclusive<u32>) {
    ui.label(label);
    ui.add(egui::DragValue::new(v).range(range));
    ui.end_row();
}
