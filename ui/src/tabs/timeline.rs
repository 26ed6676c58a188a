//! The timeline tab: a Gantt chart of the last simulated step, one device per stage (the
//! simulator's folded representatives) with its compute, tp and dp/opt streams, from the
//! simulator's shared [`pangu_sim::timeline`]. Only the spans inside the time window are
//! painted; dragging pans the window.

use egui::{Color32, Pos2, Rect, Sense, Vec2};
use pangu_sim::timeline::stream_name;
use pangu_strategies::Category;

use crate::palette::color;
use crate::View;

/// The Gantt chart's own state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimelineTab {
    /// Start of the window shown (s).
    pub from: f64,
    /// Length of the window shown (s).
    pub shown: f64,
}

impl TimelineTab {
    /// Shows the whole of a step of `step_s` seconds (a new simulation arrived).
    pub fn show_step(&mut self, step_s: f64) {
        (self.from, self.shown) = (0.0, step_s);
    }

    /// Draws the tab.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>) {
        let Some(Ok(o)) = view.results else {
            ui.label("simulate a strategy to see its timeline");
            return;
        };
        let step = o.report.step_time_s;
        ui.horizontal(|ui| {
            ui.label("shown");
            ui.add(
                egui::Slider::new(&mut self.shown, step / 200.0..=step)
                    .logarithmic(true)
                    .suffix(" s"),
            );
            ui.label("from");
            let max = (step - self.shown).max(0.0);
            ui.add(egui::Slider::new(&mut self.from, 0.0..=max).suffix(" s"));
            for c in Category::ALL {
                ui.colored_label(color(c), c.name());
            }
        });
        let tl = &o.timeline;
        let (t0, span) = (self.from, self.shown.max(1e-9));
        let row_h = 14.0;
        egui::ScrollArea::vertical().show(ui, |ui| {
            let width = ui.available_width();
            let label_w = 190.0;
            let (resp, painter) = ui.allocate_painter(
                Vec2::new(width, tl.rows.len() as f32 * row_h + 4.0),
                Sense::drag(),
            );
            if resp.dragged() {
                let dx = f64::from(resp.drag_delta().x) / f64::from(width - label_w) * span;
                self.from = (self.from - dx).clamp(0.0, (step - span).max(0.0));
            }
            let min = resp.rect.min;
            for (i, r) in tl.rows.iter().enumerate() {
                painter.text(
                    Pos2::new(min.x, min.y + i as f32 * row_h),
                    egui::Align2::LEFT_TOP,
                    format!(
                        "stage {} (rank {}) {}",
                        r.stage,
                        r.device,
                        stream_name(r.stream)
                    ),
                    egui::FontId::monospace(10.0),
                    Color32::LIGHT_GRAY,
                );
            }
            let x_of = |t: f64| min.x + label_w + ((t - t0) / span) as f32 * (width - label_w);
            for s in &tl.spans {
                let (start, end) = (s.start as f64 * 1e-9, s.end as f64 * 1e-9);
                if end < t0 || start > t0 + span {
                    continue;
                }
                let y = min.y + s.row as f32 * row_h;
                let r = Rect::from_min_max(
                    Pos2::new(x_of(start).max(min.x + label_w), y + 1.0),
                    Pos2::new(x_of(end).max(x_of(start) + 0.5), y + row_h - 1.0),
                );
                painter.rect_filled(r, 0.0, color(s.cat));
            }
        });
    }
}
