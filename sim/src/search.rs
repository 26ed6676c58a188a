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

/// A score of a plan at a step time (seconds); lower is better.
pub type Score<'a> = &'a (dyn Fn(&Plan, f64) -> f64 + Sync);

/// What the search ranks by. The default ranks by step time on the given chip count.
#[derive(Clone, Copy, Default)]
pub struct Objective<'a> {
    /// Ranks by this score of each candidate's plan and best step time instead (e.g. the
    /// expected days of the whole run, `goodput::plan::expected_days`).
    pub score: Option<Score<'a>>,
    /// Smaller chip counts whose strategies compete too (a job that keeps spares).
    pub fewer_devices: &'a [u32],
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
    let objective = Objective::default();
    search_by(
        model,
        cluster,
        devices,
        global_batch,
        precision,
        space,
        refine,
        own,
        progress,
        objective,
    )
}

/// [`search`] ranking by `objective`.
#[allow(clippy::too_many_arguments)] // as `search`, plus the objective
pub fn search_by(
    model: &ModelConfig,
    cluster: &Cluster,
    devices: u32,
    global_batch: u32,
    precision: Precision,
    space: &SearchSpace,
    refine: usize,
    own: Option<&pangu_strategies::Strategy>,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
    objective: Objective<'_>,
) -> SearchResult {
    let mut all = enumerate(space, devices, global_batch, precision);
    for &d in objective.fewer_devices {
        all.extend(enumerate(space, d, global_batch, precision));
    }
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
                    score: objective.score.map(|f| f(&plan, t)),
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
        a.rank_key()
            .total_cmp(&b.rank_key())
            .then_with(|| a.summary.cmp(&b.summary))
    };
    ranked.sort_by(order);
    let k = refine.min(ranked.len());
    // The top k, and the user's own strategy wherever it ranked.
    let chosen: Vec<usize> = (0..ranked.len())
        .filter(|&i| i < k || own.is_some_and(|o| ranked[i].strategy == *o))
        .collect();
    let refined: Vec<Option<(pangu_strategies::StepReport, Option<f64>)>> = chosen
        .par_iter()
        .map(|&i| {
            let plan = Plan::build(model, cluster, &ranked[i].strategy).ok()?;
            let r = crate::simulate(&plan).ok()?.report;
            let score = objective.score.map(|f| f(&plan, r.step_time_s));
            Some((r, score))
        })
        .collect();
    for (&i, r) in chosen.iter().zip(refined) {
        ranked[i].refined_step_s = r.as_ref().map(|(r, _)| r.step_time_s);
        if let Some((r, score)) = r {
            ranked[i].breakdown = Some(r.breakdown);
            ranked[i].score = score;
        }
    }
    progress("refined", k, k);
    // Refined candidates first (by simulated time, or their score), then the rest by analytic
    // time (or score).
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
