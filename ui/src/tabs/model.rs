//! The model tab: the model and cluster presets and the chip count, and the chosen model's
//! shape.

use pangu_model::ModelConfig;

use crate::widgets::choose;
use crate::{Command, View};

/// The model tab (no state of its own: the presets are the app's inputs).
#[derive(Debug, Clone, Default)]
pub struct ModelTab;

impl ModelTab {
    /// Draws the tab; a changed preset or chip count becomes a command.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        let (mut model, mut cluster, mut chips) =
            (view.model.to_string(), view.cluster.to_string(), view.chips);
        ui.horizontal(|ui| {
            ui.label("model preset");
            let names = pangu_model::presets().iter().map(|(n, _)| n.to_string());
            choose(ui, "model", &mut model, names);
            ui.label("cluster preset");
            let names = pangu_hardware::presets().iter().map(|(n, _)| n.to_string());
            choose(ui, "cluster", &mut cluster, names);
            ui.label("chips");
            ui.add(egui::DragValue::new(&mut chips).range(1..=65536));
        });
        if model != view.model {
            out.push(Command::SetModel(model.clone()));
        }
        if cluster != view.cluster {
            out.push(Command::SetCluster(cluster));
        }
        if chips != view.chips {
            out.push(Command::SetChips(chips));
        }
        let Ok(m) = ModelConfig::preset(&model) else {
            return;
        };
        // Sequence and batch are the reference run's, when the preset has one.
        let run = pangu_strategies::run_shape(&m, &pangu_strategies::StrategySpec::default()).ok();
        let m = run
            .as_ref()
            .and_then(|r| m.with_seq_len(r.seq_len).ok())
            .unwrap_or(m);
        let or_none = |v: Option<u32>| v.map_or("— (no reference run)".into(), |v| v.to_string());
        let p = m.params();
        egui::Grid::new("model").striped(true).show(ui, |ui| {
            for (k, v) in [
                ("parameters", format!("{:.3} B", p.total as f64 / 1e9)),
                ("layers (query layer included)", m.layers.to_string()),
                ("hidden", m.hidden.to_string()),
                ("heads", m.heads.to_string()),
                ("FFN", m.ffn.to_string()),
                ("vocabulary", m.vocab.to_string()),
                ("sequence", or_none(run.as_ref().map(|r| r.seq_len))),
                (
                    "global batch",
                    or_none(run.as_ref().map(|r| r.global_batch)),
                ),
                ("query layer", m.query_layer.to_string()),
                (
                    "FLOPs per token (6N + 12Lsd)",
                    format!("{:.3e}", m.flops_per_token()),
                ),
            ] {
                ui.label(k);
                ui.label(v);
                ui.end_row();
            }
        });
    }
}
