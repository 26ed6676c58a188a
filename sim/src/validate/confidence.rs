//! How sure a prediction is: the cross-validated error of the published runs nearest to it.
//!
//! `sim/validation/confidence.csv` holds, per compared row of `published-runs.csv`, its
//! features and its leave-one-source-out error ([`super::crossval`]); it is written by
//! `pangu validate --cross-validate --write-confidence sim/validation/confidence.csv` and
//! compiled in. A plan's [`Regime`] (chip family, model size, tp, pp, dp, optimizer sharding)
//! is compared with each row's by [`distance`]; the rows within [`SPREAD`] of the nearest
//! form the regime whose cross-validated error is reported, with a warning when even the
//! nearest is further than [`NEAR`].

use std::sync::OnceLock;

use pangu_hardware::ChipSpec;
use pangu_model::ModelConfig;
use pangu_strategies::{OptShard, Plan, Strategy};
use serde::Serialize;

use super::crossval::{median, CrossValidation, CvRow};
use crate::cost::Calibration;
use crate::SimError;

/// The shipped table (generated; see the module documentation).
const SHIPPED: &str = include_str!("../../validation/confidence.csv");

/// The command that writes [`SHIPPED`].
pub const REGENERATE: &str =
    "pangu validate --cross-validate --write-confidence sim/validation/confidence.csv";

/// Distance beyond which the nearest row no longer vouches for a plan.
pub const NEAR: f64 = 1.0;
/// Rows within this much of the nearest one's distance form its regime.
pub const SPREAD: f64 = 0.5;
/// The error band stated when no validated run is near.
pub const FAR_BAND: &str = "±50 %";

/// What a prediction's confidence is measured over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regime {
    /// Calibration family of the chip.
    pub family: String,
    /// Model parameters, billions.
    pub params_b: f64,
    /// Tensor-parallel size.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Data-parallel size.
    pub dp: u32,
    /// Optimizer sharding level.
    pub sharding: String,
}

impl Regime {
    /// The regime of a model, chip and resolved strategy.
    pub fn new(model: &ModelConfig, chip: &ChipSpec, s: &Strategy) -> Result<Regime, SimError> {
        Ok(Regime {
            family: Calibration::for_chip(chip)?.family,
            params_b: model.params().total as f64 / 1e9,
            tp: s.tp,
            pp: s.pp,
            dp: s.dp,
            sharding: s.opt_shard.to_string(),
        })
    }

    /// The regime of a plan.
    pub fn of_plan(plan: &Plan) -> Result<Regime, SimError> {
        Regime::new(&plan.model, &plan.cluster.spec.chip, &plan.strategy)
    }

    /// A published row's regime.
    fn of_row(r: &CvRow) -> Regime {
        Regime {
            family: r.family.clone(),
            params_b: r.params_b,
            tp: r.tp,
            pp: r.pp,
            dp: r.dp,
            sharding: r.sharding.clone(),
        }
    }

    /// E.g. `tp8·pp16·dp16`, with the sharding level when there is one.
    fn mix(&self) -> String {
        let mut s = format!("tp{}·pp{}·dp{}", self.tp, self.pp, self.dp);
        if self.sharding != OptShard::None.to_string() {
            s.push('·');
            s.push_str(&self.sharding);
        }
        s
    }
}

/// Distance between two regimes of one family (infinite across families: each has its own
/// constants). One unit is any of: a factor 4 in parameters, 8 in tp or in pp, 16 in dp, or
/// ZeRO-3 against not; a different non-ZeRO-3 sharding level adds 0.25. The weights follow
/// where the validation error is known to move (docs/validation.md, "Known weak regimes"):
/// ZeRO-3 at scale and one-node runs with small models behave unlike their neighbours, and
/// the data-parallel size matters less than model parallelism as long as ZeRO-3 is off.
pub fn distance(a: &Regime, b: &Regime) -> f64 {
    if a.family != b.family {
        return f64::INFINITY;
    }
    let ratio = |x: f64, y: f64| (x.max(1e-9) / y.max(1e-9)).ln().abs();
    let lg = |x: u32, y: u32| ratio(f64::from(x.max(1)), f64::from(y.max(1))) / 2f64.ln();
    let zero3 = OptShard::Zero3.to_string();
    let shard = if (a.sharding == zero3) != (b.sharding == zero3) {
        1.0
    } else if a.sharding != b.sharding {
        0.25
    } else {
        0.0
    };
    ratio(a.params_b, b.params_b) / 4f64.ln()
        + lg(a.tp, b.tp) / 3.0
        + lg(a.pp, b.pp) / 3.0
        + lg(a.dp, b.dp) / 4.0
        + shard
}

/// One published row near a plan.
#[derive(Debug, Clone, Serialize)]
pub struct Neighbour {
    /// Row id.
    pub row_id: String,
    /// Its distance from the plan.
    pub distance: f64,
    /// Its cross-validated error.
    pub cv_error: f64,
}

/// A prediction's confidence.
#[derive(Debug, Clone, Serialize)]
pub struct Confidence {
    /// The plan's regime.
    pub regime: Regime,
    /// The regime's rows (nearest first); empty when none is cross-validated on the family.
    pub nearest: Vec<Neighbour>,
    /// Median cross-validated |error| of those rows.
    pub cv_median: Option<f64>,
    /// Worst cross-validated |error| of those rows.
    pub cv_max: Option<f64>,
    /// Set when the nearest row is further than [`NEAR`] or there is none.
    pub warning: Option<String>,
    /// The line to print beside the prediction.
    pub line: String,
}

/// `13B`, `2.6B`, `13-70B`.
fn size_range(lo: f64, hi: f64) -> String {
    let f = |x: f64| {
        if x < 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.0}")
        }
    };
    if f(lo) == f(hi) {
        format!("{}B", f(lo))
    } else {
        format!("{}-{}B", f(lo), f(hi))
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", 100.0 * x)
}

/// The confidence of a regime against a table of cross-validated rows.
pub fn lookup(regime: &Regime, table: &[CvRow]) -> Confidence {
    let mut near: Vec<(f64, &CvRow, f64)> = table
        .iter()
        .filter_map(|r| {
            r.cv.map(|e| (distance(regime, &Regime::of_row(r)), r, e.abs()))
        })
        .filter(|(d, _, _)| d.is_finite())
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.row_id.cmp(&b.1.row_id)));
    let Some(&(d0, first, e0)) = near.first() else {
        let on_family = table.iter().filter(|r| r.family == regime.family).count();
        let why = if on_family > 0 {
            format!("its {on_family} published run(s) calibrate the family and cannot validate it")
        } else {
            "no published run on this family".to_string()
        };
        let warning = format!(
            "no cross-validated run on {} ({why}); treat this prediction as {FAR_BAND}",
            regime.family
        );
        return Confidence {
            regime: regime.clone(),
            nearest: Vec::new(),
            cv_median: None,
            cv_max: None,
            line: format!("warning: {warning}"),
            warning: Some(warning),
        };
    };
    let regime_rows: Vec<&(f64, &CvRow, f64)> =
        near.iter().filter(|(d, _, _)| *d <= d0 + SPREAD).collect();
    let mut errs: Vec<f64> = regime_rows.iter().map(|x| x.2).collect();
    let cv_max = errs.iter().copied().reduce(f64::max);
    let cv_median = median(&mut errs);
    let nearest: Vec<Neighbour> = regime_rows
        .iter()
        .map(|(d, r, e)| Neighbour {
            row_id: r.row_id.clone(),
            distance: *d,
            cv_error: *e,
        })
        .collect();
    let first_regime = Regime::of_row(first);
    let (warning, line) = if d0 > NEAR {
        let w = format!(
            "no validated run within distance {NEAR} of this plan (nearest: {}, {} {} {}, distance {d0:.1}, cross-validated |err| {}); treat this prediction as {FAR_BAND}",
            first.row_id,
            first.family,
            size_range(first.params_b, first.params_b),
            first_regime.mix(),
            pct(e0)
        );
        (Some(w.clone()), format!("warning: {w}"))
    } else {
        let lo = regime_rows
            .iter()
            .map(|x| x.1.params_b)
            .fold(f64::INFINITY, f64::min);
        let hi = regime_rows.iter().map(|x| x.1.params_b).fold(0.0, f64::max);
        let line = format!(
            "confidence: nearest validated regime ({}, {}, {}) cross-validated |err| {} (worst {}, n={}, distance {d0:.1})",
            first.family,
            size_range(lo, hi),
            first_regime.mix(),
            pct(cv_median.unwrap_or(e0)),
            pct(cv_max.unwrap_or(e0)),
            regime_rows.len()
        );
        (None, line)
    };
    Confidence {
        regime: regime.clone(),
        nearest,
        cv_median,
        cv_max,
        warning,
        line,
    }
}

/// Parses a confidence table (CSV, `#` comment lines).
pub fn read_table(text: &str, source: &str) -> Result<Vec<CvRow>, SimError> {
    let mut rd = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    rd.deserialize()
        .enumerate()
        .map(|(i, r)| {
            r.map_err(|e| {
                SimError::Input(format!(
                    "{source}: row {}: {e}; regenerate it with `{REGENERATE}`",
                    i + 1
                ))
            })
        })
        .collect()
}

/// Writes a cross-validation as a confidence table (values rounded so that regenerating it
/// gives the same bytes).
pub fn write_table(cv: &CrossValidation, runs: &str) -> Result<String, SimError> {
    let r4 = |x: f64| (x * 1e4).round() / 1e4;
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &cv.rows {
        let mut r = r.clone();
        r.params_b = (r.params_b * 100.0).round() / 100.0;
        r.in_sample = r4(r.in_sample);
        r.cv = r.cv.map(r4);
        r.plateau = r.plateau.map(r4);
        w.serialize(&r)
            .map_err(|e| SimError::Input(format!("confidence table: {e}")))?;
    }
    let body = w
        .into_inner()
        .map_err(|e| SimError::Input(format!("confidence table: {e}")))?;
    let body =
        String::from_utf8(body).map_err(|e| SimError::Input(format!("confidence table: {e}")))?;
    Ok(format!(
        "# Leave-one-source-out errors of {runs} (criterion: {:?}); generated by `{REGENERATE}`, do not edit.\n{body}",
        cv.criterion
    ))
}

/// The shipped table, parsed once.
pub fn shipped() -> Result<&'static [CvRow], SimError> {
    static TABLE: OnceLock<Result<Vec<CvRow>, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            read_table(SHIPPED, "sim/validation/confidence.csv").map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| SimError::Input(e.clone()))
}

/// The confidence of a prediction for `regime`, against the shipped table.
pub fn confidence(regime: &Regime) -> Result<Confidence, SimError> {
    Ok(lookup(regime, shipped()?))
}
