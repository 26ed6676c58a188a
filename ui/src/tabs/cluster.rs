//! The cluster tab: racks, servers, islands and chips, each chip coloured by its stage's
//! memory use or compute share; only the racks inside the clip rectangle are painted, so all
//! 2048 chips draw within a frame.

use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};
use pangu_strategies::Plan;

use crate::palette::heat;
use crate::simulation::SimOutput;
use crate::View;

/// The cluster view's own state.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterTab {
    /// Zoom (1: 7-pixel chips).
    pub zoom: f32,
    /// Colour chips by memory (else by compute utilisation).
    pub by_memory: bool,
}

impl Default for ClusterTab {
    fn default() -> ClusterTab {
        ClusterTab {
            zoom: 1.0,
            by_memory: true,
        }
    }
}

/// Sizes of the drawing at the current zoom.
struct Layout {
    chip: f32,
    gap: f32,
    island: u32,
    server_w: f32,
    server_h: f32,
    rack_h: f32,
}

impl ClusterTab {
    /// Draws the tab.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>) {
        ui.horizontal(|ui| {
            ui.label("zoom");
            ui.add(egui::Slider::new(&mut self.zoom, 0.25..=6.0).logarithmic(true));
            ui.radio_value(&mut self.by_memory, true, "memory use");
            ui.radio_value(&mut self.by_memory, false, "compute utilisation");
        });
        let Ok(plan) = view.validation else {
            ui.label("fix the strategy to see the chips");
            return;
        };
        let topo = &plan.cluster.topology;
        let per_server = topo.chips_per_server();
        let island = topo.island_size().max(1);
        let per_rack = topo.servers_per_rack();
        let chips = plan.cluster.chips();
        let racks = chips.div_ceil(per_server).div_ceil(per_rack);
        let z = self.zoom;
        let (chip, gap) = (7.0 * z, 1.0 * z);
        let islands = per_server / island;
        let server_w = islands as f32 * (island as f32 * (chip + gap) + 2.0 * gap) + 2.0 * gap;
        let server_h = chip + 4.0 * gap;
        let lay = Layout {
            chip,
            gap,
            island,
            server_w,
            server_h,
            rack_h: per_rack as f32 * (server_h + gap) + 14.0,
        };
        let cols = ((ui.available_width() / (server_w + 6.0)).floor() as u32).max(1);
        ui.label(format!(
            "{racks} racks × {per_rack} servers × {islands} islands × {island} chips ({} chips; {} used by the job). Chips: {}.",
            chips,
            plan.strategy.devices,
            if self.by_memory { "peak memory / usable HBM of their stage" } else { "compute share of the step (simulate first)" }
        ));
        // Value per stage: memory over capacity, or the simulated compute share.
        let per_stage = if self.by_memory {
            let cap = plan.capacity.0 as f64;
            plan.stages
                .iter()
                .map(|s| s.memory.total.0 as f64 / cap)
                .collect()
        } else {
            utilisation(plan, view.results)
        };
        egui::ScrollArea::both().show(ui, |ui| {
            let rows = racks.div_ceil(cols);
            let size = Vec2::new(
                cols as f32 * (server_w + 6.0),
                rows as f32 * (lay.rack_h + 6.0),
            );
            let (resp, painter) = ui.allocate_painter(size, Sense::hover());
            let origin = resp.rect.min;
            let visible = ui.clip_rect();
            for r in 0..racks {
                let rx = origin.x + (r % cols) as f32 * (server_w + 6.0);
                let ry = origin.y + (r / cols) as f32 * (lay.rack_h + 6.0);
                let rack = Rect::from_min_size(Pos2::new(rx, ry), Vec2::new(server_w, lay.rack_h));
                if rack.intersects(visible) {
                    draw_rack(&painter, plan, &lay, r, Pos2::new(rx, ry), &per_stage);
                }
            }
        });
    }
}

/// Mean compute fraction of each stage's simulated devices, when the last simulation is of
/// this plan's strategy (else empty: chips show as unknown).
fn utilisation(plan: &Plan, results: Option<&Result<SimOutput, String>>) -> Vec<f64> {
    match results {
        Some(Ok(o)) if o.plan.strategy == plan.strategy => {
            let mut v = vec![(0.0, 0u32); plan.strategy.pp as usize];
            for d in &o.report.devices {
                let b = &d.breakdown;
                let e = &mut v[d.stage as usize];
                e.0 += (b.compute + b.recompute) / o.report.step_time_s;
                e.1 += 1;
            }
            v.iter().map(|(s, n)| s / f64::from((*n).max(1))).collect()
        }
        _ => Vec::new(),
    }
}

/// Paints rack `r` with its top-left corner at `at`: its servers, and their chips coloured by
/// their stage's value.
fn draw_rack(
    painter: &egui::Painter,
    plan: &Plan,
    lay: &Layout,
    r: u32,
    at: Pos2,
    per_stage: &[f64],
) {
    let topo = &plan.cluster.topology;
    let per_server = topo.chips_per_server();
    let per_rack = topo.servers_per_rack();
    let chips = plan.cluster.chips();
    let servers = chips.div_ceil(per_server);
    let (chip, gap, island) = (lay.chip, lay.gap, lay.island);
    painter.rect_stroke(
        Rect::from_min_size(at, Vec2::new(lay.server_w, lay.rack_h)),
        2.0,
        Stroke::new(1.0, Color32::GRAY),
        egui::StrokeKind::Inside,
    );
    painter.text(
        Pos2::new(at.x + 2.0, at.y + 1.0),
        egui::Align2::LEFT_TOP,
        format!("rack {r}"),
        egui::FontId::proportional(10.0),
        Color32::LIGHT_GRAY,
    );
    for sv in 0..per_rack {
        let s = r * per_rack + sv;
        if s >= servers {
            break;
        }
        let sy = at.y + 14.0 + sv as f32 * (lay.server_h + gap);
        let srect = Rect::from_min_size(
            Pos2::new(at.x + gap, sy),
            Vec2::new(lay.server_w - 2.0 * gap, lay.server_h),
        );
        painter.rect_filled(srect, 1.0, Color32::from_gray(40));
        for c in 0..per_server {
            let id = s * per_server + c;
            if id >= chips {
                break;
            }
            let (isl, slot) = (c / island, c % island);
            let x = at.x
                + 2.0 * gap
                + isl as f32 * (island as f32 * (chip + gap) + 2.0 * gap)
                + slot as f32 * (chip + gap);
            let fill = if id >= plan.strategy.devices {
                Color32::from_gray(70)
            } else {
                let stage = plan.mesh.coords(id).pp as usize;
                heat(per_stage.get(stage).copied().unwrap_or(0.0))
            };
            painter.rect_filled(
                Rect::from_min_size(Pos2::new(x, sy + 2.0 * gap), Vec2::splat(chip)),
                0.0,
                fill,
            );
        }
    }
}
