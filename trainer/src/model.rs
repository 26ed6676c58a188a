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
#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]

use std::ops::Range;

use pangu_model::{FfnKind, ModelConfig, NormKind, PositionKind};
use pangu_strategies::Remat;
use serde::Serialize;

use crate::grads::{AbandonOnPanic, Grads, Slots};
use crate::kernels::{self as k, AttnDims, Dropout};
use crate::real::Real;
use crate::reduce::{gathered, summed};
use crate::rng;
use crate::TrainError;

pub use crate::reduce::{Alone, Reduce};

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

/// One named tensor inside the flat parameter buffer.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// Name, e.g. `layers.0.attn.qkv.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// First element in the flat buffer.
    pub offset: usize,
    /// Whether AdamW decays it (weights of matrices and embeddings; not LayerNorm or biases).
    pub decay: bool,
    /// Standard deviation of its initial normal values (0: constant `init_value`).
    #[serde(skip)]
    pub init_std: f64,
    /// Constant initial value when `init_std` is 0.
    #[serde(skip)]
    pub init_value: f64,
    /// How this device's tensor is cut from the whole model's.
    pub split: Split,
    /// Index of the whole tensor in the whole model's layout (keys its initial values).
    #[serde(skip)]
    pub global: usize,
}

/// How a tensor of a tensor-parallel device relates to the whole model's tensor (Megatron's
/// and PanGu-α's op-level split: Q, K, V and FFN-up by columns, attention output and FFN-down
/// by rows; everything else replicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The whole tensor (replicated across the tensor-parallel group).
    Whole,
    /// The last dimension is `blocks` equal blocks (Q | K | V); each device holds its
    /// `1/tp` of every block.
    Cols {
        /// Blocks side by side.
        blocks: usize,
    },
    /// Each device holds `1/tp` of the first dimension.
    Rows,
}

/// The share of the model one device holds: a range of layers (a pipeline model chunk, with
/// the embedding when it is the first and the final norm and tied head when it is the last)
/// and a tensor-parallel slice of each layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// Tensor-parallel degree.
    pub tp: usize,
    /// This device's index in its tensor-parallel group.
    pub tp_rank: usize,
    /// Global indices of the layers held (the query layer is the last of the model's).
    pub layers: Range<usize>,
    /// Holds the embeddings (the first virtual stage).
    pub embedding: bool,
    /// Holds the final LayerNorm, the head and the loss (the last virtual stage).
    pub head: bool,
    /// Sequence parallelism (with `tp > 1`): the residual stream, LayerNorms and dropout
    /// hold this device's `1/tp` block of the rows; all-gathers and reduce-scatters take the
    /// place of the all-reduces (Korthikanti et al. 2022).
    pub seq_parallel: bool,
}

impl Part {
    /// The whole model of `layers` layers on one device.
    pub fn whole(layers: usize) -> Part {
        Part {
            tp: 1,
            tp_rank: 0,
            layers: 0..layers,
            embedding: true,
            head: true,
            seq_parallel: false,
        }
    }

    /// Whether this is the whole model.
    pub fn is_whole(&self, layers: usize) -> bool {
        self.tp == 1 && self.layers == (0..layers) && self.embedding && self.head
    }
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Ranges of one layer's tensors.
#[derive(Debug, Clone)]
pub struct LayerParams {
    /// LN1 gain and bias.
    pub ln1_g: Range<usize>,
    /// LN1 bias.
    pub ln1_b: Range<usize>,
    /// Q, K, V weights `[d, 3d]`.
    pub w_qkv: Range<usize>,
    /// Q, K, V biases `[3d]`.
    pub b_qkv: Range<usize>,
    /// Attention output projection `[d, d]`.
    pub w_o: Range<usize>,
    /// Its bias.
    pub b_o: Range<usize>,
    /// LN2 gain.
    pub ln2_g: Range<usize>,
    /// LN2 bias.
    pub ln2_b: Range<usize>,
    /// FFN up `[d, f]`.
    pub w_up: Range<usize>,
    /// Its bias.
    pub b_up: Range<usize>,
    /// FFN down `[f, d]`.
    pub w_down: Range<usize>,
    /// Its bias.
    pub b_down: Range<usize>,
}

impl LayerParams {
    /// The layer's contiguous range of the buffer (its tensors lie side by side).
    pub fn span(&self) -> Range<usize> {
        self.ln1_g.start..self.b_down.end
    }
}

/// The model's shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dims {
    /// Hidden size.
    pub d: usize,
    /// Heads.
    pub h: usize,
    /// FFN inner size.
    pub f: usize,
    /// Vocabulary.
    pub v: usize,
    /// Sequence length.
    pub s: usize,
    /// All layers, the query layer included.
    pub layers: usize,
    /// Whether the last layer is the query layer.
    pub query: bool,
    /// Heads on this device (`h / tp`).
    pub hl: usize,
    /// FFN columns on this device (`f / tp`).
    pub fl: usize,
}

impl Dims {
    /// Head size.
    pub fn hd(&self) -> usize {
        self.d / self.h
    }

    /// Width of this device's heads (`d / tp`).
    pub fn dl(&self) -> usize {
        self.hl * self.hd()
    }
}

/// The parameter layout of a model.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Shapes.
    pub dims: Dims,
    /// Every tensor, in buffer order.
    pub tensors: Vec<TensorInfo>,
    /// Word embedding `[V, d]` (also the output head).
    pub wte: Range<usize>,
    /// Position embedding `[S, d]`.
    pub wpe: Range<usize>,
    /// Query-layer position table `[S, d]` (empty without a query layer).
    pub wqe: Range<usize>,
    /// Per layer.
    pub layers: Vec<LayerParams>,
    /// Final LayerNorm gain.
    pub lnf_g: Range<usize>,
    /// Final LayerNorm bias.
    pub lnf_b: Range<usize>,
    /// Total elements.
    pub total: usize,
    /// The share of the model this layout holds.
    pub part: Part,
}

impl Layout {
    /// The layout of the whole of `cfg`; errors name the field the trainer cannot run.
    pub fn new(cfg: &ModelConfig) -> Result<Layout, TrainError> {
        Layout::part(cfg, &Part::whole(cfg.layers as usize))
    }

    /// The layout of one device's `part` of `cfg`.
    pub fn part(cfg: &ModelConfig, part: &Part) -> Result<Layout, TrainError> {
        let unsupported = |field: &str, why: &str| {
            Err(TrainError::Unsupported(format!(
                "model '{}': {field} {why} (the CPU trainer runs the PanGu-α architecture: learned positions, \
                 LayerNorm, GeLU FFN with biases, tied embedding, full multi-head attention)",
                cfg.name
            )))
        };
        cfg.validate()
            .map_err(|e| TrainError::Unsupported(e.to_string()))?;
        if cfg.position != PositionKind::Learned {
            return unsupported("position", "is not 'learned'");
        }
        if cfg.norm != NormKind::Layernorm {
            return unsupported("norm", "is not 'layernorm'");
        }
        if cfg.ffn_kind != FfnKind::Gelu {
            return unsupported("ffn_kind", "is not 'gelu'");
        }
        if !cfg.bias {
            return unsupported("bias", "is false");
        }
        if !cfg.tied_embeddings {
            return unsupported("tied_embeddings", "is false");
        }
        if cfg.kv_heads() != cfg.heads {
            return unsupported("kv_heads", "differs from heads");
        }
        let (h, f, l) = (cfg.heads as usize, cfg.ffn as usize, cfg.layers as usize);
        let tp = part.tp;
        if tp == 0
            || h % tp != 0
            || f % tp != 0
            || cfg.vocab as usize % tp != 0
            || part.tp_rank >= tp
        {
            return Err(TrainError::Config(format!(
                "model '{}': tensor-parallel degree {tp} must divide the heads ({h}), the FFN size ({f}) and the vocabulary ({})",
                cfg.name, cfg.vocab
            )));
        }
        if part.layers.end > l || part.layers.start > part.layers.end {
            return Err(TrainError::Config(format!(
                "model '{}' has {l} layers; a part cannot hold layers {:?}",
                cfg.name, part.layers
            )));
        }
        let dims = Dims {
            d: cfg.hidden as usize,
            h,
            f,
            v: cfg.vocab as usize,
            s: cfg.seq_len as usize,
            layers: l,
            query: cfg.query_layer,
            hl: h / tp,
            fl: f / tp,
        };
        let whole = if part.is_whole(l) {
            None
        } else {
            Some(Layout::new(cfg)?)
        };
        let (d, v, s) = (dims.d, dims.v, dims.s);
        let (dl, fl) = (dims.dl(), dims.fl);
        let mut tensors = Vec::new();
        let mut off = 0usize;
        let mut add =
            |name: String, shape: Vec<usize>, split: Split, decay: bool, std: f64, value: f64| {
                let len: usize = shape.iter().product();
                let global = match &whole {
                    Some(w) => w.tensors.iter().position(|t| t.name == name).unwrap_or(0),
                    None => tensors.len(),
                };
                tensors.push(TensorInfo {
                    name,
                    shape,
                    offset: off,
                    decay,
                    init_std: std,
                    init_value: value,
                    split,
                    global,
                });
                off += len;
                off - len..off
            };
        let holds_query = dims.query && part.layers.contains(&(l - 1));
        let n = |keep: bool, rows: usize| if keep { rows } else { 0 };
        use Split::{Cols, Rows, Whole};
        // Initialisation of [R] pangu_alpha.py (pangu-alpha.md §1.6): embeddings N(0, 0.02);
        // the projections into the residual stream N(0, 0.02/sqrt(2L)); FFN up N(0, 0.02);
        // biases 0, LayerNorm gain 1. Q/K/V use MindSpore's Dense default, whose value the
        // reference could not confirm: N(0, 0.02) as every other input projection here.
        let std = 0.02;
        let std_out = 0.02 / (2.0 * l as f64).sqrt();
        let (emb, head) = (part.embedding, part.head);
        // Vocab-parallel word table (and tied head): each device holds `V/tp` rows.
        let wte = add(
            "embedding.word".into(),
            vec![n(emb || head, v / tp), d],
            if tp > 1 { Rows } else { Whole },
            true,
            std,
            0.0,
        );
        let wpe = add(
            "embedding.position".into(),
            vec![n(emb, s), d],
            Whole,
            true,
            std,
            0.0,
        );
        let wqe = add(
            "embedding.query".into(),
            vec![n(holds_query, s), d],
            Whole,
            true,
            std,
            0.0,
        );
        let mut layers = Vec::new();
        for i in part.layers.clone() {
            let p = |n: &str| format!("layers.{i}.{n}");
            let qkv = Cols { blocks: 3 };
            let col = Cols { blocks: 1 };
            layers.push(LayerParams {
                ln1_g: add(p("ln1.gamma"), vec![d], Whole, false, 0.0, 1.0),
                ln1_b: add(p("ln1.beta"), vec![d], Whole, false, 0.0, 0.0),
                w_qkv: add(p("attn.qkv.weight"), vec![d, 3 * dl], qkv, true, std, 0.0),
                b_qkv: add(p("attn.qkv.bias"), vec![3 * dl], qkv, false, 0.0, 0.0),
                w_o: add(p("attn.out.weight"), vec![dl, d], Rows, true, std_out, 0.0),
                b_o: add(p("attn.out.bias"), vec![d], Whole, false, 0.0, 0.0),
                ln2_g: add(p("ln2.gamma"), vec![d], Whole, false, 0.0, 1.0),
                ln2_b: add(p("ln2.beta"), vec![d], Whole, false, 0.0, 0.0),
                w_up: add(p("ffn.up.weight"), vec![d, fl], col, true, std, 0.0),
                b_up: add(p("ffn.up.bias"), vec![fl], col, false, 0.0, 0.0),
                w_down: add(p("ffn.down.weight"), vec![fl, d], Rows, true, std_out, 0.0),
                b_down: add(p("ffn.down.bias"), vec![d], Whole, false, 0.0, 0.0),
            });
        }
        let lnf_g = add(
            "final_ln.gamma".into(),
            vec![n(head, d)],
            Whole,
            false,
            0.0,
            1.0,
        );
        let lnf_b = add(
            "final_ln.beta".into(),
            vec![n(head, d)],
            Whole,
            false,
            0.0,
            0.0,
        );
        let total = lnf_b.end;
        // Tensors this part does not hold (and the query table of a model without one).
        tensors.retain(|t| !t.is_empty());
        if whole.is_none() {
            for (i, t) in tensors.iter_mut().enumerate() {
                t.global = i;
            }
        }
        Ok(Layout {
            dims,
            tensors,
            wte,
            wpe,
            wqe,
            layers,
            lnf_g,
            lnf_b,
            total,
            part: part.clone(),
        })
    }

    /// Initial parameters for `seed` (each element a pure function of seed, tensor and index).
    pub fn init<T: Real>(&self, seed: u64) -> Vec<T> {
        let mut p = vec![T::zero(); self.total];
        for t in &self.tensors {
            let s = rng::stream(&[0x1417, t.global as u64]);
            for (i, x) in p[t.range()].iter_mut().enumerate() {
                *x = if t.init_std > 0.0 {
                    let gi = self.global_index(t, i);
                    T::of(t.init_std * rng::normal(seed, s, gi as u64))
                } else {
                    T::of(t.init_value)
                };
            }
        }
        p
    }

    /// The index inside the whole model's tensor of element `i` of this part's tensor `t`.
    pub fn global_index(&self, t: &TensorInfo, i: usize) -> usize {
        let (tp, r) = (self.part.tp, self.part.tp_rank);
        match t.split {
            Split::Whole => i,
            _ if tp == 1 => i,
            Split::Rows => r * t.len() + i,
            Split::Cols { blocks } => {
                let width = *t.shape.last().unwrap_or(&1);
                let (row, j) = (i / width, i % width);
                let lw = width / blocks;
                let (blk, jj) = (j / lw, j % lw);
                row * width * tp + blk * lw * tp + r * lw + jj
            }
        }
    }

    /// Copies this part's values `local` into their places in the whole model's buffer `out`
    /// (laid out by `whole`).
    pub fn scatter<T: Copy>(&self, whole: &Layout, local: &[T], out: &mut [T]) {
        for t in &self.tensors {
            let w = &whole.tensors[t.global];
            for i in 0..t.len() {
                out[w.offset + self.global_index(t, i)] = local[t.offset + i];
            }
        }
    }

    /// [`Layout::scatter`] of the elements of `local` whose flat index lies in `keep`.
    pub fn scatter_within<T: Copy>(
        &self,
        whole: &Layout,
        local: &[T],
        out: &mut [T],
        keep: &Range<usize>,
    ) {
        for t in &self.tensors {
            let w = &whole.tensors[t.global];
            let lo = keep.start.max(t.offset);
            let hi = keep.end.min(t.offset + t.len());
            for j in lo..hi {
                out[w.offset + self.global_index(t, j - t.offset)] = local[j];
            }
        }
    }

    /// This part's values cut from the whole model's buffer `src` (laid out by `whole`).
    pub fn gather<T: Copy + Default>(&self, whole: &Layout, src: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); self.total];
        for t in &self.tensors {
            let w = &whole.tensors[t.global];
            for i in 0..t.len() {
                out[t.offset + i] = src[w.offset + self.global_index(t, i)];
            }
        }
        out
    }

    /// Ranges of the elements this device counts in global sums over the model (the gradient
    /// norm): a tensor replicated over the tensor-parallel group counts on its rank 0 only,
    /// and the tied word embedding counts where the embedding lives, not in the head's copy.
    pub fn counted_ranges(&self) -> Vec<Range<usize>> {
        self.tensors
            .iter()
            .filter(|t| t.split != Split::Whole || self.part.tp == 1 || self.part.tp_rank == 0)
            .filter(|t| self.part.embedding || t.name != "embedding.word")
            .map(TensorInfo::range)
            .collect()
    }

    /// Ranges of the gradients a device computes from its own rows only under sequence
    /// parallelism (LayerNorm gains and biases, the biases added after a reduce-scatter);
    /// empty otherwise.
    pub fn row_partial_ranges(&self) -> Vec<Range<usize>> {
        if !(self.part.seq_parallel && self.part.tp > 1) {
            return Vec::new();
        }
        self.layers
            .iter()
            .flat_map(|lp| {
                [
                    lp.ln1_g.clone(),
                    lp.ln1_b.clone(),
                    lp.b_o.clone(),
                    lp.ln2_g.clone(),
                    lp.ln2_b.clone(),
                    lp.b_down.clone(),
                ]
            })
            .collect()
    }

    /// A 0/1 mask per element: 1 where AdamW applies weight decay.
    pub fn decay_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.total];
        for t in &self.tensors {
            if t.decay {
                m[t.range()].fill(true);
            }
        }
        m
    }
}

/// One micro-batch: `b` packed samples of `s` inputs each.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Samples.
    pub b: usize,
    /// Sequence length.
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

/// Saved activations of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerActs<T> {
    ln1: Vec<T>,
    ln1_mean: Vec<T>,
    ln1_rstd: Vec<T>,
    /// The query layer's table projection `[S, dl]` (forward), then its gradient (backward).
    qin: Vec<T>,
    qkv: Vec<T>,
    probs: Vec<T>,
    probs_drop: Vec<T>,
    att: Vec<T>,
    mid: Vec<T>,
    ln2: Vec<T>,
    ln2_mean: Vec<T>,
    ln2_rstd: Vec<T>,
    up: Vec<T>,
    act: Vec<T>,
}

/// Every buffer the forward and backward passes use, allocated once for a micro-batch shape.
#[derive(Debug, Clone)]
pub struct Acts<T> {
    b: usize,
    /// What is kept and what recomputed.
    keep: Keep,
    /// Residual stream entering layers, and leaving the last (slots by [`Keep::res_slot`]).
    res: Vec<Vec<T>>,
    layers: Vec<LayerActs<T>>,
    lnf: Vec<T>,
    lnf_mean: Vec<T>,
    lnf_rstd: Vec<T>,
    /// Logits, then probabilities, then their gradient `[b·s·V]`.
    logits: Vec<T>,
    /// Whether `logits` holds the loss gradient (left by a training forward) rather than
    /// probabilities.
    head_grad: bool,
    /// Per-row losses (nats).
    pub losses: Vec<f64>,
    // Backward scratch.
    dx: Vec<T>,
    dtmp: Vec<T>,
    dtmp2: Vec<T>,
    dqkv: Vec<T>,
    dff: Vec<T>,
    dscratch: Vec<T>,
    /// All rows `[b·s, d]`: partial sums before their reduction, gathered gradients.
    sp: Vec<T>,
    /// The head's input gathered to all rows (sequence parallelism).
    head_in: Vec<T>,
    /// Attention probabilities and output recomputed under selective remat.
    sel: Selective<T>,
    /// Row statistics of the vocab-parallel cross-entropy `[T·(tp + 3)]`.
    vp: Vec<T>,
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
}

impl<T> Scratch<T> {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        let n = self.dtmp.len()
            + self.dtmp2.len()
            + self.dqkv.len()
            + self.dff.len()
            + self.dscratch.len();
        (n * std::mem::size_of::<T>()) as u64
    }
}

/// Scratch of selective rematerialisation: one layer's attention core.
#[derive(Debug, Clone, Default)]
struct Selective<T> {
    probs: Vec<T>,
    probs_drop: Vec<T>,
    att: Vec<T>,
}

/// Which activations a part keeps between forward and backward, from the strategy's
/// [`Remat`]: every layer's (`group` 0, optionally without the attention core under
/// selective remat), or the inputs of groups of `group` layers, whose internals are
/// recomputed group by group in backward (full remat is groups of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keep {
    group: usize,
    selective: bool,
    nl: usize,
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
    fn res_slot(&self, li: usize) -> usize {
        let k = self.group;
        if k == 0 {
            li
        } else if li == self.nl {
            self.groups()
        } else if li % k == 0 {
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

    fn act_slot(&self, li: usize) -> usize {
        if self.group == 0 {
            li
        } else {
            li % self.group
        }
    }
}

/// `(&v[i], &mut v[j])` for `i != j`.
fn pair<T>(v: &mut [Vec<T>], i: usize, j: usize) -> (&[T], &mut [T]) {
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
}

impl Shape {
    fn whole(dims: &Dims) -> Shape {
        Shape {
            layers: dims.layers,
            query: dims.query,
            head: true,
            split: 1,
            tp: 1,
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
        let rows = b * s;
        let rl = rows / self.split;
        let probs = b * hl * s * s * (1 + usize::from(dropout));
        // ln1, ln2 (all rows, d); mid (own rows, d); qkv (3·dl); att (dl); up, act (fl);
        // four LayerNorm statistics (own rows); the attention core unless selective.
        let core = if keep.selective { 0 } else { probs };
        let per_layer = rows * (2 * d + 4 * dl + 2 * fl) + rl * (d + 4) + core;
        let sel = if keep.selective { probs + rows * dl } else { 0 };
        // The query table's projection [S, dl] (its gradient in backward).
        let qin = if self.query { s * dl } else { 0 };
        let head = if self.head {
            rows * (d + 2)
                + rows * dims.v / self.tp
                + if self.split > 1 { rows * d } else { 0 }
                + if self.tp > 1 { rows * (self.tp + 3) } else { 0 }
        } else {
            0
        };
        // Residual stream (own rows), head, backward scratch (dx own rows; dtmp, dtmp2; sp
        // in a group; dqkv; dff; scores).
        let sp = if self.tp > 1 || self.split > 1 {
            rows * d
        } else {
            0
        };
        let other = keep.res_slots() * rl * d
            + head
            + rl * d
            + rows * (2 * d + 3 * dl + fl)
            + sp
            + b * s * s
            + sel;
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
        let (d, v, s) = (dims.d, dims.v, dims.s);
        let (dl, fl, hl) = (dims.dl(), dims.fl, dims.hl);
        let rows = b * s;
        let rl = rows / shape.split;
        let z = |n: usize| vec![T::zero(); n];
        let nl = shape.layers;
        let keep = Keep::of(remat, nl);
        let probs = b * hl * s * s;
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
                qkv: z(rows * 3 * dl),
                probs: core(!keep.selective),
                probs_drop: core(!keep.selective && dropout),
                att: z(rows * dl),
                mid: z(rl * d),
                ln2: z(rows * d),
                ln2_mean: z(rl),
                ln2_rstd: z(rl),
                up: z(rows * fl),
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
            dtmp: z(rows * d),
            dtmp2: z(rows * d),
            dqkv: z(rows * 3 * dl),
            dff: z(rows * fl),
            dscratch: z(b * s * s),
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
    pub fn input_mut(&mut self) -> &mut [T] {
        &mut self.res[0]
    }

    /// The part's output activation after [`Model::forward_part`] (of a part without the head).
    pub fn output(&self) -> &[T] {
        &self.res[self.keep.res_slot(self.keep.nl)]
    }

    /// The gradient of the part's output (fill it before [`Model::backward_part`] of a part
    /// without the head); after backward, the gradient of its input.
    pub fn grad_mut(&mut self) -> &mut [T] {
        &mut self.dx
    }

    /// The gradient of the part's input after [`Model::backward_part`].
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
            + self.vp.len();
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

/// The strategy's remat of a single-device flag: full or none.
fn full_or_none(remat: bool) -> Remat {
    if remat {
        Remat::Full
    } else {
        Remat::None
    }
}

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
    /// them, or its contiguous `1/tp` block under sequence parallelism.
    pub fn local_rows(&self, b: usize) -> Range<usize> {
        let rows = b * self.dims().s;
        let part = &self.layout.part;
        if part.seq_parallel && part.tp > 1 {
            let rl = rows / part.tp;
            part.tp_rank * rl..(part.tp_rank + 1) * rl
        } else {
            0..rows
        }
    }

    /// `out = LN(x)` over this device's rows, gathered to all rows under sequence parallelism.
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
        let d = self.dims().d;
        if self.layout.part.seq_parallel {
            let loc = &mut sp[..x.len()];
            k::layernorm_fwd(loc, mean, rstd, x, g, bias, d);
            red.all_gather(loc, out);
        } else {
            k::layernorm_fwd(out, mean, rstd, x, g, bias, d);
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
    #[allow(clippy::too_many_arguments)]
    fn layer_fwd<T: Real>(
        &self,
        p: &[T],
        l: usize,
        x: &[T],
        y: &mut [T],
        a: &mut LayerActs<T>,
        sp: &mut [T],
        sel: &mut Selective<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
        red: &mut dyn Reduce<T>,
    ) {
        let dims = self.dims();
        let Dims { d, s, fl, .. } = dims;
        let dl = dims.dl();
        let rows = batch.b * s;
        let lay = &self.layout;
        let lp = &lay.layers[l - lay.part.layers.start];
        let query = dims.query && l + 1 == dims.layers;
        let seq = lay.part.seq_parallel;
        let own = self.local_rows(batch.b);
        let row_ids = &batch.row_ids[own.clone()];
        // Biases after a sum: added once, by rank 0, or per device on its own rows.
        let bias_once = lay.part.tp_rank == 0 && !seq;
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
        let bq = &p[lp.b_qkv.clone()];
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
                3 * dl,
                Some(&bq[..dl]),
                s,
                d,
                dl,
            );
            k::lookup_fwd_strided(&mut a.qkv, 3 * dl, &batch.pos, &a.qin, dl);
            k::linear_fwd(
                &mut a.qkv[dl..],
                3 * dl,
                &a.ln1,
                d,
                &w[dl..],
                3 * dl,
                Some(&bq[dl..]),
                rows,
                d,
                2 * dl,
            );
        } else {
            k::linear_fwd(
                &mut a.qkv,
                3 * dl,
                &a.ln1,
                d,
                w,
                3 * dl,
                Some(bq),
                rows,
                d,
                3 * dl,
            );
        }
        // Under selective remat the probabilities go to a scratch recomputed in backward.
        let (probs, probs_drop) = if a.probs.is_empty() {
            (&mut sel.probs, &mut sel.probs_drop)
        } else {
            (&mut a.probs, &mut a.probs_drop)
        };
        k::attention_fwd(
            &mut a.att,
            probs,
            probs_drop,
            &a.qkv,
            &batch.start,
            ad,
            self.drop(train, step, l, Site::AttnProbs),
            &batch.sample_ids,
        );
        // mid = x + dropout(Σ_group att·Wo + bo); alone (no group), straight into mid.
        let alone = lay.part.tp == 1 && !seq;
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
            bias_once.then(|| &p[lp.b_o.clone()]),
            rows,
            dl,
            d,
        );
        if !alone {
            self.sum_rows(&mut sp[..rows * d], &mut a.mid, red);
        }
        if seq {
            k::add_rows(&mut a.mid, &p[lp.b_o.clone()]);
        }
        self.drop(train, step, l, Site::AttnOut)
            .apply(&mut a.mid, d, row_ids);
        k::add_into(&mut a.mid, x);
        // y = mid + dropout(Σ_group FFN(LN2(mid)))
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
        ffn_up(p, lp, &a.ln2, &mut a.up, &mut a.act, rows, d, fl);
        k::linear_fwd(
            if alone { &mut *y } else { &mut sp[..rows * d] },
            d,
            &a.act,
            fl,
            &p[lp.w_down.clone()],
            d,
            bias_once.then(|| &p[lp.b_down.clone()]),
            rows,
            fl,
            d,
        );
        if !alone {
            self.sum_rows(&mut sp[..rows * d], y, red);
        }
        if seq {
            k::add_rows(y, &p[lp.b_down.clone()]);
        }
        self.drop(train, step, l, Site::FfnOut).apply(y, d, row_ids);
        k::add_into(y, &a.mid);
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
        (part.tp, part.tp_rank * self.dims().v / part.tp)
    }

    fn attn_dims(&self, b: usize) -> AttnDims {
        let dims = self.dims();
        AttnDims {
            b,
            s: dims.s,
            h: dims.hl,
            hd: dims.hd(),
            h0: self.layout.part.tp_rank * dims.hl,
            h_all: dims.h,
        }
    }

    /// Forward passes of this part's layers `range` (local indices), each reading its input
    /// from and writing its output to the residual buffers of [`Keep::res_slot`].
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
                &mut acts.sp,
                &mut acts.sel,
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
        let Dims { d, v, s, .. } = self.dims();
        let rows = batch.b * s;
        assert_eq!(
            acts.b, batch.b,
            "activation buffers were sized for another batch"
        );
        let lay = &self.layout;
        let own = self.local_rows(batch.b);
        let (tp, v0) = self.vocab_split();
        if lay.part.embedding && tp == 1 {
            k::embed_fwd(
                &mut acts.res[0],
                &batch.tokens[own.clone()],
                &batch.pos[own.clone()],
                &p[lay.wte.clone()],
                &p[lay.wpe.clone()],
                d,
            );
        } else if lay.part.embedding {
            // Vocab-parallel lookup of all rows, summed (scattered to this device's rows
            // under sequence parallelism), then the positions.
            k::embed_vocab_part(&mut acts.sp, &batch.tokens, &p[lay.wte.clone()], v0, d);
            let seq = lay.part.seq_parallel;
            let own_rows = summed(seq, &mut acts.sp, &mut acts.dtmp[..own.len() * d], red);
            acts.res[0].copy_from_slice(own_rows);
            k::add_lookup(
                &mut acts.res[0],
                &batch.pos[own.clone()],
                &p[lay.wpe.clone()],
                d,
            );
        }
        if lay.part.embedding {
            self.drop(train, step, 0, Site::Embedding).apply(
                &mut acts.res[0],
                d,
                &batch.row_ids[own.clone()],
            );
        }
        let ad = self.attn_dims(batch.b);
        let nl = lay.layers.len();
        self.layers_fwd(p, acts, 0..nl, batch, step, train, ad, red);
        if !lay.part.head {
            return 0.0;
        }
        let out = &acts.res[acts.keep.res_slot(nl)];
        let head_in: &[T] = if lay.part.seq_parallel {
            red.all_gather(out, &mut acts.head_in);
            &acts.head_in
        } else {
            out
        };
        k::layernorm_fwd(
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            head_in,
            &p[lay.lnf_g.clone()],
            &p[lay.lnf_b.clone()],
            d,
        );
        // logits = lnf·wteᵀ (this device's vocabulary columns)
        let vl = v / tp;
        crate::linalg::matmul(
            &mut acts.logits,
            vl,
            crate::linalg::n(&acts.lnf, d),
            crate::linalg::t(&p[lay.wte.clone()], d),
            rows,
            d,
            vl,
            false,
        );
        // A training forward is followed by backward: leave the loss gradient rather than the
        // probabilities (the cross-entropy's backward fused into its forward pass).
        let grad = train.then_some(&batch.weights[..]);
        acts.head_grad = train;
        if tp == 1 {
            k::softmax_xent_fwd(&mut acts.logits, &mut acts.losses, &batch.targets, v, grad);
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
        acts.losses
            .iter()
            .zip(&batch.weights)
            .map(|(l, w)| l * w)
            .sum()
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
        let dims = self.dims();
        let Dims { d, v, s, fl, .. } = dims;
        let dl = dims.dl();
        let rows = batch.b * s;
        let lay = &self.layout;
        let nl = lay.layers.len();
        let first = lay.part.layers.start;
        let seq = lay.part.seq_parallel;
        let own = self.local_rows(batch.b);
        let rl = own.len();
        let row_ids = &batch.row_ids[own.clone()];
        let (tp, v0) = self.vocab_split();
        let vl = v / tp;
        if lay.part.head {
            if !acts.head_grad {
                k::xent_vocab_bwd(&mut acts.logits, &batch.targets, &batch.weights, vl, v0);
            }
            acts.head_grad = false;
            let head_in: &[T] = if seq {
                &acts.head_in
            } else {
                &acts.res[acts.keep.res_slot(nl)]
            };
            // dlnf = dlogits·wte ; dwte += dlogitsᵀ·lnf
            let wte = &p[lay.wte.clone()];
            let (logits, lnf) = (&acts.logits, &acts.lnf);
            let input = |dtmp: &mut [T]| head_product(dtmp, logits, wte, false, rows, vl, d).run();
            if g.is_half() {
                // One half of a split batch: single-threaded, ordered (see `grads`).
                let input_first = g.input_first();
                if input_first {
                    input(&mut acts.dtmp);
                }
                head_weight_grad(&mut g.take(&lay.wte), logits, lnf, rows, vl, d);
                if !input_first {
                    input(&mut acts.dtmp);
                }
            } else {
                let mut gw = g.take(&lay.wte);
                let weight = head_product(&mut gw, logits, lnf, true, rows, vl, d);
                let dx = head_product(&mut acts.dtmp, logits, wte, false, rows, vl, d);
                crate::linalg::matmul_pair(weight, dx);
            }
            // Each device saw its vocabulary columns: the norm's input gradient is summed.
            red.all_reduce(&mut acts.dtmp);
            // The head runs on all rows on every device; keep this device's rows' gradient.
            let full: &mut [T] = if seq { &mut acts.sp } else { &mut acts.dx };
            full.fill(T::zero());
            let (mut dg, mut db) = g.take2(&lay.lnf_g, &lay.lnf_b);
            k::layernorm_bwd(
                full,
                &mut dg,
                &mut db,
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
        let ad = self.attn_dims(batch.b);
        for li in (0..nl).rev() {
            let l = first + li;
            let lp = &lay.layers[li];
            let query = dims.query && l + 1 == dims.layers;
            let keep = acts.keep;
            if keep.group > 0 && (li + 1 == nl || (li + 1) % keep.group == 0) {
                // The last layer of a group: recompute the group's forward from its kept
                // input (same dropout masks, so the same values; the group's output is
                // rewritten with identical numbers).
                let g0 = li - li % keep.group;
                self.layers_fwd(p, acts, g0..li + 1, batch, step, train, ad, red);
            }
            let x = &acts.res[keep.res_slot(li)];
            let a = &mut acts.layers[keep.act_slot(li)];
            // y = mid + drop(Σ act·Wd + bd): the FFN branch's gradient is drop-mask ⊙ dx,
            // gathered to all rows under sequence parallelism.
            let dy = self.drop(train, step, l, Site::FfnOut).masked(
                &acts.dx,
                &mut acts.dtmp[..rl * d],
                d,
                row_ids,
            );
            k::bias_bwd(&mut g.take(&lp.b_down), dy);
            let dy = gathered(seq, dy, &mut acts.sp, red);
            linear_back(
                g,
                Some((&mut acts.dff, fl, false)),
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
            k::gelu_bwd_inplace(&mut acts.dff, &a.up, &a.act, fl);
            {
                linear_back(
                    g,
                    Some((&mut acts.dtmp2, d, false)),
                    &lp.w_up,
                    fl,
                    Some(&lp.b_up),
                    &acts.dff,
                    fl,
                    &a.ln2,
                    d,
                    &p[lp.w_up.clone()],
                    rows,
                    d,
                    fl,
                );
            }
            // The column-split FFN-up saw the whole input: its input gradient is summed
            // (over the group; scattered to this device's rows under sequence parallelism).
            let dln = summed(seq, &mut acts.dtmp2, &mut acts.dtmp[..rl * d], red);
            {
                let (mut dg, mut db) = g.take2(&lp.ln2_g, &lp.ln2_b);
                k::layernorm_bwd(
                    &mut acts.dx,
                    &mut dg,
                    &mut db,
                    dln,
                    &a.mid,
                    &p[lp.ln2_g.clone()],
                    &a.ln2_mean,
                    &a.ln2_rstd,
                    d,
                );
            }
            // mid = x + drop(Σ att·Wo + bo)
            let dy = self.drop(train, step, l, Site::AttnOut).masked(
                &acts.dx,
                &mut acts.dtmp[..rl * d],
                d,
                row_ids,
            );
            k::bias_bwd(&mut g.take(&lp.b_o), dy);
            let dy = gathered(seq, dy, &mut acts.sp, red);
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
            let (probs, probs_drop) = if a.probs.is_empty() {
                // Selective remat: recompute the attention core of this layer.
                let sel = &mut acts.sel;
                k::attention_fwd(
                    &mut sel.att,
                    &mut sel.probs,
                    &mut sel.probs_drop,
                    &a.qkv,
                    &batch.start,
                    ad,
                    self.drop(train, step, l, Site::AttnProbs),
                    &batch.sample_ids,
                );
                (&sel.probs, &sel.probs_drop)
            } else {
                (&a.probs, &a.probs_drop)
            };
            k::attention_bwd(
                &mut acts.dqkv,
                &mut acts.dscratch,
                &acts.dtmp2[..rows * dl],
                &a.qkv,
                probs,
                probs_drop,
                &batch.start,
                ad,
                self.drop(train, step, l, Site::AttnProbs),
                &batch.sample_ids,
            );
            let w = &p[lp.w_qkv.clone()];
            let wqe = &p[lay.wqe.clone()];
            if query {
                // The query table projection's gradient: dT[pos] += dQ, row by row ([S, dl]
                // in `qin`, which held the projection itself in forward).
                a.qin.fill(T::zero());
                k::lookup_bwd_strided(&mut a.qin, &acts.dqkv, 3 * dl, &batch.pos, dl);
            }
            let qt = QueryGrad { dt: &a.qin, wqe, s };
            if g.is_half() {
                // One half of a split batch: input gradients before or after the turn.
                let input_first = g.input_first();
                let mut inputs = || {
                    let (dq, dkv) = (&mut acts.dtmp, &mut acts.dtmp2);
                    qkv_inputs(query.then_some(qt), dq, dkv, &acts.dqkv, w, d, dl, rows);
                };
                if input_first {
                    inputs();
                }
                {
                    let (mut gw, mut gb) = g.take2(&lp.w_qkv, &lp.b_qkv);
                    let (gw, gb): (&mut [T], &mut [T]) = (&mut gw, &mut gb);
                    let ln1 = &a.ln1;
                    qkv_weights(query.then_some(qt), gw, gb, &acts.dqkv, ln1, d, dl, rows);
                }
                if !input_first {
                    inputs();
                }
            } else {
                let (mut gw, mut gb) = g.take2(&lp.w_qkv, &lp.b_qkv);
                let (gw, gb): (&mut [T], &mut [T]) = (&mut gw, &mut gb);
                if query {
                    // Q from the query table (through its projection's gradient dT, S rows),
                    // K and V from LN1(x).
                    k::linear_bwd(
                        Some((&mut acts.dtmp[..s * d], d, false)),
                        gw,
                        3 * dl,
                        Some(&mut gb[..dl]),
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
                        3 * dl,
                        Some(&mut gb[dl..]),
                        &acts.dqkv[dl..],
                        3 * dl,
                        &a.ln1,
                        d,
                        &w[dl..],
                        rows,
                        d,
                        2 * dl,
                    );
                } else {
                    k::linear_bwd(
                        Some((&mut acts.dtmp2, d, false)),
                        gw,
                        3 * dl,
                        Some(gb),
                        &acts.dqkv,
                        3 * dl,
                        &a.ln1,
                        d,
                        w,
                        rows,
                        d,
                        3 * dl,
                    );
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
            {
                let (mut dg, mut db) = g.take2(&lp.ln1_g, &lp.ln1_b);
                k::layernorm_bwd(
                    &mut acts.dx,
                    &mut dg,
                    &mut db,
                    dln,
                    x,
                    &p[lp.ln1_g.clone()],
                    &a.ln1_mean,
                    &a.ln1_rstd,
                    d,
                );
            }
            let span = lp.span();
            if let Some(gs) = g.whole_slice(span.clone()) {
                red.layer_done(span, gs);
            }
        }
        if lay.part.embedding && !g.is_half() {
            self.embedding_bwd(g, acts, batch, step, train, red);
        }
    }

    /// The embedding's backward: the word and position tables' gradients from the gradient
    /// of the embedding's output ([`Acts::grad`]). [`Model::backward_part`] runs it itself,
    /// except on a half of a split batch, whose embedding gradients are added after both
    /// halves ([`Model::step_halves`]: the word table is also the head, so each half adds to it
    /// twice, and half 1's head must not wait for half 0's embedding).
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
        k::lookup_bwd(&mut g.take(&lay.wpe), dx, &batch.pos, d);
    }
}

/// How many parts a micro-batch of `micro` samples runs in ([`Model::step_parts`]): two
/// halves when it is even (on two threads each half runs on its own), else one. The halves'
/// buffers together are those of the whole micro-batch.
pub fn parts_of(micro: usize) -> usize {
    if micro >= 2 && micro % 2 == 0 {
        2
    } else {
        1
    }
}

/// A linear layer's backward through `g` (as [`k::linear_bwd`], with the weight and bias
/// gradients named by their ranges). On a half of a split batch the input-gradient product
/// runs before taking the weight's slot (half 1) or after releasing it (half 0).
#[allow(clippy::too_many_arguments)]
fn linear_back<T: Real>(
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

/// The query layer's Q gradient through the query table: the projection's gradient `dt`
/// `[s, dl]` (dQ summed over the rows at each position) and the table `wqe` `[s, d]`.
#[derive(Clone, Copy)]
struct QueryGrad<'a, T> {
    dt: &'a [T],
    wqe: &'a [T],
    s: usize,
}

/// The QKV projection's input gradients on a half of a split batch: with the query layer,
/// Q's goes to the query table (`dq`, `[S, d]`) and K and V's to LN1 (`dkv`); else all to
/// LN1 (`dkv`).
#[allow(clippy::too_many_arguments)]
fn qkv_inputs<T: Real>(
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
fn qkv_weights<T: Real>(
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
pub(crate) fn ffn_up<T: Real>(
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
