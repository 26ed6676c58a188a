//! A self-check of a communicator against the collective programs: every algorithm, every
//! kind, on one server and on virtual servers of 2 and 4 ranks, on this rank's group. Each
//! rank records its messages and compares them with what the program lists for it, and checks
//! the results against the collective's definition on integer-valued data (so every summation
//! order gives the same exact sum). `pangu twin comm-check` runs it on threads or under
//! `mpirun`; the tests hold both backends to it.

use pangu_strategies::collective::{chunk, InterServer, Program};
use pangu_strategies::{CollectiveAlgorithm, CollectiveKind};

use super::{expected_log, CommError, Communicator, Recorder};

/// What [`check_programs`] found on this rank.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ProgramCheck {
    /// Programs run.
    pub programs: usize,
    /// Messages this rank sent and received.
    pub messages: usize,
    /// What did not match, one line each (empty when everything did).
    pub failures: Vec<String>,
}

/// The algorithms checked.
pub const ALGORITHMS: [CollectiveAlgorithm; 6] = [
    CollectiveAlgorithm::Ring,
    CollectiveAlgorithm::HalvingDoubling,
    CollectiveAlgorithm::DoubleBinaryTree,
    CollectiveAlgorithm::Hierarchical {
        inter: InterServer::Ring,
    },
    CollectiveAlgorithm::Hierarchical {
        inter: InterServer::HalvingDoubling,
    },
    CollectiveAlgorithm::Hierarchical {
        inter: InterServer::DoubleBinaryTree,
    },
];

/// The placements of a group of `n`: one server, and consecutive ranks on servers of 2 and of
/// 4 where they divide the group.
pub fn placements(n: usize) -> Vec<Vec<u32>> {
    let mut out = vec![vec![0; n]];
    for k in [2, 4] {
        if n.is_multiple_of(k) && n > k {
            out.push((0..n as u32).map(|i| i / k as u32).collect());
        }
    }
    out
}

/// Rank `r`'s input: small integers, summed exactly in any order.
fn input(r: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| ((r * 7 + i * 3) % 97) as f32).collect()
}

/// Runs every program on `comm`'s group with a `len`-element buffer.
pub fn check_programs(comm: &mut dyn Communicator, len: usize) -> Result<ProgramCheck, CommError> {
    let (n, me) = (comm.size(), comm.rank());
    let sum: Vec<f32> = (0..len)
        .map(|i| (0..n).map(|r| input(r, len)[i]).sum())
        .collect();
    let mine = chunk(len, n, me);
    let mut out = ProgramCheck::default();
    for servers in placements(n) {
        for algo in ALGORITHMS {
            for kind in [
                CollectiveKind::AllReduce,
                CollectiveKind::ReduceScatter,
                CollectiveKind::AllGather,
                CollectiveKind::Broadcast,
            ] {
                let p = Program::build(kind, algo, &servers);
                let mut buf = match kind {
                    // An all-gather starts from each rank's own chunk of the reference.
                    CollectiveKind::AllGather => (0..len)
                        .map(|i| if mine.contains(&i) { sum[i] } else { -1.0 })
                        .collect(),
                    _ => input(me, len),
                };
                let mut rec = Recorder::new(&mut *comm);
                rec.run(&p, &mut buf)?;
                let case = format!("{kind:?} {algo} servers {servers:?} rank {me}");
                out.programs += 1;
                out.messages += rec.log.len();
                if rec.log != expected_log(&p, me, len) {
                    out.failures
                        .push(format!("{case}: messages differ from the program"));
                }
                let ok = match kind {
                    CollectiveKind::AllReduce | CollectiveKind::AllGather => buf == sum,
                    CollectiveKind::ReduceScatter => buf[mine.clone()] == sum[mine.clone()],
                    CollectiveKind::Broadcast => buf == input(0, len),
                };
                if !ok {
                    out.failures.push(format!("{case}: wrong result"));
                }
            }
        }
    }
    Ok(out)
}
