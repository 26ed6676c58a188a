//! Cores shared by the virtual devices of one host (processor sharing).
//!
//! When a server's chips are virtual devices on one CPU machine (the twin's calibrated
//! profile: N executor ranks on fewer cores), compute on one device is not independent of the
//! others: Linux's completely fair scheduler time-slices the runnable threads, so `k` busy
//! devices on `C` cores' worth of throughput each progress at `min(1, C / k)` of a core, and a
//! device that waits (a pipeline bubble, a blocking receive) hands its share to the others.
//! This is the egalitarian processor-sharing queue (Kleinrock, *Queueing Systems* vol. 2,
//! §4.4): every active task's remaining work falls at the common rate, which changes only when
//! a task starts or ends, so one pending completion event per pool suffices.

use crate::engine::Time;

/// One host's cores and the compute tasks running on them.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    cores: f64,
    /// (task, remaining work in ns at one full core).
    active: Vec<(u32, f64)>,
    /// When `active`'s remaining work was last brought up to date.
    last: Time,
    /// Bumped at every reschedule; a completion event with an older version is stale.
    pub(crate) version: u32,
}

impl Pool {
    pub(crate) fn new(cores: f64) -> Self {
        Pool {
            cores,
            active: Vec::new(),
            last: 0,
            version: 0,
        }
    }

    /// Each active task's share of a core.
    fn rate(&self) -> f64 {
        (self.cores / self.active.len().max(1) as f64).min(1.0)
    }

    /// Progress every active task to `now`.
    fn advance(&mut self, now: Time) {
        let done = (now - self.last) as f64 * self.rate();
        for a in &mut self.active {
            a.1 -= done;
        }
        self.last = now;
    }

    /// Starts `task` of `ns` nanoseconds at one full core; returns the pool's next completion.
    pub(crate) fn start(&mut self, now: Time, task: u32, ns: Time) -> (Time, u32) {
        self.advance(now);
        self.active.push((task, ns as f64));
        self.next(now)
    }

    /// The time of the next completion and the version that event must carry.
    fn next(&mut self, now: Time) -> (Time, u32) {
        self.version = self.version.wrapping_add(1);
        let least = self
            .active
            .iter()
            .map(|a| a.1)
            .fold(f64::INFINITY, f64::min)
            .max(0.0);
        (now + (least / self.rate()).ceil() as Time, self.version)
    }

    /// At a completion event: the tasks that finished (into `out`), and the next completion
    /// if any task is still running.
    pub(crate) fn complete(&mut self, now: Time, out: &mut Vec<u32>) -> Option<(Time, u32)> {
        self.advance(now);
        // Rounding the event up to whole nanoseconds leaves at most one ns of work.
        let eps = self.rate().max(1e-9) + 1e-6;
        self.active.retain(|&(t, left)| {
            let finished = left <= eps;
            if finished {
                out.push(t);
            }
            !finished
        });
        (!self.active.is_empty()).then(|| self.next(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cores_three_tasks_share_equally() {
        // Three 100 ns tasks on 2 cores: each runs at 2/3 until all end at 150 ns.
        let mut p = Pool::new(2.0);
        p.start(0, 0, 100);
        p.start(0, 1, 100);
        let (at, v) = p.start(0, 2, 100);
        assert_eq!((at, v), (150, 3));
        let mut out = Vec::new();
        assert!(p.complete(at, &mut out).is_none());
        out.sort_unstable();
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn a_finished_task_frees_its_share() {
        // 2 cores, tasks of 60 and 120 ns plus one of 120 started at 0: rate 2/3 until the
        // short one ends at 90 ns (60 done each), then the two left run at full speed for 60.
        let mut p = Pool::new(2.0);
        p.start(0, 0, 60);
        p.start(0, 1, 120);
        let (at, _) = p.start(0, 2, 120);
        assert_eq!(at, 90);
        let mut out = Vec::new();
        let (next, _) = p.complete(at, &mut out).expect("two still run");
        assert_eq!(out, vec![0]);
        assert_eq!(next, 150);
        out.clear();
        assert!(p.complete(next, &mut out).is_none());
        assert_eq!(out, vec![1, 2]);
    }

    #[test]
    fn fewer_tasks_than_cores_run_at_full_speed() {
        let mut p = Pool::new(4.0);
        let (at, _) = p.start(10, 7, 250);
        assert_eq!(at, 260);
    }
}
