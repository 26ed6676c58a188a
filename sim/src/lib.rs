//! The discrete-event simulator: one training step of a `Plan` on a modelled cluster.

pub mod collective;
pub mod cost;
pub mod engine;
pub mod network;

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// Bad input (topology, values).
    #[error("invalid simulation input: {0}")]
    Input(String),
    /// Calibration missing or invalid.
    #[error("calibration: {0}")]
    Calibration(String),
    /// The workload cannot finish (a dependency cycle or a collective some member never joins).
    #[error("the simulated step cannot finish: {0}")]
    Stuck(String),
}
