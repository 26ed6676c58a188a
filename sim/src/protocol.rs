//! What a collective library adds to a collective's transfers: a start-up latency, a cost per
//! step, and how much of the link's bandwidth its protocol uses.
//!
//! NCCL runs every collective with one of three protocols and picks, per call, the one its own
//! cost model says is fastest for the message (NCCL `src/graph/tuning.cc`, `ncclTopoTuneModel`
//! and `ncclTopoGetAlgoTime`): LL (8-byte lines, half of them flags: the lowest latency, a
//! quarter of the bus bandwidth), LL128 (128-byte lines with 8 bytes of flags: 0.92 of it) and
//! Simple (the full bandwidth, with a fence and a flag per chunk: the highest latency). Its
//! model of a ring collective is `base + steps · hop + bytes / (bus bandwidth · factor)`, with
//! `hop` the latency of one step over NVLink, PCIe or the network. The families whose file
//! has a `[protocols]` table are priced so, per collective instance:
//! - the protocol is the one with the smallest `base + Σ max(hop, the step's wire latency) +
//!   wire / factor`, where `wire` is the program's uncontended transfer time at the achieved
//!   link rate (sum over steps of each step's slowest transfer);
//! - the collective starts `base` after its last member joins;
//! - each step waits its protocol's hop latency less the wire latency the network already
//!   charges for that hop (a step costs the larger of the two);
//! - its transfers occupy the links as `bytes / factor` bytes.
//!
//! Families without the table (HCCL on Ascend, the CPU executor's channels) keep one flat
//! `collective_step_overhead` per step, on top of the wire. Not modelled: NCCL's tree and NVLS
//! algorithms' own tables (the programs in strategies decide the algorithm, and a group with
//! several chips per server runs the two-level program, whose steps are fewer than the flat
//! ring NCCL's model counts), LL's higher rate for gathers in one server (1/3 instead of 1/4),
//! the per-channel caps and the ring's multi-node Simple plateau factor. A protocol's share of
//! the bandwidth is charged as link occupancy (`bytes / factor` on the links, which the link
//! report counts), whereas LL puts about twice its payload on the wire and is otherwise held
//! back by its flag polling: traffic sharing a link with an LL collective is slowed a little
//! more than it would be.

use pangu_hardware::Seconds;
use serde::Deserialize;

/// The protocols' names, in the order of a `[protocols]` table's lists.
pub const NAMES: [&str; 3] = ["LL", "LL128", "Simple"];

/// A library's protocols (`[protocols]` of a calibration file): one value per protocol, in
/// the order of [`NAMES`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    /// Start-up latency of a collective.
    pub base: [Seconds; 3],
    /// Latency of one step between chips of one server.
    pub hop_intra: [Seconds; 3],
    /// Latency of one step that crosses servers.
    pub hop_net: [Seconds; 3],
    /// Fraction of the link bandwidth the protocol's data gets.
    pub bandwidth: [f64; 3],
}

impl Protocols {
    /// Checks the values.
    pub fn check(&self, source: &str) -> Result<(), String> {
        for (i, name) in NAMES.iter().enumerate() {
            for (field, v) in [
                ("base", self.base[i].0),
                ("hop_intra", self.hop_intra[i].0),
                ("hop_net", self.hop_net[i].0),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "{source}: protocols.{field} of {name} = {v} s must be 0 or more (e.g. \"2 us\")"
                    ));
                }
            }
            let b = self.bandwidth[i];
            if !(b > 0.0 && b <= 1.0) {
                return Err(format!(
                    "{source}: protocols.bandwidth of {name} = {b} must be in (0, 1] (a fraction of the link rate)"
                ));
            }
        }
        Ok(())
    }
}

/// One step of a collective program as a protocol sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Whether a transfer of the step crosses servers (a network hop).
    pub crosses: bool,
    /// The step's uncontended time per byte of the buffer at the links' nominal rates (its
    /// slowest transfer's).
    pub per_byte: f64,
    /// The wire latency of the step's routes (the longest), which the network charges anyway.
    pub latency: f64,
}

/// A collective program's steps as a protocol sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// Per step of the program, in order.
    pub steps: Vec<StepShape>,
}

/// What one collective instance adds to its transfers, in nanoseconds where it is a time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pricing {
    /// Wait between the last member joining and the first step.
    pub base: u64,
    /// The cost of a step inside one server.
    pub intra: u64,
    /// The cost of a step that crosses servers.
    pub net: u64,
    /// Whether those costs include the wire's latency (a protocol's hop latency, measured end
    /// to end), so that a step waits only what the wire does not already take.
    pub includes_wire: bool,
    /// Bytes on the wire per byte of the buffer (1 / the protocol's bandwidth fraction).
    pub scale: f64,
    /// The protocol chosen (an index into [`NAMES`]); `None` under a flat step cost.
    pub protocol: Option<usize>,
}

impl Pricing {
    /// The wait before a step.
    pub fn step(&self, s: &StepShape) -> u64 {
        let cost = if s.crosses { self.net } else { self.intra };
        if self.includes_wire {
            cost.saturating_sub(ns(s.latency))
        } else {
            cost
        }
    }
}

/// How a plan's collectives are priced beyond their transfers.
#[derive(Debug, Clone)]
pub enum StepCosts {
    /// One flat cost per step (libraries without a protocol table), on top of the wire.
    Flat(Seconds),
    /// Per-instance protocol choice.
    Protocols {
        /// The library's table.
        table: Protocols,
        /// Achieved fraction of the links' nominal rate.
        link_efficiency: f64,
    },
}

fn ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9).round() as u64
}

impl StepCosts {
    /// The step costs of a calibration (`from_toml` guarantees one of the two is set).
    pub fn new(cal: &crate::Calibration) -> StepCosts {
        match &cal.protocols {
            None => StepCosts::Flat(cal.collective_step_overhead.unwrap_or(Seconds(0.0))),
            Some(t) => StepCosts::Protocols {
                table: t.clone(),
                link_efficiency: cal.link_efficiency,
            },
        }
    }

    /// The pricing of a collective running `steps` (a range of its program's shape) on a
    /// `bytes` buffer: for a protocol table, the protocol with the smallest
    /// `base + Σ max(hop, step's wire latency) + wire time / bandwidth share`, the wire time
    /// being the steps' uncontended transfer time at the achieved link rate.
    pub fn price(&self, steps: &[StepShape], bytes: f64) -> Pricing {
        if steps.is_empty() || bytes <= 0.0 {
            // Nothing runs: no start-up either.
            return Pricing {
                scale: 1.0,
                ..Pricing::default()
            };
        }
        match self {
            StepCosts::Flat(s) => Pricing {
                base: 0,
                intra: ns(s.0),
                net: ns(s.0),
                includes_wire: false,
                scale: 1.0,
                protocol: None,
            },
            StepCosts::Protocols {
                table,
                link_efficiency,
            } => {
                let wire: f64 =
                    steps.iter().map(|s| s.per_byte).sum::<f64>() * bytes / link_efficiency;
                let time = |p: usize| {
                    let hops: f64 = steps
                        .iter()
                        .map(|s| {
                            let hop = if s.crosses {
                                table.hop_net[p].0
                            } else {
                                table.hop_intra[p].0
                            };
                            hop.max(s.latency)
                        })
                        .sum();
                    table.base[p].0 + hops + wire / table.bandwidth[p]
                };
                // The fastest by the library's own model; ties go to the later (higher
                // bandwidth) protocol.
                let mut best = (0, time(0));
                for p in 1..NAMES.len() {
                    let t = time(p);
                    if t <= best.1 {
                        best = (p, t);
                    }
                }
                let p = best.0;
                Pricing {
                    base: ns(table.base[p].0),
                    intra: ns(table.hop_intra[p].0),
                    net: ns(table.hop_net[p].0),
                    includes_wire: true,
                    scale: 1.0 / table.bandwidth[p],
                    protocol: Some(p),
                }
            }
        }
    }
}
