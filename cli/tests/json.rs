//! Every command's `--json` on a cheap input: stdout is one JSON object with the fields the text
//! output shows (numbers as numbers, fractions as fractions, seconds and bytes plain) and the
//! `tool` field; and the exit codes of README's table, each case at least once.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::trainer_files;
use serde_json::Value;

/// Runs `pangu` in the repository root (the examples' and data's paths are relative to it).
fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(args)
        .output()
        .expect("run pangu")
}

/// Stdout as JSON, with this exit code.
fn json_with_code(args: &[&str], code: i32) -> Value {
    let out = pangu(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ok_json(args: &[&str]) -> Value {
    json_with_code(args, 0)
}

/// Fails with this exit code, saying each needle on stderr.
fn fails_with_code(args: &[&str], code: i32, needles: &[&str]) {
    let out = pangu(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

/// The `tool` field every command's JSON carries.
fn has_tool(v: &Value) {
    assert_eq!(v["tool"]["name"], "pangu", "{v}");
    assert_eq!(v["tool"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["tool"]["input_hash"].as_str().unwrap().len(), 16);
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn fraction(v: &Value) -> f64 {
    let x = num(v);
    assert!((0.0..=1.0).contains(&x), "{x} is not a fraction");
    x
}

/// A fresh temporary folder for one test.
fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pangu-json-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SMALL: [&str; 4] = ["--model", "pangu-alpha-350m", "--cluster", "ascend910:8"];

#[test]
fn plan_json() {
    let v = ok_json(&[&["plan"][..], &SMALL[..], &["--tp", "2", "--json"]].concat());
    has_tool(&v);
    assert_eq!(v["devices"], 8);
    assert_eq!(v["fits"], true);
    assert_eq!(v["strategy"]["tp"], 2);
    assert_eq!(v["strategy"]["dp"], 4);
    assert!((num(&v["params"]) - 345.4e6).abs() < 1e6, "{}", v["params"]);
    let used = num(&v["memory"]["max_bytes_per_device"]);
    assert!(used > 0.0 && used < num(&v["memory"]["capacity_bytes"]));
    fraction(&v["bubble_fraction"]);
}

#[test]
fn plan_that_does_not_fit_reports_then_exits_3() {
    // The report comes first (with fits false), then exit code 3.
    let v = json_with_code(
        &["plan", "--opt-shard", "none", "--remat", "none", "--json"],
        3,
    );
    assert_eq!(v["fits"], false);
    assert!(num(&v["memory"]["max_bytes_per_device"]) > num(&v["memory"]["capacity_bytes"]));
}

#[test]
fn simulate_json() {
    let v = ok_json(&[&["simulate"][..], &SMALL[..], &["--tp", "2", "--json"]].concat());
    has_tool(&v);
    assert_eq!(v["devices"], 8);
    let step = num(&v["step_time_s"]);
    assert!(step > 0.0 && step < 100.0, "{step}");
    let mfu = fraction(&v["mfu"]);
    assert!(mfu > 0.0);
    // tokens/s is the global batch's tokens over the step.
    let tokens = num(&v["tokens_per_s"]);
    assert!((tokens / num(&v["tokens_per_s_per_chip"]) - 8.0).abs() < 1e-6);
    assert!(num(&v["peak_memory_bytes"]) > 1e9);
}

#[test]
fn search_json() {
    let v = ok_json(&[&["search"][..], &SMALL[..], &["--json"]].concat());
    has_tool(&v);
    assert_eq!(v["best"]["strategy"]["devices"], 8);
    assert!(num(&v["best"]["step_time_s"]) > 0.0);
    let fitting = num(&v["candidates_fitting"]);
    assert!(fitting > 0.0 && fitting <= num(&v["candidates_total"]));
    assert!(!v["ranked"].as_array().unwrap().is_empty());
}

#[test]
fn sweep_json() {
    let v = ok_json(
        &[
            &["sweep"][..],
            &SMALL[..],
            &["--vary", "strategy.pp=1,2", "--json"],
        ]
        .concat(),
    );
    has_tool(&v);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1]["values"]["strategy.pp"], "2");
    assert!(num(&points[0]["step_time_s"]) > 0.0, "{}", points[0]);
}

#[test]
fn goodput_json() {
    let v = ok_json(&["goodput", "--json"]);
    has_tool(&v);
    assert_eq!(v["model"], "pangu-alpha-200b");
    let g = fraction(&v["goodput"]);
    assert!(g > 0.5, "{g}");
    // Expected days are the ideal days over the goodput (or more).
    assert!(num(&v["expected_days"]) >= num(&v["ideal_days"]));
    assert!(num(&v["best_checkpoint_interval_s"]) > 0.0);
    assert!(num(&v["checkpoint_bytes"]) > 1e12);
}

#[test]
fn check_json_passes_fails_with_4_and_updates() {
    let dir = temp("check");
    let f = dir.join("c.toml");
    let body = "model = \"pangu-alpha-350m\"\ncluster = \"ascend910:8\"\n[strategy]\ntp = 2\n";
    std::fs::write(&f, format!("{body}[expect]\nfits = true\n")).unwrap();
    let p = f.to_str().unwrap();
    let v = ok_json(&["check", p, "--json"]);
    has_tool(&v);
    assert_eq!(v["failed"], 0);
    let c = &v["checks"][0];
    assert_eq!(
        (c["file"].as_str(), &c["passed"]),
        (Some(p), &Value::Bool(true))
    );
    assert!(num(&c["outcome"]["step_time_s"]) > 0.0);
    fraction(&c["outcome"]["mfu"]);
    // A failed expectation: the report, then exit code 4.
    std::fs::write(&f, format!("{body}[expect]\nmax_step_time_s = 0.0001\n")).unwrap();
    let v = json_with_code(&["check", p, "--json"], 4);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["checks"][0]["passed"], false);
    assert!(v["checks"][0]["outcome"]["failures"][0]
        .as_str()
        .unwrap()
        .contains("expected at most 0.0001 s"));
    // --update: the row says what it recorded.
    std::fs::write(&f, body).unwrap();
    let v = ok_json(&["check", "--update", p, "--json"]);
    assert_eq!(v["checks"][0]["updated"], true);
    assert!(num(&v["checks"][0]["baseline_step_time_s"]) > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn validate_json_and_its_gate() {
    let rows = ["validate", "--rows", "KOR22-T5-2F,MPT-A100-7B-8", "--json"];
    let v = ok_json(&rows);
    has_tool(&v);
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["verified"]["rows"], 2);
    let median = num(&v["verified"]["median_abs_error"]);
    assert!(median > 0.0 && median < 0.2, "{median}");
    // The gate: over the threshold is exit code 4 (after the report), under it 0.
    let v = json_with_code(&[&rows[..], &["--max-median-error", "0"]].concat(), 4);
    assert_eq!(num(&v["verified"]["median_abs_error"]), median);
    ok_json(&[&rows[..], &["--max-median-error", "0.5"]].concat());
    let out = pangu(&[
        "validate",
        "--rows",
        "KOR22-T5-2F",
        "--max-median-error",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified rows"));
    // Rows that are not verified cannot be gated: an error, not a pass.
    fails_with_code(
        &[
            "validate",
            "--rows",
            "PANGU-A-13B",
            "--max-median-error",
            "0.5",
        ],
        1,
        &["no verified row"],
    );
    fails_with_code(
        &["validate", "--max-median-error=-1"],
        1,
        &["--max-median-error -1"],
    );
}

#[test]
fn models_and_clusters_json() {
    let v = ok_json(&["models", "--json"]);
    has_tool(&v);
    let models = v["models"].as_array().unwrap();
    let big = models
        .iter()
        .find(|m| m["name"] == "pangu-alpha-200b")
        .unwrap();
    assert!((num(&big["params"]) - 206.86e9).abs() / 206.86e9 < 0.005);
    assert_eq!(big["config"]["layers"], 64);
    assert_eq!(big["reference_cluster"], "ascend910:2048");
    let tiny = models
        .iter()
        .find(|m| m["name"] == "pangu-alpha-tiny")
        .unwrap();
    assert_eq!(tiny["reference_global_batch"], 8);
    let llama = models.iter().find(|m| m["name"] == "llama3-8b").unwrap();
    assert!(llama["reference_cluster"].is_null() && llama["reference_seq_len"].is_null());
    let v = ok_json(&["clusters", "--json"]);
    has_tool(&v);
    let ascend = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ascend910")
        .unwrap()
        .clone();
    assert_eq!(ascend["chips"], 2048);
    assert_eq!(ascend["chip"], "Ascend 910");
    assert_eq!(num(&ascend["hbm_bytes"]), 32.0 * 1024f64.powi(3));
    assert_eq!(num(&ascend["fp16_flops"]), 256e12);
    // --toml prints TOML: asking for both is a usage error.
    let out = pangu(&["models", "--toml", "pangu-alpha-tiny", "--json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tokenizer_train_generate_json() {
    let dir = temp("train");
    let (model, corpus) = trainer_files(&dir);
    let tok = dir.join("tok.json").display().to_string();
    let v = ok_json(&[
        "tokenizer",
        "train",
        "--corpus",
        &corpus,
        "--vocab",
        "2500",
        "--out",
        &tok,
        "--json",
    ]);
    has_tool(&v);
    let pieces = num(&v["pieces"]);
    assert!(pieces > 10.0 && pieces <= 2500.0, "{pieces}");
    assert!(num(&v["tokens_per_character"]) > 0.0);
    let hash = v["hash"].as_str().unwrap().to_string();
    let v = ok_json(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        &tok,
        "春风又绿",
        "--json",
    ]);
    has_tool(&v);
    assert_eq!(v["tokenizer_hash"], hash.as_str());
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(ids.len(), v["pieces"].as_array().unwrap().len());
    let joined: String = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(joined, "春风又绿");

    // train --json prints the report it writes into --out.
    let out = dir.join("run").display().to_string();
    let v = ok_json(&[
        "train",
        "--model",
        &model,
        "--corpus",
        &corpus,
        "--tokenizer",
        &tok,
        "--steps",
        "2",
        "--val-samples",
        "4",
        "--threads",
        "1",
        "--out",
        &out,
        "--json",
    ]);
    has_tool(&v);
    assert_eq!(v["steps"], 2);
    assert_eq!(v["losses"].as_array().unwrap().len(), 2);
    assert!(num(&v["val_loss"]) > 0.0 && num(&v["memory"]["total"]) > 0.0);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("run/report.json")).unwrap()).unwrap();
    assert_eq!(saved, v);

    let v = ok_json(&[
        "generate",
        "--checkpoint",
        &out,
        "--prompt",
        "春风",
        "--max-tokens",
        "4",
        "--seed",
        "7",
        "--temperature",
        "0.5",
        "--json",
    ]);
    has_tool(&v);
    assert_eq!(v["prompt"], "春风");
    assert_eq!(v["seed"], 7);
    assert_eq!(v["settings"]["temperature"], 0.5);
    assert_eq!(v["settings"]["max_tokens"], 4);
    assert_eq!(v["step"], 2);
    assert!(v["tokens"].as_array().unwrap().len() <= 4);
    assert!(v["completion"].is_string());

    // `train --bench --json` (with its tool field): tests/train.rs.
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn twin_json_and_its_gate() {
    let v = ok_json(&["twin", "comm-check", "--json"]);
    has_tool(&v);
    assert_eq!(
        (v["ranks"].as_u64(), &v["passed"]),
        (Some(4), &Value::Bool(true))
    );
    assert!(v["failures"].as_array().unwrap().is_empty());
    assert!(num(&v["messages"]) > 0.0);

    let dir = temp("twin");
    let profile = dir.join("profile.toml");
    let v = ok_json(&[
        "twin",
        "calibrate",
        "--quick",
        "--out",
        profile.to_str().unwrap(),
        "--json",
    ]);
    has_tool(&v);
    assert_eq!(v["devices"], 2);
    assert!(num(&v["machine"]["gemm_gflops"]) > 0.0);
    assert!(v["profile"].as_str().unwrap().contains("chips = 2"));

    // One strategy, the fewest steps: over a threshold of 0 the gate fails, after the report.
    let a = dir.join("a.toml");
    std::fs::write(&a, "dp = 1\n").unwrap();
    let v = json_with_code(
        &[
            "twin",
            "check",
            "--quick",
            "--steps",
            "3",
            "--repeats",
            "1",
            "--strategy",
            a.to_str().unwrap(),
            "--max-median-error",
            "0",
            "--json",
        ],
        4,
    );
    has_tool(&v);
    assert_eq!(v["passed"], false);
    assert_eq!(v["rows"].as_array().unwrap().len(), 1);
    assert!(num(&v["rows"][0]["measured_step_s"]) > 0.0);
    assert!(num(&v["median_abs_error"]) > 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn exit_codes_zero_and_two() {
    for args in [&["--help"][..], &["--version"], &["twin", "--help"]] {
        assert_eq!(pangu(args).status.code(), Some(0), "{args:?}");
    }
    for args in [
        &["frobnicate"][..],
        &["plan", "--no-such-flag"],
        &["plan", "--tp", "two"],
    ] {
        assert_eq!(pangu(args).status.code(), Some(2), "{args:?}");
    }
    // Output cut short by a closed pipe (`pangu … | head`) is not an error.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args([&["simulate"][..], &SMALL[..], &["--tp", "2", "--json"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // more than a pipe's buffer is still to come
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
}
