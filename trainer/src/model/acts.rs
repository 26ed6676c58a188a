//! The buffers of a forward and backward pass, allocated once per micro-batch shape: saved
//! activations per layer ([`LayerActs`]), everything else of a pass ([`Acts`]), the scratch an
//! executor can lend between micro-batches ([`Scratch`]), what rematerialisation keeps
//! ([`Keep`]) and the sizes a part's buffers take ([`Shape`]).

use pangu_strategies::Remat;

use super::layout::{Dims, Layout};
use crate::real::Real;

/// Saved activations of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerActs<T> {
    pub(super) ln1: Vec<T>,
    pub(super) ln1_mean: Vec<T>,
    pub(super) ln1_rstd: Vec<T>,
    /// The query layer's table projection `[S, dl]` (forward), then its gradient (backward).
    pub(super) qin: Vec<T>,
    pub(super) qkv: Vec<T>,
    pub(super) probs: Vec<T>,
    pub(super) probs_drop: Vec<T>,
    pub(super) att: Vec<T>,
    pub(super) mid: Vec<T>,
    pub(super) ln2: Vec<T>,
    pub(super) ln2_mean: Vec<T>,
    pub(super) ln2_rstd: Vec<T>,
    pub(super) up: Vec<T>,
    pub(super) act: Vec<T>,
}

/// Every buffer the forward and backward passes use, allocated once for a micro-batch shape.
#[derive(Debug, Clone)]
pub struct Acts<T> {
    pub(super) b: usize,
    /// What is kept and what recomputed.
    pub(super) keep: Keep,
    /// Residual stream entering layers, and leaving the last (slots by [`Keep::res_slot`]).
    pub(super) res: Vec<Vec<T>>,
    pub(super) layers: Vec<LayerActs<T>>,
    pub(super) lnf: Vec<T>,
    pub(super) lnf_mean: Vec<T>,
    pub(super) lnf_rstd: Vec<T>,
    /// Logits, then probabilities, then their gradient `[b·s·V]`.
    pub(super) logits: Vec<T>,
    /// Whether `logits` holds the loss gradient (left by a training forward) rather than
    /// probabilities.
    pub(super) head_grad: bool,
    /// Per-row losses (nats).
    pub losses: Vec<f64>,
    // Backward scratch.
    pub(super) dx: Vec<T>,
    pub(super) dtmp: Vec<T>,
    pub(super) dtmp2: Vec<T>,
    pub(super) dqkv: Vec<T>,
    pub(super) dff: Vec<T>,
    pub(super) dscratch: Vec<T>,
    /// All rows `[b·s, d]`: partial sums before their reduction, gathered gradients.
    pub(super) sp: Vec<T>,
    /// The head's input gathered to all rows (sequence parallelism).
    pub(super) head_in: Vec<T>,
    /// Attention probabilities and output recomputed under selective remat.
    pub(super) sel: Selective<T>,
    /// Row statistics of the vocab-parallel cross-entropy `[T·(tp + 3)]`.
    pub(super) vp: Vec<T>,
    /// Context parallelism's K/V buffers (empty without it).
    pub(super) kvx: KvBufs<T>,
}

/// The buffers of context parallelism's K/V exchange, each `[b·S, 2·kw]` (empty without
/// context parallelism): the exchange's buffer (the cp group's blocks side by side), the
/// whole sequence's K | V in global order, and its gradient from this device's queries.
#[derive(Debug, Clone, Default)]
pub(super) struct KvBufs<T> {
    pub(super) blocks: Vec<T>,
    pub(super) kv: Vec<T>,
    pub(super) dkv: Vec<T>,
}

impl<T> KvBufs<T> {
    fn len(&self) -> usize {
        self.blocks.len() + self.kv.len() + self.dkv.len()
    }
}

/// Working buffers of one forward or backward pass (gradients between the layers' kernels,
/// the attention core's score gradients): needed by one micro-batch at a time, so an executor
/// holding several micro-batches in flight keeps one and lends it to the pass that runs
/// ([`Acts::swap_scratch`]).
#[derive(Debug, Clone, Default)]
pub struct Scratch<T> {
    dtmp: Vec<T>,
    dtmp2: Vec<T>,
    dqkv: Vec<T>,
    dff: Vec<T>,
    dscratch: Vec<T>,
    kvx: KvBufs<T>,
}

impl<T> Scratch<T> {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        let n = self.dtmp.len()
            + self.dtmp2.len()
            + self.dqkv.len()
            + self.dff.len()
            + self.dscratch.len()
            + self.kvx.len();
        (n * std::mem::size_of::<T>()) as u64
    }
}

/// Scratch of selective rematerialisation: one layer's attention core.
#[derive(Debug, Clone, Default)]
pub(super) struct Selective<T> {
    pub(super) probs: Vec<T>,
    pub(super) probs_drop: Vec<T>,
    pub(super) att: Vec<T>,
}

/// Which activations a part keeps between forward and backward, from the strategy's
/// [`Remat`]: every layer's (`group` 0, optionally without the attention core under
/// selective remat), or the inputs of groups of `group` layers, whose internals are
/// recomputed group by group in backward (full remat is groups of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Keep {
    pub(super) group: usize,
    pub(super) selective: bool,
    pub(super) nl: usize,
}

impl Keep {
    fn of(remat: Remat, nl: usize) -> Keep {
        let (group, selective) = match remat {
            Remat::None => (0, false),
            Remat::Selective => (0, true),
            Remat::Full => (1, false),
            Remat::Every(k) => (k.max(1) as usize, false),
        };
        Keep {
            group,
            selective,
            nl,
        }
    }

    fn groups(&self) -> usize {
        self.nl.div_ceil(self.group.max(1))
    }

    /// Residual-stream buffers: kept group inputs, the output, and one group's insides.
    fn res_slots(&self) -> usize {
        if self.group == 0 {
            self.nl + 1
        } else {
            self.groups() + self.group.min(self.nl).max(1)
        }
    }

    /// The buffer holding the input of layer `li` (`li == nl`: the output).
    pub(super) fn res_slot(&self, li: usize) -> usize {
        let k = self.group;
        if k == 0 {
            li
        } else if li == self.nl {
            self.groups()
        } else if li.is_multiple_of(k) {
            li / k
        } else {
            self.groups() + li % k
        }
    }

    /// Layers whose internals are held at once.
    fn act_slots(&self) -> usize {
        if self.group == 0 {
            self.nl
        } else {
            self.group.min(self.nl)
        }
    }

    pub(super) fn act_slot(&self, li: usize) -> usize {
        if self.group == 0 {
            li
        } else {
            li % self.group
        }
    }
}

/// `(&v[i], &mut v[j])` for `i != j`.
pub(super) fn pair<T>(v: &mut [Vec<T>], i: usize, j: usize) -> (&[T], &mut [T]) {
    debug_assert_ne!(i, j);
    if i < j {
        let (a, b) = v.split_at_mut(j);
        (&a[i], &mut b[0])
    } else {
        let (a, b) = v.split_at_mut(i);
        (&b[0], &mut a[j])
    }
}

/// What a part's activation buffers hold: `layers` layers (the query layer among them when
/// `query`), and the head's buffers when `head`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    layers: usize,
    query: bool,
    head: bool,
    /// Row blocks of the residual stream (tp under sequence parallelism, else 1).
    split: usize,
    /// Tensor-parallel degree (the head's vocabulary is split `tp` ways).
    tp: usize,
    /// Context-parallel degree (each sample's `s/cp` tokens on this device).
    cp: usize,
}

impl Shape {
    fn whole(dims: &Dims) -> Shape {
        Shape {
            layers: dims.layers,
            query: dims.query,
            head: true,
            split: 1,
            tp: 1,
            cp: 1,
        }
    }

    fn of(layout: &Layout) -> Shape {
        let d = &layout.dims;
        let part = &layout.part;
        Shape {
            layers: layout.layers.len(),
            query: d.query && part.layers.contains(&(d.layers - 1)),
            head: part.head,
            split: if part.seq_parallel { part.tp } else { 1 },
            tp: part.tp,
            cp: part.cp.max(1),
        }
    }

    /// Elements of one kept layer, of the query table's projection, and of everything else;
    /// and f64 rows.
    fn elems(
        &self,
        dims: &Dims,
        b: usize,
        dropout: bool,
        keep: Keep,
    ) -> (usize, usize, usize, usize) {
        let (d, s, dl, fl, hl) = (dims.d, dims.s, dims.dl(), dims.fl, dims.hl);
        let (qw, uw) = (dims.qkv_w(), dims.up_w());
        let rows = b * s / self.cp;
        let rl = rows / self.split;
        let probs = b * hl * (s / self.cp) * s * (1 + usize::from(dropout));
        // ln1, ln2 (all rows, d); mid (own rows, d); qkv (qw); att (dl); up (uw), act (fl);
        // four norm statistics (own rows); the attention core unless selective.
        let core = if keep.selective { 0 } else { probs };
        let per_layer = rows * (2 * d + qw + dl + uw + fl) + rl * (d + 4) + core;
        let sel = if keep.selective { probs + rows * dl } else { 0 };
        // The query table's projection [S, dl] (its gradient in backward).
        let qin = if self.query { s * dl } else { 0 };
        let head = if self.head {
            rows * (d + 2)
                + rows * dims.vp / self.tp
                + if self.split > 1 { rows * d } else { 0 }
                + if self.tp > 1 { rows * (self.tp + 3) } else { 0 }
        } else {
            0
        };
        // Residual stream (own rows), head, backward scratch (dx own rows; dtmp, dtmp2; sp
        // in a group; dqkv; dff; scores).
        let dff = dff_width(dims);
        let sp = if self.tp > 1 || self.split > 1 {
            rows * d
        } else {
            0
        };
        let kv = if self.cp > 1 {
            3 * b * s * 2 * dims.kvw()
        } else {
            0
        };
        let other = keep.res_slots() * rl * d
            + head
            + rl * d
            + rows.max(qin / dl.max(1)) * d
            + rows * (d + qw + dff)
            + sp
            + rows * s
            + sel
            + kv;
        let f64_rows = if self.head { rows } else { 0 };
        (per_layer, qin, other, f64_rows)
    }
}

impl<T: Real> Acts<T> {
    /// Buffers for micro-batches of `b` samples through the whole model; `dropout` says
    /// whether to keep the dropped attention probabilities too.
    pub fn new(dims: &Dims, b: usize, dropout: bool) -> Acts<T> {
        Acts::with_remat(dims, b, dropout, false)
    }

    /// Buffers under full rematerialisation (`remat`): only each layer's input is kept; one
    /// layer's saved activations are recomputed in backward (Chen et al. 2016; PanGu-α's
    /// `recompute`), so the results equal those without it.
    pub fn with_remat(dims: &Dims, b: usize, dropout: bool, remat: bool) -> Acts<T> {
        Acts::build(dims, Shape::whole(dims), b, dropout, full_or_none(remat))
    }

    /// Buffers for one device's part of the model (`layout`) under the strategy's `remat`.
    pub fn for_part(layout: &Layout, b: usize, dropout: bool, remat: Remat) -> Acts<T> {
        Acts::build(&layout.dims, Shape::of(layout), b, dropout, remat)
    }

    fn build(dims: &Dims, shape: Shape, b: usize, dropout: bool, remat: Remat) -> Acts<T> {
        let (d, v, s) = (dims.d, dims.vp, dims.s);
        let (dl, fl, hl) = (dims.dl(), dims.fl, dims.hl);
        let (qw, uw) = (dims.qkv_w(), dims.up_w());
        let rows = b * s / shape.cp;
        let rl = rows / shape.split;
        let z = |n: usize| vec![T::zero(); n];
        let nl = shape.layers;
        let keep = Keep::of(remat, nl);
        let probs = b * hl * (s / shape.cp) * s;
        // The query layer's table gradient `[S, d]` passes through `dtmp` (more than the rows
        // when a device holds fewer than S tokens, under context parallelism).
        let dtmp_rows = if shape.query { rows.max(s) } else { rows };
        let kv = |n: usize| if shape.cp > 1 { z(n) } else { Vec::new() };
        let kv_len = b * s * 2 * dims.kvw();
        let core = |on: bool| if on { z(probs) } else { Vec::new() };
        let layers = (0..keep.act_slots())
            .map(|i| LayerActs {
                ln1: z(rows * d),
                ln1_mean: z(rl),
                ln1_rstd: z(rl),
                qin: if shape.query && nl > 0 && keep.act_slot(nl - 1) == i {
                    z(s * dl)
                } else {
                    Vec::new()
                },
                qkv: z(rows * qw),
                probs: core(!keep.selective),
                probs_drop: core(!keep.selective && dropout),
                att: z(rows * dl),
                mid: z(rl * d),
                ln2: z(rows * d),
                ln2_mean: z(rl),
                ln2_rstd: z(rl),
                up: z(rows * uw),
                act: z(rows * fl),
            })
            .collect();
        let hz = |n: usize| if shape.head { z(n) } else { Vec::new() };
        Acts {
            b,
            keep,
            res: (0..keep.res_slots()).map(|_| z(rl * d)).collect(),
            layers,
            lnf: hz(rows * d),
            lnf_mean: hz(rows),
            lnf_rstd: hz(rows),
            logits: hz(rows * v / shape.tp),
            head_grad: false,
            vp: if shape.head && shape.tp > 1 {
                z(rows * (shape.tp + 3))
            } else {
                Vec::new()
            },
            losses: if shape.head {
                vec![0.0; rows]
            } else {
                Vec::new()
            },
            dx: z(rl * d),
            dtmp: z(dtmp_rows * d),
            dtmp2: z(rows * d),
            dqkv: z(rows * qw),
            dff: z(rows * dff_width(dims)),
            dscratch: z(rows * s),
            // Staging for sums over a tensor-parallel group (a single device writes in place).
            sp: if shape.tp > 1 || shape.split > 1 {
                z(rows * d)
            } else {
                Vec::new()
            },
            head_in: if shape.head && shape.split > 1 {
                z(rows * d)
            } else {
                Vec::new()
            },
            sel: if keep.selective {
                Selective {
                    probs: z(probs),
                    probs_drop: core(dropout),
                    att: z(rows * dl),
                }
            } else {
                Selective::default()
            },
            kvx: KvBufs {
                blocks: kv(kv_len),
                kv: kv(kv_len),
                dkv: kv(kv_len),
            },
        }
    }

    /// Exchanges this micro-batch's pass scratch with `s` (O(1)): lend a shared scratch
    /// before a pass and take it back after; [`Acts::bytes`] counts what is held now.
    pub fn swap_scratch(&mut self, s: &mut Scratch<T>) {
        std::mem::swap(&mut self.dtmp, &mut s.dtmp);
        std::mem::swap(&mut self.dtmp2, &mut s.dtmp2);
        std::mem::swap(&mut self.dqkv, &mut s.dqkv);
        std::mem::swap(&mut self.dff, &mut s.dff);
        std::mem::swap(&mut self.dscratch, &mut s.dscratch);
        std::mem::swap(&mut self.kvx, &mut s.kvx);
    }

    /// Bytes [`Acts::new`] would allocate, without allocating.
    pub fn bytes_for(dims: &Dims, b: usize, dropout: bool) -> u64 {
        Acts::<T>::bytes_for_remat(dims, b, dropout, false)
    }

    /// [`Acts::bytes_for`] with or without full rematerialisation.
    pub fn bytes_for_remat(dims: &Dims, b: usize, dropout: bool, remat: bool) -> u64 {
        Acts::<T>::bytes_of(dims, Shape::whole(dims), b, dropout, full_or_none(remat))
    }

    /// Bytes [`Acts::for_part`] would allocate, without allocating.
    pub fn bytes_for_part(layout: &Layout, b: usize, dropout: bool, remat: Remat) -> u64 {
        Acts::<T>::bytes_of(&layout.dims, Shape::of(layout), b, dropout, remat)
    }

    fn bytes_of(dims: &Dims, shape: Shape, b: usize, dropout: bool, remat: Remat) -> u64 {
        let keep = Keep::of(remat, shape.layers);
        let (per_layer, qin, other, f64_rows) = shape.elems(dims, b, dropout, keep);
        ((keep.act_slots() * per_layer + qin + other) * std::mem::size_of::<T>() + f64_rows * 8)
            as u64
    }

    /// The part's input activation `[b·s, d]` (fill it before [`Model::forward_part`] of a
    /// part without the embedding).
    ///
    /// [`Model::forward_part`]: super::Model::forward_part
    pub fn input_mut(&mut self) -> &mut [T] {
        &mut self.res[0]
    }

    /// The part's output activation after [`Model::forward_part`] (of a part without the head).
    ///
    /// [`Model::forward_part`]: super::Model::forward_part
    pub fn output(&self) -> &[T] {
        &self.res[self.keep.res_slot(self.keep.nl)]
    }

    /// The gradient of the part's output (fill it before [`Model::backward_part`] of a part
    /// without the head); after backward, the gradient of its input.
    ///
    /// [`Model::backward_part`]: super::Model::backward_part
    pub fn grad_mut(&mut self) -> &mut [T] {
        &mut self.dx
    }

    /// The gradient of the part's input after [`Model::backward_part`].
    ///
    /// [`Model::backward_part`]: super::Model::backward_part
    pub fn grad(&self) -> &[T] {
        &self.dx
    }

    /// Bytes held by these buffers.
    pub fn bytes(&self) -> u64 {
        let sz = std::mem::size_of::<T>() as u64;
        let l: usize = self
            .layers
            .iter()
            .map(|a| {
                a.ln1.len()
                    + a.ln1_mean.len()
                    + a.ln1_rstd.len()
                    + a.qin.len()
                    + a.qkv.len()
                    + a.probs.len()
                    + a.probs_drop.len()
                    + a.att.len()
                    + a.mid.len()
                    + a.ln2.len()
                    + a.ln2_mean.len()
                    + a.ln2_rstd.len()
                    + a.up.len()
                    + a.act.len()
            })
            .sum();
        let r: usize = self.res.iter().map(Vec::len).sum();
        let other = self.lnf.len()
            + self.lnf_mean.len()
            + self.lnf_rstd.len()
            + self.logits.len()
            + self.dx.len()
            + self.dtmp.len()
            + self.dtmp2.len()
            + self.dqkv.len()
            + self.dff.len()
            + self.dscratch.len()
            + self.sp.len()
            + self.head_in.len()
            + self.sel.probs.len()
            + self.sel.probs_drop.len()
            + self.sel.att.len()
            + self.vp.len()
            + self.kvx.len();
        (l + r + other) as u64 * sz + self.losses.len() as u64 * 8
    }

    /// Probabilities of the last forward pass (`[b·s, V]`) when it ran with `train` false (a
    /// training forward leaves the loss gradient there, and backward uses it).
    pub fn probs(&self) -> &[T] {
        assert!(
            !self.head_grad,
            "a training forward pass leaves the loss gradient, not probabilities"
        );
        &self.logits
    }
}

/// Width of the FFN's backward scratch: the activation's gradient, and under SwiGLU the gate
/// and up projections' gradients beside it.
fn dff_width(dims: &Dims) -> usize {
    if dims.arch.swiglu {
        dims.fl + dims.up_w()
    } else {
        dims.fl
    }
}

/// The strategy's remat of a single-device flag: full or none.
fn full_or_none(remat: bool) -> Remat {
    if remat {
        Remat::Full
    } else {
        Remat::None
    }
}
