//! The data-parallel reduction of the plan's gradient buckets (`Plan::grad_buckets`), issued
//! in the plan's order as backward finishes each bucket's last part: an all-reduce, or a
//! reduce-scatter when the optimizer is sharded. On the threads backend a communication thread
//! with a communicator of its own reduces them while backward goes on (the overlap the
//! simulator prices); under MPI they are reduced in line at the same points, since a second
//! MPI thread would need `MPI_THREAD_MULTIPLE`. The results are written back after the action
//! list ([`BucketReducer::wait`]).

use std::sync::mpsc::{channel, Receiver, Sender};

use pangu_strategies::plan::ChunkPart;
use pangu_strategies::Plan;

use super::groups::Members;
use crate::comm::{chunk, CommError, Communicator, Group, GroupPrograms};
use crate::host::{self, BucketRanges};
use crate::TrainError;

/// A bucket on its way: chunk, bucket index, values (reduced when it comes back).
type Job = (usize, usize, Vec<f32>);

enum Mode {
    /// No data parallelism: nothing to reduce.
    Off,
    /// Reduced at once on the rank's own communicator; results wait here.
    Inline(Vec<Job>),
    /// Handed to the communication thread.
    Thread {
        to_comm: Sender<Job>,
        from_comm: Receiver<Result<Job, CommError>>,
        in_flight: usize,
    },
}

/// The buckets of a rank's chunks and their reduction.
pub(super) struct BucketReducer {
    rank: usize,
    sharded: bool,
    dp: usize,
    dp_rank: usize,
    dp_group: Vec<usize>,
    programs: GroupPrograms,
    /// Per chunk: its buckets in the plan's order, and the next one due.
    chunks: Vec<(Vec<BucketRanges>, usize)>,
    mode: Mode,
    /// (chunk, elements) of every bucket issued, in order.
    pub(super) log: Vec<(usize, usize)>,
    overlapped: u64,
    /// Floats held in bucket copies now and at most.
    live: usize,
    peak: usize,
}

/// Reduces `v` with the group's program: all-reduce, or reduce-scatter when sharded.
fn reduce(
    comm: &mut dyn Communicator,
    group: &[usize],
    programs: &GroupPrograms,
    sharded: bool,
    v: &mut [f32],
) -> Result<(), CommError> {
    let mut g = Group::new(comm, group)?;
    if sharded {
        g.reduce_scatter(v, programs).map(|_| ())
    } else {
        g.all_reduce(v, programs)
    }
}

impl BucketReducer {
    /// The reduction of `buckets` (per chunk) over the data-parallel group `dp`; with `aux`, a
    /// communicator for a communication thread, it overlaps backward.
    pub(super) fn new(
        plan: &Plan,
        rank: usize,
        dp: &Members,
        buckets: Vec<Vec<BucketRanges>>,
        aux: Option<Box<dyn Communicator + Send>>,
    ) -> BucketReducer {
        let sharded = host::is_sharded(plan);
        let mode = match aux {
            _ if dp.ranks.len() < 2 => Mode::Off,
            None => Mode::Inline(Vec::new()),
            Some(mut comm) => {
                let (to_comm, jobs) = channel::<Job>();
                let (results, from_comm) = channel();
                let group = dp.ranks.clone();
                let programs = dp.programs.clone();
                std::thread::spawn(move || {
                    for (c, b, mut v) in jobs {
                        let r = reduce(&mut *comm, &group, &programs, sharded, &mut v);
                        if results.send(r.map(|()| (c, b, v))).is_err() {
                            break;
                        }
                    }
                });
                Mode::Thread {
                    to_comm,
                    from_comm,
                    in_flight: 0,
                }
            }
        };
        let dp_rank = dp.ranks.iter().position(|&r| r == rank).unwrap_or(0);
        BucketReducer {
            rank,
            sharded,
            dp: dp.ranks.len(),
            dp_rank,
            dp_group: dp.ranks.clone(),
            programs: dp.programs.clone(),
            chunks: buckets.into_iter().map(|b| (b, 0)).collect(),
            mode,
            log: Vec::new(),
            overlapped: 0,
            live: 0,
            peak: 0,
        }
    }

    /// `part` of chunk `ci` finished its last backward of the step (`grads` is the chunk's
    /// gradient buffer): if it completes the chunk's next bucket, that bucket is issued.
    pub(super) fn part_done(
        &mut self,
        ci: usize,
        part: ChunkPart,
        grads: &[f32],
        world: &mut dyn Communicator,
    ) -> Result<(), TrainError> {
        if matches!(self.mode, Mode::Off) {
            return Ok(());
        }
        let Some((list, next)) = self.chunks.get_mut(ci) else {
            return Ok(());
        };
        let Some(b) = list.get(*next) else {
            return Ok(());
        };
        if b.bucket.last_part() != Some(part) {
            return Ok(());
        }
        let bi = *next;
        *next += 1;
        let mut v = Vec::with_capacity(b.len);
        for r in &b.ranges {
            v.extend_from_slice(&grads[r.clone()]);
        }
        self.log.push((ci, v.len()));
        self.live += v.len();
        self.peak = self.peak.max(self.live);
        match &mut self.mode {
            Mode::Off => {}
            Mode::Inline(ready) => {
                reduce(world, &self.dp_group, &self.programs, self.sharded, &mut v)?;
                ready.push((ci, bi, v));
            }
            Mode::Thread {
                to_comm, in_flight, ..
            } => {
                // A closed channel means the thread stopped on an error, which `wait` reports.
                if to_comm.send((ci, bi, v)).is_ok() {
                    *in_flight += 1;
                    self.overlapped += 1;
                }
            }
        }
        Ok(())
    }

    /// Waits for every issued bucket and writes the results into the chunks' gradients (this
    /// rank's chunk of each bucket when sharded).
    pub(super) fn wait(&mut self, grads: &mut [&mut Vec<f32>]) -> Result<(), TrainError> {
        let mut done: Vec<Job> = Vec::new();
        match &mut self.mode {
            Mode::Off => return Ok(()),
            Mode::Inline(ready) => done.append(ready),
            Mode::Thread {
                from_comm,
                in_flight,
                ..
            } => {
                while *in_flight > 0 {
                    let job = from_comm.recv().map_err(|_| CommError::ThreadStopped {
                        rank: self.rank,
                        op: "overlapped gradient reduction",
                    })??;
                    done.push(job);
                    *in_flight -= 1;
                }
            }
        }
        for (ci, bi, v) in done {
            let b = &self.chunks[ci].0[bi];
            let keep = if self.sharded {
                chunk(b.len, self.dp, self.dp_rank)
            } else {
                0..b.len
            };
            let mut at = keep.start;
            for r in b.sub(keep.clone()) {
                grads[ci][r.clone()].copy_from_slice(&v[at..at + r.len()]);
                at += r.len();
            }
            self.live -= v.len();
        }
        for (ci, (list, next)) in self.chunks.iter_mut().enumerate() {
            if *next != list.len() {
                return Err(TrainError::Config(format!(
                    "rank {}: chunk {ci} issued {} of its {} gradient buckets: backward did not report every part",
                    self.rank,
                    *next,
                    list.len()
                )));
            }
            *next = 0;
        }
        Ok(())
    }

    /// Buckets reduced on the communication thread so far.
    pub(super) fn overlapped(&self) -> u64 {
        self.overlapped
    }

    /// The most floats held in bucket copies at once.
    pub(super) fn peak(&self) -> usize {
        self.peak
    }
}
