//! Users' launch configurations in: Megatron-LM command-line arguments and DeepSpeed JSON
//! configs, turned into a model (when the arguments carry its shape) and a [`StrategySpec`](crate::strategy::StrategySpec).
//!
//! Nothing is dropped silently: every argument or key that does not change the simulated
//! step is listed in [`Launch::ignored`], what is read but not modelled is a note, and what
//! the tool cannot model yet is refused by `error::unmodelled`, the one place to change when it
//! can. The world size is never read from a launch config: it comes from `--devices` /
//! `--cluster`. Precedence in the front ends: explicit flags over the launch config over a
//! strategy file over the model's reference ([`StrategySpec::overlay`](crate::strategy::StrategySpec::overlay)).
//!
//! ```
//! use pangu_strategies::launch::Launch;
//! let l = Launch::from_megatron(
//!     "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 \
//!      --max-position-embeddings 2048 --tokenizer-type GPT2BPETokenizer \
//!      --micro-batch-size 4 --global-batch-size 256 --tensor-model-parallel-size 2 --bf16 \
//!      --lr 3e-4 --data-path /data/pile",
//! )
//! .unwrap();
//! assert_eq!(l.model.as_ref().unwrap().vocab, 50257);
//! assert_eq!(l.spec.tp, Some(2));
//! assert!(l.ignored.iter().any(|a| a.starts_with("--lr")));
//! assert!(l.pangu_flags().contains("--tp 2"));
//! ```

use std::path::Path;

use pangu_model::ModelConfig;

use crate::strategy::OptShard;

mod args;
mod deepspeed;
mod error;
mod megatron;
mod megatron_model;
mod tokenize;

pub use error::{Launch, LaunchError};

impl Launch {
    /// Reads Megatron-LM arguments (one shell-like string, continuations allowed).
    pub fn from_megatron(line: &str) -> Result<Launch, LaunchError> {
        megatron::parse(line)
    }

    /// Reads a file of Megatron-LM arguments.
    pub fn from_megatron_file(path: &Path) -> Result<Launch, LaunchError> {
        Launch::from_megatron(&read("Megatron arguments file", path)?)
    }

    /// Reads a DeepSpeed JSON config; `source_name` appears in errors.
    pub fn from_deepspeed(text: &str, source_name: &str) -> Result<Launch, LaunchError> {
        deepspeed::parse(text, source_name)
    }

    /// Reads a DeepSpeed JSON config file.
    pub fn from_deepspeed_file(path: &Path) -> Result<Launch, LaunchError> {
        Launch::from_deepspeed(
            &read("DeepSpeed config", path)?,
            &path.display().to_string(),
        )
    }

    /// Both configurations of one launch (Megatron-DeepSpeed passes both). A value both set
    /// must agree; the model comes from whichever has one.
    pub fn combine(self, other: Launch) -> Result<Launch, LaunchError> {
        let mut spec = self.spec.overlay(&other.spec);
        macro_rules! agree {
            ($($f:ident: $name:literal),*) => { $(
                if let (Some(a), Some(b)) = (&self.spec.$f, &other.spec.$f) {
                    if a != b {
                        return Err(LaunchError::Incomplete(format!(
                            "the Megatron arguments and the DeepSpeed config disagree on {}: {:?} vs {:?}; make them agree",
                            $name, a, b
                        )));
                    }
                }
            )* };
        }
        agree!(
            global_batch: "the global batch",
            micro_batch_size: "the micro-batch size",
            micro_batches: "the micro-batch count",
            precision: "the precision",
            remat: "recomputation"
        );
        // An optimizer sharding only one side states wins over the other's default `none`.
        if let (Some(a), Some(b)) = (self.spec.opt_shard, other.spec.opt_shard) {
            spec.opt_shard = Some(if a == OptShard::None { b } else { a });
            if a != OptShard::None && b != OptShard::None && a != b {
                return Err(LaunchError::Incomplete(format!(
                    "the Megatron arguments and the DeepSpeed config disagree on optimizer sharding: {a} vs {b}"
                )));
            }
        }
        let mut ignored = self.ignored;
        ignored.extend(other.ignored);
        let mut notes = self.notes;
        notes.extend(other.notes);
        Ok(Launch {
            model: self.model.or(other.model),
            spec,
            ignored,
            notes,
        })
    }

    /// The same strategy as `pangu` flags, e.g. `--tp 8 --pp 16 --micro-batch-size 1`.
    pub fn pangu_flags(&self) -> String {
        let s = &self.spec;
        let mut out: Vec<String> = Vec::new();
        let mut put = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{flag} {v}"));
            }
        };
        put("tp", s.tp.map(|v| v.to_string()));
        put("pp", s.pp.map(|v| v.to_string()));
        put("cp", s.cp.filter(|&c| c > 1).map(|v| v.to_string()));
        put("cp-comm", s.cp_comm.map(|v| v.to_string()));
        put("schedule", s.schedule.map(|v| v.to_string()));
        put(
            "micro-batch-size",
            s.micro_batch_size.map(|v| v.to_string()),
        );
        put("micro-batches", s.micro_batches.map(|v| v.to_string()));
        put("global-batch", s.global_batch.map(|v| v.to_string()));
        put("opt-shard", s.opt_shard.map(|v| v.to_string()));
        put("remat", s.remat.map(|v| v.to_string()));
        put("seq-parallel", s.seq_parallel.map(|v| v.to_string()));
        put("precision", s.precision.map(|v| v.to_string()));
        put("attention", s.attention.map(|v| v.to_string()));
        put("tp-comm-overlap", s.tp_comm_overlap.map(|v| v.to_string()));
        put("p2p-blocking", s.p2p_blocking.map(|v| v.to_string()));
        put(
            "grad-accumulation",
            s.grad_accumulation.map(|v| v.to_string()),
        );
        put(
            "vocab-divisible-by",
            s.vocab_divisible_by.map(|v| v.to_string()),
        );
        put("seq-len", s.seq_len.map(|v| v.to_string()));
        out.join(" ")
    }

    /// Notes for the user: what was noted, what was ignored, and the equivalent flags (and
    /// model shape), so that they learn this tool's spelling.
    pub fn summary_notes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.notes.iter().map(|n| format!("launch: {n}")).collect();
        if !self.ignored.is_empty() {
            out.push(format!(
                "launch: ignored (no effect on the simulated step): {}",
                self.ignored.join(" ")
            ));
        }
        out.push(format!("launch: as pangu flags: {}", self.pangu_flags()));
        if let Some(m) = &self.model {
            out.push(format!("launch: model as a TOML file: {}", model_line(m)));
        }
        out
    }
}

/// The model's fields in one line, as a model TOML file writes them.
fn model_line(m: &ModelConfig) -> String {
    match toml::to_string(m) {
        Ok(t) => t.lines().collect::<Vec<_>>().join("; "),
        Err(e) => format!("(cannot write: {e})"),
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, LaunchError> {
    std::fs::read_to_string(path).map_err(|e| LaunchError::Read {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
