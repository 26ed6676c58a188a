//! What a distributed run measured: per rank, and as the simulator's step report.

use pangu_model::ModelConfig;
use pangu_strategies::report::DeviceReport;
use pangu_strategies::{Breakdown, StepReport};
use serde::Serialize;

/// What one rank measured (seconds summed over the steps).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RankReport {
    /// Rank.
    pub rank: usize,
    /// Pipeline stage.
    pub stage: usize,
    /// Forward and backward compute (the tensor-parallel sums inside excluded).
    pub compute_s: f64,
    /// Sums over the tensor-parallel group inside the layers.
    pub tp_comm_s: f64,
    /// Context parallelism's K/V exchange inside the layers (the plan's programs, run whole
    /// before the attention rather than overlapped with it).
    pub cp_comm_s: f64,
    /// Sending activations and gradients to the neighbouring stages.
    pub pp_comm_s: f64,
    /// Waiting for a neighbouring stage's activation or gradient (the pipeline bubble).
    pub bubble_s: f64,
    /// Gradient reductions (data parallel, the tied embedding, the norm and the loss).
    pub dp_comm_s: f64,
    /// The weight all-gather of optimizer sharding.
    pub opt_comm_s: f64,
    /// The optimizer update.
    pub optimizer_s: f64,
    /// The whole loop on this rank.
    pub wall_s: f64,
    /// Bytes this rank allocated (weights, gradients, its Adam state, activations).
    pub allocated_bytes: u64,
    /// Gradient buckets reduced while backward ran (threads backend, dp > 1).
    pub overlapped_buckets: u64,
    /// The data-parallel buckets in the order this rank issued them: (chunk, elements).
    pub bucket_log: Vec<(usize, usize)>,
    /// Wall seconds of each step on this rank.
    pub step_s: Vec<f64>,
    /// What each step had of the machine (rank 0 only: the counters are the process's).
    pub step_cpu: Vec<crate::cpustat::Window>,
}

/// The result of a distributed run.
#[derive(Debug, Clone, Serialize)]
pub struct DistResult {
    /// Mean training loss per step (identical on every rank).
    pub losses: Vec<f64>,
    /// Final parameters of the whole model, assembled from the ranks' parts (threads
    /// backend; under MPI only this process's part is known and this is empty).
    #[serde(skip)]
    pub params: Vec<f32>,
    /// Per rank.
    pub ranks: Vec<RankReport>,
    /// Wall time.
    pub wall_s: f64,
    /// Seconds of each step (the slowest rank's).
    pub step_s: Vec<f64>,
    /// What each step had of the machine: this process's CPU wait, steal and other
    /// processes' share (read by rank 0; empty under MPI).
    pub step_cpu: Vec<crate::cpustat::Window>,
    /// The measured step report (the simulator's type and categories, per device).
    pub report: StepReport,
}

/// The slowest rank's time of each step.
pub(super) fn slowest(ranks: &[RankReport]) -> Vec<f64> {
    let n = ranks.iter().map(|r| r.step_s.len()).max().unwrap_or(0);
    (0..n)
        .map(|i| {
            ranks
                .iter()
                .filter_map(|r| r.step_s.get(i))
                .fold(0.0, |a, &b| f64::max(a, b))
        })
        .collect()
}

/// The measured counterpart of the simulator's step report: per device, the categories of
/// [`Breakdown`] averaged over the steps (compute includes the optimizer update and, under
/// remat, the recomputation; idle is the rest of the step); MFU against the cores' fp32 peak
/// (`cpu-host` preset, one core per rank).
pub fn measured_report(
    cfg: &ModelConfig,
    global_batch: usize,
    ranks: &[RankReport],
    steps: u64,
) -> StepReport {
    let st = steps.max(1) as f64;
    let devices: Vec<DeviceReport> = ranks
        .iter()
        .map(|r| {
            let step = r.wall_s / st;
            let mut b = Breakdown {
                compute: (r.compute_s + r.optimizer_s) / st,
                tp_comm: r.tp_comm_s / st,
                cp_comm: r.cp_comm_s / st,
                pp_comm: r.pp_comm_s / st,
                bubble: r.bubble_s / st,
                dp_comm: r.dp_comm_s / st,
                opt_comm: r.opt_comm_s / st,
                ..Breakdown::default()
            };
            let busy =
                b.compute + b.tp_comm + b.cp_comm + b.pp_comm + b.bubble + b.dp_comm + b.opt_comm;
            b.idle = (step - busy).max(0.0);
            DeviceReport {
                rank: r.rank as u32,
                stage: r.stage as u32,
                breakdown: b,
                peak_memory_bytes: r.allocated_bytes,
            }
        })
        .collect();
    let step_time_s = ranks.iter().map(|r| r.wall_s / st).fold(0.0, f64::max);
    let n = devices.len().max(1) as f64;
    let mut mean = Breakdown::default();
    for d in &devices {
        let b = &d.breakdown;
        mean.compute += b.compute / n;
        mean.tp_comm += b.tp_comm / n;
        mean.cp_comm += b.cp_comm / n;
        mean.pp_comm += b.pp_comm / n;
        mean.bubble += b.bubble / n;
        mean.dp_comm += b.dp_comm / n;
        mean.opt_comm += b.opt_comm / n;
        mean.idle += b.idle / n;
    }
    let tokens = global_batch as f64 * f64::from(cfg.seq_len);
    let tokens_per_s = tokens / step_time_s.max(1e-12);
    let peak = pangu_hardware::Cluster::from_name("cpu-host:1")
        .ok()
        .and_then(|c| c.spec.chip.fp32.map(|r| r.0))
        .unwrap_or(f64::NAN);
    let mfu = cfg.flops_per_token() * tokens_per_s / (peak * n);
    StepReport {
        step_time_s,
        tokens_per_s,
        samples_per_s: global_batch as f64 / step_time_s.max(1e-12),
        mfu,
        hfu: mfu,
        breakdown: mean,
        devices,
        critical_path: Vec::new(),
        links: Vec::new(),
        peak_memory_bytes: ranks.iter().map(|r| r.allocated_bytes).max().unwrap_or(0),
    }
}
