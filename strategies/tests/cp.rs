//! Context parallelism in the plan: memory, the communication rows, the gradient group, the
//! sequence check and the K/V exchange programs.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::{Bytes, Cluster};
use pangu_model::ops::totals;
use pangu_model::ModelConfig;
use pangu_strategies::strategy::{Axis, CpComm};
use pangu_strategies::{resolve_inputs, GroupKind, Plan, PlanError, StrategySpec};

/// mpt-7b (32 heads, kv_heads 32, hidden 4096) with a long sequence on two DGX H100s.
fn plan(seq: u32, toml: &str) -> Result<Plan, PlanError> {
    let m = ModelConfig {
        seq_len: seq,
        ..ModelConfig::preset("mpt-7b").unwrap()
    };
    let user = StrategySpec::from_toml(toml, "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name("dgx-h100:16").unwrap()), &user)?;
    Plan::build(&m, &r.cluster, &r.strategy)
}

const BASE: &str = "tp = 8\nmicro_batch_size = 1\nglobal_batch = 8\nprecision = \"bf16\"\n";

#[test]
fn cp_splits_the_sequence_the_activations_and_the_attention_work() {
    let one = plan(16384, BASE).unwrap();
    let two = plan(16384, &format!("{BASE}cp = 2\n")).unwrap();
    assert_eq!((one.strategy.dp, two.strategy.dp), (2, 1));
    assert_eq!(two.strategy.dp_cp(), 2);
    assert_eq!(two.mesh.size(), 16);
    // Every token-proportional quantity halves; attention (s/cp queries × s keys) halves too.
    let (a, b) = (totals(&one.ops.block), totals(&two.ops.block));
    assert!((a.fwd_flops.0 / b.fwd_flops.0 - 2.0).abs() < 1e-9);
    assert_eq!(a.saved.0, 2 * b.saved.0);
    assert_eq!(one.layer_input_bytes().0, 2 * two.layer_input_bytes().0);
    // The attention core (here the fused kernel: H100 defaults to flash) pairs the local
    // queries with the whole sequence's keys.
    let scores = |p: &Plan| p.ops.block.iter().find(|o| o.attention_core).unwrap().dims;
    assert_eq!(scores(&two)[1..3], [8192, 16384]);
    let (ma, mb) = (one.max_memory(), two.max_memory());
    assert!(mb.activations.0 * 2 <= ma.activations.0 + 1);
    // Same weights per device, and the gradient group is dp·cp = 2 in both plans, so the
    // model state is equal; the cp plan adds the ring's K/V buffers: two K/V blocks and two
    // dK/dV blocks of b·(s/cp)·2·kv_dim/tp bf16 elements.
    assert_eq!((ma.weights, ma.optimizer), (mb.weights, mb.optimizer));
    let block = 8192 * 2 * 4096 / 8 * 2;
    assert_eq!(two.kv_block_bytes(), Bytes(block));
    assert_eq!(mb.buffers.0 - ma.buffers.0, 4 * block);
}

#[test]
fn comm_table_has_the_cp_rows_with_bytes_per_step() {
    let ring = plan(16384, &format!("{BASE}cp = 2\nremat = \"none\"\n")).unwrap();
    let block = ring.kv_block_bytes();
    let rows: Vec<_> = ring
        .comms
        .iter()
        .filter(|c| c.group == GroupKind::Cp)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // 32 layers × 8 micro-batches; forward: cp − 1 = 1 ring step of one block; backward: one
    // K/V block and two dK/dV hops.
    let fwd = rows
        .iter()
        .find(|r| r.purpose.starts_with("K/V blocks"))
        .unwrap();
    let bwd = rows.iter().find(|r| r.purpose.contains("dK/dV")).unwrap();
    assert!(fwd.purpose.contains("K/V blocks") && fwd.collective.is_none());
    assert_eq!((fwd.bytes_per_call, fwd.calls_per_step), (block, 32 * 8));
    assert_eq!(
        (bwd.bytes_per_call, bwd.calls_per_step),
        (block, 32 * 8 * 3)
    );
    assert_eq!(fwd.bytes_per_step(), Bytes(block.0 * 256));
    // The gradient reduction spans dp·cp.
    let dp = ring
        .comms
        .iter()
        .find(|c| c.group == GroupKind::Dp)
        .unwrap();
    assert_eq!(dp.group_size, 2);

    let ag = plan(
        16384,
        &format!("{BASE}cp = 2\ncp_comm = \"all-gather\"\nremat = \"full\"\n"),
    )
    .unwrap();
    assert_eq!(ag.strategy.cp_comm, CpComm::AllGather);
    let rows: Vec<_> = ag
        .comms
        .iter()
        .filter(|c| c.group == GroupKind::Cp)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // K/V gathered for the forward, its recomputation and the backward; dK/dV scattered once.
    assert!(rows.iter().all(|r| r.bytes_per_call == Bytes(2 * block.0)));
    let calls: Vec<u64> = rows.iter().map(|r| r.calls_per_step).collect();
    assert_eq!(calls, vec![3 * 256, 256]);
    // The all-gather buffers: the gathered K/V and the whole dK/dV.
    let m = ag.max_memory();
    let ring_full = plan(16384, &format!("{BASE}cp = 2\nremat = \"full\"\n")).unwrap();
    assert_eq!(
        m.buffers.0 - ring_full.max_memory().buffers.0,
        2 * 2 * block.0 - 4 * block.0
    );
}

#[test]
fn a_sequence_that_does_not_split_is_refused_with_what_works() {
    let e = plan(1002, &format!("{BASE}cp = 2\ndp = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cp 2") && e.contains("1002 tokens"), "{e}");
    assert!(e.contains("2·cp = 4") && e.contains("multiple of 4"), "{e}");
    assert!(e.contains("use cp one of 1 "), "{e}");
    assert!(plan(1004, &format!("{BASE}cp = 2\ndp = 1\n")).is_ok());
    // tp still divides the heads.
    let e = plan(1024, "tp = 3\ncp = 2\ndevices = 6\nglobal_batch = 8\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tp 3"), "{e}");
}

#[test]
fn plans_without_cp_are_unchanged_and_the_exchange_is_a_ring_program() {
    let p = plan(2048, BASE).unwrap();
    assert!(p.comms.iter().all(|c| c.group != GroupKind::Cp));
    assert_eq!(p.strategy.cp, 1);
    let json = serde_json::to_string(&p.strategy).unwrap();
    assert!(!json.contains("cp"), "{json}");
    assert!(!p.strategy.summary().contains("cp"));

    let two = plan(
        16384,
        "tp = 4\ncp = 2\nmicro_batch_size = 1\nglobal_batch = 8\nprecision = \"bf16\"\n",
    )
    .unwrap();
    assert_eq!(two.strategy.summary().split(' ').nth(3), Some("cp2"));
    // tp 4 × cp 2 fills a server: the cp group is tp-strided consecutive ranks.
    let g = two.mesh.group_of(Axis::Cp, 1);
    assert_eq!(g, vec![1, 5]);
    let x = two.kv_exchange(&g);
    assert_eq!(x.steps(), 1);
    assert_eq!(x.forward.steps[0].len(), 2);
}
