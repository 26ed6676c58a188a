//! `pangu validate` builds each row's real architecture: a `model_preset` column, or the shape
//! columns with an `arch`; context parallelism in a row is modelled.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_model::{FfnKind, NormKind, PositionKind};
use pangu_sim::validate::{prepare_row, read_rows, Prepared};

const HEADER: &str = "row_id,source,model,model_preset,arch,layers,hidden,heads,kv_heads,ffn,vocab,seq_len,accelerator,n_chips,tp,pp,cp,dp,micro_batch,global_batch_seqs,recompute,zero_stage,precision,tokens_per_s_per_chip,verification";

/// One row on 8 H100s, global batch 8 of micro-batch 1: `cells` fills the 15 columns from
/// `model` to `cp`.
fn prepare(cells: &str) -> Result<Prepared, String> {
    let csv = format!("{HEADER}\nR,Synthetic,{cells},,1,8,none,0,bf16,3000,verified: synthetic\n");
    let rows = read_rows(&csv, "synthetic.csv").unwrap();
    prepare_row(&rows[0], None).map_err(|r| r.skipped.clone().unwrap_or_default())
}

#[test]
fn a_preset_row_is_the_preset_at_the_rows_length() {
    let p = prepare("Llama-3-8B,llama3-8b,,32,4096,32,,,,4096,H100-SXM5-80GB,8,8,1,1").unwrap();
    let m = &p.plan.model;
    assert_eq!(
        (m.ffn_kind, m.norm, m.position, m.bias, m.tied_embeddings),
        (
            FfnKind::Swiglu,
            NormKind::Rmsnorm,
            PositionKind::Rotary,
            false,
            false
        )
    );
    assert_eq!((m.kv_heads(), m.seq_len, m.vocab), (8, 4096, 128256));
    // A stated shape that is not the preset's is an error naming both.
    let e = prepare("Llama-3-8B,llama3-8b,,40,4096,32,,,,4096,H100-SXM5-80GB,8,8,1,1").unwrap_err();
    assert!(e.contains("layers 32") && e.contains("states 40"), "{e}");
    let e = prepare("X,no-such-model,,,,,,,,4096,H100-SXM5-80GB,8,8,1,1").unwrap_err();
    assert!(e.contains("model_preset \"no-such-model\""), "{e}");
}

#[test]
fn the_arch_column_builds_the_shape_with_that_architecture() {
    let llama =
        prepare("Some-LM,,llama,4,1024,16,4,2816,32000,2048,H100-SXM5-80GB,8,2,1,1").unwrap();
    let m = &llama.plan.model;
    assert_eq!(
        (m.ffn_kind, m.norm, m.kv_heads()),
        (FfnKind::Swiglu, NormKind::Rmsnorm, 4)
    );
    assert!(!m.bias && !m.tied_embeddings);
    // Without arch, a GPT (as every row was built before the column).
    let gpt = prepare("Some-LM,,,4,1024,16,,4096,32000,2048,H100-SXM5-80GB,8,2,1,1").unwrap();
    let g = &gpt.plan.model;
    assert_eq!(
        (g.ffn_kind, g.norm, g.position),
        (FfnKind::Gelu, NormKind::Layernorm, PositionKind::Learned)
    );
    assert!(g.bias && g.tied_embeddings);
    // Without arch, a model named Llama is built as one (the measured sweeps' Llama rows were
    // once built as GPTs: two-matrix GeLU FFNs, a third fewer FFN FLOPs).
    let named = prepare("Llama-2-13B,,,4,1024,16,,2816,32000,2048,H100-SXM5-80GB,8,2,1,1").unwrap();
    let n = &named.plan.model;
    assert_eq!(
        (n.ffn_kind, n.norm, n.position),
        (FfnKind::Swiglu, NormKind::Rmsnorm, PositionKind::Rotary)
    );
    // The SwiGLU model at the same sizes has other parameters than the GPT.
    assert_ne!(m.params().total, g.params().total);
    let e = prepare("Some-LM,,bert,4,1024,16,,4096,32000,2048,H100-SXM5-80GB,8,2,1,1").unwrap_err();
    assert!(e.contains("arch \"bert\"") && e.contains("llama"), "{e}");
}

#[test]
fn a_context_parallel_row_is_modelled() {
    let p = prepare("Llama-3-8B,llama3-8b,,,,,,,,8192,H100-SXM5-80GB,8,2,1,2").unwrap();
    let s = &p.plan.strategy;
    assert_eq!((s.tp, s.cp, s.dp), (2, 2, 2));
}

#[test]
fn newer_accelerators_map_to_their_own_presets() {
    for (acc, chip) in [
        ("Ascend 910B", "910B"),
        ("H200-SXM-141GB", "H200"),
        ("B200", "B200"),
    ] {
        let p = prepare(&format!("GPT-3 1.3B,gpt3-1.3b,,,,,,,,2048,{acc},8,1,1,1")).unwrap();
        let name = &p.plan.cluster.spec.chip.name;
        assert!(name.contains(chip), "{acc}: {name}");
    }
}

#[test]
fn precision_and_sequence_parallelism_are_read_as_the_row_words_them() {
    // The measured sweeps write them with the source's own words after the value.
    let run = |acc: &str, precision: &str, seq_par: &str| {
        let csv = format!(
            "{HEADER},seq_par\nR,Synthetic,Llama-3-8B,llama3-8b,,,,,,,,4096,{acc},8,2,1,1,,1,8,none,0,{precision},3000,verified: synthetic,{seq_par}\n"
        );
        let rows = read_rows(&csv, "synthetic.csv").unwrap();
        prepare_row(&rows[0], None)
            .map(|p| (p.plan.strategy.precision, p.plan.strategy.seq_parallel))
            .map_err(|r| r.skipped.clone().unwrap_or_default())
    };
    use pangu_strategies::Precision;
    let h100 = "H100-SXM5-80GB";
    for (acc, precision, seq_par, want) in [
        (
            h100,
            "bf16 + float8 linears (torchao)",
            "no",
            (Precision::Fp8, false),
        ),
        (h100, "bf16 + fp8 (TE)", "yes", (Precision::Fp8, true)),
        // The A100 has no fp8 tensor cores: its float8 rows stay bf16.
        (
            "A100-SXM4-80GB",
            "bf16 + float8 linears",
            "yes (assumed with TP 4)",
            (Precision::Bf16, true),
        ),
        (h100, "amp (16-bit mixed)", "", (Precision::Fp16, false)),
        (
            h100,
            "bf16 with the new BF16_Optimizer (fp32 gradient accumulation)",
            "",
            (Precision::Bf16, false),
        ),
    ] {
        assert_eq!(
            run(acc, precision, seq_par),
            Ok(want),
            "{precision} / {seq_par}"
        );
    }
    // fp32 alone: TF32 or not is unstated, so the row is skipped with the reason.
    let e = run(h100, "fp32", "not stated").unwrap_err();
    assert!(e.contains("fp32") && e.contains("TF32"), "{e}");
}
