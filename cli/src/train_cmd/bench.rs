//! `pangu train --bench`: the training step on random tokens.

use anyhow::Result;
use pangu_trainer::bench::{self, BenchShape};

use super::args::TrainArgs;
use crate::output::{emit, outln, print_json, tool_field};

pub(super) fn run_bench(a: &TrainArgs, threads: usize) -> Result<()> {
    let shape = BenchShape {
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        seq: a.seq,
        vocab: a.vocab,
        batch: a.strategy.global_batch.unwrap_or(8),
        steps: a.steps.unwrap_or(20) as u32,
        warmup: a.warmup,
        threads,
        no_query_layer: a.no_query_layer,
    };
    let r = bench::run(&shape)?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("tool".into(), tool_field(&shape));
        }
        return print_json(&v);
    }
    let mut o = String::new();
    outln!(
        o,
        "shape: {}+{} layers, hidden {}, {} heads, seq {}, vocab {}, batch {}; {} threads; {} parameters",
        shape.layers,
        u32::from(!shape.no_query_layer),
        shape.hidden,
        shape.heads,
        shape.seq,
        shape.vocab,
        shape.batch,
        threads,
        r.params
    );
    outln!(
        o,
        "{:.1} ms/step (median of {} clean of {} timed steps), {:.0} tokens/s, {:.1} GFLOP/s ({:.1} GFLOP/step)",
        r.ms_per_step,
        r.clean_steps,
        r.step_ms.len(),
        r.tokens_per_s,
        r.gflops,
        r.flops_per_step / 1e9
    );
    match r.plan_bytes {
        Some(p) => outln!(
            o,
            "allocated: {} bytes; the memory model of the same plan (fp32, 1 device): {} bytes ({:+.1} %)",
            r.allocated_bytes,
            p,
            (r.allocated_bytes as f64 / p as f64 - 1.0) * 100.0
        ),
        None => outln!(o, "allocated: {} bytes", r.allocated_bytes),
    }
    emit(&o)
}
