//! `pangu goodput`: a whole training run under failures (see `pangu_sim::goodput`).

use anyhow::{bail, Result};
use clap::Args;
use pangu_sim::goodput::{self, Goodput, Mtbf, RunSpec};
use pangu_strategies::{Plan, Precision};
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};

/// PanGu-α 200B's training tokens, DERIVED from the paper's Fig. 8 (the 200B curve ends at
/// ~4.25e10 tokens; shared/reference/pangu-alpha.md §3.3).
const PANGU_200B_TOKENS: f64 = 42.5e9;

/// Options of `pangu goodput`.
#[derive(Debug, Args)]
pub(crate) struct GoodputArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
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
    /// Aggregate storage write bandwidth for checkpoints, GB/s (ASSUMPTION: 50, a large
    /// parallel file system).
    #[arg(long, default_value_t = 50.0)]
    pub storage_write_gbps: f64,
    /// Aggregate storage read bandwidth for restarts, GB/s (ASSUMPTION: 50).
    #[arg(long, default_value_t = 50.0)]
    pub storage_read_gbps: f64,
    /// Seconds from a failure to a running job before the checkpoint is read: detection,
    /// rescheduling, process start, communicator set-up (ASSUMPTION: 600).
    #[arg(long, default_value_t = 600.0)]
    pub restart_s: f64,
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

/// Bytes of the training state a checkpoint holds: weights, fp32 master copy and Adam's two
/// moments (ZeRO's accounting: 2 + 4 + 4 + 4 bytes per parameter in mixed precision, 12 in
/// fp32).
fn checkpoint_bytes(plan: &Plan) -> f64 {
    let per_param = match plan.strategy.precision {
        Precision::Fp32 => 12.0,
        _ => 14.0,
    };
    plan.model.params().total as f64 * per_param
}

/// The run the flags describe: its tokens, the simulated step, the machine it fails on and
/// its checkpoints.
struct Described {
    tokens: f64,
    spec: RunSpec,
    /// NIC links and servers of the job.
    links: u32,
    servers: u32,
    /// Bytes of one checkpoint.
    bytes: f64,
}

pub(crate) fn run(a: &GoodputArgs) -> Result<()> {
    let setup = a.setup.resolve()?;
    let r = &setup.resolved;
    let plan = Plan::new(&setup.model, &r.cluster, &r.strategy)?;
    let tokens = tokens_of(a, &plan)?;
    check_flags(a)?;
    let d = describe(a, &plan, tokens)?;
    let g = goodput::analyse(&d.spec, a.checkpoint_interval_s, a.trials, a.seed);
    if a.json {
        print_json(&goodput_json(&plan, &d, &g))
    } else {
        emit(&goodput_text(&plan, &d, &g))
    }
}

/// The run's tokens: `--tokens`, or PanGu-α 200B's for that model.
fn tokens_of(a: &GoodputArgs, plan: &Plan) -> Result<f64> {
    Ok(match a.tokens {
        Some(t) if t > 0.0 && t.is_finite() => t,
        Some(t) => bail!("--tokens {t}: give a positive token count, e.g. --tokens 3e11"),
        None if plan.model.name == "pangu-alpha-200b" => PANGU_200B_TOKENS,
        None => bail!(
            "--tokens: how many tokens does the {} run train on? (e.g. --tokens 3e11)",
            plan.model.name
        ),
    })
}

/// Refuses rates, bandwidths and times that are not positive (or negative for the restart).
fn check_flags(a: &GoodputArgs) -> Result<()> {
    for (name, v) in [
        ("--chip-mtbf-h", a.chip_mtbf_h),
        ("--link-mtbf-h", a.link_mtbf_h),
        ("--server-mtbf-h", a.server_mtbf_h),
        ("--checkpoint-interval-s", a.checkpoint_interval_s),
    ] {
        if let Some(x) = v {
            if !(x > 0.0 && x.is_finite()) {
                bail!("{name} {x}: give a positive number");
            }
        }
    }
    for (name, x) in [
        ("--storage-write-gbps", a.storage_write_gbps),
        ("--storage-read-gbps", a.storage_read_gbps),
    ] {
        if !(x > 0.0 && x.is_finite()) {
            bail!("{name} {x}: give a positive bandwidth in GB/s");
        }
    }
    if !(a.restart_s >= 0.0 && a.restart_s.is_finite()) {
        bail!(
            "--restart-s {}: give a non-negative number of seconds",
            a.restart_s
        );
    }
    if a.trials == 0 {
        bail!("--trials 0: the Monte Carlo check needs at least one run");
    }
    Ok(())
}

/// Simulates the plan's step and describes the whole run.
fn describe(a: &GoodputArgs, plan: &Plan, tokens: f64) -> Result<Described> {
    let step = pangu_sim::simulate(plan)?.report;
    let s = &plan.strategy;
    let tokens_per_step = f64::from(s.global_batch) * f64::from(plan.model.seq_len);
    let topo = &plan.cluster.topology;
    let servers = s.devices.div_ceil(topo.chips_per_server());
    let links = servers * topo.nics_per_server();
    let bytes = checkpoint_bytes(plan);
    let spec = RunSpec {
        step_s: step.step_time_s,
        steps: (tokens / tokens_per_step).ceil(),
        chips: s.devices,
        links,
        servers,
        mtbf: Mtbf {
            chip_h: a.chip_mtbf_h.unwrap_or(Mtbf::LLAMA3.chip_h),
            link_h: a.link_mtbf_h.unwrap_or(Mtbf::LLAMA3.link_h),
            server_h: a.server_mtbf_h.unwrap_or(Mtbf::LLAMA3.server_h),
        },
        checkpoint_s: bytes / (a.storage_write_gbps * 1e9),
        restart_s: a.restart_s + bytes / (a.storage_read_gbps * 1e9),
    };
    Ok(Described {
        tokens,
        spec,
        links,
        servers,
        bytes,
    })
}

fn goodput_json(plan: &Plan, d: &Described, g: &Goodput) -> Value {
    let spec = &d.spec;
    json!({
        "tool": tool_field(&(&plan.model, &plan.cluster.spec, &plan.strategy)),
        "model": plan.model.name,
        "cluster": plan.cluster.spec.name,
        "summary": plan.strategy.summary(),
        "tokens": d.tokens,
        "steps": spec.steps,
        "step_time_s": spec.step_s,
        "checkpoint_bytes": d.bytes,
        "checkpoint_write_s": spec.checkpoint_s,
        "restart_s": spec.restart_s,
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

fn goodput_text(plan: &Plan, d: &Described, g: &Goodput) -> String {
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
        "failures: one per {:.1} h for this job ({} chips, {} NIC links, {} servers at {:.0} / {:.0} / {:.0} h each); \
         checkpoint {:.2} TB written in {:.0} s, restart {:.0} s",
        g.mtbf_s / 3600.0,
        s.devices,
        d.links,
        d.servers,
        spec.mtbf.chip_h,
        spec.mtbf.link_h,
        spec.mtbf.server_h,
        d.bytes / 1e12,
        spec.checkpoint_s,
        spec.restart_s
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
