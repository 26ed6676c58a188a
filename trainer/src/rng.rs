//! Counter-based random numbers: every value is a pure function of (seed, stream, index).
//!
//! Initial weights and dropout masks are drawn this way so that they do not depend on the
//! order in which work is done: a tensor-parallel shard draws exactly the elements of the full
//! tensor it owns, a data-parallel rank the dropout mask of its own samples, and a resumed run
//! the same masks as an uninterrupted one. The mixer is SplitMix64's finaliser (Steele, Lea and
//! Flood 2014, "Fast splittable pseudorandom number generators"), applied to a Weyl sequence.

/// SplitMix64's output function.
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit hash of (seed, stream, index).
#[inline(always)]
pub fn hash(seed: u64, stream: u64, index: u64) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    mix(mix(seed ^ stream.wrapping_mul(GOLDEN)).wrapping_add(index.wrapping_mul(GOLDEN)))
}

/// A uniform value in [0, 1) with 53 random bits.
#[inline(always)]
pub fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    (hash(seed, stream, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal value (Box-Muller on two uniforms drawn from neighbouring counters).
pub fn normal(seed: u64, stream: u64, index: u64) -> f64 {
    let u1 = uniform(seed, stream, 2 * index);
    let u2 = uniform(seed, stream, 2 * index + 1);
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    r * (std::f64::consts::TAU * u2).cos()
}

/// A stream id from a few small fields (step, layer, site, ...): distinct tuples give
/// distinct streams.
pub fn stream(fields: &[u64]) -> u64 {
    fields.iter().fold(
        0x5851_F42D_4C95_7F2D,
        |acc, &f| mix(acc ^ f.wrapping_add(1)),
    )
}

/// A small sequential generator (for sampling during generation and shuffling), itself
/// counter-based so its state is one integer that a checkpoint can store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Seed.
    pub seed: u64,
    /// Values drawn so far.
    pub count: u64,
}

impl Counter {
    /// A generator at the start of the stream of `seed`.
    pub fn new(seed: u64) -> Counter {
        Counter { seed, count: 0 }
    }

    /// The next uniform value in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.count += 1;
        uniform(self.seed, 0, self.count)
    }

    /// The next integer in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.count += 1;
        // Lemire's multiply-shift; the bias is below 2^-32 for the sizes used here.
        ((u128::from(hash(self.seed, 0, self.count)) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniforms_and_normals_have_the_right_moments() {
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0, 0.0);
        let (mut z, mut z2) = (0.0, 0.0);
        for i in 0..n {
            let u = uniform(7, 3, i);
            assert!((0.0..1.0).contains(&u));
            s += u;
            s2 += u * u;
            let g = normal(7, 3, i);
            z += g;
            z2 += g * g;
        }
        let nf = n as f64;
        assert!((s / nf - 0.5).abs() < 0.005);
        assert!((s2 / nf - 1.0 / 3.0).abs() < 0.005);
        assert!((z / nf).abs() < 0.01);
        assert!((z2 / nf - 1.0).abs() < 0.01);
    }

    #[test]
    fn streams_differ_and_repeat() {
        assert_ne!(stream(&[1, 2]), stream(&[2, 1]));
        assert_eq!(hash(1, stream(&[3]), 9), hash(1, stream(&[3]), 9));
        assert_ne!(hash(1, 0, 9), hash(2, 0, 9));
        let mut c = Counter::new(5);
        let a: Vec<u64> = (0..10).map(|_| c.below(7)).collect();
        let mut c2 = Counter::new(5);
        let b: Vec<u64> = (0..10).map(|_| c2.below(7)).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|&x| x < 7));
    }
}
