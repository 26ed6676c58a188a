//! The app: the state the tabs share (inputs, the validated plan, the last simulation, the
//! background jobs), the tab and status bars, and [`App::handle`], the one place where the
//! tabs' [`Command`]s change that state.

use std::time::{Duration, Instant};

use pangu_sim::search::SearchResult;
use pangu_strategies::{Plan, Strategy};

use crate::editor::{self, Editor};
use crate::job::Job;
use crate::palette;
use crate::simulation::{simulate, SimOutput};
use crate::tabs::training::{self, Trainer};
use crate::tabs::{search, Tabs};

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

/// What a tab asks the app to do. Tabs read the shared state through a [`View`] and never
/// change it; [`App::handle`] applies these after the frame's tab has drawn.
#[derive(Debug, Clone)]
pub enum Command {
    /// Switch to a tab.
    Show(Tab),
    /// Use a model preset.
    SetModel(String),
    /// Use a cluster preset.
    SetCluster(String),
    /// Use this many chips of the cluster.
    SetChips(u32),
    /// Scale the network bandwidth (NICs and islands) by this factor.
    SetBandwidth(f32),
    /// The strategy editor's new fields.
    Edit(Editor),
    /// Put a strategy into the editor (the cluster grows to its devices if needed).
    LoadStrategy(Box<Strategy>),
    /// Simulate the current plan in the background.
    Simulate,
    /// Simulate a moment after the last of a series of edits (what-if sliders).
    SimulateSoon,
    /// Search the strategies of the current model, cluster and global batch in this space.
    Search(Box<pangu_strategies::search::SearchSpace>),
    /// Train pangu-alpha-tiny (steps, deadline, evaluations).
    StartTraining(training::Request),
    /// Stop the training run.
    StopTraining,
}

/// What the tabs read of the app's shared state in one frame.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// Model preset.
    pub model: &'a str,
    /// Cluster preset.
    pub cluster: &'a str,
    /// Chips of the cluster.
    pub chips: u32,
    /// Network bandwidth multiplier.
    pub bandwidth: f32,
    /// The strategy editor's fields.
    pub editor: &'a Editor,
    /// The current plan, or why it is invalid.
    pub validation: &'a Result<Plan, String>,
    /// The last simulation.
    pub results: Option<&'a Result<SimOutput, String>>,
    /// A simulation is running.
    pub simulating: bool,
    /// A simulation will start when the edits pause.
    pub simulation_pending: bool,
    /// (done, total) of the running search, if one runs.
    pub searching: Option<(usize, usize)>,
    /// A training run is going.
    pub training: bool,
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
    /// Network bandwidth multiplier (what-if).
    pub bandwidth: f32,
    /// Strategy editor.
    pub editor: Editor,
    /// The last validation: the plan, or why it is invalid.
    pub validation: Result<Plan, String>,
    validated: Option<(String, String, u32, Editor, f32)>,
    /// Running simulation.
    pub sim_job: Option<Job<SimOutput>>,
    /// Last simulation.
    pub results: Option<Result<SimOutput, String>>,
    /// Running search.
    pub search_job: Option<Job<SearchResult>>,
    /// Running (or finished) training.
    pub training: Option<Trainer>,
    /// When the edits that asked for a simulation last changed.
    simulate_after: Option<Instant>,
    /// Each tab's own state.
    pub tabs: Tabs,
    /// Time of the last frame (ms).
    pub frame_ms: f32,
    /// Show the frame time in the status bar (off for snapshot images).
    pub show_frame_ms: bool,
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
            bandwidth: 1.0,
            editor: Editor::reference(model, cluster, chips).unwrap_or_default(),
            validation: Err("not validated yet".into()),
            validated: None,
            sim_job: None,
            results: None,
            search_job: None,
            training: None,
            simulate_after: None,
            tabs: Tabs::default(),
            frame_ms: 0.0,
            show_frame_ms: true,
        };
        app.revalidate();
        app
    }

    /// Builds the plan of the current inputs (instant validation; cached while they stay the
    /// same).
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
        self.validation = editor::plan(&key.0, &key.1, key.2, key.4, &key.3);
        self.validated = Some(key);
    }

    /// Applies a command, then revalidates: the one place where tabs change shared state.
    pub fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Show(tab) => self.tab = tab,
            Command::SetModel(m) => self.model = m,
            Command::SetCluster(c) => self.cluster = c,
            Command::SetChips(n) => self.chips = n,
            Command::SetBandwidth(f) => self.bandwidth = f,
            Command::Edit(e) => self.editor = e,
            Command::LoadStrategy(s) => {
                self.editor = Editor::from_strategy(&s);
                self.chips = self.chips.max(s.devices);
            }
            Command::Simulate => {
                if let Ok(p) = &self.validation {
                    let p = p.clone();
                    self.sim_job = Some(Job::spawn(move |_| simulate(p)));
                }
            }
            Command::SimulateSoon => self.simulate_after = Some(Instant::now()),
            Command::Search(space) => {
                if let Ok(p) = &self.validation {
                    self.search_job = Some(search::spawn(p, *space));
                }
            }
            Command::StartTraining(req) => {
                self.training = Some(Trainer::start(req));
                self.tabs.training.restart();
            }
            Command::StopTraining => {
                if let Some(t) = &self.training {
                    t.stop();
                }
            }
        }
        self.revalidate();
    }

    /// What the tabs may read this frame.
    fn view(&self) -> View<'_> {
        View {
            model: &self.model,
            cluster: &self.cluster,
            chips: self.chips,
            bandwidth: self.bandwidth,
            editor: &self.editor,
            validation: &self.validation,
            results: self.results.as_ref(),
            simulating: self.sim_job.is_some(),
            simulation_pending: self.simulate_after.is_some(),
            searching: self.search_job.as_ref().map(Job::progress),
            training: self.training.as_ref().is_some_and(Trainer::running),
        }
    }

    /// Collects finished jobs and training progress; asks for repaints while work runs.
    fn poll(&mut self, ctx: &egui::Context) {
        if let Some(r) = self.sim_job.as_ref().and_then(Job::poll) {
            self.sim_job = None;
            if let Ok(o) = &r {
                self.tabs.timeline.show_step(o.report.step_time_s);
            }
            self.results = Some(r);
        }
        if let Some(r) = self.search_job.as_ref().and_then(Job::poll) {
            self.search_job = None;
            self.tabs.search.result = Some(r);
        }
        if let Some(t) = &mut self.training {
            for m in t.received() {
                self.tabs.training.record(m);
            }
        }
        // Re-simulate a moment after the edits stop.
        if let Some(at) = self.simulate_after {
            if at.elapsed() > Duration::from_millis(250) && self.sim_job.is_none() {
                self.simulate_after = None;
                self.handle(Command::Simulate);
            }
        }
        let v = self.view();
        if v.simulating || v.searching.is_some() || v.simulation_pending || v.training {
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }

    /// Draws one frame: the tab bar, the status bar and the current tab; then applies the
    /// commands the tab gave.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let t0 = Instant::now();
        self.revalidate();
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
                    Err(e) => ui.colored_label(palette::ERROR, e),
                };
                if self.show_frame_ms {
                    ui.separator();
                    ui.label(format!("frame {:.1} ms", self.frame_ms));
                }
            });
        });
        // The tab draws with its own state and a read-only view of the shared state; what it
        // wants changed comes back as commands.
        let mut tabs = std::mem::take(&mut self.tabs);
        let mut out = Vec::new();
        let view = self.view();
        egui::CentralPanel::default().show(ctx, |ui| match self.tab {
            Tab::Cluster => tabs.cluster.show(ui, &view),
            Tab::Model => tabs.model.show(ui, &view, &mut out),
            Tab::Strategy => tabs.strategy.show(ui, &view, &mut out),
            Tab::Results => tabs.results.show(ui, &view),
            Tab::Timeline => tabs.timeline.show(ui, &view),
            Tab::Search => tabs.search.show(ui, &view, &mut out),
            Tab::WhatIf => tabs.what_if.show(ui, &view, &mut out),
            Tab::Training => tabs.training.show(ui, &view, &mut out),
        });
        self.tabs = tabs;
        if !out.is_empty() {
            // Show the new state at once (the tab drew this frame from the old one).
            ctx.request_repaint();
        }
        for cmd in out {
            self.handle(cmd);
        }
        self.frame_ms = t0.elapsed().as_secs_f32() * 1e3;
    }
}

impl eframe::App for App {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.ui(ctx);
    }
}
