//! The communication a plan performs and the collective algorithm of each group.
use pangu_hardware::{Bytes, Level};
use pangu_model::ops::{CollectiveKind, Op};

use super::buckets::ChunkPart;
use super::Plan;
use crate::collective::{
    choose, placement_shape, CollectiveAlgorithm, CollectiveGroup, CommVolume, GroupKind, Program,
};
use crate::memory;
use crate::schedule::Action;
use crate::strategy::{Axis, OptShard, Remat};

/// One row of the communication table while it is built; rows with the same group, purpose,
/// collective and size are summed.
pub(super) struct Row(pub(super) CommVolume);

impl Row {
    pub(super) fn new(
        group: GroupKind,
        purpose: &'static str,
        collective: Option<CollectiveKind>,
        bytes: u64,
        calls: u64,
        size: u32,
    ) -> Row {
        Row(CommVolume {
            group,
            collective,
            purpose,
            group_size: size,
            bytes_per_call: Bytes(bytes),
            calls_per_step: calls,
            algorithm: None,
            span: Level::Island,
        })
    }

    fn all_reduce(
        group: GroupKind,
        purpose: &'static str,
        bytes: u64,
        calls: u64,
        size: u32,
    ) -> Row {
        Row::new(
            group,
            purpose,
            Some(CollectiveKind::AllReduce),
            bytes,
            calls,
            size,
        )
    }

    /// The algorithm and span of the collective over `ranks`.
    pub(super) fn on(mut self, plan: &Plan, key: CollectiveGroup, ranks: &[u32]) -> Row {
        self.0.span = plan.cluster.topology.span(ranks);
        self.0.algorithm = self.0.collective.map(|_| plan.algorithm(key, ranks));
        self
    }
}

/// The communication table, in (group, purpose, collective, bytes) order.
#[derive(Default)]
pub(super) struct Table {
    rows: Vec<CommVolume>,
}

impl Table {
    pub(super) fn add(&mut self, Row(r): Row) {
        if r.calls_per_step == 0 || r.bytes_per_call.0 == 0 {
            return;
        }
        let key = |v: &CommVolume| (v.group, v.purpose, v.collective, v.bytes_per_call.0);
        match self.rows.binary_search_by(|v| key(v).cmp(&key(&r))) {
            Ok(i) => self.rows[i].calls_per_step += r.calls_per_step,
            Err(i) => self.rows.insert(i, r),
        }
    }
}

impl Plan {
    /// Highest topology level any group of an axis spans, and servers / chips-per-server of
    /// the widest group.
    fn group_span(&self, axis: Axis) -> (Level, u32, u32) {
        let topo = &self.cluster.topology;
        let mut level = Level::Island;
        let mut servers = 1;
        let mut per_server = 1;
        for g in self.mesh.groups(axis) {
            level = level.max(topo.span(&g));
            let mut ids: Vec<u32> = g.iter().map(|&c| topo.position(c).server).collect();
            ids.sort_unstable();
            ids.dedup();
            servers = servers.max(ids.len() as u32);
            per_server = per_server.max(g.len() as u32 / ids.len().max(1) as u32);
        }
        (level, servers, per_server)
    }

    pub(super) fn placement_warnings(&mut self) {
        if self.strategy.tp > 1 {
            let (level, ..) = self.group_span(Axis::Tp);
            let spec = &self.cluster.spec;
            let msg = match level {
                Level::Island => None,
                Level::Server => Some(format!(
                    "tp {} group spans the {} islands of a server: its collectives ride the slower cross-island path \
                     instead of the {} island links only",
                    self.strategy.tp,
                    spec.server.islands,
                    spec.server.island.link.bandwidth
                )),
                Level::Rack | Level::Spine => Some(format!(
                    "tp {} group spans servers (rank order {}): every layer's tensor-parallel all-reduces cross the {} NIC",
                    self.strategy.tp, self.strategy.rank_order, spec.network.nic.bandwidth
                )),
            };
            self.warnings.extend(msg);
        }
    }

    /// The servers of `ranks` (chips), the placement a collective program is built for.
    pub fn placement(&self, ranks: &[u32]) -> Vec<u32> {
        let topo = &self.cluster.topology;
        ranks.iter().map(|&c| topo.position(c).server).collect()
    }

    /// The algorithm the collectives of `group` run over `ranks`: the strategy's
    /// `[collectives]` choice, `auto` resolved by the vendor library's default for the
    /// group's placement ([`choose`]).
    pub fn algorithm(&self, group: CollectiveGroup, ranks: &[u32]) -> CollectiveAlgorithm {
        let (servers, per_server) = placement_shape(&self.placement(ranks));
        choose(
            self.cluster.spec.collective_library,
            self.strategy.collectives.get(group),
            servers,
            per_server,
        )
    }

    /// The algorithm of each `[collectives]` group of device 0 (tp, dp, opt, pp), for groups
    /// of more than one device, with the group's size.
    pub fn group_algorithms(&self) -> Vec<(CollectiveGroup, u32, CollectiveAlgorithm)> {
        let axis = |g: CollectiveGroup| match g {
            CollectiveGroup::Tp => Axis::Tp,
            CollectiveGroup::Dp | CollectiveGroup::Opt => Axis::Dp,
            CollectiveGroup::Pp => Axis::Pp,
            CollectiveGroup::Cp => Axis::Cp,
        };
        CollectiveGroup::ALL
            .into_iter()
            .filter(|&g| g != CollectiveGroup::Opt || self.strategy.opt_shard != OptShard::None)
            .filter_map(|g| {
                let ranks = self.mesh.group_of(axis(g), 0);
                (ranks.len() > 1).then(|| (g, ranks.len() as u32, self.algorithm(g, &ranks)))
            })
            .collect()
    }

    /// The program of one collective of `group` over `ranks` (chips in group order).
    pub fn program(&self, group: CollectiveGroup, kind: CollectiveKind, ranks: &[u32]) -> Program {
        Program::build(kind, self.algorithm(group, ranks), &self.placement(ranks))
    }

    /// Parameters per layer whose gradients each device computes from its own rows under
    /// sequence parallelism (the norms' gains and biases, the biases added after a
    /// reduce-scatter), summed over the tensor-parallel group after backward as Megatron does.
    pub fn seq_parallel_partial_params(&self) -> u64 {
        let m = &self.model;
        let bias = if m.bias { 2 * u64::from(m.hidden) } else { 0 };
        2 * m.norm_params() + bias
    }

    /// The weight all-gathers of MindSpore's optimizer parallel on `stage`: every part of the
    /// stage in order of use, fused into buckets of `grad_bucket` bytes at the gather precision,
    /// as (chunk, part) lists with their parameters.
    pub fn weight_buckets(&self, stage: u32) -> Vec<(Vec<(usize, ChunkPart)>, u64)> {
        let s = &self.strategy;
        let Some(st) = self.stages.get(stage as usize) else {
            return Vec::new();
        };
        let wb = s.gather_bytes();
        let cap = s.grad_bucket.0.max(1);
        let mut out = Vec::new();
        let mut open: (Vec<(usize, ChunkPart)>, u64) = (Vec::new(), 0);
        for (c, chunk) in st.chunks.iter().enumerate() {
            for part in self.parts(chunk) {
                open.0.push((c, part));
                open.1 += self.part_params(chunk, part);
                if open.1 * wb >= cap {
                    out.push(std::mem::take(&mut open));
                }
            }
        }
        if !open.0.is_empty() {
            out.push(open);
        }
        out
    }

    /// The communication of the busiest device per step, by group and purpose.
    pub(super) fn communication(&self) -> Vec<CommVolume> {
        let mut t = Table::default();
        self.tp_communication(&mut t);
        self.pp_communication(&mut t);
        self.dp_communication(&mut t);
        self.cp_communication(&mut t);
        let s = &self.strategy;
        // Tied embedding between first and last stage.
        if s.pp > 1 && self.model.tied_embeddings {
            let gb = memory::bytes_per_param(s.precision, s.micro_batches > 1).1;
            let emb =
                u64::from(self.padded_vocab) / u64::from(s.tp) * u64::from(self.model.hidden) * gb;
            let pair = self.embedding_pair();
            t.add(
                Row::all_reduce(GroupKind::Embedding, "tied embedding gradient", emb, 1, 2).on(
                    self,
                    CollectiveGroup::Pp,
                    &pair,
                ),
            );
        }
        // Global-norm clipping and the step's loss: two fp32 values summed over each axis.
        for (axis, key, size, purpose) in [
            (
                Axis::Tp,
                CollectiveGroup::Tp,
                s.tp,
                "gradient norm and loss over tp",
            ),
            (
                Axis::Pp,
                CollectiveGroup::Pp,
                s.pp,
                "gradient norm and loss over pp",
            ),
            (
                Axis::Dp,
                CollectiveGroup::Dp,
                s.dp_cp(),
                "gradient norm and loss over dp",
            ),
        ] {
            if size > 1 {
                let g = self.widest_group(axis);
                t.add(Row::all_reduce(GroupKind::Clip, purpose, 8, 1, size).on(self, key, &g));
            }
        }
        t.rows
    }

    /// Tensor-parallel collectives of the busiest stage.
    fn tp_communication(&self, t: &mut Table) {
        let s = &self.strategy;
        if s.tp <= 1 {
            return;
        }
        let m = u64::from(s.micro_batches);
        let recompute_comms = matches!(s.remat, Remat::Full | Remat::Every(_));
        let Some(stage) = self
            .stages
            .iter()
            .max_by_key(|st| st.chunks.iter().map(|c| c.layers.len()).sum::<usize>())
        else {
            return;
        };
        let g = self.widest_group(Axis::Tp);
        for c in &stage.chunks {
            let mut parts: Vec<(&[Op], bool)> = c
                .layers
                .iter()
                .map(|l| (self.ops.layer(*l), true))
                .collect();
            if c.embedding {
                parts.push((&self.ops.embedding, false));
            }
            if c.head {
                parts.push((&self.ops.head, false));
            }
            for (ops, is_layer) in parts {
                for o in ops {
                    let Some(tc) = o.comm else { continue };
                    if let Some(k) = tc.fwd {
                        let n = if is_layer && recompute_comms { 2 } else { 1 };
                        t.add(
                            Row::new(
                                GroupKind::Tp,
                                "activations",
                                Some(k),
                                tc.bytes.0,
                                m * n,
                                s.tp,
                            )
                            .on(self, CollectiveGroup::Tp, &g),
                        );
                    }
                    if let Some(k) = tc.bwd {
                        t.add(
                            Row::new(
                                GroupKind::Tp,
                                "activation gradients",
                                Some(k),
                                tc.bytes.0,
                                m,
                                s.tp,
                            )
                            .on(self, CollectiveGroup::Tp, &g),
                        );
                    }
                }
            }
            if s.seq_parallel && !c.layers.is_empty() {
                let gb = memory::bytes_per_param(s.precision, s.micro_batches > 1).1;
                let bytes = self.seq_parallel_partial_params() * c.layers.len() as u64 * gb;
                t.add(
                    Row::all_reduce(
                        GroupKind::Tp,
                        "sequence-parallel norm and bias gradients",
                        bytes,
                        1,
                        s.tp,
                    )
                    .on(self, CollectiveGroup::Tp, &g),
                );
            }
        }
    }

    /// Pipeline sends of the busiest stage (each send is matched by a receive elsewhere).
    fn pp_communication(&self, t: &mut Table) {
        if self.strategy.pp <= 1 {
            return;
        }
        let sends = self.schedule.stages.iter().map(|acts| {
            acts.iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::SendActivation { .. } | Action::SendGradient { .. }
                    )
                })
                .count()
        });
        let mut row = Row::new(
            GroupKind::Pp,
            "activations and gradients",
            None,
            self.p2p_bytes().0,
            sends.max().unwrap_or(0) as u64,
            2,
        );
        row.0.span = self.pp_neighbour_span().0;
        t.add(row);
    }

    /// Gradient buckets and optimizer sharding's weight gathers of the busiest stage.
    fn dp_communication(&self, t: &mut Table) {
        let s = &self.strategy;
        // The gradient group spans the context-parallel ranks too.
        let dp = s.dp_cp();
        if dp <= 1 {
            return;
        }
        let Some(stage) = self.stages.iter().max_by_key(|st| st.params) else {
            return;
        };
        let g = self.widest_group(Axis::Dp);
        let gb = memory::bytes_per_param(s.precision, s.micro_batches > 1).1;
        let sharded = s.opt_shard != OptShard::None;
        let grad_op = if sharded {
            CollectiveKind::ReduceScatter
        } else {
            CollectiveKind::AllReduce
        };
        let buckets = self.grad_buckets(stage.index);
        for b in &buckets {
            t.add(
                Row::new(
                    GroupKind::Dp,
                    "gradients",
                    Some(grad_op),
                    b.params * gb,
                    1,
                    dp,
                )
                .on(self, CollectiveGroup::Dp, &g),
            );
        }
        let wb = s.gather_bytes();
        let gathers: Vec<(u64, u64)> = match s.opt_shard {
            OptShard::None => Vec::new(),
            OptShard::Zero1 | OptShard::Zero2 => buckets.iter().map(|b| (b.params, 1)).collect(),
            OptShard::Mindspore => self
                .weight_buckets(stage.index)
                .iter()
                .map(|(_, p)| (*p, 1))
                .collect(),
            OptShard::Zero3 => {
                let m = u64::from(s.micro_batches);
                stage
                    .chunks
                    .iter()
                    .flat_map(|c| self.parts(c).into_iter().map(move |p| (c, p)))
                    .map(|(c, p)| (self.part_params(c, p), 2 * m))
                    .collect()
            }
        };
        let purpose = match s.opt_shard {
            OptShard::Zero3 => "weights for forward and backward",
            OptShard::Mindspore => "weights before forward",
            _ => "updated weights",
        };
        for (params, calls) in gathers {
            t.add(
                Row::new(
                    GroupKind::Opt,
                    purpose,
                    Some(CollectiveKind::AllGather),
                    params * wb,
                    calls,
                    dp,
                )
                .on(self, CollectiveGroup::Opt, &g),
            );
        }
    }

    /// The group of `axis` that spans the most servers (the first such).
    fn widest_group(&self, axis: Axis) -> Vec<u32> {
        let mut best: (u32, Vec<u32>) = (0, Vec::new());
        for g in self.mesh.groups(axis) {
            let (servers, _) = placement_shape(&self.placement(&g));
            if servers > best.0 || best.1.is_empty() {
                best = (servers, g);
            }
        }
        best.1
    }

    /// The first and last stage of pipeline 0 (the tied embedding's pair).
    fn embedding_pair(&self) -> Vec<u32> {
        let g = self
            .mesh
            .groups(Axis::Pp)
            .into_iter()
            .next()
            .unwrap_or_default();
        match (g.first(), g.last()) {
            (Some(&a), Some(&b)) => vec![a, b],
            _ => Vec::new(),
        }
    }

    fn pp_neighbour_span(&self) -> (Level, u32, u32) {
        let topo = &self.cluster.topology;
        let level = self
            .mesh
            .groups(Axis::Pp)
            .iter()
            .flat_map(|g| g.windows(2).map(|w| topo.level_between(w[0], w[1])))
            .max()
            .unwrap_or(Level::Island);
        (level, 2, 1)
    }
}
