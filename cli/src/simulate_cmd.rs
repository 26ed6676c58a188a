//! `pangu simulate`: one training step, event by event.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pangu_strategies::{Category, Plan, StepReport};
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};

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
    /// Put every rank in the trace (default: the ranks of data-parallel replica 0).
    #[arg(long)]
    pub trace_all: bool,
    /// Simulate every device and every flow (default: fold symmetric devices and time
    /// collectives that run alone on their links once; both exact, see docs/ARCHITECTURE.md).
    #[arg(long)]
    pub full: bool,
}

/// The report as JSON, with the tool field and run statistics.
pub(crate) fn report_json(plan: &Plan, run: &pangu_sim::Run, wall: f64, notes: &[String]) -> Value {
    let rep = &run.report;
    let events = run.events;
    let breakdown: serde_json::Map<String, Value> = Category::ALL
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
        "wall_s": wall,
        "folded": run.folded,
        "warnings": plan.warnings,
        "notes": notes,
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
    let rows: Vec<Vec<String>> = Category::ALL
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
                Category::ALL
                    .iter()
                    .map(|&c| format!("{:.3}", b.get(c) / f64::from((*n).max(1)))),
            );
            r.push(format!("{:.2} GiB", *mem as f64 / (1u64 << 30) as f64));
            r
        })
        .collect();
    let mut header = vec!["stage"];
    header.extend(Category::ALL.iter().map(|c| c.name()));
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
        "simulated {events} events in {wall:.2} s ({:.1} M events/s), {how}",
        events as f64 / wall.max(1e-9) / 1e6
    );
    for w in &plan.warnings {
        outln!(out, "warning: {w}");
    }
    for n in notes {
        outln!(out, "note: {n}");
    }
}

fn print_csv(out: &mut String, rep: &StepReport) {
    let mut header = vec!["rank".to_string(), "stage".to_string()];
    header.extend(Category::ALL.iter().map(|c| format!("{}_s", c.name())));
    header.push("peak_memory_bytes".into());
    outln!(out, "{}", header.join(","));
    for d in &rep.devices {
        let mut row = vec![d.rank.to_string(), d.stage.to_string()];
        row.extend(
            Category::ALL
                .iter()
                .map(|&c| format!("{}", d.breakdown.get(c))),
        );
        row.push(d.peak_memory_bytes.to_string());
        outln!(out, "{}", row.join(","));
    }
}

/// Runs `pangu simulate`.
pub(crate) fn run(args: &SimulateArgs) -> Result<()> {
    let setup = args.setup.resolve()?;
    let r = &setup.resolved;
    let plan = Plan::new(&setup.model, &r.cluster, &r.strategy)?;
    let t0 = Instant::now();
    let (run, workload) = pangu_sim::simulate_full(
        &plan,
        if args.full {
            pangu_sim::Options::FULL
        } else {
            pangu_sim::Options::default()
        },
    )?;
    let wall = t0.elapsed().as_secs_f64();
    let rep = &run.report;
    if let Some(path) = &args.trace {
        let ranks: Vec<u32> = (0..plan.strategy.devices)
            .filter(|&d| args.trace_all || plan.mesh.coords(d).dp == 0)
            .collect();
        let doc = pangu_sim::chrome_trace(&plan, &run, &workload, &ranks);
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
    if args.json {
        print_json(&report_json(&plan, &run, wall, &r.notes))
    } else if args.csv {
        let mut out = String::new();
        print_csv(&mut out, rep);
        emit(&out)
    } else {
        let mut out = String::new();
        print_table(&mut out, &plan, &run, wall, &r.notes);
        emit(&out)
    }
}
