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
    /// `tanh(x)`, for f32 from [`Real::exp_fast`].
    fn tanh_fast(self) -> Self {
        self.tanh()
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
    fn tanh_fast(self) -> f32 {
        // tanh(x) = 1 - 2 / (e^{2x} + 1); |x| ≥ 9 is ±1 to f32 precision.
        let e = exp_f32(2.0 * self.clamp(-9.0, 9.0));
        1.0 - 2.0 / (e + 1.0)
    }
}

/// `e^x` in f32 without branches or libm calls (so loops over it vectorise): x = k·ln2 + r
/// with |r| ≤ ln2/2, e^r by its degree-6 Taylor polynomial (relative error < 2e-7 there),
/// 2^k put into the exponent bits. The rounding uses the 1.5·2^23 trick (Cody & Waite style
/// range reduction; the same scheme as Cephes' `expf`).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
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
    fn fast_exp_and_tanh_are_accurate_in_f32() {
        let mut worst_exp = 0f64;
        let mut worst_tanh = 0f64;
        for i in -80_000..80_000 {
            let x = i as f32 * 1e-3;
            let e = f64::from(exp_f32(x));
            worst_exp = worst_exp.max((e / f64::from(x).exp() - 1.0).abs());
            let t = f64::from(x.tanh_fast());
            worst_tanh = worst_tanh.max((t - f64::from(x).tanh()).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 5e-7, "tanh absolute error {worst_tanh}");
        assert!(exp_f32(-200.0) < 1e-37);
        assert!(exp_f32(200.0).is_finite());
    }
}
