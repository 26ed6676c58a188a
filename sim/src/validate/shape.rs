//! The model of a published run: a preset or model file the row names (`model_preset`), or
//! its shape columns built with the architecture the row states (`arch`).
//!
//! - `model_preset`: a preset name (`pangu models`), a model TOML or a Hugging Face
//!   `config.json`, as `--model` takes them; the row's `seq_len` is the run's length, and
//!   shape columns the row also states must agree with the preset (a wrong name is an error,
//!   not a silently different model).
//! - `arch` with the shape columns (`layers`, `hidden`, `heads`, optional `kv_heads`, `ffn`,
//!   `vocab`): `gpt` (GeLU, LayerNorm, learned positions, biases, tied head: GPT-2/3,
//!   Megatron-LM's GPT), `pangu` (the same with PanGu-α's query layer), `mpt` (ALiBi, no
//!   biases), `llama` (SwiGLU, RMSNorm, rotary positions, no biases, untied head).
//! - Neither: `pangu` when the model's name says PanGu, `mpt` for MPT, `llama` for Llama,
//!   else `gpt` (what every row was built as before the columns existed).

use pangu_model::{FfnKind, ModelConfig, NormKind, PositionKind};

use super::cells::{field, int, Row};

/// The architectures the `arch` column names.
const ARCHES: &str = "gpt, pangu, mpt or llama";

/// The row's model at its `seq_len` (the global batch is the strategy's); what it assumes is
/// pushed to `assumptions`.
pub(super) fn model_of(r: &Row, assumptions: &mut Vec<String>) -> Result<ModelConfig, String> {
    let preset = field(r, "model_preset");
    if preset.is_empty() {
        from_columns(r, assumptions)
    } else {
        from_preset(r, preset, seq_len(r)?)
    }
}

fn from_preset(r: &Row, preset: &str, seq: u32) -> Result<ModelConfig, String> {
    let loaded = pangu_model::load(preset).map_err(|e| format!("model_preset {preset:?}: {e}"))?;
    let m = loaded.config;
    for (column, stated, has) in [
        ("layers", int(r, "layers")?, m.layers),
        ("hidden", int(r, "hidden")?, m.hidden),
        ("heads", int(r, "heads")?, m.heads),
    ] {
        if let Some(v) = stated.filter(|v| *v != has) {
            return Err(format!(
                "model_preset {preset:?} has {column} {has}, the row states {v}: name the \
                 preset of this shape or leave model_preset empty to build the shape columns"
            ));
        }
    }
    m.with_seq_len(seq)
        .map_err(|e| format!("model_preset {preset:?} at seq_len {seq}: {e}"))
}

/// The run's sequence length: a row without it cannot be modelled.
fn seq_len(r: &Row) -> Result<u32, String> {
    int(r, "seq_len")?.ok_or_else(|| "sequence length not stated".to_string())
}

fn from_columns(r: &Row, assumptions: &mut Vec<String>) -> Result<ModelConfig, String> {
    let name = field(r, "model").to_string();
    let (layers, hidden, heads) = match (int(r, "layers")?, int(r, "hidden")?, int(r, "heads")?) {
        (Some(l), Some(h), Some(a)) => (l, h, a),
        _ => return Err("model shape (layers, hidden, heads) not stated".into()),
    };
    let seq = seq_len(r)?;
    let vocab = int(r, "vocab")?.unwrap_or_else(|| {
        assumptions.push("vocab 51200 (GPT-2 BPE padded, Megatron's default)".into());
        51200
    });
    let ffn = int(r, "ffn")?.unwrap_or_else(|| {
        assumptions.push(format!("ffn 4·hidden = {}", 4 * hidden));
        4 * hidden
    });
    let arch = match field(r, "arch").to_ascii_lowercase().as_str() {
        "" => {
            let lower = name.to_ascii_lowercase();
            if lower.contains("pangu") {
                "pangu"
            } else if lower.starts_with("mpt") {
                "mpt"
            } else if lower.contains("llama") {
                "llama"
            } else {
                "gpt"
            }
        }
        "gpt" => "gpt",
        "pangu" => "pangu",
        "mpt" => "mpt",
        "llama" => "llama",
        other => return Err(format!("arch {other:?}: write {ARCHES}")),
    };
    let llama = arch == "llama";
    Ok(ModelConfig {
        name,
        layers,
        hidden,
        heads,
        kv_heads: int(r, "kv_heads")?,
        ffn,
        ffn_kind: if llama {
            FfnKind::Swiglu
        } else {
            FfnKind::Gelu
        },
        vocab,
        seq_len: seq,
        max_positions: None,
        query_layer: arch == "pangu",
        tied_embeddings: !llama,
        position: match arch {
            "mpt" => PositionKind::None,
            "llama" => PositionKind::Rotary,
            _ => PositionKind::Learned,
        },
        rope_theta: pangu_model::DEFAULT_ROPE_THETA,
        norm: if llama {
            NormKind::Rmsnorm
        } else {
            NormKind::Layernorm
        },
        bias: matches!(arch, "gpt" | "pangu"),
        dropout: 0.0,
        global_batch: None,
    })
}
