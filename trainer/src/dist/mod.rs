//! The distributed executor: a validated [`Plan`] run for real, one rank per device of its
//! mesh, on threads or MPI processes. All six dimensions come from the plan's objects:
//!
//! - Pipeline: each rank holds the model chunks of its stage ([`Plan::stages`]) and executes
//!   its stage's action list of [`Plan::schedule`] (GPipe, 1F1B, interleaved) — literally the
//!   data the simulator runs. Activations go forward and gradients back as point-to-point
//!   messages; sends are buffered, receives block (the schedule's semantics).
//! - Op-level model parallelism (PanGu-α / Megatron): Q, K, V and FFN-up split by columns,
//!   attention output and FFN-down by rows, heads across the group ([`Part`]); the layer sums
//!   over the tensor-parallel group after the row-split projections in forward and after the
//!   column-split ones in backward ([`Reduce`]).
//! - Context parallelism (Megatron-core; Llama 3 paper §3.3.2): each rank of a cp group holds
//!   `s/cp` tokens of every sample of its replica, the sequence's chunks `i` and `2·cp − 1 − i`
//!   with their global positions; inside attention it runs the plan's K/V exchange programs
//!   (`Plan::kv_exchange`: ring or all-gather) to get the whole sequence's K/V and, in
//!   backward, to return dK/dV to the owners (`model/cp.rs`). Each program runs whole before
//!   the attention that reads it: the ring's messages in the ring's order, without the overlap
//!   of each step with one block's attention that Megatron-core's p2p variant has.
//! - Data parallelism: each replica runs its share of every micro-batch; gradients are reduced
//!   in the plan's buckets (`Plan::grad_buckets`), each as soon as the last micro-batch's
//!   backward has finished its parts, with the collective program the plan chooses for the
//!   group: on a communication thread while backward goes on (threads backend), or in line at
//!   the same points (MPI, where a second thread would need `MPI_THREAD_MULTIPLE`). The
//!   reduction group spans dp·cp ranks (`Strategy::dp_cp`).
//! - Optimizer sharding (ZeRO-1/2, MindSpore's optimizer parallel, ZeRO-3), over dp·cp: the
//!   buckets are reduce-scattered, each rank updates its chunk of every bucket and keeps Adam moments for
//!   it only, and the weights are all-gathered bucket by bucket after the update. (The
//!   simulator prices MindSpore's and ZeRO-3's gathers ahead of use instead; the executor
//!   keeps whole weights, so it gathers after the update for every level.)
//! - Rematerialisation: full (each layer's input kept, the layer recomputed in backward).
//! - The tied embedding: the first and last virtual stages both hold the word table; their
//!   gradients are summed between them before the update, so both copies stay equal.
//!
//! Every rank's loss rows (its tokens, under cp) are weighted by 1/(counted rows of the whole
//! step), so sums over ranks give the single-device loss and gradient; samples, dropout masks (keyed on global sample,
//! row, layer and head indices) and the schedule of learning rates are those of one device.
//! The runs differ from one device only in the order of floating-point additions; tests hold
//! losses and weights to 1e-4.

use std::time::Instant;

use pangu_strategies::Plan;

use crate::comm::{threads, CommError, Communicator};
use crate::data::Packed;
use crate::host::check_plan;
use crate::model::Layout;
use crate::train::Settings;
use crate::TrainError;

mod buckets;
mod groups;
mod rank;
mod report;
mod setup;
mod tp;

pub use report::{measured_report, DistResult, RankReport};
pub use setup::{DistConfig, Io, Save};

use rank::{rank_loop, Inputs, RankOutput};
use report::slowest;

/// Trains `plan` on `data` with one thread per rank of its mesh until step `steps`.
pub fn train_threads(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
) -> Result<DistResult, TrainError> {
    train_threads_with(plan, settings, dist, data, steps, Io::default())
}

/// [`train_threads`] from a checkpoint's state and/or writing checkpoints.
pub fn train_threads_with(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    io: Io<'_>,
) -> Result<DistResult, TrainError> {
    check_plan(plan, settings)?;
    let inputs = Inputs {
        plan,
        settings,
        dist,
        data,
        steps,
        io,
    };
    let world = plan.mesh.size() as usize;
    let t0 = Instant::now();
    let comms = threads::group(world, dist.timeout);
    // A second group for the communication threads of the overlapped gradient reduction.
    let aux = threads::group(world, dist.timeout);
    let results: Vec<Result<RankOutput, TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .zip(aux)
            .map(|(mut c, a)| {
                s.spawn(move || {
                    let a: Box<dyn Communicator + Send> = Box::new(a);
                    rank_loop(inputs, &mut c, Some(a))
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|e| {
                    let message = e
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| e.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(TrainError::Panicked { rank, message })
                })
            })
            .collect()
    });
    // Report the root cause first: a panic or timeout rather than the peers that saw it leave.
    let mut errors: Vec<TrainError> = Vec::new();
    let mut ok = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        // A peer that saw another rank stop is a consequence, not a cause.
        errors.sort_by_key(|e| {
            matches!(
                e,
                TrainError::Comm(CommError::PeerGone { .. } | CommError::ThreadStopped { .. })
            )
        });
        return Err(TrainError::Distributed(errors));
    }
    let whole = Layout::new(&plan.model)?;
    let mut params = vec![0.0f32; whole.total];
    let mut ranks = Vec::new();
    let mut losses = Vec::new();
    for out in ok {
        for (layout, p) in &out.parts {
            layout.scatter(&whole, p, &mut params);
        }
        if losses.is_empty() {
            losses = out.losses;
        }
        ranks.push(out.report);
    }
    let report = measured_report(&plan.model, settings.batch, &ranks, steps);
    Ok(DistResult {
        losses,
        params,
        step_s: slowest(&ranks),
        step_cpu: ranks
            .iter()
            .find(|r| r.rank == 0)
            .map(|r| r.step_cpu.clone())
            .unwrap_or_default(),
        ranks,
        wall_s: t0.elapsed().as_secs_f64(),
        report,
    })
}

/// Trains on this process's rank of an MPI job (`mpirun -np N`): the world's size must equal
/// the plan's device count. Every rank returns the same losses and its own measurements.
#[cfg(feature = "mpi")]
pub fn train_mpi(
    plan: &Plan,
    settings: &Settings,
    dist: &DistConfig,
    data: &Packed,
    steps: u64,
    io: Io<'_>,
) -> Result<(usize, DistResult), TrainError> {
    check_plan(plan, settings)?;
    // Buffered sends: every pipeline message of a step may be in flight at once, plus the
    // buffered steps of collective programs (exchange steps use MPI_Sendrecv): a rank sends
    // at most three times a collective's buffer in one (the double tree), and may finish one
    // collective before its peers received all of it (MPI_BSEND_OVERHEAD is under 1 KiB).
    let st = &plan.strategy;
    let act =
        4 * st.micro_batch_size as usize * plan.model.seq_len as usize * plan.model.hidden as usize;
    let msgs = 2 * (st.micro_batches * st.schedule.chunks()) as usize + 8;
    let bucket = (0..st.pp)
        .flat_map(|s| plan.grad_buckets(s))
        .map(|b| 4 * b.params as usize)
        .max()
        .unwrap_or(0);
    // Context parallelism's K/V exchange runs on the whole sequence's K | V.
    let kv = 4
        * st.micro_batch_size as usize
        * plan.model.seq_len as usize
        * 2
        * plan.model.kv_dim() as usize;
    let largest = bucket.max(act).max(kv);
    let send_buffer = msgs * (act + 1024) + 6 * largest + (1 << 20);
    let mut comm = crate::comm::mpi_backend::init(dist.timeout, send_buffer)
        .ok_or_else(|| TrainError::Config("MPI is already initialised in this process".into()))?;
    let world = plan.mesh.size() as usize;
    if comm.size() != world {
        return Err(TrainError::Config(format!(
            "the plan has {world} devices (dp {} × cp {} × tp {} × pp {}) but mpirun started {} processes: pass -np {world} to mpirun",
            plan.strategy.dp,
            plan.strategy.cp,
            plan.strategy.tp,
            plan.strategy.pp,
            comm.size()
        )));
    }
    let t0 = Instant::now();
    let rank = comm.rank();
    // MPI calls from a second thread would need MPI_THREAD_MULTIPLE: no overlap here.
    let inputs = Inputs {
        plan,
        settings,
        dist,
        data,
        steps,
        io,
    };
    let out = rank_loop(inputs, &mut comm, None)?;
    let ranks = vec![out.report];
    let report = measured_report(&plan.model, settings.batch, &ranks, steps);
    Ok((
        rank,
        DistResult {
            losses: out.losses,
            params: Vec::new(),
            step_s: slowest(&ranks),
            step_cpu: Vec::new(),
            ranks,
            wall_s: t0.elapsed().as_secs_f64(),
            report,
        },
    ))
}
