//! PanGu-α model configurations and the per-device op graph.
//!
//! Main types:
//! - [`ModelConfig`]: the shape of a decoder-only transformer (layers including the PanGu-α
//!   query layer, hidden, heads, KV heads, FFN size and kind, vocabulary, tied embeddings,
//!   learned position rows). The training sequence length is a run setting that resolution
//!   sets (`seq_len`); the global batch is not part of the model. Presets are embedded TOML
//!   files ([`presets`], [`ALIASES`]): the four PanGu-α sizes, the CPU-trainable
//!   `pangu-alpha-tiny` and `-small`, the GPT-3 family, Llama 2, Llama 3 / 3.1, and the
//!   GPT/MPT shapes that the validation runs need.
//! - [`load()`]: the one reader of a `--model` argument: a preset, a model TOML, or a Hugging
//!   Face `config.json` ([`hf`]).
//! - [`ops::Op`]: one device's share of one op of a layer for a given micro-batch, tensor-
//!   parallel degree and sequence parallelism: FLOPs, memory traffic, saved activations,
//!   parameters, and the tensor-parallel collectives. The simulator and the memory model both
//!   read these numbers; nothing else computes them.
//!
//! ```
//! use pangu_model::{ModelConfig, ops::{part_ops, totals, OpShape, Part}};
//! let m = ModelConfig::preset("pangu-alpha-2.6b").unwrap().with_seq_len(1024).unwrap();
//! assert!((m.params().total as f64 - 2.625e9).abs() / 2.625e9 < 0.005);
//! let sh = OpShape::new(1, 8, false, 2);
//! let layer = totals(&part_ops(&m, Part::Block, sh));
//! assert!(layer.fwd_flops.0 > 0.0);
//! ```

pub mod config;
pub mod hf;
pub mod load;
pub mod ops;

pub use config::{
    preset_toml, presets, FfnKind, ModelConfig, NormKind, ParamCount, PositionKind, ALIASES,
    DEFAULT_ROPE_THETA,
};
pub use load::load;

/// A model read from a preset or a file, with what its shape leaves out of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The shape.
    pub config: ModelConfig,
    /// Differences between the file and the shape, one sentence each (Hugging Face configs).
    pub notes: Vec<String>,
}

/// Errors from reading or checking a model description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The name matches no preset.
    #[error("unknown model preset {name:?}; known presets: {known}")]
    UnknownPreset {
        /// What was asked for.
        name: String,
        /// Comma-separated list.
        known: String,
    },
    /// The TOML could not be parsed.
    #[error("cannot parse model file {source_name}: {message}")]
    Parse {
        /// File or preset name.
        source_name: String,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A model file could not be read.
    #[error("cannot read model file {path}: {message}")]
    Read {
        /// The path.
        path: String,
        /// The system's message.
        message: String,
    },
    /// A Hugging Face config this tool does not represent (another architecture, MoE).
    #[error("model file {source_name}: {reason}")]
    Unsupported {
        /// File name.
        source_name: String,
        /// What is not supported and what is.
        reason: String,
    },
    /// A value is out of range.
    #[error("model {model:?}: invalid {field}: {reason}")]
    Invalid {
        /// Model name.
        model: String,
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}
