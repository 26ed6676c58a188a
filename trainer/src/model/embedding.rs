//! The embedding of the first part: word and position lookups with dropout, forward
//! ([`Model::embedding_fwd`]) and backward ([`Model::embedding_bwd`]), the word table
//! vocab-parallel under tensor parallelism.

use super::acts::Acts;
use super::batch::Batch;
use super::{Model, Site};
use crate::grads::Grads;
use crate::kernels as k;
use crate::real::Real;
use crate::reduce::{gathered, summed, Reduce};

impl Model {
    /// The embedding's forward into the residual stream's first buffer (this device's rows):
    /// word and position lookups, then dropout.
    pub(super) fn embedding_fwd<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) {
        let d = self.dims().d;
        let lay = &self.layout;
        let own = self.local_rows(batch.b);
        let (tp, v0) = self.vocab_split();
        if tp == 1 && !lay.wpe.is_empty() {
            k::embed_fwd(
                &mut acts.res[0],
                &batch.tokens[own.clone()],
                &batch.pos[own.clone()],
                &p[lay.wte.clone()],
                &p[lay.wpe.clone()],
                d,
            );
        } else if tp == 1 {
            // No position table (rotary embeddings turn Q and K in each layer instead).
            let wte = &p[lay.wte.clone()];
            k::embed_vocab_part(&mut acts.res[0], &batch.tokens[own.clone()], wte, 0, d);
        } else {
            // Vocab-parallel lookup of all rows, summed (scattered to this device's rows
            // under sequence parallelism), then the positions.
            k::embed_vocab_part(&mut acts.sp, &batch.tokens, &p[lay.wte.clone()], v0, d);
            let seq = lay.part.seq_parallel;
            let own_rows = summed(seq, &mut acts.sp, &mut acts.dtmp[..own.len() * d], red);
            acts.res[0].copy_from_slice(own_rows);
            if !lay.wpe.is_empty() {
                let (pos, wpe) = (&batch.pos[own.clone()], &p[lay.wpe.clone()]);
                k::add_lookup(&mut acts.res[0], pos, wpe, d);
            }
        }
        self.drop(train, step, 0, Site::Embedding)
            .apply(&mut acts.res[0], d, &batch.row_ids[own]);
    }

    /// The embedding's backward: the word and position tables' gradients from the gradient
    /// of the embedding's output ([`Acts::grad`]). [`Model::backward_part`] runs it itself,
    /// except on a half of a split batch, whose embedding gradients are added after both
    /// halves ([`Model::step_halves`]: the word table is also the head, so each half adds to it
    /// twice when tied, and half 1's head must not wait for half 0's embedding).
    pub fn embedding_bwd<T: Real>(
        &self,
        g: &mut Grads<'_, '_, T>,
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        red: &mut dyn Reduce<T>,
    ) {
        let d = self.dims().d;
        let lay = &self.layout;
        let own = self.local_rows(batch.b);
        let (_, v0) = self.vocab_split();
        self.drop(train, step, 0, Site::Embedding)
            .apply(&mut acts.dx, d, &batch.row_ids[own]);
        // The embedding tables' gradients from all rows on every device (replicated).
        let dx = gathered(lay.part.seq_parallel, &acts.dx, &mut acts.sp, red);
        k::lookup_bwd_part(&mut g.take(&lay.wte), dx, &batch.tokens, v0, d);
        if !lay.wpe.is_empty() {
            k::lookup_bwd(&mut g.take(&lay.wpe), dx, &batch.pos, d);
        }
    }
}
