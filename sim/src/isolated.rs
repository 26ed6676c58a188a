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
use crate::engine::{Queue, Time};
use crate::network::Network;
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
        step_overhead: Time,
        c: (CollectiveKind, CollectiveAlgorithm, &[u32], f64),
    ) -> Result<Timed, SimError> {
        let key = (c.0, c.1, c.2.to_vec(), c.3.to_bits());
        if let Some(t) = self.memo.get(&key) {
            return Ok(t.clone());
        }
        if self.net.is_none() {
            self.net = Some(Network::new(topo, link_efficiency)?);
        }
        let net = self
            .net
            .as_mut()
            .ok_or_else(|| SimError::Input("no network".into()))?;
        let before: Vec<f64> = net.carried().collect();
        let duration = isolated(net, topo, step_overhead, c)?;
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

/// Runs one collective alone, exactly as the main simulation runs its steps: each step starts
/// one step overhead after the previous one's last arrival.
fn isolated(
    net: &mut Network<'_>,
    topo: &Topology,
    step_overhead: Time,
    (kind, algo, ranks, bytes): (CollectiveKind, CollectiveAlgorithm, &[u32], f64),
) -> Result<Time, SimError> {
    let mut now: Time = 0;
    for step in steps(kind, algo, ranks, bytes, topo) {
        now += step_overhead;
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
