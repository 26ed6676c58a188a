//! The options of `pangu train`.

use std::path::PathBuf;

use crate::args::{Backend, StrategyArgs};

/// Options of `pangu train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Model preset or TOML file.
    #[arg(long, default_value = "pangu-alpha-tiny")]
    pub(super) model: String,
    /// UTF-8 corpus; documents separated by blank lines (default: data/zh_poetry_hans.txt).
    #[arg(long)]
    pub(super) corpus: Option<PathBuf>,
    /// Tokenizer file (default: `OUT/tokenizer.json`, trained on the corpus's training split
    /// with the model's vocabulary size when absent).
    #[arg(long)]
    pub(super) tokenizer: Option<PathBuf>,
    /// Optimizer steps of the run; the cosine decay ends here (default 2000).
    #[arg(long)]
    pub(super) steps: Option<u64>,
    /// Stop after this many minutes of wall time even before --steps (the schedule is kept).
    #[arg(long)]
    pub(super) minutes: Option<f64>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(super) lr: f64,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    pub(super) lr_end: Option<f64>,
    /// Linear warm-up steps (default: 2 % of --steps).
    #[arg(long)]
    pub(super) lr_warmup: Option<u64>,
    /// Dropout probability (default: the model's, 0.1 for PanGu-α).
    #[arg(long)]
    pub(super) dropout: Option<f64>,
    /// Seed of weights, dropout masks and data order.
    #[arg(long, default_value_t = 1234)]
    pub(super) seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub(super) threads: Option<usize>,
    /// Evaluate on held-out samples every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub(super) eval_every: u64,
    /// Held-out samples per periodic evaluation (the final one uses all).
    #[arg(long, default_value_t = 256)]
    pub(super) val_samples: usize,
    /// Write a checkpoint every this many steps (and at the end) into --out.
    #[arg(long, default_value_t = 500)]
    pub(super) checkpoint_every: u64,
    /// Run folder: checkpoints, tokenizer, curve.csv, curve.png, report.json, train.log.
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Continue the run in this checkpoint (a step folder or a run folder).
    #[arg(long, value_name = "DIR")]
    pub(super) resume: Option<PathBuf>,
    /// Print JSON (losses per step, validation, throughput, memory).
    #[arg(long)]
    pub(super) json: bool,
    /// No progress bar.
    #[arg(long)]
    pub(super) quiet: bool,
    /// The strategy, as `pangu plan` takes it (a file and/or inline flags); with more than
    /// one device, each rank is a thread (or an MPI process with --backend mpi).
    #[command(flatten)]
    pub(super) strategy: StrategyArgs,
    /// Group the ranks into this many virtual servers of consecutive ranks (so that
    /// hierarchical collectives have servers to work across on one machine).
    #[arg(long, default_value_t = 1)]
    pub(super) virtual_servers: u32,
    /// Communication backend: threads (one process) or mpi (`mpirun -np N pangu train …`).
    #[arg(long, value_enum, default_value_t = Backend::Threads)]
    pub(super) backend: Backend,
    /// Seconds a rank waits for a peer before the run stops with an error.
    #[arg(long, default_value_t = 60.0)]
    pub(super) comm_timeout: f64,
    /// Benchmark the training step on random tokens instead (shape flags below).
    #[arg(long)]
    pub(super) bench: bool,
    /// Bench: ordinary layers (the query layer is extra).
    #[arg(long, default_value_t = 4)]
    pub(super) layers: u32,
    /// Bench: hidden size.
    #[arg(long, default_value_t = 256)]
    pub(super) hidden: u32,
    /// Bench: attention heads.
    #[arg(long, default_value_t = 4)]
    pub(super) heads: u32,
    /// Bench: sequence length.
    #[arg(long, default_value_t = 128)]
    pub(super) seq: u32,
    /// Bench: vocabulary size.
    #[arg(long, default_value_t = 8000)]
    pub(super) vocab: u32,
    /// Bench: untimed steps before the timed ones.
    #[arg(long, default_value_t = 5)]
    pub(super) warmup: u32,
    /// Bench: GPT-2 shape (no query layer).
    #[arg(long)]
    pub(super) no_query_layer: bool,
}
