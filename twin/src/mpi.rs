//! Transfers between two MPI processes, for the profile's record: a ping-pong between two
//! ranks started by `mpirun -np 2` (each rank runs [`probe_rank`]; [`measure`] starts them and
//! reads rank 0's line).

use std::ffi::OsStr;
use std::path::Path;

use crate::TwinError;

/// Whether this build has MPI (the `mpi` feature).
pub const AVAILABLE: bool = cfg!(feature = "mpi");

/// Transfers between two MPI processes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MpiTransfer {
    /// Bandwidth of the large message (GB/s).
    pub gb_s: f64,
    /// One-way latency of a small message (µs).
    pub latency_us: f64,
}

/// The probe's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSize {
    /// Bytes of the large message.
    pub bytes: usize,
    /// Round trips per size.
    pub reps: usize,
}

impl ProbeSize {
    /// 8 MiB and 30 round trips; `quick`: 1 MiB and 8.
    pub fn new(quick: bool) -> ProbeSize {
        if quick {
            ProbeSize {
                bytes: 1 << 20,
                reps: 8,
            }
        } else {
            ProbeSize {
                bytes: 8 << 20,
                reps: 30,
            }
        }
    }
}

/// This process's rank of the probe (of exactly two): rank 0 returns the transfer, rank 1
/// `None`.
#[cfg(feature = "mpi")]
pub fn probe_rank(size: ProbeSize) -> Result<Option<MpiTransfer>, TwinError> {
    use pangu_trainer::comm::Communicator;
    let mut comm = pangu_trainer::comm::mpi_backend::init(
        std::time::Duration::from_secs(60),
        2 * size.bytes + (1 << 20),
    )
    .ok_or(TwinError::MpiInitialised)?;
    if comm.size() != 2 {
        return Err(TwinError::ProbeProcesses {
            processes: comm.size(),
        });
    }
    let lead = comm.rank() == 0;
    let (gb_s, latency_us) = pangu_trainer::calibrate::transfer_between(
        &mut comm,
        usize::from(lead),
        size.bytes,
        size.reps,
        lead,
    );
    Ok(lead.then_some(MpiTransfer { gb_s, latency_us }))
}

/// Without the `mpi` feature: [`TwinError::NoMpi`].
#[cfg(not(feature = "mpi"))]
pub fn probe_rank(_size: ProbeSize) -> Result<Option<MpiTransfer>, TwinError> {
    Err(TwinError::NoMpi)
}

/// Starts `program args` as two processes under `mpirun` (the program runs [`probe_rank`] and
/// prints rank 0's [`MpiTransfer`] as a JSON line) and reads the result.
pub fn measure<I, S>(program: &Path, args: I) -> Result<MpiTransfer, TwinError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    if !AVAILABLE {
        return Err(TwinError::NoMpi);
    }
    let out = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(program)
        .args(args)
        .output()
        .map_err(TwinError::Mpirun)?;
    if !out.status.success() {
        return Err(TwinError::ProbeFailed {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|source| TwinError::ProbeOutput {
        output: output.clone(),
        source,
    })
}
