//! Simulator behaviour: exactness of folding and memoisation, determinism, accounting,
//! schedules, bad input.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::{simulate_full, Options};
use pangu_strategies::{resolve_inputs, Plan, StepReport, StrategySpec};

fn plan(model: &str, cluster: &str, user: StrategySpec) -> Plan {
    let m = ModelConfig::preset(model).unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name(cluster).unwrap()), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn spec(s: &str) -> StrategySpec {
    StrategySpec::from_toml(s, "test").unwrap()
}

fn run(p: &Plan, o: Options) -> (StepReport, Option<String>) {
    let (r, _) = simulate_full(p, o).unwrap();
    (r.report, r.folded)
}

/// Plans that exercise every folding axis, schedule, sharding level and placement.
fn plans() -> Vec<(&'static str, Plan)> {
    vec![
        ("ascend dp fold, tp across islands", plan("pangu-alpha-2.6b", "ascend910:64", spec("tp = 8\nmicro_batch_size = 4\nglobal_batch = 64"))),
        (
            "ascend pipeline, mindspore sharding",
            plan("pangu-alpha-13b", "ascend910:128", spec("tp = 8\npp = 4\nmicro_batch_size = 1\nglobal_batch = 64\nopt_shard = \"mindspore\"\nremat = \"full\"")),
        ),
        (
            "nvidia dp x tp fold, interleaved, sp",
            plan("gpt-22b", "dgx-a100-80g:64", spec("tp = 8\npp = 4\nmicro_batch_size = 1\nglobal_batch = 32\nschedule = \"interleaved:2\"\nseq_parallel = true\nremat = \"selective\"")),
        ),
        ("nvidia zero3, no tp", plan("mpt-7b", "dgx-h100:16", spec("tp = 1\npp = 1\nmicro_batch_size = 2\nglobal_batch = 64\nopt_shard = \"zero3\"\nremat = \"full\"\nprecision = \"bf16\""))),
        ("gpipe, zero1, every:2", plan("pangu-alpha-2.6b", "ascend910:32", spec("tp = 4\npp = 4\nmicro_batch_size = 1\nglobal_batch = 16\nschedule = \"gpipe\"\nopt_shard = \"zero1\"\nremat = \"every:2\""))),
    ]
}

#[test]
fn folding_and_memoisation_give_the_same_step_as_simulating_everything() {
    for (name, p) in plans() {
        let (full, folded_by) = run(&p, Options::FULL);
        assert!(folded_by.is_none());
        let (fast, _) = run(&p, Options::default());
        assert_eq!(full.step_time_s, fast.step_time_s, "{name}: step time");
        // Work and exposed communication agree exactly; time spent waiting for peers at a
        // collective may be charged to `bubble` on one side and `opt_comm` on the other when
        // members are folded, so the waiting categories are compared as a sum.
        use pangu_strategies::Category as C;
        for c in [C::Compute, C::Recompute, C::TpComm, C::DpComm, C::PpComm] {
            let (a, b) = (full.breakdown.get(c), fast.breakdown.get(c));
            assert!(
                (a - b).abs() <= 1e-9 * full.step_time_s.max(1.0),
                "{name}: {} {a} vs {b}",
                c.name()
            );
        }
        let wait = |b: &pangu_strategies::Breakdown| b.bubble + b.opt_comm + b.idle;
        assert!(
            (wait(&full.breakdown) - wait(&fast.breakdown)).abs() <= 1e-9,
            "{name}: waiting"
        );
        assert!((full.hfu - fast.hfu).abs() < 1e-12, "{name}: hfu");
        for (a, b) in full.links.iter().zip(&fast.links) {
            assert!(
                (a.bytes - b.bytes).abs() <= 1e-6 * a.bytes.max(1.0),
                "{name}: {} bytes {} vs {}",
                a.level,
                a.bytes,
                b.bytes
            );
        }
    }
}

#[test]
fn folding_is_used_where_the_topology_is_symmetric() {
    let ps = plans();
    let (_, f) = run(&ps[0].1, Options::default());
    assert_eq!(
        f.as_deref(),
        Some("dp 8 (xor, 8x) × tp 8 (rotation by 4, 2x)")
    ); // tp 8 spans both HCCS islands: only swapping them is a symmetry
    let (_, f) = run(&ps[2].1, Options::default());
    assert!(
        f.as_deref()
            .is_some_and(|f| f.contains("dp 2") && f.contains("tp 8")),
        "{f:?}"
    );
}

#[test]
fn same_inputs_give_bit_identical_reports() {
    for (name, p) in plans().into_iter().take(3) {
        let a = serde_json::to_string(&run(&p, Options::default()).0).unwrap();
        let b = serde_json::to_string(&run(&p, Options::default()).0).unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn every_devices_categories_add_up_to_the_step() {
    for (name, p) in plans() {
        let (r, _) = run(&p, Options::default());
        for d in &r.devices {
            let total = d.breakdown.total();
            assert!(
                (total - r.step_time_s).abs() < 1e-6,
                "{name}: rank {} sums to {total} of {}",
                d.rank,
                r.step_time_s
            );
        }
        assert!(
            r.mfu > 0.0 && r.mfu < r.hfu.max(r.mfu) + 1e-12 && r.hfu < 1.0,
            "{name}: mfu {} hfu {}",
            r.mfu,
            r.hfu
        );
        let path: f64 = r.critical_path.iter().map(|s| s.duration).sum();
        assert!(
            path > 0.0 && path <= r.step_time_s * 1.000_001,
            "{name}: path {path}"
        );
    }
}

#[test]
fn pipeline_bubble_matches_the_schedule() {
    // 1F1B on 4 stages with 8 micro-batches and compute far above communication: the idle
    // share of the pipeline is close to (p-1)/(m+p-1) = 3/11.
    let p = plan(
        "pangu-alpha-2.6b",
        "ascend910:4",
        spec("tp = 1\npp = 4\nmicro_batch_size = 1\nglobal_batch = 8"),
    );
    let (r, _) = run(&p, Options::default());
    let bubble = r.breakdown.bubble / r.step_time_s;
    let ideal = 3.0 / 11.0;
    assert!((bubble - ideal).abs() < 0.05, "bubble {bubble} vs {ideal}");
    // More micro-batches, smaller bubble.
    let p2 = plan(
        "pangu-alpha-2.6b",
        "ascend910:4",
        spec("tp = 1\npp = 4\nmicro_batch_size = 1\nglobal_batch = 32"),
    );
    let (r2, _) = run(&p2, Options::default());
    assert!(r2.breakdown.bubble / r2.step_time_s < bubble);
}

#[test]
fn more_bandwidth_never_slows_a_step() {
    let base = plan(
        "pangu-alpha-13b",
        "ascend910:128",
        spec("tp = 8\npp = 4\nmicro_batch_size = 1\nglobal_batch = 64"),
    );
    let (slow, _) = run(&base, Options::default());
    let mut spec_c = base.cluster.spec.clone();
    spec_c.network.nic.bandwidth = spec_c.network.nic.bandwidth * 4.0;
    let c = Cluster::new(spec_c).unwrap();
    let fast_plan = Plan::build(&base.model, &c, &base.strategy).unwrap();
    let (fast, _) = run(&fast_plan, Options::default());
    assert!(
        fast.step_time_s < slow.step_time_s,
        "{} vs {}",
        fast.step_time_s,
        slow.step_time_s
    );
    assert!(
        fast.breakdown.pp_comm + fast.breakdown.dp_comm
            <= slow.breakdown.pp_comm + slow.breakdown.dp_comm
    );
}

#[test]
fn unknown_chip_families_are_rejected_with_the_reason() {
    let p = plan("pangu-alpha-2.6b", "ascend910:8", spec("tp = 8"));
    let mut spec_c = p.cluster.spec.clone();
    spec_c.chip.name = "Mystery NPU".into();
    let c = Cluster::new(spec_c).unwrap();
    let p = Plan::build(&p.model, &c, &p.strategy).unwrap();
    let e = simulate_full(&p, Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Mystery NPU") && e.contains("a100"), "{e}");
}
