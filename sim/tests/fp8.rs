//! fp8 training (Transformer Engine's recipe) against bf16 on H100s: the planner's checks and
//! memory, the simulator's step time, the analytic model the search ranks with.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_model::ModelConfig;
use pangu_sim::analytic::Analytic;
use pangu_sim::{simulate, Calibration, CostModel};
use pangu_strategies::search::{CostModel as _, SearchSpace};
use pangu_strategies::ScheduleKind;
use pangu_strategies::{fp8, resolve_inputs, Plan, PlanError, Precision, StrategySpec};

/// MPT-7B on one DGX H100, 8 sequences of one per micro-batch; `layout` gives tp, dp and the
/// optimizer sharding.
fn plan_on(cluster: &str, precision: &str, layout: &str) -> Result<Plan, PlanError> {
    let m = ModelConfig::preset("mpt-7b").unwrap();
    let user = StrategySpec::from_toml(
        &format!(
            "devices = 8\nprecision = \"{precision}\"\nmicro_batch_size = 1\nglobal_batch = 8\n{layout}"
        ),
        "test",
    )
    .unwrap();
    let cluster = pangu_hardware::Cluster::from_name(cluster).unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user)?;
    Plan::new(&r.model, &r.cluster, &r.strategy)
}

/// tp 4 × dp 2 with ZeRO-1 (4 micro-batches per replica).
const TP4: &str = "tp = 4\ndp = 2\nopt_shard = \"zero1\"";

fn plan(precision: &str) -> Plan {
    plan_on("dgx-h100:8", precision, TP4).unwrap()
}

#[test]
fn fp8_shortens_the_step_by_a_bounded_amount() {
    let (bf16, f8) = (plan("bf16"), plan("fp8"));
    let (tb, tf) = (
        simulate(&bf16).unwrap().report.step_time_s,
        simulate(&f8).unwrap().report.step_time_s,
    );
    // The linear GEMMs (~85 % of MPT-7B's compute at sequence 2048) run at twice the peak,
    // plus their casts; attention, element-wise ops and communication do not speed up.
    let r = tf / tb;
    assert!(r > 0.5 && r < 0.85, "fp8 {tf} s vs bf16 {tb} s: ratio {r}");
    // The analytic model the search ranks with sees the same direction and size.
    let (ab, af) = (
        Analytic.step_time(&bf16).unwrap(),
        Analytic.step_time(&f8).unwrap(),
    );
    assert!(af < ab && af / ab > 0.5, "analytic {af} vs {ab}");
}

#[test]
fn a_linear_gemm_runs_at_the_fp8_peak_plus_its_casts_and_attention_does_not_change() {
    let p = plan("fp8");
    let chip = &p.cluster.spec.chip;
    let cal = || Calibration::for_chip(chip).unwrap();
    let c8 = CostModel::new(chip, Precision::Fp8, cal()).unwrap();
    let c16 = CostModel::new(chip, Precision::Bf16, cal()).unwrap();
    let op = |name: &str| p.ops.block.iter().find(|o| o.name == name).unwrap();
    let ffn = op("ffn_up");
    assert!(ffn.layer_linear);
    let (f8, f16) = (c8.forward(ffn), c16.forward(ffn));
    let cast =
        fp8::quantize_bytes(ffn, 2).0 as f64 / (chip.hbm_bandwidth.0 * c8.cal.memory_efficiency);
    let overhead = c8.cal.op_overhead.0;
    // The GEMM part scales by the peaks (same curve; 989 against 1979 TFLOP/s, about half);
    // the cast is added.
    let gemm8 = f8 - cast - overhead;
    let gemm16 = f16 - overhead;
    let want = chip.bf16.unwrap().0 / chip.fp8.unwrap().0;
    assert!((gemm8 / gemm16 - want).abs() < 1e-9, "{gemm8} vs {gemm16}");
    assert!(c8.backward(ffn) < c16.backward(ffn));
    let scores = op("attn_scores");
    assert_eq!(c8.forward(scores), c16.forward(scores));
    assert_eq!(c8.peak(), c16.peak());
    assert_eq!(
        c8.fp8_weight_cast(1000),
        1000.0 * 4.0 / (chip.hbm_bandwidth.0 * c8.cal.memory_efficiency)
    );
    assert_eq!(c16.fp8_weight_cast(1000), 0.0);
}

#[test]
fn fp8_adds_the_weight_copies_and_saves_the_linear_inputs_in_fp8() {
    let (bf16, f8) = (plan("bf16"), plan("fp8"));
    let (mb, mf) = (bf16.stages[0].memory, f8.stages[0].memory);
    // Model state is bf16 mixed precision's.
    assert_eq!(
        (mb.weights, mb.gradients, mb.optimizer, mb.buffers),
        (mf.weights, mf.gradients, mf.optimizer, mf.buffers)
    );
    // Each linear weight in fp8 and its transpose (2 bytes per element), plus the amax
    // histories of 3 tensors per GEMM, for MPT-7B's 32 layers split 4 ways.
    let h = u64::from(f8.model.hidden);
    let layers = u64::from(f8.model.layers);
    let linear = layers * 12 * h * h / 4;
    let scaling = layers * 4 * 3 * (1024 + 2) * 4;
    assert_eq!(mb.fp8_weights.0, 0);
    assert_eq!(mf.fp8_weights.0, 2 * linear + scaling);
    assert_eq!(f8.fp8_cast_weights(0), linear);
    assert_eq!(bf16.fp8_cast_weights(0), 0);
    // The linear GEMMs' saved inputs are 1 byte per element: activations fall.
    assert!(mf.activations < mb.activations);
    assert_eq!(
        mf.total.0 + mb.activations.0,
        mb.total.0 + mf.fp8_weights.0 + mf.activations.0
    );
    // ZeRO-3 copies only the two gathered layers.
    let z3 = plan_on(
        "dgx-h100:8",
        "fp8",
        "opt_shard = \"zero3\"\ntp = 1\ndp = 8\nremat = \"full\"",
    )
    .unwrap();
    let per_layer = 12 * h * h;
    assert_eq!(
        z3.stages[0].memory.fp8_weights.0,
        2 * 2 * per_layer + scaling
    );
}

#[test]
fn chips_without_fp8_refuse_it_by_name() {
    for (cluster, chip) in [("dgx-a100-80g:8", "A100"), ("ascend910:8", "Ascend 910")] {
        let e = plan_on(cluster, "fp8", TP4).unwrap_err().to_string();
        assert!(
            e.contains(chip) && e.contains("has no fp8 matrix unit"),
            "{e}"
        );
        assert!(e.contains("use fp16") && e.contains("h100"), "{e}");
    }
    let e = plan_on("dgx-a100-80g:8", "fp8", TP4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bf16"), "{e}");
    assert!(plan_on("dgx-h200:8", "fp8", TP4).is_ok());
}

#[test]
fn fp8_round_trips_through_toml() {
    let spec = StrategySpec::from_toml("precision = \"fp8\"\ntp = 4", "s.toml").unwrap();
    assert_eq!(spec.precision, Some(Precision::Fp8));
    let text = toml::to_string(&spec).unwrap();
    assert!(text.contains("precision = \"fp8\""), "{text}");
    assert_eq!(StrategySpec::from_toml(&text, "again.toml").unwrap(), spec);
    let p = plan("fp8");
    let full = toml::to_string(&p.strategy.to_spec()).unwrap();
    let back = StrategySpec::from_toml(&full, "full.toml").unwrap();
    assert_eq!(back.precision, Some(Precision::Fp8));
}

#[test]
fn the_search_ranks_fp8_strategies_on_h100_and_finds_none_on_a100() {
    // MPT's 2048-token context (the preset's reference run).
    let m = ModelConfig::preset("mpt-7b")
        .unwrap()
        .with_seq_len(2048)
        .unwrap();
    let space = SearchSpace {
        micro_batch_sizes: vec![1],
        schedules: vec![ScheduleKind::OneFOneB],
        max_tp: 8,
        ..SearchSpace::default()
    };
    let run = |cluster: &str, p: Precision| {
        let c = pangu_hardware::Cluster::from_name(cluster).unwrap();
        pangu_sim::search::search(&m, &c, 8, 8, p, &space, 1, None, &|_, _, _| {})
    };
    let (b, f) = (
        run("dgx-h100:8", Precision::Bf16),
        run("dgx-h100:8", Precision::Fp8),
    );
    assert!(!f.ranked.is_empty());
    assert_eq!(f.ranked[0].strategy.precision, Precision::Fp8);
    assert!(f.ranked[0].fast_step_s < b.ranked[0].fast_step_s);
    assert!(f.ranked[0].refined_step_s < b.ranked[0].refined_step_s);
    let a = run("dgx-a100-80g:8", Precision::Fp8);
    assert_eq!((a.candidates_valid, a.ranked.len()), (0, 0));
}
