//! Today's workloads through the binary: Hugging Face configs, run settings on the command
//! line, the presets' listing.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::{Command, Output};

const LLAMA_3_8B: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/llama-3-8b.config.json"
);

fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(args)
        .output()
        .expect("run pangu")
}

fn ok(args: &[&str]) -> (String, String) {
    let out = pangu(args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {e}");
    (o, e)
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = pangu(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

#[test]
fn plan_reads_a_hugging_face_config_json() {
    let run = [
        "--cluster",
        "dgx-h100:8",
        "--tp",
        "8",
        "--global-batch",
        "8",
        "--seq-len",
        "8192",
    ];
    // Without a cluster there is nothing to plan on, but the answer still says the size.
    fails_with(
        &["plan", "--model", LLAMA_3_8B],
        &["8.030 B parameters", "--cluster NAME:N"],
    );
    let mut args = vec!["plan", "--model", LLAMA_3_8B];
    args.extend(run);
    let (out, _) = ok(&args);
    assert!(
        out.contains("plan: llama-3-8b (8.030 B parameters)"),
        "{out}"
    );
    args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&args).0).unwrap();
    let p = v["params"].as_f64().unwrap();
    assert!((p - 8.03e9).abs() / 8.03e9 < 0.005, "{p}");
    // The run's length, not the config's max_position_embeddings (8192 as well here).
    assert_eq!(v["model"]["seq_len"], 8192);
    args.truncate(args.len() - 2); // drop "8192" and "--json"
    args.extend(["4096", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&args).0).unwrap();
    assert_eq!(v["model"]["seq_len"], 4096);
}

#[test]
fn a_model_without_a_reference_run_says_what_to_pass() {
    fails_with(
        &["plan", "--model", LLAMA_3_8B, "--cluster", "dgx-h100:8"],
        &["llama-3-8b has no reference batch: pass --global-batch N and --seq-len N"],
    );
    fails_with(
        &[
            "simulate",
            "--model",
            "llama3-70b",
            "--cluster",
            "dgx-h100:64",
            "--global-batch",
            "64",
        ],
        &["llama3-70b has no reference batch: pass --seq-len N"],
    );
}

#[test]
fn seq_len_is_a_run_setting() {
    let v: serde_json::Value = serde_json::from_str(
        &ok(&[
            "plan",
            "--model",
            "pangu-alpha-2.6b",
            "--seq-len",
            "512",
            "--json",
        ])
        .0,
    )
    .unwrap();
    assert_eq!(v["model"]["seq_len"], 512);
    assert_eq!(v["strategy"]["global_batch"], 1024);
    fails_with(
        &["plan", "--model", "pangu-alpha-2.6b", "--seq-len", "2048"],
        &[
            "2048 tokens exceed the learned position table of 1024 rows",
            "--seq-len 1024",
        ],
    );
    // A strategy file may state it too.
    let dir = std::env::temp_dir().join(format!("pangu-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("run.toml");
    std::fs::write(&s, "seq_len = 256\nglobal_batch = 64\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(
        &ok(&[
            "plan",
            "--model",
            "pangu-alpha-2.6b",
            "--strategy",
            s.to_str().unwrap(),
            "--json",
        ])
        .0,
    )
    .unwrap();
    assert_eq!(
        (
            v["model"]["seq_len"].as_u64(),
            v["strategy"]["global_batch"].as_u64()
        ),
        (Some(256), Some(64))
    );
    // Mixture-of-experts and other architectures are refused by name.
    let moe = dir.join("mixtral.json");
    std::fs::write(
        &moe,
        r#"{"architectures": ["MixtralForCausalLM"], "num_local_experts": 8, "hidden_size": 4096}"#,
    )
    .unwrap();
    fails_with(
        &[
            "plan",
            "--model",
            moe.to_str().unwrap(),
            "--cluster",
            "dgx-h100:8",
        ],
        &[
            "MixtralForCausalLM is a mixture-of-experts model",
            "MoE is out of scope",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn models_lists_the_new_presets_with_their_reference_runs() {
    let (out, _) = ok(&["models"]);
    for name in [
        "llama2-7b",
        "llama3-8b (= llama3.1-8b)",
        "gpt3-125m",
        "gpt3-13b",
    ] {
        assert!(out.contains(name), "{name}: {out}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("pangu-alpha-200b"))
        .unwrap();
    assert!(line.contains("1024") && line.contains("512"), "{line}");
    let (out, _) = ok(&["plan", "--model", "llama3.1-405b"]);
    assert!(out.contains("llama3-405b"), "{out}");
}
