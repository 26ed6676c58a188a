//! Strategy regression checks: a TOML file names a model, a cluster, a strategy and what the
//! team expects of it; a check fails when the strategy stops fitting or gets slower.
//!
//! ```toml
//! model = "pangu-alpha-200b"          # preset name or model TOML file
//! cluster = "ascend910:2048"          # preset[:N] or cluster TOML file[:N]
//! [strategy]                          # strategy-file keys
//! tp = 8
//! pp = 16
//! [expect]
//! fits = true
//! max_step_time_s = 11.0
//! min_mfu = 0.10
//! [baseline]                          # recorded by `pangu check --update`
//! step_time_s = 10.238
//! tolerance = 0.05                    # ±5 % around the baseline
//! ```
//!
//! From Rust: `pangu_sim::check::check_file("checks/200b.toml")?` returns the outcome; a
//! test asserts `outcome.passed()`.

use std::path::Path;

use pangu_hardware::{split_count, Cluster};
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};
use serde::{Deserialize, Serialize};

use crate::SimError;

/// Expectations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The plan must fit in memory.
    #[serde(default)]
    pub fits: Option<bool>,
    /// Upper bound on the simulated step time.
    #[serde(default)]
    pub max_step_time_s: Option<f64>,
    /// Lower bound on MFU (fraction).
    #[serde(default)]
    pub min_mfu: Option<f64>,
}

/// A recorded baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Step time when recorded.
    pub step_time_s: f64,
    /// Allowed relative change (0.05 = ±5 %).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_tolerance() -> f64 {
    0.05
}

/// A check file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    /// Model preset or file.
    pub model: String,
    /// Cluster preset or file, with `:N`.
    pub cluster: String,
    /// Strategy keys.
    #[serde(default)]
    pub strategy: StrategySpec,
    /// Expectations.
    #[serde(default)]
    pub expect: Expect,
    /// Baseline.
    #[serde(default)]
    pub baseline: Option<Baseline>,
}

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Strategy summary.
    pub strategy: String,
    /// Whether the plan fits.
    pub fits: bool,
    /// Simulated step time (None when the plan does not fit or is invalid).
    pub step_time_s: Option<f64>,
    /// MFU.
    pub mfu: Option<f64>,
    /// Failed expectations, each a readable line.
    pub failures: Vec<String>,
}

impl Outcome {
    /// No expectation failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn is_file(s: &str) -> bool {
    s.ends_with(".toml") || s.ends_with(".json") || s.contains('/')
}

/// Resolves a path relative to the check file's folder.
fn near(base: &Path, s: &str) -> String {
    if is_file(s) && !Path::new(s).is_absolute() {
        base.join(s).to_string_lossy().into_owned()
    } else {
        s.to_string()
    }
}

impl CheckFile {
    /// Parses a check file; errors name the key.
    pub fn from_toml(text: &str, source: &str) -> Result<CheckFile, SimError> {
        let c: CheckFile = toml::from_str(text)
            .map_err(|e| SimError::Input(format!("check file {source}: {e}")))?;
        if let Some(b) = &c.baseline {
            if !(b.step_time_s.is_finite()
                && b.step_time_s > 0.0
                && b.tolerance.is_finite()
                && b.tolerance >= 0.0)
            {
                return Err(SimError::Input(format!(
                    "check file {source}: baseline.step_time_s must be > 0 and baseline.tolerance ≥ 0"
                )));
            }
        }
        Ok(c)
    }

    /// Runs the check; `dir` resolves relative model and cluster files.
    pub fn run(&self, dir: &Path) -> Result<Outcome, SimError> {
        let model_arg = near(dir, &self.model);
        let model = pangu_model::load(&model_arg)
            .map_err(|e| SimError::Input(e.to_string()))?
            .config;
        let (name, count) =
            split_count(&self.cluster).map_err(|e| SimError::Input(e.to_string()))?;
        let cluster = if is_file(name) {
            let path = near(dir, name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| SimError::Input(format!("{path}: {e}")))?;
            Cluster::from_toml(&text, &path, count)
        } else {
            Cluster::from_name(&self.cluster)
        }
        .map_err(|e| SimError::Input(e.to_string()))?;
        let r = resolve_inputs(&model, Some(cluster), &self.strategy)
            .map_err(|e| SimError::Input(e.to_string()))?;
        let plan = Plan::build(&r.model, &r.cluster, &r.strategy)
            .map_err(|e| SimError::Input(e.to_string()))?;
        let mut out = Outcome {
            strategy: plan.strategy.summary(),
            fits: plan.fits(),
            step_time_s: None,
            mfu: None,
            failures: Vec::new(),
        };
        if !plan.fits() {
            if self.expect.fits != Some(false) {
                out.failures.push(format!(
                    "does not fit: {} per device > {} usable",
                    plan.max_memory().total,
                    plan.capacity
                ));
            }
            return Ok(out);
        }
        if self.expect.fits == Some(false) {
            out.failures
                .push("fits, but the check expects it not to".into());
        }
        let rep = crate::simulate(&plan)?.report;
        out.step_time_s = Some(rep.step_time_s);
        out.mfu = Some(rep.mfu);
        if let Some(max) = self.expect.max_step_time_s {
            if rep.step_time_s > max {
                out.failures.push(format!(
                    "step time {:.4} s > expected at most {max} s",
                    rep.step_time_s
                ));
            }
        }
        if let Some(min) = self.expect.min_mfu {
            if rep.mfu < min {
                out.failures
                    .push(format!("MFU {:.4} < expected at least {min}", rep.mfu));
            }
        }
        if let Some(b) = &self.baseline {
            let change = rep.step_time_s / b.step_time_s - 1.0;
            if change.abs() > b.tolerance {
                out.failures.push(format!(
                    "step time {:.4} s is {:+.1} % from the baseline {} s (tolerance ±{:.1} %); `pangu check --update` records a new baseline",
                    rep.step_time_s,
                    change * 100.0,
                    b.step_time_s,
                    b.tolerance * 100.0
                ));
            }
        }
        Ok(out)
    }
}

/// Reads and runs a check file.
pub fn check_file(path: impl AsRef<Path>) -> Result<Outcome, SimError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| SimError::Input(format!("{}: {e}", path.display())))?;
    let c = CheckFile::from_toml(&text, &path.display().to_string())?;
    c.run(path.parent().unwrap_or(Path::new(".")))
}

/// The file's text with its `[baseline]` table set to `step_time_s` (other text, comments
/// included, kept as it was).
pub fn with_baseline(text: &str, step_time_s: f64, tolerance: f64) -> String {
    let block = format!("[baseline]\nstep_time_s = {step_time_s}\ntolerance = {tolerance}\n");
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "[baseline]" {
            skipping = true;
            replaced = true;
            out.push_str(&block);
            continue;
        }
        if skipping && t.starts_with('[') {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str("# recorded by `pangu check --update`\n");
        out.push_str(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_block_is_replaced_or_added_and_comments_kept() {
        let t = "# mine\nmodel = \"x\"\ncluster = \"y\"\n[baseline]\nstep_time_s = 1.0\ntolerance = 0.1\n[expect]\nfits = true\n";
        let u = with_baseline(t, 2.5, 0.05);
        assert!(
            u.contains("# mine")
                && u.contains("step_time_s = 2.5")
                && u.contains("[expect]\nfits = true")
        );
        assert!(!u.contains("step_time_s = 1.0"));
        let v = with_baseline("model = \"x\"\ncluster = \"y\"\n", 3.0, 0.05);
        assert!(
            v.ends_with("[baseline]\nstep_time_s = 3\ntolerance = 0.05\n"),
            "{v}"
        );
        CheckFile::from_toml(&v, "v").unwrap();
    }

    #[test]
    fn malformed_files_name_the_key() {
        let e = CheckFile::from_toml(
            "model = \"x\"\ncluster = \"y\"\n[expect]\nmax_step = 3\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_step"), "{e}");
        let e = CheckFile::from_toml(
            "model = \"x\"\ncluster = \"y\"\n[baseline]\nstep_time_s = -1\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("baseline.step_time_s"), "{e}");
        let e = CheckFile::from_toml("cluster = \"y\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model"), "{e}");
    }
}
