//! Hugging Face `config.json` files as model shapes.
//!
//! The `architectures` field picks the reader. Dense decoder families are read:
//! `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` (RMSNorm, SwiGLU, rotary,
//! grouped-query attention, as transformers' `LlamaConfig`, `MistralConfig` and `Qwen2Config`
//! define their keys) and `GPT2LMHeadModel` (`GPT2Config`: LayerNorm, GELU, a learned
//! `n_positions`-row position table, biases, tied head). Mixture-of-experts configs are
//! refused by name. `max_position_embeddings` is the longest context a rotary model was
//! built for, not the length it trains at: the training sequence length is a run setting
//! (`--seq-len`), so it is not read.
//!
//! What a shape cannot say is returned as notes: Qwen2's q/k/v biases (the shape has one
//! bias switch for every linear layer, so they are left out and their count is stated), a
//! sliding attention window (priced as full causal attention).

use serde_json::{Map, Value};

use crate::config::{FfnKind, ModelConfig, NormKind, PositionKind};
use crate::{Loaded, ModelError};

/// The architectures this reader understands.
pub const SUPPORTED: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GPT2LMHeadModel",
];

/// Mixture-of-experts architectures, refused by name.
const MOE: &[&str] = &[
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "DbrxForCausalLM",
    "JambaForCausalLM",
    "OlmoeForCausalLM",
    "GraniteMoeForCausalLM",
    "PhiMoEForCausalLM",
];

/// Keys that count routed experts in transformers' MoE configs (Mixtral's
/// `num_local_experts`, Qwen2-MoE's `num_experts`, DeepSeek's `n_routed_experts`).
const EXPERT_KEYS: &[&str] = &["num_local_experts", "num_experts", "n_routed_experts"];

/// Reads a Hugging Face `config.json`; `source_name` (the path) names errors and, without a
/// `_name_or_path`, the model (its file name without `.json` and `.config`).
pub fn from_hf_config(text: &str, source_name: &str) -> Result<Loaded, ModelError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Parse {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(parse_err(source_name, "a config.json is a JSON object"));
    };
    let r = Reader {
        obj,
        source: source_name,
    };
    let arch = r.architecture()?;
    r.refuse_moe(&arch)?;
    let name = model_name(obj, source_name);
    let hf = match arch.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" => r.llama(&arch, name)?,
        "GPT2LMHeadModel" => r.gpt2(name)?,
        other => {
            return Err(unsupported(
                source_name,
                format!(
                    "architecture {other} is not supported; supported: {}",
                    SUPPORTED.join(", ")
                ),
            ))
        }
    };
    hf.config.validate()?;
    Ok(hf)
}

fn parse_err(source: &str, message: impl Into<String>) -> ModelError {
    ModelError::Parse {
        source_name: source.to_string(),
        message: message.into(),
    }
}

fn unsupported(source: &str, reason: String) -> ModelError {
    ModelError::Unsupported {
        source_name: source.to_string(),
        reason,
    }
}

/// `_name_or_path`'s last component, else the file name without `.json` / `.config`.
fn model_name(obj: &Map<String, Value>, source: &str) -> String {
    if let Some(n) = obj.get("_name_or_path").and_then(Value::as_str) {
        if let Some(last) = n.rsplit('/').find(|s| !s.is_empty()) {
            return last.to_string();
        }
    }
    let file = source.rsplit(['/', '\\']).next().unwrap_or(source);
    let stem = file.strip_suffix(".json").unwrap_or(file);
    stem.strip_suffix(".config").unwrap_or(stem).to_string()
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
}

impl Reader<'_> {
    fn architecture(&self) -> Result<String, ModelError> {
        let list = self.obj.get("architectures").and_then(Value::as_array);
        match list.and_then(|l| l.first()).and_then(Value::as_str) {
            Some(a) => Ok(a.to_string()),
            None => Err(parse_err(
                self.source,
                format!(
                    "no `architectures` list naming the model class; supported: {}",
                    SUPPORTED.join(", ")
                ),
            )),
        }
    }

    fn refuse_moe(&self, arch: &str) -> Result<(), ModelError> {
        let experts = EXPERT_KEYS
            .iter()
            .find_map(|k| self.obj.get(*k).and_then(Value::as_u64).map(|n| (*k, n)))
            .filter(|(_, n)| *n > 1);
        if MOE.contains(&arch) || experts.is_some() {
            let count = experts.map_or(String::new(), |(k, n)| format!(" ({k} = {n})"));
            return Err(unsupported(
                self.source,
                format!(
                    "architecture {arch} is a mixture-of-experts model{count}: MoE is out of scope \
                     (this tool models dense transformers); supported: {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A required positive integer that fits in 32 bits.
    fn int(&self, key: &str) -> Result<u32, ModelError> {
        match self.obj.get(key) {
            Some(v) => self.as_u32(key, v),
            None => Err(parse_err(
                self.source,
                format!("missing field `{key}` (a positive integer)"),
            )),
        }
    }

    /// An optional integer; JSON `null` counts as absent.
    fn opt_int(&self, key: &str) -> Result<Option<u32>, ModelError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self.as_u32(key, v).map(Some),
        }
    }

    fn as_u32(&self, key: &str, v: &Value) -> Result<u32, ModelError> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                parse_err(
                    self.source,
                    format!("`{key}` = {v} is not an integer in 0..=4294967295"),
                )
            })
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(parse_err(
                self.source,
                format!("`{key}` = {v} is not true or false"),
            )),
        }
    }

    fn prob(&self, key: &str, default: f64) -> f64 {
        self.obj.get(key).and_then(Value::as_f64).unwrap_or(default)
    }

    /// Llama, Mistral and Qwen2: the keys of transformers' `LlamaConfig` family.
    fn llama(&self, arch: &str, name: String) -> Result<Loaded, ModelError> {
        let mut notes = Vec::new();
        let hidden = self.int("hidden_size")?;
        let heads = self.int("num_attention_heads")?;
        let layers = self.int("num_hidden_layers")?;
        let kv = self.opt_int("num_key_value_heads")?.unwrap_or(heads);
        if let Some(hd) = self.opt_int("head_dim")? {
            if u64::from(hd) * u64::from(heads) != u64::from(hidden) {
                return Err(unsupported(
                    self.source,
                    format!(
                        "head_dim {hd} × {heads} heads ≠ hidden_size {hidden}: this tool's shapes \
                         have head_dim = hidden / heads"
                    ),
                ));
            }
        }
        let act = self
            .obj
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            notes.push(format!(
                "hidden_act {act:?}: the gated feed-forward is priced as SwiGLU (same shapes)"
            ));
        }
        let bias = if arch == "Qwen2ForCausalLM" {
            let n = u64::from(layers)
                * (u64::from(hidden) + 2 * u64::from(kv) * u64::from(hidden / heads.max(1)));
            notes.push(format!(
                "Qwen2's q/k/v projection biases ({n} parameters) are left out: the shape's bias \
                 switch covers every linear layer"
            ));
            false
        } else {
            let attn = self.flag("attention_bias", false)?;
            let mlp = self.flag("mlp_bias", false)?;
            if attn != mlp {
                notes.push(format!(
                    "attention_bias {attn} with mlp_bias {mlp}: the shape has one bias switch; \
                     counted without biases"
                ));
            }
            attn && mlp
        };
        if let Some(w) = self.sliding_window()? {
            notes.push(format!(
                "sliding_window {w}: attention is priced as full causal attention (the same \
                 below {w} tokens)"
            ));
        }
        let config = ModelConfig {
            name,
            layers,
            hidden,
            heads,
            kv_heads: Some(kv),
            ffn: self.int("intermediate_size")?,
            ffn_kind: FfnKind::Swiglu,
            vocab: self.int("vocab_size")?,
            seq_len: 0,
            max_positions: None,
            query_layer: false,
            // LlamaConfig, MistralConfig and Qwen2Config all default to an untied head.
            tied_embeddings: self.flag("tie_word_embeddings", false)?,
            position: PositionKind::Rotary,
            norm: NormKind::Rmsnorm,
            bias,
            dropout: self.prob("attention_dropout", 0.0),
            global_batch: None,
            rope_theta: self.prob("rope_theta", crate::DEFAULT_ROPE_THETA),
        };
        Ok(Loaded { config, notes })
    }

    /// Mistral's `sliding_window`, or Qwen2's when `use_sliding_window` is on.
    fn sliding_window(&self) -> Result<Option<u32>, ModelError> {
        if !self.flag("use_sliding_window", true)? {
            return Ok(None);
        }
        self.opt_int("sliding_window")
    }

    /// GPT-2: `GPT2Config`'s keys (`n_inner` null means 4·`n_embd`; the head is tied).
    fn gpt2(&self, name: String) -> Result<Loaded, ModelError> {
        let hidden = self.int("n_embd")?;
        let ffn = match self.opt_int("n_inner")? {
            Some(f) => f,
            None => hidden.checked_mul(4).ok_or_else(|| {
                parse_err(self.source, format!("n_embd {hidden}: 4·n_embd overflows"))
            })?,
        };
        let config = ModelConfig {
            name,
            layers: self.int("n_layer")?,
            hidden,
            heads: self.int("n_head")?,
            kv_heads: None,
            ffn,
            ffn_kind: FfnKind::Gelu,
            vocab: self.int("vocab_size")?,
            seq_len: 0,
            max_positions: Some(self.int("n_positions")?),
            query_layer: false,
            tied_embeddings: self.flag("tie_word_embeddings", true)?,
            position: PositionKind::Learned,
            norm: NormKind::Layernorm,
            bias: true,
            dropout: self.prob("resid_pdrop", 0.1),
            global_batch: None,
            rope_theta: crate::DEFAULT_ROPE_THETA,
        };
        Ok(Loaded {
            config,
            notes: Vec::new(),
        })
    }
}
