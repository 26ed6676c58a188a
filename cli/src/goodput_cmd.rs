//! `pangu goodput`: a whole training run under failures (see `pangu_sim::goodput`).

use anyhow::{bail, Result};
use clap::Args;
use pangu_model::ModelConfig;
use pangu_sim::goodput::plan::{Inputs, Job, Storage};
use pangu_sim::goodput::{self, Goodput, Mtbf, RunSpec};
use pangu_strategies::Plan;
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};

/// PanGu-α 200B's training tokens, DERIVED from the paper's Fig. 8 (the 200B curve ends at
/// ~4.25e10 tokens; shared/reference/pangu-alpha.md §3.3).
const PANGU_200B_TOKENS: f64 = 42.5e9;

/// The inputs of a whole run that `pangu goodput` and `pangu search --objective
/// time-to-train` share.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Tokens of the whole run (default: PanGu-α 200B's 42.5 B for that model; required for
    /// others).
    #[arg(long)]
    pub tokens: Option<f64>,
    /// Mean time between failures per chip, hours (default: Llama 3's, 79,229 h).
    #[arg(long)]
    pub chip_mtbf_h: Option<f64>,
    /// Per NIC link, hours (default: Llama 3's, 505,563 h).
    #[arg(long)]
    pub link_mtbf_h: Option<f64>,
    /// Per server (host, software, the rest), hours (default: Llama 3's, 24,351 h).
    #[arg(long)]
    pub server_mtbf_h: Option<f64>,
    /// Multiplies the three mean times between failures (0.1: ten times as many failures).
    #[arg(long, default_value_t = 1.0)]
    pub mtbf_scale: f64,
    /// Aggregate storage write bandwidth for checkpoints, GB/s (ASSUMPTION: 50, a large
    /// parallel file system).
    #[arg(long, default_value_t = 50.0)]
    pub storage_write_gbps: f64,
    /// Aggregate storage read bandwidth for restarts, GB/s (ASSUMPTION: 50).
    #[arg(long, default_value_t = 50.0)]
    pub storage_read_gbps: f64,
    /// Each server's own storage bandwidth (read and write), GB/s; a checkpoint then takes
    /// as long as its busiest server (default: only the aggregate limits).
    #[arg(long, value_name = "GBPS")]
    pub storage_bw_per_node: Option<f64>,
    /// Seconds from a failure to a running job before the checkpoint is read: detection,
    /// rescheduling, process start, communicator set-up (ASSUMPTION: 600).
    #[arg(long, default_value_t = 600.0)]
    pub restart_s: f64,
    /// Hours a server with a failed chip or link is out for repair; a failure waits that
    /// long when no spare server is idle (ASSUMPTION: 2 h, a reboot or part swap by on-site
    /// staff; no published figure).
    #[arg(long, default_value_t = 2.0)]
    pub repair_h: f64,
}

/// Options of `pangu goodput`.
#[derive(Debug, Args)]
pub(crate) struct GoodputArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Checkpoint every this many seconds of compute instead of the best interval.
    #[arg(long)]
    pub checkpoint_interval_s: Option<f64>,
    /// Monte Carlo runs that check the formula.
    #[arg(long, default_value_t = 200)]
    pub trials: u32,
    /// Seed of the Monte Carlo runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    /// The run's inputs for `model`; errors name the flag and what would work.
    pub(crate) fn inputs(&self, model: &ModelConfig) -> Result<Inputs> {
        self.check()?;
        let tokens = match self.tokens {
            Some(t) if t > 0.0 && t.is_finite() => t,
            Some(t) => bail!("--tokens {t}: give a positive token count, e.g. --tokens 3e11"),
            None if model.name == "pangu-alpha-200b" => PANGU_200B_TOKENS,
            None => bail!(
                "--tokens: how many tokens does the {} run train on? (e.g. --tokens 3e11)",
                model.name
            ),
        };
        let k = self.mtbf_scale;
        Ok(Inputs {
            tokens,
            mtbf: Mtbf {
                chip_h: self.chip_mtbf_h.unwrap_or(Mtbf::LLAMA3.chip_h) * k,
                link_h: self.link_mtbf_h.unwrap_or(Mtbf::LLAMA3.link_h) * k,
                server_h: self.server_mtbf_h.unwrap_or(Mtbf::LLAMA3.server_h) * k,
            },
            storage: Storage {
                write_bps: self.storage_write_gbps * 1e9,
                read_bps: self.storage_read_gbps * 1e9,
                node_bps: self.storage_bw_per_node.map(|g| g * 1e9),
            },
            restart_s: self.restart_s,
            repair_s: self.repair_h * 3600.0,
        })
    }

    /// Refuses rates, bandwidths and times that are not positive (or negative for the
    /// restart and repair).
    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("--chip-mtbf-h", self.chip_mtbf_h),
            ("--link-mtbf-h", self.link_mtbf_h),
            ("--server-mtbf-h", self.server_mtbf_h),
            ("--mtbf-scale", Some(self.mtbf_scale)),
        ] {
            if let Some(x) = v {
                if !(x > 0.0 && x.is_finite()) {
                    bail!("{name} {x}: give a positive number");
                }
            }
        }
        for (name, v) in [
            ("--storage-write-gbps", Some(self.storage_write_gbps)),
            ("--storage-read-gbps", Some(self.storage_read_gbps)),
            ("--storage-bw-per-node", self.storage_bw_per_node),
        ] {
            if let Some(x) = v {
                if !(x > 0.0 && x.is_finite()) {
                    bail!("{name} {x}: give a positive bandwidth in GB/s");
                }
            }
        }
        for (name, x) in [
            ("--restart-s", self.restart_s),
            ("--repair-h", self.repair_h),
        ] {
            if !(x >= 0.0 && x.is_finite()) {
                bail!("{name} {x}: give a non-negative time");
            }
        }
        Ok(())
    }
}

pub(crate) fn run(a: &GoodputArgs) -> Result<()> {
    let setup = a.setup.resolve()?;
    let r = &setup.resolved;
    let plan = Plan::new(&setup.model, &r.cluster, &r.strategy)?;
    let inputs = a.run.inputs(&plan.model)?;
    if let Some(x) = a.checkpoint_interval_s {
        if !(x > 0.0 && x.is_finite()) {
            bail!("--checkpoint-interval-s {x}: give a positive number");
        }
    }
    if a.trials == 0 {
        bail!("--trials 0: the Monte Carlo check needs at least one run");
    }
    let step = pangu_sim::simulate(&plan)?.report;
    let d = goodput::plan::job(&plan, step.step_time_s, &inputs);
    let g = goodput::analyse(&d.spec, a.checkpoint_interval_s, a.trials, a.seed);
    if a.json {
        print_json(&goodput_json(&plan, &d, &g))
    } else {
        emit(&goodput_text(&plan, &d, &g))
    }
}

fn goodput_json(plan: &Plan, d: &Job, g: &Goodput) -> Value {
    let spec = &d.spec;
    json!({
        "tool": tool_field(&(&plan.model, &plan.cluster.spec, &plan.strategy)),
        "model": plan.model.name,
        "cluster": plan.cluster.spec.name,
        "summary": plan.strategy.summary(),
        "tokens": d.tokens,
        "steps": spec.steps,
        "step_time_s": spec.step_s,
        "checkpoint_bytes": d.checkpoint_bytes,
        "busiest_server_write_bytes": d.busiest_server_write_bytes,
        "checkpoint_write_s": spec.checkpoint_s,
        "restart_read_bytes": d.restart_read_bytes,
        "restart_read_s": d.restart_read_s,
        "restart_s": spec.restart_s,
        "servers": d.servers,
        "spare_servers": d.spare_servers,
        "no_spare_probability": d.no_spare_probability,
        "wait_per_failure_s": spec.wait_s,
        "mtbf_h": spec.mtbf,
        "goodput": g.goodput,
        "expected_days": g.expected_days,
        "ideal_days": g.ideal_days,
        "checkpoint_interval_s": g.checkpoint_interval_s,
        "best_checkpoint_interval_s": g.best_checkpoint_interval_s,
        "young_daly_interval_s": g.young_daly_interval_s,
        "daly_interval_s": g.daly_interval_s,
        "goodput_at_young_daly": g.goodput_at_young_daly,
        "job_mtbf_h": g.mtbf_s / 3600.0,
        "expected_failures": g.expected_failures,
        "monte_carlo": g.monte_carlo,
        "curve": g.curve.iter().map(|(t, v)| json!({"interval_s": t, "goodput": v})).collect::<Vec<_>>(),
    })
}

fn goodput_text(plan: &Plan, d: &Job, g: &Goodput) -> String {
    let (s, spec) = (&plan.strategy, &d.spec);
    let mut out = String::new();
    outln!(
        out,
        "goodput: {} on {} ({} chips), {}",
        plan.model.name,
        plan.cluster.spec.name,
        s.devices,
        s.summary()
    );
    outln!(
        out,
        "{:.3e} tokens = {:.0} steps of {:.3} s: {:.1} days without failures",
        d.tokens,
        spec.steps,
        spec.step_s,
        g.ideal_days
    );
    outln!(
        out,
        "failures: one per {:.1} h for this job ({} chips, {} NIC links, {} servers at {:.0} / {:.0} / {:.0} h each)",
        g.mtbf_s / 3600.0,
        s.devices,
        d.links,
        d.servers,
        spec.mtbf.chip_h,
        spec.mtbf.link_h,
        spec.mtbf.server_h,
    );
    outln!(
        out,
        "checkpoint {:.2} TB written in {:.0} s (busiest server {:.1} GB); restart {:.0} s ({:.1} TB read in {:.0} s); \
         {} spare servers: a failure waits {:.0} s on average for a server (no spare {:.0} % of the time)",
        d.checkpoint_bytes / 1e12,
        spec.checkpoint_s,
        d.busiest_server_write_bytes / 1e9,
        spec.restart_s,
        d.restart_read_bytes / 1e12,
        d.restart_read_s,
        d.spare_servers,
        spec.wait_s,
        d.no_spare_probability * 100.0
    );
    let mc = &g.monte_carlo;
    let rows = vec![
        vec![
            "best (minimises expected time)".to_string(),
            format!("{:.0}", g.best_checkpoint_interval_s),
            format!("{:.4}", analyse_at(spec, g.best_checkpoint_interval_s)),
        ],
        vec![
            "Young / Daly first order √(2δM)".to_string(),
            format!("{:.0}", g.young_daly_interval_s),
            format!("{:.4}", g.goodput_at_young_daly),
        ],
        vec![
            "Daly higher order".to_string(),
            format!("{:.0}", g.daly_interval_s),
            format!("{:.4}", analyse_at(spec, g.daly_interval_s)),
        ],
    ];
    outln!(
        out,
        "{}",
        table(&["checkpoint interval", "seconds", "goodput"], &rows)
    );
    outln!(
        out,
        "at {:.0} s: goodput {:.4}, expected {:.2} days, {:.1} failures; {} simulated runs: mean {:.2} days (10-90 %: {:.2}-{:.2}), goodput {:.4}",
        g.checkpoint_interval_s,
        g.goodput,
        g.expected_days,
        g.expected_failures,
        mc.trials,
        mc.mean_days,
        mc.p10_days,
        mc.p90_days,
        mc.mean_goodput
    );
    out
}

fn analyse_at(spec: &RunSpec, t: f64) -> f64 {
    spec.work_s() / spec.expected_wall_s(t)
}
