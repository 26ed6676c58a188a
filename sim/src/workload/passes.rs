//! Forward and backward passes of a model chunk: compute segments, rematerialisation, and the
//! weight gathers of optimizer sharding that the passes wait for.

use pangu_model::ops::Op;
use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::plan::ChunkPart;
use pangu_strategies::strategy::Axis;
use pangu_strategies::{
    BackwardPrefetch, Category, Chunk, CollectiveKind, GroupKind, OptShard, Plan, Remat,
};

use super::{Builder, Coll, Dev, Label, Stream};

/// A chunk's parts in order of use, keyed by (chunk, part), with their parameters.
type Seq = Vec<((u32, ChunkPart), u64)>;

/// The ops of one part of a chunk.
fn part_ops<'p>(plan: &'p Plan, chunk: &Chunk, part: ChunkPart) -> &'p [Op] {
    let ops = &plan.ops;
    match part {
        ChunkPart::Embedding => &ops.embedding,
        ChunkPart::Layer(i) => ops.layer(chunk.layers[i]),
        ChunkPart::Head => &ops.head,
        // The tied table's ops are the embedding's lookup and the head's product.
        ChunkPart::SharedTable => &[],
    }
}

impl Builder<'_> {
    /// The parts of chunk `ci` in order of use (reversed for backward).
    fn seq(&self, ci: u32, chunk: &Chunk, reverse: bool) -> Seq {
        let mut v: Seq = self
            .plan
            .parts(chunk)
            .into_iter()
            .map(|p| ((ci, p), self.plan.part_params(chunk, p)))
            .collect();
        if reverse {
            v.reverse();
        }
        v
    }

    fn gather(&mut self, d: &Dev, params: u64, deps: &[u32]) -> u32 {
        let s = &self.plan.strategy;
        let coll = Coll {
            kind: CollectiveKind::AllGather,
            group: GroupKind::Opt,
            key: CollectiveGroup::Opt,
            ranks: self.group(Axis::Dp, d.rank),
            bytes: params as f64 * s.gather_bytes() as f64,
            cat: Category::OptComm,
            step: None,
        };
        self.coll(d, Stream::Dp, coll, deps)
    }

    pub(super) fn forward(&mut self, d: &mut Dev, ci: u32, chunk: &Chunk, label: Label) {
        let seq = self.seq(ci, chunk, false);
        for (k, &((_, part), _)) in seq.iter().enumerate() {
            // Forward: the host runs ahead of the device, so the next part's gather is issued
            // while this part computes (FSDP without explicit forward prefetch does the same).
            self.need_weights(d, &seq, k, true);
            let ops = part_ops(self.plan, chunk, part);
            self.run_ops(d, ops, false, Category::Compute, label);
        }
    }

    /// Makes part `seq[k]`'s weights available before it runs. MindSpore's optimizer
    /// parallel gathered them at the start of the step (`prefetch_gathers`). ZeRO-3 frees them
    /// after use and gathers again for every pass; with `ahead`, one part ahead (FSDP's
    /// prefetch): the gather of part k+1 may start once part k-1 has finished.
    fn need_weights(&mut self, d: &mut Dev, seq: &Seq, k: usize, ahead: bool) {
        let s = &self.plan.strategy;
        if s.dp_cp() <= 1 {
            return;
        }
        match s.opt_shard {
            OptShard::Mindspore => d.pending.extend(d.gathers.remove(&seq[k].0)),
            OptShard::Zero3 => {
                let after: Vec<u32> = d.last_compute.into_iter().collect();
                let cur = match d.gathers.remove(&seq[k].0) {
                    Some(t) => t,
                    None => self.gather(d, seq[k].1, &after),
                };
                if let (true, Some(&(next, params))) = (ahead, seq.get(k + 1)) {
                    let t = self.gather(d, params, &after);
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
    fn gather_after_backward(&mut self, d: &mut Dev, seq: &Seq, k: usize) {
        let s = &self.plan.strategy;
        if s.dp_cp() <= 1
            || s.opt_shard != OptShard::Zero3
            || s.zero3_prefetch != BackwardPrefetch::Post
        {
            return;
        }
        let Some(&(key, params)) = seq.get(k) else {
            return;
        };
        if d.gathers.contains_key(&key) {
            return;
        }
        let after: Vec<u32> = d.last_compute.into_iter().collect();
        let t = self.gather(d, params, &after);
        d.gathers.insert(key, t);
    }

    /// MindSpore's optimizer parallel: the weight all-gathers of the whole stage
    /// (`Plan::weight_buckets`), issued at the start of the step on the dp stream in order of
    /// use; each part's first use waits for its bucket, so the gathers overlap the forward.
    pub(super) fn prefetch_gathers(&mut self, d: &mut Dev, stage: u32) {
        for (parts, params) in self.plan.weight_buckets(stage) {
            let t = self.gather(d, params, &[]);
            for (c, part) in parts {
                d.gathers.insert((c as u32, part), t);
            }
        }
    }

    /// Recomputes a group of layers inside backward as the strategy's remat says.
    fn recompute(&mut self, d: &mut Dev, chunk: &Chunk, layers: std::ops::Range<usize>, re: Label) {
        let ops = &self.plan.ops;
        match self.plan.strategy.remat {
            Remat::Full | Remat::Every(_) => {
                for i in layers {
                    self.run_ops(
                        d,
                        ops.layer(chunk.layers[i]),
                        false,
                        Category::Recompute,
                        re,
                    );
                }
            }
            Remat::Selective => {
                for i in layers {
                    let sel: Vec<&Op> = ops
                        .layer(chunk.layers[i])
                        .iter()
                        .filter(|o| o.selective)
                        .collect();
                    let secs: f64 = sel.iter().map(|o| self.cost.forward(o)).sum();
                    let host: f64 = sel.iter().map(|o| self.cost.host(o, false)).sum();
                    let flops: f64 = sel.iter().map(|o| o.fwd_flops.0).sum();
                    if secs > 0.0 {
                        if self.plan.strategy.cp > 1 {
                            // The recomputed attention needs the other ranks' K/V again.
                            self.cp_attention(d, secs, flops, false, Category::Recompute, re);
                        } else {
                            self.compute_issued(d, secs, host, flops, Category::Recompute, re);
                        }
                        self.w.flops[d.rank as usize] += flops;
                    }
                }
            }
            Remat::None => {}
        }
    }

    pub(super) fn backward(&mut self, d: &mut Dev, ci: u32, chunk: &Chunk, mb: u32, last: bool) {
        let ops = &self.plan.ops;
        let label = Label::Backward(mb, chunk.virtual_stage);
        let re = Label::Recompute(mb, chunk.virtual_stage);
        let seq = self.seq(ci, chunk, true);
        let pos = |part: ChunkPart| seq.iter().position(|(k, _)| k.1 == part).unwrap_or(0);
        let ahead = self.plan.strategy.zero3_prefetch == BackwardPrefetch::Pre;
        // The head's (and the embedding's) backward finishes the tied table's gradient too.
        let table: &[ChunkPart] = if self.plan.shares_table() {
            &[ChunkPart::SharedTable]
        } else {
            &[]
        };
        if chunk.head {
            for &p in table.iter().chain([&ChunkPart::Head]) {
                self.need_weights(d, &seq, pos(p), ahead);
            }
            self.run_ops(d, &ops.head, true, Category::Compute, label);
            self.gather_after_backward(d, &seq, pos(ChunkPart::Head) + 1);
            if last {
                for &p in table.iter().chain([&ChunkPart::Head]) {
                    self.part_done(d, ci, p);
                }
            }
        }
        let group = match self.plan.strategy.remat {
            Remat::Every(k) => k as usize,
            _ => 1,
        };
        let n = chunk.layers.len();
        let starts: Vec<usize> = (0..n).step_by(group.max(1)).collect();
        for &start in starts.iter().rev() {
            let end = (start + group).min(n);
            for i in (start..end).rev() {
                self.need_weights(d, &seq, pos(ChunkPart::Layer(i)), ahead);
            }
            self.recompute(d, chunk, start..end, re);
            for i in (start..end).rev() {
                self.run_ops(
                    d,
                    ops.layer(chunk.layers[i]),
                    true,
                    Category::Compute,
                    label,
                );
                if i == start {
                    // The group's lowest layer is done: the next group's first part may gather.
                    self.gather_after_backward(d, &seq, pos(ChunkPart::Layer(start)) + 1);
                }
                if last {
                    self.part_done(d, ci, ChunkPart::Layer(i));
                }
            }
        }
        if chunk.embedding {
            for &p in [&ChunkPart::Embedding].into_iter().chain(table) {
                self.need_weights(d, &seq, pos(p), ahead);
            }
            self.run_ops(d, &ops.embedding, true, Category::Compute, label);
            if last {
                for &p in [&ChunkPart::Embedding].into_iter().chain(table) {
                    self.part_done(d, ci, p);
                }
            }
        }
    }
}
