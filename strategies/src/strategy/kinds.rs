//! The enumerated dimensions of a strategy (schedule, optimizer sharding, remat, precision,
//! rank order) with their text forms: what TOML files and flags write.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// How each micro-batch's weight gradients reach the gradient buffer that the data-parallel
/// reduction and the optimizer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GradAccumulation {
    /// The weight-gradient product writes into the buffer itself (its epilogue adds to it):
    /// Megatron-LM's `--gradient-accumulation-fusion`, on by default in Megatron-core.
    #[default]
    Fused,
    /// A separate pass per parameter and micro-batch reads the fresh gradient and adds it to
    /// the buffer: Megatron-LM 2021's data-parallel wrapper (`main_grad.add_` in a hook per
    /// parameter), `--no-gradient-accumulation-fusion`, PyTorch autograd's accumulation.
    Separate,
}

named_enum!(
    GradAccumulation,
    "gradient accumulation",
    "use fused (the weight-gradient product adds into the buffer) or separate (an add pass per micro-batch)",
    { Fused => "fused", Separate => "separate" }
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
    /// NVIDIA Transformer Engine's fp8 recipe: bf16 weights and activations with fp32 master
    /// weights, the transformer layers' linear GEMMs in fp8 (see [`crate::fp8`]).
    Fp8,
}

impl Precision {
    /// Every precision, in the order error messages list them.
    pub const ALL: [Precision; 4] = [
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp8,
        Precision::Fp32,
    ];

    /// Bytes per activation and working-weight element (fp8 keeps bf16 ones).
    pub fn act_bytes(self) -> u32 {
        match self {
            Precision::Fp16 | Precision::Bf16 | Precision::Fp8 => 2,
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
            Precision::Fp8 => "fp8",
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
            "fp8" => Precision::Fp8,
            _ => {
                return Err(format!(
                    "unknown precision {s:?}; use fp16, bf16, fp8 or fp32"
                ))
            }
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
    /// Data-parallel replica. Its groups (`Mesh::group_of`) are the gradient-reduction
    /// groups, which span the context-parallel ranks too (dp·cp ranks, Megatron-core's
    /// `dp-cp` group): the cp ranks of a replica hold the same weights and their gradients
    /// are summed with the replicas'.
    Dp,
    /// Tensor (op-level model) parallel.
    Tp,
    /// Context parallel (the sequence split over ranks). It has no place of its own in a
    /// [`RankOrder`]: it always sits just outside tp (Megatron-core's order `tp-cp-dp-pp`,
    /// fastest first, for the default order).
    Cp,
}

/// How the context-parallel ranks exchange keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CpComm {
    /// Megatron-core's point-to-point ring (`cp_comm_type = "p2p"`): `cp − 1` steps, each
    /// passing the K/V block a rank holds to the next rank while attention runs on it; the
    /// backward pass sends K/V and the partial dK/dV around again.
    #[default]
    Ring,
    /// All-gather K/V before attention and reduce-scatter dK/dV after its backward (Llama 3
    /// paper §3.3.2; Megatron-core `cp_comm_type = "all_gather"`): not overlapped, cheap with
    /// grouped-query attention's few K/V heads.
    AllGather,
}

named_enum!(CpComm, "cp_comm", "use ring (Megatron-core's p2p ring) or all-gather (Llama 3's)", {
    Ring => "ring",
    AllGather => "all-gather",
});

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
            Axis::Cp => "cp",
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
