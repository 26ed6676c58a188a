//! The op graph: what one layer (or the embedding, query layer, head) computes on one device.
//!
//! For a micro-batch of `b` sequences of `s` tokens, split `t` ways by op-level (tensor)
//! parallelism in the PanGu-α / Megatron pattern (Q/K/V and FFN-up split by columns, attention
//! output and FFN-down by rows, heads split across the group), every [`Op`] carries its forward
//! and backward FLOPs, the bytes it moves through memory, the activation bytes it keeps for
//! backward, and its local parameters. Tensor-parallel communication points are ops too
//! ([`OpKind::Comm`]), written as Megatron's conjugate pairs: `f` (identity forward,
//! all-reduce backward) before a column-parallel matmul and `g` (all-reduce forward, identity
//! backward) after a row-parallel one; with sequence parallelism `f` becomes all-gather /
//! reduce-scatter and `g` reduce-scatter / all-gather (Korthikanti et al. 2022, §4.2.2).
//!
//! The saved-activation bytes reproduce Korthikanti et al. 2022 ("Reducing Activation
//! Recomputation in Large Transformer Models", §4): per layer `s·b·h·(34 + 5·a·s/h)` bytes at
//! 2-byte activations without parallelism, `s·b·h·(10 + 24/t + 5·a·s/(h·t))` with tensor
//! parallelism, `s·b·h/t·(34 + 5·a·s/h)` with sequence parallelism too. Selective recompute
//! re-runs the attention core (QKᵀ, softmax, dropout, P·V: the ops marked [`Op::selective`])
//! and drops the activations only it needs, the `5·a·s/h` term ([`Op::selective_drop`]),
//! keeping Q, K and V (Korthikanti et al. 2022, §5). This module is the
//! one source of cost numbers for the simulator and the memory model.
//!
//! That is the materialised attention ([`Attention::Materialised`]): the scores, the softmax
//! and the dropout are separate kernels that write the `heads·s·s` matrices to memory and keep
//! them for backward. A fused FlashAttention-style kernel ([`Attention::Flash`]; Dao et al.
//! 2022, "FlashAttention"; Dao 2023, "FlashAttention-2") computes the attention core in one
//! kernel, tile by tile in on-chip memory: it writes no s×s matrix, keeps for backward only
//! Q, K, V, the output and the softmax's log-sum-exp per row (`heads·s·b` fp32 values, the
//! dropout mask being regenerated from the RNG state), and recomputes the scores in backward.
//! Its layer keeps `s·b·h·34 + 4·a·s·b` bytes (no `5·a·s/h` term), and selective recompute has
//! nothing left to drop.

use pangu_hardware::{Bytes, Flops};
use serde::Serialize;

use crate::config::{FfnKind, ModelConfig, NormKind, PositionKind};

/// What kind of computation an op is (efficiency curves are per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A dense matrix multiply `[m, k] × [k, n]`.
    Matmul,
    /// A batch of matrix multiplies (attention scores and context).
    BatchMatmul,
    /// LayerNorm or RMSNorm.
    Norm,
    /// Softmax over attention scores (with scale and causal mask).
    Softmax,
    /// Element-wise activation (GeLU, SwiGLU gate).
    Activation,
    /// Rotary position embedding applied to the queries and keys.
    Rotary,
    /// Dropout and residual add.
    Dropout,
    /// Embedding lookup.
    Embedding,
    /// Softmax cross-entropy over the vocabulary.
    CrossEntropy,
    /// The fused attention core (FlashAttention): QKᵀ, softmax, dropout and P·V in one
    /// kernel, compute-bound, with its own efficiency.
    FlashAttention,
    /// A tensor-parallel collective.
    Comm,
}

/// A collective operation (what is computed, not how: see the algorithm enum in
/// `pangu-strategies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveKind {
    /// Every rank ends with the sum of all ranks' buffers.
    AllReduce,
    /// Every rank ends with the concatenation of all ranks' shards.
    AllGather,
    /// Every rank ends with one shard of the sum.
    ReduceScatter,
    /// One rank's buffer is copied to all.
    Broadcast,
}

/// How the attention core (scores, softmax, dropout, context) is computed.
///
/// The default of a run is the chip's (`ChipSpec::fused_attention`, stated in each cluster
/// preset with its source); `Materialised` is the `Default` of this type because it is what
/// the op graph assumed before the choice existed, so that files written then read the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Attention {
    /// One fused kernel that keeps no s×s matrix (FlashAttention, Dao et al. 2022; its
    /// successors FlashAttention-2/3, cuDNN's fused attention, CANN's FlashAttentionScore).
    Flash,
    /// Separate kernels for QKᵀ, softmax, dropout and P·V, with the `heads·s·s` scores,
    /// probabilities and dropout mask written to memory and kept for backward (Megatron-LM
    /// before FlashAttention; Korthikanti et al. 2022's accounting).
    #[default]
    Materialised,
}

impl Attention {
    /// Both kinds, flash first.
    pub const ALL: [Attention; 2] = [Attention::Flash, Attention::Materialised];
}

impl std::fmt::Display for Attention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attention::Flash => "flash",
            Attention::Materialised => "materialised",
        })
    }
}

impl std::str::FromStr for Attention {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flash" => Ok(Attention::Flash),
            "materialised" | "materialized" => Ok(Attention::Materialised),
            _ => Err(format!(
                "unknown attention {s:?}; use flash (a fused FlashAttention-style kernel) or materialised (separate softmax and dropout kernels keeping the s×s scores)"
            )),
        }
    }
}

impl Serialize for Attention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Attention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A tensor-parallel communication point inside a layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TpComm {
    /// Collective in the forward pass, if any.
    pub fwd: Option<CollectiveKind>,
    /// Collective in the backward pass, if any.
    pub bwd: Option<CollectiveKind>,
    /// Size of the full (unsharded) tensor: for an all-reduce the buffer, for an all-gather
    /// the gathered output, for a reduce-scatter the input.
    pub bytes: Bytes,
}

/// One op of one device's share of a layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Op {
    /// Name, unique inside its part.
    pub name: &'static str,
    /// Kind, for efficiency curves.
    pub kind: OpKind,
    /// Matmul dimensions `[batch, m, n, k]` (zeros for other kinds).
    pub dims: [u64; 4],
    /// Forward FLOPs.
    pub fwd_flops: Flops,
    /// Backward FLOPs (input and weight gradients).
    pub bwd_flops: Flops,
    /// Memory traffic of the forward pass (reads + writes).
    pub fwd_bytes: Bytes,
    /// Memory traffic of the backward pass.
    pub bwd_bytes: Bytes,
    /// Activation bytes kept from forward until backward.
    pub saved: Bytes,
    /// Selective recompute drops `saved` and recomputes this op in backward.
    pub selective: bool,
    /// Of `saved`, the bytes selective recompute does not keep.
    pub selective_drop: Bytes,
    /// Part of the attention core (the ops that meet the other context-parallel ranks'
    /// keys and values): the materialised QKᵀ, softmax, dropout and P·V, or the fused kernel.
    pub attention_core: bool,
    /// Parameter elements held on this device.
    pub params: u64,
    /// Parameters that are a copy of the word embedding (the tied head).
    pub tied_copy: bool,
    /// A transformer layer's linear GEMM (QKV, attention output, FFN): activations times a
    /// weight matrix of `dims[3] × dims[2]` elements. These are the GEMMs Transformer Engine's
    /// fp8 recipe runs in fp8; the output head's GEMM is not one (Megatron-core keeps the
    /// output layer in the training precision), nor are attention's batched matmuls.
    pub layer_linear: bool,
    /// The collective, for [`OpKind::Comm`].
    pub comm: Option<TpComm>,
}

impl Op {
    fn new(name: &'static str, kind: OpKind) -> Op {
        Op {
            name,
            kind,
            dims: [0; 4],
            fwd_flops: Flops(0.0),
            bwd_flops: Flops(0.0),
            fwd_bytes: Bytes(0),
            bwd_bytes: Bytes(0),
            saved: Bytes(0),
            selective: false,
            selective_drop: Bytes(0),
            attention_core: false,
            params: 0,
            tied_copy: false,
            layer_linear: false,
            comm: None,
        }
    }
}

/// Which part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Word and position embeddings (first stage).
    Embedding,
    /// One ordinary transformer block.
    Block,
    /// The PanGu-α query layer.
    QueryLayer,
    /// Final norm, head and loss (last stage).
    Head,
}

/// How a layer is split and sized on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpShape {
    /// Sequences per micro-batch.
    pub micro_batch: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Sequence parallelism on (norm and dropout regions split along the sequence).
    pub seq_parallel: bool,
    /// Bytes per activation element (2 for fp16/bf16, 4 for fp32).
    pub act_bytes: u32,
    /// Context-parallel degree (1: none). The sequence is split over `cp` ranks with causal
    /// load balancing (each rank holds chunks `i` and `2·cp − 1 − i` of `2·cp`, Megatron-core's
    /// context parallelism; Llama 3 paper §3.3.2), so every token-proportional op covers
    /// `s/cp` tokens and the attention scores are `s/cp` queries against all `s` keys: `1/cp`
    /// of the whole sequence's attention work on every rank. The caller checks that `2·cp`
    /// divides the sequence.
    pub cp: u32,
    /// How the attention core is computed.
    pub attention: Attention,
}

impl OpShape {
    /// A shape without context parallelism.
    pub fn new(micro_batch: u32, tp: u32, seq_parallel: bool, act_bytes: u32) -> OpShape {
        OpShape {
            micro_batch,
            tp,
            seq_parallel,
            act_bytes,
            cp: 1,
            attention: Attention::Materialised,
        }
    }

    /// The same shape with the attention core computed as `attention`.
    pub fn with_attention(self, attention: Attention) -> OpShape {
        OpShape { attention, ..self }
    }
}

/// Builds one device's ops of a model part.
pub fn part_ops(m: &ModelConfig, part: Part, sh: OpShape) -> Vec<Op> {
    let g = Geometry::new(m, sh);
    match part {
        Part::Embedding => g.embedding(),
        Part::Block => g.block(false),
        Part::QueryLayer => g.block(true),
        Part::Head => g.head(),
    }
}

/// Sums over a list of ops.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct OpTotals {
    /// Forward FLOPs.
    pub fwd_flops: Flops,
    /// Backward FLOPs.
    pub bwd_flops: Flops,
    /// Saved activation bytes (no recompute).
    pub saved: Bytes,
    /// Of `saved`, the bytes selective recompute drops.
    pub saved_selective: Bytes,
    /// Forward FLOPs of the selectively recomputed ops.
    pub selective_fwd_flops: Flops,
    /// Parameter elements, tied copies included.
    pub params: u64,
}

/// Totals of a list of ops.
pub fn totals(ops: &[Op]) -> OpTotals {
    let mut t = OpTotals::default();
    for o in ops {
        t.fwd_flops += o.fwd_flops;
        t.bwd_flops += o.bwd_flops;
        t.saved += o.saved;
        t.params += o.params;
        t.saved_selective += o.selective_drop;
        if o.selective {
            t.selective_fwd_flops += o.fwd_flops;
        }
    }
    t
}

struct Geometry<'a> {
    m: &'a ModelConfig,
    /// Tokens per micro-batch b·s.
    tok: u64,
    /// Tokens held in sequence-split regions: b·s/t with SP, else b·s.
    tok_sp: u64,
    b: u64,
    /// Tokens of one sequence on this device (`s/cp`): the queries.
    s: u64,
    /// Tokens of the whole sequence: the keys every query attends over.
    s_kv: u64,
    d: u64,
    t: u64,
    e: u64,
    heads_local: u64,
    kv_local: u64,
    f_local: u64,
    sp: bool,
    dropout: bool,
    attention: Attention,
}

impl<'a> Geometry<'a> {
    fn new(m: &'a ModelConfig, sh: OpShape) -> Self {
        let t = u64::from(sh.tp.max(1));
        let b = u64::from(sh.micro_batch);
        let s_kv = u64::from(m.seq_len);
        let s = s_kv / u64::from(sh.cp.max(1));
        let tok = b * s;
        let sp = sh.seq_parallel && t > 1;
        Geometry {
            m,
            tok,
            tok_sp: if sp { tok / t } else { tok },
            b,
            s,
            s_kv,
            d: u64::from(m.hidden),
            t,
            e: u64::from(sh.act_bytes),
            heads_local: u64::from(m.heads) / t,
            kv_local: m.kv_dim() / t,
            f_local: u64::from(m.ffn) / t,
            sp,
            dropout: m.dropout > 0.0,
            attention: sh.attention,
        }
    }

    fn matmul(&self, name: &'static str, m: u64, n: u64, k: u64, saved: Bytes, params: u64) -> Op {
        let mut o = Op::new(name, OpKind::Matmul);
        let f = 2.0 * (m * n * k) as f64;
        o.dims = [1, m, n, k];
        o.fwd_flops = Flops(f);
        o.bwd_flops = Flops(2.0 * f);
        let e = self.e;
        o.fwd_bytes = Bytes((m * k + k * n + m * n) * e);
        o.bwd_bytes = Bytes(2 * (m * k + k * n + m * n) * e);
        o.saved = saved;
        o.params = params;
        o.layer_linear = true;
        o
    }

    fn elementwise(
        &self,
        name: &'static str,
        kind: OpKind,
        elems: u64,
        flops_per: f64,
        saved: Bytes,
    ) -> Op {
        let mut o = Op::new(name, kind);
        o.fwd_flops = Flops(flops_per * elems as f64);
        o.bwd_flops = Flops(2.0 * flops_per * elems as f64);
        o.fwd_bytes = Bytes(2 * elems * self.e);
        o.bwd_bytes = Bytes(3 * elems * self.e);
        o.saved = saved;
        o
    }

    fn norm(&self, name: &'static str) -> Op {
        let n = self.tok_sp * self.d;
        let mut o = self.elementwise(name, OpKind::Norm, n, 5.0, Bytes(n * self.e));
        o.params = match self.m.norm {
            NormKind::Layernorm => 2 * self.d,
            NormKind::Rmsnorm => self.d,
        };
        o
    }

    /// Rotary embedding of this rank's queries and keys (`width` elements per token): each
    /// pair of elements rotated by its position's angle, a memory-bound pass over q and k in
    /// forward and over their gradients in backward (Su et al. 2021, RoFormer, eq. 34;
    /// Megatron-core and Transformer Engine apply it as one fused kernel). Nothing is kept:
    /// the angles are recomputed or read from a table of `seq × head_dim` entries.
    fn rotary(&self, width: u64) -> Op {
        self.elementwise("rope", OpKind::Rotary, self.tok * width, 3.0, Bytes(0))
    }

    /// Dropout + residual add on the hidden stream; keeps a 1-byte mask.
    fn residual(&self, name: &'static str) -> Op {
        let n = self.tok_sp * self.d;
        let mask = if self.dropout { Bytes(n) } else { Bytes(0) };
        self.elementwise(name, OpKind::Dropout, n, 2.0, mask)
    }

    /// `f`: before a column-parallel matmul.
    fn comm_f(&self, name: &'static str) -> Option<Op> {
        (self.t > 1).then(|| {
            let mut o = Op::new(name, OpKind::Comm);
            o.comm = Some(TpComm {
                fwd: self.sp.then_some(CollectiveKind::AllGather),
                bwd: Some(if self.sp {
                    CollectiveKind::ReduceScatter
                } else {
                    CollectiveKind::AllReduce
                }),
                bytes: Bytes(self.tok * self.d * self.e),
            });
            o
        })
    }

    /// `g`: after a row-parallel matmul.
    fn comm_g(&self, name: &'static str) -> Option<Op> {
        (self.t > 1).then(|| {
            let mut o = Op::new(name, OpKind::Comm);
            o.comm = Some(TpComm {
                fwd: Some(if self.sp {
                    CollectiveKind::ReduceScatter
                } else {
                    CollectiveKind::AllReduce
                }),
                bwd: self.sp.then_some(CollectiveKind::AllGather),
                bytes: Bytes(self.tok * self.d * self.e),
            });
            o
        })
    }

    /// Under sequence parallelism a column-parallel matmul keeps only its sequence shard of
    /// the input, so backward all-gathers it again before the weight gradient (Korthikanti
    /// et al. 2022, §4.2.3). Placed after the matmul, so that it runs before its backward.
    fn regather(&self, name: &'static str) -> Option<Op> {
        self.sp.then(|| {
            let mut o = Op::new(name, OpKind::Comm);
            o.comm = Some(TpComm {
                fwd: None,
                bwd: Some(CollectiveKind::AllGather),
                bytes: Bytes(self.tok * self.d * self.e),
            });
            o
        })
    }

    /// The bytes a column-parallel matmul keeps of its input: the full input, or the
    /// sequence shard under SP (re-gathered in backward).
    fn col_input(&self) -> Bytes {
        Bytes(self.tok_sp * self.d * self.e)
    }

    fn bias(&self, n: u64) -> u64 {
        if self.m.bias {
            n
        } else {
            0
        }
    }

    fn block(&self, query: bool) -> Vec<Op> {
        let (tok, d, e) = (self.tok, self.d, self.e);
        let hd = u64::from(self.m.head_dim());
        let (hl, kvl, fl) = (self.heads_local, self.kv_local, self.f_local);
        let qd = hl * hd;
        let mut ops = vec![self.norm("ln1")];
        ops.extend(self.comm_f("tp_f_attn"));
        if query {
            // Query from the query-position table, K and V from the hidden states.
            let mut q = self.matmul(
                "q_proj",
                tok,
                qd,
                d,
                self.col_input(),
                d * qd + self.bias(qd),
            );
            q.params += u64::from(self.m.position_rows()) * d; // the query-position table (replicated)
            ops.push(q);
            ops.push(self.matmul(
                "kv_proj",
                tok,
                2 * kvl,
                d,
                self.col_input(),
                d * 2 * kvl + self.bias(2 * kvl),
            ));
        } else {
            let n = qd + 2 * kvl;
            ops.push(self.matmul(
                "qkv_proj",
                tok,
                n,
                d,
                self.col_input(),
                d * n + self.bias(n),
            ));
        }
        ops.extend(self.regather("tp_regather_attn"));
        if self.m.position == PositionKind::Rotary {
            ops.push(self.rotary(qd + kvl));
        }
        match self.attention {
            Attention::Materialised => self.materialised_attention(&mut ops, qd, hd),
            Attention::Flash => ops.push(self.flash_attention(qd, hd)),
        }
        ops.push(self.matmul(
            "attn_out",
            tok,
            d,
            qd,
            Bytes(tok * qd * e),
            qd * d + self.bias(d),
        ));
        ops.extend(self.comm_g("tp_g_attn"));
        ops.push(self.residual("attn_residual"));
        ops.push(self.norm("ln2"));
        ops.extend(self.comm_f("tp_f_ffn"));
        match self.m.ffn_kind {
            FfnKind::Gelu => {
                ops.push(self.matmul(
                    "ffn_up",
                    tok,
                    fl,
                    d,
                    self.col_input(),
                    d * fl + self.bias(fl),
                ));
                ops.push(self.elementwise(
                    "gelu",
                    OpKind::Activation,
                    tok * fl,
                    8.0,
                    Bytes(tok * fl * e),
                ));
            }
            FfnKind::Swiglu => {
                ops.push(self.matmul(
                    "ffn_up_gate",
                    tok,
                    2 * fl,
                    d,
                    self.col_input(),
                    2 * d * fl + self.bias(2 * fl),
                ));
                ops.push(self.elementwise(
                    "swiglu",
                    OpKind::Activation,
                    tok * fl,
                    8.0,
                    Bytes(2 * tok * fl * e),
                ));
            }
        }
        ops.extend(self.regather("tp_regather_ffn"));
        ops.push(self.matmul(
            "ffn_down",
            tok,
            d,
            fl,
            Bytes(tok * fl * e),
            fl * d + self.bias(d),
        ));
        ops.extend(self.comm_g("tp_g_ffn"));
        ops.push(self.residual("ffn_residual"));
        ops
    }

    /// The attention core as separate kernels: QKᵀ, softmax, dropout and P·V, with the
    /// `heads·s·s` scores, probabilities and dropout mask written to memory and kept.
    fn materialised_attention(&self, ops: &mut Vec<Op>, qd: u64, hd: u64) {
        let (tok, e, hl, kvl) = (self.tok, self.e, self.heads_local, self.kv_local);
        let mut scores = Op::new("attn_scores", OpKind::BatchMatmul);
        let bh = self.b * hl;
        // With context parallelism the local queries meet the whole sequence's keys (the
        // K/V blocks of the other ranks arrive by the cp exchange).
        let (sq, sk) = (self.s, self.s_kv);
        let sf = 2.0 * (bh * sq * sk * hd) as f64;
        scores.dims = [bh, sq, sk, hd];
        scores.fwd_flops = Flops(sf);
        scores.bwd_flops = Flops(2.0 * sf);
        scores.fwd_bytes = Bytes((2 * tok * qd + bh * sq * sk) * e);
        scores.bwd_bytes = Bytes(2 * (2 * tok * qd + bh * sq * sk) * e);
        scores.saved = Bytes(tok * (qd + kvl) * e); // Q and K
        scores.selective = true;
        scores.attention_core = true;
        let (scores_fwd_bytes, scores_bwd_bytes) = (scores.fwd_bytes, scores.bwd_bytes);
        ops.push(scores);
        let probs = bh * sq * sk;
        let mut sm = self.elementwise("softmax", OpKind::Softmax, probs, 5.0, Bytes(probs * e));
        sm.selective = true;
        sm.selective_drop = sm.saved;
        sm.attention_core = true;
        ops.push(sm);
        if self.dropout {
            // mask (1 byte) + dropped probabilities (the input of P·V)
            let mut dr = self.elementwise(
                "attn_dropout",
                OpKind::Dropout,
                probs,
                2.0,
                Bytes(probs + probs * e),
            );
            dr.selective = true;
            dr.selective_drop = dr.saved;
            dr.attention_core = true;
            ops.push(dr);
        }
        let mut ctx = Op::new("attn_context", OpKind::BatchMatmul);
        ctx.dims = [bh, sq, hd, sk];
        ctx.fwd_flops = Flops(sf);
        ctx.bwd_flops = Flops(2.0 * sf);
        ctx.fwd_bytes = scores_fwd_bytes;
        ctx.bwd_bytes = scores_bwd_bytes;
        ctx.saved = Bytes(tok * kvl * e); // V
        ctx.selective = true;
        ctx.attention_core = true;
        ops.push(ctx);
    }

    /// The attention core as one fused kernel (FlashAttention; Dao 2023, "FlashAttention-2",
    /// §3 and §4.1). Causal: the blocks wholly above the diagonal are skipped, so the forward
    /// runs half of the full `4·b·heads·s_q·s_kv·head_dim` FLOPs (FlashAttention-2's own
    /// count; ASSUMPTION: every model here is a causal decoder). The backward runs 2.5× the
    /// forward: five matrix products (the recomputed QKᵀ, dV, dP, dQ, dK) for the forward's
    /// two. Memory traffic is Q, K, V, the output, their gradients and the log-sum-exp; no
    /// s×s matrix reaches memory. It keeps Q, K, V and the log-sum-exp per row (fp32) for
    /// backward; the output is the kept input of the projection after it, and the dropout
    /// mask is regenerated from the RNG state. Nothing is left for selective recompute.
    fn flash_attention(&self, qd: u64, hd: u64) -> Op {
        let (tok, e, kvl) = (self.tok, self.e, self.kv_local);
        let bh = self.b * self.heads_local;
        let (sq, sk) = (self.s, self.s_kv);
        let mut o = Op::new("flash_attention", OpKind::FlashAttention);
        o.dims = [bh, sq, sk, hd];
        let full = 4.0 * (bh * sq * sk * hd) as f64;
        o.fwd_flops = Flops(full / 2.0);
        o.bwd_flops = Flops(2.5 * o.fwd_flops.0);
        let q_o = 2 * tok * qd * e; // Q in, O out
        let kv = 2 * self.b * sk * kvl * e; // K and V over the whole sequence
        let lse = bh * sq * 4;
        o.fwd_bytes = Bytes(q_o + kv + lse);
        // Reads Q, K, V, O, dO and the log-sum-exp; writes dQ, dK, dV.
        o.bwd_bytes = Bytes(2 * q_o + 2 * kv + lse);
        o.saved = Bytes(tok * (qd + 2 * kvl) * e + lse);
        o.attention_core = true;
        o
    }

    fn embedding(&self) -> Vec<Op> {
        let (tok, d, e) = (self.tok, self.d, self.e);
        let mut emb = Op::new("embed", OpKind::Embedding);
        emb.fwd_flops = Flops((tok * d) as f64);
        emb.bwd_flops = Flops((tok * d) as f64);
        emb.fwd_bytes = Bytes(2 * tok * d * e);
        emb.bwd_bytes = Bytes(2 * tok * d * e);
        emb.params = u64::from(self.m.vocab) / self.t * d
            + if self.m.position == PositionKind::Learned {
                u64::from(self.m.position_rows()) * d
            } else {
                0
            };
        let mut ops = vec![emb];
        if self.t > 1 {
            // Vocab-parallel lookup: partial rows summed across the group.
            let mut o = Op::new("tp_embed_reduce", OpKind::Comm);
            o.comm = Some(TpComm {
                fwd: Some(if self.sp {
                    CollectiveKind::ReduceScatter
                } else {
                    CollectiveKind::AllReduce
                }),
                bwd: self.sp.then_some(CollectiveKind::AllGather),
                bytes: Bytes(tok * d * e),
            });
            ops.push(o);
        }
        ops.push(self.residual("embed_dropout"));
        ops
    }

    fn head(&self) -> Vec<Op> {
        let (tok, d) = (self.tok, self.d);
        let v_local = u64::from(self.m.vocab) / self.t;
        let mut ops = vec![self.norm("final_norm")];
        ops.extend(self.comm_f("tp_f_head"));
        let mut head = self.matmul("logits", tok, v_local, d, self.col_input(), v_local * d);
        head.tied_copy = self.m.tied_embeddings;
        head.layer_linear = false;
        ops.push(head);
        // fp32 logits kept for the softmax backward.
        let mut ce = self.elementwise(
            "cross_entropy",
            OpKind::CrossEntropy,
            tok * v_local,
            5.0,
            Bytes(tok * v_local * 4),
        );
        ce.fwd_bytes = Bytes(tok * v_local * (self.e + 4));
        ops.push(ce);
        if self.t > 1 {
            // Vocab-parallel cross-entropy: max, sum of exponentials and target logit per token.
            let mut o = Op::new("tp_loss_reduce", OpKind::Comm);
            o.comm = Some(TpComm {
                fwd: Some(CollectiveKind::AllReduce),
                bwd: None,
                bytes: Bytes(3 * tok * 4),
            });
            ops.push(o);
        }
        ops
    }
}

#[cfg(test)]
mod tests;
