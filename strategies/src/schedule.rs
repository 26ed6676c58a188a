//! Pipeline schedules as data: per stage, the ordered list of actions one step performs.
//!
//! [`build`] is a pure function of the schedule kind, the stage count `p`, the micro-batch
//! count `m` and the chunks per stage `v`. Both the simulator and the executor interpret these
//! lists; no other copy of a schedule exists.
//!
//! Semantics the interpreters follow: a send never blocks (it is buffered, like MPI `isend`
//! with a completed request later, or a channel); a receive blocks until the matching send has
//! happened. Model chunk `c` of stage `s` is virtual stage `c·p + s`; activations flow from
//! virtual stage `k` to `k + 1`, gradients back.

use serde::Serialize;

use crate::strategy::ScheduleKind;

/// One thing a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Forward pass of micro-batch `mb` through model chunk `chunk`.
    Forward {
        /// Micro-batch.
        mb: u32,
        /// Model chunk on this stage.
        chunk: u32,
    },
    /// Backward pass (with recomputation under remat).
    Backward {
        /// Micro-batch.
        mb: u32,
        /// Model chunk.
        chunk: u32,
    },
    /// Send the output activation of (mb, chunk) to stage `peer`.
    SendActivation {
        /// Micro-batch.
        mb: u32,
        /// Chunk that produced it.
        chunk: u32,
        /// Destination stage.
        peer: u32,
    },
    /// Receive the input activation of (mb, chunk) from stage `peer`.
    RecvActivation {
        /// Micro-batch.
        mb: u32,
        /// Chunk that consumes it.
        chunk: u32,
        /// Source stage.
        peer: u32,
    },
    /// Send the input gradient of (mb, chunk) to stage `peer`.
    SendGradient {
        /// Micro-batch.
        mb: u32,
        /// Chunk that produced it.
        chunk: u32,
        /// Destination stage.
        peer: u32,
    },
    /// Receive the output gradient of (mb, chunk) from stage `peer`.
    RecvGradient {
        /// Micro-batch.
        mb: u32,
        /// Chunk that consumes it.
        chunk: u32,
        /// Source stage.
        peer: u32,
    },
    /// Gradient reduction, clipping and the optimizer update, after the last backward.
    OptimizerStep,
}

/// A whole schedule: `stages[s]` is stage `s`'s action list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// Kind it was built from.
    #[serde(skip)]
    pub kind: ScheduleKind,
    /// Stages.
    pub p: u32,
    /// Micro-batches.
    pub m: u32,
    /// Chunks per stage.
    pub v: u32,
    /// Actions per stage.
    pub stages: Vec<Vec<Action>>,
}

/// Builds the action lists. Requires `p ≥ 1`, `m ≥ 1`, and for interleaving `m % p == 0`
/// (checked by `Plan`; here violated inputs still give a valid, possibly slower, order).
pub fn build(kind: ScheduleKind, p: u32, m: u32) -> Schedule {
    let v = kind.chunks();
    let stages = (0..p)
        .map(|s| {
            let order = match kind {
                ScheduleKind::Gpipe => gpipe_order(m),
                ScheduleKind::OneFOneB => one_f_one_b_order(p, s, m),
                ScheduleKind::Interleaved { chunks } => interleaved_order(p, s, m, chunks),
            };
            with_communication(order, p, s, v)
        })
        .collect();
    Schedule {
        kind,
        p,
        m,
        v,
        stages,
    }
}

/// (is_forward, mb, chunk)
type Compute = (bool, u32, u32);

fn gpipe_order(m: u32) -> Vec<Compute> {
    (0..m)
        .map(|i| (true, i, 0))
        .chain((0..m).map(|i| (false, i, 0)))
        .collect()
}

/// Warm-up of `p - s - 1` forwards, then one-forward-one-backward, then the cool-down.
fn one_f_one_b_order(p: u32, s: u32, m: u32) -> Vec<Compute> {
    let warm = (p - s - 1).min(m);
    let mut out: Vec<Compute> = (0..warm).map(|i| (true, i, 0)).collect();
    for i in 0..m - warm {
        out.push((true, warm + i, 0));
        out.push((false, i, 0));
    }
    out.extend((m - warm..m).map(|i| (false, i, 0)));
    out
}

/// Megatron's interleaved order: virtual micro-batch `k` maps to chunk `(k / p) % v` and
/// micro-batch `(k / (p·v))·p + k % p`; backward walks chunks in reverse. Warm-up is
/// `2·(p - s - 1) + (v - 1)·p` virtual micro-batches (Narayanan et al. 2021, §2.2).
fn interleaved_order(p: u32, s: u32, m: u32, v: u32) -> Vec<Compute> {
    let total = m * v;
    let fwd = |k: u32| -> (u32, u32) {
        let chunk = (k / p) % v;
        let mb = (k / (p * v)) * p + k % p;
        (mb, chunk)
    };
    let bwd = |k: u32| -> (u32, u32) {
        let (mb, chunk) = fwd(k);
        (mb, v - 1 - chunk)
    };
    let warm = (2 * (p - s - 1) + (v - 1) * p).min(total);
    let mut out: Vec<Compute> = (0..warm).map(|k| (true, fwd(k).0, fwd(k).1)).collect();
    for i in 0..total - warm {
        let (mb, c) = fwd(warm + i);
        out.push((true, mb, c));
        let (mb, c) = bwd(i);
        out.push((false, mb, c));
    }
    out.extend((total - warm..total).map(|k| (false, bwd(k).0, bwd(k).1)));
    out
}

/// Adds receives before and sends after each compute action, then the optimizer step.
fn with_communication(order: Vec<Compute>, p: u32, s: u32, v: u32) -> Vec<Action> {
    let last_virtual = p * v - 1;
    let mut out = Vec::with_capacity(order.len() * 3 + 1);
    for (fwd, mb, chunk) in order {
        let vs = chunk * p + s;
        if fwd {
            if vs > 0 {
                out.push(Action::RecvActivation {
                    mb,
                    chunk,
                    peer: (vs - 1) % p,
                });
            }
            out.push(Action::Forward { mb, chunk });
            if vs < last_virtual {
                out.push(Action::SendActivation {
                    mb,
                    chunk,
                    peer: (vs + 1) % p,
                });
            }
        } else {
            if vs < last_virtual {
                out.push(Action::RecvGradient {
                    mb,
                    chunk,
                    peer: (vs + 1) % p,
                });
            }
            out.push(Action::Backward { mb, chunk });
            if vs > 0 {
                out.push(Action::SendGradient {
                    mb,
                    chunk,
                    peer: (vs - 1) % p,
                });
            }
        }
    }
    out.push(Action::OptimizerStep);
    out
}

/// What went wrong when interpreting a schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No stage can make progress.
    #[error("deadlock: stages wait at actions {0:?}")]
    Deadlock(Vec<Option<Action>>),
}

/// The result of running a schedule with given compute times and free communication.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timing {
    /// Time at which the last stage finishes its last backward.
    pub makespan: f64,
    /// Busy time per stage.
    pub busy: Vec<f64>,
    /// Most (micro-batch, chunk) pairs whose forward is done and backward is not, per stage.
    pub peak_in_flight: Vec<u32>,
}

impl Timing {
    /// Fraction of stage-time spent idle: `1 - Σ busy / (p · makespan)`.
    pub fn bubble_fraction(&self) -> f64 {
        let p = self.busy.len() as f64;
        if self.makespan <= 0.0 {
            return 0.0;
        }
        1.0 - self.busy.iter().sum::<f64>() / (p * self.makespan)
    }
}

impl Schedule {
    /// The chunk on the peer stage that a send of `stage` feeds (`None` for other actions):
    /// activations leaving the last stage enter the next chunk of stage 0, gradients leaving
    /// stage 0 the previous chunk of the last stage; everything else stays in its chunk.
    pub fn receiving_chunk(&self, stage: u32, action: &Action) -> Option<u32> {
        match *action {
            Action::SendActivation { chunk, .. } if stage == self.p - 1 => Some(chunk + 1),
            Action::SendGradient { chunk, .. } if stage == 0 => Some(chunk.wrapping_sub(1)),
            Action::SendActivation { chunk, .. } | Action::SendGradient { chunk, .. } => {
                Some(chunk)
            }
            _ => None,
        }
    }

    /// The micro-batch of each chunk's last backward on `stage` (indexed by chunk): after it
    /// the chunk's gradients for the step are final.
    pub fn last_backward(&self, stage: u32) -> Vec<Option<u32>> {
        let mut out = vec![None; self.v as usize];
        for a in &self.stages[stage as usize] {
            if let Action::Backward { mb, chunk } = *a {
                out[chunk as usize] = Some(mb);
            }
        }
        out
    }

    /// The chunks of `stage` in the order their last backward of the step runs.
    pub fn chunks_by_last_backward(&self, stage: u32) -> Vec<usize> {
        let last = self.last_backward(stage);
        let mut order: Vec<(usize, usize)> = Vec::new();
        for (i, a) in self.stages[stage as usize].iter().enumerate() {
            if let Action::Backward { mb, chunk } = *a {
                if last[chunk as usize] == Some(mb) {
                    order.push((i, chunk as usize));
                }
            }
        }
        order.into_iter().map(|(_, c)| c).collect()
    }

    /// The most micro-batches of each chunk that `stage` holds at once (forward done, backward
    /// not yet), indexed by chunk: the activation slots an executor needs.
    pub fn in_flight(&self, stage: u32) -> Vec<usize> {
        let mut now = vec![0usize; self.v as usize];
        let mut peak = vec![0usize; self.v as usize];
        for a in &self.stages[stage as usize] {
            match *a {
                Action::Forward { chunk, .. } => {
                    let c = chunk as usize;
                    now[c] += 1;
                    peak[c] = peak[c].max(now[c]);
                }
                Action::Backward { chunk, .. } => {
                    let c = chunk as usize;
                    now[c] = now[c].saturating_sub(1);
                }
                _ => {}
            }
        }
        peak
    }

    /// Runs the action lists with `fwd(stage, chunk)` and `bwd(stage, chunk)` durations and
    /// instantaneous messages, as a small discrete-event interpreter with blocking receives.
    pub fn time(
        &self,
        fwd: impl Fn(u32, u32) -> f64,
        bwd: impl Fn(u32, u32) -> f64,
    ) -> Result<Timing, ScheduleError> {
        use std::collections::HashMap;
        let p = self.p as usize;
        let mut pc = vec![0usize; p];
        let mut clock = vec![0.0f64; p];
        let mut busy = vec![0.0f64; p];
        let mut in_flight = vec![0u32; p];
        let mut peak = vec![0u32; p];
        // (kind, mb, chunk, dest stage) -> time the message is available
        let mut mailbox: HashMap<(bool, u32, u32, u32), f64> = HashMap::new();
        let mut done = 0;
        while done < p {
            let mut progressed = false;
            done = 0;
            for s in 0..p {
                while let Some(a) = self.stages[s].get(pc[s]).copied() {
                    let st = s as u32;
                    match a {
                        Action::Forward { chunk, .. } => {
                            let d = fwd(st, chunk);
                            clock[s] += d;
                            busy[s] += d;
                            in_flight[s] += 1;
                            peak[s] = peak[s].max(in_flight[s]);
                        }
                        Action::Backward { chunk, .. } => {
                            let d = bwd(st, chunk);
                            clock[s] += d;
                            busy[s] += d;
                            in_flight[s] -= 1;
                        }
                        Action::SendActivation { mb, peer, .. }
                        | Action::SendGradient { mb, peer, .. } => {
                            let fwd = matches!(a, Action::SendActivation { .. });
                            let c = self.receiving_chunk(st, &a).unwrap_or(0);
                            mailbox.insert((fwd, mb, c, peer), clock[s]);
                        }
                        Action::RecvActivation { mb, chunk, .. } => {
                            match mailbox.remove(&(true, mb, chunk, st)) {
                                Some(t) => clock[s] = clock[s].max(t),
                                None => break,
                            }
                        }
                        Action::RecvGradient { mb, chunk, .. } => {
                            match mailbox.remove(&(false, mb, chunk, st)) {
                                Some(t) => clock[s] = clock[s].max(t),
                                None => break,
                            }
                        }
                        Action::OptimizerStep => {}
                    }
                    pc[s] += 1;
                    progressed = true;
                }
                if pc[s] == self.stages[s].len() {
                    done += 1;
                }
            }
            if done < p && !progressed {
                return Err(ScheduleError::Deadlock(
                    (0..p).map(|s| self.stages[s].get(pc[s]).copied()).collect(),
                ));
            }
        }
        let makespan = clock.iter().copied().fold(0.0, f64::max);
        Ok(Timing {
            makespan,
            busy,
            peak_in_flight: peak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn kinds() -> Vec<ScheduleKind> {
        vec![
            ScheduleKind::Gpipe,
            ScheduleKind::OneFOneB,
            ScheduleKind::Interleaved { chunks: 2 },
            ScheduleKind::Interleaved { chunks: 3 },
        ]
    }

    fn cases() -> Vec<(u32, u32)> {
        vec![
            (1, 1),
            (1, 4),
            (2, 2),
            (2, 4),
            (4, 4),
            (4, 8),
            (4, 12),
            (8, 16),
            (16, 32),
            (3, 9),
        ]
    }

    #[test]
    fn every_forward_precedes_its_backward_and_each_runs_once() {
        for k in kinds() {
            for (p, m) in cases() {
                let s = build(k, p, m);
                for (st, acts) in s.stages.iter().enumerate() {
                    let mut fwd = HashSet::new();
                    let mut bwd = HashSet::new();
                    for a in acts {
                        match *a {
                            Action::Forward { mb, chunk } => assert!(fwd.insert((mb, chunk))),
                            Action::Backward { mb, chunk } => {
                                assert!(
                                    fwd.contains(&(mb, chunk)),
                                    "{k} p{p} m{m} stage {st}: B{mb}.{chunk} before F"
                                );
                                assert!(bwd.insert((mb, chunk)));
                            }
                            _ => {}
                        }
                    }
                    assert_eq!(fwd.len() as u32, m * k.chunks());
                    assert_eq!(bwd.len() as u32, m * k.chunks());
                    assert_eq!(acts.last(), Some(&Action::OptimizerStep));
                }
            }
        }
    }

    #[test]
    fn sends_pair_with_receives_and_nothing_deadlocks() {
        for k in kinds() {
            for (p, m) in cases() {
                let s = build(k, p, m);
                let sends = s
                    .stages
                    .iter()
                    .flatten()
                    .filter(|a| {
                        matches!(
                            a,
                            Action::SendActivation { .. } | Action::SendGradient { .. }
                        )
                    })
                    .count();
                let recvs = s
                    .stages
                    .iter()
                    .flatten()
                    .filter(|a| {
                        matches!(
                            a,
                            Action::RecvActivation { .. } | Action::RecvGradient { .. }
                        )
                    })
                    .count();
                assert_eq!(sends, recvs, "{k} p{p} m{m}");
                assert_eq!(sends as u32, 2 * m * (p * k.chunks() - 1));
                s.time(|_, _| 1.0, |_, _| 2.0)
                    .unwrap_or_else(|e| panic!("{k} p{p} m{m}: {e}"));
            }
        }
    }

    #[test]
    fn a_broken_schedule_is_reported_as_deadlock() {
        let mut s = build(ScheduleKind::OneFOneB, 2, 2);
        // Stage 1 waits for a gradient nobody sends.
        s.stages[1].insert(
            0,
            Action::RecvGradient {
                mb: 7,
                chunk: 0,
                peer: 0,
            },
        );
        assert!(matches!(
            s.time(|_, _| 1.0, |_, _| 1.0),
            Err(ScheduleError::Deadlock(_))
        ));
    }

    #[test]
    fn in_flight_micro_batches_are_bounded_as_promised() {
        for (p, m) in cases() {
            let t = build(ScheduleKind::OneFOneB, p, m)
                .time(|_, _| 1.0, |_, _| 2.0)
                .unwrap();
            for s in 0..p {
                assert_eq!(
                    t.peak_in_flight[s as usize],
                    (p - s).min(m),
                    "1f1b p{p} m{m} s{s}"
                );
            }
            let t = build(ScheduleKind::Gpipe, p, m)
                .time(|_, _| 1.0, |_, _| 2.0)
                .unwrap();
            assert!(t.peak_in_flight.iter().all(|&f| f == m));
        }
        // Interleaved: at most warm-up + 1 chunk-micro-batches.
        let (p, m, v) = (4, 8, 2);
        let t = build(ScheduleKind::Interleaved { chunks: v }, p, m)
            .time(|_, _| 1.0, |_, _| 2.0)
            .unwrap();
        for s in 0..p {
            let warm = 2 * (p - s - 1) + (v - 1) * p;
            assert!(t.peak_in_flight[s as usize] <= warm + 1);
        }
    }

    #[test]
    fn one_f_one_b_bubble_is_textbook() {
        // Fewer micro-batches than stages too (the warm-up clamps to m, as Megatron's does).
        for (p, m) in [(2, 4), (4, 8), (8, 32), (16, 32), (4, 2), (8, 3), (16, 1)] {
            let t = build(ScheduleKind::OneFOneB, p, m)
                .time(|_, _| 1.0, |_, _| 2.0)
                .unwrap();
            let want = f64::from(p - 1) / f64::from(m + p - 1);
            assert!(
                (t.bubble_fraction() - want).abs() < 1e-12,
                "p{p} m{m}: {} vs {want}",
                t.bubble_fraction()
            );
        }
    }

    #[test]
    fn interleaving_shrinks_the_bubble() {
        // Narayanan et al. 2021: bubble time shrinks by the chunk count v.
        let (p, m) = (4, 8);
        let one = build(ScheduleKind::OneFOneB, p, m)
            .time(|_, _| 1.0, |_, _| 2.0)
            .unwrap();
        let v = 2;
        let inter = build(ScheduleKind::Interleaved { chunks: v }, p, m)
            .time(|_, _| 1.0 / f64::from(v), |_, _| 2.0 / f64::from(v))
            .unwrap();
        let ideal = f64::from(m) * 3.0;
        let bubble1 = one.makespan - ideal;
        let bubble2 = inter.makespan - ideal;
        assert!(
            (bubble2 - bubble1 / f64::from(v)).abs() < 1e-9,
            "{bubble1} {bubble2}"
        );
    }
}
