//! `pangu search --space DIM=V,... --max-memory-fraction F`: a constrained search end to end.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::{Command, Output};

fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(args)
        .output()
        .expect("run pangu")
}

const TINY: [&str; 8] = [
    "search",
    "--model",
    "pangu-alpha-tiny",
    "--cluster",
    "ascend910:8",
    "--precision",
    "fp16",
    "--refine=2",
];

fn search(extra: &[&str]) -> Output {
    pangu(&[&TINY[..], extra].concat())
}

fn fails_with(extra: &[&str], needles: &[&str]) {
    let out = search(extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
    assert!(!err.contains("panicked"), "{extra:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{extra:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn a_constrained_search_reports_what_each_constraint_removed() {
    let out = search(&[
        "--json",
        "--top=100",
        "--space",
        "tp=2",
        "--space",
        "mbs=1,2",
        "--max-memory-fraction",
        "0.9",
        "--tp",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let ranked = v["ranked"].as_array().unwrap();
    assert!(!ranked.is_empty());
    for c in ranked {
        assert_eq!(c["strategy"]["tp"], 2);
        assert!(matches!(
            c["strategy"]["micro_batch_size"].as_u64(),
            Some(1 | 2)
        ));
    }
    let space = &v["space"];
    assert_eq!(space["constraints"][0], "tp=2");
    assert_eq!(space["constraints"][1], "micro_batch_size=1,2");
    assert_eq!(space["max_memory_fraction"], 0.9);
    let removals = space["census"]["removals"].as_array().unwrap();
    assert_eq!(removals.len(), 3);
    assert_eq!(removals[2]["constraint"], "memory fraction 0.9");
    let (tp_removed, of) = (
        removals[0]["removed"].as_u64().unwrap(),
        removals[0]["of"].as_u64().unwrap(),
    );
    assert!(tp_removed > 0 && tp_removed < of);
    assert_eq!(of, space["census"]["space"].as_u64().unwrap());
    // The user's strategy (tp 1, outside the space) is still simulated and compared.
    assert_eq!(v["own"]["in_space"], false);
    assert!(v["own"]["step_time_s"].as_f64().unwrap() > 0.0);
    assert!(v["explain_vs_own"].is_array());
    // The table says the same in one line.
    let out = search(&["--space", "tp=2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("space: tp=2 removed {tp_removed} of {of}")),
        "{text}"
    );
}

#[test]
fn bad_constraints_are_clear_errors() {
    fails_with(
        &["--space", "tensor=8"],
        &[
            "--space",
            "unknown search dimension",
            "micro_batch_size (mbs",
        ],
    );
    fails_with(&["--space", "remat=sometimes"], &["remat", "every:K"]);
    fails_with(
        &["--space", "tp=3"],
        &["tp=3", "does not divide the devices 8", "1, 2, 4, 8"],
    );
    fails_with(&["--max-memory-fraction", "1.5"], &["0 < F <= 1"]);
    fails_with(&["--max-memory-fraction", "0"], &["0 < F <= 1"]);
    fails_with(
        &[
            "--space",
            "tp=2",
            "--space",
            "sp=false",
            "--space",
            "opt_shard=zero3",
            "--space",
            "pp=8",
        ],
        &[
            "no strategy of the constrained space",
            "pp=8 removed",
            "loosen",
        ],
    );
}
