//! The PanGu-α model on one device: parameters in one flat buffer with a named layout, the
//! forward pass and the explicit backward pass (shared/reference/pangu-alpha.md §1).
//!
//! Block order (the pipeline path of [R], which the spine's op graph also uses): word +
//! position embedding → dropout → `L-1` pre-LN transformer blocks → the query layer (query from
//! a separate learned position table, keys and values from LN1 of the hidden state) → final
//! LayerNorm → logits against the tied word embedding → masked cross-entropy.
//!
//! Weights of linear layers are stored `[in, out]` so that `y = x·W + b`; Q, K and V share one
//! `[d, 3d]` matrix (their columns side by side), which is the same parameters as [R]'s three
//! dense layers and lets ordinary blocks compute them in one matrix multiply.
//!
//! The model is one implementation for every part of it a device may hold: this file holds
//! [`Model`] and the orchestration of its passes; the pieces live beside it: `layout` (the
//! flat parameter buffer), `batch` (a micro-batch), `acts` (the passes' buffers), `embedding`,
//! `layer` and `head` (the passes of each block), `linear` (the products they share). The
//! group sums come from [`crate::reduce`].
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

mod acts;
mod batch;
mod cp;
mod embedding;
mod head;
mod layer;
mod layout;
mod linear;

use std::ops::Range;

use pangu_model::ModelConfig;
use pangu_strategies::plan::ChunkPart;

pub use crate::reduce::{Alone, KvPhase, Reduce};
pub use acts::{Acts, LayerActs, Scratch};
pub use batch::{special, Batch};
pub use layout::{Arch, Dims, LayerParams, Layout, Part, Split, TensorInfo};
pub(crate) use linear::{bias, ffn_fwd, norm_fwd, FfnBufs};

use crate::grads::{AbandonOnPanic, Grads, Slots};
use crate::kernels::{AttnDims, Dropout};
use crate::real::Real;
use crate::rng;
use crate::TrainError;
use acts::pair;

/// Dropout sites, for mask streams.
#[derive(Debug, Clone, Copy)]
enum Site {
    Embedding = 0,
    AttnProbs = 1,
    AttnOut = 2,
    FfnOut = 3,
}

/// The model: its layout and dropout rate (parameters live outside, so optimizers, shards and
/// checkpoints handle plain slices).
#[derive(Debug, Clone)]
pub struct Model {
    /// Parameter layout.
    pub layout: Layout,
    /// Dropout probability while training.
    pub dropout: f64,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl Model {
    /// A model of `cfg` with its dropout rate.
    pub fn new(cfg: &ModelConfig, seed: u64) -> Result<Model, TrainError> {
        Ok(Model {
            layout: Layout::new(cfg)?,
            dropout: cfg.dropout,
            seed,
        })
    }

    /// Shapes.
    pub fn dims(&self) -> Dims {
        self.layout.dims
    }

    fn drop(&self, train: bool, step: u64, layer: usize, site: Site) -> Dropout {
        if !train || self.dropout <= 0.0 {
            return Dropout::OFF;
        }
        Dropout {
            p: self.dropout,
            seed: self.seed,
            stream: rng::stream(&[step, layer as u64, site as u64]),
        }
    }

    /// Rows of a micro-batch of `b` samples this device holds in the residual stream: all of
    /// them (its `s/cp` tokens of each sample under context parallelism), or its contiguous
    /// `1/tp` block of those under sequence parallelism.
    pub fn local_rows(&self, b: usize) -> Range<usize> {
        let part = &self.layout.part;
        let rows = b * part.seq_rows(self.dims().s);
        if part.seq_parallel && part.tp > 1 {
            let rl = rows / part.tp;
            part.tp_rank * rl..(part.tp_rank + 1) * rl
        } else {
            0..rows
        }
    }

    /// Forward pass of `batch` through the whole model; returns Σ weight·loss over rows (the
    /// step's loss contribution) and leaves per-row losses in `acts.losses`. `step` keys the
    /// dropout masks.
    pub fn forward<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
    ) -> f64 {
        self.forward_part(p, acts, batch, step, train, &mut Alone)
    }

    /// Backward pass after [`Model::forward`] of the same batch: accumulates into `g`.
    pub fn backward<T: Real>(
        &self,
        p: &[T],
        g: &mut [T],
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
    ) {
        self.backward_part(
            p,
            &mut Grads::whole(g),
            acts,
            batch,
            step,
            train,
            &mut Alone,
        );
    }

    /// Forward and backward of one micro-batch given in its parts ([`parts_of`]: the whole, or
    /// two halves for [`Model::step_halves`]), each with its activations in `acts`;
    /// accumulates into `g` and returns the loss.
    pub fn step_parts<T: Real>(
        &self,
        p: &[T],
        g: &mut [T],
        acts: &mut [Acts<T>],
        parts: &[Batch],
        step: u64,
        train: bool,
    ) -> f64 {
        match (
            <&[Batch; 2]>::try_from(parts),
            <&mut [Acts<T>; 2]>::try_from(&mut *acts),
        ) {
            (Ok(halves), Ok(acts)) => self.step_halves(p, g, acts, halves, step, train),
            _ => {
                assert!(
                    parts.len() == 1 && acts.len() == 1,
                    "a micro-batch runs whole or in two halves, each with its buffers"
                );
                let loss = self.forward(p, &mut acts[0], &parts[0], step, train);
                self.backward(p, g, &mut acts[0], &parts[0], step, train);
                loss
            }
        }
    }

    /// Forward and backward of one micro-batch given as two halves (`halves`, each with its
    /// own activations `acts`), accumulating into `g`; returns the halves' summed loss. With
    /// two or more threads the halves run at the same time, each on its own thread with
    /// single-threaded kernels, and add their gradients into `g` tensor by tensor, half 0
    /// first ([`crate::grads`]); on one thread they run one after the other in the same order,
    /// so the result is the same bit for bit. The embedding's gradients follow, half 0's then
    /// half 1's.
    pub fn step_halves<T: Real>(
        &self,
        p: &[T],
        g: &mut [T],
        acts: &mut [Acts<T>; 2],
        halves: &[Batch; 2],
        step: u64,
        train: bool,
    ) -> f64 {
        let threads = crate::linalg::threads();
        let [a0, a1] = acts;
        let (l0, l1) = {
            let slots = Slots::new(&mut *g, self.layout.tensors.iter().map(|t| t.range()));
            let half = |who: usize, acts: &mut Acts<T>, n: usize| {
                crate::linalg::with_threads(n, || {
                    let _release = AbandonOnPanic(&slots);
                    let batch = &halves[who];
                    let loss = self.forward_part(p, acts, batch, step, train, &mut Alone);
                    let mut gh = Grads::shared(&slots, who);
                    self.backward_part(p, &mut gh, acts, batch, step, train, &mut Alone);
                    loss
                })
            };
            if threads >= 2 {
                std::thread::scope(|sc| {
                    let second = sc.spawn(|| half(1, a1, threads - threads / 2));
                    let l0 = half(0, a0, threads / 2);
                    let l1 = second
                        .join()
                        .unwrap_or_else(|e| std::panic::resume_unwind(e));
                    (l0, l1)
                })
            } else {
                (half(0, a0, 1), half(1, a1, 1))
            }
        };
        if self.layout.part.embedding {
            let mut gh = Grads::whole(g);
            self.embedding_bwd(&mut gh, a0, &halves[0], step, train, &mut Alone);
            self.embedding_bwd(&mut gh, a1, &halves[1], step, train, &mut Alone);
        }
        l0 + l1
    }

    /// The tensor-parallel degree and this device's first row of the vocab-parallel table.
    fn vocab_split(&self) -> (usize, usize) {
        let part = &self.layout.part;
        (part.tp, part.tp_rank * self.dims().vp / part.tp)
    }

    fn attn_dims(&self, b: usize) -> AttnDims {
        let dims = self.dims();
        AttnDims {
            b,
            s: dims.s,
            h: dims.hl,
            kv: dims.kvl,
            hd: dims.hd(),
            h0: self.layout.part.tp_rank * dims.hl,
            h_all: dims.h,
            cp: self.layout.part.cp,
            cp_rank: self.layout.part.cp_rank,
        }
    }

    /// Forward passes of this part's layers `range` (local indices), each reading its input
    /// from and writing its output to the residual buffers of [`Keep::res_slot`].
    ///
    /// [`Keep::res_slot`]: acts::Keep::res_slot
    fn layers_fwd<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        range: Range<usize>,
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let first = self.layout.part.layers.start;
        let keep = acts.keep;
        for li in range {
            let (x, y) = pair(&mut acts.res, keep.res_slot(li), keep.res_slot(li + 1));
            self.layer_fwd(
                p,
                first + li,
                x,
                y,
                &mut acts.layers[keep.act_slot(li)],
                (&mut acts.sp, &mut acts.sel, &mut acts.kvx),
                batch,
                step,
                train,
                ad,
                red,
            );
        }
    }

    /// Forward pass of this device's part of the model ([`Layout::part`]). Without the
    /// embedding, the input activation must be in [`Acts::input_mut`]; without the head, the
    /// output is left in [`Acts::output`] and 0 is returned. `red` sums over the
    /// tensor-parallel group. Under sequence parallelism the residual stream holds this
    /// device's rows only ([`Model::local_rows`]).
    pub fn forward_part<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) -> f64 {
        assert_eq!(
            acts.b, batch.b,
            "activation buffers were sized for another batch"
        );
        let lay = &self.layout;
        if lay.part.embedding {
            self.embedding_fwd(p, acts, batch, step, train, red);
        }
        let ad = self.attn_dims(batch.b);
        let nl = lay.layers.len();
        self.layers_fwd(p, acts, 0..nl, batch, step, train, ad, red);
        if !lay.part.head {
            return 0.0;
        }
        self.head_fwd(p, acts, batch, train, red)
    }

    /// Backward pass of this device's part after [`Model::forward_part`] of the same batch:
    /// accumulates into `g`. Without the head, the gradient of the part's output must be in
    /// [`Acts::grad_mut`]; without the embedding, the gradient of its input is left in
    /// [`Acts::grad`]. Under sequence parallelism the LayerNorm and bias gradients are this
    /// device's rows' share (the executor sums them over the group).
    pub fn backward_part<T: Real>(
        &self,
        p: &[T],
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) {
        let lay = &self.layout;
        let nl = lay.layers.len();
        // The word table tied across two chunks is a part of its own (the plan's buckets).
        let shared = lay.shares_table();
        let done = |red: &mut dyn Reduce<T>, g: &mut Grads<'_, '_, T>, part: ChunkPart| {
            if let Some(gs) = g.whole_mut() {
                red.part_done(part, gs);
            }
        };
        if lay.part.head {
            self.head_bwd(p, g, acts, batch, red);
            if shared {
                done(red, g, ChunkPart::SharedTable);
            }
            done(red, g, ChunkPart::Head);
        }
        let ad = self.attn_dims(batch.b);
        for li in (0..nl).rev() {
            let keep = acts.keep;
            if keep.group > 0 && (li + 1 == nl || (li + 1) % keep.group == 0) {
                // The last layer of a group: recompute the group's forward from its kept
                // input (same dropout masks, so the same values; the group's output is
                // rewritten with identical numbers).
                let g0 = li - li % keep.group;
                self.layers_fwd(p, acts, g0..li + 1, batch, step, train, ad, red);
            }
            self.layer_bwd(p, g, acts, li, batch, step, train, ad, red);
            done(red, g, ChunkPart::Layer(li));
        }
        if lay.part.embedding && !g.is_half() {
            self.embedding_bwd(g, acts, batch, step, train, red);
            done(red, g, ChunkPart::Embedding);
            if shared {
                done(red, g, ChunkPart::SharedTable);
            }
        }
    }
}

/// How many parts a micro-batch of `micro` samples runs in ([`Model::step_parts`]): two
/// halves when it is even (on two threads each half runs on its own), else one. The halves'
/// buffers together are those of the whole micro-batch.
pub fn parts_of(micro: usize) -> usize {
    if micro >= 2 && micro.is_multiple_of(2) {
        2
    } else {
        1
    }
}
