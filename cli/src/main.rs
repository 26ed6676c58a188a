//! `pangu`: a what-if tool for PanGu-α training strategies.
//!
//! Commands take a model, a cluster and a strategy (TOML files, presets and inline flags) and
//! print tables, or JSON with `--json`. Errors go to stderr with a non-zero exit code
//! (`exit` lists which).

mod args;
mod check_cmd;
mod exit;
mod flag_enums;
mod generate_cmd;
mod goodput_cmd;
mod output;
mod plan_cmd;
mod search_cmd;
mod simulate_cmd;
mod spelling;
mod sweep_cmd;
mod tokenizer_cmd;
mod train_cmd;
mod twin_cmd;
mod validate_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::output::{emit, print_json, table, tool_field};

/// PanGu twin: plan, simulate and check PanGu-α training strategies.
#[derive(Debug, Parser)]
#[command(name = "pangu", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a strategy and show its device groups, stage layers, memory per device,
    /// communication volume and pipeline bubble.
    Plan(plan_cmd::PlanArgs),
    /// Simulate one training step event by event: step time, throughput, MFU and where the
    /// time goes, per device and per link level.
    Simulate(simulate_cmd::SimulateArgs),
    /// Search every dp × tp × pp factorisation, micro-batching, schedule, sharding, remat,
    /// sequence parallelism and placement: rank analytically, refine the best by simulation.
    Search(search_cmd::SearchArgs),
    /// What-if grid: vary any key of the strategy, model and cluster files; one CSV row per
    /// point.
    Sweep(sweep_cmd::SweepArgs),
    /// Run strategy regression checks (files with model, cluster, strategy, expectations);
    /// exit code 4 when one fails. `--update` records new baselines.
    Check(check_cmd::CheckArgs),
    /// Simulate published training runs (a CSV) and compare predicted with published figures.
    Validate(validate_cmd::ValidateArgs),
    /// Train the model for real on the CPU: Chinese text, AdamW, checkpoints; one device, or
    /// any strategy's plan (dp, tp, pp, sp, sharding, remat) on threads or MPI processes;
    /// `--bench` times the step on random tokens.
    Train(Box<train_cmd::TrainArgs>),
    /// Continue a prompt with a trained checkpoint (KV cache; temperature, top-k, top-p).
    Generate(generate_cmd::GenerateArgs),
    /// Train or inspect the jieba + Unigram tokenizer.
    Tokenizer(tokenizer_cmd::TokenizerArgs),
    /// A whole training run under failures: goodput, expected days, the best checkpoint
    /// interval against Young/Daly, checked by Monte Carlo.
    Goodput(goodput_cmd::GoodputArgs),
    /// The digital-twin loop on this machine: `calibrate` writes a measured hardware profile.
    Twin(twin_cmd::TwinArgs),
    /// List the model presets, or print one as TOML.
    Models(ListArgs),
    /// List the cluster presets, or print one as TOML.
    Clusters(ListArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Print this preset's TOML (start your own file from it).
    #[arg(long, value_name = "NAME")]
    toml: Option<String>,
    /// Print JSON (every preset, with its key figures).
    #[arg(long, conflicts_with = "toml")]
    json: bool,
}

fn models(a: &ListArgs) -> Result<()> {
    if let Some(name) = &a.toml {
        return emit(pangu_model::preset_toml(name)?);
    }
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (name, _) in pangu_model::presets() {
        let m = pangu_model::ModelConfig::preset(name)?;
        let p = m.params().total;
        let reference = pangu_strategies::reference(name);
        let cluster = reference
            .as_ref()
            .map(|r| r.cluster.clone())
            .unwrap_or_default();
        // The reference run's sequence length and batch: run settings, not model keys.
        let run = reference.map(|r| (r.strategy.seq_len, r.strategy.global_batch));
        let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        let aliases: Vec<&str> = pangu_model::ALIASES
            .iter()
            .filter(|(_, p)| p == name)
            .map(|(a, _)| *a)
            .collect();
        rows.push(vec![
            if aliases.is_empty() {
                name.to_string()
            } else {
                format!("{name} (= {})", aliases.join(", "))
            },
            format!("{:.3} B", p as f64 / 1e9),
            m.layers.to_string(),
            m.hidden.to_string(),
            m.heads.to_string(),
            show(run.and_then(|r| r.0)),
            m.vocab.to_string(),
            show(run.and_then(|r| r.1)),
            cluster.clone(),
        ]);
        js.push(
            json!({"name": name, "aliases": aliases, "params": p, "config": m,
            "reference_cluster": (!cluster.is_empty()).then_some(&cluster), "reference_seq_len": run.and_then(|r| r.0),
            "reference_global_batch": run.and_then(|r| r.1)}),
        );
    }
    if a.json {
        return print_json(&json!({ "tool": tool_field(&js), "models": js }));
    }
    emit(&table(
        &[
            "model",
            "params",
            "layers",
            "hidden",
            "heads",
            "ref seq",
            "vocab",
            "ref batch",
            "reference cluster",
        ],
        &rows,
    ))
}

fn clusters(a: &ListArgs) -> Result<()> {
    if let Some(name) = &a.toml {
        return emit(pangu_hardware::preset_toml(name)?);
    }
    let mut rows = Vec::new();
    let mut js = Vec::new();
    for (name, _) in pangu_hardware::presets() {
        let c = pangu_hardware::Cluster::from_name(name)?;
        let s = &c.spec;
        rows.push(vec![
            name.to_string(),
            s.chips.to_string(),
            s.chip.name.clone(),
            format!("{:.0} TFLOP/s", s.chip.fp16.tflops()),
            format!("{}", s.chip.hbm),
            s.description.clone(),
        ]);
        js.push(json!({"name": name, "chips": s.chips, "chip": s.chip.name,
            "fp16_flops": s.chip.fp16, "hbm_bytes": s.chip.hbm, "description": s.description,
            "spec": s}));
    }
    if a.json {
        return print_json(&json!({ "tool": tool_field(&js), "clusters": js }));
    }
    let mut out = table(
        &[
            "cluster",
            "chips",
            "chip",
            "fp16 peak",
            "HBM",
            "description",
        ],
        &rows,
    );
    out.push_str("use NAME:N for N chips (GPUs or NPUs, not servers), e.g. ascend910:512\n");
    emit(&out)
}

fn main() {
    let (argv, warnings) = spelling::modernise(std::env::args().collect());
    for w in warnings {
        eprintln!("{w}");
    }
    let cli = Cli::parse_from(argv);
    let result = match &cli.command {
        Command::Plan(a) => plan_cmd::run(a),
        Command::Simulate(a) => simulate_cmd::run(a),
        Command::Validate(a) => validate_cmd::run(a),
        Command::Goodput(a) => goodput_cmd::run(a),
        Command::Twin(a) => twin_cmd::run(a),
        Command::Search(a) => search_cmd::run(a),
        Command::Check(a) => check_cmd::run(a),
        Command::Sweep(a) => sweep_cmd::run(a),
        Command::Train(a) => train_cmd::run(a),
        Command::Generate(a) => generate_cmd::generate(a),
        Command::Tokenizer(a) => tokenizer_cmd::tokenizer(a),
        Command::Models(a) => models(a),
        Command::Clusters(a) => clusters(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(exit::code_of(&e));
    }
}
