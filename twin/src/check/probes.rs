//! Probes of the machine per device count, and the machine they describe.
//!
//! How much the cores give depends on how many ranks share them, so each device count has its
//! own probes: some before the runs and one after each run, so that they span the same time as
//! the runs.

use std::collections::BTreeMap;

use pangu_model::ModelConfig;
use pangu_trainer::calibrate::Machine;

/// Sequences per micro-batch of a probe's products.
const PROBE_MICRO_BATCH: u32 = 8;

/// Which machine `twin check` compares on a shared host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Estimate {
    /// The median probe against the median run: the machine as it was during the check,
    /// other tenants included.
    #[default]
    Typical,
    /// The fastest probe against the fastest run: the machine without them (interference
    /// only slows).
    Quiet,
}

/// The probes taken so far, per device count.
pub(super) struct Probes<'a> {
    cfg: &'a ModelConfig,
    taken: BTreeMap<u32, Vec<Machine>>,
}

impl<'a> Probes<'a> {
    /// No probes yet, of `cfg`'s shapes.
    pub(super) fn new(cfg: &'a ModelConfig) -> Self {
        Probes {
            cfg,
            taken: BTreeMap::new(),
        }
    }

    /// One probe with `devices` threads at once.
    pub(super) fn take(&mut self, devices: u32) {
        let m = crate::profile::measure(self.cfg, PROBE_MICRO_BATCH, devices, true);
        self.taken.entry(devices).or_default().push(m);
    }

    /// `n` probes of `devices` unless that device count has some already.
    pub(super) fn first(&mut self, devices: u32, n: usize) {
        if !self.taken.contains_key(&devices) {
            for _ in 0..n {
                self.take(devices);
            }
        }
    }

    /// The machine of each device count.
    pub(super) fn machines(&self, how: Estimate) -> BTreeMap<u32, Machine> {
        self.taken
            .iter()
            .filter(|(_, ps)| !ps.is_empty())
            .map(|(&d, ps)| (d, machine_of(ps, how)))
            .collect()
    }
}

/// The machine from repeated probes (at least one). Typical: the median of every figure.
/// Quiet: the fastest matrix rates and element-wise bandwidth seen (interference only slows
/// them) and the median of transfer rates and latencies (their noise goes both ways).
pub fn machine_of(probes: &[Machine], how: Estimate) -> Machine {
    type Field<'a> = &'a dyn Fn(&Machine) -> f64;
    let med = |f: Field| {
        let mut v: Vec<f64> = probes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |f: Field| match how {
        Estimate::Typical => med(f),
        Estimate::Quiet => probes.iter().map(f).fold(0.0, f64::max),
    };
    let mut m = probes[0].clone();
    m.gemm_gflops = rate(&|p| p.gemm_gflops);
    m.stream_gb_s = rate(&|p| p.stream_gb_s);
    m.attention_gflops = rate(&|p| p.attention_gflops);
    m.one_gflops = rate(&|p| p.one_gflops);
    m.all_gflops = rate(&|p| p.all_gflops);
    m.parallel_speedup = match how {
        Estimate::Typical => med(&|p| p.parallel_speedup),
        // From the fastest shared and the fastest single rate: both the quiet machine (a slow
        // spell on one core lowers the first, on the measuring core the second).
        Estimate::Quiet => {
            (m.all_gflops / m.one_gflops.max(1e-9)).min(m.workers.min(m.cores) as f64)
        }
    };
    m.transfer_gb_s = med(&|p| p.transfer_gb_s);
    m.transfer_latency_us = med(&|p| p.transfer_latency_us);
    for (i, g) in m.gemm.iter_mut().enumerate() {
        g.gflops = rate(&|p| p.gemm[i].gflops);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_trainer::calibrate::Gemm;

    fn probe(rate: f64, transfer: f64) -> Machine {
        Machine {
            cores: 2,
            gemm: vec![Gemm {
                m: 8,
                k: 8,
                n: 8,
                gflops: rate,
            }],
            gemm_gflops: rate,
            workers: 2,
            one_gflops: rate,
            all_gflops: 1.5 * rate,
            parallel_speedup: 1.5,
            stream_gb_s: rate / 10.0,
            attention_gflops: rate / 2.0,
            transfer_gb_s: transfer,
            transfer_latency_us: 1.0 / transfer,
        }
    }

    #[test]
    fn typical_takes_medians_and_quiet_the_fastest_rates() {
        let ps = [probe(60.0, 1.0), probe(90.0, 3.0), probe(80.0, 2.0)];
        let typical = machine_of(&ps, Estimate::Typical);
        assert_eq!(typical.gemm_gflops, 80.0);
        assert_eq!(typical.gemm[0].gflops, 80.0);
        let quiet = machine_of(&ps, Estimate::Quiet);
        assert_eq!(quiet.gemm_gflops, 90.0);
        assert_eq!(quiet.gemm[0].gflops, 90.0);
        assert_eq!(quiet.parallel_speedup, 1.5);
        // Transfers' noise goes both ways: the median either way.
        assert_eq!(quiet.transfer_gb_s, 2.0);
    }
}
