//! A collective's program ([`pangu_strategies::collective::Program`], the one description of
//! each algorithm, which the executor runs too) as steps of chip-to-chip transfers for the
//! network.
//!
//! Position `i` of the program is chip `ranks[i]`; a transfer carries its pieces' share of the
//! buffer's bytes (`bytes` is the full buffer: the all-reduce buffer, the gathered output of an
//! all-gather, the input of a reduce-scatter). Transfers of one step between the same two chips
//! are one flow (a message of several ranges of the buffer, as the libraries send it).

use pangu_hardware::Topology;
use pangu_strategies::collective::Program;
use std::rc::Rc;

use pangu_strategies::{CollectiveAlgorithm, CollectiveKind};

use pangu_hardware::fxhash::FxMap;

use crate::protocol::{Shape, StepShape};
use crate::SimError;

/// One transfer: (source chip, destination chip, bytes).
pub type Transfer = (u32, u32, f64);

/// Transfers that run concurrently; a step ends when all of them have arrived.
pub type Step = Vec<Transfer>;

/// The servers of `ranks` on the topology, the placement a program is built for.
pub fn placement(ranks: &[u32], topo: &Topology) -> Vec<u32> {
    ranks.iter().map(|&c| topo.position(c).server).collect()
}

/// The program of a collective over `ranks` (chips, in group order).
pub fn program(
    kind: CollectiveKind,
    algo: CollectiveAlgorithm,
    ranks: &[u32],
    topo: &Topology,
) -> Program {
    Program::build(kind, algo, &placement(ranks, topo))
}

/// The program's steps as chip transfers of a `bytes` buffer (unit bytes for [`steps`], which
/// scales them).
pub fn transfers(program: &Program, ranks: &[u32], bytes: f64) -> Vec<Step> {
    if bytes <= 0.0 {
        return Vec::new();
    }
    program
        .steps
        .iter()
        .map(|step| {
            let mut out: Step = Vec::with_capacity(step.len());
            for t in step {
                let (a, b) = (ranks[t.src as usize], ranks[t.dst as usize]);
                let x = bytes * program.fraction(&t.pieces);
                // A program lists a step's transfers by source, then destination.
                match out.last_mut() {
                    Some(last) if last.0 == a && last.1 == b => last.2 += x,
                    _ => out.push((a, b, x)),
                }
            }
            out
        })
        .collect()
}

/// The shape of unit-byte steps (see [`crate::collective::Programs::unit`]). A step's
/// transfers are alike (one piece of the buffer per pair, over routes of one kind), so the
/// largest transfer inside a server and the largest across servers stand for the step:
/// at most two routes are looked up per step.
pub fn shape_of(unit: &[Step], topo: &Topology) -> Result<Shape, SimError> {
    let mut steps = Vec::with_capacity(unit.len());
    for step in unit {
        // The largest transfer of each class: (bytes, source, destination).
        let (mut intra, mut net) = ((0.0, 0, 0), (0.0, 0, 0));
        for &(a, b, x) in step {
            let class = if topo.position(a).server != topo.position(b).server {
                &mut net
            } else {
                &mut intra
            };
            if x > class.0 {
                *class = (x, a, b);
            }
        }
        let mut shape = StepShape {
            crosses: net.0 > 0.0,
            ..StepShape::default()
        };
        for (x, a, b) in [intra, net] {
            if x <= 0.0 {
                continue;
            }
            let (bw, lat) = topo
                .path_summary(a, b)
                .map_err(|e| SimError::Input(format!("collective step {a} -> {b}: {e}")))?;
            if bw.0.is_nan() || bw.0 <= 0.0 {
                return Err(SimError::Input(format!(
                    "collective step {a} -> {b}: the route has no bandwidth"
                )));
            }
            shape.per_byte = shape.per_byte.max(x / bw.0);
            shape.latency = shape.latency.max(lat.0);
        }
        steps.push(shape);
    }
    Ok(Shape { steps })
}

/// Scales unit-byte steps to a `bytes` buffer.
fn scaled(unit: &[Step], bytes: f64) -> Vec<Step> {
    unit.iter()
        .map(|s| s.iter().map(|&(a, b, x)| (a, b, x * bytes)).collect())
        .collect()
}

/// The steps of a collective over `ranks` (chips, in group order).
pub fn steps(
    kind: CollectiveKind,
    algo: CollectiveAlgorithm,
    ranks: &[u32],
    bytes: f64,
    topo: &Topology,
) -> Vec<Step> {
    Programs::default().steps(kind, algo, ranks, bytes, topo)
}

/// A collective over a group: what, and how.
type Which = (CollectiveKind, CollectiveAlgorithm);

/// A group's programs as unit steps, by what they compute and how.
type Shared = Vec<(Which, Rc<Vec<Step>>)>;

/// [`steps`] with each distinct collective's program built once (a step runs the same few
/// collectives thousands of times); the same numbers as [`steps`], bit for bit.
#[derive(Default)]
pub struct Programs {
    /// By group (looked up by slice, without allocating), then by collective and algorithm.
    unit: FxMap<Vec<u32>, Shared>,
    /// Their shapes for protocol pricing, the same way.
    shapes: FxMap<Vec<u32>, Vec<(Which, Rc<Shape>)>>,
}

impl Programs {
    /// The steps of a collective over `ranks` of a one-byte buffer (shared).
    pub fn unit(
        &mut self,
        kind: CollectiveKind,
        algo: CollectiveAlgorithm,
        ranks: &[u32],
        topo: &Topology,
    ) -> Rc<Vec<Step>> {
        if ranks.len() <= 1 {
            return Rc::default();
        }
        if let Some(list) = self.unit.get(ranks) {
            if let Some((_, u)) = list.iter().find(|(k, _)| *k == (kind, algo)) {
                return Rc::clone(u);
            }
        }
        let u = Rc::new(transfers(&program(kind, algo, ranks, topo), ranks, 1.0));
        self.unit
            .entry(ranks.to_vec())
            .or_default()
            .push(((kind, algo), Rc::clone(&u)));
        u
    }

    /// The shape of a collective's program over `ranks` ([`Shape`]: per step, whether it
    /// crosses servers and its uncontended time per byte), built once.
    pub fn shape(
        &mut self,
        kind: CollectiveKind,
        algo: CollectiveAlgorithm,
        ranks: &[u32],
        topo: &Topology,
    ) -> Result<Rc<Shape>, SimError> {
        if let Some(list) = self.shapes.get(ranks) {
            if let Some((_, s)) = list.iter().find(|(k, _)| *k == (kind, algo)) {
                return Ok(Rc::clone(s));
            }
        }
        let unit = self.unit(kind, algo, ranks, topo);
        let s = Rc::new(shape_of(&unit, topo)?);
        self.shapes
            .entry(ranks.to_vec())
            .or_default()
            .push(((kind, algo), Rc::clone(&s)));
        Ok(s)
    }

    /// The steps of a collective over `ranks` of a `bytes` buffer.
    pub fn steps(
        &mut self,
        kind: CollectiveKind,
        algo: CollectiveAlgorithm,
        ranks: &[u32],
        bytes: f64,
        topo: &Topology,
    ) -> Vec<Step> {
        if ranks.len() <= 1 || bytes <= 0.0 {
            return Vec::new();
        }
        scaled(&self.unit(kind, algo, ranks, topo), bytes)
    }

    /// Unit steps scaled to `bytes` (what [`Programs::steps`] does after [`Programs::unit`]).
    pub fn scale(unit: &[Step], bytes: f64) -> Vec<Step> {
        if bytes <= 0.0 {
            return Vec::new();
        }
        scaled(unit, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_hardware::Cluster;
    use pangu_strategies::collective::InterServer;

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
        let count = |algo| steps(CollectiveKind::AllReduce, algo, &ranks, b, &topo).len();
        assert_eq!(count(CollectiveAlgorithm::Ring), 14);
        assert_eq!(count(CollectiveAlgorithm::HalvingDoubling), 6);
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
    fn tree_moves_every_chunk_up_and_down_pipelined() {
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
        // Depth 3 (0 → 4 → 2/6 → odd), 8 chunks, turned around at the root: 8 + 2·3 − 1 waves.
        assert_eq!(s.len(), 13);
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
        // Reduce-scatter keeps rank i's ownership of chunk i: its transfers inside a server
        // carry one range per server of the group, sent as one message.
        let rs = steps(CollectiveKind::ReduceScatter, algo, &ranks, 3200.0, &topo);
        assert_eq!(rs.len(), 7 + 3);
        assert!(rs.iter().all(|st| st.len() == 32));
        assert!((sent_per_rank(&rs, 5) - (7.0 * 400.0 + 3.0 * 100.0)).abs() < 1e-6);
    }
}
