//! The digital-twin loop on this machine: measure it, describe it as a hardware profile, and
//! hold the simulator's predictions against the executor's runs of the same plans.
//!
//! - [`profile`]: the calibration → profile step (`pangu twin calibrate`).
//! - [`strategies`]: the built-in strategy set and strategy files.
//! - [`check`]: probes, round-robin runs of each strategy, the simulation on the profile and
//!   the comparison (`pangu twin check`), returned as typed rows.
//! - [`comm_check`]: the collective programs on this machine's ranks (`pangu twin comm-check`).
//! - [`mpi`]: transfers between two MPI processes (`pangu twin calibrate --mpi`).
//!
//! It is the one crate that uses both the simulator and the executor, so that neither needs
//! the other; the CLI and the app parse, call and present.

pub mod check;
pub mod comm_check;
pub mod mpi;
pub mod profile;
pub mod strategies;

pub use check::{check, CheckReport, CheckSettings, Estimate, Progress, Row};
pub use comm_check::CommCheck;
pub use mpi::MpiTransfer;
pub use profile::{calibrate, Calibration, CalibrationSettings, Profile};
pub use strategies::NamedStrategy;

use pangu_trainer::comm::CommError;

/// Errors of the twin loop: each names what is wrong and keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// `twin check` needs two warm-up steps and one measured.
    #[error("{steps} steps: give at least 3 (two warm-up steps and one measured)")]
    TooFewSteps {
        /// The steps asked for.
        steps: u64,
    },
    /// A profile describes 1 to 1024 virtual devices.
    #[error(
        "{devices} devices: give 1 to {} virtual devices",
        profile::MAX_DEVICES
    )]
    Devices {
        /// The devices asked for.
        devices: u32,
    },
    /// The measured products need at least one sequence.
    #[error("micro-batch size 0: a product needs at least one sequence")]
    EmptyMicroBatch,
    /// A communicator group needs at least one rank.
    #[error("a group needs at least one rank")]
    NoRanks,
    /// `twin check` was given no strategy.
    #[error("no strategy to check")]
    NoStrategies,
    /// A strategy file could not be read.
    #[error("cannot read strategy file {path}")]
    ReadStrategy {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The calibrated profile is not a valid cluster (a bug of the profile writer).
    #[error("the calibrated profile does not read back as a cluster (a bug)")]
    Profile(#[source] pangu_hardware::HardwareError),
    /// A strategy has no plan on this machine, or its run failed.
    #[error("{strategy}")]
    Strategy {
        /// The strategy's name.
        strategy: String,
        /// The cause.
        source: pangu_trainer::TrainError,
    },
    /// A strategy, plan or cluster is invalid.
    #[error(transparent)]
    Plan(#[from] pangu_strategies::PlanError),
    /// The simulation failed.
    #[error(transparent)]
    Sim(#[from] pangu_sim::SimError),
    /// The executor's data or tokenizer failed.
    #[error(transparent)]
    Train(#[from] pangu_trainer::TrainError),
    /// A communication failed.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// One rank's communication failed.
    #[error("rank {rank}")]
    Rank {
        /// The rank.
        rank: usize,
        /// The cause.
        source: CommError,
    },
    /// One rank's thread panicked.
    #[error("rank {rank} panicked")]
    RankPanicked {
        /// The rank.
        rank: usize,
    },
    /// One MPI rank's programs did not match (each rank checks its own; a failing rank ends
    /// the job).
    #[error("rank {rank}: {}", failures.join("; "))]
    RankFailures {
        /// The rank.
        rank: usize,
        /// What did not match.
        failures: Vec<String>,
    },
    /// This build has no MPI.
    #[error(
        "this binary was built without MPI; build it with `cargo build --release -p pangu-cli --features mpi` \
         (needs Debian's libopenmpi-dev, openmpi-bin and libclang-dev)"
    )]
    NoMpi,
    /// MPI was initialised before.
    #[error("MPI is already initialised")]
    MpiInitialised,
    /// The MPI probe runs on two processes.
    #[error("the MPI probe needs exactly 2 processes, mpirun started {processes}")]
    ProbeProcesses {
        /// What mpirun started.
        processes: usize,
    },
    /// `mpirun` could not be started.
    #[error("cannot start mpirun (install Open MPI: openmpi-bin)")]
    Mpirun(#[source] std::io::Error),
    /// The MPI probe exited with an error.
    #[error("the MPI probe failed: {stderr}")]
    ProbeFailed {
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The MPI probe printed no result.
    #[error("unexpected probe output {output:?}")]
    ProbeOutput {
        /// What it printed.
        output: String,
        /// The parser's error.
        source: serde_json::Error,
    },
}
