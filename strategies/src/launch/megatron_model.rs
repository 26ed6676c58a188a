//! The model shape in Megatron-LM arguments, as a [`ModelConfig`]. Defaults are Megatron-LM's
//! (`megatron/training/arguments.py`): FFN 4·hidden, or `int(4·hidden·2/3 / 64)·64` with
//! `--swiglu`; one query group under `--group-query-attention`; LayerNorm; learned absolute
//! positions; tied embeddings; biases on; dropout 0.1.

use pangu_model::{FfnKind, ModelConfig, NormKind, PositionKind};

use super::args::Args;
use super::error::LaunchError;
use crate::strategy::StrategySpec;

/// Megatron-LM's default `--hidden-dropout` / `--attention-dropout`.
const MEGATRON_DROPOUT: f64 = 0.1;

/// Vocabulary sizes of the tokenizers Megatron names, before padding. Sources:
/// - GPT-2 BPE: 50,257 tokens (Radford et al. 2019, "Language Models are Unsupervised
///   Multitask Learners", §2.2).
/// - BERT WordPiece: 30,522 (uncased) and 28,996 (cased) entries in google-research/bert's
///   released `vocab.txt` files.
/// - Llama 2: 32,000 tokens (Touvron et al. 2023, "Llama 2", §2.1 "Tokenizer").
/// - Llama 3: 128,256 (`vocab_size` in meta-llama/Meta-Llama-3-8B `config.json`: 128,000
///   BPE tokens and 256 reserved special tokens; Llama 3 paper §3.1 "128K tokens").
const TOKENIZERS: &[(&str, u32)] = &[
    ("gpt2bpetokenizer", 50_257),
    ("bertwordpiecelowercase", 30_522),
    ("bertwordpiececase", 28_996),
    ("llama2tokenizer", 32_000),
    ("llama3tokenizer", 128_256),
];

/// A tokenizer model name (`--tokenizer-model`, a Hugging Face id or path) of a known family.
fn family_vocab(model: &str) -> Option<(u32, &'static str)> {
    let m = model.to_ascii_lowercase().replace(['_', ' '], "-");
    if m.contains("llama-3") || m.contains("llama3") {
        Some((128_256, "Llama 3"))
    } else if m.contains("llama-2") || m.contains("llama2") {
        Some((32_000, "Llama 2"))
    } else {
        None
    }
}

/// The model, when the arguments carry its shape (`--num-layers`, `--hidden-size`,
/// `--num-attention-heads`); `None` when none of the three is given.
pub(super) fn build(
    a: &mut Args,
    layers: Option<u32>,
    spec: &StrategySpec,
    notes: &mut Vec<String>,
) -> Result<Option<ModelConfig>, LaunchError> {
    let hidden = a.num("hidden-size")?;
    let heads = a.num("num-attention-heads")?;
    let shape = [
        ("--num-layers", layers),
        ("--hidden-size", hidden),
        ("--num-attention-heads", heads),
    ];
    if shape.iter().all(|(_, v)| v.is_none()) {
        // Without a shape the model comes from --model; shape-only arguments are ignored.
        return Ok(None);
    }
    let need = |name: &str, v: Option<u32>, why: &str| {
        v.ok_or_else(|| LaunchError::Incomplete(format!("the model shape needs {name}{why}")))
    };
    let (layers, hidden, heads) = (
        need("--num-layers", layers, "")?,
        need("--hidden-size", hidden, "")?,
        need("--num-attention-heads", heads, "")?,
    );
    let seq_len = need("--seq-length", spec.seq_len, "")?;
    let global_batch = need(
        "--global-batch-size",
        spec.global_batch,
        " (without it Megatron uses micro-batch × dp, which depends on the world size)",
    )?;
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(LaunchError::BadValue {
            argument: "--num-attention-heads".into(),
            value: heads.to_string(),
            expected: format!("a head count dividing --hidden-size {hidden}"),
        });
    }
    if let Some(kv) = a.num("kv-channels")? {
        if kv != hidden / heads {
            return Err(LaunchError::Unsupported {
                argument: format!("--kv-channels {kv}"),
                reason: format!(
                    "an attention width other than hidden / heads = {} is not modelled",
                    hidden / heads
                ),
            });
        }
    }
    let swiglu = a.flag("swiglu");
    let ffn = match a.num("ffn-hidden-size")? {
        Some(f) => f,
        None if swiglu => ((4.0 * f64::from(hidden) * 2.0 / 3.0) / 64.0) as u32 * 64,
        None => 4 * hidden,
    };
    let model = ModelConfig {
        name: "megatron-args".into(),
        layers,
        hidden,
        heads,
        kv_heads: kv_heads(a, heads, notes)?,
        ffn,
        ffn_kind: if swiglu {
            FfnKind::Swiglu
        } else {
            FfnKind::Gelu
        },
        vocab: vocab(a, notes)?,
        seq_len,
        // The learned table is counted at the training length (see `position`).
        max_positions: None,
        query_layer: false,
        tied_embeddings: !a.flag("untie-embeddings-and-output-weights"),
        position: position(a, seq_len, notes)?,
        norm: norm(a)?,
        bias: !a.flag("disable-bias-linear"),
        dropout: dropout(a, notes)?,
        global_batch: Some(global_batch),
        rope_theta: a
            .real("rotary-base")?
            .unwrap_or(pangu_model::DEFAULT_ROPE_THETA),
    };
    model.validate().map_err(LaunchError::Model)?;
    Ok(Some(model))
}

/// Key/value heads: `--num-query-groups` under `--group-query-attention` (Megatron-LM) or
/// `--num-key-value-heads` (Megatron-DeepSpeed).
fn kv_heads(a: &mut Args, heads: u32, notes: &mut Vec<String>) -> Result<Option<u32>, LaunchError> {
    let gqa = a.flag("group-query-attention");
    let groups = a.num("num-query-groups")?;
    let kv = a.num("num-key-value-heads")?;
    Ok(match (gqa, groups, kv) {
        (_, _, Some(kv)) => Some(kv),
        (true, g, None) => Some(g.unwrap_or(1)),
        (false, Some(g), None) => {
            notes.push(format!(
                "--num-query-groups {g} without --group-query-attention: Megatron ignores it, every head has its own keys and values"
            ));
            Some(heads)
        }
        (false, None, None) => Some(heads),
    })
}

/// The tokenizer's vocabulary before padding.
fn vocab(a: &mut Args, notes: &mut Vec<String>) -> Result<u32, LaunchError> {
    let size = a.num("vocab-size")?;
    let kind = a.text("tokenizer-type")?;
    let tok_model = a.text("tokenizer-model")?;
    let files = a.text("merge-file")?.is_some() | a.text("vocab-file")?.is_some();
    let Some((_, kind)) = kind else {
        return match size {
            Some(v) => Ok(v),
            None if files => {
                notes.push("no --tokenizer-type with --vocab-file / --merge-file: GPT-2 BPE assumed (50257 tokens)".into());
                Ok(50_257)
            }
            None => Err(LaunchError::Incomplete(
                "the vocabulary is unknown: add --vocab-size N or --tokenizer-type (e.g. GPT2BPETokenizer)".into(),
            )),
        };
    };
    let known = TOKENIZERS
        .iter()
        .find(|(n, _)| *n == kind.to_ascii_lowercase())
        .map(|(_, v)| *v)
        .or_else(|| {
            tok_model
                .as_ref()
                .and_then(|(_, m)| family_vocab(m))
                .map(|(v, _)| v)
        });
    match (kind.as_str(), known, size) {
        // Megatron's NullTokenizer adds its end-of-document token after the given size.
        ("NullTokenizer", _, Some(v)) => {
            notes.push(format!("NullTokenizer: {v} tokens plus its end-of-document token = {}", v + 1));
            Ok(v + 1)
        }
        (_, Some(k), s) => {
            if let Some(s) = s.filter(|s| *s != k) {
                notes.push(format!("--vocab-size {s} is not used with {kind}: its vocabulary is {k} tokens"));
            }
            Ok(k)
        }
        (_, None, Some(v)) => {
            notes.push(format!("{kind}: vocabulary {v} from --vocab-size"));
            Ok(v)
        }
        (_, None, None) => Err(LaunchError::Incomplete(format!(
            "--tokenizer-type {kind}: its vocabulary size is in the tokenizer file, which this tool does not read; \
             add --vocab-size N (known sizes: GPT2BPETokenizer 50257, Llama 2 32000, Llama 3 128256)"
        ))),
    }
}

/// Position embeddings: `--position-embedding-type learned_absolute | rope | none` (or
/// Megatron-DeepSpeed's `alibi`, and `--use-rotary-position-embeddings`);
/// `--no-position-embedding` drops the learned table (rotary still applies).
fn position(
    a: &mut Args,
    seq_len: u32,
    notes: &mut Vec<String>,
) -> Result<PositionKind, LaunchError> {
    let rotary_flag = a.flag("use-rotary-position-embeddings");
    let no_table = a.flag("no-position-embedding");
    let kind = match a.text("position-embedding-type")? {
        Some((arg, t)) => match t.to_ascii_lowercase().as_str() {
            "learned_absolute" | "learned-absolute" => PositionKind::Learned,
            "rope" | "mrope" => PositionKind::Rotary,
            "none" | "alibi" => PositionKind::None,
            _ => {
                return Err(LaunchError::BadValue {
                    argument: arg,
                    value: t,
                    expected: "learned_absolute, rope or none".into(),
                })
            }
        },
        None if rotary_flag => PositionKind::Rotary,
        None => PositionKind::Learned,
    };
    let kind = if kind == PositionKind::Learned && no_table {
        PositionKind::None
    } else {
        kind
    };
    if let Some(max) = a.num("max-position-embeddings")? {
        if kind == PositionKind::Learned && max != seq_len {
            notes.push(format!(
                "--max-position-embeddings {max}: the learned position table is counted at the training length {seq_len}"
            ));
        }
    }
    Ok(kind)
}

fn norm(a: &mut Args) -> Result<NormKind, LaunchError> {
    match a.text("normalization")? {
        None => Ok(NormKind::Layernorm),
        Some((arg, n)) => match n.to_ascii_lowercase().as_str() {
            "layernorm" => Ok(NormKind::Layernorm),
            "rmsnorm" => Ok(NormKind::Rmsnorm),
            _ => Err(LaunchError::BadValue {
                argument: arg,
                value: n,
                expected: "LayerNorm or RMSNorm".into(),
            }),
        },
    }
}

fn dropout(a: &mut Args, notes: &mut Vec<String>) -> Result<f64, LaunchError> {
    let mut read = |key: &str| -> Result<f64, LaunchError> {
        let p = a.real(key)?.unwrap_or(MEGATRON_DROPOUT);
        if !(0.0..1.0).contains(&p) {
            return Err(LaunchError::BadValue {
                argument: format!("--{key}"),
                value: p.to_string(),
                expected: "a probability in [0, 1)".into(),
            });
        }
        Ok(p)
    };
    let hidden = read("hidden-dropout")?;
    let attention = read("attention-dropout")?;
    if hidden != attention {
        notes.push(format!(
            "--hidden-dropout {hidden} and --attention-dropout {attention} differ: the model's one dropout is {}",
            hidden.max(attention)
        ));
    }
    Ok(hidden.max(attention))
}
