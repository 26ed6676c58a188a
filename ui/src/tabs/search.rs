//! The search tab: runs the simulator's strategy search over the current model, cluster and
//! global batch in the background, within the space the user constrains (`DIM=V,...` entries
//! and a memory fraction, parsed by `pangu_strategies::search::SearchSpace`), shows its
//! progress, what each constraint removed, the ranked table and the Pareto scatter of memory
//! against step time; a click on a row or a point loads that strategy.

use egui::{Color32, Pos2, Sense, Stroke, Vec2};
use pangu_sim::search::SearchResult;
use pangu_strategies::search::{SearchSpace, SpaceError};
use pangu_strategies::{Plan, Strategy};

use crate::job::Job;
use crate::palette;
use crate::{Command, Tab, View};

/// The search tab's own state.
pub struct SearchTab {
    /// The last search, or why it failed.
    pub result: Option<Result<SearchResult, String>>,
    /// The space's entries, e.g. `tp=8 pp=8,16` (empty: the default space).
    pub space: String,
    /// Candidates must fit in this fraction of each device's usable memory.
    pub memory_fraction: f64,
}

impl Default for SearchTab {
    fn default() -> Self {
        SearchTab {
            result: None,
            space: String::new(),
            memory_fraction: 1.0,
        }
    }
}

impl SearchTab {
    /// The space of the entries and the memory fraction, or why it is refused.
    pub fn search_space(&self) -> Result<SearchSpace, SpaceError> {
        SearchSpace::from_text(&self.space)?.with_memory_fraction(self.memory_fraction)
    }
}

/// Starts a search of the strategies for `plan`'s model, cluster, devices, batch and
/// precision in `space`, with `plan`'s own strategy refined and compared.
pub fn spawn(plan: &Plan, space: SearchSpace) -> Job<SearchResult> {
    let (model, cluster) = (plan.model.clone(), plan.cluster.clone());
    let s = &plan.strategy;
    let (devices, batch, precision) = (s.devices, s.global_batch, s.precision);
    let own = s.clone();
    Job::spawn(move |progress| {
        space.check(devices, batch).map_err(|e| e.to_string())?;
        let space = space.with_context_parallel(model.seq_len);
        let report = |_: &str, done: usize, total: usize| progress.set(done, total);
        Ok(pangu_sim::search::search(
            &model,
            &cluster,
            devices,
            batch,
            precision,
            &space,
            8,
            Some(&own),
            &report,
        ))
    })
}

impl SearchTab {
    /// Draws the tab; Run search and a chosen strategy become commands.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        let space = self.constraints(ui);
        ui.horizontal(|ui| {
            let can = view.validation.is_ok() && view.searching.is_none() && space.is_ok();
            if ui
                .add_enabled(can, egui::Button::new("Run search"))
                .clicked()
            {
                if let Ok(s) = &space {
                    out.push(Command::Search(Box::new(s.clone())));
                }
            }
            if let Some((d, t)) = view.searching {
                ui.add(
                    egui::ProgressBar::new(if t > 0 { d as f32 / t as f32 } else { 0.0 })
                        .desired_width(240.0)
                        .text(format!("{d} / {t} strategies ranked")),
                );
            }
        });
        let mut load = None;
        match &self.result {
            None => {
                ui.label("search every dp × tp × pp, micro-batching, schedule, sharding, remat, sequence parallelism and placement for this model and cluster");
            }
            Some(Err(e)) => {
                ui.colored_label(palette::ERROR, e);
            }
            Some(Ok(s)) => {
                ui.label(format!(
                    "{} strategies, {} valid, {} fit; the best re-simulated. Click a row or a point to load it.",
                    s.candidates_total, s.candidates_valid, s.candidates_fitting
                ));
                let census = s.census.summary();
                if !census.is_empty() {
                    ui.label(format!("space: {census}"));
                }
                if let Some(own) = s.own.as_ref().and_then(|c| Some((c, c.refined_step_s?))) {
                    ui.label(format!(
                        "your strategy: {:.3} s simulated ({})",
                        own.1, own.0.summary
                    ));
                }
                let pts = points(s);
                ui.columns(2, |cols| {
                    let row = table(&mut cols[0], s, &pts);
                    let point = scatter(&mut cols[1], s, &pts);
                    load = point.or(row);
                });
            }
        }
        if let Some(st) = load {
            out.push(Command::LoadStrategy(Box::new(st)));
            out.push(Command::Show(Tab::Strategy));
        }
    }
}

impl SearchTab {
    /// The space field and the memory-fraction slider; the space they give, or why not (shown
    /// under the field).
    fn constraints(&mut self, ui: &mut egui::Ui) -> Result<SearchSpace, SpaceError> {
        ui.horizontal(|ui| {
            ui.label("space");
            ui.add(
                egui::TextEdit::singleline(&mut self.space)
                    .hint_text("e.g. tp=8 pp=8,16 mbs+=8 (empty: the default space)")
                    .desired_width(360.0),
            )
            .on_hover_text(
                "DIM=V1,V2 keeps only these values (adding those the default lacks); DIM+=V adds \
                 them. DIM: tp, pp, dp, micro_batch_size (mbs), micro_batches, vpp, schedule, \
                 opt_shard, remat, seq_parallel (sp), rank_order, precision",
            );
            ui.label("memory fraction");
            ui.add(egui::Slider::new(&mut self.memory_fraction, 0.05..=1.0).fixed_decimals(2));
        });
        let space = self.search_space();
        if let Err(e) = &space {
            ui.colored_label(palette::ERROR, e.to_string());
        }
        space
    }
}

/// Step time (refined where it was) and memory (GiB) of each ranked strategy.
fn points(s: &SearchResult) -> Vec<(f64, f64)> {
    s.ranked
        .iter()
        .map(|c| {
            (
                c.refined_step_s.unwrap_or(c.fast_step_s),
                c.memory_bytes as f64 / (1u64 << 30) as f64,
            )
        })
        .collect()
}

/// The best 50 strategies as rows (`pts` from [`points`]); returns the one clicked.
fn table(ui: &mut egui::Ui, s: &SearchResult, pts: &[(f64, f64)]) -> Option<Strategy> {
    let mut load = None;
    egui::ScrollArea::vertical().id_salt("rows").show(ui, |ui| {
        for (i, (c, (step, gib))) in s.ranked.iter().zip(pts).take(50).enumerate() {
            let text = format!("{:>2}  {step:.3} s  {gib:.1} GiB  {}", i + 1, c.summary);
            if ui.selectable_label(false, text).clicked() {
                load = Some(c.strategy.clone());
            }
        }
    });
    load
}

/// The Pareto scatter, memory against step time, the front highlighted; returns the strategy
/// nearest a click.
fn scatter(ui: &mut egui::Ui, s: &SearchResult, pts: &[(f64, f64)]) -> Option<Strategy> {
    let (resp, painter) =
        ui.allocate_painter(Vec2::new(ui.available_width(), 320.0), Sense::click());
    let (xmax, ymax) = pts
        .iter()
        .fold((1e-9f64, 1e-9f64), |a, p| (a.0.max(p.0), a.1.max(p.1)));
    let r = resp.rect.shrink(24.0);
    painter.rect_stroke(
        r,
        0.0,
        Stroke::new(1.0, Color32::GRAY),
        egui::StrokeKind::Inside,
    );
    painter.text(
        r.left_bottom() + Vec2::new(0.0, 4.0),
        egui::Align2::LEFT_TOP,
        format!("step time (0 – {xmax:.2} s) →"),
        egui::FontId::proportional(11.0),
        Color32::LIGHT_GRAY,
    );
    painter.text(
        r.left_top() - Vec2::new(0.0, 4.0),
        egui::Align2::LEFT_BOTTOM,
        format!("memory per device (0 – {ymax:.1} GiB)"),
        egui::FontId::proportional(11.0),
        Color32::LIGHT_GRAY,
    );
    let at = |p: (f64, f64)| {
        Pos2::new(
            r.min.x + (p.0 / xmax) as f32 * r.width(),
            r.max.y - (p.1 / ymax) as f32 * r.height(),
        )
    };
    for (i, &p) in pts.iter().enumerate() {
        let front = s.pareto.contains(&i);
        painter.circle_filled(
            at(p),
            if front { 4.0 } else { 2.0 },
            if front {
                Color32::from_rgb(255, 193, 7)
            } else {
                Color32::from_gray(150)
            },
        );
    }
    if !resp.clicked() {
        return None;
    }
    let pos = resp.interact_pointer_pos()?;
    let near = pts
        .iter()
        .enumerate()
        .min_by(|a, b| at(*a.1).distance(pos).total_cmp(&at(*b.1).distance(pos)))?;
    Some(s.ranked[near.0].strategy.clone())
}
