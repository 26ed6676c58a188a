//! The element type of the kernels: `f32` for training, `f64` for the finite-difference tests
//! that check every backward pass (the same generic code runs in both).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use num_traits::Float;

/// A floating-point element type the kernels and the GEMM backend support.
pub trait Real:
    Float
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Converts from `f64` (rounding to nearest).
    fn of(x: f64) -> Self;
    /// Widens to `f64`.
    fn f64(self) -> f64;
    /// `e^x`, for f32 through a branch-free polynomial the compiler vectorises.
    fn exp_fast(self) -> Self {
        self.exp()
    }
    /// The logistic function `1 / (1 + e^-x)`, for f32 from [`Real::exp_fast`].
    fn sigmoid_fast(self) -> Self {
        Self::one() / (Self::one() + (-self).exp())
    }
}

impl Real for f32 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn sigmoid_fast(self) -> f32 {
        // e^-x is clamped to [e^-88, e^87]: 1 + e^-x stays finite.
        1.0 / (1.0 + exp_f32(-self))
    }
}

/// `e^x` in f32 without branches or libm calls (so loops over it vectorise): x = k·ln2 + r
/// with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7 there),
/// 2^k put into the exponent bits. The rounding uses the 1.5·2^23 trick (Cody & Waite style
/// range reduction; the same scheme as Cephes' `expf`).
///
/// Every `a·b + c` is an explicit fused multiply-add (`mul_add`): one rounding instead of two,
/// and half the latency of the polynomial's dependency chain, which is what bounds the
/// element-wise kernels (GeLU, softmax) on one core. Inside [`crate::linalg::vectorized`] it
/// is the FMA instruction; elsewhere the C library's `fmaf`, which rounds identically, so the
/// result does not depend on where it is called.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(LOG2E, MAGIC);
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, x));
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    f32::from_bits(((ki + 127) as u32) << 23) * p
}

impl Real for f64 {
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_sigmoid_are_accurate_in_f32() {
        let mut worst_exp = 0f64;
        let mut worst_sig = 0f64;
        for i in -80_000..80_000 {
            let x = i as f32 * 1e-3;
            let e = f64::from(exp_f32(x));
            worst_exp = worst_exp.max((e / f64::from(x).exp() - 1.0).abs());
            let s = f64::from(x.sigmoid_fast());
            worst_sig = worst_sig.max((s - 1.0 / (1.0 + (-f64::from(x)).exp())).abs());
        }
        assert!(worst_sig < 5e-7, "sigmoid absolute error {worst_sig}");
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(exp_f32(-200.0) < 1e-37);
        assert!(exp_f32(200.0).is_finite());
        assert_eq!(200f32.sigmoid_fast(), 1.0);
        assert!((0.0..1e-37).contains(&(-200f32).sigmoid_fast()));
    }
}
