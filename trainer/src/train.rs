//! The single-device training loop: packed Chinese text, AdamW, warm-up + cosine, global-norm
//! clipping, gradient accumulation over micro-batches, held-out evaluation, checkpoints.
//!
//! Everything random derives from the run's seed through counters (initial weights, dropout
//! masks keyed on (step, layer, site, sample), the data order per epoch), so a run's state is
//! its tensors plus two integers, and a resumed run continues bit-identically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use pangu_model::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Manifest, State};
use crate::data::{Order, Packed};
use crate::model::{parts_of, Acts, Batch, Model};
use crate::optim::{self, AdamW, Schedule};
use crate::tokenizer::Tokenizer;
use crate::TrainError;

/// Settings of a run (all have CLI flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Optimizer steps of the whole run (the cosine decay ends here).
    pub steps: u64,
    /// Samples per optimizer step.
    pub batch: usize,
    /// Micro-batches the step's samples are split into (gradients accumulate).
    pub micro_batches: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate.
    pub lr_end: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Global-norm clipping threshold (0 disables).
    pub clip: f64,
    /// Dropout probability.
    pub dropout: f64,
    /// Seed.
    pub seed: u64,
    /// AdamW constants.
    pub adamw: AdamW,
    /// Full rematerialisation: keep each layer's input only and recompute the layer in
    /// backward (same numbers, less memory, about a third more compute).
    #[serde(default)]
    pub remat: bool,
}

impl Settings {
    /// Defaults for `cfg`: a legacy model file's global batch (else 1: callers set the run's
    /// batch), PanGu-α's optimizer, a learning rate for a small model.
    pub fn for_model(cfg: &ModelConfig, steps: u64) -> Settings {
        Settings {
            steps,
            batch: cfg.global_batch.map_or(1, |b| b as usize),
            micro_batches: 1,
            lr: 1e-3,
            lr_end: 1e-4,
            warmup: (steps / 50).clamp(1, 2000),
            clip: 1.0,
            dropout: cfg.dropout,
            seed: 1234,
            adamw: AdamW::default(),
            remat: false,
        }
    }

    /// Checks the values; errors name the setting.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if self.micro_batches == 0 || !self.batch.is_multiple_of(self.micro_batches) {
            return bad(format!(
                "--micro-batches {} must divide the batch of {} samples",
                self.micro_batches, self.batch
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr {} must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            peak: self.lr,
            end: self.lr_end,
            warmup: self.warmup,
            total: self.steps,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepInfo {
    /// Steps done (1-based).
    pub step: u64,
    /// Mean training loss (nats per token).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient global norm before clipping.
    pub grad_norm: f64,
    /// Wall time of the step.
    pub seconds: f64,
    /// Tokens per second of the step.
    pub tokens_per_s: f64,
}

/// A held-out evaluation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Eval {
    /// Steps done when it ran.
    pub step: u64,
    /// Mean loss per token.
    pub loss: f64,
    /// Loss per character (Σ token losses / characters of the targets).
    pub loss_per_char: f64,
    /// Perplexity per token.
    pub perplexity: f64,
    /// Samples evaluated.
    pub samples: usize,
}

/// Bytes the trainer allocated, by component.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// Parameters.
    pub weights: u64,
    /// Gradients.
    pub gradients: u64,
    /// Adam moments.
    pub optimizer: u64,
    /// Activations and backward scratch of one micro-batch.
    pub activations: u64,
    /// Sum.
    pub total: u64,
}

/// Bytes a run of `model` with `settings` allocates: fp32 weights, gradients, Adam m and v,
/// and the buffers of one micro-batch.
pub fn required_bytes(model: &Model, settings: &Settings) -> u64 {
    let micro = settings.batch / settings.micro_batches.max(1);
    let parts = parts_of(micro);
    16 * model.layout.total as u64
        + parts as u64
            * Acts::<f32>::bytes_for_remat(
                &model.dims(),
                micro / parts,
                settings.dropout > 0.0,
                settings.remat,
            )
}

/// Memory the OS reports as available (`MemAvailable` of /proc/meminfo), if readable.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a run that cannot fit in this machine's memory (instead of failing to allocate);
/// cheap, so callers check before tokenising a corpus.
pub fn check_memory(cfg: &ModelConfig, settings: &Settings) -> Result<(), TrainError> {
    let model = Model::new(cfg, settings.seed)?;
    let need = required_bytes(&model, settings);
    if let Some(avail) = available_bytes() {
        if need > avail {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(TrainError::Config(format!(
                "model '{}' needs {:.1} GiB for fp32 weights, gradients, Adam state and one micro-batch of {} \
                 samples, but this machine has {:.1} GiB available: train pangu-alpha-tiny or pangu-alpha-small, \
                 or lower --batch / raise --micro-batches",
                cfg.name,
                gib(need),
                settings.batch / settings.micro_batches.max(1),
                gib(avail)
            )));
        }
    }
    Ok(())
}

/// A training run in memory.
pub struct Run {
    /// The model configuration.
    pub cfg: ModelConfig,
    /// The model.
    pub model: Model,
    /// Settings.
    pub settings: Settings,
    /// Parameters and optimizer state.
    pub state: State,
    grads: Vec<f32>,
    decay: Vec<bool>,
    /// The buffers of one micro-batch: whole, or its two halves ([`parts_of`]).
    acts: Vec<Acts<f32>>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Training split.
    pub train: Packed,
    /// Held-out split.
    pub val: Packed,
    order: Order,
    /// Optimizer steps done.
    pub step: u64,
    /// Samples consumed.
    pub samples_seen: u64,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Run({}, step {})", self.cfg.name, self.step)
    }
}

impl Run {
    /// A fresh run of `cfg` on `corpus` (already split into training and held-out text).
    pub fn new(
        cfg: &ModelConfig,
        settings: Settings,
        tokenizer: Tokenizer,
        train_text: &str,
        val_text: &str,
    ) -> Result<Run, TrainError> {
        settings.validate()?;
        let mut model = Model::new(cfg, settings.seed)?;
        check_memory(cfg, &settings)?;
        model.dropout = settings.dropout;
        let params = model.layout.init::<f32>(settings.seed);
        let n = params.len();
        let state = State {
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
        };
        Run::assemble(
            cfg, model, settings, state, tokenizer, train_text, val_text, 0, 0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: &ModelConfig,
        model: Model,
        settings: Settings,
        state: State,
        tokenizer: Tokenizer,
        train_text: &str,
        val_text: &str,
        step: u64,
        samples_seen: u64,
    ) -> Result<Run, TrainError> {
        if tokenizer.vocab_size() > cfg.vocab as usize {
            return Err(TrainError::Config(format!(
                "the tokenizer has {} pieces but model '{}' has a vocabulary of {}: train a tokenizer with \
                 --vocab {} or pick a model with a larger vocab",
                tokenizer.vocab_size(),
                cfg.name,
                cfg.vocab,
                cfg.vocab
            )));
        }
        let s = cfg.seq_len as usize;
        let train = Packed::new(&tokenizer, train_text, s);
        let val = Packed::new(&tokenizer, val_text, s);
        if train.samples() == 0 {
            return Err(TrainError::Config(format!(
                "the training text gives {} tokens, fewer than one sample of {} tokens",
                train.tokens.len(),
                s + 1
            )));
        }
        let micro = settings.batch / settings.micro_batches;
        let parts = parts_of(micro);
        let acts = (0..parts)
            .map(|_| {
                Acts::with_remat(
                    &model.dims(),
                    micro / parts,
                    settings.dropout > 0.0,
                    settings.remat,
                )
            })
            .collect();
        Ok(Run {
            cfg: cfg.clone(),
            grads: vec![0.0; state.params.len()],
            decay: model.layout.decay_mask(),
            order: Order::new(settings.seed, train.samples()),
            model,
            settings,
            state,
            acts,
            tokenizer,
            train,
            val,
            step,
            samples_seen,
        })
    }

    /// Resumes the checkpoint in `dir` (a step folder or a run folder), continuing with
    /// `settings` if given (their seed and batch must match the checkpoint's).
    pub fn resume(dir: &Path, train_text: &str, val_text: &str) -> Result<Run, TrainError> {
        let ck = checkpoint::resolve(dir)?;
        let manifest_path = ck.join("manifest.json");
        let (man, _) = checkpoint::read_manifest(&ck)?;
        let mut model = Model::new(&man.model, man.seed).map_err(|e| e.in_file(&manifest_path))?;
        let settings: Settings = serde_json::from_value(man.settings.clone())
            .map_err(|e| TrainError::invalid(&manifest_path, format!("settings: {e}")))?;
        model.dropout = settings.dropout;
        let (man, state, tok_bytes) = checkpoint::load(&ck, &model.layout)?;
        let tokenizer = Tokenizer::from_json(&tok_bytes, &ck.join("tokenizer.json"))?;
        if format!("{:016x}", tokenizer.hash()) != man.tokenizer_hash {
            return Err(TrainError::invalid(
                &manifest_path,
                "the tokenizer does not match the manifest's hash",
            ));
        }
        Run::assemble(
            &man.model.clone(),
            model,
            settings,
            state,
            tokenizer,
            train_text,
            val_text,
            man.step,
            man.samples_seen,
        )
    }

    /// Samples of the next micro-batches of one step (their global visit indices), each in
    /// its parts ([`parts_of`]).
    fn step_batches(&mut self) -> Vec<Vec<Batch>> {
        let b = self.settings.batch;
        let micro = b / self.settings.micro_batches;
        let part = micro / parts_of(micro);
        let s = self.cfg.seq_len as usize;
        let ks: Vec<u64> = (self.samples_seen..self.samples_seen + b as u64).collect();
        let mut batches: Vec<Vec<Batch>> = ks
            .chunks(micro)
            .map(|chunk| {
                chunk
                    .chunks(part)
                    .map(|ids| {
                        let samples: Vec<&[u32]> = ids
                            .iter()
                            .map(|&k| self.train.sample(self.order.at(k)))
                            .collect();
                        Batch::from_samples(&samples, ids, s)
                    })
                    .collect()
            })
            .collect();
        let total: usize = batches.iter().flatten().map(Batch::counted).sum();
        for bt in batches.iter_mut().flatten() {
            bt.normalise(total);
        }
        batches
    }

    /// One optimizer step (on the kernels' thread pool).
    pub fn step(&mut self) -> StepInfo {
        crate::linalg::in_pool(|| self.step_inner())
    }

    fn step_inner(&mut self) -> StepInfo {
        let t0 = Instant::now();
        let batches = self.step_batches();
        crate::kernels::zero(&mut self.grads);
        let mut loss = 0.0;
        for mb in &batches {
            loss += self.model.step_parts(
                &self.state.params,
                &mut self.grads,
                &mut self.acts,
                mb,
                self.step,
                true,
            );
        }
        let norm = optim::sum_squares(&self.grads).sqrt();
        let scale = optim::clip_scale(norm, self.settings.clip) as f32;
        let lr = self.settings.schedule().lr(self.step + 1);
        self.settings.adamw.update(
            &mut self.state.params,
            &mut self.state.m,
            &mut self.state.v,
            &self.grads,
            &self.decay,
            scale,
            lr,
            self.step + 1,
        );
        self.step += 1;
        self.samples_seen += self.settings.batch as u64;
        let seconds = t0.elapsed().as_secs_f64();
        StepInfo {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
            seconds,
            tokens_per_s: (self.settings.batch * self.cfg.seq_len as usize) as f64 / seconds,
        }
    }

    /// Loss on the first `max_samples` held-out samples (all with `usize::MAX`).
    pub fn evaluate(&mut self, max_samples: usize) -> Eval {
        crate::linalg::in_pool(|| self.evaluate_inner(max_samples))
    }

    fn evaluate_inner(&mut self, max_samples: usize) -> Eval {
        let s = self.cfg.seq_len as usize;
        let micro = self.settings.batch / self.settings.micro_batches;
        let part = micro / self.acts.len();
        let n = self.val.samples().min(max_samples);
        let (mut sum, mut tokens, mut chars) = (0.0, 0usize, 0usize);
        let mut i = 0;
        while i + micro <= n {
            for acts in &mut self.acts {
                let samples: Vec<&[u32]> = (i..i + part).map(|k| self.val.sample(k)).collect();
                let ids: Vec<u64> = (i as u64..(i + part) as u64).collect();
                let bt = Batch::from_samples(&samples, &ids, s);
                self.model.forward(&self.state.params, acts, &bt, 0, false);
                for (r, l) in acts.losses.iter().enumerate() {
                    if bt.weights[r] > 0.0 {
                        sum += l;
                        tokens += 1;
                        chars += self.tokenizer.chars_of(bt.targets[r]);
                    }
                }
                i += part;
            }
        }
        let loss = sum / tokens.max(1) as f64;
        Eval {
            step: self.step,
            loss,
            loss_per_char: sum / chars.max(1) as f64,
            perplexity: loss.exp(),
            samples: i,
        }
    }

    /// Writes a checkpoint into `run_dir`.
    pub fn save(&self, run_dir: &Path) -> Result<PathBuf, TrainError> {
        let man = Manifest {
            format: checkpoint::FORMAT.into(),
            step: self.step,
            samples_seen: self.samples_seen,
            seed: self.settings.seed,
            model: self.cfg.clone(),
            tokenizer_hash: format!("{:016x}", self.tokenizer.hash()),
            settings: serde_json::to_value(&self.settings)
                .map_err(|e| TrainError::Config(e.to_string()))?,
            params: self.state.params.len() as u64,
            files: Default::default(),
        };
        checkpoint::save(
            run_dir,
            &self.model.layout,
            &self.state,
            &man,
            &self.tokenizer.to_json(),
        )
    }

    /// Bytes allocated for this run's tensors.
    pub fn memory(&self) -> Memory {
        let p = self.state.params.len() as u64 * 4;
        let act = self.acts.iter().map(Acts::bytes).sum();
        Memory {
            weights: p,
            gradients: p,
            optimizer: 2 * p,
            activations: act,
            total: 4 * p + act,
        }
    }
}
