//! Matrix multiply through the `gemm` crate (Sarah El Kazdadi's pure-Rust BLIS-style kernels).
//!
//! Chosen by measurement on this project's machine (AMD Zen 4, 2 vCPUs, fp32, release build;
//! the shapes of `pangu-alpha-tiny`, e.g. 1024×256×768 and 1024×256×8000): `gemm` 0.19 ran
//! 87-92 GFLOP/s on one thread and 165-177 on two, `matrixmultiply` 0.3 ran 80-85 and 143-163;
//! PyTorch's MKL sgemm reaches 92.6 and 179 (shared/bench/BASELINES.md). One core's FMA ceiling
//! is about 115 GFLOP/s.
//!
//! All matrices are row-major slices; a transposed operand is read through its strides, so no
//! copy is made. This is the only module with `unsafe` code: it checks every extent against
//! the slice lengths before calling the kernel.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::real::Real;

static THREADS: AtomicUsize = AtomicUsize::new(1);

static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

/// Sets how many threads the kernels use (1 = the calling thread only) and builds the pool
/// they run in.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if n > 1 && pool.as_ref().is_none_or(|p| p.current_num_threads() != n) {
        *pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .ok()
            .map(Arc::new);
    }
}

/// Runs `f` on the kernels' thread pool, so that exactly [`threads`] threads compute (the
/// caller sleeps meanwhile instead of competing with the pool's workers for the cores).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = if threads() > 1 {
        POOL.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    } else {
        None
    };
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Threads large matrix multiplies use.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// A row-major operand: `rows × cols` logical shape stored with row stride `ld`, optionally
/// transposed (then the storage is `cols × rows` with row stride `ld`).
#[derive(Debug, Clone, Copy)]
pub struct Op<'a, T> {
    data: &'a [T],
    ld: usize,
    trans: bool,
}

/// A plain operand whose storage has row stride `ld`.
pub fn n<T>(data: &[T], ld: usize) -> Op<'_, T> {
    Op {
        data,
        ld,
        trans: false,
    }
}

/// The transpose of the stored matrix with row stride `ld`.
pub fn t<T>(data: &[T], ld: usize) -> Op<'_, T> {
    Op {
        data,
        ld,
        trans: true,
    }
}

impl<T> Op<'_, T> {
    /// (row stride, column stride) of the logical matrix.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (1, self.ld as isize)
        } else {
            (self.ld as isize, 1)
        }
    }

    /// Asserts the slice holds a logical `rows × cols` matrix.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let (sr, sc) = self.strides();
        let last = (rows - 1) * sr as usize + (cols - 1) * sc as usize;
        assert!(
            last < self.data.len(),
            "matmul: {what} of {rows}×{cols} (ld {}) needs {} elements, slice has {}",
            self.ld,
            last + 1,
            self.data.len()
        );
        let inner = if self.trans { rows } else { cols };
        assert!(inner <= self.ld, "matmul: {what} ld {} < {inner}", self.ld);
    }
}

/// `C = A·B` (or `C += A·B` with `accumulate`), where A is m×k, B is k×n and C is m×n stored
/// with row stride `ldc`. Uses [`threads`] threads when the product is large enough to gain.
#[allow(clippy::too_many_arguments)]
pub fn matmul<T: Real>(
    c: &mut [T],
    ldc: usize,
    a: Op<'_, T>,
    b: Op<'_, T>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    matmul_with(c, ldc, a, b, m, k, n, accumulate, threads());
}

/// [`matmul`] with an explicit thread count (1 inside already-parallel loops).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with<T: Real>(
    c: &mut [T],
    ldc: usize,
    a: Op<'_, T>,
    b: Op<'_, T>,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= ldc, "matmul: C ld {ldc} < {n}");
    assert!(
        (m - 1) * ldc + n <= c.len(),
        "matmul: C of {m}×{n} (ld {ldc}) exceeds its slice of {}",
        c.len()
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(T::zero());
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    let (ars, acs) = a.strides();
    let (brs, bcs) = b.strides();
    // Several threads: split C's rows into one block per thread, each a single-threaded
    // multiply (the threads never synchronise inside a product). Below ~1 MFLOP, or with too
    // few rows, one thread does it all.
    if threads > 1 && (m * n * k) >= (1 << 20) && m >= 16 * threads {
        use rayon::prelude::*;
        let mut parts = Vec::with_capacity(threads);
        let mut rest = &mut c[..];
        let mut r0 = 0;
        for i in 0..threads {
            let rows = m / threads + usize::from(i < m % threads);
            let take = if i + 1 == threads {
                rest.len()
            } else {
                rows * ldc
            };
            let (head, tail) = rest.split_at_mut(take.min(rest.len()));
            let off = if a.trans { r0 } else { r0 * a.ld };
            parts.push((head, off, rows));
            rest = tail;
            r0 += rows;
        }
        parts.into_par_iter().for_each(|(cp, off, rows)| {
            let sub = Op {
                data: &a.data[off..],
                ld: a.ld,
                trans: a.trans,
            };
            matmul_with(cp, ldc, sub, b, rows, k, n, accumulate, 1);
        });
        return;
    }
    let par = gemm::Parallelism::None;
    // SAFETY: every element the kernel reads or writes was bounds-checked above against the
    // slices, which outlive the call; `c` is borrowed mutably so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            acs,
            ars,
            b.data.as_ptr(),
            bcs,
            brs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn all_transpose_combinations_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        // Stored transposes.
        let mut at = vec![0.0; k * m];
        for i in 0..m {
            for p in 0..k {
                at[p * m + i] = a[i * k + p];
            }
        }
        let mut bt = vec![0.0; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        for (ao, bo) in [
            (super::n(&a, k), super::n(&b, n)),
            (super::t(&at, m), super::n(&b, n)),
            (super::n(&a, k), super::t(&bt, k)),
            (super::t(&at, m), super::t(&bt, k)),
        ] {
            let mut c = vec![1.0; m * n];
            matmul(&mut c, n, ao, bo, m, k, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - y).abs() < 1e-12);
            }
            matmul(&mut c, n, ao, bo, m, k, n, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn row_blocks_on_several_threads_match_one_thread() {
        let (m, k, n) = (67, 129, 130);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1)
            .collect();
        for ao in [super::n(&a, k), super::t(&at, m)] {
            let mut one = vec![0.5f32; m * n];
            let mut two = one.clone();
            matmul_with(&mut one, n, ao, super::n(&b, n), m, k, n, true, 1);
            matmul_with(&mut two, n, ao, super::n(&b, n), m, k, n, true, 3);
            for (x, y) in one.iter().zip(&two) {
                assert!((x - y).abs() < 1e-4, "{x} vs {y}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn short_slices_are_caught_before_the_kernel() {
        let a = vec![0.0f32; 5];
        let b = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 4];
        matmul(&mut c, 2, n(&a, 3), n(&b, 2), 2, 3, 2, false);
    }
}
