//! `pangu generate`: sample from a checkpoint with the KV cache.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use pangu_trainer::generate::{self, Sampling};
use pangu_trainer::model::Model;
use pangu_trainer::tokenizer::Tokenizer;
use serde_json::json;

use crate::output::{emit, print_json, tool_field};

/// Options of `pangu generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// Checkpoint (a step folder or a run folder).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    prompt: String,
    /// New tokens at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn generate(a: &GenerateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.top_p) || a.temperature < 0.0 {
        bail!("--top-p must be in [0, 1] and --temperature at least 0");
    }
    let dir = pangu_trainer::checkpoint::resolve(&a.checkpoint)?;
    let (man, _) = pangu_trainer::checkpoint::read_manifest(&dir)?;
    let model = Model::new(&man.model, man.seed)?;
    let (_, state, tok_bytes) = pangu_trainer::checkpoint::load(&dir, &model.layout)?;
    let tok = Tokenizer::from_json(&tok_bytes, &dir.join("tokenizer.json"))?;
    let prompt = tok.encode(&a.prompt);
    let t0 = Instant::now();
    let cfg = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let ids = generate::generate(
        &model,
        &state.params,
        &prompt,
        a.max_tokens,
        tok.vocab_size(),
        &cfg,
    );
    let secs = t0.elapsed().as_secs_f64();
    let text = tok.decode(&ids);
    if a.json {
        let settings = json!({
            "max_tokens": a.max_tokens,
            "temperature": a.temperature,
            "top_k": a.top_k,
            "top_p": a.top_p,
            "seed": a.seed,
        });
        return print_json(&json!({
            "tool": tool_field(&(&man, &a.prompt, &settings)),
            "checkpoint": dir,
            "model": man.model.name,
            "step": man.step,
            "prompt": a.prompt,
            "prompt_tokens": prompt,
            "completion": text,
            "tokens": ids,
            "seed": a.seed,
            "settings": settings,
            "seconds": secs,
            "tokens_per_s": ids.len() as f64 / secs.max(1e-9),
        }));
    }
    emit(&format!("{}{}\n", a.prompt, text))
}
