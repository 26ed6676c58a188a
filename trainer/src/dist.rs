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
//! - Data parallelism: each replica runs its share of every micro-batch; gradients are summed
//!   with the plan's collective algorithm in buckets of the strategy's `grad_bucket` bytes.
//! - Optimizer parallelism (MindSpore's optimizer parallel, ZeRO semantics): gradients
//!   reduce-scattered over the data-parallel group, each rank updates its [`chunk`] of the
//!   weights and keeps Adam moments for it only, weights all-gathered.
//! - Rematerialisation: full (each layer's input kept, the layer recomputed in backward).
//! - The tied embedding: the first and last virtual stages both hold the word table; their
//!   gradients are summed between them before the update, so both copies stay equal.
//!
//! Every rank's loss rows are weighted by 1/(counted rows of the whole step), so sums over
//! ranks give the single-device gradient; samples, dropout masks (keyed on global sample,
//! row, layer and head indices) and the schedule of learning rates are those of one device.
//! The runs differ from one device only in the order of floating-point additions; tests hold
//! losses and weights to 1e-4.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pangu_model::ModelConfig;
use pangu_strategies::report::DeviceReport;
use pangu_strategies::schedule::Action;
use pangu_strategies::strategy::{OptShard, Precision, StrategySpec};
use pangu_strategies::{Breakdown, CollectiveAlgorithm, LayerId, Plan, StepReport};
use serde::Serialize;

use crate::comm::{chunk, threads, CommError, Communicator};
use crate::data::{Order, Packed};
use crate::model::{special, Acts, Batch, Layout, Model, Part, Reduce};
use crate::optim;
use crate::sharded::{self, WholeState};
use crate::train::Settings;
use crate::TrainError;

/// How the executor communicates.
#[derive(Debug, Clone, Copy)]
pub struct DistConfig {
    /// Collective algorithm of the gradient reductions (the simulator's enum).
    pub algo: CollectiveAlgorithm,
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
    /// Gradient buckets all-reduced while backward ran (threads backend, dp > 1).
    pub overlapped_buckets: u64,
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

/// The plan of `spec` for `cfg` on this machine: the `cpu-host` preset with one virtual
/// device per rank (dp × tp × pp; dp defaults to 1), fp32 unless the spec says otherwise.
pub fn plan_for(cfg: &ModelConfig, spec: &StrategySpec) -> Result<Plan, TrainError> {
    let mut spec = spec.clone();
    spec.precision.get_or_insert(Precision::Fp32);
    let devices = spec.dp.unwrap_or(1) * spec.tp.unwrap_or(1) * spec.pp.unwrap_or(1);
    spec.dp.get_or_insert(1);
    spec.devices = Some(devices);
    let cluster = host_cluster(devices)?;
    let (strategy, _) =
        pangu_strategies::strategy::resolve(&spec, &spec, cfg.global_batch, devices)
            .map_err(|e| TrainError::Config(e.to_string()))?;
    Plan::new(cfg, &cluster, &strategy).map_err(|e| TrainError::Config(e.to_string()))
}

/// This machine as `devices` virtual devices: the `cpu-host` preset with every device in one
/// server (threads or processes of one machine) and the machine's memory split between them.
pub fn host_cluster(devices: u32) -> Result<pangu_hardware::Cluster, TrainError> {
    let err = |e: pangu_hardware::HardwareError| TrainError::Config(e.to_string());
    let text = pangu_hardware::preset_toml("cpu-host").map_err(err)?;
    let mut spec = pangu_hardware::ClusterSpec::from_toml(text, "cpu-host").map_err(err)?;
    let machine = spec.chip.hbm.0 * u64::from(spec.server.chips);
    let devices = devices.max(1);
    spec.chips = devices;
    spec.server.chips = devices;
    spec.chip.hbm = pangu_hardware::Bytes(machine / u64::from(devices));
    pangu_hardware::Cluster::new(spec).map_err(err)
}

/// Checks that the executor can run `plan` with `settings`; the error names the value.
pub fn check_plan(plan: &Plan, settings: &Settings) -> Result<(), TrainError> {
    settings.validate()?;
    let s = &plan.strategy;
    if s.precision != Precision::Fp32 {
        return Err(TrainError::Unsupported(format!(
            "precision {}: the CPU executor trains in fp32 (set precision = \"fp32\")",
            s.precision
        )));
    }
    let rows = s.micro_batch_size * plan.model.seq_len;
    if s.seq_parallel && s.tp > 1 && rows % s.tp != 0 {
        return Err(TrainError::Config(format!(
            "seq_parallel: the {rows} rows of a micro-batch (micro-batch size {} × sequence {}) do not split into tp {} blocks",
            s.micro_batch_size, plan.model.seq_len, s.tp
        )));
    }
    if settings.batch != s.global_batch as usize
        || settings.micro_batches != s.micro_batches as usize
    {
        return Err(TrainError::Config(format!(
            "the training settings ask for batch {} in {} micro-batches but the plan has global batch {} in {} micro-batches",
            settings.batch, settings.micro_batches, s.global_batch, s.micro_batches
        )));
    }
    Ok(())
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
    // whole-buffer messages of the tree collectives (MPI_BSEND_OVERHEAD is under 1 KiB).
    let st = &plan.strategy;
    let act =
        4 * st.micro_batch_size as usize * plan.model.seq_len as usize * plan.model.hidden as usize;
    let msgs = 2 * (st.micro_batches * st.schedule.chunks()) as usize + 8;
    let params = 4 * plan.model.params().total as usize;
    let send_buffer = msgs * (act + 1024) + 2 * (params + 1024);
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

fn comm_err(e: CommError) -> TrainError {
    TrainError::Config(e.to_string())
}

/// A view of some ranks of a communicator as a group of their own (`members[i]` is the
/// parent's rank of the group's rank `i`).
pub struct Sub<'a> {
    parent: &'a mut dyn Communicator,
    members: &'a [usize],
    me: usize,
}

impl<'a> Sub<'a> {
    /// The group of `members` (which must hold the parent's own rank).
    pub fn new(parent: &'a mut dyn Communicator, members: &'a [usize]) -> Sub<'a> {
        let me = members
            .iter()
            .position(|&r| r == parent.rank())
            .unwrap_or(0);
        Sub {
            parent,
            members,
            me,
        }
    }
}

impl Communicator for Sub<'_> {
    fn rank(&self) -> usize {
        self.me
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError> {
        self.parent.send(self.members[to], data, op)
    }

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
        self.parent.recv(self.members[from], buf, op)
    }

    fn recv_add(
        &mut self,
        from: usize,
        buf: &mut [f32],
        op: &'static str,
    ) -> Result<(), CommError> {
        self.parent.recv_add(self.members[from], buf, op)
    }

    fn exchange(
        &mut self,
        to: usize,
        data: &[f32],
        from: usize,
        buf: &mut [f32],
        add: bool,
        op: &'static str,
    ) -> Result<(), CommError> {
        self.parent
            .exchange(self.members[to], data, self.members[from], buf, add, op)
    }
}

/// The sums over the tensor-parallel group inside the layers; the first error is kept and
/// every later call returns at once.
struct TpReduce<'a> {
    world: &'a mut dyn Communicator,
    members: &'a [usize],
    algo: CollectiveAlgorithm,
    error: Option<CommError>,
    secs: f64,
    /// Buckets for the overlapped data-parallel reduction, during a chunk's last backward.
    overlap: Option<(&'a mut Overlap, usize)>,
}

impl<'a> TpReduce<'a> {
    fn new(
        world: &'a mut dyn Communicator,
        members: &'a [usize],
        algo: CollectiveAlgorithm,
        overlap: Option<(&'a mut Overlap, usize)>,
    ) -> TpReduce<'a> {
        TpReduce {
            world,
            members,
            algo,
            error: None,
            secs: 0.0,
            overlap,
        }
    }

    /// Charges a pass that started at `t`: its group sums to tp_comm, the rest to compute.
    fn charge(self, t: Instant, rep: &mut RankReport) -> Result<(), TrainError> {
        if let Some(e) = self.error {
            return Err(comm_err(e));
        }
        rep.tp_comm_s += self.secs;
        rep.compute_s += t.elapsed().as_secs_f64() - self.secs;
        Ok(())
    }

    /// Runs `f` on the group unless an earlier call failed, timing it and keeping its error.
    fn run(&mut self, f: impl FnOnce(&mut Sub<'_>, CollectiveAlgorithm) -> Result<(), CommError>) {
        if self.error.is_some() {
            return;
        }
        let t = Instant::now();
        let algo = self.algo;
        if let Err(e) = f(&mut Sub::new(&mut *self.world, self.members), algo) {
            self.error = Some(e);
        }
        self.secs += t.elapsed().as_secs_f64();
    }
}

impl Reduce<f32> for TpReduce<'_> {
    fn all_reduce(&mut self, buf: &mut [f32]) {
        if self.members.len() > 1 {
            self.run(|g, algo| g.all_reduce(buf, algo));
        }
    }

    fn all_gather(&mut self, local: &[f32], full: &mut [f32]) {
        self.run(|g, algo| {
            let mine = chunk(full.len(), g.size(), g.rank());
            full[mine].copy_from_slice(local);
            g.all_gather(full, algo)
        });
    }

    fn reduce_scatter(&mut self, full: &mut [f32], local: &mut [f32]) {
        self.run(|g, algo| {
            let mine = g.reduce_scatter(full, algo)?;
            local.copy_from_slice(&full[mine]);
            Ok(())
        });
    }

    fn layer_done(&mut self, range: Range<usize>, grads: &[f32]) {
        if let Some((o, chunk)) = &mut self.overlap {
            o.add(*chunk, range, grads);
        }
    }
}

/// Data-parallel gradient reduction overlapped with backward (threads backend): during the
/// last backward of each chunk, every finished layer's gradient joins a bucket of the
/// strategy's `grad_bucket` bytes; a full bucket goes to this rank's communication thread,
/// which all-reduces it over the data-parallel group (on a communicator of its own) while
/// backward continues. The optimizer step waits for the buckets and reduces the rest (the
/// embeddings and the head) itself.
struct Overlap {
    to_comm: std::sync::mpsc::Sender<Bucket>,
    from_comm: std::sync::mpsc::Receiver<Result<Bucket, CommError>>,
    bucket: usize,
    /// The bucket being filled: chunk, first element, and its layers' values, last layer
    /// first (joined in buffer order when posted, so each value is copied once more).
    open: Option<(usize, usize, Vec<Vec<f32>>)>,
    in_flight: usize,
    done: u64,
    /// Floats held in bucket copies now (open and posted), and at most.
    live: usize,
    peak: usize,
}

/// A bucket: chunk, first element in its gradient buffer, values.
type Bucket = (usize, usize, Vec<f32>);

impl Overlap {
    /// Starts the communication thread on `comm`, reducing over the ranks `dp_group`.
    fn start(
        mut comm: Box<dyn Communicator + Send>,
        dp_group: Vec<usize>,
        algo: CollectiveAlgorithm,
        bucket: usize,
    ) -> Overlap {
        let (to_comm, rx) = std::sync::mpsc::channel::<Bucket>();
        let (tx, from_comm) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (c, at, mut v) in rx {
                let r = Sub::new(&mut *comm, &dp_group).all_reduce(&mut v, algo);
                if tx.send(r.map(|()| (c, at, v))).is_err() {
                    break;
                }
            }
        });
        Overlap {
            to_comm,
            from_comm,
            bucket,
            open: None,
            in_flight: 0,
            done: 0,
            live: 0,
            peak: 0,
        }
    }

    /// Layers arrive last first: each range ends where the open bucket starts.
    fn add(&mut self, chunk: usize, range: Range<usize>, grads: &[f32]) {
        self.live += grads.len();
        self.peak = self.peak.max(self.live);
        let mut pieces = match self.open.take() {
            Some((c, at, p)) if c == chunk && at == range.end => p,
            Some(other) => {
                self.post_open(other);
                Vec::new()
            }
            None => Vec::new(),
        };
        pieces.push(grads.to_vec());
        if pieces.iter().map(Vec::len).sum::<usize>() >= self.bucket {
            self.post_open((chunk, range.start, pieces));
        } else {
            self.open = Some((chunk, range.start, pieces));
        }
    }

    /// Joins an open bucket's layers in buffer order and posts it.
    fn post_open(&mut self, (chunk, at, pieces): (usize, usize, Vec<Vec<f32>>)) {
        let mut v = Vec::with_capacity(pieces.iter().map(Vec::len).sum());
        for p in pieces.iter().rev() {
            v.extend_from_slice(p);
        }
        self.post((chunk, at, v));
    }

    fn post(&mut self, b: Bucket) {
        // A closed channel means the thread stopped on an error, which `wait` reports.
        if self.to_comm.send(b).is_ok() {
            self.in_flight += 1;
        }
    }

    /// Posts the open bucket.
    fn flush(&mut self) {
        if let Some(b) = self.open.take() {
            self.post_open(b);
        }
    }

    /// Waits for every posted bucket and writes the sums into the chunks' gradients.
    fn wait(&mut self, grads: &mut [&mut Vec<f32>]) -> Result<(), CommError> {
        self.flush();
        while self.in_flight > 0 {
            let (c, at, v) = self.from_comm.recv().map_err(|_| CommError::PeerGone {
                rank: 0,
                op: "overlapped gradient reduction",
                peer: 0,
            })??;
            grads[c][at..at + v.len()].copy_from_slice(&v);
            self.in_flight -= 1;
            self.done += 1;
            self.live -= v.len();
        }
        Ok(())
    }
}

/// One model chunk of this rank: its part of the model, weights, gradients, Adam moments for
/// its optimizer shard, and activation buffers for the micro-batches in flight.
struct ChunkState {
    model: Model,
    p: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: Vec<bool>,
    shard: Range<usize>,
    acts: Vec<Acts<f32>>,
    /// The one pass scratch of this chunk, lent to the micro-batch whose pass runs.
    scratch: crate::model::Scratch<f32>,
    free: Vec<usize>,
    slot_of: HashMap<u32, usize>,
    counted: Vec<Range<usize>>,
}

impl ChunkState {
    fn slot(&mut self, mb: u32) -> Result<usize, TrainError> {
        if let Some(&s) = self.slot_of.get(&mb) {
            return Ok(s);
        }
        let s = self.free.pop().ok_or_else(|| {
            TrainError::Config(format!(
                "schedule keeps more micro-batches in flight than counted (micro-batch {mb})"
            ))
        })?;
        self.slot_of.insert(mb, s);
        Ok(s)
    }

    fn release(&mut self, mb: u32) {
        if let Some(s) = self.slot_of.remove(&mb) {
            self.free.push(s);
        }
    }
}

/// The most micro-batches of each chunk a stage's action list holds at once.
fn in_flight(actions: &[Action], chunks: usize) -> Vec<usize> {
    let mut now = vec![0usize; chunks];
    let mut peak = vec![0usize; chunks];
    for a in actions {
        match *a {
            Action::Forward { chunk, .. } => {
                let c = chunk as usize;
                now[c] += 1;
                peak[c] = peak[c].max(now[c]);
            }
            Action::Backward { chunk, .. } => now[chunk as usize] -= 1,
            _ => {}
        }
    }
    peak
}

/// Every rank writes its file, then rank 0 completes the checkpoint (see [`crate::sharded`]).
fn save_checkpoint(
    plan: &Plan,
    settings: &Settings,
    save: &Save,
    step: u64,
    chunks: &[ChunkState],
    world: &mut dyn Communicator,
) -> Result<(), TrainError> {
    let rank = world.rank();
    let tmp = sharded::temp_dir(&save.dir, step);
    if rank == 0 && tmp.exists() {
        // A partial folder of an earlier, interrupted run.
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    world.barrier().map_err(comm_err)?;
    let parts: Vec<sharded::PartState<'_>> = chunks
        .iter()
        .map(|c| sharded::PartState {
            layout: &c.model.layout,
            params: &c.p,
            m: &c.m,
            v: &c.v,
            shard: c.shard.clone(),
        })
        .collect();
    sharded::write_rank(&tmp, rank, &parts)?;
    world.barrier().map_err(comm_err)?;
    if rank == 0 {
        let manifest = sharded::ShardedManifest {
            format: sharded::FORMAT.into(),
            step,
            seed: settings.seed,
            model: plan.model.clone(),
            strategy: plan.strategy.clone(),
            tokenizer_hash: save.tokenizer_hash.clone(),
            settings: serde_json::to_value(settings)
                .map_err(|e| TrainError::Config(format!("settings: {e}")))?,
            files: Default::default(),
        };
        sharded::finish(
            &save.dir,
            &tmp,
            manifest,
            world.size(),
            &save.tokenizer_json,
        )?;
    }
    world.barrier().map_err(comm_err)
}

/// A rank's losses, its parts' final weights and its measurements.
struct RankOutput {
    losses: Vec<f64>,
    parts: Vec<(Layout, Vec<f32>)>,
    report: RankReport,
}

/// Global layer indices of a chunk of the plan.
pub fn layer_range(cfg: &ModelConfig, layers: &[LayerId]) -> Range<usize> {
    let idx = |l: &LayerId| match l {
        LayerId::Block(i) => *i as usize,
        LayerId::Query => cfg.layers as usize - 1,
    };
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) => idx(a)..idx(b) + 1,
        _ => 0..0,
    }
}

/// One rank's training loop.
#[allow(clippy::too_many_arguments)]
fn rank_loop(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    io: Io<'_>,
    world: &mut dyn Communicator,
    aux: Option<Box<dyn Communicator + Send>>,
) -> Result<RankOutput, TrainError> {
    let cfg = &plan.model;
    let st = &plan.strategy;
    let mesh = plan.mesh;
    let rank = world.rank();
    let me = mesh.coords(rank as u32);
    let (dp, tp, pp) = (st.dp as usize, st.tp as usize, st.pp as usize);
    let (dpi, tpi, stage) = (me.dp as usize, me.tp as usize, me.pp as usize);
    let at = |pp: u32, dp: u32, tp: u32| {
        mesh.rank(pangu_strategies::mesh::Coords { pp, dp, tp }) as usize
    };
    let dp_group: Vec<usize> = (0..st.dp).map(|d| at(me.pp, d, me.tp)).collect();
    let tp_group: Vec<usize> = (0..st.tp).map(|t| at(me.pp, me.dp, t)).collect();
    let pp_group: Vec<usize> = (0..st.pp).map(|p| at(p, me.dp, me.tp)).collect();
    let embed_group: Vec<usize> = vec![pp_group[0], pp_group[pp - 1]];
    let world_group: Vec<usize> = (0..world.size()).collect();
    let sharded = st.opt_shard != OptShard::None && dp > 1;
    let dropout = settings.dropout > 0.0;
    let micro = settings.batch / settings.micro_batches;
    let per_rank = micro / dp;
    let actions = &plan.schedule.stages[stage];
    let stage_plan = &plan.stages[stage];
    let flight = in_flight(actions, stage_plan.chunks.len());
    let mut chunks: Vec<ChunkState> = Vec::new();
    let whole = Layout::new(cfg)?;
    let (start, whole_p) = match io.resume {
        Some((step, state)) => (step, std::borrow::Cow::Borrowed(&state.params)),
        None => (0, std::borrow::Cow::Owned(whole.init::<f32>(settings.seed))),
    };
    for (ci, c) in stage_plan.chunks.iter().enumerate() {
        let part = Part {
            tp,
            tp_rank: tpi,
            layers: layer_range(cfg, &c.layers),
            embedding: c.embedding,
            head: c.head,
            seq_parallel: st.seq_parallel && tp > 1,
        };
        let layout = Layout::part(cfg, &part)?;
        let p = layout.gather(&whole, &whole_p);
        let n = p.len();
        let shard = if sharded { chunk(n, dp, dpi) } else { 0..n };
        let (m, v) = match io.resume {
            Some((_, state)) => (
                layout.gather(&whole, &state.m)[shard.clone()].to_vec(),
                layout.gather(&whole, &state.v)[shard.clone()].to_vec(),
            ),
            None => (vec![0.0; shard.len()], vec![0.0; shard.len()]),
        };
        let mut model = Model::new(cfg, settings.seed)?;
        model.dropout = settings.dropout;
        let decay = layout.decay_mask();
        let counted = layout.counted_ranges();
        model.layout = layout;
        let slots = flight[ci].max(1);
        let mut acts: Vec<Acts<f32>> = (0..slots)
            .map(|_| Acts::for_part(&model.layout, per_rank, dropout, st.remat))
            .collect();
        // One pass runs at a time: keep one scratch (slot 0's), drop the others'.
        let mut scratch = crate::model::Scratch::default();
        for a in acts.iter_mut().rev() {
            scratch = crate::model::Scratch::default();
            a.swap_scratch(&mut scratch);
        }
        chunks.push(ChunkState {
            model,
            g: vec![0.0; n],
            m,
            v,
            p,
            decay,
            shard,
            acts,
            scratch,
            free: (0..slots).rev().collect(),
            slot_of: HashMap::new(),
            counted,
        });
    }
    drop(whole_p);
    let allocated_bytes: u64 = chunks
        .iter()
        .map(|c| {
            4 * (2 * c.p.len() + 2 * c.shard.len()) as u64
                + c.acts.iter().map(Acts::bytes).sum::<u64>()
                + c.scratch.bytes()
        })
        .sum();
    // Virtual stages 0 and last hold the tied word table.
    let embed_chunk = chunks.iter().position(|c| c.model.layout.part.embedding);
    let head_chunk = chunks.iter().position(|c| c.model.layout.part.head);
    let mut order = Order::new(settings.seed, data.samples());
    let schedule = optim::Schedule {
        peak: settings.lr,
        end: settings.lr_end,
        warmup: settings.warmup,
        total: settings.steps,
    };
    let bucket = (st.grad_bucket.0 / 4).max(1) as usize;
    let mut overlap = match aux {
        Some(c) if dp > 1 && !sharded => {
            Some(Overlap::start(c, dp_group.clone(), dist.algo, bucket))
        }
        _ => None,
    };
    // The last backward of each chunk in a step: its layers' gradients are then final.
    let mut last_backward: Vec<Option<u32>> = vec![None; chunks.len()];
    for a in actions {
        if let Action::Backward { mb, chunk } = *a {
            last_backward[chunk as usize] = Some(mb);
        }
    }
    let s = cfg.seq_len as usize;
    let mut rep = RankReport {
        rank,
        stage,
        allocated_bytes,
        ..RankReport::default()
    };
    let mut losses = Vec::new();
    let loop_start = Instant::now();
    for step in start..steps {
        let step_start = Instant::now();
        let cpu_start = (rank == 0).then(crate::cpustat::sample);
        assert!(
            dist.fail != Some((rank, step)),
            "fault injected at step {step}"
        );
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
        let batches: Vec<Batch> = ks
            .chunks(micro)
            .zip(idx.chunks(micro))
            .map(|(mk, mi)| {
                let mine = dpi * per_rank..(dpi + 1) * per_rank;
                let samples: Vec<&[u32]> =
                    mi[mine.clone()].iter().map(|&i| data.sample(i)).collect();
                let mut b = Batch::from_samples(&samples, &mk[mine], s);
                b.normalise(total);
                b
            })
            .collect();
        for c in &mut chunks {
            crate::kernels::zero(&mut c.g);
        }
        let mut loss = 0.0f64;
        for a in actions {
            match *a {
                Action::RecvActivation { mb, chunk, peer } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    Sub::new(world, &pp_group)
                        .recv(
                            peer as usize,
                            c.acts[slot].input_mut(),
                            "pipeline activation",
                        )
                        .map_err(comm_err)?;
                    rep.bubble_s += t.elapsed().as_secs_f64();
                }
                Action::Forward { mb, chunk } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    let mut red = TpReduce::new(&mut *world, &tp_group, dist.algo, None);
                    c.acts[slot].swap_scratch(&mut c.scratch);
                    loss += c.model.forward_part(
                        &c.p,
                        &mut c.acts[slot],
                        &batches[mb as usize],
                        step,
                        true,
                        &mut red,
                    );
                    c.acts[slot].swap_scratch(&mut c.scratch);
                    red.charge(t, &mut rep)?;
                }
                Action::SendActivation { mb, chunk, peer } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    Sub::new(world, &pp_group)
                        .send(peer as usize, c.acts[slot].output(), "pipeline activation")
                        .map_err(comm_err)?;
                    rep.pp_comm_s += t.elapsed().as_secs_f64();
                }
                Action::RecvGradient { mb, chunk, peer } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    Sub::new(world, &pp_group)
                        .recv(peer as usize, c.acts[slot].grad_mut(), "pipeline gradient")
                        .map_err(comm_err)?;
                    rep.bubble_s += t.elapsed().as_secs_f64();
                }
                Action::Backward { mb, chunk } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    let last = last_backward[chunk as usize] == Some(mb);
                    let bucket_into = overlap
                        .as_mut()
                        .filter(|_| last)
                        .map(|o| (o, chunk as usize));
                    let mut red = TpReduce::new(&mut *world, &tp_group, dist.algo, bucket_into);
                    c.acts[slot].swap_scratch(&mut c.scratch);
                    c.model.backward_part(
                        &c.p,
                        &mut crate::grads::Grads::whole(&mut c.g),
                        &mut c.acts[slot],
                        &batches[mb as usize],
                        step,
                        true,
                        &mut red,
                    );
                    c.acts[slot].swap_scratch(&mut c.scratch);
                    red.charge(t, &mut rep)?;
                    if let (Some(o), true) = (overlap.as_mut(), last) {
                        o.flush();
                    }
                    if c.model.layout.part.embedding {
                        c.release(mb);
                    }
                }
                Action::SendGradient { mb, chunk, peer } => {
                    let c = &mut chunks[chunk as usize];
                    let slot = c.slot(mb)?;
                    let t = Instant::now();
                    Sub::new(world, &pp_group)
                        .send(peer as usize, c.acts[slot].grad(), "pipeline gradient")
                        .map_err(comm_err)?;
                    rep.pp_comm_s += t.elapsed().as_secs_f64();
                    c.release(mb);
                }
                Action::OptimizerStep => {}
            }
        }
        // The layers' buckets reduced while backward ran.
        if let Some(o) = overlap.as_mut() {
            let t = Instant::now();
            let mut gs: Vec<&mut Vec<f32>> = chunks.iter_mut().map(|c| &mut c.g).collect();
            o.wait(&mut gs).map_err(comm_err)?;
            rep.dp_comm_s += t.elapsed().as_secs_f64();
        }
        // Under sequence parallelism each device's LayerNorm and bias gradients cover its own
        // rows: sum them over the tensor-parallel group (packed into one message).
        for c in &mut chunks {
            let ranges = c.model.layout.row_partial_ranges();
            if ranges.is_empty() {
                continue;
            }
            let t = Instant::now();
            let mut packed: Vec<f32> = ranges
                .iter()
                .flat_map(|r| c.g[r.clone()].to_vec())
                .collect();
            Sub::new(world, &tp_group)
                .all_reduce(&mut packed, dist.algo)
                .map_err(comm_err)?;
            let mut at = 0;
            for r in ranges {
                c.g[r.clone()].copy_from_slice(&packed[at..at + r.len()]);
                at += r.len();
            }
            rep.tp_comm_s += t.elapsed().as_secs_f64();
        }
        // Gradient reductions: the tied word table between the first and last virtual stage,
        // then each chunk over the data-parallel group.
        let t = Instant::now();
        match (embed_chunk, head_chunk) {
            (Some(e), Some(h)) if e != h => {
                let r = chunks[e].model.layout.wte.clone();
                let (a, b) = if e < h {
                    let (x, y) = chunks.split_at_mut(h);
                    (&mut x[e], &mut y[0])
                } else {
                    let (x, y) = chunks.split_at_mut(e);
                    (&mut y[0], &mut x[h])
                };
                let rb = b.model.layout.wte.clone();
                for (x, y) in a.g[r.clone()].iter_mut().zip(&mut b.g[rb.clone()]) {
                    *x += *y;
                    *y = *x;
                }
            }
            (Some(e), None) if pp > 1 => {
                let r = chunks[e].model.layout.wte.clone();
                Sub::new(world, &embed_group)
                    .all_reduce(&mut chunks[e].g[r], dist.algo)
                    .map_err(comm_err)?;
            }
            (None, Some(h)) if pp > 1 => {
                let r = chunks[h].model.layout.wte.clone();
                Sub::new(world, &embed_group)
                    .all_reduce(&mut chunks[h].g[r], dist.algo)
                    .map_err(comm_err)?;
            }
            _ => {}
        }
        let mut sq = 0.0f64;
        for c in &mut chunks {
            if dp > 1 {
                let mut group = Sub::new(world, &dp_group);
                if sharded {
                    let mine = group
                        .reduce_scatter(&mut c.g, dist.algo)
                        .map_err(comm_err)?;
                    debug_assert_eq!(mine, c.shard);
                } else {
                    // With overlap the layers are reduced already: the rest around them.
                    let n = c.g.len();
                    let rest: Vec<Range<usize>> = match (
                        &overlap,
                        c.model.layout.layers.first(),
                        c.model.layout.layers.last(),
                    ) {
                        (Some(_), Some(a), Some(b)) => vec![0..a.span().start, b.span().end..n],
                        _ => std::iter::once(0..n).collect(),
                    };
                    for r in rest {
                        for b in c.g[r].chunks_mut(bucket) {
                            group.all_reduce(b, dist.algo).map_err(comm_err)?;
                        }
                    }
                }
            }
            // This rank's share of the global gradient norm: its optimizer shard (or, when
            // every replica holds everything, replica 0's copy), counted once across the
            // tensor-parallel group and the tied table.
            if sharded || dpi == 0 {
                for r in &c.counted {
                    let lo = r.start.max(c.shard.start);
                    let hi = r.end.min(c.shard.end);
                    if lo < hi {
                        sq += optim::sum_squares(&c.g[lo..hi]);
                    }
                }
            }
        }
        let head_loss = if head_chunk.is_some() && tpi == 0 {
            loss
        } else {
            0.0
        };
        let mut sums = [sq as f32, head_loss as f32];
        if world_group.len() > 1 {
            Sub::new(world, &world_group)
                .all_reduce(&mut sums, dist.algo)
                .map_err(comm_err)?;
        }
        rep.dp_comm_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let scale = optim::clip_scale(f64::from(sums[0]).sqrt(), settings.clip) as f32;
        let lr = schedule.lr(step + 1);
        for c in &mut chunks {
            let sh = c.shard.clone();
            settings.adamw.update(
                &mut c.p[sh.clone()],
                &mut c.m,
                &mut c.v,
                &c.g[sh.clone()],
                &c.decay[sh],
                scale,
                lr,
                step + 1,
            );
        }
        rep.optimizer_s += t.elapsed().as_secs_f64();
        if sharded {
            let t = Instant::now();
            for c in &mut chunks {
                Sub::new(world, &dp_group)
                    .all_gather(&mut c.p, dist.algo)
                    .map_err(comm_err)?;
            }
            rep.opt_comm_s += t.elapsed().as_secs_f64();
        }
        losses.push(f64::from(sums[1]));
        rep.step_s.push(step_start.elapsed().as_secs_f64());
        if let Some(a) = cpu_start {
            rep.step_cpu
                .push(crate::cpustat::window(&a, &crate::cpustat::sample()));
        }
        if let Some(save) = io.save {
            let done = step + 1;
            if done == steps || (save.every > 0 && done % save.every == 0) {
                save_checkpoint(plan, settings, save, done, &chunks, world)?;
            }
        }
    }
    rep.wall_s = loop_start.elapsed().as_secs_f64();
    rep.overlapped_buckets = overlap.as_ref().map_or(0, |o| o.done);
    // The bucket copies the overlapped reduction held at its peak (the fusion buffers).
    rep.allocated_bytes += 4 * overlap.as_ref().map_or(0, |o| o.peak) as u64;
    Ok(RankOutput {
        losses,
        parts: chunks.into_iter().map(|c| (c.model.layout, c.p)).collect(),
        report: rep,
    })
}
