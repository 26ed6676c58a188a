//! Reference strategies of the model presets, and the one place where a user's model, cluster
//! and strategy arguments are turned into a resolved [`Strategy`].

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use serde::Deserialize;

use crate::strategy::{resolve, Strategy, StrategySpec};
use crate::PlanError;

/// A model preset's reference setup.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reference {
    /// Cluster as `NAME:N`.
    pub cluster: String,
    /// Where the values come from.
    pub note: String,
    /// The strategy (without dp and micro-batch count, which are derived).
    #[serde(flatten)]
    pub strategy: StrategySpec,
}

const REFERENCES: &str = include_str!("../presets/references.toml");

/// The reference setup of a model preset, if it has one.
pub fn reference(model_name: &str) -> Option<Reference> {
    let table: std::collections::BTreeMap<String, Reference> = match toml::from_str(REFERENCES) {
        Ok(t) => t,
        Err(_) => return None,
    };
    table.get(model_name).cloned()
}

/// The training run's sequence length and global batch, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunShape {
    /// Tokens per sample.
    pub seq_len: u32,
    /// Sequences per optimizer step.
    pub global_batch: u32,
    /// Where each came from, when not from the user.
    pub notes: Vec<String>,
}

/// The run's sequence length and global batch for a model: the user's (`--seq-len`,
/// `--global-batch`, or their strategy file keys), else a model file's own legacy `seq_len`
/// / `global_batch` keys, else the model's reference run; errors say what to pass. A Hugging
/// Face config's `max_position_embeddings` is never a training length.
pub fn run_shape(model: &ModelConfig, user: &StrategySpec) -> Result<RunShape, PlanError> {
    let reference = reference(&model.name).map(|r| r.strategy);
    let from_ref = |pick: fn(&StrategySpec) -> Option<u32>| reference.as_ref().and_then(pick);
    let seq = user.seq_len.map(|s| (s, None)).or_else(|| {
        (model.seq_len > 0).then_some((model.seq_len, Some("the model file's (legacy key)")))
    });
    let seq = seq.or_else(|| from_ref(|r| r.seq_len).map(|s| (s, Some("the reference run's"))));
    let batch = user.global_batch.map(|b| (b, None)).or_else(|| {
        model
            .global_batch
            .map(|b| (b, Some("the model file's (legacy key)")))
    });
    let batch =
        batch.or_else(|| from_ref(|r| r.global_batch).map(|b| (b, Some("the reference run's"))));
    let (Some((seq_len, seq_from)), Some((global_batch, batch_from))) = (seq, batch) else {
        let missing = match (seq, batch) {
            (None, None) => "--global-batch N and --seq-len N",
            (None, _) => "--seq-len N",
            _ => "--global-batch N",
        };
        return Err(PlanError::Batch(format!(
            "{} has no reference batch: pass {missing} (the run's sequences per step and tokens \
             per sequence, flags or strategy file keys global_batch / seq_len)",
            model.name
        )));
    };
    if seq_len == 0 {
        return Err(PlanError::Batch(
            "--seq-len 0: a sample needs at least one token".into(),
        ));
    }
    let mut notes = Vec::new();
    match (seq_from, batch_from) {
        (Some(a), Some(b)) if a == b => notes.push(format!(
            "global batch {global_batch} × {seq_len} tokens: {a} values for {}",
            model.name
        )),
        _ => {
            if let Some(b) = batch_from {
                notes.push(format!(
                    "global batch {global_batch} is {b} value for {}",
                    model.name
                ));
            }
            if let Some(a) = seq_from {
                notes.push(format!(
                    "sequence length {seq_len} is {a} value for {}",
                    model.name
                ));
            }
        }
    }
    Ok(RunShape {
        seq_len,
        global_batch,
        notes,
    })
}

/// The inputs of a plan after resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The model at the run's sequence length (what [`crate::Plan::new`] takes).
    pub model: ModelConfig,
    /// The cluster.
    pub cluster: Cluster,
    /// The strategy.
    pub strategy: Strategy,
    /// How defaults were chosen (printed with the plan).
    pub notes: Vec<String>,
}

/// Resolves a user's strategy layers for a model: the model's reference (if any), then the
/// user's spec (file overlaid with flags). `cluster` is the user's `--cluster`, or `None`
/// for the model's reference cluster. The run's sequence length and global batch come from
/// [`run_shape`]; the resolved model carries the sequence length.
pub fn resolve_inputs(
    model: &ModelConfig,
    cluster: Option<Cluster>,
    user: &StrategySpec,
) -> Result<Resolved, PlanError> {
    let reference = reference(&model.name);
    let mut notes = Vec::new();
    let cluster = match (cluster, &reference) {
        (Some(c), _) => c,
        (None, Some(r)) => {
            notes.push(format!(
                "cluster {} is {}'s reference",
                r.cluster, model.name
            ));
            Cluster::from_name(&r.cluster).map_err(PlanError::Hardware)?
        }
        (None, None) => {
            return Err(PlanError::Reference(format!(
                "model {} ({:.3} B parameters) has no reference cluster to plan it on; pass --cluster NAME:N (see `pangu clusters`), e.g. --cluster dgx-h100:8",
                model.name,
                model.params().total as f64 / 1e9
            )))
        }
    };
    let base = reference
        .as_ref()
        .map(|r| r.strategy.clone())
        .unwrap_or_default();
    if let Some(r) = &reference {
        if user == &StrategySpec::default() {
            notes.push(format!("strategy: {}'s reference ({})", model.name, r.note));
        }
    }
    let mut merged = base.overlay(user);
    if merged.attention.is_none() {
        let (attention, why) = crate::strategy::default_attention(&cluster.spec.chip);
        merged.attention = Some(attention);
        notes.push(why);
    }
    let shape = run_shape(model, user)?;
    let model = model
        .with_seq_len(shape.seq_len)
        .map_err(PlanError::Model)?;
    let (strategy, more) = resolve(&merged, user, shape.global_batch, cluster.chips())?;
    notes.extend(more);
    notes.extend(shape.notes);
    Ok(Resolved {
        model,
        cluster,
        strategy,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_reference_resolves_and_plans() {
        let mut with = 0;
        for (name, _) in pangu_model::presets() {
            let m = ModelConfig::preset(name).unwrap();
            let Some(reference) = reference(name) else {
                continue;
            };
            with += 1;
            // A reference states the run: sequence length and global batch.
            assert!(reference.strategy.seq_len.is_some(), "{name}");
            assert!(reference.strategy.global_batch.is_some(), "{name}");
            let r = resolve_inputs(&m, None, &StrategySpec::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::Plan::new(&r.model, &r.cluster, &r.strategy)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(
            with, 14,
            "the PanGu-α, GPT, MPT and Llama 3 405B references"
        );
    }

    #[test]
    fn the_run_comes_from_the_user_then_the_model_file_then_the_reference() {
        let pangu = ModelConfig::preset("pangu-alpha-200b").unwrap();
        let none = StrategySpec::default();
        let r = run_shape(&pangu, &none).unwrap();
        assert_eq!((r.seq_len, r.global_batch), (1024, 512));
        assert!(r.notes[0].contains("reference run"), "{:?}", r.notes);
        let user = StrategySpec {
            seq_len: Some(512),
            global_batch: Some(64),
            ..Default::default()
        };
        let r = run_shape(&pangu, &user).unwrap();
        assert_eq!((r.seq_len, r.global_batch, r.notes.len()), (512, 64, 0));
        // A legacy model file's own keys come before the reference.
        let mut legacy = pangu.clone();
        (legacy.seq_len, legacy.global_batch) = (256, Some(32));
        let r = run_shape(&legacy, &none).unwrap();
        assert_eq!((r.seq_len, r.global_batch), (256, 32));
        assert!(r.notes[0].contains("legacy"), "{:?}", r.notes);
        // The resolved model carries the sequence length; the plan is built at it.
        let r = resolve_inputs(&pangu, None, &user).unwrap();
        assert_eq!((r.model.seq_len, r.strategy.global_batch), (512, 64));
        // Beyond the learned position table: refused, naming the table.
        let long = StrategySpec {
            seq_len: Some(2048),
            ..user
        };
        let e = resolve_inputs(&pangu, None, &long).unwrap_err().to_string();
        assert!(e.contains("1024 rows"), "{e}");
    }

    #[test]
    fn a_model_without_a_reference_says_what_to_pass() {
        let m = ModelConfig::preset("llama3-8b").unwrap();
        let c = Cluster::from_name("dgx-h100:8").ok();
        let none = StrategySpec::default();
        let e = resolve_inputs(&m, c.clone(), &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("llama3-8b has no reference batch: pass --global-batch N and --seq-len N"),
            "{e}"
        );
        let only_batch = StrategySpec {
            global_batch: Some(64),
            ..Default::default()
        };
        let e = resolve_inputs(&m, c.clone(), &only_batch)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pass --seq-len N") && !e.contains("--global-batch N"),
            "{e}"
        );
        let both = StrategySpec {
            seq_len: Some(8192),
            ..only_batch
        };
        let r = resolve_inputs(&m, c.clone(), &both).unwrap();
        assert_eq!((r.model.seq_len, r.strategy.global_batch), (8192, 64));
        let p = crate::Plan::build(&r.model, &r.cluster, &r.strategy).unwrap();
        assert_eq!(p.model.seq_len, 8192);
        // A learned table bounds the length.
        let g = ModelConfig::preset("gpt3-125m").unwrap();
        let long = StrategySpec {
            seq_len: Some(4096),
            ..both
        };
        let e = resolve_inputs(&g, c, &long).unwrap_err().to_string();
        assert!(e.contains("2048 rows"), "{e}");
    }

    #[test]
    fn pangu_200b_reference_is_the_papers_strategy() {
        let m = ModelConfig::preset("pangu-alpha-200b").unwrap();
        let r = resolve_inputs(&m, None, &StrategySpec::default()).unwrap();
        let s = &r.strategy;
        assert_eq!(
            (
                s.devices,
                s.dp,
                s.tp,
                s.pp,
                s.micro_batches,
                s.micro_batch_size
            ),
            (2048, 16, 8, 16, 32, 1)
        );
        assert_eq!(s.global_batch, 512);
    }
}
