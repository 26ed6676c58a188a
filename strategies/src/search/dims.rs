//! The dimensions of the search space, named by their strategy TOML keys, and their values.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::strategy::{OptShard, Precision, RankOrder, Remat, ScheduleKind, Strategy};

/// A dimension of the search space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Tensor-parallel degree (`tp`).
    Tp,
    /// Pipeline stages (`pp`).
    Pp,
    /// Data-parallel degree (`dp`).
    Dp,
    /// Context-parallel degree (`cp`).
    Cp,
    /// Sequences per micro-batch (`micro_batch_size`).
    MicroBatchSize,
    /// Micro-batches per step (`micro_batches`).
    MicroBatches,
    /// Model chunks per stage: 1 for GPipe and 1F1B, V for `interleaved:V` (`vpp`).
    Vpp,
    /// Pipeline schedule (`schedule`).
    Schedule,
    /// Optimizer sharding (`opt_shard`).
    OptShard,
    /// Rematerialisation (`remat`).
    Remat,
    /// Sequence parallelism (`seq_parallel`).
    SeqParallel,
    /// Rank numbering order (`rank_order`).
    RankOrder,
    /// Training precision (`precision`).
    Precision,
}

/// One value of a dimension.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A degree, size or count.
    Number(u32),
    /// A schedule.
    Schedule(ScheduleKind),
    /// A sharding level.
    OptShard(OptShard),
    /// A remat mode.
    Remat(Remat),
    /// On or off.
    Flag(bool),
    /// A rank order.
    RankOrder(RankOrder),
    /// A precision.
    Precision(Precision),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Schedule(s) => write!(f, "{s}"),
            Value::OptShard(o) => write!(f, "{o}"),
            Value::Remat(r) => write!(f, "{r}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::RankOrder(o) => write!(f, "{o}"),
            Value::Precision(p) => write!(f, "{p}"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Number(n) => s.serialize_u32(*n),
            Value::Flag(b) => s.serialize_bool(*b),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl Serialize for Dim {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl Dim {
    /// Every dimension, in the order help lists them.
    pub const ALL: [Dim; 13] = [
        Dim::Tp,
        Dim::Pp,
        Dim::Dp,
        Dim::Cp,
        Dim::MicroBatchSize,
        Dim::MicroBatches,
        Dim::Vpp,
        Dim::Schedule,
        Dim::OptShard,
        Dim::Remat,
        Dim::SeqParallel,
        Dim::RankOrder,
        Dim::Precision,
    ];

    /// The strategy TOML key.
    pub fn key(self) -> &'static str {
        match self {
            Dim::Tp => "tp",
            Dim::Pp => "pp",
            Dim::Dp => "dp",
            Dim::Cp => "cp",
            Dim::MicroBatchSize => "micro_batch_size",
            Dim::MicroBatches => "micro_batches",
            Dim::Vpp => "vpp",
            Dim::Schedule => "schedule",
            Dim::OptShard => "opt_shard",
            Dim::Remat => "remat",
            Dim::SeqParallel => "seq_parallel",
            Dim::RankOrder => "rank_order",
            Dim::Precision => "precision",
        }
    }

    /// Other names accepted for the dimension.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Dim::Tp => &["tensor_parallel", "op_parallel", "mp"],
            Dim::Pp => &["pipeline_parallel", "stages"],
            Dim::Dp => &["data_parallel"],
            Dim::Cp => &["context_parallel"],
            Dim::MicroBatchSize => &["mbs", "micro_batch"],
            Dim::MicroBatches => &["m", "num_micro_batches", "grad_accum"],
            Dim::Vpp => &["interleave", "chunks", "virtual_pipeline"],
            Dim::Schedule => &["sched", "pipeline_schedule"],
            Dim::OptShard => &["zero", "opt", "optimizer_shard"],
            Dim::Remat => &["recompute", "checkpointing"],
            Dim::SeqParallel => &["sp", "sequence_parallel"],
            Dim::RankOrder => &["order", "placement"],
            Dim::Precision => &["dtype"],
        }
    }

    /// Finds a dimension by key or alias (case-insensitive, `-` read as `_`).
    pub fn parse(name: &str) -> Option<Dim> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Dim::ALL
            .into_iter()
            .find(|d| d.key() == n || d.aliases().contains(&n.as_str()))
    }

    /// Every key with its aliases, for messages.
    pub fn names() -> String {
        Dim::ALL
            .iter()
            .map(|d| format!("{} ({})", d.key(), d.aliases().join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A value list that parses, for messages.
    pub fn example(self) -> &'static str {
        match self {
            Dim::Tp | Dim::Pp | Dim::Dp => "8,16",
            Dim::Cp => "1,2",
            Dim::MicroBatchSize | Dim::MicroBatches => "1,2",
            Dim::Vpp => "1,2",
            Dim::Schedule => "1f1b,interleaved:2",
            Dim::OptShard => "none,zero1",
            Dim::Remat => "none,full",
            Dim::SeqParallel => "true",
            Dim::RankOrder => "pp-dp-tp,dp-pp-tp",
            Dim::Precision => "fp16,bf16",
        }
    }

    /// The dimension's value in a strategy.
    pub fn of(self, s: &Strategy) -> Value {
        match self {
            Dim::Tp => Value::Number(s.tp),
            Dim::Pp => Value::Number(s.pp),
            Dim::Dp => Value::Number(s.dp),
            Dim::Cp => Value::Number(s.cp),
            Dim::MicroBatchSize => Value::Number(s.micro_batch_size),
            Dim::MicroBatches => Value::Number(s.micro_batches),
            Dim::Vpp => Value::Number(s.schedule.chunks()),
            Dim::Schedule => Value::Schedule(s.schedule),
            Dim::OptShard => Value::OptShard(s.opt_shard),
            Dim::Remat => Value::Remat(s.remat),
            Dim::SeqParallel => Value::Flag(s.seq_parallel),
            Dim::RankOrder => Value::RankOrder(s.rank_order),
            Dim::Precision => Value::Precision(s.precision),
        }
    }

    /// Parses one value of the dimension; the error says what would work.
    pub fn parse_value(self, text: &str) -> Result<Value, String> {
        let t = text.trim();
        match self {
            Dim::Tp
            | Dim::Pp
            | Dim::Dp
            | Dim::Cp
            | Dim::MicroBatchSize
            | Dim::MicroBatches
            | Dim::Vpp => match t.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Value::Number(n)),
                _ => Err(format!(
                    "{t:?} is not a whole number >= 1; e.g. {}={}",
                    self.key(),
                    self.example()
                )),
            },
            Dim::Schedule => t.parse().map(Value::Schedule),
            Dim::OptShard => t.parse().map(Value::OptShard),
            Dim::Remat => t.parse().map(Value::Remat),
            Dim::SeqParallel => match t.to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Ok(Value::Flag(true)),
                "false" | "off" | "no" | "0" => Ok(Value::Flag(false)),
                _ => Err(format!("{t:?} is not on or off; use true or false")),
            },
            Dim::RankOrder => t.parse().map(Value::RankOrder),
            Dim::Precision => t.parse().map(Value::Precision),
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}
