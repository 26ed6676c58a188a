//! One micro-batch as the model reads it ([`Batch`]: inputs, targets, positions and document
//! starts with the EOD reset, loss weights, the ids that key dropout masks) and the token ids
//! with a fixed meaning ([`special`]).

/// Token ids with a fixed meaning (PanGu-α's released vocabulary, pangu-alpha.md §1.8).
pub mod special {
    /// Unknown piece.
    pub const UNK: u32 = 0;
    /// Padding; inputs equal to it are masked out of the loss.
    pub const PAD: u32 = 6;
    /// End of document.
    pub const EOD: u32 = 8;
    /// End of text (generation stops on it).
    pub const EOT: u32 = 9;
}

/// One micro-batch: `b` packed samples of `s` inputs each.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Samples.
    pub b: usize,
    /// Sequence length (of the whole sample, also in a context-parallel share).
    pub s: usize,
    /// Input ids `[b·s]`.
    pub tokens: Vec<u32>,
    /// Target ids (inputs shifted by one) `[b·s]`.
    pub targets: Vec<u32>,
    /// Position ids, restarting after each EOD `[b·s]`.
    pub pos: Vec<u32>,
    /// Where each token's document starts inside its sample `[b·s]`.
    pub start: Vec<u32>,
    /// Loss weight per row: 0 where the input is padding, else 1/(non-pad rows of the step).
    pub weights: Vec<f64>,
    /// Global index of each sample (dropout masks are keyed on it).
    pub sample_ids: Vec<u64>,
    /// Global row index of each row (sample id · s + position in the sample).
    pub row_ids: Vec<u64>,
}

impl Batch {
    /// Builds a batch from samples of `s + 1` tokens (inputs and shifted targets), with EOD
    /// reset of positions and attention (the EOD token ends its own document, as in [R]
    /// `get_input_data`). Loss weights are 1 per non-pad row until [`Batch::normalise`].
    pub fn from_samples(samples: &[&[u32]], ids: &[u64], s: usize) -> Batch {
        let b = samples.len();
        let mut out = Batch {
            b,
            s,
            ..Batch::default()
        };
        for (sample, &id) in samples.iter().zip(ids) {
            assert_eq!(sample.len(), s + 1, "a sample holds s + 1 tokens");
            let mut doc_start = 0u32;
            for i in 0..s {
                let tok = sample[i];
                out.tokens.push(tok);
                out.targets.push(sample[i + 1]);
                out.pos.push(i as u32 - doc_start);
                out.start.push(doc_start);
                out.weights
                    .push(if tok == special::PAD { 0.0 } else { 1.0 });
                out.row_ids.push(id * s as u64 + i as u64);
                if tok == special::EOD {
                    doc_start = i as u32 + 1;
                }
            }
            out.sample_ids.push(id);
        }
        out
    }

    /// The rows of this batch a context-parallel rank holds: of every sample, the tokens of its
    /// two chunks ([`pangu_strategies::plan::cp_token`]) in that order, with their global
    /// positions, document starts, targets, weights and row ids (so position embeddings,
    /// rotary angles, the causal mask and dropout masks are those of the whole sequence).
    /// With `cp` 1 it is the batch itself.
    pub fn cp_share(&self, cp: usize, rank: usize) -> Batch {
        if cp <= 1 {
            return self.clone();
        }
        let sl = self.s / cp;
        let mut out = Batch {
            b: self.b,
            s: self.s,
            sample_ids: self.sample_ids.clone(),
            ..Batch::default()
        };
        for bi in 0..self.b {
            for j in 0..sl {
                let g = pangu_strategies::plan::cp_token(
                    self.s as u32,
                    cp as u32,
                    rank as u32,
                    j as u32,
                );
                let i = bi * self.s + g as usize;
                out.tokens.push(self.tokens[i]);
                out.targets.push(self.targets[i]);
                out.pos.push(self.pos[i]);
                out.start.push(self.start[i]);
                out.weights.push(self.weights[i]);
                out.row_ids.push(self.row_ids[i]);
            }
        }
        out
    }

    /// Rows that count in the loss.
    pub fn counted(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }

    /// Scales the weights so that the loss is the mean over `total` counted rows (of the whole
    /// step, across micro-batches and devices).
    pub fn normalise(&mut self, total: usize) {
        let w = 1.0 / total.max(1) as f64;
        for x in &mut self.weights {
            if *x > 0.0 {
                *x = w;
            }
        }
    }
}
