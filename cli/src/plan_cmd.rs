//! `pangu plan`: groups, stage layers, memory per device, communication, bubble.

use anyhow::{bail, Result};
use clap::Args;
use pangu_hardware::{Bytes, Level};
use pangu_strategies::strategy::Axis;
use pangu_strategies::{Chunk, LayerId, Plan, PlanError, Precision, ScheduleKind};
use serde_json::{json, Value};

use crate::args::SetupArgs;
use crate::output::{emit, outln, print_json, table, tool_field};
use pangu_sim::validate::confidence::Regime;

/// Options of `pangu plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Short description of a chunk's layers, e.g. "embedding + blocks 0-3".
pub(crate) fn describe_chunk(c: &Chunk) -> String {
    let mut parts = Vec::new();
    if c.embedding {
        parts.push("embedding".to_string());
    }
    let blocks: Vec<u32> = c
        .layers
        .iter()
        .filter_map(|l| {
            if let LayerId::Block(i) = l {
                Some(*i)
            } else {
                None
            }
        })
        .collect();
    match (blocks.first(), blocks.last()) {
        (Some(a), Some(b)) if a == b => parts.push(format!("block {a}")),
        (Some(a), Some(b)) => parts.push(format!("blocks {a}-{b}")),
        _ => {}
    }
    if c.layers.contains(&LayerId::Query) {
        parts.push("query layer".into());
    }
    if c.head {
        parts.push("head".into());
    }
    parts.join(" + ")
}

/// The parallel axes by name, in the order the tables show them; with context parallelism
/// its groups too, and the data-parallel groups (the gradient groups) span dp × cp.
fn axes(plan: &Plan) -> Vec<(&'static str, Axis)> {
    if plan.strategy.cp > 1 {
        vec![
            ("tp", Axis::Tp),
            ("cp", Axis::Cp),
            ("dp×cp", Axis::Dp),
            ("pp", Axis::Pp),
        ]
    } else {
        vec![("tp", Axis::Tp), ("dp", Axis::Dp), ("pp", Axis::Pp)]
    }
}

/// The groups of an axis and the widest link level any of them spans.
fn groups_of(plan: &Plan, axis: Axis) -> (Vec<Vec<u32>>, Option<Level>) {
    let gs = plan.groups(axis);
    let topo = &plan.cluster.topology;
    let span = gs.iter().map(|g| topo.span(g)).max();
    (gs, span)
}

fn gb(b: Bytes) -> String {
    format!("{:.2} GiB", b.gib())
}

/// The plan as JSON.
pub(crate) fn plan_json(plan: &Plan, notes: &[String]) -> Value {
    let s = &plan.strategy;
    let max = plan.max_memory();
    let stages: Vec<Value> = plan
        .stages
        .iter()
        .map(|st| {
            json!({
                "stage": st.index,
                "chunks": st.chunks.iter().map(|c| json!({
                    "virtual_stage": c.virtual_stage,
                    "layers": c.layers,
                    "embedding": c.embedding,
                    "head": c.head,
                    "description": describe_chunk(c),
                })).collect::<Vec<_>>(),
                "params": st.params,
                "memory": st.memory,
            })
        })
        .collect();
    let groups: Value = axes(plan)
        .iter()
        .map(|&(name, axis)| {
            let (gs, span) = groups_of(plan, axis);
            (
                name.to_string(),
                json!({
                    "size": gs.first().map_or(0, Vec::len),
                    "count": gs.len(),
                    "span": span.map(|l| l.name()),
                    "first": gs.first(),
                }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let switches: Vec<Value> = plan
        .switches_off()
        .into_iter()
        .map(|(name, flag, bytes)| json!({"switch": name, "flag": flag, "max_bytes_per_device": bytes.0, "fits": bytes <= plan.capacity}))
        .collect();
    let comms: Vec<Value> = plan
        .comms
        .iter()
        .map(|c| {
            json!({
                "group": c.group.name(),
                "purpose": c.purpose,
                "collective": c.collective,
                "algorithm": c.algorithm,
                "group_size": c.group_size,
                "span": c.span.name(),
                "bytes_per_call": c.bytes_per_call.0,
                "calls_per_step": c.calls_per_step,
                "bytes_per_step": c.bytes_per_step().0,
                "wire_bytes_per_step": c.wire_bytes_per_step().0,
            })
        })
        .collect();
    let ideal = match s.schedule {
        ScheduleKind::Interleaved { .. } => Value::Null,
        _ => json!(f64::from(s.pp - 1) / f64::from(s.micro_batches + s.pp - 1)),
    };
    json!({
        "tool": tool_field(&(&plan.model, &plan.cluster.spec, &plan.strategy)),
        "model": {"name": plan.model.name, "layers": plan.model.layers, "hidden": plan.model.hidden, "heads": plan.model.heads, "seq_len": plan.model.seq_len, "vocab": plan.model.vocab},
        "cluster": {"name": plan.cluster.spec.name, "chips": plan.cluster.chips(), "chip": plan.cluster.spec.chip.name, "hbm_bytes": plan.cluster.spec.chip.hbm.0},
        "strategy": plan.strategy,
        "summary": plan.strategy.summary(),
        "devices": s.devices,
        "params": plan.model.params().total,
        "fits": plan.fits(),
        "memory": {
            "max_bytes_per_device": max.total.0,
            "capacity_bytes": plan.capacity.0,
            "max": max,
            "switches_off": switches,
        },
        "bubble_fraction": plan.bubble_fraction(),
        "bubble_fraction_balanced": ideal,
        "stages": stages,
        "groups": groups,
        "communication": comms,
        "warnings": plan.warnings,
        "notes": notes,
        "confidence": crate::output::confidence(Regime::of_plan(plan)).1,
    })
}

fn print_table(out: &mut String, plan: &Plan, notes: &[String]) {
    let s = &plan.strategy;
    let spec = &plan.cluster.spec;
    outln!(
        out,
        "plan: {} ({:.3} B parameters) on {} ({} × {}, {} HBM)",
        plan.model.name,
        plan.model.params().total as f64 / 1e9,
        spec.name,
        plan.cluster.chips(),
        spec.chip.name,
        spec.chip.hbm
    );
    outln!(
        out,
        "strategy: {} (global batch {}, {})",
        s.summary(),
        s.global_batch,
        s.precision
    );
    if let Some(line) = fp8_line(plan) {
        outln!(out, "precision: {line}");
    }
    outln!(out);
    outln!(out, "{}", groups_table(plan));
    outln!(out, "{}", stages_table(plan));
    memory_lines(out, plan);
    outln!(out);
    outln!(out, "communication per step (busiest device):");
    outln!(out, "{}", comm_table(plan));
    let bubble = plan.bubble_fraction();
    match s.schedule {
        ScheduleKind::Interleaved { chunks } => outln!(out, "pipeline bubble: {bubble:.3} of stage time (interleaved, {chunks} chunks)"),
        _ => outln!(out,
            "pipeline bubble: {bubble:.3} of stage time ((p-1)/(m+p-1) = {:.3} for balanced stages)",
            f64::from(s.pp - 1) / f64::from(s.micro_batches + s.pp - 1)
        ),
    }
    outln!(
        out,
        "{}",
        crate::output::confidence(Regime::of_plan(plan)).0
    );
    for w in &plan.warnings {
        outln!(out, "warning: {w}");
    }
    for n in notes {
        outln!(out, "note: {n}");
    }
}

/// Each axis's group size, count, widest span and first group.
fn groups_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = axes(plan)
        .iter()
        .map(|&(name, axis)| {
            let (gs, span) = groups_of(plan, axis);
            let first = gs.first().cloned().unwrap_or_default();
            let shown: Vec<String> = first.iter().take(8).map(u32::to_string).collect();
            let more = if first.len() > 8 { ", …" } else { "" };
            vec![
                name.to_string(),
                first.len().to_string(),
                gs.len().to_string(),
                span.map_or("-", |l| l.name()).to_string(),
                format!("[{}{more}]", shown.join(", ")),
            ]
        })
        .collect();
    table(
        &["group", "size", "count", "spans", "first group (chips)"],
        &rows,
    )
}

/// Each stage's layers, parameters and memory (and the fp8 weight copies under fp8).
fn stages_table(plan: &Plan) -> String {
    let fp8 = plan.strategy.precision == Precision::Fp8;
    let rows: Vec<Vec<String>> = plan
        .stages
        .iter()
        .map(|st| {
            let m = st.memory;
            let mut row = vec![
                st.index.to_string(),
                st.chunks
                    .iter()
                    .map(describe_chunk)
                    .collect::<Vec<_>>()
                    .join(" | "),
                format!("{:.3} B", st.params as f64 / 1e9),
                gb(m.weights),
                gb(m.gradients),
                gb(m.optimizer),
                gb(m.activations),
                gb(m.buffers),
            ];
            if fp8 {
                row.push(gb(m.fp8_weights));
            }
            row.push(gb(m.total));
            row
        })
        .collect();
    let mut header = vec![
        "stage",
        "layers",
        "params",
        "weights",
        "grads",
        "optimizer",
        "activations",
        "buffers",
    ];
    if fp8 {
        header.push("fp8 copies");
    }
    header.push("total");
    table(&header, &rows)
}

/// What fp8 changes, for the plan's header: which GEMMs run at which rate.
fn fp8_line(plan: &Plan) -> Option<String> {
    let chip = &plan.cluster.spec.chip;
    let peaks = pangu_strategies::fp8::Peaks::of(chip, plan.strategy.precision)?;
    (plan.strategy.precision == Precision::Fp8).then(|| {
        format!(
            "fp8 (Transformer Engine recipe): the layers' linear GEMMs at {} fp8, attention's batched matmuls and the head at {} bf16; \
             bf16 weights with fp32 master copies, plus each linear weight in fp8 and its transpose (\"fp8 copies\")",
            peaks.linear, peaks.base
        )
    })
}

/// Whether the busiest device fits, and what each memory-saving switch turned off would need.
fn memory_lines(out: &mut String, plan: &Plan) {
    let chip = &plan.cluster.spec.chip;
    outln!(
        out,
        "memory: {} per device at most, {} usable ({} HBM − {} reserved): {}",
        gb(plan.max_memory().total),
        gb(plan.capacity),
        chip.hbm,
        chip.reserved,
        if plan.fits() { "fits" } else { "DOES NOT FIT" }
    );
    for (name, flag, bytes) in plan.switches_off() {
        outln!(
            out,
            "  with {name} ({flag}): {} per device, {}",
            gb(bytes),
            if bytes <= plan.capacity {
                "would still fit"
            } else {
                "would not fit"
            }
        );
    }
}

/// The communication of the busiest device per step.
fn comm_table(plan: &Plan) -> String {
    let rows: Vec<Vec<String>> = plan
        .comms
        .iter()
        .map(|c| {
            vec![
                c.group.name().to_string(),
                c.purpose.to_string(),
                c.collective
                    .map_or("send/recv".into(), |k| format!("{k:?}")),
                c.algorithm.map_or("-".into(), |a| format!("{a:?}")),
                c.group_size.to_string(),
                c.span.name().to_string(),
                format!("{}", c.bytes_per_call),
                c.calls_per_step.to_string(),
                format!("{}", c.bytes_per_step()),
            ]
        })
        .collect();
    table(
        &[
            "group",
            "purpose",
            "collective",
            "algorithm",
            "ranks",
            "spans",
            "per call",
            "calls",
            "per step",
        ],
        &rows,
    )
}

/// Runs `pangu plan`.
pub(crate) fn run(args: &PlanArgs) -> Result<()> {
    let setup = args.setup.resolve()?;
    let r = &setup.resolved;
    let plan = Plan::build(&setup.model, &r.cluster, &r.strategy)?;
    let mut notes = r.notes.clone();
    notes.extend(plan.notes.iter().cloned());
    if args.json {
        print_json(&plan_json(&plan, &notes))?;
    } else {
        let mut out = String::new();
        print_table(&mut out, &plan, &notes);
        emit(&out)?;
    }
    if !plan.fits() {
        // Same message as Plan::new gives; the report above still shows the breakdown.
        match Plan::new(&setup.model, &r.cluster, &r.strategy) {
            Err(e @ PlanError::OutOfMemory { .. }) => bail!(e),
            _ => bail!("the plan does not fit in memory"),
        }
    }
    Ok(())
}
