//! The MPI backend: one process per rank, started by `mpirun`, over Open MPI (the `mpi`
//! crate). MPI calls have no timeout of their own, so a watchdog thread ends the process with
//! an error when a call waits longer than the timeout; `mpirun` then stops every other rank.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpi::datatype::Equivalence;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::traits::{Destination, Source};

use super::{CommError, Communicator};

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
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), op, peer));
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

    fn recv(&mut self, from: usize, buf: &mut [f32], op: &'static str) -> Result<(), CommError> {
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
