//! The collectives of the thread backend run the strategies crate's programs exactly: for every
//! algorithm, group sizes 2-16 and flat and multi-server placements, each rank's log of sends
//! and receives equals what the program lists for it, and the results are the collective's
//! (identical bits on every rank). Failures are reported, never hung on.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::time::{Duration, Instant};

use pangu_strategies::collective::Program;
use pangu_strategies::{CollectiveAlgorithm, CollectiveKind};
use pangu_trainer::comm::{
    chunk, expected_log, threads, CommError, Communicator, GroupPrograms, Recorder,
};
use pangu_trainer::rng;

use pangu_trainer::comm::check::ALGORITHMS as ALGOS;

const KINDS: [CollectiveKind; 4] = [
    CollectiveKind::AllReduce,
    CollectiveKind::ReduceScatter,
    CollectiveKind::AllGather,
    CollectiveKind::Broadcast,
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

use pangu_trainer::comm::check::placements;

#[test]
fn every_rank_sends_and_receives_exactly_what_the_program_lists() {
    for n in 2..=16 {
        for servers in placements(n) {
            for algo in ALGOS {
                for kind in KINDS {
                    let p = Program::build(kind, algo, &servers);
                    let len = 37 + n;
                    let prog = p.clone();
                    let logs = on_group(n, move |c| {
                        let mut rec = Recorder::new(c);
                        let mut b = data(rec.rank(), len);
                        rec.run(&prog, &mut b).unwrap();
                        rec.log
                    });
                    for (r, log) in logs.iter().enumerate() {
                        assert_eq!(
                            log,
                            &expected_log(&p, r, len),
                            "{kind:?} {algo:?} n {n} servers {servers:?} rank {r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_self_check_passes_on_threads_for_groups_of_2_to_16() {
    for n in 2..=16 {
        let out = on_group(n, |c| {
            pangu_trainer::comm::check::check_programs(c, 45).unwrap()
        });
        for (r, o) in out.iter().enumerate() {
            assert!(o.failures.is_empty(), "n {n} rank {r}: {:?}", o.failures);
            assert!(o.programs >= 24 && o.messages > 0, "n {n} rank {r}: {o:?}");
        }
    }
}

#[test]
fn every_program_computes_its_collective_with_identical_bits_on_every_rank() {
    for n in 1..=9 {
        for servers in placements(n) {
            for len in [1, 7, 64, 1000] {
                let want: Vec<f64> = (0..len)
                    .map(|i| (0..n).map(|r| f64::from(data(r, len)[i])).sum())
                    .collect();
                for algo in ALGOS {
                    let progs = GroupPrograms::new(algo, &servers);
                    let out = on_group(n, move |c| {
                        let mut b = data(c.rank(), len);
                        c.all_reduce(&mut b, &progs).unwrap();
                        let mut r = data(c.rank(), len);
                        let mine = c.reduce_scatter(&mut r, &progs).unwrap();
                        assert_eq!(mine, chunk(len, c.size(), c.rank()));
                        let part = r[mine.clone()].to_vec();
                        // Scribble over the rest: the gather must restore it from the owners.
                        for (i, x) in r.iter_mut().enumerate() {
                            if !mine.contains(&i) {
                                *x = f32::NAN;
                            }
                        }
                        c.all_gather(&mut r, &progs).unwrap();
                        (b, part, r)
                    });
                    let case = format!("n {n} len {len} {algo:?} servers {servers:?}");
                    for r in 0..n {
                        assert_eq!(out[r].0, out[0].0, "{case}: ranks disagree");
                        assert_eq!(out[r].1, out[r].2[chunk(len, n, r)].to_vec(), "{case}");
                        for (x, w) in out[r].2.iter().zip(&want) {
                            assert!((f64::from(*x) - w).abs() < 1e-5, "{case}");
                        }
                    }
                    for (x, w) in out[0].0.iter().zip(&want) {
                        assert!((f64::from(*x) - w).abs() < 1e-5, "{case}");
                    }
                }
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
    let ring = GroupPrograms::flat(CollectiveAlgorithm::Ring, 2);
    let e = c0.all_reduce(&mut b, &ring).unwrap_err();
    assert!(matches!(e, CommError::Timeout { peer: 1, .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("rank 1"));
    // A peer whose thread panicked: its channels close.
    let h = std::thread::spawn(move || {
        let _keep = c1;
        panic!("worker failure (expected by the test)");
    });
    assert!(h.join().is_err());
    let e = c0.all_reduce(&mut b, &ring).unwrap_err();
    assert!(matches!(e, CommError::PeerGone { peer: 1, .. }), "{e}");
}

#[test]
fn a_group_without_this_rank_and_a_program_of_another_size_are_named() {
    let mut comms = threads::group(2, Duration::from_millis(200));
    let mut c0 = comms.remove(0);
    let members = [1usize, 3];
    let e = pangu_trainer::comm::Group::new(&mut c0, &members)
        .err()
        .unwrap();
    assert!(matches!(e, CommError::NotInGroup { rank: 0, .. }), "{e}");
    assert!(e.to_string().contains("[1, 3]"), "{e}");
    let four = GroupPrograms::flat(CollectiveAlgorithm::Ring, 4);
    let e = c0.all_reduce(&mut [0.0; 8], &four).unwrap_err();
    assert!(
        matches!(
            e,
            CommError::GroupSize {
                want: 4,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
}
