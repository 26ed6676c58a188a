//! Symmetry folding: simulate one device per stage and let it stand for its whole orbit.
//!
//! The data-parallel replicas of a plan, and the ranks of a tensor-parallel or
//! context-parallel group, usually do exactly the same work at the same time on identical
//! hardware (context parallelism's causal load balancing gives every cp rank the same
//! attention work). Let the group `G` act on ranks by shifting the dp, cp and tp indices
//! (cyclically, or by XOR when the size is a power of two, which is the symmetry of
//! recursive halving-doubling). When every
//! element of `G` maps the topology onto itself (checked link by link: same endpoints kind,
//! bandwidth and latency) and maps every collective step's transfers onto themselves (checked
//! as the step starts), the step of every device equals that of its representative.
//!
//! Only the representatives (dp, cp and tp index 0) get tasks. A transfer of a
//! representative stands for its orbit of `|G|` transfers (the action on ranks is free, so
//! exactly one member of each orbit starts at a representative). On a link `l` the orbit puts
//! `|G| · #(route ∩ orbit(l)) / |orbit(l)|` copies of the flow; the flow is simulated once on
//! the canonical link of each orbit with that weight, and max-min sharing counts weights.
//! A test checks that folded and full simulations give the same step time.

use pangu_hardware::{LinkId, Node, Topology};
use pangu_strategies::strategy::{Axis, CpComm};
use pangu_strategies::{Coords, Plan};

/// A group element: the shifts of the dp, cp and tp indices.
pub type Element = [u32; 3];

/// A route as (canonical link, copies of the flow on it).
pub type WeightedRoute = std::rc::Rc<Vec<(LinkId, f64)>>;

/// How the group acts on one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `i → i + k mod n` for `k` a multiple of the stride: the rotations by whole blocks of
    /// `stride` indices (stride 1: every rotation). Representatives: `i < stride`.
    Cyclic(u32),
    /// `i → i XOR k` (n a power of two). Representative: `i = 0`.
    Xor,
}

impl Action {
    fn order(self, n: u32) -> u32 {
        match self {
            Action::Cyclic(g) => n / g,
            Action::Xor => n,
        }
    }
}

/// The symmetry group in use and the link orbits it induces.
#[derive(Debug)]
pub struct Folding {
    dp: u32,
    cp: u32,
    tp: u32,
    dp_action: Option<Action>,
    cp_action: Option<Action>,
    tp_action: Option<Action>,
    mesh: pangu_strategies::Mesh,
    /// Canonical link and orbit size of each link, filled on demand.
    canon: pangu_hardware::fxhash::FxMap<LinkId, (LinkId, u32)>,
    routes: pangu_hardware::fxhash::FxMap<(u32, u32), WeightedRoute>,
}

impl Folding {
    fn with(plan: &Plan, [dp_action, cp_action, tp_action]: [Option<Action>; 3]) -> Folding {
        Folding {
            dp: plan.strategy.dp,
            cp: plan.strategy.cp.max(1),
            tp: plan.strategy.tp,
            dp_action,
            cp_action,
            tp_action,
            mesh: plan.mesh,
            canon: Default::default(),
            routes: Default::default(),
        }
    }

    /// The symmetry groups under which the plan's topology is symmetric, largest first (each
    /// axis: XOR when its size is a power of two, then rotations by the smallest stride that
    /// maps the topology onto itself). Empty when no axis folds.
    pub fn candidates(plan: &Plan) -> Vec<Folding> {
        // Devices sharing a host's cores slow each other down: a representative's speed
        // depends on every other device, so nothing folds.
        if plan.cluster.spec.server.shared_cores.is_some() {
            return Vec::new();
        }
        let s = &plan.strategy;
        let topo = &plan.cluster.topology;
        let options = |axis: Axis, n: u32| -> Vec<Action> {
            if n <= 1 {
                return Vec::new();
            }
            let mut v = Vec::new();
            let ok = |a: Action| {
                let probe = match axis {
                    Axis::Dp => Folding::with(plan, [Some(a), None, None]),
                    Axis::Cp => Folding::with(plan, [None, Some(a), None]),
                    _ => Folding::with(plan, [None, None, Some(a)]),
                };
                probe
                    .generators()
                    .iter()
                    .all(|&g| probe.is_automorphism(topo, g))
            };
            // The K/V ring (i → i + 1) is not XOR-symmetric beyond two ranks.
            let ring = axis == Axis::Cp && s.cp_comm == CpComm::Ring && n > 2;
            if n.is_power_of_two() && !ring && ok(Action::Xor) {
                v.push(Action::Xor);
            }
            if let Some(g) = (1..n)
                .filter(|g| n.is_multiple_of(*g))
                .find(|&g| ok(Action::Cyclic(g)))
            {
                v.push(Action::Cyclic(g));
            }
            v
        };
        let dps: Vec<Option<Action>> = options(Axis::Dp, s.dp)
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let cps: Vec<Option<Action>> = options(Axis::Cp, s.cp)
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let tps: Vec<Option<Action>> = options(Axis::Tp, s.tp)
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let mut out: Vec<Folding> = Vec::new();
        for &d in &dps {
            for &c in &cps {
                for &t in &tps {
                    if d.is_some() || c.is_some() || t.is_some() {
                        out.push(Folding::with(plan, [d, c, t]));
                    }
                }
            }
        }
        out.sort_by_key(|f| std::cmp::Reverse(f.order()));
        out
    }

    /// Whether every distinct collective of the workload maps onto itself step by step.
    pub fn collectives_symmetric(
        &self,
        plan: &Plan,
        w: &crate::workload::Workload,
        programs: &mut crate::collective::Programs,
    ) -> bool {
        let mut seen = std::collections::HashSet::new();
        w.colls.iter().all(|c| {
            if !seen.insert((c.kind, c.algo, c.ranks.clone())) {
                return true;
            }
            programs
                .unit(c.kind, c.algo, &c.ranks, &plan.cluster.topology)
                .iter()
                .all(|step| self.step_is_symmetric(&c.ranks, step))
        })
    }

    /// Order of the group.
    pub fn order(&self) -> u32 {
        self.dp_action.map_or(1, |a| a.order(self.dp))
            * self.cp_action.map_or(1, |a| a.order(self.cp))
            * self.tp_action.map_or(1, |a| a.order(self.tp))
    }

    /// Which axes fold, for reports.
    pub fn describe(&self) -> String {
        let name = |a: Action| match a {
            Action::Xor => "xor".to_string(),
            Action::Cyclic(1) => "rotation".to_string(),
            Action::Cyclic(g) => format!("rotation by {g}"),
        };
        let mut v = Vec::new();
        if let Some(a) = self.dp_action {
            v.push(format!(
                "dp {} ({}, {}x)",
                self.dp,
                name(a),
                a.order(self.dp)
            ));
        }
        if let Some(a) = self.cp_action {
            v.push(format!(
                "cp {} ({}, {}x)",
                self.cp,
                name(a),
                a.order(self.cp)
            ));
        }
        if let Some(a) = self.tp_action {
            v.push(format!(
                "tp {} ({}, {}x)",
                self.tp,
                name(a),
                a.order(self.tp)
            ));
        }
        v.join(" × ")
    }

    /// Whether a rank is a representative.
    pub fn is_rep(&self, rank: u32) -> bool {
        let c = self.mesh.coords(rank);
        let rep = |a: Option<Action>, i: u32| match a {
            None => true,
            Some(Action::Xor) => i == 0,
            Some(Action::Cyclic(g)) => i < g,
        };
        rep(self.dp_action, c.dp) && rep(self.cp_action, c.cp) && rep(self.tp_action, c.tp)
    }

    fn shift(a: Option<Action>, n: u32, i: u32, k: u32) -> u32 {
        match a {
            None => i,
            Some(Action::Cyclic(_)) => (i + k) % n,
            Some(Action::Xor) => i ^ k,
        }
    }

    /// The image of a rank under group element (kd, kc, kt).
    pub fn map_rank(&self, g: Element, rank: u32) -> u32 {
        let c = self.mesh.coords(rank);
        self.mesh.rank(Coords {
            pp: c.pp,
            dp: Self::shift(self.dp_action, self.dp, c.dp, g[0]),
            cp: Self::shift(self.cp_action, self.cp, c.cp, g[1]),
            tp: Self::shift(self.tp_action, self.tp, c.tp, g[2]),
        })
    }

    fn elements(&self) -> Vec<Element> {
        let ks = |a: Option<Action>, n: u32| -> Vec<u32> {
            match a {
                None => vec![0],
                Some(Action::Xor) => (0..n).collect(),
                Some(Action::Cyclic(g)) => (0..n).step_by(g as usize).collect(),
            }
        };
        let (d, c, t) = (
            ks(self.dp_action, self.dp),
            ks(self.cp_action, self.cp),
            ks(self.tp_action, self.tp),
        );
        let mut out = Vec::with_capacity(d.len() * c.len() * t.len());
        for &a in &d {
            for &b in &c {
                for &e in &t {
                    out.push([a, b, e]);
                }
            }
        }
        out
    }

    fn generators(&self) -> Vec<Element> {
        let mut g = Vec::new();
        for (axis, a, n) in [
            (0, self.dp_action, self.dp),
            (1, self.cp_action, self.cp),
            (2, self.tp_action, self.tp),
        ] {
            let unit = |k: u32| {
                let mut e = [0; 3];
                e[axis] = k;
                e
            };
            match a {
                Some(Action::Cyclic(s)) => g.push(unit(s)),
                Some(Action::Xor) => g.extend((0..n.trailing_zeros()).map(|b| unit(1 << b))),
                None => {}
            }
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

    fn map_node(&self, topo: &Topology, g: Element, n: Node) -> Node {
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

    fn map_link(&self, topo: &Topology, g: Element, l: LinkId) -> Option<LinkId> {
        let link = topo.links()[l as usize];
        topo.link_between(
            self.map_node(topo, g, link.from),
            self.map_node(topo, g, link.to),
        )
    }

    /// Every link maps to a link of the same bandwidth and latency, and ranks beyond the
    /// plan's devices are not involved.
    fn is_automorphism(&self, topo: &Topology, g: Element) -> bool {
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
