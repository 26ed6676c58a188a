//! One-thread rate of every matrix product in a training step, as the trainer calls them
//! (`linalg::matmul`, row-major, the same transposes): the forward products of the linear
//! layers, their weight and input gradients (×(layers + 1) with the query layer), and the tied
//! head's three. Median of 9 timed calls after 2 untimed ones.
//!   cargo run --release -p pangu-trainer --example gemm_shapes [tiny|small]
#![allow(clippy::unwrap_used)]
use std::time::Instant;

use pangu_trainer::linalg::{matmul, n, t, with_threads};

fn main() {
    let small = std::env::args().nth(1).as_deref() == Some("small");
    // (tokens, hidden, ffn, vocab, layers incl. the query layer)
    let (tk, h, f, v, nl) = if small {
        (2048, 512, 2048, 16000, 7)
    } else {
        (1024, 256, 1024, 8000, 5)
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
}
