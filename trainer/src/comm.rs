//! Communication between the executor's devices: a [`Communicator`] trait whose collectives
//! are the algorithms the simulator prices ([`CollectiveAlgorithm`], shared through
//! `pangu-strategies`), written once on top of point-to-point messages so that every backend
//! runs the same schedule of transfers.
//!
//! - Ring (Patarasuk & Yuan 2009): reduce-scatter then all-gather around the ring, `2(n-1)`
//!   steps of `1/n` of the data.
//! - Recursive halving-doubling (Thakur, Rabenseifner & Gropp 2005): `log2 n` exchanges with
//!   partners at distance n/2, n/4, … then back; power-of-two groups only (others fall back to
//!   the ring, as HCCL does).
//! - Double binary tree (NCCL 2.4): half the data reduced up and broadcast down a binary tree,
//!   the other half on the mirrored tree, so each rank is a leaf in one of them.
//! - Hierarchical: ring inside each server, the inter-server algorithm among one rank per
//!   server slot, ring again; on one host (a single server) it is the ring.
//!
//! Every reduction adds contributions in an order fixed by the algorithm and the group size,
//! so results are reproducible run to run. Buffers are reduced in place; a rank's share of a
//! reduce-scatter is the range [`chunk`] gives.

use std::ops::Range;
use std::time::Duration;

use pangu_strategies::collective::InterServer;
use pangu_strategies::CollectiveAlgorithm;

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
}

/// The part of a `len`-element buffer that rank `i` of `n` owns after a reduce-scatter
/// (near-equal contiguous chunks, the first `len % n` one element longer).
pub fn chunk(len: usize, n: usize, i: usize) -> Range<usize> {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// Point-to-point messages between the ranks of one group, plus the collectives built on them.
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

    /// Sums `buf` over the group, in place, with `algo`.
    fn all_reduce(&mut self, buf: &mut [f32], algo: CollectiveAlgorithm) -> Result<(), CommError> {
        let n = self.size();
        if n == 1 {
            return Ok(());
        }
        match effective(algo, n) {
            Algo::Ring => {
                ring_reduce_scatter(self, buf)?;
                ring_all_gather(self, buf)
            }
            Algo::HalvingDoubling => {
                hd_reduce_scatter(self, buf)?;
                hd_all_gather(self, buf)
            }
            Algo::Tree => {
                let half = buf.len() / 2;
                let (a, b) = buf.split_at_mut(half);
                tree_reduce_bcast(self, a, false)?;
                tree_reduce_bcast(self, b, true)
            }
        }
    }

    /// Sums `buf` over the group and leaves this rank's [`chunk`] of the sum in place
    /// (the rest of `buf` is scratch); returns that range.
    fn reduce_scatter(
        &mut self,
        buf: &mut [f32],
        algo: CollectiveAlgorithm,
    ) -> Result<Range<usize>, CommError> {
        let n = self.size();
        if n > 1 {
            match effective(algo, n) {
                Algo::HalvingDoubling => hd_reduce_scatter(self, buf)?,
                _ => ring_reduce_scatter(self, buf)?,
            }
        }
        Ok(chunk(buf.len(), n, self.rank()))
    }

    /// Fills every rank's [`chunk`] of `buf` from its owner (this rank's chunk must hold its
    /// data).
    fn all_gather(&mut self, buf: &mut [f32], algo: CollectiveAlgorithm) -> Result<(), CommError> {
        let n = self.size();
        if n == 1 {
            return Ok(());
        }
        match effective(algo, n) {
            Algo::HalvingDoubling => hd_all_gather(self, buf),
            _ => ring_all_gather(self, buf),
        }
    }

    /// Copies `buf` of rank `root` to every rank (binary tree rooted at `root`).
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let n = self.size();
        let v = (self.rank() + n - root) % n;
        let real = |x: usize| (x + root) % n;
        if v > 0 {
            self.recv(real((v - 1) / 2), buf, "broadcast")?;
        }
        for c in [2 * v + 1, 2 * v + 2] {
            if c < n {
                self.send(real(c), buf, "broadcast")?;
            }
        }
        Ok(())
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

/// The algorithm actually run for a group of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Ring,
    HalvingDoubling,
    Tree,
}

fn effective(algo: CollectiveAlgorithm, n: usize) -> Algo {
    let hd = if n.is_power_of_two() {
        Algo::HalvingDoubling
    } else {
        Algo::Ring
    };
    match algo {
        CollectiveAlgorithm::Ring => Algo::Ring,
        CollectiveAlgorithm::HalvingDoubling => hd,
        CollectiveAlgorithm::DoubleBinaryTree => Algo::Tree,
        // One host is one server: the intra-server ring is the whole collective.
        CollectiveAlgorithm::Hierarchical { inter } => match inter {
            InterServer::Ring | InterServer::HalvingDoubling | InterServer::DoubleBinaryTree => {
                Algo::Ring
            }
        },
    }
}

fn ring_reduce_scatter<C: Communicator + ?Sized>(
    c: &mut C,
    buf: &mut [f32],
) -> Result<(), CommError> {
    let (n, r) = (c.size(), c.rank());
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    let len = buf.len();
    let mut tmp = Vec::new();
    for s in 0..n - 1 {
        let send = chunk(len, n, (r + 2 * n - s - 1) % n);
        let recv = chunk(len, n, (r + 2 * n - s - 2) % n);
        tmp.clear();
        tmp.extend_from_slice(&buf[send]);
        c.exchange(
            next,
            &tmp,
            prev,
            &mut buf[recv],
            true,
            "ring reduce-scatter",
        )?;
    }
    Ok(())
}

fn ring_all_gather<C: Communicator + ?Sized>(c: &mut C, buf: &mut [f32]) -> Result<(), CommError> {
    let (n, r) = (c.size(), c.rank());
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    let len = buf.len();
    let mut tmp = Vec::new();
    for s in 0..n - 1 {
        let send = chunk(len, n, (r + n - s) % n);
        let recv = chunk(len, n, (r + 2 * n - s - 1) % n);
        tmp.clear();
        tmp.extend_from_slice(&buf[send]);
        c.exchange(next, &tmp, prev, &mut buf[recv], false, "ring all-gather")?;
    }
    Ok(())
}

/// Chunks `lo..hi` of a power-of-two split: the element range they cover.
fn span(len: usize, n: usize, lo: usize, hi: usize) -> Range<usize> {
    chunk(len, n, lo).start..chunk(len, n, hi - 1).end
}

fn hd_reduce_scatter<C: Communicator + ?Sized>(
    c: &mut C,
    buf: &mut [f32],
) -> Result<(), CommError> {
    let (n, r) = (c.size(), c.rank());
    let len = buf.len();
    let (mut lo, mut hi) = (0, n);
    let mut d = n / 2;
    let mut tmp = Vec::new();
    while d >= 1 {
        let partner = r ^ d;
        let mid = (lo + hi) / 2;
        let (keep, give) = if r & d == 0 {
            ((lo, mid), (mid, hi))
        } else {
            ((mid, hi), (lo, mid))
        };
        tmp.clear();
        tmp.extend_from_slice(&buf[span(len, n, give.0, give.1)]);
        c.exchange(
            partner,
            &tmp,
            partner,
            &mut buf[span(len, n, keep.0, keep.1)],
            true,
            "halving-doubling reduce-scatter",
        )?;
        (lo, hi) = keep;
        d /= 2;
    }
    Ok(())
}

fn hd_all_gather<C: Communicator + ?Sized>(c: &mut C, buf: &mut [f32]) -> Result<(), CommError> {
    let (n, r) = (c.size(), c.rank());
    let len = buf.len();
    let (mut lo, mut hi) = (r, r + 1);
    let mut d = 1;
    let mut tmp = Vec::new();
    while d < n {
        let partner = r ^ d;
        let width = hi - lo;
        let (plo, phi) = if r & d == 0 {
            (lo + width, hi + width)
        } else {
            (lo - width, hi - width)
        };
        tmp.clear();
        tmp.extend_from_slice(&buf[span(len, n, lo, hi)]);
        c.exchange(
            partner,
            &tmp,
            partner,
            &mut buf[span(len, n, plo, phi)],
            false,
            "halving-doubling all-gather",
        )?;
        (lo, hi) = (lo.min(plo), hi.max(phi));
        d *= 2;
    }
    Ok(())
}

/// Reduce up and broadcast down a binary tree in heap order over virtual ranks (`mirror`
/// numbers them from the other end, NCCL's second tree).
fn tree_reduce_bcast<C: Communicator + ?Sized>(
    c: &mut C,
    buf: &mut [f32],
    mirror: bool,
) -> Result<(), CommError> {
    let n = c.size();
    let v = if mirror { n - 1 - c.rank() } else { c.rank() };
    let real = |x: usize| if mirror { n - 1 - x } else { x };
    let children: Vec<usize> = [2 * v + 1, 2 * v + 2]
        .into_iter()
        .filter(|&x| x < n)
        .collect();
    for &ch in &children {
        c.recv_add(real(ch), buf, "tree reduce")?;
    }
    if v > 0 {
        let parent = real((v - 1) / 2);
        c.send(parent, buf, "tree reduce")?;
        c.recv(parent, buf, "tree broadcast")?;
    }
    for &ch in &children {
        c.send(real(ch), buf, "tree broadcast")?;
    }
    Ok(())
}

/// The thread backend: one OS thread per rank in one process, messages through channels.
pub mod threads {
    use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};

    use super::*;

    /// One rank's end of a group of threads.
    #[derive(Debug)]
    pub struct ThreadComm {
        rank: usize,
        to: Vec<Sender<Vec<f32>>>,
        from: Vec<Receiver<Vec<f32>>>,
        timeout: Duration,
    }

    /// Communicators for a group of `n` threads (hand one to each thread).
    pub fn group(n: usize, timeout: Duration) -> Vec<ThreadComm> {
        // chans[src][dst]
        let mut senders: Vec<Vec<Option<Sender<Vec<f32>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<Receiver<Vec<f32>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for src in 0..n {
            for dst in 0..n {
                let (tx, rx) = channel();
                senders[src][dst] = Some(tx);
                receivers[dst][src] = Some(rx);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (tx, rx))| ThreadComm {
                rank,
                to: tx.into_iter().flatten().collect(),
                from: rx.into_iter().flatten().collect(),
                timeout,
            })
            .collect()
    }

    impl ThreadComm {
        fn take(
            &mut self,
            from: usize,
            want: usize,
            op: &'static str,
        ) -> Result<Vec<f32>, CommError> {
            let msg = self.from[from]
                .recv_timeout(self.timeout)
                .map_err(|e| match e {
                    RecvTimeoutError::Timeout => CommError::Timeout {
                        rank: self.rank,
                        op,
                        peer: from,
                        secs: self.timeout.as_secs_f64(),
                    },
                    RecvTimeoutError::Disconnected => CommError::PeerGone {
                        rank: self.rank,
                        op,
                        peer: from,
                    },
                })?;
            if msg.len() != want {
                return Err(CommError::Size {
                    rank: self.rank,
                    op,
                    peer: from,
                    got: msg.len(),
                    want,
                });
            }
            Ok(msg)
        }
    }

    impl Communicator for ThreadComm {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.to.len()
        }

        fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError> {
            self.to[to]
                .send(data.to_vec())
                .map_err(|_| CommError::PeerGone {
                    rank: self.rank,
                    op,
                    peer: to,
                })
        }

        fn recv(
            &mut self,
            from: usize,
            buf: &mut [f32],
            op: &'static str,
        ) -> Result<(), CommError> {
            let msg = self.take(from, buf.len(), op)?;
            buf.copy_from_slice(&msg);
            Ok(())
        }

        fn recv_add(
            &mut self,
            from: usize,
            buf: &mut [f32],
            op: &'static str,
        ) -> Result<(), CommError> {
            let msg = self.take(from, buf.len(), op)?;
            for (b, m) in buf.iter_mut().zip(&msg) {
                *b += m;
            }
            Ok(())
        }
    }
}

/// The MPI backend: one process per rank, started by `mpirun`, over Open MPI (the `mpi`
/// crate). MPI calls have no timeout of their own, so a watchdog thread ends the process with
/// an error when a call waits longer than the timeout; `mpirun` then stops every other rank.
#[cfg(feature = "mpi")]
pub mod mpi_backend {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use mpi::datatype::Equivalence;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::{Destination, Source};

    use super::*;

    type Pending = Arc<Mutex<Option<(Instant, &'static str, usize)>>>;

    /// This process's rank in `MPI_COMM_WORLD`.
    pub struct MpiComm {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
        tmp: Vec<f32>,
        pending: Pending,
    }

    impl std::fmt::Debug for MpiComm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "MpiComm(rank {} of {})", self.rank, self.size)
        }
    }

    /// Initialises MPI (once per process); `None` when it is already initialised. Sends are
    /// buffered (`MPI_Bsend`, the schedule's semantics: a send never waits for its receiver)
    /// through an attached buffer of `send_buffer` bytes, which must hold every message a rank
    /// may have in flight at once.
    pub fn init(timeout: Duration, send_buffer: usize) -> Option<MpiComm> {
        let mut universe = mpi::initialize()?;
        universe.set_buffer_size(send_buffer);
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        let pending: Pending = Arc::new(Mutex::new(None));
        let watch = Arc::clone(&pending);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let p = *watch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((since, op, peer)) = p {
                if since.elapsed() > timeout {
                    let e = CommError::Timeout {
                        rank,
                        op,
                        peer,
                        secs: timeout.as_secs_f64(),
                    };
                    eprintln!("error: {e}; stopping this rank so that mpirun stops the others");
                    std::process::exit(3);
                }
            }
        });
        Some(MpiComm {
            _universe: universe,
            world,
            rank,
            size,
            tmp: Vec::new(),
            pending,
        })
    }

    impl MpiComm {
        fn watch(&self, op: &'static str, peer: usize) {
            *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((Instant::now(), op, peer));
        }

        fn done(&self) {
            *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }

        fn check(
            &self,
            got: usize,
            want: usize,
            peer: usize,
            op: &'static str,
        ) -> Result<(), CommError> {
            if got == want {
                Ok(())
            } else {
                Err(CommError::Size {
                    rank: self.rank,
                    op,
                    peer,
                    got,
                    want,
                })
            }
        }
    }

    impl Communicator for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn send(&mut self, to: usize, data: &[f32], op: &'static str) -> Result<(), CommError> {
            self.watch(op, to);
            self.world.process_at_rank(to as i32).buffered_send(data);
            self.done();
            Ok(())
        }

        fn recv(
            &mut self,
            from: usize,
            buf: &mut [f32],
            op: &'static str,
        ) -> Result<(), CommError> {
            self.watch(op, from);
            let st = self.world.process_at_rank(from as i32).receive_into(buf);
            self.done();
            self.check(
                st.count(f32::equivalent_datatype()) as usize,
                buf.len(),
                from,
                op,
            )
        }

        fn recv_add(
            &mut self,
            from: usize,
            buf: &mut [f32],
            op: &'static str,
        ) -> Result<(), CommError> {
            let mut tmp = std::mem::take(&mut self.tmp);
            tmp.resize(buf.len(), 0.0);
            let r = self.recv(from, &mut tmp, op);
            for (b, t) in buf.iter_mut().zip(&tmp) {
                *b += t;
            }
            self.tmp = tmp;
            r
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
            // MPI_Sendrecv: a ring of blocking sends would deadlock on large messages.
            let mut tmp = std::mem::take(&mut self.tmp);
            tmp.resize(buf.len(), 0.0);
            self.watch(op, from);
            let st = mpi::point_to_point::send_receive_into(
                data,
                &self.world.process_at_rank(to as i32),
                &mut tmp[..],
                &self.world.process_at_rank(from as i32),
            );
            self.done();
            let r = self.check(
                st.count(f32::equivalent_datatype()) as usize,
                buf.len(),
                from,
                op,
            );
            if add {
                for (b, t) in buf.iter_mut().zip(&tmp) {
                    *b += t;
                }
            } else {
                buf.copy_from_slice(&tmp);
            }
            self.tmp = tmp;
            r
        }
    }
}
