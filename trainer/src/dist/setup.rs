//! What a distributed run is given: how it communicates, where it starts and what it saves.

use std::path::PathBuf;
use std::time::Duration;

use crate::sharded::WholeState;

/// How the executor communicates (the collective algorithms are the plan's).
#[derive(Debug, Clone, Copy)]
pub struct DistConfig {
    /// How long a rank waits on a peer before giving up.
    pub timeout: Duration,
    /// Fault injection for failure drills and tests: `(rank, step)` panics that rank when
    /// it starts that step.
    pub fail: Option<(usize, u64)>,
}

/// Where a run starts and what it saves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io<'a> {
    /// Start after this many steps from this whole-model state (a checkpoint of any plan).
    pub resume: Option<(u64, &'a WholeState)>,
    /// Write sharded checkpoints.
    pub save: Option<&'a Save>,
}

/// Sharded checkpointing of a run.
#[derive(Debug, Clone)]
pub struct Save {
    /// Run folder (`step-N` folders and `latest` go here).
    pub dir: PathBuf,
    /// Every this many steps, and after the last.
    pub every: u64,
    /// The tokenizer file to store with each checkpoint.
    pub tokenizer_json: Vec<u8>,
    /// Its hash.
    pub tokenizer_hash: String,
}
