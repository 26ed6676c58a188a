//! `twin comm-check`: every collective program (each algorithm and kind, on one server and on
//! virtual servers of 2 and 4 ranks) run by this machine's ranks, each rank checking its
//! messages and results against the program (`pangu_trainer::comm::check`).

use std::time::Duration;

use pangu_trainer::comm::check::{check_programs, ProgramCheck};

use crate::TwinError;

/// How long a rank waits for a peer.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What the ranks found, summed up.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CommCheck {
    /// Ranks of the group.
    pub ranks: usize,
    /// Programs each rank ran.
    pub programs_per_rank: usize,
    /// Messages sent and received by the ranks summed up here (every rank on threads, rank 0
    /// under MPI).
    pub messages: usize,
    /// What did not match, one line each (empty when everything did).
    pub failures: Vec<String>,
}

impl CommCheck {
    /// The sum of the checks of `ranks` ranks of which `checks` are known.
    fn of(checks: &[ProgramCheck], ranks: usize) -> CommCheck {
        CommCheck {
            ranks,
            programs_per_rank: checks.first().map_or(0, |c| c.programs),
            messages: checks.iter().map(|c| c.messages).sum(),
            failures: checks.iter().flat_map(|c| c.failures.clone()).collect(),
        }
    }

    /// Whether every rank sent and received what the programs list and every result is right.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the programs on `ranks` threads with a `len`-element buffer.
pub fn on_threads(ranks: usize, len: usize) -> Result<CommCheck, TwinError> {
    if ranks == 0 {
        return Err(TwinError::NoRanks);
    }
    let handles: Vec<_> = pangu_trainer::comm::threads::group(ranks, TIMEOUT)
        .into_iter()
        .map(|mut c| std::thread::spawn(move || check_programs(&mut c, len)))
        .collect();
    let mut checks = Vec::new();
    for (rank, h) in handles.into_iter().enumerate() {
        let check = h
            .join()
            .map_err(|_| TwinError::RankPanicked { rank })?
            .map_err(|source| TwinError::Rank { rank, source })?;
        checks.push(check);
    }
    Ok(CommCheck::of(&checks, ranks))
}

/// This process's rank of the check under mpirun: every rank checks its own messages and a
/// failing rank returns an error (its non-zero exit stops the job); rank 0 speaks for the
/// job (`Some`), the others return `None`.
#[cfg(feature = "mpi")]
pub fn on_mpi(len: usize) -> Result<Option<CommCheck>, TwinError> {
    use pangu_trainer::comm::Communicator;
    let mut comm = pangu_trainer::comm::mpi_backend::init(TIMEOUT, 64 * len * 4 + (1 << 20))
        .ok_or(TwinError::MpiInitialised)?;
    let rank = comm.rank();
    let check =
        check_programs(&mut comm, len).map_err(|source| TwinError::Rank { rank, source })?;
    if !check.failures.is_empty() {
        return Err(TwinError::RankFailures {
            rank,
            failures: check.failures,
        });
    }
    comm.barrier()?;
    Ok((rank == 0).then(|| CommCheck::of(&[check], comm.size())))
}

/// Without the `mpi` feature: [`TwinError::NoMpi`].
#[cfg(not(feature = "mpi"))]
pub fn on_mpi(_len: usize) -> Result<Option<CommCheck>, TwinError> {
    Err(TwinError::NoMpi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_runs_exactly_on_three_threads() -> Result<(), TwinError> {
        let c = on_threads(3, 13)?;
        assert!(c.passed(), "{:?}", c.failures);
        assert_eq!(c.ranks, 3);
        assert!(c.programs_per_rank >= 24 && c.messages > 0, "{c:?}");
        Ok(())
    }

    #[test]
    fn a_group_needs_a_rank() {
        assert!(matches!(on_threads(0, 13), Err(TwinError::NoRanks)));
    }
}
