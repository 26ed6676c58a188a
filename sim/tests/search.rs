//! The search driver within a constrained space: only the fixed values come back, the census
//! counts what each constraint and the memory fraction removed, and the user's own strategy
//! is simulated whether or not the space holds it.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::search::{search, SearchResult};
use pangu_strategies::search::SearchSpace;
use pangu_strategies::{resolve_inputs, Precision, Strategy, StrategySpec};

fn inputs() -> (ModelConfig, Cluster) {
    (
        // The reference run's 128 tokens (strategies/presets/references.toml).
        ModelConfig::preset("pangu-alpha-tiny")
            .unwrap()
            .with_seq_len(128)
            .unwrap(),
        Cluster::from_name("ascend910:8").unwrap(),
    )
}

fn run(space: &SearchSpace, refine: usize, own: Option<&Strategy>) -> SearchResult {
    let (m, c) = inputs();
    search(
        &m,
        &c,
        8,
        8,
        Precision::Fp16,
        space,
        refine,
        own,
        &|_, _, _| {},
    )
}

#[test]
fn a_constrained_search_ranks_only_the_fixed_values() {
    let full = run(&SearchSpace::default(), 0, None);
    let space = SearchSpace::from_entries(&["tp=2", "pp=2,4"]).unwrap();
    let r = run(&space, 1, None);
    assert!(!r.ranked.is_empty());
    assert!(r.ranked.len() < full.ranked.len());
    for c in &r.ranked {
        assert_eq!(c.strategy.tp, 2);
        assert!(matches!(c.strategy.pp, 2 | 4), "{}", c.summary);
    }
    // Exactly the unconstrained search's fitting candidates with those values.
    let expected = full
        .ranked
        .iter()
        .filter(|c| c.strategy.tp == 2 && matches!(c.strategy.pp, 2 | 4))
        .count();
    assert_eq!(r.ranked.len(), expected);
    let census = &r.census;
    assert_eq!(census.space, full.candidates_total);
    assert_eq!(census.removals[0].of, full.candidates_total);
    assert_eq!(census.kept, r.candidates_total);
    let removed: usize = census.removals.iter().map(|x| x.removed).sum();
    assert_eq!(census.space - removed, census.kept);
}

#[test]
fn the_memory_fraction_removes_what_does_not_fit_in_it() {
    let (_, cluster) = inputs();
    let capacity = cluster.spec.chip.usable_memory().0 as f64;
    let full = run(&SearchSpace::default(), 0, None);
    let mut mem: Vec<u64> = full.ranked.iter().map(|c| c.memory_bytes).collect();
    mem.sort_unstable();
    // A fraction between the smallest and the largest memory found.
    let f = mem[mem.len() / 2] as f64 / capacity;
    let space = SearchSpace::default().with_memory_fraction(f).unwrap();
    let r = run(&space, 0, None);
    assert!(r
        .ranked
        .iter()
        .all(|c| c.memory_bytes as f64 <= f * capacity));
    let over = mem.iter().filter(|&&m| m as f64 > f * capacity).count();
    assert!(over > 0);
    let last = r.census.removals.last().unwrap();
    assert!(last.constraint.starts_with("memory fraction"));
    assert_eq!((last.removed, last.of), (over, full.candidates_fitting));
    assert_eq!(r.ranked.len(), full.ranked.len() - over);
}

/// The user's strategy of these tests: dp 8, tp 1, fp16.
fn pure_data_parallel() -> Strategy {
    let (m, c) = inputs();
    let spec = StrategySpec {
        tp: Some(1),
        dp: Some(8),
        precision: Some(Precision::Fp16),
        ..Default::default()
    };
    resolve_inputs(&m, Some(c), &spec).unwrap().strategy
}

#[test]
fn the_users_strategy_is_simulated_even_outside_the_space() {
    let own = pure_data_parallel();
    let space = SearchSpace::from_entries(&["tp=2"]).unwrap();
    let r = run(&space, 1, Some(&own));
    assert!(r.ranked.iter().all(|x| x.strategy.tp == 2));
    let mine = r.own.as_ref().unwrap();
    assert_eq!(mine.strategy, own);
    assert!(mine.refined_step_s.unwrap() > 0.0 && mine.breakdown.is_some());
    // Inside the space it competes and is refined wherever it ranks.
    let r = run(&SearchSpace::default(), 1, Some(&own));
    let ranked = r.ranked.iter().find(|x| x.strategy == own).unwrap();
    assert!(ranked.refined_step_s.is_some());
    assert_eq!(r.own.unwrap().refined_step_s, ranked.refined_step_s);
}

#[test]
fn without_refinement_the_analytic_order_stands_with_the_users_strategy_in_it() {
    let own = pure_data_parallel();
    let r = run(&SearchSpace::default(), 0, Some(&own));
    // Only the user's strategy is simulated, and it keeps its analytic rank.
    let refined: Vec<_> = r
        .ranked
        .iter()
        .filter(|x| x.refined_step_s.is_some())
        .collect();
    assert_eq!(refined.len(), 1);
    assert_eq!(refined[0].strategy, own);
    assert!(
        r.ranked
            .windows(2)
            .all(|w| w[0].fast_step_s <= w[1].fast_step_s),
        "not in analytic order"
    );
}
