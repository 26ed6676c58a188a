//! Symmetry folding: simulate one device per stage and let it stand for its whole orbit.
//!
//! The data-parallel replicas of a plan, and the ranks of a tensor-parallel group, usually do
//! exactly the same work at the same time on identical hardware. Let the group `G` act on
//! ranks by shifting the dp index (cyclically, or by XOR when dp is a power of two, which is
//! the symmetry of recursive halving-doubling) and the tp index (cyclically). When every
//! element of `G` maps the topology onto itself (checked link by link: same endpoints kind,
//! bandwidth and latency) and maps every collective step's transfers onto themselves (checked
//! as the step starts), the step of every device equals that of its representative.
//!
//! Only the representatives (dp index 0, tp index 0) get tasks. A transfer of a
//! representative stands for its orbit of `|G|` transfers (the action on ranks is free, so
//! exactly one member of each orbit starts at a representative). On a link `l` the orbit puts
//! `|G| · #(route ∩ orbit(l)) / |orbit(l)|` copies of the flow; the flow is simulated once on
//! the canonical link of each orbit with that weight, and max-min sharing counts weights.
//! A test checks that folded and full simulations give the same step time.

use std::collections::HashMap;

use pangu_hardware::{LinkId, Node, Topology};
use pangu_strategies::strategy::Axis;
use pangu_strategies::{Coords, Plan};

/// A route as (canonical link, copies of the flow on it).
pub type WeightedRoute = std::rc::Rc<Vec<(LinkId, f64)>>;

/// How the group acts on one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `i → i + k mod n`.
    Cyclic,
    /// `i → i XOR k` (n a power of two).
    Xor,
}

/// The symmetry group in use and the link orbits it induces.
#[derive(Debug)]
pub struct Folding {
    dp: u32,
    tp: u32,
    dp_action: Option<Action>,
    tp_action: Option<Action>,
    mesh: pangu_strategies::Mesh,
    /// Canonical link and orbit size of each link, filled on demand.
    canon: HashMap<LinkId, (LinkId, u32)>,
    routes: HashMap<(u32, u32), WeightedRoute>,
}

impl Folding {
    /// The largest group under which the plan's topology is symmetric, or `None` when no
    /// axis folds.
    pub fn new(plan: &Plan) -> Option<Folding> {
        let s = &plan.strategy;
        let topo = &plan.cluster.topology;
        let pick = |axis: Axis, n: u32| -> Option<Action> {
            if n <= 1 {
                return None;
            }
            let mut candidates = Vec::new();
            if axis == Axis::Dp && n.is_power_of_two() {
                candidates.push(Action::Xor);
            }
            candidates.push(Action::Cyclic);
            candidates.into_iter().find(|&a| {
                let probe = Folding {
                    dp: s.dp,
                    tp: s.tp,
                    dp_action: (axis == Axis::Dp).then_some(a),
                    tp_action: (axis == Axis::Tp).then_some(a),
                    mesh: plan.mesh,
                    canon: HashMap::new(),
                    routes: HashMap::new(),
                };
                probe
                    .generators()
                    .iter()
                    .all(|&g| probe.is_automorphism(topo, g))
            })
        };
        let dp_action = pick(Axis::Dp, s.dp);
        let tp_action = pick(Axis::Tp, s.tp);
        if dp_action.is_none() && tp_action.is_none() {
            return None;
        }
        let f = Folding {
            dp: s.dp,
            tp: s.tp,
            dp_action,
            tp_action,
            mesh: plan.mesh,
            canon: HashMap::new(),
            routes: HashMap::new(),
        };
        // The two actions must also commute as a product group on the topology: check the
        // generators of the product (already individually checked) — they act on different
        // coordinates, so the product is a group of order |G_dp|·|G_tp|.
        Some(f)
    }

    /// Order of the group.
    pub fn order(&self) -> u32 {
        let d = if self.dp_action.is_some() { self.dp } else { 1 };
        let t = if self.tp_action.is_some() { self.tp } else { 1 };
        d * t
    }

    /// Which axes fold, for reports.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(a) = self.dp_action {
            v.push(format!("dp {} ({:?})", self.dp, a));
        }
        if let Some(a) = self.tp_action {
            v.push(format!("tp {} ({:?})", self.tp, a));
        }
        v.join(" × ")
    }

    /// Whether a rank is a representative.
    pub fn is_rep(&self, rank: u32) -> bool {
        let c = self.mesh.coords(rank);
        (self.dp_action.is_none() || c.dp == 0) && (self.tp_action.is_none() || c.tp == 0)
    }

    fn shift(a: Option<Action>, n: u32, i: u32, k: u32) -> u32 {
        match a {
            None => i,
            Some(Action::Cyclic) => (i + k) % n,
            Some(Action::Xor) => i ^ k,
        }
    }

    /// The image of a rank under group element (kd, kt).
    pub fn map_rank(&self, g: (u32, u32), rank: u32) -> u32 {
        let c = self.mesh.coords(rank);
        self.mesh.rank(Coords {
            pp: c.pp,
            dp: Self::shift(self.dp_action, self.dp, c.dp, g.0),
            tp: Self::shift(self.tp_action, self.tp, c.tp, g.1),
        })
    }

    fn elements(&self) -> Vec<(u32, u32)> {
        let d = if self.dp_action.is_some() { self.dp } else { 1 };
        let t = if self.tp_action.is_some() { self.tp } else { 1 };
        (0..d).flat_map(|a| (0..t).map(move |b| (a, b))).collect()
    }

    fn generators(&self) -> Vec<(u32, u32)> {
        let mut g = Vec::new();
        match self.dp_action {
            Some(Action::Cyclic) => g.push((1, 0)),
            Some(Action::Xor) => g.extend((0..self.dp.trailing_zeros()).map(|b| (1 << b, 0))),
            None => {}
        }
        match self.tp_action {
            Some(Action::Cyclic) => g.push((0, 1)),
            Some(Action::Xor) => g.extend((0..self.tp.trailing_zeros()).map(|b| (0, 1 << b))),
            None => {}
        }
        g
    }

    /// A chip under the switch node, used to carry the node along with the chips.
    fn anchor(topo: &Topology, n: Node) -> Option<u32> {
        let cps = topo.chips_per_server();
        Some(match n {
            Node::Chip(c) => c,
            Node::IslandSwitch(s, i) => s * cps + i * topo.island_size(),
            Node::ServerSwitch(s) => s * cps,
            Node::Nic(s, k) => s * cps + k * cps / topo.nics_per_server().max(1),
            Node::Tor(r) => r * topo.servers_per_rack() * cps,
            Node::Spine => return None,
        })
    }

    fn map_node(&self, topo: &Topology, g: (u32, u32), n: Node) -> Node {
        let Some(a) = Self::anchor(topo, n) else {
            return n;
        };
        if a >= topo.chips() {
            return n;
        }
        let m = self.map_rank(g, a);
        let p = topo.position(m);
        match n {
            Node::Chip(_) => Node::Chip(m),
            Node::IslandSwitch(..) => Node::IslandSwitch(p.server, p.island),
            Node::ServerSwitch(_) => Node::ServerSwitch(p.server),
            Node::Nic(..) => topo.nic_of(m),
            Node::Tor(_) => Node::Tor(p.rack),
            Node::Spine => Node::Spine,
        }
    }

    fn map_link(&self, topo: &Topology, g: (u32, u32), l: LinkId) -> Option<LinkId> {
        let link = topo.links()[l as usize];
        topo.link_between(
            self.map_node(topo, g, link.from),
            self.map_node(topo, g, link.to),
        )
    }

    /// Every link maps to a link of the same bandwidth and latency, and ranks beyond the
    /// plan's devices are not involved.
    fn is_automorphism(&self, topo: &Topology, g: (u32, u32)) -> bool {
        let n = self.mesh.size();
        if topo.chips() != n {
            // Chips outside the job would break the symmetry of shared switches.
            return false;
        }
        topo.links()
            .iter()
            .enumerate()
            .all(|(i, l)| match self.map_link(topo, g, i as LinkId) {
                Some(j) => {
                    let m = topo.links()[j as usize];
                    m.bandwidth == l.bandwidth && m.latency == l.latency && m.level == l.level
                }
                None => false,
            })
    }

    fn canonical(&mut self, topo: &Topology, l: LinkId) -> (LinkId, u32) {
        if let Some(&c) = self.canon.get(&l) {
            return c;
        }
        let mut orbit: Vec<LinkId> = self
            .elements()
            .into_iter()
            .filter_map(|g| self.map_link(topo, g, l))
            .collect();
        orbit.sort_unstable();
        orbit.dedup();
        let c = (orbit[0], orbit.len() as u32);
        for &m in &orbit {
            self.canon.insert(m, c);
        }
        c
    }

    /// The canonical weighted route of a representative's transfer `a → b`.
    pub fn route(&mut self, topo: &Topology, a: u32, b: u32) -> Result<WeightedRoute, String> {
        if let Some(r) = self.routes.get(&(a, b)) {
            return Ok(r.clone());
        }
        let real = topo.route(a, b).map_err(|e| e.to_string())?;
        let order = f64::from(self.order());
        let mut acc: Vec<(LinkId, f64)> = Vec::new();
        for l in real {
            let (c, size) = self.canonical(topo, l);
            let w = order / f64::from(size);
            match acc.iter_mut().find(|(x, _)| *x == c) {
                Some(e) => e.1 += w,
                None => acc.push((c, w)),
            }
        }
        let r = std::rc::Rc::new(acc);
        self.routes.insert((a, b), r.clone());
        Ok(r)
    }

    /// Orbit size of a canonical link (1 for links never used by a folded route).
    pub fn orbit_size(&self, l: LinkId) -> u32 {
        self.canon.get(&l).map_or(1, |&(_, s)| s)
    }

    /// Whether a collective's step maps onto itself under every generator that keeps the
    /// collective's members in place (the others map it onto a mirror collective, which runs
    /// at the same time by symmetry).
    pub fn step_is_symmetric(&self, members: &[u32], step: &[(u32, u32, f64)]) -> bool {
        let mut sorted: Vec<u32> = members.to_vec();
        sorted.sort_unstable();
        let set: std::collections::HashSet<(u32, u32, u64)> =
            step.iter().map(|&(a, b, x)| (a, b, x.to_bits())).collect();
        self.generators().iter().all(|&g| {
            let mut image: Vec<u32> = members.iter().map(|&m| self.map_rank(g, m)).collect();
            image.sort_unstable();
            image != sorted
                || step.iter().all(|&(a, b, x)| {
                    set.contains(&(self.map_rank(g, a), self.map_rank(g, b), x.to_bits()))
                })
        })
    }
}
