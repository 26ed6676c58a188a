//! The thread backend: one OS thread per rank in one process, messages through channels.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{CommError, Communicator};

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
        self.to[to]
            .send(data.to_vec())
            .map_err(|_| CommError::PeerGone {
                rank: self.rank,
                op,
                peer: to,
            })
    }

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
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
