//! The distributed executor on threads equals the single-device run (same seed, global batch
//! and samples) within 1e-4 — losses per step and the final weights — for a matrix of plans:
//! each dimension alone, pairs, and dp2·tp2·pp2 on 8 devices; every schedule; optimizer
//! sharding on and off; remat on and off.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pangu_model::ModelConfig;
use pangu_strategies::{CollectiveAlgorithm, StrategySpec};
use pangu_trainer::data;
use pangu_trainer::dist::{plan_for, train_threads, DistConfig, DistResult};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Run, Settings};

const STEPS: u64 = 5;

fn setup(dropout: f64) -> (ModelConfig, Settings, Run) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/zh_poetry_hans.txt");
    let text = data::read_corpus(&p).unwrap();
    let cut = text[..40_000].rfind("\n\n").unwrap() + 2;
    let (train, val) = data::split(&text[..cut]);
    // 4 layers (the last the query layer), 4 heads: room for tp 4, pp 4 and interleaving.
    let cfg = ModelConfig::from_toml(
        &format!(
            "name = \"dist-test\"\nlayers = 4\nhidden = 32\nheads = 4\nffn = 128\nvocab = 2500\nseq_len = 32\n\
             query_layer = true\ndropout = {dropout}\nglobal_batch = 8\n"
        ),
        "test",
    )
    .unwrap();
    let tok = Tokenizer::train(train, 2500).unwrap();
    let mut s = Settings::for_model(&cfg, STEPS);
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

fn spec(toml: &str) -> StrategySpec {
    StrategySpec::from_toml(toml, "test").unwrap()
}

fn run(
    cfg: &ModelConfig,
    s: &Settings,
    single: &Run,
    toml: &str,
    algo: CollectiveAlgorithm,
) -> DistResult {
    let plan = plan_for(cfg, &spec(toml)).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let mut s = s.clone();
    s.micro_batches = plan.strategy.micro_batches as usize;
    let dist = DistConfig {
        algo,
        timeout: Duration::from_secs(60),
        fail: None,
    };
    train_threads(&plan, &s, &dist, &single.train, STEPS).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

#[test]
fn every_dimension_and_their_combinations_match_single_device() {
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    use CollectiveAlgorithm::{DoubleBinaryTree as Tree, HalvingDoubling as Hd, Ring};
    let plans: &[(&str, CollectiveAlgorithm)] = &[
        ("dp = 2", Ring),
        ("dp = 4", Hd),
        ("dp = 4\nopt_shard = \"zero1\"", Hd),
        ("dp = 2\nopt_shard = \"mindspore\"", Tree),
        ("tp = 2", Ring),
        ("tp = 4", Hd),
        ("pp = 2\nschedule = \"1f1b\"", Ring),
        ("pp = 2\nschedule = \"gpipe\"", Ring),
        ("pp = 4\nschedule = \"1f1b\"\nmicro_batches = 4", Ring),
        ("pp = 2\nschedule = \"interleaved:2\"", Ring),
        ("dp = 2\ntp = 2", Ring),
        ("dp = 2\npp = 2\nopt_shard = \"zero1\"", Ring),
        ("tp = 2\npp = 2\nremat = \"full\"", Hd),
        ("dp = 2\ntp = 2\npp = 2", Ring),
        ("tp = 2\nseq_parallel = true", Ring),
        ("remat = \"selective\"", Ring),
        ("remat = \"every:3\"", Ring),
        (
            "dp = 2\npp = 2\nremat = \"every:2\"\nschedule = \"interleaved:2\"",
            Ring,
        ),
        ("tp = 4\npp = 2\nseq_parallel = true\nremat = \"full\"", Hd),
        (
            "dp = 2\ntp = 2\npp = 2\nschedule = \"gpipe\"\nopt_shard = \"zero1\"\nremat = \"full\"",
            Tree,
        ),
    ];
    for &(toml, algo) in plans {
        let r = run(&cfg, &s, &single, toml, algo);
        let name = toml.replace('\n', " ");
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{name}: loss {a} vs {b}");
        }
        assert_eq!(r.losses.len(), losses.len());
        let d = rel_diff(&r.params, &single.state.params);
        assert!(d < 1e-4, "{name}: weights differ by {d}");
        // The measured report: each device's categories sum to its own step time.
        assert_eq!(r.report.devices.len(), r.ranks.len());
        for (dv, rk) in r.report.devices.iter().zip(&r.ranks) {
            let b = &dv.breakdown;
            let sum =
                b.compute + b.tp_comm + b.pp_comm + b.bubble + b.dp_comm + b.opt_comm + b.idle;
            assert!(
                (sum - rk.wall_s / STEPS as f64).abs() < 1e-9,
                "{name}: {b:?}"
            );
            assert_eq!(toml.contains("tp = "), b.tp_comm > 0.0, "{name}: {b:?}");
            assert_eq!(
                toml.contains("opt_shard"),
                b.opt_comm > 0.0,
                "{name}: {b:?}"
            );
        }
        assert!(r.report.mfu > 0.0 && r.report.tokens_per_s > 0.0);
    }
}

#[test]
fn data_parallel_buckets_are_reduced_while_backward_runs() {
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    // 16 KiB buckets: a layer of this model is ~50 KiB of gradients, one bucket or more each.
    let r = run(
        &cfg,
        &s,
        &single,
        "dp = 2\npp = 2\ngrad_bucket = \"16 KiB\"",
        CollectiveAlgorithm::Ring,
    );
    for (a, b) in r.losses.iter().zip(&losses) {
        assert!((a - b).abs() < 1e-4, "loss {a} vs {b}");
    }
    assert!(rel_diff(&r.params, &single.state.params) < 1e-4);
    // Two layers per stage, one bucket per layer, every step.
    for rk in &r.ranks {
        assert_eq!(rk.overlapped_buckets, 2 * STEPS, "rank {}", rk.rank);
    }
}

#[test]
fn dropout_masks_follow_global_indices_across_tensor_and_pipeline_splits() {
    let (cfg, s, mut single) = setup(0.1);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for toml in [
        "dp = 2\ntp = 2\npp = 2",
        "tp = 2\npp = 2\nseq_parallel = true",
    ] {
        let r = run(&cfg, &s, &single, toml, CollectiveAlgorithm::Ring);
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{toml}: loss {a} vs {b}");
        }
        assert!(rel_diff(&r.params, &single.state.params) < 1e-4, "{toml}");
    }
}

#[test]
fn sharding_and_remat_cut_the_bytes_each_rank_allocates() {
    let (cfg, s, single) = setup(0.0);
    let plain = run(&cfg, &s, &single, "dp = 4", CollectiveAlgorithm::Ring);
    let sharded = run(
        &cfg,
        &s,
        &single,
        "dp = 4\nopt_shard = \"zero1\"",
        CollectiveAlgorithm::Ring,
    );
    let n = single.state.params.len();
    let saved = 8 * (n - pangu_trainer::comm::chunk(n, 4, 0).len()) as u64;
    // Without sharding, the overlapped reduction also holds copies of the layers' gradients
    // (its fusion buckets, all in flight until the optimizer step): 4 bytes per layer weight.
    let layer_params: usize = pangu_trainer::model::Layout::new(&cfg)
        .unwrap()
        .layers
        .iter()
        .map(|l| l.span().len())
        .sum();
    assert_eq!(
        sharded.ranks[0].allocated_bytes,
        plain.ranks[0].allocated_bytes - saved - 4 * layer_params as u64
    );
    let remat = run(
        &cfg,
        &s,
        &single,
        "dp = 4\nremat = \"full\"",
        CollectiveAlgorithm::Ring,
    );
    assert_eq!(plain.losses, remat.losses, "remat alone changes nothing");
    assert_eq!(plain.params, remat.params);
    assert!(remat.ranks[0].allocated_bytes < plain.ranks[0].allocated_bytes);
    // Tensor parallelism splits the layer weights; sequence parallelism the residual stream.
    let tp = run(&cfg, &s, &single, "tp = 2", CollectiveAlgorithm::Ring);
    assert!(tp.ranks[0].allocated_bytes < plain.ranks[0].allocated_bytes);
    let sp = run(
        &cfg,
        &s,
        &single,
        "tp = 2\nseq_parallel = true",
        CollectiveAlgorithm::Ring,
    );
    assert!(sp.ranks[0].allocated_bytes < tp.ranks[0].allocated_bytes);
    // Selective remat drops the attention core; every:2 keeps every other layer's input.
    let sel = run(
        &cfg,
        &s,
        &single,
        "dp = 4\nremat = \"selective\"",
        CollectiveAlgorithm::Ring,
    );
    let every = run(
        &cfg,
        &s,
        &single,
        "dp = 4\nremat = \"every:2\"",
        CollectiveAlgorithm::Ring,
    );
    for r in [&sel, &every] {
        assert_eq!(plain.losses, r.losses, "remat alone changes nothing");
        assert_eq!(plain.params, r.params);
    }
    let bytes = |r: &DistResult| r.ranks[0].allocated_bytes;
    assert!(bytes(&sel) < bytes(&plain));
    assert!(bytes(&remat) < bytes(&every) && bytes(&every) < bytes(&plain));
}

#[test]
fn bad_plans_are_rejected_with_the_reason() {
    let (cfg, _, _) = setup(0.0);
    let e = plan_for(&cfg, &spec("dp = 3")).unwrap_err().to_string();
    assert!(e.contains("global batch 8 does not split over dp 3"), "{e}");
    let e = plan_for(&cfg, &spec("tp = 3")).unwrap_err().to_string();
    assert!(e.contains("tp 3") || e.contains("tp = 3"), "{e}");
    let e = plan_for(&cfg, &spec("pp = 8")).unwrap_err().to_string();
    assert!(e.contains("pp 8") || e.contains("8 stages"), "{e}");
    let (cfg, s, single) = setup(0.0);
    let plan = plan_for(&cfg, &spec("tp = 2\nprecision = \"fp16\"")).unwrap();
    let dist = DistConfig {
        algo: CollectiveAlgorithm::Ring,
        timeout: Duration::from_secs(5),
        fail: None,
    };
    let e = train_threads(&plan, &s, &dist, &single.train, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fp32"), "{e}");
}

#[test]
fn sharded_checkpoints_resume_under_the_same_plan_and_reshard_to_another() {
    use pangu_trainer::dist::{train_threads_with, Io, Save};
    use pangu_trainer::sharded;
    let (cfg, s, single) = setup(0.0);
    let dir = std::env::temp_dir().join(format!("pangu-sharded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let save = Save {
        dir: dir.clone(),
        every: 2,
        tokenizer_json: single.tokenizer.to_json(),
        tokenizer_hash: format!("{:016x}", single.tokenizer.hash()),
    };
    let dist = DistConfig {
        algo: CollectiveAlgorithm::Ring,
        timeout: Duration::from_secs(60),
        fail: None,
    };
    let go = |toml: &str, steps: u64, io: Io<'_>| {
        let plan = plan_for(&cfg, &spec(toml)).unwrap();
        let mut s = s.clone();
        s.micro_batches = plan.strategy.micro_batches as usize;
        train_threads_with(&plan, &s, &dist, &single.train, steps, io).unwrap()
    };
    let first = "dp = 2\ntp = 2\nopt_shard = \"zero1\"";
    let full = go(
        first,
        4,
        Io {
            resume: None,
            save: Some(&save),
        },
    );
    assert_eq!(full.losses.len(), 4);
    assert!(dir.join("step-00000002/rank-00003.safetensors").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("latest")).unwrap(),
        "step-00000004"
    );
    let at2 = sharded::load_whole(&dir.join("step-00000002")).unwrap();
    assert_eq!(at2.step, 2);
    // The same plan continues bit for bit.
    let same = go(
        first,
        4,
        Io {
            resume: Some((2, &at2.state)),
            save: None,
        },
    );
    assert_eq!(same.losses, full.losses[2..]);
    assert_eq!(same.params, full.params);
    // Re-sharded to tensor parallelism 4 (and to a pipeline), equal within 1e-4.
    for other in ["tp = 4", "pp = 2\ndp = 2\nopt_shard = \"zero1\""] {
        let re = go(
            other,
            4,
            Io {
                resume: Some((2, &at2.state)),
                save: None,
            },
        );
        for (a, b) in re.losses.iter().zip(&full.losses[2..]) {
            assert!((a - b).abs() < 1e-4, "{other}: {a} vs {b}");
        }
        assert!(rel_diff(&re.params, &full.params) < 1e-4, "{other}");
    }
    // The last checkpoint holds the final weights; a damaged rank file is named.
    let at4 = sharded::load_whole(&dir).unwrap();
    assert_eq!(at4.state.params, full.params);
    let f = dir.join("step-00000004/rank-00002.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = sharded::load_whole(&dir).unwrap_err().to_string();
    assert!(
        e.contains("rank-00002.safetensors") && e.contains("truncated"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_panicking_rank_stops_every_rank_and_leaves_whole_checkpoints() {
    use pangu_trainer::dist::{train_threads_with, Io, Save};
    let (cfg, s, single) = setup(0.0);
    let dir = std::env::temp_dir().join(format!("pangu-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let save = Save {
        dir: dir.clone(),
        every: 1,
        tokenizer_json: single.tokenizer.to_json(),
        tokenizer_hash: format!("{:016x}", single.tokenizer.hash()),
    };
    let plan = plan_for(&cfg, &spec("dp = 2\ntp = 2\npp = 2\nmicro_batches = 2")).unwrap();
    let dist = DistConfig {
        algo: CollectiveAlgorithm::Ring,
        timeout: Duration::from_secs(20),
        fail: Some((5, 2)),
    };
    let t = std::time::Instant::now();
    let e = train_threads_with(
        &plan,
        &s,
        &dist,
        &single.train,
        STEPS,
        Io {
            resume: None,
            save: Some(&save),
        },
    )
    .unwrap_err()
    .to_string();
    // The root cause comes first; the others stopped because a peer left, not by timeout.
    assert!(
        e.starts_with("distributed run failed: rank 5 panicked: fault injected at step 2"),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    // Steps 1 and 2 were saved whole; nothing of step 3 was published.
    assert_eq!(
        std::fs::read_to_string(dir.join("latest")).unwrap(),
        "step-00000002"
    );
    assert!(!dir.join("step-00000003").exists());
    pangu_trainer::sharded::load_whole(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
