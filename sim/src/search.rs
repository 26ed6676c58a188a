//! The strategy search driver: enumerate, prune, rank analytically, refine with the
//! discrete-event model. Parallel over candidates (rayon); the output order is deterministic
//! (sorted by step time, then by the strategy's summary).

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::search::{enumerate, pareto, Candidate, CostModel, SearchSpace};
use pangu_strategies::{Plan, Precision};
use rayon::prelude::*;
use serde::Serialize;

use crate::analytic::Analytic;

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// Strategies enumerated.
    pub candidates_total: usize,
    /// Strategies `Plan` accepted.
    pub candidates_valid: usize,
    /// Of those, the ones that fit in memory.
    pub candidates_fitting: usize,
    /// Smallest per-device memory among valid strategies (when none fits).
    pub min_memory_bytes: Option<u64>,
    /// Fitting candidates, best first.
    pub ranked: Vec<Candidate>,
    /// Indices into `ranked` of the step-time/memory Pareto front.
    pub pareto: Vec<usize>,
}

/// Searches the space for a model on a cluster at a global batch; the best `refine`
/// candidates of the analytic ranking, and the user's own strategy if given, are re-priced by
/// the discrete-event simulator.
#[allow(clippy::too_many_arguments)] // the search's inputs; a struct would only rename them
pub fn search(
    model: &ModelConfig,
    cluster: &Cluster,
    devices: u32,
    global_batch: u32,
    precision: Precision,
    space: &SearchSpace,
    refine: usize,
    own: Option<&pangu_strategies::Strategy>,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> SearchResult {
    let mut all = enumerate(space, devices, global_batch, precision);
    if let Some(o) = own {
        if !all.contains(o) {
            all.push(o.clone());
        }
    }
    let total = all.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    // Per valid strategy: its memory, and the candidate when it fits and prices.
    let priced: Vec<Option<(u64, Option<Candidate>)>> = all
        .par_iter()
        .map(|s| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(256) {
                progress("ranking", n, total);
            }
            let plan = Plan::build(model, cluster, s).ok()?;
            let mem = plan.max_memory().total.0;
            let cand = plan
                .fits()
                .then(|| Analytic.step_time(&plan).ok())
                .flatten()
                .map(|t| Candidate {
                    summary: s.summary(),
                    strategy: s.clone(),
                    memory_bytes: mem,
                    fast_step_s: t,
                    refined_step_s: None,
                    breakdown: None,
                });
            Some((mem, cand))
        })
        .collect();
    let valid = priced.iter().filter(|p| p.is_some()).count();
    let smallest = priced.iter().flatten().map(|(m, _)| *m).min();
    let mut ranked: Vec<Candidate> = priced
        .into_iter()
        .flatten()
        .filter_map(|(_, c)| c)
        .collect();
    let min_memory_bytes = smallest.filter(|_| ranked.is_empty());
    let order = |a: &Candidate, b: &Candidate| {
        a.step_s()
            .total_cmp(&b.step_s())
            .then_with(|| a.summary.cmp(&b.summary))
    };
    ranked.sort_by(order);
    let k = refine.min(ranked.len());
    // The top k, and the user's own strategy wherever it ranked.
    let chosen: Vec<usize> = (0..ranked.len())
        .filter(|&i| i < k || own.is_some_and(|o| ranked[i].strategy == *o))
        .collect();
    let refined: Vec<Option<pangu_strategies::StepReport>> = chosen
        .par_iter()
        .map(|&i| {
            let plan = Plan::build(model, cluster, &ranked[i].strategy).ok()?;
            crate::simulate(&plan).ok().map(|r| r.report)
        })
        .collect();
    for (&i, r) in chosen.iter().zip(refined) {
        ranked[i].refined_step_s = r.as_ref().map(|r| r.step_time_s);
        ranked[i].breakdown = r.map(|r| r.breakdown);
    }
    progress("refined", k, k);
    // Refined candidates first (by simulated time), then the rest by analytic time.
    ranked.sort_by(|a, b| {
        b.refined_step_s
            .is_some()
            .cmp(&a.refined_step_s.is_some())
            .then_with(|| order(a, b))
    });
    let n_refined = ranked.iter().filter(|c| c.refined_step_s.is_some()).count();
    let front = pareto(&ranked[..n_refined.max(1).min(ranked.len())]);
    SearchResult {
        candidates_total: total,
        candidates_valid: valid,
        candidates_fitting: ranked.len(),
        min_memory_bytes,
        ranked,
        pareto: front,
    }
}
