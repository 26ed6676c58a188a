//! `pangu train`: the CPU executor, on one device or on the distributed executor.

mod args;
mod bench;
mod dist;
mod inputs;
mod single;

use anyhow::{bail, Result};
use pangu_strategies::{Remat, StrategySpec};

pub(crate) use args::TrainArgs;
pub(crate) use inputs::default_corpus_path;

use crate::args::Backend;

pub(crate) fn run(a: &TrainArgs) -> Result<()> {
    let threads = a.threads.unwrap_or_else(inputs::threads_default);
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    if a.bench {
        return bench::run_bench(a, threads);
    }
    let spec = a.strategy.spec()?;
    a.backend.available()?;
    if on_executor(a, &spec)? {
        dist::run_dist(a, &spec)
    } else {
        single::run_single(a, &spec, threads)
    }
}

/// Whether the run goes to the distributed executor: under MPI, with more than one device,
/// from a sharded checkpoint, or with selective or every-k remat (one device is a plan too).
fn on_executor(a: &TrainArgs, spec: &StrategySpec) -> Result<bool> {
    if a.backend == Backend::Mpi {
        return Ok(true);
    }
    let devices = spec.dp.unwrap_or(1) * spec.tp.unwrap_or(1) * spec.pp.unwrap_or(1);
    let sharded_resume = match &a.resume {
        Some(dir) => pangu_trainer::sharded::is_sharded(dir)?,
        None => false,
    };
    let partial_remat = matches!(spec.remat, Some(Remat::Selective | Remat::Every(2..)));
    Ok(devices > 1 || sharded_resume || partial_remat)
}
