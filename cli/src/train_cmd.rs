//! `pangu train`, `pangu tokenizer train` and `pangu generate`: the CPU executor.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pangu_model::ModelConfig;
use pangu_strategies::{Plan, Precision, Remat, StrategySpec};
use pangu_trainer::bench::{self, BenchShape};
use pangu_trainer::data;
use pangu_trainer::dist::{self, DistConfig, DistResult};
use pangu_trainer::generate::{self, Sampling};
use pangu_trainer::host;
use pangu_trainer::model::Model;
use pangu_trainer::session::{Checkpoints, Control, Until};
use pangu_trainer::sharded::Loaded;
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Eval, Memory, Run, Settings, StepInfo};
use serde_json::json;

use crate::args::{load_model, Backend, StrategyArgs};
use crate::output::{emit, outln, print_json};

/// The corpus shipped in the repository.
const DEFAULT_CORPUS: &str = "data/zh_poetry_hans.txt";

/// The default corpus: `data/…` under the current directory, else the repository's copy.
fn default_corpus() -> PathBuf {
    let here = PathBuf::from(DEFAULT_CORPUS);
    if here.is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_CORPUS)
}

/// The bundled corpus (for other commands).
pub(crate) fn default_corpus_path() -> PathBuf {
    default_corpus()
}

fn threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Options of `pangu train`.
#[derive(Debug, clap::Args)]
pub(crate) struct TrainArgs {
    /// Model preset or TOML file.
    #[arg(long, default_value = "pangu-alpha-tiny")]
    model: String,
    /// UTF-8 corpus; documents separated by blank lines (default: data/zh_poetry_hans.txt).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokenizer file (default: `OUT/tokenizer.json`, trained on the corpus's training split
    /// with the model's vocabulary size when absent).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Optimizer steps of the run; the cosine decay ends here (default 2000).
    #[arg(long)]
    steps: Option<u64>,
    /// Stop after this many minutes of wall time even before --steps (the schedule is kept).
    #[arg(long)]
    minutes: Option<f64>,
    /// Samples per optimizer step (default: the model preset's global batch; the same as
    /// --global-batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    lr_end: Option<f64>,
    /// Linear warm-up steps (default: 2 % of --steps).
    #[arg(long)]
    lr_warmup: Option<u64>,
    /// Dropout probability (default: the model's, 0.1 for PanGu-α).
    #[arg(long)]
    dropout: Option<f64>,
    /// Seed of weights, dropout masks and data order.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Evaluate on held-out samples every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    /// Held-out samples per periodic evaluation (the final one uses all).
    #[arg(long, default_value_t = 256)]
    val_samples: usize,
    /// Write a checkpoint every this many steps (and at the end) into --out.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Run folder: checkpoints, tokenizer, curve.csv, curve.png, report.json, train.log.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this checkpoint (a step folder or a run folder).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Print JSON (losses per step, validation, throughput, memory).
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// The strategy, as `pangu plan` takes it (a file and/or inline flags); with more than
    /// one device, each rank is a thread (or an MPI process with --backend mpi).
    #[command(flatten)]
    strategy: StrategyArgs,
    /// Group the ranks into this many virtual servers of consecutive ranks (so that
    /// hierarchical collectives have servers to work across on one machine).
    #[arg(long, default_value_t = 1)]
    virtual_servers: u32,
    /// Communication backend: threads (one process) or mpi (`mpirun -np N pangu train …`).
    #[arg(long, value_enum, default_value_t = Backend::Threads)]
    backend: Backend,
    /// Seconds a rank waits for a peer before the run stops with an error.
    #[arg(long, default_value_t = 60.0)]
    comm_timeout: f64,
    /// Benchmark the training step on random tokens instead (shape flags below).
    #[arg(long)]
    bench: bool,
    /// Bench: ordinary layers (the query layer is extra).
    #[arg(long, default_value_t = 4)]
    layers: u32,
    /// Bench: hidden size.
    #[arg(long, default_value_t = 256)]
    hidden: u32,
    /// Bench: attention heads.
    #[arg(long, default_value_t = 4)]
    heads: u32,
    /// Bench: sequence length.
    #[arg(long, default_value_t = 128)]
    seq: u32,
    /// Bench: vocabulary size.
    #[arg(long, default_value_t = 8000)]
    vocab: u32,
    /// Bench: untimed steps before the timed ones.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// Bench: GPT-2 shape (no query layer).
    #[arg(long)]
    no_query_layer: bool,
}

pub(crate) fn run(a: &TrainArgs) -> Result<()> {
    let threads = a.threads.unwrap_or_else(threads_default);
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    if a.bench {
        return run_bench(a, threads);
    }
    let spec = a.strategy.spec()?;
    a.backend.available()?;
    if on_executor(a, &spec)? {
        run_dist(a, &spec)
    } else {
        run_single(a, &spec, threads)
    }
}

/// Whether the run goes to the distributed executor: under MPI, with more than one device,
/// from a sharded checkpoint, or with selective or every-k remat (one device is a plan too).
fn on_executor(a: &TrainArgs, spec: &StrategySpec) -> Result<bool> {
    if a.backend == Backend::Mpi {
        return Ok(true);
    }
    let devices = spec.dp.unwrap_or(1) * spec.tp.unwrap_or(1) * spec.pp.unwrap_or(1);
    let sharded_resume = match &a.resume {
        Some(dir) => pangu_trainer::sharded::is_sharded(dir)?,
        None => false,
    };
    let partial_remat = matches!(spec.remat, Some(Remat::Selective | Remat::Every(2..)));
    Ok(devices > 1 || sharded_resume || partial_remat)
}

/// `pangu train` on one device: a session ([`Run::train_until`]) behind a progress bar, its
/// curve, checkpoints and report in --out, and a summary.
fn run_single(a: &TrainArgs, spec: &StrategySpec, threads: usize) -> Result<()> {
    bench::set_threads(threads);
    let corpus_path = a.corpus.clone().unwrap_or_else(default_corpus);
    let text = data::read_corpus(&corpus_path)?;
    let (train_text, val_text) = data::split(&text);
    if let Some(p) = spec.precision {
        if p != Precision::Fp32 {
            eprintln!("note: the strategy names {p}; the CPU executor computes in fp32");
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
    if save_report(a, &single_report(&run, &session, threads, &mem))? {
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
fn open_run(a: &TrainArgs, spec: &StrategySpec, train_text: &str, val_text: &str) -> Result<Run> {
    let Some(dir) = &a.resume else {
        let cfg = load_model(&a.model)?;
        let s = settings_from(a, &cfg, spec)?;
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
struct Session {
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

/// --minutes as a deadline: a negative one has passed, one too far (or not a number) never
/// comes.
fn deadline(minutes: Option<f64>) -> Option<Duration> {
    let m = minutes?;
    match Duration::try_from_secs_f64(m * 60.0) {
        Ok(d) => Some(d),
        Err(_) if m > 0.0 || m.is_nan() => None,
        Err(_) => Some(Duration::ZERO),
    }
}

/// The session of the flags, with the progress bar, curve.csv rewritten after each
/// evaluation, and the last checkpoint, curve and plot in --out (named in `log`).
fn train_single(a: &TrainArgs, run: &mut Run, log: &mut String) -> Result<Session> {
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
fn single_report(run: &Run, s: &Session, threads: usize, mem: &Memory) -> serde_json::Value {
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
fn single_summary(log: &mut String, run: &Run, s: &Session, mem: &Memory) {
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

/// `pangu train` with more than one device: the strategy's plan on this machine (one virtual
/// device per rank), executed on threads or MPI processes.
fn run_dist(a: &TrainArgs, spec: &StrategySpec) -> Result<()> {
    // Ranks are threads or processes; each computes on one core's worth of kernels.
    bench::set_threads(1);
    // A checkpoint of any plan (or of one device) resumes under the strategy given here, or
    // under its own when none is given: the ranks cut their parts from the whole state.
    let loaded = match &a.resume {
        Some(dir) => Some(pangu_trainer::sharded::load_whole(dir)?),
        None => None,
    };
    let (cfg, spec, mut s) = match &loaded {
        Some(l) => resumed_inputs(a, l, spec)?,
        None => {
            let cfg = load_model(&a.model)?;
            let mut spec = spec.clone();
            spec.global_batch = global_batch(a, &spec)?.or(Some(cfg.global_batch));
            let s = base_settings(a, &cfg);
            (cfg, spec, s)
        }
    };
    let plan = host::plan_on(&cfg, &spec, a.virtual_servers)?;
    let st = &plan.strategy;
    // The plan checked each device's memory; the settings follow it.
    s.batch = st.global_batch as usize;
    s.micro_batches = st.micro_batches as usize;
    s.remat = st.remat == Remat::Full;
    host::check_plan(&plan, &s)?;
    let corpus_path = a.corpus.clone().unwrap_or_else(default_corpus);
    let text = data::read_corpus(&corpus_path)?;
    let (train_text, _) = data::split(&text);
    let tok = match &loaded {
        Some(l) => checkpoint_tokenizer(l)?,
        None => tokenizer_for(a, &cfg, train_text)?,
    };
    let packed = data::Packed::new(&tok, train_text, cfg.seq_len as usize);
    let Some(r) = execute_plan(a, &plan, &s, &packed, &tok, loaded.as_ref())? else {
        // Under MPI only rank 0 reports.
        return Ok(());
    };
    let start = loaded.as_ref().map_or(0, |l| l.step);
    let tokens = (s.batch as u64 * (s.steps - start) * u64::from(cfg.seq_len)) as f64;
    let resumed_from = loaded.as_ref().map(|l| l.step);
    let report = dist_report(a.backend, &plan, &r, s.steps, resumed_from, tokens);
    if save_report(a, &report)? {
        return Ok(());
    }
    emit(&dist_summary(&r, start, tokens, a.out.as_deref()))
}

/// Writes the report into --out (if given) and prints it with --json; whether it printed.
fn save_report(a: &TrainArgs, report: &serde_json::Value) -> Result<bool> {
    if let Some(o) = &a.out {
        std::fs::create_dir_all(o).with_context(|| format!("cannot create {}", o.display()))?;
        std::fs::write(o.join("report.json"), serde_json::to_string_pretty(report)?)?;
    }
    if a.json {
        print_json(report)?;
    }
    Ok(a.json)
}

/// The model, strategy and settings of a resumed distributed run: the checkpoint's settings
/// (with --steps if given) and global batch, under the strategy given here or, when none is,
/// the checkpoint's own.
fn resumed_inputs(
    a: &TrainArgs,
    l: &Loaded,
    spec: &StrategySpec,
) -> Result<(ModelConfig, StrategySpec, Settings)> {
    let mut s: Settings = serde_json::from_value(l.settings.clone())
        .with_context(|| format!("{}: settings", l.dir.display()))?;
    if let Some(steps) = a.steps {
        s.steps = steps;
    }
    let mut spec = spec.clone();
    if spec == StrategySpec::default() {
        if let Some(old) = &l.strategy {
            spec = old.to_spec();
            spec.devices = None;
        }
    }
    if spec.global_batch.is_some_and(|g| g as usize != s.batch) {
        bail!(
            "the checkpoint trained with a global batch of {}; a resumed run keeps it (drop --global-batch/--batch)",
            s.batch
        );
    }
    spec.global_batch = Some(s.batch as u32);
    Ok((l.model.clone(), spec, s))
}

/// The tokenizer stored with a checkpoint, checked against its manifest's hash.
fn checkpoint_tokenizer(l: &Loaded) -> Result<Tokenizer> {
    let t = Tokenizer::from_json(&l.tokenizer_json, &l.dir.join("tokenizer.json"))?;
    if format!("{:016x}", t.hash()) != l.tokenizer_hash {
        bail!(
            "{}: the tokenizer does not match the manifest's hash",
            l.dir.display()
        );
    }
    Ok(t)
}

/// Runs the plan to `s.steps` on threads or MPI processes, from `loaded` if given, with
/// sharded checkpoints in --out, after a line on stderr describing the run. `None` on the MPI
/// ranks other than 0.
fn execute_plan(
    a: &TrainArgs,
    plan: &Plan,
    s: &Settings,
    packed: &data::Packed,
    tok: &Tokenizer,
    loaded: Option<&Loaded>,
) -> Result<Option<DistResult>> {
    let steps = s.steps;
    if let Some(l) = loaded {
        if l.step >= steps {
            bail!(
                "the checkpoint is at step {} and the run ends at step {steps}: pass a larger --steps",
                l.step
            );
        }
    }
    let save = a.out.as_ref().map(|o| dist::Save {
        dir: o.clone(),
        every: a.checkpoint_every,
        tokenizer_json: tok.to_json(),
        tokenizer_hash: format!("{:016x}", tok.hash()),
    });
    let io = dist::Io {
        resume: loaded.map(|l| (l.step, &l.state)),
        save: save.as_ref(),
    };
    let dc = DistConfig {
        timeout: std::time::Duration::from_secs_f64(a.comm_timeout.max(0.001)),
        fail: None,
    };
    if !a.json {
        let st = &plan.strategy;
        eprintln!(
            "model {}: dp {} × tp {} × pp {} ({} schedule, {} micro-batches of {}), optimizer sharding {}, \
             remat {}; {} ranks on {} ({} cores here), collectives {}, fp32",
            plan.model.name,
            st.dp,
            st.tp,
            st.pp,
            st.schedule,
            st.micro_batches,
            st.micro_batch_size,
            st.opt_shard,
            st.remat,
            plan.mesh.size(),
            a.backend,
            threads_default(),
            collectives_line(plan)
        );
    }
    if a.backend == Backend::Mpi {
        mpi_rank(plan, s, &dc, packed, steps, io)
    } else {
        Ok(Some(dist::train_threads_with(
            plan, s, &dc, packed, steps, io,
        )?))
    }
}

/// The JSON report of a distributed run to step `steps` (`tokens` trained).
fn dist_report(
    backend: Backend,
    plan: &Plan,
    r: &DistResult,
    steps: u64,
    resumed_from: Option<u64>,
    tokens: f64,
) -> serde_json::Value {
    let st = &plan.strategy;
    json!({
        "model": plan.model.name,
        "strategy": st,
        "dp": st.dp,
        "tp": st.tp,
        "pp": st.pp,
        "schedule": st.schedule.to_string(),
        "opt_shard": st.opt_shard.to_string(),
        "remat": st.remat.to_string(),
        "collectives": plan.group_algorithms().iter().map(|(g, n, a)| json!({"group": g, "size": n, "algorithm": a.to_string()})).collect::<Vec<_>>(),
        "backend": backend,
        "steps": steps,
        "losses": r.losses,
        "step_s": r.step_s,
        "tokens_per_s": tokens / r.wall_s.max(1e-9),
        "wall_s": r.wall_s,
        "ranks": r.ranks,
        "step_report": r.report,
        "precision": "fp32",
        "resumed_from": resumed_from,
    })
}

/// The text of a distributed run: the losses, the measured step per rank and the throughput.
fn dist_summary(r: &DistResult, start: u64, tokens: f64, out: Option<&Path>) -> String {
    let mut o = String::new();
    for (i, l) in r.losses.iter().enumerate() {
        outln!(o, "step {}: loss {:.4}", start + i as u64 + 1, l);
    }
    if let Some(dir) = out {
        outln!(o, "sharded checkpoints in {}", dir.display());
    }
    outln!(
        o,
        "{:>4} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "rank",
        "stage",
        "compute",
        "tp_comm",
        "pp_comm",
        "bubble",
        "dp_comm",
        "opt_comm",
        "idle",
        "bytes"
    );
    for (d, rk) in r.report.devices.iter().zip(&r.ranks) {
        let b = &d.breakdown;
        outln!(
            o,
            "{:>4} {:>5} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>12}",
            rk.rank,
            rk.stage,
            b.compute,
            b.tp_comm,
            b.pp_comm,
            b.bubble,
            b.dp_comm,
            b.opt_comm,
            b.idle,
            rk.allocated_bytes
        );
    }
    outln!(
        o,
        "measured step {:.3} s (seconds per step per device above; MFU {:.3} of the cores' fp32 peak)",
        r.report.step_time_s,
        r.report.mfu
    );
    outln!(
        o,
        "{:.0} tokens/s over {:.1} s",
        tokens / r.wall_s.max(1e-9),
        r.wall_s
    );
    o
}

/// This process's part of an MPI run: `Some` on rank 0 (which reports), `None` elsewhere.
#[cfg(feature = "mpi")]
fn mpi_rank(
    plan: &Plan,
    s: &Settings,
    dc: &DistConfig,
    packed: &data::Packed,
    steps: u64,
    io: dist::Io<'_>,
) -> Result<Option<DistResult>> {
    let (rank, r) = dist::train_mpi(plan, s, dc, packed, steps, io)?;
    Ok((rank == 0).then_some(r))
}

#[cfg(not(feature = "mpi"))]
fn mpi_rank(
    _: &Plan,
    _: &Settings,
    _: &DistConfig,
    _: &data::Packed,
    _: u64,
    _: dist::Io<'_>,
) -> Result<Option<DistResult>> {
    bail!("this binary was built without MPI")
}

/// The optimizer, schedule, dropout and seed settings of the flags.
fn base_settings(a: &TrainArgs, cfg: &ModelConfig) -> Settings {
    let mut s = Settings::for_model(cfg, a.steps.unwrap_or(2000));
    s.lr = a.lr;
    s.lr_end = a.lr_end.unwrap_or(a.lr / 10.0);
    s.warmup = a.lr_warmup.unwrap_or(s.warmup);
    s.dropout = a.dropout.unwrap_or(s.dropout);
    s.seed = a.seed;
    s
}

/// The run's settings from the flags, validated, and the memory checked before anything is
/// tokenised or allocated.
fn settings_from(a: &TrainArgs, cfg: &ModelConfig, spec: &StrategySpec) -> Result<Settings> {
    let mut s = base_settings(a, cfg);
    s.batch = global_batch(a, spec)?.map_or(s.batch, |b| b as usize);
    s.micro_batches = spec.micro_batches.unwrap_or(1) as usize;
    s.remat = remat_flag(spec.remat)?;
    s.validate()?;
    pangu_trainer::train::check_memory(cfg, &s)?;
    Ok(s)
}

fn remat_flag(v: Option<Remat>) -> Result<bool> {
    match v {
        None | Some(Remat::None) => Ok(false),
        Some(Remat::Full) => Ok(true),
        Some(other) => bail!(
            "--remat {other}: the single-device loop keeps all activations or recomputes whole layers; \
             selective and every:K run on the executor (any strategy flag, e.g. --dp 1)"
        ),
    }
}

/// The global batch of --batch or --global-batch (the same thing; they must agree).
fn global_batch(a: &TrainArgs, spec: &StrategySpec) -> Result<Option<u32>> {
    match (a.batch, spec.global_batch) {
        (Some(b), Some(g)) if b as u32 != g => {
            bail!("--batch {b} and a global batch of {g}: give one of them")
        }
        (Some(b), _) => Ok(Some(b as u32)),
        (None, g) => Ok(g),
    }
}

fn tokenizer_for(a: &TrainArgs, cfg: &ModelConfig, train_text: &str) -> Result<Tokenizer> {
    if let Some(p) = &a.tokenizer {
        return Ok(Tokenizer::load(p)?);
    }
    if let Some(o) = &a.out {
        let p = o.join("tokenizer.json");
        if p.is_file() {
            return Ok(Tokenizer::load(&p)?);
        }
    }
    if !a.json && !a.quiet {
        eprintln!(
            "training a {}-piece tokenizer on the training split (jieba + Unigram)…",
            cfg.vocab
        );
    }
    Ok(Tokenizer::train(train_text, cfg.vocab as usize)?)
}

/// Appends the rows of this run to `curve.csv` (keeping rows up to the resumed step).
fn write_curve(out: &Path, start_step: u64, curve: &[(StepInfo, Option<Eval>)]) -> Result<()> {
    let path = out.join("curve.csv");
    let mut text = String::from("step,loss,lr,grad_norm,tokens_per_s,val_loss,val_loss_per_char\n");
    if let Ok(old) = std::fs::read_to_string(&path) {
        for line in old.lines().skip(1) {
            let step: u64 = line
                .split(',')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            if step <= start_step {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    for (s, e) in curve {
        outln!(
            text,
            "{},{:.6},{:.3e},{:.4},{:.1},{},{}",
            s.step,
            s.loss,
            s.lr,
            s.grad_norm,
            s.tokens_per_s,
            e.map_or(String::new(), |e| format!("{:.6}", e.loss)),
            e.map_or(String::new(), |e| format!("{:.6}", e.loss_per_char))
        );
    }
    pangu_trainer::checkpoint::write_atomic(&path, text.as_bytes())?;
    Ok(())
}

/// Training loss (per token) and held-out loss (per character) against step, from curve.csv.
fn plot_curve(path: &Path, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let text = std::fs::read_to_string(out.join("curve.csv"))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let step: f64 = f.first().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        if let Some(l) = f.get(1).and_then(|s| s.parse::<f64>().ok()) {
            train.push((step, l));
        }
        if let Some(l) = f.get(6).and_then(|s| s.parse::<f64>().ok()) {
            val.push((step, l));
        }
    }
    if train.is_empty() {
        return Ok(());
    }
    let xmax = train.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = train
        .iter()
        .chain(&val)
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .min(12.0)
        * 1.05;
    crate::sweep_cmd::png_chart(
        path,
        (900, 560),
        "pangu train: loss",
        (0.0..xmax, 0.0..ymax),
        ("step", "nats"),
        |chart| {
            let err = |e| anyhow!("{e:?}");
            let blue = RGBColor(40, 90, 200);
            let red = RGBColor(210, 60, 40);
            chart
                .draw_series(LineSeries::new(train, blue.stroke_width(1)))
                .map_err(err)?
                .label("training loss per token")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue));
            chart
                .draw_series(LineSeries::new(val.clone(), red.stroke_width(2)))
                .map_err(err)?
                .label("held-out loss per character")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], red));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
            Ok(())
        },
    )
}

fn run_bench(a: &TrainArgs, threads: usize) -> Result<()> {
    let shape = BenchShape {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        seq: a.seq,
        vocab: a.vocab,
        batch: a.batch.unwrap_or(8) as u32,
        steps: a.steps.unwrap_or(20) as u32,
        warmup: a.warmup,
        threads,
        no_query_layer: a.no_query_layer,
    };
    let r = bench::run(&shape)?;
    if a.json {
        return print_json(&serde_json::to_value(&r)?);
    }
    let mut o = String::new();
    outln!(
        o,
        "shape: {}+{} layers, hidden {}, {} heads, seq {}, vocab {}, batch {}; {} threads; {} parameters",
        shape.layers,
        u32::from(!shape.no_query_layer),
        shape.hidden,
        shape.heads,
        shape.seq,
        shape.vocab,
        shape.batch,
        threads,
        r.params
    );
    outln!(
        o,
        "{:.1} ms/step (median of {} clean of {} timed steps), {:.0} tokens/s, {:.1} GFLOP/s ({:.1} GFLOP/step)",
        r.ms_per_step,
        r.clean_steps,
        r.step_ms.len(),
        r.tokens_per_s,
        r.gflops,
        r.flops_per_step / 1e9
    );
    match r.plan_bytes {
        Some(p) => outln!(
            o,
            "allocated: {} bytes; the memory model of the same plan (fp32, 1 device): {} bytes ({:+.1} %)",
            r.allocated_bytes,
            p,
            (r.allocated_bytes as f64 / p as f64 - 1.0) * 100.0
        ),
        None => outln!(o, "allocated: {} bytes", r.allocated_bytes),
    }
    emit(&o)
}

/// Options of `pangu tokenizer`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenizerArgs {
    #[command(subcommand)]
    cmd: TokenizerCmd,
}

#[derive(Debug, clap::Subcommand)]
enum TokenizerCmd {
    /// Train a jieba + Unigram vocabulary on a corpus's training split (the held-out 5 % is
    /// left out) and write it.
    Train {
        /// UTF-8 corpus (default: data/zh_poetry_hans.txt).
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Pieces, the 10 special ones included.
        #[arg(long, default_value_t = 8000)]
        vocab: usize,
        /// Output file.
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
    },
    /// Show how a text is split into pieces.
    Encode {
        /// Tokenizer file.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Text.
        text: String,
    },
}

pub(crate) fn tokenizer(a: &TokenizerArgs) -> Result<()> {
    match &a.cmd {
        TokenizerCmd::Train { corpus, vocab, out } => {
            let path = corpus.clone().unwrap_or_else(default_corpus);
            let text = data::read_corpus(&path)?;
            let (train, _) = data::split(&text);
            let t0 = Instant::now();
            let tok = Tokenizer::train(train, *vocab)?;
            tok.save(out)?;
            let ids = tok.encode(train);
            emit(&format!(
                "{}: {} pieces (hash {:016x}) in {:.1} s; the training split is {} characters in {} tokens ({:.3} tokens per character)\n",
                out.display(),
                tok.vocab_size(),
                tok.hash(),
                t0.elapsed().as_secs_f64(),
                train.chars().count(),
                ids.len(),
                ids.len() as f64 / train.chars().count().max(1) as f64
            ))
        }
        TokenizerCmd::Encode { tokenizer, text } => {
            let tok = Tokenizer::load(tokenizer)?;
            let ids = tok.encode(text);
            let pieces: Vec<String> = ids
                .iter()
                .map(|&i| format!("{}:{}", i, tok.decode(&[i]).replace('\n', "▃")))
                .collect();
            emit(&format!("{}\n", pieces.join(" ")))
        }
    }
}

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
        return print_json(&json!({
            "prompt": a.prompt,
            "completion": text,
            "tokens": ids,
            "step": man.step,
            "tokens_per_s": ids.len() as f64 / secs.max(1e-9),
        }));
    }
    emit(&format!("{}{}\n", a.prompt, text))
}

/// The plan's algorithm per group, e.g. `tp 2 ring, dp 4 halving-doubling`.
pub(crate) fn collectives_line(plan: &Plan) -> String {
    let v: Vec<String> = plan
        .group_algorithms()
        .into_iter()
        .map(|(g, n, a)| format!("{} {n} {a}", g.name()))
        .collect();
    if v.is_empty() {
        "none (one device per group)".into()
    } else {
        v.join(", ")
    }
}
