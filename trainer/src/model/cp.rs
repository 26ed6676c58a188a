//! Context parallelism inside a layer: the attention core of a device that holds `s/cp`
//! tokens of every sample (two of the sequence's `2·cp` chunks,
//! [`pangu_strategies::plan::cp_chunks`]). Everything else of the layer is token-local and
//! runs on its rows unchanged.
//!
//! Forward: this device's K | V rows go into its block of the exchange buffer, the plan's
//! forward K/V program fills the others ([`KvPhase::Forward`], through [`Reduce`]), and the
//! blocks are laid out in global order for the kernel ([`k::attention_cp_fwd`]: the local
//! queries against keys `0..=i` of their document). Backward gathers the K/V again
//! ([`KvPhase::BackwardKv`]), computes dQ for the local queries and their contributions to the
//! whole sequence's dK/dV, and the plan's reduce-scatter sums those back to the block's owner
//! ([`KvPhase::BackwardGrad`]); dQ stays local.
//!
//! The executor runs each program whole, then the attention (the ring's steps are not
//! interleaved with the attention of each arriving block as Megatron-core's p2p variant
//! overlaps them): the same messages in the same order, without the overlap.

use pangu_strategies::plan::cp_token;

use super::acts::KvBufs;
use super::batch::Batch;
use super::Model;
use crate::kernels::{self as k, AttnDims, Dropout};
use crate::real::Real;
use crate::reduce::{KvPhase, Reduce};

/// `f(block_row, global_row)` for every row of every member's block: its row in the group's
/// block buffer and in the whole sequence (`[b·S]`), in units of `2·kw`-element rows.
fn for_each_row(ad: &AttnDims, mut f: impl FnMut(usize, usize)) {
    let (b, s, cp) = (ad.b, ad.s, ad.cp);
    let sl = ad.local_s();
    for r in 0..cp {
        for bi in 0..b {
            for j in 0..sl {
                let g = cp_token(s as u32, cp as u32, r as u32, j as u32) as usize;
                f((r * b + bi) * sl + j, bi * s + g);
            }
        }
    }
}

impl Model {
    /// The whole sequence's K | V in `x.kv` (global order), from this device's rows of `qkv`
    /// and the group's exchange `phase`.
    fn gather_kv<T: Real>(
        &self,
        qkv: &[T],
        x: &mut KvBufs<T>,
        ad: &AttnDims,
        phase: KvPhase,
        red: &mut dyn Reduce<T>,
    ) {
        let (w, kw2, ld) = (ad.width(), 2 * ad.kv_width(), ad.qkv_width());
        let rows = ad.b * ad.local_s();
        let me = ad.cp_rank;
        let own = &mut x.blocks[me * rows * kw2..][..rows * kw2];
        for (o, q) in own.chunks_mut(kw2).zip(qkv.chunks(ld)) {
            o.copy_from_slice(&q[w..w + kw2]);
        }
        red.kv_exchange(phase, &mut x.blocks);
        let (blocks, kv) = (&x.blocks, &mut x.kv);
        for_each_row(ad, |from, to| {
            kv[to * kw2..][..kw2].copy_from_slice(&blocks[from * kw2..][..kw2]);
        });
    }

    /// The attention core's forward under context parallelism: `att` `[rows, dl]` and the
    /// probabilities of this device's queries against the whole sequence, after the forward
    /// exchange (`gather`), or from the K/V already in `x.kv` (the recomputation of selective
    /// remat after [`Model::regather_kv`]).
    pub(super) fn attention_cp_fwd<T: Real>(
        &self,
        att: &mut [T],
        (probs, probs_drop): (&mut [T], &mut [T]),
        (qkv, x): (&[T], &mut KvBufs<T>),
        batch: &Batch,
        (ad, drop, gather): (AttnDims, Dropout, bool),
        red: &mut dyn Reduce<T>,
    ) {
        if gather {
            self.gather_kv(qkv, x, &ad, KvPhase::Forward, red);
        }
        let (st, ids) = (&batch.start, &batch.sample_ids);
        k::attention_cp_fwd(att, probs, probs_drop, qkv, &x.kv, st, ad, drop, ids);
    }

    /// The K/V gathered again for backward (and the core's recomputation under selective
    /// remat, which then reads them from `x.kv`).
    pub(super) fn regather_kv<T: Real>(
        &self,
        qkv: &[T],
        x: &mut KvBufs<T>,
        ad: &AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        self.gather_kv(qkv, x, ad, KvPhase::BackwardKv, red);
    }

    /// The attention core's backward under context parallelism after [`Model::regather_kv`]:
    /// dQ of this device's rows and the group's sum of dK/dV for its rows, into `dqkv`.
    pub(super) fn attention_cp_bwd<T: Real>(
        &self,
        dqkv: &mut [T],
        scratch: &mut [T],
        dout: &[T],
        qkv: &[T],
        (probs, probs_drop): (&[T], &[T]),
        x: &mut KvBufs<T>,
        batch: &Batch,
        (ad, drop): (AttnDims, Dropout),
        red: &mut dyn Reduce<T>,
    ) {
        let (st, ids) = (&batch.start, &batch.sample_ids);
        k::attention_cp_bwd(
            dqkv, &mut x.dkv, scratch, dout, qkv, &x.kv, probs, probs_drop, st, ad, drop, ids,
        );
        let (w, kw2, ld) = (ad.width(), 2 * ad.kv_width(), ad.qkv_width());
        let (blocks, dkv) = (&mut x.blocks, &x.dkv);
        for_each_row(&ad, |to, from| {
            blocks[to * kw2..][..kw2].copy_from_slice(&dkv[from * kw2..][..kw2]);
        });
        red.kv_exchange(KvPhase::BackwardGrad, blocks);
        let rows = ad.b * ad.local_s();
        let own = &blocks[ad.cp_rank * rows * kw2..][..rows * kw2];
        for (d, g) in dqkv.chunks_mut(ld).zip(own.chunks(kw2)) {
            d[w..w + kw2].copy_from_slice(g);
        }
    }
}
