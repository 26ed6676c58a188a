//! Every example input file in examples/ runs with the command its header names, and the
//! flags whose spelling changed still work with a warning.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

/// Runs `pangu` in the repository root (the examples' paths are relative to it).
fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(args)
        .output()
        .expect("run pangu")
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = pangu(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_example_file_is_run_here() {
    // A new example file needs a line in one of the tests below.
    let known = [
        "faults.toml",
        "job-b.toml",
        "llama-3-8b.config.json",
        "strategy.toml",
        "pangu-alpha-13b.check.toml",
        "pangu-alpha-2.6b.check.toml",
        "pangu-alpha-200b.check.toml",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            known.contains(&name.as_str()),
            "examples/{name} has no test"
        );
    }
}

#[test]
fn strategy_file_plans_as_its_keys_say() {
    let v = ok_json(&[
        "plan",
        "--model",
        "pangu-alpha-13b",
        "--cluster",
        "ascend910:1024",
        "--strategy",
        "examples/strategy.toml",
        "--json",
    ]);
    let s = &v["strategy"];
    assert_eq!((s["tp"].as_u64(), s["pp"].as_u64()), (Some(8), Some(4)));
    assert_eq!(s["dp"].as_u64(), Some(32));
    assert_eq!(s["global_batch"].as_u64(), Some(1024));
}

#[test]
fn hugging_face_config_plans_on_eight_h100s() {
    // The README's command for this file.
    let v = ok_json(&[
        "plan",
        "--model",
        "examples/llama-3-8b.config.json",
        "--cluster",
        "dgx-h100:8",
        "--tp",
        "8",
        "--global-batch",
        "8",
        "--seq-len",
        "8192",
        "--json",
    ]);
    assert_eq!(v["devices"], 8);
    assert_eq!(v["strategy"]["tp"].as_u64(), Some(8));
    let params = v["params"].as_f64().unwrap();
    assert!((params - 8.03e9).abs() / 8.03e9 < 0.005, "{params}");
    assert_eq!(v["fits"], true);
}

#[test]
fn faults_file_slows_the_default_step() {
    // On 256 of the chips (dp 2) to keep the test short; the ranks and links it names exist.
    let v = ok_json(&[
        "simulate",
        "--faults",
        "examples/faults.toml",
        "--devices",
        "256",
        "--json",
    ]);
    let slowdown = v["fault_slowdown"].as_f64().unwrap();
    assert!(slowdown > 0.0, "{slowdown}");
}

#[test]
fn shared_job_file_runs_beside_the_first() {
    let out = pangu(&[
        "simulate",
        "--devices",
        "1024",
        "--pp",
        "8",
        "--share",
        "examples/job-b.toml",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("two jobs on"), "{text}");
}

#[test]
fn check_files_pass() {
    let out = pangu(&[
        "check",
        "examples/pangu-alpha-13b.check.toml",
        "examples/pangu-alpha-2.6b.check.toml",
        "examples/pangu-alpha-200b.check.toml",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn old_spellings_work_with_a_warning() {
    let out = pangu(&["twin", "check", "--strategies", "/nonexistent.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--strategies is now --strategy"), "{err}");
    // It reached the command (which cannot read the file), not a usage error.
    assert_eq!(out.status.code(), Some(1), "{err}");
}

#[test]
fn sweep_and_tokenizer_speak_json() {
    let v = ok_json(&[
        "sweep",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "ascend910:8",
        "--vary",
        "strategy.tp=2,4",
        "--json",
    ]);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["values"]["strategy.tp"], "2");
    assert!(points[0]["step_time_s"].as_f64().is_some() || points[0]["error"].is_string());
    assert!(v["tool"]["input_hash"].is_string());
}
