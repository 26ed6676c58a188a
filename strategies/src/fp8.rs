//! fp8 training as NVIDIA Transformer Engine (TE) runs it on Hopper: the facts the memory
//! model and the simulator's cost model share, in one place.
//!
//! The recipe (TE's delayed scaling, as Megatron-core's `--fp8-format hybrid` uses it):
//! weights and activations stay bf16 and the optimizer keeps fp32 master weights, so the model
//! state is bf16 mixed precision's; only the transformer layers' linear GEMMs (QKV, attention
//! output projection, FFN up/gate and down: TE's `Linear`, `LayerNormLinear`, `LayerNormMLP`)
//! run forward, input-gradient and weight-gradient GEMMs on fp8 operands (E4M3 forward, E5M2
//! gradients) at the chip's fp8 peak. Attention's batched matmuls (scores, context) and the
//! output head stay bf16: TE's `DotProductAttention` computes in bf16 unless `fp8_dpa` is set,
//! and Megatron-core's output layer is a plain `ColumnParallelLinear`, outside TE's fp8 autocast
//! (TE docs, "Using FP8 with Transformer Engine"; Megatron-core `transformer_config.fp8`).
//!
//! Costs, per fp8 GEMM:
//! - Quantization: each operand is cast to fp8 by a memory-bound pass (read bf16, write fp8).
//!   Delayed scaling takes the scale from the amax history, so a cast reads its tensor once
//!   and records the new amax on the way (TE docs, "FP8 Delayed Scaling": one tensor read per
//!   quantization instead of current scaling's two).
//! - Transposes: Hopper's fp8 tensor cores take only the TN layout, so every fp8 tensor used
//!   both ways is kept twice, row-wise and column-wise (TE docs, "Performance Considerations:
//!   Handling transposes"; TE `cublaslt_gemm.cu`: "Hopper only supports TN GEMMs for FP8").
//!   TE's fused cast-transpose writes both in the same pass: 2 + 1 + 1 bytes per element.
//!   Inputs are cast per micro-batch in forward, output gradients in backward; the weights once
//!   per step (TE caches them over the micro-batches of a step, `is_first_microbatch`), charged
//!   with the optimizer pass.
//! - ASSUMPTION: the casts are separate passes; TE fuses the QKV and FFN-up input casts into
//!   the LayerNorm before them, which saves part of a read, so this is an upper bound.
//!
//! Memory:
//! - Each linear weight's fp8 copy and its transpose, 1 byte each per element, kept for the
//!   whole step by the weight cache above (for the held layers; under ZeRO-3 for the two
//!   gathered layers only).
//! - The amax history of every scaled tensor (input, weight, output gradient per GEMM): TE's
//!   `DelayedScaling` default `amax_history_len = 1024` fp32 values, plus scale and inverse.
//! - ASSUMPTION: a linear layer saves its input for the weight gradient as the fp8
//!   column-wise copy its forward cast produced (TE's `Linear` saves the quantized input when
//!   fp8 is on), 1 byte instead of 2; the other saved activations (norm inputs, GeLU input,
//!   attention's Q, K, V and probabilities) stay bf16.
//! - Blackwell chips could skip the transposes (they take any fp8 layout); the Hopper rule
//!   is applied to every chip with an fp8 rate, an upper bound there.

use pangu_hardware::{Bytes, ChipSpec, FlopRate};
use pangu_model::ops::Op;

use crate::strategy::Precision;

/// Bytes of one fp8 element (E4M3 or E5M2).
pub const FP8_BYTES: u64 = 1;

/// fp8 copies of a tensor used both ways on Hopper: row-wise and column-wise (its transpose).
pub const LAYOUTS: u64 = 2;

/// Entries of each scaled tensor's amax history (TE `DelayedScaling.amax_history_len`
/// default since TE 1.0).
pub const AMAX_HISTORY_LEN: u64 = 1024;

/// Scaled tensors per fp8 GEMM: its input, its weight and its output gradient.
pub const SCALED_TENSORS_PER_GEMM: u64 = 3;

/// The peak rates a precision computes at on a chip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peaks {
    /// Everything but fp8 GEMMs: the training precision's matrix rate (bf16 under fp8).
    pub base: FlopRate,
    /// The transformer layers' linear GEMMs: the fp8 rate under fp8, else `base`.
    pub linear: FlopRate,
}

impl Peaks {
    /// The rates of `precision` on `chip`; `None` when the chip lacks one it needs.
    pub fn of(chip: &ChipSpec, precision: Precision) -> Option<Peaks> {
        let base = match precision {
            Precision::Fp16 => Some(chip.fp16),
            Precision::Bf16 | Precision::Fp8 => chip.bf16,
            Precision::Fp32 => chip.fp32,
        }?;
        let linear = match precision {
            Precision::Fp8 => chip.fp8?,
            _ => base,
        };
        Some(Peaks { base, linear })
    }

    /// The rate `op` runs at.
    pub fn for_op(&self, op: &Op) -> FlopRate {
        if op.layer_linear {
            self.linear
        } else {
            self.base
        }
    }
}

/// Whether `op` runs in fp8 under `precision`.
pub fn in_fp8(op: &Op, precision: Precision) -> bool {
    precision == Precision::Fp8 && op.layer_linear
}

/// `[m, n, k]` of a GEMM op as `u64`s.
fn mnk(op: &Op) -> (u64, u64, u64) {
    (op.dims[1], op.dims[2], op.dims[3])
}

/// Weight elements of a linear GEMM (`k × n`; 0 for other ops).
pub fn weight_elems(op: &Op) -> u64 {
    if op.layer_linear {
        let (_, n, k) = mnk(op);
        k * n
    } else {
        0
    }
}

/// Weight elements and fp8 GEMMs of a list of ops.
pub fn linear_totals(ops: &[Op]) -> (u64, u64) {
    ops.iter()
        .filter(|o| o.layer_linear)
        .fold((0, 0), |(w, g), o| (w + weight_elems(o), g + 1))
}

/// Memory traffic of an fp8 GEMM (forward, backward): fp8 operands, outputs in the
/// activation precision (`act` bytes). Backward is the input-gradient GEMM (`dY · Wᵀ`) and the
/// weight-gradient GEMM (`Xᵀ · dY`).
pub fn gemm_bytes(op: &Op, act: u64) -> (u64, u64) {
    let (m, n, k) = mnk(op);
    let fwd = (m * k + k * n) * FP8_BYTES + m * n * act;
    let dgrad = (m * n + k * n) * FP8_BYTES + m * k * act;
    let wgrad = (m * k + m * n) * FP8_BYTES + k * n * act;
    (fwd, dgrad + wgrad)
}

/// Bytes a cast-transpose pass moves per element: read `act`, write both fp8 layouts.
fn cast_bytes_per_elem(act: u64) -> u64 {
    act + LAYOUTS * FP8_BYTES
}

/// Quantization traffic of a linear GEMM per micro-batch (forward: its input `m × k`;
/// backward: its output gradient `m × n`).
pub fn quantize_bytes(op: &Op, act: u64) -> (u64, u64) {
    let (m, n, k) = mnk(op);
    let per = cast_bytes_per_elem(act);
    (m * k * per, m * n * per)
}

/// Traffic of casting `weights` elements to both fp8 layouts, once per step.
pub fn weight_cast_bytes(weights: u64, act: u64) -> u64 {
    weights * cast_bytes_per_elem(act)
}

/// Bytes of the fp8 weight copies (both layouts) of `weights` elements.
pub fn weight_copy_bytes(weights: u64) -> Bytes {
    Bytes(weights * LAYOUTS * FP8_BYTES)
}

/// Bytes of the delayed-scaling state of `gemms` fp8 GEMMs: per scaled tensor an fp32 amax
/// history, scale and inverse scale.
pub fn scaling_state_bytes(gemms: u64) -> Bytes {
    Bytes(gemms * SCALED_TENSORS_PER_GEMM * (AMAX_HISTORY_LEN + 2) * 4)
}

/// Marks the linear GEMMs' saved inputs as fp8 (`act`-byte elements become 1-byte ones).
pub fn save_inputs_in_fp8(ops: &mut [Op], act: u64) {
    for o in ops.iter_mut().filter(|o| o.layer_linear) {
        o.saved = Bytes(o.saved.0 / act * FP8_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_model::ops::{part_ops, OpShape, Part};
    use pangu_model::ModelConfig;

    fn block(m: &ModelConfig) -> Vec<Op> {
        let sh = OpShape::new(1, 2, false, 2);
        part_ops(m, Part::Block, sh)
    }

    #[test]
    fn the_layer_linears_are_the_four_gemms_and_hold_the_matrices() {
        let m = ModelConfig::preset("gpt3-175b").unwrap();
        let ops = block(&m);
        let names: Vec<&str> = ops
            .iter()
            .filter(|o| o.layer_linear)
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["qkv_proj", "attn_out", "ffn_up", "ffn_down"]);
        let (w, g) = linear_totals(&ops);
        let h = u64::from(m.hidden);
        // GPT-3: 4h² attention + 8h² FFN matrix elements per layer, split tp 2 ways.
        assert_eq!((w, g), (12 * h * h / 2, 4));
        let head = part_ops(&m, Part::Head, OpShape::new(1, 2, false, 2));
        assert_eq!(linear_totals(&head), (0, 0));
    }

    #[test]
    fn fp8_needs_both_rates_and_maps_gemms_to_fp8() {
        let h100 = pangu_hardware::Cluster::from_name("dgx-h100:8").unwrap();
        let p = Peaks::of(&h100.spec.chip, Precision::Fp8).unwrap();
        // 1979 against 989 TFLOP/s dense ([H100] datasheet, the preset's values).
        assert!((p.linear.0 / p.base.0 - 2.0).abs() < 0.01);
        let a100 = pangu_hardware::Cluster::from_name("dgx-a100-80g:8").unwrap();
        assert!(Peaks::of(&a100.spec.chip, Precision::Fp8).is_none());
        let b = Peaks::of(&a100.spec.chip, Precision::Bf16).unwrap();
        assert_eq!(b.base, b.linear);
    }

    #[test]
    fn saved_inputs_halve_and_casts_move_four_bytes_per_element() {
        let m = ModelConfig::preset("gpt3-175b").unwrap();
        let mut ops = block(&m);
        let before: u64 = ops.iter().map(|o| o.saved.0).sum();
        let linear: u64 = ops
            .iter()
            .filter(|o| o.layer_linear)
            .map(|o| o.saved.0)
            .sum();
        save_inputs_in_fp8(&mut ops, 2);
        let after: u64 = ops.iter().map(|o| o.saved.0).sum();
        assert_eq!(before - after, linear / 2);
        let qkv = ops.iter().find(|o| o.name == "qkv_proj").unwrap();
        let (fwd, bwd) = quantize_bytes(qkv, 2);
        assert_eq!(fwd, qkv.dims[1] * qkv.dims[3] * 4);
        assert_eq!(bwd, qkv.dims[1] * qkv.dims[2] * 4);
        assert_eq!(scaling_state_bytes(1).0, 3 * 1026 * 4);
    }
}
