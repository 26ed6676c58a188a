//! `pangu train` on the distributed executor: the strategy's plan on this machine, on threads
//! or MPI processes, resumable from any checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use pangu_model::ModelConfig;
use pangu_strategies::{Plan, Remat, StrategySpec};
use pangu_trainer::bench::{self};
use pangu_trainer::data;
use pangu_trainer::dist::{self, DistConfig, DistResult};
use pangu_trainer::host;
use pangu_trainer::sharded::Loaded;
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::Settings;
use serde_json::json;

use super::args::TrainArgs;
use super::inputs::{
    base_settings, default_corpus, save_report, threads_default, tokenizer_for, train_model,
};
use crate::args::Backend;
use crate::output::{emit, outln};

/// `pangu train` with more than one device: the strategy's plan on this machine (one virtual
/// device per rank), executed on threads or MPI processes.
pub(super) fn run_dist(a: &TrainArgs, spec: &StrategySpec) -> Result<()> {
    // Ranks are threads or processes; each computes on one core's worth of kernels.
    bench::set_threads(1);
    // A checkpoint of any plan (or of one device) resumes under the strategy given here, or
    // under its own when none is given: the ranks cut their parts from the whole state.
    let loaded = match &a.resume {
        Some(dir) => Some(pangu_trainer::sharded::load_whole(dir)?),
        None => None,
    };
    let (cfg, spec, mut s) = match &loaded {
        Some(l) => resumed_inputs(a, l, spec)?,
        None => {
            let (cfg, batch) = train_model(a, spec)?;
            let mut spec = spec.clone();
            spec.global_batch = Some(batch);
            let s = base_settings(a, &cfg);
            (cfg, spec, s)
        }
    };
    let plan = host::plan_on(&cfg, &spec, a.virtual_servers)?;
    let st = &plan.strategy;
    // The plan checked each device's memory; the settings follow it.
    s.batch = st.global_batch as usize;
    s.micro_batches = st.micro_batches as usize;
    s.remat = st.remat == Remat::Full;
    host::check_plan(&plan, &s)?;
    let corpus_path = a.corpus.clone().unwrap_or_else(default_corpus);
    let text = data::read_corpus(&corpus_path)?;
    let (train_text, _) = data::split(&text);
    let tok = match &loaded {
        Some(l) => checkpoint_tokenizer(l)?,
        None => tokenizer_for(a, &cfg, train_text)?,
    };
    let packed = data::Packed::new(&tok, train_text, cfg.seq_len as usize);
    let Some(r) = execute_plan(a, &plan, &s, &packed, &tok, loaded.as_ref())? else {
        // Under MPI only rank 0 reports.
        return Ok(());
    };
    let start = loaded.as_ref().map_or(0, |l| l.step);
    let tokens = (s.batch as u64 * (s.steps - start) * u64::from(cfg.seq_len)) as f64;
    let resumed_from = loaded.as_ref().map(|l| l.step);
    let report = dist_report(a.backend, &plan, &r, s.steps, resumed_from, tokens);
    let inputs = (
        &plan.model,
        &plan.strategy,
        &s,
        format!("{:016x}", tok.hash()),
    );
    if save_report(a, &inputs, report)? {
        return Ok(());
    }
    emit(&dist_summary(&r, start, tokens, a.out.as_deref()))
}

/// The model, strategy and settings of a resumed distributed run: the checkpoint's settings
/// (with --steps if given) and global batch, under the strategy given here or, when none is,
/// the checkpoint's own.
pub(super) fn resumed_inputs(
    a: &TrainArgs,
    l: &Loaded,
    spec: &StrategySpec,
) -> Result<(ModelConfig, StrategySpec, Settings)> {
    let mut s: Settings = serde_json::from_value(l.settings.clone())
        .with_context(|| format!("{}: settings", l.dir.display()))?;
    if let Some(steps) = a.steps {
        s.steps = steps;
    }
    let mut spec = spec.clone();
    if spec == StrategySpec::default() {
        if let Some(old) = &l.strategy {
            spec = old.to_spec();
            spec.devices = None;
        }
    }
    if spec.global_batch.is_some_and(|g| g as usize != s.batch) {
        bail!(
            "the checkpoint trained with a global batch of {}; a resumed run keeps it (drop --global-batch)",
            s.batch
        );
    }
    spec.global_batch = Some(s.batch as u32);
    if spec.seq_len.is_some_and(|n| n != l.model.seq_len) {
        bail!(
            "the checkpoint trained at {} tokens per sample; a resumed run keeps it (drop --seq-len)",
            l.model.seq_len
        );
    }
    Ok((l.model.clone(), spec, s))
}

/// The tokenizer stored with a checkpoint, checked against its manifest's hash.
pub(super) fn checkpoint_tokenizer(l: &Loaded) -> Result<Tokenizer> {
    let t = Tokenizer::from_json(&l.tokenizer_json, &l.dir.join("tokenizer.json"))?;
    if format!("{:016x}", t.hash()) != l.tokenizer_hash {
        bail!(
            "{}: the tokenizer does not match the manifest's hash",
            l.dir.display()
        );
    }
    Ok(t)
}

/// Runs the plan to `s.steps` on threads or MPI processes, from `loaded` if given, with
/// sharded checkpoints in --out, after a line on stderr describing the run. `None` on the MPI
/// ranks other than 0.
pub(super) fn execute_plan(
    a: &TrainArgs,
    plan: &Plan,
    s: &Settings,
    packed: &data::Packed,
    tok: &Tokenizer,
    loaded: Option<&Loaded>,
) -> Result<Option<DistResult>> {
    let steps = s.steps;
    if let Some(l) = loaded {
        if l.step >= steps {
            bail!(
                "the checkpoint is at step {} and the run ends at step {steps}: pass a larger --steps",
                l.step
            );
        }
    }
    let save = a.out.as_ref().map(|o| dist::Save {
        dir: o.clone(),
        every: a.checkpoint_every,
        tokenizer_json: tok.to_json(),
        tokenizer_hash: format!("{:016x}", tok.hash()),
    });
    let io = dist::Io {
        resume: loaded.map(|l| (l.step, &l.state)),
        save: save.as_ref(),
    };
    let dc = DistConfig {
        timeout: std::time::Duration::from_secs_f64(a.comm_timeout.max(0.001)),
        fail: None,
    };
    if !a.json {
        let st = &plan.strategy;
        eprintln!(
            "model {}: dp {} × tp {} × pp {} ({} schedule, {} micro-batches of {}), optimizer sharding {}, \
             remat {}; {} ranks on {} ({} cores here), collectives {}, fp32",
            plan.model.name,
            st.dp,
            st.tp,
            st.pp,
            st.schedule,
            st.micro_batches,
            st.micro_batch_size,
            st.opt_shard,
            st.remat,
            plan.mesh.size(),
            a.backend,
            threads_default(),
            collectives_line(plan)
        );
    }
    if a.backend == Backend::Mpi {
        mpi_rank(plan, s, &dc, packed, steps, io)
    } else {
        Ok(Some(dist::train_threads_with(
            plan, s, &dc, packed, steps, io,
        )?))
    }
}

/// The JSON report of a distributed run to step `steps` (`tokens` trained).
pub(super) fn dist_report(
    backend: Backend,
    plan: &Plan,
    r: &DistResult,
    steps: u64,
    resumed_from: Option<u64>,
    tokens: f64,
) -> serde_json::Value {
    let st = &plan.strategy;
    json!({
        "model": plan.model.name,
        "strategy": st,
        "dp": st.dp,
        "tp": st.tp,
        "pp": st.pp,
        "schedule": st.schedule.to_string(),
        "opt_shard": st.opt_shard.to_string(),
        "remat": st.remat.to_string(),
        "collectives": plan.group_algorithms().iter().map(|(g, n, a)| json!({"group": g, "size": n, "algorithm": a.to_string()})).collect::<Vec<_>>(),
        "backend": backend,
        "steps": steps,
        "losses": r.losses,
        "step_s": r.step_s,
        "tokens_per_s": tokens / r.wall_s.max(1e-9),
        "wall_s": r.wall_s,
        "ranks": r.ranks,
        "step_report": r.report,
        "precision": "fp32",
        "resumed_from": resumed_from,
    })
}

/// The text of a distributed run: the losses, the measured step per rank and the throughput.
pub(super) fn dist_summary(r: &DistResult, start: u64, tokens: f64, out: Option<&Path>) -> String {
    let mut o = String::new();
    for (i, l) in r.losses.iter().enumerate() {
        outln!(o, "step {}: loss {:.4}", start + i as u64 + 1, l);
    }
    if let Some(dir) = out {
        outln!(o, "sharded checkpoints in {}", dir.display());
    }
    outln!(
        o,
        "{:>4} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "rank",
        "stage",
        "compute",
        "tp_comm",
        "pp_comm",
        "bubble",
        "dp_comm",
        "opt_comm",
        "idle",
        "bytes"
    );
    for (d, rk) in r.report.devices.iter().zip(&r.ranks) {
        let b = &d.breakdown;
        outln!(
            o,
            "{:>4} {:>5} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>12}",
            rk.rank,
            rk.stage,
            b.compute,
            b.tp_comm,
            b.pp_comm,
            b.bubble,
            b.dp_comm,
            b.opt_comm,
            b.idle,
            rk.allocated_bytes
        );
    }
    outln!(
        o,
        "measured step {:.3} s (seconds per step per device above; MFU {:.3} of the cores' fp32 peak)",
        r.report.step_time_s,
        r.report.mfu
    );
    outln!(
        o,
        "{:.0} tokens/s over {:.1} s",
        tokens / r.wall_s.max(1e-9),
        r.wall_s
    );
    o
}

/// This process's part of an MPI run: `Some` on rank 0 (which reports), `None` elsewhere.
#[cfg(feature = "mpi")]
pub(super) fn mpi_rank(
    plan: &Plan,
    s: &Settings,
    dc: &DistConfig,
    packed: &data::Packed,
    steps: u64,
    io: dist::Io<'_>,
) -> Result<Option<DistResult>> {
    let (rank, r) = dist::train_mpi(plan, s, dc, packed, steps, io)?;
    Ok((rank == 0).then_some(r))
}

#[cfg(not(feature = "mpi"))]
pub(super) fn mpi_rank(
    _: &Plan,
    _: &Settings,
    _: &DistConfig,
    _: &data::Packed,
    _: u64,
    _: dist::Io<'_>,
) -> Result<Option<DistResult>> {
    bail!("this binary was built without MPI")
}

/// The plan's algorithm per group, e.g. `tp 2 ring, dp 4 halving-doubling`.
pub(crate) fn collectives_line(plan: &Plan) -> String {
    let v: Vec<String> = plan
        .group_algorithms()
        .into_iter()
        .map(|(g, n, a)| format!("{} {n} {a}", g.name()))
        .collect();
    if v.is_empty() {
        "none (one device per group)".into()
    } else {
        v.join(", ")
    }
}
