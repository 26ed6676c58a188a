//! `pangu-ui`: an egui desktop app over the same crates as the `pangu` CLI.
//!
//! Tabs: the cluster (racks, servers, islands and chips, coloured by memory use or compute
//! utilisation, zoomable to all 2048 chips), the model, the strategy editor (validated as you
//! type, by the same `Plan::build` as the CLI), results (breakdown, memory per stage against
//! HBM, MFU), the timeline of the simulated step (a Gantt chart of every stage's compute and
//! communication streams), search (progress, table, Pareto scatter; a click loads a strategy),
//! what-if sliders (network bandwidth and chip count, re-simulated live) and a training
//! monitor (the real trainer on pangu-alpha-tiny, loss plotted as it falls). Simulation,
//! search and training run on background threads; the UI polls their channels each frame.
//! Everything it shows comes from the library crates: this crate only presents.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};
use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::{
    Category, OptShard, Plan, RankOrder, Remat, ScheduleKind, StepReport, StrategySpec,
};

/// The tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Topology and chips.
    Cluster,
    /// Model shape.
    Model,
    /// Strategy editor.
    Strategy,
    /// Step report.
    Results,
    /// Gantt chart of the step.
    Timeline,
    /// Strategy search.
    Search,
    /// Bandwidth and chip-count sliders.
    WhatIf,
    /// Live training.
    Training,
}

impl Tab {
    /// The tab of a name (`what-if` for the sliders).
    pub fn from_name(name: &str) -> Option<Tab> {
        Tab::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(t, _)| *t)
    }

    const ALL: [(Tab, &'static str); 8] = [
        (Tab::Cluster, "Cluster"),
        (Tab::Model, "Model"),
        (Tab::Strategy, "Strategy"),
        (Tab::Results, "Results"),
        (Tab::Timeline, "Timeline"),
        (Tab::Search, "Search"),
        (Tab::WhatIf, "What-if"),
        (Tab::Training, "Training"),
    ];
}

/// A result computed on a background thread.
pub struct Job<T> {
    rx: Receiver<Result<T, String>>,
    /// When it started.
    pub started: Instant,
}

impl<T: Send + 'static> Job<T> {
    /// Runs `f` on a new thread.
    pub fn spawn(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Job<T> {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        Job {
            rx,
            started: Instant::now(),
        }
    }

    /// The result, once it is there.
    pub fn poll(&self) -> Option<Result<T, String>> {
        self.rx.try_recv().ok()
    }
}

/// One bar of the timeline: a task of a device's stream.
#[derive(Debug, Clone, Copy)]
pub struct Bar {
    /// Row (a representative device of a stage, and a stream).
    pub row: usize,
    /// Start and end (s).
    pub start: f64,
    /// End (s).
    pub end: f64,
    /// Category.
    pub cat: Category,
}

/// What a simulation produced for display.
#[derive(Debug, Clone)]
pub struct SimOutput {
    /// The plan simulated.
    pub plan: Plan,
    /// Its report.
    pub report: StepReport,
    /// Timeline rows (`rank r stage s: stream`) and bars.
    pub rows: Vec<String>,
    /// Bars.
    pub bars: Vec<Bar>,
    /// Simulation wall time.
    pub wall_s: f64,
    /// Folding used.
    pub folded: Option<String>,
}

/// Simulates `plan` and keeps one device per stage for the timeline.
pub fn simulate(plan: Plan) -> Result<SimOutput, String> {
    let t0 = Instant::now();
    let (run, w) = pangu_sim::simulate_full(&plan, pangu_sim::Options::default())
        .map_err(|e| e.to_string())?;
    let wall_s = t0.elapsed().as_secs_f64();
    // One simulated device per stage, streams compute / tp / dp.
    let mut shown: Vec<(u32, u32)> = Vec::new();
    for &d in &w.devices {
        let st = plan.mesh.coords(d).pp;
        if !shown.iter().any(|&(s, _)| s == st) {
            shown.push((st, d));
        }
    }
    shown.sort_unstable();
    let mut rows = Vec::new();
    let mut row_of = std::collections::HashMap::new();
    for &(st, d) in &shown {
        for (k, name) in ["compute", "tp", "dp/opt"].iter().enumerate() {
            row_of.insert((d, k), rows.len());
            rows.push(format!("stage {st} (rank {d}) {name}"));
        }
    }
    let mut bars = Vec::new();
    for (t, task) in w.tasks.iter().enumerate() {
        let stream = task.stream as usize;
        let Some(&row) = row_of.get(&(task.device, stream.min(2))) else {
            continue;
        };
        if stream > 2 {
            continue;
        }
        let (s, e) = run.times[t];
        if e <= s {
            continue;
        }
        let cat = match task.work {
            pangu_sim::workload::Work::Compute { cat, .. } => cat,
            pangu_sim::workload::Work::Coll { inst } => w.colls[inst as usize].cat,
            _ => Category::PpComm,
        };
        bars.push(Bar {
            row,
            start: s as f64 * 1e-9,
            end: e as f64 * 1e-9,
            cat,
        });
    }
    Ok(SimOutput {
        plan,
        report: run.report,
        rows,
        bars,
        wall_s,
        folded: run.folded,
    })
}

/// The colour of a breakdown category.
pub fn color(c: Category) -> Color32 {
    match c {
        Category::Compute => Color32::from_rgb(76, 175, 80),
        Category::Recompute => Color32::from_rgb(139, 195, 74),
        Category::TpComm => Color32::from_rgb(33, 150, 243),
        Category::DpComm => Color32::from_rgb(156, 39, 176),
        Category::PpComm => Color32::from_rgb(255, 152, 0),
        Category::OptComm => Color32::from_rgb(233, 30, 99),
        Category::Bubble => Color32::from_rgb(158, 158, 158),
        Category::Idle => Color32::from_rgb(96, 96, 96),
    }
}

/// The strategy editor's fields (0 means "derive it", as an omitted flag does).
#[derive(Debug, Clone, PartialEq)]
pub struct Editor {
    /// Data-parallel degree (0: fill the devices).
    pub dp: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Micro-batches (0: from the micro-batch size).
    pub micro_batches: u32,
    /// Micro-batch size.
    pub micro_batch_size: u32,
    /// Schedule.
    pub schedule: String,
    /// Optimizer sharding.
    pub opt_shard: OptShard,
    /// Remat.
    pub remat: String,
    /// Sequence parallelism.
    pub seq_parallel: bool,
    /// Rank numbering (placement).
    pub rank_order: RankOrder,
}

impl Editor {
    fn from_strategy(s: &pangu_strategies::Strategy) -> Editor {
        Editor {
            dp: s.dp,
            tp: s.tp,
            pp: s.pp,
            micro_batches: s.micro_batches,
            micro_batch_size: s.micro_batch_size,
            schedule: s.schedule.to_string(),
            opt_shard: s.opt_shard,
            remat: s.remat.to_string(),
            seq_parallel: s.seq_parallel,
            rank_order: s.rank_order,
        }
    }

    /// As a strategy spec; errors name the field.
    pub fn spec(&self) -> Result<StrategySpec, String> {
        let nz = |v: u32| (v > 0).then_some(v);
        Ok(StrategySpec {
            dp: nz(self.dp),
            tp: Some(self.tp),
            pp: Some(self.pp),
            micro_batches: nz(self.micro_batches),
            micro_batch_size: nz(self.micro_batch_size),
            schedule: Some(
                self.schedule
                    .parse::<ScheduleKind>()
                    .map_err(|e| format!("schedule: {e}"))?,
            ),
            opt_shard: Some(self.opt_shard),
            remat: Some(
                self.remat
                    .parse::<Remat>()
                    .map_err(|e| format!("remat: {e}"))?,
            ),
            seq_parallel: Some(self.seq_parallel),
            rank_order: Some(self.rank_order),
            ..StrategySpec::default()
        })
    }
}

/// Live training on pangu-alpha-tiny.
pub struct Training {
    rx: Receiver<Result<(u64, f64), String>>,
    stop: Arc<AtomicBool>,
    /// (step, loss) so far.
    pub losses: Vec<(u64, f64)>,
    /// Status line.
    pub status: String,
}

impl Training {
    fn start(steps: u64) -> Training {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        std::thread::spawn(move || {
            let r = (|| -> Result<(), String> {
                use pangu_trainer::{data, tokenizer::Tokenizer, train};
                let path = [
                    "data/zh_poetry_hans.txt",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../data/zh_poetry_hans.txt"),
                ]
                .into_iter()
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or("data/zh_poetry_hans.txt not found: run pangu-ui from the repository")?;
                let text =
                    data::read_corpus(std::path::Path::new(path)).map_err(|e| e.to_string())?;
                // The first 2 MB: a tokenizer in seconds, and plenty for a live curve.
                let end = (0..=text.len().min(2_000_000))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let (tr, val) = data::split(&text[..end]);
                let cfg = ModelConfig::preset("pangu-alpha-tiny").map_err(|e| e.to_string())?;
                let tok = Tokenizer::train(tr, cfg.vocab as usize).map_err(|e| e.to_string())?;
                let mut s = train::Settings::for_model(&cfg, steps);
                s.lr = 1.5e-3;
                s.dropout = 0.0;
                let mut run = train::Run::new(&cfg, s, tok, tr, val).map_err(|e| e.to_string())?;
                while run.step < steps && !halt.load(Ordering::Relaxed) {
                    let info = run.step();
                    if tx.send(Ok((info.step, info.loss))).is_err() {
                        break;
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                let _ = tx.send(Err(e));
            }
        });
        Training {
            rx,
            stop,
            losses: Vec::new(),
            status: "preparing: tokenizer and data (a few seconds)".into(),
        }
    }
}

/// The app.
pub struct App {
    /// Current tab.
    pub tab: Tab,
    /// Model preset.
    pub model: String,
    /// Cluster preset.
    pub cluster: String,
    /// Chips of the cluster.
    pub chips: u32,
    /// Strategy editor.
    pub editor: Editor,
    /// The last validation: the plan, or why it is invalid.
    pub validation: Result<Plan, String>,
    validated: Option<(String, String, u32, Editor, f32)>,
    /// Running simulation.
    pub sim_job: Option<Job<SimOutput>>,
    /// Last simulation.
    pub results: Option<Result<SimOutput, String>>,
    /// Running search and its progress (done, total).
    pub search_job: Option<Job<pangu_sim::search::SearchResult>>,
    search_progress: Arc<(AtomicUsize, AtomicUsize)>,
    /// Last search.
    pub search: Option<Result<pangu_sim::search::SearchResult, String>>,
    /// What-if: network bandwidth multiplier.
    pub bandwidth: f32,
    /// What-if: re-simulate as sliders move.
    pub live: bool,
    whatif_changed: Option<Instant>,
    /// Training monitor.
    pub training: Option<Training>,
    /// Cluster view zoom.
    pub zoom: f32,
    /// Colour chips by memory (else by compute utilisation).
    pub by_memory: bool,
    /// Time of the last frame (ms).
    pub frame_ms: f32,
    /// Show the frame time in the status bar (off for snapshot images).
    pub show_frame_ms: bool,
    /// Timeline zoom (seconds shown) and start.
    pub view: (f64, f64),
}

impl Default for App {
    fn default() -> App {
        App::new("pangu-alpha-200b", "ascend910", 2048)
    }
}

impl App {
    /// The app on a model and cluster preset, with the model's reference strategy.
    pub fn new(model: &str, cluster: &str, chips: u32) -> App {
        let mut app = App {
            tab: Tab::Strategy,
            model: model.into(),
            cluster: cluster.into(),
            chips,
            editor: Editor {
                dp: 0,
                tp: 1,
                pp: 1,
                micro_batches: 0,
                micro_batch_size: 1,
                schedule: "1f1b".into(),
                opt_shard: OptShard::None,
                remat: "none".into(),
                seq_parallel: false,
                rank_order: RankOrder::PANGU,
            },
            validation: Err("not validated yet".into()),
            validated: None,
            sim_job: None,
            results: None,
            search_job: None,
            search_progress: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            search: None,
            bandwidth: 1.0,
            live: true,
            whatif_changed: None,
            training: None,
            zoom: 1.0,
            by_memory: true,
            frame_ms: 0.0,
            show_frame_ms: true,
            view: (0.0, 0.0),
        };
        // Start from the reference strategy of the model, when it has one.
        if let (Ok(m), Ok(c)) = (
            ModelConfig::preset(model),
            Cluster::from_name(&format!("{cluster}:{chips}")),
        ) {
            if let Ok(r) = pangu_strategies::resolve_inputs(&m, Some(c), &StrategySpec::default()) {
                app.editor = Editor::from_strategy(&r.strategy);
            }
        }
        app.revalidate();
        app
    }

    /// Builds the plan of the current inputs (instant validation).
    pub fn revalidate(&mut self) {
        let key = (
            self.model.clone(),
            self.cluster.clone(),
            self.chips,
            self.editor.clone(),
            self.bandwidth,
        );
        if self.validated.as_ref() == Some(&key) {
            return;
        }
        self.validated = Some(key);
        self.validation = self.plan();
    }

    fn plan(&self) -> Result<Plan, String> {
        let m = ModelConfig::preset(&self.model).map_err(|e| e.to_string())?;
        let text = pangu_hardware::preset_toml(&self.cluster).map_err(|e| e.to_string())?;
        let mut spec = pangu_hardware::ClusterSpec::from_toml(text, &self.cluster)
            .map_err(|e| e.to_string())?;
        spec.chips = self.chips;
        let f = f64::from(self.bandwidth);
        spec.network.nic.bandwidth = pangu_hardware::Bandwidth(spec.network.nic.bandwidth.0 * f);
        spec.server.island.link.bandwidth =
            pangu_hardware::Bandwidth(spec.server.island.link.bandwidth.0 * f);
        let cluster = Cluster::new(spec).map_err(|e| e.to_string())?;
        let user = self.editor.spec()?;
        let r = pangu_strategies::resolve_inputs(&m, Some(cluster), &user)
            .map_err(|e| e.to_string())?;
        Plan::new(&m, &r.cluster, &r.strategy).map_err(|e| e.to_string())
    }

    /// Starts a simulation of the current plan in the background.
    pub fn start_simulation(&mut self) {
        if let Ok(p) = &self.validation {
            let p = p.clone();
            self.sim_job = Some(Job::spawn(move || simulate(p)));
        }
    }

    /// Starts a search over the current model, cluster and global batch.
    pub fn start_search(&mut self) {
        let Ok(p) = &self.validation else { return };
        let (model, cluster) = (p.model.clone(), p.cluster.clone());
        let (devices, batch, precision) = (
            p.strategy.devices,
            p.strategy.global_batch,
            p.strategy.precision,
        );
        let own = p.strategy.clone();
        let progress = Arc::clone(&self.search_progress);
        progress.0.store(0, Ordering::Relaxed);
        progress.1.store(0, Ordering::Relaxed);
        self.search_job = Some(Job::spawn(move || {
            let space = pangu_strategies::search::SearchSpace::default();
            let report = |_: &str, done: usize, total: usize| {
                progress.0.store(done, Ordering::Relaxed);
                progress.1.store(total, Ordering::Relaxed);
            };
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
        }));
    }

    /// Loads a strategy into the editor.
    pub fn load(&mut self, s: &pangu_strategies::Strategy) {
        self.editor = Editor::from_strategy(s);
        self.chips = self.chips.max(s.devices);
        self.revalidate();
    }

    fn poll(&mut self, ctx: &egui::Context) {
        if let Some(r) = self.sim_job.as_ref().and_then(Job::poll) {
            self.sim_job = None;
            if let Ok(o) = &r {
                self.view = (0.0, o.report.step_time_s);
            }
            self.results = Some(r);
        }
        if let Some(r) = self.search_job.as_ref().and_then(Job::poll) {
            self.search_job = None;
            self.search = Some(r);
        }
        if let Some(t) = &mut self.training {
            while let Ok(m) = t.rx.try_recv() {
                match m {
                    Ok((step, loss)) => {
                        t.losses.push((step, loss));
                        t.status = format!("step {step}: loss {loss:.4}");
                    }
                    Err(e) => t.status = format!("error: {e}"),
                }
            }
        }
        // What-if: re-simulate a moment after the sliders stop moving.
        if let Some(at) = self.whatif_changed {
            if at.elapsed() > Duration::from_millis(250) && self.sim_job.is_none() {
                self.whatif_changed = None;
                self.start_simulation();
            }
        }
        let busy = self.sim_job.is_some()
            || self.search_job.is_some()
            || self.whatif_changed.is_some()
            || self
                .training
                .as_ref()
                .is_some_and(|t| !t.stop.load(Ordering::Relaxed));
        if busy {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    /// Draws one frame.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let t0 = Instant::now();
        self.poll(ctx);
        egui::TopBottomPanel::top("tabs").show(ctx, |ui| {
            ui.horizontal(|ui| {
                ui.heading("PanGu twin");
                ui.separator();
                for (t, name) in Tab::ALL {
                    ui.selectable_value(&mut self.tab, t, name);
                }
            });
        });
        egui::TopBottomPanel::bottom("status").show(ctx, |ui| {
            ui.horizontal(|ui| {
                match &self.validation {
                    Ok(p) => ui.label(format!(
                        "{} on {} × {}: {}",
                        p.model.name,
                        p.strategy.devices,
                        p.cluster.spec.chip.name,
                        p.strategy.summary()
                    )),
                    Err(e) => ui.colored_label(Color32::from_rgb(229, 57, 53), e),
                };
                if self.show_frame_ms {
                    ui.separator();
                    ui.label(format!("frame {:.1} ms", self.frame_ms));
                }
            });
        });
        egui::CentralPanel::default().show(ctx, |ui| match self.tab {
            Tab::Cluster => self.cluster_tab(ui),
            Tab::Model => self.model_tab(ui),
            Tab::Strategy => self.strategy_tab(ui),
            Tab::Results => self.results_tab(ui),
            Tab::Timeline => self.timeline_tab(ui),
            Tab::Search => self.search_tab(ui),
            Tab::WhatIf => self.whatif_tab(ui),
            Tab::Training => self.training_tab(ui),
        });
        self.frame_ms = t0.elapsed().as_secs_f32() * 1e3;
    }

    fn cluster_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label("zoom");
            ui.add(egui::Slider::new(&mut self.zoom, 0.25..=6.0).logarithmic(true));
            ui.radio_value(&mut self.by_memory, true, "memory use");
            ui.radio_value(&mut self.by_memory, false, "compute utilisation");
        });
        let Ok(plan) = &self.validation else {
            ui.label("fix the strategy to see the chips");
            return;
        };
        let topo = &plan.cluster.topology;
        let per_server = topo.chips_per_server();
        let island = topo.island_size().max(1);
        let per_rack = topo.servers_per_rack();
        let chips = plan.cluster.chips();
        let servers = chips.div_ceil(per_server);
        let racks = servers.div_ceil(per_rack);
        // Utilisation per stage: mean compute fraction of its simulated devices.
        let util: Vec<f64> = match &self.results {
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
        };
        let cap = plan.capacity.0 as f64;
        let z = self.zoom;
        let chip = 7.0 * z;
        let gap = 1.0 * z;
        let islands = per_server / island;
        let server_w = islands as f32 * (island as f32 * (chip + gap) + 2.0 * gap) + 2.0 * gap;
        let server_h = chip + 4.0 * gap;
        let rack_h = per_rack as f32 * (server_h + gap) + 14.0;
        let cols = ((ui.available_width() / (server_w + 6.0)).floor() as u32).max(1);
        ui.label(format!(
            "{racks} racks × {per_rack} servers × {islands} islands × {island} chips ({} chips; {} used by the job). Chips: {}.",
            chips,
            plan.strategy.devices,
            if self.by_memory { "peak memory / usable HBM of their stage" } else { "compute share of the step (simulate first)" }
        ));
        egui::ScrollArea::both().show(ui, |ui| {
            let rows = racks.div_ceil(cols);
            let size = Vec2::new(cols as f32 * (server_w + 6.0), rows as f32 * (rack_h + 6.0));
            let (resp, painter) = ui.allocate_painter(size, Sense::hover());
            let origin = resp.rect.min;
            let visible = ui.clip_rect();
            for r in 0..racks {
                let rx = origin.x + (r % cols) as f32 * (server_w + 6.0);
                let ry = origin.y + (r / cols) as f32 * (rack_h + 6.0);
                let rack = Rect::from_min_size(Pos2::new(rx, ry), Vec2::new(server_w, rack_h));
                if !rack.intersects(visible) {
                    continue;
                }
                painter.rect_stroke(
                    rack,
                    2.0,
                    Stroke::new(1.0, Color32::GRAY),
                    egui::StrokeKind::Inside,
                );
                painter.text(
                    Pos2::new(rx + 2.0, ry + 1.0),
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
                    let sy = ry + 14.0 + sv as f32 * (server_h + gap);
                    let srect = Rect::from_min_size(
                        Pos2::new(rx + gap, sy),
                        Vec2::new(server_w - 2.0 * gap, server_h),
                    );
                    painter.rect_filled(srect, 1.0, Color32::from_gray(40));
                    for c in 0..per_server {
                        let id = s * per_server + c;
                        if id >= chips {
                            break;
                        }
                        let (isl, slot) = (c / island, c % island);
                        let x = rx
                            + 2.0 * gap
                            + isl as f32 * (island as f32 * (chip + gap) + 2.0 * gap)
                            + slot as f32 * (chip + gap);
                        let fill = if id >= plan.strategy.devices {
                            Color32::from_gray(70)
                        } else {
                            let stage = plan.mesh.coords(id).pp as usize;
                            let v = if self.by_memory {
                                plan.stages[stage].memory.total.0 as f64 / cap
                            } else {
                                util.get(stage).copied().unwrap_or(0.0)
                            };
                            heat(v)
                        };
                        painter.rect_filled(
                            Rect::from_min_size(Pos2::new(x, sy + 2.0 * gap), Vec2::splat(chip)),
                            0.0,
                            fill,
                        );
                    }
                }
            }
        });
    }

    fn model_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label("model preset");
            egui::ComboBox::from_id_salt("model")
                .selected_text(&self.model)
                .show_ui(ui, |ui| {
                    for (name, _) in pangu_model::presets() {
                        ui.selectable_value(&mut self.model, (*name).to_string(), *name);
                    }
                });
            ui.label("cluster preset");
            egui::ComboBox::from_id_salt("cluster")
                .selected_text(&self.cluster)
                .show_ui(ui, |ui| {
                    for (name, _) in pangu_hardware::presets() {
                        ui.selectable_value(&mut self.cluster, (*name).to_string(), *name);
                    }
                });
            ui.label("chips");
            ui.add(egui::DragValue::new(&mut self.chips).range(1..=65536));
        });
        self.revalidate();
        if let Ok(m) = ModelConfig::preset(&self.model) {
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

    fn strategy_tab(&mut self, ui: &mut egui::Ui) {
        egui::Grid::new("strategy").num_columns(2).show(ui, |ui| {
            let e = &mut self.editor;
            ui.label("dp (0 = fill)");
            ui.add(egui::DragValue::new(&mut e.dp).range(0..=65536));
            ui.end_row();
            ui.label("tp");
            ui.add(egui::DragValue::new(&mut e.tp).range(1..=64));
            ui.end_row();
            ui.label("pp");
            ui.add(egui::DragValue::new(&mut e.pp).range(1..=256));
            ui.end_row();
            ui.label("micro-batches (0 = derive)");
            ui.add(egui::DragValue::new(&mut e.micro_batches).range(0..=4096));
            ui.end_row();
            ui.label("micro-batch size");
            ui.add(egui::DragValue::new(&mut e.micro_batch_size).range(1..=64));
            ui.end_row();
            ui.label("schedule");
            egui::ComboBox::from_id_salt("schedule")
                .selected_text(&e.schedule)
                .show_ui(ui, |ui| {
                    for s in ["gpipe", "1f1b", "interleaved:2", "interleaved:4"] {
                        ui.selectable_value(&mut e.schedule, s.to_string(), s);
                    }
                });
            ui.end_row();
            ui.label("optimizer sharding");
            egui::ComboBox::from_id_salt("opt_shard")
                .selected_text(e.opt_shard.to_string())
                .show_ui(ui, |ui| {
                    for o in OptShard::ALL {
                        ui.selectable_value(&mut e.opt_shard, o, o.to_string());
                    }
                });
            ui.end_row();
            ui.label("remat");
            egui::ComboBox::from_id_salt("remat")
                .selected_text(&e.remat)
                .show_ui(ui, |ui| {
                    for s in ["none", "selective", "full", "every:2", "every:4"] {
                        ui.selectable_value(&mut e.remat, s.to_string(), s);
                    }
                });
            ui.end_row();
            ui.label("sequence parallel");
            ui.checkbox(&mut e.seq_parallel, "");
            ui.end_row();
            ui.label("rank order");
            egui::ComboBox::from_id_salt("rank_order")
                .selected_text(e.rank_order.to_string())
                .show_ui(ui, |ui| {
                    for o in RankOrder::all() {
                        ui.selectable_value(&mut e.rank_order, o, o.to_string());
                    }
                });
            ui.end_row();
        });
        self.revalidate();
        ui.separator();
        match &self.validation {
            Ok(p) => {
                let mem = p.max_memory();
                ui.colored_label(
                    Color32::from_rgb(67, 160, 71),
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
                ui.colored_label(Color32::from_rgb(229, 57, 53), format!("invalid: {e}"));
            }
        }
        ui.horizontal(|ui| {
            let can = self.validation.is_ok() && self.sim_job.is_none();
            if ui.add_enabled(can, egui::Button::new("Simulate")).clicked() {
                self.start_simulation();
                self.tab = Tab::Results;
            }
            if self.sim_job.is_some() {
                ui.spinner();
                ui.label("simulating…");
            }
        });
    }

    fn results_tab(&mut self, ui: &mut egui::Ui) {
        if self.sim_job.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("simulating…");
            });
        }
        let Some(r) = &self.results else {
            ui.label("no results yet: press Simulate on the Strategy tab");
            return;
        };
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                ui.colored_label(Color32::from_rgb(229, 57, 53), e);
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
        // Breakdown bar.
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

    fn timeline_tab(&mut self, ui: &mut egui::Ui) {
        let Some(Ok(o)) = &self.results else {
            ui.label("simulate a strategy to see its timeline");
            return;
        };
        let step = o.report.step_time_s;
        ui.horizontal(|ui| {
            ui.label("shown");
            ui.add(
                egui::Slider::new(&mut self.view.1, step / 200.0..=step)
                    .logarithmic(true)
                    .suffix(" s"),
            );
            ui.label("from");
            let max = (step - self.view.1).max(0.0);
            ui.add(egui::Slider::new(&mut self.view.0, 0.0..=max).suffix(" s"));
            for c in Category::ALL {
                ui.colored_label(color(c), c.name());
            }
        });
        let (t0, span) = (self.view.0, self.view.1.max(1e-9));
        let row_h = 14.0;
        egui::ScrollArea::vertical().show(ui, |ui| {
            let width = ui.available_width();
            let label_w = 190.0;
            let (resp, painter) = ui.allocate_painter(
                Vec2::new(width, o.rows.len() as f32 * row_h + 4.0),
                Sense::drag(),
            );
            if resp.dragged() {
                let dx = f64::from(resp.drag_delta().x) / f64::from(width - label_w) * span;
                self.view.0 = (self.view.0 - dx).clamp(0.0, (step - span).max(0.0));
            }
            let min = resp.rect.min;
            for (i, name) in o.rows.iter().enumerate() {
                painter.text(
                    Pos2::new(min.x, min.y + i as f32 * row_h),
                    egui::Align2::LEFT_TOP,
                    name,
                    egui::FontId::monospace(10.0),
                    Color32::LIGHT_GRAY,
                );
            }
            let x_of = |t: f64| min.x + label_w + ((t - t0) / span) as f32 * (width - label_w);
            for b in &o.bars {
                if b.end < t0 || b.start > t0 + span {
                    continue;
                }
                let y = min.y + b.row as f32 * row_h;
                let r = Rect::from_min_max(
                    Pos2::new(x_of(b.start).max(min.x + label_w), y + 1.0),
                    Pos2::new(x_of(b.end).max(x_of(b.start) + 0.5), y + row_h - 1.0),
                );
                painter.rect_filled(r, 0.0, color(b.cat));
            }
        });
    }

    fn search_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let can = self.validation.is_ok() && self.search_job.is_none();
            if ui
                .add_enabled(can, egui::Button::new("Run search"))
                .clicked()
            {
                self.start_search();
            }
            if self.search_job.is_some() {
                let (d, t) = (
                    self.search_progress.0.load(Ordering::Relaxed),
                    self.search_progress.1.load(Ordering::Relaxed),
                );
                ui.add(
                    egui::ProgressBar::new(if t > 0 { d as f32 / t as f32 } else { 0.0 })
                        .desired_width(240.0)
                        .text(format!("{d} / {t} strategies ranked")),
                );
            }
        });
        let mut load = None;
        match &self.search {
            None => {
                ui.label("search every dp × tp × pp, micro-batching, schedule, sharding, remat, sequence parallelism and placement for this model and cluster");
            }
            Some(Err(e)) => {
                ui.colored_label(Color32::from_rgb(229, 57, 53), e);
            }
            Some(Ok(s)) => {
                ui.label(format!(
                    "{} strategies, {} valid, {} fit; the best re-simulated. Click a row or a point to load it.",
                    s.candidates_total, s.candidates_valid, s.candidates_fitting
                ));
                ui.columns(2, |cols| {
                    egui::ScrollArea::vertical()
                        .id_salt("rows")
                        .show(&mut cols[0], |ui| {
                            for (i, c) in s.ranked.iter().take(50).enumerate() {
                                let step = c.refined_step_s.unwrap_or(c.fast_step_s);
                                let text = format!(
                                    "{:>2}  {:.3} s  {:.1} GiB  {}",
                                    i + 1,
                                    step,
                                    c.memory_bytes as f64 / (1u64 << 30) as f64,
                                    c.summary
                                );
                                if ui.selectable_label(false, text).clicked() {
                                    load = Some(c.strategy.clone());
                                }
                            }
                        });
                    // Pareto scatter: memory against step time.
                    let ui = &mut cols[1];
                    let (resp, painter) =
                        ui.allocate_painter(Vec2::new(ui.available_width(), 320.0), Sense::click());
                    let pts: Vec<(f64, f64)> = s
                        .ranked
                        .iter()
                        .map(|c| {
                            (
                                c.refined_step_s.unwrap_or(c.fast_step_s),
                                c.memory_bytes as f64 / (1u64 << 30) as f64,
                            )
                        })
                        .collect();
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
                    if resp.clicked() {
                        if let Some(pos) = resp.interact_pointer_pos() {
                            let near = pts.iter().enumerate().min_by(|a, b| {
                                at(*a.1).distance(pos).total_cmp(&at(*b.1).distance(pos))
                            });
                            if let Some((i, _)) = near {
                                load = Some(s.ranked[i].strategy.clone());
                            }
                        }
                    }
                });
            }
        }
        if let Some(st) = load {
            self.load(&st);
            self.tab = Tab::Strategy;
        }
    }

    fn whatif_tab(&mut self, ui: &mut egui::Ui) {
        ui.label("Move a slider: the step is re-simulated a moment after it stops.");
        let before = (self.bandwidth, self.chips);
        ui.add(
            egui::Slider::new(&mut self.bandwidth, 0.125..=8.0)
                .logarithmic(true)
                .text("× network bandwidth (NICs and islands)"),
        );
        let per = Cluster::from_name(&format!("{}:{}", self.cluster, self.chips))
            .map_or(8, |c| c.topology.chips_per_server());
        ui.add(
            egui::Slider::new(&mut self.chips, per..=8192)
                .logarithmic(true)
                .step_by(f64::from(per))
                .text("chips"),
        );
        ui.checkbox(&mut self.live, "re-simulate live");
        if (self.bandwidth, self.chips) != before {
            self.revalidate();
            if self.live {
                self.whatif_changed = Some(Instant::now());
            }
        }
        match &self.validation {
            Err(e) => {
                ui.colored_label(Color32::from_rgb(229, 57, 53), e);
            }
            Ok(_) => {
                if let Some(Ok(o)) = &self.results {
                    ui.heading(format!(
                        "{:.3} s per step, {:.0} tokens/s, MFU {:.3} ({} chips, {:.2}× bandwidth)",
                        o.report.step_time_s,
                        o.report.tokens_per_s,
                        o.report.mfu,
                        o.plan.strategy.devices,
                        self.bandwidth
                    ));
                }
                if self.sim_job.is_some() || self.whatif_changed.is_some() {
                    ui.spinner();
                }
            }
        }
    }

    fn training_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let running = self
                .training
                .as_ref()
                .is_some_and(|t| !t.stop.load(Ordering::Relaxed));
            if !running && ui.button("Train pangu-alpha-tiny").clicked() {
                self.training = Some(Training::start(2000));
            }
            if running && ui.button("Stop").clicked() {
                if let Some(t) = &self.training {
                    t.stop.store(true, Ordering::Relaxed);
                }
            }
            if let Some(t) = &self.training {
                ui.label(&t.status);
            }
        });
        let Some(t) = &self.training else {
            ui.label("trains the real model on the bundled Chinese poetry on this machine's CPU; the loss is plotted as it falls");
            return;
        };
        let (resp, painter) =
            ui.allocate_painter(Vec2::new(ui.available_width(), 360.0), Sense::hover());
        let r = resp.rect.shrink(24.0);
        painter.rect_stroke(
            r,
            0.0,
            Stroke::new(1.0, Color32::GRAY),
            egui::StrokeKind::Inside,
        );
        if t.losses.len() < 2 {
            return;
        }
        let (n, lmax, lmin) = t
            .losses
            .iter()
            .fold((1u64, f64::MIN, f64::MAX), |a, &(s, l)| {
                (a.0.max(s), a.1.max(l), a.2.min(l))
            });
        let span = (lmax - lmin).max(1e-6);
        let pts: Vec<Pos2> = t
            .losses
            .iter()
            .map(|&(s, l)| {
                Pos2::new(
                    r.min.x + (s as f32 / n as f32) * r.width(),
                    r.max.y - ((l - lmin) / span) as f32 * r.height(),
                )
            })
            .collect();
        painter.add(egui::Shape::line(
            pts,
            Stroke::new(1.5, Color32::from_rgb(76, 175, 80)),
        ));
        painter.text(
            r.left_top(),
            egui::Align2::LEFT_BOTTOM,
            format!("loss {lmax:.2}"),
            egui::FontId::proportional(11.0),
            Color32::LIGHT_GRAY,
        );
        painter.text(
            r.left_bottom(),
            egui::Align2::LEFT_TOP,
            format!("{lmin:.2} — step {n}"),
            egui::FontId::proportional(11.0),
            Color32::LIGHT_GRAY,
        );
    }
}

/// Green (low) to red (high) for a fraction in [0, 1] (above 1: magenta, over capacity).
pub fn heat(v: f64) -> Color32 {
    if !v.is_finite() || v <= 0.0 {
        return Color32::from_gray(90);
    }
    if v > 1.0 {
        return Color32::from_rgb(216, 27, 96);
    }
    let t = v as f32;
    Color32::from_rgb((60.0 + 195.0 * t) as u8, (200.0 - 150.0 * t) as u8, 70)
}

impl eframe::App for App {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.ui(ctx);
    }
}
