//! The cluster as a graph: chips and switches joined by directed links, with named levels.
//!
//! Every full-duplex cable becomes two directed [`Link`]s, so traffic in one direction never
//! slows the other. Routes follow the hierarchy (island, server, rack, spine): traffic goes up
//! only as far as the lowest level that holds both ends. The spine is modelled as one
//! aggregate switch whose link to each top-of-rack switch carries the rack's whole NIC capacity
//! divided by the oversubscription ratio (ideal ECMP spreading over the real uplinks).

use serde::Serialize;

use crate::spec::{ClusterSpec, CrossIsland, IslandKind, LinkSpec};
use crate::units::{Bandwidth, Seconds};
use crate::HardwareError;

/// The named levels of the hierarchy, from the closest to the farthest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Inside one island of directly connected chips (HCCS mesh, NVSwitch).
    Island,
    /// Inside one server, between islands.
    Server,
    /// Between servers under one top-of-rack switch.
    Rack,
    /// Between racks, through the spine.
    Spine,
}

impl Level {
    /// All levels, closest first.
    pub const ALL: [Level; 4] = [Level::Island, Level::Server, Level::Rack, Level::Spine];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Level::Island => "island",
            Level::Server => "server",
            Level::Rack => "rack",
            Level::Spine => "spine",
        }
    }
}

/// A vertex of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Node {
    /// Chip (global index).
    Chip(u32),
    /// The switch of one island (switch-kind islands only): (server, island).
    IslandSwitch(u32, u32),
    /// The cross-island switch of a server.
    ServerSwitch(u32),
    /// A NIC: (server, nic index).
    Nic(u32, u32),
    /// A top-of-rack switch.
    Tor(u32),
    /// The spine.
    Spine,
}

impl std::str::FromStr for Node {
    type Err = String;

    /// `chip:C`, `nic:SERVER:I`, `tor:RACK`, `spine`, `island-switch:SERVER:I`,
    /// `server-switch:SERVER`.
    fn from_str(text: &str) -> Result<Node, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let num = |i: usize| -> Result<u32, String> {
            parts
                .get(i)
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("{text:?}: expected a number in part {}", i + 1))
        };
        let want = |n: usize| -> Result<(), String> {
            if parts.len() == n {
                Ok(())
            } else {
                Err(format!("{text:?}: expected {n} parts separated by ':'"))
            }
        };
        match parts[0].trim() {
            "chip" => want(2).and(Ok(Node::Chip(num(1)?))),
            "nic" => want(3).and(Ok(Node::Nic(num(1)?, num(2)?))),
            "tor" => want(2).and(Ok(Node::Tor(num(1)?))),
            "spine" => want(1).and(Ok(Node::Spine)),
            "island-switch" => want(3).and(Ok(Node::IslandSwitch(num(1)?, num(2)?))),
            "server-switch" => want(2).and(Ok(Node::ServerSwitch(num(1)?))),
            other => Err(format!(
                "{other:?} is not a node kind: use chip:C, nic:SERVER:I, tor:RACK, spine, island-switch:SERVER:I or server-switch:SERVER"
            )),
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Chip(c) => write!(f, "chip:{c}"),
            Node::Nic(s, i) => write!(f, "nic:{s}:{i}"),
            Node::Tor(r) => write!(f, "tor:{r}"),
            Node::Spine => write!(f, "spine"),
            Node::IslandSwitch(s, i) => write!(f, "island-switch:{s}:{i}"),
            Node::ServerSwitch(s) => write!(f, "server-switch:{s}"),
        }
    }
}

/// Index into [`Topology::links`].
pub type LinkId = u32;

/// A directed link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    /// Source vertex.
    pub from: Node,
    /// Destination vertex.
    pub to: Node,
    /// Bandwidth in this direction.
    pub bandwidth: Bandwidth,
    /// One-way latency.
    pub latency: Seconds,
    /// The level of the hierarchy this link belongs to.
    pub level: Level,
}

/// Where a chip sits in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Server index.
    pub server: u32,
    /// Island index inside the server.
    pub island: u32,
    /// Index inside the island.
    pub slot: u32,
    /// Rack index.
    pub rack: u32,
}

/// The graph of one cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    chips: u32,
    chips_per_server: u32,
    island_size: u32,
    nics_per_server: u32,
    servers_per_rack: u32,
    links: Vec<Link>,
    index: crate::fxhash::FxMap<(Node, Node), LinkId>,
    /// Links taken out of service ([`Topology::fail`]); routes avoid them.
    failed: std::collections::BTreeSet<LinkId>,
}

impl Topology {
    /// Builds the graph of a validated spec.
    pub fn build(spec: &ClusterSpec) -> Result<Topology, HardwareError> {
        spec.validate()?;
        let mut t = Topology {
            chips: spec.chips,
            chips_per_server: spec.server.chips,
            island_size: spec.island_size(),
            nics_per_server: spec.network.nics_per_server,
            servers_per_rack: spec.network.servers_per_rack.max(1),
            links: Vec::new(),
            index: Default::default(),
            failed: Default::default(),
        };
        let servers = spec.servers();
        let isl = spec.server.island;
        for s in 0..servers {
            let first = s * t.chips_per_server;
            let last = (first + t.chips_per_server).min(t.chips);
            let islands_here = (last - first).div_ceil(t.island_size);
            for i in 0..islands_here {
                let base = first + i * t.island_size;
                let members: Vec<u32> = (base..(base + t.island_size).min(last)).collect();
                match isl.kind {
                    IslandKind::FullMesh => {
                        for &a in &members {
                            for &b in &members {
                                if a != b {
                                    t.add(Node::Chip(a), Node::Chip(b), isl.link, Level::Island);
                                }
                            }
                        }
                    }
                    IslandKind::Switch => {
                        let sw = Node::IslandSwitch(s, i);
                        for &a in &members {
                            t.duplex(Node::Chip(a), sw, isl.link, Level::Island);
                        }
                    }
                }
            }
            if let Some(CrossIsland::Switch { bandwidth, latency }) = spec.server.cross_island {
                if islands_here > 1 {
                    for c in first..last {
                        let l = LinkSpec { bandwidth, latency };
                        t.duplex(Node::Chip(c), Node::ServerSwitch(s), l, Level::Server);
                    }
                }
            }
            if t.nics_per_server > 0 {
                let rack = s / t.servers_per_rack;
                for n in 0..t.nics_per_server {
                    t.duplex(
                        Node::Nic(s, n),
                        Node::Tor(rack),
                        spec.network.nic,
                        Level::Rack,
                    );
                }
                for c in first..last {
                    let nic = t.nic_of(c);
                    t.duplex(Node::Chip(c), nic, spec.network.host_link, Level::Rack);
                }
            }
        }
        let racks = servers.div_ceil(t.servers_per_rack);
        if racks > 1 {
            for r in 0..racks {
                let servers_in_rack =
                    (servers - r * t.servers_per_rack).min(t.servers_per_rack) as f64;
                let capacity = spec.network.nic.bandwidth
                    * (servers_in_rack * t.nics_per_server as f64
                        / spec.network.spine_oversubscription);
                let l = LinkSpec {
                    bandwidth: capacity,
                    latency: spec.network.spine_latency,
                };
                t.duplex(Node::Tor(r), Node::Spine, l, Level::Spine);
            }
        }
        Ok(t)
    }

    fn add(&mut self, from: Node, to: Node, l: LinkSpec, level: Level) {
        let id = self.links.len() as LinkId;
        self.links.push(Link {
            from,
            to,
            bandwidth: l.bandwidth,
            latency: l.latency,
            level,
        });
        self.index.insert((from, to), id);
    }

    fn duplex(&mut self, a: Node, b: Node, l: LinkSpec, level: Level) {
        self.add(a, b, l, level);
        self.add(b, a, l, level);
    }

    /// Number of chips.
    pub fn chips(&self) -> u32 {
        self.chips
    }

    /// The directed link from `a` to `b`, if there is one.
    pub fn link_between(&self, a: Node, b: Node) -> Option<LinkId> {
        self.index.get(&(a, b)).copied()
    }

    /// Chips per server.
    pub fn chips_per_server(&self) -> u32 {
        self.chips_per_server
    }

    /// Chips per island.
    pub fn island_size(&self) -> u32 {
        self.island_size
    }

    /// Servers per rack.
    pub fn servers_per_rack(&self) -> u32 {
        self.servers_per_rack
    }

    /// NICs per server.
    pub fn nics_per_server(&self) -> u32 {
        self.nics_per_server
    }

    /// Every directed link; a [`LinkId`] indexes this slice.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Where chip `c` sits.
    pub fn position(&self, c: u32) -> Position {
        let server = c / self.chips_per_server;
        let local = c % self.chips_per_server;
        Position {
            server,
            island: local / self.island_size,
            slot: local % self.island_size,
            rack: server / self.servers_per_rack,
        }
    }

    /// The NIC node chip `c` sends through.
    pub fn nic_of(&self, c: u32) -> Node {
        let p = self.position(c);
        let local = c % self.chips_per_server;
        Node::Nic(
            p.server,
            local * self.nics_per_server / self.chips_per_server,
        )
    }

    /// The lowest level that holds both chips (`Island` for a chip and itself).
    pub fn level_between(&self, a: u32, b: u32) -> Level {
        let (pa, pb) = (self.position(a), self.position(b));
        if pa.server == pb.server && pa.island == pb.island {
            Level::Island
        } else if pa.server == pb.server {
            Level::Server
        } else if pa.rack == pb.rack {
            Level::Rack
        } else {
            Level::Spine
        }
    }

    /// The lowest level that holds every chip of a group.
    pub fn span(&self, group: &[u32]) -> Level {
        let Some(&first) = group.first() else {
            return Level::Island;
        };
        group
            .iter()
            .map(|&c| self.level_between(first, c))
            .max()
            .unwrap_or(Level::Island)
    }

    /// Scales a link's bandwidth by `factor` in `(0, 1]` (a degraded link: a lane down, a
    /// flapping cable renegotiated to a lower speed).
    pub fn degrade(&mut self, id: LinkId, factor: f64) {
        if let Some(l) = self.links.get_mut(id as usize) {
            l.bandwidth = Bandwidth(l.bandwidth.0 * factor);
        }
    }

    /// Takes a link out of service: routes that used it go around it where the graph allows
    /// ([`Topology::route`]).
    pub fn fail(&mut self, id: LinkId) {
        self.failed.insert(id);
    }

    /// Whether a link is out of service.
    pub fn is_failed(&self, id: LinkId) -> bool {
        self.failed.contains(&id)
    }

    /// The directed links a message from chip `a` to chip `b` traverses, in order. When the
    /// hierarchical route crosses a failed link, the message takes the shortest path (fewest
    /// hops, ties to the lowest link ids) through links in service — through a peer chip of
    /// the island or another NIC of the server, as collective libraries relay — and the
    /// error names the failed link when no such path exists.
    pub fn route(&self, a: u32, b: u32) -> Result<Vec<LinkId>, HardwareError> {
        let r = self.hierarchical_route(a, b)?;
        match r.iter().find(|l| self.failed.contains(l)) {
            None => Ok(r),
            Some(&broken) => self.detour(a, b).ok_or_else(|| {
                let l = &self.links[broken as usize];
                HardwareError::NoRoute {
                    from: a,
                    to: b,
                    reason: format!(
                        "link {:?} -> {:?} failed and no other path joins the two chips in this topology",
                        l.from, l.to
                    ),
                }
            }),
        }
    }

    /// Breadth-first search from chip `a` to chip `b` over links in service. Chips relay
    /// only inside their server (a chip does not forward another server's traffic).
    fn detour(&self, a: u32, b: u32) -> Option<Vec<LinkId>> {
        use std::collections::{HashMap, VecDeque};
        let (from, to) = (Node::Chip(a), Node::Chip(b));
        let mut out: HashMap<Node, Vec<LinkId>> = HashMap::new();
        for (i, l) in self.links.iter().enumerate() {
            if !self.failed.contains(&(i as LinkId)) {
                out.entry(l.from).or_default().push(i as LinkId);
            }
        }
        let server_of = |n: Node| match n {
            Node::Chip(c) => Some(self.position(c).server),
            _ => None,
        };
        let relay_ok = |n: Node| match n {
            Node::Chip(c) => {
                c == a
                    || c == b
                    || Some(self.position(c).server) == server_of(from)
                    || Some(self.position(c).server) == server_of(to)
            }
            _ => true,
        };
        let mut prev: HashMap<Node, LinkId> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        let mut seen = std::collections::HashSet::from([from]);
        while let Some(n) = queue.pop_front() {
            if n == to {
                let mut path = Vec::new();
                let mut cur = to;
                while cur != from {
                    let l = prev[&cur];
                    path.push(l);
                    cur = self.links[l as usize].from;
                }
                path.reverse();
                return Some(path);
            }
            if n != from && matches!(n, Node::Chip(_)) && !relay_ok(n) {
                continue;
            }
            for &l in out.get(&n).map_or(&[][..], Vec::as_slice) {
                let next = self.links[l as usize].to;
                if seen.insert(next) {
                    prev.insert(next, l);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// The route of the hierarchy, ignoring failures.
    fn hierarchical_route(&self, a: u32, b: u32) -> Result<Vec<LinkId>, HardwareError> {
        if a >= self.chips || b >= self.chips {
            return Err(HardwareError::NoRoute {
                from: a,
                to: b,
                reason: "no such chip".into(),
            });
        }
        if a == b {
            return Ok(Vec::new());
        }
        let (pa, pb) = (self.position(a), self.position(b));
        let hops: Vec<(Node, Node)> = match self.level_between(a, b) {
            Level::Island => {
                let sw = Node::IslandSwitch(pa.server, pa.island);
                if self.index.contains_key(&(Node::Chip(a), Node::Chip(b))) {
                    vec![(Node::Chip(a), Node::Chip(b))]
                } else {
                    vec![(Node::Chip(a), sw), (sw, Node::Chip(b))]
                }
            }
            Level::Server
                if self
                    .index
                    .contains_key(&(Node::Chip(a), Node::ServerSwitch(pa.server))) =>
            {
                let sw = Node::ServerSwitch(pa.server);
                vec![(Node::Chip(a), sw), (sw, Node::Chip(b))]
            }
            Level::Server | Level::Rack => {
                let (na, nb) = (self.nic_of(a), self.nic_of(b));
                let tor = Node::Tor(pa.rack);
                vec![
                    (Node::Chip(a), na),
                    (na, tor),
                    (tor, nb),
                    (nb, Node::Chip(b)),
                ]
            }
            Level::Spine => {
                let (na, nb) = (self.nic_of(a), self.nic_of(b));
                let (ta, tb) = (Node::Tor(pa.rack), Node::Tor(pb.rack));
                vec![
                    (Node::Chip(a), na),
                    (na, ta),
                    (ta, Node::Spine),
                    (Node::Spine, tb),
                    (tb, nb),
                    (nb, Node::Chip(b)),
                ]
            }
        };
        hops.into_iter()
            .map(|k| {
                self.index
                    .get(&k)
                    .copied()
                    .ok_or_else(|| HardwareError::NoRoute {
                        from: a,
                        to: b,
                        reason: format!("no link {:?} -> {:?} in this topology", k.0, k.1),
                    })
            })
            .collect()
    }

    /// The narrowest bandwidth and the summed latency along the route from `a` to `b`.
    pub fn path_summary(&self, a: u32, b: u32) -> Result<(Bandwidth, Seconds), HardwareError> {
        let r = self.route(a, b)?;
        let bw = r
            .iter()
            .map(|&l| self.links[l as usize].bandwidth.0)
            .fold(f64::INFINITY, f64::min);
        let lat = r.iter().map(|&l| self.links[l as usize].latency.0).sum();
        Ok((Bandwidth(bw), Seconds(lat)))
    }
}
