//! `pangu validate`: simulate published runs and compare.

use anyhow::{Context, Result};
use clap::Args;
use pangu_sim::validate::{
    rank_groups, read_assumptions, read_rows, run_row, summary, GroupRanking, Metric, RowResult,
};
use serde_json::json;

use crate::output::{emit, outln, print_json, table, tool_field};

/// Options of `pangu validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// CSV with the columns of sim/validation/published-runs.csv.
    #[arg(
        long,
        value_name = "FILE.csv",
        default_value = "sim/validation/published-runs.csv"
    )]
    pub runs: String,
    /// Per-row assumptions (TOML; default: `<CSV name>.assumptions.toml` next to the CSV).
    #[arg(long, value_name = "FILE.toml")]
    pub assumptions: Option<String>,
    /// Only these row ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn fmt_metric(m: Metric, v: f64) -> String {
    match m {
        Metric::StepTime => format!("{v:.2} s"),
        Metric::TflopsPerChip => format!("{v:.1} TFLOP/s"),
        Metric::TokensPerSPerChip => format!("{v:.0} tok/s"),
        Metric::Mfu => format!("{v:.3} MFU"),
    }
}

/// Runs `pangu validate`.
pub(crate) fn run(args: &ValidateArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.runs)
        .with_context(|| format!("cannot read {}", args.runs))?;
    let rows = read_rows(&text, &args.runs)?;
    let selected: Vec<_> = rows
        .iter()
        .filter(|r| {
            args.rows.is_empty()
                || args
                    .rows
                    .iter()
                    .any(|id| r.get("row_id").is_some_and(|x| x == id))
        })
        .collect();
    let sidecar = args.assumptions.clone().unwrap_or_else(|| {
        let p = std::path::Path::new(&args.runs);
        p.with_extension("assumptions.toml")
            .to_string_lossy()
            .into_owned()
    });
    let extra = match std::fs::read_to_string(&sidecar) {
        Ok(t) => read_assumptions(&t, &sidecar)?,
        Err(e) if args.assumptions.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            Default::default()
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read assumptions file {sidecar}: {e}"
            ))
        }
    };
    // Progress on stderr, drawn only when it is a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} validating {pos}/{len} rows [{elapsed}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let results: Vec<RowResult> = selected
        .iter()
        .map(|r| {
            let id = r.get("row_id").cloned().unwrap_or_default();
            bar.set_message(id.clone());
            let out = run_row(r, extra.get(&id));
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    let (med, max) = summary(&results, false);
    let (vmed, vmax) = summary(&results, true);
    let groups = rank_groups(&results, 3);
    if args.json {
        return print_json(&json!({
            "tool": tool_field(&text),
            "rows": results,
            "median_abs_error": med,
            "max_abs_error": max,
            "verified": {"median_abs_error": vmed, "max_abs_error": vmax, "rows": results.iter().filter(|r| r.verified && !r.calibration && r.error.is_some()).count()},
            "ranking": {"groups": groups, "median_spearman": median_spearman(&groups), "worst_regret": worst_regret(&groups)},
        }));
    }
    let mut out = String::new();
    let mut rows_t = Vec::new();
    for r in results.iter().filter(|r| r.error.is_some()) {
        let (Some(m), Some(p), Some(q), Some(e)) = (r.metric, r.published, r.predicted, r.error)
        else {
            continue;
        };
        rows_t.push(vec![
            r.row_id.clone(),
            fmt_metric(m, p),
            fmt_metric(m, q),
            format!("{:+.3}", e),
            if r.calibration {
                "calibration".into()
            } else if r.verified {
                "verified".into()
            } else {
                "-".into()
            },
            r.strategy.clone().unwrap_or_default(),
        ]);
    }
    outln!(
        out,
        "{}",
        table(
            &[
                "row",
                "published",
                "predicted",
                "error",
                "gate",
                "strategy simulated"
            ],
            &rows_t
        )
    );
    for r in &results {
        if !r.assumptions.is_empty() && r.error.is_some() {
            outln!(
                out,
                "assumed for {}: {}",
                r.row_id,
                r.assumptions.join("; ")
            );
        }
    }
    for r in &results {
        if let Some(why) = &r.skipped {
            outln!(out, "skipped {}: {why}", r.row_id);
        }
    }
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    outln!(
        out,
        "all compared rows: median |error| {}, max {}",
        f(med),
        f(max)
    );
    outln!(out, "verified rows (the gate; Ascend rows calibrate and are excluded): median |error| {}, max {}", f(vmed), f(vmax));
    ranking_section(&mut out, &groups);
    emit(&out)
}

/// Median Spearman correlation over the groups that have one.
fn median_spearman(groups: &[GroupRanking]) -> Option<f64> {
    let mut v: Vec<f64> = groups.iter().filter_map(|g| g.spearman).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    })
}

/// The largest regret of a predicted-best pick.
fn worst_regret(groups: &[GroupRanking]) -> Option<f64> {
    groups.iter().map(|g| g.regret).max_by(f64::total_cmp)
}

/// Strategies ranked within groups of one model on one cluster (at least 3 compared rows).
fn ranking_section(out: &mut String, groups: &[GroupRanking]) {
    if groups.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.rows.len().to_string(),
                g.spearman.map_or("-".into(), |s| format!("{s:+.2}")),
                format!("{:.3}", g.regret),
                if g.pick == g.best {
                    g.pick.clone()
                } else {
                    format!("{} (best {})", g.pick, g.best)
                },
            ]
        })
        .collect();
    outln!(out);
    outln!(
        out,
        "{}",
        table(
            &["group", "rows", "spearman", "regret", "predicted best"],
            &rows
        )
    );
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    outln!(
        out,
        "ranking within {} groups: median Spearman {}, worst regret {} (regret: measured time of the predicted-best strategy over the measured best's, minus one)",
        groups.len(),
        f(median_spearman(groups)),
        f(worst_regret(groups))
    );
}
