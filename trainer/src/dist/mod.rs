//! The distributed executor: a validated [`Plan`] run for real, one rank per device of its
//! mesh, on threads or MPI processes. All five dimensions come from the plan's objects:
//!
//! - Pipeline: each rank holds the model chunks of its stage ([`Plan::stages`]) and executes
//!   its stage's action list of [`Plan::schedule`] (GPipe, 1F1B, interleaved) — literally the
//!   data the simulator runs. Activations go forward and gradients back as point-to-point
//!   messages; sends are buffered, receives block (the schedule's semantics).
//! - Op-level model parallelism (PanGu-α / Megatron): Q, K, V and FFN-up split by columns,
//!   attention output and FFN-down by rows, heads across the group ([`Part`]); the layer sums
//!   over the tensor-parallel group after the row-split projections in forward and after the
//!   column-split ones in backward ([`Reduce`]).
//! - Data parallelism: each replica runs its share of every micro-batch; gradients are reduced
//!   in the plan's buckets (`Plan::grad_buckets`), each as soon as the last micro-batch's
//!   backward has finished its parts, with the collective program the plan chooses for the
//!   group: on a communication thread while backward goes on (threads backend), or in line at
//!   the same points (MPI, where a second thread would need `MPI_THREAD_MULTIPLE`).
//! - Optimizer sharding (ZeRO-1/2, MindSpore's optimizer parallel, ZeRO-3): the buckets are
//!   reduce-scattered, each rank updates its chunk of every bucket and keeps Adam moments for
//!   it only, and the weights are all-gathered bucket by bucket after the update. (The
//!   simulator prices MindSpore's and ZeRO-3's gathers ahead of use instead; the executor
//!   keeps whole weights, so it gathers after the update for every level.)
//! - Rematerialisation: full (each layer's input kept, the layer recomputed in backward).
//! - The tied embedding: the first and last virtual stages both hold the word table; their
//!   gradients are summed between them before the update, so both copies stay equal.
//!
//! Every rank's loss rows are weighted by 1/(counted rows of the whole step), so sums over
//! ranks give the single-device gradient; samples, dropout masks (keyed on global sample,
//! row, layer and head indices) and the schedule of learning rates are those of one device.
//! The runs differ from one device only in the order of floating-point additions; tests hold
//! losses and weights to 1e-4.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pangu_model::ModelConfig;
use pangu_strategies::report::DeviceReport;
use pangu_strategies::{Breakdown, Plan, StepReport};
use serde::Serialize;

use crate::comm::{threads, CommError, Communicator};
use crate::data::Packed;
use crate::host::check_plan;
use crate::model::Layout;
use crate::sharded::WholeState;
use crate::train::Settings;
use crate::TrainError;

mod buckets;
mod rank;
mod tp;

use rank::{rank_loop, RankOutput};

/// How the executor communicates (the collective algorithms are the plan's).
#[derive(Debug, Clone, Copy)]
pub struct DistConfig {
    /// How long a rank waits on a peer before giving up.
    pub timeout: Duration,
    /// Fault injection for failure drills and tests: `(rank, step)` panics that rank when
    /// it starts that step.
    pub fail: Option<(usize, u64)>,
}

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
fn slowest(ranks: &[RankReport]) -> Vec<f64> {
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
                pp_comm: r.pp_comm_s / st,
                bubble: r.bubble_s / st,
                dp_comm: r.dp_comm_s / st,
                opt_comm: r.opt_comm_s / st,
                ..Breakdown::default()
            };
            let busy = b.compute + b.tp_comm + b.pp_comm + b.bubble + b.dp_comm + b.opt_comm;
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

/// Where a run starts and what it saves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io<'a> {
    /// Start after this many steps from this whole-model state (a checkpoint of any plan).
    pub resume: Option<(u64, &'a WholeState)>,
    /// Write sharded checkpoints.
    pub save: Option<&'a Save>,
}

/// Sharded checkpointing of a run.
#[derive(Debug, Clone)]
pub struct Save {
    /// Run folder (`step-N` folders and `latest` go here).
    pub dir: PathBuf,
    /// Every this many steps, and after the last.
    pub every: u64,
    /// The tokenizer file to store with each checkpoint.
    pub tokenizer_json: Vec<u8>,
    /// Its hash.
    pub tokenizer_hash: String,
}

/// Trains `plan` on `data` with one thread per rank of its mesh until step `steps`.
pub fn train_threads(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
) -> Result<DistResult, TrainError> {
    train_threads_with(plan, settings, dist, data, steps, Io::default())
}

/// [`train_threads`] from a checkpoint's state and/or writing checkpoints.
pub fn train_threads_with(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    io: Io<'_>,
) -> Result<DistResult, TrainError> {
    check_plan(plan, settings)?;
    let world = plan.mesh.size() as usize;
    let t0 = Instant::now();
    let comms = threads::group(world, dist.timeout);
    // A second group for the communication threads of the overlapped gradient reduction.
    let aux = threads::group(world, dist.timeout);
    let results: Vec<Result<RankOutput, TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(aux)
            .map(|(mut c, a)| {
                s.spawn(move || {
                    let a: Box<dyn Communicator + Send> = Box::new(a);
                    rank_loop(plan, settings, dist, data, steps, io, &mut c, Some(a))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|e| {
                    let message = e
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(TrainError::Panicked { rank, message })
                })
            })
            .collect()
    });
    // Report the root cause first: a panic or timeout rather than the peers that saw it leave.
    let mut errors: Vec<TrainError> = Vec::new();
    let mut ok = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        // A peer that saw another rank stop is a consequence, not a cause.
        errors.sort_by_key(|e| {
            matches!(
                e,
                TrainError::Comm(CommError::PeerGone { .. } | CommError::ThreadStopped { .. })
            )
        });
        return Err(TrainError::Distributed(errors));
    }
    let whole = Layout::new(&plan.model)?;
    let mut params = vec![0.0f32; whole.total];
    let mut ranks = Vec::new();
    let mut losses = Vec::new();
    for out in ok {
        for (layout, p) in &out.parts {
            layout.scatter(&whole, p, &mut params);
        }
        if losses.is_empty() {
            losses = out.losses;
        }
        ranks.push(out.report);
    }
    let report = measured_report(&plan.model, settings.batch, &ranks, steps);
    Ok(DistResult {
        losses,
        params,
        step_s: slowest(&ranks),
        step_cpu: ranks
            .iter()
            .find(|r| r.rank == 0)
            .map(|r| r.step_cpu.clone())
            .unwrap_or_default(),
        ranks,
        wall_s: t0.elapsed().as_secs_f64(),
        report,
    })
}

/// Trains on this process's rank of an MPI job (`mpirun -np N`): the world's size must equal
/// the plan's device count. Every rank returns the same losses and its own measurements.
#[cfg(feature = "mpi")]
pub fn train_mpi(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    io: Io<'_>,
) -> Result<(usize, DistResult), TrainError> {
    check_plan(plan, settings)?;
    // Buffered sends: every pipeline message of a step may be in flight at once, plus the
    // buffered steps of collective programs (exchange steps use MPI_Sendrecv): a rank sends
    // at most three times a collective's buffer in one (the double tree), and may finish one
    // collective before its peers received all of it (MPI_BSEND_OVERHEAD is under 1 KiB).
    let st = &plan.strategy;
    let act =
        4 * st.micro_batch_size as usize * plan.model.seq_len as usize * plan.model.hidden as usize;
    let msgs = 2 * (st.micro_batches * st.schedule.chunks()) as usize + 8;
    let bucket = (0..st.pp)
        .flat_map(|s| plan.grad_buckets(s))
        .map(|b| 4 * b.params as usize)
        .max()
        .unwrap_or(0);
    let largest = bucket.max(act);
    let send_buffer = msgs * (act + 1024) + 6 * largest + (1 << 20);
    let mut comm = crate::comm::mpi_backend::init(dist.timeout, send_buffer)
        .ok_or_else(|| TrainError::Config("MPI is already initialised in this process".into()))?;
    let world = plan.mesh.size() as usize;
    if comm.size() != world {
        return Err(TrainError::Config(format!(
            "the plan has {world} devices (dp {} × tp {} × pp {}) but mpirun started {} processes: pass -np {world} to mpirun",
            plan.strategy.dp,
            plan.strategy.tp,
            plan.strategy.pp,
            comm.size()
        )));
    }
    let t0 = Instant::now();
    let rank = comm.rank();
    // MPI calls from a second thread would need MPI_THREAD_MULTIPLE: no overlap here.
    let out = rank_loop(plan, settings, dist, data, steps, io, &mut comm, None)?;
    let ranks = vec![out.report];
    let report = measured_report(&plan.model, settings.batch, &ranks, steps);
    Ok((
        rank,
        DistResult {
            losses: out.losses,
            params: Vec::new(),
            step_s: slowest(&ranks),
            step_cpu: Vec::new(),
            ranks,
            wall_s: t0.elapsed().as_secs_f64(),
            report,
        },
    ))
}

