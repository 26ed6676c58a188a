//! The host bound: an eager framework issues each op from the host (`host_forward_op`,
//! `host_backward_op` of a calibration), so a segment of ops takes at least the host's time to
//! issue them. Small models on fast chips run at the host's pace; large ones do not notice.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Seconds;
use pangu_model::ops::{part_ops, OpKind, OpShape, Part};
use pangu_model::ModelConfig;
use pangu_sim::{simulate_with, Calibration, Options};
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn plan(hidden: u32, heads: u32) -> Plan {
    plan_on(hidden, heads, 1)
}

fn plan_on(hidden: u32, heads: u32, tp: u32) -> Plan {
    let mut m = ModelConfig::preset("gpt3-175b")
        .unwrap()
        .with_seq_len(1024)
        .unwrap();
    m.layers = 2;
    m.hidden = hidden;
    m.heads = heads;
    m.kv_heads = Some(heads);
    m.ffn = 4 * hidden;
    m.vocab = 512;
    let user = StrategySpec::from_toml(
        &format!(
            "devices = {tp}\ntp = {tp}\npp = 1\nprecision = \"fp16\"\nmicro_batch_size = 1\n\
             global_batch = 4\nremat = \"none\"\nattention = \"materialised\"\n"
        ),
        "test",
    )
    .unwrap();
    let cluster = pangu_hardware::Cluster::from_name(&format!("dgx-a100-80g:{tp}")).unwrap();
    let r = resolve_inputs(&m, Some(cluster), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn step(p: &Plan, fwd_us: f64, bwd_us: f64) -> f64 {
    let mut cal = Calibration::family("a100").unwrap();
    cal.host_forward_op = Seconds(fwd_us * 1e-6);
    cal.host_backward_op = Seconds(bwd_us * 1e-6);
    simulate_with(p, &cal, Options::default())
        .unwrap()
        .0
        .report
        .step_time_s
}

#[test]
fn a_tiny_model_runs_at_the_host_s_pace() {
    let p = plan(64, 4);
    let free = step(&p, 0.0, 0.0);
    let slow = step(&p, 40.0, 60.0);
    // Every op's chip time is a few microseconds, so each micro-batch costs the host's issue
    // time of its ops: forward ops at 40 us, backward ops at 60 us.
    let sh = OpShape::new(1, 1, false, 2);
    let count = |part: Part| {
        part_ops(&p.model, part, sh)
            .iter()
            .filter(|o| o.kind != OpKind::Comm)
            .count() as f64
    };
    let ops = count(Part::Embedding) + 2.0 * count(Part::Block) + count(Part::Head);
    let host = 4.0 * ops * (40e-6 + 60e-6);
    assert!(slow > free + 0.8 * host, "{slow} vs {free} + {host}");
    assert!(slow < free + host + 1e-3, "{slow} vs {free} + {host}");
}

#[test]
fn a_large_layer_hides_the_host_behind_its_kernels() {
    let p = plan(8192, 64);
    let (free, slow) = (step(&p, 0.0, 0.0), step(&p, 40.0, 60.0));
    // Only the embedding and the 512-word head are short enough to wait for the host (a few
    // ops, well under 1 % of the step); the layers' segments are unchanged.
    assert!(
        slow >= free && slow - free < 0.01 * free,
        "{slow} vs {free}"
    );
}

#[test]
fn the_host_issues_ahead_while_the_chip_waits_for_collectives() {
    // Tensor parallelism over 8 GPUs: each layer's segments are separated by all-reduces. The
    // host issues the next segment while the chip runs the all-reduce, so the step grows by
    // less than on one device, which issues as many ops with nothing to hide them behind.
    // This model's all-reduces are tiny (NCCL's LL protocol: about 15 us each), against a
    // few hundred microseconds of host time per segment: the host issues behind nearly all of
    // their time, so the growth falls short of one device's by at least half the step's
    // all-reduce time (less than all of it: one device's ops, 8 times longer on the chip, hide
    // more of its own host time than tp 8's do).
    let one = plan(64, 4);
    let eight = plan_on(64, 8, 8);
    let grew = |p: &Plan| step(p, 40.0, 60.0) - step(p, 0.0, 0.0);
    let (g1, g8) = (grew(&one), grew(&eight));
    let mut cal = Calibration::family("a100").unwrap();
    cal.host_forward_op = Seconds(0.0);
    cal.host_backward_op = Seconds(0.0);
    let comm = simulate_with(&eight, &cal, Options::default())
        .unwrap()
        .0
        .report
        .breakdown
        .tp_comm;
    assert!(comm > 0.0);
    assert!(
        g1 - g8 > 0.5 * comm && g1 - g8 < g1,
        "tp 8 grew {g8} s, one device {g1} s; the all-reduces take {comm} s"
    );
}
