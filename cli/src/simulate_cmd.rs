//! `pangu simulate`: one training step, event by event.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pangu_strategies::{Category, Plan, StepReport};
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};
use pangu_sim::validate::confidence::Regime;

/// Options of `pangu simulate`.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print one CSV row per device instead of tables.
    #[arg(long)]
    pub csv: bool,
    /// Write a Chrome-trace / Perfetto timeline to this file.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<String>,
    /// Write the step as Chakra execution traces into this folder: `pangu.<rank>.et` for every
    /// rank (ASTRA-sim: `--workload-configuration DIR/pangu`) and the process groups in
    /// `comm_groups.json` (`--comm-group-configuration`).
    #[arg(long, value_name = "DIR")]
    pub chakra: Option<String>,
    /// Put every rank in the trace (default: the ranks of data-parallel replica 0).
    #[arg(long)]
    pub trace_all: bool,
    /// Simulate every device and every flow (default: fold symmetric devices and time
    /// collectives that run alone on their links once; both exact, see docs/ARCHITECTURE.md).
    #[arg(long)]
    pub full: bool,
    /// Faults of the step: a TOML file of stragglers and degraded or failed links (format:
    /// docs/formats.md "Faults files", example: examples/faults.toml).
    #[arg(long, value_name = "FILE")]
    pub faults: Option<String>,
    /// A slow device, e.g. `--straggler 17=0.8` (device 17 at 80 % of nominal speed; the
    /// faults file's `device` and `speed`); repeatable.
    #[arg(long, value_name = "DEVICE=SPEED")]
    pub straggler: Vec<String>,
    /// A second job on the same cluster, given by its strategy file (same model; its devices
    /// default to the chips this job leaves free): prints each job's step alone and beside
    /// the other.
    #[arg(long, value_name = "STRATEGY_FILE")]
    pub share: Option<String>,
}

/// The faults of the flags: the file's, plus every `--straggler`.
pub(crate) fn faults_of(args: &SimulateArgs) -> Result<pangu_sim::faults::Faults> {
    let mut f = match &args.faults {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read faults file {path}"))?;
            pangu_sim::faults::Faults::from_toml(&text, path)?
        }
        None => pangu_sim::faults::Faults::default(),
    };
    for s in &args.straggler {
        let parsed = s.split_once('=').and_then(|(r, v)| {
            Some(pangu_sim::faults::Straggler {
                device: r.trim().parse().ok()?,
                speed: v.trim().parse().ok()?,
            })
        });
        match parsed {
            Some(st) => f.stragglers.push(st),
            None => anyhow::bail!(
                "--straggler {s:?}: write DEVICE=SPEED, e.g. --straggler 17=0.8 (device 17 at 80 % speed)"
            ),
        }
    }
    Ok(f)
}

/// The breakdown categories shown for a plan: `cp_comm` only with context parallelism, so
/// the output of plans without it reads as before.
fn categories(plan: &Plan) -> Vec<Category> {
    Category::ALL
        .into_iter()
        .filter(|&c| c != Category::CpComm || plan.strategy.cp > 1)
        .collect()
}

/// The report as JSON, with the tool field and run statistics.
pub(crate) fn report_json(plan: &Plan, run: &pangu_sim::Run, wall: f64, notes: &[String]) -> Value {
    let rep = &run.report;
    let events = run.events;
    let breakdown: serde_json::Map<String, Value> = categories(plan)
        .iter()
        .map(|&c| (c.name().to_string(), json!(rep.breakdown.get(c))))
        .collect();
    json!({
        "tool": tool_field(&(&plan.model, &plan.cluster.spec, &plan.strategy)),
        "model": plan.model.name,
        "cluster": plan.cluster.spec.name,
        "devices": plan.strategy.devices,
        "strategy": plan.strategy,
        "summary": plan.strategy.summary(),
        "step_time_s": rep.step_time_s,
        "tokens_per_s": rep.tokens_per_s,
        "tokens_per_s_per_chip": rep.tokens_per_s / f64::from(plan.strategy.devices),
        "samples_per_s": rep.samples_per_s,
        "mfu": rep.mfu,
        "hfu": rep.hfu,
        "breakdown": breakdown,
        "devices_report": rep.devices,
        "critical_path": rep.critical_path,
        "links": rep.links,
        "peak_memory_bytes": rep.peak_memory_bytes,
        "fits": plan.fits(),
        "events": events,
        "flows": run.flows,
        "wall_s": wall,
        "folded": run.folded,
        "warnings": plan.warnings,
        "notes": notes,
        "confidence": crate::output::confidence(Regime::of_plan(plan)).1,
    })
}

fn print_table(out: &mut String, plan: &Plan, run: &pangu_sim::Run, wall: f64, notes: &[String]) {
    let rep = &run.report;
    let events = run.events;
    let s = &plan.strategy;
    outln!(
        out,
        "simulate: {} on {} ({} × {}), {}",
        plan.model.name,
        plan.cluster.spec.name,
        s.devices,
        plan.cluster.spec.chip.name,
        s.summary()
    );
    outln!(out,
        "step time {:.3} s | {:.0} tokens/s ({:.1} per chip) | {:.2} samples/s | MFU {:.3} | HFU {:.3}",
        rep.step_time_s,
        rep.tokens_per_s,
        rep.tokens_per_s / f64::from(s.devices),
        rep.samples_per_s,
        rep.mfu,
        rep.hfu
    );
    outln!(out);
    let cats = categories(plan);
    let rows: Vec<Vec<String>> = cats
        .iter()
        .map(|&c| {
            let v = rep.breakdown.get(c);
            vec![
                c.name().to_string(),
                format!("{v:.4}"),
                format!("{:.3}", v / rep.step_time_s),
            ]
        })
        .collect();
    outln!(out, "time per device (mean over devices):");
    outln!(
        out,
        "{}",
        table(&["category", "seconds", "fraction"], &rows)
    );
    // Per stage: mean of its devices.
    let mut per_stage = vec![(pangu_strategies::Breakdown::default(), 0u32, 0u64); s.pp as usize];
    for d in &rep.devices {
        let e = &mut per_stage[d.stage as usize];
        for c in Category::ALL {
            *e.0.get_mut(c) += d.breakdown.get(c);
        }
        e.1 += 1;
        e.2 = e.2.max(d.peak_memory_bytes);
    }
    let rows: Vec<Vec<String>> = per_stage
        .iter()
        .enumerate()
        .map(|(i, (b, n, mem))| {
            let mut r = vec![i.to_string()];
            r.extend(
                cats.iter()
                    .map(|&c| format!("{:.3}", b.get(c) / f64::from((*n).max(1)))),
            );
            r.push(format!("{:.2} GiB", *mem as f64 / (1u64 << 30) as f64));
            r
        })
        .collect();
    let mut header = vec!["stage"];
    header.extend(cats.iter().map(|c| c.name()));
    header.push("memory");
    outln!(out, "per stage (seconds, mean of its devices):");
    outln!(out, "{}", table(&header, &rows));
    let rows: Vec<Vec<String>> = rep
        .links
        .iter()
        .map(|l| {
            vec![
                l.level.clone(),
                format!("{:.2} GB", l.bytes / 1e9),
                format!("{:.3}", l.mean_utilisation),
                format!("{:.3}", l.max_utilisation),
            ]
        })
        .collect();
    outln!(out, "links:");
    outln!(
        out,
        "{}",
        table(&["level", "carried", "mean util", "max util"], &rows)
    );
    let mut on_path = pangu_strategies::Breakdown::default();
    for seg in &rep.critical_path {
        *on_path.get_mut(seg.category) += seg.duration;
    }
    let parts: Vec<String> = Category::ALL
        .iter()
        .filter(|&&c| on_path.get(c) > 0.0)
        .map(|&c| format!("{} {:.3} s", c.name(), on_path.get(c)))
        .collect();
    outln!(
        out,
        "critical path ({} segments): {}",
        rep.critical_path.len(),
        parts.join(", ")
    );
    let how = run
        .folded
        .as_ref()
        .map_or("every device".to_string(), |f| format!("folded over {f}"));
    outln!(
        out,
        "simulated {events} events and {} transfers in {wall:.2} s ({:.1} M events/s), {how}",
        run.flows,
        events as f64 / wall.max(1e-9) / 1e6
    );
    outln!(
        out,
        "{}",
        crate::output::confidence(Regime::of_plan(plan)).0
    );
    for w in &plan.warnings {
        outln!(out, "warning: {w}");
    }
    for n in notes {
        outln!(out, "note: {n}");
    }
}

fn print_csv(out: &mut String, rep: &StepReport, cats: &[Category]) {
    let mut header = vec!["rank".to_string(), "stage".to_string()];
    header.extend(cats.iter().map(|c| format!("{}_s", c.name())));
    header.push("peak_memory_bytes".into());
    outln!(out, "{}", header.join(","));
    for d in &rep.devices {
        let mut row = vec![d.rank.to_string(), d.stage.to_string()];
        row.extend(cats.iter().map(|&c| format!("{}", d.breakdown.get(c))));
        row.push(d.peak_memory_bytes.to_string());
        outln!(out, "{}", row.join(","));
    }
}

/// Runs `pangu simulate`.
pub(crate) fn run(args: &SimulateArgs) -> Result<()> {
    let setup = args.setup.resolve()?;
    let r = &setup.resolved;
    let plan = Plan::new(&setup.model, &r.cluster, &r.strategy)?;
    if let Some(path) = &args.share {
        if args.chakra.is_some() {
            anyhow::bail!("--chakra writes the traces of one job: leave out --share");
        }
        return run_shared(args, &setup.model, &plan, path);
    }
    let faults = faults_of(args)?;
    let opts = if args.full {
        pangu_sim::Options::FULL
    } else {
        pangu_sim::Options::default()
    };
    let t0 = Instant::now();
    let (run, workload, faulty_plan) = pangu_sim::simulate_faulty(&plan, &faults, opts)?;
    let wall = t0.elapsed().as_secs_f64();
    // With faults, the same step without them, for the difference they make.
    let healthy = if faults.is_empty() {
        None
    } else {
        Some(pangu_sim::simulate(&plan)?.report.step_time_s)
    };
    let rep = &run.report;
    if let Some(path) = &args.trace {
        let ranks: Vec<u32> = (0..plan.strategy.devices)
            .filter(|&d| args.trace_all || plan.mesh.coords(d).dp == 0)
            .collect();
        let mut doc = pangu_sim::chrome_trace(&faulty_plan, &run, &workload, &ranks);
        mark_stragglers(&mut doc, &faults);
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&doc)?)
            .with_context(|| format!("cannot write trace {tmp}"))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move trace into place at {path}"))?;
        eprintln!(
            "trace of {} ranks written to {path} (open in ui.perfetto.dev or chrome://tracing)",
            ranks.len()
        );
    }
    if let Some(dir) = &args.chakra {
        write_chakra(&faulty_plan, &workload, dir)?;
    }
    if args.json {
        let mut v = report_json(&plan, &run, wall, &r.notes);
        if let Some(h) = healthy {
            v["faults"] = serde_json::to_value(&faults)?;
            v["fault_free_step_time_s"] = json!(h);
            v["fault_slowdown"] = json!(rep.step_time_s / h - 1.0);
        }
        print_json(&v)
    } else if args.csv {
        let mut out = String::new();
        print_csv(&mut out, rep, &categories(&plan));
        emit(&out)
    } else {
        let mut out = String::new();
        print_table(&mut out, &plan, &run, wall, &r.notes);
        if let Some(h) = healthy {
            outln!(
                out,
                "faults: {} straggler(s), {} link fault(s): step {:.3} s against {:.3} s without them ({:+.1} %)",
                faults.stragglers.len(),
                faults.links.len(),
                rep.step_time_s,
                h,
                100.0 * (rep.step_time_s / h - 1.0)
            );
        }
        emit(&out)
    }
}

/// `pangu simulate --chakra DIR`: the step's task graph of every rank as Chakra traces. A folded
/// run's graph has its representatives only; the graph of every rank is built (not simulated).
fn write_chakra(plan: &Plan, w: &pangu_sim::Workload, dir: &str) -> Result<()> {
    let t0 = Instant::now();
    let rebuilt;
    let all = if w.devices.len() == plan.strategy.devices as usize {
        w
    } else {
        rebuilt = pangu_sim::full_workload(plan)?;
        &rebuilt
    };
    let export = pangu_sim::chakra::Export::new(plan, all)?;
    let written = export
        .write_dir(std::path::Path::new(dir))
        .with_context(|| format!("cannot write Chakra traces into {dir}"))?;
    eprintln!(
        "Chakra traces of {} ranks ({} nodes, {:.1} MB) written to {dir}/pangu.<rank>.et in {:.1} s; process groups in {dir}/comm_groups.json",
        written.files,
        written.nodes,
        written.bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `pangu simulate --share FILE`: two jobs on one network.
fn run_shared(
    args: &SimulateArgs,
    model: &pangu_model::ModelConfig,
    a: &Plan,
    path: &str,
) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read strategy file {path}"))?;
    let spec = pangu_strategies::StrategySpec::from_toml(&text, path)?;
    let free = a.cluster.chips().saturating_sub(a.strategy.devices);
    if free == 0 {
        anyhow::bail!(
            "job A uses all {} chips: give it fewer (--devices) so that the second job has some",
            a.cluster.chips()
        );
    }
    // The second job trains the same model at its own file's run, else the model's.
    let batch = pangu_strategies::run_shape(model, &spec)
        .with_context(|| format!("second job ({path})"))?
        .global_batch;
    let mut spec = spec;
    spec.attention
        .get_or_insert_with(|| pangu_strategies::default_attention(&a.cluster.spec.chip).0);
    let (sb, _) = pangu_strategies::strategy::resolve(&spec, &spec, batch, free)
        .with_context(|| format!("second job ({path})"))?;
    let b = Plan::new(model, &a.cluster, &sb).with_context(|| format!("second job ({path})"))?;
    let t0 = Instant::now();
    let r = pangu_sim::simulate_shared(a, &b)?;
    let wall = t0.elapsed().as_secs_f64();
    let (da, db) = r.slowdowns();
    if args.json {
        return print_json(&json!({
            "job_a": {"strategy": a.strategy, "summary": a.strategy.summary(), "chips": [0, a.strategy.devices],
                      "alone_step_time_s": r.a_alone_s, "shared_step_time_s": r.a_shared_s, "slowdown": da},
            "job_b": {"strategy": b.strategy, "summary": b.strategy.summary(), "chips": [r.b_first_chip, r.b_first_chip + b.strategy.devices],
                      "alone_step_time_s": r.b_alone_s, "shared_step_time_s": r.b_shared_s, "slowdown": db},
            "wall_s": wall,
        }));
    }
    let mut out = String::new();
    outln!(
        out,
        "two jobs on {} ({} chips):",
        a.cluster.spec.name,
        a.cluster.chips()
    );
    let rows = vec![
        vec![
            "A".to_string(),
            format!("0..{}", a.strategy.devices),
            a.strategy.summary(),
            format!("{:.3}", r.a_alone_s),
            format!("{:.3}", r.a_shared_s),
            format!("{:+.1} %", 100.0 * da),
        ],
        vec![
            "B".to_string(),
            format!(
                "{}..{}",
                r.b_first_chip,
                r.b_first_chip + b.strategy.devices
            ),
            b.strategy.summary(),
            format!("{:.3}", r.b_alone_s),
            format!("{:.3}", r.b_shared_s),
            format!("{:+.1} %", 100.0 * db),
        ],
    ];
    outln!(
        out,
        "{}",
        table(
            &[
                "job",
                "chips",
                "strategy",
                "alone s/step",
                "shared s/step",
                "slowdown"
            ],
            &rows
        )
    );
    outln!(out, "simulated in {wall:.2} s (every device of both jobs)");
    emit(&out)
}

/// Names the stragglers' tracks in a trace with their speed.
fn mark_stragglers(doc: &mut Value, faults: &pangu_sim::faults::Faults) {
    let Some(events) = doc.get_mut("traceEvents").and_then(Value::as_array_mut) else {
        return;
    };
    for e in events {
        if e["name"] != "process_name" {
            continue;
        }
        let pid = e["pid"].as_u64();
        if let Some(s) = faults
            .stragglers
            .iter()
            .find(|s| Some(u64::from(s.device)) == pid)
        {
            if let Some(name) = e["args"]["name"].as_str() {
                e["args"]["name"] = json!(format!(
                    "{name} — straggler at {:.0} % speed",
                    100.0 * s.speed
                ));
            }
        }
    }
}
