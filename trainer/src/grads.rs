//! Where a backward pass accumulates its parameter gradients.
//!
//! Usually that is one buffer the pass owns ([`Grads::whole`]). On two threads the
//! single-device trainer instead splits each micro-batch into two halves and runs their
//! forward and backward passes at the same time, one half per thread ([`crate::model::Model::
//! step_halves`]): each thread then runs whole single-threaded products and the two never
//! wait for each other inside a layer, which gained about 8 % of the step time over sharing
//! every product (README, performance). Both halves add into the *same* gradient buffer,
//! so the split costs no memory: the buffer is cut into one slot per parameter tensor
//! ([`Slots`]) and each slot is taken by half 0 first, then by half 1 ([`Grads::shared`]).
//! Every gradient element therefore receives half 0's contribution, then half 1's, on one
//! thread or two, and training gives the same bits on any thread count (tested).
//!
//! Half 1 runs each linear layer's input-gradient product *before* taking the slot and half 0
//! after releasing it ([`Grads::input_first`]), so that half 1 rarely finds a slot still held.

use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One parameter tensor's gradient, and whose turn it is to add into it.
struct Slot<'g, T> {
    start: usize,
    data: Mutex<&'g mut [T]>,
    /// 0: half 0 may take it; 1: half 1 may; 2: both are done.
    turn: AtomicUsize,
}

/// A gradient buffer cut into one slot per parameter tensor, shared by two halves of a batch.
pub struct Slots<'g, T> {
    slots: Vec<Slot<'g, T>>,
    abandoned: AtomicBool,
}

impl<'g, T> Slots<'g, T> {
    /// Cuts `g` at the tensors' `ranges` (in buffer order, disjoint).
    pub fn new(g: &'g mut [T], ranges: impl IntoIterator<Item = Range<usize>>) -> Self {
        let mut slots = Vec::new();
        let mut rest = g;
        let mut at = 0;
        for r in ranges {
            assert!(r.start >= at, "gradient slots: tensor ranges out of order");
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut(r.start - at);
            let (mine, tail) = tail.split_at_mut(r.len());
            slots.push(Slot {
                start: r.start,
                data: Mutex::new(mine),
                turn: AtomicUsize::new(0),
            });
            rest = tail;
            at = r.end;
        }
        Slots {
            slots,
            abandoned: AtomicBool::new(false),
        }
    }

    fn slot(&self, r: &Range<usize>) -> &Slot<'g, T> {
        let i = self
            .slots
            .binary_search_by_key(&r.start, |s| s.start)
            .unwrap_or_else(|_| panic!("gradient slots: no tensor starts at {}", r.start));
        &self.slots[i]
    }

    /// Marks the step as failed (a half panicked) so that the other half stops waiting.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    fn wait(&self, slot: &Slot<'g, T>, who: usize) {
        let mut spins = 0u32;
        loop {
            let turn = slot.turn.load(Ordering::Acquire);
            if turn == who {
                return;
            }
            assert!(
                turn < who,
                "gradient slots: half {who} took the tensor at {} twice in one pass",
                slot.start
            );
            assert!(
                !self.abandoned.load(Ordering::Acquire),
                "the other half of the batch failed"
            );
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Panics of one half release the other: dropped while unwinding, it abandons the step.
pub struct AbandonOnPanic<'a, 'g, T>(pub &'a Slots<'g, T>);

impl<T> Drop for AbandonOnPanic<'_, '_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

enum Inner<'a, 'g, T> {
    Whole(&'a mut [T]),
    Shared { slots: &'a Slots<'g, T>, who: usize },
}

/// The gradient buffer as a backward pass sees it: the whole of it, or one half's turns on
/// shared [`Slots`].
pub struct Grads<'a, 'g, T> {
    inner: Inner<'a, 'g, T>,
}

/// One tensor's gradient while it is taken (released when dropped).
pub struct Taken<'a, 'g, T> {
    inner: TakenInner<'a, 'g, T>,
}

enum TakenInner<'a, 'g, T> {
    Plain(&'a mut [T]),
    Locked {
        guard: MutexGuard<'a, &'g mut [T]>,
        turn: &'a AtomicUsize,
        who: usize,
    },
}

impl<T> Deref for Taken<'_, '_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.inner {
            TakenInner::Plain(s) => s,
            TakenInner::Locked { guard, .. } => guard,
        }
    }
}

impl<T> DerefMut for Taken<'_, '_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.inner {
            TakenInner::Plain(s) => s,
            TakenInner::Locked { guard, .. } => guard,
        }
    }
}

impl<T> Drop for Taken<'_, '_, T> {
    fn drop(&mut self) {
        if let TakenInner::Locked { turn, who, .. } = &self.inner {
            turn.store(who + 1, Ordering::Release);
        }
    }
}

impl<'a, 'g, T> Grads<'a, 'g, T> {
    /// The whole buffer, owned by one pass.
    pub fn whole(g: &'a mut [T]) -> Self {
        Grads {
            inner: Inner::Whole(g),
        }
    }

    /// Half `who` (0 or 1) of a split batch on shared slots.
    pub fn shared(slots: &'a Slots<'g, T>, who: usize) -> Self {
        assert!(who < 2, "a batch splits into halves 0 and 1");
        Grads {
            inner: Inner::Shared { slots, who },
        }
    }

    /// Whether this pass is one half of a split batch (the embedding's gradient is then
    /// added after both halves, [`crate::model::Model::step_halves`]).
    pub fn is_half(&self) -> bool {
        matches!(self.inner, Inner::Shared { .. })
    }

    /// Whether to run a layer's input-gradient product before its weight-gradient one (half 1).
    pub fn input_first(&self) -> bool {
        matches!(self.inner, Inner::Shared { who: 1, .. })
    }

    /// The whole buffer, writable (a data-parallel reduction writes finished buckets' sums
    /// back into it while backward goes on); `None` for a half.
    pub fn whole_mut(&mut self) -> Option<&mut [T]> {
        match &mut self.inner {
            Inner::Whole(g) => Some(g),
            Inner::Shared { .. } => None,
        }
    }

    /// The gradient of the tensor at `r` (waiting for this half's turn).
    pub fn take(&mut self, r: &Range<usize>) -> Taken<'_, 'g, T> {
        match &mut self.inner {
            Inner::Whole(g) => Taken {
                inner: TakenInner::Plain(&mut g[r.clone()]),
            },
            Inner::Shared { slots, who } => take_slot(slots, *who, r),
        }
    }

    /// The gradient of the tensor at `a`, and of the one at `b` if any (after `a`).
    pub fn take_maybe2(
        &mut self,
        a: &Range<usize>,
        b: Option<&Range<usize>>,
    ) -> (Taken<'_, 'g, T>, Option<Taken<'_, 'g, T>>) {
        match b {
            Some(b) => {
                let (x, y) = self.take2(a, b);
                (x, Some(y))
            }
            None => (self.take(a), None),
        }
    }

    /// The gradients of two tensors, `a` before `b` in the buffer.
    pub fn take2(
        &mut self,
        a: &Range<usize>,
        b: &Range<usize>,
    ) -> (Taken<'_, 'g, T>, Taken<'_, 'g, T>) {
        match &mut self.inner {
            Inner::Whole(g) => {
                assert!(a.end <= b.start, "take2: {a:?} must precede {b:?}");
                let (lo, hi) = g.split_at_mut(b.start);
                (
                    Taken {
                        inner: TakenInner::Plain(&mut lo[a.clone()]),
                    },
                    Taken {
                        inner: TakenInner::Plain(&mut hi[..b.len()]),
                    },
                )
            }
            Inner::Shared { slots, who } => (take_slot(slots, *who, a), take_slot(slots, *who, b)),
        }
    }
}

fn take_slot<'a, 'g, T>(slots: &'a Slots<'g, T>, who: usize, r: &Range<usize>) -> Taken<'a, 'g, T> {
    let slot = slots.slot(r);
    slots.wait(slot, who);
    let guard = slot.data.lock().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(
        guard.len(),
        r.len(),
        "gradient slots: tensor at {} has another length",
        r.start
    );
    Taken {
        inner: TakenInner::Locked {
            guard,
            turn: &slot.turn,
            who,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_add_in_order_on_one_thread_or_two() {
        let ranges = [0..3, 3..5, 7..10];
        let body = |g: &mut Grads<'_, '_, f64>, who: usize| {
            for r in &ranges {
                let mut t = g.take(r);
                for x in t.iter_mut() {
                    // Not commutative: the result depends on the order of the halves.
                    *x = *x * 2.0 + who as f64 + 1.0;
                }
            }
        };
        let mut one = vec![0.0; 10];
        {
            let slots = Slots::new(&mut one, ranges.iter().cloned());
            body(&mut Grads::shared(&slots, 0), 0);
            body(&mut Grads::shared(&slots, 1), 1);
        }
        let mut two = vec![0.0; 10];
        {
            let slots = Slots::new(&mut two, ranges.iter().cloned());
            std::thread::scope(|s| {
                // Half 1 starts first and must wait for half 0 at every slot.
                let h = s.spawn(|| body(&mut Grads::shared(&slots, 1), 1));
                std::thread::sleep(std::time::Duration::from_millis(20));
                body(&mut Grads::shared(&slots, 0), 0);
                h.join().unwrap();
            });
        }
        assert_eq!(one, two);
        assert_eq!(one[0], (0.0 * 2.0 + 1.0) * 2.0 + 2.0);
        assert_eq!(one[5], 0.0, "outside every tensor");
    }

    #[test]
    fn a_failed_half_releases_the_other() {
        let mut g = vec![0.0f32; 4];
        let slots = Slots::new(&mut g, std::iter::once(0..4));
        let r = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut gh = Grads::shared(&slots, 1);
                let _t = gh.take(&(0..4));
            });
            let zero = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _guard = AbandonOnPanic(&slots);
                panic!("half 0 fails");
            }));
            assert!(zero.is_err());
            h.join()
        });
        assert!(r.is_err(), "half 1 must give up instead of waiting forever");
    }
}
