//! Every backward pass against central finite differences, in f64 on small shapes: each kernel
//! alone, then the whole model (every parameter, with and without dropout, with an EOD inside a
//! sample and a padded input).
#![allow(clippy::unwrap_used)]

use pangu_model::ModelConfig;
use pangu_trainer::kernels::{self as k, AttnDims, Dropout};
use pangu_trainer::model::{special, Acts, Batch, Model};
use pangu_trainer::rng;

fn vals(n: usize, seed: u64) -> Vec<f64> {
    (0..n).map(|i| rng::normal(seed, 1, i as u64)).collect()
}

/// Central difference of `f` with respect to every element of `x`.
fn numeric(x: &mut [f64], f: &mut dyn FnMut(&[f64]) -> f64) -> Vec<f64> {
    let eps = 1e-6;
    (0..x.len())
        .map(|i| {
            let old = x[i];
            x[i] = old + eps;
            let up = f(x);
            x[i] = old - eps;
            let down = f(x);
            x[i] = old;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

fn assert_close(analytic: &[f64], numeric: &[f64], what: &str) {
    let scale = numeric.iter().map(|v| v.abs()).fold(1e-3, f64::max);
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!(
            (a - n).abs() <= 1e-6 * scale + 1e-8,
            "{what}[{i}]: analytic {a} vs numeric {n}"
        );
    }
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    // d = 13: the row sums' 8-lane part and their remainder.
    let (rows, d) = (3, 13);
    let mut x = vals(rows * d, 1);
    let g = vals(d, 2);
    let b = vals(d, 3);
    let r = vals(rows * d, 4); // projection of the output to a scalar
    let loss = |x: &[f64], g: &[f64], b: &[f64]| {
        let mut o = vec![0.0; rows * d];
        let (mut m, mut s) = (vec![0.0; rows], vec![0.0; rows]);
        k::layernorm_fwd(&mut o, &mut m, &mut s, x, g, b, d);
        o.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut o = vec![0.0; rows * d];
    let (mut m, mut s) = (vec![0.0; rows], vec![0.0; rows]);
    k::layernorm_fwd(&mut o, &mut m, &mut s, &x, &g, &b, d);
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    k::layernorm_bwd(&mut dx, &mut dg, &mut db, &r, &x, &g, &m, &s, d);
    assert_close(&dx, &numeric(&mut x, &mut |x| loss(x, &g, &b)), "dx");
    let mut gm = g.clone();
    assert_close(&dg, &numeric(&mut gm, &mut |g| loss(&x, g, &b)), "dgamma");
    let mut bm = b.clone();
    assert_close(&db, &numeric(&mut bm, &mut |b| loss(&x, &g, b)), "dbeta");
}

#[test]
fn gelu_backward_matches_finite_differences() {
    // Spread to ±~6 so the tails (σ near 0 and 1) are covered too, and x = ±0 and tiny x,
    // where the backward's σ = act / x needs its offset.
    let mut x: Vec<f64> = vals(16, 5).iter().map(|v| 3.0 * v).collect();
    x[..4].copy_from_slice(&[0.0, -0.0, 1e-25, -3e-31]);
    let r = vals(16, 6);
    let loss = |x: &[f64]| {
        let mut o = vec![0.0; 16];
        k::gelu_fwd(&mut o, x, 4);
        o.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut act = vec![0.0; 16];
    k::gelu_fwd(&mut act, &x, 4);
    let mut d = r.clone();
    k::gelu_bwd_inplace(&mut d, &x, &act, 4);
    assert_close(&d, &numeric(&mut x, &mut |x| loss(x)), "dgelu");
}

/// The f32 backward (σ recovered from the forward's output) against GeLU's derivative in f64,
/// over the range a pre-activation takes and the corner cases of the division: ±0, values
/// below f32's normal range, and the tails where σ rounds to 0 or 1. Worst error seen: 3.2e-6
/// near x = 4 (1 − σ cancels; computing σ again from the exponential: 2.0e-6).
#[test]
fn gelu_backward_in_f32_matches_the_exact_derivative() {
    let mut x: Vec<f32> = (-800..=800).map(|i| i as f32 * 0.0125).collect();
    x.extend([
        0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1e-20, -1e-20, 40.0, -40.0,
    ]);
    let n = x.len();
    let mut act = vec![0.0f32; n];
    k::gelu_fwd(&mut act, &x, n);
    let mut d = vec![1.0f32; n];
    k::gelu_bwd_inplace(&mut d, &x, &act, n);
    for (&v, &g) in x.iter().zip(&d) {
        let v = f64::from(v);
        let two_u = 2.0 * 0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v);
        let s = 1.0 / (1.0 + (-two_u).exp());
        let du2 = 2.0 * 0.797_884_560_802_865_4 * (1.0 + 3.0 * 0.044715 * v * v);
        let exact = s + v * s * (1.0 - s) * du2;
        assert!(
            (f64::from(g) - exact).abs() <= 4e-6,
            "gelu'({v:e}) = {g} in f32, exactly {exact}"
        );
    }
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (rows, kk, n) = (4, 3, 5);
    let mut x = vals(rows * kk, 7);
    let mut w = vals(kk * n, 8);
    let mut b = vals(n, 9);
    let r = vals(rows * n, 10);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        let mut y = vec![0.0; rows * n];
        k::linear_fwd(&mut y, n, x, kk, w, n, Some(b), rows, kk, n);
        y.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let (mut dx, mut dw, mut db) = (vec![0.0; rows * kk], vec![0.0; kk * n], vec![0.0; n]);
    k::linear_bwd(
        Some((&mut dx, kk, false)),
        &mut dw,
        n,
        Some(&mut db),
        &r,
        n,
        &x,
        kk,
        &w,
        rows,
        kk,
        n,
    );
    let (w0, b0) = (w.clone(), b.clone());
    assert_close(&dx, &numeric(&mut x, &mut |x| loss(x, &w0, &b0)), "dx");
    let x0 = x.clone();
    assert_close(&dw, &numeric(&mut w, &mut |w| loss(&x0, w, &b0)), "dw");
    let w0 = w.clone();
    assert_close(&db, &numeric(&mut b, &mut |b| loss(&x0, &w0, b)), "db");
}

#[test]
fn attention_backward_matches_finite_differences_with_masks_and_dropout() {
    let dims = AttnDims::whole(2, 5, 2, 3);
    let w = dims.width();
    let rows = dims.b * dims.s;
    // Sample 0 holds two documents (the second starts at position 2), sample 1 one.
    let start = vec![0, 0, 2, 2, 2, 0, 0, 0, 0, 0];
    let ids = vec![0u64, 1];
    for drop in [
        Dropout::OFF,
        Dropout {
            p: 0.3,
            seed: 11,
            stream: 5,
        },
    ] {
        let mut qkv = vals(rows * 3 * w, 12);
        let r = vals(rows * w, 13);
        let hs = dims.b * dims.h * dims.s * dims.s;
        let loss = |qkv: &[f64]| {
            let (mut o, mut p, mut pd) = (vec![0.0; rows * w], vec![0.0; hs], vec![0.0; hs]);
            k::attention_fwd(&mut o, &mut p, &mut pd, qkv, &start, dims, drop, &ids);
            o.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
        };
        let (mut o, mut p, mut pd) = (vec![0.0; rows * w], vec![0.0; hs], vec![0.0; hs]);
        k::attention_fwd(&mut o, &mut p, &mut pd, &qkv, &start, dims, drop, &ids);
        // Masked entries are exactly zero: token 2 of sample 0 sees only itself.
        assert_eq!(p[2 * dims.s], 0.0);
        assert_eq!(p[2 * dims.s + 1], 0.0);
        assert!((p[2 * dims.s + 2] - 1.0).abs() < 1e-15);
        let mut dqkv = vec![0.0; rows * 3 * w];
        let mut scratch = vec![0.0; dims.b * dims.s * dims.s];
        k::attention_bwd(
            &mut dqkv,
            &mut scratch,
            &r,
            &qkv,
            &p,
            &pd,
            &start,
            dims,
            drop,
            &ids,
        );
        assert_close(&dqkv, &numeric(&mut qkv, &mut |q| loss(q)), "dqkv");
    }
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let (rows, v) = (3, 7);
    let mut logits = vals(rows * v, 14);
    let targets = vec![1, 6, 3];
    let weights = vec![0.5, 0.0, 0.25];
    let loss = |x: &[f64]| {
        let mut p = x.to_vec();
        let mut l = vec![0.0; rows];
        k::softmax_xent_fwd(&mut p, &mut l, &targets, v, None);
        l.iter().zip(&weights).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut p = logits.clone();
    let mut l = vec![0.0; rows];
    k::softmax_xent_fwd(&mut p, &mut l, &targets, v, None);
    k::softmax_xent_bwd(&mut p, &targets, &weights, v);
    assert_close(&p, &numeric(&mut logits, &mut |x| loss(x)), "dlogits");
    // The training forward leaves the gradient itself: the same bits and the same losses.
    let mut fused = logits.clone();
    let mut lf = vec![0.0; rows];
    k::softmax_xent_fwd(&mut fused, &mut lf, &targets, v, Some(&weights));
    assert_eq!(fused, p);
    assert_eq!(lf, l);
    let mut f32s: Vec<f32> = logits.iter().map(|&x| (x * 9.0) as f32).collect();
    let mut f32f = f32s.clone();
    let (mut l1, mut l2) = (vec![0.0; rows], vec![0.0; rows]);
    k::softmax_xent_fwd(&mut f32s, &mut l1, &targets, v, None);
    k::softmax_xent_bwd(&mut f32s, &targets, &weights, v);
    k::softmax_xent_fwd(&mut f32f, &mut l2, &targets, v, Some(&weights));
    assert_eq!(f32s, f32f);
    assert_eq!(l1, l2);
}

fn micro_config(query: bool, dropout: f64) -> ModelConfig {
    let text = format!(
        "name = \"micro\"\nlayers = 3\nhidden = 8\nheads = 2\nffn = 16\nvocab = 13\nseq_len = 6\n\
         query_layer = {query}\ndropout = {dropout}\nglobal_batch = 2\n"
    );
    ModelConfig::from_toml(&text, "micro").unwrap()
}

fn micro_batch() -> Batch {
    // Sample 0: an EOD in the middle; sample 1: a padded input at the end.
    let s0 = [10, 11, special::EOD, 12, 3, 4, 5];
    let s1 = [7, 12, 11, 10, 2, special::PAD, special::PAD];
    let mut b = Batch::from_samples(&[&s0, &s1], &[0, 1], 6);
    let n = b.counted();
    b.normalise(n);
    b
}

#[test]
fn whole_model_gradient_matches_finite_differences() {
    for (query, dropout) in [(true, 0.0), (true, 0.2), (false, 0.0)] {
        let cfg = micro_config(query, dropout);
        let model = Model::new(&cfg, 3).unwrap();
        let batch = micro_batch();
        // Larger-than-default initial weights so that every path carries a visible gradient.
        let mut p: Vec<f64> = model.layout.init(9);
        for (i, x) in p.iter_mut().enumerate() {
            *x += 0.3 * rng::normal(4, 2, i as u64);
        }
        let mut acts = Acts::<f64>::new(&model.dims(), batch.b, dropout > 0.0);
        model.forward(&p, &mut acts, &batch, 7, true);
        let mut g = vec![0.0; p.len()];
        model.backward(&p, &mut g, &mut acts, &batch, 7, true);
        let num = numeric(&mut p, &mut |p| {
            model.forward(p, &mut acts, &batch, 7, true)
        });
        for t in &model.layout.tensors {
            assert_close(
                &g[t.range()],
                &num[t.range()],
                &format!("{} (query {query}, dropout {dropout})", t.name),
            );
        }
        // The query table gets gradient only at the positions used; the position table too.
        assert!(g.iter().any(|&x| x != 0.0));
    }
}

#[test]
fn loss_of_a_fresh_model_is_near_ln_vocab_and_pad_rows_do_not_count() {
    let cfg = micro_config(true, 0.0);
    let model = Model::new(&cfg, 3).unwrap();
    let batch = micro_batch();
    assert_eq!(batch.counted(), 11);
    assert_eq!(batch.pos, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4, 5]);
    let p: Vec<f64> = model.layout.init(1);
    let mut acts = Acts::<f64>::new(&model.dims(), batch.b, false);
    assert_eq!(
        acts.bytes(),
        Acts::<f64>::bytes_for(&model.dims(), batch.b, false)
    );
    let with_drop = Acts::<f32>::new(&model.dims(), 3, true);
    assert_eq!(
        with_drop.bytes(),
        Acts::<f32>::bytes_for(&model.dims(), 3, true)
    );
    let loss = model.forward(&p, &mut acts, &batch, 0, false);
    assert!((loss - 13f64.ln()).abs() < 0.05, "loss {loss}");
    assert_eq!(model.layout.total as u64, cfg.params().total);
}

#[test]
fn full_remat_changes_nothing_and_keeps_one_layer() {
    for (query, dropout) in [(true, 0.2), (false, 0.0)] {
        let cfg = micro_config(query, dropout);
        let model = Model::new(&cfg, 3).unwrap();
        let batch = micro_batch();
        let p: Vec<f64> = model.layout.init(9);
        let mut plain = Acts::<f64>::new(&model.dims(), batch.b, dropout > 0.0);
        let mut remat = Acts::<f64>::with_remat(&model.dims(), batch.b, dropout > 0.0, true);
        let l1 = model.forward(&p, &mut plain, &batch, 4, true);
        let l2 = model.forward(&p, &mut remat, &batch, 4, true);
        assert_eq!(l1, l2);
        let (mut g1, mut g2) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        model.backward(&p, &mut g1, &mut plain, &batch, 4, true);
        model.backward(&p, &mut g2, &mut remat, &batch, 4, true);
        assert_eq!(g1, g2, "remat must give bit-identical gradients");
        assert!(remat.bytes() < plain.bytes());
        assert_eq!(
            remat.bytes(),
            Acts::<f64>::bytes_for_remat(&model.dims(), batch.b, dropout > 0.0, true)
        );
    }
}

#[test]
fn two_halves_give_the_whole_batch_and_the_same_bits_on_two_threads() {
    // Model::step_halves (the trainer's two-thread path) against one forward and backward of
    // the whole batch; dropout masks follow the samples, so they are the same either way.
    let s0 = [10, 11, special::EOD, 12, 3, 4, 5];
    let s1 = [7, 12, 11, 10, 2, special::PAD, special::PAD];
    for (query, dropout) in [(true, 0.2), (false, 0.0)] {
        let cfg = micro_config(query, dropout);
        let model = Model::new(&cfg, 3).unwrap();
        let batch = micro_batch();
        let n = batch.counted();
        let p: Vec<f64> = model.layout.init(9);
        let mut acts = Acts::<f64>::new(&model.dims(), 2, dropout > 0.0);
        let whole_loss = model.forward(&p, &mut acts, &batch, 5, true);
        let mut whole = vec![0.0; p.len()];
        model.backward(&p, &mut whole, &mut acts, &batch, 5, true);
        let mut halves = [
            Batch::from_samples(&[&s0], &[0], 6),
            Batch::from_samples(&[&s1], &[1], 6),
        ];
        for h in &mut halves {
            h.normalise(n);
        }
        let run = |threads: usize| {
            let mut acts = [
                Acts::<f64>::new(&model.dims(), 1, dropout > 0.0),
                Acts::<f64>::new(&model.dims(), 1, dropout > 0.0),
            ];
            let mut g = vec![0.0; p.len()];
            let loss = pangu_trainer::linalg::with_threads(threads, || {
                model.step_halves(&p, &mut g, &mut acts, &halves, 5, true)
            });
            (loss, g)
        };
        let (loss1, g1) = run(1);
        assert!((loss1 - whole_loss).abs() <= 1e-12 * whole_loss.abs());
        let scale = whole.iter().fold(1e-6, |m: f64, x| m.max(x.abs()));
        for (i, (a, b)) in g1.iter().zip(&whole).enumerate() {
            assert!((a - b).abs() <= 1e-12 * scale, "gradient {i}: {a} vs {b}");
        }
        assert!(g1.iter().any(|&x| x != 0.0));
        let (loss2, g2) = run(2);
        assert_eq!(loss1.to_bits(), loss2.to_bits());
        assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

// ---------------------------------------------------------------------------------------
// Llama-style kernels and model: RMSNorm, SwiGLU, rotary embeddings, grouped-query attention,
// an untied head, no biases.

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (rows, d) = (3, 13);
    let mut x = vals(rows * d, 21);
    let g = vals(d, 22);
    let r = vals(rows * d, 23);
    let loss = |x: &[f64], g: &[f64]| {
        let (mut o, mut s) = (vec![0.0; rows * d], vec![0.0; rows]);
        k::rmsnorm_fwd(&mut o, &mut s, x, g, d);
        o.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let (mut o, mut s) = (vec![0.0; rows * d], vec![0.0; rows]);
    k::rmsnorm_fwd(&mut o, &mut s, &x, &g, d);
    let (mut dx, mut dg) = (vec![0.0; rows * d], vec![0.0; d]);
    k::rmsnorm_bwd(&mut dx, &mut dg, &r, &x, &g, &s, d);
    assert_close(&dx, &numeric(&mut x, &mut |x| loss(x, &g)), "dx");
    let mut gm = g.clone();
    assert_close(&dg, &numeric(&mut gm, &mut |g| loss(&x, g)), "dgamma");
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (rows, f) = (3, 5);
    let mut gu: Vec<f64> = vals(rows * 2 * f, 24).iter().map(|v| 3.0 * v).collect();
    let r = vals(rows * f, 25);
    let loss = |gu: &[f64]| {
        let mut a = vec![0.0; rows * f];
        k::swiglu_fwd(&mut a, gu, f);
        a.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut dgu = vec![0.0; rows * 2 * f];
    k::swiglu_bwd(&mut dgu, &gu, &r, f);
    assert_close(&dgu, &numeric(&mut gu, &mut |x| loss(x)), "dgate_up");
}

#[test]
fn rope_backward_is_the_inverse_rotation_and_matches_finite_differences() {
    // Rows of width 14: two heads of 6 rotated, 2 columns (a V part) left alone.
    let (rows, ld, heads, hd) = (4, 14, 2, 6);
    let pos = [0u32, 3, 1, 7];
    let mut x = vals(rows * ld, 26);
    let r = vals(rows * ld, 27);
    let loss = |x: &[f64]| {
        let mut y = x.to_vec();
        k::rope(&mut y, ld, heads, hd, &pos, 500_000.0, false);
        y.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut d = r.clone();
    k::rope(&mut d, ld, heads, hd, &pos, 500_000.0, true);
    assert_close(&d, &numeric(&mut x, &mut |x| loss(x)), "drope");
    // Position 0 is the identity; the columns past the heads are untouched.
    let mut y = x.clone();
    k::rope(&mut y, ld, heads, hd, &pos, 10_000.0, false);
    assert_eq!(y[..ld], x[..ld]);
    assert_eq!(y[ld + 12..2 * ld], x[ld + 12..2 * ld]);
    assert_ne!(y[ld..ld + 12], x[ld..ld + 12]);
}

#[test]
fn grouped_query_attention_backward_sums_each_groups_gradients() {
    // 4 query heads over 2 key/value heads: K and V gradients gather their group's two heads.
    let dims = AttnDims {
        kv: 2,
        ..AttnDims::whole(2, 5, 4, 3)
    };
    let (w, ld) = (dims.width(), dims.qkv_width());
    assert_eq!(ld, w + 2 * 2 * 3);
    let rows = dims.b * dims.s;
    let start = vec![0, 0, 2, 2, 2, 0, 0, 0, 0, 0];
    let ids = vec![0u64, 1];
    for drop in [
        Dropout::OFF,
        Dropout {
            p: 0.3,
            seed: 11,
            stream: 5,
        },
    ] {
        let mut qkv = vals(rows * ld, 28);
        let r = vals(rows * w, 29);
        let hs = dims.b * dims.h * dims.s * dims.s;
        let loss = |qkv: &[f64]| {
            let (mut o, mut p, mut pd) = (vec![0.0; rows * w], vec![0.0; hs], vec![0.0; hs]);
            k::attention_fwd(&mut o, &mut p, &mut pd, qkv, &start, dims, drop, &ids);
            o.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
        };
        let (mut o, mut p, mut pd) = (vec![0.0; rows * w], vec![0.0; hs], vec![0.0; hs]);
        k::attention_fwd(&mut o, &mut p, &mut pd, &qkv, &start, dims, drop, &ids);
        let mut dqkv = vec![0.0; rows * ld];
        let mut scratch = vec![0.0; dims.b * dims.s * dims.s];
        let a = (&p, &pd, &start);
        k::attention_bwd(
            &mut dqkv,
            &mut scratch,
            &r,
            &qkv,
            a.0,
            a.1,
            a.2,
            dims,
            drop,
            &ids,
        );
        assert_close(&dqkv, &numeric(&mut qkv, &mut |q| loss(q)), "dqkv (gqa)");
    }
}

/// A micro Llama-style model: RMSNorm, SwiGLU, rotary embeddings, 4 heads over 2 key/value
/// heads, an untied head, no biases.
fn micro_llama(dropout: f64) -> ModelConfig {
    let text = format!(
        "name = \"micro-llama\"\nlayers = 2\nhidden = 16\nheads = 4\nkv_heads = 2\nffn = 12\n\
         ffn_kind = \"swiglu\"\nnorm = \"rmsnorm\"\nposition = \"rotary\"\nrope_theta = 500000.0\n\
         tied_embeddings = false\nbias = false\nvocab = 13\nseq_len = 6\ndropout = {dropout}\n\
         global_batch = 2\n"
    );
    ModelConfig::from_toml(&text, "micro-llama").unwrap()
}

#[test]
fn llama_style_model_gradient_matches_finite_differences() {
    for dropout in [0.0, 0.2] {
        let cfg = micro_llama(dropout);
        let model = Model::new(&cfg, 3).unwrap();
        assert_eq!(model.layout.total as u64, cfg.params().total);
        let names: Vec<&str> = model.layout.tensors.iter().map(|t| &t.name[..]).collect();
        assert!(names.contains(&"head.weight") && names.contains(&"layers.0.ffn.gate_up.weight"));
        assert!(!names
            .iter()
            .any(|n| n.ends_with(".bias") || n.ends_with(".beta")));
        assert!(!names.contains(&"embedding.position"));
        let batch = micro_batch();
        let mut p: Vec<f64> = model.layout.init(9);
        for (i, x) in p.iter_mut().enumerate() {
            *x += 0.3 * rng::normal(4, 2, i as u64);
        }
        let mut acts = Acts::<f64>::new(&model.dims(), batch.b, dropout > 0.0);
        assert_eq!(
            acts.bytes(),
            Acts::<f64>::bytes_for(&model.dims(), batch.b, dropout > 0.0)
        );
        model.forward(&p, &mut acts, &batch, 7, true);
        let mut g = vec![0.0; p.len()];
        model.backward(&p, &mut g, &mut acts, &batch, 7, true);
        let num = numeric(&mut p, &mut |p| {
            model.forward(p, &mut acts, &batch, 7, true)
        });
        for t in &model.layout.tensors {
            assert_close(
                &g[t.range()],
                &num[t.range()],
                &format!("{} (llama, dropout {dropout})", t.name),
            );
            assert!(g[t.range()].iter().any(|&x| x != 0.0), "{}", t.name);
        }
    }
}

#[test]
fn llama_style_halves_and_remat_give_the_whole_batch() {
    let cfg = micro_llama(0.2);
    let model = Model::new(&cfg, 3).unwrap();
    let batch = micro_batch();
    let n = batch.counted();
    let p: Vec<f64> = model.layout.init(9);
    let mut acts = Acts::<f64>::new(&model.dims(), 2, true);
    let whole_loss = model.forward(&p, &mut acts, &batch, 5, true);
    let mut whole = vec![0.0; p.len()];
    model.backward(&p, &mut whole, &mut acts, &batch, 5, true);
    let mut remat = Acts::<f64>::with_remat(&model.dims(), 2, true, true);
    assert_eq!(model.forward(&p, &mut remat, &batch, 5, true), whole_loss);
    let mut gr = vec![0.0; p.len()];
    model.backward(&p, &mut gr, &mut remat, &batch, 5, true);
    assert_eq!(gr, whole, "remat must give bit-identical gradients");
    let s0 = [10, 11, special::EOD, 12, 3, 4, 5];
    let s1 = [7, 12, 11, 10, 2, special::PAD, special::PAD];
    let mut halves = [
        Batch::from_samples(&[&s0], &[0], 6),
        Batch::from_samples(&[&s1], &[1], 6),
    ];
    for h in &mut halves {
        h.normalise(n);
    }
    for threads in [1, 2] {
        let mut acts = [
            Acts::<f64>::new(&model.dims(), 1, true),
            Acts::<f64>::new(&model.dims(), 1, true),
        ];
        let mut g = vec![0.0; p.len()];
        let loss = pangu_trainer::linalg::with_threads(threads, || {
            model.step_halves(&p, &mut g, &mut acts, &halves, 5, true)
        });
        assert!((loss - whole_loss).abs() <= 1e-12 * whole_loss.abs());
        let scale = whole.iter().fold(1e-6, |m: f64, x| m.max(x.abs()));
        for (i, (a, b)) in g.iter().zip(&whole).enumerate() {
            assert!((a - b).abs() <= 1e-12 * scale, "gradient {i}: {a} vs {b}");
        }
    }
}

#[test]
fn executor_layout_sizes_equal_the_model_parameter_counts() {
    // Every preset the executor can build (all but ALiBi's MPT): the flat buffer's length is
    // ModelConfig::params(), so the simulator and the executor agree on sizes. Building a
    // layout allocates no parameters.
    let mut built = 0;
    for (name, _) in pangu_model::presets() {
        let cfg = ModelConfig::preset(name).unwrap();
        match pangu_trainer::model::Layout::new(&cfg) {
            Ok(l) => {
                assert_eq!(l.total as u64, cfg.params().total, "{name}");
                built += 1;
            }
            Err(e) => assert!(e.to_string().contains("ALiBi"), "{name}: {e}"),
        }
    }
    assert!(built >= 10);
    for cfg in [micro_llama(0.0), micro_config(true, 0.0)] {
        let l = pangu_trainer::model::Layout::new(&cfg).unwrap();
        assert_eq!(l.total as u64, cfg.params().total, "{}", cfg.name);
    }
}

#[test]
fn context_parallel_attention_equals_the_whole_sequences_rows() {
    // Each cp rank's queries (its two chunks) against the whole sequence's K/V give the whole
    // attention's rows; dQ is the whole's for those rows and the ranks' dK/dV sum to the
    // whole's. Grouped-query heads, an EOD reset inside sample 0, with and without dropout.
    let whole = AttnDims {
        kv: 2,
        ..AttnDims::whole(2, 8, 4, 3)
    };
    let (b, s) = (whole.b, whole.s);
    let (w, kw, ld) = (whole.width(), whole.kv_width(), whole.qkv_width());
    let rows = b * s;
    let start: Vec<u32> = [0, 0, 0, 3, 3, 3, 3, 3].into_iter().chain([0; 8]).collect();
    let ids = vec![4u64, 9];
    let qkv = vals(rows * ld, 41);
    let r = vals(rows * w, 42);
    let kv: Vec<f64> = qkv.chunks(ld).flat_map(|q| q[w..].to_vec()).collect();
    for drop in [
        Dropout::OFF,
        Dropout {
            p: 0.3,
            seed: 7,
            stream: 2,
        },
    ] {
        let hs = b * whole.h * s * s;
        let (mut o, mut p, mut pd) = (vec![0.0; rows * w], vec![0.0; hs], vec![0.0; hs]);
        k::attention_fwd(&mut o, &mut p, &mut pd, &qkv, &start, whole, drop, &ids);
        let mut dqkv = vec![0.0; rows * ld];
        let mut scratch = vec![0.0; b * s * s];
        let (pr, pdr) = (p.clone(), pd.clone());
        k::attention_bwd(
            &mut dqkv,
            &mut scratch,
            &r,
            &qkv,
            &pr,
            &pdr,
            &start,
            whole,
            drop,
            &ids,
        );
        for cp in [2usize, 4] {
            let sl = s / cp;
            let mut dkv_sum = vec![0.0; rows * 2 * kw];
            for rank in 0..cp {
                let dims = AttnDims {
                    cp,
                    cp_rank: rank,
                    ..whole
                };
                // This rank's rows of the whole sequence, sample by sample.
                let mine: Vec<usize> = (0..b)
                    .flat_map(|bi| {
                        (0..sl).map(move |j| {
                            let g = pangu_strategies::plan::cp_token(
                                s as u32,
                                cp as u32,
                                rank as u32,
                                j as u32,
                            );
                            bi * s + g as usize
                        })
                    })
                    .collect();
                let pick = |x: &[f64], width: usize| -> Vec<f64> {
                    mine.iter()
                        .flat_map(|&i| x[i * width..(i + 1) * width].to_vec())
                        .collect()
                };
                let (q, dout) = (pick(&qkv, ld), pick(&r, w));
                let st: Vec<u32> = mine.iter().map(|&i| start[i]).collect();
                let hl = b * whole.h * sl * s;
                let (mut ol, mut pl, mut pdl) =
                    (vec![0.0; sl * b * w], vec![0.0; hl], vec![0.0; hl]);
                k::attention_cp_fwd(&mut ol, &mut pl, &mut pdl, &q, &kv, &st, dims, drop, &ids);
                let want = pick(&o, w);
                for (i, (a, e)) in ol.iter().zip(&want).enumerate() {
                    assert!(
                        (a - e).abs() < 1e-12,
                        "cp {cp} rank {rank} out[{i}]: {a} vs {e}"
                    );
                }
                let mut dq = vec![0.0; b * sl * ld];
                let mut dkv = vec![0.0; rows * 2 * kw];
                let mut sc = vec![0.0; b * sl * s];
                k::attention_cp_bwd(
                    &mut dq, &mut dkv, &mut sc, &dout, &q, &kv, &pl, &pdl, &st, dims, drop, &ids,
                );
                let want = pick(&dqkv, ld);
                for (row, (a, e)) in dq.chunks(ld).zip(want.chunks(ld)).enumerate() {
                    for c in 0..w {
                        assert!(
                            (a[c] - e[c]).abs() < 1e-12,
                            "cp {cp} rank {rank} dq[{row}][{c}]"
                        );
                    }
                }
                for (x, y) in dkv_sum.iter_mut().zip(&dkv) {
                    *x += y;
                }
            }
            for (i, (row, whole_row)) in dkv_sum.chunks(2 * kw).zip(dqkv.chunks(ld)).enumerate() {
                for c in 0..2 * kw {
                    let (a, e) = (row[c], whole_row[w + c]);
                    assert!((a - e).abs() < 1e-12, "cp {cp} dkv[{i}][{c}]: {a} vs {e}");
                }
            }
        }
    }
}
