//! One transformer layer of a part: [`Model::layer_fwd`] and [`Model::layer_bwd`], each the
//! attention sub-layer and the FFN sub-layer in turn (backward in the reverse order), with the
//! group sums of tensor and sequence parallelism between their products.
#![allow(clippy::too_many_arguments)]

use std::ops::Range;

use super::acts::{Acts, KvBufs, LayerActs, Selective};
use super::batch::Batch;
use super::layout::{Dims, LayerParams};
use super::linear::{
    bias, bias_range, ffn_up, linear_back, norm_back, norm_fwd, qkv_inputs, qkv_weights,
    split_bias, QueryGrad,
};
use super::{Model, Site};
use crate::grads::Grads;
use crate::kernels::{self as k, AttnDims};
use crate::real::Real;
use crate::reduce::{gathered, summed, Reduce};

/// Layer `l` of this part as a pass over one micro-batch sees it.
#[derive(Clone, Copy)]
struct At<'a> {
    /// Global index (keys the dropout masks).
    l: usize,
    /// Index in the part (its activation buffers).
    li: usize,
    /// Its parameters' ranges.
    lp: &'a LayerParams,
    /// Whether it is the query layer.
    query: bool,
    /// Rows of the micro-batch.
    rows: usize,
    /// This device's rows (all, or its block under sequence parallelism) and their global ids.
    rl: usize,
    row_ids: &'a [u64],
    /// Sequence parallelism.
    seq: bool,
    /// Biases after a group sum are added once, by rank 0 (else per device on its own rows).
    bias_once: bool,
    /// No group to sum over: the row-split products write their outputs in place.
    alone: bool,
}

impl Model {
    /// Layer `l` (global index) of this part for a pass over `batch`.
    fn at<'a>(&'a self, l: usize, batch: &'a Batch) -> At<'a> {
        let (dims, lay) = (self.dims(), &self.layout);
        let li = l - lay.part.layers.start;
        let seq = lay.part.seq_parallel;
        let own = self.local_rows(batch.b);
        At {
            l,
            li,
            lp: &lay.layers[li],
            query: dims.query && l + 1 == dims.layers,
            rows: batch.b * lay.part.seq_rows(dims.s),
            rl: own.len(),
            row_ids: &batch.row_ids[own],
            seq,
            bias_once: lay.part.tp_rank == 0 && !seq,
            alone: lay.part.tp == 1 && !seq,
        }
    }

    /// `out = norm(x)` over this device's rows, gathered to all rows under sequence
    /// parallelism.
    fn norm_gather<T: Real>(
        &self,
        x: &[T],
        g: &[T],
        bias: &[T],
        out: &mut [T],
        mean: &mut [T],
        rstd: &mut [T],
        sp: &mut [T],
        red: &mut dyn Reduce<T>,
    ) {
        let Dims { d, arch, .. } = self.dims();
        if self.layout.part.seq_parallel {
            let loc = &mut sp[..x.len()];
            norm_fwd(arch, loc, mean, rstd, x, g, bias, d);
            red.all_gather(loc, out);
        } else {
            norm_fwd(arch, out, mean, rstd, x, g, bias, d);
        }
    }

    /// `out = Σ_group partial (+ bias)` for this device's rows: an all-reduce, or a
    /// reduce-scatter under sequence parallelism (the bias then added by every device to its
    /// own rows; without it, once, by rank 0).
    fn sum_rows<T: Real>(&self, partial: &mut [T], out: &mut [T], red: &mut dyn Reduce<T>) {
        if self.layout.part.seq_parallel {
            red.reduce_scatter(partial, out);
        } else {
            red.all_reduce(partial);
            out.copy_from_slice(partial);
        }
    }

    /// Forward pass of layer `l`: `y = layer(x)` (this device's rows), saving what backward
    /// needs in `a`; `sp` is a scratch of all rows under sequence parallelism.
    pub(super) fn layer_fwd<T: Real>(
        &self,
        p: &[T],
        l: usize,
        x: &[T],
        y: &mut [T],
        a: &mut LayerActs<T>,
        (sp, sel, kvx): (&mut [T], &mut Selective<T>, &mut KvBufs<T>),
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let at = self.at(l, batch);
        self.attn_fwd(p, &at, x, a, (sp, sel, kvx), batch, step, train, ad, red);
        self.ffn_fwd(p, &at, y, a, sp, step, train, red);
    }

    /// The attention sub-layer's forward: `mid = x + dropout(Σ_group attention(LN1(x))·Wo +
    /// bo)` into `a.mid`.
    fn attn_fwd<T: Real>(
        &self,
        p: &[T],
        at: &At<'_>,
        x: &[T],
        a: &mut LayerActs<T>,
        (sp, sel, kvx): (&mut [T], &mut Selective<T>, &mut KvBufs<T>),
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let dims = self.dims();
        let Dims { d, s, .. } = dims;
        let dl = dims.dl();
        let lay = &self.layout;
        let At {
            l,
            lp,
            query,
            rows,
            row_ids,
            seq,
            bias_once,
            alone,
            ..
        } = *at;
        self.norm_gather(
            x,
            &p[lp.ln1_g.clone()],
            &p[lp.ln1_b.clone()],
            &mut a.ln1,
            &mut a.ln1_mean,
            &mut a.ln1_rstd,
            sp,
            red,
        );
        let w = &p[lp.w_qkv.clone()];
        let bq = bias(p, &lp.b_qkv);
        let qw = dims.qkv_w();
        if query {
            // A row's query depends on its position only: project the query table once
            // (`qin` = wqe·Wq + bq, [S, dl]) and look its rows up, instead of projecting the
            // looked-up table rows one token at a time (the same values, S rows of work
            // instead of B·S).
            k::linear_fwd(
                &mut a.qin,
                dl,
                &p[lay.wqe.clone()],
                d,
                w,
                qw,
                bq.map(|b| &b[..dl]),
                s,
                d,
                dl,
            );
            k::lookup_fwd_strided(&mut a.qkv, qw, &batch.pos, &a.qin, dl);
            k::linear_fwd(
                &mut a.qkv[dl..],
                qw,
                &a.ln1,
                d,
                &w[dl..],
                qw,
                bq.map(|b| &b[dl..]),
                rows,
                d,
                qw - dl,
            );
        } else {
            k::linear_fwd(&mut a.qkv, qw, &a.ln1, d, w, qw, bq, rows, d, qw);
        }
        if let Some(theta) = dims.arch.rope {
            // Rotary embeddings turn every Q and K head by the row's position in its document.
            let heads = dims.hl + dims.kvl;
            k::rope(&mut a.qkv, qw, heads, dims.hd(), &batch.pos, theta, false);
        }
        // Under selective remat the probabilities go to a scratch recomputed in backward.
        let (probs, probs_drop) = if a.probs.is_empty() {
            (&mut sel.probs, &mut sel.probs_drop)
        } else {
            (&mut a.probs, &mut a.probs_drop)
        };
        let drop = self.drop(train, step, l, Site::AttnProbs);
        if ad.cp > 1 {
            let core = (&mut probs[..], &mut probs_drop[..]);
            let x = (&a.qkv[..], kvx);
            self.attention_cp_fwd(&mut a.att, core, x, batch, (ad, drop, true), red);
        } else {
            let (st, ids) = (&batch.start, &batch.sample_ids);
            k::attention_fwd(&mut a.att, probs, probs_drop, &a.qkv, st, ad, drop, ids);
        }
        // mid = x + dropout(Σ_group att·Wo + bo); alone (no group), straight into mid.
        k::linear_fwd(
            if alone {
                &mut a.mid
            } else {
                &mut sp[..rows * d]
            },
            d,
            &a.att,
            dl,
            &p[lp.w_o.clone()],
            d,
            bias(p, &lp.b_o).filter(|_| bias_once),
            rows,
            dl,
            d,
        );
        if !alone {
            self.sum_rows(&mut sp[..rows * d], &mut a.mid, red);
        }
        if let Some(b) = bias(p, &lp.b_o).filter(|_| seq) {
            k::add_rows(&mut a.mid, b);
        }
        self.drop(train, step, l, Site::AttnOut)
            .apply(&mut a.mid, d, row_ids);
        k::add_into(&mut a.mid, x);
    }

    /// The FFN sub-layer's forward: `y = mid + dropout(Σ_group FFN(LN2(mid)))`.
    fn ffn_fwd<T: Real>(
        &self,
        p: &[T],
        at: &At<'_>,
        y: &mut [T],
        a: &mut LayerActs<T>,
        sp: &mut [T],
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) {
        let Dims { d, fl, arch, .. } = self.dims();
        let At {
            l,
            lp,
            rows,
            row_ids,
            seq,
            bias_once,
            alone,
            ..
        } = *at;
        self.norm_gather(
            &a.mid,
            &p[lp.ln2_g.clone()],
            &p[lp.ln2_b.clone()],
            &mut a.ln2,
            &mut a.ln2_mean,
            &mut a.ln2_rstd,
            sp,
            red,
        );
        ffn_up(arch, p, lp, &a.ln2, &mut a.up, &mut a.act, rows, d, fl);
        k::linear_fwd(
            if alone { &mut *y } else { &mut sp[..rows * d] },
            d,
            &a.act,
            fl,
            &p[lp.w_down.clone()],
            d,
            bias(p, &lp.b_down).filter(|_| bias_once),
            rows,
            fl,
            d,
        );
        if !alone {
            self.sum_rows(&mut sp[..rows * d], y, red);
        }
        if let Some(b) = bias(p, &lp.b_down).filter(|_| seq) {
            k::add_rows(y, b);
        }
        self.drop(train, step, l, Site::FfnOut).apply(y, d, row_ids);
        k::add_into(y, &a.mid);
    }

    /// Backward pass of this part's layer `li` (local index) after its forward: the gradient
    /// of its output in [`Acts::grad_mut`] becomes that of its input, and the layer's
    /// parameter gradients are added to `g`. Under remat the caller has recomputed the layer's
    /// activations first.
    pub(super) fn layer_bwd<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        li: usize,
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let at = self.at(self.layout.part.layers.start + li, batch);
        self.ffn_bwd(p, g, acts, &at, step, train, red);
        self.attn_bwd(p, g, acts, &at, batch, step, train, ad, red);
        self.qkv_bwd(p, g, acts, &at, batch, red);
    }

    /// The gradient entering a residual branch's last product: the residual gradient `dx`
    /// through the branch's dropout at `site` (a masked copy in `tmp` when dropout is on), the
    /// gradient of `bias` (added after the group sum) taken from it, and the result gathered to
    /// all rows (in `sp`) under sequence parallelism.
    fn branch_grad<'a, T: Real>(
        &self,
        at: &At<'_>,
        site: Site,
        bias: &Range<usize>,
        g: &mut Grads<'_, '_, T>,
        dx: &'a [T],
        tmp: &'a mut [T],
        sp: &'a mut [T],
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) -> &'a [T] {
        let d = self.dims().d;
        let dy = self
            .drop(train, step, at.l, site)
            .masked(dx, tmp, d, at.row_ids);
        if !bias.is_empty() {
            k::bias_bwd(&mut g.take(bias), dy);
        }
        gathered(at.seq, dy, sp, red)
    }

    /// The FFN sub-layer's backward: from the gradient of `y` in `acts.dx` to that of `mid`
    /// (the residual plus LN2's input gradient), in `acts.dx`.
    fn ffn_bwd<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        at: &At<'_>,
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) {
        let dims = self.dims();
        let Dims { d, fl, arch, .. } = dims;
        let uw = dims.up_w();
        let At {
            li,
            lp,
            rows,
            rl,
            seq,
            ..
        } = *at;
        let a = &mut acts.layers[acts.keep.act_slot(li)];
        // y = mid + drop(Σ act·Wd + bd): the FFN branch's gradient is drop-mask ⊙ dx,
        // gathered to all rows under sequence parallelism.
        let (dx, tmp, sp) = (&acts.dx, &mut acts.dtmp[..rl * d], &mut acts.sp);
        let dy = self.branch_grad(
            at,
            Site::FfnOut,
            &lp.b_down,
            g,
            dx,
            tmp,
            sp,
            step,
            train,
            red,
        );
        // `dff`: the activation's gradient `[rows, fl]`, then (SwiGLU) the gate and up's
        // `[rows, 2fl]`.
        linear_back(
            g,
            Some((&mut acts.dff[..rows * fl], fl, false)),
            &lp.w_down,
            d,
            None,
            dy,
            d,
            &a.act,
            fl,
            &p[lp.w_down.clone()],
            rows,
            fl,
            d,
        );
        let dup: &[T] = if arch.swiglu {
            let (dact, dgu) = acts.dff.split_at_mut(rows * fl);
            k::swiglu_bwd(dgu, &a.up, dact, fl);
            dgu
        } else {
            k::gelu_bwd_inplace(&mut acts.dff, &a.up, &a.act, fl);
            &acts.dff
        };
        linear_back(
            g,
            Some((&mut acts.dtmp2, d, false)),
            &lp.w_up,
            uw,
            bias_range(&lp.b_up),
            dup,
            uw,
            &a.ln2,
            d,
            &p[lp.w_up.clone()],
            rows,
            d,
            uw,
        );
        // The column-split FFN-up saw the whole input: its input gradient is summed
        // (over the group; scattered to this device's rows under sequence parallelism).
        let dln = summed(seq, &mut acts.dtmp2, &mut acts.dtmp[..rl * d], red);
        norm_back(
            arch,
            g,
            &lp.ln2_g,
            &lp.ln2_b,
            &mut acts.dx,
            dln,
            &a.mid,
            &p[lp.ln2_g.clone()],
            &a.ln2_mean,
            &a.ln2_rstd,
            d,
        );
    }

    /// The attention sub-layer's backward down to the attention core: from the gradient of
    /// `mid` in `acts.dx` through the output projection and the attention to the gradient of
    /// Q, K and V in `acts.dqkv` (recomputing the core under selective remat).
    fn attn_bwd<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        at: &At<'_>,
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let dims = self.dims();
        let d = dims.d;
        let dl = dims.dl();
        let At {
            l,
            li,
            lp,
            rows,
            rl,
            ..
        } = *at;
        let a = &mut acts.layers[acts.keep.act_slot(li)];
        // mid = x + drop(Σ att·Wo + bo)
        let (dx, tmp, sp) = (&acts.dx, &mut acts.dtmp[..rl * d], &mut acts.sp);
        let dy = self.branch_grad(at, Site::AttnOut, &lp.b_o, g, dx, tmp, sp, step, train, red);
        linear_back(
            g,
            Some((&mut acts.dtmp2[..rows * dl], dl, false)),
            &lp.w_o,
            d,
            None,
            dy,
            d,
            &a.att,
            dl,
            &p[lp.w_o.clone()],
            rows,
            dl,
            d,
        );
        let drop = self.drop(train, step, l, Site::AttnProbs);
        let cp = ad.cp > 1;
        if cp {
            // The whole sequence's K/V again (the plan's backward K/V program).
            self.regather_kv(&a.qkv, &mut acts.kvx, &ad, red);
        }
        let (probs, probs_drop) = if a.probs.is_empty() {
            // Selective remat: recompute the attention core of this layer.
            let sel = &mut acts.sel;
            let core = (&mut sel.probs[..], &mut sel.probs_drop[..]);
            if cp {
                let x = (&a.qkv[..], &mut acts.kvx);
                self.attention_cp_fwd(&mut sel.att, core, x, batch, (ad, drop, false), red);
            } else {
                let (st, ids) = (&batch.start, &batch.sample_ids);
                k::attention_fwd(&mut sel.att, core.0, core.1, &a.qkv, st, ad, drop, ids);
            }
            (&sel.probs, &sel.probs_drop)
        } else {
            (&a.probs, &a.probs_drop)
        };
        let dout = &acts.dtmp2[..rows * dl];
        if cp {
            let (dq, sc, x) = (&mut acts.dqkv, &mut acts.dscratch, &mut acts.kvx);
            let core = (&probs[..], &probs_drop[..]);
            self.attention_cp_bwd(dq, sc, dout, &a.qkv, core, x, batch, (ad, drop), red);
        } else {
            let (st, ids) = (&batch.start, &batch.sample_ids);
            let (dq, sc) = (&mut acts.dqkv, &mut acts.dscratch);
            k::attention_bwd(dq, sc, dout, &a.qkv, probs, probs_drop, st, ad, drop, ids);
        }
        if let Some(theta) = dims.arch.rope {
            // Back through the rotation: the gradients of Q and K turn the other way.
            let heads = dims.hl + dims.kvl;
            let (qw, hd) = (dims.qkv_w(), dims.hd());
            k::rope(&mut acts.dqkv, qw, heads, hd, &batch.pos, theta, true);
        }
    }

    /// The QKV projection's backward and LN1's: from the gradient of Q, K and V in
    /// `acts.dqkv` to the weights' and the query table's gradients, and the layer input's
    /// gradient (the residual plus LN1's input gradient) in `acts.dx`.
    fn qkv_bwd<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        at: &At<'_>,
        batch: &Batch,
        red: &mut dyn Reduce<T>,
    ) {
        let dims = self.dims();
        let Dims { d, s, arch, .. } = dims;
        let (dl, qw) = (dims.dl(), dims.qkv_w());
        let lay = &self.layout;
        let At {
            li,
            lp,
            query,
            rows,
            rl,
            seq,
            ..
        } = *at;
        let keep = acts.keep;
        let x = &acts.res[keep.res_slot(li)];
        let a = &mut acts.layers[keep.act_slot(li)];
        let w = &p[lp.w_qkv.clone()];
        let wqe = &p[lay.wqe.clone()];
        if query {
            // The query table projection's gradient: dT[pos] += dQ, row by row ([S, dl]
            // in `qin`, which held the projection itself in forward).
            a.qin.fill(T::zero());
            k::lookup_bwd_strided(&mut a.qin, &acts.dqkv, qw, &batch.pos, dl);
        }
        let qt = QueryGrad { dt: &a.qin, wqe, s };
        if g.is_half() {
            // One half of a split batch: input gradients before or after the turn.
            let input_first = g.input_first();
            let mut inputs = || {
                let (dq, dkv) = (&mut acts.dtmp, &mut acts.dtmp2);
                qkv_inputs(
                    query.then_some(qt),
                    dq,
                    dkv,
                    &acts.dqkv,
                    w,
                    d,
                    (dl, qw),
                    rows,
                );
            };
            if input_first {
                inputs();
            }
            {
                let (mut gw, mut gb) = g.take_maybe2(&lp.w_qkv, bias_range(&lp.b_qkv));
                let (gw, gb): (&mut [T], _) = (&mut gw, gb.as_deref_mut());
                let (ln1, qt) = (&a.ln1, query.then_some(qt));
                qkv_weights(qt, gw, gb, &acts.dqkv, ln1, d, (dl, qw), rows);
            }
            if !input_first {
                inputs();
            }
        } else {
            let (mut gw, mut gb) = g.take_maybe2(&lp.w_qkv, bias_range(&lp.b_qkv));
            let (gw, gb): (&mut [T], _) = (&mut gw, gb.as_deref_mut());
            if query {
                let (gbq, gbkv) = split_bias(gb, dl);
                // Q from the query table (through its projection's gradient dT, S rows),
                // K and V from LN1(x).
                k::linear_bwd(
                    Some((&mut acts.dtmp[..s * d], d, false)),
                    gw,
                    qw,
                    gbq,
                    &a.qin,
                    dl,
                    wqe,
                    d,
                    w,
                    s,
                    d,
                    dl,
                );
                k::linear_bwd(
                    Some((&mut acts.dtmp2, d, false)),
                    &mut gw[dl..],
                    qw,
                    gbkv,
                    &acts.dqkv[dl..],
                    qw,
                    &a.ln1,
                    d,
                    &w[dl..],
                    rows,
                    d,
                    qw - dl,
                );
            } else {
                let dx = Some((&mut acts.dtmp2[..], d, false));
                let (dy, x) = (&acts.dqkv, &a.ln1);
                k::linear_bwd(dx, gw, qw, gb, dy, qw, x, d, w, rows, d, qw);
            }
        }
        if query {
            // The query table's gradient [S, d]: each device projected the whole table
            // through its own heads' columns, so the group sums the parts.
            let dq = &mut acts.dtmp[..s * d];
            red.all_reduce(dq);
            k::add_into(&mut g.take(&lay.wqe), dq);
        }
        let dln = summed(seq, &mut acts.dtmp2, &mut acts.dtmp[..rl * d], red);
        norm_back(
            arch,
            g,
            &lp.ln1_g,
            &lp.ln1_b,
            &mut acts.dx,
            dln,
            x,
            &p[lp.ln1_g.clone()],
            &a.ln1_mean,
            &a.ln1_rstd,
            d,
        );
    }
}
