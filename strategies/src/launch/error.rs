//! The launch module's shared vocabulary: its error, the [`Launch`] it produces, the one
//! refusal of what is not modelled yet, and the precision flags both front ends read.

use pangu_model::ModelConfig;

use crate::strategy::{Precision, StrategySpec};

/// Why a launch configuration cannot be read. Every message names the argument or key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LaunchError {
    /// The line does not split into shell words.
    #[error("launch arguments: {0}")]
    Syntax(String),
    /// A shell expansion that this tool does not perform.
    #[error(
        "{argument}: the shell variable {variable} is not expanded here; \
         write its value (e.g. `{argument} 8`)"
    )]
    ShellVariable {
        /// The argument that carries it (or the word itself).
        argument: String,
        /// The expansion as written (`$TP`, `${TP}`).
        variable: String,
    },
    /// An argument without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value of the wrong kind.
    #[error("{argument} {value:?}: {expected}")]
    BadValue {
        /// The argument or key.
        argument: String,
        /// What was written.
        value: String,
        /// What would work.
        expected: String,
    },
    /// Something this tool does not model (yet).
    #[error("{argument}: {reason}")]
    Unsupported {
        /// The argument or key.
        argument: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The shape or batch is incomplete, or two sources disagree.
    #[error("{0}")]
    Incomplete(String),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {message}")]
    Read {
        /// Which kind of file.
        what: &'static str,
        /// The path.
        path: String,
        /// The system's message.
        message: String,
    },
    /// A DeepSpeed config that is not JSON.
    #[error("cannot parse DeepSpeed config {source_name}: {message}")]
    Json {
        /// File name.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// The model built from the arguments is invalid.
    #[error(transparent)]
    Model(pangu_model::ModelError),
}

/// A launch configuration read into this tool's terms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launch {
    /// The model, when the arguments carry its shape (Megatron); `None` for DeepSpeed configs
    /// and Megatron lines without the shape (they combine with `--model`).
    pub model: Option<ModelConfig>,
    /// The strategy the configuration sets.
    pub spec: StrategySpec,
    /// Arguments and keys that do not change the simulated step (logging, data, optimizer
    /// hyper-parameters, ...), as written.
    pub ignored: Vec<String>,
    /// What was derived, assumed, or read but not modelled.
    pub notes: Vec<String>,
}

/// The one place that refuses what the tool does not model yet. `what` names the feature;
/// `argument` is as written.
pub(super) fn unmodelled(what: &str, argument: &str) -> LaunchError {
    let reason = match what {
        "cp-comm-type" => {
            "only the p2p ring and all_gather K/V exchanges are modelled; use \
             --cp-comm-type p2p or all_gather"
        }
        _ => "this feature is not modelled yet",
    };
    LaunchError::Unsupported {
        argument: argument.to_string(),
        reason: reason.to_string(),
    }
}

/// A precision by Megatron / DeepSpeed flag state; both set is refused.
pub(super) fn precision_of(
    fp16: bool,
    bf16: bool,
    source: &str,
) -> Result<Option<Precision>, LaunchError> {
    match (fp16, bf16) {
        (true, true) => Err(LaunchError::Incomplete(format!(
            "{source}: both fp16 and bf16 are on; keep one"
        ))),
        (true, false) => Ok(Some(Precision::Fp16)),
        (false, true) => Ok(Some(Precision::Bf16)),
        (false, false) => Ok(None),
    }
}
