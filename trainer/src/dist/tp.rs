//! The sums over the tensor-parallel group inside the layers, as the model calls them, the
//! K/V exchange over the context-parallel group (the plan's [`KvExchange`] programs), and the
//! hook through which backward hands finished parts to the data-parallel bucket reduction.
//!
//! [`KvExchange`]: pangu_strategies::collective::KvExchange

use std::time::Instant;

use pangu_strategies::plan::ChunkPart;

use super::buckets::BucketReducer;
use super::groups::{CpMembers, Members};
use super::report::RankReport;
use crate::comm::{chunk, CommError, Communicator, Group};
use crate::model::{KvPhase, Reduce};
use crate::TrainError;

/// The first error is kept and every later call returns at once; [`TpReduce::charge`]
/// reports it after the pass.
pub(super) struct TpReduce<'a> {
    world: &'a mut dyn Communicator,
    tp: &'a Members,
    cp: &'a CpMembers,
    error: Option<TrainError>,
    tp_secs: f64,
    cp_secs: f64,
    dp_secs: f64,
    /// During a chunk's last backward: the bucket reduction and the chunk's index.
    buckets: Option<(&'a mut BucketReducer, usize)>,
}

impl<'a> TpReduce<'a> {
    pub(super) fn new(
        world: &'a mut dyn Communicator,
        (tp, cp): (&'a Members, &'a CpMembers),
        buckets: Option<(&'a mut BucketReducer, usize)>,
    ) -> TpReduce<'a> {
        TpReduce {
            world,
            tp,
            cp,
            error: None,
            tp_secs: 0.0,
            cp_secs: 0.0,
            dp_secs: 0.0,
            buckets,
        }
    }

    /// Charges a pass that started at `t`: its group sums to tp_comm, the K/V exchange to
    /// cp_comm, buckets reduced in line to dp_comm, the rest to compute.
    pub(super) fn charge(self, t: Instant, rep: &mut RankReport) -> Result<(), TrainError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        rep.tp_comm_s += self.tp_secs;
        rep.cp_comm_s += self.cp_secs;
        rep.dp_comm_s += self.dp_secs;
        rep.compute_s += t.elapsed().as_secs_f64() - self.tp_secs - self.cp_secs - self.dp_secs;
        Ok(())
    }

    /// Runs `f` on the group unless an earlier call failed, timing it and keeping its error.
    fn run(&mut self, f: impl FnOnce(&mut Group<'_>, &Members) -> Result<(), CommError>) {
        if self.error.is_some() || self.tp.ranks.len() < 2 {
            return;
        }
        let t = Instant::now();
        let r = Group::new(&mut *self.world, &self.tp.ranks).and_then(|mut g| f(&mut g, self.tp));
        if let Err(e) = r {
            self.error = Some(e.into());
        }
        self.tp_secs += t.elapsed().as_secs_f64();
    }
}

impl Reduce<f32> for TpReduce<'_> {
    fn all_reduce(&mut self, buf: &mut [f32]) {
        self.run(|g, m| g.all_reduce(buf, &m.programs));
    }

    fn all_gather(&mut self, local: &[f32], full: &mut [f32]) {
        if self.tp.ranks.len() < 2 {
            full.copy_from_slice(local);
            return;
        }
        self.run(|g, m| {
            let mine = chunk(full.len(), g.size(), g.rank());
            full[mine].copy_from_slice(local);
            g.all_gather(full, &m.programs)
        });
    }

    fn reduce_scatter(&mut self, full: &mut [f32], local: &mut [f32]) {
        if self.tp.ranks.len() < 2 {
            local.copy_from_slice(full);
            return;
        }
        self.run(|g, m| {
            let mine = g.reduce_scatter(full, &m.programs)?;
            local.copy_from_slice(&full[mine]);
            Ok(())
        });
    }

    fn kv_exchange(&mut self, phase: KvPhase, buf: &mut [f32]) {
        if self.error.is_some() || self.cp.ranks.len() < 2 {
            return;
        }
        let x = &self.cp.exchange;
        let program = match phase {
            KvPhase::Forward => &x.forward,
            KvPhase::BackwardKv => &x.backward_kv,
            KvPhase::BackwardGrad => &x.backward_grad,
        };
        let t = Instant::now();
        let r = Group::new(&mut *self.world, &self.cp.ranks).and_then(|mut g| g.run(program, buf));
        if let Err(e) = r {
            self.error = Some(e.into());
        }
        self.cp_secs += t.elapsed().as_secs_f64();
    }

    fn part_done(&mut self, part: ChunkPart, grads: &mut [f32]) {
        if self.error.is_some() {
            return;
        }
        if let Some((b, ci)) = &mut self.buckets {
            let t = Instant::now();
            let r = b.part_done(*ci, part, grads, &mut *self.world);
            self.dp_secs += t.elapsed().as_secs_f64();
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
    }
}
