//! Every preset of today's workloads against its published parameter count.

#![allow(clippy::unwrap_used)] // test: a failed unwrap is a failed test

use pangu_model::{presets, ModelConfig, ALIASES};

fn count(name: &str) -> u64 {
    ModelConfig::preset(name).unwrap().params().total
}

fn off(got: u64, want: f64) -> f64 {
    (got as f64 - want).abs() / want
}

/// Llama 2 and Llama 3 / 3.1: Meta's model cards (Llama 2 7B 6.74 B, 13B 13.0 B, 70B 69.0 B;
/// Llama 3 8B 8.03 B, 70B 70.6 B, 405B 405.9 B), each within 0.5 %.
#[test]
fn llama_presets_match_the_model_cards() {
    for (name, want) in [
        ("llama2-7b", 6.74e9),
        ("llama2-13b", 13.0e9),
        ("llama2-70b", 69.0e9),
        ("llama3-8b", 8.03e9),
        ("llama3-70b", 70.6e9),
        ("llama3-405b", 405.9e9),
        ("llama3.1-8b", 8.03e9),
        ("llama3.1-70b", 70.6e9),
        ("llama3.1-405b", 405.9e9),
    ] {
        let got = count(name);
        assert!(off(got, want) <= 0.005, "{name}: {got} vs {want}");
    }
    // Exact for Llama 3 8B: 32 layers of (2d² + 2·d·1024 + 3·d·14336 + 2d), two 128256 × d
    // tables, the final norm.
    let d = 4096u64;
    let layer = 2 * d * d + 2 * d * 1024 + 3 * d * 14336 + 2 * d;
    assert_eq!(count("llama3-8b"), 32 * layer + 2 * 128_256 * d + d);
}

/// The llama-style shape: RMSNorm, SwiGLU, rotary, grouped-query attention, untied, no bias.
#[test]
fn llama_presets_are_llama_style() {
    use pangu_model::{FfnKind, NormKind, PositionKind};
    for name in [
        "llama2-7b",
        "llama2-70b",
        "llama3-8b",
        "llama3-70b",
        "llama3-405b",
    ] {
        let m = ModelConfig::preset(name).unwrap();
        assert_eq!(
            (m.norm, m.ffn_kind, m.position, m.tied_embeddings, m.bias),
            (
                NormKind::Rmsnorm,
                FfnKind::Swiglu,
                PositionKind::Rotary,
                false,
                false
            ),
            "{name}"
        );
    }
    assert_eq!(ModelConfig::preset("llama2-70b").unwrap().kv_heads(), 8);
    assert_eq!(ModelConfig::preset("llama2-7b").unwrap().kv_heads(), 32);
    // An alias reads its preset: the name (and so the reference run) is the preset's.
    for (alias, preset) in ALIASES {
        assert_eq!(ModelConfig::preset(alias).unwrap().name, *preset);
    }
}

/// GPT-3 (Brown et al. 2020, Table 2.1). The table's n_params are names rounded to two or
/// three digits: 125M, 760M, 13.0B and 175.0B are met within 0.5 %; the shapes the table
/// prints for 350M, 1.3B, 2.7B and 6.7B give 355.9 M, 1.316 B, 2.652 B and 6.658 B (the
/// same closed form, checked exactly below), 0.6 to 1.8 % from their names.
#[test]
fn gpt3_presets_match_table_2_1() {
    for (name, want) in [
        ("gpt3-125m", 125e6),
        ("gpt3-760m", 760e6),
        ("gpt3-13b", 13.0e9),
        ("gpt3-175b", 175.0e9),
    ] {
        let got = count(name);
        assert!(off(got, want) <= 0.005, "{name}: {got} vs {want}");
    }
    // L·(12d² + 13d) + V·d + 2048·d + 2d, V = 50257 (GPT-2's BPE).
    let closed = |l: u64, d: u64| l * (12 * d * d + 13 * d) + 50_257 * d + 2048 * d + 2 * d;
    for (name, l, d, want, tol) in [
        ("gpt3-125m", 12, 768, 125e6, 0.005),
        ("gpt3-350m", 24, 1024, 350e6, 0.02),
        ("gpt3-760m", 24, 1536, 760e6, 0.005),
        ("gpt3-1.3b", 24, 2048, 1.3e9, 0.015),
        ("gpt3-2.7b", 32, 2560, 2.7e9, 0.02),
        ("gpt3-6.7b", 32, 4096, 6.7e9, 0.007),
        ("gpt3-13b", 40, 5140, 13.0e9, 0.005),
    ] {
        let got = count(name);
        assert_eq!(got, closed(l, d), "{name}");
        assert!(off(got, want) <= tol, "{name}: {got} vs {want}");
    }
}

#[test]
fn presets_state_no_run_settings() {
    for (name, text) in presets() {
        let m = ModelConfig::preset(name).unwrap();
        assert_eq!((m.seq_len, m.global_batch), (0, None), "{name}");
        assert!(
            !text.contains("\nseq_len") && !text.contains("\nglobal_batch"),
            "{name}"
        );
        // Parameter counts do not wait for the run: learned tables state their rows.
        if m.position == pangu_model::PositionKind::Learned || m.query_layer {
            assert!(m.max_positions.is_some(), "{name}");
        }
    }
}

#[test]
fn run_sequence_length_is_checked_against_the_position_table() {
    let m = ModelConfig::preset("gpt3-125m").unwrap();
    assert_eq!(m.with_seq_len(1024).unwrap().seq_len, 1024);
    let e = m.with_seq_len(4096).unwrap_err().to_string();
    assert!(e.contains("4096") && e.contains("2048 rows"), "{e}");
    let e = m.validate_run().unwrap_err().to_string();
    assert!(e.contains("--seq-len"), "{e}");
    // Rotary models take any length; their parameters do not depend on it.
    let l = ModelConfig::preset("llama3-8b").unwrap();
    assert_eq!(l.with_seq_len(131_072).unwrap().params(), l.params());
}

#[test]
fn legacy_model_files_keep_their_run_keys() {
    let text = "name = \"old\"\nlayers = 2\nhidden = 16\nheads = 2\nffn = 32\nvocab = 100\n\
                seq_len = 64\nglobal_batch = 4\n";
    let m = ModelConfig::from_toml(text, "old.toml").unwrap();
    assert_eq!(
        (m.seq_len, m.global_batch, m.position_rows()),
        (64, Some(4), 64)
    );
    let e = ModelConfig::from_toml(&text.replace("global_batch = 4", "global_batch = 0"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("global_batch"), "{e}");
}
