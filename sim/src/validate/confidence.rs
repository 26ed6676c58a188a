//! How sure a prediction is: the held-out error of the measured runs nearest to it.
//!
//! `sim/validation/confidence.csv` holds, per compared row of `published-runs.csv`, its
//! features and its leave-one-source-out error ([`super::crossval`]), then the compared rows
//! of the measured sweeps (`sweeps.csv`), which no constant is fitted to, with their error as
//! it is ([`Basis::Unfitted`]). It is written by [`REGENERATE`] and compiled in. A plan's
//! [`Regime`] (chip family, model size, tp, pp, dp, optimizer sharding, attention kernel, fp8)
//! is compared with each row's by [`distance`]; the rows within [`SPREAD`] of the nearest
//! form the regime whose cross-validated error is reported, with a warning when even the
//! nearest is further than [`NEAR`].

use std::sync::OnceLock;

use serde::Serialize;

use super::crossval::{median, Basis, CrossValidation, CvRow};
pub use super::regime::{distance, Regime};
use super::Prepared;
use crate::SimError;

/// The shipped table (generated; see the module documentation).
const SHIPPED: &str = include_str!("../../validation/confidence.csv");

/// The command that writes [`SHIPPED`].
pub const REGENERATE: &str = "pangu validate --cross-validate --write-confidence sim/validation/confidence.csv --also-unfitted sim/validation/sweeps.csv";

/// Distance beyond which the nearest row no longer vouches for a plan.
pub const NEAR: f64 = 1.0;
/// Rows within this much of the nearest one's distance form its regime.
pub const SPREAD: f64 = 0.5;
/// The error band stated when no validated run is near.
pub const FAR_BAND: &str = "±50 %";

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
        .filter_map(|r| r.cv.map(|e| (distance(regime, &r.regime), r, e.abs())))
        .filter(|(d, _, _)| d.is_finite())
        .collect();
    near.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.row_id.cmp(&b.1.row_id)));
    let Some(&(d0, first, e0)) = near.first() else {
        let on_family = table
            .iter()
            .filter(|r| r.regime.family == regime.family)
            .count();
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
    let first_regime = &first.regime;
    let (warning, line) = if d0 > NEAR {
        let w = format!(
            "no validated run within distance {NEAR} of this plan (nearest: {}, {} {} {}, distance {d0:.1}, cross-validated |err| {}); treat this prediction as {FAR_BAND}",
            first.row_id,
            first_regime.family,
            size_range(first_regime.params_b, first_regime.params_b),
            first_regime.mix(),
            pct(e0)
        );
        (Some(w.clone()), format!("warning: {w}"))
    } else {
        let lo = regime_rows
            .iter()
            .map(|x| x.1.regime.params_b)
            .fold(f64::INFINITY, f64::min);
        let hi = regime_rows
            .iter()
            .map(|x| x.1.regime.params_b)
            .fold(0.0, f64::max);
        let line = format!(
            "confidence: nearest validated regime ({}, {}, {}) cross-validated |err| {} (worst {}, n={}, distance {d0:.1})",
            first_regime.family,
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

/// The table's columns, in order: [`CvRow`]'s fields with its regime's in place.
const COLUMNS: [&str; 16] = [
    "row_id",
    "source",
    "gate",
    "fit",
    "family",
    "params_b",
    "tp",
    "pp",
    "dp",
    "sharding",
    "attention",
    "fp8",
    "in_sample",
    "cv",
    "plateau",
    "basis",
];

/// The lines of rows no constant is fitted to (the measured sweeps): each compared row with
/// its error under the shipped calibration, which is already out of sample. `errors[i]` is
/// row `i`'s error (`None`: not compared).
pub fn unfitted_rows(rows: &[Prepared], errors: &[Option<f64>]) -> Vec<CvRow> {
    rows.iter()
        .zip(errors)
        .filter_map(|(p, e)| e.map(|e| CvRow::of(p, e, Basis::Unfitted)))
        .collect()
}

/// Writes a cross-validation of `runs` as a confidence table (values rounded so that
/// regenerating it gives the same bytes), followed by the `unfitted` rows of `also`.
pub fn write_table(
    cv: &CrossValidation,
    runs: &str,
    unfitted: &[CvRow],
    also: &[String],
) -> Result<String, SimError> {
    let r4 = |x: f64| (x * 1e4).round() / 1e4;
    let bad = |e: String| SimError::Input(format!("confidence table: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS).map_err(|e| bad(e.to_string()))?;
    for r in cv.rows.iter().chain(unfitted) {
        let mut r = r.clone();
        r.regime.params_b = (r.regime.params_b * 100.0).round() / 100.0;
        r.in_sample = r4(r.in_sample);
        r.cv = r.cv.map(r4);
        r.plateau = r.plateau.map(r4);
        // The csv crate reads a flattened struct but cannot write one: go through JSON.
        let v = serde_json::to_value(&r).map_err(|e| bad(e.to_string()))?;
        let fields = v.as_object().map_or(0, serde_json::Map::len);
        if fields != COLUMNS.len() {
            return Err(bad(format!(
                "a row has {fields} fields and COLUMNS names {}",
                COLUMNS.len()
            )));
        }
        // JSON writes a non-finite number as null, which would read back as a missing value.
        let finite = [Some(r.in_sample), r.cv, r.plateau, Some(r.regime.params_b)];
        if finite.iter().flatten().any(|x| !x.is_finite()) {
            return Err(bad(format!("{}: a non-finite error or size", r.row_id)));
        }
        let mut cells = Vec::with_capacity(COLUMNS.len());
        for c in COLUMNS {
            cells.push(match v.get(c) {
                None => return Err(bad(format!("no field {c} in a row: update COLUMNS"))),
                Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            });
        }
        w.write_record(&cells).map_err(|e| bad(e.to_string()))?;
    }
    let body = w.into_inner().map_err(|e| bad(e.to_string()))?;
    let body = String::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let also = if also.is_empty() {
        String::new()
    } else {
        format!(
            ", then the rows of {} (fitted to nothing: basis unfitted, their shipped error)",
            also.join(", ")
        )
    };
    Ok(format!(
        "# Leave-one-source-out errors of {runs} (criterion: {:?}){also}; generated by `{REGENERATE}`, do not edit.\n{body}",
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
