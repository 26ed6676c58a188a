//! A prediction's regime: the features by which its confidence is looked up (chip family,
//! model size, parallelism mix, optimizer sharding, attention kernel, fp8), and the distance
//! between two regimes.

use pangu_hardware::ChipSpec;
use pangu_model::ModelConfig;
use pangu_strategies::{Attention, OptShard, Plan, Precision, Strategy};
use serde::{Deserialize, Serialize};

use crate::cost::Calibration;
use crate::SimError;

/// What a prediction's confidence is measured over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Attention kernel (`flash` or `materialised`).
    pub attention: String,
    /// Whether the layers' linear products run in fp8.
    pub fp8: bool,
}

impl Regime {
    /// The regime of a model, chip and resolved strategy.
    pub fn new(model: &ModelConfig, chip: &ChipSpec, s: &Strategy) -> Result<Regime, SimError> {
        Ok(Regime::with_family(
            Calibration::for_chip(chip)?.family,
            model,
            s,
        ))
    }

    /// The regime of a model and resolved strategy on a chip of `family`.
    pub fn with_family(family: String, model: &ModelConfig, s: &Strategy) -> Regime {
        Regime {
            family,
            params_b: model.params().total as f64 / 1e9,
            tp: s.tp,
            pp: s.pp,
            dp: s.dp,
            sharding: s.opt_shard.to_string(),
            attention: s.attention.to_string(),
            fp8: s.precision == Precision::Fp8,
        }
    }

    /// The regime of a plan.
    pub fn of_plan(plan: &Plan) -> Result<Regime, SimError> {
        Regime::new(&plan.model, &plan.cluster.spec.chip, &plan.strategy)
    }

    /// E.g. `tp8·pp16·dp16`, with the sharding level when there is one.
    pub(crate) fn mix(&self) -> String {
        let mut s = format!("tp{}·pp{}·dp{}", self.tp, self.pp, self.dp);
        if self.sharding != OptShard::None.to_string() {
            s.push('·');
            s.push_str(&self.sharding);
        }
        if self.attention != Attention::Materialised.to_string() {
            s.push('·');
            s.push_str(&self.attention);
        }
        if self.fp8 {
            s.push_str("·fp8");
        }
        s
    }
}

/// Distance between two regimes of one family (infinite across families: each has its own
/// constants). One unit is any of: a factor 4 in parameters, 8 in tp or in pp, 16 in dp,
/// ZeRO-3 against not, or the other attention kernel; a different non-ZeRO-3 sharding level
/// adds 0.25 and fp8 against not 0.75 (more than a regime's spread, so an fp8 plan's regime
/// leaves out rows of its shape without fp8 when fp8 rows are nearest). The weights follow where the validation error is known
/// to move (docs/validation.md, "Known weak regimes"): ZeRO-3 at scale and one-node runs with
/// small models behave unlike their neighbours, the data-parallel size matters less than model
/// parallelism as long as ZeRO-3 is off, and the measured sweeps' errors moved by 40-65 points
/// when their rows were priced with their flash kernel and by 7-17 with their fp8 products.
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
    let kernel = if a.attention == b.attention { 0.0 } else { 1.0 };
    let fp8 = if a.fp8 == b.fp8 { 0.0 } else { 0.75 };
    ratio(a.params_b, b.params_b) / 4f64.ln()
        + lg(a.tp, b.tp) / 3.0
        + lg(a.pp, b.pp) / 3.0
        + lg(a.dp, b.dp) / 4.0
        + shard
        + kernel
        + fp8
}
