//! Context parallelism in the task graph: the attention core of every layer, forward,
//! recompute and backward, with the plan's K/V exchange (`Plan::kv_exchange`).
//!
//! - **Ring** (Megatron-core's p2p ring, `AttnFuncWithCPAndKVP2P`): the attention runs as `cp`
//!   equal blocks (with the causal load balancing every step's block is half a full block
//!   product: the diagonal step's two causal triangles or an off-diagonal step's half-masked
//!   pair, so the blocks take the same time). Step `k` sends the K/V block in hand to the next
//!   rank while block `k` is computed; block `k + 1` needs both, and so does step `k + 1`
//!   (double buffering: the send buffer is the one block `k` read). Backward sends K/V ahead
//!   the same way and the partial dK/dV of each block one hop after it is computed; the last
//!   block's dK/dV hop has nothing to hide behind. Each step is one ring step of the
//!   exchange's program (every rank to its successor), priced on the network like any
//!   collective; only what outlasts its block is exposed (`cp_comm`).
//! - **All-gather** (Llama 3): K/V gathered before the attention, again before its backward,
//!   dK/dV reduce-scattered after it; all exposed.

use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::strategy::{Axis, CpComm};
use pangu_strategies::{Category, CollectiveKind, GroupKind};

use super::{Builder, Coll, Dev, Label, Stream};

impl Builder<'_> {
    /// One K/V exchange collective of this device's cp group after `deps`.
    fn kv_coll(
        &mut self,
        d: &Dev,
        kind: CollectiveKind,
        blocks: f64,
        ring_step: bool,
        deps: &[u32],
    ) -> u32 {
        let ranks = self.group(Axis::Cp, d.rank);
        let cp = ranks.len() as f64;
        let block = self.plan.kv_block_bytes().as_f64();
        let coll = Coll {
            kind,
            group: GroupKind::Cp,
            key: CollectiveGroup::Cp,
            // The program runs on the whole buffer (cp blocks): one ring step carries one
            // block per rank, so `blocks` blocks per rank is `blocks · cp` blocks of buffer.
            bytes: block * blocks * if ring_step { cp } else { 1.0 },
            ranks,
            cat: Category::CpComm,
            step: ring_step.then_some(0),
        };
        self.coll(d, Stream::Tp, coll, deps)
    }

    /// The attention core (`secs` seconds, `flops` FLOPs on this device) with the K/V
    /// exchange of context parallelism around it.
    pub(super) fn cp_attention(
        &mut self,
        d: &mut Dev,
        secs: f64,
        flops: f64,
        backward: bool,
        cat: Category,
        label: Label,
    ) {
        let s = &self.plan.strategy;
        let n = s.cp.max(1);
        match s.cp_comm {
            CpComm::AllGather => {
                use CollectiveKind::{AllGather, ReduceScatter};
                let cp = f64::from(n);
                let deps: Vec<u32> = d.pending.drain(..).chain(d.last_compute).collect();
                let ag = self.kv_coll(d, AllGather, cp, false, &deps);
                d.pending.push(ag);
                let c = self.compute(d, secs, flops, cat, label);
                if backward {
                    let rs = self.kv_coll(d, ReduceScatter, cp, false, &[c]);
                    d.pending.push(rs);
                }
            }
            CpComm::Ring => {
                let block = secs / f64::from(n);
                let block_flops = flops / f64::from(n);
                // Blocks each step carries: forward K/V for steps 0..n-2; backward K/V for
                // steps 0..n-2 and the previous block's dK/dV for steps 1..n-1, then the
                // last block's dK/dV.
                let carried = |k: u32| -> f64 {
                    let kv = if k + 1 < n { 1.0 } else { 0.0 };
                    let dkv = if backward && k >= 1 { 1.0 } else { 0.0 };
                    kv + dkv
                };
                let mut prev_xfer: Option<u32> = None;
                let mut prev_comp: Option<u32> = None;
                let start: Vec<u32> = d
                    .pending
                    .clone()
                    .into_iter()
                    .chain(d.last_compute)
                    .collect();
                for k in 0..n {
                    let blocks = carried(k);
                    let xfer_deps: Vec<u32> = match (prev_xfer, prev_comp) {
                        (None, None) => start.clone(),
                        _ => prev_xfer.into_iter().chain(prev_comp).collect(),
                    };
                    let xfer = (blocks > 0.0).then(|| {
                        self.kv_coll(d, CollectiveKind::AllGather, blocks, true, &xfer_deps)
                    });
                    d.pending.extend(prev_xfer);
                    prev_comp = Some(self.compute(d, block, block_flops, cat, label));
                    prev_xfer = xfer;
                }
                if backward {
                    // The last block's dK/dV hop back to its owner.
                    let deps: Vec<u32> = prev_xfer.into_iter().chain(prev_comp).collect();
                    prev_xfer = Some(self.kv_coll(d, CollectiveKind::AllGather, 1.0, true, &deps));
                }
                d.pending.extend(prev_xfer);
            }
        }
    }
}
