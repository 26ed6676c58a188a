//! One-thread rate of every matrix product in a training step, as the trainer calls them
//! (`linalg::matmul`, row-major, the same transposes): the forward products of the linear
//! layers, their weight and input gradients (×(layers + 1) with the query layer), and the tied
//! head's three. Median of 9 timed calls after 2 untimed ones. Then the attention core
//! (`kernels::attention_fwd` + `attention_bwd`: its causal-block products and softmax) on half a
//! micro-batch, as the trainer runs it, ×2 halves ×(layers + 1). Together these are a lower
//! bound on a one-thread training step: everything else (LayerNorm, GeLU, cross-entropy,
//! AdamW, embeddings) comes on top.
//!   cargo run --release -p pangu-trainer --example gemm_shapes [tiny|small]
#![allow(clippy::unwrap_used)]
use std::time::Instant;

use pangu_trainer::kernels::{attention_bwd, attention_fwd, AttnDims, Dropout};
use pangu_trainer::linalg::{matmul, n, t, with_threads};

fn main() {
    let small = std::env::args().nth(1).as_deref() == Some("small");
    // (tokens, hidden, ffn, vocab, layers incl. the query layer, sequence, heads)
    let (tk, h, f, v, nl, seq, heads) = if small {
        (2048, 512, 2048, 16000, 7, 256, 8)
    } else {
        (1024, 256, 1024, 8000, 5, 128, 4)
    };
    // (name, m, k, n, A stored transposed, B stored transposed, calls per step)
    let products = [
        ("qkv fwd", tk, h, 3 * h, false, false, nl),
        ("out fwd", tk, h, h, false, false, nl),
        ("up fwd", tk, h, f, false, false, nl),
        ("down fwd", tk, f, h, false, false, nl),
        ("qkv dW", h, tk, 3 * h, true, false, nl),
        ("out dW", h, tk, h, true, false, nl),
        ("up dW", h, tk, f, true, false, nl),
        ("down dW", f, tk, h, true, false, nl),
        ("qkv dX", tk, 3 * h, h, false, true, nl),
        ("out dX", tk, h, h, false, true, nl),
        ("up dX", tk, f, h, false, true, nl),
        ("down dX", tk, h, f, false, true, nl),
        ("head fwd", tk, h, v, false, true, 1),
        ("head dX", tk, v, h, false, false, 1),
        ("head dE", v, tk, h, true, false, 1),
    ];
    let (mut total_s, mut total_flop) = (0.0, 0.0);
    for (name, m, k, nn, ta, tb, count) in products {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * nn).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut c = vec![0.0f32; m * nn];
        let op_a = if ta { t(&a, m) } else { n(&a, k) };
        let op_b = if tb { t(&b, k) } else { n(&b, nn) };
        let mut times: Vec<f64> = (0..11)
            .map(|_| {
                let t0 = Instant::now();
                with_threads(1, || matmul(&mut c, nn, op_a, op_b, m, k, nn, ta));
                t0.elapsed().as_secs_f64()
            })
            .skip(2)
            .collect();
        times.sort_by(f64::total_cmp);
        let s = times[times.len() / 2];
        let flop = 2.0 * (m * k * nn) as f64;
        total_s += s * count as f64;
        total_flop += flop * count as f64;
        println!(
            "{name:9} {m:5}×{k:5}×{nn:5}  {:8.3} ms  {:6.1} GFLOP/s",
            s * 1e3,
            flop / s / 1e9
        );
    }
    println!(
        "all products of one step: {:.1} ms, {:.1} GFLOP/s",
        total_s * 1e3,
        total_flop / total_s / 1e9
    );
    let attn = attention_core(tk / seq / 2, seq, heads, h / heads);
    println!(
        "attention core, half a micro-batch: {:.3} ms; per step ({} calls): {:.1} ms",
        attn * 1e3,
        2 * nl,
        attn * 2e3 * nl as f64
    );
    println!(
        "products + attention core: {:.1} ms",
        (total_s + attn * 2.0 * nl as f64) * 1e3
    );
}

/// Median seconds of one attention forward + backward (no dropout, no document resets) on
/// `b` sequences of `s` tokens, `h` heads of `hd`.
fn attention_core(b: usize, s: usize, h: usize, hd: usize) -> f64 {
    let w = h * hd;
    let qkv: Vec<f32> = (0..b * s * 3 * w)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let dout: Vec<f32> = (0..b * s * w)
        .map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let start = vec![0u32; b * s];
    let ids: Vec<u64> = (0..b as u64).collect();
    let (mut out, mut probs) = (vec![0f32; b * s * w], vec![0f32; b * h * s * s]);
    let (mut dqkv, mut scratch) = (vec![0f32; b * s * 3 * w], vec![0f32; b * s * s]);
    let dims = AttnDims::whole(b, s, h, hd);
    let mut times: Vec<f64> = (0..23)
        .map(|_| {
            let t0 = Instant::now();
            with_threads(1, || {
                attention_fwd(
                    &mut out,
                    &mut probs,
                    &mut [],
                    &qkv,
                    &start,
                    dims,
                    Dropout::OFF,
                    &ids,
                );
                attention_bwd(
                    &mut dqkv,
                    &mut scratch,
                    &dout,
                    &qkv,
                    &probs,
                    &[],
                    &start,
                    dims,
                    Dropout::OFF,
                    &ids,
                );
            });
            t0.elapsed().as_secs_f64()
        })
        .skip(3)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
