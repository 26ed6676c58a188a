//! Helpers shared by the `pangu` end-to-end test files: run the binary, parse its JSON, expect
//! a failure with an exit code and a message.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use std::process::{Command, Output};

pub(crate) fn pangu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pangu"))
        .args(args)
        .output()
        .expect("run pangu")
}

pub(crate) fn json(args: &[&str]) -> serde_json::Value {
    let out = pangu(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn fails_with(args: &[&str], needles: &[&str]) {
    fails_with_code(args, 1, needles);
}

/// Fails with this exit code (README's table: 3 does not fit, 4 a gate failed).
pub(crate) fn fails_with_code(args: &[&str], code: i32, needles: &[&str]) {
    let out = pangu(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

/// A tiny PanGu-α-style model file (2 layers, 32 wide, 32 tokens) and a slice of the bundled
/// poetry corpus in `dir`, for the trainer commands: (model path, corpus path).
pub(crate) fn trainer_files(dir: &std::path::Path) -> (String, String) {
    let model = dir.join("model.toml");
    std::fs::write(
        &model,
        "name = \"cli-test\"\nlayers = 2\nhidden = 32\nheads = 2\nffn = 128\nvocab = 2500\nseq_len = 32\n\
         query_layer = true\ndropout = 0.1\nglobal_batch = 4\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/zh_poetry_hans.txt"
    ))
    .unwrap();
    let cut = text[..40_000].rfind("\n\n").unwrap() + 2;
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, &text[..cut]).unwrap();
    (model.display().to_string(), corpus.display().to_string())
}
