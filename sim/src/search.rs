//! The strategy search driver: enumerate (within the space's constraints), prune (plan
//! validation, device memory, the space's memory fraction), rank analytically, refine with the
//! discrete-event model. Parallel over candidates (rayon); the output order is deterministic
//! (sorted by step time, then by the strategy's summary).

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::search::{pareto, Candidate, Census, CostModel, Removal, SearchSpace};
use pangu_strategies::{Plan, Precision};
use rayon::prelude::*;
use serde::Serialize;

use crate::analytic::Analytic;

/// What a search found.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// Strategies enumerated (those the constraints kept, and the user's own if they keep it).
    pub candidates_total: usize,
    /// Strategies `Plan` accepted.
    pub candidates_valid: usize,
    /// Of those, the ones that fit in memory (within the space's memory fraction).
    pub candidates_fitting: usize,
    /// What the constraints removed, the memory fraction last.
    pub census: Census,
    /// Smallest per-device memory among valid strategies (when none fits).
    pub min_memory_bytes: Option<u64>,
    /// Fitting candidates, best first.
    pub ranked: Vec<Candidate>,
    /// Indices into `ranked` of the step-time/memory Pareto front.
    pub pareto: Vec<usize>,
    /// The user's own strategy, priced and simulated, whether or not the space holds it (when
    /// it is valid and fits the device memory).
    pub own: Option<Candidate>,
}

/// One enumerated strategy that `Plan` accepted.
struct Priced {
    /// Largest per-device memory.
    memory: u64,
    /// Within the device memory.
    fits: bool,
    /// Within the space's memory fraction too.
    within: bool,
    /// The candidate, when it is within the fraction and prices.
    candidate: Option<Candidate>,
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
/// the discrete-event simulator. The user's strategy competes when the space's constraints
/// keep it, and is priced for comparison in any case.
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
        Objective::default(),
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
    let (mut all, mut census) = space.enumerate(devices, global_batch, precision);
    for &d in objective.fewer_devices {
        let (more, c) = space.enumerate(d, global_batch, precision);
        all.extend(more);
        census.space += c.space;
        census.widened += c.widened;
        census.kept += c.kept;
        for (r, m) in census.removals.iter_mut().zip(c.removals) {
            r.removed += m.removed;
            r.of += m.of;
        }
    }
    // The attention kernel is the run's, not a search dimension: the user's strategy's,
    // else the chip's default.
    let attention = own.map_or_else(
        || pangu_strategies::default_attention(&cluster.spec.chip).0,
        |o| o.attention,
    );
    // So is Megatron's tensor-parallel overlap: the user's choice, on every candidate that
    // can run it (tp > 1 with sequence parallelism).
    let overlap = own.is_some_and(|o| o.tp_comm_overlap);
    // And how the framework sums micro-batches' gradients.
    let grad_accumulation = own.map(|o| o.grad_accumulation).unwrap_or_default();
    // And whether its pipeline sends block.
    let p2p_blocking = own.is_some_and(|o| o.p2p_blocking);
    for s in &mut all {
        s.p2p_blocking = p2p_blocking;
        s.attention = attention;
        s.tp_comm_overlap = overlap && s.tp > 1 && s.seq_parallel;
        s.grad_accumulation = grad_accumulation;
    }
    if let Some(o) = own.filter(|o| space.admits(o)) {
        if !all.contains(o) {
            all.push(o.clone());
        }
    }
    let total = all.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let priced: Vec<Option<Priced>> = all
        .par_iter()
        .map(|s| {
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(256) {
                progress("ranking", n, total);
            }
            let plan = Plan::build(model, cluster, s).ok()?;
            let memory = plan.max_memory().total.0;
            let fits = plan.fits();
            let within = fits && space.within_memory(&plan);
            let candidate = within
                .then(|| Analytic.step_time(&plan).ok())
                .flatten()
                .map(|t| {
                    let mut c = fast_candidate(s, memory, t);
                    c.score = objective.score.map(|f| f(&plan, t));
                    c
                });
            Some(Priced {
                memory,
                fits,
                within,
                candidate,
            })
        })
        .collect();
    let valid = priced.iter().flatten().count();
    if let Some(label) = space.memory_label() {
        let fitting = priced.iter().flatten().filter(|p| p.fits);
        census.removals.push(Removal {
            constraint: label,
            removed: fitting.clone().filter(|p| !p.within).count(),
            of: fitting.count(),
        });
    }
    let smallest = priced.iter().flatten().map(|p| p.memory).min();
    let mut ranked: Vec<Candidate> = priced
        .into_iter()
        .flatten()
        .filter_map(|p| p.candidate)
        .collect();
    let min_memory_bytes = smallest.filter(|_| ranked.is_empty());
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
    // time (or score). Without refinement (`refine` 0) the analytic order stands: the user's
    // strategy, simulated alone, is not ranked by a different measure than the others.
    if k > 0 {
        ranked.sort_by(|a, b| {
            b.refined_step_s
                .is_some()
                .cmp(&a.refined_step_s.is_some())
                .then_with(|| order(a, b))
        });
    }
    let n_refined = ranked.iter().filter(|c| c.refined_step_s.is_some()).count();
    let front = pareto(&ranked[..n_refined.max(1).min(ranked.len())]);
    let own = own.and_then(|o| {
        ranked
            .iter()
            .find(|c| c.strategy == *o)
            .cloned()
            .or_else(|| own_outside(model, cluster, o, objective))
    });
    SearchResult {
        candidates_total: total,
        candidates_valid: valid,
        candidates_fitting: ranked.len(),
        census,
        min_memory_bytes,
        ranked,
        pareto: front,
        own,
    }
}

/// Best first by the objective (step time by default), ties by summary.
fn order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.rank_key()
        .total_cmp(&b.rank_key())
        .then_with(|| a.summary.cmp(&b.summary))
}

/// A candidate priced by the analytic model only.
fn fast_candidate(s: &pangu_strategies::Strategy, memory: u64, t: f64) -> Candidate {
    Candidate {
        summary: s.summary(),
        strategy: s.clone(),
        memory_bytes: memory,
        fast_step_s: t,
        refined_step_s: None,
        breakdown: None,
        score: None,
    }
}

/// The user's strategy when the search did not rank it (outside the constraints or the memory
/// fraction): priced and simulated on its own, when it is valid and fits the device.
fn own_outside(
    model: &ModelConfig,
    cluster: &Cluster,
    s: &pangu_strategies::Strategy,
    objective: Objective<'_>,
) -> Option<Candidate> {
    let plan = Plan::build(model, cluster, s).ok().filter(Plan::fits)?;
    let t = Analytic.step_time(&plan).ok()?;
    let mut c = fast_candidate(s, plan.max_memory().total.0, t);
    let r = crate::simulate(&plan).ok()?.report;
    c.refined_step_s = Some(r.step_time_s);
    c.breakdown = Some(r.breakdown);
    c.score = objective.score.map(|f| f(&plan, r.step_time_s));
    Some(c)
}
