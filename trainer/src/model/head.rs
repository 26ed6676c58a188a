//! The head of the last part: final norm, logits against the output table (the tied word
//! table or the untied head's own; this device's vocabulary columns) and the cross-entropy, forward ([`Model::head_fwd`]) and
//! backward ([`Model::head_bwd`]), with the head's weight gradient in cache-sized blocks.
#![allow(clippy::too_many_arguments)]

use super::acts::Acts;
use super::batch::Batch;
use super::layout::Dims;
use super::Model;
use crate::grads::Grads;
use crate::kernels as k;
use crate::real::Real;
use crate::reduce::Reduce;

impl Model {
    /// The head's forward after the layers (their output in [`Acts::output`]): returns Σ
    /// weight·loss over rows and leaves per-row losses in `acts.losses`; a training pass
    /// leaves the loss gradient in the logits buffer.
    pub(super) fn head_fwd<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        batch: &Batch,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) -> f64 {
        let Dims {
            d, v, vp, s, arch, ..
        } = self.dims();
        let rows = batch.b * self.layout.part.seq_rows(s);
        let lay = &self.layout;
        let (tp, v0) = self.vocab_split();
        let nl = lay.layers.len();
        let out = &acts.res[acts.keep.res_slot(nl)];
        let head_in: &[T] = if lay.part.seq_parallel {
            red.all_gather(out, &mut acts.head_in);
            &acts.head_in
        } else {
            out
        };
        super::norm_fwd(
            arch,
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            head_in,
            &p[lay.lnf_g.clone()],
            &p[lay.lnf_b.clone()],
            d,
        );
        // logits = lnf·Wᵀ (this device's vocabulary columns of the output table)
        let vl = vp / tp;
        crate::linalg::matmul(
            &mut acts.logits,
            vl,
            crate::linalg::n(&acts.lnf, d),
            crate::linalg::t(&p[lay.out_w()], d),
            rows,
            d,
            vl,
            false,
        );
        // A training forward is followed by backward: leave the loss gradient rather than the
        // probabilities (the cross-entropy's backward fused into its forward pass).
        let grad = train.then_some(&batch.weights[..]);
        acts.head_grad = train;
        // Vocabulary padding takes no part in the softmax.
        let pad = v0.max(v)..v0 + vl;
        let pad = pad.start - v0..pad.end - v0;
        mask_columns(&mut acts.logits, vl, pad.clone(), T::neg_infinity());
        if tp == 1 {
            k::softmax_xent_fwd(&mut acts.logits, &mut acts.losses, &batch.targets, vl, grad);
        } else {
            let (mx_all, rest) = acts.vp.split_at_mut(rows * tp);
            let (mx, rest) = rest.split_at_mut(rows);
            let (sums, tl) = rest.split_at_mut(rows);
            k::xent_vocab_fwd(
                &mut acts.logits,
                &mut acts.losses,
                &batch.targets,
                grad,
                vl,
                v0,
                mx_all,
                mx,
                sums,
                tl,
                red,
            );
        }
        // Their probabilities (and gradients) are exactly 0 (the fast exp leaves e^-87).
        mask_columns(&mut acts.logits, vl, pad, T::zero());
        acts.losses
            .iter()
            .zip(&batch.weights)
            .map(|(l, w)| l * w)
            .sum()
    }

    /// The head's backward: the output table's gradient from the head and the final
    /// norm's, leaving the gradient of the layers' output (this device's rows) in
    /// [`Acts::grad`].
    pub(super) fn head_bwd<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        batch: &Batch,
        red: &mut dyn Reduce<T>,
    ) {
        let Dims { d, vp, s, arch, .. } = self.dims();
        let rows = batch.b * self.layout.part.seq_rows(s);
        let lay = &self.layout;
        let nl = lay.layers.len();
        let seq = lay.part.seq_parallel;
        let out_w = lay.out_w();
        let own = self.local_rows(batch.b);
        let (tp, v0) = self.vocab_split();
        let vl = vp / tp;
        if !acts.head_grad {
            k::xent_vocab_bwd(&mut acts.logits, &batch.targets, &batch.weights, vl, v0);
        }
        acts.head_grad = false;
        let head_in: &[T] = if seq {
            &acts.head_in
        } else {
            &acts.res[acts.keep.res_slot(nl)]
        };
        // dlnf = dlogits·W ; dW += dlogitsᵀ·lnf (W the output table)
        let wte = &p[out_w.clone()];
        let (logits, lnf) = (&acts.logits, &acts.lnf);
        let input = |dtmp: &mut [T]| head_product(dtmp, logits, wte, false, rows, vl, d).run();
        if g.is_half() {
            // One half of a split batch: single-threaded, ordered (see `grads`).
            let input_first = g.input_first();
            if input_first {
                input(&mut acts.dtmp);
            }
            head_weight_grad(&mut g.take(&out_w), logits, lnf, rows, vl, d);
            if !input_first {
                input(&mut acts.dtmp);
            }
        } else {
            let mut gw = g.take(&out_w);
            let weight = head_product(&mut gw, logits, lnf, true, rows, vl, d);
            let dx = head_product(&mut acts.dtmp, logits, wte, false, rows, vl, d);
            crate::linalg::matmul_pair(weight, dx);
        }
        // Each device saw its vocabulary columns: the norm's input gradient is summed.
        red.all_reduce(&mut acts.dtmp);
        // The head runs on all rows on every device; keep this device's rows' gradient.
        let full: &mut [T] = if seq { &mut acts.sp } else { &mut acts.dx };
        full.fill(T::zero());
        super::linear::norm_back(
            arch,
            g,
            &lay.lnf_g,
            &lay.lnf_b,
            full,
            &acts.dtmp,
            head_in,
            &p[lay.lnf_g.clone()],
            &acts.lnf_mean,
            &acts.lnf_rstd,
            d,
        );
        if seq {
            acts.dx
                .copy_from_slice(&acts.sp[own.start * d..own.end * d]);
        }
    }
}

/// The head's input gradient `dlnf = dlogits·wte` (`rows × d`, `other` = wte), or with
/// `weight` its weight gradient `dwte += dlogitsᵀ·lnf` (`vl × d`, `other` = lnf).
fn head_product<'a, 'c, T: Real>(
    c: &'c mut [T],
    dlogits: &'a [T],
    other: &'a [T],
    weight: bool,
    rows: usize,
    vl: usize,
    d: usize,
) -> crate::linalg::Product<'a, 'c, T> {
    let (a, m, k) = if weight {
        (crate::linalg::t(dlogits, vl), vl, rows)
    } else {
        (crate::linalg::n(dlogits, vl), rows, vl)
    };
    crate::linalg::Product {
        c,
        ldc: d,
        a,
        b: crate::linalg::n(other, d),
        m,
        k,
        n: d,
        accumulate: weight,
    }
}

/// The head's weight gradient `dwte += dlogitsᵀ·lnf` on one thread, in blocks of
/// [`HEAD_GRAD_ROWS`] vocabulary rows: `dlogitsᵀ` is a strided operand that the GEMM packs
/// before use, and a block's packed copy (`rows` × 500 floats) stays in the core's caches
/// where the whole (`rows` × V) does not. One thread, per half micro-batch, median of
/// interleaved calls: tiny (512 rows, V 8000) 28.2 against 29.5 ms; small (1024 rows, V
/// 16000) 240 against 262 ms (blocks of 250 and 1000 rows gave 232 and 226, 125 rows 264).
fn head_weight_grad<T: Real>(
    c: &mut [T],
    dlogits: &[T],
    lnf: &[T],
    rows: usize,
    vl: usize,
    d: usize,
) {
    use crate::linalg::{matmul, n, t};
    for v0 in (0..vl).step_by(HEAD_GRAD_ROWS) {
        let vb = HEAD_GRAD_ROWS.min(vl - v0);
        let (c, a) = (&mut c[v0 * d..], t(&dlogits[v0..], vl));
        matmul(c, d, a, n(lnf, d), vb, rows, d, true);
    }
}

/// Vocabulary rows per block of [`head_weight_grad`].
const HEAD_GRAD_ROWS: usize = 500;

/// Sets `cols` (local columns) of every `width`-wide row of `x` to `value`: the vocabulary
/// padding of a device's logits, masked to −∞ before the softmax and to 0 after it. (Megatron
/// lets the padded logits take part in the softmax, where training drives them towards −∞;
/// masking keeps the loss and every gradient those of the unpadded model, so a padded plan
/// matches the single-device run and checkpoints move between paddings.)
fn mask_columns<T: Real>(x: &mut [T], width: usize, cols: std::ops::Range<usize>, value: T) {
    if cols.is_empty() {
        return;
    }
    for row in x.chunks_mut(width) {
        row[cols.clone()].fill(value);
    }
}
