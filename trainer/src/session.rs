//! A training session: [`Run::train_until`] runs optimizer steps until a step count, a
//! deadline or its caller says stop; it stops with [`TrainError::Diverged`] on a loss or
//! gradient norm that is not finite, evaluates on held-out samples and writes checkpoints
//! every so many steps and at the end, and reports each step through a callback.
//! `pangu train` (one device) and the app's Training tab both run it: the callback prints a
//! progress bar or plots the curve.
//!
//! The operations are those of calling [`Run::step`], [`Run::evaluate`] and [`Run::save`]
//! in a loop, in the same order, so a session gives the same bits as that loop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::train::{Eval, Run, StepInfo};
use crate::TrainError;

/// When [`Run::train_until`] stops, and what it does on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Until {
    /// Stop once this many optimizer steps are done (counted over the whole run, resumed
    /// steps included; usually the run's `settings.steps`).
    pub steps: u64,
    /// Stop before starting a step once this much wall time has passed since the call
    /// (a step that has started finishes).
    pub deadline: Option<Duration>,
    /// Evaluate on `eval_samples` held-out samples after each step whose number is a
    /// multiple of this (0: no periodic evaluation; the final one always runs).
    pub eval_every: u64,
    /// Held-out samples of a periodic evaluation (the final one uses them all).
    pub eval_samples: usize,
    /// Where and how often to write checkpoints (none: no checkpoints).
    pub checkpoints: Option<Checkpoints>,
}

impl Until {
    /// Up to step `steps`: no deadline, no periodic evaluation, no checkpoints.
    pub fn steps(steps: u64) -> Until {
        Until {
            steps,
            deadline: None,
            eval_every: 0,
            eval_samples: usize::MAX,
            checkpoints: None,
        }
    }
}

/// Checkpoints of a session: after each step whose number is a multiple of `every` (0:
/// none on the way) and at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoints {
    /// The run folder ([`Run::save`]).
    pub dir: PathBuf,
    /// Steps between checkpoints.
    pub every: u64,
}

/// What one step of a session did, as its observer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The step.
    pub step: StepInfo,
    /// The periodic evaluation after it, if one was due.
    pub eval: Option<Eval>,
    /// The checkpoint written after it, if one was due.
    pub checkpoint: Option<&'a Path>,
}

/// The observer's answer after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now, with the final evaluation and checkpoint.
    Stop,
    /// Stop now without them (the observer failed, or nobody is listening any more).
    Abort,
}

/// Why a session stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The run reached [`Until::steps`].
    Steps,
    /// The deadline passed.
    Deadline,
    /// The observer answered [`Control::Stop`].
    Observer,
    /// The observer answered [`Control::Abort`].
    Aborted,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Why it stopped.
    pub stopped: Stopped,
    /// Steps done in this session.
    pub steps: u64,
    /// The evaluation on every held-out sample at the end (none when aborted).
    pub final_eval: Option<Eval>,
    /// The checkpoint of the last step (none without [`Until::checkpoints`] or when aborted).
    pub checkpoint: Option<PathBuf>,
}

/// Whether `every` (0: never) falls on step `step`.
fn due(every: u64, step: u64) -> bool {
    every > 0 && step.is_multiple_of(every)
}

impl Run {
    /// Trains until `until` says stop; after each step, `observer` sees what the step did
    /// (after that step's evaluation and checkpoint) and says whether to go on.
    ///
    /// Stops before a step when the run is at `until.steps` or past the deadline, or after
    /// one when the observer says so; then evaluates on all held-out samples and writes the
    /// last checkpoint (unless this step's is already written, or the observer aborted).
    /// A step whose loss or gradient norm is not finite ends the session with
    /// [`TrainError::Diverged`], naming the step, before anything else is done with it.
    pub fn train_until(
        &mut self,
        until: &Until,
        observer: &mut dyn FnMut(Progress<'_>) -> Control,
    ) -> Result<Outcome, TrainError> {
        let t0 = Instant::now();
        let first = self.step;
        let mut saved: Option<(u64, PathBuf)> = None;
        let stopped = loop {
            if self.step >= until.steps {
                break Stopped::Steps;
            }
            if until.deadline.is_some_and(|d| t0.elapsed() >= d) {
                break Stopped::Deadline;
            }
            let info = self.step();
            if !(info.loss.is_finite() && info.grad_norm.is_finite()) {
                return Err(TrainError::Diverged {
                    step: info.step,
                    loss: info.loss,
                    grad_norm: info.grad_norm,
                    lr: self.settings.lr,
                });
            }
            let eval = due(until.eval_every, info.step).then(|| self.evaluate(until.eval_samples));
            if let Some(c) = until
                .checkpoints
                .as_ref()
                .filter(|c| due(c.every, info.step))
            {
                saved = Some((info.step, self.save(&c.dir)?));
            }
            let progress = Progress {
                step: info,
                eval,
                checkpoint: saved
                    .as_ref()
                    .filter(|(s, _)| *s == info.step)
                    .map(|(_, p)| p.as_path()),
            };
            match observer(progress) {
                Control::Continue => {}
                Control::Stop => break Stopped::Observer,
                Control::Abort => {
                    return Ok(Outcome {
                        stopped: Stopped::Aborted,
                        steps: self.step - first,
                        final_eval: None,
                        checkpoint: None,
                    })
                }
            }
        };
        let final_eval = self.evaluate(usize::MAX);
        let checkpoint = match (&until.checkpoints, saved) {
            (None, _) => None,
            (Some(_), Some((s, p))) if s == self.step => Some(p),
            (Some(c), _) => Some(self.save(&c.dir)?),
        };
        Ok(Outcome {
            stopped,
            steps: self.step - first,
            final_eval: Some(final_eval),
            checkpoint,
        })
    }
}
