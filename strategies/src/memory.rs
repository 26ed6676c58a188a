//! The per-device memory model.
//!
//! Model state, per parameter held on the device (Rajbhandari et al. 2020, "ZeRO", §3.1):
//! mixed precision keeps 2 bytes of fp16/bf16 weights, 2 bytes of gradients and 12 bytes of
//! optimizer state (fp32 master copy, Adam m and v); fp32 training keeps 4 + 4 + 8. When a
//! step accumulates gradients over several micro-batches, mixed precision accumulates them in
//! an fp32 buffer (4 bytes: Megatron-LM's `main_grad`, PanGu-α's `accu_grads` in [R]'s
//! pipeline mode), which is also the buffer the data-parallel reduction sends. Sharding
//! over the `dp` replicas divides: ZeRO-1 the optimizer state; ZeRO-2 also the gradients;
//! MindSpore's optimizer parallel (level 1) the persistent weights and optimizer state, the
//! working weights being all-gathered before forward and kept until backward (so its memory
//! equals ZeRO-1's; it differs in when it communicates); ZeRO-3 everything, plus a gather
//! buffer of two layers' working weights.
//!
//! Activations: each in-flight (micro-batch, chunk) keeps the saved bytes of
//! [`pangu_model::ops`] (Korthikanti et al. 2022) for its layers, reduced by rematerialisation;
//! the number in flight comes from walking the stage's own schedule action list. Under full
//! or every-K recompute, the backward of a group needs its K layers' full activations again:
//! that working set is added once.
//!
//! Buffers: pipeline send and receive buffers (activation and gradient, one of each direction)
//! and, when replicas all-reduce their gradients while backward runs, the fusion buffers of
//! the buckets in flight: one being filled and one on the wire, `2 × grad_bucket`, but never
//! more than the gradients they copy (a model whose gradients fit one bucket needs one
//! bucket's worth). Under optimizer sharding the gradients are reduce-scattered in place in
//! the contiguous gradient buffer (Megatron-LM's distributed optimizer, ZeRO's contiguous
//! gradients) and need no fusion buffer.

use pangu_hardware::Bytes;
use pangu_model::ops::OpTotals;
use serde::Serialize;

use crate::schedule::{Action, Schedule};
use crate::strategy::{OptShard, Precision, Remat};

/// One device's memory by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryBreakdown {
    /// Working weights (gathered copies included).
    pub weights: Bytes,
    /// Gradients.
    pub gradients: Bytes,
    /// Optimizer state (master weights, Adam m and v).
    pub optimizer: Bytes,
    /// Peak activations.
    pub activations: Bytes,
    /// Communication buffers.
    pub buffers: Bytes,
    /// fp8 copies of the linear weights (both layouts) and their scaling state; 0 unless the
    /// precision is fp8 (left out of JSON then).
    #[serde(skip_serializing_if = "is_zero")]
    pub fp8_weights: Bytes,
    /// Sum of the above.
    pub total: Bytes,
}

fn is_zero(b: &Bytes) -> bool {
    b.0 == 0
}

/// Bytes per parameter of (weights, gradients, optimizer state); `accumulate` is true when
/// gradients are summed over more than one micro-batch.
pub fn bytes_per_param(p: Precision, accumulate: bool) -> (u64, u64, u64) {
    match p {
        // fp8 keeps bf16 working weights and fp32 master weights (Transformer Engine's
        // recipe); its fp8 copies are counted apart (`MemoryBreakdown::fp8_weights`).
        Precision::Fp16 | Precision::Bf16 | Precision::Fp8 => {
            (2, if accumulate { 4 } else { 2 }, 12)
        }
        Precision::Fp32 => (4, 4, 8),
    }
}

/// Model-state bytes of `params` parameters sharded `dp` ways under `shard`.
pub fn model_state(
    params: u64,
    dp: u32,
    shard: OptShard,
    prec: Precision,
    accumulate: bool,
) -> (Bytes, Bytes, Bytes) {
    let (w, g, o) = bytes_per_param(prec, accumulate);
    let n = u64::from(dp.max(1));
    let split = |bytes: u64| bytes.div_ceil(n);
    let (wb, gb, ob) = (params * w, params * g, params * o);
    match shard {
        OptShard::None => (Bytes(wb), Bytes(gb), Bytes(ob)),
        OptShard::Zero1 | OptShard::Mindspore => (Bytes(wb), Bytes(gb), Bytes(split(ob))),
        OptShard::Zero2 => (Bytes(wb), Bytes(split(gb)), Bytes(split(ob))),
        OptShard::Zero3 => (Bytes(split(wb)), Bytes(split(gb)), Bytes(split(ob))),
    }
}

/// Activation bytes one micro-batch keeps for a run of `n` consecutive transformer layers,
/// given the per-layer totals and the layer-input size.
pub fn stored_for_layers(n: u32, layer: &OpTotals, input: Bytes, remat: Remat) -> Bytes {
    let n64 = u64::from(n);
    match remat {
        Remat::None => Bytes(layer.saved.0 * n64),
        Remat::Selective => Bytes((layer.saved.0 - layer.saved_selective.0) * n64),
        Remat::Full => Bytes(input.0 * n64),
        Remat::Every(k) => Bytes(input.0 * n64.div_ceil(u64::from(k))),
    }
}

/// The extra bytes needed while a recomputed group is re-run in backward.
pub fn recompute_working_set(n_max: u32, layer_saved: Bytes, remat: Remat) -> Bytes {
    match remat {
        Remat::None | Remat::Selective => Bytes(0),
        Remat::Full => layer_saved,
        Remat::Every(k) => Bytes(layer_saved.0 * u64::from(k.min(n_max))),
    }
}

/// Peak activation bytes over a stage's action list, given the bytes each chunk keeps per
/// micro-batch.
pub fn peak_activations(schedule: &Schedule, stage: u32, per_chunk: &[Bytes]) -> Bytes {
    let mut now = 0u64;
    let mut peak = 0u64;
    for a in &schedule.stages[stage as usize] {
        match *a {
            Action::Forward { chunk, .. } => {
                now += per_chunk[chunk as usize].0;
                peak = peak.max(now);
            }
            Action::Backward { chunk, .. } => now -= per_chunk[chunk as usize].0,
            _ => {}
        }
    }
    Bytes(peak)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::build;
    use crate::strategy::ScheduleKind;

    #[test]
    fn zero_paper_accounting() {
        // ZeRO §3.1 / Fig. 1: Ψ = 7.5 B parameters, N_d = 64 → 120 GB, 31.4 GB (P_os),
        // 16.6 GB (P_os+g), 1.9 GB (P_os+g+p).
        let psi = 7_500_000_000;
        let total = |s| {
            let (w, g, o) = model_state(psi, 64, s, Precision::Fp16, false);
            (w.0 + g.0 + o.0) as f64 / 1e9
        };
        assert!((total(OptShard::None) - 120.0).abs() < 0.1);
        assert!((total(OptShard::Zero1) - 31.4).abs() < 0.1);
        assert!((total(OptShard::Zero2) - 16.6).abs() < 0.1);
        assert!((total(OptShard::Zero3) - 1.9).abs() < 0.1);
        assert_eq!(total(OptShard::Mindspore), total(OptShard::Zero1));
        // Accumulating over micro-batches in fp32 adds 2 bytes per parameter of gradients.
        let (_, g, _) = model_state(psi, 1, OptShard::None, Precision::Fp16, true);
        assert_eq!(g.0, 4 * psi);
    }

    #[test]
    fn one_f_one_b_keeps_p_minus_s_micro_batches() {
        let s = build(ScheduleKind::OneFOneB, 4, 8);
        for st in 0..4 {
            assert_eq!(
                peak_activations(&s, st, &[Bytes(10)]),
                Bytes(10 * u64::from(4 - st))
            );
        }
        let g = build(ScheduleKind::Gpipe, 4, 8);
        assert_eq!(peak_activations(&g, 3, &[Bytes(10)]), Bytes(80));
    }

    #[test]
    fn remat_modes_store_less() {
        let layer = OpTotals {
            saved: Bytes(100),
            saved_selective: Bytes(40),
            ..Default::default()
        };
        let input = Bytes(5);
        assert_eq!(stored_for_layers(4, &layer, input, Remat::None), Bytes(400));
        assert_eq!(
            stored_for_layers(4, &layer, input, Remat::Selective),
            Bytes(240)
        );
        assert_eq!(stored_for_layers(4, &layer, input, Remat::Full), Bytes(20));
        assert_eq!(
            stored_for_layers(4, &layer, input, Remat::Every(3)),
            Bytes(10)
        );
        assert_eq!(
            recompute_working_set(4, Bytes(100), Remat::Every(3)),
            Bytes(300)
        );
    }
}
