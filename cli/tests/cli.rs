//! The `pangu` binary end to end: outputs, JSON conventions, and bad input.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{fails_with, fails_with_code, json, pangu};

#[test]
fn default_plan_is_the_papers_200b_strategy_and_fits() {
    let v = json(&["plan", "--json"]);
    assert_eq!(v["devices"], 2048);
    let params = v["params"].as_f64().unwrap();
    assert!((params - 206.86e9).abs() / 206.86e9 < 0.005);
    assert_eq!(v["fits"], true);
    let max = v["memory"]["max_bytes_per_device"].as_f64().unwrap();
    let cap = v["memory"]["capacity_bytes"].as_f64().unwrap();
    assert!(max < cap && cap <= 32.0 * 1024f64.powi(3));
    let bubble = v["bubble_fraction"].as_f64().unwrap();
    assert!(bubble > 0.3 && bubble < 0.4, "{bubble}");
    let s = &v["strategy"];
    assert_eq!(
        (s["dp"].as_u64(), s["tp"].as_u64(), s["pp"].as_u64()),
        (Some(16), Some(8), Some(16))
    );
    assert_eq!(s["opt_shard"], "mindspore");
    assert_eq!(s["remat"], "full");
    assert_eq!(v["tool"]["name"], "pangu");
    assert_eq!(v["tool"]["input_hash"].as_str().unwrap().len(), 16);
    // Each switch turned off is reported with what it would need.
    let off = v["memory"]["switches_off"].as_array().unwrap();
    assert_eq!(off.len(), 2);
    assert_eq!(off[0]["fits"], false);
    assert!(v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("ASSUMPTION")));
}

#[test]
fn same_inputs_same_hash_other_inputs_other_hash() {
    let a = json(&["plan", "--json"]);
    let b = json(&["plan", "--json"]);
    assert_eq!(a, b);
    let c = json(&["plan", "--json", "--tp", "4"]);
    assert_ne!(a["tool"]["input_hash"], c["tool"]["input_hash"]);
}

#[test]
fn model_presets_and_their_references() {
    let v = json(&["plan", "--json", "--model", "pangu-alpha-2.6b"]);
    let params = v["params"].as_f64().unwrap();
    assert!((params - 2.625e9).abs() / 2.625e9 < 0.005, "{params}");
    assert_eq!(v["devices"], 512);
    assert_eq!(v["strategy"]["dp"], 64);
    let v = json(&["plan", "--json", "--model", "pangu-alpha-tiny"]);
    assert_eq!(v["devices"], 1);
    assert_eq!(v["strategy"]["precision"], "fp32");
    let v = json(&[
        "plan",
        "--json",
        "--cluster",
        "ascend910:512",
        "--tp",
        "8",
        "--pp",
        "4",
    ]);
    assert_eq!(v["strategy"]["dp"], 16);
    assert_eq!(v["strategy"]["global_batch"], 512);
}

#[test]
fn table_output_has_the_sections() {
    let out = pangu(&["plan"]);
    assert!(out.status.success());
    let t = String::from_utf8_lossy(&out.stdout);
    for s in [
        "group",
        "stage",
        "embedding + blocks 0-3",
        "query layer + head",
        "fits",
        "optimizer sharding off",
        "communication per step",
        "pipeline bubble",
        "warning: tp 8",
    ] {
        assert!(t.contains(s), "missing {s:?} in\n{t}");
    }
}

#[test]
fn bad_input_gets_an_actionable_error() {
    fails_with(&["plan", "--tp", "3"], &["tp 3", "1, 2, 4, 8"]);
    fails_with(
        &["plan", "--model", "pangu-alpha-2.6b", "--tp", "64"],
        &["does not divide heads 32"],
    );
    fails_with(&["plan", "--tp", "1", "--pp", "128"], &["only 64 layers"]);
    fails_with(
        &["plan", "--global-batch", "100"],
        &["global batch 100 does not split over dp 16"],
    );
    fails_with(
        &["plan", "--micro-batches", "8", "--micro-batch-size", "2"],
        &["= 256 ≠ global batch 512"],
    );
    fails_with(
        &["plan", "--model", "gpt-5"],
        &["unknown model preset", "pangu-alpha-200b"],
    );
    fails_with(
        &["plan", "--cluster", "tpu:64"],
        &["unknown cluster preset", "ascend910"],
    );
    fails_with(&["plan", "--cluster", "ascend910:12"], &["chips", "16"]);
    fails_with_code(
        &["plan", "--opt-shard", "none", "--remat", "none"],
        3,
        &["does not fit", "--opt-shard mindspore"],
    );
    fails_with(&["plan", "--devices", "4096"], &["2048 chips"]);
    fails_with(
        &["plan", "--strategy", "/nonexistent.toml"],
        &["cannot read strategy file"],
    );
    // clap rejects malformed enum values with the accepted forms, exit code 2.
    let out = pangu(&["plan", "--schedule", "zigzag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interleaved:V"));
}

#[test]
fn strategy_files_use_flag_names_and_flags_override_them() {
    let dir = std::env::temp_dir().join(format!("pangu-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("s.toml");
    std::fs::write(
        &f,
        "tp = 4\npp = 8\nmicro_batch_size = 1\nremat = \"selective\"\nopt_shard = \"zero1\"\n",
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let v = json(&["plan", "--json", "--strategy", path]);
    assert_eq!(
        (v["strategy"]["tp"].as_u64(), v["strategy"]["dp"].as_u64()),
        (Some(4), Some(64))
    );
    assert_eq!(v["strategy"]["remat"], "selective");
    let v = json(&["plan", "--json", "--strategy", path, "--tp", "8"]);
    assert_eq!(
        (v["strategy"]["tp"].as_u64(), v["strategy"]["dp"].as_u64()),
        (Some(8), Some(32))
    );
    std::fs::write(&f, "tensor_parallel = 4\n").unwrap();
    fails_with(
        &["plan", "--strategy", path],
        &["unknown field", "tensor_parallel"],
    );
    std::fs::write(&f, "tp = nan\n").unwrap();
    fails_with(&["plan", "--strategy", path], &["cannot parse strategy"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn preset_listings_and_toml_round_trip() {
    let out = pangu(&["models"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("pangu-alpha-200b") && t.contains("206.861 B"));
    let out = pangu(&["clusters"]);
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("dgx-a100-40g") && t.contains("dgx2-v100"));
    // A printed preset, saved to a file, is a valid user file.
    let dir = std::env::temp_dir().join(format!("pangu-cli-toml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = pangu(&["clusters", "--toml", "ascend910"]);
    let c = dir.join("c.toml");
    std::fs::write(&c, &out.stdout).unwrap();
    let out = pangu(&["models", "--toml", "pangu-alpha-13b"]);
    let m = dir.join("m.toml");
    std::fs::write(&m, &out.stdout).unwrap();
    let arg_c = format!("{}:1024", c.to_str().unwrap());
    let v = json(&[
        "plan",
        "--json",
        "--model",
        m.to_str().unwrap(),
        "--cluster",
        &arg_c,
        "--tp",
        "8",
        "--pp",
        "1",
        "--micro-batch-size",
        "8",
    ]);
    assert_eq!(v["devices"], 1024);
    assert_eq!(v["fits"], true);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulate_reports_the_step_and_where_time_goes() {
    let v = json(&[
        "simulate",
        "--json",
        "--model",
        "pangu-alpha-2.6b",
        "--cluster",
        "ascend910:32",
        "--tp",
        "8",
        "--pp",
        "2",
    ]);
    for k in [
        "step_time_s",
        "tokens_per_s",
        "mfu",
        "hfu",
        "events",
        "wall_s",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k}: {}", v[k]);
    }
    let step = v["step_time_s"].as_f64().unwrap();
    let b = v["breakdown"].as_object().unwrap();
    for c in [
        "compute",
        "recompute",
        "tp_comm",
        "dp_comm",
        "pp_comm",
        "opt_comm",
        "bubble",
        "idle",
    ] {
        assert!(b[c].as_f64().is_some(), "breakdown lacks {c}");
    }
    let sum: f64 = b.values().map(|x| x.as_f64().unwrap()).sum();
    assert!((sum - step).abs() < 1e-6 * step.max(1.0), "{sum} vs {step}");
    assert!(v["mfu"].as_f64().unwrap() < 1.0);
    assert_eq!(v["tool"]["name"], "pangu");
}

#[test]
fn simulate_writes_csv_and_a_chrome_trace() {
    let out = pangu(&[
        "simulate",
        "--csv",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "ascend910:8",
        "--tp",
        "2",
        "--pp",
        "2",
    ]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv
        .lines()
        .next()
        .unwrap()
        .starts_with("rank,stage,compute_s"));
    assert!(csv.lines().count() >= 2);
    let dir = std::env::temp_dir().join(format!("pangu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.json");
    let out = pangu(&[
        "simulate",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "ascend910:8",
        "--tp",
        "2",
        "--pp",
        "2",
        "--trace",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    assert!(events
        .iter()
        .any(|e| e["ph"] == "X" && e["name"].as_str().unwrap().contains("forward")));
    assert!(events
        .iter()
        .any(|e| e["ph"] == "X" && e["name"].as_str().unwrap().contains("tp AllReduce")));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulate_rejects_bad_input() {
    fails_with(&["simulate", "--tp", "3"], &["tp 3"]);
    fails_with_code(
        &["simulate", "--opt-shard", "none", "--remat", "none"],
        3,
        &["does not fit"],
    );
    fails_with(
        &["simulate", "--cluster", "ascend910:0"],
        &["at least one chip"],
    );
}

#[test]
fn validate_prints_rows_and_errors_in_json() {
    let csv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sim/validation/published-runs.csv"
    );
    let v = json(&[
        "validate",
        "--json",
        "--runs",
        csv,
        "--rows",
        "KOR22-T5-2F,MPT-A100-7B-8,MEGV1-WS-1,PANGU-A-2.6B",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let kor = rows.iter().find(|r| r["row_id"] == "KOR22-T5-2F").unwrap();
    assert_eq!(kor["metric"], "step_time");
    assert!((kor["published"].as_f64().unwrap() - 18.13).abs() < 1e-9);
    assert!(kor["error"].as_f64().unwrap().abs() < 0.1);
    let skipped = rows.iter().find(|r| r["row_id"] == "MEGV1-WS-1").unwrap();
    assert!(skipped["skipped"].as_str().unwrap().contains("not stated"));
    let pangu = rows.iter().find(|r| r["row_id"] == "PANGU-A-2.6B").unwrap();
    assert!(pangu["assumptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("batch_size 16")));
    assert!(v["median_abs_error"].as_f64().is_some() && v["max_abs_error"].as_f64().is_some());
    fails_with(
        &["validate", "--runs", "/nonexistent.csv"],
        &["cannot read"],
    );
}

#[test]
fn search_ranks_fitting_strategies_and_explains_failure() {
    let v = json(&[
        "search",
        "--json",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "ascend910:16",
        "--refine",
        "4",
        "--top",
        "5",
    ]);
    let total = v["candidates_total"].as_u64().unwrap();
    let fitting = v["candidates_fitting"].as_u64().unwrap();
    assert!(
        total > 100 && fitting > 0 && fitting <= total,
        "{total} {fitting}"
    );
    let best = &v["best"];
    let s = &best["strategy"];
    assert_eq!(
        s["dp"].as_u64().unwrap() * s["tp"].as_u64().unwrap() * s["pp"].as_u64().unwrap(),
        16
    );
    assert!(best["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(best["memory_bytes"].as_f64().unwrap() < 31.0 * 1024f64.powi(3));
    assert!(v["wall_s"].as_f64().is_some());
    // Ranked best first; the refined ones carry a simulated time.
    let ranked = v["ranked"].as_array().unwrap();
    assert!(ranked[0]["refined_step_s"].as_f64().is_some());
    let times: Vec<f64> = ranked
        .iter()
        .filter_map(|c| c["refined_step_s"].as_f64())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The search beats or matches the reference strategy it was given.
    let own = v["own"]["step_time_s"].as_f64().unwrap();
    assert!(best["step_time_s"].as_f64().unwrap() <= own * 1.0001);
    // The winner is explained against the user's strategy, term by term, summing to the gap.
    let gap: f64 = v["explain_vs_own"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["seconds"].as_f64().unwrap())
        .sum();
    assert!(
        (gap - (best["step_time_s"].as_f64().unwrap() - own)).abs() < 1e-3 * own.max(1.0),
        "{gap}"
    );
    fails_with_code(
        &[
            "search",
            "--model",
            "pangu-alpha-200b",
            "--cluster",
            "ascend910:64",
        ],
        3,
        &["no strategy", "smallest per-device memory found", "GiB"],
    );
}

#[test]
fn check_fails_with_a_readable_diff_and_updates_baselines() {
    let dir = std::env::temp_dir().join(format!("pangu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    let body =
        "model = \"pangu-alpha-350m\"\ncluster = \"ascend910:8\"\n[strategy]\ntp = 2\npp = 2\n";
    std::fs::write(&f, format!("{body}[expect]\nmax_step_time_s = 0.0001\n[baseline]\nstep_time_s = 0.001\ntolerance = 0.05\n")).unwrap();
    let p = f.to_str().unwrap();
    let out = pangu(&["check", p]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a failed check is a failed gate"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL")
            && text.contains("expected at most 0.0001 s")
            && text.contains("from the baseline"),
        "{text}"
    );
    // --update records the simulated time; then the baseline check passes.
    std::fs::write(&f, body).unwrap();
    assert!(pangu(&["check", "--update", p]).status.success());
    assert!(std::fs::read_to_string(&f).unwrap().contains("[baseline]"));
    assert!(pangu(&["check", p]).status.success());
    std::fs::write(
        &f,
        "model = \"pangu-alpha-350m\"\ncluster = \"ascend910:8\"\n[expect]\nfast = true\n",
    )
    .unwrap();
    fails_with(&["check", p], &["unknown field", "fast"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sweep_writes_one_csv_row_per_point() {
    let out = pangu(&[
        "sweep",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "ascend910:8",
        "--vary",
        "strategy.tp=1,2,3",
        "--vary",
        "cluster.chip.hbm=16 GiB,32 GiB",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "strategy.tp,cluster.chip.hbm,step_time_s,tokens_per_s,mfu,max_memory_bytes,fits,error"
    );
    assert_eq!(lines.len(), 1 + 6);
    // tp 3 does not divide the 8 chips: the row says why instead of vanishing.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("3,") && l.contains("does not divide")),
        "{csv}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(",true,")).count(),
        2,
        "{csv}"
    );
    // 16 GiB chips hold neither layout; the row says so and keeps the memory it would need.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("1,16 GiB,,,,") && l.ends_with("false,does not fit in memory")),
        "{csv}"
    );
    fails_with(
        &["sweep", "--vary", "tp=1,2"],
        &["strategy., model. or cluster."],
    );
}

#[test]
fn goodput_reports_the_best_interval_against_young_daly() {
    let v = json(&["goodput", "--json", "--trials", "50"]);
    for k in [
        "goodput",
        "expected_days",
        "best_checkpoint_interval_s",
        "young_daly_interval_s",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    let g = v["goodput"].as_f64().unwrap();
    assert!(g > 0.5 && g < 1.0);
    assert!(v["expected_days"].as_f64().unwrap() > v["ideal_days"].as_f64().unwrap());
    // A failure-prone machine needs checkpoints more often and loses more.
    let flaky = json(&[
        "goodput",
        "--json",
        "--trials",
        "50",
        "--chip-mtbf-h",
        "5000",
    ]);
    assert!(flaky["goodput"].as_f64().unwrap() < g);
    assert!(
        flaky["best_checkpoint_interval_s"].as_f64().unwrap()
            < v["best_checkpoint_interval_s"].as_f64().unwrap()
    );
    fails_with(&["goodput", "--model", "pangu-alpha-13b"], &["--tokens"]);
    fails_with(&["goodput", "--chip-mtbf-h=-3"], &["--chip-mtbf-h -3"]);
    fails_with(
        &["goodput", "--storage-write-gbps", "0"],
        &["--storage-write-gbps 0"],
    );
}

/// pangu-alpha-2.6b on two DGX A100 servers, tp 8.
const SMALL_SIM: [&str; 11] = [
    "simulate",
    "--model",
    "pangu-alpha-2.6b",
    "--cluster",
    "dgx-a100-40g:16",
    "--tp",
    "8",
    "--global-batch",
    "16",
    "--micro-batch-size",
    "4",
];

#[test]
fn simulate_takes_faults_and_a_second_job() {
    let small = SMALL_SIM;
    let v = json(&[&small[..], &["--json", "--straggler", "3=0.5"][..]].concat());
    assert!(v["fault_slowdown"].as_f64().unwrap() > 0.3, "{v}");
    assert_eq!(v["faults"]["straggler"][0]["device"], 3);
    fails_with(
        &[&small[..], &["--straggler", "3"][..]].concat(),
        &["--straggler \"3\"", "DEVICE=SPEED"],
    );
    fails_with(
        &[&small[..], &["--straggler", "30=0.5"][..]].concat(),
        &["straggler[0].device = 30"],
    );
    // Two jobs of 8 chips: one server each; a non-blocking fabric, so neither slows.
    let dir = std::env::temp_dir().join(format!("pangu-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = dir.join("b.toml");
    std::fs::write(
        &b,
        "devices = 8\ntp = 8\nmicro_batch_size = 4\nglobal_batch = 16\n",
    )
    .unwrap();
    let v = json(
        &[
            &small[..],
            &["--devices", "8", "--share", b.to_str().unwrap(), "--json"],
        ]
        .concat(),
    );
    assert_eq!(v["job_b"]["chips"][0], 8);
    assert!(v["job_a"]["slowdown"].as_f64().unwrap().abs() < 1e-12);
    let _ = std::fs::remove_dir_all(&dir);
}

/// FNV-1a of the JSON report with its timing fields removed.
fn report_hash(mut v: serde_json::Value) -> u64 {
    if let Some(o) = v.as_object_mut() {
        o.remove("wall_s");
    }
    let bytes = serde_json::to_vec(&v).unwrap();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn simulator_output_is_bit_identical_across_runs_and_thread_counts() {
    let faulty = [
        &SMALL_SIM[..],
        &["--json", "--full", "--straggler", "5=0.7"],
    ]
    .concat();
    let cases: [&[&str]; 3] = [
        &["simulate", "--json"],
        &faulty,
        &[
            "search",
            "--json",
            "--model",
            "pangu-alpha-2.6b",
            "--cluster",
            "ascend910:64",
            "--top",
            "5",
        ],
    ];
    for args in cases {
        let mut hashes = Vec::new();
        for threads in ["1", "2", "2"] {
            let out = Command::new(env!("CARGO_BIN_EXE_pangu"))
                .args(args)
                .env("RAYON_NUM_THREADS", threads)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            hashes.push(report_hash(serde_json::from_slice(&out.stdout).unwrap()));
        }
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "{args:?}: {hashes:x?}"
        );
    }
}
