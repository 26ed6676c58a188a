//! What a `pangu train` run starts from: the corpus, the settings from the flags, the
//! tokenizer, the deadline, and the curve and report it leaves in --out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use pangu_model::{ModelConfig, PositionKind};
use pangu_strategies::{Remat, StrategySpec};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Eval, Settings, StepInfo};

use super::args::TrainArgs;
use crate::output::{outln, print_json, tool_field};

/// The corpus shipped in the repository.
pub(super) const DEFAULT_CORPUS: &str = "data/zh_poetry_hans.txt";

/// The default corpus: `data/…` under the current directory, else the repository's copy.
pub(super) fn default_corpus() -> PathBuf {
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

pub(super) fn threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// --minutes as a deadline: a negative one has passed, one too far (or not a number) never
/// comes.
pub(super) fn deadline(minutes: Option<f64>) -> Option<Duration> {
    let m = minutes?;
    match Duration::try_from_secs_f64(m * 60.0) {
        Ok(d) => Some(d),
        Err(_) if m > 0.0 || m.is_nan() => None,
        Err(_) => Some(Duration::ZERO),
    }
}

/// Writes the report, with the `tool` field of `inputs`, into --out (if given) and prints it
/// with --json; whether it printed.
pub(super) fn save_report(
    a: &TrainArgs,
    inputs: &impl serde::Serialize,
    mut report: serde_json::Value,
) -> Result<bool> {
    if let Some(r) = report.as_object_mut() {
        r.insert("tool".into(), tool_field(inputs));
    }
    let report = &report;
    if let Some(o) = &a.out {
        std::fs::create_dir_all(o).with_context(|| format!("cannot create {}", o.display()))?;
        std::fs::write(o.join("report.json"), serde_json::to_string_pretty(report)?)?;
    }
    if a.json {
        print_json(report)?;
    }
    Ok(a.json)
}

/// The optimizer, schedule, dropout and seed settings of the flags.
pub(super) fn base_settings(a: &TrainArgs, cfg: &ModelConfig) -> Settings {
    let mut s = Settings::for_model(cfg, a.steps.unwrap_or(2000));
    s.lr = a.lr;
    s.lr_end = a.lr_end.unwrap_or(a.lr / 10.0);
    s.warmup = a.lr_warmup.unwrap_or(s.warmup);
    s.dropout = a.dropout.unwrap_or(s.dropout);
    s.seed = a.seed;
    s
}

/// The model at the run's sequence length, and the run's global batch: `--seq-len`,
/// `--global-batch`, else a legacy model file's own keys, else the reference run's.
pub(super) fn train_model(a: &TrainArgs, spec: &StrategySpec) -> Result<(ModelConfig, u32)> {
    let cfg = crate::args::load_model(&a.model)?;
    let shape = pangu_strategies::run_shape(&cfg, spec)?;
    let cfg = cfg.with_seq_len(shape.seq_len)?;
    // The executor sizes the learned position tables by the sequence length.
    if let Some(rows) = cfg.max_positions {
        if rows != cfg.seq_len && (cfg.position == PositionKind::Learned || cfg.query_layer) {
            bail!(
                "--seq-len {}: the executor trains {} at its position table's {rows} tokens; pass \
                 --seq-len {rows}, or a model file with max_positions = {}",
                cfg.seq_len,
                cfg.name,
                cfg.seq_len
            );
        }
    }
    Ok((cfg, shape.global_batch))
}

/// The run's settings from the flags (`batch`: the run's global batch), validated, and the
/// memory checked before anything is tokenised or allocated.
pub(super) fn settings_from(
    a: &TrainArgs,
    cfg: &ModelConfig,
    batch: u32,
    spec: &StrategySpec,
) -> Result<Settings> {
    let mut s = base_settings(a, cfg);
    s.batch = batch as usize;
    s.micro_batches = spec.micro_batches.unwrap_or(1) as usize;
    s.remat = remat_flag(spec.remat)?;
    s.validate()?;
    pangu_trainer::train::check_memory(cfg, &s)?;
    Ok(s)
}

pub(super) fn remat_flag(v: Option<Remat>) -> Result<bool> {
    match v {
        None | Some(Remat::None) => Ok(false),
        Some(Remat::Full) => Ok(true),
        Some(other) => bail!(
            "--remat {other}: the single-device loop keeps all activations or recomputes whole layers; \
             selective and every:K run on the executor (any strategy flag, e.g. --dp 1)"
        ),
    }
}

pub(super) fn tokenizer_for(
    a: &TrainArgs,
    cfg: &ModelConfig,
    train_text: &str,
) -> Result<Tokenizer> {
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
pub(super) fn write_curve(
    out: &Path,
    start_step: u64,
    curve: &[(StepInfo, Option<Eval>)],
) -> Result<()> {
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
pub(super) fn plot_curve(path: &Path, out: &Path) -> Result<()> {
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
