//! A whole training run under failures: goodput, expected wall-clock time and the checkpoint
//! interval that maximises goodput.
//!
//! Model (Daly 2006, "A higher order estimate of the optimum checkpoint interval for restart
//! dumps", FGCS 22): failures arrive as a Poisson process of rate `1/M` (the system's mean
//! time between failures, from per-component rates); the job computes `τ` seconds, then
//! writes a checkpoint for `δ` seconds (blocking); a failure loses the work since the last
//! complete checkpoint and costs a restart of `R` seconds (rescheduling, process start,
//! reading the checkpoint), itself interruptible. Before that restart a failure may also cost
//! a wait of `D` seconds (for a repaired or spare server, [`plan`]), during which the job is
//! down and no further failure counts. The expected wall time of `W` seconds of work is
//!
//! ```text
//! T(τ) = (M + D) · e^{R/M} · (e^{(τ+δ)/M} − 1) · W / τ
//! ```
//!
//! (with `D = 0`, Daly's formula: a segment of `τ + δ` seconds completes after
//! `(e^{(τ+δ)/M} − 1)` failures on average, each costing `M` of lost time plus a recovery
//! whose expected length, the wait then an interruptible restart, is
//! `D·e^{R/M} + M·(e^{R/M} − 1)`). `D` and `R` scale `T` without moving its minimum, so the
//! optimal interval is Daly's whatever the wait.
//!
//! and goodput is `W / T(τ)`. [`analyse`] minimises `T` numerically, compares with Young's
//! `√(2δM)` (Young 1974, Daly's first order) and Daly's higher-order interval, and checks the
//! formula with a seeded Monte Carlo simulation of the run (failures drawn, segments replayed).
//!
//! Default failure rates come from Llama 3's 54-day snapshot on 16,384 H100 GPUs in 2,048
//! servers (Dubey et al. 2024, "The Llama 3 Herd of Models", §3.3.4 and Table 5: 419
//! unexpected interruptions). Attributed to the accelerator (faulty GPU 148, HBM3 72, SRAM 19,
//! system processor 17, silent data corruption 6, thermal 6): 268, i.e. one per 16,384 × 1,296
//! GPU-hours / 268 = 79,229 h per chip. To the network (switch or cable 35, NIC 7): 42, one per
//! 505,563 h per NIC link. The remaining 109 (software 54, unplanned host maintenance 32, NCCL
//! watchdog 7, storage, power, chassis, CPU, memory, dependencies 16): one per 24,351 h per
//! server. Together: one interruption per 3.1 h for that job, as the paper reports.

use serde::Serialize;

pub mod plan;

/// Mean time between failures of each component, in hours.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Mtbf {
    /// Per accelerator chip.
    pub chip_h: f64,
    /// Per NIC link (NIC, cable, switch port).
    pub link_h: f64,
    /// Per server (host, software, everything else).
    pub server_h: f64,
}

impl Mtbf {
    /// Derived from Llama 3's interruption statistics (see the module docs).
    pub const LLAMA3: Mtbf = Mtbf {
        chip_h: 16_384.0 * 1_296.0 / 268.0,
        link_h: 16_384.0 * 1_296.0 / 42.0,
        server_h: 2_048.0 * 1_296.0 / 109.0,
    };
}

/// The run to analyse.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunSpec {
    /// Failure-free seconds per step (from the simulator).
    pub step_s: f64,
    /// Steps of the run.
    pub steps: f64,
    /// Chips, NIC links and servers the job uses.
    pub chips: u32,
    /// NIC links.
    pub links: u32,
    /// Servers.
    pub servers: u32,
    /// Component failure rates.
    pub mtbf: Mtbf,
    /// Seconds to write one checkpoint (blocking).
    pub checkpoint_s: f64,
    /// Seconds from a failure to computing again (reschedule, start, read the checkpoint).
    pub restart_s: f64,
    /// Expected seconds a failure waits, before the restart, for a server to replace the
    /// failed one (0 with a spare at hand); not interruptible.
    pub wait_s: f64,
}

/// What [`analyse`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goodput {
    /// Useful compute time over wall time at the chosen interval.
    pub goodput: f64,
    /// Expected wall-clock days of the run at the chosen interval.
    pub expected_days: f64,
    /// Days without failures or checkpoints.
    pub ideal_days: f64,
    /// Checkpoint interval (compute seconds between checkpoints) used for the two above.
    pub checkpoint_interval_s: f64,
    /// The interval minimising the expected wall time.
    pub best_checkpoint_interval_s: f64,
    /// Young's interval `√(2δM)`.
    pub young_daly_interval_s: f64,
    /// Daly's higher-order interval.
    pub daly_interval_s: f64,
    /// Goodput at Young's interval.
    pub goodput_at_young_daly: f64,
    /// The job's mean time between failures (s).
    pub mtbf_s: f64,
    /// Expected failures over the run.
    pub expected_failures: f64,
    /// Monte Carlo check at the chosen interval.
    pub monte_carlo: MonteCarlo,
    /// Goodput against interval (seconds), for plots.
    pub curve: Vec<(f64, f64)>,
}

/// The simulated runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonteCarlo {
    /// Runs simulated.
    pub trials: u32,
    /// Mean wall-clock days.
    pub mean_days: f64,
    /// 10th and 90th percentile days.
    pub p10_days: f64,
    /// 90th percentile.
    pub p90_days: f64,
    /// Mean goodput.
    pub mean_goodput: f64,
    /// Mean failures per run.
    pub mean_failures: f64,
}

impl RunSpec {
    /// The job's failure rate per second.
    pub fn rate(&self) -> f64 {
        let per_h = f64::from(self.chips) / self.mtbf.chip_h
            + f64::from(self.links) / self.mtbf.link_h
            + f64::from(self.servers) / self.mtbf.server_h;
        per_h / 3600.0
    }

    /// Failure-free compute seconds.
    pub fn work_s(&self) -> f64 {
        self.step_s * self.steps
    }

    /// Expected wall seconds with checkpoints every `tau` compute seconds.
    pub fn expected_wall_s(&self, tau: f64) -> f64 {
        let m = 1.0 / self.rate();
        let (d, r) = (self.checkpoint_s, self.restart_s);
        (m + self.wait_s) * (r / m).exp() * (((tau + d) / m).exp_m1()) * self.work_s() / tau
    }

    /// The checkpoint interval (compute seconds) that minimises the expected wall time:
    /// golden-section search on `ln τ` between a second and the whole run (`T` is unimodal
    /// in `τ`).
    pub fn best_interval_s(&self) -> f64 {
        let f = |lt: f64| self.expected_wall_s(lt.exp());
        let (mut lo, mut hi) = (0.0f64, self.work_s().max(2.0).ln());
        let g = 0.5 * (5f64.sqrt() - 1.0);
        for _ in 0..200 {
            let a = hi - g * (hi - lo);
            let b = lo + g * (hi - lo);
            if f(a) < f(b) {
                hi = b;
            } else {
                lo = a;
            }
        }
        (0.5 * (lo + hi)).exp()
    }

    /// Expected wall-clock days at the best interval: what [`analyse`] reports without a
    /// fixed interval, and what the time-to-train search ranks by.
    pub fn expected_days(&self) -> f64 {
        self.expected_wall_s(self.best_interval_s()) / 86_400.0
    }
}

/// Minimises the expected wall time over the interval and checks it by simulation.
/// `interval_s` fixes the interval instead (goodput and days are then given at it).
pub fn analyse(spec: &RunSpec, interval_s: Option<f64>, trials: u32, seed: u64) -> Goodput {
    let m = 1.0 / spec.rate();
    let d = spec.checkpoint_s;
    let w = spec.work_s();
    let best = spec.best_interval_s();
    let young = (2.0 * d * m).sqrt();
    let daly = if d < 2.0 * m {
        let x = d / (2.0 * m);
        young * (1.0 + x.sqrt() / 3.0 + x / 9.0) - d
    } else {
        m
    };
    let tau = interval_s.unwrap_or(best);
    let wall = spec.expected_wall_s(tau);
    let curve = (0..=60)
        .map(|i| {
            let t = (best / 30.0) * (900.0f64).powf(f64::from(i) / 60.0);
            (t, w / spec.expected_wall_s(t))
        })
        .collect();
    Goodput {
        goodput: w / wall,
        expected_days: wall / 86_400.0,
        ideal_days: w / 86_400.0,
        checkpoint_interval_s: tau,
        best_checkpoint_interval_s: best,
        young_daly_interval_s: young,
        daly_interval_s: daly,
        goodput_at_young_daly: w / spec.expected_wall_s(young),
        mtbf_s: m,
        // Failures arrive only while the job runs, not while it waits for a server.
        expected_failures: wall / (m + spec.wait_s),
        monte_carlo: monte_carlo(spec, tau, trials, seed),
        curve,
    }
}

/// SplitMix64: a small, seeded, portable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // (0, 1]
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Exponential with mean `m`.
    fn exp(&mut self, m: f64) -> f64 {
        -m * self.next().ln()
    }
}

/// Replays the run `trials` times with failures drawn from the job's rate; each failure
/// waits the expected `wait_s` before its restart.
pub fn monte_carlo(spec: &RunSpec, tau: f64, trials: u32, seed: u64) -> MonteCarlo {
    let m = 1.0 / spec.rate();
    let w = spec.work_s();
    let (d, r) = (spec.checkpoint_s, spec.restart_s);
    let mut rng = Rng(seed);
    let mut days = Vec::with_capacity(trials as usize);
    let mut failures = 0u64;
    for _ in 0..trials {
        let (mut done, mut t) = (0.0f64, 0.0f64);
        while done < w {
            let seg = tau.min(w - done);
            let next = rng.exp(m);
            if next >= seg + d {
                t += seg + d;
                done += seg;
                continue;
            }
            // Lost the segment; wait for a server, restart, which may itself be interrupted
            // (and each interruption waits again).
            t += next + spec.wait_s;
            failures += 1;
            loop {
                let f = rng.exp(m);
                if f >= r {
                    t += r;
                    break;
                }
                t += f + spec.wait_s;
                failures += 1;
            }
        }
        days.push(t / 86_400.0);
    }
    days.sort_by(f64::total_cmp);
    let n = days.len().max(1);
    let mean = days.iter().sum::<f64>() / n as f64;
    let pick = |q: f64| {
        days.get(((n - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    MonteCarlo {
        trials,
        mean_days: mean,
        p10_days: pick(0.1),
        p90_days: pick(0.9),
        mean_goodput: w / 86_400.0 / mean,
        mean_failures: failures as f64 / f64::from(trials.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            step_s: 10.0,
            steps: 80_000.0,
            chips: 2048,
            links: 2048,
            servers: 256,
            mtbf: Mtbf::LLAMA3,
            checkpoint_s: 120.0,
            restart_s: 900.0,
            wait_s: 0.0,
        }
    }

    #[test]
    fn llama3_rates_give_its_three_hour_mtbf() {
        let s = RunSpec {
            chips: 16_384,
            links: 16_384,
            servers: 2_048,
            ..spec()
        };
        let h = 1.0 / s.rate() / 3600.0;
        assert!((h - 1296.0 / 419.0).abs() < 1e-9, "{h}");
    }

    #[test]
    fn the_optimum_sits_near_daly_and_the_simulation_agrees_with_the_formula() {
        let g = analyse(&spec(), None, 400, 7);
        // Daly's higher-order estimate is within a few per cent of the true optimum when
        // δ ≪ M, and Young's is close too.
        assert!(
            (g.daly_interval_s / g.best_checkpoint_interval_s - 1.0).abs() < 0.03,
            "{g:?}"
        );
        assert!((g.young_daly_interval_s / g.best_checkpoint_interval_s - 1.0).abs() < 0.1);
        assert!(g.goodput >= g.goodput_at_young_daly);
        assert!(g.goodput > 0.8 && g.goodput < 1.0);
        // The replayed runs match the expectation within their sampling error.
        let mc = &g.monte_carlo;
        assert!(
            (mc.mean_days / g.expected_days - 1.0).abs() < 0.01,
            "{mc:?} vs {}",
            g.expected_days
        );
        assert!(mc.p10_days < mc.mean_days && mc.mean_days < mc.p90_days);
        // Checkpointing too often or too rarely costs goodput.
        for t in [
            g.best_checkpoint_interval_s / 10.0,
            g.best_checkpoint_interval_s * 10.0,
        ] {
            assert!(analyse(&spec(), Some(t), 10, 1).goodput < g.goodput);
        }
    }

    #[test]
    fn a_wait_per_failure_scales_the_time_and_the_simulation_agrees() {
        let fast = spec();
        let slow = RunSpec {
            wait_s: 3.0 * 3600.0,
            ..chip_mtbf_scaled(&fast, 0.1)
        };
        let base = RunSpec {
            wait_s: 0.0,
            ..slow
        };
        let (g, b) = (analyse(&slow, None, 400, 3), analyse(&base, None, 10, 3));
        // The wait moves no optimum, and scales the expected time by (M + D) / M.
        assert!((g.best_checkpoint_interval_s / b.best_checkpoint_interval_s - 1.0).abs() < 1e-6);
        let m = g.mtbf_s;
        assert!((g.expected_days / b.expected_days - (m + slow.wait_s) / m).abs() < 1e-6);
        assert!((g.expected_days - slow.expected_days()).abs() < 1e-12);
        let mc = &g.monte_carlo;
        assert!(
            (mc.mean_days / g.expected_days - 1.0).abs() < 0.02,
            "{mc:?} vs {}",
            g.expected_days
        );
        assert!((mc.mean_failures / g.expected_failures - 1.0).abs() < 0.05);
    }

    /// `s` with the chips' mean time between failures multiplied by `scale`.
    fn chip_mtbf_scaled(s: &RunSpec, scale: f64) -> RunSpec {
        RunSpec {
            mtbf: Mtbf {
                chip_h: s.mtbf.chip_h * scale,
                ..s.mtbf
            },
            ..*s
        }
    }
}
