//! The eight tabs, one module each. A tab owns its view state (zoom, time window, search
//! results, loss curve) and its drawing code; it reads the app's shared state through a
//! [`View`](crate::View) and asks for changes with [`Command`](crate::Command)s.

pub mod cluster;
pub mod model;
pub mod results;
pub mod search;
pub mod strategy;
pub mod timeline;
pub mod training;
pub mod what_if;

/// Every tab's own state.
#[derive(Default)]
pub struct Tabs {
    /// Cluster view: zoom and colouring.
    pub cluster: cluster::ClusterTab,
    /// Model and cluster presets.
    pub model: model::ModelTab,
    /// Strategy editor.
    pub strategy: strategy::StrategyTab,
    /// Step report.
    pub results: results::ResultsTab,
    /// Gantt chart: the time window shown.
    pub timeline: timeline::TimelineTab,
    /// Search: the last result.
    pub search: search::SearchTab,
    /// What-if sliders: live re-simulation.
    pub what_if: what_if::WhatIfTab,
    /// Training monitor: the loss curve.
    pub training: training::TrainingTab,
}
