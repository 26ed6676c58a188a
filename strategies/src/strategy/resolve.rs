//! Resolution of a spec (overlaid on the reference) into a [`Strategy`] for a model's global
//! batch and a cluster size; errors name the value and what would work.

use super::{
    CpComm, OptShard, Precision, RankOrder, Remat, ScheduleKind, Strategy, StrategySpec,
    DEFAULT_GRAD_BUCKET,
};
use crate::PlanError;

/// Resolves a spec (already overlaid on the reference) for a model's global batch and a
/// cluster size. Returns the strategy and notes on values that were derived. An unset
/// `attention` resolves to `materialised`: callers that know the chip fill it first with
/// [`super::default_attention`] ([`crate::resolve_inputs`] does).
pub fn resolve(
    spec: &StrategySpec,
    user: &StrategySpec,
    model_global_batch: u32,
    cluster_chips: u32,
) -> Result<(Strategy, Vec<String>), PlanError> {
    let mut notes = Vec::new();
    let devices = user.devices.unwrap_or(cluster_chips);
    if devices == 0 || devices > cluster_chips {
        return Err(PlanError::Devices(format!(
            "--devices {devices}: the cluster has {cluster_chips} chips; use 1..={cluster_chips}"
        )));
    }
    let (tp, pp, cp, dp) = degrees(spec, user, devices)?;
    let (global, mbs, m) = batches(spec, user, model_global_batch, dp, &mut notes)?;
    // Schedules are lists of actions per micro-batch: keep them to a size a machine holds.
    if m > 1 << 16 {
        return Err(PlanError::Batch(format!(
            "{m} micro-batches per step: this tool schedules up to {}; raise --micro-batch-size",
            1u32 << 16
        )));
    }
    let strategy = Strategy {
        devices,
        dp,
        tp,
        pp,
        cp,
        cp_comm: spec.cp_comm.unwrap_or(CpComm::Ring),
        micro_batches: m,
        micro_batch_size: mbs,
        global_batch: global,
        schedule: spec.schedule.unwrap_or(ScheduleKind::OneFOneB),
        opt_shard: spec.opt_shard.unwrap_or(OptShard::None),
        remat: spec.remat.unwrap_or(Remat::None),
        seq_parallel: spec.seq_parallel.unwrap_or(false),
        precision: spec.precision.unwrap_or(Precision::Fp16),
        rank_order: spec.rank_order.unwrap_or(RankOrder::PANGU),
        layers_per_stage: spec.layers_per_stage.clone(),
        grad_bucket: spec.grad_bucket.unwrap_or(DEFAULT_GRAD_BUCKET),
        zero3_gather: spec.zero3_gather.unwrap_or_default(),
        zero3_prefetch: spec.zero3_prefetch.unwrap_or_default(),
        collectives: spec.collectives.unwrap_or_default().resolve(),
        attention: spec.attention.unwrap_or_default(),
        tp_comm_overlap: spec.tp_comm_overlap.unwrap_or(false),
        grad_accumulation: spec.grad_accumulation.unwrap_or_default(),
        p2p_blocking: spec.p2p_blocking.unwrap_or(false),
        vocab_divisible_by: match spec.vocab_divisible_by {
            Some(0) => {
                return Err(PlanError::TensorParallel(
                    "vocab_divisible_by 0: give a positive divisor (128 is Megatron's default; 1 pads only to a multiple of tp)".into(),
                ))
            }
            Some(d) => d,
            None => super::DEFAULT_VOCAB_DIVISOR,
        },
    };
    Ok((strategy, notes))
}

/// tp, pp, cp and dp for `devices`: dp fills the devices unless given.
fn degrees(
    spec: &StrategySpec,
    user: &StrategySpec,
    devices: u32,
) -> Result<(u32, u32, u32, u32), PlanError> {
    let tp = spec.tp.unwrap_or(1);
    let pp = spec.pp.unwrap_or(1);
    let cp = spec.cp.unwrap_or(1);
    for (name, v) in [("tp", tp), ("pp", pp), ("cp", cp)] {
        if v == 0 {
            return Err(PlanError::Devices(format!(
                "--{name} 0: a degree must be at least 1"
            )));
        }
        if v > devices {
            return Err(PlanError::Devices(format!(
                "--{name} {v}: more than the {devices} devices"
            )));
        }
    }
    // Products in 64 bits: degrees come from user files.
    let tpp = u64::from(tp) * u64::from(pp) * u64::from(cp);
    // "tp 2 × pp 4" (and "× cp 2" only with context parallelism, so messages stay as they were).
    let cp_text = if cp > 1 {
        format!(" × cp {cp}")
    } else {
        String::new()
    };
    let devices64 = u64::from(devices);
    let dp = match user.dp {
        Some(0) => {
            return Err(PlanError::Devices(
                "--dp 0: a degree must be at least 1".into(),
            ))
        }
        Some(dp) => {
            if u64::from(dp) * tpp != devices64 {
                return Err(PlanError::Devices(format!(
                    "dp {dp} × tp {tp} × pp {pp}{cp_text} = {} ≠ {devices} devices; omit --dp to fill the devices{}",
                    u64::from(dp) * tpp,
                    if devices64 % tpp == 0 { format!(" (dp {})", devices64 / tpp) } else { String::new() }
                )));
            }
            dp
        }
        None => {
            if devices64 % tpp != 0 {
                let fits: Vec<String> = (1..=devices.min(64))
                    .filter(|&t| devices64 % (u64::from(t) * u64::from(pp) * u64::from(cp)) == 0)
                    .filter(|t| t.is_power_of_two())
                    .map(|t| t.to_string())
                    .collect();
                return Err(PlanError::Devices(format!(
                    "tp {tp} × pp {pp}{cp_text} = {tpp} does not divide the {devices} devices, so dp cannot fill them; \
                     with pp {pp}{cp_text}, tp could be one of {}",
                    fits.join(", ")
                )));
            }
            (devices64 / tpp) as u32
        }
    };
    Ok((tp, pp, cp, dp))
}

/// The global batch, micro-batch size and micro-batch count for `dp` replicas.
fn batches(
    spec: &StrategySpec,
    user: &StrategySpec,
    model_global_batch: u32,
    dp: u32,
    notes: &mut Vec<String>,
) -> Result<(u32, u32, u32), PlanError> {
    let global = user.global_batch.unwrap_or(model_global_batch);
    if global == 0 {
        return Err(PlanError::Batch(
            "--global-batch 0: a step needs at least one sequence".into(),
        ));
    }
    if global > 1 << 24 {
        return Err(PlanError::Batch(format!(
            "--global-batch {global}: beyond this tool's bound of {} sequences per step",
            1u32 << 24
        )));
    }
    if !global.is_multiple_of(dp) {
        return Err(PlanError::Batch(format!(
            "global batch {global} does not split over dp {dp} replicas ({global} / {dp} is not whole); \
             use a global batch that is a multiple of {dp}"
        )));
    }
    let per_replica = global / dp;
    let (mbs, m) = match (user.micro_batch_size, user.micro_batches) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(PlanError::Batch(
                "micro-batch size and count must be at least 1".into(),
            ))
        }
        (Some(b), Some(m)) => {
            let product = u64::from(dp) * u64::from(b) * u64::from(m);
            if product != u64::from(global) {
                return Err(PlanError::Batch(format!(
                    "dp {dp} × micro-batch size {b} × micro-batches {m} = {product} ≠ global batch {global}; \
                     give only one of --micro-batches / --micro-batch-size, or --global-batch {product}"
                )));
            }
            (b, m)
        }
        (Some(b), None) => {
            if !per_replica.is_multiple_of(b) {
                return Err(PlanError::Batch(format!(
                    "global batch {global} / dp {dp} = {per_replica} sequences per replica is not a \
                     multiple of micro-batch size {b}"
                )));
            }
            (b, per_replica / b)
        }
        (None, Some(m)) => {
            if !per_replica.is_multiple_of(m) {
                return Err(PlanError::Batch(format!(
                    "global batch {global} / dp {dp} = {per_replica} sequences per replica does not \
                     split into {m} micro-batches"
                )));
            }
            (per_replica / m, m)
        }
        (None, None) => {
            let want = spec.micro_batch_size.unwrap_or(1).max(1);
            let b = (1..=want.min(per_replica))
                .rev()
                .find(|b| per_replica.is_multiple_of(*b))
                .unwrap_or(1);
            if b != want {
                notes.push(format!(
                    "micro-batch size lowered from {want} to {b} so that it divides the {per_replica} \
                     sequences per replica"
                ));
            }
            (b, per_replica / b)
        }
    };
    Ok((global, mbs, m))
}
