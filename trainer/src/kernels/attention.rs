//! Causal multi-head attention with document masking (a token attends to its own document's
//! earlier tokens only), forward and backward, over blocks of query rows that skip the masked
//! upper triangle ([`causal_blocks`]).
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use rayon::prelude::*;

use super::{dot8, exp_shifted, Dropout};
use crate::linalg::{self, matmul_with, n, t};
use crate::real::Real;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    /// Sequences.
    pub b: usize,
    /// Sequence length.
    pub s: usize,
    /// Heads (on this device).
    pub h: usize,
    /// Key/value heads (on this device; grouped-query attention when fewer than `h`): query
    /// head `i` reads key/value head `i / (h / kv)`.
    pub kv: usize,
    /// Head size.
    pub hd: usize,
    /// Global index of this device's first head (dropout masks are keyed on global heads).
    pub h0: usize,
    /// Heads of the whole layer.
    pub h_all: usize,
    /// Context-parallel degree: with more than 1 this device holds `s/cp` query rows of each
    /// sample (`attention_cp`), `s` being the whole sequence.
    pub cp: usize,
    /// This device's index in its context-parallel group.
    pub cp_rank: usize,
}

impl AttnDims {
    /// All `h` heads of one device.
    pub fn whole(b: usize, s: usize, h: usize, hd: usize) -> AttnDims {
        AttnDims {
            b,
            s,
            h,
            kv: h,
            hd,
            h0: 0,
            h_all: h,
            cp: 1,
            cp_rank: 0,
        }
    }

    /// Query rows of a sample on this device (`s/cp`).
    pub fn local_s(&self) -> usize {
        self.s / self.cp.max(1)
    }

    /// Width of the merged heads (h·hd).
    pub fn width(&self) -> usize {
        self.h * self.hd
    }

    /// Width of the keys (or values) of every key/value head (kv·hd).
    pub fn kv_width(&self) -> usize {
        self.kv * self.hd
    }

    /// Row stride of the packed Q | K | V buffer.
    pub fn qkv_width(&self) -> usize {
        self.width() + 2 * self.kv_width()
    }

    /// Query heads per key/value head.
    fn group(&self) -> usize {
        self.h / self.kv.max(1)
    }
}

/// Row blocks `(r0, r1)` of an `s × s` causal score matrix: block rows `r0..r1` have
/// non-zero entries in columns `0..r1` only, so its products skip the columns after `r1`
/// (and the transposed products the rows before `r0`). Blocks of S/8 rows, at least 64: the
/// attention products do 56 % of the full matrix's multiply-adds for S ≥ 512, 62.5 % at
/// S = 256 and 75 % at 128, and each output element still sums the same non-zero terms in the
/// same order, so the numbers are those of the full product (whose extra terms were exact
/// zeros). Measured (attention forward + backward, one thread, ten calls): S = 128, 4 heads
/// of 64, batch 8: 8.3 ms → 6.6 ms; S = 256, 8 heads: 59 → 46 ms (32-row blocks: 53 ms).
fn causal_blocks(s: usize) -> impl Iterator<Item = (usize, usize)> {
    let blk = (s / 8).max(64);
    (0..s).step_by(blk).map(move |r0| (r0, (r0 + blk).min(s)))
}

/// `out[s, hd] = L·R`, or `Lᵀ·R` with `lt`, for a lower-triangular `L` `[s, s]` (row
/// stride s) and `R` with row stride `ldr`; `out` has row stride `ldo`. `L·R`: block rows
/// `r0..r1` of L meet rows `0..r1` of R only; `Lᵀ·R`: output rows `c0..c1` (columns of L)
/// gather L's and R's rows `c0..s` only. `acc` adds to `out` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
fn causal_mul<T: Real>(
    out: &mut [T],
    ldo: usize,
    l: &[T],
    lt: bool,
    r: &[T],
    ldr: usize,
    s: usize,
    hd: usize,
    acc: bool,
) {
    for (b0, b1) in causal_blocks(s) {
        let ob = &mut out[b0 * ldo..];
        if lt {
            let (lb, rb) = (&l[b0 * s + b0..], &r[b0 * ldr..]);
            matmul_with(ob, ldo, t(lb, s), n(rb, ldr), b1 - b0, s - b0, hd, acc, 1);
        } else {
            let lb = &l[b0 * s..];
            matmul_with(ob, ldo, n(lb, s), n(r, ldr), b1 - b0, b1, hd, acc, 1);
        }
    }
}

/// Attention forward. `qkv` `[B·S, w + 2·kw]` holds Q (`w` = h·hd), K and V (`kw` = kv·hd
/// each) column blocks (each head `hd` wide; query head i reads key/value head i/(h/kv));
/// `start[b·S+i]` is the position inside the sample where token i's document begins, so token
/// i attends to `start..=i` only (causal plus the EOD reset of [R]'s `get_input_data`).
/// Writes `probs` `[B, H, S, S]` (softmax, masked entries exactly 0), `probs_drop` (after
/// dropout, only when dropout is active) and `out` `[B·S, w]`.
pub fn attention_fwd<T: Real>(
    out: &mut [T],
    probs: &mut [T],
    probs_drop: &mut [T],
    qkv: &[T],
    start: &[u32],
    dims: AttnDims,
    drop: Dropout,
    sample_ids: &[u64],
) {
    let AttnDims { s, h, hd, .. } = dims;
    let (w, kw, ld, grp) = (
        dims.width(),
        dims.kv_width(),
        dims.qkv_width(),
        dims.group(),
    );
    let scale = T::of(1.0 / (hd as f64).sqrt());
    let work = |b: usize, out_b: &mut [T], probs_b: &mut [T], pd_b: &mut [T]| {
        let qkv_b = &qkv[b * s * ld..][..s * ld];
        let st = &start[b * s..][..s];
        for hh in 0..h {
            let p = &mut probs_b[hh * s * s..][..s * s];
            let q = &qkv_b[hh * hd..];
            let k = &qkv_b[w + hh / grp * hd..];
            // Scores of query rows r0..r1 against keys 0..r1 only: the rest is masked.
            for (r0, r1) in causal_blocks(s) {
                let (qb, pb) = (&q[r0 * ld..], &mut p[r0 * s..]);
                matmul_with(pb, s, n(qb, ld), t(k, ld), r1 - r0, hd, r1, false, 1);
            }
            for i in 0..s {
                let row = &mut p[i * s..][..s];
                let lo = st[i] as usize;
                // scale > 0, so max(x)·scale = max(x·scale).
                let sum = exp_shifted(&mut row[lo..=i], scale);
                let inv = T::one() / sum;
                for v in &mut row[lo..=i] {
                    *v *= inv;
                }
                row[..lo].fill(T::zero());
                row[i + 1..].fill(T::zero());
            }
            let v = &qkv_b[w + kw + hh / grp * hd..];
            let o = &mut out_b[hh * hd..];
            if drop.active() {
                let pd = &mut pd_b[hh * s * s..][..s * s];
                let base =
                    (sample_ids[b] * dims.h_all as u64 + (dims.h0 + hh) as u64) * (s * s) as u64;
                for (j, (d, &pv)) in pd.iter_mut().zip(p.iter()).enumerate() {
                    *d = pv * drop.scale::<T>(base + j as u64);
                }
                causal_mul(o, w, pd, false, v, ld, s, hd, false);
            } else {
                causal_mul(o, w, p, false, v, ld, s, hd, false);
            }
        }
    };
    let hs2 = h * s * s;
    let pd_len = if drop.active() { hs2 } else { 0 };
    if linalg::threads() > 1 {
        if pd_len > 0 {
            out.par_chunks_mut(s * w)
                .zip(probs.par_chunks_mut(hs2))
                .zip(probs_drop.par_chunks_mut(hs2))
                .enumerate()
                .for_each(|(b, ((o, p), pd))| work(b, o, p, pd));
        } else {
            out.par_chunks_mut(s * w)
                .zip(probs.par_chunks_mut(hs2))
                .enumerate()
                .for_each(|(b, (o, p))| work(b, o, p, &mut []));
        }
    } else {
        for (b, (o, p)) in out.chunks_mut(s * w).zip(probs.chunks_mut(hs2)).enumerate() {
            let pd = if pd_len > 0 {
                &mut probs_drop[b * hs2..][..hs2]
            } else {
                &mut []
            };
            work(b, o, p, pd);
        }
    }
}

/// Attention backward: writes `dqkv` `[B·S, w + 2·kw]` (overwrite) from `dout` `[B·S, w]`,
/// using the saved `probs` / `probs_drop` and `scratch` of `B·S·S` elements. A key/value
/// head's gradient is the sum over the query heads of its group.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    dqkv: &mut [T],
    scratch: &mut [T],
    dout: &[T],
    qkv: &[T],
    probs: &[T],
    probs_drop: &[T],
    start: &[u32],
    dims: AttnDims,
    drop: Dropout,
    sample_ids: &[u64],
) {
    let AttnDims { s, h, hd, .. } = dims;
    let (w, kw, ld, grp) = (
        dims.width(),
        dims.kv_width(),
        dims.qkv_width(),
        dims.group(),
    );
    let scale = T::of(1.0 / (hd as f64).sqrt());
    let work = |b: usize, dqkv_b: &mut [T], dp: &mut [T]| {
        let qkv_b = &qkv[b * s * ld..][..s * ld];
        let dout_b = &dout[b * s * w..][..s * w];
        let st = &start[b * s..][..s];
        for hh in 0..h {
            let p = &probs[(b * h + hh) * s * s..][..s * s];
            let pd = if drop.active() {
                &probs_drop[(b * h + hh) * s * s..][..s * s]
            } else {
                p
            };
            let (kvh, acc) = (hh / grp, hh % grp != 0);
            let q = &qkv_b[hh * hd..];
            let k = &qkv_b[w + kvh * hd..];
            let v = &qkv_b[w + kw + kvh * hd..];
            let d_o = &dout_b[hh * hd..];
            // dV = P_dropᵀ·dO (summed over the key/value head's group)
            let dv = &mut dqkv_b[w + kw + kvh * hd..];
            causal_mul(dv, ld, pd, true, d_o, w, s, hd, acc);
            // dP_drop = dO·Vᵀ, rows r0..r1 against keys 0..r1
            for (r0, r1) in causal_blocks(s) {
                let (ob, db) = (&d_o[r0 * w..], &mut dp[r0 * s..]);
                matmul_with(db, s, n(ob, w), t(v, ld), r1 - r0, hd, r1, false, 1);
            }
            let base = (sample_ids[b] * dims.h_all as u64 + (dims.h0 + hh) as u64) * (s * s) as u64;
            for i in 0..s {
                let lo = st[i] as usize;
                let dr = &mut dp[i * s..][..s];
                score_row_bwd(&p[i * s..][..s], dr, lo, i, s, drop, base, scale);
            }
            // dQ = dS·K, dK = dSᵀ·Q (summed over the group)
            causal_mul(&mut dqkv_b[hh * hd..], ld, dp, false, k, ld, s, hd, false);
            causal_mul(&mut dqkv_b[w + kvh * hd..], ld, dp, true, q, ld, s, hd, acc);
        }
    };
    if linalg::threads() > 1 {
        dqkv.par_chunks_mut(s * ld)
            .zip(scratch.par_chunks_mut(s * s))
            .enumerate()
            .for_each(|(b, (d, sc))| work(b, d, sc));
    } else {
        for (b, (d, sc)) in dqkv
            .chunks_mut(s * ld)
            .zip(scratch.chunks_mut(s * s))
            .enumerate()
        {
            work(b, d, sc);
        }
    }
}

/// The backward of one causal score row through dropout and the softmax, in place: `dr`
/// holds dP of query `i` over all `s` keys and becomes dS, live on keys `lo..=i` (the
/// document's start to the query) and zero elsewhere. `pr` is the row's probabilities,
/// `base` the dropout stream's offset of its (sample, head) block, indexed `i·s + j` by global
/// positions, so the whole-sequence and the context-parallel kernels draw the same masks.
#[allow(clippy::too_many_arguments)] // one row's indices and its kernel's constants
pub(super) fn score_row_bwd<T: Real>(
    pr: &[T],
    dr: &mut [T],
    lo: usize,
    i: usize,
    s: usize,
    drop: Dropout,
    base: u64,
    scale: T,
) {
    if drop.active() {
        for j in lo..=i {
            dr[j] *= drop.scale::<T>(base + (i * s + j) as u64);
        }
    }
    linalg::vectorized(
        #[inline(always)]
        || {
            let dot = dot8(&pr[lo..=i], &dr[lo..=i]);
            for j in lo..=i {
                dr[j] = pr[j] * (dr[j] - dot) * scale;
            }
        },
    );
    dr[..lo].fill(T::zero());
    dr[i + 1..].fill(T::zero());
}
