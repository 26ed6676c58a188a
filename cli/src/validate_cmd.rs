//! `pangu validate`: simulate published runs and compare.

use anyhow::{Context, Result};
use clap::Args;
use pangu_sim::validate::confidence::{unfitted_rows, write_table};
use pangu_sim::validate::crossval::CvRow;
use pangu_sim::validate::crossval::{cross_validate, Criterion, CrossValidation};
use pangu_sim::validate::{
    prepare_row, rank_groups, read_assumptions, read_rows, summary, GroupRanking, Metric, Prepared,
    RowResult,
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
    /// Also refit the constants still fitted to step rows with each source left out, and
    /// report the held-out (cross-validated) error beside the in-sample one.
    #[arg(long)]
    pub cross_validate: bool,
    /// What the refit minimises: worst (smallest worst-row error, the calibration files'
    /// procedure) or median (smallest median |log error|).
    #[arg(long, default_value = "worst", value_parser = clap::value_parser!(Criterion))]
    pub criterion: Criterion,
    /// Write the per-row cross-validated errors as the confidence table (implies
    /// --cross-validate); the shipped one is sim/validation/confidence.csv.
    #[arg(long, value_name = "FILE.csv")]
    pub write_confidence: Option<String>,
    /// With --write-confidence: also simulate the rows of this CSV (its assumptions file
    /// beside it), which no constant is fitted to, and append them to the table with their
    /// error as it is (out of sample already); the shipped table adds
    /// sim/validation/sweeps.csv. Repeatable.
    #[arg(long, value_name = "FILE.csv", requires = "write_confidence")]
    pub also_unfitted: Vec<String>,
    /// A gate: exit with code 4 when the median |error| of the verified rows (the ones the
    /// table marks `verified`) exceeds this fraction (e.g. 0.15), after printing the report.
    #[arg(long, value_name = "FRACTION")]
    pub max_median_error: Option<f64>,
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
    if let Some(f) = args.max_median_error {
        if !(f.is_finite() && f >= 0.0) {
            anyhow::bail!("--max-median-error {f}: give a fraction ≥ 0, e.g. 0.15 for 15 %");
        }
    }
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
    let extra = assumptions(args)?;
    // Progress on stderr, drawn only when it is a terminal (indicatif hides it otherwise).
    let bar = indicatif::ProgressBar::new(selected.len() as u64);
    // Rows are prepared (plans built) first, then simulated.
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} validating {pos}/{len} rows [{elapsed}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let prepared: Vec<Result<Prepared, Box<RowResult>>> = selected
        .iter()
        .map(|r| prepare_row(r, r.get("row_id").and_then(|id| extra.get(id))))
        .collect();
    let mut known = Vec::new();
    let results: Vec<RowResult> = prepared
        .iter()
        .map(|p| match p {
            Err(out) => (**out).clone(),
            Ok(p) => {
                bar.set_message(p.result.row_id.clone());
                let prediction = p.predict(&p.calibration);
                known.push(prediction.as_ref().ok().map(|x| x.0));
                bar.inc(1);
                p.finish(prediction)
            }
        })
        .collect();
    bar.finish_and_clear();
    let cv = if args.cross_validate || args.write_confidence.is_some() {
        let rows: Vec<Prepared> = prepared.into_iter().filter_map(Result::ok).collect();
        let bar = indicatif::ProgressBar::new_spinner();
        let cv = cross_validate(&rows, &known, args.criterion, &mut |n, id| {
            bar.set_message(format!("cross-validating: {n} simulations ({id})"));
            bar.tick();
        });
        bar.finish_and_clear();
        if let Some(path) = &args.write_confidence {
            let mut unfitted = Vec::new();
            for file in &args.also_unfitted {
                unfitted.extend(unfitted_of(file)?);
            }
            let text = write_table(&cv, &args.runs, &unfitted, &args.also_unfitted)?;
            std::fs::write(path, text).with_context(|| format!("cannot write {path}"))?;
            eprintln!("confidence table written to {path}");
        }
        Some(cv)
    } else {
        None
    };
    let (med, max) = summary(&results, false);
    let (vmed, vmax) = summary(&results, true);
    let groups = rank_groups(&results, 3);
    if args.json {
        print_json(&json!({
            "tool": tool_field(&text),
            "rows": results,
            "median_abs_error": med,
            "max_abs_error": max,
            "verified": {"median_abs_error": vmed, "max_abs_error": vmax, "rows": results.iter().filter(|r| r.verified && !r.calibration && r.error.is_some()).count()},
            "ranking": {"groups": groups, "median_spearman": median_spearman(&groups), "worst_regret": worst_regret(&groups)},
            "cross_validation": cv,
        }))?;
        return gate(args.max_median_error, vmed);
    }
    let mut out = String::new();
    rows_text(&mut out, &results);
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    outln!(
        out,
        "all compared rows: median |error| {}, max {}",
        f(med),
        f(max)
    );
    outln!(out, "verified rows (the gate; Ascend rows calibrate and are excluded): median |error| {}, max {}", f(vmed), f(vmax));
    ranking_section(&mut out, &groups);
    if let Some(cv) = &cv {
        cv_section(&mut out, cv);
    }
    emit(&out)?;
    gate(args.max_median_error, vmed)
}

/// The text report's rows: the compared rows' table, then what each assumed or why it was
/// skipped.
fn rows_text(out: &mut String, results: &[RowResult]) {
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
    for r in results {
        if !r.assumptions.is_empty() && r.error.is_some() {
            outln!(
                out,
                "assumed for {}: {}",
                r.row_id,
                r.assumptions.join("; ")
            );
        }
    }
    for r in results {
        if let Some(why) = &r.skipped {
            outln!(out, "skipped {}: {why}", r.row_id);
        }
    }
}

/// The per-row assumptions: `--assumptions FILE`, else `<runs>.assumptions.toml` beside the
/// runs when it exists.
fn assumptions(
    args: &ValidateArgs,
) -> Result<std::collections::HashMap<String, pangu_sim::validate::Assumption>> {
    assumptions_of(&args.runs, args.assumptions.as_deref())
}

/// The assumptions of `runs`: `given`, or `<runs>.assumptions.toml` beside it when present.
fn assumptions_of(
    runs: &str,
    given: Option<&str>,
) -> Result<std::collections::HashMap<String, pangu_sim::validate::Assumption>> {
    let sidecar = given.map(str::to_string).unwrap_or_else(|| {
        let p = std::path::Path::new(runs);
        p.with_extension("assumptions.toml")
            .to_string_lossy()
            .into_owned()
    });
    Ok(match std::fs::read_to_string(&sidecar) {
        Ok(t) => read_assumptions(&t, &sidecar)?,
        Err(e) if given.is_none() && e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read assumptions file {sidecar}: {e}"
            ))
        }
    })
}

/// `--also-unfitted`: the compared rows of `file` as confidence-table lines.
fn unfitted_of(file: &str) -> Result<Vec<CvRow>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    let rows = read_rows(&text, file)?;
    let extra = assumptions_of(file, None)?;
    let prepared: Vec<Prepared> = rows
        .iter()
        .filter_map(|r| prepare_row(r, r.get("row_id").and_then(|id| extra.get(id))).ok())
        .collect();
    let bar = indicatif::ProgressBar::new(prepared.len() as u64);
    let errors: Vec<Option<f64>> = prepared
        .iter()
        .map(|p| {
            bar.set_message(p.result.row_id.clone());
            let r = p.finish(p.predict(&p.calibration));
            bar.inc(1);
            r.error
        })
        .collect();
    bar.finish_and_clear();
    Ok(unfitted_rows(&prepared, &errors))
}

/// `--max-median-error`: the verified rows' median |error| against the threshold, if given.
fn gate(threshold: Option<f64>, verified_median: Option<f64>) -> Result<()> {
    let Some(f) = threshold else {
        return Ok(());
    };
    match verified_median {
        None => anyhow::bail!(
            "--max-median-error: no verified row was compared (select some with --rows, or drop the flag)"
        ),
        Some(m) if m > f => Err(crate::exit::gate_failed(format!(
            "median |error| of the verified rows {:.1} % is over --max-median-error {:.1} %",
            100.0 * m,
            100.0 * f
        ))),
        Some(_) => Ok(()),
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.1} %", 100.0 * v))
}

/// The leave-one-source-out section: the refits, each row's held-out error, the summaries.
fn cv_section(out: &mut String, cv: &CrossValidation) {
    outln!(out);
    let plateau = |p: Option<f64>| p.map_or("-".to_string(), |v| format!("{v:.3}"));
    for f in &cv.all_rows_fit {
        outln!(
            out,
            "fit on every row ({:?}): {} matmul plateau {} (shipped {:.2}, {} rows, {:?})",
            cv.criterion,
            f.family,
            plateau(f.plateau),
            f.shipped,
            f.rows.len(),
            f.basis
        );
    }
    for fold in &cv.folds {
        let fits: Vec<String> = fold
            .fits
            .iter()
            .map(|f| {
                format!(
                    "{} {} ({:?}, {} rows)",
                    f.family,
                    plateau(f.plateau),
                    f.basis,
                    f.rows.len()
                )
            })
            .collect();
        let src: String = fold.held_out.chars().take(60).collect();
        outln!(
            out,
            "left out {src:?} ({} rows): {}",
            fold.rows.len(),
            fits.join(", ")
        );
    }
    let rows: Vec<Vec<String>> = cv
        .rows
        .iter()
        .map(|r| {
            vec![
                r.row_id.clone(),
                r.regime.family.clone(),
                if r.gate {
                    "verified".into()
                } else {
                    "-".into()
                },
                format!("{:+.3}", r.in_sample),
                r.cv.map_or("-".into(), |e| format!("{e:+.3}")),
                plateau(r.plateau),
            ]
        })
        .collect();
    outln!(out);
    outln!(
        out,
        "{}",
        table(
            &["row", "family", "gate", "in-sample", "left out", "plateau"],
            &rows
        )
    );
    let scopes: Vec<Vec<String>> = cv
        .scopes
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.n.to_string(),
                pct(s.in_sample_median),
                pct(s.in_sample_max),
                s.cv_n.to_string(),
                pct(s.cv_median),
                pct(s.cv_max),
            ]
        })
        .collect();
    outln!(out);
    outln!(
        out,
        "{}",
        table(
            &[
                "rows",
                "n",
                "in-sample median",
                "worst",
                "n left out",
                "cross-validated median",
                "worst"
            ],
            &scopes
        )
    );
    outln!(
        out,
        "leave-one-source-out: {} simulations in {:.1} s (one thread)",
        cv.simulations,
        cv.wall_s
    );
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
