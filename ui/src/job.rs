//! Background work: a [`Job`] runs a closure on its own thread and hands back its result
//! through a channel that the frame polls, so the UI thread never waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

/// How far a job has got: (done, total), written by the job's thread, read by the frame.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicUsize,
    total: AtomicUsize,
}

impl Progress {
    /// Records `done` of `total`.
    pub fn set(&self, done: usize, total: usize) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// (done, total); (0, 0) until the job reports.
    pub fn get(&self) -> (usize, usize) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// A result computed on a background thread.
pub struct Job<T> {
    rx: Receiver<Result<T, String>>,
    progress: Arc<Progress>,
    /// When it started.
    pub started: Instant,
}

impl<T: Send + 'static> Job<T> {
    /// Runs `f` on a new thread; `f` may report its progress.
    pub fn spawn(f: impl FnOnce(&Progress) -> Result<T, String> + Send + 'static) -> Job<T> {
        let (tx, rx) = channel();
        let progress = Arc::new(Progress::default());
        let report = Arc::clone(&progress);
        std::thread::spawn(move || {
            let _ = tx.send(f(&report));
        });
        Job {
            rx,
            progress,
            started: Instant::now(),
        }
    }

    /// The result, once it is there.
    pub fn poll(&self) -> Option<Result<T, String>> {
        self.rx.try_recv().ok()
    }

    /// (done, total) as the job last reported it.
    pub fn progress(&self) -> (usize, usize) {
        self.progress.get()
    }
}
