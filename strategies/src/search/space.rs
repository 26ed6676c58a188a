//! The search space: the values each strategy dimension may take, and the user's constraints
//! on it, written `DIM=V1,V2,...` (only these values) or `DIM+=V1,...` (these as well). Parsed
//! here so the command line and the app read them alike.
//!
//! A constraint first *widens* the space with its values that the default lacks (tp 32, a
//! micro-batch size of 8, `interleaved:8`), then, for `=`, *filters* it to its values. The
//! space enumerated is the default widened by every constraint; each `=` constraint then
//! removes, in the order given, the strategies whose value is not listed, and the
//! [`Census`] counts what each removed.

use std::fmt;

use serde::Serialize;

use super::dims::{Dim, Value};
use crate::plan::Plan;
use crate::strategy::{
    OptShard, Precision, RankOrder, Remat, ScheduleKind, Strategy, DEFAULT_GRAD_BUCKET,
    DEFAULT_VOCAB_DIVISOR,
};

/// Why a search space or a constraint on it is refused. Every message names the value and what
/// would work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpaceError {
    /// An entry is not `DIM=V1,V2,...`.
    #[error("search space entry {entry:?}: write DIM=V1,V2,... (only these values) or DIM+=V1,... (these too), with DIM one of {}", Dim::names())]
    Syntax {
        /// The entry as given.
        entry: String,
    },
    /// The dimension is not one the space has.
    #[error(
        "unknown search dimension {name:?} in {entry:?}; the dimensions are {}",
        Dim::names()
    )]
    UnknownDim {
        /// The name as given.
        name: String,
        /// The entry as given.
        entry: String,
    },
    /// A value does not parse for its dimension.
    #[error("search space {dim}: {message}")]
    Value {
        /// The dimension's key.
        dim: &'static str,
        /// What is wrong and what would work.
        message: String,
    },
    /// The same dimension constrained twice.
    #[error("search dimension {dim} is constrained twice ({first} and {second}); list every value in one entry, e.g. {dim}=V1,V2")]
    Twice {
        /// The dimension's key.
        dim: &'static str,
        /// The first constraint.
        first: String,
        /// The second constraint.
        second: String,
    },
    /// A layout degree that cannot split the devices, or a batch split that cannot split the
    /// global batch.
    #[error("search space {dim}={value}: {value} does not divide the {what} {total}; values that do: {divisors}")]
    NotDivisor {
        /// The dimension's key.
        dim: &'static str,
        /// The value.
        value: u32,
        /// What it must divide ("devices", "global batch").
        what: &'static str,
        /// That number.
        total: u32,
        /// The divisors of `total`, listed.
        divisors: String,
    },
    /// A memory fraction outside (0, 1].
    #[error("memory fraction {0} is out of range; give a fraction of each device's usable memory F with 0 < F <= 1, e.g. 0.9")]
    MemoryFraction(f64),
}

/// One constraint: a dimension and its values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Constraint {
    /// The dimension.
    pub dim: Dim,
    /// `true` for `DIM+=...`: the values join the space and nothing is removed.
    pub widen_only: bool,
    /// The values, in the order given.
    pub values: Vec<Value>,
}

impl Constraint {
    /// Parses `DIM=V1,V2,...` or `DIM+=V1,...`; `DIM` is a strategy TOML key or an alias
    /// (`mbs`, `sp`, `zero`, `interleave`, ...).
    pub fn parse(entry: &str) -> Result<Constraint, SpaceError> {
        let syntax = || SpaceError::Syntax {
            entry: entry.to_string(),
        };
        let (name, rest) = entry.split_once('=').ok_or_else(syntax)?;
        let (name, widen_only) = match name.strip_suffix('+') {
            Some(n) => (n, true),
            None => (name, false),
        };
        let dim = Dim::parse(name).ok_or_else(|| SpaceError::UnknownDim {
            name: name.trim().to_string(),
            entry: entry.to_string(),
        })?;
        let mut values = Vec::new();
        for text in rest.split(',') {
            if text.trim().is_empty() {
                return Err(SpaceError::Value {
                    dim: dim.key(),
                    message: format!(
                        "empty value in {entry:?}; list values separated by commas, e.g. {}={}",
                        dim.key(),
                        dim.example()
                    ),
                });
            }
            let v = dim.parse_value(text).map_err(|message| SpaceError::Value {
                dim: dim.key(),
                message,
            })?;
            if !values.contains(&v) {
                values.push(v);
            }
        }
        Ok(Constraint {
            dim,
            widen_only,
            values,
        })
    }

    /// Whether the constraint keeps `s`.
    pub fn admits(&self, s: &Strategy) -> bool {
        self.widen_only || self.values.contains(&self.dim.of(s))
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<String> = self.values.iter().map(Value::to_string).collect();
        let op = if self.widen_only { "+=" } else { "=" };
        write!(f, "{}{op}{}", self.dim.key(), values.join(","))
    }
}

/// Which values each dimension may take, and the constraints that filter them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchSpace {
    /// Micro-batch sizes to try.
    pub micro_batch_sizes: Vec<u32>,
    /// Micro-batch counts whose micro-batch size (the replica's batch over the count) is tried
    /// as well.
    pub micro_batches: Vec<u32>,
    /// Schedules to try.
    pub schedules: Vec<ScheduleKind>,
    /// Optimizer sharding levels to try.
    pub opt_shards: Vec<OptShard>,
    /// Remat modes to try.
    pub remats: Vec<Remat>,
    /// Sequence parallelism on/off.
    pub seq_parallel: Vec<bool>,
    /// Rank orders (placements) to try.
    pub rank_orders: Vec<RankOrder>,
    /// Precisions tried besides the search's own.
    pub precisions: Vec<Precision>,
    /// Largest tensor-parallel degree tried among the divisors of the devices.
    pub max_tp: u32,
    /// Tensor-parallel degrees above `max_tp` tried as well.
    pub extra_tp: Vec<u32>,
    /// Context-parallel degrees to try (`[1]` unless [`SearchSpace::with_context_parallel`]
    /// or a `cp=` constraint widens it).
    pub cps: Vec<u32>,
    /// The user's constraints, in the order given.
    pub constraints: Vec<Constraint>,
    /// A candidate must fit in this fraction of each device's usable memory (0 < F <= 1).
    pub memory_fraction: f64,
    /// The vocabulary padding rule of every candidate (Megatron's
    /// `--make-vocab-size-divisible-by`): a property of the framework the job runs on, not a
    /// dimension, so it is the user's (or the reference run's) value.
    pub vocab_divisible_by: u32,
}

impl Default for SearchSpace {
    fn default() -> Self {
        SearchSpace {
            micro_batch_sizes: vec![1, 2, 4],
            micro_batches: Vec::new(),
            schedules: vec![
                ScheduleKind::Gpipe,
                ScheduleKind::OneFOneB,
                ScheduleKind::Interleaved { chunks: 2 },
                ScheduleKind::Interleaved { chunks: 4 },
            ],
            opt_shards: OptShard::ALL.to_vec(),
            remats: vec![Remat::None, Remat::Selective, Remat::Full, Remat::Every(2)],
            seq_parallel: vec![false, true],
            rank_orders: vec![
                RankOrder::PANGU,
                RankOrder([
                    crate::strategy::Axis::Dp,
                    crate::strategy::Axis::Pp,
                    crate::strategy::Axis::Tp,
                ]),
            ],
            precisions: Vec::new(),
            max_tp: 16,
            extra_tp: Vec::new(),
            cps: vec![1],
            constraints: Vec::new(),
            memory_fraction: 1.0,
            vocab_divisible_by: DEFAULT_VOCAB_DIVISOR,
        }
    }
}

/// What one constraint removed: `removed` of the `of` strategies left when it applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Removal {
    /// The constraint, as `DIM=V,...` (or `memory fraction F`).
    pub constraint: String,
    /// Strategies it removed.
    pub removed: usize,
    /// Strategies left before it applied.
    pub of: usize,
}

/// How the constraints shaped the space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Census {
    /// Strategies in the space the constraints filter: the default widened by them.
    pub space: usize,
    /// Of those, the ones the default space lacks (added by widening).
    pub widened: usize,
    /// What each constraint removed, in order.
    pub removals: Vec<Removal>,
    /// Strategies left.
    pub kept: usize,
}

impl Census {
    /// One line, e.g. `tp=8 removed 412 of 530; memory fraction 0.9 removed 37 of 96`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.widened > 0 {
            parts.push(format!(
                "widening added {} of {} strategies",
                self.widened, self.space
            ));
        }
        for r in &self.removals {
            parts.push(format!(
                "{} removed {} of {}",
                r.constraint, r.removed, r.of
            ));
        }
        parts.join("; ")
    }
}

fn divisors(n: u32) -> impl Iterator<Item = u32> {
    (1..=n).filter(move |d| n.is_multiple_of(*d))
}

fn list_divisors(n: u32) -> String {
    divisors(n)
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, v: T) {
    if !list.contains(&v) {
        list.push(v);
    }
}

/// The context-parallel degrees the search tries.
pub const CP_DEGREES: [u32; 5] = [1, 2, 4, 8, 16];

/// Fewest tokens per rank for which the search tries context parallelism: below this the
/// attention of one block is too short to hide a ring step and the split only adds traffic.
/// This project's pruning choice (Megatron-core documents cp for long-context training; Llama
/// 3 trained its 8,192-token stage with cp 1 and its 131,072-token stage with cp 16, §3.3.2).
pub const CP_MIN_TOKENS_PER_RANK: u32 = 4096;

impl SearchSpace {
    /// The space with every context-parallel degree of [`CP_DEGREES`] whose two chunks per
    /// rank divide `seq_len` and leave at least [`CP_MIN_TOKENS_PER_RANK`] tokens per rank
    /// (degrees a `cp=` constraint added stay).
    pub fn with_context_parallel(mut self, seq_len: u32) -> SearchSpace {
        for c in CP_DEGREES {
            if c > 1 && seq_len.is_multiple_of(2 * c) && seq_len / c >= CP_MIN_TOKENS_PER_RANK {
                push_new(&mut self.cps, c);
            }
        }
        self
    }

    /// The default space with `entries` (each `DIM=V1,...` or `DIM+=V1,...`) applied in order.
    pub fn from_entries<S: AsRef<str>>(entries: &[S]) -> Result<SearchSpace, SpaceError> {
        let mut space = SearchSpace::default();
        for e in entries {
            space.constrain(Constraint::parse(e.as_ref())?)?;
        }
        Ok(space)
    }

    /// The default space with the entries of one line applied: entries separated by spaces or
    /// semicolons, e.g. `tp=8 pp=8,16` (what the app's search field holds).
    pub fn from_text(text: &str) -> Result<SearchSpace, SpaceError> {
        let entries: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|e| !e.is_empty())
            .collect();
        SearchSpace::from_entries(&entries)
    }

    /// Sets the fraction of each device's usable memory a candidate may use.
    pub fn with_memory_fraction(mut self, fraction: f64) -> Result<SearchSpace, SpaceError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(SpaceError::MemoryFraction(fraction));
        }
        self.memory_fraction = fraction;
        Ok(self)
    }

    /// Widens the space with the constraint's values and adds it to the filters.
    pub fn constrain(&mut self, c: Constraint) -> Result<(), SpaceError> {
        if let Some(first) = self.constraints.iter().find(|o| o.dim == c.dim) {
            return Err(SpaceError::Twice {
                dim: c.dim.key(),
                first: first.to_string(),
                second: c.to_string(),
            });
        }
        for &v in &c.values {
            match (c.dim, v) {
                (Dim::Tp, Value::Number(t)) if t > self.max_tp => push_new(&mut self.extra_tp, t),
                (Dim::Cp, Value::Number(c)) => push_new(&mut self.cps, c),
                (Dim::MicroBatchSize, Value::Number(b)) => push_new(&mut self.micro_batch_sizes, b),
                (Dim::MicroBatches, Value::Number(m)) => push_new(&mut self.micro_batches, m),
                (Dim::Vpp, Value::Number(1)) => {
                    push_new(&mut self.schedules, ScheduleKind::Gpipe);
                    push_new(&mut self.schedules, ScheduleKind::OneFOneB);
                }
                (Dim::Vpp, Value::Number(chunks)) => {
                    push_new(&mut self.schedules, ScheduleKind::Interleaved { chunks })
                }
                (Dim::Schedule, Value::Schedule(s)) => push_new(&mut self.schedules, s),
                (Dim::OptShard, Value::OptShard(o)) => push_new(&mut self.opt_shards, o),
                (Dim::Remat, Value::Remat(r)) => push_new(&mut self.remats, r),
                (Dim::SeqParallel, Value::Flag(b)) => push_new(&mut self.seq_parallel, b),
                (Dim::RankOrder, Value::RankOrder(o)) => push_new(&mut self.rank_orders, o),
                (Dim::Precision, Value::Precision(p)) => push_new(&mut self.precisions, p),
                // tp within the default range, pp and dp (every divisor is tried already).
                _ => {}
            }
        }
        self.constraints.push(c);
        Ok(())
    }

    /// Checks the constraints against a job of `devices` chips and a global batch: a layout
    /// degree must divide the devices, a micro-batch size or count the global batch.
    pub fn check(&self, devices: u32, global_batch: u32) -> Result<(), SpaceError> {
        for c in &self.constraints {
            let (what, total) = match c.dim {
                Dim::Tp | Dim::Pp | Dim::Dp | Dim::Cp => ("devices", devices),
                Dim::MicroBatchSize | Dim::MicroBatches => ("global batch", global_batch),
                _ => continue,
            };
            for v in &c.values {
                if let Value::Number(n) = *v {
                    if !total.is_multiple_of(n) {
                        return Err(SpaceError::NotDivisor {
                            dim: c.dim.key(),
                            value: n,
                            what,
                            total,
                            divisors: list_divisors(total),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether every constraint keeps `s` (the memory fraction aside).
    pub fn admits(&self, s: &Strategy) -> bool {
        self.constraints.iter().all(|c| c.admits(s))
    }

    /// Whether a plan's largest device memory is within the memory fraction of its capacity
    /// (the chip's usable memory, as [`Plan::fits`] checks it).
    pub fn within_memory(&self, plan: &Plan) -> bool {
        plan.max_memory().total.0 as f64 <= self.memory_fraction * plan.capacity.0 as f64
    }

    /// The memory fraction as a removal line, when it is below 1.
    pub fn memory_label(&self) -> Option<String> {
        (self.memory_fraction < 1.0).then(|| format!("memory fraction {}", self.memory_fraction))
    }

    /// The tensor-parallel degrees tried on `devices` chips.
    fn tps(&self, devices: u32) -> Vec<u32> {
        divisors(devices)
            .filter(|t| *t <= self.max_tp || self.extra_tp.contains(t))
            .collect()
    }

    /// The micro-batch sizes tried for a replica batch of `per_replica`.
    fn mbss(&self, per_replica: u32) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .micro_batch_sizes
            .iter()
            .copied()
            .filter(|b| per_replica.is_multiple_of(*b))
            .collect();
        for &m in &self.micro_batches {
            if per_replica.is_multiple_of(m) {
                push_new(&mut out, per_replica / m);
            }
        }
        out
    }

    /// Whether the lists (not the constraints) of `self` hold `s`, for a search of `precision`.
    fn lists_hold(&self, s: &Strategy, precision: Precision) -> bool {
        (s.tp <= self.max_tp || self.extra_tp.contains(&s.tp))
            && self.cps.contains(&s.cp)
            && self
                .mbss(s.global_batch / s.dp)
                .contains(&s.micro_batch_size)
            && self.schedules.contains(&s.schedule)
            && self.opt_shards.contains(&s.opt_shard)
            && self.remats.contains(&s.remat)
            && self.seq_parallel.contains(&s.seq_parallel)
            && self.rank_orders.contains(&s.rank_order)
            && (s.precision == precision || self.precisions.contains(&s.precision))
    }

    /// Every strategy of the space for `devices` chips, a global batch and the search's
    /// `precision`, in a fixed order, that the constraints keep; with the census of what each
    /// removed. Degree products that do not divide, batches that do not split, and choices that
    /// make no difference (sequence parallelism without tp, schedules without pp, sharding
    /// without dp) are never generated; everything else is left to `Plan` validation.
    pub fn enumerate(
        &self,
        devices: u32,
        global_batch: u32,
        precision: Precision,
    ) -> (Vec<Strategy>, Census) {
        let default = SearchSpace::default();
        let mut removed = vec![0usize; self.constraints.len()];
        let (mut space, mut widened) = (0, 0);
        let mut out = Vec::new();
        let mut precisions = vec![precision];
        for &p in &self.precisions {
            push_new(&mut precisions, p);
        }
        let layouts = self.tps(devices).into_iter().flat_map(|tp| {
            divisors(devices / tp).flat_map(move |pp| {
                self.cps
                    .iter()
                    .filter(move |&&cp| (devices / tp / pp).is_multiple_of(cp))
                    .map(move |&cp| (tp, pp, cp))
            })
        });
        for (tp, pp, cp) in layouts {
            {
                let dp = devices / (tp * pp * cp);
                if !global_batch.is_multiple_of(dp) {
                    continue;
                }
                let layout = Layout {
                    devices,
                    dp,
                    tp,
                    pp,
                    cp,
                    global_batch,
                };
                for s in self.layout_strategies(&layout, &precisions) {
                    space += 1;
                    if !default.lists_hold(&s, precision) {
                        widened += 1;
                    }
                    match self.constraints.iter().position(|c| !c.admits(&s)) {
                        Some(i) => removed[i] += 1,
                        None => out.push(s),
                    }
                }
            }
        }
        let mut left = space;
        let removals = self
            .constraints
            .iter()
            .zip(removed)
            .filter(|(c, _)| !c.widen_only)
            .map(|(c, r)| {
                let of = left;
                left -= r;
                Removal {
                    constraint: c.to_string(),
                    removed: r,
                    of,
                }
            })
            .collect();
        let census = Census {
            space,
            widened,
            removals,
            kept: out.len(),
        };
        (out, census)
    }

    /// The strategies of one device layout, every other dimension varied.
    fn layout_strategies(&self, l: &Layout, precisions: &[Precision]) -> Vec<Strategy> {
        let mut out = Vec::new();
        let per_replica = l.global_batch / l.dp;
        for mbs in self.mbss(per_replica) {
            for &schedule in &self.schedules {
                if l.pp == 1 && schedule != ScheduleKind::OneFOneB {
                    continue;
                }
                for &opt_shard in &self.opt_shards {
                    if l.dp == 1 && opt_shard != OptShard::None {
                        continue;
                    }
                    for &remat in &self.remats {
                        for &sp in &self.seq_parallel {
                            if sp && l.tp == 1 {
                                continue;
                            }
                            for &rank_order in &self.rank_orders {
                                for &precision in precisions {
                                    out.push(Strategy {
                                        devices: l.devices,
                                        dp: l.dp,
                                        tp: l.tp,
                                        pp: l.pp,
                                        cp: l.cp,
                                        cp_comm: Default::default(),
                                        micro_batches: per_replica / mbs,
                                        micro_batch_size: mbs,
                                        global_batch: l.global_batch,
                                        schedule,
                                        opt_shard,
                                        remat,
                                        seq_parallel: sp,
                                        precision,
                                        rank_order,
                                        layers_per_stage: None,
                                        grad_bucket: DEFAULT_GRAD_BUCKET,
                                        zero3_gather: Default::default(),
                                        zero3_prefetch: Default::default(),
                                        collectives: Default::default(),
                                        vocab_divisible_by: self.vocab_divisible_by,
                                        // Not a search dimension: the search sets the
                                        // run's kernel (the user's, else the chip's).
                                        attention: Default::default(),
                                        // Set from the run's strategy where it applies.
                                        tp_comm_overlap: false,
                                        // The framework's, set from the run's strategy.
                                        grad_accumulation: Default::default(),
                                        p2p_blocking: false,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// One device layout of the enumeration.
struct Layout {
    devices: u32,
    dp: u32,
    tp: u32,
    pp: u32,
    cp: u32,
    global_batch: u32,
}
