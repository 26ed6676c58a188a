//! The kernels of a Llama-style block beside the shared ones: RMSNorm, the SwiGLU gate and
//! rotary position embeddings, forward and backward.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::{for_rows, for_rows_with, sum8};
use crate::real::Real;

// ---------------------------------------------------------------------------------------
// RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x²) + eps) · g, no centring, no bias.

/// RMSNorm epsilon: `norm_eps = 1e-5`, the default of Meta's Llama 2 and 3 reference code
/// (`ModelArgs` in meta-llama/llama3 `model.py`).
pub const RMS_EPS: f64 = 1e-5;

/// `out = x · rstd · g` per row of width `d`; saves `rstd = 1/sqrt(mean(x²) + eps)`.
pub fn rmsnorm_fwd<T: Real>(out: &mut [T], rstd: &mut [T], x: &[T], g: &[T], d: usize) {
    for_rows_with(
        out,
        d,
        rstd,
        #[inline(always)]
        |r, o, s_out| {
            let xr = &x[r * d..][..d];
            for i in 0..d {
                o[i] = xr[i] * xr[i];
            }
            let ms = sum8(o) / T::of(d as f64);
            let s = T::one() / (ms + T::of(RMS_EPS)).sqrt();
            for i in 0..d {
                o[i] = xr[i] * s * g[i];
            }
            *s_out = s;
        },
    );
}

/// RMSNorm backward: `dx += s·(dy·g − x̂·mean(dy·g·x̂))` with `x̂ = x·s`, `dg += Σ dy·x̂`.
pub fn rmsnorm_bwd<T: Real>(
    dx: &mut [T],
    dg: &mut [T],
    dout: &[T],
    x: &[T],
    g: &[T],
    rstd: &[T],
    d: usize,
) {
    let inv_d = T::one() / T::of(d as f64);
    for_rows(
        dx,
        d,
        #[inline(always)]
        |r, dxr| {
            let xr = &x[r * d..][..d];
            let dor = &dout[r * d..][..d];
            let s = rstd[r];
            let mut acc = [T::zero(); 8];
            for i in 0..d {
                acc[i % 8] += dor[i] * g[i] * xr[i] * s;
            }
            let c = acc.iter().fold(T::zero(), |a, &b| a + b) * inv_d;
            for i in 0..d {
                dxr[i] += (dor[i] * g[i] - xr[i] * s * c) * s;
            }
        },
    );
    for (r, dor) in dout.chunks_exact(d).enumerate() {
        let (xr, s) = (&x[r * d..][..d], rstd[r]);
        for i in 0..d {
            dg[i] += dor[i] * xr[i] * s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): FFN(x) = (silu(x·W1) ⊙ x·W3)·W2,
// silu(z) = z·σ(z). The gate and up projections are one `[d, 2f]` product here: row `r` of
// `gu` holds the gate `[0, f)` then the up projection `[f, 2f)`.

/// `act[r, j] = silu(gu[r, j]) · gu[r, f + j]`; `act` is `[rows, f]`, `gu` `[rows, 2f]`.
pub fn swiglu_fwd<T: Real>(act: &mut [T], gu: &[T], f: usize) {
    for_rows(
        act,
        f,
        #[inline(always)]
        |r, o| {
            let (gate, up) = gu[r * 2 * f..][..2 * f].split_at(f);
            for j in 0..f {
                o[j] = gate[j] * gate[j].sigmoid_fast() * up[j];
            }
        },
    );
}

/// SwiGLU backward: `dgu` `[rows, 2f]` (overwritten) from `dact` `[rows, f]`:
/// `dgate = dact·up·σ(g)·(1 + g·(1 − σ(g)))`, `dup = dact·silu(g)`.
pub fn swiglu_bwd<T: Real>(dgu: &mut [T], gu: &[T], dact: &[T], f: usize) {
    for_rows(
        dgu,
        2 * f,
        #[inline(always)]
        |r, dr| {
            let (gate, up) = gu[r * 2 * f..][..2 * f].split_at(f);
            let da = &dact[r * f..][..f];
            let (dg, du) = dr.split_at_mut(f);
            for j in 0..f {
                let g = gate[j];
                let sg = g.sigmoid_fast();
                du[j] = da[j] * g * sg;
                dg[j] = da[j] * up[j] * sg * (g * (T::one() - sg) + T::one());
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Rotary position embeddings (Su et al. 2021, RoFormer §3.4): pair i of a head of size hd turns
// by the angle pos·θ^(-2i/hd). Pairs are (i, i + hd/2), the "rotate half" arrangement of
// GPT-NeoX and Hugging Face's Llama (the same function as RoFormer's adjacent pairs up to a
// fixed permutation of each head's columns).

/// Rotates, in place, the first `heads` heads (each `hd` wide, `hd` even) of every row of
/// `x` (row stride `ld`) by the row's position `pos[r]`; `inverse` turns the other way,
/// which is the backward pass (a rotation's transpose is its inverse).
pub fn rope<T: Real>(
    x: &mut [T],
    ld: usize,
    heads: usize,
    hd: usize,
    pos: &[u32],
    theta: f64,
    inverse: bool,
) {
    let half = hd / 2;
    let top = pos.iter().copied().max().map_or(0, |p| p as usize + 1);
    // cos and sin of every (position, pair) used, computed in f64 once per call.
    let sign = if inverse { -1.0 } else { 1.0 };
    let mut table = Vec::with_capacity(top * half);
    for p in 0..top {
        for i in 0..half {
            let a = p as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
            table.push((T::of(a.cos()), T::of(sign * a.sin())));
        }
    }
    for_rows(
        x,
        ld,
        #[inline(always)]
        |r, row| {
            let cs = &table[pos[r] as usize * half..][..half];
            for hh in 0..heads {
                let (a, b) = row[hh * hd..][..hd].split_at_mut(half);
                for i in 0..half {
                    let (c, s) = cs[i];
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * c - x1 * s;
                    b[i] = x0 * s + x1 * c;
                }
            }
        },
    );
}
