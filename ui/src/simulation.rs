//! One simulation for display: the plan, its step report and the timeline rows and bars of
//! one device per stage.

use std::time::Instant;

use pangu_strategies::{Category, Plan, StepReport};

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
