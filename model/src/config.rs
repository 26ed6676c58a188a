//! Model configurations: the shape of a transformer, its presets and its parameter count.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnKind {
    /// `W2 · gelu(W1 · x)` (PanGu-α, GPT).
    Gelu,
    /// `W2 · (silu(W1 · x) ⊙ W3 · x)` (Llama).
    Swiglu,
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    /// A learned `[seq_len, hidden]` table added to the token embedding (PanGu-α, GPT).
    Learned,
    /// Rotary embeddings applied to Q and K: no parameters.
    Rotary,
    /// No position parameters (ALiBi biases, as in MPT).
    None,
}

/// The normalisation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// LayerNorm with gain and bias.
    Layernorm,
    /// RMSNorm with gain only.
    Rmsnorm,
}

/// The shape of a decoder-only transformer.
///
/// With `query_layer` on, `layers` counts the PanGu-α query layer, as the paper does: the model
/// has `layers - 1` ordinary blocks and then the query layer. Block order in every mode:
/// blocks → query layer → final norm → head (the reference code's pipeline path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Preset or user name.
    pub name: String,
    /// Layers, including the query layer when there is one.
    pub layers: u32,
    /// Hidden size d.
    pub hidden: u32,
    /// Attention heads.
    pub heads: u32,
    /// Key/value heads (grouped-query attention); equal to `heads` when absent.
    #[serde(default)]
    pub kv_heads: Option<u32>,
    /// Feed-forward inner size.
    pub ffn: u32,
    /// Feed-forward kind.
    #[serde(default = "default_ffn_kind")]
    pub ffn_kind: FfnKind,
    /// Vocabulary size.
    pub vocab: u32,
    /// Training sequence length (tokens per sample). A run setting, not part of the shape:
    /// resolution sets it from the strategy's `seq_len` (`--seq-len`), the model preset's
    /// reference or, for model files written before it moved, the file's own `seq_len`;
    /// 0 until then.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq_len: u32,
    /// Rows of a learned position table: the longest sequence the model takes (GPT-2's
    /// `n_positions`, GPT-3's `n_ctx`). Learned positions only; absent, the table has
    /// `seq_len` rows (PanGu-α's reference code sizes it by the sequence length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_positions: Option<u32>,
    /// The PanGu-α query layer on top of the blocks.
    #[serde(default)]
    pub query_layer: bool,
    /// Output head shares the word-embedding table.
    #[serde(default = "yes")]
    pub tied_embeddings: bool,
    /// Position embedding kind.
    #[serde(default = "default_position")]
    pub position: PositionKind,
    /// Base θ of rotary embeddings (pair `i` of a head turns by `pos·θ^(-2i/head_dim)`);
    /// unused by other position kinds.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Normalisation kind.
    #[serde(default = "default_norm")]
    pub norm: NormKind,
    /// Linear layers carry biases.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Dropout probability on embeddings, attention probabilities and block outputs.
    #[serde(default)]
    pub dropout: f64,
    /// Legacy: a model file's global batch (sequences per optimizer step), used as the run's
    /// default with a note. The batch is a run setting (strategy `global_batch`,
    /// `--global-batch`); presets leave it to their reference strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<u32>,
}

fn yes() -> bool {
    true
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn default_ffn_kind() -> FfnKind {
    FfnKind::Gelu
}
fn default_position() -> PositionKind {
    PositionKind::Learned
}
/// RoFormer's base (Su et al. 2021, eq. 15: θ_i = 10000^(-2(i-1)/d)), also Llama 1 and 2's.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;
fn default_rope_theta() -> f64 {
    DEFAULT_ROPE_THETA
}
fn default_norm() -> NormKind {
    NormKind::Layernorm
}

/// Parameter counts by component (elements, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    /// One ordinary block (the query layer has the same weights).
    pub per_layer: u64,
    /// All blocks and the query layer.
    pub layers: u64,
    /// Word embedding (also the head when tied).
    pub embedding: u64,
    /// Untied output head (0 when tied).
    pub head: u64,
    /// Position table plus the query layer's position table.
    pub positions: u64,
    /// Final norm.
    pub final_norm: u64,
    /// Everything.
    pub total: u64,
}

impl ModelConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> u32 {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Head dimension d / heads.
    pub fn head_dim(&self) -> u32 {
        self.hidden / self.heads.max(1)
    }

    /// Ordinary transformer blocks (layers minus the query layer).
    pub fn blocks(&self) -> u32 {
        self.layers - u32::from(self.query_layer)
    }

    /// Width of the K (or V) projection: kv_heads × head_dim.
    pub fn kv_dim(&self) -> u64 {
        u64::from(self.kv_heads()) * u64::from(self.head_dim())
    }

    /// Rows of the learned position tables (`max_positions`, else `seq_len`).
    pub fn position_rows(&self) -> u32 {
        self.max_positions.unwrap_or(self.seq_len)
    }

    /// This shape trained at `seq_len` tokens per sample, checked as [`Self::validate_run`].
    pub fn with_seq_len(&self, seq_len: u32) -> Result<ModelConfig, ModelError> {
        let m = ModelConfig {
            seq_len,
            ..self.clone()
        };
        m.validate_run()?;
        Ok(m)
    }

    /// [`Self::validate`], plus what a run needs: a training sequence length, no longer
    /// than a learned position table.
    pub fn validate_run(&self) -> Result<(), ModelError> {
        self.validate()?;
        let bad = |reason: String| {
            Err(ModelError::Invalid {
                model: self.name.clone(),
                field: "seq_len".into(),
                reason,
            })
        };
        if self.seq_len == 0 {
            return bad(
                "no training sequence length: it is a run setting; pass --seq-len N (or seq_len \
                 in the strategy file)"
                    .into(),
            );
        }
        let uses_table = self.position == PositionKind::Learned || self.query_layer;
        match self.max_positions {
            Some(p) if uses_table && self.seq_len > p => bad(format!(
                "{} tokens exceed the learned position table of {p} rows; pass --seq-len {p} or less",
                self.seq_len
            )),
            _ => Ok(()),
        }
    }

    /// Parameters of one norm layer.
    pub fn norm_params(&self) -> u64 {
        match self.norm {
            NormKind::Layernorm => 2 * u64::from(self.hidden),
            NormKind::Rmsnorm => u64::from(self.hidden),
        }
    }

    /// Parameter counts. For PanGu-α this is the reference formula
    /// `L·(12d² + 13d) + V·d + 2·S·d + 2d` (shared/reference/pangu-alpha.md §1.7).
    pub fn params(&self) -> ParamCount {
        let d = u64::from(self.hidden);
        let f = u64::from(self.ffn);
        let kv = self.kv_dim();
        let b = u64::from(self.bias);
        let attn = 2 * d * d + 2 * d * kv + b * (2 * d + 2 * kv);
        let ffn = match self.ffn_kind {
            FfnKind::Gelu => 2 * d * f + b * (f + d),
            FfnKind::Swiglu => 3 * d * f + b * (2 * f + d),
        };
        let per_layer = attn + ffn + 2 * self.norm_params();
        let layers = per_layer * u64::from(self.layers);
        let embedding = u64::from(self.vocab) * d;
        let head = if self.tied_embeddings { 0 } else { embedding };
        let s = u64::from(self.position_rows());
        let positions = match self.position {
            PositionKind::Learned => s * d,
            _ => 0,
        } + if self.query_layer { s * d } else { 0 };
        let final_norm = self.norm_params();
        ParamCount {
            per_layer,
            layers,
            embedding,
            head,
            positions,
            final_norm,
            total: layers + embedding + head + positions + final_norm,
        }
    }

    /// Checks that the shape is usable; errors name the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, reason: String| {
            Err(ModelError::Invalid {
                model: self.name.clone(),
                field: field.into(),
                reason,
            })
        };
        for (field, v) in [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
            ("global_batch", self.global_batch.unwrap_or(1)),
            ("max_positions", self.max_positions.unwrap_or(1)),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        // Bounds far beyond any model trained so far (GPT-4-class models have d ≈ 2^14,
        // vocabularies ≈ 2^18), which keep every derived count inside 64 bits.
        for (field, v, max) in [
            ("layers", self.layers, 1u32 << 16),
            ("hidden", self.hidden, 1 << 20),
            ("ffn", self.ffn, 1 << 22),
            ("vocab", self.vocab, 1 << 24),
            ("seq_len", self.seq_len, 1 << 24),
            ("max_positions", self.max_positions.unwrap_or(0), 1 << 24),
            ("global_batch", self.global_batch.unwrap_or(0), 1 << 24),
        ] {
            if v > max {
                return bad(field, format!("{v} is beyond this tool's bound of {max}"));
            }
        }
        if self.heads > self.hidden {
            return bad(
                "heads",
                format!("{} heads exceed hidden {}", self.heads, self.hidden),
            );
        }
        if self.query_layer && self.layers < 2 {
            return bad(
                "layers",
                "a model with a query layer needs at least 2 layers".into(),
            );
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(
                "heads",
                format!("{} heads do not divide hidden {}", self.heads, self.hidden),
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.heads.is_multiple_of(kv) {
            return bad(
                "kv_heads",
                format!("{kv} key/value heads must divide the {} heads", self.heads),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(
                "rope_theta",
                format!(
                    "{} is not a rotary base above 1 (RoFormer uses 10000, Llama 3 500000)",
                    self.rope_theta
                ),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("{} is not a probability in [0, 1)", self.dropout),
            );
        }
        Ok(())
    }

    /// Model FLOPs of one training step's forward and backward per token, the MFU convention
    /// of PaLM (Chowdhery et al. 2022, appendix B): `6·N + 12·L·s·d`, where N counts the
    /// parameters that take part in matrix multiplies (position tables excluded, the tied
    /// embedding counted once as the head) and the attention term counts the full s×s score
    /// matrix (no causal halving).
    pub fn flops_per_token(&self) -> f64 {
        let p = self.params();
        let n = p.layers + p.embedding + p.head + p.final_norm;
        6.0 * n as f64
            + 12.0 * f64::from(self.layers) * f64::from(self.seq_len) * f64::from(self.hidden)
    }
}

/// The embedded model presets: (name, TOML text).
pub fn presets() -> &'static [(&'static str, &'static str)] {
    macro_rules! preset {
        ($($name:literal),* $(,)?) => {
            &[$(($name, include_str!(concat!("../presets/", $name, ".toml")))),*]
        };
    }
    preset!(
        "pangu-alpha-tiny",
        "pangu-alpha-small",
        "pangu-alpha-350m",
        "pangu-alpha-2.6b",
        "pangu-alpha-13b",
        "pangu-alpha-200b",
        "gpt-22b",
        "gpt3-125m",
        "gpt3-350m",
        "gpt3-760m",
        "gpt3-1.3b",
        "gpt3-2.7b",
        "gpt3-6.7b",
        "gpt3-13b",
        "gpt3-175b",
        "mt-nlg-530b",
        "gpt-1t",
        "mpt-7b",
        "mpt-30b",
        "mpt-70b",
        "llama2-7b",
        "llama2-13b",
        "llama2-70b",
        "llama3-8b",
        "llama3-70b",
        "llama3-405b",
    )
}

/// Other names of presets: (alias, preset). Llama 3.1 has the Llama 3 shapes (Meta's Llama
/// 3.1 config.json files differ from Llama 3's only in `rope_scaling` and
/// `max_position_embeddings`, which change no parameter and no op at a given sequence
/// length); the Llama 3 paper's 405B is the model released as Llama 3.1 405B.
pub const ALIASES: &[(&str, &str)] = &[
    ("llama3.1-8b", "llama3-8b"),
    ("llama3.1-70b", "llama3-70b"),
    ("llama3.1-405b", "llama3-405b"),
];

/// The TOML text of a preset (or of the preset an alias names).
pub fn preset_toml(name: &str) -> Result<&'static str, ModelError> {
    let canonical = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, p)| *p);
    presets()
        .iter()
        .find(|(n, _)| *n == canonical)
        .map(|(_, t)| *t)
        .ok_or_else(|| ModelError::UnknownPreset {
            name: name.to_string(),
            known: presets()
                .iter()
                .map(|(n, _)| *n)
                .chain(ALIASES.iter().map(|(a, _)| *a))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl ModelConfig {
    /// Parses and validates a model TOML; `source_name` appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<ModelConfig, ModelError> {
        let m: ModelConfig = toml::from_str(text).map_err(|e| ModelError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        m.validate()?;
        Ok(m)
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_toml(preset_toml(name)?, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(got: u64, want: f64, tol: f64) -> bool {
        ((got as f64 - want) / want).abs() <= tol
    }

    #[test]
    fn pangu_parameter_counts_match_the_reference_formula() {
        for (name, want) in [
            ("pangu-alpha-350m", 0.345e9),
            ("pangu-alpha-2.6b", 2.625e9),
            ("pangu-alpha-13b", 12.80e9),
            ("pangu-alpha-200b", 206.86e9),
        ] {
            let got = ModelConfig::preset(name).unwrap().params().total;
            assert!(within(got, want, 0.005), "{name}: {got} vs {want}");
        }
        // Exact for 2.6B: 32·(12d²+13d) + V·d + 2·S·d + 2d with d = 2560.
        let d = 2560u64;
        let exact = 32 * (12 * d * d + 13 * d) + 40_000 * d + 2 * 1024 * d + 2 * d;
        assert_eq!(
            ModelConfig::preset("pangu-alpha-2.6b")
                .unwrap()
                .params()
                .total,
            exact
        );
    }

    #[test]
    fn other_families_are_close_to_their_names() {
        for (name, want, tol) in [
            ("gpt3-175b", 175e9, 0.01),
            ("llama3-405b", 405e9, 0.01),
            ("mpt-7b", 6.7e9, 0.01),
        ] {
            let got = ModelConfig::preset(name).unwrap().params().total;
            assert!(within(got, want, tol), "{name}: {got}");
        }
    }

    #[test]
    fn every_preset_is_valid_and_tiny_has_the_bench_shape() {
        for (name, _) in presets() {
            ModelConfig::preset(name).unwrap();
        }
        let t = ModelConfig::preset("pangu-alpha-tiny").unwrap();
        assert_eq!(
            (t.blocks(), t.hidden, t.heads, t.position_rows(), t.vocab),
            (4, 256, 4, 128, 8000)
        );
        let s = ModelConfig::preset("pangu-alpha-small").unwrap();
        assert_eq!(
            (s.blocks(), s.hidden, s.heads, s.position_rows(), s.vocab),
            (6, 512, 8, 256, 16000)
        );
    }

    #[test]
    fn bad_models_name_the_field() {
        let text = preset_toml("pangu-alpha-tiny")
            .unwrap()
            .replace("heads = 4", "heads = 3");
        let e = ModelConfig::from_toml(&text, "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("heads") && e.contains("256"), "{e}");
        let e = ModelConfig::preset("gpt-5").unwrap_err().to_string();
        assert!(e.contains("pangu-alpha-200b"), "{e}");
        let text = preset_toml("pangu-alpha-tiny")
            .unwrap()
            .replace("dropout = 0.1", "dropout = nan");
        assert!(ModelConfig::from_toml(&text, "m.toml").is_err());
    }
}
