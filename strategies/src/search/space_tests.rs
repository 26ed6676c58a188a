//! Tests of the search space's constraints: parsing, filtering, widening, the census.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;
use crate::strategy::{OptShard, Remat, ScheduleKind};

fn err(entries: &[&str]) -> String {
    SearchSpace::from_entries(entries).unwrap_err().to_string()
}

#[test]
fn bad_entries_are_refused_with_what_would_work() {
    let e = err(&["tensor=8"]);
    assert!(
        e.contains("\"tensor\"") && e.contains("micro_batch_size (mbs"),
        "{e}"
    );
    let e = err(&["tp"]);
    assert!(e.contains("DIM=V1,V2"), "{e}");
    let e = err(&["tp=eight"]);
    assert!(
        e.contains("tp") && e.contains("\"eight\"") && e.contains("whole number"),
        "{e}"
    );
    let e = err(&["pp=0"]);
    assert!(e.contains(">= 1"), "{e}");
    let e = err(&["tp=8,"]);
    assert!(e.contains("empty value"), "{e}");
    let e = err(&["schedule=zigzag"]);
    assert!(e.contains("interleaved:V"), "{e}");
    let e = err(&["sp=maybe"]);
    assert!(
        e.contains("seq_parallel") && e.contains("true or false"),
        "{e}"
    );
    let e = err(&["tp=8", "tp=16"]);
    assert!(
        e.contains("twice") && e.contains("tp=8") && e.contains("tp=16"),
        "{e}"
    );
    for f in [0.0, -0.5, 1.5, f64::NAN] {
        let e = SearchSpace::default()
            .with_memory_fraction(f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 < F <= 1"), "{e}");
    }
    assert!(SearchSpace::default().with_memory_fraction(1.0).is_ok());
    // Values that cannot split the job name the ones that can.
    let s = SearchSpace::from_entries(&["tp=3"]).unwrap();
    let e = s.check(16, 32).unwrap_err().to_string();
    assert!(e.contains("tp=3") && e.contains("1, 2, 4, 8, 16"), "{e}");
    let s = SearchSpace::from_entries(&["mbs=5"]).unwrap();
    assert!(s
        .check(16, 32)
        .unwrap_err()
        .to_string()
        .contains("global batch 32"));
    assert!(SearchSpace::from_entries(&["tp=4", "mbs=2"])
        .unwrap()
        .check(16, 32)
        .is_ok());
}

#[test]
fn aliases_and_keys_name_the_same_dimensions() {
    for (alias, key) in [
        ("mbs", "micro_batch_size"),
        ("SP", "seq_parallel"),
        ("interleave", "vpp"),
        ("zero", "opt_shard"),
        ("micro-batches", "micro_batches"),
        ("order", "rank_order"),
    ] {
        assert_eq!(Dim::parse(alias).unwrap().key(), key);
        assert_eq!(Dim::parse(key).unwrap().key(), key);
    }
    let c = Constraint::parse("mbs=2,1,2").unwrap();
    assert_eq!(c.to_string(), "micro_batch_size=2,1");
}

#[test]
fn a_constrained_space_keeps_only_the_fixed_values() {
    let s = SearchSpace::from_entries(&["tp=4", "pp=2,4", "remat=full", "sp=on"]).unwrap();
    let (all, census) = s.enumerate(32, 64, Precision::Fp16);
    assert!(!all.is_empty());
    for st in &all {
        assert_eq!(st.tp, 4);
        assert!(st.pp == 2 || st.pp == 4);
        assert_eq!(st.remat, Remat::Full);
        assert!(st.seq_parallel);
    }
    assert_eq!(census.kept, all.len());
    // vpp and schedule filter the same field.
    let s = SearchSpace::from_entries(&["vpp=2"]).unwrap();
    let all = enumerate(&s, 16, 32, Precision::Fp16);
    assert!(all
        .iter()
        .all(|x| x.schedule == ScheduleKind::Interleaved { chunks: 2 }));
    let s = SearchSpace::from_entries(&["micro_batches=4"]).unwrap();
    for st in enumerate(&s, 16, 32, Precision::Fp16) {
        assert_eq!(st.micro_batches, 4);
        assert_eq!(st.dp * st.micro_batch_size * 4, 32);
    }
}

#[test]
fn values_outside_the_default_widen_the_space() {
    let base = enumerate(&SearchSpace::default(), 64, 64, Precision::Fp16);
    assert!(base.iter().all(|s| s.tp <= 16 && s.micro_batch_size <= 4));
    // tp 32 and micro-batch size 8 are not in the default space.
    let s = SearchSpace::from_entries(&["tp=16,32", "mbs+=8", "vpp=8"]).unwrap();
    let (all, census) = s.enumerate(64, 64, Precision::Fp16);
    assert!(all.iter().any(|s| s.tp == 32));
    assert!(all.iter().any(|s| s.micro_batch_size == 8));
    assert!(
        all.iter().any(|s| s.micro_batch_size == 1),
        "+= keeps the default"
    );
    assert!(all.iter().all(|s| s.tp >= 16 && s.schedule.chunks() == 8));
    assert!(census.widened > 0);
    // Widening without filtering removes nothing and lists no removal.
    let s = SearchSpace::from_entries(&["precision+=bf16"]).unwrap();
    let (all, census) = s.enumerate(8, 8, Precision::Fp16);
    assert!(census.removals.is_empty());
    assert_eq!(
        all.len(),
        2 * enumerate(&SearchSpace::default(), 8, 8, Precision::Fp16).len()
    );
    assert_eq!(census.widened, all.len() / 2);
    // A micro-batch count widens the micro-batch sizes to the ones it needs.
    let s = SearchSpace::from_entries(&["micro_batches=1", "dp=2"]).unwrap();
    let all = enumerate(&s, 16, 32, Precision::Fp16);
    assert!(!all.is_empty() && all.iter().all(|s| s.micro_batch_size == 16));
}

#[test]
fn the_census_counts_what_each_constraint_removed_in_order() {
    let s = SearchSpace::from_entries(&["tp=2", "opt_shard=none,zero1", "pp=2"]).unwrap();
    let (kept, census) = s.enumerate(16, 32, Precision::Fp16);
    // Brute force over the unconstrained space.
    let all = enumerate(&SearchSpace::default(), 16, 32, Precision::Fp16);
    assert_eq!(census.space, all.len());
    assert_eq!(census.widened, 0);
    let after_tp: Vec<_> = all.iter().filter(|s| s.tp == 2).collect();
    let after_opt: Vec<_> = after_tp
        .iter()
        .filter(|s| matches!(s.opt_shard, OptShard::None | OptShard::Zero1))
        .collect();
    let after_pp = after_opt.iter().filter(|s| s.pp == 2).count();
    let r = &census.removals;
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].constraint.as_str(), r[0].of), ("tp=2", all.len()));
    assert_eq!(r[0].removed, all.len() - after_tp.len());
    assert_eq!(
        (r[1].of, r[1].removed),
        (after_tp.len(), after_tp.len() - after_opt.len())
    );
    assert_eq!(
        (r[2].of, r[2].removed),
        (after_opt.len(), after_opt.len() - after_pp)
    );
    assert_eq!(kept.len(), after_pp);
    assert_eq!(census.kept, after_pp);
    assert!(census.summary().starts_with(&format!(
        "tp=2 removed {} of {}",
        r[0].removed,
        all.len()
    )));
}

#[test]
fn the_memory_fraction_limits_a_plan_against_its_capacity() {
    let model = pangu_model::ModelConfig::preset("pangu-alpha-tiny").unwrap();
    let r = crate::resolve_inputs(
        &model,
        Some(pangu_hardware::Cluster::from_name("ascend910:8").unwrap()),
        &crate::StrategySpec {
            precision: Some(Precision::Fp16),
            ..Default::default()
        },
    )
    .unwrap();
    let plan = Plan::build(&r.model, &r.cluster, &r.strategy).unwrap();
    let used = plan.max_memory().total.0 as f64 / plan.capacity.0 as f64;
    assert!(used > 0.0 && used < 1.0, "{used}");
    let at = |f: f64| {
        SearchSpace::default()
            .with_memory_fraction(f)
            .unwrap()
            .within_memory(&plan)
    };
    assert!(at(1.0) && at((used * 1.01).min(1.0)));
    assert!(!at(used * 0.99));
    assert_eq!(SearchSpace::default().memory_label(), None);
    let s = SearchSpace::default().with_memory_fraction(0.9).unwrap();
    assert_eq!(s.memory_label().unwrap(), "memory fraction 0.9");
}
