//! The distributed executor, data-parallel dimension: `dp` ranks (threads) each run the
//! single-device model on their share of every micro-batch, and their gradients are combined
//! with the plan's collective algorithm.
//!
//! - Plain data parallelism: gradients all-reduced (summed: each rank's loss rows are already
//!   weighted by 1/(counted rows of the whole step), so the sum is the single-device gradient),
//!   then every rank runs the same AdamW update on the full buffer.
//! - Optimizer parallelism (MindSpore's optimizer parallel, ZeRO-1/2 semantics): gradients
//!   reduce-scattered, each rank keeps Adam moments for and updates only its [`chunk`] of the
//!   flat parameter buffer, then the parameters are all-gathered. The global gradient norm for
//!   clipping is the all-reduced sum of the shards' squares.
//!
//! Samples, dropout masks and the learning-rate schedule are those of the single-device run
//! with the same seed and global batch (masks are keyed on global sample indices), so the two
//! differ only in the order of floating-point additions; tests hold them to 1e-4.

use std::time::{Duration, Instant};

use pangu_model::ModelConfig;
use pangu_strategies::report::DeviceReport;
use pangu_strategies::{Breakdown, CollectiveAlgorithm, StepReport};
use serde::Serialize;

use crate::comm::{chunk, threads, CommError, Communicator};
use crate::data::{Order, Packed};
use crate::model::{special, Acts, Batch, Model};
use crate::optim;
use crate::train::Settings;
use crate::TrainError;

/// How the data-parallel ranks share the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    /// Every rank holds and updates everything.
    None,
    /// Each rank updates its chunk of the parameters (optimizer state sharded).
    Optimizer,
}

/// The distributed settings.
#[derive(Debug, Clone, Copy)]
pub struct DistConfig {
    /// Data-parallel ranks.
    pub dp: usize,
    /// Optimizer sharding.
    pub sharding: Sharding,
    /// Collective algorithm of the gradient reduction.
    pub algo: CollectiveAlgorithm,
    /// How long a rank waits on a peer before giving up.
    pub timeout: Duration,
}

/// What one rank measured.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    /// Rank.
    pub rank: usize,
    /// Seconds computing (forward and backward).
    pub compute_s: f64,
    /// Seconds in gradient reductions (and the norm and loss reductions).
    pub comm_s: f64,
    /// Seconds in the parameter all-gather of optimizer sharding.
    pub gather_s: f64,
    /// Seconds of the whole loop on this rank.
    pub wall_s: f64,
    /// Seconds in the optimizer update.
    pub optimizer_s: f64,
    /// Bytes this rank allocated (weights, gradients, its Adam state, activations).
    pub allocated_bytes: u64,
}

/// The result of a distributed run.
#[derive(Debug, Clone, Serialize)]
pub struct DistResult {
    /// Mean training loss per step (identical on every rank).
    pub losses: Vec<f64>,
    /// Final parameters (rank 0's, which equal every rank's).
    #[serde(skip)]
    pub params: Vec<f32>,
    /// Per rank.
    pub ranks: Vec<RankReport>,
    /// Wall time.
    pub wall_s: f64,
    /// The measured step report (the simulator's type and categories, per device).
    pub report: StepReport,
}

/// The measured counterpart of the simulator's step report: per device, compute (forward,
/// backward and the optimizer update), dp_comm (gradient reduction), opt_comm (the parameter
/// gather of optimizer sharding) and idle (the rest of the step), averaged over the steps;
/// MFU against the cores' fp32 peak (`cpu-host` preset, one core per rank).
pub fn measured_report(
    cfg: &ModelConfig,
    settings: &Settings,
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
                dp_comm: r.comm_s / st,
                opt_comm: r.gather_s / st,
                ..Breakdown::default()
            };
            b.idle = (step - b.compute - b.dp_comm - b.opt_comm).max(0.0);
            DeviceReport {
                rank: r.rank as u32,
                stage: 0,
                breakdown: b,
                peak_memory_bytes: r.allocated_bytes,
            }
        })
        .collect();
    let step_time_s = ranks.iter().map(|r| r.wall_s / st).fold(0.0, f64::max);
    let n = devices.len().max(1) as f64;
    let mut mean = Breakdown::default();
    for d in &devices {
        mean.compute += d.breakdown.compute / n;
        mean.dp_comm += d.breakdown.dp_comm / n;
        mean.opt_comm += d.breakdown.opt_comm / n;
        mean.idle += d.breakdown.idle / n;
    }
    let tokens = settings.batch as f64 * f64::from(cfg.seq_len);
    let tokens_per_s = tokens / step_time_s.max(1e-12);
    let peak = pangu_hardware::Cluster::from_name("cpu-host:1")
        .ok()
        .and_then(|c| c.spec.chip.fp32.map(|r| r.0))
        .unwrap_or(f64::NAN);
    let mfu = cfg.flops_per_token() * tokens_per_s / (peak * n);
    StepReport {
        step_time_s,
        tokens_per_s,
        samples_per_s: settings.batch as f64 / step_time_s.max(1e-12),
        mfu,
        hfu: mfu,
        breakdown: mean,
        devices,
        critical_path: Vec::new(),
        links: Vec::new(),
        peak_memory_bytes: ranks.iter().map(|r| r.allocated_bytes).max().unwrap_or(0),
    }
}

/// Trains `steps` steps of `cfg` on `data` with `dp` thread ranks.
pub fn train_threads(
    cfg: &ModelConfig,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
) -> Result<DistResult, TrainError> {
    settings.validate()?;
    let micro = settings.batch / settings.micro_batches;
    if dist.dp == 0 || micro % dist.dp != 0 {
        return Err(TrainError::Config(format!(
            "dp {} must divide the micro-batch of {} samples (batch {} / {} micro-batches)",
            dist.dp, micro, settings.batch, settings.micro_batches
        )));
    }
    let t0 = Instant::now();
    let comms = threads::group(dist.dp, dist.timeout);
    let results: Vec<Result<RankOutput, TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| s.spawn(move || rank_loop(cfg, settings, dist, data, steps, &mut c)))
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| {
                h.join().unwrap_or_else(|e| {
                    let msg = e
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(TrainError::Config(format!("rank {r} panicked: {msg}")))
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
        errors.sort_by_key(|e| e.to_string().contains("has stopped"));
        let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(TrainError::Config(format!(
            "distributed run failed: {}",
            msgs.join("; ")
        )));
    }
    let mut ranks = Vec::new();
    let mut first = None;
    for (losses, params, rep) in ok {
        if first.is_none() {
            first = Some((losses, params));
        }
        ranks.push(rep);
    }
    let (losses, params) = first.unwrap_or_default();
    let report = measured_report(cfg, settings, &ranks, steps);
    Ok(DistResult {
        losses,
        params,
        ranks,
        wall_s: t0.elapsed().as_secs_f64(),
        report,
    })
}

/// A rank's losses, final parameters and measurements.
type RankOutput = (Vec<f64>, Vec<f32>, RankReport);

/// Trains on this process's rank of an MPI job (`mpirun -np N`): the group is
/// `MPI_COMM_WORLD`, whose size must equal `dist.dp`. Every rank returns the same losses.
#[cfg(feature = "mpi")]
pub fn train_mpi(
    cfg: &ModelConfig,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
) -> Result<(usize, DistResult), TrainError> {
    settings.validate()?;
    let mut comm = crate::comm::mpi_backend::init(dist.timeout)
        .ok_or_else(|| TrainError::Config("MPI is already initialised in this process".into()))?;
    if comm.size() != dist.dp {
        return Err(TrainError::Config(format!(
            "--dp {} but mpirun started {} processes: pass -np {} to mpirun (or --dp {})",
            dist.dp,
            comm.size(),
            dist.dp,
            comm.size()
        )));
    }
    let micro = settings.batch / settings.micro_batches;
    if micro % dist.dp != 0 {
        return Err(TrainError::Config(format!(
            "dp {} must divide the micro-batch of {} samples (batch {} / {} micro-batches)",
            dist.dp, micro, settings.batch, settings.micro_batches
        )));
    }
    let t0 = Instant::now();
    let rank = comm.rank();
    let (losses, params, rep) = rank_loop(cfg, settings, dist, data, steps, &mut comm)?;
    let ranks = vec![rep];
    let report = measured_report(cfg, settings, &ranks, steps);
    Ok((
        rank,
        DistResult {
            losses,
            params,
            ranks,
            wall_s: t0.elapsed().as_secs_f64(),
            report,
        },
    ))
}

fn comm_err(e: CommError) -> TrainError {
    TrainError::Config(e.to_string())
}

/// One rank's training loop.
fn rank_loop(
    cfg: &ModelConfig,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    comm: &mut dyn Communicator,
) -> Result<RankOutput, TrainError> {
    let rank = comm.rank();
    let dp = dist.dp;
    let mut model = Model::new(cfg, settings.seed)?;
    model.dropout = settings.dropout;
    let dims = model.dims();
    let s = dims.s;
    let mut p = model.layout.init::<f32>(settings.seed);
    let n = p.len();
    let shard = match dist.sharding {
        Sharding::None => 0..n,
        Sharding::Optimizer => chunk(n, dp, rank),
    };
    let (mut m, mut v) = (vec![0.0f32; shard.len()], vec![0.0f32; shard.len()]);
    let mut g = vec![0.0f32; n];
    let decay = model.layout.decay_mask();
    let micro = settings.batch / settings.micro_batches;
    let per_rank = micro / dp;
    let mut acts = Acts::<f32>::with_remat(&dims, per_rank, settings.dropout > 0.0, settings.remat);
    let allocated_bytes = 4 * (2 * n + 2 * shard.len()) as u64 + acts.bytes();
    let mut order = Order::new(settings.seed, data.samples());
    let schedule = optim::Schedule {
        peak: settings.lr,
        end: settings.lr_end,
        warmup: settings.warmup,
        total: settings.steps,
    };
    let mut losses = Vec::new();
    let (mut compute_s, mut comm_s, mut optimizer_s, mut gather_s) = (0.0, 0.0, 0.0, 0.0);
    let loop_start = Instant::now();
    for step in 0..steps {
        let first = step * settings.batch as u64;
        let ks: Vec<u64> = (first..first + settings.batch as u64).collect();
        let idx: Vec<usize> = ks.iter().map(|&k| order.at(k)).collect();
        let total: usize = idx
            .iter()
            .map(|&i| {
                data.sample(i)[..s]
                    .iter()
                    .filter(|&&t| t != special::PAD)
                    .count()
            })
            .sum();
        let t = Instant::now();
        g.fill(0.0);
        let mut loss = 0.0;
        for (mk, mi) in ks.chunks(micro).zip(idx.chunks(micro)) {
            let mine = rank * per_rank..(rank + 1) * per_rank;
            let samples: Vec<&[u32]> = mi[mine.clone()].iter().map(|&i| data.sample(i)).collect();
            let mut batch = Batch::from_samples(&samples, &mk[mine], s);
            batch.normalise(total);
            loss += model.forward(&p, &mut acts, &batch, step, true);
            model.backward(&p, &mut g, &mut acts, &batch, step, true);
        }
        compute_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sq = match dist.sharding {
            Sharding::None => {
                comm.all_reduce(&mut g, dist.algo).map_err(comm_err)?;
                optim::sum_squares(&g)
            }
            Sharding::Optimizer => {
                let mine = comm.reduce_scatter(&mut g, dist.algo).map_err(comm_err)?;
                let mut part = [optim::sum_squares(&g[mine]) as f32];
                comm.all_reduce(&mut part, dist.algo).map_err(comm_err)?;
                f64::from(part[0])
            }
        };
        let mut l = [loss as f32];
        comm.all_reduce(&mut l, dist.algo).map_err(comm_err)?;
        comm_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let scale = optim::clip_scale(sq.sqrt(), settings.clip) as f32;
        let lr = schedule.lr(step + 1);
        settings.adamw.update(
            &mut p[shard.clone()],
            &mut m,
            &mut v,
            &g[shard.clone()],
            &decay[shard.clone()],
            scale,
            lr,
            step + 1,
        );
        optimizer_s += t.elapsed().as_secs_f64();
        if dist.sharding == Sharding::Optimizer {
            let t = Instant::now();
            comm.all_gather(&mut p, dist.algo).map_err(comm_err)?;
            gather_s += t.elapsed().as_secs_f64();
        }
        losses.push(f64::from(l[0]));
    }
    Ok((
        losses,
        p,
        RankReport {
            rank,
            compute_s,
            comm_s,
            gather_s,
            wall_s: loop_start.elapsed().as_secs_f64(),
            optimizer_s,
            allocated_bytes,
        },
    ))
}
