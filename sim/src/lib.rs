//! The discrete-event simulator: one training step of a `Plan` on a modelled cluster.
//!
//! Layers, as in ASTRA-sim (workload → system → network):
//! - [`workload`]: the plan's schedule action lists become per-device task graphs (compute
//!   segments priced by [`cost`], whose matmuls [`gemm`] prices by tiles and waves,
//!   tensor-parallel collectives, gradient buckets, pipeline
//!   sends and receives, the optimizer step).
//! - [`collective`]: each collective is decomposed by its algorithm into steps of
//!   point-to-point transfers.
//! - [`protocol`]: what the collective library adds per collective and step (NCCL's LL, LL128
//!   and Simple, chosen per message as NCCL's tuner does).
//! - [`network`]: transfers are flows over the topology's routes, sharing links max-min fairly.
//! - [`engine`]: the event queue; [`run`] executes the graph and fills a `StepReport`.
//! - [`timeline`]: the rows and spans of a run, for the Chrome trace and the app's Gantt chart.
//! - [`chakra`]: the step's task graph as Chakra execution traces, one file per rank.
//!
//! ```
//! use pangu_model::ModelConfig;
//! use pangu_strategies::{resolve_inputs, Plan, StrategySpec};
//! let m = ModelConfig::preset("pangu-alpha-2.6b").unwrap();
//! let user = StrategySpec { tp: Some(8), ..Default::default() };
//! let r = resolve_inputs(&m, Some(pangu_hardware::Cluster::from_name("ascend910:64").unwrap()), &user).unwrap();
//! let plan = Plan::new(&r.model, &r.cluster, &r.strategy).unwrap();
//! let run = pangu_sim::simulate(&plan).unwrap();
//! assert!(run.report.step_time_s > 0.0 && run.report.mfu < 1.0);
//! ```

pub mod analytic;
pub mod chakra;
pub mod check;
pub mod collective;
mod cores;
pub mod cost;
pub mod engine;
pub mod faults;
pub mod fold;
pub mod gemm;
pub mod goodput;
pub mod isolated;
pub mod network;
pub mod protocol;
pub mod run;
pub mod search;
pub mod timeline;
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
    let cost = CostModel::for_plan(plan, cal.clone())?;
    if opts.fold {
        for f in fold::Folding::candidates(plan) {
            let reps: Vec<u32> = (0..plan.strategy.devices)
                .filter(|&r| f.is_rep(r))
                .collect();
            let w = workload::build(plan, &cost, &reps);
            let mut programs = collective::Programs::default();
            if !f.collectives_symmetric(plan, &w, &mut programs) {
                continue;
            }
            match run::simulate(plan, &w, cal, Some(f), opts.memo, programs) {
                Ok(run) => return Ok((run, w)),
                Err(SimError::Fold(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let all: Vec<u32> = (0..plan.strategy.devices).collect();
    let w = workload::build(plan, &cost, &all);
    let run = run::simulate(plan, &w, cal, None, opts.memo, Default::default())?;
    Ok((run, w))
}

/// The task graph of one step of `plan` for every rank, built as a simulation without folding
/// builds it (nothing is simulated): what a folded run's representatives stand for, rank by
/// rank. Chakra traces ([`chakra::Export`]) need every rank.
pub fn full_workload(plan: &Plan) -> Result<Workload, SimError> {
    let cal = Calibration::for_chip(&plan.cluster.spec.chip)?;
    let cost = CostModel::for_plan(plan, cal)?;
    let all: Vec<u32> = (0..plan.strategy.devices).collect();
    Ok(workload::build(plan, &cost, &all))
}

/// Simulates one step of `plan` with `faults` (stragglers, degraded or failed links) on
/// every device; returns the run, its task graph and the plan on the faulty network.
pub fn simulate_faulty(
    plan: &Plan,
    faults: &faults::Faults,
    opts: Options,
) -> Result<(Run, Workload, Plan), SimError> {
    if faults.is_empty() {
        let (run, w) = simulate_full(plan, opts)?;
        return Ok((run, w, plan.clone()));
    }
    let p = faults.apply_links(plan)?;
    let cal = Calibration::for_chip(&p.cluster.spec.chip)?;
    let cost = CostModel::for_plan(&p, cal.clone())?;
    let all: Vec<u32> = (0..p.strategy.devices).collect();
    let mut w = workload::build(&p, &cost, &all);
    faults.apply_stragglers(&mut w);
    let run = run::simulate(&p, &w, &cal, None, opts.memo, Default::default())?;
    Ok((run, w, p))
}

/// Two jobs on one cluster: each alone, and both at once on the same network.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shared {
    /// Step time of job A alone (s).
    pub a_alone_s: f64,
    /// Step time of job B alone (s).
    pub b_alone_s: f64,
    /// Step time of job A beside job B (s).
    pub a_shared_s: f64,
    /// Step time of job B beside job A (s).
    pub b_shared_s: f64,
    /// First chip of job B (it follows job A's chips).
    pub b_first_chip: u32,
}

impl Shared {
    /// Fractional slowdown of each job caused by the other.
    pub fn slowdowns(&self) -> (f64, f64) {
        (
            self.a_shared_s / self.a_alone_s - 1.0,
            self.b_shared_s / self.b_alone_s - 1.0,
        )
    }
}

/// Simulates one step of two jobs that share a cluster's network: job A on chips
/// `0..a.devices`, job B on the chips after it (A must fill whole servers; both plans must be
/// of the same cluster and together fit in it). Each job's step starts at time 0; their flows
/// share links with max-min fairness like any others, so the difference to each job alone is
/// what the other's traffic costs it.
pub fn simulate_shared(a: &Plan, b: &Plan) -> Result<Shared, SimError> {
    let chips = a.cluster.chips();
    if a.cluster.spec != b.cluster.spec {
        return Err(SimError::Input(format!(
            "the two jobs are planned on different clusters ({} and {}): plan both on one",
            a.cluster.spec.name, b.cluster.spec.name
        )));
    }
    let per_server = a.cluster.topology.chips_per_server();
    let (na, nb) = (a.strategy.devices, b.strategy.devices);
    if na % per_server != 0 {
        return Err(SimError::Input(format!(
            "job A uses {na} chips, not whole {per_server}-chip servers: job B would share a server with it"
        )));
    }
    if na + nb > chips {
        return Err(SimError::Input(format!(
            "job A ({na} chips) and job B ({nb} chips) need {} chips; the cluster has {chips}: set devices so that they fit",
            na + nb
        )));
    }
    let a_alone_s = simulate(a)?.report.step_time_s;
    let b_alone_s = simulate(b)?.report.step_time_s;
    let cal = Calibration::for_chip(&a.cluster.spec.chip)?;
    let build = |p: &Plan| -> Result<Workload, SimError> {
        let cost = CostModel::for_plan(p, cal.clone())?;
        let all: Vec<u32> = (0..p.strategy.devices).collect();
        Ok(workload::build(p, &cost, &all))
    };
    let mut w = build(a)?;
    let wb = build(b)?;
    let first_b = w.tasks.len();
    w.append(wb, na);
    let run = run::simulate(a, &w, &cal, None, false, Default::default())?;
    let b_end = run.times[first_b..]
        .iter()
        .map(|&(_, e)| e)
        .max()
        .unwrap_or(0);
    Ok(Shared {
        a_alone_s,
        b_alone_s,
        a_shared_s: run.report.step_time_s,
        b_shared_s: b_end as f64 * 1e-9,
        b_first_chip: na,
    })
}

/// A Chrome-trace (Perfetto) JSON document of a simulated step for the given ranks: one
/// process per rank, one thread per stream, collectives named with group and size. The events
/// are the rows and spans of [`timeline::build`] over every stream.
pub fn chrome_trace(plan: &Plan, run: &Run, w: &Workload, ranks: &[u32]) -> serde_json::Value {
    use serde_json::json;
    let streams = timeline::STREAMS.map(|(s, _)| s);
    let tl = timeline::build(plan, run, w, ranks, &streams);
    let mut events = Vec::with_capacity(ranks.len() + tl.rows.len() + tl.spans.len());
    for rank in tl.rows.chunks(streams.len()) {
        let (r, stage) = (rank[0].device, rank[0].stage);
        events.push(json!({"name": "process_name", "ph": "M", "pid": r, "args": {"name": format!("rank {r} (stage {stage})")}}));
        for row in rank {
            events.push(json!({"name": "thread_name", "ph": "M", "pid": r, "tid": row.stream as u32, "args": {"name": timeline::stream_name(row.stream)}}));
        }
    }
    for s in tl.spans {
        let row = tl.rows[s.row as usize];
        events.push(json!({
            "name": s.label,
            "cat": s.cat.name(),
            "ph": "X",
            "ts": s.start as f64 / 1e3,
            "dur": (s.end - s.start) as f64 / 1e3,
            "pid": row.device,
            "tid": row.stream as u32,
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}
