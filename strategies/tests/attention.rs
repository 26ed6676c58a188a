//! The attention kernel as a strategy key: its default per chip family, and what it changes
//! in the memory model.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::{Bytes, Cluster};
use pangu_model::ModelConfig;
use pangu_strategies::{default_attention, resolve_inputs, Attention, Plan, Remat, StrategySpec};

#[test]
fn the_default_is_materialised_and_the_note_names_the_chips_that_fuse_it() {
    // Which chips' stacks fuse attention is a preset fact; the default stays materialised on
    // every chip while the calibration was fitted with materialised attention (the note says
    // so where the chip would normally run flash).
    for (preset, fused) in [
        ("dgx-a100-40g", true),
        ("dgx-a100-80g", true),
        ("dgx-h100", true),
        ("dgx-h200", true),
        ("dgx-b200", true),
        ("gb200-nvl72", true),
        ("ascend910b", true),
        ("cloudmatrix384", true),
        ("ascend910", false),
        ("dgx2-v100", false),
        ("cpu-host", false),
    ] {
        let c = Cluster::from_name(preset).unwrap();
        assert_eq!(c.spec.chip.fused_attention, fused, "{preset}");
        let (got, why) = default_attention(&c.spec.chip);
        assert_eq!(got, Attention::Materialised, "{preset}");
        assert!(why.starts_with("attention materialised"), "{why}");
        assert_eq!(why.contains("pass --attention flash"), fused, "{why}");
    }
    // Every preset is covered above.
    assert_eq!(pangu_hardware::presets().len(), 11);
}

#[test]
fn resolution_states_the_default_and_a_given_value_wins() {
    let m = ModelConfig::preset("mpt-7b").unwrap();
    let c = Cluster::from_name("dgx-a100-80g:8").unwrap();
    let r = resolve_inputs(&m, Some(c.clone()), &StrategySpec::default()).unwrap();
    assert_eq!(r.strategy.attention, Attention::Materialised);
    assert!(
        r.notes
            .iter()
            .any(|n| n.starts_with("attention materialised")),
        "{:?}",
        r.notes
    );
    assert!(!r.strategy.summary().contains("flash"));
    let user = StrategySpec::from_toml("attention = \"flash\"", "s.toml").unwrap();
    let r = resolve_inputs(&m, Some(c), &user).unwrap();
    assert_eq!(r.strategy.attention, Attention::Flash);
    assert!(!r.notes.iter().any(|n| n.starts_with("attention")));
    assert!(r.strategy.summary().contains(" flash"));
    // PanGu-α's reference (Ascend 910): materialised, so its plan is the one it always was.
    let p = ModelConfig::preset("pangu-alpha-200b").unwrap();
    let r = resolve_inputs(&p, None, &StrategySpec::default()).unwrap();
    assert_eq!(r.strategy.attention, Attention::Materialised);
    let explicit = StrategySpec::from_toml("attention = \"materialised\"", "s.toml").unwrap();
    let e = resolve_inputs(&p, None, &explicit).unwrap();
    let a = Plan::new(&r.model, &r.cluster, &r.strategy).unwrap();
    let b = Plan::new(&e.model, &e.cluster, &e.strategy).unwrap();
    assert_eq!(a.max_memory(), b.max_memory());
    assert!(a.ops.block.iter().any(|o| o.name == "softmax"));
    // An unknown kernel is refused naming both.
    let err = StrategySpec::from_toml("attention = \"fast\"", "s.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("flash") && err.contains("materialised"),
        "{err}"
    );
}

/// MPT-7B as llm-foundry ran it on 8 A100-80GB (MPT-A100-7B-8): FSDP full sharding,
/// micro-batch 6, no activation checkpointing, fp32 weight gathers.
fn mpt7b_a100(extra: &str) -> Plan {
    let remat = if extra.contains("remat") {
        ""
    } else {
        "remat = \"none\"\n"
    };
    let m = ModelConfig::preset("mpt-7b").unwrap();
    let c = Cluster::from_name("dgx-a100-80g:8").unwrap();
    let user = StrategySpec::from_toml(
        &format!(
            "micro_batch_size = 6\nglobal_batch = 96\nopt_shard = \"zero3\"\n{remat}\
             precision = \"bf16\"\nzero3_gather = \"fp32\"\nzero3_prefetch = \"post\"\n{extra}"
        ),
        "s.toml",
    )
    .unwrap();
    let r = resolve_inputs(&m, Some(c), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

#[test]
fn mpt_7b_fits_on_a100_with_flash_attention_only() {
    let flash = mpt7b_a100("attention = \"flash\"");
    assert_eq!(flash.strategy.attention, Attention::Flash);
    assert!(flash.fits(), "{}", flash.max_memory().total);
    let mat = mpt7b_a100("");
    assert!(!mat.fits(), "{}", mat.max_memory().total);
    // The difference is Korthikanti's s² term per layer, less the log-sum-exp the fused
    // kernel keeps (4 bytes per row per head), over the 32 layers of the one micro-batch in
    // flight. MPT trains without dropout, so the term is the bf16 probabilities alone,
    // 2·a·s²·b bytes, not 5·a·s²·b.
    let (a, s, b, l) = (32u64, 2048u64, 6u64, 32u64);
    let lse = 4 * a * s * b;
    let diff = mat.max_memory().activations.0 - flash.max_memory().activations.0;
    assert_eq!(diff, l * (2 * a * s * s * b - lse), "{}", Bytes(diff));
    // Selective recompute has nothing to drop under flash.
    let sel = mpt7b_a100("remat = \"selective\"\nattention = \"flash\"");
    assert_eq!(sel.strategy.remat, Remat::Selective);
    assert_eq!(sel.max_memory(), flash.max_memory());
    assert!(sel.notes.iter().any(|n| n.contains("selective")));
    // The refusal of the materialised plan offers the fused kernel as a fix.
    let e = Plan::new(&mat.model, &mat.cluster, &mat.strategy)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--attention flash"), "{e}");
}
