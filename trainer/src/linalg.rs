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
//! the slice lengths before calling the kernel, and [`vectorized`] enters AVX2 code only on a CPU
//! that has it.
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

thread_local! {
    static LOCAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Threads large matrix multiplies use (the calling thread's own count inside
/// [`with_threads`], else the process-wide one).
pub fn threads() -> usize {
    match LOCAL.with(std::cell::Cell::get) {
        0 => THREADS.load(Ordering::Relaxed),
        n => n,
    }
}

/// Runs `f` with the kernels on this thread using `n` threads (1: this thread alone).
pub fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    let old = LOCAL.with(|c| c.replace(n.max(1)));
    let r = f();
    LOCAL.with(|c| c.set(old));
    r
}

/// Runs `f` compiled for AVX2 and FMA when this CPU has them, else as it is.
///
/// The release build targets baseline x86-64 (SSE2), so that it runs on any x86-64 machine;
/// the element-wise kernels (GeLU, softmax, LayerNorm, AdamW) then vectorise 4 floats wide.
/// Wrapping a kernel's inner loop in `vectorized` compiles a second copy of it for 8-wide
/// AVX2, chosen at run time (the check is cached by the standard library). The numbers do
/// not change: Rust never contracts `a·b + c` into an FMA on its own and the reductions keep
/// their explicit order, so each element is computed with the same operations either way
/// (`vectorized_matches_plain` tests it). Measured on `pangu-alpha-tiny`'s step: the whole
/// crate built for `x86-64-v3` ran about 4 % faster than the baseline build on one thread.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU was just checked to support every feature `avx2_fma` enables.
            return unsafe { avx2_fma(f) };
        }
    }
    f()
}

/// `f` inlined into a function compiled with AVX2 and FMA enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    f()
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
        let whole = Product {
            c,
            ldc,
            a,
            b,
            m,
            k,
            n,
            accumulate,
        };
        whole
            .row_blocks(threads)
            .into_par_iter()
            .for_each(|p| p.run_on(1));
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

/// One product for [`matmul_pair`]: `C = A·B` (or `C += A·B`), A m×k, B k×n, C row stride `ldc`.
pub struct Product<'a, 'c, T> {
    /// Output.
    pub c: &'c mut [T],
    /// Row stride of `c`.
    pub ldc: usize,
    /// Left operand.
    pub a: Op<'a, T>,
    /// Right operand.
    pub b: Op<'a, T>,
    /// Rows of C.
    pub m: usize,
    /// Inner size.
    pub k: usize,
    /// Columns of C.
    pub n: usize,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

impl<T: Real> Product<'_, '_, T> {
    /// Computes the product on [`threads`] threads.
    pub fn run(self) {
        let th = threads();
        self.run_on(th);
    }

    fn run_on(self, threads: usize) {
        matmul_with(
            self.c,
            self.ldc,
            self.a,
            self.b,
            self.m,
            self.k,
            self.n,
            self.accumulate,
            threads,
        );
    }

    fn flops(&self) -> usize {
        self.m * self.k * self.n
    }

    /// The product cut into `parts` blocks of consecutive rows of C (sizes differing by at
    /// most one row), each an independent product.
    fn row_blocks(self, parts: usize) -> Vec<Self> {
        let Product {
            c,
            ldc,
            a,
            b,
            m,
            k,
            n,
            accumulate,
        } = self;
        let parts = parts.clamp(1, m.max(1));
        let mut out = Vec::with_capacity(parts);
        let mut rest = c;
        let mut r0 = 0;
        for i in 0..parts {
            let rows = m / parts + usize::from(i < m % parts);
            let take = if i + 1 == parts {
                rest.len()
            } else {
                rows * ldc
            };
            let (head, tail) = rest.split_at_mut(take.min(rest.len()));
            let off = if a.trans { r0 } else { r0 * a.ld };
            out.push(Product {
                c: head,
                ldc,
                a: Op {
                    data: &a.data[off.min(a.data.len())..],
                    ld: a.ld,
                    trans: a.trans,
                },
                b,
                m: rows,
                k,
                n,
                accumulate,
            });
            rest = tail;
            r0 += rows;
        }
        out
    }
}

/// Two independent products (a backward pass's input and weight gradients). With two or more
/// threads they run at the same time, each on half the threads, instead of one after the
/// other with each split across all of them: the two products of a linear layer's backward
/// have the same FLOP count, so the threads finish together without dividing any product.
/// This matters here because a split product waits for its slowest part at every call, and
/// on a shared machine one thread is often late (measured in the README's benchmark
/// section). Unequal products (ratio over 2) fall back to one after the other.
pub fn matmul_pair<T: Real>(first: Product<'_, '_, T>, second: Product<'_, '_, T>) {
    let th = threads();
    let (f1, f2) = (first.flops(), second.flops());
    let balanced = f1.min(f2) * 2 >= f1.max(f2) && f1.min(f2) >= 1 << 20;
    if th < 2 || !balanced {
        first.run_on(th);
        second.run_on(th);
        return;
    }
    // (Cutting both products into row blocks handed out dynamically was slower here: 2 and
    // 4 blocks each, medians +4 % and +13 % on the small shape's step.)
    let h1 = th / 2;
    let h2 = th - h1;
    rayon::join(|| first.run_on(h1), || second.run_on(h2));
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
    fn a_pair_of_products_on_two_threads_matches_them_one_after_the_other() {
        // A linear layer's backward: dW += xᵀ·dy and dx = dy·Wᵀ, large enough to run at once.
        let (rows, k, n) = (96, 80, 144);
        let val = |i: usize, p: usize| ((i * p % 17) as f32 - 8.0) * 0.05;
        let x: Vec<f32> = (0..rows * k).map(|i| val(i, 7)).collect();
        let dy: Vec<f32> = (0..rows * n).map(|i| val(i, 5)).collect();
        let w: Vec<f32> = (0..k * n).map(|i| val(i, 3)).collect();
        let run = |threads: usize| {
            let mut dw = vec![0.25f32; k * n];
            let mut dx = vec![9.0f32; rows * k];
            with_threads(threads, || {
                matmul_pair(
                    Product {
                        c: &mut dw,
                        ldc: n,
                        a: super::t(&x, k),
                        b: super::n(&dy, n),
                        m: k,
                        k: rows,
                        n,
                        accumulate: true,
                    },
                    Product {
                        c: &mut dx,
                        ldc: k,
                        a: super::n(&dy, n),
                        b: super::t(&w, n),
                        m: rows,
                        k: n,
                        n: k,
                        accumulate: false,
                    },
                );
            });
            (dw, dx)
        };
        let (dw1, dx1) = run(1);
        let (dw2, dx2) = run(2);
        // Each product is computed whole on one thread either way: the same numbers.
        assert_eq!(dw1, dw2);
        assert_eq!(dx1, dx2);
        let (x64, dy64): (Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| f64::from(v)).collect(),
            dy.iter().map(|&v| f64::from(v)).collect(),
        );
        let xt: Vec<f64> = (0..k * rows)
            .map(|i| x64[(i % rows) * k + i / rows])
            .collect();
        let want = naive(&xt, &dy64, k, rows, n);
        for (got, want) in dw2.iter().zip(&want) {
            assert!(
                (f64::from(*got) - 0.25 - want).abs() < 1e-3,
                "{got} vs {want}"
            );
        }
    }

    /// The element-wise body of GeLU and softmax: exp (with its fused multiply-adds), the
    /// logistic function, division, square root.
    #[inline(always)]
    fn elementwise(out: &mut [f32], x: &[f32]) {
        use crate::real::Real;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v * 0.5).exp_fast() / (1.0 + v * v).sqrt() + (v * 0.79).sigmoid_fast() * v;
        }
    }

    #[test]
    fn vectorized_matches_plain() {
        let x: Vec<f32> = (0..4099).map(|i| (i as f32 - 2000.0) * 0.0137).collect();
        let mut plain = vec![0.0f32; x.len()];
        let mut wide = plain.clone();
        elementwise(&mut plain, &x);
        vectorized(
            #[inline(always)]
            || elementwise(&mut wide, &x),
        );
        let same = plain
            .iter()
            .zip(&wide)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "AVX2 and baseline builds of one loop disagree");
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
