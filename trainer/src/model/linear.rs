//! The linear products of a layer, below the passes that order them: the FFN sub-layer's
//! forward (shared by training and KV-cache decoding), a linear layer's backward through
//! [`Grads`] with the ordering a half batch needs, and the QKV projection's gradients split
//! into inputs and weights (the query layer's Q through its position table).
#![allow(clippy::too_many_arguments)]

use std::ops::Range;

use super::layout::LayerParams;
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

/// `out = GeLU(LN2(x)·W_up + b_up)·W_down (+ b_down when `down_bias`)` (no dropout, no
/// residual): shared by training and KV-cache decoding. `f` is this device's FFN width.
pub(crate) fn ffn_fwd<T: Real>(
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
    k::layernorm_fwd(
        b.ln,
        b.mean,
        b.rstd,
        x,
        &p[lp.ln2_g.clone()],
        &p[lp.ln2_b.clone()],
        d,
    );
    ffn_up(p, lp, b.ln, b.up, b.act, rows, d, f);
    k::linear_fwd(
        out,
        d,
        b.act,
        f,
        &p[lp.w_down.clone()],
        d,
        down_bias.then(|| &p[lp.b_down.clone()]),
        rows,
        f,
        d,
    );
}

/// `up = ln·W_up + b_up`, `act = GeLU(up)` (`f` this device's FFN width).
pub(super) fn ffn_up<T: Real>(
    p: &[T],
    lp: &LayerParams,
    ln: &[T],
    up: &mut [T],
    act: &mut [T],
    rows: usize,
    d: usize,
    f: usize,
) {
    k::linear_fwd(
        up,
        f,
        ln,
        d,
        &p[lp.w_up.clone()],
        f,
        Some(&p[lp.b_up.clone()]),
        rows,
        d,
        f,
    );
    k::gelu_fwd(act, up, f);
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
/// LN1 (`dkv`).
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_inputs<T: Real>(
    query: Option<QueryGrad<'_, T>>,
    dq: &mut [T],
    dkv: &mut [T],
    dqkv: &[T],
    w: &[T],
    d: usize,
    dl: usize,
    rows: usize,
) {
    if let Some(q) = query {
        k::linear_bwd_input(dq, d, false, q.dt, dl, w, 3 * dl, q.s, d, dl);
        let (dy, w) = (&dqkv[dl..], &w[dl..]);
        k::linear_bwd_input(dkv, d, false, dy, 3 * dl, w, 3 * dl, rows, d, 2 * dl);
    } else {
        k::linear_bwd_input(dkv, d, false, dqkv, 3 * dl, w, 3 * dl, rows, d, 3 * dl);
    }
}

/// The QKV projection's weight and bias gradients on a half of a split batch (Q's from the
/// query table and its projection's gradient with the query layer).
#[allow(clippy::too_many_arguments)]
pub(super) fn qkv_weights<T: Real>(
    query: Option<QueryGrad<'_, T>>,
    gw: &mut [T],
    gb: &mut [T],
    dqkv: &[T],
    ln1: &[T],
    d: usize,
    dl: usize,
    rows: usize,
) {
    if let Some(q) = query {
        let (gbq, gbkv) = gb.split_at_mut(dl);
        k::linear_bwd_weight(gw, 3 * dl, Some(gbq), q.dt, dl, q.wqe, d, q.s, d, dl);
        let (gw, dy) = (&mut gw[dl..], &dqkv[dl..]);
        k::linear_bwd_weight(gw, 3 * dl, Some(gbkv), dy, 3 * dl, ln1, d, rows, d, 2 * dl);
    } else {
        k::linear_bwd_weight(gw, 3 * dl, Some(gb), dqkv, 3 * dl, ln1, d, rows, d, 3 * dl);
    }
}
