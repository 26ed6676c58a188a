//! PanGu-α model configurations and the per-device op graph.
//!
//! Main types:
//! - [`ModelConfig`]: the shape of a decoder-only transformer (layers including the PanGu-α
//!   query layer, hidden, heads, KV heads, FFN size and kind, vocabulary, sequence, tied
//!   embeddings). Presets are embedded TOML files ([`presets`]): the four PanGu-α sizes, the
//!   CPU-trainable `pangu-alpha-tiny` and `-small`, and the GPT/MPT/Llama shapes that the
//!   validation runs need.
//! - [`ops::Op`]: one device's share of one op of a layer for a given micro-batch, tensor-
//!   parallel degree and sequence parallelism: FLOPs, memory traffic, saved activations,
//!   parameters, and the tensor-parallel collectives. The simulator and the memory model both
//!   read these numbers; nothing else computes them.
//!
//! ```
//! use pangu_model::{ModelConfig, ops::{part_ops, totals, OpShape, Part}};
//! let m = ModelConfig::preset("pangu-alpha-2.6b").unwrap();
//! assert!((m.params().total as f64 - 2.625e9).abs() / 2.625e9 < 0.005);
//! let sh = OpShape::new(1, 8, false, 2);
//! let layer = totals(&part_ops(&m, Part::Block, sh));
//! assert!(layer.fwd_flops.0 > 0.0);
//! ```

pub mod config;
pub mod ops;

pub use config::{preset_toml, presets, FfnKind, ModelConfig, NormKind, ParamCount, PositionKind};

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
