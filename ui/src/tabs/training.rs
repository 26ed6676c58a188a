//! The training tab: the real trainer on pangu-alpha-tiny, run on a background thread
//! ([`Trainer`]) by the same session as `pangu train` ([`Run::train_until`]: deadline, loss
//! guard, held-out evaluations), and its losses plotted as they fall ([`TrainingTab`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use egui::{Color32, Pos2, Sense, Stroke, Vec2};
use pangu_model::ModelConfig;
use pangu_trainer::session::{Control, Outcome, Stopped, Until};
use pangu_trainer::train::{Eval, Run, StepInfo};

use crate::{Command, View};

/// Held-out samples of each periodic evaluation (the final one uses them all).
const EVAL_SAMPLES: usize = 32;

/// A run the tab asks for: pangu-alpha-tiny on the first 2 MB of the bundled poetry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Optimizer steps (the learning-rate schedule ends here).
    pub steps: u64,
    /// Stop after this many minutes of training even before `steps` (0: no deadline).
    pub minutes: f64,
    /// Evaluate on held-out samples every this many steps (0: only at the end).
    pub eval_every: u64,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            steps: 2000,
            minutes: 0.0,
            eval_every: 50,
        }
    }
}

impl Request {
    /// The session of this request.
    fn until(&self) -> Until {
        Until {
            deadline: Duration::try_from_secs_f64(self.minutes * 60.0)
                .ok()
                .filter(|_| self.minutes > 0.0),
            eval_every: self.eval_every,
            eval_samples: EVAL_SAMPLES,
            ..Until::steps(self.steps)
        }
    }
}

/// What a training run sends its tab.
#[derive(Debug, Clone)]
pub enum Report {
    /// A step, and the held-out evaluation after it if one was due.
    Step(StepInfo, Option<Eval>),
    /// The session ended (the final evaluation in it).
    Done(Outcome),
    /// The run could not start, or it diverged.
    Failed(String),
}

/// A training run on its own thread, reporting each step.
pub struct Trainer {
    rx: Receiver<Report>,
    stop: Arc<AtomicBool>,
    finished: bool,
}

impl Trainer {
    /// Starts the run of `req` on the bundled poetry corpus.
    pub fn start(req: Request) -> Trainer {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        std::thread::spawn(move || {
            if let Err(e) = train(req, &tx, &halt) {
                let _ = tx.send(Report::Failed(e));
            }
        });
        Trainer {
            rx,
            stop,
            finished: false,
        }
    }

    /// Whether it is still going (until its last report has been received).
    pub fn running(&self) -> bool {
        !self.finished
    }

    /// Asks it to stop after the current step (the final evaluation still runs).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// What it has sent since the last call.
    pub fn received(&mut self) -> Vec<Report> {
        let v: Vec<Report> = self.rx.try_iter().collect();
        if v.iter()
            .any(|r| matches!(r, Report::Done(_) | Report::Failed(_)))
        {
            self.finished = true;
        }
        v
    }
}

/// The run itself, on the trainer's thread: the data, the tokenizer, then the session.
fn train(req: Request, tx: &Sender<Report>, halt: &AtomicBool) -> Result<(), String> {
    use pangu_trainer::{data, tokenizer::Tokenizer, train};
    let path = [
        "data/zh_poetry_hans.txt",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../data/zh_poetry_hans.txt"),
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .ok_or("data/zh_poetry_hans.txt not found: run pangu-ui from the repository")?;
    let text = data::read_corpus(std::path::Path::new(path)).map_err(|e| e.to_string())?;
    // The first 2 MB: a tokenizer in seconds, and plenty for a live curve.
    let end = (0..=text.len().min(2_000_000))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (tr, val) = data::split(&text[..end]);
    let cfg = ModelConfig::preset("pangu-alpha-tiny").map_err(|e| e.to_string())?;
    // The reference run's sequence length and batch (128 × 8).
    let run_shape = pangu_strategies::run_shape(&cfg, &pangu_strategies::StrategySpec::default())
        .map_err(|e| e.to_string())?;
    let cfg = cfg
        .with_seq_len(run_shape.seq_len)
        .map_err(|e| e.to_string())?;
    let tok = Tokenizer::train(tr, cfg.vocab as usize).map_err(|e| e.to_string())?;
    let mut s = train::Settings::for_model(&cfg, req.steps);
    s.batch = run_shape.global_batch as usize;
    s.lr = 1.5e-3;
    s.dropout = 0.0;
    let mut run = Run::new(&cfg, s, tok, tr, val).map_err(|e| e.to_string())?;
    let outcome = run
        .train_until(&req.until(), &mut |p| {
            if tx.send(Report::Step(p.step, p.eval)).is_err() {
                // The tab has gone: nobody is listening.
                Control::Abort
            } else if halt.load(Ordering::Relaxed) {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .map_err(|e| e.to_string())?;
    let _ = tx.send(Report::Done(outcome));
    Ok(())
}

/// The training monitor's own state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingTab {
    /// The next run's settings (the fields above the plot).
    pub request: Request,
    /// (step, training loss per token) so far.
    pub losses: Vec<(u64, f64)>,
    /// (step, held-out loss per token) of the evaluations so far, the final one included.
    pub evals: Vec<(u64, f64)>,
    /// Status line (none before the first run).
    pub status: Option<String>,
}

impl TrainingTab {
    /// Clears the curves for a new run.
    pub fn restart(&mut self) {
        self.losses.clear();
        self.evals.clear();
        self.status = Some("preparing: tokenizer and data (a few seconds)".into());
    }

    /// Records what the run sent.
    pub fn record(&mut self, m: Report) {
        self.status = Some(match m {
            Report::Step(info, eval) => {
                self.losses.push((info.step, info.loss));
                match eval {
                    Some(e) => {
                        self.evals.push((e.step, e.loss));
                        format!(
                            "step {}: loss {:.4}, held-out loss {:.4}",
                            info.step, info.loss, e.loss
                        )
                    }
                    None => format!("step {}: loss {:.4}", info.step, info.loss),
                }
            }
            Report::Done(o) => {
                let why = match o.stopped {
                    Stopped::Steps => "finished",
                    Stopped::Deadline => "stopped at the deadline",
                    Stopped::Observer | Stopped::Aborted => "stopped",
                };
                match o.final_eval {
                    Some(e) => {
                        self.evals.push((e.step, e.loss));
                        format!(
                            "{why} at step {}: held-out loss {:.4} on {} samples",
                            e.step, e.loss, e.samples
                        )
                    }
                    None => why.to_string(),
                }
            }
            Report::Failed(e) => format!("error: {e}"),
        });
    }

    /// Draws the tab; Train and Stop become commands.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        ui.horizontal(|ui| {
            ui.add_enabled_ui(!view.training, |ui| {
                let r = &mut self.request;
                ui.label("steps");
                ui.add(egui::DragValue::new(&mut r.steps).range(1..=100_000));
                ui.label("deadline (minutes, 0: none)");
                ui.add(
                    egui::DragValue::new(&mut r.minutes)
                        .range(0.0..=1440.0)
                        .speed(0.1),
                );
                ui.label("evaluate every");
                ui.add(egui::DragValue::new(&mut r.eval_every).range(0..=10_000));
                ui.label("steps");
            });
        });
        ui.horizontal(|ui| {
            if !view.training && ui.button("Train pangu-alpha-tiny").clicked() {
                out.push(Command::StartTraining(self.request));
            }
            if view.training && ui.button("Stop").clicked() {
                out.push(Command::StopTraining);
                self.status = Some("stopping after this step, then the final evaluation".into());
            }
            if let Some(s) = &self.status {
                ui.label(s);
            }
        });
        if self.status.is_none() {
            ui.label("trains the real model on the bundled Chinese poetry on this machine's CPU; the loss is plotted as it falls, the held-out loss at each evaluation");
            return;
        }
        self.plot(ui);
    }

    /// The training loss curve and the held-out evaluations, on one scale.
    fn plot(&self, ui: &mut egui::Ui) {
        let (resp, painter) =
            ui.allocate_painter(Vec2::new(ui.available_width(), 360.0), Sense::hover());
        let r = resp.rect.shrink(24.0);
        painter.rect_stroke(
            r,
            0.0,
            Stroke::new(1.0, Color32::GRAY),
            egui::StrokeKind::Inside,
        );
        if self.losses.len() < 2 {
            return;
        }
        let (n, lmax, lmin) = self
            .losses
            .iter()
            .chain(&self.evals)
            .fold((1u64, f64::MIN, f64::MAX), |a, &(s, l)| {
                (a.0.max(s), a.1.max(l), a.2.min(l))
            });
        let span = (lmax - lmin).max(1e-6);
        let at = |&(s, l): &(u64, f64)| {
            Pos2::new(
                r.min.x + (s as f32 / n as f32) * r.width(),
                r.max.y - ((l - lmin) / span) as f32 * r.height(),
            )
        };
        let pts: Vec<Pos2> = self.losses.iter().map(at).collect();
        painter.add(egui::Shape::line(
            pts,
            Stroke::new(1.5, Color32::from_rgb(76, 175, 80)),
        ));
        let held_out = Color32::from_rgb(229, 57, 53);
        for p in self.evals.iter().map(at) {
            painter.circle_filled(p, 3.0, held_out);
        }
        painter.text(
            r.left_top(),
            egui::Align2::LEFT_BOTTOM,
            format!("loss {lmax:.2}"),
            egui::FontId::proportional(11.0),
            Color32::LIGHT_GRAY,
        );
        painter.text(
            r.left_bottom(),
            egui::Align2::LEFT_TOP,
            format!("{lmin:.2} — step {n}"),
            egui::FontId::proportional(11.0),
            Color32::LIGHT_GRAY,
        );
        painter.text(
            r.right_top(),
            egui::Align2::RIGHT_BOTTOM,
            "training loss (line), held-out loss (dots), per token",
            egui::FontId::proportional(11.0),
            Color32::LIGHT_GRAY,
        );
    }
}
