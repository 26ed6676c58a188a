//! Megatron's tensor-parallel communication overlap (`tp_comm_overlap`): the sequence-parallel
//! all-gathers and reduce-scatters run beside the GEMMs they feed or drain, so they leave
//! the step's critical path, and nothing else changes.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::analytic::Analytic;
use pangu_sim::workload::Work;
use pangu_sim::{simulate_full, Options};
use pangu_strategies::search::CostModel;
use pangu_strategies::{resolve_inputs, GroupKind, Plan, StrategySpec};

/// A 4-layer GPT-3 175B-shaped model on one DGX H100, tp 8 with sequence parallelism.
fn plan(extra: &str) -> Result<Plan, String> {
    let m = ModelConfig {
        layers: 4,
        ..ModelConfig::preset("gpt3-175b").unwrap()
    };
    let toml = format!(
        "tp = 8\npp = 1\nmicro_batch_size = 1\nglobal_batch = 4\nprecision = \"bf16\"\n\
         remat = \"none\"\n{extra}"
    );
    let user = StrategySpec::from_toml(&toml, "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name("dgx-h100:8").unwrap()), &user)
        .map_err(|e| e.to_string())?;
    Plan::build(&r.model, &r.cluster, &r.strategy).map_err(|e| e.to_string())
}

/// Device 0's seconds in tensor-parallel collectives (hidden or not), and its exposed tp_comm.
fn tp_time(p: &Plan) -> (f64, f64, f64) {
    let (run, w) = simulate_full(p, Options::FULL).unwrap();
    let mut busy = 0.0;
    for (t, task) in w.tasks.iter().enumerate() {
        if let (0, Work::Coll { inst }) = (task.device, task.work) {
            if w.colls[inst as usize].group == GroupKind::Tp {
                let (a, b) = run.times[t];
                busy += (b - a) as f64 * 1e-9;
            }
        }
    }
    (
        busy,
        run.report.devices[0].breakdown.tp_comm,
        run.report.step_time_s,
    )
}

#[test]
fn the_overlap_hides_the_sequence_parallel_collectives_behind_their_gemms() {
    let plain = plan("seq_parallel = true\n").unwrap();
    let over = plan("seq_parallel = true\ntp_comm_overlap = true\n").unwrap();
    let (busy0, exposed0, step0) = tp_time(&plain);
    let (busy1, exposed1, step1) = tp_time(&over);
    // Without the overlap every collective sits between two GEMMs, on the critical path.
    assert!(exposed0 > 0.9 * busy0, "exposed {exposed0} of {busy0}");
    // The same transfers run (the same collectives, sizes and links) ...
    assert!((busy1 - busy0).abs() < 0.05 * busy0, "{busy1} vs {busy0}");
    // ... but most of their time now hides under the GEMMs.
    assert!(
        exposed1 < 0.5 * exposed0,
        "exposed {exposed1} vs {exposed0}"
    );
    // The step gains what stopped showing, and no more than the communication took.
    assert!(step1 < step0);
    assert!(
        step0 - step1 <= exposed0 - exposed1 + 1e-6,
        "{step0} -> {step1}, exposed {exposed0} -> {exposed1}"
    );
    // The work is the same.
    let r0 = pangu_sim::simulate(&plain).unwrap().report;
    let r1 = pangu_sim::simulate(&over).unwrap().report;
    assert!((r0.mfu * r0.step_time_s - r1.mfu * r1.step_time_s).abs() < 1e-9 * r0.step_time_s);
    // The analytic ranking prices it too, within the usual distance of the simulator.
    let a0 = Analytic.step_time(&plain).unwrap();
    let a1 = Analytic.step_time(&over).unwrap();
    assert!(a1 < a0);
    assert!(
        (a1 / r1.step_time_s - 1.0).abs() < 0.15,
        "{a1} vs {}",
        r1.step_time_s
    );
}

#[test]
fn the_overlap_needs_tensor_and_sequence_parallelism_as_megatron_asserts() {
    let e = plan("seq_parallel = false\ntp_comm_overlap = true\n").unwrap_err();
    assert!(
        e.contains("tp_comm_overlap") && e.contains("seq_parallel"),
        "{e}"
    );
    // Off, the key changes nothing: the plan is the one without it.
    let a = plan("seq_parallel = true\n").unwrap();
    let b = plan("seq_parallel = true\ntp_comm_overlap = false\n").unwrap();
    let ra = pangu_sim::simulate(&a).unwrap().report;
    let rb = pangu_sim::simulate(&b).unwrap().report;
    assert_eq!(ra.step_time_s.to_bits(), rb.step_time_s.to_bits());
}
