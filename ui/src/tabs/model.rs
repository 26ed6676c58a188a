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
        let p = m.params();
        egui::Grid::new("model").striped(true).show(ui, |ui| {
            for (k, v) in [
                ("parameters", format!("{:.3} B", p.total as f64 / 1e9)),
                ("layers (query layer included)", m.layers.to_string()),
                ("hidden", m.hidden.to_string()),
                ("heads", m.heads.to_string()),
                ("FFN", m.ffn.to_string()),
                ("vocabulary", m.vocab.to_string()),
                ("sequence", m.seq_len.to_string()),
                ("global batch", m.global_batch.to_string()),
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
