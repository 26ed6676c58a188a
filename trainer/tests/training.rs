//! Training on real text: the loss falls, a resumed run continues bit-identically, the KV
//! cache gives the full model's predictions, and bad inputs get clear errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use pangu_model::ModelConfig;
use pangu_trainer::checkpoint;
use pangu_trainer::data;
use pangu_trainer::generate;
use pangu_trainer::model::{Acts, Batch, Model};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Run, Settings};

fn corpus() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/zh_poetry_hans.txt");
    let text = data::read_corpus(&p).unwrap();
    // The first ~40 KB, cut at a work boundary.
    let cut = text[..40_000].rfind("\n\n").unwrap() + 2;
    text[..cut].to_string()
}

fn small_config() -> ModelConfig {
    ModelConfig::from_toml(
        "name = \"test-small\"\nlayers = 3\nhidden = 32\nheads = 2\nffn = 128\nvocab = 2500\nseq_len = 32\n\
         query_layer = true\ndropout = 0.1\nglobal_batch = 4\n",
        "test",
    )
    .unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pangu-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn new_run(text: &str, steps: u64) -> Run {
    let cfg = small_config();
    let (train, val) = data::split(text);
    let tok = Tokenizer::train(train, 2500).unwrap();
    let mut s = Settings::for_model(&cfg, steps);
    s.micro_batches = 2;
    s.lr = 3e-3;
    s.warmup = 5;
    Run::new(&cfg, s, tok, train, val).unwrap()
}

#[test]
fn loss_falls_on_real_chinese_text() {
    let text = corpus();
    let mut run = new_run(&text, 80);
    let before = run.evaluate(64);
    let first = run.step().loss;
    let mut last = first;
    for _ in 1..80 {
        last = run.step().loss;
    }
    let after = run.evaluate(64);
    assert!(first > 6.5, "a fresh model is near ln V = 7.8: {first}");
    assert!(last < first - 1.5, "training loss {first} -> {last}");
    assert!(
        after.loss < before.loss - 1.0,
        "held-out {} -> {}",
        before.loss,
        after.loss
    );
    assert!(after.loss_per_char.is_finite() && after.loss_per_char > 0.0);
}

#[test]
fn twenty_steps_equal_ten_plus_resume_plus_ten() {
    let text = corpus();
    let (train, val) = data::split(&text);
    let mut straight = new_run(&text, 20);
    let losses_a: Vec<f64> = (0..20).map(|_| straight.step().loss).collect();

    let mut first = new_run(&text, 20);
    let mut losses_b: Vec<f64> = (0..10).map(|_| first.step().loss).collect();
    let dir = tmpdir("resume");
    let saved = first.save(&dir).unwrap();
    drop(first);
    // No temporary folder is left behind and `latest` names the checkpoint.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    assert_eq!(checkpoint::resolve(&dir).unwrap(), saved);
    let mut resumed = Run::resume(&dir, train, val).unwrap();
    assert_eq!(resumed.step, 10);
    losses_b.extend((0..10).map(|_| resumed.step().loss));
    assert_eq!(losses_a, losses_b);
    assert!(
        straight.state == resumed.state,
        "weights and Adam state differ after resume"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_threads_train_exactly_like_one() {
    // Large enough that the products split into row blocks, the backward's weight and input
    // gradients run as a pair, and the element-wise kernels run in parallel (each above its
    // threshold); dropout on. Every output element is computed by one thread in the same
    // order either way, so the runs agree bit for bit.
    let cfg = ModelConfig::from_toml(
        "name = \"test-threads\"\nlayers = 2\nhidden = 128\nheads = 4\nffn = 512\nvocab = 2500\n\
         seq_len = 64\nquery_layer = true\ndropout = 0.1\nglobal_batch = 4\n",
        "test",
    )
    .unwrap();
    let text = corpus();
    let (train, val) = data::split(&text);
    let tok = Tokenizer::train(train, 2500).unwrap().to_json();
    let run = |threads: usize| {
        let mut s = Settings::for_model(&cfg, 3);
        s.warmup = 1;
        let tok = Tokenizer::from_json(&tok, Path::new("tokenizer.json")).unwrap();
        let mut run = Run::new(&cfg, s, tok, train, val).unwrap();
        let steps: Vec<(f64, f64)> = pangu_trainer::linalg::with_threads(threads, || {
            (0..3)
                .map(|_| {
                    let info = run.step();
                    (info.loss, info.grad_norm)
                })
                .collect()
        });
        (steps, run.state)
    };
    let (one, state_one) = run(1);
    let (two, state_two) = run(2);
    assert_eq!(one, two);
    assert!(state_one == state_two, "weights or Adam state differ");
}

#[test]
fn kv_cache_decoding_matches_the_full_forward_pass() {
    let cfg = small_config();
    let model = Model::new(&cfg, 5).unwrap();
    let p = model.layout.init::<f32>(5);
    let tokens: Vec<u32> = (0..=32).map(|i| 10 + (i * 37 % 900) as u32).collect();
    let mut batch = Batch::from_samples(&[&tokens], &[0], 32);
    batch.normalise(32);
    let mut acts = Acts::<f32>::new(&model.dims(), 1, false);
    model.forward(&p, &mut acts, &batch, 0, false);
    let full = acts.probs().to_vec();
    let mut cache = generate::KvCache::new(&model.dims());
    let mut logits = Vec::new();
    let v = cfg.vocab as usize;
    for (pos, &t) in tokens[..32].iter().enumerate() {
        let l = generate::step(&model, &p, &mut cache, t, &mut logits);
        let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = l.iter().map(|x| (x - mx).exp()).sum();
        for j in 0..v {
            let pj = (l[j] - mx).exp() / z;
            assert!(
                (pj - full[pos * v + j]).abs() < 1e-5,
                "position {pos} token {j}"
            );
        }
    }
    // Greedy generation is deterministic and stays in the vocabulary.
    let cfg_s = generate::Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1,
    };
    let a = generate::generate(&model, &p, &tokens[..5], 10, 900, &cfg_s);
    let b = generate::generate(&model, &p, &tokens[..5], 10, 900, &cfg_s);
    assert_eq!(a, b);
    assert!(a.iter().all(|&t| t < 900));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tmpdir("bad");
    // Missing corpus, invalid UTF-8.
    let e = data::read_corpus(&dir.join("none.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.txt"), "{e}");
    std::fs::write(dir.join("bad.txt"), b"\xe5\xba\x8a\xff\xfe").unwrap();
    let e = data::read_corpus(&dir.join("bad.txt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not UTF-8") && e.contains("offset 3"), "{e}");

    let text = corpus();
    let (train, val) = data::split(&text);
    let mut run = new_run(&text, 3);
    run.step();
    let ck = run.save(&dir.join("run")).unwrap();
    // A checkpoint of another model.
    let mut other = small_config();
    other.hidden = 64;
    let om = Model::new(&other, 1).unwrap();
    let e = checkpoint::load(&ck, &om.layout).unwrap_err().to_string();
    assert!(e.contains("another model"), "{e}");
    // A truncated weights file.
    let w = ck.join("weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = Run::resume(&dir.join("run"), train, val)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated or corrupt"), "{e}");
    // Not a checkpoint at all.
    let e = Run::resume(&dir, train, val).unwrap_err().to_string();
    assert!(e.contains("no checkpoint here"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
