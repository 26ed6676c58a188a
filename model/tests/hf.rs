//! Hugging Face config.json files: each supported architecture, and the refusals.

#![allow(clippy::unwrap_used)] // test: a failed unwrap is a failed test

use pangu_model::hf::from_hf_config;
use pangu_model::{load, FfnKind, ModelError, NormKind, PositionKind};

fn llama_like(arch: &str, extra: &str) -> String {
    format!(
        r#"{{"architectures": ["{arch}"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 160,
        "vocab_size": 1000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6{extra}}}"#
    )
}

#[test]
fn llama_mistral_and_qwen2_read_as_llama_style() {
    for arch in ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"] {
        let m = from_hf_config(&llama_like(arch, ""), "dir/tiny.config.json").unwrap();
        let c = &m.config;
        assert_eq!(c.name, "tiny", "{arch}");
        assert_eq!(
            (c.layers, c.hidden, c.heads, c.kv_heads(), c.ffn, c.vocab),
            (2, 64, 4, 2, 160, 1000)
        );
        assert_eq!(
            (c.norm, c.ffn_kind, c.position, c.tied_embeddings, c.bias),
            (
                NormKind::Rmsnorm,
                FfnKind::Swiglu,
                PositionKind::Rotary,
                false,
                false
            )
        );
        // max_position_embeddings is not the training length.
        assert_eq!(c.seq_len, 0);
    }
    let tied = llama_like("LlamaForCausalLM", r#", "tie_word_embeddings": true"#);
    assert!(
        from_hf_config(&tied, "t.json")
            .unwrap()
            .config
            .tied_embeddings
    );
}

#[test]
fn what_the_shape_leaves_out_is_stated() {
    // Qwen2: q/k/v biases, 2 layers × (64 + 2 × 32).
    let q = from_hf_config(&llama_like("Qwen2ForCausalLM", ""), "q.json").unwrap();
    assert!(
        q.notes
            .iter()
            .any(|n| n.contains("q/k/v") && n.contains("256 parameters")),
        "{:?}",
        q.notes
    );
    let m = llama_like("MistralForCausalLM", r#", "sliding_window": 4096"#);
    let m = from_hf_config(&m, "m.json").unwrap();
    assert!(
        m.notes.iter().any(|n| n.contains("sliding_window 4096")),
        "{:?}",
        m.notes
    );
    let l = from_hf_config(&llama_like("LlamaForCausalLM", ""), "l.json").unwrap();
    assert!(l.notes.is_empty(), "{:?}", l.notes);
}

#[test]
fn gpt2_reads_its_own_keys() {
    let text = r#"{"architectures": ["GPT2LMHeadModel"], "n_embd": 768, "n_layer": 12,
        "n_head": 12, "n_positions": 1024, "n_inner": null, "vocab_size": 50257,
        "_name_or_path": "openai-community/gpt2"}"#;
    let c = from_hf_config(text, "config.json").unwrap().config;
    assert_eq!(c.name, "gpt2");
    assert_eq!(
        (c.ffn, c.max_positions, c.tied_embeddings),
        (3072, Some(1024), true)
    );
    assert_eq!(
        (c.norm, c.position, c.bias),
        (NormKind::Layernorm, PositionKind::Learned, true)
    );
    // GPT-2 small: 124.4 M parameters (12·(12d² + 13d) + V·d + 1024·d + 2d).
    let d = 768u64;
    assert_eq!(
        c.params().total,
        12 * (12 * d * d + 13 * d) + 50_257 * d + 1024 * d + 2 * d
    );
}

#[test]
fn other_architectures_are_refused_by_name() {
    let text = llama_like("GemmaForCausalLM", "");
    let e = from_hf_config(&text, "g.json").unwrap_err();
    assert!(matches!(e, ModelError::Unsupported { .. }));
    let e = e.to_string();
    assert!(
        e.contains("architecture GemmaForCausalLM is not supported; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel"),
        "{e}"
    );
    let e = from_hf_config(r#"{"hidden_size": 8}"#, "x.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("architectures"), "{e}");
    let e = from_hf_config(
        &llama_like("LlamaForCausalLM", "").replace("\"vocab_size\": 1000,", ""),
        "x.json",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vocab_size"), "{e}");
}

#[test]
fn mixture_of_experts_is_refused_as_out_of_scope() {
    for (arch, extra, says) in [
        (
            "MixtralForCausalLM",
            r#", "num_local_experts": 8"#,
            "num_local_experts = 8",
        ),
        (
            "Qwen2MoeForCausalLM",
            r#", "num_experts": 60"#,
            "num_experts = 60",
        ),
        (
            "DeepseekV3ForCausalLM",
            r#", "n_routed_experts": 256"#,
            "n_routed_experts = 256",
        ),
        ("DeepseekV2ForCausalLM", "", "DeepseekV2ForCausalLM"),
        // A dense architecture name with experts is MoE all the same.
        (
            "LlamaForCausalLM",
            r#", "num_experts": 4"#,
            "num_experts = 4",
        ),
    ] {
        let e = from_hf_config(&llama_like(arch, extra), "moe.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "architecture {arch} is a mixture-of-experts model"
            )) && e.contains("MoE is out of scope")
                && e.contains(says),
            "{e}"
        );
    }
    // One expert is a dense model.
    let one = llama_like("LlamaForCausalLM", r#", "num_experts": 1"#);
    assert!(from_hf_config(&one, "one.json").is_ok());
}

#[test]
fn the_shipped_llama_3_8b_config_has_8_03_b_parameters() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/llama-3-8b.config.json"
    );
    let l = load(path).unwrap();
    assert_eq!(l.config.name, "llama-3-8b");
    let p = l.config.params().total as f64;
    assert!((p - 8.03e9).abs() / 8.03e9 < 0.005, "{p}");
    // The same shape as the preset.
    let preset = load("llama3-8b").unwrap().config;
    assert_eq!(l.config.params(), preset.params());
    let e = load("no/such/model.json").unwrap_err().to_string();
    assert!(e.contains("no/such/model.json"), "{e}");
}
