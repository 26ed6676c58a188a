//! Measurements of this machine for the digital twin's hardware profile: matrix-product
//! throughput over the model's shapes, element-wise memory bandwidth, what a second thread
//! adds to a product, and thread-to-thread transfer bandwidth and latency through the
//! executor's own communicator. Each figure is the median of repeated runs (the machine is
//! shared).

use std::time::Instant;

use serde::Serialize;

use crate::comm::{threads, Communicator};
use crate::linalg::{self, matmul, n};

/// A product `C[m, n] = A[m, k] · B[k, n]` and its measured rate.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Gemm {
    /// Rows.
    pub m: usize,
    /// Inner size.
    pub k: usize,
    /// Columns.
    pub n: usize,
    /// Median GFLOP/s on one thread.
    pub gflops: f64,
}

/// What [`measure`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores the process may use.
    pub cores: usize,
    /// Products of the shapes the model runs, one thread.
    pub gemm: Vec<Gemm>,
    /// Median over the shapes (GFLOP/s per thread).
    pub gemm_gflops: f64,
    /// Threads that ran products at once for [`Machine::parallel_speedup`].
    pub workers: usize,
    /// One thread's sustained rate on the FFN product alone (GFLOP/s).
    pub one_gflops: f64,
    /// The sum of the `workers` threads' sustained rates on it at once (GFLOP/s).
    pub all_gflops: f64,
    /// Cores' worth of throughput when `workers` threads each run products for the same
    /// window (the sum of their rates over one thread's rate alone): what that many ranks
    /// sharing the machine get, context switches and shared caches included.
    pub parallel_speedup: f64,
    /// Element-wise bandwidth of one thread (`a = b + c`, GB/s counting the three arrays).
    pub stream_gb_s: f64,
    /// The executor's attention forward over the model's shape, one thread (GFLOP/s).
    pub attention_gflops: f64,
    /// Thread-to-thread transfer bandwidth of large messages (GB/s).
    pub transfer_gb_s: f64,
    /// One-way latency of a small message between threads (µs).
    pub transfer_latency_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Median GFLOP/s of one product shape over `reps` runs.
pub fn gemm_rate(m: usize, k: usize, nn: usize, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * nn];
    let mut c = vec![0.0f32; m * nn];
    matmul(&mut c, nn, n(&a, k), n(&b, nn), m, k, nn, false);
    let runs = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            matmul(&mut c, nn, n(&a, k), n(&b, nn), m, k, nn, false);
            2.0 * (m * k * nn) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
        })
        .collect();
    median(runs)
}

/// GFLOP/s of one product shape run back to back for `secs` seconds (a sustained rate: long
/// enough to span many scheduler ticks, so threads measured together really overlap).
pub fn sustained_rate(m: usize, k: usize, nn: usize, secs: f64) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * nn];
    let mut c = vec![0.0f32; m * nn];
    matmul(&mut c, nn, n(&a, k), n(&b, nn), m, k, nn, false);
    let t = Instant::now();
    let mut runs = 0u64;
    while runs == 0 || t.elapsed().as_secs_f64() < secs {
        matmul(&mut c, nn, n(&a, k), n(&b, nn), m, k, nn, false);
        runs += 1;
    }
    2.0 * (m * k * nn) as f64 * runs as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
}

/// Element-wise bandwidth (GB/s) over arrays of `len` floats.
pub fn stream_rate(len: usize, reps: usize) -> f64 {
    let b = vec![1.0f32; len];
    let c = vec![2.0f32; len];
    let mut a = vec![0.0f32; len];
    let runs = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            for ((x, y), z) in a.iter_mut().zip(&b).zip(&c) {
                *x = y + z;
            }
            std::hint::black_box(&a);
            3.0 * 4.0 * len as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
        })
        .collect();
    median(runs)
}

/// One side of a ping-pong of `len` floats with `peer`, `reps` times: the leader sends first
/// and returns the median one-way time (s); the other side echoes and returns 0.
pub fn ping_pong(
    comm: &mut dyn Communicator,
    peer: usize,
    len: usize,
    reps: usize,
    lead: bool,
) -> f64 {
    let mut buf = vec![1.0f32; len.max(1)];
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        // The leader sends first, the other side receives first.
        let ok = if lead {
            let sent = comm.send(peer, &buf, "calibrate").is_ok();
            sent && comm.recv(peer, &mut buf, "calibrate").is_ok()
        } else {
            let got = comm.recv(peer, &mut buf, "calibrate").is_ok();
            got && comm.send(peer, &buf, "calibrate").is_ok()
        };
        if !ok {
            break;
        }
        times.push(t.elapsed().as_secs_f64() / 2.0);
    }
    if lead {
        median(times)
    } else {
        0.0
    }
}

/// (GB/s for `bytes`-sized messages, one-way µs for one float) from the leader's side of
/// two ping-pongs, one of one float and one of `bytes`.
pub fn transfer_between(
    comm: &mut dyn Communicator,
    peer: usize,
    bytes: usize,
    reps: usize,
    lead: bool,
) -> (f64, f64) {
    let len = (bytes / 4).max(1);
    let small = ping_pong(comm, peer, 1, reps, lead);
    let large = ping_pong(comm, peer, len, reps, lead);
    let bw = (4 * len) as f64 / (large - small).max(1e-9) / 1e9;
    (bw, small * 1e6)
}

/// Ping-pong between two threads through the executor's communicator: (GB/s for
/// `bytes`-sized messages, one-way µs for one float).
pub fn transfer(bytes: usize, reps: usize) -> (f64, f64) {
    let mut group = threads::group(2, std::time::Duration::from_secs(30));
    let (Some(mut peer), Some(mut me)) = (group.pop(), group.pop()) else {
        return (0.0, 0.0);
    };
    std::thread::scope(|s| {
        s.spawn(move || transfer_between(&mut peer, 0, bytes, reps, false));
        transfer_between(&mut me, 1, bytes, reps, true)
    })
}

/// GFLOP/s of the executor's attention forward (scores, causal softmax, weighted values) on
/// `b` sequences of `s` tokens with `h` heads of `hd`, counting `4·b·h·s²·hd` (the two
/// products over the full square, as the cost model does).
pub fn attention_rate(b: usize, s: usize, h: usize, hd: usize, reps: usize) -> f64 {
    use crate::kernels::{attention_fwd, AttnDims, Dropout};
    let dims = AttnDims::whole(b, s, h, hd);
    let w = dims.width();
    let qkv: Vec<f32> = (0..b * s * 3 * w)
        .map(|i| ((i % 97) as f32) * 0.01)
        .collect();
    let start = vec![0u32; b * s];
    let mut out = vec![0.0f32; b * s * w];
    let mut probs = vec![0.0f32; b * h * s * s];
    let mut pd = Vec::new();
    let ids: Vec<u64> = (0..b as u64).collect();
    let drop = Dropout {
        p: 0.0,
        seed: 0,
        stream: 0,
    };
    let runs = (0..reps.max(1) + 1)
        .map(|_| {
            let t = Instant::now();
            attention_fwd(
                &mut out, &mut probs, &mut pd, &qkv, &start, dims, drop, &ids,
            );
            4.0 * (b * h * s * s * hd) as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e9
        })
        .skip(1)
        .collect();
    median(runs)
}

/// Measures the machine for a model of hidden size `d`, FFN `f`, vocabulary `v`, `heads`
/// attention heads over sequences of `seq`, and `rows` tokens per micro-batch (`quick`: fewer repetitions), with `workers` threads at once
/// for the shared throughput (at least the core count; the executor's rank count where that
/// is larger).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    d: usize,
    f: usize,
    v: usize,
    heads: usize,
    seq: usize,
    rows: usize,
    workers: usize,
    quick: bool,
) -> Machine {
    let reps = if quick { 3 } else { 9 };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let before = linalg::threads();
    linalg::set_threads(1);
    let shapes = [
        (rows, d, 3 * d),
        (rows, d, d),
        (rows, d, f),
        (rows, f, d),
        (rows, d, v),
        (rows, v, d),
    ];
    let gemm: Vec<Gemm> = shapes
        .iter()
        .map(|&(m, k, nn)| Gemm {
            m,
            k,
            n: nn,
            gflops: gemm_rate(m, k, nn, reps),
        })
        .collect();
    let gemm_gflops = median(gemm.iter().map(|g| g.gflops).collect());
    let (m, k, nn) = (rows, d, f);
    let secs = if quick { 0.25 } else { 0.6 };
    let workers = workers.max(cores);
    let one = sustained_rate(m, k, nn, secs);
    // Every worker at once, each on its own product (as the executor's ranks run).
    let all: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| sustained_rate(m, k, nn, secs)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    linalg::set_threads(before.max(1));
    let stream_gb_s = stream_rate(if quick { 1 << 22 } else { 1 << 24 }, reps);
    let seq = seq.max(1);
    let heads = heads.max(1);
    let attention_gflops = attention_rate((rows / seq).max(1), seq, heads, d / heads, reps);
    let (transfer_gb_s, transfer_latency_us) =
        transfer(if quick { 1 << 20 } else { 1 << 23 }, reps * 4);
    Machine {
        cores,
        gemm,
        gemm_gflops,
        workers,
        one_gflops: one,
        all_gflops: all,
        parallel_speedup: all / one.max(1e-9),
        stream_gb_s,
        attention_gflops,
        transfer_gb_s,
        transfer_latency_us,
    }
}

/// The hardware profile of `devices` virtual devices sharing this machine, in the format of
/// the cluster presets: each device's rates are one thread's measured matrix rate and memory
/// bandwidth, and the server's `shared_cores` is `S`, the measured throughput of all cores at
/// once in units of one thread (below the core count where cores share caches, memory
/// bandwidth and turbo, or other work shares the machine). The simulator divides those cores
/// among the devices that compute at each instant (processor sharing), so `k` busy devices run
/// at `min(1, S / k)` of a thread each; `1 / devices` of the memory; the island link is the
/// measured thread-to-thread transfer.
///
/// The simulator's `cpu` calibration (sim/calibration/cpu.toml) scales the peak by the matrix
/// efficiency curve (0.78 on large shapes) and the bandwidth by its memory efficiency (0.60):
/// the profile states the peaks that those bring back to the measured rates.
pub fn profile_toml(m: &Machine, devices: u32, memory_bytes: u64) -> String {
    const MATMUL_EFFICIENCY: f64 = 0.78;
    const MEMORY_EFFICIENCY: f64 = 0.60;
    let cores = m.parallel_speedup.clamp(0.05, m.cores.max(1) as f64);
    let gflops = m.gemm_gflops / MATMUL_EFFICIENCY;
    let gib = memory_bytes as f64 / f64::from(devices.max(1)) / (1u64 << 30) as f64;
    format!(
        "# Written by `pangu twin calibrate`: this machine as {devices} virtual devices sharing {cores} cores.\n\
         # Measured: one thread's matrix products over the model's shapes (median {g1:.1} GFLOP/s), element-wise\n\
         # bandwidth {sb:.1} GB/s, thread-to-thread transfers {tb:.2} GB/s and {lat:.1} us; {cores} cores\n\
         # ({w} threads at once: {sp:.2}x one thread): the devices share {shared:.3} cores, k busy ones min(1, {shared:.3}/k) each.\n\
         name = \"cpu-host-calibrated\"\n\
         description = \"This machine, calibrated: {devices} fp32 devices on {cores} cores\"\n\
         chips = {devices}\n\
         collective_library = \"nccl\"\n\n\
         [chip]\n\
         name = \"x86-64 core share\"\n\
         fp16 = \"{gflops:.2} GFLOP/s\"\n\
         fp32 = \"{gflops:.2} GFLOP/s\"\n\
         hbm = \"{gib:.3} GiB\"\n\
         hbm_bandwidth = \"{bw:.2} GB/s\"\n\
         reserved = \"256 MiB\"\n\n\
         [server]\n\
         chips = {devices}\n\
         islands = 1\n\
         shared_cores = {shared:.3}\n\n\
         [server.island]\n\
         kind = \"switch\"\n\
         bandwidth = \"{tb:.3} GB/s\"\n\
         latency = \"{lat:.2} us\"\n\n\
         [network]\n\
         nics_per_server = 0\n\
         nic = {{ bandwidth = \"1 GB/s\", latency = \"50 us\" }}\n\
         host_link = {{ bandwidth = \"10 GB/s\", latency = \"0 us\" }}\n\
         servers_per_rack = 1\n\
         spine_oversubscription = 1.0\n\
         spine_latency = \"0 us\"\n",
        cores = m.cores,
        g1 = m.gemm_gflops,
        sb = m.stream_gb_s,
        tb = m.transfer_gb_s,
        lat = m.transfer_latency_us,
        sp = m.parallel_speedup,
        shared = cores,
        w = m.workers,
        bw = m.stream_gb_s / MEMORY_EFFICIENCY,
    )
}
