//! `pangu simulate --chakra DIR`: a trace file per rank, the same from a folded and a full run,
//! stragglers' durations in their own files, and no traces for two jobs at once.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pangu_sim::chakra::{self, NodeType, Value};

const JOB: [&str; 10] = [
    "simulate",
    "--model",
    "pangu-alpha-350m",
    "--cluster",
    "ascend910:8",
    "--tp",
    "2",
    "--pp",
    "2",
    "--chakra",
];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pangu-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn simulate(dir: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(JOB)
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Total `duration_nanos` of the compute nodes of a trace file.
fn compute_ns(bytes: &[u8]) -> u64 {
    let (_, nodes) = chakra::decode(bytes).unwrap();
    nodes
        .iter()
        .filter(|n| n.r#type == NodeType::CompNode as i32)
        .map(|n| match n.attr("duration_nanos") {
            Some(Value::Uint64Val(ns)) => *ns,
            other => panic!("{other:?}"),
        })
        .sum()
}

#[test]
fn every_rank_gets_a_file_and_folding_does_not_change_them() {
    let (folded, full) = (scratch("chakra-folded"), scratch("chakra-full"));
    let out = simulate(&folded, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["folded"].is_string(), "the job folds: {report}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Chakra traces of 8 ranks"), "{err}");
    simulate(&full, &["--full"]);
    let (a, b) = (files(&folded), files(&full));
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    let mut want: Vec<String> = (0..8).map(|r| format!("pangu.{r}.et")).collect();
    want.push("comm_groups.json".into());
    want.sort();
    assert_eq!(names, want);
    assert!(a == b, "folded and full runs wrote different traces");
    for (name, bytes) in &a {
        if name.ends_with(".et") {
            let (meta, nodes) = chakra::decode(bytes).unwrap();
            assert_eq!(meta.version, chakra::VERSION);
            assert!(nodes.len() > 100, "{name}: {} nodes", nodes.len());
        }
    }
    let groups: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folded.join("comm_groups.json")).unwrap()).unwrap();
    assert!(groups["1"].is_array(), "{groups}");
    let _ = std::fs::remove_dir_all(&folded);
    let _ = std::fs::remove_dir_all(&full);
}

#[test]
fn a_stragglers_file_holds_its_slower_compute() {
    let (healthy, slow) = (scratch("chakra-healthy"), scratch("chakra-slow"));
    simulate(&healthy, &[]);
    simulate(&slow, &["--straggler", "1=0.5"]);
    let ns = |dir: &Path, r: u32| compute_ns(&std::fs::read(chakra::trace_path(dir, r)).unwrap());
    let ratio = ns(&slow, 1) as f64 / ns(&healthy, 1) as f64;
    assert!((ratio - 2.0).abs() < 0.01, "rank 1 at half speed: {ratio}");
    assert_eq!(ns(&slow, 0), ns(&healthy, 0));
    let _ = std::fs::remove_dir_all(&healthy);
    let _ = std::fs::remove_dir_all(&slow);
}

#[test]
fn two_jobs_at_once_write_no_traces() {
    let dir = scratch("chakra-share");
    let strategy = dir.with_extension("toml");
    std::fs::write(&strategy, "tp = 2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(JOB)
        .arg(&dir)
        .args(["--devices", "4", "--share"])
        .arg(&strategy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("leave out --share"), "{err}");
    assert!(!dir.exists());
    let _ = std::fs::remove_file(&strategy);
}
