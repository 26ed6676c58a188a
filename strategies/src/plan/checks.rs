//! Validation of a strategy against a model and a cluster.

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;

use crate::strategy::{Precision, ScheduleKind, Strategy};
use crate::PlanError;

/// Common divisors of the values, for "what would fit" messages.
fn divisors_of_all(vals: &[u32], limit: u32) -> Vec<u32> {
    (1..=limit)
        .filter(|d| vals.iter().all(|v| v % d == 0))
        .collect()
}

fn fmt_list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

pub(super) fn check_devices(s: &Strategy, cluster: &Cluster) -> Result<(), PlanError> {
    let product = u64::from(s.dp) * u64::from(s.tp) * u64::from(s.pp) * u64::from(s.cp.max(1));
    if product != u64::from(s.devices) {
        return Err(PlanError::Devices(format!(
            "dp {} × tp {} × pp {}{} = {product} ≠ {} devices",
            s.dp,
            s.tp,
            s.pp,
            if s.cp > 1 {
                format!(" × cp {}", s.cp)
            } else {
                String::new()
            },
            s.devices
        )));
    }
    if s.devices > cluster.chips() {
        return Err(PlanError::Devices(format!(
            "the strategy uses {} devices but cluster {} has {} chips",
            s.devices,
            cluster.spec.name,
            cluster.chips()
        )));
    }
    if s.global_batch != s.dp * s.micro_batch_size * s.micro_batches {
        return Err(PlanError::Batch(format!(
            "dp {} × micro-batch size {} × micro-batches {} = {} ≠ global batch {}",
            s.dp,
            s.micro_batch_size,
            s.micro_batches,
            s.dp * s.micro_batch_size * s.micro_batches,
            s.global_batch
        )));
    }
    Ok(())
}

pub(super) fn check_tp(m: &ModelConfig, s: &Strategy) -> Result<(), PlanError> {
    let vals = [
        ("heads", m.heads),
        ("kv_heads", m.kv_heads()),
        ("hidden", m.hidden),
        ("ffn", m.ffn),
    ];
    if let Some((name, v)) = vals.iter().find(|(_, v)| v % s.tp != 0) {
        let ok = divisors_of_all(&vals.map(|(_, v)| v), 64.min(s.devices));
        let ok: Vec<u32> = ok
            .into_iter()
            .filter(|t| s.devices.is_multiple_of(t * s.pp))
            .collect();
        return Err(PlanError::TensorParallel(format!(
            "tp {} does not divide {name} {v} of {}; tp must divide heads {}, kv_heads {}, hidden {} and ffn {} \
             (the vocabulary is padded): with pp {} on {} devices use one of {}",
            s.tp,
            m.name,
            m.heads,
            m.kv_heads(),
            m.hidden,
            m.ffn,
            s.pp,
            s.devices,
            fmt_list(&ok)
        )));
    }
    // Transformer Engine overlaps the sequence-parallel all-gathers and reduce-scatters;
    // Megatron-LM asserts sequence parallelism for it (arguments.py).
    if s.tp_comm_overlap && (s.tp < 2 || !s.seq_parallel) {
        return Err(PlanError::TensorParallel(format!(
            "tp_comm_overlap = true needs tp > 1 and seq_parallel = true (it overlaps the \
             sequence-parallel all-gathers and reduce-scatters with their GEMMs; Megatron-LM \
             refuses it otherwise); here tp {} and seq_parallel {}",
            s.tp, s.seq_parallel
        )));
    }
    Ok(())
}

pub(super) fn check_pipeline(m: &ModelConfig, s: &Strategy, v: u32) -> Result<(), PlanError> {
    let virt = s.pp * v;
    if virt > m.layers {
        return Err(PlanError::Pipeline(format!(
            "pp {} × {} chunk(s) = {virt} pipeline pieces but {} has only {} layers; use pp ≤ {}",
            s.pp,
            v,
            m.name,
            m.layers,
            m.layers / v
        )));
    }
    match s.schedule {
        ScheduleKind::Interleaved { chunks } if !s.micro_batches.is_multiple_of(s.pp) || s.micro_batches < s.pp => {
            Err(PlanError::Schedule(format!(
                "interleaved:{chunks} needs the micro-batch count to be a multiple of pp: {} micro-batches with pp {}",
                s.micro_batches, s.pp
            )))
        }
        _ => Ok(()),
    }
}

pub(super) fn check_precision(s: &Strategy, c: &Cluster) -> Result<u32, PlanError> {
    let chip = &c.spec.chip;
    if s.precision == Precision::Fp8 && chip.fp8.is_none() {
        return Err(PlanError::Precision(no_fp8(c)));
    }
    let missing = match s.precision {
        Precision::Bf16 | Precision::Fp8 if chip.bf16.is_none() => Some("bf16"),
        Precision::Fp32 if chip.fp32.is_none() => Some("fp32"),
        _ => None,
    };
    if let Some(p) = missing {
        return Err(PlanError::Precision(format!(
            "{} has no {p} compute rate in cluster {}; use --precision fp16 or give chip.{p} in a cluster file",
            chip.name, c.spec.name
        )));
    }
    Ok(s.precision.act_bytes())
}

/// Why a chip without an fp8 rate cannot train in fp8, and what would work: the precisions it
/// has, or a preset whose chip has fp8.
fn no_fp8(c: &Cluster) -> String {
    let chip = &c.spec.chip;
    let has: Vec<String> = Precision::ALL
        .iter()
        .filter(|p| crate::fp8::Peaks::of(chip, **p).is_some())
        .map(Precision::to_string)
        .collect();
    format!(
        "chip {} (cluster {}) has no fp8 matrix unit; use {}, or a chip with fp8 such as h100 \
         (dgx-h100), h200 (dgx-h200) or b200 (dgx-b200), or give chip.fp8 in a cluster file",
        chip.name,
        c.spec.name,
        has.join(" or ")
    )
}

/// `2·cp` must divide the sequence (two chunks per rank, Megatron-core's load balancing); the
/// error names the sequence and the nearest degrees that work.
pub(super) fn check_cp(m: &ModelConfig, s: &Strategy) -> Result<(), PlanError> {
    let cp = s.cp.max(1);
    if cp == 1 {
        return Ok(());
    }
    if !m.seq_len.is_multiple_of(2 * cp) {
        let ok: Vec<String> = (1..=64u32)
            .filter(|c| m.seq_len.is_multiple_of(2 * c) || *c == 1)
            .filter(|c| s.devices.is_multiple_of(c * s.tp * s.pp))
            .map(|c| c.to_string())
            .collect();
        return Err(PlanError::Devices(format!(
            "cp {cp}: the sequence of {} tokens does not split into 2·cp = {} chunks (context \
             parallelism gives each rank two chunks for causal load balancing); use cp one of {} \
             or a sequence length that is a multiple of {}",
            m.seq_len,
            2 * cp,
            ok.join(", "),
            2 * cp
        )));
    }
    Ok(())
}
