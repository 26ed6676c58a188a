//! `pangu train` on one device: a session of the trainer behind a progress bar.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pangu_strategies::{Precision, StrategySpec};
use pangu_trainer::bench::{self};
use pangu_trainer::data;
use pangu_trainer::session::{Checkpoints, Control, Until};
use pangu_trainer::train::{Eval, Memory, Run, StepInfo};
use serde_json::json;

use super::args::TrainArgs;
use super::inputs::{
    deadline, default_corpus, plot_curve, save_report, settings_from, tokenizer_for, train_model,
    write_curve,
};
use crate::output::{emit, outln};

/// `pangu train` on one device: a session ([`Run::train_until`]) behind a progress bar, its
/// curve, checkpoints and report in --out, and a summary.
pub(super) fn run_single(a: &TrainArgs, spec: &StrategySpec, threads: usize) -> Result<()> {
    bench::set_threads(threads);
    let corpus_path = a.corpus.clone().unwrap_or_else(default_corpus);
    let text = data::read_corpus(&corpus_path)?;
    let (train_text, val_text) = data::split(&text);
    if let Some(p) = spec.precision {
        if p != Precision::Fp32 {
            // fp8 names GEMM operand formats the CPU has no kernels for: its linear GEMMs run
            // in fp32 like everything else.
            let what = if p == Precision::Fp8 {
                " (fp8 linear GEMMs)"
            } else {
                ""
            };
            eprintln!("note: the strategy names {p}{what}; the CPU executor computes in fp32");
        }
    }
    let mut run = open_run(a, spec, train_text, val_text)?;
    if let Some(o) = &a.out {
        std::fs::create_dir_all(o).with_context(|| format!("cannot create {}", o.display()))?;
        run.tokenizer.save(&o.join("tokenizer.json"))?;
    }
    let mem = run.memory();
    let mut log = String::new();
    outln!(
        log,
        "model {} ({} parameters), {} training / {} held-out samples of {} tokens, batch {} × {} micro-batches, \
         {} threads, fp32, tokenizer {} pieces",
        run.cfg.name,
        run.state.params.len(),
        run.train.samples(),
        run.val.samples(),
        run.cfg.seq_len + 1,
        run.settings.batch,
        run.settings.micro_batches,
        threads,
        run.tokenizer.vocab_size()
    );
    if !a.json {
        eprint!("{log}");
    }
    let header_len = log.len();
    let session = train_single(a, &mut run, &mut log)?;
    let inputs = (
        &run.cfg,
        &run.settings,
        format!("{:016x}", run.tokenizer.hash()),
    );
    if save_report(a, &inputs, single_report(&run, &session, threads, &mem))? {
        return Ok(());
    }
    single_summary(&mut log, &run, &session, &mem);
    if let Some(o) = &a.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(o.join("train.log"))?;
        f.write_all(log.as_bytes())?;
    }
    // The header line already went to stderr.
    emit(&log[header_len..])
}

/// A fresh run from the flags, or the checkpoint of --resume (ending at --steps if given).
pub(super) fn open_run(
    a: &TrainArgs,
    spec: &StrategySpec,
    train_text: &str,
    val_text: &str,
) -> Result<Run> {
    let Some(dir) = &a.resume else {
        let (cfg, batch) = train_model(a, spec)?;
        let s = settings_from(a, &cfg, batch, spec)?;
        let tok = tokenizer_for(a, &cfg, train_text)?;
        return Ok(Run::new(&cfg, s, tok, train_text, val_text)?);
    };
    let mut run = Run::resume(dir, train_text, val_text)?;
    if let Some(steps) = a.steps {
        run.settings.steps = steps;
    }
    Ok(run)
}

/// What a single-device session gave: its steps (with their evaluations) and the final
/// evaluation.
pub(super) struct Session {
    /// When it started.
    t0: Instant,
    /// The step it started from (a resumed run's).
    start_step: u64,
    /// Each step of this session and the evaluation after it, if any.
    curve: Vec<(StepInfo, Option<Eval>)>,
    /// On all held-out samples, at the end.
    final_eval: Eval,
}

impl Session {
    fn losses(&self) -> Vec<f64> {
        self.curve.iter().map(|(s, _)| s.loss).collect()
    }

    /// The median step's throughput.
    fn tokens_per_s(&self) -> f64 {
        let mut rates: Vec<f64> = self.curve.iter().map(|(s, _)| s.tokens_per_s).collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    }
}

/// The session of the flags, with the progress bar, curve.csv rewritten after each
/// evaluation, and the last checkpoint, curve and plot in --out (named in `log`).
pub(super) fn train_single(a: &TrainArgs, run: &mut Run, log: &mut String) -> Result<Session> {
    let start_step = run.step;
    let pb = if a.quiet || a.json {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(run.settings.steps);
        pb.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .map_err(|e| anyhow!("{e}"))?,
        );
        pb.set_position(start_step);
        pb
    };
    let until = Until {
        steps: run.settings.steps,
        deadline: deadline(a.minutes),
        eval_every: a.eval_every,
        eval_samples: a.val_samples,
        checkpoints: a.out.as_ref().map(|o| Checkpoints {
            dir: o.clone(),
            every: a.checkpoint_every,
        }),
    };
    let t0 = Instant::now();
    let mut curve: Vec<(StepInfo, Option<Eval>)> = Vec::new();
    let mut failed = None;
    let outcome = run.train_until(&until, &mut |p| {
        pb.set_message(format!(
            "loss {:.3}  {:.0} tok/s{}",
            p.step.loss,
            p.step.tokens_per_s,
            p.eval.map_or(String::new(), |e| format!(
                "  val {:.3}/char",
                e.loss_per_char
            ))
        ));
        pb.set_position(p.step.step);
        curve.push((p.step, p.eval));
        if let (Some(o), Some(_)) = (&a.out, p.eval) {
            // The curve so far, so a long run can be watched while it trains.
            if let Err(e) = write_curve(o, start_step, &curve) {
                failed = Some(e);
                return Control::Abort;
            }
        }
        Control::Continue
    })?;
    pb.finish_and_clear();
    if let Some(e) = failed {
        return Err(e);
    }
    let final_eval = outcome
        .final_eval
        .context("the training session was aborted")?;
    if let (Some(o), Some(dir)) = (&a.out, &outcome.checkpoint) {
        write_curve(o, start_step, &curve)?;
        plot_curve(&o.join("curve.png"), o)?;
        outln!(log, "checkpoint {}", dir.display());
    }
    Ok(Session {
        t0,
        start_step,
        curve,
        final_eval,
    })
}

/// The JSON report of a single-device run.
pub(super) fn single_report(
    run: &Run,
    s: &Session,
    threads: usize,
    mem: &Memory,
) -> serde_json::Value {
    let e = &s.final_eval;
    json!({
        "model": run.cfg.name,
        "params": run.state.params.len(),
        "steps": run.step,
        "steps_this_run": run.step - s.start_step,
        "wall_s": s.t0.elapsed().as_secs_f64(),
        "losses": s.losses(),
        "val_loss": e.loss,
        "val_loss_per_char": e.loss_per_char,
        "val_perplexity": e.perplexity,
        "val_samples": e.samples,
        "evals": s.curve.iter().filter_map(|(_, e)| *e).collect::<Vec<_>>(),
        "tokens_per_s": s.tokens_per_s(),
        "threads": threads,
        "precision": "fp32",
        "settings": run.settings,
        "memory": mem,
    })
}

/// The closing lines of a single-device run: the losses, throughput and memory.
pub(super) fn single_summary(log: &mut String, run: &Run, s: &Session, mem: &Memory) {
    let e = &s.final_eval;
    outln!(
        log,
        "step {}: train loss {:.4}, held-out loss {:.4}/token = {:.4} nats/char (perplexity {:.1}) on {} samples; \
         {:.0} tokens/s median",
        run.step,
        s.losses().last().copied().unwrap_or(f64::NAN),
        e.loss,
        e.loss_per_char,
        e.perplexity,
        e.samples,
        s.tokens_per_s()
    );
    outln!(
        log,
        "memory allocated: weights {} B, gradients {} B, Adam {} B, activations+scratch {} B, total {} B",
        mem.weights,
        mem.gradients,
        mem.optimizer,
        mem.activations,
        mem.total
    );
}
