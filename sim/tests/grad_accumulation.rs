//! `grad_accumulation`: micro-batches' weight gradients summed in the weight-gradient product
//! (`fused`, the default) or by a separate memory-bound pass per weight and micro-batch
//! (`separate`: Megatron-LM 2021's `main_grad.add_` hook, `--no-gradient-accumulation-fusion`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_model::ops::{part_ops, OpShape, Part};
use pangu_model::ModelConfig;
use pangu_sim::cost::{Calibration, CostModel};
use pangu_sim::simulate;
use pangu_strategies::{resolve_inputs, GradAccumulation, Plan, StrategySpec};

/// GPT-2-medium-like model on one A100, no parallelism, four micro-batches.
fn plan(extra: &str) -> Plan {
    let m = ModelConfig::preset("gpt3-175b")
        .unwrap()
        .with_seq_len(1024)
        .unwrap();
    let mut m = m;
    m.layers = 4;
    m.hidden = 1024;
    m.heads = 16;
    m.kv_heads = Some(16);
    m.ffn = 4096;
    m.vocab = 1024;
    let user = StrategySpec::from_toml(
        &format!(
            "devices = 1\ntp = 1\npp = 1\nprecision = \"fp16\"\nmicro_batch_size = 2\nglobal_batch = 8\n\
             remat = \"none\"\n{extra}"
        ),
        "test",
    )
    .unwrap();
    let cluster = pangu_hardware::Cluster::from_name("dgx-a100-80g:1").unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

#[test]
fn the_key_parses_prints_and_defaults_to_fused() {
    let fused = plan("");
    assert_eq!(fused.strategy.grad_accumulation, GradAccumulation::Fused);
    assert!(!fused.strategy.summary().contains("gacc"));
    let sep = plan("grad_accumulation = \"separate\"");
    assert_eq!(sep.strategy.grad_accumulation, GradAccumulation::Separate);
    assert!(sep.strategy.summary().contains("gacc=separate"));
    let back = sep.strategy.to_spec();
    assert_eq!(back.grad_accumulation, Some(GradAccumulation::Separate));
    let e = StrategySpec::from_toml("grad_accumulation = \"later\"", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fused") && e.contains("separate"), "{e}");
}

#[test]
fn a_separate_pass_reads_the_gradient_and_updates_the_fp32_buffer() {
    let cal = Calibration::family("a100").unwrap();
    let fused = CostModel::for_plan(&plan(""), cal.clone()).unwrap();
    let sep = CostModel::for_plan(&plan("grad_accumulation = \"separate\""), cal.clone()).unwrap();
    let p = plan("");
    let ops = part_ops(&p.model, Part::Block, OpShape::new(2, 1, false, 2));
    let up = ops.iter().find(|o| o.name == "ffn_up").unwrap();
    assert!(up.params > 0);
    // Forward unchanged; backward gains one pass: the fp16 gradient read, the fp32 buffer read
    // and written (2 + 4 + 4 bytes per weight) at the calibrated HBM rate, plus an op's launch.
    assert_eq!(fused.forward(up), sep.forward(up));
    let extra = sep.backward(up) - fused.backward(up);
    let want = cal.op_overhead.0 + up.params as f64 * 10.0 / (2039e9 * cal.memory_efficiency);
    assert!((extra - want).abs() / want < 1e-9, "{extra} vs {want}");
    // Ops without weights (the attention core) pay nothing.
    let core = ops.iter().find(|o| o.attention_core).unwrap();
    assert_eq!(core.params, 0);
    assert_eq!(fused.backward(core), sep.backward(core));
}

#[test]
fn every_micro_batch_pays_the_pass_on_one_device() {
    let fused = simulate(&plan("")).unwrap().report.step_time_s;
    let sep = simulate(&plan("grad_accumulation = \"separate\""))
        .unwrap()
        .report
        .step_time_s;
    // One device runs everything in sequence: the step grows by four micro-batches' passes over
    // every op with weights (about 10 bytes per weight, and one launch each).
    let p = plan("");
    let cal = Calibration::family("a100").unwrap();
    let sh = OpShape::new(2, 1, false, 2);
    let pass = |part: Part| -> f64 {
        part_ops(&p.model, part, sh)
            .iter()
            .filter(|o| o.params > 0)
            .map(|o| cal.op_overhead.0 + o.params as f64 * 10.0 / (2039e9 * 0.85))
            .sum()
    };
    let per_micro_batch = pass(Part::Embedding) + 4.0 * pass(Part::Block) + pass(Part::Head);
    let grew = sep - fused;
    let want = 4.0 * per_micro_batch;
    assert!(
        (grew - want).abs() < 0.02 * want,
        "grew {grew} s, four passes {want} s"
    );
}
