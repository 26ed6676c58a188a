//! Sums and gathers over a tensor-parallel group, as the model and its kernels see them: the
//! [`Reduce`] trait an executor implements, [`Alone`] for one device, and the two helpers that
//! pick between the plain and the sequence-parallel form.
//!
//! It sits below `model` and `kernels` (the vocab-parallel cross-entropy sums through it), so
//! neither has to import the other for it.

use pangu_strategies::plan::ChunkPart;

use crate::real::Real;

/// The all-reduce over a tensor-parallel group that op-level model parallelism needs inside
/// a layer (after the row-split projections in forward, after the column-split ones in
/// backward). Errors are kept by the implementation and checked after the pass.
pub trait Reduce<T> {
    /// Sums `buf` over the group, in place.
    fn all_reduce(&mut self, buf: &mut [T]);
    /// Concatenates every member's `local` block into `full` (sequence parallelism).
    fn all_gather(&mut self, local: &[T], full: &mut [T]);
    /// Sums `full` over the group and leaves this member's block of it in `local`.
    fn reduce_scatter(&mut self, full: &mut [T], local: &mut [T]);
    /// Backward has finished one of the plan's chunk parts; `grads` is the chunk's whole
    /// gradient buffer (the executor starts a data-parallel bucket here when the part
    /// completes one, and writes back the sums of buckets that have finished: only finished
    /// parts' ranges are ever written).
    fn part_done(&mut self, _part: ChunkPart, _grads: &mut [T]) {}
    /// Context parallelism's K/V exchange over the context-parallel group, one of the plan's
    /// three programs for it ([`KvPhase`]). `buf` holds the group's blocks side by side
    /// (member `i`'s is [`pangu_strategies::collective::chunk`]`(len, cp, i)`): before a
    /// gather this member's block holds its K | V and after it every block is filled; before
    /// the gradient's reduce-scatter every block holds this member's contributions and after
    /// it this member's block holds the group's sum. Alone (cp 1) there is nothing to do.
    fn kv_exchange(&mut self, _phase: KvPhase, _buf: &mut [T]) {}
}

/// The three programs of context parallelism's K/V exchange
/// ([`pangu_strategies::collective::KvExchange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPhase {
    /// Forward: every member's K/V gathered.
    Forward,
    /// Backward: the K/V gathered again.
    BackwardKv,
    /// Backward: dK/dV summed back to each block's owner.
    BackwardGrad,
}

/// One device: nothing to reduce.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl<T: Copy> Reduce<T> for Alone {
    fn all_reduce(&mut self, _buf: &mut [T]) {}

    fn all_gather(&mut self, local: &[T], full: &mut [T]) {
        full.copy_from_slice(local);
    }

    fn reduce_scatter(&mut self, full: &mut [T], local: &mut [T]) {
        local.copy_from_slice(full);
    }
}

/// `local` gathered to all rows in `full` under sequence parallelism (`seq`), else itself.
pub(crate) fn gathered<'a, T: Real>(
    seq: bool,
    local: &'a [T],
    full: &'a mut [T],
    red: &mut dyn Reduce<T>,
) -> &'a [T] {
    if seq {
        red.all_gather(local, full);
        full
    } else {
        local
    }
}

/// The group's sum of `partial`: this device's rows of it (in `local`) under sequence
/// parallelism, else all of it (in place).
pub(crate) fn summed<'a, T: Real>(
    seq: bool,
    partial: &'a mut [T],
    local: &'a mut [T],
    red: &mut dyn Reduce<T>,
) -> &'a [T] {
    if seq {
        red.reduce_scatter(partial, local);
        local
    } else {
        red.all_reduce(partial);
        partial
    }
}
