//! The collectives of the thread backend: every algorithm, group sizes 1-8 (powers of two and
//! not), uneven buffer lengths; all ranks end with identical sums; failures are reported,
//! never hung on.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::time::{Duration, Instant};

use pangu_strategies::collective::InterServer;
use pangu_strategies::CollectiveAlgorithm;
use pangu_trainer::comm::{chunk, threads, CommError, Communicator};
use pangu_trainer::rng;

const ALGOS: [CollectiveAlgorithm; 4] = [
    CollectiveAlgorithm::Ring,
    CollectiveAlgorithm::HalvingDoubling,
    CollectiveAlgorithm::DoubleBinaryTree,
    CollectiveAlgorithm::Hierarchical {
        inter: InterServer::HalvingDoubling,
    },
];

fn data(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| rng::normal(3, rank as u64, i as u64) as f32)
        .collect()
}

/// Runs `f` on every rank of an n-thread group and returns the results by rank.
fn on_group<R: Send + 'static>(
    n: usize,
    f: impl Fn(&mut threads::ThreadComm) -> R + Send + Sync + Clone + 'static,
) -> Vec<R> {
    let comms = threads::group(n, Duration::from_secs(20));
    let handles: Vec<_> = comms
        .into_iter()
        .map(|mut c| {
            let f = f.clone();
            std::thread::spawn(move || f(&mut c))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn all_reduce_sums_identically_on_every_rank() {
    for n in 1..=8 {
        for len in [1, 7, 64, 1000] {
            let want: Vec<f64> = (0..len)
                .map(|i| (0..n).map(|r| f64::from(data(r, len)[i])).sum())
                .collect();
            for algo in ALGOS {
                let out = on_group(n, move |c| {
                    let mut b = data(c.rank(), len);
                    c.all_reduce(&mut b, algo).unwrap();
                    b
                });
                for r in 1..n {
                    assert_eq!(out[r], out[0], "n {n} len {len} {algo:?}: ranks disagree");
                }
                for (x, w) in out[0].iter().zip(&want) {
                    assert!((f64::from(*x) - w).abs() < 1e-5, "n {n} len {len} {algo:?}");
                }
            }
        }
    }
}

#[test]
fn reduce_scatter_then_all_gather_is_an_all_reduce() {
    for n in [2, 3, 4, 6, 8] {
        let len = 101;
        for algo in [
            CollectiveAlgorithm::Ring,
            CollectiveAlgorithm::HalvingDoubling,
        ] {
            let out = on_group(n, move |c| {
                let mut b = data(c.rank(), len);
                let mine = c.reduce_scatter(&mut b, algo).unwrap();
                assert_eq!(mine, chunk(len, c.size(), c.rank()));
                let part = b[mine.clone()].to_vec();
                // Scribble over the rest: the gather must restore it from the owners.
                for (i, x) in b.iter_mut().enumerate() {
                    if !mine.contains(&i) {
                        *x = f32::NAN;
                    }
                }
                c.all_gather(&mut b, algo).unwrap();
                (part, b)
            });
            for r in 0..n {
                let want: Vec<f32> = {
                    let mut s = vec![0.0f64; len];
                    for q in 0..n {
                        for (a, b) in s.iter_mut().zip(data(q, len)) {
                            *a += f64::from(b);
                        }
                    }
                    s.iter().map(|&x| x as f32).collect()
                };
                for (x, w) in out[r].1.iter().zip(&want) {
                    assert!((x - w).abs() < 1e-5, "n {n} {algo:?} rank {r}");
                }
                assert_eq!(out[r].0, out[r].1[chunk(len, n, r)].to_vec());
            }
        }
    }
}

#[test]
fn broadcast_and_barrier() {
    for n in 1..=7 {
        for root in 0..n {
            let out = on_group(n, move |c| {
                let mut b = if c.rank() == root {
                    data(99, 33)
                } else {
                    vec![0.0; 33]
                };
                c.broadcast(&mut b, root).unwrap();
                c.barrier().unwrap();
                b
            });
            for b in out {
                assert_eq!(b, data(99, 33));
            }
        }
    }
}

#[test]
fn a_silent_peer_times_out_and_a_dead_one_is_named() {
    let mut comms = threads::group(2, Duration::from_millis(200));
    let c1 = comms.pop().unwrap();
    let mut c0 = comms.pop().unwrap();
    let t = Instant::now();
    let mut b = vec![1.0f32; 10];
    let e = c0
        .all_reduce(&mut b, CollectiveAlgorithm::Ring)
        .unwrap_err();
    assert!(matches!(e, CommError::Timeout { peer: 1, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("rank 1"));
    // A peer whose thread panicked: its channels close.
    let h = std::thread::spawn(move || {
        let _keep = c1;
        panic!("worker failure (expected by the test)");
    });
    assert!(h.join().is_err());
    let e = c0
        .all_reduce(&mut b, CollectiveAlgorithm::Ring)
        .unwrap_err();
    assert!(matches!(e, CommError::PeerGone { peer: 1, .. }), "{e}");
}
