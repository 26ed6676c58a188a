//! Parallel strategies, their validation, and the `Plan` that both the simulator and the
//! executor consume.
//!
//! Main types:
//! - [`StrategySpec`] (what a user writes, every field optional) and [`Strategy`] (resolved):
//!   dp, op-level tp, pp with a schedule, micro-batching, optimizer sharding, remat, sequence
//!   parallelism, precision, rank order, layer-to-stage assignment.
//! - [`Plan`]: a validated strategy applied to a model and a cluster: device groups on the
//!   topology, stage layers, per-part op graphs, the pipeline [`Schedule`] as action lists, the
//!   communication per step, the memory of every stage.
//! - [`schedule`]: GPipe, 1F1B and interleaved schedules as data, with an interpreter.
//! - [`collective::CollectiveAlgorithm`] and [`report::StepReport`]: shared with the executor,
//!   so the trainer never depends on the simulator.
//!
//! ```
//! use pangu_model::ModelConfig;
//! use pangu_strategies::{resolve_inputs, Plan, StrategySpec};
//! let model = ModelConfig::preset("pangu-alpha-200b").unwrap();
//! let r = resolve_inputs(&model, None, &StrategySpec::default()).unwrap();
//! let plan = Plan::new(&r.model, &r.cluster, &r.strategy).unwrap();
//! assert!(plan.fits());
//! assert_eq!(plan.stages.len(), 16);
//! ```

pub mod collective;
pub mod fp8;
pub mod launch;
pub mod memory;
pub mod mesh;
pub mod plan;
pub mod reference;
pub mod report;
pub mod schedule;
pub mod search;
pub mod strategy;

pub use collective::{CollectiveAlgorithm, CollectiveKind, CommVolume, GroupKind};
pub use memory::MemoryBreakdown;
pub use mesh::{Coords, Mesh};
pub use plan::{Chunk, LayerId, Plan, Stage};
pub use reference::{reference, resolve_inputs, run_shape, Reference, Resolved, RunShape};
pub use report::{Breakdown, Category, StepReport};
pub use schedule::{Action, Schedule};
pub use strategy::{
    default_attention, Attention, BackwardPrefetch, GatherPrecision, GradAccumulation, OptShard,
    Precision, RankOrder, Remat, ScheduleKind, Strategy, StrategySpec,
};

/// Why a strategy cannot be planned. Every message names the value and what would work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// A strategy file could not be parsed.
    #[error("cannot parse strategy {source_name}: {message}")]
    Parse {
        /// File name.
        source_name: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// The degrees do not match the devices.
    #[error("invalid device layout: {0}")]
    Devices(String),
    /// The batch flags contradict each other or do not split.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// Tensor parallelism does not divide the model.
    #[error("invalid tensor parallelism: {0}")]
    TensorParallel(String),
    /// Pipeline depth or layer assignment is impossible.
    #[error("invalid pipeline: {0}")]
    Pipeline(String),
    /// The schedule cannot run with these micro-batches.
    #[error("invalid schedule: {0}")]
    Schedule(String),
    /// The chip cannot compute in the requested precision.
    #[error("invalid precision: {0}")]
    Precision(String),
    /// Memory over capacity.
    #[error("does not fit in memory: {message}")]
    OutOfMemory {
        /// Breakdown and fixes.
        message: String,
    },
    /// No reference to fall back on.
    #[error("{0}")]
    Reference(String),
    /// The model is invalid.
    #[error(transparent)]
    Model(pangu_model::ModelError),
    /// The cluster is invalid.
    #[error(transparent)]
    Hardware(pangu_hardware::HardwareError),
}
