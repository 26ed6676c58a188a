//! Predicted against published: simulate rows of a published-runs CSV.
//!
//! Any CSV with the columns of `sim/validation/published-runs.csv` works; new rows need no code.
//! Each row becomes a model (shape columns; family from the model name: PanGu-α gets the query
//! layer, MPT has no biases and ALiBi), a cluster (the preset of its accelerator, `n_chips`
//! chips) and a strategy (tp, pp, dp, interleaving, sequence parallelism, micro-batch, global
//! batch, recompute, ZeRO stage, precision). What a row leaves unstated is assumed and the
//! assumption printed with the row. A row is compared on the first of step time, TFLOP/s per
//! chip, tokens/s per chip and MFU that it states (not derived), in the row's own convention:
//! - TFLOP/s per chip from Narayanan et al. 2021 counts recompute (their eq. 3,
//!   `96·B·s·l·h²·(1 + s/6h + V/16lh)` per step);
//! - MFU from Korthikanti et al. 2022 uses `72·B·s·l·h²·(1 + s/6h + V/12lh)` per step;
//! - other MFU figures use `6·N + 12·L·s·d` per token (PaLM; llm-foundry's formula).

use std::collections::HashMap;

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::{OptShard, Plan, Precision, Remat, ScheduleKind, StrategySpec};
use serde::Serialize;

use crate::cost::Calibration;
use crate::SimError;

pub mod confidence;
pub mod crossval;
mod ranking;
mod regime;

pub use ranking::{rank_groups, spearman, GroupRanking};

mod cells;
mod shape;

pub use cells::Row;
use cells::{field, int, num};

/// Which figure a row is compared on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Seconds per step.
    StepTime,
    /// TFLOP/s per chip in the source's convention.
    TflopsPerChip,
    /// Tokens per second per chip.
    TokensPerSPerChip,
    /// Model FLOPs utilisation (fraction).
    Mfu,
}

/// The outcome of one row.
#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    /// Row id.
    pub row_id: String,
    /// Model name as the row gives it.
    pub model: String,
    /// `verification` column.
    pub verification: String,
    /// Whether the row is a `verified` pass/fail row.
    pub verified: bool,
    /// Whether the row calibrates its hardware family (the Ascend 910 rows) and so cannot
    /// validate it.
    pub calibration: bool,
    /// Compared figure.
    pub metric: Option<Metric>,
    /// Simulated value (MFU as a fraction).
    pub predicted: Option<f64>,
    /// Published value (MFU as a fraction).
    pub published: Option<f64>,
    /// (predicted − published) / published.
    pub error: Option<f64>,
    /// Values the row does not state and were assumed.
    pub assumptions: Vec<String>,
    /// Why the row was not simulated.
    pub skipped: Option<String>,
    /// The strategy simulated.
    pub strategy: Option<String>,
    /// Whether the run was folded.
    pub folded: bool,
    /// The group whose strategies are ranked together: the row's `group` column, else its
    /// model shape, accelerator and chip count.
    pub group: String,
}

/// Per-row values a CSV leaves unstated: strategy keys plus a `note` naming the source.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assumption {
    /// Where the values come from.
    pub note: String,
    /// Strategy values (strategy-file keys).
    #[serde(flatten)]
    pub spec: StrategySpec,
}

/// Reads an assumptions file: a table per row id.
pub fn read_assumptions(text: &str, source: &str) -> Result<HashMap<String, Assumption>, SimError> {
    toml::from_str(text).map_err(|e| SimError::Input(format!("{source}: {e}")))
}

fn derived(r: &Row, k: &str) -> bool {
    field(r, "derived_fields")
        .split(';')
        .any(|d| d.trim().starts_with(k))
}

/// Reads a CSV (the columns of `published-runs.csv`).
pub fn read_rows(text: &str, source: &str) -> Result<Vec<Row>, SimError> {
    let mut rd = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = rd
        .headers()
        .map_err(|e| SimError::Input(format!("{source}: {e}")))?
        .clone();
    for need in [
        "row_id",
        "model",
        "layers",
        "hidden",
        "heads",
        "accelerator",
        "n_chips",
        "tp",
        "pp",
        "dp",
    ] {
        if !headers.iter().any(|h| h == need) {
            return Err(SimError::Input(format!(
                "{source}: missing column {need:?} (see sim/validation/published-runs.csv)"
            )));
        }
    }
    let mut rows = Vec::new();
    for (i, rec) in rd.records().enumerate() {
        let rec = rec.map_err(|e| SimError::Input(format!("{source}: row {}: {e}", i + 2)))?;
        rows.push(
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

struct Setup {
    model: ModelConfig,
    cluster: Cluster,
    spec: StrategySpec,
    metric: Metric,
    published: f64,
    assumptions: Vec<String>,
}

fn cluster_preset(acc: &str) -> Option<&'static str> {
    let a = acc.to_ascii_lowercase();
    if a.contains("a100") && a.contains("40") {
        Some("dgx-a100-40g")
    } else if a.contains("a100") {
        Some("dgx-a100-80g")
    } else if a.contains("h100") {
        Some("dgx-h100")
    } else if a.contains("h200") {
        Some("dgx-h200")
    } else if a.contains("gb200") {
        Some("gb200-nvl72")
    } else if a.contains("b200") {
        Some("dgx-b200")
    } else if a.contains("v100") {
        Some("dgx2-v100")
    } else if a.contains("910b") {
        Some("ascend910b")
    } else if a.contains("910c") || a.contains("cloudmatrix") {
        Some("cloudmatrix384")
    } else if a.contains("ascend") {
        Some("ascend910")
    } else {
        None
    }
}

/// The row's precision: fp8 where its linears ran in fp8 ("fp8", torchao's "float8") and the
/// chip has fp8 tensor cores, bf16 where it says bf16, else fp16 mixed precision ("fp16
/// mixed", "amp", "16-bit mixed"). A row trained in fp32 alone is not modelled: whether its
/// products ran on TF32 tensor cores is not stated, and the two differ eightfold on an H100.
fn precision_of(r: &Row, cluster: &Cluster) -> Result<Precision, String> {
    let p = field(r, "precision").to_ascii_lowercase();
    let chip = &cluster.spec.chip;
    Ok(
        if (p.contains("fp8") || p.contains("float8")) && chip.fp8.is_some() {
            Precision::Fp8
        } else if p.contains("bf16") && chip.bf16.is_some() {
            Precision::Bf16
        } else if p.starts_with("fp32") {
            return Err(
                "fp32 training: whether its products ran on TF32 tensor cores is not stated \
                 (the simulator prices fp32 products on the non-tensor units)"
                    .into(),
            );
        } else {
            Precision::Fp16
        },
    )
}

fn setup(r: &Row, extra: Option<&Assumption>) -> Result<Setup, String> {
    let mut assumptions = Vec::new();
    let mut model = shape::model_of(r, &mut assumptions)?;
    let acc = field(r, "accelerator");
    let preset =
        cluster_preset(acc).ok_or_else(|| format!("no cluster preset for accelerator {acc:?}"))?;
    let chips = int(r, "n_chips")?.ok_or("n_chips not stated")?;
    let cluster = Cluster::from_name(&format!("{preset}:{chips}")).map_err(|e| e.to_string())?;
    let tp = int(r, "tp")?.unwrap_or(1);
    let pp = int(r, "pp")?.unwrap_or(1);
    let cp = int(r, "cp")?.unwrap_or(1).max(1);
    let dp = int(r, "dp")?.unwrap_or_else(|| chips / (tp * pp * cp).max(1));
    if int(r, "ep")?.is_some_and(|e| e > 1) {
        return Err("expert parallelism is not modelled".into());
    }
    let vpp = int(r, "vpp")?.unwrap_or(1);
    let mb = int(r, "micro_batch")?.unwrap_or_else(|| {
        assumptions.push("micro-batch size 1".into());
        1
    });
    let gb = match int(r, "global_batch_seqs")? {
        Some(g) => g,
        None => {
            let m = if pp > 1 { 8 * pp } else { 1 };
            assumptions.push(format!(
                "global batch {} ({m} micro-batches per pipeline)",
                dp * mb * m
            ));
            dp * mb * m
        }
    };
    let remat = remat_of(r, &mut assumptions);
    let opt_shard = opt_shard_of(r);
    let precision = precision_of(r, &cluster)?;
    // "yes", or "yes (…)" with how the source says it.
    let sp = field(r, "seq_par").to_ascii_lowercase().starts_with("yes");
    let schedule = if vpp > 1 {
        ScheduleKind::Interleaved { chunks: vpp }
    } else {
        ScheduleKind::OneFOneB
    };
    model.global_batch = Some(gb);
    model.validate().map_err(|e| e.to_string())?;
    let spec = StrategySpec {
        devices: Some(chips),
        dp: Some(dp),
        tp: Some(tp),
        pp: Some(pp),
        cp: Some(cp),
        micro_batch_size: Some(mb),
        global_batch: Some(gb),
        schedule: Some(schedule),
        opt_shard: Some(opt_shard),
        remat: Some(remat),
        seq_parallel: Some(sp),
        precision: Some(precision),
        ..Default::default()
    };
    let (metric, published) = metric_of(r)?;
    let mut spec = spec;
    if let Some(a) = extra {
        spec = spec.overlay(&a.spec);
        if let Some(g) = a.spec.global_batch {
            model.global_batch = Some(g);
        }
        // Assumptions the file replaces are no longer assumed.
        assumptions.retain(|x| {
            !(a.spec.micro_batch_size.is_some() && x.starts_with("micro-batch")
                || a.spec.global_batch.is_some() && x.starts_with("global batch")
                || a.spec.remat.is_some() && x.starts_with("no recompute"))
        });
        let set = toml::to_string(&a.spec)
            .unwrap_or_default()
            .replace('\n', ", ");
        assumptions.push(format!("{} ({})", set.trim_end_matches(", "), a.note));
    }
    Ok(Setup {
        model,
        cluster,
        spec,
        metric,
        published,
        assumptions,
    })
}

/// The row's recomputation (an unstated one is assumed off, and said so).
fn remat_of(r: &Row, assumptions: &mut Vec<String>) -> Remat {
    let rc = field(r, "recompute").to_ascii_lowercase();
    if rc.starts_with("full") || rc.starts_with("on") || rc.starts_with("rematerialization") {
        Remat::Full
    } else if rc.starts_with("selective") {
        Remat::Selective
    } else if rc.starts_with("none") {
        Remat::None
    } else {
        assumptions.push("no recompute".into());
        Remat::None
    }
}

/// The row's optimizer sharding from its ZeRO stage column.
fn opt_shard_of(r: &Row) -> OptShard {
    let z = field(r, "zero_stage").to_ascii_lowercase();
    if z.starts_with('3') {
        OptShard::Zero3
    } else if z.starts_with('2') || z.contains("stage 2") {
        OptShard::Zero2
    } else if z.starts_with('1') {
        OptShard::Zero1
    } else if z.contains("optimizer parallel") {
        OptShard::Mindspore
    } else {
        OptShard::None
    }
}

/// The row's published figure: the first measured (not derived) of step time, TFLOP/s per
/// chip, tokens/s per chip and MFU.
fn metric_of(r: &Row) -> Result<(Metric, f64), String> {
    let pick = [
        ("step_time_s", Metric::StepTime),
        ("tflops_per_chip", Metric::TflopsPerChip),
        ("tokens_per_s_per_chip", Metric::TokensPerSPerChip),
        ("mfu_pct", Metric::Mfu),
    ];
    let mut chosen = None;
    for (col, m) in pick {
        if let Some(v) = num(r, col)? {
            if !derived(r, col) {
                chosen = Some((m, if m == Metric::Mfu { v / 100.0 } else { v }));
                break;
            }
        }
    }
    Ok(chosen.ok_or("no measured step time, TFLOP/s, tokens/s or MFU")?)
}

/// The figure a simulated report gives in a row's convention (`source`: the row's `source`
/// column, which names the convention).
fn predicted(source: &str, m: Metric, plan: &Plan, rep: &pangu_strategies::StepReport) -> f64 {
    let s = &plan.strategy;
    let (b, sl, l, h, v) = (
        f64::from(s.global_batch),
        f64::from(plan.model.seq_len),
        f64::from(plan.model.layers),
        f64::from(plan.model.hidden),
        f64::from(plan.model.vocab),
    );
    let n = f64::from(s.devices);
    match m {
        Metric::StepTime => rep.step_time_s,
        Metric::TokensPerSPerChip => rep.tokens_per_s / n,
        Metric::TflopsPerChip if source.contains("Narayanan") => {
            let f = 96.0 * b * sl * l * h * h * (1.0 + sl / (6.0 * h) + v / (16.0 * l * h));
            f / (rep.step_time_s * n) / 1e12
        }
        Metric::TflopsPerChip => rep.hfu * peak(plan) / 1e12,
        Metric::Mfu if source.contains("Korthikanti") => {
            let f = 72.0 * b * sl * l * h * h * (1.0 + sl / (6.0 * h) + v / (12.0 * l * h));
            f / (rep.step_time_s * n * peak(plan))
        }
        Metric::Mfu => rep.mfu,
    }
}

fn peak(plan: &Plan) -> f64 {
    let c = &plan.cluster.spec.chip;
    match plan.strategy.precision {
        Precision::Bf16 | Precision::Fp8 => c.bf16.map_or(c.fp16.0, |x| x.0),
        Precision::Fp32 => c.fp32.map_or(c.fp16.0, |x| x.0),
        Precision::Fp16 => c.fp16.0,
    }
}

/// A row made ready to simulate: its plan, the figure it is compared on and its calibration.
/// [`Prepared::predict`] simulates it under any calibration (cross-validation refits one).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The row's result so far (identity, metric, published figure, assumptions, strategy).
    pub result: RowResult,
    /// The row's `source` column (names the publication and the metric's convention).
    pub source: String,
    /// The plan simulated.
    pub plan: Plan,
    /// Its chip family's shipped calibration.
    pub calibration: Calibration,
    /// The compared figure.
    pub metric: Metric,
    /// The published value.
    pub published: f64,
}

impl Prepared {
    /// The row's figure simulated under `cal` (in the row's convention), and whether the run
    /// was folded.
    pub fn predict(&self, cal: &Calibration) -> Result<(f64, bool), SimError> {
        let (run, _) = crate::simulate_with(&self.plan, cal, crate::Options::default())?;
        Ok((
            predicted(&self.source, self.metric, &self.plan, &run.report),
            run.folded.is_some(),
        ))
    }
}

/// Builds a row's plan; a row that cannot be modelled comes back as its result with `skipped`.
pub fn prepare_row(r: &Row, extra: Option<&Assumption>) -> Result<Prepared, Box<RowResult>> {
    let verification = field(r, "verification").to_string();
    let mut out = RowResult {
        row_id: field(r, "row_id").to_string(),
        model: field(r, "model").to_string(),
        verified: verification.starts_with("verified")
            || verification.contains("time verified")
            || verification.contains("times verified")
            || verification.starts_with("MFU verified")
            || verification.starts_with("measurements verified"),
        calibration: field(r, "accelerator")
            .to_ascii_lowercase()
            .contains("ascend"),
        verification,
        metric: None,
        predicted: None,
        published: None,
        error: None,
        assumptions: Vec::new(),
        skipped: None,
        strategy: None,
        folded: false,
        group: group_of(r),
    };
    let st = match setup(r, extra) {
        Ok(s) => s,
        Err(e) => {
            out.skipped = Some(e);
            return Err(Box::new(out));
        }
    };
    out.metric = Some(st.metric);
    out.published = Some(st.published);
    out.assumptions = st.assumptions.clone();
    let resolved = match pangu_strategies::resolve_inputs(&st.model, Some(st.cluster), &st.spec) {
        Ok(x) => x,
        Err(e) => {
            out.skipped = Some(e.to_string());
            return Err(Box::new(out));
        }
    };
    let plan = match Plan::build(&st.model, &resolved.cluster, &resolved.strategy) {
        Ok(p) => p,
        Err(e) => {
            out.skipped = Some(e.to_string());
            return Err(Box::new(out));
        }
    };
    if !plan.fits() {
        out.assumptions.push(format!(
            "the memory model puts this run at {} per device, over the chip's {} (simulated anyway)",
            plan.max_memory().total,
            plan.capacity
        ));
    }
    out.strategy = Some(plan.strategy.summary());
    let calibration = match Calibration::for_chip(&plan.cluster.spec.chip) {
        Ok(c) => c,
        Err(e) => {
            out.skipped = Some(e.to_string());
            return Err(Box::new(out));
        }
    };
    Ok(Prepared {
        result: out,
        source: field(r, "source").to_string(),
        plan,
        calibration,
        metric: st.metric,
        published: st.published,
    })
}

impl Prepared {
    /// The row's result with its shipped-calibration prediction (or why it failed).
    pub fn finish(&self, prediction: Result<(f64, bool), SimError>) -> RowResult {
        let mut out = self.result.clone();
        match prediction {
            Ok((v, folded)) => {
                out.predicted = Some(v);
                out.error = Some((v - self.published) / self.published);
                out.folded = folded;
            }
            Err(e) => out.skipped = Some(e.to_string()),
        }
        out
    }
}

/// Simulates one row, with its entry of an assumptions file if any.
pub fn run_row(r: &Row, extra: Option<&Assumption>) -> RowResult {
    match prepare_row(r, extra) {
        Err(out) => *out,
        Ok(p) => p.finish(p.predict(&p.calibration)),
    }
}

/// The group a row's strategies are ranked in.
fn group_of(r: &Row) -> String {
    let g = field(r, "group");
    if !g.is_empty() {
        return g.to_string();
    }
    format!(
        "{} (L{} d{} h{} s{}) on {} × {}",
        field(r, "model"),
        field(r, "layers"),
        field(r, "hidden"),
        field(r, "heads"),
        field(r, "seq_len"),
        field(r, "accelerator"),
        field(r, "n_chips")
    )
}

/// Median and maximum absolute error over rows with an error.
pub fn summary(rows: &[RowResult], verified_only: bool) -> (Option<f64>, Option<f64>) {
    let mut errs: Vec<f64> = rows
        .iter()
        .filter(|r| !verified_only || (r.verified && !r.calibration))
        .filter_map(|r| r.error.map(f64::abs))
        .collect();
    if errs.is_empty() {
        return (None, None);
    }
    errs.sort_by(f64::total_cmp);
    let n = errs.len();
    let median = if n % 2 == 1 {
        errs[n / 2]
    } else {
        (errs[n / 2 - 1] + errs[n / 2]) / 2.0
    };
    (Some(median), errs.last().copied())
}
