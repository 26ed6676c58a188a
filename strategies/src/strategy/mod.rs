//! What a user (or the search) writes: a [`StrategySpec`] with optional fields, and the
//! [`Strategy`] it resolves to once the model, cluster and reference defaults are known.
//!
//! Resolution rules (the same in every command):
//! - Layers of input, later wins: the model preset's reference strategy, then a `--strategy`
//!   file, then inline flags.
//! - `devices` is the whole cluster unless given. `dp` fills it (`devices / (tp·pp)`) unless
//!   given, so the reference's `dp` never sticks when `tp` or `pp` change.
//! - The global batch and the sequence length (`seq_len`) are the run's: given, else a legacy
//!   model file's own keys, else the model preset's reference run (`reference::run_shape`),
//!   else an error saying what to pass; whatever the strategy, `dp` and the micro-batches
//!   only split the batch. `micro_batches` follows from `global / (dp · micro_batch_size)`
//!   unless given. An inherited micro-batch size that does not divide the per-replica batch is
//!   lowered to the largest one that does (and the plan says so); given values never change.

use pangu_hardware::{Bytes, ChipSpec};
use pangu_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::collective::{Collectives, CollectivesSpec};
use crate::PlanError;

mod kinds;
mod resolve;

pub use kinds::{
    Axis, BackwardPrefetch, CpComm, GatherPrecision, GradAccumulation, OptShard, Precision,
    RankOrder, Remat, ScheduleKind,
};
pub use pangu_model::ops::Attention;
pub use resolve::resolve;

/// A strategy as written in a TOML file or on the command line: every field optional.
/// TOML keys are the CLI flag names with underscores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// Chips the job uses (default: the whole cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u32>,
    /// Data-parallel degree (default: fills the devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<u32>,
    /// Op-level (tensor) parallel degree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<u32>,
    /// Pipeline stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pp: Option<u32>,
    /// Context-parallel degree: the sequence split over this many ranks (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cp: Option<u32>,
    /// How the context-parallel ranks exchange K/V: `ring` (default) or `all-gather`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cp_comm: Option<CpComm>,
    /// Micro-batches per step per pipeline (gradient-accumulation steps when pp = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches: Option<u32>,
    /// Sequences per micro-batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<u32>,
    /// Sequences per optimizer step, all replicas together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<u32>,
    /// Training sequence length (tokens per sample): a run setting, not a model key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<u32>,
    /// Pipeline schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleKind>,
    /// Optimizer sharding over the data-parallel group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt_shard: Option<OptShard>,
    /// Rematerialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remat: Option<Remat>,
    /// Sequence parallelism (with tp > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_parallel: Option<bool>,
    /// Training precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Rank numbering order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_order: Option<RankOrder>,
    /// Layers per pipeline stage (per model chunk with interleaving), first stage first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_per_stage: Option<Vec<u32>>,
    /// Gradient-reduction bucket size (fusion buffer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_bucket: Option<Bytes>,
    /// ZeRO-3 weight gathers: `compute` precision (default) or `fp32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero3_gather: Option<GatherPrecision>,
    /// ZeRO-3 backward prefetch: `pre` (default) or `post`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero3_prefetch: Option<BackwardPrefetch>,
    /// Collective algorithm per group (`[collectives]`: `tp`, `dp`, `opt`, `pp` =
    /// `auto | ring | tree | halving-doubling | hierarchical`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collectives: Option<CollectivesSpec>,
    /// The vocabulary is padded to a multiple of this × tp (Megatron's
    /// `--make-vocab-size-divisible-by`; default 128, 1 pads only to a multiple of tp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_divisible_by: Option<u32>,
    /// The attention kernel: `flash` (fused, no s×s matrix kept) or `materialised`
    /// (default: [`default_attention`], materialised on every chip for now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<Attention>,
    /// Tensor-parallel communication overlapped with the GEMMs it feeds or drains
    /// (Megatron-LM's `--tp-comm-overlap`, Transformer Engine's userbuffers); needs tp > 1
    /// and sequence parallelism. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_comm_overlap: Option<bool>,
    /// How micro-batches' weight gradients are summed: `fused` into the weight-gradient
    /// product (default; Megatron-core) or `separate` add passes (Megatron-LM 2021,
    /// `--no-gradient-accumulation-fusion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_accumulation: Option<GradAccumulation>,
    /// Pipeline sends block the sending stage until they complete (Megatron-LM without
    /// `--overlap-p2p-communication`: `batch_isend_irecv`, wait, `torch.cuda.synchronize()`;
    /// DeepSpeed's pipeline engine). Default false: the stage computes on while it sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_blocking: Option<bool>,
}

impl StrategySpec {
    /// Parses a strategy TOML; errors name the key.
    pub fn from_toml(text: &str, source_name: &str) -> Result<StrategySpec, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })
    }

    /// The model trained under this spec: `model` with `seq_len` replaced when the spec sets
    /// the training length (`seq_len`), validated.
    pub fn model_for(&self, model: &ModelConfig) -> Result<ModelConfig, PlanError> {
        let mut m = model.clone();
        if let Some(s) = self.seq_len {
            m.seq_len = s;
            m.validate().map_err(PlanError::Model)?;
        }
        Ok(m)
    }

    /// `self` with every field that `over` sets replaced by `over`'s.
    pub fn overlay(&self, over: &StrategySpec) -> StrategySpec {
        macro_rules! pick {
            ($($f:ident),*) => { StrategySpec {
                $($f: over.$f.clone().or_else(|| self.$f.clone()),)*
                collectives: match (&self.collectives, &over.collectives) {
                    (Some(a), Some(b)) => Some(a.overlay(b)),
                    (a, b) => b.or(*a),
                },
            } };
        }
        pick!(
            devices,
            dp,
            tp,
            pp,
            cp,
            cp_comm,
            micro_batches,
            micro_batch_size,
            global_batch,
            seq_len,
            schedule,
            opt_shard,
            remat,
            seq_parallel,
            precision,
            rank_order,
            layers_per_stage,
            grad_bucket,
            zero3_gather,
            zero3_prefetch,
            vocab_divisible_by,
            attention,
            tp_comm_overlap,
            grad_accumulation,
            p2p_blocking
        )
    }
}

/// A fully resolved strategy: every dimension has a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// Chips used.
    pub devices: u32,
    /// Data-parallel degree.
    pub dp: u32,
    /// Op-level (tensor) parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Context-parallel degree (1: none).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub cp: u32,
    /// How the context-parallel ranks exchange K/V.
    #[serde(default, skip_serializing_if = "is_default")]
    pub cp_comm: CpComm,
    /// Micro-batches per step per pipeline.
    pub micro_batches: u32,
    /// Sequences per micro-batch.
    pub micro_batch_size: u32,
    /// Sequences per step in all.
    pub global_batch: u32,
    /// Pipeline schedule.
    pub schedule: ScheduleKind,
    /// Optimizer sharding.
    pub opt_shard: OptShard,
    /// Rematerialisation.
    pub remat: Remat,
    /// Sequence parallelism.
    pub seq_parallel: bool,
    /// Precision.
    pub precision: Precision,
    /// Rank order.
    pub rank_order: RankOrder,
    /// Explicit layers per (virtual) stage, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers_per_stage: Option<Vec<u32>>,
    /// Gradient bucket size.
    pub grad_bucket: Bytes,
    /// Precision of ZeRO-3 weight gathers.
    #[serde(default, skip_serializing_if = "is_default")]
    pub zero3_gather: GatherPrecision,
    /// ZeRO-3 backward prefetch.
    #[serde(default, skip_serializing_if = "is_default")]
    pub zero3_prefetch: BackwardPrefetch,
    /// Collective algorithm per group.
    #[serde(default, skip_serializing_if = "is_default")]
    pub collectives: Collectives,
    /// The vocabulary is padded to a multiple of this × tp.
    #[serde(
        default = "default_vocab_divisor",
        skip_serializing_if = "is_default_vocab_divisor"
    )]
    pub vocab_divisible_by: u32,
    /// The attention kernel (absent in files written before the key: materialised, what the
    /// op graph assumed then).
    #[serde(default, skip_serializing_if = "is_default")]
    pub attention: Attention,
    /// Sequence-parallel all-gathers and reduce-scatters overlapped with their GEMMs
    /// (Megatron-LM `--tp-comm-overlap`): see `sim`'s workload for how it is priced.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tp_comm_overlap: bool,
    /// How micro-batches' weight gradients are summed; `separate` costs a memory-bound pass
    /// over every weight per micro-batch (see `sim`'s cost model).
    #[serde(default, skip_serializing_if = "is_default")]
    pub grad_accumulation: GradAccumulation,
    /// A stage waits for each of its pipeline sends to complete before computing on (see
    /// `sim`'s workload).
    #[serde(default, skip_serializing_if = "is_default")]
    pub p2p_blocking: bool,
}

/// The default of the `attention` key for a chip, with the reason. Today it is `materialised`
/// on every chip, including those whose training stacks fuse attention:
///
/// - Which stacks fuse it is a fact of the chip preset (`ChipSpec::fused_attention`, cited
///   there): NVIDIA A100, H100, H200, B200, GB200 (FlashAttention, Dao et al. 2022/2023, the
///   default of Megatron-core, NeMo, llm-foundry and torchtitan on sm80+ since 2023) and Ascend
///   910B/910C (CANN's FlashAttentionScore, run by MindSpeed); not the Ascend 910 (PanGu-α's
///   2021 MindSpore code runs BatchMatMul, Softmax and Dropout apart), the V100 (no
///   FlashAttention for sm70) or the CPU executor.
/// - The default does not follow that fact yet, because the A100 and H100 matmul plateaus of
///   `sim/calibration` were fitted to the validation rows while every row was priced with the
///   materialised ops: pricing those rows with the fused kernel makes them 7-27 % faster and
///   the verified rows miss the gate (median 7.1 %, worst 27.3 %; docs/validation.md). Until
///   the plateaus are re-derived from GEMM microbenchmarks instead, `--attention flash` is the
///   user's explicit choice, and the note says which chips would normally run it.
pub fn default_attention(chip: &ChipSpec) -> (Attention, String) {
    let why = if chip.fused_attention {
        format!(
            "attention materialised (the default on every chip for now): {}'s training stacks \
             usually fuse attention into one kernel that keeps no s×s matrix (FlashAttention; \
             CANN's FlashAttentionScore on Ascend 910B/910C): pass --attention flash to price it; \
             it is not the default while the calibration was fitted with materialised attention \
             (docs/validation.md)",
            chip.name
        )
    } else {
        format!(
            "attention materialised: {}'s stack has no fused attention kernel (PanGu-α's 2021 \
             MindSpore code on the Ascend 910 runs BatchMatMul, Softmax and Dropout apart; \
             FlashAttention needs sm80+, not the V100), so the heads·s·s scores are written and \
             kept; --attention flash prices a fused kernel instead",
            chip.name
        )
    };
    (Attention::Materialised, why)
}

/// Megatron-LM's default `--make-vocab-size-divisible-by`.
pub const DEFAULT_VOCAB_DIVISOR: u32 = 128;

fn default_vocab_divisor() -> u32 {
    DEFAULT_VOCAB_DIVISOR
}

fn is_default_vocab_divisor(v: &u32) -> bool {
    *v == DEFAULT_VOCAB_DIVISOR
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn is_default<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}

impl Strategy {
    /// As a spec that sets every field (for printing or re-reading).
    pub fn to_spec(&self) -> StrategySpec {
        StrategySpec {
            devices: Some(self.devices),
            dp: Some(self.dp),
            tp: Some(self.tp),
            pp: Some(self.pp),
            cp: Some(self.cp),
            cp_comm: Some(self.cp_comm),
            micro_batches: Some(self.micro_batches),
            micro_batch_size: Some(self.micro_batch_size),
            global_batch: Some(self.global_batch),
            seq_len: None,
            schedule: Some(self.schedule),
            opt_shard: Some(self.opt_shard),
            remat: Some(self.remat),
            seq_parallel: Some(self.seq_parallel),
            precision: Some(self.precision),
            rank_order: Some(self.rank_order),
            layers_per_stage: self.layers_per_stage.clone(),
            grad_bucket: Some(self.grad_bucket),
            zero3_gather: Some(self.zero3_gather),
            zero3_prefetch: Some(self.zero3_prefetch),
            collectives: (!self.collectives.is_auto())
                .then(|| CollectivesSpec::from_resolved(&self.collectives)),
            vocab_divisible_by: Some(self.vocab_divisible_by),
            attention: Some(self.attention),
            tp_comm_overlap: Some(self.tp_comm_overlap),
            grad_accumulation: Some(self.grad_accumulation),
            p2p_blocking: Some(self.p2p_blocking),
        }
    }

    /// The vocabulary `vocab` padded as Megatron pads it: up to a multiple of
    /// `vocab_divisible_by × tp`, so that tensor parallelism always divides it.
    pub fn padded_vocab(&self, vocab: u32) -> u32 {
        let multiple = u64::from(self.vocab_divisible_by.max(1)) * u64::from(self.tp.max(1));
        (u64::from(vocab).div_ceil(multiple) * multiple).min(u64::from(u32::MAX)) as u32
    }

    /// Whether backward re-runs the attention core's forward: full and grouped remat re-run
    /// the whole layer, selective the materialised core; a fused kernel leaves selective
    /// nothing to re-run (it recomputes the scores inside its own backward).
    pub fn recomputes_attention(&self) -> bool {
        match self.remat {
            Remat::None => false,
            Remat::Selective => self.attention == Attention::Materialised,
            Remat::Full | Remat::Every(_) => true,
        }
    }

    /// Ranks of a gradient-reduction (and optimizer-sharding) group: dp·cp, since the
    /// context-parallel ranks of a replica hold the same weights (Megatron-core reduces
    /// gradients and shards the distributed optimizer over its `dp-cp` group).
    pub fn dp_cp(&self) -> u32 {
        self.dp * self.cp.max(1)
    }

    /// Bytes per parameter of the optimizer-sharding weight all-gathers: the working
    /// precision, or fp32 for ZeRO-3 with `zero3_gather = "fp32"`.
    pub fn gather_bytes(&self) -> u64 {
        match (self.opt_shard, self.zero3_gather) {
            (OptShard::Zero3, GatherPrecision::Fp32) => 4,
            _ => u64::from(self.precision.act_bytes()),
        }
    }

    /// One-line summary, e.g. `dp16 tp8 pp16 mb32x1 1f1b mindspore remat=full`; ` flash` when
    /// the attention is fused.
    pub fn summary(&self) -> String {
        let zero3 = if self.opt_shard == OptShard::Zero3 {
            format!(
                "{}{}",
                if self.zero3_gather == GatherPrecision::Fp32 {
                    " gather=fp32"
                } else {
                    ""
                },
                if self.zero3_prefetch == BackwardPrefetch::Post {
                    " prefetch=post"
                } else {
                    ""
                }
            )
        } else {
            String::new()
        };
        let cp = match (self.cp, self.cp_comm) {
            (1, _) => String::new(),
            (c, CpComm::Ring) => format!(" cp{c}"),
            (c, comm) => format!(" cp{c}({comm})"),
        };
        format!(
            "dp{} tp{} pp{}{cp} mb{}x{} {} opt={}{zero3} remat={}{}{}{}{}{}{}{}",
            self.dp,
            self.tp,
            self.pp,
            self.micro_batches,
            self.micro_batch_size,
            self.schedule,
            self.opt_shard,
            self.remat,
            if self.seq_parallel { " sp" } else { "" },
            if self.tp_comm_overlap { " tpo" } else { "" },
            if self.grad_accumulation == GradAccumulation::Separate {
                " gacc=separate"
            } else {
                ""
            },
            if self.p2p_blocking && self.pp > 1 {
                " p2p=blocking"
            } else {
                ""
            },
            if self.attention == Attention::Flash {
                " flash"
            } else {
                ""
            },
            if self.rank_order == RankOrder::PANGU {
                String::new()
            } else {
                format!(" order={}", self.rank_order)
            },
            if self.collectives.is_auto() {
                String::new()
            } else {
                format!(" coll[{}]", self.collectives.summary())
            }
        )
    }
}

/// PyTorch DDP's default bucket (`bucket_cap_mb = 25`).
pub const DEFAULT_GRAD_BUCKET: Bytes = Bytes(25 * 1024 * 1024);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_strings() {
        for s in ["gpipe", "1f1b", "interleaved:4"] {
            assert_eq!(s.parse::<ScheduleKind>().unwrap().to_string(), s);
        }
        for s in ["none", "selective", "full", "every:3"] {
            assert_eq!(s.parse::<Remat>().unwrap().to_string(), s);
        }
        assert_eq!("every:1".parse::<Remat>().unwrap(), Remat::Full);
        for o in OptShard::ALL {
            assert_eq!(o.to_string().parse::<OptShard>().unwrap(), o);
        }
        for o in RankOrder::all() {
            assert_eq!(o.to_string().parse::<RankOrder>().unwrap(), o);
        }
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" FP8 ".parse::<Precision>().unwrap(), Precision::Fp8);
        assert!("fp4".parse::<Precision>().unwrap_err().contains("fp8"));
        assert!("interleaved:1".parse::<ScheduleKind>().is_err());
        assert!("zigzag"
            .parse::<ScheduleKind>()
            .unwrap_err()
            .contains("1f1b"));
    }

    #[test]
    fn toml_keys_are_flag_names_with_underscores() {
        let s = StrategySpec::from_toml(
            "dp = 2\ntp = 4\npp = 2\nmicro_batches = 8\nmicro_batch_size = 1\nschedule = \"interleaved:2\"\n\
             opt_shard = \"zero1\"\nremat = \"every:2\"\nseq_parallel = true\nglobal_batch = 16\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(s.schedule, Some(ScheduleKind::Interleaved { chunks: 2 }));
        let e = StrategySpec::from_toml("tensor_parallel = 4", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor_parallel"), "{e}");
        let e = StrategySpec::from_toml("remat = \"sometimes\"", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("every:K"), "{e}");
    }

    #[test]
    fn batch_arithmetic() {
        let reference = StrategySpec {
            tp: Some(8),
            pp: Some(16),
            micro_batch_size: Some(1),
            ..Default::default()
        };
        let user = StrategySpec::default();
        let (s, _) = resolve(&reference, &user, 512, 2048).unwrap();
        assert_eq!((s.dp, s.micro_batches, s.micro_batch_size), (16, 32, 1));
        // Changing tp re-fills dp and keeps the global batch.
        let user = StrategySpec {
            tp: Some(4),
            ..Default::default()
        };
        let (s, _) = resolve(&reference.overlay(&user), &user, 512, 2048).unwrap();
        assert_eq!((s.dp, s.micro_batches, s.global_batch), (32, 16, 512));
        // Contradictions show the arithmetic.
        let user = StrategySpec {
            micro_batches: Some(8),
            micro_batch_size: Some(2),
            ..Default::default()
        };
        let e = resolve(&reference.overlay(&user), &user, 512, 2048)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("16 × micro-batch size 2 × micro-batches 8 = 256"),
            "{e}"
        );
        let user = StrategySpec {
            tp: Some(3),
            ..Default::default()
        };
        let e = resolve(&reference.overlay(&user), &user, 512, 2048)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tp 3") && e.contains("8"), "{e}");
        // An inherited micro-batch size shrinks to fit, with a note.
        let reference = StrategySpec {
            tp: Some(8),
            micro_batch_size: Some(16),
            ..Default::default()
        };
        let user = StrategySpec {
            tp: Some(1),
            ..Default::default()
        };
        let (s, notes) = resolve(&reference.overlay(&user), &user, 1024, 512).unwrap();
        assert_eq!((s.dp, s.micro_batch_size, s.micro_batches), (512, 2, 1));
        assert!(notes[0].contains("lowered from 16 to 2"));
    }
}
