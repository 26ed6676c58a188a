//! The parts of a model chunk and the gradient buckets that reduce them: one policy, which the
//! simulator prices and the executor runs.
//!
//! A chunk's parts in forward order are its embedding (if it holds one), its layers, and its
//! head. During the backward of the chunk's last micro-batch the parts finish in reverse order;
//! their gradients fill buckets of the strategy's `grad_bucket` bytes (at the precision's
//! gradient bytes per parameter), and a bucket is reduced over the data-parallel group (an
//! all-reduce, or a reduce-scatter when the optimizer is sharded) as soon as its last part has
//! finished. A chunk's last bucket closes when its backward ends, so buckets never span chunks:
//! Megatron-core's DDP keeps one bucketed buffer per model chunk the same way, and PyTorch DDP
//! fills `bucket_cap_mb` buckets in reverse parameter order.
//!
//! With a sharded optimizer each bucket is sharded too: data-parallel rank `i` owns
//! [`chunk`](crate::collective::chunk)`(n, dp, i)` of every bucket's `n` parameters (in the
//! bucket's part order), updates those, and the weights are all-gathered bucket by bucket
//! (Megatron-core's distributed optimizer).

use serde::Serialize;

use super::{Chunk, LayerId, Plan};
use crate::memory::bytes_per_param;
use pangu_model::ops::totals;

/// One part of a model chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkPart {
    /// The embedding (word and position tables).
    Embedding,
    /// The chunk's layer at this index of `Chunk::layers`.
    Layer(usize),
    /// The final norm and the output head (with the tied table's copy when the chunk does not
    /// hold the embedding itself).
    Head,
}

impl Chunk {
    /// The chunk's parts in forward order.
    pub fn parts(&self) -> Vec<ChunkPart> {
        let mut v = Vec::with_capacity(self.layers.len() + 2);
        if self.embedding {
            v.push(ChunkPart::Embedding);
        }
        v.extend((0..self.layers.len()).map(ChunkPart::Layer));
        if self.head {
            v.push(ChunkPart::Head);
        }
        v
    }
}

/// A gradient bucket of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradBucket {
    /// The model chunk (index on the stage).
    pub chunk: usize,
    /// Its parts in backward order: the bucket is reduced when the last of them has finished.
    pub parts: Vec<ChunkPart>,
    /// Parameters it holds on one device.
    pub params: u64,
}

impl GradBucket {
    /// The part whose backward completes the bucket.
    pub fn last_part(&self) -> Option<ChunkPart> {
        self.parts.last().copied()
    }
}

impl Plan {
    /// Parameters of one part of a chunk on one device (a tied head counts its copy of the
    /// table when the chunk does not also hold the embedding).
    pub fn part_params(&self, chunk: &Chunk, part: ChunkPart) -> u64 {
        let ops = &self.ops;
        match part {
            ChunkPart::Embedding => totals(&ops.embedding).params,
            ChunkPart::Layer(i) => match chunk.layers.get(i) {
                Some(&l @ (LayerId::Block(_) | LayerId::Query)) => totals(ops.layer(l)).params,
                None => 0,
            },
            ChunkPart::Head => ops
                .head
                .iter()
                .filter(|o| !(o.tied_copy && chunk.embedding))
                .map(|o| o.params)
                .sum(),
        }
    }

    /// The gradient buckets of `stage`, in the order they are reduced: chunk by chunk in the
    /// order of each chunk's last backward in the stage's action list, each chunk's in backward
    /// order. Empty without data parallelism.
    pub fn grad_buckets(&self, stage: u32) -> Vec<GradBucket> {
        let s = &self.strategy;
        let Some(st) = self.stages.get(stage as usize) else {
            return Vec::new();
        };
        if s.dp <= 1 {
            return Vec::new();
        }
        let gb = bytes_per_param(s.precision, s.micro_batches > 1).1;
        let cap = s.grad_bucket.0.max(1);
        let mut out = Vec::new();
        for c in self.schedule.chunks_by_last_backward(stage) {
            let chunk = &st.chunks[c];
            let mut open = GradBucket {
                chunk: c,
                parts: Vec::new(),
                params: 0,
            };
            for part in chunk.parts().into_iter().rev() {
                open.parts.push(part);
                open.params += self.part_params(chunk, part);
                if open.params * gb >= cap {
                    out.push(std::mem::replace(
                        &mut open,
                        GradBucket {
                            chunk: c,
                            parts: Vec::new(),
                            params: 0,
                        },
                    ));
                }
            }
            if !open.parts.is_empty() {
                out.push(open);
            }
        }
        out
    }
}
