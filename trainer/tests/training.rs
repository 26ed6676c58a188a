//! Training on real text: the loss falls, a resumed run continues bit-identically, a session
//! (`Run::train_until`) stops where it should and evaluates and checkpoints on time, the KV
//! cache gives the full model's predictions, and bad inputs get clear errors.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pangu_model::ModelConfig;
use pangu_trainer::checkpoint;
use pangu_trainer::data;
use pangu_trainer::generate;
use pangu_trainer::model::{Acts, Batch, Model};
use pangu_trainer::session::{Checkpoints, Control, Stopped, Until};
use pangu_trainer::tokenizer::Tokenizer;
use pangu_trainer::train::{Run, Settings};
use pangu_trainer::TrainError;

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
fn a_session_evaluates_and_checkpoints_on_time_with_the_bits_of_the_plain_loop() {
    let text = corpus();
    let dir = tmpdir("session");
    let mut plain = new_run(&text, 7);
    let plain_losses: Vec<f64> = (0..7).map(|_| plain.step().loss).collect();
    let mut run = new_run(&text, 7);
    let until = Until {
        eval_every: 3,
        eval_samples: 8,
        checkpoints: Some(Checkpoints {
            dir: dir.clone(),
            every: 2,
        }),
        ..Until::steps(7)
    };
    let (mut losses, mut evals, mut saved) = (Vec::new(), Vec::new(), Vec::new());
    let out = run
        .train_until(&until, &mut |p| {
            losses.push(p.step.loss);
            if let Some(e) = p.eval {
                evals.push((p.step.step, e.step, e.samples));
            }
            if let Some(c) = p.checkpoint {
                saved.push((p.step.step, c.to_path_buf()));
            }
            Control::Continue
        })
        .unwrap();
    // The same steps in the same order as calling `step` 7 times: the same bits.
    assert_eq!(losses, plain_losses);
    assert!(run.state == plain.state, "weights or Adam state differ");
    assert_eq!(evals, [(3, 3, 8), (6, 6, 8)]);
    let steps: Vec<u64> = saved.iter().map(|s| s.0).collect();
    assert_eq!(steps, [2, 4, 6]);
    assert!(saved.iter().all(|(_, p)| p.join("manifest.json").is_file()));
    assert_eq!((out.stopped, out.steps), (Stopped::Steps, 7));
    let last = out.checkpoint.unwrap();
    assert!(last.ends_with("step-00000007"), "{}", last.display());
    assert_eq!(checkpoint::resolve(&dir).unwrap(), last);
    let fin = out.final_eval.unwrap();
    assert_eq!((fin.step, fin.loss), (7, plain.evaluate(usize::MAX).loss));
    // At its step count a session does nothing but the final evaluation; the checkpoint of
    // that step is written again (a resumed run's end).
    let again = run.train_until(&until, &mut |_| Control::Continue).unwrap();
    assert_eq!((again.stopped, again.steps), (Stopped::Steps, 0));
    assert_eq!(again.checkpoint.unwrap(), last);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_session_stops_at_the_deadline_or_when_told() {
    let text = corpus();
    let mut run = new_run(&text, 1000);
    // A deadline already past: not one step.
    let past = Until {
        deadline: Some(Duration::ZERO),
        ..Until::steps(1000)
    };
    let out = run.train_until(&past, &mut |_| Control::Continue).unwrap();
    assert_eq!(
        (out.stopped, out.steps, run.step),
        (Stopped::Deadline, 0, 0)
    );
    // Steps that take at least 50 ms against a deadline of 300 ms: stopped after a few.
    let soon = Until {
        deadline: Some(Duration::from_millis(300)),
        ..Until::steps(1000)
    };
    let out = run
        .train_until(&soon, &mut |_| {
            std::thread::sleep(Duration::from_millis(50));
            Control::Continue
        })
        .unwrap();
    assert_eq!(out.stopped, Stopped::Deadline);
    assert!((1..=7).contains(&out.steps), "{} steps", out.steps);
    assert_eq!(run.step, out.steps);
    assert!(out.final_eval.is_some());
    // The observer stops it after its second step, or aborts it (no final evaluation).
    let at = run.step;
    let out = run
        .train_until(&Until::steps(1000), &mut |p| {
            if p.step.step == at + 2 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(
        (out.stopped, out.steps, run.step),
        (Stopped::Observer, 2, at + 2)
    );
    assert_eq!(out.final_eval.unwrap().step, at + 2);
    let out = run
        .train_until(&Until::steps(1000), &mut |_| Control::Abort)
        .unwrap();
    assert_eq!((out.stopped, out.steps), (Stopped::Aborted, 1));
    assert!(out.final_eval.is_none() && out.checkpoint.is_none());
}

#[test]
fn a_session_stops_on_a_poisoned_run_naming_the_step() {
    let text = corpus();
    let dir = tmpdir("nan");
    let mut run = new_run(&text, 6);
    let until = Until {
        checkpoints: Some(Checkpoints {
            dir: dir.clone(),
            every: 1,
        }),
        ..Until::steps(3)
    };
    run.train_until(&until, &mut |_| Control::Continue).unwrap();
    // A NaN in the weights (as an overflow leaves): step 4's gradient norm is NaN. Its loss
    // is not: the cross-entropy clamps the NaN probabilities (-ln f64::MIN_POSITIVE).
    run.state.params.iter_mut().for_each(|p| *p = f32::NAN);
    let mut seen = 0;
    let until = Until { steps: 6, ..until };
    let e = run
        .train_until(&until, &mut |_| {
            seen += 1;
            Control::Continue
        })
        .unwrap_err();
    assert!(
        matches!(e, TrainError::Diverged { step: 4, grad_norm, .. } if grad_norm.is_nan()),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("became NaN at step 4") && msg.contains("--lr"),
        "{msg}"
    );
    // Stopped before the observer, an evaluation or a checkpoint of that step.
    assert_eq!(seen, 0);
    assert!(!dir.join("step-00000004").exists());
    assert!(checkpoint::resolve(&dir)
        .unwrap()
        .ends_with("step-00000003"));
    // An absurd learning rate: the first update overflows the weights, the second step fails.
    let cfg = small_config();
    let (train, val) = data::split(&text);
    let mut s = Settings::for_model(&cfg, 6);
    s.lr = 1e30;
    let tok = Tokenizer::from_json(&run.tokenizer.to_json(), Path::new("tokenizer.json")).unwrap();
    let mut wild = Run::new(&cfg, s, tok, train, val).unwrap();
    let e = wild
        .train_until(&Until::steps(6), &mut |_| Control::Continue)
        .unwrap_err();
    assert!(matches!(e, TrainError::Diverged { step: 2, .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("(now 1000000000000000000000000000000)"),
        "{e}"
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

/// A small Llama-style model: RMSNorm, SwiGLU, rotary embeddings, 4 heads over 2 key/value
/// heads, an untied head, no biases.
fn llama_config() -> ModelConfig {
    ModelConfig::from_toml(
        "name = \"test-llama\"\nlayers = 2\nhidden = 32\nheads = 4\nkv_heads = 2\nffn = 64\n\
         ffn_kind = \"swiglu\"\nnorm = \"rmsnorm\"\nposition = \"rotary\"\n\
         tied_embeddings = false\nbias = false\nvocab = 2500\nseq_len = 32\nglobal_batch = 4\n",
        "test",
    )
    .unwrap()
}

#[test]
fn kv_cache_decoding_matches_the_full_forward_pass() {
    for cfg in [small_config(), llama_config()] {
        kv_cache_matches(&cfg);
    }
}

fn kv_cache_matches(cfg: &ModelConfig) {
    let model = Model::new(cfg, 5).unwrap();
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
                "{}: position {pos} token {j}",
                cfg.name
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
