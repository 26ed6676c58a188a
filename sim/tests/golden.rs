//! Golden step reports: a few plans whose full report must not change unnoticed.
//!
//! Regenerate after an intended change with
//! `UPDATE_GOLDEN=1 cargo test -p pangu-sim --test golden`, then review the diff.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn check(name: &str, model: &str, cluster: &str, strategy: &str) {
    let m = ModelConfig::preset(model).unwrap();
    let user = StrategySpec::from_toml(strategy, name).unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name(cluster).unwrap()), &user).unwrap();
    let plan = Plan::new(&r.model, &r.cluster, &r.strategy).unwrap();
    let report = pangu_sim::simulate(&plan).unwrap().report;
    let got = serde_json::to_string_pretty(&report).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    if got != want {
        let line = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{name}: report differs from {} at line {}:\n  got:  {}\n  want: {}\n(UPDATE_GOLDEN=1 regenerates after an intended change)",
            path.display(),
            line + 1,
            got.lines().nth(line).unwrap_or(""),
            want.lines().nth(line).unwrap_or("")
        );
    }
}

#[test]
fn golden_pangu_tiny_pipeline_on_ascend() {
    check("pangu-350m-ascend16", "pangu-alpha-350m", "ascend910:16", "tp = 4\npp = 2\nmicro_batch_size = 1\nglobal_batch = 8\nopt_shard = \"mindspore\"\nremat = \"full\"");
}

#[test]
fn golden_gpt_interleaved_on_a100() {
    check("gpt22b-a100-32", "gpt-22b", "dgx-a100-80g:32", "tp = 8\npp = 4\nmicro_batch_size = 1\nglobal_batch = 8\nschedule = \"interleaved:2\"\nseq_parallel = true\nremat = \"selective\"");
}

#[test]
fn golden_zero3_on_h100() {
    check("mpt7b-h100-16", "mpt-7b", "dgx-h100:16", "tp = 1\npp = 1\nmicro_batch_size = 2\nglobal_batch = 32\nopt_shard = \"zero3\"\nremat = \"full\"\nprecision = \"bf16\"");
}
