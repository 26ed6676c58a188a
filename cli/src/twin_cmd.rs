//! `pangu twin`: the digital-twin loop on this machine. `calibrate` measures the machine and
//! writes a hardware profile (the presets' TOML format) of N virtual devices sharing its cores.
//! The loop itself is `pangu_twin`'s; this module parses the flags and presents the results.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use pangu_twin::{CheckReport, CommCheck, Progress, TwinError};
use serde_json::json;

use crate::args::{load_model, Backend};
use crate::flag_enums::{lenient, MachineFlag};
use crate::output::{emit, outln, print_json, table, tool_field};

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
    /// `--backend mpi`. Exits with code 4 when anything differs.
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
    /// Strategy files (default: a built-in set of 12 covering every dimension); repeatable,
    /// or several after one flag.
    #[arg(long = "strategy", num_args = 1.., value_name = "FILE")]
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
    #[arg(long, value_parser = lenient::<MachineFlag>(), default_value = "typical")]
    machine: MachineFlag,
    /// Fewer calibration repetitions.
    #[arg(long)]
    quick: bool,
    /// Write a PNG of predicted against measured step time.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A gate: exit with code 4 when the median |error| of step time exceeds this fraction
    /// (e.g. 0.15), after printing the report.
    #[arg(long, value_name = "FRACTION")]
    max_median_error: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

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

pub(crate) fn run(a: &TwinArgs) -> Result<()> {
    match &a.command {
        TwinCommand::Calibrate(c) => calibrate(c),
        TwinCommand::Check(c) => check(c),
        TwinCommand::CommCheck(c) => comm_check(c),
        TwinCommand::MpiProbe { bytes, reps } => mpi_probe(*bytes, *reps),
    }
}

/// The library's refusal of a setting, in the words of the flag that gave it.
fn flag_error(e: TwinError) -> anyhow::Error {
    match e {
        TwinError::TooFewSteps { steps } => {
            anyhow!("--steps {steps}: give at least 3 (two warm-up steps and one measured)")
        }
        TwinError::Devices { devices } => anyhow!(
            "--devices {devices}: give 1 to {} virtual devices",
            pangu_twin::profile::MAX_DEVICES
        ),
        TwinError::EmptyMicroBatch => {
            anyhow!("--micro-batch-size 0: a product needs at least one sequence")
        }
        TwinError::NoRanks => anyhow!("--ranks 0: a group needs at least one rank"),
        e => e.into(),
    }
}

/// `pangu twin comm-check`: every rank's programs, summed up by rank 0.
fn comm_check(a: &CommCheckArgs) -> Result<()> {
    a.backend.available()?;
    let summary = match a.backend {
        Backend::Threads => {
            Some(pangu_twin::comm_check::on_threads(a.ranks, a.len).map_err(flag_error)?)
        }
        Backend::Mpi => pangu_twin::comm_check::on_mpi(a.len)?,
    };
    // Under MPI only rank 0 speaks for the job.
    let Some(c) = summary else {
        return Ok(());
    };
    if a.json {
        print_json(&json!({
            "tool": tool_field(&(a.ranks, a.backend, a.len)),
            "backend": a.backend,
            "passed": c.passed(),
            "ranks": c.ranks,
            "programs_per_rank": c.programs_per_rank,
            "messages": c.messages,
            "failures": c.failures,
        }))?;
    } else {
        emit(&comm_check_text(&c, a.backend))?;
    }
    if !c.passed() {
        return Err(crate::exit::gate_failed(format!(
            "{} of the checks failed",
            c.failures.len()
        )));
    }
    Ok(())
}

fn comm_check_text(c: &CommCheck, backend: Backend) -> String {
    let mut o = String::new();
    outln!(
        o,
        "{} programs on {} ranks ({} messages{}): {}",
        c.programs_per_rank,
        c.ranks,
        c.messages,
        if backend == Backend::Mpi {
            " of rank 0; each rank checked its own"
        } else {
            ""
        },
        if c.passed() {
            "every rank sent and received what the program lists, and every result is right"
                .to_string()
        } else {
            format!("{} mismatches", c.failures.len())
        }
    );
    for f in &c.failures {
        outln!(o, "  {f}");
    }
    o
}

/// `pangu twin check`: the library's check, its progress on stderr, then the table or JSON.
fn check(a: &CheckArgs) -> Result<()> {
    if let Some(f) = a.max_median_error {
        if !(f.is_finite() && f >= 0.0) {
            bail!("--max-median-error {f}: give a fraction ≥ 0, e.g. 0.15 for 15 %");
        }
    }
    let settings = pangu_twin::CheckSettings {
        steps: a.steps,
        repeats: a.repeats,
        machine: a.machine.into(),
        quick: a.quick,
        corpus: crate::train_cmd::default_corpus_path(),
    };
    let cfg = load_model(&a.model)?;
    let strategies = if a.strategies.is_empty() {
        pangu_twin::strategies::built_in()?
    } else {
        pangu_twin::strategies::from_files(&a.strategies)?
    };
    let quiet = a.json;
    let report = pangu_twin::check(&cfg, &strategies, &settings, &mut |p| {
        if !quiet {
            print_progress(p);
        }
    })
    .map_err(flag_error)?;
    if let Some(p) = &a.plot {
        plot(p, &report.rows)?;
    }
    if a.json {
        let specs: Vec<_> = strategies.iter().map(|s| (&s.name, &s.spec)).collect();
        let inputs = (
            &cfg,
            specs,
            a.steps,
            a.repeats,
            format!("{:?}", a.machine),
            a.quick,
        );
        print_json(&json!({
            "tool": tool_field(&inputs),
            "model": report.model,
            "machine": report.machine,
            "rows": report.rows,
            "median_abs_error": report.median_abs_error,
            "worst_abs_error": report.worst_abs_error,
            "median_abs_memory_error": report.median_abs_memory_error,
            "max_median_error": a.max_median_error,
            "passed": a.max_median_error.is_none_or(|f| report.median_abs_error <= f),
        }))?;
    } else {
        emit(&check_table(&report))?;
    }
    match a.max_median_error {
        Some(f) if report.median_abs_error > f => Err(crate::exit::gate_failed(format!(
            "median |error| of step time {:.1} % is over --max-median-error {:.1} %",
            100.0 * report.median_abs_error,
            100.0 * f
        ))),
        _ => Ok(()),
    }
}

/// One line on stderr per step of `twin check`.
fn print_progress(p: Progress<'_>) {
    match p {
        Progress::Calibrating => eprintln!("calibrating this machine…"),
        Progress::Ran {
            round,
            repeats,
            strategy,
            step_s,
            clean_steps,
            timed_steps,
        } => eprintln!(
            "round {round}/{repeats}: {strategy:<46} {step_s:.3} s ({clean_steps}/{timed_steps} clean steps)"
        ),
        Progress::Compared(row) => eprintln!(
            "{:<46} predicted {:.3} s, measured {:.3} s ({:+.1} %)",
            row.strategy,
            row.predicted_step_s,
            row.measured_step_s,
            100.0 * row.error
        ),
    }
}

/// The comparison table and its summary line.
fn check_table(report: &CheckReport) -> String {
    let rows: Vec<Vec<String>> = report
        .rows
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
    let mut o = String::new();
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
            &rows
        )
    );
    outln!(
        o,
        "step time: median |error| {:.1} %, worst {:.1} %; memory: median |error| {:.1} %",
        100.0 * report.median_abs_error,
        100.0 * report.worst_abs_error,
        100.0 * report.median_abs_memory_error
    );
    o
}

fn plot(path: &std::path::Path, rows: &[pangu_twin::Row]) -> Result<()> {
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
            let err = |e| anyhow!("{e:?}");
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

/// One rank of the MPI probe; rank 0 prints the transfer as a JSON line.
fn mpi_probe(bytes: usize, reps: usize) -> Result<()> {
    let size = pangu_twin::mpi::ProbeSize { bytes, reps };
    if let Some(t) = pangu_twin::mpi::probe_rank(size)? {
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}

/// Runs the MPI probe (this program's `twin mpi-probe`) under `mpirun -np 2`.
fn measure_mpi(quick: bool) -> Result<pangu_twin::MpiTransfer> {
    let exe = std::env::current_exe().context("cannot find this program to start under mpirun")?;
    let size = pangu_twin::mpi::ProbeSize::new(quick);
    let args = [
        "twin".to_string(),
        "mpi-probe".into(),
        "--bytes".into(),
        size.bytes.to_string(),
        "--reps".into(),
        size.reps.to_string(),
    ];
    pangu_twin::mpi::measure(&exe, args).context("--mpi")
}

/// `pangu twin calibrate`: the library's calibration, the profile written or printed.
fn calibrate(a: &CalibrateArgs) -> Result<()> {
    let cfg = load_model(&a.model)?;
    let settings = pangu_twin::CalibrationSettings {
        devices: a.devices,
        micro_batch_size: a.micro_batch_size,
        quick: a.quick,
    };
    let c = pangu_twin::calibrate(&cfg, &settings).map_err(flag_error)?;
    let profile = &c.profile.toml;
    if let Some(p) = &a.out {
        std::fs::write(p, profile).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let mpi = if a.mpi {
        Some(measure_mpi(a.quick)?)
    } else {
        None
    };
    if a.json {
        let inputs = (&cfg, a.devices, a.micro_batch_size, a.quick, a.mpi);
        return print_json(&json!({
            "tool": tool_field(&inputs),
            "model": cfg.name,
            "machine": c.machine,
            "mpi": mpi,
            "profile": profile,
            "out": a.out,
            "devices": a.devices,
        }));
    }
    emit(&calibration_text(a, &cfg.name, &c, mpi))
}

/// The measurements and the profile (or where it was written).
fn calibration_text(
    a: &CalibrateArgs,
    model: &str,
    c: &pangu_twin::Calibration,
    mpi: Option<pangu_twin::MpiTransfer>,
) -> String {
    let m = &c.machine;
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
    outln!(o, "matrix products of {model} (one thread):");
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
        None => outln!(o, "{}", c.profile.toml),
    }
    o
}
