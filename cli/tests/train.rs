//! The trainer from the command line: train, resume, generate, bench, bad input, and a data-
//! parallel run equal to one device.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

mod common;

use common::{fails_with, json, pangu, trainer_files};

/// A fresh folder with a small model file and a corpus slice for the trainer commands.
fn trainer_inputs(name: &str) -> (std::path::PathBuf, String, String) {
    let dir = std::env::temp_dir().join(format!("pangu-cli-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (model, corpus) = trainer_files(&dir);
    (dir, model, corpus)
}

#[test]
fn train_then_resume_then_generate() {
    let (dir, model, corpus) = trainer_inputs("run");
    let out = dir.join("run").display().to_string();
    let v = json(&[
        "train",
        "--model",
        &model,
        "--corpus",
        &corpus,
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--val-samples",
        "8",
        "--out",
        &out,
        "--threads",
        "1",
        "--json",
    ]);
    assert_eq!(v["steps"], 6);
    assert_eq!(v["losses"].as_array().unwrap().len(), 6);
    assert!(v["val_loss_per_char"].as_f64().unwrap() > 0.0);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["precision"], "fp32");
    for f in [
        "curve.csv",
        "curve.png",
        "report.json",
        "tokenizer.json",
        "latest",
    ] {
        assert!(dir.join("run").join(f).is_file(), "{f} missing");
    }
    // Resume and extend the run to 8 steps: the curve keeps the first 6 rows.
    let v = json(&[
        "train", "--resume", &out, "--corpus", &corpus, "--steps", "8", "--out", &out, "--json",
    ]);
    assert_eq!(v["steps"], 8);
    assert_eq!(v["steps_this_run"], 2);
    let curve = std::fs::read_to_string(dir.join("run/curve.csv")).unwrap();
    assert_eq!(curve.lines().count(), 1 + 8, "{curve}");
    let g = json(&[
        "generate",
        "--checkpoint",
        &out,
        "--prompt",
        "春风",
        "--max-tokens",
        "5",
        "--json",
    ]);
    assert!(g["tokens"].as_array().unwrap().len() <= 5);
    assert_eq!(g["prompt"], "春风");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trainer_bad_input_is_reported() {
    let (dir, model, corpus) = trainer_inputs("bad");
    let missing = dir.join("missing.txt").display().to_string();
    fails_with(
        &[
            "train", "--model", &model, "--corpus", &missing, "--steps", "1",
        ],
        &["missing.txt"],
    );
    fails_with(
        &[
            "train",
            "--model",
            &model,
            "--corpus",
            &corpus,
            "--steps",
            "1",
            "--global-batch",
            "4",
            "--micro-batches",
            "3",
        ],
        &["--micro-batches 3", "divide"],
    );
    fails_with(
        &["generate", "--checkpoint", &dir.display().to_string()],
        &["no checkpoint here"],
    );
    fails_with(
        &[
            "train",
            "--model",
            "gpt3-175b",
            "--corpus",
            &corpus,
            "--steps",
            "1",
        ],
        &["needs", "GiB", "pangu-alpha-tiny"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn train_bench_reports_throughput() {
    let v = json(&[
        "train",
        "--bench",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--seq",
        "16",
        "--vocab",
        "100",
        "--global-batch",
        "2",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["step_ms"].as_array().unwrap().len(), 3);
    assert_eq!(v["tool"]["name"], "pangu");
    assert_eq!(
        v["params"],
        32 * 100 + 2 * 16 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 64
    );
}

#[test]
fn data_parallel_training_matches_one_device_from_the_cli() {
    let (dir, model, corpus) = trainer_inputs("dp");
    let tok = dir.join("tok.json").display().to_string();
    let out = pangu(&[
        "tokenizer",
        "train",
        "--corpus",
        &corpus,
        "--vocab",
        "2500",
        "--out",
        &tok,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let common = [
        "--model",
        &model,
        "--corpus",
        &corpus,
        "--tokenizer",
        &tok,
        "--steps",
        "3",
        "--json",
    ];
    let one = json(&[&["train", "--eval-every", "0"][..], &common[..]].concat());
    let dp = json(
        &[
            &["train", "--dp", "2", "--opt-shard", "mindspore"][..],
            &common[..],
        ]
        .concat(),
    );
    let a = one["losses"].as_array().unwrap();
    let b = dp["losses"].as_array().unwrap();
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4,
            "{a:?} vs {b:?}"
        );
    }
    assert_eq!(dp["ranks"].as_array().unwrap().len(), 2);
    // All three dimensions on 8 threads, a pipeline schedule of the strategies crate.
    let three = json(
        &[
            &[
                "train",
                "--dp",
                "2",
                "--tp",
                "2",
                "--pp",
                "2",
                "--micro-batches",
                "2",
                "--schedule",
                "gpipe",
            ][..],
            &common[..],
        ]
        .concat(),
    );
    let c = three["losses"].as_array().unwrap();
    for (x, y) in a.iter().zip(c) {
        assert!(
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4,
            "{a:?} vs {c:?}"
        );
    }
    assert_eq!(three["ranks"].as_array().unwrap().len(), 8);
    assert_eq!(three["schedule"], "gpipe");
    let devices = three["step_report"]["devices"].as_array().unwrap();
    assert!(devices
        .iter()
        .all(|d| d["breakdown"]["tp_comm"].as_f64().unwrap() > 0.0));
    // Sharded checkpoints: train dp2·tp2 for 4 steps, resume step 2 re-sharded to tp2·pp2.
    let ck = dir.join("ck").display().to_string();
    let first = json(
        &[
            &[
                "train",
                "--dp",
                "2",
                "--tp",
                "2",
                "--steps",
                "4",
                "--checkpoint-every",
                "2",
                "--out",
                &ck,
            ][..],
            &common[..6],
            &["--json"][..],
        ]
        .concat(),
    );
    let step2 = format!("{ck}/step-00000002");
    let resumed = json(&[
        "train", "--resume", &step2, "--tp", "2", "--pp", "2", "--steps", "4", "--corpus", &corpus,
        "--json",
    ]);
    assert_eq!(resumed["pp"], 2);
    assert_eq!(resumed["resumed_from"], 2);
    let (f, r) = (
        first["losses"].as_array().unwrap(),
        resumed["losses"].as_array().unwrap(),
    );
    assert_eq!((f.len(), r.len()), (4, 2));
    for (x, y) in f[2..].iter().zip(r) {
        assert!(
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4,
            "{f:?} vs {r:?}"
        );
    }
    fails_with(
        &[
            "train", "--resume", &step2, "--steps", "2", "--corpus", &corpus,
        ],
        &["at step 2", "larger --steps"],
    );
    fails_with(
        &[&["train", "--tp", "3"][..], &common[..]].concat(),
        &["tp 3"],
    );
    fails_with(
        &[
            &["train", "--tp", "2", "--precision", "fp16"][..],
            &common[..],
        ]
        .concat(),
        &["precision fp16", "fp32"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn twin_calibrates_this_machine_and_compares_prediction_with_the_executor() {
    let dir = std::env::temp_dir().join(format!("pangu-twin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("profile.toml");
    let v = json(&[
        "twin",
        "calibrate",
        "--quick",
        "--devices",
        "4",
        "--out",
        profile.to_str().unwrap(),
        "--json",
    ]);
    assert!(v["machine"]["gemm_gflops"].as_f64().unwrap() > 1.0);
    assert!(v["machine"]["attention_gflops"].as_f64().unwrap() > 0.1);
    assert!(v["machine"]["cores"].as_u64().unwrap() >= 1);
    // The profile is a cluster file the other commands read.
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("chips = 4"));
    // The four devices share the machine's cores (processor sharing in the simulator).
    assert!(text.contains("shared_cores = "), "{text}");
    assert_eq!(
        v["machine"]["workers"].as_u64().unwrap(),
        4.max(v["machine"]["cores"].as_u64().unwrap())
    );
    let plan = json(&[
        "plan",
        "--json",
        "--model",
        "pangu-alpha-tiny",
        "--cluster",
        profile.to_str().unwrap(),
        "--dp",
        "4",
        "--precision",
        "fp32",
    ]);
    assert_eq!(plan["devices"], 4);
    let a = dir.join("a.toml");
    std::fs::write(&a, "tp = 2\n").unwrap();
    let v = json(&[
        "twin",
        "check",
        "--quick",
        "--steps",
        "4",
        "--repeats",
        "2",
        "--machine",
        "quiet",
        "--plot",
        dir.join("twin.png").to_str().unwrap(),
        "--strategies",
        a.to_str().unwrap(),
        "--json",
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    for k in ["predicted_step_s", "measured_step_s"] {
        assert!(rows[0][k].as_f64().unwrap() > 0.0, "{k}");
    }
    // Two runs; with `--machine quiet` the fastest run's median step is the measurement.
    let runs: Vec<f64> = rows[0]["runs_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 2);
    let fastest = runs.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(rows[0]["measured_step_s"].as_f64().unwrap(), fastest);
    // Each timed step (4 minus 2 warm-up) carries what it had of the machine.
    let steps = rows[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for st in steps {
        for k in ["wall_s", "cpu_wait", "steal", "other"] {
            let x = st[k].as_f64().unwrap();
            assert!(x >= 0.0 && x.is_finite(), "{k} = {x}");
        }
    }
    assert!(rows[0]["measured_breakdown"]["compute"].as_f64().unwrap() > 0.0);
    // The predicted-against-measured plot is a PNG.
    let png = std::fs::read(dir.join("twin.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    assert!(rows[0]["predicted_breakdown"]["compute"].as_f64().unwrap() > 0.0);
    assert!(v["median_abs_error"].as_f64().unwrap().is_finite());
    fails_with(&["twin", "check", "--steps", "2"], &["--steps 2"]);
    if !cfg!(feature = "mpi") {
        fails_with(&["twin", "calibrate", "--quick", "--mpi"], &["without MPI"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
