//! The distributed executor on threads equals the single-device run (same seed, global batch
//! and samples) within 1e-4 — losses per step and the final weights — for a matrix of plans:
//! each dimension alone, pairs, and dp2·tp2·pp2 on 8 devices; every schedule; optimizer
//! sharding on and off; remat on and off.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pangu_model::ModelConfig;
use pangu_strategies::StrategySpec;
use pangu_trainer::data;
use pangu_trainer::dist::{train_threads, DistConfig, DistResult};
use pangu_trainer::host::plan_for;
use pangu_trainer::model::{Layout, Part};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Run, Settings};

const STEPS: u64 = 5;

/// A fresh checkpoint folder under the temporary directory, and saving to it every 2 steps
/// with the run's tokenizer.
fn saving(tag: &str, single: &Run) -> (std::path::PathBuf, pangu_trainer::dist::Save) {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let save = pangu_trainer::dist::Save {
        dir: dir.clone(),
        every: 2,
        tokenizer_json: single.tokenizer.to_json(),
        tokenizer_hash: format!("{:016x}", single.tokenizer.hash()),
    };
    (dir, save)
}

fn setup(dropout: f64) -> (ModelConfig, Settings, Run) {
    // 4 layers (the last the query layer), 4 heads: room for tp 4, pp 4 and interleaving.
    setup_model(&format!(
        "name = \"dist-test\"\nlayers = 4\nhidden = 32\nheads = 4\nffn = 128\nvocab = 2500\nseq_len = 32\n\
         query_layer = true\ndropout = {dropout}\nglobal_batch = 8\n"
    ))
}

/// A tiny Llama-style model: RMSNorm, SwiGLU, rotary embeddings (θ 500000), 4 heads over 2
/// key/value heads, an untied head, no biases.
fn setup_llama(dropout: f64) -> (ModelConfig, Settings, Run) {
    setup_model(&format!(
        "name = \"dist-llama\"\nlayers = 4\nhidden = 32\nheads = 4\nkv_heads = 2\nffn = 64\n\
         ffn_kind = \"swiglu\"\nnorm = \"rmsnorm\"\nposition = \"rotary\"\nrope_theta = 500000.0\n\
         tied_embeddings = false\nbias = false\nvocab = 2500\nseq_len = 32\ndropout = {dropout}\n\
         global_batch = 8\n"
    ))
}

fn setup_model(toml: &str) -> (ModelConfig, Settings, Run) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/zh_poetry_hans.txt");
    let text = data::read_corpus(&p).unwrap();
    let cut = text[..40_000].rfind("\n\n").unwrap() + 2;
    let (train, val) = data::split(&text[..cut]);
    let cfg = ModelConfig::from_toml(toml, "test").unwrap();
    let dropout = cfg.dropout;
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

/// Trains `toml` with every group's collectives run by `algo` (a `[collectives]` value).
fn run(cfg: &ModelConfig, s: &Settings, single: &Run, toml: &str, algo: &str) -> DistResult {
    let toml = format!(
        "{toml}\n[collectives]\ntp = \"{algo}\"\ndp = \"{algo}\"\nopt = \"{algo}\"\npp = \"{algo}\"\n"
    );
    let plan = plan_for(cfg, &spec(&toml)).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let mut s = s.clone();
    s.micro_batches = plan.strategy.micro_batches as usize;
    let dist = DistConfig {
        timeout: Duration::from_secs(60),
        fail: None,
    };
    train_threads(&plan, &s, &dist, &single.train, STEPS).unwrap_or_else(|e| panic!("{toml}: {e}"))
}

#[test]
fn every_dimension_and_their_combinations_match_single_device() {
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    let (ring, hd, tree) = ("ring", "halving-doubling", "tree");
    let plans: &[(&str, &str)] = &[
        ("dp = 2", ring),
        ("dp = 4", hd),
        ("dp = 4\nopt_shard = \"zero1\"", hd),
        ("dp = 2\nopt_shard = \"mindspore\"", tree),
        ("tp = 2", ring),
        ("tp = 4", hd),
        ("pp = 2\nschedule = \"1f1b\"", ring),
        ("pp = 2\nschedule = \"gpipe\"", ring),
        ("pp = 4\nschedule = \"1f1b\"\nmicro_batches = 4", ring),
        // Fewer micro-batches than stages: 1F1B's warm-up clamps to the micro-batch count.
        ("pp = 4\nschedule = \"1f1b\"\nmicro_batches = 2", ring),
        ("pp = 2\nschedule = \"interleaved:2\"", ring),
        ("dp = 2\ntp = 2", ring),
        ("dp = 2\npp = 2\nopt_shard = \"zero1\"", ring),
        ("tp = 2\npp = 2\nremat = \"full\"", hd),
        ("dp = 2\ntp = 2\npp = 2", ring),
        ("tp = 2\nseq_parallel = true", ring),
        ("remat = \"selective\"", ring),
        ("remat = \"every:3\"", ring),
        (
            "dp = 2\npp = 2\nremat = \"every:2\"\nschedule = \"interleaved:2\"",
            ring,
        ),
        ("tp = 4\npp = 2\nseq_parallel = true\nremat = \"full\"", hd),
        (
            "dp = 2\ntp = 2\npp = 2\nschedule = \"gpipe\"\nopt_shard = \"zero1\"\nremat = \"full\"",
            tree,
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
fn data_parallel_buckets_are_reduced_while_backward_runs_in_the_plans_order() {
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    // 16 KiB buckets: a layer of this model is ~50 KiB of gradients, one bucket or more each.
    for toml in [
        "dp = 2\npp = 2\ngrad_bucket = \"16 KiB\"",
        "dp = 2\npp = 2\ngrad_bucket = \"16 KiB\"\nopt_shard = \"zero1\"",
        "dp = 2\npp = 2\nschedule = \"interleaved:2\"\ngrad_bucket = \"64 KiB\"",
    ] {
        let r = run(&cfg, &s, &single, toml, "ring");
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{toml}: loss {a} vs {b}");
        }
        assert!(rel_diff(&r.params, &single.state.params) < 1e-4, "{toml}");
        // Every rank issues the plan's buckets (the simulator's: see sim/tests/buckets.rs),
        // in its order, on the communication thread, every step.
        let plan = plan_for(&cfg, &spec(toml)).unwrap();
        for rk in &r.ranks {
            let want: Vec<(usize, usize)> = plan
                .grad_buckets(rk.stage as u32)
                .iter()
                .map(|b| (b.chunk, b.params as usize))
                .collect();
            assert!(want.len() >= 2, "{toml}: {want:?}");
            let got: Vec<(usize, usize)> = rk.bucket_log.clone();
            assert_eq!(
                got.len(),
                want.len() * STEPS as usize,
                "{toml} rank {}",
                rk.rank
            );
            for step in got.chunks(want.len()) {
                assert_eq!(step, &want[..], "{toml} rank {}", rk.rank);
            }
            assert_eq!(
                rk.overlapped_buckets,
                want.len() as u64 * STEPS,
                "rank {}",
                rk.rank
            );
        }
    }
}

#[test]
fn hierarchical_collectives_over_virtual_servers_match_single_device() {
    use pangu_trainer::host::plan_on;
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for (toml, servers) in [
        ("dp = 4\ntp = 2", 2),
        ("dp = 4\nopt_shard = \"zero1\"", 2),
        ("dp = 2\ntp = 2\npp = 2", 4),
    ] {
        let full = format!("{toml}\n[collectives]\ndp = \"hierarchical\"\nopt = \"hierarchical\"\ntp = \"hierarchical\"\n");
        let plan = plan_on(&cfg, &spec(&full), servers).unwrap();
        let mut s = s.clone();
        s.micro_batches = plan.strategy.micro_batches as usize;
        let dist = DistConfig {
            timeout: Duration::from_secs(60),
            fail: None,
        };
        let r = train_threads(&plan, &s, &dist, &single.train, STEPS).unwrap();
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{toml}: loss {a} vs {b}");
        }
        assert!(rel_diff(&r.params, &single.state.params) < 1e-4, "{toml}");
        let dp: Vec<u32> = plan.mesh.group_of(pangu_strategies::strategy::Axis::Dp, 0);
        let algo = plan.algorithm(pangu_strategies::collective::CollectiveGroup::Dp, &dp);
        if dp.len() == 4 && servers == 2 {
            assert!(
                matches!(
                    algo,
                    pangu_strategies::CollectiveAlgorithm::Hierarchical { .. }
                ),
                "{toml}: {algo:?}"
            );
        }
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
        let r = run(&cfg, &s, &single, toml, "ring");
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{toml}: loss {a} vs {b}");
        }
        assert!(rel_diff(&r.params, &single.state.params) < 1e-4, "{toml}");
    }
}

#[test]
fn sharding_and_remat_cut_the_bytes_each_rank_allocates() {
    let (cfg, s, single) = setup(0.0);
    let plain = run(&cfg, &s, &single, "dp = 4", "ring");
    let sharded = run(&cfg, &s, &single, "dp = 4\nopt_shard = \"zero1\"", "ring");
    // Sharding keeps Adam moments for rank 0's chunk of every bucket only.
    let plan = plan_for(&cfg, &spec("dp = 4\nopt_shard = \"zero1\"")).unwrap();
    let layout = pangu_trainer::model::Layout::new(&cfg).unwrap();
    let buckets = pangu_trainer::host::chunk_buckets(&plan, 0, 0, &layout);
    let shard: usize = pangu_trainer::host::shard_ranges(&plan, &buckets, &layout, 0)
        .iter()
        .map(|r| r.len())
        .sum();
    let n = single.state.params.len();
    assert!(shard * 4 <= n + 4 * buckets.len() && shard * 4 + 4 * buckets.len() >= n);
    assert_eq!(
        sharded.ranks[0].allocated_bytes,
        plain.ranks[0].allocated_bytes - 8 * (n - shard) as u64
    );
    let remat = run(&cfg, &s, &single, "dp = 4\nremat = \"full\"", "ring");
    assert_eq!(plain.losses, remat.losses, "remat alone changes nothing");
    assert_eq!(plain.params, remat.params);
    assert!(remat.ranks[0].allocated_bytes < plain.ranks[0].allocated_bytes);
    // Tensor parallelism splits the layer weights; sequence parallelism the residual stream.
    let tp = run(&cfg, &s, &single, "tp = 2", "ring");
    assert!(tp.ranks[0].allocated_bytes < plain.ranks[0].allocated_bytes);
    let sp = run(&cfg, &s, &single, "tp = 2\nseq_parallel = true", "ring");
    assert!(sp.ranks[0].allocated_bytes < tp.ranks[0].allocated_bytes);
    // Selective remat drops the attention core; every:2 keeps every other layer's input.
    let sel = run(&cfg, &s, &single, "dp = 4\nremat = \"selective\"", "ring");
    let every = run(&cfg, &s, &single, "dp = 4\nremat = \"every:2\"", "ring");
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
    use pangu_trainer::dist::{train_threads_with, Io};
    use pangu_trainer::sharded;
    let (cfg, s, single) = setup(0.0);
    let (dir, save) = saving("pangu-sharded", &single);
    let dist = DistConfig {
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

#[test]
fn llama_style_model_matches_single_device_on_every_dimension() {
    // Grouped-query attention split by heads over tp (each device its 1 key/value head with
    // its 2 query heads), SwiGLU's gate and up by columns, the untied head by vocabulary rows.
    let (cfg, s, mut single) = setup_llama(0.1);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for (toml, algo) in [
        ("dp = 2", "ring"),
        ("tp = 2", "ring"),
        ("pp = 2\nschedule = \"1f1b\"", "ring"),
        ("tp = 2\npp = 2\nschedule = \"1f1b\"", "halving-doubling"),
        ("dp = 2\nopt_shard = \"zero1\"", "ring"),
        ("tp = 2\nseq_parallel = true\nremat = \"full\"", "ring"),
        ("dp = 2\npp = 2\nschedule = \"interleaved:2\"", "tree"),
    ] {
        let r = run(&cfg, &s, &single, toml, algo);
        let name = toml.replace('\n', " ");
        assert_eq!(r.losses.len(), losses.len());
        for (a, b) in r.losses.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-4, "{name}: loss {a} vs {b}");
        }
        let d = rel_diff(&r.params, &single.state.params);
        assert!(d < 1e-4, "{name}: weights differ by {d}");
    }
    assert!(losses[STEPS as usize - 1] < losses[0], "{losses:?}");
}

#[test]
fn tensor_parallelism_must_divide_the_key_value_heads() {
    let (cfg, _, _) = setup_llama(0.0);
    // The plan refuses it, and so does the executor's layout of a device's part.
    let e = plan_for(&cfg, &spec("tp = 4")).unwrap_err().to_string();
    assert!(e.contains("tp 4 does not divide kv_heads 2"), "{e}");
    let part = Part {
        tp: 4,
        ..Part::whole(4)
    };
    let e = Layout::part(&cfg, &part).unwrap_err().to_string();
    assert!(
        e.contains("degree 4 must divide the key/value heads (2)"),
        "{e}"
    );
}

/// Trains `toml` (with its own `[collectives]`, if any) and holds losses and weights to the
/// single-device run's within 1e-4.
fn assert_matches(cfg: &ModelConfig, s: &Settings, single: &Run, losses: &[f64], toml: &str) {
    let plan = plan_for(cfg, &spec(toml)).unwrap_or_else(|e| panic!("{toml}: {e}"));
    let mut s = s.clone();
    s.micro_batches = plan.strategy.micro_batches as usize;
    let dist = DistConfig {
        timeout: Duration::from_secs(60),
        fail: None,
    };
    let r = train_threads(&plan, &s, &dist, &single.train, STEPS)
        .unwrap_or_else(|e| panic!("{toml}: {e}"));
    let name = toml.replace('\n', " ");
    assert_eq!(r.losses.len(), losses.len(), "{name}");
    for (a, b) in r.losses.iter().zip(losses) {
        assert!((a - b).abs() < 1e-4, "{name}: loss {a} vs {b}");
    }
    let d = rel_diff(&r.params, &single.state.params);
    assert!(d < 1e-4, "{name}: weights differ by {d}");
    if plan.strategy.cp > 1 {
        // The K/V exchange ran and was measured as context-parallel communication.
        assert!(
            r.report.devices.iter().all(|d| d.breakdown.cp_comm > 0.0),
            "{name}"
        );
    }
}

#[test]
fn context_parallelism_matches_single_device() {
    // The PanGu-α architecture (learned positions, the query layer), with dropout: the
    // masks are keyed on global rows and (query, key) pairs, so they match too.
    let (cfg, s, mut single) = setup(0.1);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for toml in [
        "cp = 2",
        "cp = 2\ncp_comm = \"all-gather\"\n[collectives]\ncp = \"halving-doubling\"",
        "cp = 2\ntp = 2",
        "cp = 2\npp = 2\ndp = 2\nopt_shard = \"zero1\"",
        "cp = 4\nremat = \"selective\"",
        "cp = 2\ntp = 2\nseq_parallel = true\nremat = \"full\"",
    ] {
        assert_matches(&cfg, &s, &single, &losses, toml);
    }
}

#[test]
fn context_parallelism_matches_single_device_for_a_llama_style_model() {
    // Rotary angles by global position, grouped-query K/V (2 heads) exchanged.
    let (cfg, s, mut single) = setup_llama(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for toml in [
        "cp = 2",
        "cp = 2\ntp = 2\ncp_comm = \"all-gather\"",
        "cp = 2\npp = 2\ndp = 2\nopt_shard = \"zero1\"",
    ] {
        assert_matches(&cfg, &s, &single, &losses, toml);
    }
}

#[test]
fn checkpoints_move_between_context_parallel_and_plain_plans() {
    use pangu_trainer::dist::{train_threads_with, Io, Save};
    use pangu_trainer::sharded;
    let (cfg, s, single) = setup(0.0);
    let dist = DistConfig {
        timeout: Duration::from_secs(60),
        fail: None,
    };
    let go = |toml: &str, steps: u64, io: Io<'_>| {
        let plan = plan_for(&cfg, &spec(toml)).unwrap();
        let mut s = s.clone();
        s.micro_batches = plan.strategy.micro_batches as usize;
        train_threads_with(&plan, &s, &dist, &single.train, steps, io).unwrap()
    };
    for (first, then) in [
        ("cp = 2\nopt_shard = \"zero1\"", "dp = 2"),
        ("dp = 2", "cp = 2\ndp = 2"),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "pangu-cp-ck-{}-{}",
            std::process::id(),
            first.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let save = Save {
            dir: dir.clone(),
            every: 2,
            tokenizer_json: single.tokenizer.to_json(),
            tokenizer_hash: format!("{:016x}", single.tokenizer.hash()),
        };
        let full = go(
            first,
            4,
            Io {
                resume: None,
                save: Some(&save),
            },
        );
        let at2 = sharded::load_whole(&dir.join("step-00000002")).unwrap();
        let re = go(
            then,
            4,
            Io {
                resume: Some((2, &at2.state)),
                save: None,
            },
        );
        for (a, b) in re.losses.iter().zip(&full.losses[2..]) {
            assert!((a - b).abs() < 1e-4, "{first} → {then}: {a} vs {b}");
        }
        assert!(
            rel_diff(&re.params, &full.params) < 1e-4,
            "{first} → {then}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn padded_vocabularies_match_the_unpadded_single_device_run() {
    // The vocabulary of 2500 padded to 2560 (128·tp) and 4096 (1024·4: tp rank 3 holds
    // padding only); the padded logits are masked out of the softmax.
    let (cfg, s, mut single) = setup(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    for toml in [
        "vocab_divisible_by = 128",
        "tp = 2\nvocab_divisible_by = 128",
        "tp = 4\nvocab_divisible_by = 1024",
        "tp = 2\npp = 2\nvocab_divisible_by = 128\nseq_parallel = true",
    ] {
        let plan = plan_for(&cfg, &spec(toml)).unwrap();
        assert!(plan.padded_vocab > plan.model.vocab, "{toml}");
        assert_matches(&cfg, &s, &single, &losses, toml);
    }
    // The untied head of a Llama-style model is padded the same way.
    let (cfg, s, mut single) = setup_llama(0.0);
    let losses: Vec<f64> = (0..STEPS).map(|_| single.step().loss).collect();
    assert_matches(
        &cfg,
        &s,
        &single,
        &losses,
        "tp = 2\nvocab_divisible_by = 128\ncp = 2",
    );
}

#[test]
fn checkpoints_resume_across_vocabulary_paddings() {
    use pangu_trainer::dist::{train_threads_with, Io};
    use pangu_trainer::sharded;
    let (cfg, s, single) = setup(0.0);
    let (dir, save) = saving("pangu-pad-ck", &single);
    let dist = DistConfig {
        timeout: Duration::from_secs(60),
        fail: None,
    };
    let go = |toml: &str, io: Io<'_>| {
        let plan = plan_for(&cfg, &spec(toml)).unwrap();
        let mut s = s.clone();
        s.micro_batches = plan.strategy.micro_batches as usize;
        train_threads_with(&plan, &s, &dist, &single.train, 4, io).unwrap()
    };
    let padded = "tp = 2\nvocab_divisible_by = 128\nopt_shard = \"zero1\"\ndp = 2";
    let full = go(
        padded,
        Io {
            resume: None,
            save: Some(&save),
        },
    );
    // The checkpoint holds the real vocabulary only: the whole model's layout.
    let at2 = sharded::load_whole(&dir.join("step-00000002")).unwrap();
    assert_eq!(at2.state.params.len(), Layout::new(&cfg).unwrap().total);
    for other in ["tp = 2", "tp = 4\nvocab_divisible_by = 1024", padded] {
        let re = go(
            other,
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
    let _ = std::fs::remove_dir_all(&dir);
}
