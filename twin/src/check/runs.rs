//! The executor's side of `twin check`: each strategy's plan on this machine, its runs, and
//! the step time each run stands for.

use pangu_model::ModelConfig;
use pangu_strategies::{Plan, Precision};
use pangu_trainer::cpustat::Window;
use pangu_trainer::data::{self, Packed};
use pangu_trainer::dist::{self, DistConfig, DistResult};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train;

use super::probes::Estimate;
use crate::strategies::NamedStrategy;
use crate::TwinError;

/// Steps of each run that warm up and are not timed.
pub const WARM_UP_STEPS: u64 = 2;
/// A timed step is clean when other work took at most this share of the machine.
pub const CLEAN_INTERFERENCE: f64 = 0.05;
/// Bytes of the corpus the check trains on: enough samples for the steps, a tokenizer in
/// seconds.
const CORPUS_BYTES: usize = 1_500_000;

/// The training data of the runs: the start of the corpus, tokenized by a tokenizer trained
/// on it.
pub(super) fn training_data(
    cfg: &ModelConfig,
    corpus: &std::path::Path,
) -> Result<Packed, TwinError> {
    let text = data::read_corpus(corpus)?;
    let end = (0..=text.len().min(CORPUS_BYTES))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (train_text, _) = data::split(&text[..end]);
    let tok = Tokenizer::train(train_text, cfg.vocab as usize)?;
    Ok(Packed::new(&tok, train_text, cfg.seq_len as usize))
}

/// What one run of a strategy stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Figure {
    /// The median of its timed steps (of the clean ones where there are any), seconds.
    pub(super) step_s: f64,
    /// Timed steps whose interference stayed within [`CLEAN_INTERFERENCE`].
    pub(super) clean_steps: usize,
    /// Timed steps.
    pub(super) timed_steps: usize,
}

/// One run of a strategy.
pub(super) struct Run {
    pub(super) figure: Figure,
    /// The executor's result.
    pub(super) result: DistResult,
}

impl Run {
    /// The figure of a run: the median of its timed steps, the clean ones where there are any.
    fn of(result: DistResult) -> Run {
        let warm_up = WARM_UP_STEPS as usize;
        let timed: Vec<(f64, Window)> = result
            .step_s
            .iter()
            .enumerate()
            .skip(warm_up)
            .map(|(i, &t)| (t, result.step_cpu.get(i).copied().unwrap_or_default()))
            .collect();
        let clean: Vec<f64> = timed
            .iter()
            .filter(|(_, w)| w.interference() <= CLEAN_INTERFERENCE)
            .map(|(t, _)| *t)
            .collect();
        let clean_steps = clean.len();
        let step_s = if clean.is_empty() {
            median(timed.iter().map(|(t, _)| *t).collect())
        } else {
            median(clean)
        };
        Run {
            figure: Figure {
                step_s,
                clean_steps,
                timed_steps: timed.len(),
            },
            result,
        }
    }
}

/// The median (the upper one of an even count; 0 when empty).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The error of a strategy whose plan or run failed.
fn failed(strategy: &str) -> impl FnOnce(pangu_trainer::TrainError) -> TwinError + '_ {
    move |source| TwinError::Strategy {
        strategy: strategy.to_string(),
        source,
    }
}

/// A strategy, its plan on this machine and its runs so far.
pub(super) struct Case {
    pub(super) name: String,
    pub(super) devices: u32,
    pub(super) plan: Plan,
    settings: train::Settings,
    steps: u64,
    /// Each run, in run order.
    runs: Vec<Run>,
}

impl Case {
    /// The strategy in fp32 at the run's global batch unless it says otherwise, planned on
    /// this machine, for runs of `steps` steps without dropout.
    pub(super) fn new(cfg: &ModelConfig, s: &NamedStrategy, steps: u64) -> Result<Case, TwinError> {
        let mut spec = s.spec.clone();
        spec.precision.get_or_insert(Precision::Fp32);
        let plan = pangu_trainer::host::plan_for(cfg, &spec).map_err(failed(&s.name))?;
        let mut settings = train::Settings::for_model(cfg, steps);
        settings.batch = plan.strategy.global_batch as usize;
        settings.micro_batches = plan.strategy.micro_batches as usize;
        settings.dropout = 0.0;
        Ok(Case {
            name: s.name.clone(),
            devices: plan.strategy.devices,
            plan,
            settings,
            steps,
            runs: Vec::new(),
        })
    }

    /// Runs the executor once on `data`; returns the run's figure, kept for [`Case::measured`].
    pub(super) fn run(&mut self, data: &Packed) -> Result<Figure, TwinError> {
        let dc = DistConfig {
            timeout: std::time::Duration::from_secs(120),
            fail: None,
        };
        let result = dist::train_threads(&self.plan, &self.settings, &dc, data, self.steps)
            .map_err(failed(&self.name))?;
        let run = Run::of(result);
        let figure = run.figure;
        self.runs.push(run);
        Ok(figure)
    }

    /// The run that stands for the strategy (the median run, or the fastest), with the step
    /// time of every run in run order; `None` before any run.
    pub(super) fn measured(mut self, how: Estimate) -> Option<Measured> {
        let runs_s: Vec<f64> = self.runs.iter().map(|r| r.figure.step_s).collect();
        self.runs
            .sort_by(|x, y| x.figure.step_s.total_cmp(&y.figure.step_s));
        let pick = match how {
            Estimate::Typical => self.runs.len() / 2,
            Estimate::Quiet => 0,
        };
        if self.runs.is_empty() {
            return None;
        }
        let run = self.runs.swap_remove(pick);
        Some(Measured {
            name: self.name,
            devices: self.devices,
            plan: self.plan,
            run,
            runs_s,
        })
    }
}

/// A strategy's measurement: the run that stands for it.
pub(super) struct Measured {
    pub(super) name: String,
    pub(super) devices: u32,
    /// The executor's plan.
    pub(super) plan: Plan,
    pub(super) run: Run,
    /// Each run's step time, in run order.
    pub(super) runs_s: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_upper_middle_and_zero_when_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
