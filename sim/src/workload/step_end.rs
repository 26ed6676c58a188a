//! The end of a step: gradient buckets as the backward finishes them, then the sums before the
//! update (sequence-parallel norms and biases, the tied embedding, the norm and the loss), the
//! optimizer, and the weight gathers of ZeRO-1/2.

use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::memory::bytes_per_param;
use pangu_strategies::plan::ChunkPart;
use pangu_strategies::strategy::Axis;
use pangu_strategies::{Category, CollectiveKind, Coords, GroupKind, OptShard};

use super::{Builder, Coll, Dev, Label, Stream};

impl Builder<'_> {
    fn grad_bytes(&self) -> f64 {
        let s = &self.plan.strategy;
        bytes_per_param(s.precision, s.micro_batches > 1).1 as f64
    }

    /// `part` of chunk `ci` has finished its last backward of the step: reduce the bucket it
    /// completes, if any (the plan lists them in issue order).
    pub(super) fn part_done(&mut self, d: &mut Dev, ci: u32, part: ChunkPart) {
        let Some(b) = d.buckets.get(d.next_bucket) else {
            return;
        };
        if b.chunk != ci as usize || b.last_part() != Some(part) {
            return;
        }
        let bytes = b.params as f64 * self.grad_bytes();
        d.next_bucket += 1;
        let kind = if self.plan.strategy.opt_shard == OptShard::None {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::ReduceScatter
        };
        let coll = Coll {
            kind,
            group: GroupKind::Dp,
            key: CollectiveGroup::Dp,
            ranks: self.group(Axis::Dp, d.rank),
            bytes,
            cat: Category::DpComm,
            step: None,
        };
        let deps: Vec<u32> = d.last_compute.into_iter().collect();
        self.coll(d, Stream::Dp, coll, &deps);
    }

    pub(super) fn optimizer(&mut self, d: &mut Dev) {
        let plan = self.plan;
        let s = &plan.strategy;
        let stage = &plan.stages[d.coords.pp as usize];
        let (wb, gb, ob) = bytes_per_param(s.precision, s.micro_batches > 1);
        // Under sequence parallelism the norms' and row-parallel biases' gradients cover a
        // device's own rows: summed over the tensor-parallel group, one message per chunk.
        let mut sp_sums = Vec::new();
        if s.seq_parallel && s.tp > 1 {
            for c in stage.chunks.iter().filter(|c| !c.layers.is_empty()) {
                let bytes =
                    (plan.seq_parallel_partial_params() * c.layers.len() as u64 * gb) as f64;
                let deps: Vec<u32> = d.last_compute.into_iter().collect();
                let coll = Coll {
                    kind: CollectiveKind::AllReduce,
                    group: GroupKind::Tp,
                    key: CollectiveGroup::Tp,
                    ranks: self.group(Axis::Tp, d.rank),
                    bytes,
                    cat: Category::TpComm,
                    step: None,
                };
                sp_sums.push(self.coll(d, Stream::Tp, coll, &deps));
            }
        }
        if s.pp > 1 && plan.model.tied_embeddings && (d.coords.pp == 0 || d.coords.pp == s.pp - 1) {
            let first = plan.mesh.rank(Coords { pp: 0, ..d.coords });
            let last = plan.mesh.rank(Coords {
                pp: s.pp - 1,
                ..d.coords
            });
            let bytes = f64::from(plan.padded_vocab) / f64::from(s.tp)
                * f64::from(plan.model.hidden)
                * gb as f64;
            let deps: Vec<u32> = d.last_compute.into_iter().collect();
            let coll = Coll {
                kind: CollectiveKind::AllReduce,
                group: GroupKind::Embedding,
                key: CollectiveGroup::Pp,
                ranks: vec![first, last],
                bytes,
                cat: Category::DpComm,
                step: None,
            };
            self.coll(d, Stream::Dp, coll, &deps);
        }
        // The gradient norm's partial sums and the loss, two fp32 values, summed over each axis.
        for (axis, key, size) in [
            (Axis::Tp, CollectiveGroup::Tp, s.tp),
            (Axis::Pp, CollectiveGroup::Pp, s.pp),
            (Axis::Dp, CollectiveGroup::Dp, s.dp_cp()),
        ] {
            if size > 1 {
                let ranks = self.group(axis, d.rank);
                let deps: Vec<u32> = d
                    .last_compute
                    .into_iter()
                    .chain(sp_sums.iter().copied())
                    .collect();
                let coll = Coll {
                    kind: CollectiveKind::AllReduce,
                    group: GroupKind::Clip,
                    key,
                    ranks,
                    bytes: 8.0,
                    cat: Category::OptComm,
                    step: None,
                };
                self.coll(d, Stream::Dp, coll, &deps);
            }
        }
        d.pending.extend(sp_sums);
        let sharded = s.opt_shard != OptShard::None && s.dp_cp() > 1;
        let opt_params = if sharded {
            stage.params as f64 / f64::from(s.dp_cp())
        } else {
            stage.params as f64
        };
        // Read the gradient, read and write master weights and both moments, write the weight;
        // under fp8, cast the updated linear weights for the next step.
        let secs = self.cost.stream(opt_params * (gb + 2 * ob + wb) as f64)
            + self
                .cost
                .fp8_weight_cast(plan.fp8_cast_weights(d.coords.pp));
        d.pending.extend(
            self.w.streams[d.rank as usize][Stream::Dp as usize]
                .last()
                .copied(),
        );
        let opt = self.compute(d, secs, 0.0, Category::Compute, Label::Optimizer);
        // ZeRO-1/2 gather the updated weights after the update, bucket by bucket (the
        // distributed optimizer's buckets are the gradient buckets); MindSpore's optimizer
        // parallel and ZeRO-3 gather them ahead of use instead (see `prefetch_gathers`).
        if sharded && matches!(s.opt_shard, OptShard::Zero1 | OptShard::Zero2) {
            let ranks = self.group(Axis::Dp, d.rank);
            let mut last = None;
            for b in d.buckets.clone() {
                let coll = Coll {
                    kind: CollectiveKind::AllGather,
                    group: GroupKind::Opt,
                    key: CollectiveGroup::Opt,
                    ranks: ranks.clone(),
                    bytes: b.params as f64 * wb as f64,
                    cat: Category::OptComm,
                    step: None,
                };
                last = Some(self.coll(d, Stream::Dp, coll, &[opt]));
            }
            d.pending.extend(last);
            self.compute(d, 0.0, 0.0, Category::Compute, Label::StepEnd);
        }
    }
}
