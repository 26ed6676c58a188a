//! Compute cost: a roofline per op with per-family efficiency curves.
//!
//! `time(op) = overhead + max(flops / (peak · eff(kind, shape)), bytes / (hbm_bw · mem_eff))`
//! (Williams et al. 2009, "Roofline"). Matmul efficiency, where the family's file gives the
//! library's tile sizes and the chip its compute-unit count, comes from the product's tiles and
//! waves over those units ([`crate::gemm`]: tile and wave quantisation, split-K), each pass on
//! its own shape (the backward's data and weight gradients are two products of other shapes).
//! Otherwise it saturates smoothly with each dimension: `eff = max_efficiency · Π s(x)`,
//! `s(x) = x / (x + half_dim)`. The parameters live in one calibration file per hardware
//! family (`sim/calibration/*.toml`), each with its reasoning.
//!
//! Attention: materialised, the scores and context are batched matmuls on the `batch_matmul`
//! curve and the softmax and dropout over the `heads·s·s` scores are memory-bound ops; flash,
//! the one fused kernel runs at the family's `flash_attention` fraction of the matmul peak
//! (a published kernel efficiency, cited in each file) with no memory-bound pass over scores.
//!
//! fp8 (Transformer Engine's recipe, [`pangu_strategies::fp8`]): the transformer layers'
//! linear GEMMs run at the chip's fp8 peak on fp8 operands, plus the memory-bound casts of
//! their inputs (forward) and output gradients (backward); everything else at the bf16 peak.
//! ASSUMPTION: an fp8 GEMM reaches the same fraction of the fp8 peak as a bf16 GEMM of the bf16
//! peak (the family's matmul curve applies to both), so a large linear GEMM runs twice as
//! fast on an H100.

use pangu_hardware::{Bandwidth, ChipSpec, FlopRate, Seconds};
use pangu_model::ops::{Op, OpKind};
use pangu_strategies::fp8::{self, Peaks};
use pangu_strategies::{GradAccumulation, Plan, Precision};
use serde::Deserialize;

use crate::gemm::{Machine, Shape, Tiles};
use crate::protocol::Protocols;
use crate::SimError;

/// A saturating efficiency curve.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curve {
    /// Plateau efficiency for large shapes.
    pub max_efficiency: f64,
    /// Dimension at which one factor reaches half.
    pub half_dim: f64,
}

impl Curve {
    /// Efficiency of a `[m, k] × [k, n]` product.
    pub fn efficiency(&self, m: u64, n: u64, k: u64) -> f64 {
        let s = |x: u64| x as f64 / (x as f64 + self.half_dim);
        self.max_efficiency * s(m) * s(n) * s(k)
    }
}

/// One hardware family's calibration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Family name.
    pub family: String,
    /// Dense matmuls.
    pub matmul: Curve,
    /// Batched matmuls (attention).
    pub batch_matmul: Curve,
    /// The fused attention kernel's fraction of the matmul peak (FlashAttention; its FLOPs
    /// are counted as FlashAttention-2 counts them, causal half and 2.5× backward).
    pub flash_attention: f64,
    /// Fraction of HBM bandwidth element-wise ops achieve.
    pub memory_efficiency: f64,
    /// Fixed cost per op on the chip (the gap between two kernels).
    pub op_overhead: Seconds,
    /// Host time the framework spends issuing one op of a forward pass (Python, autograd,
    /// dispatch): a run of ops cannot finish sooner than the host issues them (eager
    /// frameworks; 0 where a graph is sunk to the device). Measured by
    /// `scripts/host-overhead.py`.
    #[serde(default)]
    pub host_forward_op: Seconds,
    /// The same for one op of a backward pass.
    #[serde(default)]
    pub host_backward_op: Seconds,
    /// Fixed cost per collective step (protocol, synchronisation), for a library without a
    /// `protocols` table.
    #[serde(default)]
    pub collective_step_overhead: Option<Seconds>,
    /// Achieved fraction of nominal link bandwidth.
    pub link_efficiency: f64,
    /// The GEMM library's tile menu; with the chip's `compute_units`, matmuls are priced by
    /// tiles and waves (the curves' `max_efficiency` is then the large-tile plateau and their
    /// `half_dim` the loop's fill in `k` steps).
    #[serde(default)]
    pub tiles: Option<Tiles>,
    /// The collective library's protocols ([`crate::protocol`]): NCCL's LL, LL128 and Simple,
    /// chosen per collective; without it every step costs `collective_step_overhead`.
    #[serde(default)]
    pub protocols: Option<Protocols>,
}

const FAMILIES: &[(&str, &str)] = &[
    ("a100", include_str!("../calibration/a100.toml")),
    ("h100", include_str!("../calibration/h100.toml")),
    ("v100", include_str!("../calibration/v100.toml")),
    ("ascend910", include_str!("../calibration/ascend910.toml")),
    ("ascend910b", include_str!("../calibration/ascend910b.toml")),
    ("b200", include_str!("../calibration/b200.toml")),
    ("cpu", include_str!("../calibration/cpu.toml")),
];

impl Calibration {
    /// The calibration of a named family.
    pub fn family(name: &str) -> Result<Calibration, SimError> {
        let text = FAMILIES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                SimError::Calibration(format!(
                    "no calibration for family {name:?}; known: {}",
                    FAMILIES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        Calibration::from_toml(text, name)
    }

    /// Parses and checks a calibration file.
    pub fn from_toml(text: &str, source: &str) -> Result<Calibration, SimError> {
        let c: Calibration =
            toml::from_str(text).map_err(|e| SimError::Calibration(format!("{source}: {e}")))?;
        for (field, v) in [
            ("matmul.max_efficiency", c.matmul.max_efficiency),
            ("batch_matmul.max_efficiency", c.batch_matmul.max_efficiency),
            ("flash_attention", c.flash_attention),
            ("memory_efficiency", c.memory_efficiency),
            ("link_efficiency", c.link_efficiency),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(SimError::Calibration(format!(
                    "{source}: {field} = {v} must be in (0, 1]"
                )));
            }
        }
        for (field, v) in [
            ("matmul.half_dim", c.matmul.half_dim),
            ("batch_matmul.half_dim", c.batch_matmul.half_dim),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(SimError::Calibration(format!(
                    "{source}: {field} = {v} must be 0 or more (a dimension, e.g. 64)"
                )));
            }
        }
        if let Some(t) = &c.tiles {
            t.check(source).map_err(SimError::Calibration)?;
        }
        match (&c.protocols, c.collective_step_overhead) {
            (Some(p), None) => p.check(source).map_err(SimError::Calibration)?,
            (None, Some(s)) if s.0.is_finite() && s.0 >= 0.0 => {}
            (None, Some(s)) => {
                return Err(SimError::Calibration(format!(
                    "{source}: collective_step_overhead = {} s must be 0 or more (e.g. \"4 us\")",
                    s.0
                )))
            }
            (None, None) => {
                return Err(SimError::Calibration(format!(
                    "{source}: give the collective library's cost: collective_step_overhead (one cost per step, e.g. \"15 us\") or a [protocols] table (NCCL's LL/LL128/Simple)"
                )))
            }
            (Some(_), Some(_)) => {
                return Err(SimError::Calibration(format!(
                    "{source}: collective_step_overhead and [protocols] both set: the protocols' hop latencies replace the flat step cost; keep one"
                )))
            }
        }
        Ok(c)
    }

    /// The family a chip belongs to, from its name.
    pub fn for_chip(chip: &ChipSpec) -> Result<Calibration, SimError> {
        let n = chip.name.to_ascii_lowercase();
        let family = if n.contains("910b") || n.contains("910c") {
            "ascend910b"
        } else if n.contains("ascend") {
            "ascend910"
        } else if n.contains("a100") {
            "a100"
        } else if n.contains("h100") || n.contains("h200") {
            // H200 is the H100's GH100 compute with more and faster HBM (the chip's own
            // bandwidth is in its spec).
            "h100"
        } else if n.contains("b200") || n.contains("gb200") {
            "b200"
        } else if n.contains("v100") {
            "v100"
        } else if n.contains("x86") || n.contains("cpu") || n.contains("core") {
            "cpu"
        } else {
            return Err(SimError::Calibration(format!(
                "chip {:?} matches no calibrated family (ascend910, ascend910b, a100, h100, b200, v100, cpu); name it after one",
                chip.name
            )));
        };
        Calibration::family(family)
    }
}

/// Prices ops on one chip.
#[derive(Debug, Clone)]
pub struct CostModel {
    peaks: Peaks,
    precision: Precision,
    hbm: Bandwidth,
    /// Compute units, where both the chip and the calibration allow the tile model.
    units: Option<u32>,
    /// Bytes per weight of the separate gradient-accumulation pass each backward makes
    /// (`grad_accumulation = "separate"`); 0 when the weight-gradient product accumulates.
    accumulate_bytes: f64,
    /// The calibration in use.
    pub cal: Calibration,
}

impl CostModel {
    /// The cost model of a chip at a precision.
    pub fn new(
        chip: &ChipSpec,
        precision: Precision,
        cal: Calibration,
    ) -> Result<CostModel, SimError> {
        let peaks = Peaks::of(chip, precision).ok_or_else(|| {
            SimError::Calibration(format!("{} has no {precision} rate", chip.name))
        })?;
        if !(peaks.base.0 > 0.0 && peaks.linear.0 > 0.0 && chip.hbm_bandwidth.0 > 0.0) {
            return Err(SimError::Calibration(format!(
                "{}: peak and HBM bandwidth must be positive",
                chip.name
            )));
        }
        let units = chip.compute_units.filter(|_| cal.tiles.is_some());
        Ok(CostModel {
            peaks,
            precision,
            hbm: chip.hbm_bandwidth,
            units,
            accumulate_bytes: 0.0,
            cal,
        })
    }

    /// The cost model of a plan's chip and strategy: its precision, and a separate
    /// gradient-accumulation pass when the strategy says so. The pass reads each weight's fresh
    /// gradient (training precision) and reads and writes its accumulator (the memory model's
    /// gradient bytes with accumulation: fp32 for 16-bit training), once per micro-batch:
    /// Megatron-LM 2021's `main_grad.add_(grad)` hook per parameter.
    pub fn for_plan(plan: &Plan, cal: Calibration) -> Result<CostModel, SimError> {
        let s = &plan.strategy;
        let mut c = CostModel::new(&plan.cluster.spec.chip, s.precision, cal)?;
        if s.grad_accumulation == GradAccumulation::Separate {
            let (_, grad, _) = pangu_strategies::memory::bytes_per_param(s.precision, true);
            c.accumulate_bytes = f64::from(s.precision.act_bytes()) + 2.0 * grad as f64;
        }
        Ok(c)
    }

    /// Peak rate of everything but fp8 GEMMs (the training precision's; bf16 under fp8).
    pub fn peak(&self) -> FlopRate {
        self.peaks.base
    }

    /// Efficiency of a `[m, k] × [k, n]` product (`batch` of them) on `curve`'s family.
    fn gemm_efficiency(&self, op: &Op, curve: &Curve, s: Shape) -> f64 {
        match (self.units, &self.cal.tiles) {
            (Some(units), Some(tiles)) => {
                let operand_bytes = if fp8::in_fp8(op, self.precision) {
                    1.0
                } else {
                    f64::from(self.precision.act_bytes())
                };
                let machine = Machine {
                    units,
                    peak: self.peaks.for_op(op).0,
                    plateau: curve.max_efficiency,
                    half_k: curve.half_dim,
                    operand_bytes,
                    hbm: self.hbm.0 * self.cal.memory_efficiency,
                };
                tiles.efficiency(&machine, s)
            }
            _ => curve.efficiency(s.m, s.n, s.k),
        }
    }

    /// A matmul's efficiency in one pass. The forward is `[m, k] × [k, n]`; the backward is the
    /// data gradient (`[m, n] × [n, k]`) and the weight gradient (`[k, m] × [m, n]`), half the
    /// FLOPs each, so its efficiency is their harmonic mean.
    fn matmul_efficiency(&self, op: &Op, curve: &Curve, backward: bool) -> f64 {
        let [batch, m, n, k] = op.dims;
        let fwd = Shape { batch, m, n, k };
        if !backward {
            return self.gemm_efficiency(op, curve, fwd);
        }
        let dgrad = self.gemm_efficiency(
            op,
            curve,
            Shape {
                batch,
                m,
                n: k,
                k: n,
            },
        );
        let wgrad = self.gemm_efficiency(
            op,
            curve,
            Shape {
                batch,
                m: k,
                n,
                k: m,
            },
        );
        2.0 / (1.0 / dgrad + 1.0 / wgrad)
    }

    fn roofline(&self, op: &Op, flops: f64, bytes: f64, backward: bool) -> f64 {
        let eff = match op.kind {
            OpKind::Matmul => self.matmul_efficiency(op, &self.cal.matmul, backward),
            OpKind::BatchMatmul => self.matmul_efficiency(op, &self.cal.batch_matmul, backward),
            // One fused kernel: compute-bound at its own measured fraction of the peak.
            OpKind::FlashAttention => self.cal.flash_attention,
            _ => 0.0,
        };
        let t_flops = if eff > 0.0 {
            flops / (self.peaks.for_op(op).0 * eff)
        } else {
            0.0
        };
        let t_mem = self.mem_time(bytes);
        self.cal.op_overhead.0 + t_flops.max(t_mem)
    }

    /// Seconds to move `bytes` through HBM at the calibrated efficiency.
    fn mem_time(&self, bytes: f64) -> f64 {
        bytes / (self.hbm.0 * self.cal.memory_efficiency)
    }

    /// Forward time of an op (0 for communication ops, priced by the network).
    pub fn forward(&self, op: &Op) -> f64 {
        if op.kind == OpKind::Comm {
            return 0.0;
        }
        if fp8::in_fp8(op, self.precision) {
            let act = u64::from(self.precision.act_bytes());
            let (gemm, _) = fp8::gemm_bytes(op, act);
            let (cast, _) = fp8::quantize_bytes(op, act);
            return self.roofline(op, op.fwd_flops.0, gemm as f64, false)
                + self.mem_time(cast as f64);
        }
        self.roofline(op, op.fwd_flops.0, op.fwd_bytes.as_f64(), false)
    }

    /// Backward time of an op.
    pub fn backward(&self, op: &Op) -> f64 {
        if op.kind == OpKind::Comm {
            return 0.0;
        }
        if fp8::in_fp8(op, self.precision) {
            let act = u64::from(self.precision.act_bytes());
            let (_, gemm) = fp8::gemm_bytes(op, act);
            let (_, cast) = fp8::quantize_bytes(op, act);
            return self.roofline(op, op.bwd_flops.0, gemm as f64, true)
                + self.mem_time(cast as f64)
                + self.accumulate(op);
        }
        self.roofline(op, op.bwd_flops.0, op.bwd_bytes.as_f64(), true) + self.accumulate(op)
    }

    /// The separate gradient-accumulation pass over an op's weights (0 when fused).
    fn accumulate(&self, op: &Op) -> f64 {
        if self.accumulate_bytes > 0.0 && op.params > 0 {
            self.stream(op.params as f64 * self.accumulate_bytes)
        } else {
            0.0
        }
    }

    /// Host time to issue `op` in one pass (0 for communication, priced by the network): a
    /// segment of ops takes at least the sum of these ([`crate::workload`]).
    pub fn host(&self, op: &Op, backward: bool) -> f64 {
        match op.kind {
            OpKind::Comm => 0.0,
            _ if backward => self.cal.host_backward_op.0,
            _ => self.cal.host_forward_op.0,
        }
    }

    /// Time of casting `weights` linear weight elements to fp8 (both layouts), once per step
    /// before the first micro-batch uses them; 0 unless the precision is fp8.
    pub fn fp8_weight_cast(&self, weights: u64) -> f64 {
        if self.precision != Precision::Fp8 || weights == 0 {
            return 0.0;
        }
        let act = u64::from(self.precision.act_bytes());
        self.mem_time(fp8::weight_cast_bytes(weights, act) as f64)
    }

    /// Time of a memory-bound pass over `bytes` (the optimizer step).
    pub fn stream(&self, bytes: f64) -> f64 {
        self.cal.op_overhead.0 + self.mem_time(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_model::ops::{part_ops, OpShape, Part};
    use pangu_model::ModelConfig;

    #[test]
    fn every_family_parses() {
        for (n, _) in FAMILIES {
            Calibration::family(n).unwrap();
        }
        assert!(Calibration::family("tpu").is_err());
        let bad = include_str!("../calibration/a100.toml")
            .replace("memory_efficiency = 0.85", "memory_efficiency = 1.5");
        assert!(Calibration::from_toml(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("memory_efficiency"));
        let bad = include_str!("../calibration/a100.toml").replace(
            "matmul = { max_efficiency = 0.77, half_dim = 64 }",
            "matmul = { max_efficiency = 0.77, half_dim = -64 }",
        );
        assert!(Calibration::from_toml(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("matmul.half_dim"));
    }

    #[test]
    fn big_gemms_reach_the_plateau_small_ones_do_not() {
        let c = Curve {
            max_efficiency: 0.8,
            half_dim: 64.0,
        };
        assert!(c.efficiency(8192, 8192, 8192) > 0.77);
        assert!(c.efficiency(64, 8192, 8192) < 0.41);
    }

    #[test]
    fn matmuls_are_compute_bound_and_norms_memory_bound() {
        let cluster = pangu_hardware::Cluster::from_name("dgx-a100-80g:8").unwrap();
        let cm = CostModel::new(
            &cluster.spec.chip,
            Precision::Fp16,
            Calibration::family("a100").unwrap(),
        )
        .unwrap();
        let m = ModelConfig::preset("gpt3-175b")
            .unwrap()
            .with_seq_len(2048)
            .unwrap();
        let ops = part_ops(&m, Part::Block, OpShape::new(1, 8, false, 2));
        let qkv = ops.iter().find(|o| o.name == "qkv_proj").unwrap();
        let t = cm.forward(qkv);
        let ideal = qkv.fwd_flops.0 / 312e12;
        assert!(t > ideal && t < ideal / 0.6, "{t} vs {ideal}");
        let ln = ops.iter().find(|o| o.name == "ln1").unwrap();
        let t = cm.forward(ln) - 4e-6;
        let mem = ln.fwd_bytes.as_f64() / (2039e9 * 0.85);
        assert!((t - mem).abs() / mem < 1e-9);
    }

    #[test]
    fn flash_attention_is_one_compute_bound_kernel_at_its_own_efficiency() {
        use pangu_model::ops::Attention;
        let cluster = pangu_hardware::Cluster::from_name("dgx-a100-80g:8").unwrap();
        let cal = Calibration::family("a100").unwrap();
        let eff = cal.flash_attention;
        let cm = CostModel::new(&cluster.spec.chip, Precision::Bf16, cal).unwrap();
        let m = ModelConfig::preset("mpt-7b")
            .unwrap()
            .with_seq_len(2048)
            .unwrap();
        let sh = OpShape::new(6, 1, false, 2);
        let flash = part_ops(&m, Part::Block, sh.with_attention(Attention::Flash));
        let fa = flash.iter().find(|o| o.attention_core).unwrap();
        let fwd = cm.forward(fa) - 4e-6;
        let bwd = cm.backward(fa) - 4e-6;
        // FLOPs at the family's kernel efficiency of the bf16 peak; the backward is 2.5×.
        let want = fa.fwd_flops.0 / (312e12 * eff);
        assert!((fwd - want).abs() / want < 1e-9, "{fwd} vs {want}");
        assert!((bwd / fwd - 2.5).abs() < 1e-9);
        // The materialised core of the same layer costs more: its softmax alone is a
        // memory-bound pass over the b·heads·s² probabilities.
        let mat = part_ops(&m, Part::Block, sh);
        let core = |ops: &[Op]| -> f64 {
            ops.iter()
                .filter(|o| o.attention_core)
                .map(|o| cm.forward(o) + cm.backward(o))
                .sum()
        };
        assert!(
            core(&mat) > core(&flash),
            "{} vs {}",
            core(&mat),
            core(&flash)
        );
    }
}
