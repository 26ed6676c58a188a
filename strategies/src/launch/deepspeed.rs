//! DeepSpeed JSON configs (`ds_config.json`). Key names and defaults are those of DeepSpeed's
//! configuration reference (deepspeed.ai/docs/config-json): `train_batch_size =
//! train_micro_batch_size_per_gpu × gradient_accumulation_steps × data-parallel size`,
//! ZeRO stage 0 by default, fp32 unless `fp16` or `bf16` is enabled. A config has no model
//! shape: it combines with `--model`.

use serde_json::{Map, Value};

use super::error::{precision_of, Launch, LaunchError};
use super::megatron::zero_stage;
use crate::strategy::{Precision, StrategySpec};

/// Reads a DeepSpeed config.
pub(super) fn parse(text: &str, source_name: &str) -> Result<Launch, LaunchError> {
    let root: Value = serde_json::from_str(text).map_err(|e| LaunchError::Json {
        source_name: source_name.into(),
        message: e.to_string(),
    })?;
    let Value::Object(root) = root else {
        return Err(LaunchError::Json {
            source_name: source_name.into(),
            message: "the config must be a JSON object ({ ... })".into(),
        });
    };
    let mut ignored = Vec::new();
    let mut notes = Vec::new();
    let mut spec = StrategySpec::default();
    batches(&root, &mut spec, &mut notes)?;
    let mut fp16 = false;
    let mut bf16 = false;
    for (key, value) in &root {
        match key.as_str() {
            "train_batch_size"
            | "train_micro_batch_size_per_gpu"
            | "gradient_accumulation_steps" => {}
            "zero_optimization" => zero(value, &mut spec, &mut ignored, &mut notes)?,
            "fp16" => fp16 = enabled(value, "fp16", &mut ignored)?,
            "bf16" | "bfloat16" => bf16 = enabled(value, key, &mut ignored)?,
            "activation_checkpointing" => checkpointing(value, &mut notes),
            _ => ignored.push(format!("{key}={}", compact(value))),
        }
    }
    spec.precision = Some(match precision_of(fp16, bf16, source_name)? {
        Some(p) => p,
        None => {
            notes.push("neither fp16 nor bf16 is enabled: DeepSpeed trains in fp32".into());
            Precision::Fp32
        }
    });
    Ok(Launch {
        model: None,
        spec,
        ignored,
        notes,
    })
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A whole number at `key`; `"auto"` (the Hugging Face integration's placeholder) is absent.
fn count(root: &Map<String, Value>, key: &str) -> Result<Option<u32>, LaunchError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| LaunchError::BadValue {
                argument: key.into(),
                value: v.to_string(),
                expected: "a positive whole number".into(),
            }),
    }
}

/// The three batch keys, checked against each other; the data-parallel size they imply is
/// checked again when the strategy is resolved on the cluster.
fn batches(
    root: &Map<String, Value>,
    spec: &mut StrategySpec,
    notes: &mut Vec<String>,
) -> Result<(), LaunchError> {
    let global = count(root, "train_batch_size")?;
    let micro = count(root, "train_micro_batch_size_per_gpu")?;
    let accumulation = count(root, "gradient_accumulation_steps")?;
    if let (Some(g), Some(b), Some(m)) = (global, micro, accumulation) {
        let per_replica = u64::from(b) * u64::from(m);
        if !u64::from(g).is_multiple_of(per_replica) {
            return Err(LaunchError::Incomplete(format!(
                "train_batch_size {g} is not train_micro_batch_size_per_gpu {b} × gradient_accumulation_steps {m} × a data-parallel size \
                 ({g} / {per_replica} is not whole); DeepSpeed refuses it too"
            )));
        }
        notes.push(format!(
            "train_batch_size {g} = {b} × {m} × dp: dp must be {}",
            u64::from(g) / per_replica
        ));
    }
    if global.is_none() {
        if let Some(b) = micro {
            notes.push(format!(
                "no train_batch_size: DeepSpeed uses {b} × {} × dp; give --global-batch for this dp",
                accumulation.unwrap_or(1)
            ));
        }
    }
    spec.global_batch = global;
    spec.micro_batch_size = micro;
    spec.micro_batches = accumulation;
    Ok(())
}

/// `zero_optimization.stage`; the other ZeRO keys tune buckets and offload, not modelled.
fn zero(
    value: &Value,
    spec: &mut StrategySpec,
    ignored: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<(), LaunchError> {
    let Value::Object(z) = value else {
        return Err(LaunchError::BadValue {
            argument: "zero_optimization".into(),
            value: value.to_string(),
            expected: "an object such as {\"stage\": 2}".into(),
        });
    };
    for (key, v) in z {
        match key.as_str() {
            "stage" => {
                let stage = v
                    .as_u64()
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| LaunchError::BadValue {
                        argument: "zero_optimization.stage".into(),
                        value: v.to_string(),
                        expected: "a ZeRO stage 0, 1, 2 or 3".into(),
                    })?;
                spec.opt_shard = Some(zero_stage(stage, "zero_optimization.stage")?);
            }
            k if k.starts_with("offload") || k == "cpu_offload" => notes.push(format!(
                "zero_optimization.{k}: offload is not modelled; memory and time assume the state stays on the device"
            )),
            _ => ignored.push(format!("zero_optimization.{key}={}", compact(v))),
        }
    }
    if spec.opt_shard.is_none() {
        spec.opt_shard = Some(crate::strategy::OptShard::None);
    }
    Ok(())
}

/// `{"enabled": true, ...}`; the loss-scaling keys are listed as ignored.
fn enabled(value: &Value, key: &str, ignored: &mut Vec<String>) -> Result<bool, LaunchError> {
    let Value::Object(o) = value else {
        return Err(LaunchError::BadValue {
            argument: key.into(),
            value: value.to_string(),
            expected: "an object such as {\"enabled\": true}".into(),
        });
    };
    for (k, v) in o {
        if k != "enabled" {
            ignored.push(format!("{key}.{k}={}", compact(v)));
        }
    }
    match o.get("enabled") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "auto" => Ok(false),
        Some(v) => Err(LaunchError::BadValue {
            argument: format!("{key}.enabled"),
            value: v.to_string(),
            expected: "true or false".into(),
        }),
    }
}

/// DeepSpeed's `activation_checkpointing` configures its checkpointing API (partitioning the
/// saved layer inputs over the model-parallel group, CPU copies, contiguous buffers); which
/// layers are recomputed is the training script's choice (Megatron's recompute arguments).
/// Nothing in it maps to a remat level, so every key is a note.
fn checkpointing(value: &Value, notes: &mut Vec<String>) {
    let keys: Vec<String> = match value {
        Value::Object(o) => o.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        v => vec![v.to_string()],
    };
    notes.push(format!(
        "activation_checkpointing ({}): DeepSpeed's checkpointing settings, not modelled; \
         which layers are recomputed comes from the training script (--remat, or the Megatron recompute arguments)",
        keys.join(", ")
    ));
}
