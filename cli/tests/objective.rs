//! `pangu search --objective time-to-train`: each candidate's expected days are `pangu
//! goodput`'s, and frequent failures with per-node checkpoint bandwidth change the winner on
//! the 200B default.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::Command;

use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Frequent failures (a tenth of Llama 3's mean times) and 2 GB/s per server to storage.
const RUN: [&str; 4] = ["--mtbf-scale", "0.1", "--storage-bw-per-node", "2"];

/// The inline flags of a strategy from its JSON.
fn strategy_flags(s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in [
        "devices",
        "dp",
        "tp",
        "pp",
        "micro_batches",
        "micro_batch_size",
        "global_batch",
        "schedule",
        "opt_shard",
        "remat",
        "seq_parallel",
        "precision",
        "rank_order",
        "vocab_divisible_by",
    ] {
        let v = &s[key];
        if v.is_null() {
            continue; // unset: the flag's default
        }
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        out.push(format!("--{}={text}", key.replace('_', "-")));
    }
    out
}

#[test]
fn time_to_train_ranks_by_goodput_days_and_changes_the_200b_winner() {
    let search = |objective: &str| {
        json(
            &[
                &[
                    "search",
                    "--json",
                    "--refine",
                    "2",
                    "--top",
                    "3",
                    "--objective",
                ],
                &[objective][..],
                &RUN[..],
            ]
            .concat(),
        )
    };
    let step = search("step");
    let ttt = search("time-to-train");
    assert_eq!(ttt["objective"], "time-to-train");
    let (a, b) = (&step["best"], &ttt["best"]);
    assert!(a["expected_days"].is_null());
    assert_ne!(a["summary"], b["summary"], "{a}\n{b}");
    // Ranked by expected days, best first, among the re-simulated ones.
    let ranked = ttt["ranked"].as_array().unwrap();
    let days: Vec<f64> = ranked
        .iter()
        .filter(|c| c["refined_step_s"].is_f64())
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!(days.windows(2).all(|w| w[0] <= w[1]), "{days:?}");
    // The winner's days are what `pangu goodput` prints for its strategy, to the last bit
    // the JSON carries.
    let flags = strategy_flags(&b["strategy"]);
    let mut args: Vec<&str> = vec!["goodput", "--json", "--trials", "1"];
    args.extend(flags.iter().map(String::as_str));
    args.extend(RUN);
    let g = json(&args);
    let (mine, theirs) = (
        b["expected_days"].as_f64().unwrap(),
        g["expected_days"].as_f64().unwrap(),
    );
    assert!(
        (mine - theirs).abs() <= 1e-12 * theirs,
        "{mine} vs {theirs}"
    );
    assert_eq!(g["step_time_s"], b["step_time_s"]);
}
