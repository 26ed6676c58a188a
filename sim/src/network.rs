//! Flows on links with max-min fair sharing.
//!
//! A flow moves bytes along its route; while several flows share a link, rates follow max-min
//! fairness (Bertsekas & Gallager, "Data Networks", §6.5), computed by progressive filling:
//! raise all rates together, freeze the flows of the first link to saturate, repeat. Every hop
//! adds its latency once the last byte has left (store-and-forward of the tail).
//!
//! Two things keep this lean at thousands of chips:
//! - Only links that can ever saturate take part. A link whose capacity is at least the
//!   capacity of everything that can feed it (or drain it) is never a bottleneck, so leaving it
//!   out changes no rate (host links to an on-die NIC, a non-blocking spine).
//! - A change (a flow starting or ending) recomputes rates only in its connected component of
//!   flows and saturable links, found by a breadth-first walk.

use std::collections::HashMap;

use pangu_hardware::{Node, Topology};

use crate::engine::Time;
use crate::SimError;

/// Index of a flow.
pub type FlowId = u32;

/// The flows on a link: up to four inline (the common case, no pointer to chase), more in a
/// vector. Order is that of a plain vector with `swap_remove`, whichever storage holds them.
#[derive(Debug, Clone, Default)]
struct FlowList {
    n: u32,
    inline: [FlowId; 4],
    spill: Vec<FlowId>,
}

impl FlowList {
    fn as_slice(&self) -> &[FlowId] {
        if self.spill.is_empty() {
            &self.inline[..self.n as usize]
        } else {
            &self.spill
        }
    }

    fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn push(&mut self, f: FlowId) {
        let n = self.n as usize;
        if self.spill.is_empty() && n < self.inline.len() {
            self.inline[n] = f;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline[..n]);
            }
            self.spill.push(f);
        }
        self.n += 1;
    }

    /// Removes `f` if present (swapping the last flow into its place).
    fn remove(&mut self, f: FlowId) {
        if self.spill.is_empty() {
            let n = self.n as usize;
            if let Some(p) = self.inline[..n].iter().position(|&x| x == f) {
                self.inline[p] = self.inline[n - 1];
                self.n -= 1;
            }
        } else if let Some(p) = self.spill.iter().position(|&x| x == f) {
            self.spill.swap_remove(p);
            self.n -= 1;
            if self.spill.len() <= self.inline.len() {
                self.inline[..self.spill.len()].copy_from_slice(&self.spill);
                self.spill.clear();
            }
        }
    }
}

/// One cache line per link: what adding or removing a flow touches.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct LinkState {
    /// Bytes per nanosecond.
    cap: f64,
    saturable: bool,
    flows: FlowList,
}

/// Scratch of the rate computation, per link.
#[derive(Debug, Clone, Default)]
struct LinkScratch {
    mark: u32,
    /// Capacity left and flows not yet frozen, during progressive filling.
    left: f64,
    unfrozen: f64,
}

#[derive(Debug, Clone)]
struct Flow {
    /// Index in the route table.
    route: u32,
    remaining: f64,
    /// Bytes per nanosecond.
    rate: f64,
    updated: Time,
    version: u32,
    active: bool,
    mark: u32,
    /// Epoch in which progressive filling froze this flow.
    frozen: u32,
    fresh: bool,
    next_rate: f64,
    bytes: f64,
}

impl Flow {
    fn rate_new(&mut self, r: f64) {
        self.next_rate = r;
    }
}

/// A route: two ranges of the route arena.
#[derive(Debug, Clone, Copy)]
struct Route {
    /// Every link with the number of copies of the flow it carries (1 unless folded).
    all: (u32, u32),
    /// The saturable ones among them.
    sat: (u32, u32),
    latency: Time,
}

/// The links of `range` in the arena.
#[inline]
fn span(arena: &[(u32, f64)], range: (u32, u32)) -> &[(u32, f64)] {
    &arena[range.0 as usize..(range.0 + range.1) as usize]
}

/// Which links can ever be a bottleneck.
///
/// Traffic never turns back, so everything that crosses link `u → v` entered `u` over its
/// other in-links (its *feed*) and leaves `v` over its other out-links (its *drain*); chips
/// originate and absorb traffic, so they bound nothing. If the feed or the drain has no more
/// capacity than the link, the link cannot saturate before they do, and can be left out,
/// provided the links that justify it stay in (they are pinned). Links are visited widest
/// first, so wide aggregate links are dropped in favour of the narrow ports below them.
fn saturable_links(topo: &Topology) -> Vec<bool> {
    let links = topo.links();
    let mut ins: HashMap<Node, Vec<usize>> = HashMap::new();
    let mut outs: HashMap<Node, Vec<usize>> = HashMap::new();
    for (i, l) in links.iter().enumerate() {
        ins.entry(l.to).or_default().push(i);
        outs.entry(l.from).or_default().push(i);
    }
    let mut order: Vec<usize> = (0..links.len()).collect();
    order.sort_by(|&a, &b| {
        links[b]
            .bandwidth
            .0
            .total_cmp(&links[a].bandwidth.0)
            .then(a.cmp(&b))
    });
    let mut keep = vec![true; links.len()];
    let mut pinned = vec![false; links.len()];
    for l in order {
        if pinned[l] {
            continue;
        }
        let (from, to) = (links[l].from, links[l].to);
        let side = |node: Node,
                    adj: &HashMap<Node, Vec<usize>>,
                    skip_end: Node,
                    incoming: bool|
         -> Option<Vec<usize>> {
            if matches!(node, Node::Chip(_)) {
                return None;
            }
            Some(
                adj.get(&node)
                    .map(|v| {
                        v.iter()
                            .copied()
                            .filter(|&j| {
                                if incoming {
                                    links[j].from != skip_end
                                } else {
                                    links[j].to != skip_end
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        };
        for bound in [side(from, &ins, to, true), side(to, &outs, from, false)]
            .into_iter()
            .flatten()
        {
            let total: f64 = bound.iter().map(|&j| links[j].bandwidth.0).sum();
            if bound.iter().all(|&j| keep[j]) && total <= links[l].bandwidth.0 {
                keep[l] = false;
                for j in bound {
                    pinned[j] = true;
                }
                break;
            }
        }
    }
    keep
}

/// A rate change: the flow's bandwidth phase now ends at `finish` (versioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Flow.
    pub flow: FlowId,
    /// Version to compare at delivery (a global counter, wrapping after 2^32 changes).
    pub version: u32,
    /// When its last byte leaves.
    pub finish: Time,
}

/// The network state.
pub struct Network<'t> {
    topo: &'t Topology,
    links: Vec<LinkState>,
    scratch_links: Vec<LinkScratch>,
    /// Bytes carried so far, per link.
    carried: Vec<f64>,
    flows: Vec<Flow>,
    free: Vec<FlowId>,
    /// Route of each (source, destination) pair in use, an index in `route_table` (0: the
    /// empty route of a chip-local transfer).
    routes: pangu_hardware::fxhash::FxMap<(u32, u32), u32>,
    route_table: Vec<Route>,
    arena: Vec<(u32, f64)>,
    scratch: (Vec<u32>, Vec<FlowId>, Vec<u32>),
    fold: Option<crate::fold::Folding>,
    epoch: u32,
    versions: u32,
    /// Rate recomputations performed (for profiling).
    pub recomputes: u64,
    /// Transfers started.
    pub flows_started: u64,
}

impl<'t> Network<'t> {
    /// The network of a topology, links derated by `efficiency`.
    pub fn new(topo: &'t Topology, efficiency: f64) -> Result<Network<'t>, SimError> {
        let links = topo.links();
        for l in links {
            if !(l.bandwidth.0 > 0.0 && l.bandwidth.0.is_finite()) {
                return Err(SimError::Input(format!(
                    "link {:?} -> {:?} has bandwidth {}: every link needs a positive, finite bandwidth",
                    l.from, l.to, l.bandwidth.0
                )));
            }
        }
        let saturable = saturable_links(topo);
        let state = links
            .iter()
            .zip(saturable)
            .map(|(l, saturable)| LinkState {
                cap: l.bandwidth.0 * efficiency / 1e9,
                saturable,
                flows: FlowList::default(),
            })
            .collect();
        Ok(Network {
            topo,
            links: state,
            scratch_links: vec![LinkScratch::default(); links.len()],
            carried: vec![0.0; links.len()],
            flows: Vec::new(),
            free: Vec::new(),
            routes: Default::default(),
            route_table: vec![Route {
                all: (0, 0),
                sat: (0, 0),
                latency: 0,
            }],
            arena: Vec::new(),
            scratch: Default::default(),
            fold: None,
            epoch: 0,
            versions: 0,
            recomputes: 0,
            flows_started: 0,
        })
    }

    /// Routes transfers over the canonical links of a symmetry group (see [`crate::fold`]).
    pub fn set_folding(&mut self, f: crate::fold::Folding) {
        self.fold = Some(f);
        self.routes.clear();
        self.route_table.truncate(1);
        self.arena.clear();
    }

    /// The folding in use.
    pub fn folding(&self) -> Option<&crate::fold::Folding> {
        self.fold.as_ref()
    }

    fn route(&mut self, a: u32, b: u32) -> Result<u32, SimError> {
        if a == b {
            return Ok(0);
        }
        if let Some(&r) = self.routes.get(&(a, b)) {
            return Ok(r);
        }
        let real = self
            .topo
            .route(a, b)
            .map_err(|e| SimError::Input(e.to_string()))?;
        let links = self.topo.links();
        let latency: f64 = real.iter().map(|&l| links[l as usize].latency.0).sum();
        let all: Vec<(u32, f64)> = match &mut self.fold {
            Some(f) => f
                .route(self.topo, a, b)
                .map_err(SimError::Input)?
                .as_ref()
                .clone(),
            None => real.iter().map(|&l| (l, 1.0)).collect(),
        };
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(&all);
        let sat_start = self.arena.len() as u32;
        self.arena.extend(
            all.iter()
                .copied()
                .filter(|&(l, _)| self.links[l as usize].saturable),
        );
        let r = self.route_table.len() as u32;
        self.route_table.push(Route {
            all: (start, all.len() as u32),
            sat: (sat_start, self.arena.len() as u32 - sat_start),
            latency: (latency * 1e9).round() as Time,
        });
        self.routes.insert((a, b), r);
        Ok(r)
    }

    /// Starts a transfer; returns the flow and the completions whose times changed (the new
    /// flow's included). Zero-length or chip-local transfers finish at once.
    pub fn start(
        &mut self,
        now: Time,
        src: u32,
        dst: u32,
        bytes: f64,
    ) -> Result<(FlowId, Vec<Completion>), SimError> {
        let (ids, out) = self.start_batch(now, &[(src, dst, bytes)])?;
        Ok((ids[0], out))
    }

    /// Starts several transfers at the same instant with one rate computation (the rates
    /// are those of the final set, as if they had been started one by one).
    pub fn start_batch(
        &mut self,
        now: Time,
        transfers: &[(u32, u32, f64)],
    ) -> Result<(Vec<FlowId>, Vec<Completion>), SimError> {
        let mut out = Vec::new();
        let mut seeds = Vec::new();
        let mut ids = Vec::with_capacity(transfers.len());
        for &(src, dst, bytes) in transfers {
            ids.push(self.add_flow(now, src, dst, bytes, &mut seeds, &mut out)?);
        }
        if !seeds.is_empty() {
            out.extend(self.recompute(now, &seeds));
        }
        Ok((ids, out))
    }

    fn add_flow(
        &mut self,
        now: Time,
        src: u32,
        dst: u32,
        bytes: f64,
        seeds: &mut Vec<u32>,
        out: &mut Vec<Completion>,
    ) -> Result<FlowId, SimError> {
        let route = self.route(src, dst)?;
        self.flows_started += 1;
        let flow = Flow {
            route,
            remaining: bytes.max(0.0),
            rate: 0.0,
            updated: now,
            version: 0,
            active: true,
            mark: 0,
            frozen: 0,
            fresh: true,
            next_rate: 0.0,
            bytes,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id as usize] = flow;
                id
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as FlowId
            }
        };
        let r = self.route_table[route as usize];
        if r.sat.1 == 0 || bytes <= 0.0 {
            // Nothing can slow it: the narrowest link sets the rate.
            self.run_alone(id, r.all, now, bytes, out);
            return Ok(id);
        }
        // Alone on every link it can saturate: its rate is its bottleneck and no other flow
        // changes, so no max-min computation is needed (a later flow joining a link finds it).
        let sat = span(&self.arena, r.sat);
        let alone = sat
            .iter()
            .all(|&(l, _)| self.links[l as usize].flows.is_empty());
        for &(l, _) in sat {
            self.links[l as usize].flows.push(id);
            if !alone {
                seeds.push(l);
            }
        }
        if alone {
            self.run_alone(id, r.sat, now, bytes, out);
        }
        Ok(id)
    }

    /// Gives a flow that nothing else constrains the rate of its narrowest link in `links`
    /// (with its copies, when folded) and records its completion.
    fn run_alone(
        &mut self,
        id: FlowId,
        links: (u32, u32),
        now: Time,
        bytes: f64,
        out: &mut Vec<Completion>,
    ) {
        let bw = span(&self.arena, links)
            .iter()
            .map(|&(l, w)| self.links[l as usize].cap / w)
            .fold(f64::INFINITY, f64::min);
        self.versions = self.versions.wrapping_add(1);
        let version = self.versions;
        let f = &mut self.flows[id as usize];
        f.fresh = false;
        f.rate = bw;
        f.version = version;
        let t = if bw.is_finite() && bytes > 0.0 {
            (bytes / bw).ceil() as Time
        } else {
            0
        };
        out.push(Completion {
            flow: id,
            version,
            finish: now + t,
        });
    }

    /// Ends a flow's bandwidth phase (its completion event fired with a current version);
    /// returns the path latency still to wait and the completions that changed.
    pub fn finish(&mut self, now: Time, id: FlowId) -> (Time, Vec<Completion>) {
        let (lat, out) = self.finish_batch(now, &[id]);
        (lat[0], out)
    }

    /// Ends several flows at the same instant with one rate computation.
    pub fn finish_batch(&mut self, now: Time, ids: &[FlowId]) -> (Vec<Time>, Vec<Completion>) {
        let mut seeds = Vec::new();
        let mut lats = Vec::with_capacity(ids.len());
        for &id in ids {
            let f = &mut self.flows[id as usize];
            f.active = false;
            let (route, bytes) = (self.route_table[f.route as usize], f.bytes);
            for &(l, w) in span(&self.arena, route.all) {
                self.carried[l as usize] += bytes * w;
            }
            for &(l, _) in span(&self.arena, route.sat) {
                let fl = &mut self.links[l as usize].flows;
                fl.remove(id);
                // Others left on the link may speed up; an emptied link changes no one.
                if !fl.is_empty() {
                    seeds.push(l);
                }
            }
            self.free.push(id);
            lats.push(route.latency);
        }
        let changes = if seeds.is_empty() {
            Vec::new()
        } else {
            self.recompute(now, &seeds)
        };
        (lats, changes)
    }

    /// Whether an event for `flow` with `version` is current.
    pub fn is_current(&self, flow: FlowId, version: u32) -> bool {
        let f = &self.flows[flow as usize];
        f.active && f.version == version
    }

    /// Bytes carried by each link so far.
    pub fn carried(&self) -> impl Iterator<Item = f64> + '_ {
        self.carried.iter().copied()
    }

    /// Max-min rates for the component around `seeds`.
    fn recompute(&mut self, now: Time, seeds: &[u32]) -> Vec<Completion> {
        self.recomputes += 1;
        self.epoch = self.epoch.wrapping_add(1).max(1);
        let epoch = self.epoch;
        let (mut comp_links, mut comp_flows, mut stack) = std::mem::take(&mut self.scratch);
        comp_links.clear();
        comp_flows.clear();
        stack.clear();
        for &l in seeds {
            if self.scratch_links[l as usize].mark != epoch {
                self.scratch_links[l as usize].mark = epoch;
                stack.push(l);
            }
        }
        while let Some(l) = stack.pop() {
            comp_links.push(l);
            for &f in self.links[l as usize].flows.as_slice() {
                if self.flows[f as usize].mark != epoch {
                    self.flows[f as usize].mark = epoch;
                    comp_flows.push(f);
                    let r = self.route_table[self.flows[f as usize].route as usize];
                    for &(l2, _) in span(&self.arena, r.sat) {
                        if self.scratch_links[l2 as usize].mark != epoch {
                            self.scratch_links[l2 as usize].mark = epoch;
                            stack.push(l2);
                        }
                    }
                }
            }
        }
        // Bring every flow's remaining bytes up to now at its old rate.
        for &f in &comp_flows {
            let fl = &mut self.flows[f as usize];
            fl.remaining = (fl.remaining - fl.rate * (now - fl.updated) as f64).max(0.0);
            fl.updated = now;
        }
        // Progressive filling.
        for &l in &comp_links {
            let ls = &mut self.scratch_links[l as usize];
            ls.left = self.links[l as usize].cap;
            ls.unfrozen = 0.0;
        }
        for &f in &comp_flows {
            let r = self.route_table[self.flows[f as usize].route as usize];
            for &(l, w) in span(&self.arena, r.sat) {
                self.scratch_links[l as usize].unfrozen += w;
            }
        }
        let mut n_frozen = 0;
        while n_frozen < comp_flows.len() {
            let mut best: Option<(u32, f64)> = None;
            for &l in &comp_links {
                let ls = &self.scratch_links[l as usize];
                if ls.unfrozen > 1e-9 {
                    let share = ls.left / ls.unfrozen;
                    if best.is_none_or(|(_, s)| share < s) {
                        best = Some((l, share));
                    }
                }
            }
            let Some((l, share)) = best else { break };
            for &f in self.links[l as usize].flows.as_slice() {
                if self.flows[f as usize].frozen == epoch {
                    continue;
                }
                self.flows[f as usize].frozen = epoch;
                self.flows[f as usize].rate_new(share);
                n_frozen += 1;
                let r = self.route_table[self.flows[f as usize].route as usize];
                for &(l2, w) in span(&self.arena, r.sat) {
                    let ls = &mut self.scratch_links[l2 as usize];
                    ls.left = (ls.left - share * w).max(0.0);
                    ls.unfrozen -= w;
                }
            }
        }
        let mut out = Vec::with_capacity(comp_flows.len());
        for &f in &comp_flows {
            let fl = &mut self.flows[f as usize];
            let rate = if fl.frozen == epoch {
                fl.next_rate
            } else {
                0.0
            };
            if rate != fl.rate || fl.fresh {
                fl.fresh = false;
                fl.rate = rate;
                self.versions = self.versions.wrapping_add(1);
                fl.version = self.versions;
                let t = if rate > 0.0 {
                    (fl.remaining / rate).ceil() as Time
                } else {
                    Time::MAX / 4
                };
                out.push(Completion {
                    flow: f,
                    version: fl.version,
                    finish: now + t,
                });
            }
        }
        self.scratch = (comp_links, comp_flows, stack);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pangu_hardware::Cluster;

    /// Runs flows to completion with no other events; returns finish times in ns.
    fn run(net: &mut Network<'_>, starts: &[(u32, u32, f64)]) -> Vec<Time> {
        let mut q = crate::engine::Queue::new();
        let mut done = vec![0; starts.len()];
        let mut ids = HashMap::new();
        for (i, &(a, b, bytes)) in starts.iter().enumerate() {
            let (id, ch) = net.start(0, a, b, bytes).unwrap();
            ids.insert(id, i);
            for c in ch {
                q.push(c.finish, c);
            }
        }
        while let Some((t, c)) = q.pop() {
            if !net.is_current(c.flow, c.version) {
                continue;
            }
            let (lat, ch) = net.finish(t, c.flow);
            done[ids[&c.flow]] = t + lat;
            for c in ch {
                q.push(c.finish, c);
            }
        }
        done
    }

    #[test]
    fn flow_lists_keep_the_order_of_a_vector_with_swap_remove() {
        // Grow past the inline capacity, shrink back into it, grow again: the list must
        // match a plain vector (the order decides the rate computation's visiting order).
        let mut list = FlowList::default();
        let mut model: Vec<FlowId> = Vec::new();
        let mut x = 12345u32;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let f = (x >> 16) % 9;
            if model.contains(&f) {
                let p = model.iter().position(|&y| y == f).unwrap();
                model.swap_remove(p);
                list.remove(f);
            } else {
                model.push(f);
                list.push(f);
            }
            assert_eq!(list.as_slice(), &model[..]);
            assert_eq!(list.is_empty(), model.is_empty());
        }
        list.remove(99); // absent: no change
        assert_eq!(list.as_slice(), &model[..]);
    }

    #[test]
    fn one_flow_runs_at_link_speed_plus_latency() {
        let c = Cluster::from_name("ascend910:8").unwrap();
        let mut net = Network::new(&c.topology, 1.0).unwrap();
        // 30 GB/s HCCS, 1 us: 3 MB takes 100 us + 1 us.
        let t = run(&mut net, &[(0, 1, 3e6)]);
        assert_eq!(t[0], 101_000);
    }

    #[test]
    fn flows_into_one_port_share_it_fairly() {
        let c = Cluster::from_name("ascend910:64").unwrap();
        let mut net = Network::new(&c.topology, 1.0).unwrap();
        // Two chips of other servers send to chip 0: its NIC downlink (12.5 GB/s) is shared.
        let t = run(&mut net, &[(8, 0, 12.5e6), (16, 0, 12.5e6)]);
        let lat = 2 * 1_500; // NIC uplink + downlink latencies (on-die host links add 0)
        assert_eq!(t[0], 2_000_000 + lat);
        assert_eq!(t[1], 2_000_000 + lat);
    }

    #[test]
    fn max_min_gives_leftover_bandwidth_to_unconstrained_flows() {
        let c = Cluster::from_name("ascend910:64").unwrap();
        let mut net = Network::new(&c.topology, 1.0).unwrap();
        // A: 8 -> 0 and B: 16 -> 0 share 0's downlink; C: 16 -> 24 shares 16's uplink with B.
        // Max-min: A = B = 6.25 GB/s on 0's downlink, C gets 12.5 - 6.25.
        let t = run(
            &mut net,
            &[(8, 0, 6.25e6), (16, 0, 6.25e6), (16, 24, 6.25e6)],
        );
        assert!(t[0] == t[1] && t[2] == t[0], "{t:?}");
        // The spine and host links never saturate and are left out of the computation.
        assert!(net
            .links
            .iter()
            .zip(c.topology.links())
            .all(|(s, l)| s.saturable
                == matches!(
                    (l.from, l.to),
                    (Node::Nic(..), Node::Tor(_))
                        | (Node::Tor(_), Node::Nic(..))
                        | (Node::Chip(_), Node::Chip(_))
                        | (Node::Chip(_), Node::ServerSwitch(_))
                        | (Node::ServerSwitch(_), Node::Chip(_))
                )));
    }

    #[test]
    fn oversubscribed_spine_becomes_a_bottleneck() {
        let mut spec = Cluster::from_name("ascend910:256").unwrap().spec;
        spec.network.spine_oversubscription = 128.0; // 16 servers x 8 NICs x 12.5 / 128 = 12.5 GB/s
        let c = Cluster::new(spec).unwrap();
        let mut net = Network::new(&c.topology, 1.0).unwrap();
        // Two flows from rack 0 to rack 1 now share one 12.5 GB/s uplink.
        let t = run(&mut net, &[(0, 128, 12.5e6), (8, 136, 12.5e6)]);
        assert!(t[0] > 2_000_000 && t[1] > 2_000_000, "{t:?}");
    }
}
