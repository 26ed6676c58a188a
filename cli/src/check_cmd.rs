//! `pangu check`: strategy regression checks from files.

use anyhow::{Context, Result};
use clap::Args;
use pangu_sim::check::{with_baseline, CheckFile};
use serde_json::json;

use crate::output::{emit, outln, print_json, tool_field};

/// Options of `pangu check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Check files (TOML: model, cluster, [strategy], [expect], [baseline]).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// Record each file's simulated step time as its new baseline.
    #[arg(long)]
    pub update: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pangu check`; exits non-zero when any check fails.
pub(crate) fn run(args: &CheckArgs) -> Result<()> {
    let mut out = String::new();
    let mut rows = Vec::new();
    let mut failed = 0;
    let mut inputs = Vec::new();
    for f in &args.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read check file {f}"))?;
        inputs.push(text.clone());
        let check = CheckFile::from_toml(&text, f)?;
        let dir = std::path::Path::new(f)
            .parent()
            .unwrap_or(std::path::Path::new("."));
        let outcome = check.run(dir).with_context(|| format!("check {f}"))?;
        if args.update {
            if let Some(t) = outcome.step_time_s {
                let tol = check.baseline.as_ref().map_or(0.05, |b| b.tolerance);
                let new = with_baseline(&text, t, tol);
                let tmp = format!("{f}.tmp");
                std::fs::write(&tmp, new).with_context(|| format!("cannot write {tmp}"))?;
                std::fs::rename(&tmp, f).with_context(|| format!("cannot replace {f}"))?;
                outln!(out, "updated {f}: baseline step time {t:.4} s");
                rows.push(json!({"file": f, "updated": true, "baseline_step_time_s": t, "tolerance": tol}));
                continue;
            }
        }
        if outcome.passed() {
            outln!(
                out,
                "ok    {f}: {} — step {} s, MFU {}",
                outcome.strategy,
                outcome
                    .step_time_s
                    .map_or("-".into(), |t| format!("{t:.4}")),
                outcome.mfu.map_or("-".into(), |m| format!("{m:.3}"))
            );
        } else {
            failed += 1;
            outln!(out, "FAIL  {f}: {}", outcome.strategy);
            for line in &outcome.failures {
                outln!(out, "        {line}");
            }
        }
        rows.push(json!({"file": f, "passed": outcome.passed(), "outcome": outcome}));
    }
    if args.json {
        print_json(&json!({
            "tool": tool_field(&inputs),
            "checks": rows,
            "failed": failed,
        }))?;
    } else {
        emit(&out)?;
    }
    if failed > 0 {
        return Err(crate::exit::gate_failed(format!(
            "{failed} of {} checks failed",
            args.files.len()
        )));
    }
    Ok(())
}
