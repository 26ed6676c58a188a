//! Phase timing of the training step at the tiny shape (forward, backward, optimizer), for
//! profiling; `pangu train --bench` is the supported benchmark.
#![allow(clippy::unwrap_used)]
use std::time::Instant;

use pangu_trainer::bench::{set_threads, BenchShape};
use pangu_trainer::linalg::in_pool;
use pangu_trainer::model::{Acts, Batch, Model};
use pangu_trainer::optim::{sum_squares, AdamW};

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(1, |s| s.parse().unwrap());
    set_threads(threads);
    let shape = BenchShape {
        layers: 4,
        hidden: 256,
        heads: 4,
        seq: 128,
        vocab: 8000,
        batch: 8,
        steps: 10,
        warmup: 3,
        threads,
        no_query_layer: false,
    };
    let cfg = shape.config().unwrap();
    let model = Model::new(&cfg, 1).unwrap();
    let dims = model.dims();
    let mut p = model.layout.init::<f32>(1);
    let mut g = vec![0.0f32; p.len()];
    let (mut m, mut v) = (vec![0.0f32; p.len()], vec![0.0f32; p.len()]);
    let decay = model.layout.decay_mask();
    let mut acts = Acts::<f32>::new(&dims, 8, false);
    let samples: Vec<Vec<u32>> = (0..8)
        .map(|i| {
            (0..=128)
                .map(|j| 10 + ((i * 131 + j * 17) % 7990) as u32)
                .collect()
        })
        .collect();
    let refs: Vec<&[u32]> = samples.iter().map(Vec::as_slice).collect();
    let mut batch = Batch::from_samples(&refs, &[0, 1, 2, 3, 4, 5, 6, 7], 128);
    batch.normalise(1024);
    let mut t = [0f64; 3];
    for it in 0..13 {
        in_pool(|| {
            let a = Instant::now();
            g.fill(0.0);
            model.forward(&p, &mut acts, &batch, it, true);
            let b = Instant::now();
            model.backward(&p, &mut g, &mut acts, &batch, it, true);
            let c = Instant::now();
            let n = sum_squares(&g).sqrt();
            AdamW::default().update(
                &mut p,
                &mut m,
                &mut v,
                &g,
                &decay,
                (1.0 / n.max(1.0)) as f32,
                1e-4,
                it + 1,
            );
            let d = Instant::now();
            if it >= 3 {
                t[0] += (b - a).as_secs_f64() * 100.0;
                t[1] += (c - b).as_secs_f64() * 100.0;
                t[2] += (d - c).as_secs_f64() * 100.0;
            }
        });
    }
    println!(
        "threads {threads}: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
        t[0], t[1], t[2]
    );
}
