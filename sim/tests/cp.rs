//! Context parallelism in the simulator: the K/V ring overlapped with attention, the
//! all-gather variant exposed, less activation memory, and folding exact with cp.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::workload::Work;
use pangu_sim::{simulate_full, Options};
use pangu_strategies::{resolve_inputs, GroupKind, Plan, StrategySpec};

/// A 4-layer mpt-7b-shaped model with a long sequence on two DGX H100s.
fn plan(seq: u32, toml: &str) -> Plan {
    let m = ModelConfig {
        seq_len: seq,
        layers: 4,
        ..ModelConfig::preset("mpt-7b").unwrap()
    };
    let user = StrategySpec::from_toml(toml, "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name("dgx-h100:16").unwrap()), &user).unwrap();
    Plan::build(&m, &r.cluster, &r.strategy).unwrap()
}

const BASE: &str =
    "micro_batch_size = 1\nglobal_batch = 4\nprecision = \"bf16\"\nremat = \"none\"\n";

/// Seconds device 0 spends in cp exchange tasks (transfers, hidden or not).
fn cp_transfer_time(p: &Plan) -> (f64, f64) {
    let (run, w) = simulate_full(p, Options::FULL).unwrap();
    let mut busy = 0.0;
    for (t, task) in w.tasks.iter().enumerate() {
        if let (0, Work::Coll { inst }) = (task.device, task.work) {
            if w.colls[inst as usize].group == GroupKind::Cp {
                let (a, b) = run.times[t];
                busy += (b - a) as f64 * 1e-9;
            }
        }
    }
    (busy, run.report.devices[0].breakdown.cp_comm)
}

#[test]
fn cp2_cuts_activation_memory_and_hides_the_ring_behind_attention() {
    let one = plan(32768, &format!("{BASE}tp = 8\n"));
    let two = plan(32768, &format!("{BASE}tp = 8\ncp = 2\n"));
    assert!(two.max_memory().activations.0 * 2 <= one.max_memory().activations.0 + 1);
    let (busy, exposed) = cp_transfer_time(&two);
    assert!(busy > 0.0);
    // Only the last dK/dV hop of each layer's backward (and any step longer than its
    // attention block) shows: far less than the transfers take.
    assert!(
        exposed > 0.0 && exposed < 0.5 * busy,
        "exposed {exposed} of {busy}"
    );
    let r1 = pangu_sim::simulate(&one).unwrap().report;
    let r2 = pangu_sim::simulate(&two).unwrap().report;
    assert_eq!(r1.breakdown.cp_comm, 0.0);
    assert!(r2.breakdown.cp_comm > 0.0);
    // Same FLOPs per token: the causal load balancing leaves attention work per rank 1/cp.
    assert!(
        (r1.mfu - r2.mfu).abs() / r1.mfu < 0.2,
        "{} vs {}",
        r1.mfu,
        r2.mfu
    );
    // The all-gather variant exposes its collectives whole.
    let ag = plan(
        32768,
        &format!("{BASE}tp = 8\ncp = 2\ncp_comm = \"all-gather\"\n"),
    );
    let (ag_busy, ag_exposed) = cp_transfer_time(&ag);
    assert!(ag_exposed > exposed, "{ag_exposed} vs ring {exposed}");
    assert!((ag_exposed - ag_busy).abs() <= 1e-6 * ag_busy.max(1e-9) + 1e-9);
}

#[test]
fn folded_equals_full_with_cp() {
    // (strategy, whether the cp axis itself folds). The gradient group spans dp × cp in
    // rank order (dp major, as Megatron-core's dp-cp group); its flat ring maps onto itself
    // under a cp shift only when dp is 1 or the placement makes it hierarchical, otherwise
    // the search for a symmetry falls back to dp × tp, still exact.
    for (toml, cp_folds) in [
        (format!("{BASE}tp = 4\ncp = 2\n"), true),
        (format!("{BASE}tp = 4\ncp = 2\npp = 2\n"), true),
        (format!("{BASE}tp = 2\ncp = 2\npp = 2\n"), false),
        (
            format!("{BASE}tp = 2\ncp = 4\nopt_shard = \"zero1\"\ncp_comm = \"all-gather\"\n"),
            true,
        ),
        (
            format!("{BASE}tp = 2\ncp = 8\n").replace("remat = \"none\"", "remat = \"selective\""),
            true,
        ),
    ] {
        let p = plan(8192, &toml);
        let (full, _) = simulate_full(&p, Options::FULL).unwrap();
        let (fast, _) = simulate_full(&p, Options::default()).unwrap();
        let folded = fast.folded.clone().unwrap_or_default();
        assert!(!folded.is_empty(), "{toml}: not folded");
        assert_eq!(
            folded.contains("cp"),
            cp_folds,
            "{toml}: folded by {folded}"
        );
        assert_eq!(
            full.report.step_time_s, fast.report.step_time_s,
            "{toml}: folded by {folded}"
        );
        let (a, b) = (full.report.breakdown.cp_comm, fast.report.breakdown.cp_comm);
        assert!((a - b).abs() <= 1e-9, "{toml}: cp_comm {a} vs {b}");
        assert!(a > 0.0, "{toml}");
    }
}
