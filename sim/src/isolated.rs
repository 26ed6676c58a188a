//! Collectives that run alone on their links are timed once and reused.
//!
//! A tensor-parallel group's collectives run one at a time (its stream is serial and its
//! members move in lockstep) and, in most placements, over links that no other traffic can
//! use (HCCS or NVLink inside a server). Such a collective takes the same time whenever it
//! runs, so it is simulated once on an empty network with the very same flow model and step
//! overheads, and its duration reused. This is exact, not an approximation: the check below
//! proves that no other group's transfers and no pipeline send can share any of its links.
//!
//! Exclusivity is decided over the whole plan (every group of every axis, every pipeline
//! neighbour pair), independent of folding.

use std::collections::{HashMap, HashSet};

use pangu_hardware::Topology;
use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::strategy::Axis;
use pangu_strategies::{CollectiveAlgorithm, CollectiveKind, Plan};

use crate::collective::steps;
use crate::collective::Programs;
use crate::engine::{Queue, Time};
use crate::network::Network;
use crate::protocol::{Pricing, Shape, StepCosts};
use crate::SimError;

/// A memoised collective: its duration and the bytes it put on each link.
#[derive(Debug, Clone)]
pub struct Timed {
    /// Duration from the moment all members joined.
    pub duration: Time,
    /// (link, bytes) of every link it used.
    pub load: std::rc::Rc<Vec<(u32, f64)>>,
}

/// The groups whose links no other traffic touches, and the memo of their collectives.
pub struct Exclusive<'t> {
    groups: HashSet<Vec<u32>>,
    memo: HashMap<(CollectiveKind, CollectiveAlgorithm, Vec<u32>, u64), Timed>,
    net: Option<Network<'t>>,
}

/// The `[collectives]` keys of the collectives an axis's groups run.
fn keys_of(axis: Axis) -> &'static [CollectiveGroup] {
    match axis {
        Axis::Tp => &[CollectiveGroup::Tp],
        Axis::Dp => &[CollectiveGroup::Dp, CollectiveGroup::Opt],
        Axis::Pp => &[CollectiveGroup::Pp],
        Axis::Cp => &[CollectiveGroup::Cp],
    }
}

impl<'t> Exclusive<'t> {
    /// Finds the tensor-parallel groups whose links are theirs alone.
    pub fn analyse(plan: &'t Plan, programs: &mut crate::collective::Programs) -> Exclusive<'t> {
        let topo = &plan.cluster.topology;
        // Owner of each link: Some(group index) while one group uses it, None once shared.
        let mut owner: HashMap<u32, Option<usize>> = HashMap::new();
        let mut claim = |links: &[u32], who: usize| {
            for &l in links {
                owner
                    .entry(l)
                    .and_modify(|o| {
                        if *o != Some(who) {
                            *o = None
                        }
                    })
                    .or_insert(Some(who));
            }
        };
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut tp_ids = Vec::new();
        let mut axes = vec![(Axis::Tp, true)];
        if plan.strategy.dp_cp() > 1 {
            axes.push((Axis::Dp, false));
        }
        if plan.strategy.cp > 1 {
            axes.push((Axis::Cp, false));
        }
        if plan.strategy.pp > 1 {
            axes.push((Axis::Pp, false));
        }
        for (axis, is_tp) in axes {
            for g in plan.mesh.groups(axis) {
                if g.len() < 2 {
                    continue;
                }
                let id = groups.len();
                let mut links = Vec::new();
                // Every collective the group runs: an all-reduce's transfers cover the
                // reduce-scatter's and all-gather's, except for the tree, whose other kinds
                // run the ring.
                let mut algos: Vec<CollectiveAlgorithm> = Vec::new();
                if axis == Axis::Cp {
                    // The K/V ring's steps.
                    algos.push(CollectiveAlgorithm::Ring);
                }
                for &key in keys_of(axis) {
                    let a = plan.algorithm(key, &g);
                    for a in [a, CollectiveAlgorithm::Ring] {
                        if !algos.contains(&a) {
                            algos.push(a);
                        }
                        if a != CollectiveAlgorithm::DoubleBinaryTree {
                            break;
                        }
                    }
                }
                for algo in algos {
                    for step in programs
                        .unit(CollectiveKind::AllReduce, algo, &g, topo)
                        .iter()
                    {
                        for &(a, b, _) in step {
                            if let Ok(r) = topo.route(a, b) {
                                links.extend(r);
                            }
                        }
                    }
                }
                if axis == Axis::Pp {
                    // Pipeline sends between neighbours and the tied-embedding pair.
                    for w in g.windows(2) {
                        for (a, b) in [(w[0], w[1]), (w[1], w[0])] {
                            links.extend(topo.route(a, b).unwrap_or_default());
                        }
                    }
                    let (f, l) = (g[0], g[g.len() - 1]);
                    links.extend(topo.route(f, l).unwrap_or_default());
                    links.extend(topo.route(l, f).unwrap_or_default());
                }
                links.sort_unstable();
                links.dedup();
                claim(&links, id);
                if is_tp {
                    tp_ids.push((id, links));
                }
                groups.push(g);
            }
        }
        let mut out = Exclusive {
            groups: HashSet::new(),
            memo: HashMap::new(),
            net: None,
        };
        for (id, links) in tp_ids {
            if links.iter().all(|l| owner.get(l) == Some(&Some(id))) {
                out.groups.insert(groups[id].clone());
            }
        }
        out
    }

    /// No group memoised: every collective's flows are simulated.
    pub fn none() -> Exclusive<'t> {
        Exclusive {
            groups: HashSet::new(),
            memo: HashMap::new(),
            net: None,
        }
    }

    /// Whether a collective over these ranks runs alone on its links.
    pub fn is_exclusive(&self, ranks: &[u32]) -> bool {
        self.groups.contains(ranks)
    }

    /// Duration and link load of a collective run alone (memoised).
    pub fn timed(
        &mut self,
        topo: &'t Topology,
        link_efficiency: f64,
        (costs, programs): (&StepCosts, &mut Programs),
        c: (CollectiveKind, CollectiveAlgorithm, &[u32], f64),
    ) -> Result<Timed, SimError> {
        let key = (c.0, c.1, c.2.to_vec(), c.3.to_bits());
        if let Some(t) = self.memo.get(&key) {
            return Ok(t.clone());
        }
        // The library's price depends only on the key: computed on a miss.
        let shape = programs.shape(c.0, c.1, c.2, topo)?;
        let price = costs.price(&shape.steps, c.3);
        if self.net.is_none() {
            self.net = Some(Network::new(topo, link_efficiency)?);
        }
        let net = self
            .net
            .as_mut()
            .ok_or_else(|| SimError::Input("no network".into()))?;
        let before: Vec<f64> = net.carried().collect();
        let duration = isolated(net, topo, (&price, &shape), c)?;
        let load: Vec<(u32, f64)> = net
            .carried()
            .zip(before)
            .enumerate()
            .filter(|(_, (a, b))| a > b)
            .map(|(i, (a, b))| (i as u32, a - b))
            .collect();
        let t = Timed {
            duration,
            load: std::rc::Rc::new(load),
        };
        self.memo.insert(key, t.clone());
        Ok(t)
    }
}

/// Runs one collective alone, exactly as the main simulation runs its steps: the first starts
/// the library's start-up latency after the members joined, and each starts its hop's wait
/// after the previous one's last arrival.
pub(crate) fn isolated(
    net: &mut Network<'_>,
    topo: &Topology,
    (price, shape): (&Pricing, &Shape),
    (kind, algo, ranks, bytes): (CollectiveKind, CollectiveAlgorithm, &[u32], f64),
) -> Result<Time, SimError> {
    let mut now: Time = price.base;
    for (k, step) in steps(kind, algo, ranks, bytes * price.scale, topo)
        .into_iter()
        .enumerate()
    {
        now += price.step(&shape.steps[k]);
        let mut q: Queue<crate::network::Completion> = Queue::new();
        let mut last = now;
        for &(a, b, x) in &step {
            let (_, ch) = net.start(now, a, b, x)?;
            for c in ch {
                q.push(c.finish, c);
            }
        }
        while let Some((t, c)) = q.pop() {
            if !net.is_current(c.flow, c.version) {
                continue;
            }
            let (lat, ch) = net.finish(t, c.flow);
            last = last.max(t + lat);
            for c in ch {
                q.push(c.finish, c);
            }
        }
        now = last;
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;
    use crate::collective::Programs;
    use crate::network::Network;
    use crate::protocol::StepCosts;
    use crate::Calibration;
    use pangu_hardware::Cluster;
    use pangu_strategies::{CollectiveAlgorithm, CollectiveKind};

    /// A ring all-reduce of `bytes` over `ranks` alone on an empty network: its duration in
    /// seconds and the protocol chosen.
    fn all_reduce(
        cluster: &str,
        family: &str,
        algo: CollectiveAlgorithm,
        ranks: &[u32],
        bytes: f64,
    ) -> (f64, Option<usize>) {
        let c = Cluster::from_name(cluster).unwrap();
        let topo = &c.topology;
        let cal = Calibration::family(family).unwrap();
        let costs = StepCosts::new(&cal);
        let mut programs = Programs::default();
        let shape = programs
            .shape(CollectiveKind::AllReduce, algo, ranks, topo)
            .unwrap();
        let price = costs.price(&shape.steps, bytes);
        let mut net = Network::new(topo, cal.link_efficiency).unwrap();
        let t = isolated(
            &mut net,
            topo,
            (&price, &shape),
            (CollectiveKind::AllReduce, algo, ranks, bytes),
        )
        .unwrap();
        (t as f64 * 1e-9, price.protocol)
    }

    const EIGHT: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

    #[test]
    fn the_protocol_follows_the_message_size_as_nccls_tuner_picks_it() {
        let pick = |bytes| {
            all_reduce(
                "dgx-a100-80g:8",
                "a100",
                CollectiveAlgorithm::Ring,
                &EIGHT,
                bytes,
            )
            .1
        };
        // Small messages: LL's 0.6 us hops; a few MB: LL128's 0.92 of the bandwidth; past
        // ~25 MB the Simple protocol's full bandwidth outweighs its 15 us more latency.
        assert_eq!(pick(4096.0), Some(0));
        assert_eq!(pick(2e6), Some(1));
        assert_eq!(pick(8e6), Some(1));
        assert_eq!(pick(256e6), Some(2));
    }

    #[test]
    fn an_nvlink_all_reduce_costs_what_nccls_model_says() {
        // NCCL's model of an 8-GPU ring all-reduce on NVLink with LL128: 14 us + 14 hops of
        // 1.9 us + the bytes at 0.92 of the bus bandwidth (300 GB/s NVLink3 at the family's
        // link efficiency), 2·7/8 of the buffer per GPU.
        let bytes = 8e6;
        let (t, p) = all_reduce(
            "dgx-a100-80g:8",
            "a100",
            CollectiveAlgorithm::Ring,
            &EIGHT,
            bytes,
        );
        assert_eq!(p, Some(1));
        let bus = 300e9 * 0.78 * 0.92;
        let model = 14e-6 + 14.0 * 1.9e-6 + 2.0 * 7.0 / 8.0 * bytes / bus;
        assert!((t - model).abs() < 0.02 * model, "{t} vs NCCL's {model}");
        // A 4 KB one is latency only: LL's 6.6 us start and 14 hops of 0.6 us, about 15 us.
        let (t, _) = all_reduce(
            "dgx-a100-80g:8",
            "a100",
            CollectiveAlgorithm::Ring,
            &EIGHT,
            4096.0,
        );
        assert!(t > 14e-6 && t < 18e-6, "{t}");
    }

    #[test]
    fn steps_across_servers_pay_the_network_hop() {
        // Two servers' GPU 0 (a ring of two over InfiniBand) against two GPUs of one server.
        let across = all_reduce(
            "dgx-a100-80g:16",
            "a100",
            CollectiveAlgorithm::Ring,
            &[0, 8],
            4096.0,
        );
        let inside = all_reduce(
            "dgx-a100-80g:16",
            "a100",
            CollectiveAlgorithm::Ring,
            &[0, 1],
            4096.0,
        );
        assert!(across.0 > inside.0 + 2.0 * 1e-6, "{across:?} vs {inside:?}");
    }

    #[test]
    fn hccl_keeps_a_flat_cost_per_step() {
        // The Ascend family has no protocol table: 14 steps of 15 us plus the wire.
        let (t, p) = all_reduce(
            "ascend910:8",
            "ascend910",
            CollectiveAlgorithm::Ring,
            &EIGHT,
            4096.0,
        );
        assert_eq!(p, None);
        assert!(t > 14.0 * 15e-6 && t < 14.0 * 20e-6, "{t}");
    }

    #[test]
    fn a_calibration_needs_exactly_one_step_cost() {
        let a100 = include_str!("../calibration/a100.toml");
        let both = a100.replace(
            "family = ",
            "collective_step_overhead = \"4 us\"\nfamily = ",
        );
        let e = Calibration::from_toml(&both, "both")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep one"), "{e}");
        let cpu = include_str!("../calibration/cpu.toml");
        let neither = cpu
            .lines()
            .filter(|l| !l.starts_with("collective_step_overhead"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = Calibration::from_toml(&neither, "neither")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[protocols]"), "{e}");
        let slow = a100.replace("bandwidth = [0.25,", "bandwidth = [1.5,");
        let e = Calibration::from_toml(&slow, "slow")
            .unwrap_err()
            .to_string();
        assert!(e.contains("LL") && e.contains("(0, 1]"), "{e}");
    }
}
