//! The K/V exchange of context parallelism as collective programs.
//!
//! With the sequence split over `cp` ranks, each rank's queries must meet every rank's keys
//! and values (Megatron-core's context parallelism; Llama 3 paper, Dubey et al. 2024,
//! §3.3.2). Two ways, both built from the same [`Program`] machinery as every collective:
//!
//! - **Ring** (Megatron-core `cp_comm_type = "p2p"`, `AttnFuncWithCPAndKVP2P` in Transformer
//!   Engine): `cp − 1` steps; in step `k` every rank passes the K/V block it holds to the next
//!   rank while it computes attention on that block. The transfers are exactly those of the
//!   ring all-gather (position `i` sends block `i − k` to `i + 1`), so the forward program is
//!   [`CollectiveKind::AllGather`] with [`CollectiveAlgorithm::Ring`]; a consumer runs step `k`
//!   beside the attention of block `k` (the simulator overlaps them, the executor may run
//!   them in the same order). Backward sends the K/V blocks around again and the partial
//!   dK/dV with them, which accumulate on the way back to their owner: the ring all-gather's
//!   steps paired with the ring reduce-scatter's, the same neighbour at every step.
//! - **All-gather** (Llama 3; Megatron-core `cp_comm_type = "all_gather"`): K/V gathered
//!   before attention, exposed, with the group's algorithm; backward gathers them again
//!   (Transformer Engine's `AttnFuncWithCPAndKVAllGather` keeps only the local block) and
//!   reduce-scatters dK/dV after the attention backward.
//!
//! Buffers: position `i` owns block `i` (the K/V of its two sequence chunks); one block is
//! `b · (s/cp) · 2·kv_dim/tp` elements.

use pangu_hardware::Bytes;
use serde::Serialize;

use super::{CollectiveAlgorithm, CollectiveKind, Program};
use crate::strategy::CpComm;

/// The K/V exchange of one layer and micro-batch over one context-parallel group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvExchange {
    /// Ring or all-gather.
    pub comm: CpComm,
    /// Bytes of one rank's K/V block (what one ring step carries per rank).
    pub block: Bytes,
    /// Forward: the K/V blocks gathered (ring steps overlap the attention of each block).
    pub forward: Program,
    /// Backward: the K/V blocks gathered again.
    pub backward_kv: Program,
    /// Backward: dK/dV summed back to the block's owner.
    pub backward_grad: Program,
}

impl KvExchange {
    /// The exchange over a group whose member `i` sits on server `servers[i]`; `algorithm`
    /// is the group's all-gather algorithm (ignored by the ring, which is always the
    /// neighbour ring).
    pub fn build(
        comm: CpComm,
        algorithm: CollectiveAlgorithm,
        servers: &[u32],
        block: Bytes,
    ) -> KvExchange {
        let algo = match comm {
            CpComm::Ring => CollectiveAlgorithm::Ring,
            CpComm::AllGather => algorithm,
        };
        KvExchange {
            comm,
            block,
            forward: Program::build(CollectiveKind::AllGather, algo, servers),
            backward_kv: Program::build(CollectiveKind::AllGather, algo, servers),
            backward_grad: Program::build(CollectiveKind::ReduceScatter, algo, servers),
        }
    }

    /// Bytes of the whole gathered buffer (every rank's block): what the all-gather and
    /// reduce-scatter programs run on.
    pub fn buffer(&self) -> Bytes {
        Bytes(self.block.0 * u64::from(self.forward.size.max(1)))
    }

    /// Whether the exchange overlaps the attention computation (the ring).
    pub fn overlapped(&self) -> bool {
        self.comm == CpComm::Ring
    }

    /// Steps of the forward exchange (`cp − 1` for the ring).
    pub fn steps(&self) -> usize {
        self.forward.steps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Combine;

    #[test]
    fn ring_passes_each_block_to_the_next_rank_cp_minus_one_times() {
        let x = KvExchange::build(
            CpComm::Ring,
            CollectiveAlgorithm::HalvingDoubling,
            &[0, 0, 1, 1],
            Bytes(1000),
        );
        assert_eq!(x.steps(), 3);
        assert_eq!(x.buffer(), Bytes(4000));
        for (k, step) in x.forward.steps.iter().enumerate() {
            assert_eq!(step.len(), 4);
            for t in step {
                assert_eq!(t.dst, (t.src + 1) % 4, "a neighbour transfer");
                assert_eq!(t.combine, Combine::Copy);
                // Step k carries the block that started k ranks back.
                let owner = (t.src + 4 - k as u32) % 4;
                assert_eq!(Some(t.pieces.clone()), x.forward.owned(owner));
            }
        }
        // Backward: dK/dV travel the same neighbours, added on the way to their owner.
        assert_eq!(x.backward_grad.steps.len(), 3);
        for (kv, grad) in x.backward_kv.steps.iter().zip(&x.backward_grad.steps) {
            let pairs = |s: &[crate::collective::Transfer]| {
                s.iter().map(|t| (t.src, t.dst)).collect::<Vec<_>>()
            };
            assert_eq!(pairs(kv), pairs(grad));
            assert!(grad.iter().all(|t| t.combine == Combine::Add));
        }
    }

    #[test]
    fn all_gather_variant_takes_the_groups_algorithm() {
        let x = KvExchange::build(
            CpComm::AllGather,
            CollectiveAlgorithm::HalvingDoubling,
            &[0, 1, 2, 3],
            Bytes(10),
        );
        assert_eq!(x.forward.algorithm, CollectiveAlgorithm::HalvingDoubling);
        assert_eq!(x.steps(), 2);
        assert!(!x.overlapped());
    }
}
