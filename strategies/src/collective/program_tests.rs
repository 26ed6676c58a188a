//! Tests of the collective programs: every program computes its collective, the trees are
//! NCCL's, the bandwidth is the lower bound, the placements fall back as documented.

use super::*;
use CollectiveAlgorithm as A;
use CollectiveKind as K;

const ALGOS: [CollectiveAlgorithm; 6] = [
    A::Ring,
    A::HalvingDoubling,
    A::DoubleBinaryTree,
    A::Hierarchical {
        inter: InterServer::Ring,
    },
    A::Hierarchical {
        inter: InterServer::HalvingDoubling,
    },
    A::Hierarchical {
        inter: InterServer::DoubleBinaryTree,
    },
];

/// Runs a program on integer buffers with the documented semantics: a step's sends read
/// the buffers as they were before it, its receives apply in list order.
fn interpret(p: &Program, mut bufs: Vec<Vec<i64>>) -> Vec<Vec<i64>> {
    let len = bufs[0].len();
    for step in &p.steps {
        let msgs: Vec<Vec<i64>> = step
            .iter()
            .map(|t| bufs[t.src as usize][p.elements(len, &t.pieces)].to_vec())
            .collect();
        for (t, m) in step.iter().zip(msgs) {
            let r = p.elements(len, &t.pieces);
            let dst = &mut bufs[t.dst as usize][r];
            for (d, v) in dst.iter_mut().zip(m) {
                match t.combine {
                    Combine::Add => *d += v,
                    Combine::Copy => *d = v,
                }
            }
        }
    }
    bufs
}

/// Placements of `n` members: one server, one per server, uniform servers of 2 and 4
/// (server-major and interleaved group orders), and an uneven one.
fn placements(n: u32) -> Vec<Vec<u32>> {
    let mut out = vec![vec![0; n as usize], (0..n).collect()];
    for k in [2, 4] {
        if n.is_multiple_of(k) && n > k {
            out.push((0..n).map(|i| i / k).collect());
            out.push((0..n).map(|i| i % (n / k)).collect());
        }
    }
    if n > 2 {
        out.push((0..n).map(|i| u32::from(i == 0)).collect());
    }
    out
}

fn input(n: usize, len: usize) -> Vec<Vec<i64>> {
    (0..n)
        .map(|r| (0..len).map(|i| (r * 1000 + i * 7 + 1) as i64).collect())
        .collect()
}

#[test]
fn every_program_computes_its_collective() {
    for n in 1..=16u32 {
        for servers in placements(n) {
            for algo in ALGOS {
                for len in [0usize, 1, 5, 37, 130] {
                    let x = input(n as usize, len);
                    let sum: Vec<i64> = (0..len).map(|i| x.iter().map(|b| b[i]).sum()).collect();
                    let case = format!("n {n} servers {servers:?} {algo:?} len {len}");
                    let p = Program::build(K::AllReduce, algo, &servers);
                    for b in interpret(&p, x.clone()) {
                        assert_eq!(b, sum, "all-reduce {case}");
                    }
                    let p = Program::build(K::ReduceScatter, algo, &servers);
                    for (r, b) in interpret(&p, x.clone()).iter().enumerate() {
                        let mine = chunk(len, n as usize, r);
                        assert_eq!(p.elements(len, &p.owned(r as u32).unwrap()), mine);
                        assert_eq!(b[mine.clone()], sum[mine], "reduce-scatter {case}");
                    }
                    // All-gather: each position starts with only its own chunk right.
                    let p = Program::build(K::AllGather, algo, &servers);
                    let start: Vec<Vec<i64>> = (0..n as usize)
                        .map(|r| {
                            let mine = chunk(len, n as usize, r);
                            (0..len)
                                .map(|i| if mine.contains(&i) { x[0][i] } else { -1 })
                                .collect()
                        })
                        .collect();
                    for b in interpret(&p, start) {
                        assert_eq!(b, x[0], "all-gather {case}");
                    }
                    let p = Program::build(K::Broadcast, algo, &servers);
                    for b in interpret(&p, x.clone()) {
                        assert_eq!(b, x[0], "broadcast {case}");
                    }
                }
            }
        }
    }
}

#[test]
fn no_step_writes_one_range_twice_in_different_ways() {
    // A receiver never copies into a range another transfer of the same step also writes,
    // so the result does not depend on how the step's receives interleave.
    for n in 2..=16u32 {
        for servers in placements(n) {
            for algo in ALGOS {
                for kind in [K::AllReduce, K::ReduceScatter, K::AllGather, K::Broadcast] {
                    let p = Program::build(kind, algo, &servers);
                    for step in &p.steps {
                        for (i, a) in step.iter().enumerate() {
                            for b in &step[i + 1..] {
                                let overlap = a.dst == b.dst
                                    && a.pieces.start < b.pieces.end
                                    && b.pieces.start < a.pieces.end;
                                let both_add =
                                    a.combine == Combine::Add && b.combine == Combine::Add;
                                assert!(
                                    !overlap || both_add,
                                    "{kind:?} {algo:?} n {n} {servers:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn ring_and_halving_doubling_send_the_bandwidth_lower_bound() {
    for n in [2u32, 4, 8, 16] {
        for algo in [A::Ring, A::HalvingDoubling] {
            let p = Program::build(K::AllReduce, algo, &vec![0; n as usize]);
            for r in 0..n {
                let sent: f64 = p
                    .transfers()
                    .filter(|(_, t)| t.src == r)
                    .map(|(_, t)| p.fraction(&t.pieces))
                    .sum();
                let want = 2.0 * f64::from(n - 1) / f64::from(n);
                assert!((sent - want).abs() < 1e-12, "{algo:?} n {n}");
            }
        }
    }
    let hd = Program::build(K::AllReduce, A::HalvingDoubling, &[0; 8]);
    assert_eq!(hd.steps.len(), 6);
    let odd = Program::build(K::AllReduce, A::HalvingDoubling, &[0; 6]);
    assert_eq!((odd.algorithm, odd.steps.len()), (A::Ring, 10));
}

#[test]
fn double_tree_leaves_of_one_tree_are_inner_nodes_of_the_other() {
    for n in [2u32, 4, 6, 8, 12, 16] {
        let p = Program::build(K::AllReduce, A::DoubleBinaryTree, &vec![0; n as usize]);
        // Members that send tree t's first chunk down to someone are its inner nodes.
        let inner = |half: u32| -> Vec<bool> {
            let mut v = vec![false; n as usize];
            for (_, t) in p.transfers() {
                let in_half = t.pieces.start / PIPELINE_CHUNKS == half;
                if t.combine == Combine::Copy && in_half {
                    v[t.src as usize] = true;
                }
            }
            v
        };
        let (a, b) = (inner(0), inner(1));
        let leaves_in_both = (0..n as usize).filter(|&i| !a[i] && !b[i]).count();
        assert_eq!(
            leaves_in_both, 0,
            "n {n}: every member is inner in one tree"
        );
        // NCCL's tree over 8: 0 → 4 → {2, 6} → odd positions.
        assert_eq!(btree_parent(8, 4), Some(0));
        assert_eq!(btree_parent(8, 6), Some(4));
        assert_eq!(btree_parent(8, 7), Some(6));
        assert_eq!(btree_parent(6, 5), Some(4));
    }
}

#[test]
fn hierarchical_needs_a_uniform_placement() {
    let h = A::Hierarchical {
        inter: InterServer::HalvingDoubling,
    };
    assert_eq!(Program::build(K::AllReduce, h, &[0, 0, 1, 1]).algorithm, h);
    assert_eq!(
        Program::build(K::AllReduce, h, &[0, 1, 2, 3]).algorithm,
        A::HalvingDoubling
    );
    assert_eq!(
        Program::build(K::AllReduce, h, &[0, 0, 0, 1]).algorithm,
        A::Ring
    );
    assert_eq!(
        Program::build(K::AllReduce, h, &[0, 0, 0, 0]).algorithm,
        A::Ring
    );
}
