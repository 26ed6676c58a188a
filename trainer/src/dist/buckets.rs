//! The data-parallel reduction of the plan's gradient buckets (`Plan::grad_buckets`), issued
//! in the plan's order as backward finishes each bucket's last part: an all-reduce, or a
//! reduce-scatter when the optimizer is sharded. On the threads backend a communication thread
//! with a communicator of its own reduces them while backward goes on (the overlap the
//! simulator prices); under MPI they are reduced in line at the same points, since a second
//! MPI thread would need `MPI_THREAD_MULTIPLE`.
//!
//! A bucket's ranges are copied into one of at most [`IN_FLIGHT`] fusion buffers (the memory
//! model's two buckets in flight); when all are busy, the oldest result is waited for and its
//! sums written back before the next bucket goes. The buffers are kept across steps, so a step
//! allocates nothing here. [`BucketReducer::wait`] writes back what is left after the action
//! list.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender};

use pangu_strategies::plan::ChunkPart;
use pangu_strategies::Plan;

use super::groups::Members;
use crate::comm::{chunk, CommError, Communicator, Group, GroupPrograms};
use crate::host::{self, BucketRanges};
use crate::TrainError;

/// Fusion buffers a rank holds at most (the memory model's `2 × grad_bucket`).
pub(super) const IN_FLIGHT: usize = 2;

/// A bucket on its way: chunk, bucket index, values (reduced when it comes back).
type Job = (usize, usize, Vec<f32>);

enum Mode {
    /// No data parallelism: nothing to reduce.
    Off,
    /// Reduced at once on the rank's own communicator.
    Inline,
    /// Handed to the communication thread.
    Thread {
        to_comm: Sender<Job>,
        from_comm: Receiver<Result<Job, CommError>>,
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
    /// Buckets handed to the thread, oldest first (chunk, bucket).
    in_flight: VecDeque<(usize, usize)>,
    /// Results waiting for their chunk's buffer (a chunk other than the one in backward).
    done: Vec<Job>,
    /// Free fusion buffers, and how many exist.
    pool: Vec<Vec<f32>>,
    buffers: usize,
    /// (chunk, elements) of every bucket issued, in order.
    pub(super) log: Vec<(usize, usize)>,
    overlapped: u64,
    /// The largest bucket (elements): the buffers' size.
    largest: usize,
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
            None => Mode::Inline,
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
                Mode::Thread { to_comm, from_comm }
            }
        };
        let dp_rank = dp.ranks.iter().position(|&r| r == rank).unwrap_or(0);
        let largest = buckets.iter().flatten().map(|b| b.len).max().unwrap_or(0);
        BucketReducer {
            rank,
            sharded,
            dp: dp.ranks.len(),
            dp_rank,
            dp_group: dp.ranks.clone(),
            programs: dp.programs.clone(),
            chunks: buckets.into_iter().map(|b| (b, 0)).collect(),
            mode,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            pool: Vec::new(),
            buffers: 0,
            log: Vec::new(),
            overlapped: 0,
            largest,
        }
    }

    /// The elements of bucket `bi` of chunk `ci` whose reduced values this rank keeps.
    fn kept(&self, ci: usize, bi: usize) -> std::ops::Range<usize> {
        let len = self.chunks[ci].0[bi].len;
        if self.sharded {
            chunk(len, self.dp, self.dp_rank)
        } else {
            0..len
        }
    }

    /// Writes a reduced bucket back into its chunk's gradients and frees its buffer.
    fn apply(&mut self, (ci, bi, v): Job, grads: &mut [f32]) {
        let keep = self.kept(ci, bi);
        let mut at = keep.start;
        for r in self.chunks[ci].0[bi].sub(keep) {
            grads[r.clone()].copy_from_slice(&v[at..at + r.len()]);
            at += r.len();
        }
        self.pool.push(v);
    }

    /// The oldest result of the communication thread.
    fn receive(&mut self) -> Result<Job, TrainError> {
        let Mode::Thread { from_comm, .. } = &self.mode else {
            return Err(TrainError::Config(
                "no communication thread to wait for".into(),
            ));
        };
        let job = from_comm.recv().map_err(|_| CommError::ThreadStopped {
            rank: self.rank,
            op: "overlapped gradient reduction",
        })??;
        self.in_flight.pop_front();
        Ok(job)
    }

    /// A free fusion buffer: a new one while fewer than [`IN_FLIGHT`] exist, else the oldest
    /// in-flight bucket's once its result is back (written into `grads` when it is chunk
    /// `ci`'s, kept for later otherwise).
    fn buffer(&mut self, ci: usize, grads: &mut [f32]) -> Result<Vec<f32>, TrainError> {
        loop {
            if let Some(v) = self.pool.pop() {
                return Ok(v);
            }
            if self.buffers < IN_FLIGHT || self.in_flight.is_empty() {
                self.buffers += 1;
                return Ok(Vec::with_capacity(self.largest));
            }
            let job = self.receive()?;
            if job.0 == ci {
                self.apply(job, grads);
            } else {
                self.done.push(job);
            }
        }
    }

    /// `part` of chunk `ci` finished its last backward of the step (`grads` is the chunk's
    /// gradient buffer): if it completes the chunk's next bucket, that bucket is issued.
    pub(super) fn part_done(
        &mut self,
        ci: usize,
        part: ChunkPart,
        grads: &mut [f32],
        world: &mut dyn Communicator,
    ) -> Result<(), TrainError> {
        if matches!(self.mode, Mode::Off) {
            return Ok(());
        }
        let Some((list, next)) = self.chunks.get(ci) else {
            return Ok(());
        };
        let bi = *next;
        if list.get(bi).and_then(|b| b.bucket.last_part()) != Some(part) {
            return Ok(());
        }
        self.chunks[ci].1 += 1;
        if let (Mode::Inline, [r]) = (&self.mode, &self.chunks[ci].0[bi].ranges[..]) {
            // In line and contiguous: reduced in place.
            let r = r.clone();
            self.log.push((ci, r.len()));
            reduce(
                world,
                &self.dp_group,
                &self.programs,
                self.sharded,
                &mut grads[r],
            )?;
            return Ok(());
        }
        let mut v = self.buffer(ci, grads)?;
        v.clear();
        for r in &self.chunks[ci].0[bi].ranges {
            v.extend_from_slice(&grads[r.clone()]);
        }
        self.log.push((ci, v.len()));
        match &self.mode {
            Mode::Off => {}
            Mode::Inline => {
                reduce(world, &self.dp_group, &self.programs, self.sharded, &mut v)?;
                self.apply((ci, bi, v), grads);
            }
            Mode::Thread { to_comm, .. } => {
                // A closed channel means the thread stopped on an error, which `receive`
                // reports.
                if to_comm.send((ci, bi, v)).is_ok() {
                    self.in_flight.push_back((ci, bi));
                    self.overlapped += 1;
                }
            }
        }
        Ok(())
    }

    /// Waits for every issued bucket and writes the results into the chunks' gradients (this
    /// rank's chunk of each bucket when sharded).
    pub(super) fn wait(&mut self, grads: &mut [&mut Vec<f32>]) -> Result<(), TrainError> {
        while !self.in_flight.is_empty() {
            let job = self.receive()?;
            self.done.push(job);
        }
        for job in std::mem::take(&mut self.done) {
            let ci = job.0;
            self.apply(job, grads[ci]);
        }
        for (ci, (list, next)) in self.chunks.iter_mut().enumerate() {
            if *next != list.len() && !matches!(self.mode, Mode::Off) {
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

    /// A fusion buffer for other collectives of the step (the weight gathers), returned with
    /// [`BucketReducer::give_back`].
    pub(super) fn lend(&mut self) -> Vec<f32> {
        self.pool.pop().unwrap_or_else(|| {
            self.buffers += 1;
            Vec::with_capacity(self.largest)
        })
    }

    /// Returns a lent buffer.
    pub(super) fn give_back(&mut self, v: Vec<f32>) {
        self.pool.push(v);
    }

    /// Buckets reduced on the communication thread so far.
    pub(super) fn overlapped(&self) -> u64 {
        self.overlapped
    }

    /// Bytes of the fusion buffers this rank holds.
    pub(super) fn buffer_bytes(&self) -> u64 {
        4 * (self.buffers * self.largest) as u64
    }
}
