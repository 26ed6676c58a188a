//! What a user (or the search) writes: a [`StrategySpec`] with optional fields, and the
//! [`Strategy`] it resolves to once the model, cluster and reference defaults are known.
//!
//! Resolution rules (the same in every command):
//! - Layers of input, later wins: the model preset's reference strategy, then a `--strategy`
//!   file, then inline flags.
//! - `devices` is the whole cluster unless given. `dp` fills it (`devices / (tp·pp)`) unless
//!   given, so the reference's `dp` never sticks when `tp` or `pp` change.
//! - The global batch is the model preset's unless given, whatever the strategy: `dp` and the
//!   micro-batches only split it. `micro_batches` follows from `global / (dp · micro_batch_size)`
//!   unless given. An inherited micro-batch size that does not divide the per-replica batch is
//!   lowered to the largest one that does (and the plan says so); given values never change.

use std::fmt;
use std::str::FromStr;

use pangu_hardware::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::collective::{Collectives, CollectivesSpec};
use crate::PlanError;

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `Display`, `FromStr` (case-insensitive; an unknown name is refused with `$hint`) and serde as
/// a string, for an enum of unit variants each with one name.
macro_rules! named_enum {
    ($t:ident, $what:literal, $hint:literal, { $($v:ident => $name:literal),* $(,)? }) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($t::$v => $name,)*
                })
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($t::$v),)*
                    _ => Err(format!(concat!("unknown ", $what, " {:?}; ", $hint), s)),
                }
            }
        }
        string_serde!($t);
    };
}

/// Pipeline schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// All forwards, then all backwards (Huang et al. 2019).
    Gpipe,
    /// One forward, one backward after a warm-up (PipeDream-Flush, Narayanan et al. 2021).
    OneFOneB,
    /// 1F1B over `chunks` model chunks per stage (Megatron interleaved, Narayanan et al. 2021).
    Interleaved {
        /// Model chunks per stage (v).
        chunks: u32,
    },
}

impl ScheduleKind {
    /// Model chunks per stage.
    pub fn chunks(self) -> u32 {
        match self {
            ScheduleKind::Interleaved { chunks } => chunks,
            _ => 1,
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleKind::Gpipe => write!(f, "gpipe"),
            ScheduleKind::OneFOneB => write!(f, "1f1b"),
            ScheduleKind::Interleaved { chunks } => write!(f, "interleaved:{chunks}"),
        }
    }
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gpipe" => Ok(ScheduleKind::Gpipe),
            "1f1b" => Ok(ScheduleKind::OneFOneB),
            other => {
                if let Some(v) = other.strip_prefix("interleaved:") {
                    match v.parse::<u32>() {
                        Ok(chunks) if chunks >= 2 => Ok(ScheduleKind::Interleaved { chunks }),
                        _ => Err(format!(
                            "schedule {s:?}: the chunk count after 'interleaved:' must be a whole number >= 2"
                        )),
                    }
                } else {
                    Err(format!(
                        "unknown schedule {s:?}; use gpipe, 1f1b or interleaved:V (V >= 2)"
                    ))
                }
            }
        }
    }
}
string_serde!(ScheduleKind);

/// What optimizer (ZeRO-like) sharding splits over the data-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OptShard {
    /// Nothing sharded: gradients all-reduced.
    None,
    /// Optimizer states (fp32 master, Adam m and v) sharded (ZeRO stage 1).
    Zero1,
    /// States and gradients sharded (ZeRO stage 2).
    Zero2,
    /// Weights and states sharded, weights all-gathered before use, as MindSpore's optimizer
    /// parallel does it (level 1); gradients reduce-scattered.
    Mindspore,
    /// Weights, gradients and states sharded; weights gathered for forward and backward (ZeRO-3).
    Zero3,
}

impl OptShard {
    /// All levels, least sharded first.
    pub const ALL: [OptShard; 5] = [
        OptShard::None,
        OptShard::Zero1,
        OptShard::Zero2,
        OptShard::Mindspore,
        OptShard::Zero3,
    ];
}

/// In which precision ZeRO-3 gathers the weights (other sharding levels ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GatherPrecision {
    /// The compute precision (bf16/fp16 under mixed precision): DeepSpeed ZeRO-3, and PyTorch
    /// FSDP with `param_dtype` set to the compute type (Composer's `PURE`).
    #[default]
    Compute,
    /// The fp32 master weights: FSDP with `param_dtype` left at fp32 and autocast casting each
    /// product's operands (Composer's `DEFAULT` mixed precision in its 2023 releases, whose
    /// `get_mixed_precision` set only `reduce_dtype` to the compute type).
    Fp32,
}

named_enum!(GatherPrecision, "gather precision", "use compute (the training precision) or fp32", {
    Compute => "compute",
    Fp32 => "fp32",
});

/// When ZeRO-3 gathers the next part's weights during the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackwardPrefetch {
    /// Before the current part's gradient computation, so the two overlap (FSDP
    /// `BACKWARD_PRE`; DeepSpeed's parameter prefetch).
    #[default]
    Pre,
    /// After the current part's gradient computation: the next part waits for its gather,
    /// and only the current reduce-scatter overlaps the next computation (FSDP
    /// `BACKWARD_POST`, Composer's default; PyTorch FSDP docs, "BackwardPrefetch").
    Post,
}

named_enum!(
    BackwardPrefetch,
    "backward prefetch",
    "use pre (overlap the next gather with this part's backward) or post (gather after it)",
    { Pre => "pre", Post => "post" }
);

impl fmt::Display for OptShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptShard::None => "none",
            OptShard::Zero1 => "zero1",
            OptShard::Zero2 => "zero2",
            OptShard::Mindspore => "mindspore",
            OptShard::Zero3 => "zero3",
        })
    }
}

impl FromStr for OptShard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "none" => OptShard::None,
            "zero1" => OptShard::Zero1,
            "zero2" => OptShard::Zero2,
            "mindspore" => OptShard::Mindspore,
            "zero3" => OptShard::Zero3,
            _ => {
                return Err(format!(
                    "unknown optimizer sharding {s:?}; use none, zero1, zero2, mindspore or zero3"
                ))
            }
        })
    }
}
string_serde!(OptShard);

/// Rematerialisation (activation recomputation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remat {
    /// Keep every activation.
    None,
    /// Recompute the attention core (softmax, dropout, P·V) only (Korthikanti et al. 2022).
    Selective,
    /// Keep each layer's input only; recompute the layer in backward (PanGu-α).
    Full,
    /// Keep the input of every group of K consecutive layers; recompute the group in backward.
    Every(u32),
}

impl fmt::Display for Remat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remat::None => write!(f, "none"),
            Remat::Selective => write!(f, "selective"),
            Remat::Full => write!(f, "full"),
            Remat::Every(k) => write!(f, "every:{k}"),
        }
    }
}

impl FromStr for Remat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Remat::None),
            "selective" => Ok(Remat::Selective),
            "full" => Ok(Remat::Full),
            other => match other.strip_prefix("every:").map(str::parse::<u32>) {
                Some(Ok(1)) => Ok(Remat::Full),
                Some(Ok(k)) if k >= 1 => Ok(Remat::Every(k)),
                Some(_) => Err(format!(
                    "remat {s:?}: K in every:K must be a whole number >= 1"
                )),
                None => Err(format!(
                    "unknown remat {s:?}; use none, selective, full or every:K"
                )),
            },
        }
    }
}
string_serde!(Remat);

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp16 compute with fp32 master weights (mixed precision).
    Fp16,
    /// bf16 compute with fp32 master weights.
    Bf16,
    /// fp32 everywhere.
    Fp32,
}

impl Precision {
    /// Bytes per activation and working-weight element.
    pub fn act_bytes(self) -> u32 {
        match self {
            Precision::Fp16 | Precision::Bf16 => 2,
            Precision::Fp32 => 4,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp32 => "fp32",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "fp16" => Precision::Fp16,
            "bf16" => Precision::Bf16,
            "fp32" => Precision::Fp32,
            _ => return Err(format!("unknown precision {s:?}; use fp16, bf16 or fp32")),
        })
    }
}
string_serde!(Precision);

/// A parallel axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Pipeline stage.
    Pp,
    /// Data-parallel replica.
    Dp,
    /// Tensor (op-level model) parallel.
    Tp,
}

/// The order in which ranks are numbered, slowest-varying axis first.
///
/// PanGu-α's (the default) is `pp-dp-tp`: `rank = stage·(dp·tp) + dp_index·tp + tp_index`
/// ([R] `utils.py`), so a tensor-parallel group is consecutive ranks, i.e. one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RankOrder(pub [Axis; 3]);

impl RankOrder {
    /// PanGu-α's order.
    pub const PANGU: RankOrder = RankOrder([Axis::Pp, Axis::Dp, Axis::Tp]);
    /// Every order.
    pub fn all() -> [RankOrder; 6] {
        use Axis::*;
        [
            RankOrder([Pp, Dp, Tp]),
            RankOrder([Dp, Pp, Tp]),
            RankOrder([Pp, Tp, Dp]),
            RankOrder([Tp, Pp, Dp]),
            RankOrder([Dp, Tp, Pp]),
            RankOrder([Tp, Dp, Pp]),
        ]
    }
}

impl fmt::Display for RankOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |a: Axis| match a {
            Axis::Pp => "pp",
            Axis::Dp => "dp",
            Axis::Tp => "tp",
        };
        write!(f, "{}-{}-{}", n(self.0[0]), n(self.0[1]), n(self.0[2]))
    }
}

impl FromStr for RankOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RankOrder::all()
            .into_iter()
            .find(|o| o.to_string() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                format!(
                    "unknown rank order {s:?}; write the three axes slowest first, e.g. pp-dp-tp (PanGu-α's) or dp-pp-tp"
                )
            })
    }
}
string_serde!(RankOrder);

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
    /// Micro-batches per step per pipeline (gradient-accumulation steps when pp = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches: Option<u32>,
    /// Sequences per micro-batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<u32>,
    /// Sequences per optimizer step, all replicas together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<u32>,
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
}

impl StrategySpec {
    /// Parses a strategy TOML; errors name the key.
    pub fn from_toml(text: &str, source_name: &str) -> Result<StrategySpec, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })
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
            micro_batches,
            micro_batch_size,
            global_batch,
            schedule,
            opt_shard,
            remat,
            seq_parallel,
            precision,
            rank_order,
            layers_per_stage,
            grad_bucket,
            zero3_gather,
            zero3_prefetch
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
            micro_batches: Some(self.micro_batches),
            micro_batch_size: Some(self.micro_batch_size),
            global_batch: Some(self.global_batch),
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
        }
    }

    /// Bytes per parameter of the optimizer-sharding weight all-gathers: the working
    /// precision, or fp32 for ZeRO-3 with `zero3_gather = "fp32"`.
    pub fn gather_bytes(&self) -> u64 {
        match (self.opt_shard, self.zero3_gather) {
            (OptShard::Zero3, GatherPrecision::Fp32) => 4,
            _ => u64::from(self.precision.act_bytes()),
        }
    }

    /// One-line summary, e.g. `dp16 tp8 pp16 mb32x1 1f1b mindspore remat=full`.
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
        format!(
            "dp{} tp{} pp{} mb{}x{} {} opt={}{zero3} remat={}{}{}{}",
            self.dp,
            self.tp,
            self.pp,
            self.micro_batches,
            self.micro_batch_size,
            self.schedule,
            self.opt_shard,
            self.remat,
            if self.seq_parallel { " sp" } else { "" },
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

/// Resolves a spec (already overlaid on the reference) for a model's global batch and a
/// cluster size. Returns the strategy and notes on values that were derived.
pub fn resolve(
    spec: &StrategySpec,
    user: &StrategySpec,
    model_global_batch: u32,
    cluster_chips: u32,
) -> Result<(Strategy, Vec<String>), PlanError> {
    let mut notes = Vec::new();
    let devices = user.devices.unwrap_or(cluster_chips);
    if devices == 0 || devices > cluster_chips {
        return Err(PlanError::Devices(format!(
            "--devices {devices}: the cluster has {cluster_chips} chips; use 1..={cluster_chips}"
        )));
    }
    let tp = spec.tp.unwrap_or(1);
    let pp = spec.pp.unwrap_or(1);
    for (name, v) in [("tp", tp), ("pp", pp)] {
        if v == 0 {
            return Err(PlanError::Devices(format!(
                "--{name} 0: a degree must be at least 1"
            )));
        }
        if v > devices {
            return Err(PlanError::Devices(format!(
                "--{name} {v}: more than the {devices} devices"
            )));
        }
    }
    // Products in 64 bits: degrees come from user files.
    let tpp = u64::from(tp) * u64::from(pp);
    let devices64 = u64::from(devices);
    let dp = match user.dp {
        Some(0) => {
            return Err(PlanError::Devices(
                "--dp 0: a degree must be at least 1".into(),
            ))
        }
        Some(dp) => {
            if u64::from(dp) * tpp != devices64 {
                return Err(PlanError::Devices(format!(
                    "dp {dp} × tp {tp} × pp {pp} = {} ≠ {devices} devices; omit --dp to fill the devices{}",
                    u64::from(dp) * tpp,
                    if devices64 % tpp == 0 { format!(" (dp {})", devices64 / tpp) } else { String::new() }
                )));
            }
            dp
        }
        None => {
            if devices64 % tpp != 0 {
                let fits: Vec<String> = (1..=devices.min(64))
                    .filter(|&t| devices64 % (u64::from(t) * u64::from(pp)) == 0)
                    .filter(|t| t.is_power_of_two())
                    .map(|t| t.to_string())
                    .collect();
                return Err(PlanError::Devices(format!(
                    "tp {tp} × pp {pp} = {tpp} does not divide the {devices} devices, so dp cannot fill them; \
                     with pp {pp}, tp could be one of {}",
                    fits.join(", ")
                )));
            }
            (devices64 / tpp) as u32
        }
    };
    let global = user.global_batch.unwrap_or(model_global_batch);
    if global == 0 {
        return Err(PlanError::Batch(
            "--global-batch 0: a step needs at least one sequence".into(),
        ));
    }
    if global > 1 << 24 {
        return Err(PlanError::Batch(format!(
            "--global-batch {global}: beyond this tool's bound of {} sequences per step",
            1u32 << 24
        )));
    }
    if global % dp != 0 {
        return Err(PlanError::Batch(format!(
            "global batch {global} does not split over dp {dp} replicas ({global} / {dp} is not whole); \
             use a global batch that is a multiple of {dp}"
        )));
    }
    let per_replica = global / dp;
    let (mbs, m) = match (user.micro_batch_size, user.micro_batches) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(PlanError::Batch(
                "micro-batch size and count must be at least 1".into(),
            ))
        }
        (Some(b), Some(m)) => {
            let product = u64::from(dp) * u64::from(b) * u64::from(m);
            if product != u64::from(global) {
                return Err(PlanError::Batch(format!(
                    "dp {dp} × micro-batch size {b} × micro-batches {m} = {product} ≠ global batch {global}; \
                     give only one of --micro-batches / --micro-batch-size, or --global-batch {product}"
                )));
            }
            (b, m)
        }
        (Some(b), None) => {
            if per_replica % b != 0 {
                return Err(PlanError::Batch(format!(
                    "global batch {global} / dp {dp} = {per_replica} sequences per replica is not a \
                     multiple of micro-batch size {b}"
                )));
            }
            (b, per_replica / b)
        }
        (None, Some(m)) => {
            if per_replica % m != 0 {
                return Err(PlanError::Batch(format!(
                    "global batch {global} / dp {dp} = {per_replica} sequences per replica does not \
                     split into {m} micro-batches"
                )));
            }
            (per_replica / m, m)
        }
        (None, None) => {
            let want = spec.micro_batch_size.unwrap_or(1).max(1);
            let b = (1..=want.min(per_replica))
                .rev()
                .find(|b| per_replica % b == 0)
                .unwrap_or(1);
            if b != want {
                notes.push(format!(
                    "micro-batch size lowered from {want} to {b} so that it divides the {per_replica} \
                     sequences per replica"
                ));
            }
            (b, per_replica / b)
        }
    };
    // Schedules are lists of actions per micro-batch: keep them to a size a machine holds.
    if m > 1 << 16 {
        return Err(PlanError::Batch(format!(
            "{m} micro-batches per step: this tool schedules up to {}; raise --micro-batch-size",
            1u32 << 16
        )));
    }
    let strategy = Strategy {
        devices,
        dp,
        tp,
        pp,
        micro_batches: m,
        micro_batch_size: mbs,
        global_batch: global,
        schedule: spec.schedule.unwrap_or(ScheduleKind::OneFOneB),
        opt_shard: spec.opt_shard.unwrap_or(OptShard::None),
        remat: spec.remat.unwrap_or(Remat::None),
        seq_parallel: spec.seq_parallel.unwrap_or(false),
        precision: spec.precision.unwrap_or(Precision::Fp16),
        rank_order: spec.rank_order.unwrap_or(RankOrder::PANGU),
        layers_per_stage: spec.layers_per_stage.clone(),
        grad_bucket: spec.grad_bucket.unwrap_or(DEFAULT_GRAD_BUCKET),
        zero3_gather: spec.zero3_gather.unwrap_or_default(),
        zero3_prefetch: spec.zero3_prefetch.unwrap_or_default(),
        collectives: spec.collectives.unwrap_or_default().resolve(),
    };
    Ok((strategy, notes))
}

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
