//! `pangu-ui`: an egui desktop app over the same crates as the `pangu` CLI.
//!
//! Tabs ([`tabs`], one module each): the cluster (racks, servers, islands and chips, coloured
//! by memory use or compute utilisation, zoomable to all 2048 chips), the model, the strategy
//! editor (validated as you type, by the same `Plan::new` as the CLI), results (breakdown,
//! memory per stage against HBM, MFU), the timeline of the simulated step (a Gantt chart of
//! every stage's compute and communication streams), search (progress, table, Pareto scatter;
//! a click loads a strategy), what-if sliders (network bandwidth and chip count, re-simulated
//! live) and a training monitor (the real trainer on pangu-alpha-tiny, loss plotted as it
//! falls).
//!
//! [`App`] holds what the tabs share (inputs, plan, last simulation, background [`Job`]s);
//! each tab owns its own state, reads the shared state through a [`View`] and asks for changes
//! with [`Command`]s that [`App::handle`] applies in one place. Simulation, search and
//! training run on background threads; the UI polls their channels each frame. Everything it
//! shows comes from the library crates: this crate only presents.

mod app;
pub mod editor;
pub mod job;
pub mod palette;
pub mod simulation;
pub mod tabs;
mod widgets;

pub use app::{App, Command, Tab, View};
pub use editor::Editor;
pub use job::Job;
pub use palette::{color, heat};
pub use simulation::{simulate, SimOutput};
