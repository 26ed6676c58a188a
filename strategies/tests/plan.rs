//! Plan behaviour: the paper's 200B strategy by hand, validation errors, placement warnings,
//! communication volumes.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::{Bytes, Cluster, Level};
use pangu_model::ModelConfig;
use pangu_strategies::strategy::resolve;
use pangu_strategies::{
    resolve_inputs, CollectiveKind, GroupKind, OptShard, Plan, PlanError, Remat, ScheduleKind,
    Strategy, StrategySpec,
};

fn setup(model: &str, user: StrategySpec) -> Result<(ModelConfig, Cluster, Strategy), PlanError> {
    let m = ModelConfig::preset(model).unwrap();
    let r = resolve_inputs(&m, None, &user)?;
    Ok((r.model, r.cluster, r.strategy))
}

fn plan(model: &str, user: StrategySpec) -> Result<Plan, PlanError> {
    let (m, c, s) = setup(model, user)?;
    Plan::new(&m, &c, &s)
}

/// docs/worked-example-200b.md derives these numbers by hand; this test is that derivation.
#[test]
fn pangu_200b_stage0_matches_the_hand_derivation() {
    let p = plan("pangu-alpha-200b", StrategySpec::default()).unwrap();
    let (d, v, s, t, a, dp) = (16384u64, 40000u64, 1024u64, 8u64, 128u64, 16u64);
    // Parameters on a stage-0 device: vocab-parallel embedding + position table + 4 blocks.
    // A block splits 12d² + 7d over tp and keeps 6d whole (two LayerNorms, two row biases).
    let block = (12 * d * d + 7 * d) / t + 6 * d;
    let params = v * d / t + s * d + 4 * block;
    assert_eq!(p.stages[0].params, params);
    let m = p.stages[0].memory;
    // fp16 weights 2 B, fp32 gradient accumulation 4 B (32 micro-batches), 12 B of optimizer
    // state sharded over dp 16 (MindSpore optimizer parallel).
    assert_eq!(m.weights, Bytes(2 * params));
    assert_eq!(m.gradients, Bytes(4 * params));
    assert_eq!(m.optimizer, Bytes((12 * params).div_ceil(dp)));
    // Activations: 1F1B keeps p - 0 = 16 micro-batches on stage 0; full remat keeps each
    // layer's input (2·s·b·d bytes) and the embedding's dropout mask (s·b·d); one layer is
    // recomputed at a time: s·b·d·(10 + 24/t + 5·a·s/(d·t)) (Korthikanti et al. 2022).
    let sbd = s * d;
    let per_mb = 4 * 2 * sbd + sbd;
    let working = sbd * (10 + 24 / t) + 5 * a * s * s / t;
    assert_eq!(m.activations, Bytes(16 * per_mb + working));
    // Buffers: 2 send + 2 receive pipeline buffers of 2·s·b·d and two 25 MiB gradient fusion
    // buffers (the reduce-scatter's buckets in flight).
    assert_eq!(m.buffers, Bytes(4 * 2 * sbd + 2 * 25 * 1024 * 1024));
    // Without sharding the same two buckets are in flight.
    let (mm, cc, ss) = setup(
        "pangu-alpha-200b",
        StrategySpec {
            opt_shard: Some(OptShard::None),
            ..StrategySpec::default()
        },
    )
    .unwrap();
    let unsharded = Plan::build(&mm, &cc, &ss).unwrap();
    assert_eq!(
        unsharded.stages[0].memory.buffers,
        Bytes(4 * 2 * sbd + 2 * 25 * 1024 * 1024)
    );
    assert!(p.fits());
    assert!(m.total.gib() < 14.0, "{}", m.total);
}

#[test]
fn pangu_200b_switches_show_what_each_buys() {
    let p = plan("pangu-alpha-200b", StrategySpec::default()).unwrap();
    let off = p.switches_off();
    assert_eq!(off.len(), 2);
    // Without optimizer sharding the 12 B of state per parameter stay whole: over 31 GiB.
    let (_, flag, bytes) = &off[0];
    assert_eq!(flag, "--opt-shard none");
    assert!(*bytes > p.capacity);
    // Without remat 16 micro-batches of full activations: more than double the memory.
    let (_, flag, bytes) = &off[1];
    assert_eq!(flag, "--remat none");
    assert!(bytes.0 > 2 * p.max_memory().total.0);
}

#[test]
fn bubble_matches_the_schedule_formula_for_balanced_stages() {
    // The 200B stages are balanced up to the embedding (stage 0) and the head (stage 15),
    // which add a little: the bubble is at least (p-1)/(m+p-1) and close to it.
    let p = plan("pangu-alpha-200b", StrategySpec::default()).unwrap();
    let ideal = 15.0 / 47.0;
    let b = p.bubble_fraction();
    assert!(b >= ideal - 1e-9 && b < ideal + 0.03, "{b}");
    // Interleaving shrinks it.
    let p2 = plan(
        "pangu-alpha-200b",
        StrategySpec {
            schedule: Some(ScheduleKind::Interleaved { chunks: 2 }),
            pp: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p2.bubble_fraction() < b, "{} vs {b}", p2.bubble_fraction());
}

#[test]
fn bad_strategies_are_rejected_with_the_reason() {
    let err = |model: &str, user: StrategySpec| -> String {
        match plan(model, user) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("accepted {}", p.strategy.summary()),
        }
    };
    // tp not dividing the devices.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            tp: Some(3),
            ..Default::default()
        },
    );
    assert!(e.contains("tp 3") && e.contains("1, 2, 4, 8"), "{e}");
    // tp not dividing the heads (32 heads, tp 64 divides 512 devices).
    let e = err(
        "pangu-alpha-2.6b",
        StrategySpec {
            tp: Some(64),
            ..Default::default()
        },
    );
    assert!(
        e.contains("does not divide heads 32") && e.contains("use one of"),
        "{e}"
    );
    // More stages than layers.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            tp: Some(1),
            pp: Some(128),
            ..Default::default()
        },
    );
    assert!(e.contains("only 64 layers"), "{e}");
    // Fewer micro-batches than stages under 1F1B plans (Megatron runs it: the warm-up clamps
    // to the micro-batch count), with the bubble it really has.
    let (m, c, s) = setup(
        "pangu-alpha-200b",
        StrategySpec {
            global_batch: Some(128),
            ..Default::default()
        },
    )
    .unwrap();
    let few = Plan::new(&m, &c, &s).unwrap();
    assert_eq!((few.strategy.micro_batches, few.strategy.pp), (8, 16));
    let want = 15.0 / (8.0 + 15.0);
    assert!(
        (few.bubble_fraction() - want).abs() < 0.02,
        "{}",
        few.bubble_fraction()
    );
    // Explicit dp that does not multiply out.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            dp: Some(4),
            ..Default::default()
        },
    );
    assert!(e.contains("dp 4 × tp 8 × pp 16 = 512 ≠ 2048"), "{e}");
    // Interleaving needs m % p == 0.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            schedule: Some(ScheduleKind::Interleaved { chunks: 2 }),
            global_batch: Some(16 * 24),
            ..Default::default()
        },
    );
    assert!(e.contains("multiple of pp"), "{e}");
    // bf16 on a chip without it.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            precision: Some(pangu_strategies::Precision::Bf16),
            ..Default::default()
        },
    );
    assert!(e.contains("no bf16"), "{e}");
    // Explicit layer assignment that does not add up.
    let e = err(
        "pangu-alpha-200b",
        StrategySpec {
            layers_per_stage: Some(vec![4; 15]),
            ..Default::default()
        },
    );
    assert!(e.contains("16 positive counts"), "{e}");
}

#[test]
fn out_of_memory_names_components_and_fixes() {
    let e = plan(
        "pangu-alpha-200b",
        StrategySpec {
            opt_shard: Some(OptShard::None),
            remat: Some(Remat::None),
            ..Default::default()
        },
    )
    .unwrap_err();
    let PlanError::OutOfMemory { message } = &e else {
        panic!("{e}")
    };
    for part in [
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "31.00 GiB is usable",
        "--opt-shard mindspore",
    ] {
        assert!(message.contains(part), "{message}");
    }
}

#[test]
fn explicit_layer_assignment_is_used() {
    let p = plan(
        "pangu-alpha-200b",
        StrategySpec {
            layers_per_stage: Some([vec![3], vec![4; 14], vec![5]].concat()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.stages[0].chunks[0].layers.len(), 3);
    assert_eq!(p.stages[15].chunks[0].layers.len(), 5);
}

#[test]
fn tp_across_islands_warns_and_rank_order_moves_groups() {
    let p = plan("pangu-alpha-200b", StrategySpec::default()).unwrap();
    assert!(
        p.warnings.iter().any(|w| w.contains("islands")),
        "{:?}",
        p.warnings
    );
    let tp4 = plan(
        "pangu-alpha-200b",
        StrategySpec {
            tp: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!tp4.warnings.iter().any(|w| w.contains("islands")));
    // PanGu-α's order puts a DP group in one rack and the pipeline across racks; dp-pp-tp
    // (the paper's Fig. 5 placement) the other way round.
    let span = |p: &Plan, g: GroupKind| p.comms.iter().find(|c| c.group == g).map(|c| c.span);
    assert_eq!(span(&p, GroupKind::Dp), Some(Level::Rack));
    assert_eq!(span(&p, GroupKind::Pp), Some(Level::Spine));
    let fig5 = plan(
        "pangu-alpha-200b",
        StrategySpec {
            rank_order: Some("dp-pp-tp".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(span(&fig5, GroupKind::Dp), Some(Level::Spine));
    assert_eq!(span(&fig5, GroupKind::Pp), Some(Level::Rack));
    // tp fastest no longer: TP across servers.
    let bad = plan(
        "pangu-alpha-200b",
        StrategySpec {
            rank_order: Some("pp-tp-dp".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        bad.warnings.iter().any(|w| w.contains("spans servers")),
        "{:?}",
        bad.warnings
    );
}

#[test]
fn communication_volumes_follow_the_megatron_pattern() {
    let p = plan("pangu-alpha-200b", StrategySpec::default()).unwrap();
    let sbd2 = 1024 * 16384 * 2u64;
    // Forward: 2 all-reduces per layer per micro-batch, repeated by full recompute; 4 layers; 32 micro-batches.
    let fwd = p
        .comms
        .iter()
        .find(|c| {
            c.group == GroupKind::Tp
                && c.purpose == "activations"
                && c.bytes_per_call == Bytes(sbd2)
        })
        .unwrap();
    assert_eq!(fwd.calls_per_step, 2 * 2 * 4 * 32);
    assert_eq!(fwd.collective, Some(CollectiveKind::AllReduce));
    // Pipeline: a middle stage sends 32 activations and 32 gradients.
    let pp = p.comms.iter().find(|c| c.group == GroupKind::Pp).unwrap();
    assert_eq!((pp.calls_per_step, pp.bytes_per_call), (64, Bytes(sbd2)));
    // Optimizer sharding: gradients reduce-scattered, weights all-gathered, both over dp 16.
    let dp: Vec<_> = p
        .comms
        .iter()
        .filter(|c| c.group == GroupKind::Dp)
        .collect();
    assert!(dp
        .iter()
        .all(|c| c.collective == Some(CollectiveKind::ReduceScatter)));
    let total: u64 = dp.iter().map(|c| c.bytes_per_step().0).sum();
    assert_eq!(total, 4 * p.stages.iter().map(|s| s.params).max().unwrap());
    assert!(p
        .comms
        .iter()
        .any(|c| c.group == GroupKind::Opt && c.collective == Some(CollectiveKind::AllGather)));
    assert!(p.comms.iter().any(|c| c.group == GroupKind::Embedding));
    // Sequence parallelism swaps the all-reduces for all-gather + reduce-scatter.
    let sp = plan(
        "pangu-alpha-200b",
        StrategySpec {
            seq_parallel: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(sp
        .comms
        .iter()
        .any(|c| c.group == GroupKind::Tp && c.collective == Some(CollectiveKind::AllGather)));
    assert!(sp.max_memory().activations < p.max_memory().activations);
}

#[test]
fn resolution_keeps_the_global_batch() {
    let m = ModelConfig::preset("pangu-alpha-200b").unwrap();
    for (tp, pp) in [(8, 16), (4, 16), (8, 8), (16, 4)] {
        let user = StrategySpec {
            tp: Some(tp),
            pp: Some(pp),
            ..Default::default()
        };
        let base = pangu_strategies::reference("pangu-alpha-200b")
            .unwrap()
            .strategy;
        let batch = pangu_strategies::run_shape(&m, &user).unwrap().global_batch;
        let (s, _) = resolve(&base.overlay(&user), &user, batch, 2048).unwrap();
        assert_eq!(s.dp * s.micro_batch_size * s.micro_batches, 512);
        assert_eq!(s.dp * s.tp * s.pp, 2048);
    }
}

#[test]
fn the_vocabulary_is_padded_as_megatron_pads_it_never_refused() {
    // GPT-2's 50257 tokens: tp 2 does not divide them; Megatron pads to a multiple of 128 × tp.
    let mut m = ModelConfig::preset("gpt3-175b").unwrap();
    m.vocab = 50257;
    let c = Cluster::from_name("dgx-a100-80g:1024").unwrap();
    for (tp, div, want) in [
        (2, None, 50432),
        (8, None, 51200),
        (8, Some(1), 50264),
        (1, Some(1), 50257),
    ] {
        let user = StrategySpec {
            tp: Some(tp),
            pp: Some(8),
            schedule: Some(ScheduleKind::OneFOneB),
            vocab_divisible_by: div,
            ..Default::default()
        };
        let r = resolve_inputs(&m, Some(c.clone()), &user).unwrap();
        let p = Plan::build(&r.model, &r.cluster, &r.strategy).unwrap();
        assert_eq!(p.padded_vocab, want, "tp {tp} divisor {div:?}");
        assert_eq!(p.padded_vocab % tp, 0);
        let noted = p
            .notes
            .iter()
            .any(|n| n.contains(&format!("padded to {want}")));
        assert_eq!(noted, want != 50257, "{:?}", p.notes);
        // The head and the word table hold the padded rows.
        let emb: u64 = p.ops.embedding.iter().map(|o| o.params).sum();
        assert_eq!(
            emb,
            u64::from(want) / u64::from(tp) * u64::from(m.hidden)
                + u64::from(m.position_rows()) * u64::from(m.hidden)
        );
    }
    let e = resolve_inputs(
        &m,
        Some(c),
        &StrategySpec {
            vocab_divisible_by: Some(0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("vocab_divisible_by 0"), "{e}");
}
