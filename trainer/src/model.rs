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
use serde::Serialize;

use crate::kernels::{self as k, AttnDims, Dropout};
use crate::real::Real;
use crate::rng;
use crate::TrainError;

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
}

impl Dims {
    /// Head size.
    pub fn hd(&self) -> usize {
        self.d / self.h
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
}

impl Layout {
    /// The layout of `cfg`; errors name the field the trainer cannot run.
    pub fn new(cfg: &ModelConfig) -> Result<Layout, TrainError> {
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
        let dims = Dims {
            d: cfg.hidden as usize,
            h: cfg.heads as usize,
            f: cfg.ffn as usize,
            v: cfg.vocab as usize,
            s: cfg.seq_len as usize,
            layers: cfg.layers as usize,
            query: cfg.query_layer,
        };
        let (d, f, v, s, l) = (dims.d, dims.f, dims.v, dims.s, dims.layers);
        let mut tensors = Vec::new();
        let mut off = 0usize;
        let mut add = |name: String, shape: Vec<usize>, decay: bool, std: f64, value: f64| {
            let len: usize = shape.iter().product();
            tensors.push(TensorInfo {
                name,
                shape,
                offset: off,
                decay,
                init_std: std,
                init_value: value,
            });
            off += len;
            off - len..off
        };
        // Initialisation of [R] pangu_alpha.py (pangu-alpha.md §1.6): embeddings N(0, 0.02);
        // the projections into the residual stream N(0, 0.02/sqrt(2L)); FFN up N(0, 0.02);
        // biases 0, LayerNorm gain 1. Q/K/V use MindSpore's Dense default, whose value the
        // reference could not confirm: N(0, 0.02) as every other input projection here.
        let std = 0.02;
        let std_out = 0.02 / (2.0 * l as f64).sqrt();
        let wte = add("embedding.word".into(), vec![v, d], true, std, 0.0);
        let wpe = add("embedding.position".into(), vec![s, d], true, std, 0.0);
        let wqe = add(
            "embedding.query".into(),
            vec![if dims.query { s } else { 0 }, d],
            true,
            std,
            0.0,
        );
        let mut layers = Vec::new();
        for i in 0..l {
            let p = |n: &str| format!("layers.{i}.{n}");
            layers.push(LayerParams {
                ln1_g: add(p("ln1.gamma"), vec![d], false, 0.0, 1.0),
                ln1_b: add(p("ln1.beta"), vec![d], false, 0.0, 0.0),
                w_qkv: add(p("attn.qkv.weight"), vec![d, 3 * d], true, std, 0.0),
                b_qkv: add(p("attn.qkv.bias"), vec![3 * d], false, 0.0, 0.0),
                w_o: add(p("attn.out.weight"), vec![d, d], true, std_out, 0.0),
                b_o: add(p("attn.out.bias"), vec![d], false, 0.0, 0.0),
                ln2_g: add(p("ln2.gamma"), vec![d], false, 0.0, 1.0),
                ln2_b: add(p("ln2.beta"), vec![d], false, 0.0, 0.0),
                w_up: add(p("ffn.up.weight"), vec![d, f], true, std, 0.0),
                b_up: add(p("ffn.up.bias"), vec![f], false, 0.0, 0.0),
                w_down: add(p("ffn.down.weight"), vec![f, d], true, std_out, 0.0),
                b_down: add(p("ffn.down.bias"), vec![d], false, 0.0, 0.0),
            });
        }
        let lnf_g = add("final_ln.gamma".into(), vec![d], false, 0.0, 1.0);
        let lnf_b = add("final_ln.beta".into(), vec![d], false, 0.0, 0.0);
        let total = lnf_b.end;
        if !dims.query {
            tensors.retain(|t| t.name != "embedding.query");
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
        })
    }

    /// Initial parameters for `seed` (each element a pure function of seed, tensor and index).
    pub fn init<T: Real>(&self, seed: u64) -> Vec<T> {
        let mut p = vec![T::zero(); self.total];
        for (ti, t) in self.tensors.iter().enumerate() {
            let s = rng::stream(&[0x1417, ti as u64]);
            for (i, x) in p[t.range()].iter_mut().enumerate() {
                *x = if t.init_std > 0.0 {
                    T::of(t.init_std * rng::normal(seed, s, i as u64))
                } else {
                    T::of(t.init_value)
                };
            }
        }
        p
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
    /// Full rematerialisation: one layer's buffers, refilled by recomputation in backward.
    remat: bool,
    /// Residual stream entering each layer, and leaving the last `[L+1][b·s·d]`.
    res: Vec<Vec<T>>,
    layers: Vec<LayerActs<T>>,
    lnf: Vec<T>,
    lnf_mean: Vec<T>,
    lnf_rstd: Vec<T>,
    /// Logits, then probabilities, then their gradient `[b·s·V]`.
    logits: Vec<T>,
    /// Per-row losses (nats).
    pub losses: Vec<f64>,
    // Backward scratch.
    dx: Vec<T>,
    dtmp: Vec<T>,
    dtmp2: Vec<T>,
    dqkv: Vec<T>,
    dff: Vec<T>,
    dscratch: Vec<T>,
}

impl<T: Real> Acts<T> {
    /// Buffers for micro-batches of `b` samples; `dropout` says whether to keep the dropped
    /// attention probabilities too.
    pub fn new(dims: &Dims, b: usize, dropout: bool) -> Acts<T> {
        Acts::with_remat(dims, b, dropout, false)
    }

    /// Buffers under full rematerialisation (`remat`): only each layer's input is kept; one
    /// layer's saved activations are recomputed in backward (Chen et al. 2016; PanGu-α's
    /// `recompute`), so the results equal those without it.
    pub fn with_remat(dims: &Dims, b: usize, dropout: bool, remat: bool) -> Acts<T> {
        let (d, f, v, s, h) = (dims.d, dims.f, dims.v, dims.s, dims.h);
        let rows = b * s;
        let z = |n: usize| vec![T::zero(); n];
        let kept = if remat { 1 } else { dims.layers };
        let layers = (0..kept)
            .map(|i| LayerActs {
                ln1: z(rows * d),
                ln1_mean: z(rows),
                ln1_rstd: z(rows),
                qin: if dims.query && (remat || i + 1 == dims.layers) {
                    z(rows * d)
                } else {
                    Vec::new()
                },
                qkv: z(rows * 3 * d),
                probs: z(b * h * s * s),
                probs_drop: if dropout {
                    z(b * h * s * s)
                } else {
                    Vec::new()
                },
                att: z(rows * d),
                mid: z(rows * d),
                ln2: z(rows * d),
                ln2_mean: z(rows),
                ln2_rstd: z(rows),
                up: z(rows * f),
                act: z(rows * f),
            })
            .collect();
        Acts {
            b,
            remat,
            res: (0..=dims.layers).map(|_| z(rows * d)).collect(),
            layers,
            lnf: z(rows * d),
            lnf_mean: z(rows),
            lnf_rstd: z(rows),
            logits: z(rows * v),
            losses: vec![0.0; rows],
            dx: z(rows * d),
            dtmp: z(rows * d),
            dtmp2: z(rows * d),
            dqkv: z(rows * 3 * d),
            dff: z(rows * f),
            dscratch: z(b * s * s),
        }
    }

    /// Bytes [`Acts::new`] would allocate, without allocating.
    pub fn bytes_for(dims: &Dims, b: usize, dropout: bool) -> u64 {
        Acts::<T>::bytes_for_remat(dims, b, dropout, false)
    }

    /// [`Acts::bytes_for`] with or without full rematerialisation.
    pub fn bytes_for_remat(dims: &Dims, b: usize, dropout: bool, remat: bool) -> u64 {
        let (d, f, v, s, h, l) = (dims.d, dims.f, dims.v, dims.s, dims.h, dims.layers);
        let kept = if remat { 1 } else { l };
        let rows = b * s;
        let probs = b * h * s * s * (1 + usize::from(dropout));
        let per_layer = rows * (7 * d + 4 + 2 * f) + probs;
        let qin = if dims.query { rows * d } else { 0 };
        let other = (l + 1) * rows * d + rows * (d + 2) + rows * v + rows * (6 * d + f) + b * s * s;
        ((kept * per_layer + qin + other) * std::mem::size_of::<T>() + rows * 8) as u64
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
            + self.dscratch.len();
        (l + r + other) as u64 * sz + self.losses.len() as u64 * 8
    }

    /// Probabilities of the last forward pass (`[b·s, V]`), before backward overwrites them.
    pub fn probs(&self) -> &[T] {
        &self.logits
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

    /// Forward pass of layer `l`: `y = layer(x)`, saving what backward needs in `a`.
    #[allow(clippy::too_many_arguments)]
    fn layer_fwd<T: Real>(
        &self,
        p: &[T],
        l: usize,
        x: &[T],
        y: &mut [T],
        a: &mut LayerActs<T>,
        batch: &Batch,
        step: u64,
        train: bool,
        ad: AttnDims,
    ) {
        let Dims { d, f, s, .. } = self.dims();
        let rows = batch.b * s;
        let lay = &self.layout;
        let nl = lay.layers.len();
        let lp = &lay.layers[l];
        let query = self.dims().query && l + 1 == nl;
        k::layernorm_fwd(
            &mut a.ln1,
            &mut a.ln1_mean,
            &mut a.ln1_rstd,
            x,
            &p[lp.ln1_g.clone()],
            &p[lp.ln1_b.clone()],
            d,
        );
        let w = &p[lp.w_qkv.clone()];
        let bq = &p[lp.b_qkv.clone()];
        if query {
            k::lookup_fwd(&mut a.qin, &batch.pos, &p[lay.wqe.clone()], d);
            k::linear_fwd(
                &mut a.qkv,
                3 * d,
                &a.qin,
                d,
                w,
                3 * d,
                Some(&bq[..d]),
                rows,
                d,
                d,
            );
            k::linear_fwd(
                &mut a.qkv[d..],
                3 * d,
                &a.ln1,
                d,
                &w[d..],
                3 * d,
                Some(&bq[d..]),
                rows,
                d,
                2 * d,
            );
        } else {
            k::linear_fwd(
                &mut a.qkv,
                3 * d,
                &a.ln1,
                d,
                w,
                3 * d,
                Some(bq),
                rows,
                d,
                3 * d,
            );
        }
        k::attention_fwd(
            &mut a.att,
            &mut a.probs,
            &mut a.probs_drop,
            &a.qkv,
            &batch.start,
            ad,
            self.drop(train, step, l, Site::AttnProbs),
            &batch.sample_ids,
        );
        // mid = x + dropout(att·Wo + bo)
        k::linear_fwd(
            &mut a.mid,
            d,
            &a.att,
            d,
            &p[lp.w_o.clone()],
            d,
            Some(&p[lp.b_o.clone()]),
            rows,
            d,
            d,
        );
        self.drop(train, step, l, Site::AttnOut)
            .apply(&mut a.mid, d, &batch.row_ids);
        k::add_into(&mut a.mid, x);
        // y = mid + dropout(FFN(LN2(mid)))
        let m = &a.mid;
        ffn_fwd(
            p,
            lp,
            m,
            FfnBufs {
                ln: &mut a.ln2,
                mean: &mut a.ln2_mean,
                rstd: &mut a.ln2_rstd,
                up: &mut a.up,
                act: &mut a.act,
            },
            y,
            rows,
            d,
            f,
        );
        self.drop(train, step, l, Site::FfnOut)
            .apply(y, d, &batch.row_ids);
        k::add_into(y, &a.mid);
    }

    /// Forward pass of `batch`; returns Σ weight·loss over rows (the step's loss contribution)
    /// and leaves per-row losses in `acts.losses`. `step` keys the dropout masks.
    pub fn forward<T: Real>(
        &self,
        p: &[T],
        acts: &mut Acts<T>,
        batch: &Batch,
        step: u64,
        train: bool,
    ) -> f64 {
        let Dims { d, h, v, s, .. } = self.dims();
        let rows = batch.b * s;
        assert_eq!(
            acts.b, batch.b,
            "activation buffers were sized for another batch"
        );
        let lay = &self.layout;
        k::embed_fwd(
            &mut acts.res[0],
            &batch.tokens,
            &batch.pos,
            &p[lay.wte.clone()],
            &p[lay.wpe.clone()],
            d,
        );
        self.drop(train, step, 0, Site::Embedding)
            .apply(&mut acts.res[0], d, &batch.row_ids);
        let ad = AttnDims {
            b: batch.b,
            s,
            h,
            hd: d / h,
        };
        let nl = lay.layers.len();
        for l in 0..nl {
            let (before, after) = acts.res.split_at_mut(l + 1);
            let slot = if acts.remat { 0 } else { l };
            self.layer_fwd(
                p,
                l,
                &before[l],
                &mut after[0],
                &mut acts.layers[slot],
                batch,
                step,
                train,
                ad,
            );
        }
        k::layernorm_fwd(
            &mut acts.lnf,
            &mut acts.lnf_mean,
            &mut acts.lnf_rstd,
            &acts.res[nl],
            &p[lay.lnf_g.clone()],
            &p[lay.lnf_b.clone()],
            d,
        );
        // logits = lnf·wteᵀ
        crate::linalg::matmul(
            &mut acts.logits,
            v,
            crate::linalg::n(&acts.lnf, d),
            crate::linalg::t(&p[lay.wte.clone()], d),
            rows,
            d,
            v,
            false,
        );
        k::softmax_xent_fwd(&mut acts.logits, &mut acts.losses, &batch.targets, v);
        acts.losses
            .iter()
            .zip(&batch.weights)
            .map(|(l, w)| l * w)
            .sum()
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
        let Dims { d, h, f, v, s, .. } = self.dims();
        let rows = batch.b * s;
        let lay = &self.layout;
        let nl = lay.layers.len();
        k::softmax_xent_bwd(&mut acts.logits, &batch.targets, &batch.weights, v);
        // dlnf = dlogits·wte ; dwte += dlogitsᵀ·lnf
        {
            let (gw, _) = split_range(g, &lay.wte);
            crate::linalg::matmul(
                gw,
                d,
                crate::linalg::t(&acts.logits, v),
                crate::linalg::n(&acts.lnf, d),
                v,
                rows,
                d,
                true,
            );
        }
        crate::linalg::matmul(
            &mut acts.dtmp,
            d,
            crate::linalg::n(&acts.logits, v),
            crate::linalg::n(&p[lay.wte.clone()], d),
            rows,
            v,
            d,
            false,
        );
        acts.dx.fill(T::zero());
        {
            let (dg, db) = two_ranges(g, &lay.lnf_g, &lay.lnf_b);
            k::layernorm_bwd(
                &mut acts.dx,
                dg,
                db,
                &acts.dtmp,
                &acts.res[nl],
                &p[lay.lnf_g.clone()],
                &acts.lnf_mean,
                &acts.lnf_rstd,
                d,
            );
        }
        let ad = AttnDims {
            b: batch.b,
            s,
            h,
            hd: d / h,
        };
        for l in (0..nl).rev() {
            let lp = &lay.layers[l];
            let query = self.dims().query && l + 1 == nl;
            let slot = if acts.remat {
                // Recompute this layer's forward from its kept input (same dropout masks, so
                // the same values; its output rewrites res[l+1] with identical numbers).
                let (before, after) = acts.res.split_at_mut(l + 1);
                self.layer_fwd(
                    p,
                    l,
                    &before[l],
                    &mut after[0],
                    &mut acts.layers[0],
                    batch,
                    step,
                    train,
                    ad,
                );
                0
            } else {
                l
            };
            let x = &acts.res[l];
            let a = &acts.layers[slot];
            // y = mid + drop(act·Wd + bd): the FFN branch's gradient is drop-mask ⊙ dx.
            let dy = self.drop(train, step, l, Site::FfnOut).masked(
                &acts.dx,
                &mut acts.dtmp,
                d,
                &batch.row_ids,
            );
            {
                let (gw, gb) = two_ranges(g, &lp.w_down, &lp.b_down);
                k::linear_bwd(
                    Some((&mut acts.dff, f, false)),
                    gw,
                    d,
                    Some(gb),
                    dy,
                    d,
                    &a.act,
                    f,
                    &p[lp.w_down.clone()],
                    rows,
                    f,
                    d,
                );
            }
            k::gelu_bwd_inplace(&mut acts.dff, &a.up, f);
            {
                let (gw, gb) = two_ranges(g, &lp.w_up, &lp.b_up);
                k::linear_bwd(
                    Some((&mut acts.dtmp2, d, false)),
                    gw,
                    f,
                    Some(gb),
                    &acts.dff,
                    f,
                    &a.ln2,
                    d,
                    &p[lp.w_up.clone()],
                    rows,
                    d,
                    f,
                );
            }
            {
                let (dg, db) = two_ranges(g, &lp.ln2_g, &lp.ln2_b);
                k::layernorm_bwd(
                    &mut acts.dx,
                    dg,
                    db,
                    &acts.dtmp2,
                    &a.mid,
                    &p[lp.ln2_g.clone()],
                    &a.ln2_mean,
                    &a.ln2_rstd,
                    d,
                );
            }
            // mid = x + drop(att·Wo + bo)
            let dy = self.drop(train, step, l, Site::AttnOut).masked(
                &acts.dx,
                &mut acts.dtmp,
                d,
                &batch.row_ids,
            );
            {
                let (gw, gb) = two_ranges(g, &lp.w_o, &lp.b_o);
                k::linear_bwd(
                    Some((&mut acts.dtmp2, d, false)),
                    gw,
                    d,
                    Some(gb),
                    dy,
                    d,
                    &a.att,
                    d,
                    &p[lp.w_o.clone()],
                    rows,
                    d,
                    d,
                );
            }
            k::attention_bwd(
                &mut acts.dqkv,
                &mut acts.dscratch,
                &acts.dtmp2,
                &a.qkv,
                &a.probs,
                &a.probs_drop,
                &batch.start,
                ad,
                self.drop(train, step, l, Site::AttnProbs),
                &batch.sample_ids,
            );
            let w = &p[lp.w_qkv.clone()];
            {
                let (gw, gb) = two_ranges(g, &lp.w_qkv, &lp.b_qkv);
                if query {
                    // Q from the query table, K and V from LN1(x).
                    k::linear_bwd(
                        Some((&mut acts.dtmp, d, false)),
                        gw,
                        3 * d,
                        Some(&mut gb[..d]),
                        &acts.dqkv,
                        3 * d,
                        &a.qin,
                        d,
                        w,
                        rows,
                        d,
                        d,
                    );
                    k::linear_bwd(
                        Some((&mut acts.dtmp2, d, false)),
                        &mut gw[d..],
                        3 * d,
                        Some(&mut gb[d..]),
                        &acts.dqkv[d..],
                        3 * d,
                        &a.ln1,
                        d,
                        &w[d..],
                        rows,
                        d,
                        2 * d,
                    );
                } else {
                    k::linear_bwd(
                        Some((&mut acts.dtmp2, d, false)),
                        gw,
                        3 * d,
                        Some(gb),
                        &acts.dqkv,
                        3 * d,
                        &a.ln1,
                        d,
                        w,
                        rows,
                        d,
                        3 * d,
                    );
                }
            }
            if query {
                let (gq, _) = split_range(g, &lay.wqe);
                k::lookup_bwd(gq, &acts.dtmp, &batch.pos, d);
            }
            {
                let (dg, db) = two_ranges(g, &lp.ln1_g, &lp.ln1_b);
                k::layernorm_bwd(
                    &mut acts.dx,
                    dg,
                    db,
                    &acts.dtmp2,
                    x,
                    &p[lp.ln1_g.clone()],
                    &a.ln1_mean,
                    &a.ln1_rstd,
                    d,
                );
            }
        }
        self.drop(train, step, 0, Site::Embedding)
            .apply(&mut acts.dx, d, &batch.row_ids);
        {
            let (gw, _) = split_range(g, &lay.wte);
            k::lookup_bwd(gw, &acts.dx, &batch.tokens, d);
        }
        {
            let (gp, _) = split_range(g, &lay.wpe);
            k::lookup_bwd(gp, &acts.dx, &batch.pos, d);
        }
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

/// `out = GeLU(LN2(x)·W_up + b_up)·W_down + b_down` (no dropout, no residual): shared by
/// training and KV-cache decoding.
pub(crate) fn ffn_fwd<T: Real>(
    p: &[T],
    lp: &LayerParams,
    x: &[T],
    b: FfnBufs<'_, T>,
    out: &mut [T],
    rows: usize,
    d: usize,
    f: usize,
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
    k::linear_fwd(
        b.up,
        f,
        b.ln,
        d,
        &p[lp.w_up.clone()],
        f,
        Some(&p[lp.b_up.clone()]),
        rows,
        d,
        f,
    );
    k::gelu_fwd(b.act, b.up, f);
    k::linear_fwd(
        out,
        d,
        b.act,
        f,
        &p[lp.w_down.clone()],
        d,
        Some(&p[lp.b_down.clone()]),
        rows,
        f,
        d,
    );
}

/// The sub-slice of `r` (and the rest, unused).
fn split_range<'a, T>(g: &'a mut [T], r: &Range<usize>) -> (&'a mut [T], ()) {
    (&mut g[r.clone()], ())
}

/// Two disjoint sub-slices (`a` before `b` in the buffer).
fn two_ranges<'a, T>(
    g: &'a mut [T],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [T], &'a mut [T]) {
    debug_assert!(a.end <= b.start);
    let (lo, hi) = g.split_at_mut(b.start);
    (&mut lo[a.clone()], &mut hi[..b.len()])
}
