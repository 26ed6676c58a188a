//! The what-if tab: sliders for the network bandwidth and the chip count; the plan is
//! revalidated as they move and, when live, re-simulated a moment after they stop.

use pangu_hardware::Cluster;

use crate::palette;
use crate::{Command, View};

/// The what-if tab's own state.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIfTab {
    /// Re-simulate as the sliders move.
    pub live: bool,
}

impl Default for WhatIfTab {
    fn default() -> WhatIfTab {
        WhatIfTab { live: true }
    }
}

impl WhatIfTab {
    /// Draws the tab; moved sliders become commands.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        ui.label("Move a slider: the step is re-simulated a moment after it stops.");
        let (mut bandwidth, mut chips) = (view.bandwidth, view.chips);
        ui.add(
            egui::Slider::new(&mut bandwidth, 0.125..=8.0)
                .logarithmic(true)
                .text("× network bandwidth (NICs and islands)"),
        );
        let per = Cluster::from_name(&format!("{}:{}", view.cluster, view.chips))
            .map_or(8, |c| c.topology.chips_per_server());
        ui.add(
            egui::Slider::new(&mut chips, per..=8192)
                .logarithmic(true)
                .step_by(f64::from(per))
                .text("chips"),
        );
        ui.checkbox(&mut self.live, "re-simulate live");
        if bandwidth != view.bandwidth {
            out.push(Command::SetBandwidth(bandwidth));
        }
        if chips != view.chips {
            out.push(Command::SetChips(chips));
        }
        if (bandwidth, chips) != (view.bandwidth, view.chips) && self.live {
            out.push(Command::SimulateSoon);
        }
        match view.validation {
            Err(e) => {
                ui.colored_label(palette::ERROR, e);
            }
            Ok(_) => {
                if let Some(Ok(o)) = view.results {
                    ui.heading(format!(
                        "{:.3} s per step, {:.0} tokens/s, MFU {:.3} ({} chips, {:.2}× bandwidth)",
                        o.report.step_time_s,
                        o.report.tokens_per_s,
                        o.report.mfu,
                        o.plan.strategy.devices,
                        view.bandwidth
                    ));
                }
                if view.simulating || view.simulation_pending {
                    ui.spinner();
                }
            }
        }
    }
}
