//! Plan → per-device task graph.
//!
//! Every device walks its stage's action list from the plan's schedule (the same list the
//! executor runs) and emits tasks on its streams:
//! - the **compute** stream runs forward, recompute and backward segments (the ops between two
//!   tensor-parallel collectives of one layer, priced by the cost model) and the optimizer;
//! - the **tp** stream runs tensor-parallel collectives; compute waits for each;
//! - the **dp** stream runs gradient buckets (reduced as soon as the last micro-batch's
//!   backward has produced a layer's gradients, overlapping the rest of backward), the tied
//!   embedding all-reduce, the clipping norms and the optimizer-sharding gathers;
//! - pipeline sends and receives are free-standing tasks: a send starts when its forward or
//!   backward ends, a receive completes when the data has arrived.

use std::collections::{BTreeMap, HashMap};

use pangu_hardware::Topology;
use pangu_model::ops::{totals, Op};
use pangu_strategies::collective::default_algorithm;
use pangu_strategies::memory::bytes_per_param;
use pangu_strategies::schedule::Action;
use pangu_strategies::strategy::Axis;
use pangu_strategies::{
    BackwardPrefetch, Category, Chunk, CollectiveAlgorithm, CollectiveKind, Coords, GroupKind,
    LayerId, OptShard, Plan, Remat,
};

use crate::cost::CostModel;
use crate::engine::Time;

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The device's compute engine.
    Compute = 0,
    /// Tensor-parallel communication.
    Tp = 1,
    /// Data-parallel and optimizer communication.
    Dp = 2,
    /// Not on a stream (pipeline sends and receives).
    Free = 3,
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Computation of a fixed duration.
    Compute {
        /// Duration in ns.
        ns: Time,
        /// Compute or recompute.
        cat: Category,
    },
    /// This device's part in a collective instance.
    Coll {
        /// Instance index.
        inst: u32,
    },
    /// A pipeline send to a chip.
    Send {
        /// Destination chip.
        dst: u32,
        /// Bytes.
        bytes: f64,
    },
    /// A pipeline receive (completes when its send's data arrived).
    Recv,
}

/// What a task is, for traces and the critical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Forward of (micro-batch, chunk).
    Forward(u32, u32),
    /// Recompute in backward of (micro-batch, chunk).
    Recompute(u32, u32),
    /// Backward of (micro-batch, chunk).
    Backward(u32, u32),
    /// Optimizer update.
    Optimizer,
    /// End of the step.
    StepEnd,
    /// A collective (see the instance).
    Collective,
    /// Send of (micro-batch, chunk).
    Send(u32, u32),
    /// Receive of (micro-batch, chunk).
    Recv(u32, u32),
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Rank (chip) it runs on.
    pub device: u32,
    /// Stream.
    pub stream: Stream,
    /// Work.
    pub work: Work,
    /// Number of dependencies.
    pub deps: u32,
    /// Label.
    pub label: Label,
}

/// A collective instance shared by its members' tasks.
#[derive(Debug, Clone)]
pub struct CollInst {
    /// What it computes.
    pub kind: CollectiveKind,
    /// How.
    pub algo: CollectiveAlgorithm,
    /// Member chips in group order.
    pub ranks: Vec<u32>,
    /// Buffer bytes.
    pub bytes: f64,
    /// Breakdown category of waiting for it.
    pub cat: Category,
    /// Group kind.
    pub group: GroupKind,
    /// Member tasks.
    pub tasks: Vec<u32>,
}

/// Successors of every task in one array: task `t`'s are `to[at[t]..at[t + 1]]` (the event
/// loop reads them for every task that ends; one array keeps them together in memory).
#[derive(Debug, Clone, Default)]
pub struct Successors {
    at: Vec<u32>,
    to: Vec<u32>,
}

impl Successors {
    /// From one list per task.
    pub fn from_lists(lists: &[Vec<u32>]) -> Successors {
        let mut at = Vec::with_capacity(lists.len() + 1);
        at.push(0);
        for l in lists {
            at.push(at[at.len() - 1] + l.len() as u32);
        }
        Successors {
            at,
            to: lists.iter().flatten().copied().collect(),
        }
    }

    /// The successors of task `t`.
    pub fn of(&self, t: u32) -> &[u32] {
        let t = t as usize;
        &self.to[self.at[t] as usize..self.at[t + 1] as usize]
    }

    /// Tasks covered.
    pub fn len(&self) -> usize {
        self.at.len().saturating_sub(1)
    }

    /// Whether no task is covered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends another graph's successors, its task ids moved up by `base`.
    fn extend(&mut self, other: &Successors, base: u32) {
        if self.at.is_empty() {
            self.at.push(0);
        }
        let start = self.at[self.at.len() - 1];
        self.at.extend(other.at.iter().skip(1).map(|&a| a + start));
        self.to.extend(other.to.iter().map(|&t| t + base));
    }
}

/// The task graph of one step.
#[derive(Debug, Default)]
pub struct Workload {
    /// Tasks.
    pub tasks: Vec<Task>,
    /// Successors of each task.
    pub succ: Successors,
    /// Per device, per stream (compute, tp, dp): task ids in program order.
    pub streams: Vec<[Vec<u32>; 3]>,
    /// Collective instances.
    pub colls: Vec<CollInst>,
    /// FLOPs each device executes (recompute included).
    pub flops: Vec<f64>,
    /// The ranks that have tasks (all, or one per orbit when folded).
    pub devices: Vec<u32>,
}

impl Workload {
    /// Appends another job's task graph with its devices moved up by `offset` chips (two jobs
    /// sharing one cluster's network). `devices` keeps this job's: reports cover it, and the
    /// other job's step is read from the task times.
    pub fn append(&mut self, other: Workload, offset: u32) {
        let tbase = self.tasks.len() as u32;
        let cbase = self.colls.len() as u32;
        let off = offset as usize;
        if self.streams.len() < off {
            self.streams.resize_with(off, Default::default);
        }
        if self.flops.len() < off {
            self.flops.resize(off, 0.0);
        }
        for mut t in other.tasks {
            t.device += offset;
            match &mut t.work {
                Work::Coll { inst } => *inst += cbase,
                Work::Send { dst, .. } => *dst += offset,
                Work::Compute { .. } | Work::Recv => {}
            }
            self.tasks.push(t);
        }
        self.succ.extend(&other.succ, tbase);
        self.streams.truncate(off);
        self.streams.extend(
            other
                .streams
                .into_iter()
                .map(|s| s.map(|l| l.into_iter().map(|t| t + tbase).collect())),
        );
        self.flops.truncate(off);
        self.flops.extend(other.flops);
        for mut c in other.colls {
            for r in &mut c.ranks {
                *r += offset;
            }
            for t in &mut c.tasks {
                *t += tbase;
            }
            self.colls.push(c);
        }
    }
}

type SendKey = (bool, u32, u32, u32, u32);

struct Builder<'a> {
    plan: &'a Plan,
    cost: &'a CostModel,
    topo: &'a Topology,
    w: Workload,
    inst_of: HashMap<(GroupKind, u32, u32), u32>,
    next_seq: HashMap<(GroupKind, u32, u32), u32>,
    algos: HashMap<(GroupKind, u32), CollectiveAlgorithm>,
    sends: BTreeMap<SendKey, u32>,
    recvs: BTreeMap<SendKey, u32>,
    /// Successors per task while edges are still added (packed into `w.succ` at the end).
    succ: Vec<Vec<u32>>,
}

/// Builds the task graph of a plan for the given ranks (all ranks, or the representatives of
/// a symmetry folding).
pub fn build(plan: &Plan, cost: &CostModel, ranks: &[u32]) -> Workload {
    let n = plan.strategy.devices as usize;
    let mut b = Builder {
        plan,
        cost,
        topo: &plan.cluster.topology,
        w: Workload {
            streams: vec![Default::default(); n],
            flops: vec![0.0; n],
            ..Default::default()
        },
        inst_of: HashMap::new(),
        next_seq: HashMap::new(),
        algos: HashMap::new(),
        sends: BTreeMap::new(),
        recvs: BTreeMap::new(),
        succ: Vec::new(),
    };
    b.w.devices = ranks.to_vec();
    for &rank in ranks {
        b.device(rank);
    }
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for (k, &s) in &b.sends {
        if let Some(&r) = b.recvs.get(k) {
            pairs.push((s, r));
        }
    }
    pairs.sort_unstable();
    for (s, r) in pairs {
        b.edge(s, r);
    }
    b.w.succ = Successors::from_lists(&b.succ);
    b.w
}

/// Per-device state while walking its actions.
struct Dev {
    rank: u32,
    coords: Coords,
    pending: Vec<u32>,
    bucket: f64,
    last_compute: Option<u32>,
    /// Weight all-gathers still to be waited for, per (chunk, part): part 0 is the
    /// embedding, 1.. the layers, then the head.
    gathers: HashMap<(u32, usize), u32>,
}

impl Builder<'_> {
    fn task(&mut self, device: u32, stream: Stream, work: Work, label: Label, deps: &[u32]) -> u32 {
        let id = self.w.tasks.len() as u32;
        self.w.tasks.push(Task {
            device,
            stream,
            work,
            deps: 0,
            label,
        });
        self.succ.push(Vec::new());
        for &d in deps {
            self.edge(d, id);
        }
        if stream != Stream::Free {
            self.w.streams[device as usize][stream as usize].push(id);
        }
        id
    }

    fn edge(&mut self, from: u32, to: u32) {
        self.succ[from as usize].push(to);
        self.w.tasks[to as usize].deps += 1;
    }

    fn group(&self, axis: Axis, rank: u32) -> Vec<u32> {
        self.plan.mesh.group_of(axis, rank)
    }

    fn algo(&mut self, kind: GroupKind, ranks: &[u32]) -> CollectiveAlgorithm {
        let key = (kind, ranks[0]);
        if let Some(&a) = self.algos.get(&key) {
            return a;
        }
        let mut servers: Vec<u32> = ranks
            .iter()
            .map(|&c| self.topo.position(c).server)
            .collect();
        servers.sort_unstable();
        servers.dedup();
        let per = ranks.len() as u32 / servers.len().max(1) as u32;
        let a = default_algorithm(
            self.plan.cluster.spec.collective_library,
            servers.len() as u32,
            per,
        );
        self.algos.insert(key, a);
        a
    }

    /// This device's task in the next collective of a group.
    #[allow(clippy::too_many_arguments)] // one call site per kind of collective; a struct would only rename them
    fn coll(
        &mut self,
        d: &Dev,
        stream: Stream,
        kind: CollectiveKind,
        group: GroupKind,
        ranks: Vec<u32>,
        bytes: f64,
        cat: Category,
        deps: &[u32],
    ) -> u32 {
        let gid = ranks[0];
        let seq_key = (group, gid, d.rank);
        let seq = *self
            .next_seq
            .entry(seq_key)
            .and_modify(|s| *s += 1)
            .or_insert(0);
        let algo = self.algo(group, &ranks);
        let inst = *self.inst_of.entry((group, gid, seq)).or_insert_with(|| {
            self.w.colls.push(CollInst {
                kind,
                algo,
                ranks,
                bytes,
                cat,
                group,
                tasks: Vec::new(),
            });
            (self.w.colls.len() - 1) as u32
        });
        let t = self.task(d.rank, stream, Work::Coll { inst }, Label::Collective, deps);
        self.w.colls[inst as usize].tasks.push(t);
        t
    }

    /// A compute task of `secs` seconds after the pending dependencies.
    fn compute(&mut self, d: &mut Dev, secs: f64, cat: Category, label: Label) -> u32 {
        let deps = std::mem::take(&mut d.pending);
        let ns = (secs * 1e9).round() as Time;
        let t = self.task(
            d.rank,
            Stream::Compute,
            Work::Compute { ns, cat },
            label,
            &deps,
        );
        d.last_compute = Some(t);
        t
    }

    /// Runs `ops` forward (or backward, in reverse) as compute segments split at the
    /// tensor-parallel collectives of that direction.
    fn run_ops(&mut self, d: &mut Dev, ops: &[Op], backward: bool, cat: Category, label: Label) {
        let mut seg = 0.0;
        let mut flops = 0.0;
        let order: Box<dyn Iterator<Item = &Op>> = if backward {
            Box::new(ops.iter().rev())
        } else {
            Box::new(ops.iter())
        };
        for op in order {
            if let Some(c) = op.comm {
                let k = if backward { c.bwd } else { c.fwd };
                if let Some(kind) = k {
                    if seg > 0.0 {
                        self.compute(d, seg, cat, label);
                        seg = 0.0;
                    }
                    let deps: Vec<u32> = d.pending.drain(..).chain(d.last_compute).collect();
                    let ranks = self.group(Axis::Tp, d.rank);
                    let t = self.coll(
                        d,
                        Stream::Tp,
                        kind,
                        GroupKind::Tp,
                        ranks,
                        c.bytes.as_f64(),
                        Category::TpComm,
                        &deps,
                    );
                    d.pending.push(t);
                }
                continue;
            }
            if backward {
                seg += self.cost.backward(op);
                flops += op.bwd_flops.0;
            } else {
                seg += self.cost.forward(op);
                flops += op.fwd_flops.0;
            }
        }
        if seg > 0.0 {
            self.compute(d, seg, cat, label);
        }
        self.w.flops[d.rank as usize] += flops;
    }

    fn forward(&mut self, d: &mut Dev, chunk: &Chunk, cat: Category, label: Label) {
        let ops = &self.plan.ops;
        let seq = self.parts(chunk, false);
        for (k, &(key, _)) in seq.iter().enumerate() {
            // Forward: the host runs ahead of the device, so the next part's gather is issued
            // while this part computes (FSDP without explicit forward prefetch does the same).
            self.need_weights(d, &seq, k, true);
            let part: &[Op] = match key.1 {
                0 if chunk.embedding => &ops.embedding,
                i if i == chunk.layers.len() + 1 => &ops.head,
                i => ops.layer(chunk.layers[i - 1]),
            };
            self.run_ops(d, part, false, cat, label);
        }
    }

    /// The parts of a chunk in order of use, as ((chunk, part), parameters): part 0 is the
    /// embedding, 1.. the layers, then the head.
    fn parts(&self, chunk: &Chunk, reverse: bool) -> Vec<((u32, usize), u64)> {
        let ops = &self.plan.ops;
        let c = chunk.virtual_stage / self.plan.strategy.pp;
        let mut v = Vec::new();
        if chunk.embedding {
            v.push(((c, 0), totals(&ops.embedding).params));
        }
        for (i, &l) in chunk.layers.iter().enumerate() {
            v.push(((c, i + 1), totals(ops.layer(l)).params));
        }
        if chunk.head {
            v.push(((c, chunk.layers.len() + 1), totals(&ops.head).params));
        }
        if reverse {
            v.reverse();
        }
        v
    }

    /// Makes part `seq[k]`'s weights available before it runs. MindSpore's optimizer
    /// parallel gathered them at the start of the step (`prefetch_gathers`). ZeRO-3 frees them
    /// after use and gathers again for every pass; with `ahead`, one part ahead (FSDP's
    /// prefetch): the gather of part k+1 may start once part k-1 has finished.
    fn need_weights(&mut self, d: &mut Dev, seq: &[((u32, usize), u64)], k: usize, ahead: bool) {
        let s = &self.plan.strategy;
        if s.dp <= 1 {
            return;
        }
        match s.opt_shard {
            OptShard::Mindspore => d.pending.extend(d.gathers.remove(&seq[k].0)),
            OptShard::Zero3 => {
                let wb = s.gather_bytes() as f64;
                let ranks = self.group(Axis::Dp, d.rank);
                let after: Vec<u32> = d.last_compute.into_iter().collect();
                let cur = match d.gathers.remove(&seq[k].0) {
                    Some(t) => t,
                    None => self.coll(
                        d,
                        Stream::Dp,
                        CollectiveKind::AllGather,
                        GroupKind::Opt,
                        ranks.clone(),
                        seq[k].1 as f64 * wb,
                        Category::OptComm,
                        &after,
                    ),
                };
                if let (true, Some(&(next, params))) = (ahead, seq.get(k + 1)) {
                    let t = self.coll(
                        d,
                        Stream::Dp,
                        CollectiveKind::AllGather,
                        GroupKind::Opt,
                        ranks,
                        params as f64 * wb,
                        Category::OptComm,
                        &after,
                    );
                    d.gathers.insert(next, t);
                }
                d.pending.push(cur);
            }
            _ => {}
        }
    }

    /// ZeRO-3 with backward prefetch `post`: part `seq[k]`'s gather is issued as soon as the
    /// part before it has finished its gradient computation, ahead of that part's gradient
    /// reduction on the same stream (FSDP `BACKWARD_POST`): it overlaps the reduction, not
    /// the computation.
    fn gather_after_backward(&mut self, d: &mut Dev, seq: &[((u32, usize), u64)], k: usize) {
        let s = &self.plan.strategy;
        if s.dp <= 1 || s.opt_shard != OptShard::Zero3 || s.zero3_prefetch != BackwardPrefetch::Post
        {
            return;
        }
        let Some(&(key, params)) = seq.get(k) else {
            return;
        };
        if d.gathers.contains_key(&key) {
            return;
        }
        let ranks = self.group(Axis::Dp, d.rank);
        let after: Vec<u32> = d.last_compute.into_iter().collect();
        let t = self.coll(
            d,
            Stream::Dp,
            CollectiveKind::AllGather,
            GroupKind::Opt,
            ranks,
            params as f64 * s.gather_bytes() as f64,
            Category::OptComm,
            &after,
        );
        d.gathers.insert(key, t);
    }

    /// MindSpore's optimizer parallel: the weight all-gathers of the whole stage, issued at the
    /// start of the step on the dp stream in order of use and fused into buckets; each part's
    /// first use waits for its bucket, so the gathers overlap the forward.
    fn prefetch_gathers(&mut self, d: &mut Dev, stage: &pangu_strategies::Stage) {
        let s = &self.plan.strategy;
        let wb = s.gather_bytes() as f64;
        let ops = &self.plan.ops;
        let mut parts: Vec<((u32, usize), u64)> = Vec::new();
        for (c, chunk) in stage.chunks.iter().enumerate() {
            let c = c as u32;
            if chunk.embedding {
                parts.push(((c, 0), totals(&ops.embedding).params));
            }
            for (i, &l) in chunk.layers.iter().enumerate() {
                parts.push(((c, i + 1), totals(ops.layer(l)).params));
            }
            if chunk.head {
                parts.push(((c, chunk.layers.len() + 1), totals(&ops.head).params));
            }
        }
        let ranks = self.group(Axis::Dp, d.rank);
        let bucket = s.grad_bucket.as_f64();
        let mut acc = 0.0;
        let mut waiting: Vec<(u32, usize)> = Vec::new();
        let n = parts.len();
        for (i, (key, params)) in parts.into_iter().enumerate() {
            acc += params as f64 * wb;
            waiting.push(key);
            if acc >= bucket || i + 1 == n {
                let t = self.coll(
                    d,
                    Stream::Dp,
                    CollectiveKind::AllGather,
                    GroupKind::Opt,
                    ranks.clone(),
                    acc,
                    Category::OptComm,
                    &[],
                );
                for k in waiting.drain(..) {
                    d.gathers.insert(k, t);
                }
                acc = 0.0;
            }
        }
    }

    fn backward(&mut self, d: &mut Dev, chunk: &Chunk, mb: u32, last: bool) {
        let ops = &self.plan.ops;
        let label = Label::Backward(mb, chunk.virtual_stage);
        let re = Label::Recompute(mb, chunk.virtual_stage);
        let seq = self.parts(chunk, true);
        let pos = |key: (u32, usize)| seq.iter().position(|(k, _)| *k == key).unwrap_or(0);
        let c = chunk.virtual_stage / self.plan.strategy.pp;
        let ahead = self.plan.strategy.zero3_prefetch == BackwardPrefetch::Pre;
        if chunk.head {
            let k = pos((c, chunk.layers.len() + 1));
            self.need_weights(d, &seq, k, ahead);
            self.run_ops(d, &ops.head, true, Category::Compute, label);
            self.gather_after_backward(d, &seq, k + 1);
            if last {
                self.grads_ready(d, totals(&ops.head).params);
            }
        }
        let group = match self.plan.strategy.remat {
            Remat::Every(k) => k as usize,
            _ => 1,
        };
        let layers: Vec<LayerId> = chunk.layers.clone();
        let groups: Vec<(usize, &[LayerId])> = layers
            .chunks(group)
            .enumerate()
            .map(|(i, g)| (i * group, g))
            .collect();
        for &(start, g) in groups.iter().rev() {
            for j in 0..g.len() {
                self.need_weights(d, &seq, pos((c, start + g.len() - j)), ahead);
            }
            match self.plan.strategy.remat {
                Remat::Full | Remat::Every(_) => {
                    for &l in g.iter() {
                        self.run_ops(d, ops.layer(l), false, Category::Recompute, re);
                    }
                }
                Remat::Selective => {
                    for &l in g.iter() {
                        let sel: f64 = ops
                            .layer(l)
                            .iter()
                            .filter(|o| o.selective)
                            .map(|o| self.cost.forward(o))
                            .sum();
                        let f: f64 = ops
                            .layer(l)
                            .iter()
                            .filter(|o| o.selective)
                            .map(|o| o.fwd_flops.0)
                            .sum();
                        if sel > 0.0 {
                            self.compute(d, sel, Category::Recompute, re);
                            self.w.flops[d.rank as usize] += f;
                        }
                    }
                }
                Remat::None => {}
            }
            for (i, &l) in g.iter().enumerate().rev() {
                self.run_ops(d, ops.layer(l), true, Category::Compute, label);
                if i == 0 {
                    // The group's lowest layer is done: the next group's first part may gather.
                    self.gather_after_backward(d, &seq, pos((c, start + 1)) + 1);
                }
                if last {
                    self.grads_ready(d, totals(ops.layer(l)).params);
                }
            }
        }
        if chunk.embedding {
            self.need_weights(d, &seq, pos((c, 0)), ahead);
            self.run_ops(d, &ops.embedding, true, Category::Compute, label);
            if last {
                self.grads_ready(d, totals(&ops.embedding).params);
            }
        }
    }

    fn grad_bytes(&self) -> f64 {
        let s = &self.plan.strategy;
        bytes_per_param(s.precision, s.micro_batches > 1).1 as f64
    }

    /// A layer's gradients are final: add them to the bucket, reduce it when full.
    fn grads_ready(&mut self, d: &mut Dev, params: u64) {
        if self.plan.strategy.dp <= 1 {
            return;
        }
        d.bucket += params as f64 * self.grad_bytes();
        if d.bucket >= self.plan.strategy.grad_bucket.as_f64() {
            self.flush_bucket(d);
        }
    }

    fn flush_bucket(&mut self, d: &mut Dev) {
        if d.bucket <= 0.0 {
            return;
        }
        let kind = if self.plan.strategy.opt_shard == OptShard::None {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::ReduceScatter
        };
        let ranks = self.group(Axis::Dp, d.rank);
        let deps: Vec<u32> = d.last_compute.into_iter().collect();
        self.coll(
            d,
            Stream::Dp,
            kind,
            GroupKind::Dp,
            ranks,
            d.bucket,
            Category::DpComm,
            &deps,
        );
        d.bucket = 0.0;
    }

    fn optimizer(&mut self, d: &mut Dev) {
        let s = self.plan.strategy.clone();
        let stage = &self.plan.stages[d.coords.pp as usize];
        self.flush_bucket(d);
        let after_compute: Vec<u32> = d.last_compute.into_iter().collect();
        let (wb, gb, ob) = bytes_per_param(s.precision, s.micro_batches > 1);
        if s.pp > 1
            && self.plan.model.tied_embeddings
            && (d.coords.pp == 0 || d.coords.pp == s.pp - 1)
        {
            let first = self.plan.mesh.rank(Coords { pp: 0, ..d.coords });
            let last = self.plan.mesh.rank(Coords {
                pp: s.pp - 1,
                ..d.coords
            });
            let bytes = f64::from(self.plan.model.vocab) / f64::from(s.tp)
                * f64::from(self.plan.model.hidden)
                * gb as f64;
            self.coll(
                d,
                Stream::Dp,
                CollectiveKind::AllReduce,
                GroupKind::Embedding,
                vec![first, last],
                bytes,
                Category::DpComm,
                &after_compute,
            );
        }
        // Global-norm clipping: partial norms summed over tp, pp (and dp when gradients are sharded).
        let mut clip = Vec::new();
        if s.tp > 1 {
            clip.push(self.group(Axis::Tp, d.rank));
        }
        if s.pp > 1 {
            clip.push(self.group(Axis::Pp, d.rank));
        }
        if s.dp > 1 && matches!(s.opt_shard, OptShard::Zero2 | OptShard::Zero3) {
            clip.push(self.group(Axis::Dp, d.rank));
        }
        for ranks in clip {
            self.coll(
                d,
                Stream::Dp,
                CollectiveKind::AllReduce,
                GroupKind::Clip,
                ranks,
                4.0,
                Category::OptComm,
                &after_compute,
            );
        }
        let sharded = s.opt_shard != OptShard::None && s.dp > 1;
        let opt_params = if sharded {
            stage.params as f64 / f64::from(s.dp)
        } else {
            stage.params as f64
        };
        // Read the gradient, read and write master weights and both moments, write the weight.
        let secs = self.cost.stream(opt_params * (gb + 2 * ob + wb) as f64);
        d.pending.extend(
            self.w.streams[d.rank as usize][Stream::Dp as usize]
                .last()
                .copied(),
        );
        let opt = self.compute(d, secs, Category::Compute, Label::Optimizer);
        // ZeRO-1/2 gather the updated weights after the update; MindSpore's optimizer parallel
        // and ZeRO-3 gather them ahead of use instead (see `prefetch_gathers`).
        if sharded && matches!(s.opt_shard, OptShard::Zero1 | OptShard::Zero2) {
            let ranks = self.group(Axis::Dp, d.rank);
            let bytes = stage.params as f64 * wb as f64;
            let last = self.coll(
                d,
                Stream::Dp,
                CollectiveKind::AllGather,
                GroupKind::Opt,
                ranks,
                bytes,
                Category::OptComm,
                &[opt],
            );
            d.pending.push(last);
            self.compute(d, 0.0, Category::Compute, Label::StepEnd);
        }
    }

    fn device(&mut self, rank: u32) {
        let coords = self.plan.mesh.coords(rank);
        let stage_idx = coords.pp;
        let plan = self.plan;
        let stage = &plan.stages[stage_idx as usize];
        let actions = &plan.schedule.stages[stage_idx as usize];
        // The micro-batch whose backward comes last, per chunk: after it, gradients are final.
        let mut last_mb: HashMap<u32, u32> = HashMap::new();
        for a in actions {
            if let Action::Backward { mb, chunk } = *a {
                last_mb.insert(chunk, mb);
            }
        }
        let mut d = Dev {
            rank,
            coords,
            pending: Vec::new(),
            bucket: 0.0,
            last_compute: None,
            gathers: HashMap::new(),
        };
        let s = &plan.strategy;
        if s.dp > 1 && s.opt_shard == OptShard::Mindspore {
            self.prefetch_gathers(&mut d, stage);
        }
        let mut done: HashMap<(bool, u32, u32), u32> = HashMap::new();
        let p = plan.strategy.pp;
        let peer_rank = |peer: u32| plan.mesh.rank(Coords { pp: peer, ..coords });
        let bytes = plan.p2p_bytes().as_f64();
        for a in actions {
            match *a {
                Action::Forward { mb, chunk } => {
                    let c = &stage.chunks[chunk as usize];
                    self.forward(
                        &mut d,
                        c,
                        Category::Compute,
                        Label::Forward(mb, c.virtual_stage),
                    );
                    if let Some(t) = d.last_compute {
                        done.insert((true, mb, chunk), t);
                    }
                }
                Action::Backward { mb, chunk } => {
                    let c = &stage.chunks[chunk as usize];
                    let last = last_mb.get(&chunk) == Some(&mb);
                    self.backward(&mut d, c, mb, last);
                    if let Some(t) = d.last_compute {
                        done.insert((false, mb, chunk), t);
                    }
                }
                Action::SendActivation { mb, chunk, peer }
                | Action::SendGradient { mb, chunk, peer } => {
                    let fwd = matches!(a, Action::SendActivation { .. });
                    let consumer_chunk = match (fwd, stage_idx) {
                        (true, s) if s == p - 1 => chunk + 1,
                        (false, 0) => chunk - 1,
                        _ => chunk,
                    };
                    let dst = peer_rank(peer);
                    let deps: Vec<u32> = done.get(&(fwd, mb, chunk)).copied().into_iter().collect();
                    let label = Label::Send(mb, chunk);
                    let t = self.task(rank, Stream::Free, Work::Send { dst, bytes }, label, &deps);
                    self.sends.insert((fwd, rank, dst, mb, consumer_chunk), t);
                }
                Action::RecvActivation { mb, chunk, peer }
                | Action::RecvGradient { mb, chunk, peer } => {
                    let fwd = matches!(a, Action::RecvActivation { .. });
                    let src = peer_rank(peer);
                    let t = self.task(rank, Stream::Free, Work::Recv, Label::Recv(mb, chunk), &[]);
                    self.recvs.insert((fwd, src, rank, mb, chunk), t);
                    d.pending.push(t);
                }
                Action::OptimizerStep => self.optimizer(&mut d),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Successors;

    #[test]
    fn successors_pack_lists_and_append_with_shifted_ids() {
        let mut a = Successors::from_lists(&[vec![1, 2], vec![], vec![0]]);
        assert_eq!(a.len(), 3);
        assert_eq!(a.of(0), &[1, 2]);
        assert!(a.of(1).is_empty());
        assert_eq!(a.of(2), &[0]);
        let b = Successors::from_lists(&[vec![1], vec![]]);
        a.extend(&b, 3);
        assert_eq!(a.len(), 5);
        assert_eq!(a.of(3), &[4]);
        assert!(a.of(4).is_empty());
        assert_eq!(a.of(2), &[0]);
        let mut empty = Successors::default();
        assert!(empty.is_empty());
        empty.extend(&b, 0);
        assert_eq!(empty.of(0), &[1]);
    }
}
