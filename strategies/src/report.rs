//! The step report: what one training step cost, simulated or measured.
//!
//! The type lives here, not in the simulator, so that the executor fills the same structure
//! with measured numbers and the two can be compared line by line.
//!
//! Conventions: fractions, not percentages; seconds and bytes as plain numbers.
//! - `mfu = model_flops / (step_time · devices · peak)`, with model FLOPs per token
//!   `6·N + 12·L·s·d` (PaLM, Chowdhery et al. 2022, appendix B): recomputation not counted.
//! - `hfu` counts the FLOPs the hardware really executes, recomputation included
//!   (Korthikanti et al. 2022, §6).

use serde::{Deserialize, Serialize};

/// Where a device's time goes. Only exposed time counts: communication hidden under compute
/// is not charged to a communication category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Forward and backward computation.
    Compute,
    /// Forward computation repeated in backward by rematerialisation.
    Recompute,
    /// Exposed tensor-parallel communication.
    TpComm,
    /// Exposed context-parallel K/V exchange (the ring's transfers that outlast the attention
    /// they overlap; the all-gather variant's whole collectives).
    CpComm,
    /// Exposed data-parallel gradient reduction.
    DpComm,
    /// Exposed pipeline send/receive waiting on the wire.
    PpComm,
    /// Exposed optimizer-sharding gathers/scatters and the optimizer step's communication.
    OptComm,
    /// Waiting for pipeline neighbours (fill and drain).
    Bubble,
    /// Anything else (e.g. waiting for a straggler at a collective).
    Idle,
}

impl Category {
    /// Every category in report order.
    pub const ALL: [Category; 9] = [
        Category::Compute,
        Category::Recompute,
        Category::TpComm,
        Category::CpComm,
        Category::DpComm,
        Category::PpComm,
        Category::OptComm,
        Category::Bubble,
        Category::Idle,
    ];

    /// Name as in JSON and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Category::Compute => "compute",
            Category::Recompute => "recompute",
            Category::TpComm => "tp_comm",
            Category::CpComm => "cp_comm",
            Category::DpComm => "dp_comm",
            Category::PpComm => "pp_comm",
            Category::OptComm => "opt_comm",
            Category::Bubble => "bubble",
            Category::Idle => "idle",
        }
    }
}

/// Seconds per category.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Breakdown {
    /// Forward and backward compute.
    pub compute: f64,
    /// Recompute.
    pub recompute: f64,
    /// Exposed TP communication.
    pub tp_comm: f64,
    /// Exposed CP communication (absent from JSON when zero, so reports of plans without
    /// context parallelism read as before).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cp_comm: f64,
    /// Exposed DP communication.
    pub dp_comm: f64,
    /// Exposed PP communication.
    pub pp_comm: f64,
    /// Exposed optimizer-sharding communication.
    pub opt_comm: f64,
    /// Pipeline bubble.
    pub bubble: f64,
    /// Other idle time.
    pub idle: f64,
}

impl Breakdown {
    /// Mutable access by category.
    pub fn get_mut(&mut self, c: Category) -> &mut f64 {
        match c {
            Category::Compute => &mut self.compute,
            Category::Recompute => &mut self.recompute,
            Category::TpComm => &mut self.tp_comm,
            Category::CpComm => &mut self.cp_comm,
            Category::DpComm => &mut self.dp_comm,
            Category::PpComm => &mut self.pp_comm,
            Category::OptComm => &mut self.opt_comm,
            Category::Bubble => &mut self.bubble,
            Category::Idle => &mut self.idle,
        }
    }

    /// Value by category.
    pub fn get(&self, c: Category) -> f64 {
        let mut copy = *self;
        *copy.get_mut(c)
    }

    /// Sum of all categories.
    pub fn total(&self) -> f64 {
        Category::ALL.iter().map(|&c| self.get(c)).sum()
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Utilisation of the links of one topology level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkUse {
    /// Level name (island, server, rack, spine).
    pub level: String,
    /// Bytes carried by all links of the level.
    pub bytes: f64,
    /// Mean busy fraction of the level's links over the step.
    pub mean_utilisation: f64,
    /// Busiest link's busy fraction.
    pub max_utilisation: f64,
}

/// One device's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// Rank.
    pub rank: u32,
    /// Pipeline stage.
    pub stage: u32,
    /// Time split.
    pub breakdown: Breakdown,
    /// Peak memory in bytes.
    pub peak_memory_bytes: u64,
}

/// One segment of the critical path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathSegment {
    /// Rank the segment ran on.
    pub rank: u32,
    /// Category of the segment.
    pub category: Category,
    /// What ran.
    pub label: String,
    /// Start, seconds from step start.
    pub start: f64,
    /// Duration in seconds.
    pub duration: f64,
}

/// The cost of one training step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Wall time of the step.
    pub step_time_s: f64,
    /// Tokens per second, all devices together.
    pub tokens_per_s: f64,
    /// Sequences per second.
    pub samples_per_s: f64,
    /// Model FLOPs utilisation (fraction).
    pub mfu: f64,
    /// Hardware FLOPs utilisation, recomputation included (fraction).
    pub hfu: f64,
    /// Mean over devices of the time split.
    pub breakdown: Breakdown,
    /// Per-device lines (one per simulated or measured device).
    pub devices: Vec<DeviceReport>,
    /// The chain of dependent work that sets the step time.
    pub critical_path: Vec<PathSegment>,
    /// Link utilisation by topology level.
    pub links: Vec<LinkUse>,
    /// Largest peak memory over devices, bytes.
    pub peak_memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_sums_and_names() {
        let mut b = Breakdown::default();
        for (i, c) in Category::ALL.iter().enumerate() {
            *b.get_mut(*c) = i as f64;
        }
        assert_eq!(b.total(), 36.0);
        let json = serde_json::to_value(b).unwrap();
        for c in Category::ALL {
            assert_eq!(json[c.name()].as_f64(), Some(b.get(c)));
        }
    }
}
