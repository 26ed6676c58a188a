//! `--megatron-args`, `--megatron-args-file` and `--deepspeed-config` end to end: the same
//! plan as the hand-written flags, precedence, and errors. The public example lines are
//! tested in `strategies/tests/launch.rs`.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::process::{Command, Output};

fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(args)
        .output()
        .expect("run pangu")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = pangu(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn temp(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("pangu-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A GPT-2-medium-like Megatron line (the shape of Megatron-LM's 345M examples).
const LINE: &str = "--num-layers 24 --hidden-size 1024 --num-attention-heads 16 \\
    --seq-length 1024 --max-position-embeddings 1024 --tokenizer-type GPT2BPETokenizer \\
    --micro-batch-size 4 --global-batch-size 64 --tensor-model-parallel-size 2 \\
    --pipeline-model-parallel-size 2 --use-distributed-optimizer --bf16 \\
    --lr 0.00015 --data-path /data/my-gpt2_text_document --log-interval 100";

const HAND_MODEL: &str =
    "name = \"gpt-345m\"\nlayers = 24\nhidden = 1024\nheads = 16\nffn = 4096\n\
    vocab = 50257\nseq_len = 1024\ndropout = 0.1\nglobal_batch = 64\n";

#[test]
fn megatron_args_plan_like_the_hand_written_flags() {
    let cluster = "dgx-a100-80g:16";
    let got = json(&[
        "plan",
        "--megatron-args",
        LINE,
        "--cluster",
        cluster,
        "--json",
    ]);
    let model = temp("gpt-345m.toml", HAND_MODEL);
    let want = json(&[
        "plan",
        "--model",
        &model,
        "--cluster",
        cluster,
        "--tp",
        "2",
        "--pp",
        "2",
        "--micro-batch-size",
        "4",
        "--global-batch",
        "64",
        "--opt-shard",
        "zero1",
        "--precision",
        "bf16",
        // Megatron's pipeline sends block (no --overlap-p2p-communication in its line).
        "--p2p-blocking",
        "--json",
    ]);
    assert_eq!(got["strategy"], want["strategy"]);
    assert_eq!(got["params"], want["params"]);
    assert_eq!(got["memory"], want["memory"]);
    let notes = got["notes"].to_string();
    assert!(
        notes.contains("as pangu flags") && notes.contains("--opt-shard zero1"),
        "{notes}"
    );
    assert!(notes.contains("--lr 0.00015"), "{notes}");
    // The same line from a file; an explicit flag overrides the line.
    let file = temp("args.sh", LINE);
    let v = json(&[
        "plan",
        "--megatron-args-file",
        &file,
        "--cluster",
        cluster,
        "--tp",
        "4",
        "--json",
    ]);
    assert_eq!(v["strategy"]["tp"], 4);
    assert_eq!(v["strategy"]["opt_shard"], "zero1");
}

#[test]
fn deepspeed_config_combines_with_model() {
    let ds = temp(
        "ds.json",
        r#"{"train_batch_size": 256, "train_micro_batch_size_per_gpu": 8,
            "zero_optimization": {"stage": 2}, "bf16": {"enabled": true}}"#,
    );
    let v = json(&[
        "plan",
        "--model",
        "pangu-alpha-350m",
        "--cluster",
        "dgx-a100-80g:32",
        "--deepspeed-config",
        &ds,
        "--json",
    ]);
    let s = &v["strategy"];
    assert_eq!(
        (s["opt_shard"].as_str(), s["precision"].as_str()),
        (Some("zero2"), Some("bf16"))
    );
    assert_eq!(
        (s["micro_batch_size"].as_u64(), s["global_batch"].as_u64()),
        (Some(8), Some(256))
    );
}

#[test]
fn launch_errors_are_actionable() {
    let fails = |args: &[&str], needles: &[&str]| {
        let out = pangu(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
        }
    };
    fails(
        &[
            "plan",
            "--megatron-args",
            "--tensor-model-parallel-size $TP",
        ],
        &["--tensor-model-parallel-size", "$TP"],
    );
    fails(
        &["plan", "--model", "gpt3-175b", "--megatron-args", LINE],
        &["--model gpt3-175b", "give one"],
    );
    fails(
        &["plan", "--deepspeed-config", "/nonexistent/ds.json"],
        &["/nonexistent/ds.json"],
    );
    fails(
        &[
            "plan",
            "--megatron-args",
            &format!("{LINE} --num-experts 8"),
        ],
        &["--num-experts 8", "mixture-of-experts"],
    );
}
