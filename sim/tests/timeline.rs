//! The shared timeline: rows in the requested order, spans on their rows without overlap, and
//! the Chrome trace made of exactly those rows and spans.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::timeline::{self, STREAMS};
use pangu_sim::workload::Stream;
use pangu_sim::{chrome_trace, simulate_full, Options};
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};

fn plan() -> Plan {
    let m = ModelConfig::preset("pangu-alpha-350m").unwrap();
    let user = StrategySpec::from_toml("tp = 2\npp = 2", "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name("ascend910:8").unwrap()), &user).unwrap();
    Plan::new(&r.model, &r.cluster, &r.strategy).unwrap()
}

#[test]
fn rows_follow_the_ranks_and_spans_stay_on_their_rows() {
    let p = plan();
    let (run, w) = simulate_full(&p, Options::FULL).unwrap();
    let ranks = [3, 0];
    let streams = [Stream::Compute, Stream::Tp];
    let tl = timeline::build(&p, &run, &w, &ranks, &streams);
    let rows: Vec<(u32, Stream)> = tl.rows.iter().map(|r| (r.device, r.stream)).collect();
    assert_eq!(
        rows,
        [
            (3, Stream::Compute),
            (3, Stream::Tp),
            (0, Stream::Compute),
            (0, Stream::Tp)
        ]
    );
    for r in &tl.rows {
        assert_eq!(r.stage, p.mesh.coords(r.device).pp);
    }
    let step_ns = (run.report.step_time_s * 1e9).round() as u64;
    for row in 0..tl.rows.len() {
        let on: Vec<_> = tl.spans.iter().filter(|s| s.row as usize == row).collect();
        assert!(!on.is_empty(), "row {row} is empty");
        for s in &on {
            assert!(s.start < s.end && s.end <= step_ns, "{s:?}");
            assert!(!s.label.is_empty());
        }
        // A stream runs one task at a time.
        for pair in on.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "{:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    // Every task of those rows that took time is a span.
    let expected = w
        .tasks
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            ranks.contains(&t.device)
                && streams.contains(&t.stream)
                && run.times[*i].1 > run.times[*i].0
        })
        .count();
    assert_eq!(tl.spans.len(), expected);
}

#[test]
fn the_chrome_trace_is_the_timeline_over_every_stream() {
    let p = plan();
    let (run, w) = simulate_full(&p, Options::default()).unwrap();
    let ranks: Vec<u32> = (0..p.strategy.devices).collect();
    let all = STREAMS.map(|(s, _)| s);
    let tl = timeline::build(&p, &run, &w, &ranks, &all);
    let doc = chrome_trace(&p, &run, &w, &ranks);
    let events = doc["traceEvents"].as_array().unwrap();
    let count = |ph: &str, name: Option<&str>| {
        events
            .iter()
            .filter(|e| e["ph"] == ph && name.is_none_or(|n| e["name"] == n))
            .count()
    };
    assert_eq!(count("M", Some("process_name")), ranks.len());
    assert_eq!(count("M", Some("thread_name")), tl.rows.len());
    assert_eq!(count("X", None), tl.spans.len());
    let first = events.iter().find(|e| e["ph"] == "X").unwrap();
    let s = &tl.spans[0];
    let row = tl.rows[s.row as usize];
    assert_eq!(first["name"], s.label.as_str());
    assert_eq!(first["cat"], s.cat.name());
    assert_eq!(first["pid"], row.device);
    assert_eq!(first["tid"], row.stream as u32);
}

#[test]
fn one_device_per_stage_in_stage_order() {
    let p = plan();
    let (_, w) = simulate_full(&p, Options::default()).unwrap();
    let shown = timeline::one_per_stage(&p, &w);
    let stages: Vec<u32> = shown.iter().map(|&d| p.mesh.coords(d).pp).collect();
    assert_eq!(stages, (0..p.strategy.pp).collect::<Vec<_>>());
    assert!(shown.iter().all(|d| w.devices.contains(d)));
}
