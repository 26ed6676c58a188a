//! `pangu search`: enumerate strategies, rank them analytically, refine the best with the
//! discrete-event simulator.

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use pangu_strategies::search::SearchSpace;
use pangu_strategies::Plan;
use serde_json::json;

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
}

/// Runs `pangu search`.
pub(crate) fn run(args: &SearchArgs) -> Result<()> {
    // The search fixes only the model, the cluster, the chips used, the global batch and the
    // precision; the user's (or the reference) strategy, when it is valid, is the comparison.
    let model = &crate::args::load_model(&args.setup.model)?;
    let reference = pangu_strategies::reference(&model.name);
    let cluster = match (&args.setup.cluster, &reference) {
        (Some(c), _) => crate::args::load_cluster(c)?,
        (None, Some(r)) => pangu_hardware::Cluster::from_name(&r.cluster)?,
        (None, None) => bail!(
            "model {} has no reference cluster; pass --cluster NAME:N",
            model.name
        ),
    };
    let spec = args.setup.strategy.spec()?;
    let own_plan = pangu_strategies::resolve_inputs(model, Some(cluster.clone()), &spec)
        .ok()
        .and_then(|r| Plan::new(model, &r.cluster, &r.strategy).ok());
    let devices = spec.devices.unwrap_or(cluster.chips());
    let global_batch = spec.global_batch.unwrap_or(model.global_batch);
    let precision = spec
        .precision
        .or_else(|| reference.as_ref().and_then(|r| r.strategy.precision))
        .unwrap_or(pangu_strategies::Precision::Fp16);
    let tokens = f64::from(global_batch) * f64::from(model.seq_len);
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let progress =
        |stage: &str, n: usize, total: usize| bar.set_message(format!("{stage} {n}/{total}"));
    let own_strategy = own_plan.as_ref().map(|p| p.strategy.clone());
    let res = pangu_sim::search::search(
        model,
        &cluster,
        devices,
        global_batch,
        precision,
        &SearchSpace::default(),
        args.refine,
        own_strategy.as_ref(),
        &progress,
    );
    bar.finish_and_clear();
    let wall = t0.elapsed().as_secs_f64();
    if res.ranked.is_empty() {
        let mem = res
            .min_memory_bytes
            .map_or("no strategy was even valid".to_string(), |m| {
                format!(
                    "smallest per-device memory found {:.1} GiB > {:.1} GiB usable",
                    m as f64 / (1u64 << 30) as f64,
                    cluster.spec.chip.usable_memory().gib()
                )
            });
        bail!("no strategy of {} fits on {devices} × {}: {mem}; allow more devices or a smaller global batch", res.candidates_total, cluster.spec.chip.name);
    }
    // The user's own (or the reference) strategy, simulated, for comparison.
    let own = own_plan.as_ref().and_then(|p| {
        pangu_sim::simulate(p)
            .ok()
            .map(|run| (p.strategy.summary(), run.report.step_time_s))
    });
    let best = &res.ranked[0];
    if args.json {
        return print_json(&json!({
            "tool": tool_field(&(model, &cluster.spec, global_batch)),
            "candidates_total": res.candidates_total,
            "candidates_valid": res.candidates_valid,
            "candidates_fitting": res.candidates_fitting,
            "best": {
                "strategy": best.strategy,
                "summary": best.summary,
                "step_time_s": best.step_s(),
                "tokens_per_s": tokens / best.step_s(),
                "memory_bytes": best.memory_bytes,
            },
            "own": own.as_ref().map(|(sum, t)| json!({"summary": sum, "step_time_s": t, "tokens_per_s": tokens / t})),
            "explain_vs_runner_up": res.ranked.get(1).map(|b| pangu_strategies::search::explain(best, b).iter().map(|(c, d)| json!({"category": c.name(), "seconds": d})).collect::<Vec<_>>()),
            "explain_vs_own": res.ranked.iter().find(|c| own_plan.as_ref().is_some_and(|p| p.strategy == c.strategy)).map(|o| pangu_strategies::search::explain(best, o).iter().map(|(c, d)| json!({"category": c.name(), "seconds": d})).collect::<Vec<_>>()),
            "ranked": res.ranked.iter().take(args.top).collect::<Vec<_>>(),
            "pareto": res.pareto.iter().map(|&i| &res.ranked[i]).collect::<Vec<_>>(),
            "wall_s": wall,
        }));
    }
    let mut out = String::new();
    if args.csv {
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
                tokens / c.step_s(),
                c.memory_bytes
            );
        }
        return emit(&out);
    }
    outln!(
        out,
        "search: {} on {} × {}, global batch {}: {} strategies, {} valid, {} fit; top {} re-simulated ({:.1} s)",
        model.name,
        devices,
        cluster.spec.chip.name,
        global_batch,
        res.candidates_total,
        res.candidates_valid,
        res.candidates_fitting,
        args.refine.min(res.candidates_fitting),
        wall
    );
    let rows: Vec<Vec<String>> = res
        .ranked
        .iter()
        .take(args.top)
        .enumerate()
        .map(|(i, c)| {
            vec![
                (i + 1).to_string(),
                c.summary.clone(),
                c.refined_step_s.map_or("-".into(), |x| format!("{x:.3}")),
                format!("{:.3}", c.fast_step_s),
                format!("{:.0}", tokens / c.step_s()),
                format!("{:.1} GiB", c.memory_bytes as f64 / (1u64 << 30) as f64),
            ]
        })
        .collect();
    outln!(
        out,
        "{}",
        table(
            &[
                "#",
                "strategy",
                "simulated s",
                "analytic s",
                "tokens/s",
                "memory"
            ],
            &rows
        )
    );
    let why = |a: &pangu_strategies::search::Candidate,
               b: &pangu_strategies::search::Candidate|
     -> String {
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
    if let Some((sum, t)) = &own {
        outln!(
            out,
            "your strategy ({sum}): {t:.3} s simulated; the best is {:.1} % faster",
            (t / best.step_s() - 1.0) * 100.0
        );
        if let Some(mine) = res
            .ranked
            .iter()
            .find(|c| own_plan.as_ref().is_some_and(|p| p.strategy == c.strategy))
        {
            outln!(
                out,
                "#1 against yours (per device, #1 − yours): {}",
                why(best, mine)
            );
        }
    }
    outln!(
        out,
        "pareto front (step time vs memory): {}",
        res.pareto
            .iter()
            .map(|&i| format!("#{}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    );
    emit(&out)
}
