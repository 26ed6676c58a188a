//! Benchmark of the event-queue choice: 1 M events through the simulator's `Queue`
//! (a binary heap keyed on (time, sequence)) and through a `BTreeMap` keyed the same way, in
//! the pattern a simulation produces (each popped event schedules a later one).
//!
//! Run: `cargo run --release -p pangu-sim --example engine_bench`

use std::collections::BTreeMap;
use std::time::Instant;

use pangu_sim::engine::Queue;

const EVENTS: u64 = 1_000_000;
const LIVE: u64 = 10_000;

/// A small deterministic generator (xorshift) for event delays.
fn delays() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 10_000 + 1
    }
}

fn heap() -> f64 {
    let mut next = delays();
    let mut q: Queue<u64> = Queue::new();
    for i in 0..LIVE {
        q.push(next(), i);
    }
    let t = Instant::now();
    let mut n = 0;
    while let Some((now, e)) = q.pop() {
        n += 1;
        if n + LIVE <= EVENTS {
            q.push(now + next(), e);
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn btree() -> f64 {
    let mut next = delays();
    let mut q: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut seq = 0;
    for i in 0..LIVE {
        q.insert((next(), seq), i);
        seq += 1;
    }
    let t = Instant::now();
    let mut n = 0;
    while let Some(((now, _), e)) = q.pop_first() {
        n += 1;
        if n + LIVE <= EVENTS {
            q.insert((now + next(), seq), e);
            seq += 1;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let mut h = Vec::new();
    let mut b = Vec::new();
    for _ in 0..5 {
        h.push(heap());
        b.push(btree());
    }
    h.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    println!("1 M events, {LIVE} live, median of 5 runs:");
    println!(
        "  Queue (BinaryHeap on (time, seq)): {:.1} M events/s",
        h[2] / 1e6
    );
    println!(
        "  BTreeMap on (time, seq):           {:.1} M events/s",
        b[2] / 1e6
    );
}
