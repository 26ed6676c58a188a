//! Data and optimizer parallelism on threads equal the single-device run (same seed, global
//! batch and samples) within 1e-4: losses per step and the final weights.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pangu_model::ModelConfig;
use pangu_strategies::CollectiveAlgorithm;
use pangu_trainer::data;
use pangu_trainer::dist::{train_threads, DistConfig, Sharding};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Run, Settings};

fn setup(dropout: f64) -> (ModelConfig, Settings, Run) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/zh_poetry_hans.txt");
    let text = data::read_corpus(&p).unwrap();
    let cut = text[..40_000].rfind("\n\n").unwrap() + 2;
    let (train, val) = data::split(&text[..cut]);
    let cfg = ModelConfig::from_toml(
        &format!(
            "name = \"dist-test\"\nlayers = 3\nhidden = 32\nheads = 2\nffn = 128\nvocab = 2500\nseq_len = 32\n\
             query_layer = true\ndropout = {dropout}\nglobal_batch = 8\n"
        ),
        "test",
    )
    .unwrap();
    let tok = Tokenizer::train(train, 2500).unwrap();
    let mut s = Settings::for_model(&cfg, 5);
    s.micro_batches = 2;
    s.lr = 3e-3;
    s.warmup = 2;
    s.dropout = dropout;
    let run = Run::new(&cfg, s.clone(), tok, train, val).unwrap();
    (cfg, s, run)
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn data_and_optimizer_parallel_match_single_device() {
    for dropout in [0.0, 0.1] {
        let (cfg, s, mut single) = setup(dropout);
        let losses: Vec<f64> = (0..5).map(|_| single.step().loss).collect();
        let n = single.state.params.len() as u64;
        let mut unsharded_bytes = std::collections::BTreeMap::new();
        for (dp, sharding, algo) in [
            (2, Sharding::None, CollectiveAlgorithm::Ring),
            (4, Sharding::None, CollectiveAlgorithm::HalvingDoubling),
            (2, Sharding::Optimizer, CollectiveAlgorithm::Ring),
            (4, Sharding::Optimizer, CollectiveAlgorithm::HalvingDoubling),
            (4, Sharding::None, CollectiveAlgorithm::DoubleBinaryTree),
        ] {
            let dist = DistConfig {
                dp,
                sharding,
                algo,
                timeout: Duration::from_secs(60),
            };
            let r = train_threads(&cfg, &s, &dist, &single.train, 5).unwrap();
            for (a, b) in r.losses.iter().zip(&losses) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "dp {dp} {sharding:?} {algo:?} dropout {dropout}: loss {a} vs {b}"
                );
            }
            let d = rel_diff(&r.params, &single.state.params);
            assert!(d < 1e-4, "dp {dp} {sharding:?}: weights differ by {d}");
            assert_eq!(r.ranks.len(), dp);
            // The measured report: each device's categories sum to its own step time.
            assert_eq!(r.report.devices.len(), dp);
            for (d, rk) in r.report.devices.iter().zip(&r.ranks) {
                let b = &d.breakdown;
                let sum = b.compute + b.dp_comm + b.opt_comm + b.idle;
                // The timed parts lie inside the rank's loop, so idle is never clamped.
                assert!(
                    (sum - rk.wall_s / 5.0).abs() < 1e-9,
                    "{b:?} vs {}",
                    rk.wall_s / 5.0
                );
                assert_eq!(sharding == Sharding::Optimizer, b.opt_comm > 0.0);
            }
            assert!(r.report.mfu > 0.0 && r.report.tokens_per_s > 0.0);
            // Sharding leaves each rank Adam moments for 1/dp of the parameters.
            match sharding {
                Sharding::None => {
                    unsharded_bytes.insert(dp, r.ranks[0].allocated_bytes);
                }
                Sharding::Optimizer => {
                    let full = unsharded_bytes[&dp];
                    let saved =
                        8 * n - 8 * pangu_trainer::comm::chunk(n as usize, dp, 0).len() as u64;
                    assert_eq!(r.ranks[0].allocated_bytes, full - saved);
                }
            }
        }
    }
}

#[test]
fn a_bad_split_is_rejected_with_the_reason() {
    let (cfg, s, single) = setup(0.0);
    let dist = DistConfig {
        dp: 3,
        sharding: Sharding::None,
        algo: CollectiveAlgorithm::Ring,
        timeout: Duration::from_secs(5),
    };
    let e = train_threads(&cfg, &s, &dist, &single.train, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dp 3 must divide the micro-batch of 4"), "{e}");
}

#[test]
fn remat_with_data_parallelism_changes_nothing() {
    let (cfg, mut s, single) = setup(0.1);
    let plain = DistConfig {
        dp: 2,
        sharding: Sharding::None,
        algo: CollectiveAlgorithm::Ring,
        timeout: Duration::from_secs(60),
    };
    let a = train_threads(&cfg, &s, &plain, &single.train, 3).unwrap();
    s.remat = true;
    let b = train_threads(&cfg, &s, &plain, &single.train, 3).unwrap();
    assert_eq!(a.losses, b.losses);
    assert_eq!(a.params, b.params);
    assert!(b.ranks[0].allocated_bytes < a.ranks[0].allocated_bytes);
}
