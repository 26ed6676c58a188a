//! The simulator's side of `twin check`: a strategy's plan simulated on the profile of the
//! machine its runs had, held against the measured run.

use pangu_model::ModelConfig;
use pangu_strategies::report::Breakdown;
use pangu_strategies::Plan;
use pangu_trainer::calibrate::Machine;
use pangu_trainer::cpustat::Window;
use serde::Serialize;

use super::runs::{Measured, WARM_UP_STEPS};
use crate::TwinError;

/// One compared strategy.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The strategy's name (its file, or the built-in TOML on one line).
    pub strategy: String,
    /// Its devices (the executor's ranks).
    pub devices: u32,
    /// The simulated step (s).
    pub predicted_step_s: f64,
    /// The measured step (s).
    pub measured_step_s: f64,
    /// `predicted / measured - 1`.
    pub error: f64,
    /// Predicted seconds per category (mean over devices).
    pub predicted_breakdown: Breakdown,
    /// Measured seconds per category (mean over devices).
    pub measured_breakdown: Breakdown,
    /// The memory model's largest device (bytes).
    pub predicted_bytes: u64,
    /// The executor's largest rank's allocation (bytes).
    pub measured_bytes: u64,
    /// `predicted / measured - 1` of the memory.
    pub memory_error: f64,
    /// The machine the prediction used: one thread's matrix rate (GFLOP/s) ...
    pub gflops: f64,
    /// ... and the cores' worth the devices share.
    pub shared_cores: f64,
    /// Element-wise bandwidth of one thread (GB/s) in that profile.
    pub stream_gb_s: f64,
    /// Each timed step: wall seconds, this process's CPU wait, steal, other processes.
    pub steps: Vec<Window>,
    /// Steps of the chosen run whose interference (steal + other processes) stayed within
    /// the clean limit.
    pub clean_steps: usize,
    /// Median step of each run (s).
    pub runs_s: Vec<f64>,
}

/// Simulates `m`'s strategy on the profile of `machine` and compares it with the measurement.
pub(super) fn compare(cfg: &ModelConfig, m: Measured, machine: &Machine) -> Result<Row, TwinError> {
    let profile = crate::profile::profile(machine, m.devices)?;
    let mut sim_spec = m.plan.strategy.to_spec();
    sim_spec.devices = Some(m.devices);
    let (strategy, _) = pangu_strategies::strategy::resolve(
        &sim_spec,
        &sim_spec,
        m.plan.strategy.global_batch,
        m.devices,
    )?;
    let sim_plan = Plan::build(cfg, &profile.cluster, &strategy)?;
    let predicted = pangu_sim::simulate(&sim_plan)?.report;
    let r = m.run.result;
    let measured = m.run.figure.step_s;
    let measured_bytes = r.ranks.iter().map(|k| k.allocated_bytes).max().unwrap_or(0);
    let predicted_bytes = sim_plan.max_memory().total.0;
    Ok(Row {
        strategy: m.name,
        devices: m.devices,
        predicted_step_s: predicted.step_time_s,
        measured_step_s: measured,
        error: predicted.step_time_s / measured - 1.0,
        predicted_breakdown: predicted.breakdown,
        measured_breakdown: r.report.breakdown,
        predicted_bytes,
        measured_bytes,
        memory_error: predicted_bytes as f64 / measured_bytes.max(1) as f64 - 1.0,
        gflops: machine.gemm_gflops,
        shared_cores: machine.parallel_speedup,
        stream_gb_s: machine.stream_gb_s,
        steps: r
            .step_cpu
            .iter()
            .skip(WARM_UP_STEPS as usize)
            .copied()
            .collect(),
        clean_steps: m.run.figure.clean_steps,
        runs_s: m.runs_s,
    })
}
