//! Leave-one-source-out cross-validation of the constants still fitted to training-step rows.
//!
//! Most calibration constants come from microbenchmarks or vendor data (NCCL bus bandwidth,
//! STREAM, cuBLAS tables; see `sim/calibration/*.toml`). One per family is still fitted to
//! measured training steps: the matmul efficiency plateau (`matmul.max_efficiency`) of the A100,
//! H100 and Ascend 910 families ([`FITTED`]). The in-sample fit recorded in those files picks the
//! plateau with the smallest worst-row error over the family's rows in 0.01 steps; it was done
//! by hand. This module writes that procedure in code and repeats it once per source (one
//! publication: the runs file's `source` column) with that source's rows left out, then
//! predicts the left-out rows with the plateau fitted without them.
//!
//! The fit simulates the held-in rows on a grid of plateau values 0.05 apart, walking from the
//! shipped value towards lower criterion until it rises, then searches 0.001 steps between the
//! best grid point's neighbours with each row's prediction interpolated between grid points
//! (the logarithm of the prediction linear in the logarithm of the plateau: compute time is
//! inversely proportional to it). Held-out rows are then simulated exactly at the fitted value.
//! Every simulation is cached per (row, plateau), so folds share them. A family left with no
//! held-in row falls back to its microbenchmark prior ([`PRIORS`]), or to no prediction when
//! it has none: that is what a user of a family without published runs would get.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::regime::Regime;
use super::Prepared;
use crate::cost::Calibration;

/// Families whose matmul plateau was fitted to training-step rows, per the fitting records in
/// `sim/calibration/{a100,h100,ascend910}.toml`. (Their collective costs are not refitted: NCCL's
/// protocol table on the NVIDIA families, HCCL's step cost an assumption, see
/// docs/validation.md.) Other families copy these values or keep starting points, fitted to
/// no row.
pub const FITTED: &[&str] = &["a100", "h100", "ascend910"];

/// Microbenchmark plateaus used when a fold leaves a family without rows: the middle of the
/// cuBLAS ranges the calibration files cite as their starting points.
/// - a100: cuBLAS fp16 GEMMs of 8k-class shapes reach about 250-280 of 312 TFLOP/s (NVIDIA's
///   published cuBLAS A100 benchmarks, quoted in `sim/calibration/a100.toml`): 0.80-0.90.
/// - h100: cuBLAS dense BF16 GEMMs on H100 SXM reach about 650-700 of 989 TFLOP/s (quoted in
///   `sim/calibration/h100.toml`): 0.66-0.71.
///
/// The Ascend 910 has no CANN GEMM table in this repository, so no prior: its rows cannot be
/// cross-validated.
pub const PRIORS: &[(&str, f64)] = &[("a100", 0.85), ("h100", 0.685)];

/// Grid spacing of the simulated plateau values.
const GRID: f64 = 0.05;
/// Resolution of the fitted plateau.
const FINE: f64 = 0.001;
/// Plateau bounds searched.
const LOWEST: f64 = 0.2;
const HIGHEST: f64 = 1.0;

/// What the fit minimises over the held-in rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// The largest |relative error| (the procedure the calibration files record).
    Worst,
    /// The median |log error|.
    Median,
}

impl std::str::FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "worst" => Ok(Criterion::Worst),
            "median" => Ok(Criterion::Median),
            _ => Err(format!(
                "criterion {s:?}: use worst (smallest worst-row error, the calibration files' procedure) or median (smallest median |log error|)"
            )),
        }
    }
}

/// Where a fold's plateau for a family comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Refitted on the held-in rows of the family.
    Refit,
    /// No held-in row: the microbenchmark prior.
    Prior,
    /// No held-in row and no prior: no prediction.
    NoData,
    /// The family's constants are fitted to no row: shipped values, nothing to refit.
    NotFitted,
    /// A row of a file no constant is fitted to (the measured sweeps): its error with the
    /// shipped calibration is already out of sample.
    Unfitted,
}

/// One family's plateau in one fold.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyFit {
    /// Hardware family.
    pub family: String,
    /// The plateau used (`None` with [`Basis::NoData`]).
    pub plateau: Option<f64>,
    /// The shipped plateau.
    pub shipped: f64,
    /// The rows it was fitted on.
    pub rows: Vec<String>,
    /// Where it comes from.
    pub basis: Basis,
}

/// One source left out.
#[derive(Debug, Clone, Serialize)]
pub struct Fold {
    /// The held-out source.
    pub held_out: String,
    /// Its compared rows.
    pub rows: Vec<String>,
    /// The plateau of each family its rows belong to.
    pub fits: Vec<FamilyFit>,
}

/// A compared row's in-sample and cross-validated error, with the features the confidence
/// lookup measures distance over (one line of `sim/validation/confidence.csv`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CvRow {
    /// Row id.
    pub row_id: String,
    /// Its source.
    pub source: String,
    /// A verified, non-calibration row (the gate).
    pub gate: bool,
    /// Whether it fits its family's plateau (gate and calibration rows of fitted families).
    pub fit: bool,
    /// Its features (chip family, size, parallelism mix, sharding, kernel, fp8): the table's
    /// columns from `family` to `fp8`.
    #[serde(flatten)]
    pub regime: Regime,
    /// (predicted − published) / published with the shipped calibration.
    pub in_sample: f64,
    /// The same with its source left out of the fit (`None`: no held-in row and no prior).
    pub cv: Option<f64>,
    /// The plateau it was predicted with when its source was left out.
    pub plateau: Option<f64>,
    /// Where that plateau comes from.
    pub basis: Basis,
}

impl CvRow {
    /// A compared row with its features read from its plan; its held-out error is its
    /// in-sample one until a fold says otherwise (true of [`Basis::Unfitted`] rows).
    pub fn of(p: &Prepared, in_sample: f64, basis: Basis) -> CvRow {
        CvRow {
            row_id: p.result.row_id.clone(),
            source: p.source.clone(),
            gate: p.result.verified && !p.result.calibration,
            fit: false,
            regime: Regime::with_family(
                p.calibration.family.clone(),
                &p.plan.model,
                &p.plan.strategy,
            ),
            in_sample,
            cv: Some(in_sample),
            plateau: None,
            basis,
        }
    }
}

/// Median and worst |error| of a set of rows, in-sample and cross-validated.
#[derive(Debug, Clone, Serialize)]
pub struct Scope {
    /// Which rows.
    pub name: String,
    /// Rows with an in-sample error.
    pub n: usize,
    /// In-sample median |error|.
    pub in_sample_median: Option<f64>,
    /// In-sample worst |error|.
    pub in_sample_max: Option<f64>,
    /// Rows with a cross-validated error.
    pub cv_n: usize,
    /// Cross-validated median |error|.
    pub cv_median: Option<f64>,
    /// Cross-validated worst |error|.
    pub cv_max: Option<f64>,
}

/// The outcome of a leave-one-source-out run.
#[derive(Debug, Clone, Serialize)]
pub struct CrossValidation {
    /// The fit's criterion.
    pub criterion: Criterion,
    /// The fit on every row, by the same procedure (it should land on the shipped plateaus).
    pub all_rows_fit: Vec<FamilyFit>,
    /// One fold per source.
    pub folds: Vec<Fold>,
    /// Every compared row.
    pub rows: Vec<CvRow>,
    /// Summaries: gate rows, all rows, then per family.
    pub scopes: Vec<Scope>,
    /// Distinct simulations run.
    pub simulations: usize,
    /// Wall time, seconds.
    pub wall_s: f64,
}

/// Predictions per (row, plateau), each simulated once.
struct Sims<'a> {
    rows: &'a [Prepared],
    cache: BTreeMap<(usize, u32), Option<f64>>,
    progress: &'a mut dyn FnMut(usize, &str),
}

fn key(p: f64) -> u32 {
    (p * 1e4).round() as u32
}

impl Sims<'_> {
    /// Row `i`'s prediction with its family's plateau at `p` (`None` if the simulation failed).
    fn at(&mut self, i: usize, p: f64) -> Option<f64> {
        if let Some(v) = self.cache.get(&(i, key(p))) {
            return *v;
        }
        let row = &self.rows[i];
        let mut cal: Calibration = row.calibration.clone();
        cal.matmul.max_efficiency = p;
        let v = row.predict(&cal).ok().map(|(v, _)| v);
        self.cache.insert((i, key(p)), v);
        (self.progress)(self.cache.len(), &row.result.row_id);
        v
    }

    /// Row `i`'s prediction at `p`, interpolated between the simulated grid points around it.
    fn interpolated(&mut self, i: usize, p: f64) -> Option<f64> {
        let lo = (p / GRID + 1e-9).floor() * GRID;
        if (p - lo).abs() < 1e-9 {
            return self.at(i, lo);
        }
        let hi = lo + GRID;
        let (a, b) = (self.at(i, lo)?, self.at(i, hi)?);
        let t = (p.ln() - lo.ln()) / (hi.ln() - lo.ln());
        Some((a.ln() + t * (b.ln() - a.ln())).exp())
    }

    /// The criterion over `rows` at plateau `p` (exact on grid points, interpolated between).
    fn criterion(&mut self, rows: &[usize], p: f64, c: Criterion) -> f64 {
        let mut errs: Vec<f64> = Vec::with_capacity(rows.len());
        for &i in rows {
            let Some(pred) = self.interpolated(i, p) else {
                continue;
            };
            let published = self.rows[i].published;
            errs.push(match c {
                Criterion::Worst => (pred / published - 1.0).abs(),
                Criterion::Median => (pred / published).ln().abs(),
            });
        }
        if errs.is_empty() {
            return f64::INFINITY;
        }
        match c {
            Criterion::Worst => errs.iter().copied().fold(0.0, f64::max),
            Criterion::Median => median(&mut errs).unwrap_or(f64::INFINITY),
        }
    }

    /// The plateau minimising the criterion over `rows`, starting from `shipped`.
    fn fit(&mut self, rows: &[usize], shipped: f64, c: Criterion) -> f64 {
        let clamp = |g: f64| g.clamp(LOWEST, HIGHEST);
        let mut best = clamp((shipped / GRID).round() * GRID);
        let mut best_c = self.criterion(rows, best, c);
        // Walk the grid downhill in each direction from the start.
        for dir in [-1.0, 1.0] {
            loop {
                let next = best + dir * GRID;
                if !(LOWEST - 1e-9..=HIGHEST + 1e-9).contains(&next) {
                    break;
                }
                let cn = self.criterion(rows, next, c);
                if cn < best_c {
                    (best, best_c) = (next, cn);
                } else {
                    break;
                }
            }
        }
        // Fine search between the best grid point's neighbours.
        let (lo, hi) = (clamp(best - GRID), clamp(best + GRID));
        let steps = ((hi - lo) / FINE).round() as u32;
        let mut fine = (best, best_c);
        for s in 0..=steps {
            let p = lo + f64::from(s) * FINE;
            let cp = self.criterion(rows, p, c);
            if cp < fine.1 - 1e-12 {
                fine = (p, cp);
            }
        }
        (fine.0 / FINE).round() * FINE
    }
}

/// Median of a slice (sorted in place).
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn prior(family: &str) -> Option<f64> {
    PRIORS.iter().find(|(f, _)| *f == family).map(|(_, p)| *p)
}

/// Leave-one-source-out cross-validation over prepared rows. `known[i]`, when given, is row
/// `i`'s prediction under its shipped calibration (already simulated by the caller). `progress`
/// is called after each new simulation with the number run so far and the row's id. Rows whose
/// shipped simulation fails are left out.
pub fn cross_validate(
    rows: &[Prepared],
    known: &[Option<f64>],
    criterion: Criterion,
    progress: &mut dyn FnMut(usize, &str),
) -> CrossValidation {
    let t0 = Instant::now();
    let shipped = |i: usize| rows[i].calibration.matmul.max_efficiency;
    let cache = known
        .iter()
        .enumerate()
        .filter(|(i, k)| *i < rows.len() && k.is_some())
        .map(|(i, k)| ((i, key(shipped(i))), *k))
        .collect();
    let mut sims = Sims {
        rows,
        cache,
        progress,
    };
    // In-sample: the shipped calibration.
    let in_sample: Vec<Option<f64>> = (0..rows.len())
        .map(|i| sims.at(i, shipped(i)).map(|v| v / rows[i].published - 1.0))
        .collect();
    let compared: Vec<usize> = (0..rows.len())
        .filter(|&i| in_sample[i].is_some())
        .collect();
    let family = |i: usize| rows[i].calibration.family.clone();
    let fit_row = |i: usize| {
        let r = &rows[i].result;
        (r.verified || r.calibration) && FITTED.contains(&rows[i].calibration.family.as_str())
    };
    let mut families: Vec<String> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for &i in &compared {
        if !families.contains(&family(i)) {
            families.push(family(i));
        }
        if !sources.contains(&rows[i].source) {
            sources.push(rows[i].source.clone());
        }
    }
    let fit_family = |sims: &mut Sims<'_>, f: &str, held_out: Option<&str>| -> FamilyFit {
        let members: Vec<usize> = compared
            .iter()
            .copied()
            .filter(|&i| family(i) == f && fit_row(i))
            .collect();
        let ship = members
            .first()
            .or_else(|| compared.iter().find(|&&i| family(i) == f))
            .map_or(0.0, |&i| shipped(i));
        let held_in: Vec<usize> = members
            .into_iter()
            .filter(|&i| held_out != Some(rows[i].source.as_str()))
            .collect();
        let (plateau, basis) = if !FITTED.contains(&f) {
            (Some(ship), Basis::NotFitted)
        } else if held_in.is_empty() {
            match prior(f) {
                Some(p) => (Some(p), Basis::Prior),
                None => (None, Basis::NoData),
            }
        } else {
            (Some(sims.fit(&held_in, ship, criterion)), Basis::Refit)
        };
        FamilyFit {
            family: f.to_string(),
            plateau,
            shipped: ship,
            rows: held_in
                .iter()
                .map(|&i| rows[i].result.row_id.clone())
                .collect(),
            basis,
        }
    };
    let all_rows_fit: Vec<FamilyFit> = families
        .iter()
        .map(|f| fit_family(&mut sims, f, None))
        .collect();
    let mut folds = Vec::new();
    let mut cv: Vec<(Option<f64>, Option<f64>, Basis)> =
        vec![(None, None, Basis::NoData); rows.len()];
    for s in &sources {
        let members: Vec<usize> = compared
            .iter()
            .copied()
            .filter(|&i| &rows[i].source == s)
            .collect();
        let mut fits = Vec::new();
        for f in &families {
            if !members.iter().any(|&i| &family(i) == f) {
                continue;
            }
            let fit = fit_family(&mut sims, f, Some(s));
            for &i in members.iter().filter(|&&i| &family(i) == f) {
                let err = fit
                    .plateau
                    .and_then(|p| sims.at(i, p))
                    .map(|v| v / rows[i].published - 1.0);
                cv[i] = (err, fit.plateau, fit.basis);
            }
            fits.push(fit);
        }
        folds.push(Fold {
            held_out: s.clone(),
            rows: members
                .iter()
                .map(|&i| rows[i].result.row_id.clone())
                .collect(),
            fits,
        });
    }
    let out_rows: Vec<CvRow> = compared
        .iter()
        .map(|&i| {
            let p = &rows[i];
            let mut r = CvRow::of(p, in_sample[i].unwrap_or(f64::NAN), cv[i].2);
            r.fit = fit_row(i);
            r.cv = cv[i].0;
            r.plateau = cv[i].1;
            r
        })
        .collect();
    let scopes = scopes(&out_rows, &families);
    CrossValidation {
        criterion,
        all_rows_fit,
        folds,
        rows: out_rows,
        scopes,
        simulations: sims.cache.len(),
        wall_s: t0.elapsed().as_secs_f64(),
    }
}

/// One summary over the rows `keep` selects.
fn scope(name: String, rows: &[CvRow], keep: impl Fn(&CvRow) -> bool) -> Scope {
    let mut ins: Vec<f64> = rows
        .iter()
        .filter(|r| keep(r))
        .map(|r| r.in_sample.abs())
        .collect();
    let mut cvs: Vec<f64> = rows
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| r.cv.map(f64::abs))
        .collect();
    Scope {
        name,
        n: ins.len(),
        in_sample_max: ins.iter().copied().reduce(f64::max),
        in_sample_median: median(&mut ins),
        cv_n: cvs.len(),
        cv_max: cvs.iter().copied().reduce(f64::max),
        cv_median: median(&mut cvs),
    }
}

/// Gate rows, all rows, then each family's gate rows (where it has any) and all its rows.
fn scopes(rows: &[CvRow], families: &[String]) -> Vec<Scope> {
    let mut out = vec![
        scope("verified rows (the gate)".into(), rows, |r| r.gate),
        scope("all compared rows".into(), rows, |_| true),
    ];
    for f in families {
        if rows.iter().any(|r| &r.regime.family == f && r.gate) {
            out.push(scope(format!("{f}, verified"), rows, |r| {
                &r.regime.family == f && r.gate
            }));
        }
        out.push(scope(format!("{f}, all"), rows, |r| &r.regime.family == f));
    }
    out
}
