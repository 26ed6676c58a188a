//! The parameter layout: the model's shapes ([`Dims`]), a device's share of the model
//! ([`Part`]), and where each named tensor lies in the one flat fp32 buffer ([`Layout`],
//! [`TensorInfo`], [`LayerParams`]), with its initial values and the maps between a part and
//! the whole model.

use std::ops::Range;

use pangu_model::{FfnKind, ModelConfig, NormKind, PositionKind};
use serde::Serialize;

use crate::real::Real;
use crate::rng;
use crate::TrainError;

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
    /// The last dimension is Q | K | V of unequal widths (grouped-query attention): `q` and
    /// `kv` are this device's widths of the Q block and of each of K and V; each device holds
    /// its `1/tp` of every block.
    Qkv {
        /// Local width of the Q block.
        q: usize,
        /// Local width of the K block (and of the V block).
        kv: usize,
    },
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
    /// Holds the final norm, the head and the loss (the last virtual stage).
    pub head: bool,
    /// Sequence parallelism (with `tp > 1`): the residual stream, LayerNorms and dropout
    /// hold this device's `1/tp` block of the rows; all-gathers and reduce-scatters take the
    /// place of the all-reduces (Korthikanti et al. 2022).
    pub seq_parallel: bool,
    /// Context-parallel degree: the device holds `s/cp` tokens of every sample, two of the
    /// sequence's `2·cp` chunks ([`pangu_strategies::plan::cp_chunks`]); weights are not
    /// split by it.
    #[serde(skip_serializing_if = "is_one")]
    pub cp: usize,
    /// This device's index in its context-parallel group.
    #[serde(skip_serializing_if = "is_zero")]
    pub cp_rank: usize,
    /// Rows of padding after the vocabulary in the vocab-parallel tables (the plan's
    /// `padded_vocab − vocab`, Megatron's `--make-vocab-size-divisible-by`): every device holds
    /// `(V + pad)/tp` rows; the padding is never an input or a target, its logits are masked
    /// out of the softmax, and it is no part of the whole model (checkpoints hold `V` rows).
    #[serde(skip_serializing_if = "is_zero")]
    pub vocab_pad: usize,
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn is_zero(v: &usize) -> bool {
    *v == 0
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
            cp: 1,
            cp_rank: 0,
            vocab_pad: 0,
        }
    }

    /// Tokens of each sample this device holds (`s/cp` of a sequence of `s`).
    pub fn seq_rows(&self, s: usize) -> usize {
        s / self.cp.max(1)
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
    /// LN1 gain.
    pub ln1_g: Range<usize>,
    /// LN1 bias (empty under RMSNorm).
    pub ln1_b: Range<usize>,
    /// Q, K, V weights `[d, d + 2·kv_dim]` (`[d, 3d]` without grouped-query attention).
    pub w_qkv: Range<usize>,
    /// Q, K, V biases (empty without biases).
    pub b_qkv: Range<usize>,
    /// Attention output projection `[d, d]`.
    pub w_o: Range<usize>,
    /// Its bias.
    pub b_o: Range<usize>,
    /// LN2 gain.
    pub ln2_g: Range<usize>,
    /// LN2 bias.
    pub ln2_b: Range<usize>,
    /// FFN up `[d, f]`, or SwiGLU's gate and up side by side `[d, 2f]`.
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dims {
    /// Hidden size.
    pub d: usize,
    /// Heads.
    pub h: usize,
    /// FFN inner size.
    pub f: usize,
    /// Vocabulary.
    pub v: usize,
    /// The vocab-parallel tables' rows: the vocabulary and its padding (`v` without padding).
    #[serde(skip)]
    pub vp: usize,
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
    /// Key/value heads of the whole model.
    pub kv: usize,
    /// Key/value heads on this device (`kv / tp`).
    pub kvl: usize,
    /// The block's variant: norms, FFN, positions, biases, head.
    pub arch: Arch,
}

/// The architecture choices of a model beyond its sizes ([`ModelConfig`]'s kinds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Arch {
    /// RMSNorm (gain only) instead of LayerNorm (gain and bias).
    pub rms: bool,
    /// SwiGLU FFN (gate and up, SiLU) instead of GeLU.
    pub swiglu: bool,
    /// Rotary embeddings with this base θ instead of a learned position table.
    pub rope: Option<f64>,
    /// Linear layers carry biases.
    pub bias: bool,
    /// The head is the word table.
    pub tied: bool,
}

impl Arch {
    /// PanGu-α's (and GPT's): LayerNorm, GeLU, learned positions, biases, tied head.
    pub const GPT: Arch = Arch {
        rms: false,
        swiglu: false,
        rope: None,
        bias: true,
        tied: true,
    };
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

    /// Width of this device's key (or value) heads.
    pub fn kvw(&self) -> usize {
        self.kvl * self.hd()
    }

    /// Width of this device's Q | K | V projection.
    pub fn qkv_w(&self) -> usize {
        self.dl() + 2 * self.kvw()
    }

    /// Width of this device's FFN up projection (SwiGLU: gate and up).
    pub fn up_w(&self) -> usize {
        if self.arch.swiglu {
            2 * self.fl
        } else {
            self.fl
        }
    }

    /// The shapes of `part` of `cfg`, or the error that says why the trainer cannot run them
    /// (an architecture it does not implement, a tensor-parallel degree that does not divide
    /// the model, layers the model lacks).
    fn checked(cfg: &ModelConfig, part: &Part) -> Result<Dims, TrainError> {
        cfg.validate()
            .map_err(|e| TrainError::Unsupported(e.to_string()))?;
        if cfg.position == PositionKind::None {
            return Err(TrainError::Unsupported(format!(
                "model '{}': position 'none' (ALiBi) is not implemented by the CPU trainer: \
                 use 'learned' or 'rotary'",
                cfg.name
            )));
        }
        let arch = Arch {
            rms: cfg.norm == NormKind::Rmsnorm,
            swiglu: cfg.ffn_kind == FfnKind::Swiglu,
            rope: (cfg.position == PositionKind::Rotary).then_some(cfg.rope_theta),
            bias: cfg.bias,
            tied: cfg.tied_embeddings,
        };
        let (h, f, l) = (cfg.heads as usize, cfg.ffn as usize, cfg.layers as usize);
        let kv = cfg.kv_heads() as usize;
        let hd = cfg.head_dim() as usize;
        if arch.rope.is_some() && !hd.is_multiple_of(2) {
            return Err(TrainError::Config(format!(
                "model '{}': rotary embeddings turn pairs of a head's columns; the head size {hd} \
                 (hidden {} / heads {h}) must be even",
                cfg.name, cfg.hidden
            )));
        }
        let tp = part.tp;
        let vp = cfg.vocab as usize + part.vocab_pad;
        if tp == 0 || h % tp != 0 || f % tp != 0 || !vp.is_multiple_of(tp) || part.tp_rank >= tp {
            return Err(TrainError::Config(format!(
                "model '{}': tensor-parallel degree {tp} must divide the heads ({h}), the FFN size ({f}) and the vocabulary with its padding ({vp}; pad it to a multiple of tp)",
                cfg.name
            )));
        }
        if !kv.is_multiple_of(tp) {
            return Err(TrainError::Config(format!(
                "model '{}': tensor-parallel degree {tp} must divide the key/value heads ({kv}): \
                 each device holds whole key/value heads with their query heads",
                cfg.name
            )));
        }
        let (s, cp) = (cfg.seq_len as usize, part.cp);
        if cp == 0 || part.cp_rank >= cp || (cp > 1 && !s.is_multiple_of(2 * cp)) {
            return Err(TrainError::Config(format!(
                "model '{}': context-parallel degree {cp} (rank {}) must split the sequence of {s} \
                 tokens into 2·cp chunks",
                cfg.name, part.cp_rank
            )));
        }
        if part.layers.end > l || part.layers.start > part.layers.end {
            return Err(TrainError::Config(format!(
                "model '{}' has {l} layers; a part cannot hold layers {:?}",
                cfg.name, part.layers
            )));
        }
        Ok(Dims {
            d: cfg.hidden as usize,
            h,
            f,
            v: cfg.vocab as usize,
            vp,
            s: cfg.seq_len as usize,
            layers: l,
            query: cfg.query_layer,
            hl: h / tp,
            fl: f / tp,
            kv,
            kvl: kv / tp,
            arch,
        })
    }
}

/// The parameter layout of a model.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Shapes.
    pub dims: Dims,
    /// Every tensor, in buffer order.
    pub tensors: Vec<TensorInfo>,
    /// Word embedding `[V, d]` (also the output head when tied).
    pub wte: Range<usize>,
    /// Position embedding `[S, d]` (empty under rotary embeddings).
    pub wpe: Range<usize>,
    /// Query-layer position table `[S, d]` (empty without a query layer).
    pub wqe: Range<usize>,
    /// Per layer.
    pub layers: Vec<LayerParams>,
    /// Final norm gain.
    pub lnf_g: Range<usize>,
    /// Final norm bias (empty under RMSNorm).
    pub lnf_b: Range<usize>,
    /// Untied output head `[V, d]` (empty when the head is the word table).
    pub head_w: Range<usize>,
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
    ///
    /// Kept as one function (~170 lines) on purpose: it is the single list of the model's
    /// tensors in buffer order, which the initialisation, the checkpoints and the optimizer
    /// shards all depend on; cut into pieces, that order would be spread over several
    /// functions sharing the offset counter.
    pub fn part(cfg: &ModelConfig, part: &Part) -> Result<Layout, TrainError> {
        let dims = Dims::checked(cfg, part)?;
        let (l, tp) = (dims.layers, part.tp);
        let whole = if part.is_whole(l) {
            None
        } else {
            Some(Layout::new(cfg)?)
        };
        let (d, v) = (dims.d, dims.vp);
        // Learned position tables have `position_rows` rows (a model's `max_positions`, else
        // the training length), as `ModelConfig::params` counts them.
        let s = cfg.position_rows() as usize;
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
        let arch = dims.arch;
        // Tensors an architecture lacks are empty (and dropped from the list below).
        let (ln_bias, bias) = (!arch.rms, arch.bias);
        use Split::{Cols, Rows, Whole};
        // Initialisation of [R] pangu_alpha.py (pangu-alpha.md §1.6): embeddings N(0, 0.02);
        // the projections into the residual stream N(0, 0.02/sqrt(2L)); FFN up N(0, 0.02);
        // biases 0, LayerNorm gain 1. Q/K/V use MindSpore's Dense default, whose value the
        // reference could not confirm: N(0, 0.02) as every other input projection here.
        // Llama-style models take the same: Hugging Face's LlamaConfig draws every weight
        // from N(0, initializer_range = 0.02) and sets norm gains to 1.
        let std = 0.02;
        let std_out = 0.02 / (2.0 * l as f64).sqrt();
        let (emb, head) = (part.embedding, part.head);
        // Vocab-parallel word table (and tied head): each device holds `V/tp` rows.
        let vsplit = if tp > 1 { Rows } else { Whole };
        let wte = add(
            "embedding.word".into(),
            vec![n(emb || (head && arch.tied), v / tp), d],
            vsplit,
            true,
            std,
            0.0,
        );
        let wpe = add(
            "embedding.position".into(),
            vec![n(emb && arch.rope.is_none(), s), d],
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
        let (qkv_w, up_w, kvw) = (dims.qkv_w(), dims.up_w(), dims.kvw());
        let qkv = if dims.kv == dims.h {
            Cols { blocks: 3 }
        } else {
            Split::Qkv { q: dl, kv: kvw }
        };
        let up = Cols {
            blocks: if arch.swiglu { 2 } else { 1 },
        };
        let up_name = if arch.swiglu { "ffn.gate_up" } else { "ffn.up" };
        let mut layers = Vec::new();
        for i in part.layers.clone() {
            let p = |n: &str| format!("layers.{i}.{n}");
            layers.push(LayerParams {
                ln1_g: add(p("ln1.gamma"), vec![d], Whole, false, 0.0, 1.0),
                ln1_b: add(p("ln1.beta"), vec![n(ln_bias, d)], Whole, false, 0.0, 0.0),
                w_qkv: add(p("attn.qkv.weight"), vec![d, qkv_w], qkv, true, std, 0.0),
                b_qkv: add(
                    p("attn.qkv.bias"),
                    vec![n(bias, qkv_w)],
                    qkv,
                    false,
                    0.0,
                    0.0,
                ),
                w_o: add(p("attn.out.weight"), vec![dl, d], Rows, true, std_out, 0.0),
                b_o: add(p("attn.out.bias"), vec![n(bias, d)], Whole, false, 0.0, 0.0),
                ln2_g: add(p("ln2.gamma"), vec![d], Whole, false, 0.0, 1.0),
                ln2_b: add(p("ln2.beta"), vec![n(ln_bias, d)], Whole, false, 0.0, 0.0),
                w_up: add(
                    p(&format!("{up_name}.weight")),
                    vec![d, up_w],
                    up,
                    true,
                    std,
                    0.0,
                ),
                b_up: add(
                    p(&format!("{up_name}.bias")),
                    vec![n(bias, up_w)],
                    up,
                    false,
                    0.0,
                    0.0,
                ),
                w_down: add(p("ffn.down.weight"), vec![fl, d], Rows, true, std_out, 0.0),
                b_down: add(p("ffn.down.bias"), vec![n(bias, d)], Whole, false, 0.0, 0.0),
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
            vec![n(head && ln_bias, d)],
            Whole,
            false,
            0.0,
            0.0,
        );
        // An untied head: its own vocab-parallel `[V/tp, d]` table, split as the word table.
        let head_w = add(
            "head.weight".into(),
            vec![n(head && !arch.tied, v / tp), d],
            vsplit,
            true,
            std,
            0.0,
        );
        let total = head_w.end;
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
            head_w,
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
                *x = match self.whole_index(t, i) {
                    // Vocabulary padding: zero, and it stays zero (no gradient ever reaches it).
                    None => T::zero(),
                    Some(gi) if t.init_std > 0.0 => {
                        T::of(t.init_std * rng::normal(seed, s, gi as u64))
                    }
                    Some(_) => T::of(t.init_value),
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
            Split::Qkv { q, kv } => {
                let width = q + 2 * kv;
                let (row, j) = (i / width, i % width);
                // (start of the block in the whole row, local width, index in the block)
                let (at, lw, jj) = if j < q {
                    (0, q, j)
                } else if j < q + kv {
                    (q * tp, kv, j - q)
                } else {
                    ((q + kv) * tp, kv, j - q - kv)
                };
                row * width * tp + at + r * lw + jj
            }
        }
    }

    /// [`Layout::global_index`] of an element of the whole model, or `None` for a row of
    /// vocabulary padding (which the whole model does not have).
    pub fn whole_index(&self, t: &TensorInfo, i: usize) -> Option<usize> {
        let gi = self.global_index(t, i);
        let vocab = t.name == "embedding.word" || t.name == "head.weight";
        (!vocab || gi < self.dims.v * self.dims.d).then_some(gi)
    }

    /// Copies this part's values `local` into their places in the whole model's buffer `out`
    /// (laid out by `whole`); vocabulary padding is left out.
    pub fn scatter<T: Copy>(&self, whole: &Layout, local: &[T], out: &mut [T]) {
        for t in &self.tensors {
            let w = &whole.tensors[t.global];
            for i in 0..t.len() {
                if let Some(gi) = self.whole_index(t, i) {
                    out[w.offset + gi] = local[t.offset + i];
                }
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
                if let Some(gi) = self.whole_index(t, j - t.offset) {
                    out[w.offset + gi] = local[j];
                }
            }
        }
    }

    /// This part's values cut from the whole model's buffer `src` (laid out by `whole`);
    /// vocabulary padding is `T::default()` (zero).
    pub fn gather<T: Copy + Default>(&self, whole: &Layout, src: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); self.total];
        for t in &self.tensors {
            let w = &whole.tensors[t.global];
            for i in 0..t.len() {
                if let Some(gi) = self.whole_index(t, i) {
                    out[t.offset + i] = src[w.offset + gi];
                }
            }
        }
        out
    }

    /// The output head's table: the word table when tied, else the head's own.
    pub fn out_w(&self) -> Range<usize> {
        if self.dims.arch.tied {
            self.wte.clone()
        } else {
            self.head_w.clone()
        }
    }

    /// Whether this part holds one of two copies of a word table tied across two parts (the
    /// embedding's and the head's, on different pipeline stages).
    pub fn shares_table(&self) -> bool {
        self.dims.arch.tied && self.part.embedding != self.part.head
    }

    /// Ranges of the elements this device counts in global sums over the model (the gradient
    /// norm): a tensor replicated over the tensor-parallel group counts on its rank 0 only,
    /// and a tied word embedding counts where the embedding lives, not in the head's copy.
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
            .filter(|r| !r.is_empty())
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
