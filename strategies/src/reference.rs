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

/// The inputs of a plan after resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The cluster.
    pub cluster: Cluster,
    /// The strategy.
    pub strategy: Strategy,
    /// How defaults were chosen (printed with the plan).
    pub notes: Vec<String>,
}

/// Resolves a user's strategy layers for a model: the model's reference (if any), then the
/// user's spec (file overlaid with flags). `cluster` is the user's `--cluster`, or `None`
/// for the model's reference cluster.
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
                "model {} has no reference cluster; pass --cluster NAME:N (see `pangu clusters`)",
                model.name
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
    let merged = base.overlay(user);
    let (strategy, more) = resolve(&merged, user, model.global_batch, cluster.chips())?;
    notes.extend(more);
    if user.global_batch.is_none() {
        notes.push(format!(
            "global batch {} is {}'s preset value",
            strategy.global_batch, model.name
        ));
    }
    Ok(Resolved {
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
        for (name, _) in pangu_model::presets() {
            let m = ModelConfig::preset(name).unwrap();
            assert!(reference(name).is_some(), "{name} has no reference");
            let r = resolve_inputs(&m, None, &StrategySpec::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::Plan::new(&m, &r.cluster, &r.strategy).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
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
