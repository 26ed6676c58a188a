//! The run of a [`Plan`]: what makes two strategies on the same machine differ in time to
//! train, beyond their step time.
//!
//! - **Checkpoint writes.** Each rank writes the state bytes only it holds
//!   ([`Plan::state_shards`]: with optimizer sharding every data-parallel replica writes its
//!   slice, without it only replica 0's ranks write). A server writes the sum of its ranks'
//!   bytes at its own storage bandwidth, and all servers share the storage system's aggregate
//!   bandwidth: the write takes `max(max over servers of bytes / node bandwidth, total bytes /
//!   aggregate bandwidth)`.
//! - **Restarts** read the state the same way (every rank reads what it holds, replicas
//!   included), after a fixed restart time.
//! - **Hot spares.** A job that leaves whole servers of the cluster idle keeps them as spares:
//!   a failed server is swapped for a spare and the job only restarts; without a spare the
//!   job waits for the repair. ASSUMPTION: chip and network failures take their server out
//!   for a repair of a fixed time; server-class interruptions (software, host; Llama 3's
//!   third class, see the module above) restart in place. Servers out for repair are those
//!   of an M/G/∞ queue, Poisson with mean `λ_hw · repair` (λ_hw the job's rate of chip and
//!   network failures); a failure finds no spare with probability `P(N ≥ spares)`, and then
//!   waits at most the repair time: the expected wait is taken as
//!   `λ_hw / λ · repair · P(N ≥ spares)` (an upper bound: with several servers in repair the
//!   first to return ends the wait).

use pangu_strategies::Plan;
use serde::Serialize;

use super::{Mtbf, RunSpec};

/// Where checkpoints go.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Storage {
    /// Aggregate write bandwidth of the storage system, bytes/s.
    pub write_bps: f64,
    /// Aggregate read bandwidth, bytes/s.
    pub read_bps: f64,
    /// Each server's own bandwidth to storage (read and write), bytes/s; `None`: only the
    /// aggregate limits.
    pub node_bps: Option<f64>,
}

impl Storage {
    /// Seconds to move `per_server` bytes (one entry per server) at `aggregate` bytes/s in
    /// all and the node bandwidth per server.
    pub fn transfer_s(&self, per_server: &[f64], aggregate: f64) -> f64 {
        let total: f64 = per_server.iter().sum();
        let busiest = per_server.iter().copied().fold(0.0, f64::max);
        let node = self.node_bps.map_or(0.0, |bw| busiest / bw);
        (total / aggregate).max(node)
    }
}

/// What a whole run needs beyond the plan and its step time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Inputs {
    /// Tokens the run trains on.
    pub tokens: f64,
    /// Component failure rates.
    pub mtbf: Mtbf,
    /// Checkpoint storage.
    pub storage: Storage,
    /// Seconds from a failure to a running job before the checkpoint is read (detection,
    /// rescheduling, process start, communicator set-up).
    pub restart_s: f64,
    /// Seconds a failed server is out for repair (what a failure waits without a spare).
    pub repair_s: f64,
}

/// The run of a plan: the failure model's input and how it was derived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The run as the failure model sees it.
    pub spec: RunSpec,
    /// Tokens of the run.
    pub tokens: f64,
    /// Servers the job uses.
    pub servers: u32,
    /// Whole servers of the cluster the job leaves idle, kept as hot spares.
    pub spare_servers: u32,
    /// NIC links of the job's servers.
    pub links: u32,
    /// Bytes of one checkpoint (distinct state).
    pub checkpoint_bytes: f64,
    /// Bytes the busiest server writes.
    pub busiest_server_write_bytes: f64,
    /// Bytes all ranks read on a restart.
    pub restart_read_bytes: f64,
    /// Seconds to read them.
    pub restart_read_s: f64,
    /// Probability that a failure needing a repair finds no spare server.
    pub no_spare_probability: f64,
}

/// Sums per-rank bytes into per-server bytes.
fn per_server(plan: &Plan, bytes: impl Iterator<Item = u64>) -> Vec<f64> {
    let topo = &plan.cluster.topology;
    let mut out = vec![0.0; plan.strategy.devices.div_ceil(topo.chips_per_server()) as usize];
    for (rank, b) in bytes.enumerate() {
        let server = topo.position(rank as u32).server as usize;
        if let Some(x) = out.get_mut(server) {
            *x += b as f64;
        }
    }
    out
}

/// `P(N ≥ k)` for `N` Poisson with mean `mu`.
fn poisson_at_least(mu: f64, k: u32) -> f64 {
    let mut term = (-mu).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= mu / f64::from(i + 1);
    }
    (1.0 - below).clamp(0.0, 1.0)
}

/// The run of `plan` at `step_s` seconds per step.
pub fn job(plan: &Plan, step_s: f64, inputs: &Inputs) -> Job {
    let s = &plan.strategy;
    let topo = &plan.cluster.topology;
    let cps = topo.chips_per_server();
    let servers = s.devices.div_ceil(cps);
    let spare_servers = plan.cluster.chips().div_ceil(cps).saturating_sub(servers);
    let links = servers * topo.nics_per_server();
    let shards = plan.state_shards();
    let written = per_server(plan, shards.iter().map(|x| x.written));
    let read = per_server(plan, shards.iter().map(|x| x.held));
    let st = &inputs.storage;
    let checkpoint_s = st.transfer_s(&written, st.write_bps);
    let restart_read_s = st.transfer_s(&read, st.read_bps);
    let tokens_per_step = f64::from(s.global_batch) * f64::from(plan.model.seq_len);
    let mut spec = RunSpec {
        step_s,
        steps: (inputs.tokens / tokens_per_step).ceil(),
        chips: s.devices,
        links,
        servers,
        mtbf: inputs.mtbf,
        checkpoint_s,
        restart_s: inputs.restart_s + restart_read_s,
        wait_s: 0.0,
    };
    // Chip and network failures per second: the ones that take a server out.
    let hw_rate = (f64::from(spec.chips) / spec.mtbf.chip_h
        + f64::from(spec.links) / spec.mtbf.link_h)
        / 3600.0;
    let no_spare = poisson_at_least(hw_rate * inputs.repair_s, spare_servers);
    spec.wait_s = hw_rate / spec.rate() * inputs.repair_s * no_spare;
    Job {
        spec,
        tokens: inputs.tokens,
        servers,
        spare_servers,
        links,
        checkpoint_bytes: written.iter().sum(),
        busiest_server_write_bytes: written.iter().copied().fold(0.0, f64::max),
        restart_read_bytes: read.iter().sum(),
        restart_read_s,
        no_spare_probability: no_spare,
    }
}

/// Expected wall-clock days of the run of `plan` at `step_s` seconds per step, at the best
/// checkpoint interval: the number `pangu goodput` prints and the time-to-train search ranks
/// by.
pub fn expected_days(plan: &Plan, step_s: f64, inputs: &Inputs) -> f64 {
    job(plan, step_s, inputs).spec.expected_days()
}

/// Chip counts below `chips` that leave `k` whole servers as spares, for `k` in
/// {1, 2, 4, 8, 16, 32} while the job keeps at least 7/8 of the servers: the smaller jobs a
/// time-to-train search also considers. Largest first.
pub fn spare_device_counts(chips: u32, chips_per_server: u32) -> Vec<u32> {
    let servers = chips / chips_per_server.max(1);
    [1u32, 2, 4, 8, 16, 32]
        .into_iter()
        .filter(|&k| 8 * k <= servers)
        .map(|k| chips - k * chips_per_server)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_tail() {
        assert_eq!(poisson_at_least(0.7, 0), 1.0);
        assert!((poisson_at_least(0.7, 1) - (1.0 - (-0.7f64).exp())).abs() < 1e-12);
        let p2 = 1.0 - (-2.0f64).exp() * (1.0 + 2.0);
        assert!((poisson_at_least(2.0, 2) - p2).abs() < 1e-12);
        assert!(poisson_at_least(0.1, 8) < 1e-9);
    }

    #[test]
    fn storage_takes_the_busiest_node_or_the_aggregate() {
        let st = Storage {
            write_bps: 10.0,
            read_bps: 10.0,
            node_bps: Some(1.0),
        };
        // Busiest node 4 bytes at 1 B/s; total 6 at 10 B/s.
        assert_eq!(st.transfer_s(&[4.0, 1.0, 1.0], 10.0), 4.0);
        // Spread evenly, the aggregate limits.
        assert_eq!(st.transfer_s(&[1.0; 60], 10.0), 6.0);
        let agg = Storage {
            node_bps: None,
            ..st
        };
        assert_eq!(agg.transfer_s(&[4.0, 1.0, 1.0], 10.0), 0.6);
    }

    #[test]
    fn spare_counts_keep_seven_eighths() {
        assert_eq!(
            spare_device_counts(2048, 8),
            vec![2040, 2032, 2016, 1984, 1920, 1792]
        );
        assert_eq!(spare_device_counts(64, 8), vec![56]);
        assert!(spare_device_counts(16, 8).is_empty());
    }
}
