//! Matrix-product time from tiles and waves (tile and wave quantisation).
//!
//! A GPU library computes `C = A·B` (`[m, k] × [k, n]`) by cutting `C` into `tm × tn` output
//! tiles, one thread block each, and running the blocks in waves over the chip's compute units
//! (SMs; AI cores on Ascend). A wave costs as much as its slowest tile whether it is full or
//! not, so a product whose tile count is just over a multiple of the unit count pays for a
//! nearly empty wave (wave quantisation), and edge tiles pay for their padding (tile
//! quantisation): NVIDIA, "Matrix Multiplication Background User's Guide" (2023), §2.3 (the
//! tile sizes cuBLAS picks from) and §3 (both effects, measured on an A100). The model:
//!
//! - a tile's main loop runs `k` steps at its unit's share of the family's plateau rate
//!   (`peak · max_efficiency / units`), unless feeding its operands is slower: each step loads
//!   `(tm + tn)` elements from L2, whose bandwidth the units share. Small tiles reuse less, so
//!   where the L2 bandwidth is known they run below the plateau (the guide's §2.3: larger
//!   tiles are more efficient, smaller ones give more parallelism);
//! - the loop's fill and drain (prologue, epilogue) cost `half_dim` steps of compute, the same
//!   `k / (k + half_dim)` factor as the smooth curve;
//! - `waves = ⌈batch · tiles · splits / units⌉`, and the product takes `waves` tile times;
//! - when the tiles do not fill the units, the library may split `k` over `s` blocks per tile
//!   (split-K) and sum the fp32 partials in a memory-bound pass;
//! - the library's heuristic is taken to find the fastest tile and split: the minimum over the
//!   menu (ASSUMPTION: cuBLAS's heuristics are close to that on these shapes; a measured
//!   table would replace it).
//!
//! What it leaves out: stream-K and persistent kernels (Hopper's cuBLAS uses them to soften
//! the last wave), L2 misses to HBM (the roofline's byte term covers HBM), and clock changes.

use pangu_hardware::Bandwidth;
use serde::Deserialize;

/// The largest split of `k` considered (cuBLAS's split-K factors are small).
const MAX_SPLIT_K: u64 = 16;

/// Bytes of an fp32 partial sum (split-K accumulates in fp32).
const PARTIAL_BYTES: f64 = 4.0;

/// A family's tile menu and the bandwidth that feeds the tiles.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiles {
    /// Output tile shapes `[rows, columns]` the library picks from.
    pub sizes: Vec<[u64; 2]>,
    /// L2 to compute-unit bandwidth of the whole chip; absent where no source gives it (tiles
    /// then all run at the plateau).
    #[serde(default)]
    pub l2_bandwidth: Option<Bandwidth>,
}

/// One product's shape: `batch` independent `[m, k] × [k, n]` products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Independent products (heads × micro-batch for attention).
    pub batch: u64,
    /// Rows of the output.
    pub m: u64,
    /// Columns of the output.
    pub n: u64,
    /// Reduction length.
    pub k: u64,
}

/// What a product runs on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    /// Compute units (SMs, AI cores).
    pub units: u32,
    /// The chip's peak for this product's operands, FLOP/s.
    pub peak: f64,
    /// The family's plateau: the fraction of a unit's peak a large tile's loop sustains.
    pub plateau: f64,
    /// Fill and drain of a tile's loop, in `k` steps.
    pub half_k: f64,
    /// Bytes per operand element.
    pub operand_bytes: f64,
    /// Achieved HBM bandwidth (for split-K's reduction), bytes/s.
    pub hbm: f64,
}

impl Tiles {
    /// Checks the menu; `source` names the file in errors.
    pub fn check(&self, source: &str) -> Result<(), String> {
        if self.sizes.is_empty() {
            return Err(format!(
                "{source}: tiles.sizes is empty: list the library's tile shapes, e.g. [[256, 128], [128, 128], [64, 64]]"
            ));
        }
        if let Some(t) = self.sizes.iter().find(|t| t[0] == 0 || t[1] == 0) {
            return Err(format!(
                "{source}: tile {t:?} has a zero side: give rows and columns of at least 1"
            ));
        }
        if let Some(b) = self.l2_bandwidth {
            if !(b.0.is_finite() && b.0 > 0.0) {
                return Err(format!("{source}: tiles.l2_bandwidth must be positive"));
            }
        }
        Ok(())
    }

    /// Fraction of `machine.peak` the product reaches: its ideal time over the modelled time
    /// of the fastest tile and split. In (0, plateau].
    pub fn efficiency(&self, machine: &Machine, s: Shape) -> f64 {
        if s.batch == 0 || s.m == 0 || s.n == 0 || s.k == 0 {
            return machine.plateau;
        }
        let ideal = 2.0 * (s.batch * s.m * s.n) as f64 * s.k as f64 / machine.peak;
        ideal / self.seconds(machine, s)
    }

    /// Modelled seconds of the product (compute only: no launch overhead, no HBM roofline).
    pub fn seconds(&self, machine: &Machine, s: Shape) -> f64 {
        self.fastest(machine, s, MAX_SPLIT_K)
    }

    /// The fastest tile with at most `splits` slices of `k`.
    fn fastest(&self, machine: &Machine, s: Shape, splits: u64) -> f64 {
        let units = f64::from(machine.units.max(1));
        let unit_rate = machine.peak * machine.plateau / units;
        let unit_feed = self.l2_bandwidth.map(|b| b.0 / units);
        let mut best = f64::INFINITY;
        for &[tm, tn] in &self.sizes {
            let tiles = s.batch * s.m.div_ceil(tm) * s.n.div_ceil(tn);
            // Split k only while the split tiles still fit in one wave: beyond that a split adds
            // reduction traffic and no parallelism.
            let max_split = (u64::from(machine.units.max(1)) / tiles).clamp(1, splits.max(1));
            for split in 1..=max_split.min(s.k) {
                let k = s.k.div_ceil(split) as f64;
                let flops = 2.0 * (tm * tn) as f64;
                let compute = flops * k / unit_rate;
                let feed = unit_feed
                    .map(|bw| (tm + tn) as f64 * machine.operand_bytes * k / bw)
                    .unwrap_or(0.0);
                let tile = compute.max(feed) + flops * machine.half_k / unit_rate;
                let waves = (tiles * split).div_ceil(u64::from(machine.units.max(1))) as f64;
                let reduce = if split > 1 {
                    // Each split writes its fp32 partial tile and the reduction reads them all.
                    2.0 * PARTIAL_BYTES * (split * s.batch * s.m * s.n) as f64 / machine.hbm
                } else {
                    0.0
                };
                best = best.min(waves * tile + reduce);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a100() -> (Tiles, Machine) {
        let tiles = Tiles {
            sizes: vec![
                [256, 128],
                [128, 256],
                [128, 128],
                [128, 64],
                [64, 128],
                [64, 64],
            ],
            l2_bandwidth: Some(Bandwidth(7219e9)),
        };
        let m = Machine {
            units: 108,
            peak: 312e12,
            plateau: 0.8,
            half_k: 64.0,
            operand_bytes: 2.0,
            hbm: 2039e9 * 0.85,
        };
        (tiles, m)
    }

    fn shape(m: u64, n: u64, k: u64) -> Shape {
        Shape { batch: 1, m, n, k }
    }

    #[test]
    fn a_large_product_runs_near_the_plateau() {
        let (t, m) = a100();
        let e = t.efficiency(&m, shape(8192, 8192, 8192));
        // 2,048 tiles of 256×128 in 19 waves of 108, k/(k+64) of the plateau.
        assert!(e > 0.78 && e <= 0.8, "{e}");
    }

    #[test]
    fn one_tile_past_a_full_wave_costs_a_wave() {
        let (t, m) = a100();
        // With one tile size, 108 tiles fill one wave and 109 need two.
        let one = Tiles {
            sizes: vec![[128, 128]],
            l2_bandwidth: None,
        };
        let full = one.seconds(&m, shape(128 * 108, 128, 4096));
        let over = one.seconds(&m, shape(128 * 109, 128, 4096));
        assert!((over / full - 2.0).abs() < 1e-9, "{over} vs {full}");
        // The whole menu softens it (smaller tiles fill the second wave better) but it stays
        // well below the full wave's efficiency.
        let e_full = t.efficiency(&m, shape(128 * 108, 128, 4096));
        let e_over = t.efficiency(&m, shape(128 * 109, 128, 4096));
        assert!(e_over < 0.8 * e_full, "{e_over} vs {e_full}");
    }

    #[test]
    fn small_products_fill_few_units_and_split_k_helps_a_long_reduction() {
        let (t, m) = a100();
        // A weight gradient of a thin layer: a 1024×128 output, reduced over 8,192 tokens.
        let thin = shape(1024, 128, 8192);
        let split = t.seconds(&m, thin);
        // Without split-K its 32 64×64 tiles would use under a third of the units.
        let unsplit = t.fastest(&m, thin, 1);
        assert!(
            split < 0.5 * unsplit,
            "split-K {split} vs unsplit {unsplit}"
        );
        let e = t.efficiency(&m, thin);
        assert!(e < 0.6, "{e}");
    }

    #[test]
    fn small_tiles_are_fed_below_the_plateau_where_l2_is_known() {
        let (mut t, m) = a100();
        t.sizes = vec![[64, 64]];
        // 64×64 tiles: 32 FLOP per byte against a unit's 2.31 TFLOP/s over 66.8 GB/s.
        let fed = t.efficiency(&m, shape(8192, 8192, 8192));
        t.l2_bandwidth = None;
        let unfed = t.efficiency(&m, shape(8192, 8192, 8192));
        assert!(fed < unfed * 0.95 && unfed > 0.78, "{fed} vs {unfed}");
    }

    #[test]
    fn menus_are_checked() {
        let (mut t, _) = a100();
        assert!(t.check("f").is_ok());
        t.sizes.push([0, 64]);
        assert!(t.check("f").unwrap_err().contains("zero side"));
        t.sizes.clear();
        assert!(t.check("f").unwrap_err().contains("tiles.sizes"));
    }
}
