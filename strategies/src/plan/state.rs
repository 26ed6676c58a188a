//! Which ranks hold which bytes of the training state: what a checkpoint must write and what
//! a restart must read.
//!
//! The state is the weights and the optimizer state (the fp32 master copy and Adam's moments
//! in mixed precision, Adam's moments in fp32), the per-parameter bytes of
//! [`crate::memory::bytes_per_param`]; gradients are not saved. Tensor- and
//! pipeline-parallel ranks hold distinct slices. Across the data-parallel replicas:
//! - without optimizer sharding every replica holds the same bytes, and only replica 0's ranks
//!   write them (DeepSpeed's checkpoint layout: the model and optimizer states of an unsharded
//!   run are saved by data-parallel rank 0, one `mp_rank_XX_model_states.pt` per model-parallel
//!   rank; Megatron-LM's `save_checkpoint` likewise writes from data-parallel rank 0);
//! - with optimizer sharding (ZeRO-1/2, MindSpore's optimizer parallel) each replica holds and
//!   writes its own slice of the optimizer state (DeepSpeed writes one
//!   `zero_pp_rank_D_mp_rank_XX_optim_states.pt` per data-parallel rank D); the weights are
//!   still replicated and written by replica 0;
//! - under ZeRO-3 the weights are sliced across the replicas too.
//!
//! On a restart every rank reads the state it holds, replicated bytes included: ASSUMPTION,
//! as Megatron-LM and DeepSpeed load (each rank opens its own files; no broadcast from one
//! replica).

use crate::memory::bytes_per_param;
use crate::plan::Plan;
use crate::strategy::OptShard;

/// One rank's share of the training state, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateShard {
    /// Bytes the rank holds (weights and optimizer state): what it reads on a restart.
    pub held: u64,
    /// Bytes only this rank writes to a checkpoint (zero for a replica whose bytes another
    /// rank writes).
    pub written: u64,
}

impl Plan {
    /// Each rank's share of the training state, indexed by rank (= chip).
    pub fn state_shards(&self) -> Vec<StateShard> {
        let s = &self.strategy;
        let (w, _, o) = bytes_per_param(s.precision, false);
        let dp = u64::from(s.dp.max(1));
        let opt_sliced = s.opt_shard != OptShard::None;
        let weights_sliced = s.opt_shard == OptShard::Zero3;
        (0..self.mesh.size())
            .map(|rank| {
                let c = self.mesh.coords(rank);
                let params = self.stages[c.pp as usize].params;
                let first = c.dp == 0;
                let share = |bytes: u64, sliced: bool| -> (u64, u64) {
                    if sliced {
                        let b = bytes.div_ceil(dp);
                        (b, b)
                    } else {
                        (bytes, if first { bytes } else { 0 })
                    }
                };
                let (hw, ww) = share(params * w, weights_sliced);
                let (ho, wo) = share(params * o, opt_sliced);
                StateShard {
                    held: hw + ho,
                    written: ww + wo,
                }
            })
            .collect()
    }

    /// Bytes of one checkpoint: the sum of what every rank writes.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.state_shards().iter().map(|s| s.written).sum()
    }
}
