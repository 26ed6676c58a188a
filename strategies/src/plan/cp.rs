//! Context parallelism in the plan (its sequence check is `checks::check_cp`): the K/V exchange of each cp group,
//! its rows of the communication table and its buffers in the memory model.
//!
//! Semantics as Megatron-core runs it (its `context_parallel` documentation; Llama 3 paper
//! §3.3.2): the sequence is cut into `2·cp` chunks and rank `i` holds chunks `i` and
//! `2·cp − 1 − i`, so under the causal mask every rank does the same attention work (1/cp of
//! the whole); the op graph is built for `s/cp` tokens per rank (`OpShape::cp`). Gradients are
//! reduced, and the optimizer sharded, over dp·cp ranks (`Strategy::dp_cp`).

use pangu_hardware::Bytes;

use super::comm::{Row, Table};
use super::Plan;
use crate::collective::{CollectiveGroup, GroupKind, KvExchange};
use crate::strategy::{Axis, CpComm};

/// The two of the sequence's `2·cp` chunks that context-parallel rank `rank` holds, in the
/// order its tokens lie in its buffers: chunk `rank`, then chunk `2·cp − 1 − rank` (causal
/// load balancing). With `cp` 1 the one rank holds chunks 0 and 1, the whole sequence in
/// order. The executor places tokens by it; every rank's queries then see the same number of
/// unmasked keys.
pub fn cp_chunks(cp: u32, rank: u32) -> [u32; 2] {
    let cp = cp.max(1);
    [rank, 2 * cp - 1 - rank]
}

/// The position in its sample of the `j`-th token a context-parallel rank holds of a
/// sequence of `seq` tokens ([`cp_chunks`]: `seq / (2·cp)` tokens of each of its two chunks).
pub fn cp_token(seq: u32, cp: u32, rank: u32, j: u32) -> u32 {
    let c = seq / (2 * cp.max(1));
    let [a, b] = cp_chunks(cp, rank);
    if j < c {
        a * c + j
    } else {
        b * c + (j - c)
    }
}

impl Plan {
    /// Bytes of one rank's K/V block for one layer and micro-batch: `b · (s/cp)` tokens of
    /// `2 · kv_dim / tp` elements (with grouped-query attention only the K/V heads travel).
    pub fn kv_block_bytes(&self) -> Bytes {
        let s = &self.strategy;
        let tokens =
            u64::from(s.micro_batch_size) * u64::from(self.model.seq_len) / u64::from(s.cp.max(1));
        let kv = 2 * self.model.kv_dim() / u64::from(s.tp.max(1));
        Bytes(tokens * kv * u64::from(self.ops.shape.act_bytes))
    }

    /// The K/V exchange over a context-parallel group (chips in group order).
    pub fn kv_exchange(&self, ranks: &[u32]) -> KvExchange {
        KvExchange::build(
            self.strategy.cp_comm,
            self.algorithm(CollectiveGroup::Cp, ranks),
            &self.placement(ranks),
            self.kv_block_bytes(),
        )
    }

    /// Whether a remat setting re-runs the attention forward (and so its K/V exchange) in
    /// backward: full and grouped remat re-run the layer, selective the attention core.
    fn recomputes_attention(&self) -> bool {
        self.strategy.recomputes_attention()
    }

    /// Communication buffers of context parallelism per device: the ring keeps two K/V
    /// blocks in flight (the one attention reads and the one arriving), and in backward two
    /// K/V and two dK/dV blocks (Megatron-core's p2p double buffering); the all-gather
    /// variant holds the gathered K/V and, in backward, the whole dK/dV before its
    /// reduce-scatter.
    pub(super) fn cp_buffers(&self) -> Bytes {
        let s = &self.strategy;
        if s.cp <= 1 {
            return Bytes(0);
        }
        let block = self.kv_block_bytes().0;
        Bytes(match s.cp_comm {
            CpComm::Ring => 4 * block,
            CpComm::AllGather => 2 * u64::from(s.cp) * block,
        })
    }

    /// The K/V exchange rows of the busiest stage: per layer and micro-batch, forward (again
    /// when remat recomputes attention) and backward.
    pub(super) fn cp_communication(&self, t: &mut Table) {
        let s = &self.strategy;
        if s.cp <= 1 {
            return;
        }
        let layers = self
            .stages
            .iter()
            .map(|st| st.chunks.iter().map(|c| c.layers.len()).sum::<usize>())
            .max()
            .unwrap_or(0) as u64;
        let m = u64::from(s.micro_batches);
        let fwd_calls = layers * m * if self.recomputes_attention() { 2 } else { 1 };
        let bwd_calls = layers * m;
        let g = self.mesh.group_of(Axis::Cp, 0);
        let x = self.kv_exchange(&g);
        let block = x.block.0;
        let span = self.cluster.topology.span(&g);
        match s.cp_comm {
            CpComm::Ring => {
                // Point-to-point, one block to the next rank per hop: forward cp − 1 K/V
                // hops per layer; backward cp − 1 K/V hops and cp dK/dV hops (each block's
                // partial dK/dV goes one hop after it is computed, the last one back home).
                let n = u64::from(s.cp);
                for (purpose, calls) in [
                    (
                        "K/V blocks, ring (overlapped with attention)",
                        fwd_calls * (n - 1),
                    ),
                    (
                        "K/V and dK/dV blocks, ring (overlapped with attention backward)",
                        bwd_calls * (2 * n - 1),
                    ),
                ] {
                    let mut r = Row::new(GroupKind::Cp, purpose, None, block, calls, s.cp);
                    r.0.span = span;
                    t.add(r);
                }
            }
            CpComm::AllGather => {
                use pangu_model::ops::CollectiveKind::{AllGather, ReduceScatter};
                let buf = x.buffer().0;
                for (purpose, kind, calls) in [
                    ("K/V before attention", AllGather, fwd_calls + bwd_calls),
                    ("dK/dV after attention backward", ReduceScatter, bwd_calls),
                ] {
                    t.add(
                        Row::new(GroupKind::Cp, purpose, Some(kind), buf, calls, s.cp).on(
                            self,
                            CollectiveGroup::Cp,
                            &g,
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cp_chunks, cp_token};

    #[test]
    fn each_rank_holds_chunk_i_and_its_mirror_and_together_they_cover_the_sequence() {
        assert_eq!(cp_chunks(2, 0), [0, 3]);
        assert_eq!(cp_chunks(2, 1), [1, 2]);
        assert_eq!(cp_chunks(1, 0), [0, 1]);
        let (seq, cp) = (16, 4);
        let mut seen: Vec<u32> = (0..cp)
            .flat_map(|r| (0..seq / cp).map(move |j| cp_token(seq, cp, r, j)))
            .collect();
        assert_eq!(
            cp_token(seq, cp, 1, 2),
            12,
            "rank 1's second chunk is chunk 6"
        );
        seen.sort_unstable();
        assert_eq!(seen, (0..seq).collect::<Vec<_>>());
        // One rank: the identity.
        assert!((0..8).all(|j| cp_token(8, 1, 0, j) == j));
    }
}
