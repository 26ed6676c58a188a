//! fp32 (and, for tests, f64) CPU kernels with explicit forward and backward passes.
//!
//! The llm.c convention: outputs first, then inputs; backward functions *accumulate* into
//! parameter gradients and either overwrite or accumulate into input gradients as each says.
//! Activations are row-major `[T, C]` with `T` = batch × sequence rows. Row-parallel loops use
//! rayon when more than one thread is configured ([`crate::linalg::threads`]).
//!
//! The attention core is in `attention`, the head's cross-entropy in `xent`; both are
//! re-exported here, so every kernel is `kernels::name`.
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod attention;
mod attention_cp;
mod llama;
mod xent;

use rayon::prelude::*;

use crate::linalg::{self, n, t};
use crate::real::Real;
use crate::rng;

pub use attention::{attention_bwd, attention_fwd, AttnDims};
pub use attention_cp::{attention_cp_bwd, attention_cp_fwd};
pub use llama::{rmsnorm_bwd, rmsnorm_fwd, rope, swiglu_bwd, swiglu_fwd, RMS_EPS};
pub use xent::{softmax_xent_bwd, softmax_xent_fwd, xent_vocab_bwd, xent_vocab_fwd};

/// Runs `f(row_index, row)` over the `width`-element rows of `buf`, in parallel when the
/// trainer uses several threads, compiled for AVX2 where the CPU has it
/// ([`linalg::vectorized`]).
pub fn for_rows<T: Send, F>(buf: &mut [T], width: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    // One zero-sized element per row: nothing is allocated.
    let mut none = vec![(); buf.len().div_ceil(width)];
    for_rows_with(
        buf,
        width,
        &mut none,
        #[inline(always)]
        |i, r, _| f(i, r),
    );
}

/// [`for_rows`] with one element of `aux` per row handed to `f` beside the row.
pub fn for_rows_with<T: Send, U: Send, F>(buf: &mut [T], width: usize, aux: &mut [U], f: F)
where
    F: Fn(usize, &mut [T], &mut U) + Sync + Send,
{
    if linalg::threads() > 1 && buf.len() >= 1 << 14 {
        buf.par_chunks_mut(width)
            .zip(aux.par_iter_mut())
            .enumerate()
            .for_each(|(i, (r, a))| {
                linalg::vectorized(
                    #[inline(always)]
                    || f(i, r, a),
                )
            });
    } else {
        for (i, (r, a)) in buf.chunks_mut(width).zip(aux.iter_mut()).enumerate() {
            linalg::vectorized(
                #[inline(always)]
                || f(i, r, a),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reductions in 8 independent lanes: the compiler vectorises them (a single running float sum
// cannot be reordered, so it stays scalar), and the order of additions is still fixed.

/// Sum of `x` (8 lane partial sums, then the lanes in order).
#[inline(always)]
pub fn sum8<T: Real>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
    for &r in rest {
        s += r;
    }
    s
}

/// Dot product of `x` and `y` (8 lane partial sums, then the lanes in order).
#[inline(always)]
pub fn dot8<T: Real>(x: &[T], y: &[T]) -> T {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [T::zero(); 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
    for (a, b) in xr.iter().zip(yr) {
        s += *a * *b;
    }
    s
}

/// Maximum of `x` (−∞ when empty).
#[inline(always)]
pub fn max8<T: Real>(x: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    let mut m = acc
        .iter()
        .fold(T::neg_infinity(), |a, &b| if b > a { b } else { a });
    for &r in rest {
        if r > m {
            m = r;
        }
    }
    m
}

/// `x ← e^(x·scale − max)` and returns the sum (the body of a softmax).
#[inline(always)]
fn exp_shifted<T: Real>(x: &mut [T], scale: T) -> T {
    linalg::vectorized(
        #[inline(always)]
        || {
            let mx = max8(x) * scale;
            for v in x.iter_mut() {
                *v = (*v * scale - mx).exp_fast();
            }
            sum8(x)
        },
    )
}

// ---------------------------------------------------------------------------------------
// Embedding

/// `out[t] = wte[tokens[t]] + wpe[pos[t]]`. out `[T, d]`, wte `[V, d]`, wpe `[S, d]`.
pub fn embed_fwd<T: Real>(
    out: &mut [T],
    tokens: &[u32],
    pos: &[u32],
    wte: &[T],
    wpe: &[T],
    d: usize,
) {
    for_rows(
        out,
        d,
        #[inline(always)]
        |r, o| {
            let w = &wte[tokens[r] as usize * d..][..d];
            let p = &wpe[pos[r] as usize * d..][..d];
            for ((o, &w), &p) in o.iter_mut().zip(w).zip(p) {
                *o = w + p;
            }
        },
    );
}

/// Accumulates the gradients of an embedding lookup: `dw[ids[t]] += dout[t]`.
pub fn lookup_bwd<T: Real>(dw: &mut [T], dout: &[T], ids: &[u32], d: usize) {
    lookup_bwd_strided(dw, dout, d, ids, d);
}

/// [`lookup_bwd`] from rows `d` wide at stride `ld` of `dout` (`dw[ids[t]] += dout[t, ..d]`),
/// row by row in order (so the sums are deterministic).
pub fn lookup_bwd_strided<T: Real>(dw: &mut [T], dout: &[T], ld: usize, ids: &[u32], d: usize) {
    for (r, &id) in ids.iter().enumerate() {
        let g = &dout[r * ld..][..d];
        let w = &mut dw[id as usize * d..][..d];
        for (w, &g) in w.iter_mut().zip(g) {
            *w += g;
        }
    }
}

/// `out[t, ..d] = table[ids[t]]` into rows at stride `ld` of `out` (a column block).
pub fn lookup_fwd_strided<T: Real>(out: &mut [T], ld: usize, ids: &[u32], table: &[T], d: usize) {
    for (r, &id) in ids.iter().enumerate() {
        out[r * ld..][..d].copy_from_slice(&table[id as usize * d..][..d]);
    }
}

// ---------------------------------------------------------------------------------------
// LayerNorm (eps 1e-5, as [R]'s hand-written LayerNorm)

/// LayerNorm epsilon.
pub const LN_EPS: f64 = 1e-5;

/// `out = (x - mean) * rstd * g + b` per row; saves mean and 1/std. x, out `[T, d]`.
pub fn layernorm_fwd<T: Real>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    g: &[T],
    b: &[T],
    d: usize,
) {
    #[inline(always)]
    fn norm_row<T: Real>(xr: &[T], o: &mut [T], g: &[T], b: &[T], m_out: &mut T, s_out: &mut T) {
        let d = xr.len();
        let m = sum8(xr) / T::of(d as f64);
        for i in 0..d {
            o[i] = (xr[i] - m) * (xr[i] - m);
        }
        let v = sum8(o) / T::of(d as f64);
        let s = T::one() / (v + T::of(LN_EPS)).sqrt();
        for i in 0..d {
            o[i] = (xr[i] - m) * s * g[i] + b[i];
        }
        *m_out = m;
        *s_out = s;
    }
    let row = |r: usize, o: &mut [T], m_out: &mut T, s_out: &mut T| {
        norm_row(&x[r * d..][..d], o, g, b, m_out, s_out);
    };
    if linalg::threads() > 1 && out.len() >= 1 << 14 {
        out.par_chunks_mut(d)
            .zip(mean.par_iter_mut())
            .zip(rstd.par_iter_mut())
            .enumerate()
            .for_each(|(r, ((o, m), s))| {
                linalg::vectorized(
                    #[inline(always)]
                    || row(r, o, m, s),
                )
            });
    } else {
        linalg::vectorized(
            #[inline(always)]
            || {
                for (r, ((o, m), s)) in out
                    .chunks_mut(d)
                    .zip(mean.iter_mut())
                    .zip(rstd.iter_mut())
                    .enumerate()
                {
                    row(r, o, m, s);
                }
            },
        );
    }
}

/// LayerNorm backward: `dx += ∂L/∂x`, `dg += Σ dout·x̂`, `db += Σ dout`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<T: Real>(
    dx: &mut [T],
    dg: &mut [T],
    db: &mut [T],
    dout: &[T],
    x: &[T],
    g: &[T],
    mean: &[T],
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
            let (m, s) = (mean[r], rstd[r]);
            // Σ dn and Σ dn·x̂ in 8 lanes each (a single running sum would stay scalar).
            let (mut acc_dn, mut acc_xh) = ([T::zero(); 8], [T::zero(); 8]);
            let whole = d / 8 * 8;
            for ((dc, gc), xc) in dor[..whole]
                .chunks_exact(8)
                .zip(g[..whole].chunks_exact(8))
                .zip(xr[..whole].chunks_exact(8))
            {
                for l in 0..8 {
                    let dn = dc[l] * gc[l];
                    acc_dn[l] += dn;
                    acc_xh[l] += dn * (xc[l] - m) * s;
                }
            }
            let mut sum_dn = acc_dn.iter().fold(T::zero(), |a, &b| a + b);
            let mut sum_dn_xh = acc_xh.iter().fold(T::zero(), |a, &b| a + b);
            for i in whole..d {
                let dn = dor[i] * g[i];
                sum_dn += dn;
                sum_dn_xh += dn * (xr[i] - m) * s;
            }
            let (a, c) = (sum_dn * inv_d, sum_dn_xh * inv_d);
            for i in 0..d {
                let xh = (xr[i] - m) * s;
                dxr[i] += (dor[i] * g[i] - a - xh * c) * s;
            }
        },
    );
    linalg::vectorized(
        #[inline(always)]
        || {
            for r in 0..x.len() / d {
                let xr = &x[r * d..][..d];
                let dor = &dout[r * d..][..d];
                let (m, s) = (mean[r], rstd[r]);
                for i in 0..d {
                    dg[i] += dor[i] * (xr[i] - m) * s;
                    db[i] += dor[i];
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Linear layers: y = x·W + b with W stored [in, out]

/// `y = x·W (+ b)`: x `[rows, k]` (row stride `ldx`), W `[k, n]` (row stride `ldw`), y
/// `[rows, n]` (row stride `ldy`).
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd<T: Real>(
    y: &mut [T],
    ldy: usize,
    x: &[T],
    ldx: usize,
    w: &[T],
    ldw: usize,
    b: Option<&[T]>,
    rows: usize,
    k: usize,
    nn: usize,
) {
    match b {
        Some(b) => {
            for r in 0..rows {
                y[r * ldy..][..nn].copy_from_slice(&b[..nn]);
            }
            linalg::matmul(y, ldy, n(x, ldx), n(w, ldw), rows, k, nn, true);
        }
        None => linalg::matmul(y, ldy, n(x, ldx), n(w, ldw), rows, k, nn, false),
    }
}

/// Linear backward. `dw += xᵀ·dy`, `db += Σ_rows dy`, and `dx = dy·Wᵀ` (overwrite) or
/// `dx += dy·Wᵀ` with `accumulate_dx`; any output may be skipped with `None`.
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd<T: Real>(
    dx: Option<(&mut [T], usize, bool)>,
    dw: &mut [T],
    ldw: usize,
    db: Option<&mut [T]>,
    dy: &[T],
    ldy: usize,
    x: &[T],
    ldx: usize,
    w: &[T],
    rows: usize,
    k: usize,
    nn: usize,
) {
    let weight = grad_product(dw, ldw, true, dy, ldy, x, ldx, true, (rows, k, nn));
    match dx {
        Some((dx, lddx, acc)) => linalg::matmul_pair(
            weight,
            grad_product(dx, lddx, acc, dy, ldy, w, ldw, false, (rows, k, nn)),
        ),
        None => weight.run(),
    }
    if let Some(db) = db {
        bias_rows(db, dy, ldy, rows, nn);
    }
}

/// A linear layer's gradient as a product, dy being `[rows, nn]`: the input's,
/// `out = dy·Wᵀ` (`+=` with `acc`) with `other` = W `[k, nn]`, or with `weight` the weight's,
/// `out += xᵀ·dy` with `other` = x `[rows, k]`.
fn grad_product<'a, 'c, T: Real>(
    out: &'c mut [T],
    ldo: usize,
    acc: bool,
    dy: &'a [T],
    ldy: usize,
    other: &'a [T],
    ld_other: usize,
    weight: bool,
    (rows, k, nn): (usize, usize, usize),
) -> linalg::Product<'a, 'c, T> {
    let (a, b, m, kk, cols) = if weight {
        (t(other, ld_other), n(dy, ldy), k, rows, nn)
    } else {
        (n(dy, ldy), t(other, ld_other), rows, nn, k)
    };
    linalg::Product {
        c: out,
        ldc: ldo,
        a,
        b,
        m,
        k: kk,
        n: cols,
        accumulate: acc || weight,
    }
}

/// The input-gradient half of [`linear_bwd`]: `dx = dy·Wᵀ`, or `dx += dy·Wᵀ` with `acc`.
pub fn linear_bwd_input<T: Real>(
    dx: &mut [T],
    lddx: usize,
    acc: bool,
    dy: &[T],
    ldy: usize,
    w: &[T],
    ldw: usize,
    rows: usize,
    k: usize,
    nn: usize,
) {
    grad_product(dx, lddx, acc, dy, ldy, w, ldw, false, (rows, k, nn)).run();
}

/// The weight-gradient half of [`linear_bwd`]: `dw += xᵀ·dy` and `db += Σ_rows dy`.
pub fn linear_bwd_weight<T: Real>(
    dw: &mut [T],
    ldw: usize,
    db: Option<&mut [T]>,
    dy: &[T],
    ldy: usize,
    x: &[T],
    ldx: usize,
    rows: usize,
    k: usize,
    nn: usize,
) {
    grad_product(dw, ldw, true, dy, ldy, x, ldx, true, (rows, k, nn)).run();
    if let Some(db) = db {
        bias_rows(db, dy, ldy, rows, nn);
    }
}

fn bias_rows<T: Real>(db: &mut [T], dy: &[T], ldy: usize, rows: usize, nn: usize) {
    for r in 0..rows {
        for (b, &g) in db[..nn].iter_mut().zip(&dy[r * ldy..][..nn]) {
            *b += g;
        }
    }
}

// ---------------------------------------------------------------------------------------
// GeLU (tanh approximation: Hendrycks & Gimpel 2016; MindSpore's nn.GELU default)
//
// gelu(x) = ½·x·(1 + tanh u) with u = √(2/π)·(x + 0.044715·x³). Since ½(1 + tanh u) = σ(2u),
// the kernels compute x·σ(2u) = x / (1 + e^(−2u)): one exponential and one division, none of
// the tanh's extra clamping and rescaling. The derivative is
// σ(2u) + 2·x·σ(2u)·(1 − σ(2u))·u′ with u′ = √(2/π)·(1 + 3·0.044715·x²).

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2/pi)
const GELU_K: f64 = 0.044715;

/// `2u` of GeLU: `2·√(2/π)·x·(1 + 0.044715·x²)`.
#[inline(always)]
fn gelu_2u<T: Real>(v: T) -> T {
    let (c2, k) = (T::of(2.0 * GELU_C), T::of(GELU_K));
    c2 * v * (k * v).mul_add(v, T::one())
}

/// `out = gelu(x)`.
pub fn gelu_fwd<T: Real>(out: &mut [T], x: &[T], width: usize) {
    for_rows(
        out,
        width,
        #[inline(always)]
        |r, o| {
            for (o, &v) in o.iter_mut().zip(&x[r * width..][..width]) {
                *o = v * gelu_2u(v).sigmoid_fast();
            }
        },
    );
}

/// `d = d · gelu'(x)` in place (`d` holds dout and becomes dx), where `act` is the forward's
/// output `x·σ(2u)`: σ(2u) is recovered as `act / x` instead of computed again, one division in
/// place of the exponential and its division (0.86 → 0.3 ns per element, one thread). The
/// division is offset by `1e-30` with x's sign, in numerator (half of it) and denominator
/// alike: below every rounding step of f32 for |x| above 1e-22, and at x = ±0 (or tiny x) it
/// gives σ(0) = ½ without a branch, which would stop the loop from vectorising.
/// gelu'(x) = σ(2u) + x·σ(2u)·(1 − σ(2u))·2u′.
pub fn gelu_bwd_inplace<T: Real>(d: &mut [T], x: &[T], act: &[T], width: usize) {
    let c2 = T::of(2.0 * GELU_C);
    let k3 = T::of(3.0 * GELU_K);
    let (tiny, half) = (T::of(1e-30), T::of(0.5e-30));
    for_rows(
        d,
        width,
        #[inline(always)]
        |r, dr| {
            let xr = &x[r * width..][..width];
            let ar = &act[r * width..][..width];
            let dr = &mut dr[..width];
            for i in 0..width {
                let (v, a) = (xr[i], ar[i]);
                let s = (a + half.copysign(v)) / (v + tiny.copysign(v));
                let du2 = c2 * (k3 * v).mul_add(v, T::one());
                dr[i] *= (v * s * (T::one() - s)).mul_add(du2, s);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Dropout (inverted, counter-based masks: see crate::rng)

/// A dropout site: probability, seed and the stream of this (step, layer, site).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Drop probability (0 disables).
    pub p: f64,
    /// Run seed.
    pub seed: u64,
    /// Stream of this call site.
    pub stream: u64,
}

impl Dropout {
    /// No dropout.
    pub const OFF: Dropout = Dropout {
        p: 0.0,
        seed: 0,
        stream: 0,
    };

    /// Whether it drops anything.
    pub fn active(&self) -> bool {
        self.p > 0.0
    }

    /// The scale of element `index`: 0 when dropped, 1/(1-p) when kept.
    #[inline(always)]
    pub fn scale<T: Real>(&self, index: u64) -> T {
        if rng::uniform(self.seed, self.stream, index) < self.p {
            T::zero()
        } else {
            T::of(1.0 / (1.0 - self.p))
        }
    }

    /// `src` with the mask applied: `src` itself when nothing is dropped, else a masked copy
    /// in `tmp` (so the common no-dropout case copies nothing).
    pub fn masked<'a, T: Real>(
        &self,
        src: &'a [T],
        tmp: &'a mut [T],
        width: usize,
        row_ids: &[u64],
    ) -> &'a [T] {
        if !self.active() {
            return src;
        }
        tmp.copy_from_slice(src);
        self.apply(tmp, width, row_ids);
        tmp
    }

    /// Applies the mask in place to rows of `width` elements, where row r of this buffer is
    /// global row `row_ids[r]` (so masks do not depend on how rows are split across devices).
    pub fn apply<T: Real>(&self, x: &mut [T], width: usize, row_ids: &[u64]) {
        if !self.active() {
            return;
        }
        for_rows(
            x,
            width,
            #[inline(always)]
            |r, xr| {
                let base = row_ids[r] * width as u64;
                for (i, v) in xr.iter_mut().enumerate() {
                    *v *= self.scale::<T>(base + i as u64);
                }
            },
        );
    }
}

/// Vocab-parallel lookup: `out[t] = wte[tokens[t] - v0]` where the token is one of this
/// device's rows `v0..v0+vl` of the table, else 0 (the group's sum is the whole lookup).
pub fn embed_vocab_part<T: Real>(out: &mut [T], tokens: &[u32], wte: &[T], v0: usize, d: usize) {
    let vl = wte.len() / d;
    for_rows(
        out,
        d,
        #[inline(always)]
        |r, o| {
            let t = tokens[r] as usize;
            if (v0..v0 + vl).contains(&t) {
                o.copy_from_slice(&wte[(t - v0) * d..][..d]);
            } else {
                o.fill(T::zero());
            }
        },
    );
}

/// `out[t] += table[ids[t]]`.
pub fn add_lookup<T: Real>(out: &mut [T], ids: &[u32], table: &[T], d: usize) {
    for_rows(
        out,
        d,
        #[inline(always)]
        |r, o| add_into(o, &table[ids[r] as usize * d..][..d]),
    );
}

/// [`lookup_bwd`] into this device's rows `v0..v0+vl` of the table (other ids skipped).
pub fn lookup_bwd_part<T: Real>(dw: &mut [T], dout: &[T], ids: &[u32], v0: usize, d: usize) {
    let vl = dw.len() / d;
    for (r, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if (v0..v0 + vl).contains(&id) {
            add_into(&mut dw[(id - v0) * d..][..d], &dout[r * d..][..d]);
        }
    }
}

/// `x[r, :] += bias` for every row of `x` (width `bias.len()`).
pub fn add_rows<T: Real>(x: &mut [T], bias: &[T]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_into(row, bias);
    }
}

/// `db += Σ_rows dy` (width `db.len()`).
pub fn bias_bwd<T: Real>(db: &mut [T], dy: &[T]) {
    for row in dy.chunks_exact(db.len()) {
        add_into(db, row);
    }
}

/// Adds `src` into `dst` element-wise.
pub fn add_into<T: Real>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Sets `x` to zero, split over the kernels' threads when there are several (a gradient buffer
/// of tens of megabytes is written at memory speed: two cores write it in about half the time).
pub fn zero<T: Real>(x: &mut [T]) {
    const CHUNK: usize = 1 << 16;
    if linalg::threads() > 1 && x.len() > CHUNK {
        x.par_chunks_mut(CHUNK).for_each(|c| c.fill(T::zero()));
    } else {
        x.fill(T::zero());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_clears_every_element_on_one_and_two_threads() {
        for threads in [1, 2] {
            // Not a multiple of the chunk: the last, short chunk is cleared too.
            let mut x = vec![1.5f32; (1 << 17) + 3];
            linalg::with_threads(threads, || zero(&mut x));
            assert!(x.iter().all(|&v| v == 0.0), "{threads} threads");
        }
    }
}
