//! Causal attention of a context-parallel rank: its `s/cp` query rows (two of the sequence's
//! `2·cp` chunks, [`pangu_strategies::plan::cp_chunks`]) against the keys and values of the
//! whole sequence, gathered from the cp group into global order. The mask is by global
//! position (a query at position `i` of its sample attends to its document's keys `start..=i`)
//! and dropout masks are keyed on the global (sample, head, query, key) index, so every
//! probability equals the single-device run's: only the order of additions differs.
//!
//! Each chunk of `c` queries starting at global row `g0` meets keys `0..g0 + c` only (the rest
//! is masked), so a rank's products cover its share of the causal triangle.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

use super::attention::score_row_bwd;
use super::{exp_shifted, AttnDims, Dropout};
use crate::linalg::{self, matmul_with, n, t};
use crate::real::Real;

/// The chunks of a rank as (first local row, first global row, rows).
fn chunks(dims: &AttnDims) -> [(usize, usize, usize); 2] {
    let c = dims.s / (2 * dims.cp.max(1));
    let [a, b] = pangu_strategies::plan::cp_chunks(dims.cp as u32, dims.cp_rank as u32);
    [(0, a as usize * c, c), (c, b as usize * c, c)]
}

/// Forward. `q` `[B·sl, ld]` holds this rank's rows of the packed Q | K | V (only Q is read,
/// `ld` = [`AttnDims::qkv_width`]); `kv` `[B·S, 2·kw]` the whole sequence's K | V in global
/// order; `start[b·sl + r]` the document start (global position) of local row `r`. Writes
/// `probs` `[B, H, sl, S]` (masked entries 0), `probs_drop` (with dropout) and `out`
/// `[B·sl, w]`.
pub fn attention_cp_fwd<T: Real>(
    out: &mut [T],
    probs: &mut [T],
    probs_drop: &mut [T],
    q: &[T],
    kv: &[T],
    start: &[u32],
    dims: AttnDims,
    drop: Dropout,
    sample_ids: &[u64],
) {
    let AttnDims { s, h, hd, .. } = dims;
    let sl = dims.local_s();
    let (w, kw, ld) = (dims.width(), dims.kv_width(), dims.qkv_width());
    let (kld, grp) = (2 * kw, dims.h / dims.kv.max(1));
    let scale = T::of(1.0 / (hd as f64).sqrt());
    let parts = chunks(&dims);
    let work = |b: usize, out_b: &mut [T], probs_b: &mut [T], pd_b: &mut [T]| {
        let q_b = &q[b * sl * ld..][..sl * ld];
        let kv_b = &kv[b * s * kld..][..s * kld];
        let st = &start[b * sl..][..sl];
        for hh in 0..h {
            let p = &mut probs_b[hh * sl * s..][..sl * s];
            let (k, v) = (&kv_b[hh / grp * hd..], &kv_b[kw + hh / grp * hd..]);
            let base = (sample_ids[b] * dims.h_all as u64 + (dims.h0 + hh) as u64) * (s * s) as u64;
            for &(l0, g0, c) in &parts {
                let keys = g0 + c;
                let pb = &mut p[l0 * s..];
                matmul_with(
                    pb,
                    s,
                    n(&q_b[l0 * ld + hh * hd..], ld),
                    t(k, kld),
                    c,
                    hd,
                    keys,
                    false,
                    1,
                );
                for r in 0..c {
                    let (i, row) = (g0 + r, &mut pb[r * s..][..s]);
                    let lo = st[l0 + r] as usize;
                    let sum = exp_shifted(&mut row[lo..=i], scale);
                    let inv = T::one() / sum;
                    for x in &mut row[lo..=i] {
                        *x *= inv;
                    }
                    row[..lo].fill(T::zero());
                    row[i + 1..].fill(T::zero());
                }
                let o = &mut out_b[l0 * w + hh * hd..];
                if drop.active() {
                    let pd = &mut pd_b[hh * sl * s + l0 * s..][..c * s];
                    for r in 0..c {
                        let i = g0 + r;
                        for j in 0..s {
                            let idx = r * s + j;
                            pd[idx] = pb[idx] * drop.scale::<T>(base + (i * s + j) as u64);
                        }
                    }
                    matmul_with(o, w, n(pd, s), n(v, kld), c, keys, hd, false, 1);
                } else {
                    matmul_with(o, w, n(pb, s), n(v, kld), c, keys, hd, false, 1);
                }
            }
        }
    };
    let hs2 = h * sl * s;
    let pd_len = if drop.active() { hs2 } else { 0 };
    let threads = linalg::threads() > 1;
    match (threads, pd_len > 0) {
        (true, true) => out
            .par_chunks_mut(sl * w)
            .zip(probs.par_chunks_mut(hs2))
            .zip(probs_drop.par_chunks_mut(hs2))
            .enumerate()
            .for_each(|(b, ((o, p), pd))| work(b, o, p, pd)),
        (true, false) => out
            .par_chunks_mut(sl * w)
            .zip(probs.par_chunks_mut(hs2))
            .enumerate()
            .for_each(|(b, (o, p))| work(b, o, p, &mut [])),
        (false, _) => {
            for (b, (o, p)) in out
                .chunks_mut(sl * w)
                .zip(probs.chunks_mut(hs2))
                .enumerate()
            {
                let pd = if pd_len > 0 {
                    &mut probs_drop[b * hs2..][..hs2]
                } else {
                    &mut []
                };
                work(b, o, p, pd);
            }
        }
    }
}

/// Backward after [`attention_cp_fwd`]: writes the Q columns of `dq` `[B·sl, ld]` (the K and
/// V columns are left alone) and `dkv` `[B·S, 2·kw]` (overwritten): this rank's queries'
/// contributions to the whole sequence's dK | dV, in global order, which the cp group sums
/// back to their owners. `scratch` holds `B·sl·S` elements.
pub fn attention_cp_bwd<T: Real>(
    dq: &mut [T],
    dkv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    q: &[T],
    kv: &[T],
    probs: &[T],
    probs_drop: &[T],
    start: &[u32],
    dims: AttnDims,
    drop: Dropout,
    sample_ids: &[u64],
) {
    let AttnDims { s, h, hd, .. } = dims;
    let sl = dims.local_s();
    let (w, kw, ld) = (dims.width(), dims.kv_width(), dims.qkv_width());
    let (kld, grp) = (2 * kw, dims.h / dims.kv.max(1));
    let scale = T::of(1.0 / (hd as f64).sqrt());
    let parts = chunks(&dims);
    let work = |b: usize, dq_b: &mut [T], dkv_b: &mut [T], dp: &mut [T]| {
        let q_b = &q[b * sl * ld..][..sl * ld];
        let kv_b = &kv[b * s * kld..][..s * kld];
        let dout_b = &dout[b * sl * w..][..sl * w];
        let st = &start[b * sl..][..sl];
        dkv_b.fill(T::zero());
        for hh in 0..h {
            let p = &probs[(b * h + hh) * sl * s..][..sl * s];
            let pd = if drop.active() {
                &probs_drop[(b * h + hh) * sl * s..][..sl * s]
            } else {
                p
            };
            let kvh = hh / grp;
            let (k, v) = (&kv_b[kvh * hd..], &kv_b[kw + kvh * hd..]);
            let base = (sample_ids[b] * dims.h_all as u64 + (dims.h0 + hh) as u64) * (s * s) as u64;
            for &(l0, g0, c) in &parts {
                let keys = g0 + c;
                let d_o = &dout_b[l0 * w + hh * hd..];
                // dV[0..keys] += P_dropᵀ·dO
                let dv = &mut dkv_b[kw + kvh * hd..];
                matmul_with(
                    dv,
                    kld,
                    t(&pd[l0 * s..], s),
                    n(d_o, w),
                    keys,
                    c,
                    hd,
                    true,
                    1,
                );
                // dP = dO·Vᵀ, then through dropout and the softmax.
                let db = &mut dp[l0 * s..];
                matmul_with(db, s, n(d_o, w), t(v, kld), c, hd, keys, false, 1);
                for r in 0..c {
                    let i = g0 + r;
                    let lo = st[l0 + r] as usize;
                    let dr = &mut db[r * s..][..s];
                    score_row_bwd(&p[(l0 + r) * s..][..s], dr, lo, i, s, drop, base, scale);
                }
                // dQ = dS·K (this rank's rows), dK[0..keys] += dSᵀ·Q
                let ds = &dp[l0 * s..];
                let dqh = &mut dq_b[l0 * ld + hh * hd..];
                matmul_with(dqh, ld, n(ds, s), n(k, kld), c, keys, hd, false, 1);
                let dk = &mut dkv_b[kvh * hd..];
                let qh = &q_b[l0 * ld + hh * hd..];
                matmul_with(dk, kld, t(ds, s), n(qh, ld), keys, c, hd, true, 1);
            }
        }
    };
    if linalg::threads() > 1 {
        dq.par_chunks_mut(sl * ld)
            .zip(dkv.par_chunks_mut(s * kld))
            .zip(scratch.par_chunks_mut(sl * s))
            .enumerate()
            .for_each(|(b, ((d, kv), sc))| work(b, d, kv, sc));
    } else {
        for (b, ((d, kv), sc)) in dq
            .chunks_mut(sl * ld)
            .zip(dkv.chunks_mut(s * kld))
            .zip(scratch.chunks_mut(sl * s))
            .enumerate()
        {
            work(b, d, kv, sc);
        }
    }
}
