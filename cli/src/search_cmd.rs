//! `pangu search`: enumerate strategies (of the default space, or one constrained with
//! `--space DIM=V,...` and `--max-memory-fraction`), rank them analytically, refine the best
//! with the discrete-event simulator. The space and its parsing live in
//! `pangu_strategies::search`; this file only reads the flags and prints.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::search::{Objective, Score, SearchResult};
use pangu_strategies::search::{Candidate, SearchSpace};
use pangu_strategies::{Plan, Precision};
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};

/// Options of `pangu search`.
#[derive(Debug, Args)]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Rows to print.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Candidates re-priced by the discrete-event simulator.
    #[arg(long, default_value_t = 32)]
    pub refine: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print CSV of every fitting candidate.
    #[arg(long)]
    pub csv: bool,
    /// Constrain or widen one dimension of the search space (repeatable): DIM=V1,V2,... keeps
    /// only these values, adding those the default space lacks (tp=16,32); DIM+=V1,... adds
    /// them and keeps the default. DIM is a strategy key: tp, pp, dp, micro_batch_size (mbs),
    /// micro_batches, vpp (interleave), schedule, opt_shard (zero), remat, seq_parallel (sp),
    /// rank_order, precision. The strategy flags (--tp, ...) set your own strategy instead,
    /// which is always simulated and compared with the best.
    #[arg(long = "space", value_name = "DIM=V1,V2,...")]
    pub space: Vec<String>,
    /// Candidates must fit in this fraction of each device's usable memory (0 < F <= 1).
    #[arg(long, value_name = "F")]
    pub max_memory_fraction: Option<f64>,
    /// Rank by step time, or by the expected days of the whole run under failures (`pangu
    /// goodput`'s number, which also considers jobs that keep a few servers as spares).
    #[arg(long, value_enum, default_value_t = ObjectiveFlag::Step)]
    pub objective: ObjectiveFlag,
    #[command(flatten)]
    pub run: crate::goodput_cmd::RunArgs,
}

/// What `pangu search` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ObjectiveFlag {
    /// Seconds per training step.
    Step,
    /// Expected days of the whole run under failures, checkpoints and restarts.
    TimeToTrain,
}

/// What the search fixes, from the flags: the model, the cluster, the chips used, the global
/// batch and the precision; the user's (or the reference) strategy, when it is valid, is the
/// comparison.
struct Inputs {
    model: ModelConfig,
    space: SearchSpace,
    cluster: Cluster,
    own_plan: Option<Plan>,
    devices: u32,
    global_batch: u32,
    precision: Precision,
    /// The whole run's inputs when ranking by time to train.
    run: Option<pangu_sim::goodput::plan::Inputs>,
}

impl Inputs {
    fn new(args: &SearchArgs) -> Result<Inputs> {
        let crate::args::Inputs { model, spec, notes } = args.setup.inputs()?;
        for n in notes {
            eprintln!("note: {n}");
        }
        let reference = pangu_strategies::reference(&model.name);
        let cluster = args
            .setup
            .cluster_or_reference(&model, reference.as_ref())?;
        let own_plan = pangu_strategies::resolve_inputs(&model, Some(cluster.clone()), &spec)
            .ok()
            .and_then(|r| Plan::new(&r.model, &r.cluster, &r.strategy).ok());
        let devices = spec.devices.unwrap_or(cluster.chips());
        // The run's sequence length and batch; the model searched is at that length.
        let shape = pangu_strategies::run_shape(&model, &spec)?;
        let model = model.with_seq_len(shape.seq_len)?;
        let global_batch = shape.global_batch;
        let precision = spec
            .precision
            .or_else(|| reference.as_ref().and_then(|r| r.strategy.precision))
            .unwrap_or(Precision::Fp16);
        let mut space =
            search_space(args, devices, global_batch)?.with_context_parallel(model.seq_len);
        // The framework's vocabulary padding, as the user's strategy resolves it.
        if let Some(v) = spec.vocab_divisible_by.or_else(|| {
            reference
                .as_ref()
                .and_then(|r| r.strategy.vocab_divisible_by)
        }) {
            space.vocab_divisible_by = v;
        }
        let run = match args.objective {
            ObjectiveFlag::Step => None,
            ObjectiveFlag::TimeToTrain => Some(args.run.inputs(&model)?),
        };
        Ok(Inputs {
            model,
            space,
            cluster,
            own_plan,
            devices,
            global_batch,
            precision,
            run,
        })
    }

    /// Whether the user narrowed the space (constraints or a memory fraction).
    fn constrained(&self) -> bool {
        !self.space.constraints.is_empty() || self.space.memory_label().is_some()
    }

    /// Tokens per step.
    fn tokens(&self) -> f64 {
        f64::from(self.global_batch) * f64::from(self.model.seq_len)
    }
}

/// The space of `--space` entries and `--max-memory-fraction`, checked against the job.
fn search_space(args: &SearchArgs, devices: u32, global_batch: u32) -> Result<SearchSpace> {
    let mut space = SearchSpace::from_entries(&args.space).context("--space")?;
    if let Some(f) = args.max_memory_fraction {
        space = space
            .with_memory_fraction(f)
            .context("--max-memory-fraction")?;
    }
    space
        .check(devices, global_batch)
        .context("--space does not fit the job")?;
    Ok(space)
}

/// What the search found, with its wall time.
struct Found {
    res: SearchResult,
    wall: f64,
}

impl Found {
    fn best(&self) -> &Candidate {
        &self.res.ranked[0]
    }

    /// The user's (or the reference) strategy, simulated, with a breakdown.
    fn own_candidate(&self) -> Option<&Candidate> {
        self.res.own.as_ref().filter(|c| c.refined_step_s.is_some())
    }

    /// The user's strategy's summary and simulated step time.
    fn own(&self) -> Option<(&str, f64)> {
        let c = self.own_candidate()?;
        Some((c.summary.as_str(), c.refined_step_s?))
    }
}

/// Runs the search with a spinner on stderr; errors when nothing fits.
fn search(inputs: &Inputs, refine: usize) -> Result<Found> {
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let progress =
        |stage: &str, n: usize, total: usize| bar.set_message(format!("{stage} {n}/{total}"));
    let own_strategy = inputs.own_plan.as_ref().map(|p| p.strategy.clone());
    let (score, fewer) = time_to_train(inputs);
    let objective = Objective {
        score: score.as_ref().map(|f| f as Score),
        fewer_devices: &fewer,
    };
    let res = pangu_sim::search::search_by(
        &inputs.model,
        &inputs.cluster,
        inputs.devices,
        inputs.global_batch,
        inputs.precision,
        &inputs.space,
        refine,
        own_strategy.as_ref(),
        &progress,
        objective,
    );
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    if res.ranked.is_empty() {
        return Err(nothing_fits(inputs, &res));
    }
    Ok(Found { res, wall })
}

/// The time-to-train score (expected days, as `pangu goodput` computes them) and the smaller
/// chip counts that keep spare servers; nothing when ranking by step time.
#[allow(clippy::type_complexity)] // a closure and its companion list
fn time_to_train(inputs: &Inputs) -> (Option<impl Fn(&Plan, f64) -> f64 + Sync + '_>, Vec<u32>) {
    let Some(run) = inputs.run.as_ref() else {
        return (None, Vec::new());
    };
    let cps = inputs.cluster.topology.chips_per_server();
    let fewer = pangu_sim::goodput::plan::spare_device_counts(inputs.devices, cps);
    let score =
        move |plan: &Plan, step_s: f64| pangu_sim::goodput::plan::expected_days(plan, step_s, run);
    (Some(score), fewer)
}

fn nothing_fits(inputs: &Inputs, res: &SearchResult) -> anyhow::Error {
    let chip = &inputs.cluster.spec.chip;
    if inputs.constrained() && res.candidates_valid == 0 {
        // Nothing to fit: the constraints themselves leave no valid layout (exit 1, not 3).
        return anyhow::anyhow!(
            "no strategy of the constrained space is valid on {} × {}: {}; loosen the --space entries",
            inputs.devices,
            chip.name,
            res.census.summary()
        );
    }
    if inputs.constrained() {
        let limit = inputs.space.memory_fraction * chip.usable_memory().gib();
        return crate::exit::does_not_fit(format!(
            "no strategy of the constrained space fits on {} × {} within {limit:.1} GiB: {}; {} valid; loosen the --space entries or --max-memory-fraction",
            inputs.devices,
            chip.name,
            res.census.summary(),
            res.candidates_valid
        ));
    }
    let mem = res
        .min_memory_bytes
        .map_or("no strategy was even valid".to_string(), |m| {
            format!(
                "smallest per-device memory found {:.1} GiB > {:.1} GiB usable",
                m as f64 / (1u64 << 30) as f64,
                chip.usable_memory().gib()
            )
        });
    crate::exit::does_not_fit(format!(
        "no strategy of {} fits on {} × {}: {mem}; allow more devices or a smaller global batch",
        res.candidates_total, inputs.devices, chip.name
    ))
}

/// Runs `pangu search`.
pub(crate) fn run(args: &SearchArgs) -> Result<()> {
    let inputs = Inputs::new(args)?;
    let found = search(&inputs, args.refine)?;
    if args.json {
        print_json(&search_json(args, &inputs, &found))
    } else if args.csv {
        emit(&search_csv(&inputs, &found.res))
    } else {
        emit(&search_table(args, &inputs, &found))
    }
}

/// Where `a`'s time differs from `b`'s, per category.
fn explain_json(a: &Candidate, b: &Candidate) -> Vec<Value> {
    pangu_strategies::search::explain(a, b)
        .iter()
        .map(|(c, d)| json!({"category": c.name(), "seconds": d}))
        .collect()
}

fn search_json(args: &SearchArgs, inputs: &Inputs, found: &Found) -> Value {
    let (res, best, tokens) = (&found.res, found.best(), inputs.tokens());
    json!({
        "tool": tool_field(&(&inputs.model, &inputs.cluster.spec, inputs.global_batch)),
        "candidates_total": res.candidates_total,
        "candidates_valid": res.candidates_valid,
        "candidates_fitting": res.candidates_fitting,
        "space": {
            "constraints": inputs.space.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "max_memory_fraction": inputs.space.memory_fraction,
            "census": res.census,
        },
        "best": {
            "strategy": best.strategy,
            "summary": best.summary,
            "step_time_s": best.step_s(),
            "tokens_per_s": tokens / best.step_s(),
            "memory_bytes": best.memory_bytes,
            "expected_days": best.score,
        },
        "objective": match args.objective {
            ObjectiveFlag::Step => "step",
            ObjectiveFlag::TimeToTrain => "time-to-train",
        },
        "own": found.own_candidate().zip(found.own()).map(|(c, (sum, t))| json!({
            "summary": sum,
            "step_time_s": t,
            "tokens_per_s": tokens / t,
            "in_space": inputs.space.admits(&c.strategy),
        })),
        "explain_vs_runner_up": res.ranked.get(1).map(|b| explain_json(best, b)),
        "explain_vs_own": found.own_candidate().map(|o| explain_json(best, o)),
        "ranked": res.ranked.iter().take(args.top).collect::<Vec<_>>(),
        "pareto": res.pareto.iter().map(|&i| &res.ranked[i]).collect::<Vec<_>>(),
        "wall_s": found.wall,
        "confidence": crate::output::confidence_for(&inputs.model, &inputs.cluster.spec.chip, &best.strategy).1,
    })
}

/// Every fitting candidate, one CSV row each.
fn search_csv(inputs: &Inputs, res: &SearchResult) -> String {
    let mut out = String::new();
    outln!(
        out,
        "summary,analytic_step_s,simulated_step_s,tokens_per_s,memory_bytes"
    );
    for c in &res.ranked {
        outln!(
            out,
            "{},{},{},{},{}",
            c.summary,
            c.fast_step_s,
            c.refined_step_s.map_or(String::new(), |x| x.to_string()),
            inputs.tokens() / c.step_s(),
            c.memory_bytes
        );
    }
    out
}

/// The head line, the top candidates, the comparisons and the Pareto front.
fn search_table(args: &SearchArgs, inputs: &Inputs, found: &Found) -> String {
    let (res, best) = (&found.res, found.best());
    let mut out = String::new();
    outln!(
        out,
        "search: {} on {} × {}, global batch {}: {} strategies, {} valid, {} fit; top {} re-simulated ({:.1} s)",
        inputs.model.name,
        inputs.devices,
        inputs.cluster.spec.chip.name,
        inputs.global_batch,
        res.candidates_total,
        res.candidates_valid,
        res.candidates_fitting,
        args.refine.min(res.candidates_fitting),
        found.wall
    );
    if inputs.constrained() {
        outln!(out, "space: {}", res.census.summary());
    }
    let ttt = args.objective == ObjectiveFlag::TimeToTrain;
    if ttt {
        outln!(
            out,
            "ranked by expected days of the whole run (as `pangu goodput`), including jobs on fewer chips that keep spare servers"
        );
    }
    let rows: Vec<Vec<String>> = res
        .ranked
        .iter()
        .take(args.top)
        .enumerate()
        .map(|(i, c)| {
            let mut row = vec![
                (i + 1).to_string(),
                c.summary.clone(),
                c.refined_step_s.map_or("-".into(), |x| format!("{x:.3}")),
                format!("{:.3}", c.fast_step_s),
                format!("{:.0}", inputs.tokens() / c.step_s()),
                format!("{:.1} GiB", c.memory_bytes as f64 / (1u64 << 30) as f64),
            ];
            if ttt {
                row.push(c.strategy.devices.to_string());
                row.push(c.score.map_or("-".into(), |d| format!("{d:.2}")));
            }
            row
        })
        .collect();
    let mut head = vec![
        "#",
        "strategy",
        "simulated s",
        "analytic s",
        "tokens/s",
        "memory",
    ];
    if ttt {
        head.extend(["chips", "days"]);
    }
    outln!(out, "{}", table(&head, &rows));
    let why = |a: &Candidate, b: &Candidate| -> String {
        pangu_strategies::search::explain(a, b)
            .iter()
            .take(4)
            .map(|(c, d)| format!("{} {:+.3} s", c.name(), d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(second) = res.ranked.get(1).filter(|c| c.refined_step_s.is_some()) {
        outln!(
            out,
            "#1 against #2 (per device, #1 − #2): {}",
            why(best, second)
        );
    }
    if let Some((sum, t)) = found.own() {
        let outside = found
            .own_candidate()
            .filter(|c| !inputs.space.admits(&c.strategy))
            .map_or("", |_| " (outside the constrained space)");
        // Like with like: simulated times when #1 was re-simulated, else analytic ones.
        let mine = found.own_candidate().map_or(t, |c| c.fast_step_s);
        let (yours, theirs, how) = match best.refined_step_s {
            Some(b) => (t, b, "simulated"),
            None => (mine, best.fast_step_s, "analytic"),
        };
        outln!(
            out,
            "your strategy ({sum}){outside}: {t:.3} s simulated; the best is {:.1} % faster ({how})",
            (yours / theirs - 1.0) * 100.0
        );
        if let Some(diff) = found
            .own_candidate()
            .map(|mine| why(best, mine))
            .filter(|d| !d.is_empty())
        {
            outln!(out, "#1 against yours (per device, #1 − yours): {diff}");
        }
    }
    let (model, chip) = (&inputs.model, &inputs.cluster.spec.chip);
    outln!(
        out,
        "#1 {}",
        crate::output::confidence_for(model, chip, &best.strategy).0
    );
    outln!(
        out,
        "pareto front (step time vs memory): {}",
        res.pareto
            .iter()
            .map(|&i| format!("#{}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    );
    out
}
