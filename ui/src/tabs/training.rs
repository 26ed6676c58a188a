//! The training tab: the real trainer on pangu-alpha-tiny, run on a background thread
//! ([`Trainer`]), and its loss plotted as it falls ([`TrainingTab`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use egui::{Color32, Pos2, Sense, Stroke, Vec2};
use pangu_model::ModelConfig;

use crate::{Command, View};

/// A training run on its own thread: it sends (step, loss) after each step, or an error.
pub struct Trainer {
    rx: Receiver<Result<(u64, f64), String>>,
    stop: Arc<AtomicBool>,
}

impl Trainer {
    /// Starts training pangu-alpha-tiny for `steps` steps on the bundled poetry corpus.
    pub fn start(steps: u64) -> Trainer {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        std::thread::spawn(move || {
            let r = (|| -> Result<(), String> {
                use pangu_trainer::{data, tokenizer::Tokenizer, train};
                let path = [
                    "data/zh_poetry_hans.txt",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../data/zh_poetry_hans.txt"),
                ]
                .into_iter()
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or("data/zh_poetry_hans.txt not found: run pangu-ui from the repository")?;
                let text =
                    data::read_corpus(std::path::Path::new(path)).map_err(|e| e.to_string())?;
                // The first 2 MB: a tokenizer in seconds, and plenty for a live curve.
                let end = (0..=text.len().min(2_000_000))
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let (tr, val) = data::split(&text[..end]);
                let cfg = ModelConfig::preset("pangu-alpha-tiny").map_err(|e| e.to_string())?;
                let tok = Tokenizer::train(tr, cfg.vocab as usize).map_err(|e| e.to_string())?;
                let mut s = train::Settings::for_model(&cfg, steps);
                s.lr = 1.5e-3;
                s.dropout = 0.0;
                let mut run = train::Run::new(&cfg, s, tok, tr, val).map_err(|e| e.to_string())?;
                while run.step < steps && !halt.load(Ordering::Relaxed) {
                    let info = run.step();
                    if tx.send(Ok((info.step, info.loss))).is_err() {
                        break;
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                let _ = tx.send(Err(e));
            }
        });
        Trainer { rx, stop }
    }

    /// Whether it has not been stopped.
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Asks it to stop after the current step.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// What it has sent since the last call: (step, loss), or an error.
    pub fn received(&self) -> Vec<Result<(u64, f64), String>> {
        self.rx.try_iter().collect()
    }
}

/// The training monitor's own state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingTab {
    /// (step, loss) so far.
    pub losses: Vec<(u64, f64)>,
    /// Status line (none before the first run).
    pub status: Option<String>,
}

impl TrainingTab {
    /// Clears the curve for a new run.
    pub fn restart(&mut self) {
        self.losses.clear();
        self.status = Some("preparing: tokenizer and data (a few seconds)".into());
    }

    /// Records what the run sent.
    pub fn record(&mut self, m: Result<(u64, f64), String>) {
        match m {
            Ok((step, loss)) => {
                self.losses.push((step, loss));
                self.status = Some(format!("step {step}: loss {loss:.4}"));
            }
            Err(e) => self.status = Some(format!("error: {e}")),
        }
    }

    /// Draws the tab; Train and Stop become commands.
    pub fn show(&mut self, ui: &mut egui::Ui, view: &View<'_>, out: &mut Vec<Command>) {
        ui.horizontal(|ui| {
            if !view.training && ui.button("Train pangu-alpha-tiny").clicked() {
                out.push(Command::StartTraining(2000));
            }
            if view.training && ui.button("Stop").clicked() {
                out.push(Command::StopTraining);
            }
            if let Some(s) = &self.status {
                ui.label(s);
            }
        });
        if self.status.is_none() {
            ui.label("trains the real model on the bundled Chinese poetry on this machine's CPU; the loss is plotted as it falls");
            return;
        }
        self.plot(ui);
    }

    /// The loss curve, scaled to its range.
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
            .fold((1u64, f64::MIN, f64::MAX), |a, &(s, l)| {
                (a.0.max(s), a.1.max(l), a.2.min(l))
            });
        let span = (lmax - lmin).max(1e-6);
        let pts: Vec<Pos2> = self
            .losses
            .iter()
            .map(|&(s, l)| {
                Pos2::new(
                    r.min.x + (s as f32 / n as f32) * r.width(),
                    r.max.y - ((l - lmin) / span) as f32 * r.height(),
                )
            })
            .collect();
        painter.add(egui::Shape::line(
            pts,
            Stroke::new(1.5, Color32::from_rgb(76, 175, 80)),
        ));
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
    }
}
