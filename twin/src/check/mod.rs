//! `twin check`: each strategy through the same `Plan` type twice, executed by the
//! distributed executor on threads and simulated on the profile of its device count.
//!
//! The host's other tenants slow the runs invisibly, so both sides are sampled over the same
//! time: probes of the machine before the runs and after each run ([`probes`]), and each
//! strategy run `repeats` times round-robin, so that a slow spell meets one run of a strategy
//! rather than all of them ([`runs`]). [`Estimate`] picks which machine is compared: the
//! median probe's prediction with the median run, or the fastest with the fastest
//! ([`compare`]).

mod compare;
mod probes;
mod runs;

use std::path::PathBuf;

use pangu_model::ModelConfig;
use pangu_trainer::calibrate::Machine;

pub use compare::Row;
pub use probes::{machine_of, Estimate};
pub use runs::{CLEAN_INTERFERENCE, WARM_UP_STEPS};

use crate::strategies::NamedStrategy;
use crate::TwinError;

/// Probes of the machine per device count before the runs (one more follows each run).
pub const PROBES: usize = 5;

/// How `twin check` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    /// Executor steps per run (the first [`WARM_UP_STEPS`] are not timed).
    pub steps: u64,
    /// Runs of each strategy, round-robin over the strategies.
    pub repeats: u32,
    /// Which machine to compare.
    pub machine: Estimate,
    /// One probe before the runs instead of [`PROBES`].
    pub quick: bool,
    /// The text the runs train on.
    pub corpus: PathBuf,
}

/// What `twin check` reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The probes before the runs start.
    Calibrating,
    /// One run of a strategy ended.
    Ran {
        /// The round (1-based) ...
        round: u32,
        /// ... of this many.
        repeats: u32,
        /// The strategy's name.
        strategy: &'a str,
        /// The run's figure (s): the median of its clean steps, or of all its timed steps.
        step_s: f64,
        /// Timed steps within [`CLEAN_INTERFERENCE`].
        clean_steps: usize,
        /// Timed steps.
        timed_steps: usize,
    },
    /// A strategy's prediction was compared with its measurement.
    Compared(&'a Row),
}

/// The comparison of every strategy.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The model's name.
    pub model: String,
    /// The machine of the smallest device count.
    pub machine: Option<Machine>,
    /// One row per strategy, in the order given.
    pub rows: Vec<Row>,
    /// The median |error| of the step time.
    pub median_abs_error: f64,
    /// The largest |error| of the step time.
    pub worst_abs_error: f64,
    /// The median |error| of the memory.
    pub median_abs_memory_error: f64,
}

impl CheckReport {
    fn new(model: String, machine: Option<Machine>, rows: Vec<Row>) -> CheckReport {
        let sorted_abs = |f: fn(&Row) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(|r| f(r).abs()).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let step = sorted_abs(|r| r.error);
        let memory = sorted_abs(|r| r.memory_error);
        CheckReport {
            model,
            machine,
            median_abs_error: runs::median(step.clone()),
            worst_abs_error: step.last().copied().unwrap_or(0.0),
            median_abs_memory_error: runs::median(memory),
            rows,
        }
    }
}

/// Checks `strategies` of `cfg` on this machine: probes, `repeats` round-robin runs of each,
/// the simulation of each on the profile of its device count, and the comparison.
pub fn check(
    cfg: &ModelConfig,
    strategies: &[NamedStrategy],
    settings: &CheckSettings,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<CheckReport, TwinError> {
    if settings.steps <= WARM_UP_STEPS {
        return Err(TwinError::TooFewSteps {
            steps: settings.steps,
        });
    }
    if strategies.is_empty() {
        return Err(TwinError::NoStrategies);
    }
    let cfg = &crate::profile::at_run_length(cfg)?;
    progress(Progress::Calibrating);
    let data = runs::training_data(cfg, &settings.corpus)?;
    pangu_trainer::bench::set_threads(1);
    let mut cases = strategies
        .iter()
        .map(|s| runs::Case::new(cfg, s, settings.steps))
        .collect::<Result<Vec<_>, _>>()?;
    let mut probes = probes::Probes::new(cfg);
    for c in &cases {
        probes.first(c.devices, if settings.quick { 1 } else { PROBES });
    }
    let repeats = settings.repeats.max(1);
    for round in 1..=repeats {
        for c in &mut cases {
            let figure = c.run(&data)?;
            probes.take(c.devices);
            progress(Progress::Ran {
                round,
                repeats,
                strategy: &c.name,
                step_s: figure.step_s,
                clean_steps: figure.clean_steps,
                timed_steps: figure.timed_steps,
            });
        }
    }
    let machines = probes.machines(settings.machine);
    let mut rows = Vec::new();
    for c in cases {
        let (Some(machine), Some(m)) = (machines.get(&c.devices), c.measured(settings.machine))
        else {
            continue;
        };
        let row = compare::compare(cfg, m, machine)?;
        progress(Progress::Compared(&row));
        rows.push(row);
    }
    let first = machines.values().next().cloned();
    Ok(CheckReport::new(cfg.name.clone(), first, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_steps_are_refused_before_anything_runs() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = ModelConfig::preset("pangu-alpha-tiny")?;
        let settings = CheckSettings {
            steps: 2,
            repeats: 1,
            machine: Estimate::Typical,
            quick: true,
            corpus: PathBuf::from("/nonexistent"),
        };
        let mut calls = 0;
        let r = check(&cfg, &[], &settings, &mut |_| calls += 1);
        assert!(
            matches!(r, Err(TwinError::TooFewSteps { steps: 2 })),
            "{r:?}"
        );
        assert_eq!(calls, 0);
        Ok(())
    }
}
