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
//! (Megatron-core's distributed optimizer). A word table tied across pipeline stages is then a
//! bucket of its own on both stages, so both shard it the same way and its reduce-scatter may
//! run before the two copies' gradients are summed (Megatron-core puts shared embeddings in a
//! separate bucket for this reason).

use serde::Serialize;

use super::{Chunk, LayerId, Plan};
use crate::memory::bytes_per_param;
use crate::strategy::OptShard;
use pangu_model::ops::totals;

/// One part of a model chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkPart {
    /// The word table tied between the first and the last virtual stage, where those are
    /// different chunks (each holds a copy; their gradients are summed).
    SharedTable,
    /// The embedding: the position table, and the word table unless it is the shared one.
    Embedding,
    /// The chunk's layer at this index of `Chunk::layers`.
    Layer(usize),
    /// The final norm and an untied output head.
    Head,
}

impl Chunk {
    /// The chunk's parts in forward order; `shared_table` says whether the model's word table
    /// is tied across two chunks ([`Plan::shares_table`]).
    pub fn parts_with(&self, shared_table: bool) -> Vec<ChunkPart> {
        let mut v = Vec::with_capacity(self.layers.len() + 4);
        if self.embedding && shared_table {
            v.push(ChunkPart::SharedTable);
        }
        if self.embedding {
            v.push(ChunkPart::Embedding);
        }
        v.extend((0..self.layers.len()).map(ChunkPart::Layer));
        if self.head {
            v.push(ChunkPart::Head);
        }
        if self.head && shared_table {
            v.push(ChunkPart::SharedTable);
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
    /// Whether the word table is tied across two chunks: a tied model whose embedding and
    /// head sit in different (virtual) stages.
    pub fn shares_table(&self) -> bool {
        self.model.tied_embeddings && self.strategy.pp * self.strategy.schedule.chunks() > 1
    }

    /// A chunk's parts in forward order.
    pub fn parts(&self, chunk: &Chunk) -> Vec<ChunkPart> {
        chunk.parts_with(self.shares_table())
    }

    /// Parameters of the word table on one device (vocabulary-parallel over tp).
    fn table_params(&self) -> u64 {
        u64::from(self.padded_vocab) / u64::from(self.strategy.tp) * u64::from(self.model.hidden)
    }

    /// Parameters of one part of a chunk on one device.
    pub fn part_params(&self, chunk: &Chunk, part: ChunkPart) -> u64 {
        let ops = &self.ops;
        let shared = self.shares_table();
        match part {
            ChunkPart::SharedTable => self.table_params(),
            ChunkPart::Embedding if shared => totals(&ops.embedding).params - self.table_params(),
            ChunkPart::Embedding => totals(&ops.embedding).params,
            ChunkPart::Layer(i) => match chunk.layers.get(i) {
                Some(&l @ (LayerId::Block(_) | LayerId::Query)) => totals(ops.layer(l)).params,
                None => 0,
            },
            // A tied head's table is the embedding's (one chunk) or the shared table's part.
            ChunkPart::Head => ops
                .head
                .iter()
                .filter(|o| !o.tied_copy)
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
        if s.dp_cp() <= 1 {
            return Vec::new();
        }
        let gb = bytes_per_param(s.precision, s.micro_batches > 1).1;
        let cap = s.grad_bucket.0.max(1);
        let alone = s.opt_shard != OptShard::None;
        let mut out = Vec::new();
        for c in self.schedule.chunks_by_last_backward(stage) {
            let chunk = &st.chunks[c];
            let empty = || GradBucket {
                chunk: c,
                parts: Vec::new(),
                params: 0,
            };
            let mut open = empty();
            for part in self.parts(chunk).into_iter().rev() {
                let own_bucket = alone && part == ChunkPart::SharedTable;
                if own_bucket && !open.parts.is_empty() {
                    out.push(std::mem::replace(&mut open, empty()));
                }
                open.parts.push(part);
                open.params += self.part_params(chunk, part);
                if own_bucket || open.params * gb >= cap {
                    out.push(std::mem::replace(&mut open, empty()));
                }
            }
            if !open.parts.is_empty() {
                out.push(open);
            }
        }
        out
    }
}
