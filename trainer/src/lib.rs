//! The executor: trains the PanGu-α architecture for real, on CPU, with the same `Plan` the
//! simulator prices.
//!
//! - [`kernels`]: fp32 forward and backward kernels (llm.c style), generic over [`Real`] so
//!   the finite-difference tests run the very same code in f64.
//! - [`linalg`]: matrix multiply through the `gemm` crate (the only `unsafe`, bounds-checked).
//! - [`model`]: the parameter layout, forward and backward of the whole model.
//! - [`reduce`]: the sums over a tensor-parallel group that the model and kernels call.
//! - [`grads`]: where a backward pass adds its gradients (two halves of a batch share one buffer).
//! - [`tokenizer`]: jieba segmentation + a Unigram vocabulary (Hugging Face `tokenizers`).
//! - [`data`]: the corpus, packing into `seq + 1` samples with EOD reset, the held-out split.
//! - [`optim`]: AdamW with PanGu-α's decay rules, warm-up + cosine, global-norm clipping.
//! - [`checkpoint`]: safetensors + a manifest, written atomically ([`fsio`]: the hash and the
//!   atomic write it and the tokenizer share).
//! - [`train`]: a run and its step; [`session`]: the training loop around it (deadline, loss
//!   guard, evaluations, checkpoints, progress); [`generate`]: sampling with a KV cache.
//! - [`comm`]: point-to-point messages and the plan's collective programs (threads, MPI);
//!   [`host`]: a plan on this machine; [`dist`]: the distributed executor of a plan;
//!   [`sharded`]: its checkpoints.
//!
//! It depends on `pangu-strategies` (the plan, the report types) and never on the simulator.

pub mod bench;
pub mod calibrate;
pub mod checkpoint;
pub mod comm;
pub mod cpustat;
pub mod data;
pub mod dist;
pub mod fsio;
pub mod generate;
pub mod grads;
pub mod host;
pub mod kernels;
pub mod linalg;
pub mod model;
pub mod optim;
pub mod real;
pub mod reduce;
pub mod rng;
pub mod session;
pub mod sharded;
pub mod tokenizer;
pub mod train;

pub use real::Real;

/// Errors of the trainer: each names what is wrong and what would work.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model or strategy asks for something the CPU trainer does not do.
    #[error("{0}")]
    Unsupported(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Input data (corpus, tokenizer, checkpoint) is malformed.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting is out of range.
    #[error("{0}")]
    Config(String),
    /// A file's contents parsed but describe something that does not build (a checkpoint
    /// manifest whose model or strategy does not plan): the file, then the cause.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// What its contents failed.
        #[source]
        source: Box<TrainError>,
    },
    /// The strategy cannot be planned on this machine (the plan's error names the value).
    #[error(transparent)]
    Plan(#[from] pangu_strategies::PlanError),
    /// The machine's cluster description is invalid.
    #[error(transparent)]
    Hardware(#[from] pangu_hardware::HardwareError),
    /// A step's loss or gradient norm was not finite (NaN or infinite): training diverged.
    /// (The loss alone does not show it: the cross-entropy clamps a NaN probability, so a
    /// model with NaN weights reports a finite loss of about 708 with a NaN gradient norm.)
    #[error(
        "the {} became {} at step {step}: lower --lr (now {lr})",
        if loss.is_finite() { "gradient norm" } else { "loss" },
        if loss.is_finite() { grad_norm } else { loss }
    )]
    Diverged {
        /// The step (1-based).
        step: u64,
        /// Its loss.
        loss: f64,
        /// Its gradient norm before clipping.
        grad_norm: f64,
        /// The run's peak learning rate.
        lr: f64,
    },
    /// A communication failed; the message names this rank, the peer and the operation.
    #[error(transparent)]
    Comm(#[from] comm::CommError),
    /// A rank of a distributed run panicked.
    #[error("rank {rank} panicked: {message}")]
    Panicked {
        /// The rank.
        rank: usize,
        /// The panic's message.
        message: String,
    },
    /// Ranks of a distributed run failed, the root causes first (a panic or a timeout before
    /// the peers that saw the rank stop).
    #[error("distributed run failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Distributed(Vec<TrainError>),
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> TrainError {
        TrainError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// `self`, caused by the contents of `path`.
    pub fn in_file(self, path: impl AsRef<std::path::Path>) -> TrainError {
        TrainError::InFile {
            path: path.as_ref().display().to_string(),
            source: Box::new(self),
        }
    }

    /// Malformed content in `path`.
    pub fn invalid(path: impl AsRef<std::path::Path>, reason: impl Into<String>) -> TrainError {
        TrainError::Invalid {
            path: path.as_ref().display().to_string(),
            reason: reason.into(),
        }
    }
}
