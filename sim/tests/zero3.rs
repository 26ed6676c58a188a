//! ZeRO-3 / FSDP settings that decide how weights move: the gather precision and the backward
//! prefetch (`zero3_gather`, `zero3_prefetch` in a strategy).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_model::ModelConfig;
use pangu_sim::simulate;
use pangu_strategies::{
    resolve_inputs, BackwardPrefetch, GatherPrecision, GroupKind, Plan, StrategySpec,
};

/// MPT-7B-like FSDP run on one DGX H100 (8 GPUs, NVLink), bf16, no activation checkpointing.
fn plan(extra: &str) -> Plan {
    let m = ModelConfig::preset("mpt-7b").unwrap();
    let user = StrategySpec::from_toml(
        &format!(
            "devices = 8\ndp = 8\nopt_shard = \"zero3\"\nprecision = \"bf16\"\n\
             micro_batch_size = 1\nglobal_batch = 8\nremat = \"full\"\n{extra}"
        ),
        "test",
    )
    .unwrap();
    let cluster = pangu_hardware::Cluster::from_name("dgx-h100:8").unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn gathered_bytes(p: &Plan) -> u64 {
    p.comms
        .iter()
        .filter(|c| c.group == GroupKind::Opt)
        .map(|c| c.bytes_per_step().0)
        .sum()
}

#[test]
fn settings_parse_print_and_default() {
    let p = plan("");
    assert_eq!(p.strategy.zero3_gather, GatherPrecision::Compute);
    assert_eq!(p.strategy.zero3_prefetch, BackwardPrefetch::Pre);
    assert!(!p.strategy.summary().contains("gather"));
    let q = plan("zero3_gather = \"fp32\"\nzero3_prefetch = \"post\"");
    assert_eq!(q.strategy.zero3_gather, GatherPrecision::Fp32);
    assert_eq!(q.strategy.zero3_prefetch, BackwardPrefetch::Post);
    assert!(q.strategy.summary().contains("gather=fp32 prefetch=post"));
    // A full spec round-trips.
    let spec = q.strategy.to_spec();
    assert_eq!(spec.zero3_gather, Some(GatherPrecision::Fp32));
    assert_eq!(spec.zero3_prefetch, Some(BackwardPrefetch::Post));
    for (key, bad) in [("zero3_gather", "fp8"), ("zero3_prefetch", "later")] {
        let e = StrategySpec::from_toml(&format!("{key} = \"{bad}\""), "s.toml").unwrap_err();
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn fp32_gathers_move_twice_the_bytes_and_hold_twice_the_buffers() {
    let bf16 = plan("");
    let fp32 = plan("zero3_gather = \"fp32\"");
    assert_eq!(gathered_bytes(&fp32), 2 * gathered_bytes(&bf16));
    // Buffers = gradient fusion buckets (precision-independent) + two gathered parts.
    let b = |p: &Plan| p.stages[0].memory.buffers.0;
    let fusion = bf16.strategy.grad_bucket.0 * 2;
    assert!(b(&bf16) > fusion, "{} <= {fusion}", b(&bf16));
    assert_eq!(b(&fp32) - fusion, 2 * (b(&bf16) - fusion));
    let (t16, t32) = (
        simulate(&bf16).unwrap().report,
        simulate(&fp32).unwrap().report,
    );
    assert!(t32.step_time_s >= t16.step_time_s);
}

#[test]
fn post_prefetch_exposes_the_backward_gathers() {
    // With `pre` each layer's backward gather overlaps the layer above's backward; with `post`
    // it starts only when that computation ends, so the step grows by about one gather per
    // layer and micro-batch, and the exposed time is charged to opt_comm.
    let pre = simulate(&plan("zero3_gather = \"fp32\"")).unwrap().report;
    let post = simulate(&plan("zero3_gather = \"fp32\"\nzero3_prefetch = \"post\""))
        .unwrap()
        .report;
    assert!(
        post.step_time_s > 1.02 * pre.step_time_s,
        "pre {} post {}",
        pre.step_time_s,
        post.step_time_s
    );
    assert!(post.breakdown.opt_comm > pre.breakdown.opt_comm);
    // Compute is the same work either way.
    assert!((post.breakdown.compute - pre.breakdown.compute).abs() < 1e-9);
    // The categories still add up to the step on every device.
    for d in &post.devices {
        let sum: f64 = pangu_strategies::Category::ALL
            .iter()
            .map(|&c| d.breakdown.get(c))
            .sum();
        assert!((sum - post.step_time_s).abs() < 1e-6 * post.step_time_s);
    }
}

#[test]
fn without_data_parallelism_the_settings_change_nothing() {
    let m = ModelConfig::preset("mpt-7b").unwrap();
    let run = |extra: &str| {
        let user = StrategySpec::from_toml(
            &format!(
                "devices = 8\ndp = 1\ntp = 8\nopt_shard = \"zero3\"\nprecision = \"bf16\"\n\
                 micro_batch_size = 1\nglobal_batch = 2\nremat = \"full\"\n{extra}"
            ),
            "test",
        )
        .unwrap();
        let cluster = pangu_hardware::Cluster::from_name("dgx-h100:8").unwrap();
        let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
        let p = Plan::build(&r.model, &r.cluster, &r.strategy).unwrap();
        simulate(&p).unwrap().report.step_time_s
    };
    assert_eq!(
        run(""),
        run("zero3_gather = \"fp32\"\nzero3_prefetch = \"post\"")
    );
}
