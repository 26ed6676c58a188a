//! The thread backend: one OS thread per rank in one process, messages through channels. A
//! receiver hands each message's vector back to its sender once it has copied it out, and the
//! sender refills it: in steady state a step allocates no message memory (fresh allocations of
//! megabytes cost this machine page faults at every step).

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{CommError, Communicator};

/// One rank's end of a group of threads.
#[derive(Debug)]
pub struct ThreadComm {
    rank: usize,
    to: Vec<Sender<Vec<f32>>>,
    from: Vec<Receiver<Vec<f32>>>,
    /// Spent message vectors back to each peer, and from each peer.
    spent_to: Vec<Sender<Vec<f32>>>,
    spent_from: Vec<Receiver<Vec<f32>>>,
    timeout: Duration,
}

/// `n × n` channels: `.0[src][dst]` sends to `.1[dst][src]`.
type Mesh = (Vec<Vec<Sender<Vec<f32>>>>, Vec<Vec<Receiver<Vec<f32>>>>);

fn mesh(n: usize) -> Mesh {
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
    (flat(senders), flat(receivers))
}

/// A filled square of options without them.
fn flat<T>(v: Vec<Vec<Option<T>>>) -> Vec<Vec<T>> {
    v.into_iter()
        .map(|r| r.into_iter().flatten().collect())
        .collect()
}

/// Communicators for a group of `n` threads (hand one to each thread).
pub fn group(n: usize, timeout: Duration) -> Vec<ThreadComm> {
    let (to, from) = mesh(n);
    let (spent_to, spent_from) = mesh(n);
    to.into_iter()
        .zip(from)
        .zip(spent_to.into_iter().zip(spent_from))
        .enumerate()
        .map(|(rank, ((to, from), (spent_to, spent_from)))| ThreadComm {
            rank,
            to,
            from,
            spent_to,
            spent_from,
            timeout,
        })
        .collect()
}

impl ThreadComm {
    /// Hands a copied-out message's vector back to its sender (a sender gone just drops it).
    fn spend(&self, from: usize, msg: Vec<f32>) {
        let _ = self.spent_to[from].send(msg);
    }

    fn take(&mut self, from: usize, want: usize, op: &'static str) -> Result<Vec<f32>, CommError> {
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
        let mut v = self.spent_from[to].try_recv().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        self.to[to].send(v).map_err(|_| CommError::PeerGone {
            rank: self.rank,
            op,
            peer: to,
        })
    }

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
        let msg = self.take(from, buf.len(), op)?;
        buf.copy_from_slice(&msg);
        self.spend(from, msg);
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
        self.spend(from, msg);
        Ok(())
    }
}
