//! `pangu train --bench`: the training step on random token ids, timed like
//! shared/bench/torch_pangu_cpu.py (untimed warm-up steps, then each step timed alone; the
//! median), with the CPU wait of the process's threads read from `/proc` for every step, so
//! runs disturbed by other work on the machine can be told apart.

use std::time::Instant;

use pangu_model::ModelConfig;
use serde::Serialize;

use crate::model::{Acts, Batch, Model};
use crate::optim::{self, AdamW};
use crate::rng;
use crate::TrainError;

/// Shape and run length of a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchShape {
    /// Ordinary layers (the query layer is extra).
    pub layers: u32,
    /// Hidden size.
    pub hidden: u32,
    /// Heads.
    pub heads: u32,
    /// Sequence length.
    pub seq: u32,
    /// Vocabulary.
    pub vocab: u32,
    /// Samples per step.
    pub batch: u32,
    /// Timed steps.
    pub steps: u32,
    /// Untimed steps first.
    pub warmup: u32,
    /// Threads.
    pub threads: usize,
    /// Without the query layer (GPT-2).
    pub no_query_layer: bool,
}

/// Result of a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The shape.
    pub shape: BenchShape,
    /// Parameters.
    pub params: u64,
    /// Model FLOPs per step (6·N·T + 12·L·S·h·T, the harness's count).
    pub flops_per_step: f64,
    /// Median step time (clean steps when there are enough).
    pub ms_per_step: f64,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Achieved GFLOP/s at the median.
    pub gflops: f64,
    /// Every timed step (ms).
    pub step_ms: Vec<f64>,
    /// CPU wait of the process during each step (ms; 0 when /proc is not readable).
    pub wait_ms: Vec<f64>,
    /// Steps whose CPU wait was at most 2 % of wall time × threads.
    pub clean_steps: usize,
    /// Bytes the trainer allocated (weights, gradients, Adam, activations).
    pub allocated_bytes: u64,
    /// The strategies crate's memory model for the same plan (one fp32 device, no remat).
    pub plan_bytes: Option<u64>,
}

/// Per-device bytes the strategies crate's memory model predicts for training `cfg` on one
/// fp32 CPU device (dp = tp = pp = 1, one micro-batch of `batch`, no remat or sharding).
pub fn plan_bytes(cfg: &ModelConfig, batch: u32) -> Option<u64> {
    use pangu_strategies::{strategy, OptShard, Plan, Precision, Remat, StrategySpec};
    let cluster = pangu_hardware::Cluster::from_name("cpu-host:1").ok()?;
    let spec = StrategySpec {
        dp: Some(1),
        tp: Some(1),
        pp: Some(1),
        micro_batches: Some(1),
        global_batch: Some(batch),
        precision: Some(Precision::Fp32),
        remat: Some(Remat::None),
        opt_shard: Some(OptShard::None),
        ..StrategySpec::default()
    };
    let (s, _) = strategy::resolve(&spec, &spec, batch, 1).ok()?;
    let plan = Plan::build(cfg, &cluster, &s).ok()?;
    Some(plan.max_memory().total.0)
}

impl BenchShape {
    /// The model configuration of this shape.
    pub fn config(&self) -> Result<ModelConfig, TrainError> {
        let q = !self.no_query_layer;
        let text = format!(
            "name = \"bench\"\nlayers = {}\nhidden = {}\nheads = {}\nffn = {}\nvocab = {}\nseq_len = {}\n\
             query_layer = {q}\ndropout = 0.0\nglobal_batch = {}\n",
            self.layers + u32::from(q),
            self.hidden,
            self.heads,
            4 * self.hidden,
            self.vocab,
            self.seq,
            self.batch
        );
        ModelConfig::from_toml(&text, "bench shape").map_err(|e| TrainError::Config(e.to_string()))
    }
}

/// Nanoseconds the threads of this process have waited for a CPU (schedstat's run_delay).
pub fn cpu_wait_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .sum()
}

/// Sets the number of compute threads for this process (the rayon pool is built once).
pub fn set_threads(n: usize) {
    crate::linalg::set_threads(n);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Runs the benchmark.
pub fn run(shape: &BenchShape) -> Result<BenchResult, TrainError> {
    set_threads(shape.threads);
    let cfg = shape.config()?;
    let model = Model::new(&cfg, 1)?;
    let dims = model.dims();
    let mut p = model.layout.init::<f32>(1);
    let n = p.len();
    let mut g = vec![0.0f32; n];
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let decay = model.layout.decay_mask();
    let b = shape.batch as usize;
    // Even batches run as two halves (Model::step_halves), odd ones whole.
    let part = b / crate::model::parts_of(b);
    let mut acts: Vec<Acts<f32>> = (0..b / part)
        .map(|_| Acts::new(&dims, part, false))
        .collect();
    let opt = AdamW::default();
    let mut step_ms = Vec::new();
    let mut wait_ms = Vec::new();
    for it in 0..(shape.warmup + shape.steps) {
        let samples: Vec<Vec<u32>> = (0..b)
            .map(|i| {
                (0..=dims.s)
                    .map(|j| {
                        10 + (rng::hash(7, u64::from(it), (i * (dims.s + 1) + j) as u64)
                            % (dims.v as u64 - 10)) as u32
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u32]> = samples.iter().map(Vec::as_slice).collect();
        let ids: Vec<u64> = (0..b as u64).collect();
        let mut parts: Vec<Batch> = refs
            .chunks(part)
            .zip(ids.chunks(part))
            .map(|(r, i)| Batch::from_samples(r, i, dims.s))
            .collect();
        let c = parts.iter().map(Batch::counted).sum();
        for bt in &mut parts {
            bt.normalise(c);
        }
        let w0 = cpu_wait_ns();
        let t0 = Instant::now();
        crate::linalg::in_pool(|| {
            crate::kernels::zero(&mut g);
            model.step_parts(&p, &mut g, &mut acts, &parts, u64::from(it), true);
            let norm = optim::sum_squares(&g).sqrt();
            let scale = optim::clip_scale(norm, 1.0) as f32;
            opt.update(
                &mut p,
                &mut m,
                &mut v,
                &g,
                &decay,
                scale,
                1e-4,
                u64::from(it) + 1,
            );
        });
        let dt = t0.elapsed().as_secs_f64() * 1e3;
        let wait = (cpu_wait_ns() - w0) as f64 / 1e6;
        if it >= shape.warmup {
            step_ms.push(dt);
            wait_ms.push(wait);
        }
    }
    let clean: Vec<f64> = step_ms
        .iter()
        .zip(&wait_ms)
        .filter(|(s, w)| **w <= 0.02 * **s * shape.threads as f64)
        .map(|(s, _)| *s)
        .collect();
    let clean_steps = clean.len();
    let mut pick = if clean_steps * 2 >= step_ms.len() {
        clean
    } else {
        step_ms.clone()
    };
    let ms = median(&mut pick);
    let tokens = f64::from(shape.batch * shape.seq);
    let flops_per_step = cfg.flops_per_token() * tokens;
    Ok(BenchResult {
        shape: shape.clone(),
        params: n as u64,
        flops_per_step,
        ms_per_step: ms,
        tokens_per_s: tokens / (ms / 1e3),
        gflops: flops_per_step / (ms / 1e3) / 1e9,
        step_ms,
        wait_ms,
        clean_steps,
        allocated_bytes: 4 * 4 * n as u64 + acts.iter().map(Acts::bytes).sum::<u64>(),
        plan_bytes: plan_bytes(&cfg, shape.batch),
    })
}
