//! `pangu twin`: the digital-twin loop on this machine. `calibrate` measures the machine and
//! writes a hardware profile (the presets' TOML format) of N virtual devices sharing its cores.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::args::{load_model, Backend};
use crate::output::{emit, outln, print_json, table};

/// Options of `pangu twin`.
#[derive(Debug, Args)]
pub(crate) struct TwinArgs {
    #[command(subcommand)]
    command: TwinCommand,
}

#[derive(Debug, Subcommand)]
enum TwinCommand {
    /// Measure this machine (matrix products over the model's shapes, memory bandwidth, thread
    /// transfers, cores) and write a hardware profile of N virtual devices.
    Calibrate(CalibrateArgs),
    /// For each strategy: simulate it on the calibrated profile, run the executor for a few
    /// steps, and compare predicted with measured step time and memory.
    Check(CheckArgs),
    /// Run every collective program (each algorithm and kind, on one server and on virtual
    /// servers of 2 and 4 ranks) on this machine's ranks and check each rank's messages and
    /// results against the program: on threads, or as one rank of `mpirun -np N` with
    /// `--backend mpi`. Exits 1 when anything differs.
    CommCheck(CommCheckArgs),
    /// One rank of the MPI ping-pong `calibrate --mpi` starts under mpirun (rank 0 prints).
    #[command(hide = true)]
    MpiProbe {
        /// Bytes of the large message.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: usize,
        /// Round trips per size.
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

#[derive(Debug, Args)]
struct CommCheckArgs {
    /// Ranks (threads backend; under MPI the job's size).
    #[arg(long, default_value_t = 4)]
    ranks: usize,
    /// Threads in this process, or this process as one MPI rank.
    #[arg(long, value_enum, default_value_t = Backend::Threads)]
    backend: Backend,
    /// Elements of the test buffer.
    #[arg(long, default_value_t = 61)]
    len: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Model (small enough to train here).
    #[arg(long, default_value = "pangu-alpha-tiny")]
    model: String,
    /// Strategy files (default: a built-in set of 12 covering every dimension).
    #[arg(long, num_args = 1..)]
    strategies: Vec<PathBuf>,
    /// Executor steps per strategy (the first two are warm-up).
    #[arg(long, default_value_t = 7)]
    steps: u64,
    /// Runs of each strategy (round-robin over the strategies).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Which machine to compare: `typical` (the median probe against the median run: the
    /// machine as it was during the check, other tenants included) or `quiet` (the fastest
    /// probe against the fastest run: the machine without them; interference only slows).
    #[arg(long, value_enum, default_value_t = Estimate::Typical)]
    machine: Estimate,
    /// Fewer calibration repetitions.
    #[arg(long)]
    quick: bool,
    /// Write a PNG of predicted against measured step time.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The built-in strategies of `twin check` (global batch 8 of pangu-alpha-tiny).
const BUILT_IN: &[&str] = &[
    "dp = 1",
    "dp = 2",
    "dp = 2\nopt_shard = \"zero1\"",
    "tp = 2",
    "tp = 2\nseq_parallel = true",
    "pp = 2\nmicro_batches = 4\nschedule = \"1f1b\"",
    "pp = 2\nmicro_batches = 4\nschedule = \"gpipe\"",
    "pp = 2\nmicro_batches = 4\nschedule = \"interleaved:2\"",
    "dp = 1\nremat = \"full\"",
    "dp = 2\nremat = \"selective\"",
    "dp = 2\ntp = 2",
    "tp = 2\npp = 2\nmicro_batches = 4",
];

#[derive(Debug, Args)]
struct CalibrateArgs {
    /// Model whose shapes the products take.
    #[arg(long, default_value = "pangu-alpha-tiny")]
    model: String,
    /// Virtual devices the profile describes (the executor's ranks).
    #[arg(long, default_value_t = 2)]
    devices: u32,
    /// Sequences per micro-batch of the measured products.
    #[arg(long, default_value_t = 8)]
    micro_batch_size: u32,
    /// Write the profile here (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Also measure transfers between two MPI processes (starts `mpirun -np 2` of this
    /// binary; needs a build with `--features mpi` and Open MPI).
    #[arg(long)]
    mpi: bool,
    /// Print JSON (the measurements and the profile).
    #[arg(long)]
    json: bool,
}

/// The machine's memory from /proc/meminfo (24 GiB when unreadable).
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(24 << 30, |kb| kb * 1024)
}

pub(crate) fn run(a: &TwinArgs) -> Result<()> {
    match &a.command {
        TwinCommand::Calibrate(c) => calibrate(c),
        TwinCommand::Check(c) => check(c),
        TwinCommand::CommCheck(c) => comm_check(c),
        TwinCommand::MpiProbe { bytes, reps } => mpi_probe(*bytes, *reps),
    }
}

/// `pangu twin comm-check`: every rank's programs, summed up by rank 0.
fn comm_check(a: &CommCheckArgs) -> Result<()> {
    use pangu_trainer::comm::check::{check_programs, ProgramCheck};
    a.backend.available()?;
    let timeout = std::time::Duration::from_secs(60);
    let (results, ranks): (Vec<(usize, ProgramCheck)>, usize) = match a.backend {
        Backend::Threads => {
            if a.ranks == 0 {
                bail!("--ranks 0: a group needs at least one rank");
            }
            let comms = pangu_trainer::comm::threads::group(a.ranks, timeout);
            let len = a.len;
            let handles: Vec<_> = comms
                .into_iter()
                .map(|mut c| std::thread::spawn(move || check_programs(&mut c, len)))
                .collect();
            let mut out = Vec::new();
            for (r, h) in handles.into_iter().enumerate() {
                let res = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("rank {r} panicked"))?
                    .with_context(|| format!("rank {r}"))?;
                out.push((r, res));
            }
            (out, a.ranks)
        }
        Backend::Mpi => comm_check_mpi(a.len, timeout)?,
    };
    let Some((_, first)) = results.first() else {
        return Ok(());
    };
    let failures: Vec<String> = results
        .iter()
        .flat_map(|(_, c)| c.failures.clone())
        .collect();
    let messages: usize = results.iter().map(|(_, c)| c.messages).sum();
    if a.json {
        print_json(&json!({
            "ranks": ranks,
            "programs_per_rank": first.programs,
            "messages": messages,
            "failures": failures,
        }))?;
    } else {
        let mut o = String::new();
        outln!(
            o,
            "{} programs on {} ranks ({} messages{}): {}",
            first.programs,
            ranks,
            messages,
            if a.backend == Backend::Mpi {
                " of rank 0; each rank checked its own"
            } else {
                ""
            },
            if failures.is_empty() {
                "every rank sent and received what the program lists, and every result is right"
                    .to_string()
            } else {
                format!("{} mismatches", failures.len())
            }
        );
        for f in &failures {
            outln!(o, "  {f}");
        }
        emit(&o)?;
    }
    if !failures.is_empty() {
        bail!("{} of the checks failed", failures.len());
    }
    Ok(())
}

/// This process's rank of `comm-check` under mpirun: its own result (every rank checks its own
/// messages; a failing rank exits non-zero, which stops the job).
#[cfg(feature = "mpi")]
fn comm_check_mpi(
    len: usize,
    timeout: std::time::Duration,
) -> Result<(
    Vec<(usize, pangu_trainer::comm::check::ProgramCheck)>,
    usize,
)> {
    use pangu_trainer::comm::Communicator;
    let mut comm = pangu_trainer::comm::mpi_backend::init(timeout, 64 * len * 4 + (1 << 20))
        .context("MPI is already initialised")?;
    let rank = comm.rank();
    let r = pangu_trainer::comm::check::check_programs(&mut comm, len)
        .with_context(|| format!("rank {rank}"))?;
    if !r.failures.is_empty() {
        bail!("rank {rank}: {}", r.failures.join("; "));
    }
    comm.barrier()?;
    // Rank 0 speaks for the job (each rank checked its own messages).
    let size = comm.size();
    if rank == 0 {
        Ok((vec![(rank, r)], size))
    } else {
        Ok((Vec::new(), size))
    }
}

#[cfg(not(feature = "mpi"))]
fn comm_check_mpi(
    _: usize,
    _: std::time::Duration,
) -> Result<(
    Vec<(usize, pangu_trainer::comm::check::ProgramCheck)>,
    usize,
)> {
    bail!("this binary was built without MPI")
}

/// One compared strategy.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    strategy: String,
    devices: u32,
    predicted_step_s: f64,
    measured_step_s: f64,
    error: f64,
    /// Predicted and measured seconds per category (mean over devices).
    predicted_breakdown: pangu_strategies::report::Breakdown,
    measured_breakdown: pangu_strategies::report::Breakdown,
    predicted_bytes: u64,
    measured_bytes: u64,
    memory_error: f64,
    /// The quiet machine the prediction used: one thread's matrix rate (GFLOP/s) and the
    /// cores' worth the devices share.
    gflops: f64,
    shared_cores: f64,
    /// Element-wise bandwidth of one thread (GB/s) in that profile.
    stream_gb_s: f64,
    /// Each timed step: wall seconds, this process's CPU wait, steal, other processes.
    steps: Vec<pangu_trainer::cpustat::Window>,
    /// Steps of the fastest run whose interference (steal + other processes) stayed within
    /// the clean limit.
    clean_steps: usize,
    /// Median step of each run (s).
    runs_s: Vec<f64>,
}

/// A timed step is clean when other work took at most this share of the machine.
const CLEAN_INTERFERENCE: f64 = 0.05;
/// Probes of the machine before the runs (one more follows each run).
const PROBES: usize = 5;

/// Which machine `twin check` compares on a shared host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Estimate {
    /// Median probe, median run.
    Typical,
    /// Fastest probe, fastest run.
    Quiet,
}

/// The machine from repeated probes. Typical: the median of every figure. Quiet: the fastest
/// matrix rates and element-wise bandwidth seen (interference only slows them) and the median
/// of transfer rates and latencies (their noise goes both ways).
fn machine_of(
    probes: &[pangu_trainer::calibrate::Machine],
    how: Estimate,
) -> pangu_trainer::calibrate::Machine {
    type Field<'a> = &'a dyn Fn(&pangu_trainer::calibrate::Machine) -> f64;
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

fn check(a: &CheckArgs) -> Result<()> {
    use pangu_trainer::{bench, calibrate, data, dist, tokenizer::Tokenizer, train};
    if a.steps < 3 {
        bail!(
            "--steps {}: give at least 3 (two warm-up steps and one measured)",
            a.steps
        );
    }
    let cfg = load_model(&a.model)?;
    let specs: Vec<(String, pangu_strategies::StrategySpec)> = if a.strategies.is_empty() {
        BUILT_IN
            .iter()
            .map(|t| {
                Ok((
                    t.replace('\n', " "),
                    pangu_strategies::StrategySpec::from_toml(t, "built-in")?,
                ))
            })
            .collect::<Result<_>>()?
    } else {
        a.strategies
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read strategy file {}", p.display()))?;
                Ok((
                    p.display().to_string(),
                    pangu_strategies::StrategySpec::from_toml(&text, &p.display().to_string())?,
                ))
            })
            .collect::<Result<_>>()?
    };
    if !a.json {
        eprintln!("calibrating this machine…");
    }
    let rows_per_mb = 8 * cfg.seq_len as usize;
    let probe = |workers: u32| {
        calibrate::measure(
            cfg.hidden as usize,
            cfg.ffn as usize,
            cfg.vocab as usize,
            cfg.heads as usize,
            cfg.seq_len as usize,
            rows_per_mb,
            workers as usize,
            true,
        )
    };
    // Probes of the machine per device count (how much the cores give depends on how many
    // ranks share them): some before the runs and one after each run, so they span the same
    // time as the runs.
    let first_probes = if a.quick { 1 } else { PROBES };
    let mut probes: std::collections::BTreeMap<u32, Vec<calibrate::Machine>> = Default::default();
    // A slice of the corpus: enough samples for the steps, a tokenizer in seconds.
    let path = crate::train_cmd::default_corpus_path();
    let text = data::read_corpus(&path)?;
    let end = (0..=text.len().min(1_500_000))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let (tr, _) = data::split(&text[..end]);
    let tok = Tokenizer::train(tr, cfg.vocab as usize)?;
    let packed = data::Packed::new(&tok, tr, cfg.seq_len as usize);
    bench::set_threads(1);
    let repeats = a.repeats.max(1);
    struct Case {
        name: String,
        devices: u32,
        exec_plan: pangu_strategies::Plan,
        settings: train::Settings,
        /// (median step, result, clean steps) of each run, in run order.
        runs: Vec<(f64, dist::DistResult, usize)>,
    }
    let mut cases = Vec::new();
    for (name, spec) in &specs {
        let mut spec = spec.clone();
        spec.precision
            .get_or_insert(pangu_strategies::Precision::Fp32);
        spec.global_batch.get_or_insert(cfg.global_batch);
        let exec_plan = pangu_trainer::host::plan_for(&cfg, &spec).with_context(|| name.clone())?;
        let devices = exec_plan.strategy.devices;
        probes
            .entry(devices)
            .or_insert_with(|| (0..first_probes).map(|_| probe(devices)).collect());
        let mut settings = train::Settings::for_model(&cfg, a.steps);
        settings.batch = exec_plan.strategy.global_batch as usize;
        settings.micro_batches = exec_plan.strategy.micro_batches as usize;
        settings.dropout = 0.0;
        cases.push(Case {
            name: name.clone(),
            devices,
            exec_plan,
            settings,
            runs: Vec::new(),
        });
    }
    let dc = dist::DistConfig {
        timeout: std::time::Duration::from_secs(120),
        fail: None,
    };
    // Each run: the median of its timed steps (the clean ones where there are any). The
    // repeats go round-robin over the strategies, so a slow spell of the host (other tenants;
    // they come and go over tens of seconds) meets one run of a strategy rather than all of
    // them, and the fastest run is the one least disturbed.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for round in 1..=repeats {
        for c in &mut cases {
            let r = dist::train_threads(&c.exec_plan, &c.settings, &dc, &packed, a.steps)
                .with_context(|| c.name.clone())?;
            probes.entry(c.devices).or_default().push(probe(c.devices));
            let timed: Vec<(f64, pangu_trainer::cpustat::Window)> = r.step_s[2..]
                .iter()
                .enumerate()
                .map(|(i, &t)| (t, r.step_cpu.get(i + 2).copied().unwrap_or_default()))
                .collect();
            let clean: Vec<f64> = timed
                .iter()
                .filter(|(_, w)| w.interference() <= CLEAN_INTERFERENCE)
                .map(|(t, _)| *t)
                .collect();
            let n_clean = clean.len();
            let run = if clean.is_empty() {
                median(timed.iter().map(|(t, _)| *t).collect())
            } else {
                median(clean)
            };
            if !a.json {
                eprintln!(
                    "round {round}/{repeats}: {:<46} {:.3} s ({n_clean}/{} clean steps)",
                    c.name,
                    run,
                    timed.len()
                );
            }
            c.runs.push((run, r, n_clean));
        }
    }
    // The predictions: each strategy on the profile of its device count.
    let machines: std::collections::BTreeMap<u32, calibrate::Machine> = probes
        .iter()
        .map(|(&d, ps)| (d, machine_of(ps, a.machine)))
        .collect();
    let machine = machines.values().next().cloned();
    let mut rows = Vec::new();
    for mut c in cases {
        let runs_s: Vec<f64> = c.runs.iter().map(|r| r.0).collect();
        // The median run, or the fastest.
        c.runs.sort_by(|x, y| x.0.total_cmp(&y.0));
        let pick = match a.machine {
            Estimate::Typical => c.runs.len() / 2,
            Estimate::Quiet => 0,
        };
        if c.runs.is_empty() {
            continue;
        }
        let (measured, r, clean_steps) = c.runs.swap_remove(pick);
        let Some(m) = machines.get(&c.devices) else {
            continue;
        };
        let profile = calibrate::profile_toml(m, c.devices, memory_bytes());
        let cluster = pangu_hardware::Cluster::from_toml(&profile, "calibrated", None)?;
        let mut sim_spec = c.exec_plan.strategy.to_spec();
        sim_spec.devices = Some(c.devices);
        let (strategy, _) =
            pangu_strategies::strategy::resolve(&sim_spec, &sim_spec, cfg.global_batch, c.devices)?;
        let sim_plan = pangu_strategies::Plan::build(&cfg, &cluster, &strategy)?;
        let predicted = pangu_sim::simulate(&sim_plan)?.report;
        let measured_bytes = r.ranks.iter().map(|k| k.allocated_bytes).max().unwrap_or(0);
        let predicted_bytes = sim_plan.max_memory().total.0;
        let row = Row {
            strategy: c.name,
            devices: c.devices,
            predicted_step_s: predicted.step_time_s,
            measured_step_s: measured,
            error: predicted.step_time_s / measured - 1.0,
            predicted_breakdown: predicted.breakdown,
            measured_breakdown: r.report.breakdown,
            predicted_bytes,
            measured_bytes,
            memory_error: predicted_bytes as f64 / measured_bytes.max(1) as f64 - 1.0,
            gflops: m.gemm_gflops,
            shared_cores: m.parallel_speedup,
            stream_gb_s: m.stream_gb_s,
            steps: r.step_cpu.iter().skip(2).copied().collect(),
            clean_steps,
            runs_s,
        };
        if !a.json {
            eprintln!(
                "{:<46} predicted {:.3} s, measured {:.3} s ({:+.1} %)",
                row.strategy,
                row.predicted_step_s,
                row.measured_step_s,
                100.0 * row.error
            );
        }
        rows.push(row);
    }
    let mut abs: Vec<f64> = rows.iter().map(|r| r.error.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let median_abs_error = abs[abs.len() / 2];
    let worst = abs.last().copied().unwrap_or(0.0);
    let mut mem: Vec<f64> = rows.iter().map(|r| r.memory_error.abs()).collect();
    mem.sort_by(f64::total_cmp);
    if let Some(p) = &a.plot {
        plot(p, &rows)?;
    }
    if a.json {
        return print_json(&json!({
            "model": cfg.name,
            "machine": machine,
            "rows": rows,
            "median_abs_error": median_abs_error,
            "worst_abs_error": worst,
            "median_abs_memory_error": mem[mem.len() / 2],
        }));
    }
    let mut o = String::new();
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.strategy.clone(),
                r.devices.to_string(),
                format!("{:.3}", r.predicted_step_s),
                format!("{:.3}", r.measured_step_s),
                format!("{:+.1} %", 100.0 * r.error),
                format!("{:.1}", r.predicted_bytes as f64 / 1e6),
                format!("{:.1}", r.measured_bytes as f64 / 1e6),
                format!("{:+.1} %", 100.0 * r.memory_error),
                format!(
                    "{:.3}-{:.3}",
                    r.runs_s.iter().copied().fold(f64::INFINITY, f64::min),
                    r.runs_s.iter().copied().fold(0.0, f64::max)
                ),
                format!("{}/{}", r.clean_steps, r.steps.len()),
            ]
        })
        .collect();
    outln!(
        o,
        "{}",
        table(
            &[
                "strategy",
                "devices",
                "predicted s",
                "measured s",
                "error",
                "pred MB",
                "meas MB",
                "mem error",
                "runs s",
                "clean"
            ],
            &table_rows
        )
    );
    outln!(
        o,
        "step time: median |error| {:.1} %, worst {:.1} %; memory: median |error| {:.1} %",
        100.0 * median_abs_error,
        100.0 * worst,
        100.0 * mem[mem.len() / 2]
    );
    emit(&o)
}

fn plot(path: &std::path::Path, rows: &[Row]) -> Result<()> {
    use plotters::prelude::*;
    let max = rows
        .iter()
        .map(|r| r.predicted_step_s.max(r.measured_step_s))
        .fold(0.0, f64::max)
        * 1.1;
    crate::sweep_cmd::png_chart(
        path,
        (640, 600),
        "pangu twin check: step time",
        (0.0..max, 0.0..max),
        ("measured (s)", "predicted (s)"),
        |chart| {
            let err = |e| anyhow::anyhow!("{e:?}");
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (max, max)], &BLACK))
                .map_err(err)?;
            chart
                .draw_series(rows.iter().map(|r| {
                    Circle::new((r.measured_step_s, r.predicted_step_s), 5, BLUE.filled())
                }))
                .map_err(err)?;
            Ok(())
        },
    )
}

/// Transfers between two MPI processes: (GB/s, one-way µs).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct MpiTransfer {
    gb_s: f64,
    latency_us: f64,
}

#[cfg(feature = "mpi")]
fn mpi_probe(bytes: usize, reps: usize) -> Result<()> {
    use pangu_trainer::comm::Communicator;
    let mut comm = pangu_trainer::comm::mpi_backend::init(
        std::time::Duration::from_secs(60),
        2 * bytes + (1 << 20),
    )
    .context("MPI is already initialised")?;
    if comm.size() != 2 {
        bail!(
            "the MPI probe needs exactly 2 processes, mpirun started {}",
            comm.size()
        );
    }
    let lead = comm.rank() == 0;
    let (gb_s, latency_us) =
        pangu_trainer::calibrate::transfer_between(&mut comm, usize::from(lead), bytes, reps, lead);
    if lead {
        println!(
            "{}",
            serde_json::to_string(&MpiTransfer { gb_s, latency_us })?
        );
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn mpi_probe(_: usize, _: usize) -> Result<()> {
    bail!("this binary was built without MPI: build with `cargo build --release --features mpi`")
}

/// Runs the MPI probe under `mpirun -np 2`.
fn measure_mpi(quick: bool) -> Result<MpiTransfer> {
    if !cfg!(feature = "mpi") {
        bail!("--mpi: this binary was built without MPI; build it with `cargo build --release -p pangu-cli --features mpi` (needs Debian's libopenmpi-dev, openmpi-bin and libclang-dev)");
    }
    let exe = std::env::current_exe().context("cannot find this program to start under mpirun")?;
    let bytes = if quick { 1 << 20 } else { 8 << 20 };
    let out = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .arg(exe)
        .args(["twin", "mpi-probe", "--bytes", &bytes.to_string(), "--reps"])
        .arg(if quick { "8" } else { "30" })
        .output()
        .context("--mpi: cannot start mpirun (install Open MPI: openmpi-bin)")?;
    if !out.status.success() {
        bail!(
            "--mpi: the MPI probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("--mpi: unexpected probe output {text:?}"))
}

fn calibrate(a: &CalibrateArgs) -> Result<()> {
    if a.devices == 0 || a.devices > 1024 {
        bail!("--devices {}: give 1 to 1024 virtual devices", a.devices);
    }
    if a.micro_batch_size == 0 {
        bail!("--micro-batch-size 0: a product needs at least one sequence");
    }
    let cfg = load_model(&a.model)?;
    let rows = (a.micro_batch_size * cfg.seq_len) as usize;
    let m = pangu_trainer::calibrate::measure(
        cfg.hidden as usize,
        cfg.ffn as usize,
        cfg.vocab as usize,
        cfg.heads as usize,
        cfg.seq_len as usize,
        rows,
        a.devices as usize,
        a.quick,
    );
    let profile = pangu_trainer::calibrate::profile_toml(&m, a.devices, memory_bytes());
    // The profile must read back as a cluster.
    pangu_hardware::Cluster::from_toml(&profile, "calibrated profile", None)
        .context("the calibrated profile does not read back as a cluster (a bug)")?;
    if let Some(p) = &a.out {
        std::fs::write(p, &profile).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let mpi = if a.mpi {
        Some(measure_mpi(a.quick)?)
    } else {
        None
    };
    if a.json {
        return print_json(
            &json!({"machine": m, "mpi": mpi, "profile": profile, "devices": a.devices}),
        );
    }
    let mut o = String::new();
    let rows: Vec<Vec<String>> = m
        .gemm
        .iter()
        .map(|g| {
            vec![
                format!("{} × {} × {}", g.m, g.k, g.n),
                format!("{:.1}", g.gflops),
            ]
        })
        .collect();
    outln!(o, "matrix products of {} (one thread):", cfg.name);
    outln!(o, "{}", table(&["m × k × n", "GFLOP/s"], &rows));
    outln!(
        o,
        "median {:.1} GFLOP/s; attention {:.1} GFLOP/s; {} cores ({} threads at once: {:.2}× one thread); element-wise {:.1} GB/s; thread transfers {:.2} GB/s, {:.1} µs",
        m.gemm_gflops,
        m.attention_gflops,
        m.cores,
        m.workers,
        m.parallel_speedup,
        m.stream_gb_s,
        m.transfer_gb_s,
        m.transfer_latency_us
    );
    if let Some(t) = mpi {
        outln!(
            o,
            "MPI transfers between two processes: {:.2} GB/s, {:.1} µs",
            t.gb_s,
            t.latency_us
        );
    }
    match &a.out {
        Some(p) => outln!(
            o,
            "profile of {} devices written to {}",
            a.devices,
            p.display()
        ),
        None => outln!(o, "{profile}"),
    }
    emit(&o)
}
