//! The results tab: the last simulation's step time, throughput and MFU, its breakdown by
//! category (a bar and a table) and the memory of each stage against usable HBM.

use egui::{Pos2, Rect, Sense, Vec2};
use pangu_strategies::{Category, StepReport};

use crate::palette::{self, color};
use crate::View;

/// The results tab (no state of its own: it shows the app's last simulation).
#[derive(Debug, Clone, Default)]
pub struct ResultsTab;

impl ResultsTab {
    /// Draws the tab.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>) {
        if view.simulating {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("simulating…");
            });
        }
        let Some(r) = view.results else {
            ui.label("no results yet: press Simulate on the Strategy tab");
            return;
        };
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                ui.colored_label(palette::ERROR, e);
                return;
            }
        };
        let rep = &o.report;
        ui.heading(format!(
            "step time {:.3} s — {:.0} tokens/s — MFU {:.3} — HFU {:.3}",
            rep.step_time_s, rep.tokens_per_s, rep.mfu, rep.hfu
        ));
        ui.label(format!(
            "simulated in {:.2} s{}",
            o.wall_s,
            o.folded
                .as_ref()
                .map_or(String::new(), |f| format!(", folded over {f}"))
        ));
        breakdown(ui, rep);
        ui.separator();
        ui.label("memory per device by stage, against usable HBM:");
        let cap = o.plan.capacity.0 as f64;
        for st in &o.plan.stages {
            let used = st.memory.total.0 as f64;
            ui.horizontal(|ui| {
                ui.label(format!("stage {:>3}", st.index));
                ui.add(
                    egui::ProgressBar::new((used / cap) as f32)
                        .desired_width(300.0)
                        .text(format!(
                            "{:.2} / {:.2} GiB",
                            used / (1u64 << 30) as f64,
                            cap / (1u64 << 30) as f64
                        )),
                );
            });
        }
    }
}

/// The breakdown of a device's step by category: a stacked bar, then a table.
fn breakdown(ui: &mut egui::Ui, rep: &StepReport) {
    let (resp, painter) =
        ui.allocate_painter(Vec2::new(ui.available_width(), 28.0), Sense::hover());
    let mut x = resp.rect.min.x;
    let w = resp.rect.width();
    for c in Category::ALL {
        let f = (rep.breakdown.get(c) / rep.step_time_s) as f32;
        let r = Rect::from_min_size(Pos2::new(x, resp.rect.min.y), Vec2::new(f * w, 28.0));
        painter.rect_filled(r, 0.0, color(c));
        x += f * w;
    }
    egui::Grid::new("breakdown").striped(true).show(ui, |ui| {
        ui.label("category");
        ui.label("seconds per device");
        ui.label("fraction");
        ui.end_row();
        for c in Category::ALL {
            let v = rep.breakdown.get(c);
            ui.colored_label(color(c), c.name());
            ui.label(format!("{v:.4}"));
            ui.label(format!("{:.1} %", 100.0 * v / rep.step_time_s));
            ui.end_row();
        }
    });
}
