//! One-thread speed of the element-wise kernels around the products, on the shapes of half
//! of `pangu-alpha-tiny`'s micro-batch (512 tokens): GeLU forward and backward over the FFN's
//! 512×1024 activations, the softmax of the 512×8000 logits and LayerNorm over 512×256. Best of 20 calls.
//!   cargo run --release -p pangu-trainer --example elementwise
#![allow(clippy::unwrap_used)]
use std::time::Instant;

use pangu_trainer::kernels::{
    gelu_bwd_inplace, gelu_fwd, layernorm_bwd, layernorm_fwd, softmax_xent_fwd,
};

fn best(mut f: impl FnMut()) -> f64 {
    (0..20)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let (rows, ffn, vocab) = (512usize, 1024usize, 8000usize);
    let x: Vec<f32> = (0..rows * ffn)
        .map(|i| ((i % 1000) as f32 - 500.0) * 0.01)
        .collect();
    let mut out = vec![0.0f32; rows * ffn];
    let mut d = vec![0.5f32; rows * ffn];
    let logits0: Vec<f32> = (0..rows * vocab).map(|i| (i % 977) as f32 * 0.01).collect();
    let mut logits = logits0.clone();
    let mut losses = vec![0.0f64; rows];
    let targets: Vec<u32> = (0..rows as u32).map(|i| i * 7).collect();
    let fwd = best(|| gelu_fwd(&mut out, &x, ffn));
    let bwd = best(|| gelu_bwd_inplace(&mut d, &x, &out, ffn));
    let xent = best(|| {
        logits.copy_from_slice(&logits0);
        softmax_xent_fwd(&mut logits, &mut losses, &targets, vocab, None)
    });
    let copy = best(|| logits.copy_from_slice(&logits0));
    // LayerNorm over the 512×256 residual stream.
    let h = 256;
    let xs = &x[..rows * h];
    let (gain, bias) = (vec![1.1f32; h], vec![0.1f32; h]);
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    let mut ln = vec![0.0f32; rows * h];
    let ln_f = best(|| layernorm_fwd(&mut ln, &mut mean, &mut rstd, xs, &gain, &bias, h));
    let (mut dg, mut db, mut dx) = (vec![0.0f32; h], vec![0.0f32; h], vec![0.0f32; rows * h]);
    let dout = &d[..rows * h];
    let ln_b = best(|| layernorm_bwd(&mut dx, &mut dg, &mut db, dout, xs, &gain, &mean, &rstd, h));
    let xent = xent - copy;
    for (what, secs, elements) in [
        (format!("gelu forward  {rows}×{ffn}"), fwd, rows * ffn),
        (format!("gelu backward {rows}×{ffn}"), bwd, rows * ffn),
        (
            format!("softmax + cross-entropy {rows}×{vocab}"),
            xent,
            rows * vocab,
        ),
        (format!("layernorm forward  {rows}×{h}"), ln_f, rows * h),
        (format!("layernorm backward {rows}×{h}"), ln_b, rows * h),
    ] {
        println!(
            "{what}: {:.3} ms ({:.2} ns/element)",
            secs * 1e3,
            secs / elements as f64 * 1e9
        );
    }
}
