//! The timeline of a simulated step: one row per (device, stream) and one span per task that
//! took time, with its category and label. The Chrome trace ([`crate::chrome_trace`]) and the
//! app's Gantt chart are both drawn from it.

use pangu_strategies::{Category, Plan};

use crate::engine::Time;
use crate::run::{describe, Run};
use crate::workload::{Stream, Work, Workload};

/// Every stream with its name, in trace-thread order.
pub const STREAMS: [(Stream, &str); 4] = [
    (Stream::Compute, "compute"),
    (Stream::Tp, "tp"),
    (Stream::Dp, "dp/opt"),
    (Stream::Free, "pp"),
];

/// The name of a stream (`pp` for the pipeline's free-standing sends and receives).
pub fn stream_name(s: Stream) -> &'static str {
    STREAMS[s as usize].1
}

/// One row: a device's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Rank (chip).
    pub device: u32,
    /// Its pipeline stage.
    pub stage: u32,
    /// The stream.
    pub stream: Stream,
}

/// One task on a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Index into [`Timeline::rows`].
    pub row: u32,
    /// Start (ns).
    pub start: Time,
    /// End (ns), after the start.
    pub end: Time,
    /// Breakdown category (`pp_comm` for pipeline sends and receives).
    pub cat: Category,
    /// What the task is, e.g. `forward mb 3 vstage 1` or `tp AllReduce 12.0 MiB over 8 ranks`.
    pub label: String,
}

/// Rows and spans of a simulated step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Rows: for each requested rank in order, its requested streams in order.
    pub rows: Vec<Row>,
    /// Spans in task order.
    pub spans: Vec<Span>,
}

/// The timeline of `ranks` (each with `streams`) in a run of workload `w` of `plan`. Tasks of
/// other devices or streams, and tasks that took no time, are left out; ranks without tasks
/// (not simulated when folded) get empty rows.
pub fn build(plan: &Plan, run: &Run, w: &Workload, ranks: &[u32], streams: &[Stream]) -> Timeline {
    const NONE: u32 = u32::MAX;
    let mut rows = Vec::with_capacity(ranks.len() * streams.len());
    let devices = ranks.iter().map(|&r| r as usize + 1).max().unwrap_or(0);
    // Row of (device, stream), dense: one lookup per task.
    let mut row_of = vec![[NONE; STREAMS.len()]; devices];
    for &r in ranks {
        let stage = plan.mesh.coords(r).pp;
        for &stream in streams {
            row_of[r as usize][stream as usize] = rows.len() as u32;
            rows.push(Row {
                device: r,
                stage,
                stream,
            });
        }
    }
    let mut spans = Vec::new();
    for (i, t) in w.tasks.iter().enumerate() {
        let Some(&row) = row_of
            .get(t.device as usize)
            .map(|rs| &rs[t.stream as usize])
        else {
            continue;
        };
        let (start, end) = run.times[i];
        if row == NONE || end <= start {
            continue;
        }
        let cat = match t.work {
            Work::Compute { cat, .. } => cat,
            Work::Coll { inst } => w.colls[inst as usize].cat,
            Work::Send { .. } | Work::Recv => Category::PpComm,
        };
        spans.push(Span {
            row,
            start,
            end,
            cat,
            label: describe(t.label, t.work, w),
        });
    }
    Timeline { rows, spans }
}

/// One simulated device per pipeline stage (the first in `w.devices`), ordered by stage: with
/// folding these are the representatives the simulator ran.
pub fn one_per_stage(plan: &Plan, w: &Workload) -> Vec<u32> {
    let mut shown: Vec<(u32, u32)> = Vec::new();
    for &d in &w.devices {
        let stage = plan.mesh.coords(d).pp;
        if !shown.iter().any(|&(s, _)| s == stage) {
            shown.push((stage, d));
        }
    }
    shown.sort_unstable();
    shown.into_iter().map(|(_, d)| d).collect()
}
