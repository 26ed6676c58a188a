//! Plan → per-device task graph.
//!
//! Every device walks its stage's action list from the plan's schedule (the same list the
//! executor runs) and emits tasks on its streams:
//! - the **compute** stream runs forward, recompute and backward segments (the ops between two
//!   tensor-parallel collectives of one layer, priced by the cost model) and the optimizer;
//! - the **tp** stream runs tensor-parallel collectives; compute waits for each;
//! - the **dp** stream runs the plan's gradient buckets (`Plan::grad_buckets`: each reduced
//!   as soon as the last micro-batch's backward has finished its parts, overlapping the rest of
//!   backward, exactly as the executor issues them), the tied embedding all-reduce, the norm
//!   and loss sums and the optimizer-sharding gathers;
//! - pipeline sends and receives are free-standing tasks: a send starts when its forward or
//!   backward ends, a receive completes when the data has arrived; with `p2p_blocking` the
//!   stage's next task waits for its send to complete (Megatron's synchronous p2p).

use std::collections::BTreeMap;

use pangu_hardware::fxhash::FxMap;

use pangu_model::ops::{Op, OpKind};
use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::plan::{ChunkPart, GradBucket};
use pangu_strategies::schedule::Action;
use pangu_strategies::strategy::Axis;
use pangu_strategies::{
    Category, CollectiveAlgorithm, CollectiveKind, Coords, GroupKind, OptShard, Plan,
};

use crate::cost::CostModel;
use crate::engine::Time;

mod cp;
mod passes;
mod step_end;

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
        /// Duration in ns on the chip.
        ns: Time,
        /// Host time in ns to issue its ops (an eager framework's dispatch; 0 where none is
        /// priced): the host issues a device's tasks one after another, ahead of the chip, so
        /// a task ends no sooner than the host has issued it (see `run`).
        host: Time,
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
    /// Only this step of the program runs (one step of context parallelism's K/V ring,
    /// overlapped with one attention block); `None`: the whole program.
    pub step: Option<u16>,
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
    /// FLOPs of each task: a compute segment's ops (0 for the optimizer, step ends and
    /// communication, whose cost is memory traffic or bytes).
    pub task_flops: Vec<f64>,
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
        self.task_flops.extend(other.task_flops);
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
/// (group kind, `[collectives]` key, first rank of the group): one group's collectives.
type GroupKey = (GroupKind, CollectiveGroup, u32);

struct Builder<'a> {
    plan: &'a Plan,
    cost: &'a CostModel,
    w: Workload,
    inst_of: FxMap<(GroupKey, u32), u32>,
    next_seq: FxMap<(GroupKey, u32), u32>,
    algos: FxMap<(CollectiveGroup, u32, usize), CollectiveAlgorithm>,
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
        w: Workload {
            streams: vec![Default::default(); n],
            flops: vec![0.0; n],
            ..Default::default()
        },
        inst_of: FxMap::default(),
        next_seq: FxMap::default(),
        algos: FxMap::default(),
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
    last_compute: Option<u32>,
    /// The stage's gradient buckets in issue order, and the next one to issue.
    buckets: Vec<GradBucket>,
    next_bucket: usize,
    /// Weight all-gathers still to be waited for, per (chunk, part).
    gathers: FxMap<(u32, ChunkPart), u32>,
}

/// A collective a device joins.
struct Coll {
    kind: CollectiveKind,
    group: GroupKind,
    /// Whose `[collectives]` choice it follows.
    key: CollectiveGroup,
    ranks: Vec<u32>,
    bytes: f64,
    /// Breakdown category of waiting for it.
    cat: Category,
    /// Only this step of the program (a K/V ring step, always the ring's).
    step: Option<u16>,
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
        self.w.task_flops.push(0.0);
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

    /// The plan's algorithm for a group (one decision per group, cached).
    fn algo(&mut self, key: CollectiveGroup, ranks: &[u32]) -> CollectiveAlgorithm {
        let k = (key, ranks[0], ranks.len());
        if let Some(&a) = self.algos.get(&k) {
            return a;
        }
        let a = self.plan.algorithm(key, ranks);
        self.algos.insert(k, a);
        a
    }

    /// This device's task in the next collective of a group.
    fn coll(&mut self, d: &Dev, stream: Stream, c: Coll, deps: &[u32]) -> u32 {
        let group: GroupKey = (c.group, c.key, c.ranks[0]);
        let seq = *self
            .next_seq
            .entry((group, d.rank))
            .and_modify(|s| *s += 1)
            .or_insert(0);
        let algo = match c.step {
            Some(_) => CollectiveAlgorithm::Ring,
            None => self.algo(c.key, &c.ranks),
        };
        let inst = *self.inst_of.entry((group, seq)).or_insert_with(|| {
            self.w.colls.push(CollInst {
                kind: c.kind,
                algo,
                ranks: c.ranks,
                bytes: c.bytes,
                cat: c.cat,
                group: c.group,
                step: c.step,
                tasks: Vec::new(),
            });
            (self.w.colls.len() - 1) as u32
        });
        let t = self.task(d.rank, stream, Work::Coll { inst }, Label::Collective, deps);
        self.w.colls[inst as usize].tasks.push(t);
        t
    }

    /// A compute task of `secs` seconds (`flops` of work) after the pending dependencies.
    fn compute(&mut self, d: &mut Dev, secs: f64, flops: f64, cat: Category, label: Label) -> u32 {
        self.compute_issued(d, secs, 0.0, flops, cat, label)
    }

    /// A compute task whose ops take the host `host` seconds to issue.
    fn compute_issued(
        &mut self,
        d: &mut Dev,
        secs: f64,
        host: f64,
        flops: f64,
        cat: Category,
        label: Label,
    ) -> u32 {
        let deps = std::mem::take(&mut d.pending);
        let ns = (secs * 1e9).round() as Time;
        let host = (host * 1e9).round() as Time;
        let t = self.task(
            d.rank,
            Stream::Compute,
            Work::Compute { ns, host, cat },
            label,
            &deps,
        );
        d.last_compute = Some(t);
        self.w.task_flops[t as usize] = flops;
        t
    }

    /// Runs `ops` forward (or backward, in reverse) as compute segments split at the
    /// tensor-parallel collectives of that direction.
    fn run_ops(&mut self, d: &mut Dev, ops: &[Op], backward: bool, cat: Category, label: Label) {
        // A segment's chip time, and the host time to issue its ops.
        let mut seg: f64 = 0.0;
        let mut host: f64 = 0.0;
        let mut seg_flops = 0.0;
        let mut flops = 0.0;
        let order: Vec<&Op> = if backward {
            ops.iter().rev().collect()
        } else {
            ops.iter().collect()
        };
        // The tensor-parallel collective of an op in this direction, if any.
        let tp_kind = |op: &Op| op.comm.and_then(|c| if backward { c.bwd } else { c.fwd });
        let s = &self.plan.strategy;
        // Under context parallelism the attention core (the ops selective remat re-runs)
        // is its own segment, with the K/V exchange around it.
        let cp = s.cp > 1;
        let overlap = s.tp_comm_overlap && s.tp > 1;
        let tp = f64::from(s.tp);
        let mut attn: Option<(f64, f64)> = None;
        // Overlap: an all-gather in flight whose GEMM is the next op, and the index of a
        // reduce-scatter already issued with the GEMM before it.
        let mut gathering: Option<u32> = None;
        let mut issued: Option<usize> = None;
        for (i, &op) in order.iter().enumerate() {
            if cp && op.attention_core {
                let (t, f) = if backward {
                    (self.cost.backward(op), op.bwd_flops.0)
                } else {
                    (self.cost.forward(op), op.fwd_flops.0)
                };
                flops += f;
                if attn.is_none() && seg > 0.0 {
                    self.compute_issued(d, seg, host, seg_flops, cat, label);
                    seg = 0.0;
                    host = 0.0;
                    seg_flops = 0.0;
                }
                let a = attn.get_or_insert((0.0, 0.0));
                a.0 += t;
                a.1 += f;
                continue;
            }
            if let Some((t, f)) = attn.take() {
                self.cp_attention(d, t, f, backward, cat, label);
            }
            if op.comm.is_some() {
                let Some(kind) = tp_kind(op) else {
                    continue;
                };
                if issued == Some(i) {
                    continue;
                }
                if seg > 0.0 {
                    self.compute_issued(d, seg, host, seg_flops, cat, label);
                    seg = 0.0;
                    host = 0.0;
                }
                seg_flops = 0.0;
                let bytes = op.comm.map_or(0.0, |c| c.bytes.as_f64());
                let t = self.tp_collective(d, kind, bytes);
                let feeds_gemm = order.get(i + 1).is_some_and(|n| n.kind == OpKind::Matmul);
                if overlap && kind == CollectiveKind::AllGather && feeds_gemm {
                    gathering = Some(t);
                } else {
                    d.pending.push(t);
                }
                continue;
            }
            let (secs, f) = if backward {
                (self.cost.backward(op), op.bwd_flops.0)
            } else {
                (self.cost.forward(op), op.fwd_flops.0)
            };
            let op_host = self.cost.host(op, backward);
            flops += f;
            if overlap && op.kind == OpKind::Matmul {
                let drains = order
                    .get(i + 1)
                    .filter(|n| tp_kind(n) == Some(CollectiveKind::ReduceScatter));
                if let Some(t) = gathering.take() {
                    // Ring exchange (Transformer Engine's default for the all-gathers): the
                    // GEMM runs on the chunks already here while the others arrive; the last
                    // chunk's product waits for the gather.
                    if seg > 0.0 {
                        self.compute_issued(d, seg, host, seg_flops, cat, label);
                        seg = 0.0;
                        host = 0.0;
                        seg_flops = 0.0;
                    }
                    let (a, b) = (secs * (tp - 1.0) / tp, f * (tp - 1.0) / tp);
                    self.compute_issued(d, a, op_host, b, cat, label);
                    d.pending.push(t);
                    self.compute(d, secs / tp, f / tp, cat, label);
                    continue;
                }
                if let Some(next) = drains {
                    // Pipelined reduce-scatter: once the first chunk of the GEMM's output is
                    // done, its reduction runs while the GEMM computes the rest.
                    if seg > 0.0 {
                        self.compute_issued(d, seg, host, seg_flops, cat, label);
                        seg = 0.0;
                        host = 0.0;
                        seg_flops = 0.0;
                    }
                    self.compute_issued(d, secs / tp, op_host, f / tp, cat, label);
                    let bytes = next.comm.map_or(0.0, |c| c.bytes.as_f64());
                    let t = self.tp_collective(d, CollectiveKind::ReduceScatter, bytes);
                    self.compute(d, secs * (tp - 1.0) / tp, f * (tp - 1.0) / tp, cat, label);
                    d.pending.push(t);
                    issued = Some(i + 1);
                    continue;
                }
            }
            seg += secs;
            host += op_host;
            seg_flops += f;
        }
        if let Some((t, f)) = attn.take() {
            self.cp_attention(d, t, f, backward, cat, label);
        }
        if seg > 0.0 {
            self.compute_issued(d, seg, host, seg_flops, cat, label);
        }
        if let Some(t) = gathering {
            d.pending.push(t);
        }
        self.w.flops[d.rank as usize] += flops;
    }

    /// A tensor-parallel collective of `bytes` after the pending work and the last compute.
    fn tp_collective(&mut self, d: &mut Dev, kind: CollectiveKind, bytes: f64) -> u32 {
        let deps: Vec<u32> = d.pending.drain(..).chain(d.last_compute).collect();
        let ranks = self.group(Axis::Tp, d.rank);
        let coll = Coll {
            kind,
            group: GroupKind::Tp,
            key: CollectiveGroup::Tp,
            ranks,
            bytes,
            cat: Category::TpComm,
            step: None,
        };
        self.coll(d, Stream::Tp, coll, &deps)
    }

    fn device(&mut self, rank: u32) {
        let coords = self.plan.mesh.coords(rank);
        let stage_idx = coords.pp;
        let plan = self.plan;
        let stage = &plan.stages[stage_idx as usize];
        let actions = &plan.schedule.stages[stage_idx as usize];
        // The micro-batch whose backward comes last, per chunk: after it, gradients are final.
        let last_mb = plan.schedule.last_backward(stage_idx);
        let mut d = Dev {
            rank,
            coords,
            pending: Vec::new(),
            last_compute: None,
            buckets: plan.grad_buckets(stage_idx),
            next_bucket: 0,
            gathers: FxMap::default(),
        };
        let s = &plan.strategy;
        if s.dp_cp() > 1 && s.opt_shard == OptShard::Mindspore {
            self.prefetch_gathers(&mut d, stage_idx);
        }
        let mut done: FxMap<(bool, u32, u32), u32> = FxMap::default();
        let peer_rank = |peer: u32| plan.mesh.rank(Coords { pp: peer, ..coords });
        let bytes = plan.p2p_bytes().as_f64();
        for a in actions {
            match *a {
                Action::Forward { mb, chunk } => {
                    let c = &stage.chunks[chunk as usize];
                    let label = Label::Forward(mb, c.virtual_stage);
                    self.forward(&mut d, chunk, c, label);
                    if let Some(t) = d.last_compute {
                        done.insert((true, mb, chunk), t);
                    }
                }
                Action::Backward { mb, chunk } => {
                    let c = &stage.chunks[chunk as usize];
                    let last = last_mb[chunk as usize] == Some(mb);
                    self.backward(&mut d, chunk, c, mb, last);
                    if let Some(t) = d.last_compute {
                        done.insert((false, mb, chunk), t);
                    }
                }
                Action::SendActivation { mb, chunk, peer }
                | Action::SendGradient { mb, chunk, peer } => {
                    let fwd = matches!(a, Action::SendActivation { .. });
                    let consumer_chunk =
                        plan.schedule.receiving_chunk(stage_idx, a).unwrap_or(chunk);
                    let dst = peer_rank(peer);
                    let deps: Vec<u32> = done.get(&(fwd, mb, chunk)).copied().into_iter().collect();
                    let label = Label::Send(mb, chunk);
                    let t = self.task(rank, Stream::Free, Work::Send { dst, bytes }, label, &deps);
                    self.sends.insert((fwd, rank, dst, mb, consumer_chunk), t);
                    if plan.strategy.p2p_blocking {
                        // Megatron waits on the send and synchronises the device before the
                        // stage computes on.
                        d.pending.push(t);
                    }
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
