//! Blocking pipeline sends (`p2p_blocking`): Megatron-LM without `--overlap-p2p-communication`
//! waits on every send and synchronises the device before the stage computes on, so each
//! micro-batch's sends show on the critical path; without it a stage computes while it sends.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::simulate;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn plan(blocking: bool) -> Plan {
    let m = ModelConfig::preset("gpt-22b").unwrap();
    // tp 8 inside a server, pp 2 across two servers: every send crosses InfiniBand.
    let user = StrategySpec::from_toml(
        &format!(
            "tp = 8\npp = 2\nmicro_batch_size = 4\nglobal_batch = 32\nprecision = \"fp16\"\n\
             remat = \"full\"\np2p_blocking = {blocking}\n"
        ),
        "test",
    )
    .unwrap();
    let r = resolve_inputs(
        &m,
        Some(Cluster::from_name("dgx-a100-80g:16").unwrap()),
        &user,
    )
    .unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

#[test]
fn blocking_sends_put_each_send_on_the_critical_path() {
    let (free, blocking) = (plan(false), plan(true));
    assert!(blocking.strategy.p2p_blocking && !free.strategy.p2p_blocking);
    assert!(blocking.strategy.summary().contains("p2p=blocking"));
    let t_free = simulate(&free).unwrap().report.step_time_s;
    let t_block = simulate(&blocking).unwrap().report.step_time_s;
    // One send: a micro-batch's activations (4 × 2048 × 6144 fp16, split over tp 8 ranks,
    // each on its own 200 Gb/s NIC at the family's link efficiency).
    let bytes = blocking.p2p_bytes().as_f64();
    let send = bytes / (25e9 * 0.78);
    let m = f64::from(blocking.strategy.micro_batches);
    let grew = t_block - t_free;
    // Each micro-batch's forward send (stage 0) and backward send (stage 1) now hold their
    // stage; in 1F1B's steady state roughly one of the two is on the critical path per
    // micro-batch, and at most both are.
    assert!(
        grew > 0.5 * m * send && grew < 2.5 * m * send,
        "grew {grew} s for {m} micro-batches of {send} s sends"
    );
}
