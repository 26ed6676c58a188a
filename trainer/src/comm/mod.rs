//! Communication between the executor's devices: a [`Communicator`] of point-to-point messages
//! that runs the collectives as the programs the simulator prices
//! ([`pangu_strategies::collective::Program`]: the one description of each algorithm).
//!
//! [`Communicator::run`] interprets a program literally: in each step this rank sends the
//! pieces of its buffer that its transfers name (read before the step's receives), then
//! receives its incoming transfers in the program's order, adding or copying. A step with one
//! send and one receive is an `exchange` (MPI's `Sendrecv`, so large ring messages never wait
//! on buffer space); anything else is buffered sends then blocking receives. Reductions add in
//! the program's fixed order and every rank copies its results from one owner, so every rank
//! ends with identical bits.
//!
//! Backends: [`threads`] (one thread per rank, channels, a timeout on every receive) and
//! `mpi_backend` (Open MPI behind the `mpi` feature). [`Group`] runs a collective on some
//! ranks of a communicator; [`Recorder`] logs what a rank sends and receives, for the tests
//! that hold the executor to the program.

use std::ops::Range;

use pangu_strategies::collective::{Combine, Program};
use pangu_strategies::{CollectiveAlgorithm, CollectiveKind};

pub mod check;
#[cfg(feature = "mpi")]
pub mod mpi_backend;
pub mod threads;

pub use pangu_strategies::collective::chunk;

/// Why a communication failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommError {
    /// A peer did not answer in time.
    #[error("rank {rank}: {op} waited {secs:.0} s for rank {peer} without an answer; the peer is stuck or dead (raise --comm-timeout if steps are legitimately this slow)")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The peer.
        peer: usize,
        /// The timeout.
        secs: f64,
    },
    /// A peer stopped (its thread ended or its process died).
    #[error("rank {rank}: {op}: rank {peer} has stopped")]
    PeerGone {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The peer.
        peer: usize,
    },
    /// Message sizes disagree between peers (a bug or mismatched plans).
    #[error("rank {rank}: {op}: rank {peer} sent {got} values, {want} expected")]
    Size {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The peer.
        peer: usize,
        /// Received length.
        got: usize,
        /// Expected length.
        want: usize,
    },
    /// A group was formed on a rank that is not one of its members.
    #[error("rank {rank} is not a member of the group {members:?} it was asked to communicate in")]
    NotInGroup {
        /// This rank.
        rank: usize,
        /// The group's members.
        members: Vec<usize>,
    },
    /// A program was run on a group of another size (mismatched plans).
    #[error("rank {rank}: a {kind:?} program for {want} ranks was run on a group of {got}")]
    GroupSize {
        /// This rank.
        rank: usize,
        /// The collective.
        kind: CollectiveKind,
        /// The program's group size.
        want: usize,
        /// The group's size.
        got: usize,
    },
    /// A helper thread of this rank stopped before it answered.
    #[error("rank {rank}: {op}: the communication thread stopped without a result")]
    ThreadStopped {
        /// This rank.
        rank: usize,
        /// What it was doing.
        op: &'static str,
    },
}

/// The name of a collective in messages.
fn op_name(kind: CollectiveKind) -> &'static str {
    match kind {
        CollectiveKind::AllReduce => "all-reduce",
        CollectiveKind::AllGather => "all-gather",
        CollectiveKind::ReduceScatter => "reduce-scatter",
        CollectiveKind::Broadcast => "broadcast",
    }
}

/// Point-to-point messages between the ranks of one group, and the collectives as programs.
pub trait Communicator {
    /// This rank in the group.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn size(&self) -> usize;
    /// Sends `data` to `to` (does not wait for the receiver).
    fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError>;
    /// Receives exactly `buf.len()` values from `from` into `buf`, waiting at most the
    /// communicator's timeout.
    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError>;
    /// Receives from `from` and adds into `buf`.
    fn recv_add(&mut self, from: usize, buf: &mut [f32], op: &'static str)
        -> Result<(), CommError>;

    /// Sends to `to` and receives from `from` (a ring or pairwise exchange step).
    fn exchange(
        &mut self,
        to: usize,
        data: &[f32],
        from: usize,
        buf: &mut [f32],
        add: bool,
        op: &'static str,
    ) -> Result<(), CommError> {
        self.send(to, data, op)?;
        if add {
            self.recv_add(from, buf, op)
        } else {
            self.recv(from, buf, op)
        }
    }

    /// Runs a collective program on `buf` (this rank is the program's position `rank()`).
    /// For a reduce-scatter this rank's [`chunk`] holds its share of the sum afterwards; for an
    /// all-gather it must hold this rank's data before.
    fn run(&mut self, program: &Program, buf: &mut [f32]) -> Result<(), CommError> {
        run_program(self, program, buf)
    }

    /// Sums `buf` over the group, in place.
    fn all_reduce(&mut self, buf: &mut [f32], p: &GroupPrograms) -> Result<(), CommError> {
        self.run(&p.all_reduce, buf)
    }

    /// Sums `buf` over the group and leaves this rank's [`chunk`] of the sum in place (the
    /// rest of `buf` is scratch); returns that range.
    fn reduce_scatter(
        &mut self,
        buf: &mut [f32],
        p: &GroupPrograms,
    ) -> Result<Range<usize>, CommError> {
        self.run(&p.reduce_scatter, buf)?;
        Ok(chunk(buf.len(), self.size(), self.rank()))
    }

    /// Fills every rank's [`chunk`] of `buf` from its owner (this rank's chunk must hold its
    /// data).
    fn all_gather(&mut self, buf: &mut [f32], p: &GroupPrograms) -> Result<(), CommError> {
        self.run(&p.all_gather, buf)
    }

    /// Copies `buf` of rank `root` to every rank (the broadcast program from `root`).
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError>
    where
        Self: Sized,
    {
        let n = self.size();
        let order: Vec<usize> = (0..n).map(|i| (root + i) % n).collect();
        let p = Program::build(
            CollectiveKind::Broadcast,
            CollectiveAlgorithm::Ring,
            &vec![0; n],
        );
        Group::new(self, &order)?.run(&p, buf)
    }

    /// Returns when every rank has called it (dissemination barrier, Hensgen et al. 1988).
    fn barrier(&mut self) -> Result<(), CommError> {
        let n = self.size();
        let r = self.rank();
        let mut d = 1;
        let mut token = [0.0f32];
        while d < n {
            self.exchange(
                (r + d) % n,
                &[0.0],
                (r + n - d) % n,
                &mut token,
                false,
                "barrier",
            )?;
            d *= 2;
        }
        Ok(())
    }
}

/// The interpreter of [`Communicator::run`].
fn run_program<C: Communicator + ?Sized>(
    c: &mut C,
    p: &Program,
    buf: &mut [f32],
) -> Result<(), CommError> {
    if p.size as usize != c.size() && p.size > 1 {
        return Err(CommError::GroupSize {
            rank: c.rank(),
            kind: p.kind,
            want: p.size as usize,
            got: c.size(),
        });
    }
    let me = c.rank() as u32;
    let len = buf.len();
    let op = op_name(p.kind);
    let mut outgoing = Vec::new();
    let mut incoming = Vec::new();
    // The exchange's copy of what this rank sends, kept per thread across calls (a fresh
    // multi-megabyte allocation per collective costs page faults).
    let mut tmp: Vec<f32> = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let r = run_steps(
        c,
        p,
        buf,
        &mut outgoing,
        &mut incoming,
        &mut tmp,
        (me, len, op),
    );
    SCRATCH.with(|s| *s.borrow_mut() = tmp);
    r
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The steps of [`run_program`] for this rank.
fn run_steps<'p, C: Communicator + ?Sized>(
    c: &mut C,
    p: &'p Program,
    buf: &mut [f32],
    outgoing: &mut Vec<&'p pangu_strategies::collective::Transfer>,
    incoming: &mut Vec<&'p pangu_strategies::collective::Transfer>,
    tmp: &mut Vec<f32>,
    (me, len, op): (u32, usize, &'static str),
) -> Result<(), CommError> {
    for step in &p.steps {
        outgoing.clear();
        incoming.clear();
        outgoing.extend(step.iter().filter(|t| t.src == me));
        incoming.extend(step.iter().filter(|t| t.dst == me));
        if let ([o], [i]) = (&outgoing[..], &incoming[..]) {
            tmp.clear();
            tmp.extend_from_slice(&buf[p.elements(len, &o.pieces)]);
            let into = &mut buf[p.elements(len, &i.pieces)];
            let add = i.combine == Combine::Add;
            c.exchange(o.dst as usize, tmp, i.src as usize, into, add, op)?;
            continue;
        }
        for t in outgoing.iter() {
            c.send(t.dst as usize, &buf[p.elements(len, &t.pieces)], op)?;
        }
        for t in incoming.iter() {
            let into = &mut buf[p.elements(len, &t.pieces)];
            match t.combine {
                Combine::Add => c.recv_add(t.src as usize, into, op)?,
                Combine::Copy => c.recv(t.src as usize, into, op)?,
            }
        }
    }
    Ok(())
}

/// The three programs of one group's collectives, built once (from the plan, or for a given
/// algorithm and placement).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPrograms {
    /// All-reduce.
    pub all_reduce: Program,
    /// Reduce-scatter.
    pub reduce_scatter: Program,
    /// All-gather.
    pub all_gather: Program,
}

impl GroupPrograms {
    /// The programs of `algorithm` over members on `servers` (one entry per member).
    pub fn new(algorithm: CollectiveAlgorithm, servers: &[u32]) -> GroupPrograms {
        let p = |k| Program::build(k, algorithm, servers);
        GroupPrograms {
            all_reduce: p(CollectiveKind::AllReduce),
            reduce_scatter: p(CollectiveKind::ReduceScatter),
            all_gather: p(CollectiveKind::AllGather),
        }
    }

    /// The programs of `algorithm` over `n` members on one server.
    pub fn flat(algorithm: CollectiveAlgorithm, n: usize) -> GroupPrograms {
        GroupPrograms::new(algorithm, &vec![0; n])
    }
}

/// Some ranks of a communicator as a group of their own (`members[i]` is the parent's rank of
/// the group's rank `i`).
pub struct Group<'a> {
    parent: &'a mut dyn Communicator,
    members: &'a [usize],
    me: usize,
}

impl<'a> Group<'a> {
    /// The group of `members`; an error names this rank and the members when it is not one.
    pub fn new(
        parent: &'a mut dyn Communicator,
        members: &'a [usize],
    ) -> Result<Group<'a>, CommError> {
        let rank = parent.rank();
        let me = members
            .iter()
            .position(|&r| r == rank)
            .ok_or_else(|| CommError::NotInGroup {
                rank,
                members: members.to_vec(),
            })?;
        Ok(Group {
            parent,
            members,
            me,
        })
    }
}

impl Communicator for Group<'_> {
    fn rank(&self) -> usize {
        self.me
    }

    fn size(&self) -> usize {
        self.members.len()
    }

    fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError> {
        self.parent.send(self.members[to], data, op)
    }

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
        self.parent.recv(self.members[from], buf, op)
    }

    fn recv_add(
        &mut self,
        from: usize,
        buf: &mut [f32],
        op: &'static str,
    ) -> Result<(), CommError> {
        self.parent.recv_add(self.members[from], buf, op)
    }

    fn exchange(
        &mut self,
        to: usize,
        data: &[f32],
        from: usize,
        buf: &mut [f32],
        add: bool,
        op: &'static str,
    ) -> Result<(), CommError> {
        self.parent
            .exchange(self.members[to], data, self.members[from], buf, add, op)
    }
}

/// One message a rank sent or received, as a [`Recorder`] logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Sent `len` values to `to`.
    Send {
        /// Destination rank.
        to: usize,
        /// Values.
        len: usize,
    },
    /// Received `len` values from `from`, added or copied.
    Recv {
        /// Source rank.
        from: usize,
        /// Values.
        len: usize,
        /// Added into the buffer.
        add: bool,
    },
}

/// A communicator that logs every message of the one it wraps (whose own `exchange`, e.g.
/// MPI's `Sendrecv`, still runs).
pub struct Recorder<'a> {
    inner: &'a mut dyn Communicator,
    /// The log, in order.
    pub log: Vec<Event>,
}

impl<'a> Recorder<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut dyn Communicator) -> Recorder<'a> {
        Recorder {
            inner,
            log: Vec::new(),
        }
    }
}

impl Communicator for Recorder<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError> {
        self.log.push(Event::Send {
            to,
            len: data.len(),
        });
        self.inner.send(to, data, op)
    }

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
        self.log.push(Event::Recv {
            from,
            len: buf.len(),
            add: false,
        });
        self.inner.recv(from, buf, op)
    }

    fn recv_add(
        &mut self,
        from: usize,
        buf: &mut [f32],
        op: &'static str,
    ) -> Result<(), CommError> {
        self.log.push(Event::Recv {
            from,
            len: buf.len(),
            add: true,
        });
        self.inner.recv_add(from, buf, op)
    }

    fn exchange(
        &mut self,
        to: usize,
        data: &[f32],
        from: usize,
        buf: &mut [f32],
        add: bool,
        op: &'static str,
    ) -> Result<(), CommError> {
        self.log.push(Event::Send {
            to,
            len: data.len(),
        });
        self.log.push(Event::Recv {
            from,
            len: buf.len(),
            add,
        });
        self.inner.exchange(to, data, from, buf, add, op)
    }
}

/// The messages position `me` of `program` sends and receives on a `len`-element buffer, in
/// program order: what a [`Recorder`] must log when the program runs.
pub fn expected_log(program: &Program, me: usize, len: usize) -> Vec<Event> {
    let me = me as u32;
    let mut out = Vec::new();
    for step in &program.steps {
        for t in step.iter().filter(|t| t.src == me) {
            out.push(Event::Send {
                to: t.dst as usize,
                len: program.elements(len, &t.pieces).len(),
            });
        }
        for t in step.iter().filter(|t| t.dst == me) {
            out.push(Event::Recv {
                from: t.src as usize,
                len: program.elements(len, &t.pieces).len(),
                add: t.combine == Combine::Add,
            });
        }
    }
    out
}
