//! Megatron-LM (and Megatron-DeepSpeed) command-line arguments. Argument names and defaults
//! are those of Megatron-LM's `megatron/training/arguments.py` (NVIDIA/Megatron-LM, core_r0.x
//! series); Megatron-DeepSpeed's extra names (`--num-key-value-heads`, `--zero-stage`,
//! `--checkpoint-activations`) are those of microsoft/Megatron-DeepSpeed's `arguments.py`.

use super::args::Args;
use super::error::{precision_of, unmodelled, Launch, LaunchError};
use crate::strategy::{
    Attention, GradAccumulation, OptShard, Precision, Remat, ScheduleKind, StrategySpec,
};

/// Megatron-LM's default `--make-vocab-size-divisible-by`.
const MEGATRON_VOCAB_DIVISOR: u32 = 128;

/// Reads a Megatron argument line.
pub(super) fn parse(line: &str) -> Result<Launch, LaunchError> {
    let mut a = Args::parse(line)?;
    let mut notes = Vec::new();
    if !a.launcher.is_empty() {
        notes.push(format!(
            "launcher `{}` skipped: the world size comes from --devices / --cluster",
            a.launcher.join(" ")
        ));
    }
    refuse_moe(&mut a, &mut notes)?;
    // Transformer Engine's fp8 (`e4m3` or `hybrid`) on top of --bf16: the linear layers' GEMMs.
    let fp8 = a.text("fp8-format")?;
    let cp = a.num("context-parallel-size")?;
    let cp_comm = cp_comm(&mut a)?;
    let mut spec = parallelism(&mut a, &mut notes)?;
    spec.cp = cp;
    spec.cp_comm = cp_comm;
    let layers = a.num("num-layers")?;
    spec.schedule = Some(schedule(&mut a, layers, spec.pp.unwrap_or(1))?);
    spec.micro_batch_size = a.num("micro-batch-size")?;
    spec.global_batch = a.num("global-batch-size")?;
    spec.precision = Some(precision(&mut a, &mut notes)?);
    if let Some((arg, v)) = fp8 {
        if !matches!(v.as_str(), "e4m3" | "hybrid") {
            return Err(LaunchError::BadValue {
                argument: arg,
                value: v,
                expected: "e4m3 or hybrid (Transformer Engine's fp8 recipes)".into(),
            });
        }
        notes.push(format!(
            "{arg} {v}: fp8 linear layers (Transformer Engine), the rest in the 16-bit precision"
        ));
        spec.precision = Some(Precision::Fp8);
    }
    spec.remat = Some(recompute(&mut a, layers, &spec, &mut notes)?);
    spec.vocab_divisible_by = Some(
        a.num("make-vocab-size-divisible-by")?
            .unwrap_or(MEGATRON_VOCAB_DIVISOR),
    );
    spec.seq_len = a.num("seq-length")?;
    spec.attention = attention(&mut a, &mut notes)?;
    let model = super::megatron_model::build(&mut a, layers, &spec, &mut notes)?;
    noted_only(&mut a, &mut notes)?;
    Ok(Launch {
        model,
        spec,
        ignored: a.unread(),
        notes,
    })
}

/// Megatron-core's `--cp-comm-type`: `p2p` is the ring, `all_gather` the Llama 3 variant; the
/// all-to-all forms are not modelled.
fn cp_comm(a: &mut Args) -> Result<Option<crate::strategy::CpComm>, LaunchError> {
    use crate::strategy::CpComm;
    match a.text("cp-comm-type")? {
        None => Ok(None),
        Some((_, v)) if v == "p2p" => Ok(Some(CpComm::Ring)),
        Some((_, v)) if v == "all_gather" => Ok(Some(CpComm::AllGather)),
        Some((arg, v)) => Err(unmodelled("cp-comm-type", &format!("{arg} {v}"))),
    }
}

/// Expert parallelism is refused by name, unless the arguments say the model is dense
/// (Megatron-DeepSpeed's dense scripts pass `--num-experts 1`).
fn refuse_moe(a: &mut Args, notes: &mut Vec<String>) -> Result<(), LaunchError> {
    let is_moe = |k: &str| k == "num-experts" || k.starts_with("moe-") || k.starts_with("expert-");
    let moe = a.matching(is_moe);
    if moe.is_empty() {
        return Ok(());
    }
    let dense = moe.iter().all(|m| {
        (m.key == "num-experts" || m.key.ends_with("parallel-size"))
            && m.values.iter().all(|v| v.text == "1")
    });
    if !dense {
        let first = moe
            .iter()
            .find(|m| !m.values.iter().all(|v| v.text == "1"))
            .unwrap_or(&moe[0]);
        return Err(LaunchError::Unsupported {
            argument: first.shown(),
            reason: "mixture-of-experts models are out of scope for this tool; \
                     simulate a dense model of the same width"
                .into(),
        });
    }
    a.mark(is_moe);
    notes.push("one expert (a dense model): the expert arguments change nothing".into());
    Ok(())
}

/// tp, pp, sequence parallelism and optimizer sharding.
fn parallelism(a: &mut Args, notes: &mut Vec<String>) -> Result<StrategySpec, LaunchError> {
    let tp = a.num("tensor-model-parallel-size")?.unwrap_or(1);
    let mut pp = a.num("pipeline-model-parallel-size")?.unwrap_or(1);
    if a.flag("no-pipeline-parallel") && pp != 1 {
        notes.push(format!(
            "--no-pipeline-parallel: DeepSpeed's pipeline engine is off, so pp is 1 (not {pp})"
        ));
        pp = 1;
    }
    let distributed = a.flag("use-distributed-optimizer");
    let zero = a.num("zero-stage")?;
    // Megatron-LM's distributed optimizer shards the optimizer state over the data-parallel
    // group and reduce-scatters the gradients (docs/source/api-guide/dist_optimizer.md):
    // ZeRO-1's state sharding.
    let opt = match (zero, distributed) {
        (Some(z), d) => {
            let o = zero_stage(z, "--zero-stage")?;
            if d && o != OptShard::Zero1 && o != OptShard::None {
                return Err(LaunchError::Incomplete(format!(
                    "--use-distributed-optimizer and --zero-stage {z} both shard the optimizer; keep one"
                )));
            }
            if d {
                OptShard::Zero1
            } else {
                o
            }
        }
        (None, true) => OptShard::Zero1,
        (None, false) => OptShard::None,
    };
    // Megatron-LM turns sequence parallelism off without tensor parallelism (arguments.py,
    // `validate_args`: "disable sequence parallelism when tp=1").
    let mut sp = a.flag("sequence-parallel");
    if sp && tp == 1 {
        notes.push("--sequence-parallel with tp 1: Megatron turns it off".into());
        sp = false;
    }
    // Megatron-LM asserts sequence parallelism for the overlap (arguments.py: "Tensor
    // parallel communication/GEMM overlap can happen only when sequence parallelism is
    // enabled"), after turning sequence parallelism off at tp 1.
    let overlap = a.flag("tp-comm-overlap");
    if overlap && !sp {
        return Err(LaunchError::Incomplete(format!(
            "--tp-comm-overlap needs --sequence-parallel{}: Megatron-LM refuses it otherwise",
            if tp == 1 {
                " and --tensor-model-parallel-size above 1"
            } else {
                ""
            }
        )));
    }
    // Megatron-core fuses the micro-batches' gradient sum into the weight-gradient GEMM unless
    // told not to (arguments.py: `--no-gradient-accumulation-fusion`).
    let grad_accumulation = if a.flag("no-gradient-accumulation-fusion") {
        Some(GradAccumulation::Separate)
    } else {
        a.flag("gradient-accumulation-fusion")
            .then_some(GradAccumulation::Fused)
    };
    // A pipeline stage's sends block it (p2p_communication.py: `batch_isend_irecv`, a wait on
    // every request, then `torch.cuda.synchronize()`) unless `--overlap-p2p-communication`.
    let p2p_blocking = (pp > 1 && !a.flag("overlap-p2p-communication")).then_some(true);
    Ok(StrategySpec {
        tp: Some(tp),
        pp: Some(pp),
        seq_parallel: Some(sp),
        tp_comm_overlap: overlap.then_some(true),
        grad_accumulation,
        p2p_blocking,
        opt_shard: Some(opt),
        ..Default::default()
    })
}

/// A DeepSpeed ZeRO stage as an optimizer sharding (ZeRO paper, Rajbhandari et al. 2020:
/// stage 1 shards optimizer states, 2 also gradients, 3 also parameters).
pub(super) fn zero_stage(stage: u32, argument: &str) -> Result<OptShard, LaunchError> {
    Ok(match stage {
        0 => OptShard::None,
        1 => OptShard::Zero1,
        2 => OptShard::Zero2,
        3 => OptShard::Zero3,
        _ => {
            return Err(LaunchError::BadValue {
                argument: argument.into(),
                value: stage.to_string(),
                expected: "a ZeRO stage 0, 1, 2 or 3".into(),
            })
        }
    })
}

/// The pipeline schedule: Megatron runs 1F1B, interleaved over virtual stages when given.
fn schedule(a: &mut Args, layers: Option<u32>, pp: u32) -> Result<ScheduleKind, LaunchError> {
    let per_stage = a.num("num-layers-per-virtual-pipeline-stage")?;
    let vpp = a.num("virtual-pipeline-model-parallel-size")?;
    let chunks = match (per_stage, vpp) {
        (Some(k), _) => {
            let arg = format!("--num-layers-per-virtual-pipeline-stage {k}");
            let l = layers.ok_or_else(|| {
                LaunchError::Incomplete(format!(
                    "{arg} needs --num-layers to count the virtual stages"
                ))
            })?;
            let per_chunk = u64::from(k) * u64::from(pp);
            if k == 0 || !u64::from(l).is_multiple_of(per_chunk) {
                return Err(LaunchError::BadValue {
                    argument: "--num-layers-per-virtual-pipeline-stage".into(),
                    value: k.to_string(),
                    expected: format!(
                        "a layer count whose product with pp {pp} divides the {l} layers"
                    ),
                });
            }
            (u64::from(l) / per_chunk) as u32
        }
        (None, Some(v)) => v,
        (None, None) => 1,
    };
    Ok(if chunks >= 2 {
        ScheduleKind::Interleaved { chunks }
    } else {
        ScheduleKind::OneFOneB
    })
}

/// `--fp16` / `--bf16`; neither is fp32, Megatron's default.
fn precision(a: &mut Args, notes: &mut Vec<String>) -> Result<Precision, LaunchError> {
    let fp16 = a.flag("fp16");
    let bf16 = a.flag("bf16");
    Ok(match precision_of(fp16, bf16, "Megatron arguments")? {
        Some(p) => p,
        None => {
            notes.push("neither --fp16 nor --bf16: Megatron trains in fp32".into());
            Precision::Fp32
        }
    })
}

/// Activation recomputation: `--recompute-granularity selective` (or the older
/// `--recompute-activations`), `full` with the `uniform` method over groups of
/// `--recompute-num-layers` (every:K), or `block` (the first N layers of each stage
/// individually; all of them is `full`). The 2021 names `--checkpoint-activations`
/// / `--activations-checkpoint-*` mean the same.
fn recompute(
    a: &mut Args,
    layers: Option<u32>,
    spec: &StrategySpec,
    notes: &mut Vec<String>,
) -> Result<Remat, LaunchError> {
    let granularity = a.text("recompute-granularity")?;
    let method = match a.text("recompute-method")? {
        Some(m) => Some(m),
        None => a.text("activations-checkpoint-method")?,
    };
    let num = match a.num("recompute-num-layers")? {
        Some(n) => Some(n),
        None => match a.num("activations-checkpoint-num-layers")? {
            Some(n) => Some(n),
            None => a.num("checkpoint-num-layers")?,
        },
    };
    let old_full = a.flag("checkpoint-activations");
    let selective = a.flag("recompute-activations");
    let full = match granularity.as_ref().map(|(_, g)| g.to_ascii_lowercase()) {
        Some(g) if g == "selective" => return Ok(Remat::Selective),
        Some(g) if g == "full" => true,
        Some(g) => {
            return Err(LaunchError::BadValue {
                argument: "--recompute-granularity".into(),
                value: g,
                expected: "full or selective".into(),
            })
        }
        None if selective => return Ok(Remat::Selective),
        None => old_full || method.is_some(),
    };
    if !full {
        return Ok(Remat::None);
    }
    let k = num.unwrap_or(1);
    let method = match method {
        Some((_, m)) => m.to_ascii_lowercase(),
        None if old_full => "uniform".to_string(),
        None => {
            return Err(LaunchError::Incomplete(
                "--recompute-granularity full needs --recompute-method uniform or block (Megatron refuses it without one)".into(),
            ))
        }
    };
    match method.as_str() {
        "uniform" if k == 0 => Err(LaunchError::BadValue {
            argument: "--recompute-num-layers".into(),
            value: "0".into(),
            expected: "at least 1 layer per recomputed group".into(),
        }),
        "uniform" => Ok(if k == 1 { Remat::Full } else { Remat::Every(k) }),
        "block" => {
            let chunks = spec.schedule.map_or(1, |s| s.chunks());
            let stages = spec.pp.unwrap_or(1) * chunks;
            let per_chunk = layers.map(|l| l.div_ceil(stages.max(1)));
            match per_chunk {
                _ if k == 0 => Ok(Remat::None),
                Some(pc) if k >= pc => {
                    notes.push(format!(
                        "--recompute-method block with {k} layers covers all {pc} layers of each stage: full recompute"
                    ));
                    Ok(Remat::Full)
                }
                _ => Err(LaunchError::Unsupported {
                    argument: format!("--recompute-method block --recompute-num-layers {k}"),
                    reason: format!(
                        "recomputing only the first {k} layers of each stage is not modelled; \
                         this tool models none, selective, full and every:K (uniform groups of K){}",
                        per_chunk.map_or(String::new(), |pc| format!("; {pc} layers per stage"))
                    ),
                }),
            }
        }
        _ => Err(LaunchError::BadValue {
            argument: "--recompute-method".into(),
            value: method,
            expected: "uniform or block".into(),
        }),
    }
}

/// The attention kernel: Megatron-LM's `--use-flash-attn` (and Megatron-DeepSpeed's
/// `--use-flash-attn-v1/-v2/-triton`) and Megatron-core's `--attention-backend` (its
/// `AttnBackend` enum, megatron/core/transformer/enums.py). `flash` is FlashAttention and
/// `fused` cuDNN's fused attention through Transformer Engine, both flash-style kernels that
/// keep no s×s matrix; `auto` lets Transformer Engine pick one of them where the shape allows
/// (on sm80+); `unfused` (Transformer Engine's) and `local` (Megatron's own, with its fused
/// softmax) write the scores and keep them. Unset: the chip's default.
fn attention(a: &mut Args, notes: &mut Vec<String>) -> Result<Option<Attention>, LaunchError> {
    let flash_flags: Vec<&str> = [
        "use-flash-attn",
        "use-flash-attn-v1",
        "use-flash-attn-v2",
        "use-flash-attn-triton",
    ]
    .into_iter()
    .filter(|f| a.flag(f))
    .collect();
    let flag = flash_flags.first().map(|f| format!("--{f}"));
    let backend = match a.text("attention-backend")? {
        None => None,
        Some((arg, v)) => {
            let (kind, how) = match v.as_str() {
                "flash" => (Attention::Flash, "FlashAttention"),
                "fused" => (
                    Attention::Flash,
                    "cuDNN's fused attention (Transformer Engine), a flash-style kernel",
                ),
                "auto" => (
                    Attention::Flash,
                    "Transformer Engine picks FlashAttention or cuDNN's fused attention where the shape allows",
                ),
                "unfused" => (
                    Attention::Materialised,
                    "Transformer Engine's unfused attention: the scores are written and kept",
                ),
                "local" => (
                    Attention::Materialised,
                    "Megatron's own attention (a fused softmax, the scores written and kept)",
                ),
                _ => {
                    return Err(LaunchError::BadValue {
                        argument: arg,
                        value: v,
                        expected: "flash, fused, unfused, local or auto (Megatron-core's AttnBackend)"
                            .into(),
                    })
                }
            };
            notes.push(format!("{arg} {v}: attention {kind} ({how})"));
            Some((arg, v, kind))
        }
    };
    match (flag, backend) {
        (Some(f), Some((arg, v, Attention::Materialised))) => Err(LaunchError::Incomplete(
            format!("{f} and {arg} {v} disagree on the attention kernel; keep one"),
        )),
        (_, Some((_, _, kind))) => Ok(Some(kind)),
        (Some(f), None) => {
            notes.push(format!(
                "{f}: attention flash (a fused kernel that keeps no s×s scores)"
            ));
            Ok(Some(Attention::Flash))
        }
        (None, None) => Ok(None),
    }
}

/// Arguments read and reported but not modelled.
fn noted_only(a: &mut Args, notes: &mut Vec<String>) -> Result<(), LaunchError> {
    let grad = a.flag("overlap-grad-reduce");
    let param = a.flag("overlap-param-gather");
    if grad || param {
        notes.push(
            "--overlap-grad-reduce / --overlap-param-gather: the simulator always reduces \
             gradient buckets as soon as the backward has produced them"
                .into(),
        );
    }
    if let Some((arg, v)) = a.text("deepspeed-config")? {
        notes.push(format!(
            "{arg} {v}: give the file itself with --deepspeed-config to read it"
        ));
    }
    if a.flag("deepspeed-activation-checkpointing") {
        notes.push(
            "--deepspeed-activation-checkpointing: DeepSpeed's checkpointing implementation; \
             what is recomputed comes from the recompute arguments"
                .into(),
        );
    }
    if let Some(r) = a.take("rampup-batch-size") {
        notes.push(format!(
            "{}: the batch ramp-up is not simulated; the step is at the full global batch",
            r.shown()
        ));
    }
    a.mark(|k| k == "deepspeed" || k == "use-mcore-models");
    Ok(())
}
