//! The strategy search space and the cost-model seam.
//!
//! The search enumerates strategies for a fixed model, cluster and global batch from a
//! [`SearchSpace`] (the default, or one the user constrained with `DIM=V1,V2,...` entries and a
//! memory fraction), prunes the ones `Plan` rejects or that do not fit in memory, ranks the rest with a fast
//! [`CostModel`] and refines the best with a slower, more faithful one. The models live in the
//! simulator crate (analytic and discrete-event); this crate only defines the seam, so the
//! search never depends on how a step is priced.

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use serde::Serialize;

use crate::plan::Plan;
use crate::strategy::{Precision, Strategy};

mod dims;
mod space;
#[cfg(test)]
mod space_tests;

pub use dims::{Dim, Value};
pub use space::{
    Census, Constraint, Removal, SearchSpace, SpaceError, CP_DEGREES, CP_MIN_TOKENS_PER_RANK,
};

/// Prices one training step of a plan.
pub trait CostModel: Sync {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Seconds per step.
    fn step_time(&self, plan: &Plan) -> Result<f64, String>;
}

/// Every strategy of the space for `devices` chips and a global batch that its constraints
/// keep, in a fixed order (see [`SearchSpace::enumerate`], which also counts what each
/// constraint removed).
pub fn enumerate(
    space: &SearchSpace,
    devices: u32,
    global_batch: u32,
    precision: Precision,
) -> Vec<Strategy> {
    space.enumerate(devices, global_batch, precision).0
}

/// A candidate that passed validation, with its memory and costs.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The strategy.
    pub strategy: Strategy,
    /// One-line summary.
    pub summary: String,
    /// Largest per-device memory in bytes.
    pub memory_bytes: u64,
    /// Step time from the fast model.
    pub fast_step_s: f64,
    /// Step time from the refining model, for the refined ones.
    pub refined_step_s: Option<f64>,
    /// Mean time per device by category, from the refining model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breakdown: Option<crate::report::Breakdown>,
    /// What the search ranked by when it is not the step time (lower is better; for
    /// time-to-train, the expected days of the run), from the best available step time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// How two candidates differ, category by category (seconds, `a − b`), largest first.
pub fn explain(a: &Candidate, b: &Candidate) -> Vec<(crate::report::Category, f64)> {
    let (Some(x), Some(y)) = (a.breakdown, b.breakdown) else {
        return Vec::new();
    };
    let mut v: Vec<_> = crate::report::Category::ALL
        .iter()
        .map(|&c| (c, x.get(c) - y.get(c)))
        .filter(|(_, d)| d.abs() > 1e-6)
        .collect();
    v.sort_by(|p, q| q.1.abs().total_cmp(&p.1.abs()));
    v
}

impl Candidate {
    /// The best available step time.
    pub fn step_s(&self) -> f64 {
        self.refined_step_s.unwrap_or(self.fast_step_s)
    }

    /// What the search ranks by: the score when there is one, else the step time.
    pub fn rank_key(&self) -> f64 {
        self.score.unwrap_or_else(|| self.step_s())
    }
}

/// Builds the plan of each strategy, keeps those that validate and fit, and returns them with
/// the counts (total, valid, fitting) and the smallest memory seen (for "nothing fits").
pub fn prune(
    model: &ModelConfig,
    cluster: &Cluster,
    strategies: &[Strategy],
) -> (Vec<Plan>, usize, usize, Option<u64>) {
    let mut valid = 0;
    let mut min_mem: Option<u64> = None;
    let mut fitting = Vec::new();
    for s in strategies {
        if let Ok(p) = Plan::build(model, cluster, s) {
            valid += 1;
            let mem = p.max_memory().total.0;
            min_mem = Some(min_mem.map_or(mem, |m| m.min(mem)));
            if p.fits() {
                fitting.push(p);
            }
        }
    }
    let n = fitting.len();
    (fitting, valid, n, min_mem)
}

/// The Pareto front over (step time, memory): candidates no other beats on both.
pub fn pareto(cands: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..cands.len()).collect();
    idx.sort_by(|&a, &b| {
        cands[a]
            .step_s()
            .total_cmp(&cands[b].step_s())
            .then(cands[a].memory_bytes.cmp(&cands[b].memory_bytes))
    });
    let mut front = Vec::new();
    let mut best_mem = u64::MAX;
    for i in idx {
        if cands[i].memory_bytes < best_mem {
            best_mem = cands[i].memory_bytes;
            front.push(i);
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{OptShard, RankOrder, Remat, ScheduleKind};

    #[test]
    fn enumeration_covers_every_factorisation_and_keeps_the_batch() {
        let space = SearchSpace {
            schedules: vec![ScheduleKind::OneFOneB],
            opt_shards: vec![OptShard::None],
            remats: vec![Remat::None],
            seq_parallel: vec![false],
            rank_orders: vec![RankOrder::PANGU],
            micro_batch_sizes: vec![1],
            max_tp: 8,
            ..SearchSpace::default()
        };
        let all = enumerate(&space, 16, 32, Precision::Fp16);
        // tp ∈ {1, 2, 4, 8}; pp divides 16/tp: 5 + 4 + 3 + 2 = 14 layouts.
        assert_eq!(all.len(), 14);
        for s in &all {
            assert_eq!(s.dp * s.tp * s.pp, 16);
            assert_eq!(s.dp * s.micro_batch_size * s.micro_batches, 32);
        }
    }

    #[test]
    fn pareto_keeps_only_undominated() {
        let c = |t: f64, m: u64| Candidate {
            strategy: enumerate(&SearchSpace::default(), 8, 8, Precision::Fp16)[0].clone(),
            summary: String::new(),
            memory_bytes: m,
            fast_step_s: t,
            refined_step_s: None,
            breakdown: None,
            score: None,
        };
        let cands = vec![c(1.0, 10), c(2.0, 5), c(1.5, 12), c(3.0, 4)];
        assert_eq!(pareto(&cands), vec![0, 1, 3]);
    }
}
