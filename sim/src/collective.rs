//! Collectives decomposed into steps of point-to-point transfers.
//!
//! Each algorithm is written as its schedule of transfers (who sends how many bytes to whom,
//! step by step); the network then prices every transfer over its route. `bytes` is the full
//! buffer: the all-reduce buffer, the gathered output of an all-gather, the input of a
//! reduce-scatter.
//!
//! - Ring (Patarasuk & Yuan 2009): reduce-scatter then all-gather, `n − 1` steps each, every
//!   rank sending `bytes / n` to its successor.
//! - Recursive halving-doubling (Thakur, Rabenseifner & Gropp 2005): `log2 n` halving steps
//!   with partners at distance n/2, n/4, …, sending half of what is left, then the mirror
//!   doubling steps. Needs a power-of-two group; otherwise the ring is used.
//! - Double binary tree (Sanders, Speck & Träff 2009; NCCL 2.4): two binary trees, each
//!   carrying half the data, so every rank is a leaf in one of them; the data is cut in
//!   `TREE_CHUNKS` chunks pipelined up (reduce) and back down (broadcast).
//! - Hierarchical: ring inside each server, the chosen algorithm across servers among the
//!   ranks with the same local index (each carrying `bytes / k`), ring inside again.

use pangu_hardware::Topology;
use pangu_strategies::collective::{CollectiveAlgorithm, InterServer};
use pangu_strategies::CollectiveKind;

/// One transfer: (source chip, destination chip, bytes).
pub type Transfer = (u32, u32, f64);

/// Transfers that run concurrently; a step ends when all of them have arrived.
pub type Step = Vec<Transfer>;

/// Chunks a tree collective is pipelined in.
pub const TREE_CHUNKS: u32 = 8;

/// The steps of a collective over `ranks` (chips, in group order).
pub fn steps(
    kind: CollectiveKind,
    algo: CollectiveAlgorithm,
    ranks: &[u32],
    bytes: f64,
    topo: &Topology,
) -> Vec<Step> {
    let n = ranks.len();
    if n <= 1 || bytes <= 0.0 {
        return Vec::new();
    }
    match algo {
        CollectiveAlgorithm::Ring => ring(kind, ranks, bytes),
        CollectiveAlgorithm::HalvingDoubling if n.is_power_of_two() => {
            halving_doubling(kind, ranks, bytes)
        }
        CollectiveAlgorithm::HalvingDoubling => ring(kind, ranks, bytes),
        CollectiveAlgorithm::DoubleBinaryTree => match kind {
            CollectiveKind::AllReduce => double_tree(ranks, bytes),
            _ => ring(kind, ranks, bytes),
        },
        CollectiveAlgorithm::Hierarchical { inter } => {
            hierarchical(kind, inter, ranks, bytes, topo)
        }
    }
}

fn ring_phase(ranks: &[u32], chunk: f64) -> Vec<Step> {
    let n = ranks.len();
    (0..n - 1)
        .map(|_| {
            (0..n)
                .map(|i| (ranks[i], ranks[(i + 1) % n], chunk))
                .collect()
        })
        .collect()
}

fn ring(kind: CollectiveKind, ranks: &[u32], bytes: f64) -> Vec<Step> {
    let chunk = bytes / ranks.len() as f64;
    match kind {
        CollectiveKind::AllReduce => {
            let mut s = ring_phase(ranks, chunk);
            s.extend(ring_phase(ranks, chunk));
            s
        }
        CollectiveKind::ReduceScatter | CollectiveKind::AllGather | CollectiveKind::Broadcast => {
            ring_phase(ranks, chunk)
        }
    }
}

fn halving(ranks: &[u32], bytes: f64) -> Vec<Step> {
    let n = ranks.len();
    let mut out = Vec::new();
    let mut dist = n / 2;
    let mut size = bytes / 2.0;
    while dist >= 1 {
        out.push((0..n).map(|i| (ranks[i], ranks[i ^ dist], size)).collect());
        dist /= 2;
        size /= 2.0;
    }
    out
}

fn halving_doubling(kind: CollectiveKind, ranks: &[u32], bytes: f64) -> Vec<Step> {
    let rs = halving(ranks, bytes);
    let ag: Vec<Step> = rs.iter().rev().cloned().collect();
    match kind {
        CollectiveKind::AllReduce => rs.into_iter().chain(ag).collect(),
        CollectiveKind::ReduceScatter => rs,
        CollectiveKind::AllGather | CollectiveKind::Broadcast => ag,
    }
}

/// Parent of position `i` in a heap-ordered binary tree.
fn parent(i: usize) -> Option<usize> {
    (i > 0).then(|| (i - 1) / 2)
}

fn depth(i: usize) -> u32 {
    usize::BITS - (i + 1).leading_zeros() - 1
}

fn double_tree(ranks: &[u32], bytes: f64) -> Vec<Step> {
    let n = ranks.len();
    // Tree A over positions in order; tree B over the ranks rotated by one, so that leaves of
    // one are mostly interior nodes of the other.
    let map_b = |pos: usize| ranks[(pos + 1) % n];
    let map_a = |pos: usize| ranks[pos];
    let d = depth(n - 1) + 1; // levels
    let c = TREE_CHUNKS;
    let chunk = bytes / 2.0 / f64::from(c);
    // Edge levels d - 1, chunks c: the last chunk leaves the deepest edge at wave c - 1 and
    // reaches the root d - 2 waves later.
    let waves = d - 1 + c - 1;
    let mut up: Vec<Step> = Vec::new();
    for w in 0..waves {
        let mut step = Vec::new();
        for pos in 1..n {
            // An edge from depth k to k-1 carries chunk (w - (d - 1 - k)) on the way up.
            let k = depth(pos);
            let ch = i64::from(w) - i64::from(d - 1 - k);
            if (0..i64::from(c)).contains(&ch) {
                let p = parent(pos).unwrap_or(0);
                step.push((map_a(pos), map_a(p), chunk));
                step.push((map_b(pos), map_b(p), chunk));
            }
        }
        if !step.is_empty() {
            up.push(step);
        }
    }
    let down: Vec<Step> = up
        .iter()
        .rev()
        .map(|s| s.iter().map(|&(a, b, x)| (b, a, x)).collect())
        .collect();
    up.into_iter().chain(down).collect()
}

fn hierarchical(
    kind: CollectiveKind,
    inter: InterServer,
    ranks: &[u32],
    bytes: f64,
    topo: &Topology,
) -> Vec<Step> {
    // Group by server, keeping group order.
    let mut servers: Vec<(u32, Vec<u32>)> = Vec::new();
    for &r in ranks {
        let s = topo.position(r).server;
        match servers.iter_mut().find(|(id, _)| *id == s) {
            Some((_, v)) => v.push(r),
            None => servers.push((s, vec![r])),
        }
    }
    let k = servers[0].1.len();
    if servers.len() == 1 || k == 1 || servers.iter().any(|(_, v)| v.len() != k) {
        let algo = match inter {
            InterServer::Ring => CollectiveAlgorithm::Ring,
            InterServer::HalvingDoubling => CollectiveAlgorithm::HalvingDoubling,
            InterServer::DoubleBinaryTree => CollectiveAlgorithm::DoubleBinaryTree,
        };
        return if k == 1 && servers.len() > 1 {
            steps(kind, algo, ranks, bytes, topo)
        } else {
            ring(kind, ranks, bytes)
        };
    }
    let inter_algo = match inter {
        InterServer::Ring => CollectiveAlgorithm::Ring,
        InterServer::HalvingDoubling => CollectiveAlgorithm::HalvingDoubling,
        InterServer::DoubleBinaryTree => CollectiveAlgorithm::DoubleBinaryTree,
    };
    let merge = |per_group: Vec<Vec<Step>>| -> Vec<Step> {
        let len = per_group.iter().map(Vec::len).max().unwrap_or(0);
        (0..len)
            .map(|i| {
                per_group
                    .iter()
                    .filter_map(|g| g.get(i))
                    .flatten()
                    .copied()
                    .collect()
            })
            .collect()
    };
    let intra =
        |kind: CollectiveKind| merge(servers.iter().map(|(_, v)| ring(kind, v, bytes)).collect());
    let across = |kind: CollectiveKind| {
        merge(
            (0..k)
                .map(|j| {
                    let g: Vec<u32> = servers.iter().map(|(_, v)| v[j]).collect();
                    steps(kind, inter_algo, &g, bytes / k as f64, topo)
                })
                .collect(),
        )
    };
    match kind {
        CollectiveKind::AllReduce => {
            let mut s = intra(CollectiveKind::ReduceScatter);
            s.extend(across(CollectiveKind::AllReduce));
            s.extend(intra(CollectiveKind::AllGather));
            s
        }
        CollectiveKind::ReduceScatter => {
            let mut s = intra(CollectiveKind::ReduceScatter);
            s.extend(across(CollectiveKind::ReduceScatter));
            s
        }
        CollectiveKind::AllGather | CollectiveKind::Broadcast => {
            let mut s = across(CollectiveKind::AllGather);
            s.extend(intra(CollectiveKind::AllGather));
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_hardware::Cluster;

    fn sent_per_rank(steps: &[Step], rank: u32) -> f64 {
        steps
            .iter()
            .flatten()
            .filter(|t| t.0 == rank)
            .map(|t| t.2)
            .sum()
    }

    #[test]
    fn ring_and_halving_doubling_send_the_lower_bound() {
        let topo = Cluster::from_name("ascend910:64").unwrap().topology;
        let ranks: Vec<u32> = (0..8).collect();
        let b = 800.0;
        for algo in [
            CollectiveAlgorithm::Ring,
            CollectiveAlgorithm::HalvingDoubling,
        ] {
            let s = steps(CollectiveKind::AllReduce, algo, &ranks, b, &topo);
            for r in 0..8 {
                assert!(
                    (sent_per_rank(&s, r) - 2.0 * 7.0 / 8.0 * b).abs() < 1e-9,
                    "{algo:?}"
                );
            }
            let s = steps(CollectiveKind::AllGather, algo, &ranks, b, &topo);
            assert!((sent_per_rank(&s, 3) - 7.0 / 8.0 * b).abs() < 1e-9);
        }
        assert_eq!(
            steps(
                CollectiveKind::AllReduce,
                CollectiveAlgorithm::Ring,
                &ranks,
                b,
                &topo
            )
            .len(),
            14
        );
        assert_eq!(
            steps(
                CollectiveKind::AllReduce,
                CollectiveAlgorithm::HalvingDoubling,
                &ranks,
                b,
                &topo
            )
            .len(),
            6
        );
    }

    #[test]
    fn halving_doubling_falls_back_to_ring_off_powers_of_two() {
        let topo = Cluster::from_name("ascend910:64").unwrap().topology;
        let ranks: Vec<u32> = (0..6).collect();
        let s = steps(
            CollectiveKind::AllReduce,
            CollectiveAlgorithm::HalvingDoubling,
            &ranks,
            60.0,
            &topo,
        );
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn tree_moves_every_chunk_up_and_down() {
        let topo = Cluster::from_name("dgx-a100-80g:64").unwrap().topology;
        let ranks: Vec<u32> = (0..8).map(|i| i * 8).collect();
        let s = steps(
            CollectiveKind::AllReduce,
            CollectiveAlgorithm::DoubleBinaryTree,
            &ranks,
            1600.0,
            &topo,
        );
        // Each tree edge carries the tree's half of the data up and down: 2 trees × 7 edges ×
        // 800 bytes × 2 directions.
        let total: f64 = s.iter().flatten().map(|t| t.2).sum();
        assert!((total - 2.0 * 7.0 * 800.0 * 2.0).abs() < 1e-6, "{total}");
        // 3 edge levels, 8 chunks: 3 + 8 - 1 waves each way.
        assert_eq!(s.len(), 2 * 10);
    }

    #[test]
    fn hierarchical_splits_inside_and_across_servers() {
        let topo = Cluster::from_name("dgx-a100-80g:32").unwrap().topology;
        let ranks: Vec<u32> = (0..32).collect();
        let algo = CollectiveAlgorithm::Hierarchical {
            inter: InterServer::Ring,
        };
        let s = steps(CollectiveKind::AllReduce, algo, &ranks, 3200.0, &topo);
        // 7 intra RS + 2·3 inter ring + 7 intra AG.
        assert_eq!(s.len(), 7 + 6 + 7);
        let cross: f64 = s
            .iter()
            .flatten()
            .filter(|t| topo.position(t.0).server != topo.position(t.1).server)
            .map(|t| t.2)
            .sum();
        // Across servers: 8 groups of 4 servers, each all-reducing 3200/8 bytes: 2·3/4·400 per rank.
        assert!((cross - 32.0 * 2.0 * 0.75 * 400.0).abs() < 1e-6, "{cross}");
    }
}
