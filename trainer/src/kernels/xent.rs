//! The softmax cross-entropy of the head, whole ([`softmax_xent_fwd`], with its backward fused
//! into a training forward) and vocab-parallel (Megatron's scheme: [`xent_vocab_fwd`] sums
//! the row statistics over the tensor-parallel group through a [`Reduce`]).
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use super::{exp_shifted, for_rows, for_rows_with, max8, sum8};
use crate::linalg;
use crate::real::Real;
use crate::reduce::Reduce;

/// Turns `logits` `[T, V]` into probabilities in place and writes each row's
/// `-ln p[target]` into `losses` (computed in f64 for the log-sum-exp). With `grad` (the rows'
/// loss weights) it leaves the loss gradient `(p - onehot(target)) · weight[row]` instead of
/// the probabilities: [`softmax_xent_bwd`] fused into this pass, the same bits, and one
/// trip less through a `[T, V]` buffer that does not fit in cache.
pub fn softmax_xent_fwd<T: Real>(
    logits: &mut [T],
    losses: &mut [f64],
    targets: &[u32],
    v: usize,
    grad: Option<&[f64]>,
) {
    let rows = logits.len() / v;
    for_rows_with(
        logits,
        v,
        &mut losses[..rows],
        #[inline(always)]
        |r, row, loss| {
            let sum = exp_shifted(row, T::one());
            let inv = T::one() / sum;
            let t = targets[r] as usize;
            *loss = -((row[t] * inv).f64().max(f64::MIN_POSITIVE)).ln();
            match grad {
                Some(w) => dlogits_row(row, inv, w[r], Some(t)),
                None => {
                    for x in row.iter_mut() {
                        *x *= inv;
                    }
                }
            }
        },
    );
}

/// Row `row` of exponentials (or probabilities, `inv` = 1) with normaliser `inv` to the loss
/// gradient `(x·inv - onehot(t))·w` (all zero for a row of weight 0): the same two roundings
/// as normalising first and scaling after.
#[inline(always)]
fn dlogits_row<T: Real>(row: &mut [T], inv: T, w: f64, t: Option<usize>) {
    if w == 0.0 {
        row.fill(T::zero());
        return;
    }
    let wt = T::of(w);
    for x in row.iter_mut() {
        *x = *x * inv * wt;
    }
    if let Some(t) = t {
        row[t] -= wt;
    }
}

/// Turns the probabilities in place into `dlogits = (p - onehot(target)) · weight[row]`.
pub fn softmax_xent_bwd<T: Real>(probs: &mut [T], targets: &[u32], weights: &[f64], v: usize) {
    xent_vocab_bwd(probs, targets, weights, v, 0);
}

/// Vocab-parallel cross-entropy, forward (Megatron's scheme): `logits` `[T, vl]` hold this
/// device's vocabulary columns `v0..v0+vl`. `mx_all` `[tp·T]` receives the group's row
/// maxima (all-gathered through `red`), `sums` and `tl` `[T]` the row sums of exponentials
/// and the targets' shifted logits (summed through `red`). Leaves probabilities in `logits`
/// (or with `grad`, the loss gradient as [`softmax_xent_fwd`] does) and `-ln p[target]` in
/// `losses`.
#[allow(clippy::too_many_arguments)]
pub fn xent_vocab_fwd<T: Real>(
    logits: &mut [T],
    losses: &mut [f64],
    targets: &[u32],
    grad: Option<&[f64]>,
    vl: usize,
    v0: usize,
    mx_all: &mut [T],
    mx: &mut [T],
    sums: &mut [T],
    tl: &mut [T],
    red: &mut dyn Reduce<T>,
) {
    let rows = logits.len() / vl;
    for (r, m) in mx.iter_mut().enumerate() {
        *m = max8(&logits[r * vl..][..vl]);
    }
    red.all_gather(mx, mx_all);
    for (r, m) in mx.iter_mut().enumerate() {
        *m = mx_all
            .iter()
            .skip(r)
            .step_by(rows)
            .fold(*m, |a, &b| if b > a { b } else { a });
    }
    for r in 0..rows {
        let row = &mut logits[r * vl..][..vl];
        let t = targets[r] as usize;
        tl[r] = if (v0..v0 + vl).contains(&t) {
            row[t - v0] - mx[r]
        } else {
            T::zero()
        };
        let m = mx[r];
        sums[r] = linalg::vectorized(
            #[inline(always)]
            || {
                for x in row.iter_mut() {
                    *x = (*x - m).exp_fast();
                }
                sum8(row)
            },
        );
    }
    red.all_reduce(sums);
    red.all_reduce(tl);
    for r in 0..rows {
        let inv = T::one() / sums[r];
        let row = &mut logits[r * vl..][..vl];
        match grad {
            Some(w) => {
                let t = (targets[r] as usize).checked_sub(v0).filter(|&t| t < vl);
                linalg::vectorized(
                    #[inline(always)]
                    || dlogits_row(row, inv, w[r], t),
                );
            }
            None => {
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
        }
        losses[r] = sums[r].f64().ln() - tl[r].f64();
    }
}

/// [`softmax_xent_bwd`] of this device's vocabulary columns `v0..v0+vl`.
pub fn xent_vocab_bwd<T: Real>(
    probs: &mut [T],
    targets: &[u32],
    weights: &[f64],
    vl: usize,
    v0: usize,
) {
    for_rows(
        probs,
        vl,
        #[inline(always)]
        |r, row| {
            let t = (targets[r] as usize).checked_sub(v0).filter(|&t| t < vl);
            dlogits_row(row, T::one(), weights[r], t);
        },
    );
}
