//! The discrete-event simulator: one training step of a `Plan` on a modelled cluster.
//!
//! Layers, as in ASTRA-sim (workload → system → network):
//! - [`workload`]: the plan's schedule action lists become per-device task graphs (compute
//!   segments priced by [`cost`], tensor-parallel collectives, gradient buckets, pipeline
//!   sends and receives, the optimizer step).
//! - [`collective`]: each collective is decomposed by its algorithm into steps of
//!   point-to-point transfers.
//! - [`network`]: transfers are flows over the topology's routes, sharing links max-min fairly.
//! - [`engine`]: the event queue; [`run`] executes the graph and fills a `StepReport`.
//!
//! ```
//! use pangu_model::ModelConfig;
//! use pangu_strategies::{resolve_inputs, Plan, StrategySpec};
//! let m = ModelConfig::preset("pangu-alpha-2.6b").unwrap();
//! let user = StrategySpec { tp: Some(8), ..Default::default() };
//! let r = resolve_inputs(&m, Some(pangu_hardware::Cluster::from_name("ascend910:64").unwrap()), &user).unwrap();
//! let plan = Plan::new(&m, &r.cluster, &r.strategy).unwrap();
//! let run = pangu_sim::simulate(&plan).unwrap();
//! assert!(run.report.step_time_s > 0.0 && run.report.mfu < 1.0);
//! ```

pub mod analytic;
pub mod check;
pub mod collective;
pub mod cost;
pub mod engine;
pub mod fold;
pub mod fxhash;
pub mod isolated;
pub mod network;
pub mod run;
pub mod search;
pub mod validate;
pub mod workload;

pub use cost::{Calibration, CostModel};
pub use run::Run;
pub use workload::Workload;

use pangu_strategies::Plan;

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// Bad input (topology, values).
    #[error("invalid simulation input: {0}")]
    Input(String),
    /// Calibration missing or invalid.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The workload cannot finish (a dependency cycle or a collective some member never joins).
    #[error("the simulated step cannot finish: {0}")]
    Stuck(String),
    /// Symmetry folding does not apply (the caller simulates every device instead).
    #[error("symmetry folding does not apply: {0}")]
    Fold(String),
}

/// How to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Fold symmetric devices (exact; falls back to every device where the symmetry breaks).
    pub fold: bool,
    /// Time collectives that run alone on their links once and reuse the duration (exact).
    pub memo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fold: true,
            memo: true,
        }
    }
}

impl Options {
    /// Every device and every flow simulated.
    pub const FULL: Options = Options {
        fold: false,
        memo: false,
    };
}

/// Simulates one training step of a plan with its chip family's calibration, folded where
/// the symmetry allows.
pub fn simulate(plan: &Plan) -> Result<Run, SimError> {
    Ok(simulate_full(plan, Options::default())?.0)
}

/// Like [`simulate`] with options, also returning the task graph (for traces).
pub fn simulate_full(plan: &Plan, opts: Options) -> Result<(Run, Workload), SimError> {
    let cal = Calibration::for_chip(&plan.cluster.spec.chip)?;
    simulate_with(plan, &cal, opts)
}

/// Simulates one step with a given calibration.
pub fn simulate_with(
    plan: &Plan,
    cal: &Calibration,
    opts: Options,
) -> Result<(Run, Workload), SimError> {
    let cost = CostModel::new(
        &plan.cluster.spec.chip,
        plan.strategy.precision,
        cal.clone(),
    )?;
    if opts.fold {
        for f in fold::Folding::candidates(plan) {
            let reps: Vec<u32> = (0..plan.strategy.devices)
                .filter(|&r| f.is_rep(r))
                .collect();
            let w = workload::build(plan, &cost, &reps);
            if !f.collectives_symmetric(plan, &w) {
                continue;
            }
            match run::simulate(plan, &w, cal, Some(f), opts.memo) {
                Ok(run) => return Ok((run, w)),
                Err(SimError::Fold(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let all: Vec<u32> = (0..plan.strategy.devices).collect();
    let w = workload::build(plan, &cost, &all);
    let run = run::simulate(plan, &w, cal, None, opts.memo)?;
    Ok((run, w))
}

/// A Chrome-trace (Perfetto) JSON document of a simulated step for the given ranks: one
/// process per rank, one thread per stream, collectives named with group and size.
pub fn chrome_trace(plan: &Plan, run: &Run, w: &Workload, ranks: &[u32]) -> serde_json::Value {
    use serde_json::json;
    let keep: std::collections::HashSet<u32> = ranks.iter().copied().collect();
    let mut events = Vec::new();
    for &r in ranks {
        let stage = plan.mesh.coords(r).pp;
        events.push(json!({"name": "process_name", "ph": "M", "pid": r, "args": {"name": format!("rank {r} (stage {stage})")}}));
        for (tid, name) in [(0, "compute"), (1, "tp"), (2, "dp/opt"), (3, "pp")] {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": r, "tid": tid, "args": {"name": name}}));
        }
    }
    for (i, t) in w.tasks.iter().enumerate() {
        if !keep.contains(&t.device) {
            continue;
        }
        let (s, e) = run.times[i];
        if e <= s {
            continue;
        }
        let cat = match t.work {
            workload::Work::Compute { cat, .. } => cat.name(),
            workload::Work::Coll { inst } => w.colls[inst as usize].cat.name(),
            _ => "pp_comm",
        };
        events.push(json!({
            "name": run::describe(t.label, t.work, w),
            "cat": cat,
            "ph": "X",
            "ts": s as f64 / 1e3,
            "dur": (e - s) as f64 / 1e3,
            "pid": t.device,
            "tid": t.stream as u32,
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
