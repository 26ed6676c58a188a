//! One simulation for display: the plan, its step report and the timeline of one device per
//! stage, built by the simulator's own [`pangu_sim::timeline`] (the Chrome trace's rows and
//! spans).

use std::time::Instant;

use pangu_sim::timeline::{self, Timeline};
use pangu_sim::workload::Stream;
use pangu_strategies::{Plan, StepReport};

/// The streams the timeline shows for each device (pipeline sends and receives are left out).
pub const SHOWN_STREAMS: [Stream; 3] = [Stream::Compute, Stream::Tp, Stream::Dp];

/// What a simulation produced for display.
#[derive(Debug, Clone)]
pub struct SimOutput {
    /// The plan simulated.
    pub plan: Plan,
    /// Its report.
    pub report: StepReport,
    /// One simulated device per stage (the folded representatives), streams compute, tp and
    /// dp/opt.
    pub timeline: Timeline,
    /// Simulation wall time.
    pub wall_s: f64,
    /// Folding used.
    pub folded: Option<String>,
}

/// Simulates `plan` and keeps one device per stage for the timeline.
pub fn simulate(plan: Plan) -> Result<SimOutput, String> {
    let t0 = Instant::now();
    let (run, w) = pangu_sim::simulate_full(&plan, pangu_sim::Options::default())
        .map_err(|e| e.to_string())?;
    let wall_s = t0.elapsed().as_secs_f64();
    let shown = timeline::one_per_stage(&plan, &w);
    let timeline = timeline::build(&plan, &run, &w, &shown, &SHOWN_STREAMS);
    Ok(SimOutput {
        plan,
        report: run.report,
        timeline,
        wall_s,
        folded: run.folded,
    })
}
