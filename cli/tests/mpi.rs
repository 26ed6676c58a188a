//! The MPI backend end to end (built with `--features mpi`; scripts/test.sh runs it):
//! `mpirun -np 4 pangu train --backend mpi` with data, optimizer, tensor and pipeline
//! parallelism gives the single-device losses within 1e-4, and a killed rank stops the whole
//! job quickly.
#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

/// The MPI tests run one at a time (each starts four processes on a small machine).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn inputs(name: &str) -> (std::path::PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("pangu-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.toml"),
        "name = \"mpi-test\"\nlayers = 2\nhidden = 32\nheads = 2\nffn = 128\nvocab = 2500\nseq_len = 32\n\
         query_layer = true\ndropout = 0.1\nglobal_batch = 8\n",
    )
    .unwrap();
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/zh_poetry_hans.txt"
    ))
    .unwrap();
    let cut = text[..40_000]
        .windows(2)
        .rposition(|w| w == b"\n\n")
        .unwrap()
        + 2;
    std::fs::write(dir.join("c.txt"), &text[..cut]).unwrap();
    let tok = dir.join("tok.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(["tokenizer", "train", "--vocab", "2500", "--corpus"])
        .arg(dir.join("c.txt"))
        .arg("--out")
        .arg(&tok)
        .output()
        .unwrap();
    succeeded(&out);
    let args = vec![
        "--model".to_string(),
        dir.join("m.toml").display().to_string(),
        "--corpus".into(),
        dir.join("c.txt").display().to_string(),
        "--tokenizer".into(),
        tok.display().to_string(),
    ];
    (dir, args)
}

/// Fails the test with the command's error output unless it succeeded.
fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn losses(stdout: &[u8]) -> Vec<f64> {
    let text = String::from_utf8_lossy(stdout);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    let v: serde_json::Value = serde_json::from_str(&text[start..]).unwrap();
    v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn mpirun(np: &str) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        np,
        env!("CARGO_BIN_EXE_pangu"),
    ]);
    c
}

#[test]
fn four_mpi_processes_match_one_device() {
    let _one_at_a_time = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (dir, args) = inputs("match");
    let one = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(["train", "--steps", "3", "--eval-every", "0", "--json"])
        .args(&args)
        .output()
        .unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    for plan in [
        "--dp 4 --opt-shard none --collective halving-doubling",
        "--dp 4 --opt-shard mindspore --collective halving-doubling",
        "--tp 2 --pp 2 --micro-batches 2 --schedule 1f1b",
        "--dp 2 --pp 2 --micro-batches 2 --schedule gpipe --opt-shard zero1",
        // Context parallelism (the K/V exchange programs over MPI), ring and all-gather, and a
        // vocabulary padded to 128 × tp (2500 -> 2560, the padded logits masked).
        "--cp 2 --dp 2 --opt-shard zero1",
        "--cp 2 --tp 2 --cp-comm all-gather --vocab-divisible-by 128",
    ] {
        let out = mpirun("4")
            .args(["train", "--backend", "mpi"])
            .args(plan.split(' '))
            .args(["--steps", "3", "--json"])
            .args(&args)
            .output()
            .unwrap();
        succeeded(&out);
        let (a, b) = (losses(&one.stdout), losses(&out.stdout));
        assert_eq!(a.len(), 3);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{plan}: {a:?} vs {b:?}");
        }
    }
    // A wrong process count is explained.
    let out = mpirun("2")
        .args(["train", "--backend", "mpi", "--dp", "4", "--steps", "1"])
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass -np 4"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_rank_stops_the_job() {
    let _one_at_a_time = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (dir, args) = inputs("kill");
    let mut child = mpirun("4")
        .args([
            "train",
            "--backend",
            "mpi",
            "--dp",
            "4",
            "--steps",
            "1000000",
            "--json",
        ])
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Kill one rank (the newest pangu process started by this mpirun).
    let status = Command::new("pkill")
        .args(["-9", "-n", "-f", &dir.display().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "no rank found to kill");
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the job did not stop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn calibration_measures_transfers_between_two_mpi_processes() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(["twin", "calibrate", "--quick", "--mpi", "--json"])
        .output()
        .unwrap();
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gb_s = v["mpi"]["gb_s"].as_f64().unwrap();
    let lat = v["mpi"]["latency_us"].as_f64().unwrap();
    assert!(gb_s > 0.01 && gb_s.is_finite(), "{gb_s} GB/s");
    assert!(lat > 0.0 && lat < 1e5, "{lat} us");
}

#[test]
fn every_collective_program_runs_exactly_over_mpi_for_groups_of_2_to_16() {
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // One mpirun per group size: each rank runs every program (4 kinds × 6 algorithms × its
    // placements) and checks its own messages and results against the program.
    for n in 2..=16 {
        let t = Instant::now();
        let out = mpirun(&n.to_string())
            .args(["twin", "comm-check", "--backend", "mpi", "--json"])
            .output()
            .unwrap();
        succeeded(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["failures"].as_array().map(Vec::len),
            Some(0),
            "n {n}: {v}"
        );
        assert!(v["programs_per_rank"].as_u64().unwrap() >= 24, "n {n}: {v}");
        eprintln!(
            "comm-check over {n} MPI ranks: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
}
