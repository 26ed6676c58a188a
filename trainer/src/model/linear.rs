//! The linear products and norms of a layer, below the passes that order them: the FFN
//! sub-layer's forward (shared by training and KV-cache decoding), a linear layer's backward
//! through [`Grads`] with the ordering a half batch needs, the QKV projection's gradients
//! split into inputs and weights (the query layer's Q through its position table), and the
//! norm of the model's kind (LayerNorm or RMSNorm) forward and backward.
#![allow(clippy::too_many_arguments)]

use std::ops::Range;

use super::layout::{Arch, LayerParams};
use crate::grads::Grads;
use crate::kernels as k;
use crate::real::Real;

/// Buffers of the FFN sub-layer's forward pass.
pub(crate) struct FfnBufs<'a, T> {
    pub(crate) ln: &'a mut [T],
    pub(crate) mean: &'a mut [T],
    pub(crate) rstd: &'a mut [T],
    pub(crate) up: &'a mut [T],
    pub(crate) act: &'a mut [T],
}

/// The bias at `r`, or `None` for a model without biases (an empty range).
pub(crate) fn bias<'a, T>(p: &'a [T], r: &Range<usize>) -> Option<&'a [T]> {
    (!r.is_empty()).then(|| &p[r.clone()])
}

/// The range `r` of a bias, or `None` when the model has none.
pub(super) fn bias_range(r: &Range<usize>) -> Option<&Range<usize>> {
    (!r.is_empty()).then_some(r)
}

/// `out = norm(x)` per row of width `d`: LayerNorm with gain `g` and bias `b` (saving the
/// mean and 1/std), or under RMSNorm `x·rstd·g` (`b` empty, `mean` untouched).
pub(crate) fn norm_fwd<T: Real>(
    arch: Arch,
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    x: &[T],
    g: &[T],
    b: &[T],
    d: usize,
) {
    if arch.rms {
        k::rmsnorm_fwd(out, rstd, x, g, d);
    } else {
        k::layernorm_fwd(out, mean, rstd, x, g, b, d);
    }
}

/// The norm's backward: `dx += ∂L/∂x` and the gain's (and LayerNorm's bias') gradients added
/// to their tensors at `gr` (and `br`) in `g`; `gain` holds the gain's values.
pub(super) fn norm_back<T: Real>(
    arch: Arch,
    g: &mut Grads<'_, '_, T>,
    gr: &Range<usize>,
    br: &Range<usize>,
    dx: &mut [T],
    dout: &[T],
    x: &[T],
    gain: &[T],
    mean: &[T],
    rstd: &[T],
    d: usize,
) {
    if arch.rms {
        k::rmsnorm_bwd(dx, &mut g.take(gr), dout, x, gain, rstd, d);
    } else {
        let (mut dg, mut db) = g.take2(gr, br);
        k::layernorm_bwd(dx, &mut dg, &mut db, dout, x, gain, mean, rstd, d);
    }
}

/// `out = FFN(norm2(x))·W_down (+ b_down when `down_bias`)` (no dropout, no residual):
/// shared by training and KV-cache decoding. `f` is this device's FFN width.
pub(crate) fn ffn_fwd<T: Real>(
    arch: Arch,
    p: &[T],
    lp: &LayerParams,
    x: &[T],
    b: FfnBufs<'_, T>,
    out: &mut [T],
    rows: usize,
    d: usize,
    f: usize,
    down_bias: bool,
) {
    let (g, nb) = (&p[lp.ln2_g.clone()], &p[lp.ln2_b.clone()]);
    norm_fwd(arch, b.ln, b.mean, b.rstd, x, g, nb, d);
    ffn_up(arch, p, lp, b.ln, b.up, b.act, rows, d, f);
    k::linear_fwd(
        out,
        d,
        b.act,
        f,
        &p[lp.w_down.clone()],
        d,
        if down_bias { bias(p, &lp.b_down) } else { None },
        rows,
        f,
        d,
    );
}

/// `up = ln·W_up + b_up` and `act = GeLU(up)`; under SwiGLU `up` holds the gate and up
/// projections `[rows, 2f]` and `act = silu(gate)·up` (`f` this device's FFN width).
pub(super) fn ffn_up<T: Real>(
    arch: Arch,
    p: &[T],
    lp: &LayerParams,
    ln: &[T],
    up: &mut [T],
    act: &mut [T],
    rows: usize,
    d: usize,
    f: usize,
) {
    let uw = if arch.swiglu { 2 * f } else { f };
    let w = &p[lp.w_up.clone()];
    k::linear_fwd(up, uw, ln, d, w, uw, bias(p, &lp.b_up), rows, d, uw);
    if arch.swiglu {
        k::swiglu_fwd(act, up, f);
    } else {
        k::gelu_fwd(act, up, f);
    }
}

/// A linear layer's backward through `g` (as [`k::linear_bwd`], with the weight and bias
/// gradients named by their ranges). On a half of a split batch the input-gradient product
/// runs before taking the weight's slot (half 1) or after releasing it (half 0).
#[allow(clippy::too_many_arguments)]
pub(super) fn linear_back<T: Real>(
    g: &mut Grads<'_, '_, T>,
    dx: Option<(&mut [T], usize, bool)>,
    wr: &Range<usize>,
    ldw: usize,
    br: Option<&Range<usize>>,
    dy: &[T],
    ldy: usize,
    x: &[T],
    ldx: usize,
    w: &[T],
    rows: usize,
    kk: usize,
    nn: usize,
) {
    if !g.is_half() {
        let (mut gw, mut gb) = g.take_maybe2(wr, br);
        let db = gb.as_deref_mut();
        k::linear_bwd(dx, &mut gw, ldw, db, dy, ldy, x, ldx, w, rows, kk, nn);
        return;
    }
    let input_first = g.input_first();
    let mut dx = dx;
    let mut input = || {
        if let Some((dx, lddx, acc)) = dx.take() {
            k::linear_bwd_input(dx, lddx, acc, dy, ldy, w, ldw, rows, kk, nn);
        }
    };
    if input_first {
        input();
    }
    {
        let (mut gw, mut gb) = g.take_maybe2(wr, br);
        let db = gb.as_deref_mut();
        k::linear_bwd_weight(&mut gw, ldw, db, dy, ldy, x, ldx, rows, kk, nn);
    }
    if !input_first {
        input();
    }
}

/// The query layer's Q gradient through the query table: the projection's gradient `dt`
/// `[s, dl]` (dQ summed over the rows at each position) and the table `wqe` `[s, d]`.
#[derive(Clone, Copy)]
pub(super) struct QueryGrad<'a, T> {
    pub(super) dt: &'a [T],
    pub(super) wqe: &'a [T],
    pub(super) s: usize,
}

/// The QKV projection's input gradients on a half of a split batch: with the query layer,
/// Q's goes to the query table (`dq`, `[S, d]`) and K and V's to LN1 (`dkv`); else all to
/// LN1 (`dkv`). The projection is `qw` wide, Q's block `dl`.
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_inputs<T: Real>(
    query: Option<QueryGrad<'_, T>>,
    dq: &mut [T],
    dkv: &mut [T],
    dqkv: &[T],
    w: &[T],
    d: usize,
    (dl, qw): (usize, usize),
    rows: usize,
) {
    if let Some(q) = query {
        k::linear_bwd_input(dq, d, false, q.dt, dl, w, qw, q.s, d, dl);
        let (dy, w) = (&dqkv[dl..], &w[dl..]);
        k::linear_bwd_input(dkv, d, false, dy, qw, w, qw, rows, d, qw - dl);
    } else {
        k::linear_bwd_input(dkv, d, false, dqkv, qw, w, qw, rows, d, qw);
    }
}

/// Splits an optional bias gradient at `at`.
pub(super) fn split_bias<T>(
    gb: Option<&mut [T]>,
    at: usize,
) -> (Option<&mut [T]>, Option<&mut [T]>) {
    match gb {
        Some(b) => {
            let (x, y) = b.split_at_mut(at);
            (Some(x), Some(y))
        }
        None => (None, None),
    }
}

/// The QKV projection's weight and bias gradients on a half of a split batch (Q's from the
/// query table and its projection's gradient with the query layer).
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_weights<T: Real>(
    query: Option<QueryGrad<'_, T>>,
    gw: &mut [T],
    gb: Option<&mut [T]>,
    dqkv: &[T],
    ln1: &[T],
    d: usize,
    (dl, qw): (usize, usize),
    rows: usize,
) {
    if let Some(q) = query {
        let (gbq, gbkv) = split_bias(gb, dl);
        k::linear_bwd_weight(gw, qw, gbq, q.dt, dl, q.wqe, d, q.s, d, dl);
        let (gw, dy) = (&mut gw[dl..], &dqkv[dl..]);
        k::linear_bwd_weight(gw, qw, gbkv, dy, qw, ln1, d, rows, d, qw - dl);
    } else {
        k::linear_bwd_weight(gw, qw, gb, dqkv, qw, ln1, d, rows, d, qw);
    }
}
