//! Collectives as programs: the one description of each algorithm, which the simulator prices
//! and the executor runs.
//!
//! A [`Program`] is, for a collective kind, an algorithm and a group (its members' servers), a
//! list of steps; each step is a list of [`Transfer`]s (source and destination group position,
//! a range of pieces of the buffer, and whether the receiver adds the values or copies them).
//! The buffer is cut into pieces by a mixed radix ([`Program::radix`]): first into `radix[0]`
//! near-equal parts, each of those into `radix[1]`, and so on, so that a contiguous range of
//! pieces is a contiguous range of elements whatever the buffer's length
//! ([`Program::elements`]) and a fraction `(hi − lo) / pieces` of its bytes
//! ([`Program::fraction`]).
//!
//! Semantics, which both consumers follow: a step's transfers are listed by source, then
//! destination; its sends read the buffer as it was before the step, its receives are applied
//! in list order after them; a step starts when the previous
//! one's transfers have arrived (the executor enforces this per rank by blocking receives, the
//! simulator per group as a barrier, pricing one step overhead each). For a reduce-scatter or an
//! all-gather `radix[0]` is the group size and position `i` owns the pieces under top-level
//! digit `i`, which are the elements [`chunk`]`(len, n, i)`: the ownership contract of MPI and
//! NCCL (rank `i` receives chunk `i`), whatever the algorithm.
//!
//! Algorithms (facts from the cited papers and libraries; the code is this project's own):
//! - Ring (Patarasuk & Yuan 2009): reduce-scatter then all-gather, `n − 1` steps each, every
//!   member sending one piece to its successor.
//! - Recursive halving-doubling (Thakur, Rabenseifner & Gropp 2005): `log2 n` halving steps with
//!   partners at distance n/2, n/4, …, exchanging half of what is left, then the mirror doubling
//!   steps. Power-of-two groups only; other sizes run the ring (as HCCL does).
//! - Double binary tree (Sanders, Speck & Träff 2009; NCCL 2.4, `src/graph/trees.cc`): tree 0 is
//!   the in-order binary tree in which a position's level is its lowest set bit (odd positions
//!   are leaves, position 0 the root with one child); tree 1 is its mirror (`n − 1 − i`) for an
//!   even group and its shift by one for an odd group, so that every position is a leaf in one
//!   of the trees when `n` is even. Each tree carries half of the buffer in [`PIPELINE_CHUNKS`]
//!   chunks, reduced up and broadcast down, pipelined: a chunk moves one level per step and the
//!   root turns it around at once. Reduce-scatter and all-gather, which NCCL's trees do not
//!   serve, run the ring.
//! - Hierarchical (HCCL's two-level algorithm; the bandwidth shape of NCCL's multi-channel rings
//!   across nodes): inside each server a ring reduce-scatter over its `k` members, then among the
//!   members with the same local index across the `s` servers the inter-server algorithm on what
//!   they hold (`1/k` of the buffer), then a ring all-gather inside each server. Needs the same
//!   number of members on every server and more than one of each; otherwise one member per server
//!   runs the inter-server algorithm flat, and anything else the ring.
//! - Broadcast from position 0: a pipelined chain (NCCL's ring broadcast), [`PIPELINE_CHUNKS`]
//!   chunks, each moving one member per step.

use std::ops::Range;

use serde::Serialize;

use super::{CollectiveAlgorithm, CollectiveKind, InterServer};

/// Chunks a tree all-reduce (per tree) and a broadcast are pipelined in.
pub const PIPELINE_CHUNKS: u32 = 8;

/// What the receiver of a transfer does with the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Adds them into its buffer (a reduction step).
    Add,
    /// Overwrites its buffer with them (a gather or broadcast step).
    Copy,
}

/// One message of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// Sending group position.
    pub src: u32,
    /// Receiving group position.
    pub dst: u32,
    /// The pieces of the buffer it carries.
    pub pieces: Range<u32>,
    /// What the receiver does with them.
    pub combine: Combine,
}

/// A collective as data: steps of transfers between group positions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Program {
    /// What it computes.
    pub kind: CollectiveKind,
    /// The algorithm that runs (after the fallbacks the module documentation lists).
    pub algorithm: CollectiveAlgorithm,
    /// Group size.
    pub size: u32,
    /// How the buffer is cut into pieces: `radix[0]` parts, each into `radix[1]`, ...
    pub radix: Vec<u32>,
    /// The steps, in order.
    pub steps: Vec<Vec<Transfer>>,
}

/// The part of a `len`-element buffer that position `i` of `n` owns after a reduce-scatter:
/// near-equal contiguous chunks, the first `len % n` one element longer.
pub fn chunk(len: usize, n: usize, i: usize) -> Range<usize> {
    let n = n.max(1);
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

impl Program {
    /// The program of `kind` with `algorithm` over a group whose member `i` sits on server
    /// `servers[i]` (any ids; only equality matters).
    pub fn build(kind: CollectiveKind, algorithm: CollectiveAlgorithm, servers: &[u32]) -> Program {
        let n = servers.len() as u32;
        let members: Vec<u32> = (0..n).collect();
        let flat = |algorithm: CollectiveAlgorithm| flat(kind, algorithm, &members);
        if n <= 1 {
            return Program {
                kind,
                algorithm: CollectiveAlgorithm::Ring,
                size: n,
                radix: vec![1],
                steps: Vec::new(),
            };
        }
        let mut p = match algorithm {
            CollectiveAlgorithm::Hierarchical { inter } => match by_server(servers) {
                Layout::Uniform(groups) => hierarchical(kind, inter, &groups),
                Layout::OnePerServer => flat(inter_algorithm(inter)),
                Layout::Other => flat(CollectiveAlgorithm::Ring),
            },
            a => flat(a),
        };
        // By source, then destination (stable: the ranges of one message stay in order).
        for step in &mut p.steps {
            step.sort_by_key(|t| (t.src, t.dst));
        }
        p
    }

    /// Number of pieces.
    pub fn pieces(&self) -> u32 {
        self.radix.iter().product()
    }

    /// The elements of a `len`-element buffer that `pieces` cover.
    pub fn elements(&self, len: usize, pieces: &Range<u32>) -> Range<usize> {
        self.offset(len, pieces.start)..self.offset(len, pieces.end)
    }

    /// The share of the buffer's bytes that `pieces` cover.
    pub fn fraction(&self, pieces: &Range<u32>) -> f64 {
        f64::from(pieces.end - pieces.start) / f64::from(self.pieces())
    }

    /// Element offset of piece `p` (`len` for `p` = the piece count).
    fn offset(&self, len: usize, p: u32) -> usize {
        if p >= self.pieces() {
            return len;
        }
        let (mut off, mut size, mut rest) = (0, len, p);
        let mut stride = self.pieces();
        for &r in &self.radix {
            stride /= r;
            let digit = rest / stride;
            rest %= stride;
            let c = chunk(size, r as usize, digit as usize);
            off += c.start;
            size = c.len();
        }
        off
    }

    /// The pieces position `pos` owns after a reduce-scatter (and contributes to an
    /// all-gather); `None` for the other kinds.
    pub fn owned(&self, pos: u32) -> Option<Range<u32>> {
        matches!(
            self.kind,
            CollectiveKind::ReduceScatter | CollectiveKind::AllGather
        )
        .then(|| {
            let stride = self.pieces() / self.radix[0].max(1);
            pos * stride..(pos + 1) * stride
        })
    }

    /// Every transfer with its step index, in program order.
    pub fn transfers(&self) -> impl Iterator<Item = (usize, &Transfer)> {
        self.steps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.iter().map(move |t| (i, t)))
    }
}

/// A list of piece ranges, in buffer order of the algorithm that receives it.
type View = Vec<Range<u32>>;
type Steps = Vec<Vec<Transfer>>;

/// Cuts a view into `m` parts: consecutive groups of its ranges when their count divides by
/// `m`, else the `i`-th `m`-th of every range for part `i` (the radix is chosen so that one of
/// the two holds; anything else is cut at piece granularity).
fn split(view: &[Range<u32>], m: usize) -> Vec<View> {
    if m == 0 {
        return Vec::new();
    }
    if view.len().is_multiple_of(m) {
        let per = view.len() / m;
        return view.chunks(per.max(1)).map(<[_]>::to_vec).collect();
    }
    (0..m)
        .map(|i| {
            view.iter()
                .map(|r| {
                    let c = chunk((r.end - r.start) as usize, m, i);
                    r.start + c.start as u32..r.start + c.end as u32
                })
                .collect()
        })
        .collect()
}

/// The view of the whole buffer of `pieces` pieces.
fn whole(pieces: u32) -> View {
    std::iter::once(0..pieces).collect()
}

/// Joins ranges that touch.
fn coalesce(view: View) -> View {
    let mut out: View = Vec::with_capacity(view.len());
    for r in view {
        match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// One transfer per non-empty range of `part`.
fn send(step: &mut Vec<Transfer>, src: u32, dst: u32, part: &[Range<u32>], combine: Combine) {
    for r in part.iter().filter(|r| r.end > r.start) {
        step.push(Transfer {
            src,
            dst,
            pieces: r.clone(),
            combine,
        });
    }
}

/// Runs sub-programs side by side: step `i` of the result holds step `i` of each.
fn side_by_side(programs: Vec<Steps>) -> Steps {
    let len = programs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Steps = (0..len).map(|_| Vec::new()).collect();
    for p in programs {
        for (i, s) in p.into_iter().enumerate() {
            out[i].extend(s);
        }
    }
    out
}

/// `n − 1` ring steps: in step `s` member `i` sends part `(i + lag − s) mod n` to member
/// `i + 1`. A reduce-scatter (lag `n − 1`, adding) leaves member `i` with part `i` summed; an
/// all-gather (lag 0, copying) passes every member's own part around.
fn ring_phase(members: &[u32], view: &[Range<u32>], lag: usize, combine: Combine) -> Steps {
    let n = members.len();
    let parts = split(view, n);
    (0..n.saturating_sub(1))
        .map(|s| {
            let mut step = Vec::new();
            for i in 0..n {
                let part = &parts[(i + n + lag - s) % n];
                send(&mut step, members[i], members[(i + 1) % n], part, combine);
            }
            step
        })
        .collect()
}

fn ring_reduce_scatter(members: &[u32], view: &[Range<u32>]) -> Steps {
    ring_phase(members, view, members.len().saturating_sub(1), Combine::Add)
}

fn ring_all_gather(members: &[u32], view: &[Range<u32>]) -> Steps {
    ring_phase(members, view, 0, Combine::Copy)
}

/// Parts `lo..hi` of `parts`, joined.
fn parts_between(parts: &[View], lo: usize, hi: usize) -> View {
    coalesce(parts[lo..hi].iter().flatten().cloned().collect())
}

fn halving_reduce_scatter(members: &[u32], view: &[Range<u32>]) -> Steps {
    let n = members.len();
    let parts = split(view, n);
    let mut held: Vec<(usize, usize)> = vec![(0, n); n];
    let mut out = Vec::new();
    let mut d = n / 2;
    while d >= 1 {
        let mut step = Vec::new();
        for i in 0..n {
            let (lo, hi) = held[i];
            let mid = (lo + hi) / 2;
            let (keep, give) = if i & d == 0 {
                ((lo, mid), (mid, hi))
            } else {
                ((mid, hi), (lo, mid))
            };
            let part = parts_between(&parts, give.0, give.1);
            send(&mut step, members[i], members[i ^ d], &part, Combine::Add);
            held[i] = keep;
        }
        out.push(step);
        d /= 2;
    }
    out
}

fn doubling_all_gather(members: &[u32], view: &[Range<u32>]) -> Steps {
    let n = members.len();
    let parts = split(view, n);
    let mut held: Vec<(usize, usize)> = (0..n).map(|i| (i, i + 1)).collect();
    let mut out = Vec::new();
    let mut d = 1;
    while d < n {
        let mut step = Vec::new();
        let before = held.clone();
        for i in 0..n {
            let (lo, hi) = before[i];
            let part = parts_between(&parts, lo, hi);
            send(&mut step, members[i], members[i ^ d], &part, Combine::Copy);
            let (plo, phi) = before[i ^ d];
            held[i] = (lo.min(plo), hi.max(phi));
        }
        out.push(step);
        d *= 2;
    }
    out
}

/// Parent of position `p` in NCCL's in-order binary tree over `n` positions (`None` for the
/// root, position 0): clear the lowest set bit and set the next one up, or only clear it when
/// that leaves the group.
fn btree_parent(n: u32, p: u32) -> Option<u32> {
    if p == 0 {
        return None;
    }
    let bit = p & p.wrapping_neg();
    let up = (p ^ bit) | (bit << 1);
    Some(if up >= n { p ^ bit } else { up })
}

/// Member at position `pos` of tree `t` (0 or 1) of the double binary tree.
fn tree_member(n: u32, t: u32, pos: u32) -> u32 {
    match (t, n % 2) {
        (0, _) => pos,
        (_, 0) => n - 1 - pos,
        _ => (pos + 1) % n,
    }
}

fn double_tree_all_reduce(members: &[u32], view: &[Range<u32>]) -> Steps {
    let n = members.len() as u32;
    let c = PIPELINE_CHUNKS as usize;
    let halves = split(view, 2);
    let chunks: Vec<Vec<View>> = halves.iter().map(|h| split(h, c)).collect();
    let mut depth = vec![0u32; n as usize];
    for p in 1..n {
        let mut q = p;
        while let Some(up) = btree_parent(n, q) {
            depth[p as usize] += 1;
            q = up;
        }
    }
    let dmax = depth.iter().copied().max().unwrap_or(0) as usize;
    let waves = c + 2 * dmax - 1;
    let mut out: Steps = (0..waves).map(|_| Vec::new()).collect();
    // Up: the edge from depth k carries chunk j at wave j + D − k. Down: chunk j reaches the
    // root at wave j + D − 1 and leaves it at once, one level per wave. Up edges are listed
    // before down edges in every wave, tree 0 before tree 1.
    for up in [true, false] {
        for (t, tree_chunks) in chunks.iter().enumerate() {
            for p in 1..n {
                let Some(parent) = btree_parent(n, p) else {
                    continue;
                };
                let k = depth[p as usize] as usize;
                let child = members[tree_member(n, t as u32, p) as usize];
                let par = members[tree_member(n, t as u32, parent) as usize];
                for (j, part) in tree_chunks.iter().enumerate() {
                    if up {
                        send(&mut out[j + dmax - k], child, par, part, Combine::Add);
                    } else {
                        send(&mut out[j + dmax - 1 + k], par, child, part, Combine::Copy);
                    }
                }
            }
        }
    }
    out
}

fn chain_broadcast(members: &[u32], view: &[Range<u32>]) -> Steps {
    let n = members.len();
    let c = PIPELINE_CHUNKS as usize;
    let chunks = split(view, c);
    let mut out: Steps = (0..c + n - 2).map(|_| Vec::new()).collect();
    for i in 0..n - 1 {
        for (j, part) in chunks.iter().enumerate() {
            send(
                &mut out[j + i],
                members[i],
                members[i + 1],
                part,
                Combine::Copy,
            );
        }
    }
    out
}

fn inter_algorithm(inter: InterServer) -> CollectiveAlgorithm {
    match inter {
        InterServer::Ring => CollectiveAlgorithm::Ring,
        InterServer::HalvingDoubling => CollectiveAlgorithm::HalvingDoubling,
        InterServer::DoubleBinaryTree => CollectiveAlgorithm::DoubleBinaryTree,
    }
}

/// The algorithm a flat group of `n` really runs for `kind`.
fn effective(
    kind: CollectiveKind,
    algorithm: CollectiveAlgorithm,
    n: usize,
) -> CollectiveAlgorithm {
    use CollectiveAlgorithm as A;
    match (kind, algorithm) {
        (CollectiveKind::Broadcast, _) => A::Ring,
        (_, A::HalvingDoubling) if n.is_power_of_two() => A::HalvingDoubling,
        (CollectiveKind::AllReduce, A::DoubleBinaryTree) => A::DoubleBinaryTree,
        _ => A::Ring,
    }
}

/// The radix a flat program of `algorithm` cuts the buffer by.
fn flat_radix(kind: CollectiveKind, algorithm: CollectiveAlgorithm, n: u32) -> Vec<u32> {
    match (kind, algorithm) {
        (CollectiveKind::Broadcast, _) => vec![PIPELINE_CHUNKS],
        (_, CollectiveAlgorithm::DoubleBinaryTree) => vec![2 * PIPELINE_CHUNKS],
        _ => vec![n],
    }
}

/// The steps of a flat program over `members` on `view`.
fn flat_steps(
    kind: CollectiveKind,
    algorithm: CollectiveAlgorithm,
    members: &[u32],
    view: &[Range<u32>],
) -> Steps {
    use CollectiveAlgorithm as A;
    use CollectiveKind as K;
    match (kind, algorithm) {
        (K::Broadcast, _) => chain_broadcast(members, view),
        (K::AllReduce, A::DoubleBinaryTree) => double_tree_all_reduce(members, view),
        (K::AllReduce, A::HalvingDoubling) => {
            let mut s = halving_reduce_scatter(members, view);
            s.extend(doubling_all_gather(members, view));
            s
        }
        (K::ReduceScatter, A::HalvingDoubling) => halving_reduce_scatter(members, view),
        (K::AllGather, A::HalvingDoubling) => doubling_all_gather(members, view),
        (K::AllReduce, _) => {
            let mut s = ring_reduce_scatter(members, view);
            s.extend(ring_all_gather(members, view));
            s
        }
        (K::ReduceScatter, _) => ring_reduce_scatter(members, view),
        (K::AllGather, _) => ring_all_gather(members, view),
    }
}

fn flat(kind: CollectiveKind, algorithm: CollectiveAlgorithm, members: &[u32]) -> Program {
    let n = members.len();
    let algorithm = effective(kind, algorithm, n);
    let radix = flat_radix(kind, algorithm, n as u32);
    let total: u32 = radix.iter().product();
    Program {
        kind,
        algorithm,
        size: n as u32,
        radix,
        steps: flat_steps(kind, algorithm, members, &whole(total)),
    }
}

/// How a group's members sit on servers.
enum Layout {
    /// Several servers with the same number (> 1) of members each: positions per server.
    Uniform(Vec<Vec<u32>>),
    /// One member on each of several servers.
    OnePerServer,
    /// Anything else (one server, or unequal counts).
    Other,
}

fn by_server(servers: &[u32]) -> Layout {
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for (pos, &s) in servers.iter().enumerate() {
        match groups.iter_mut().find(|(id, _)| *id == s) {
            Some((_, v)) => v.push(pos as u32),
            None => groups.push((s, vec![pos as u32])),
        }
    }
    let k = groups[0].1.len();
    if groups.len() < 2 || groups.iter().any(|(_, v)| v.len() != k) {
        Layout::Other
    } else if k == 1 {
        Layout::OnePerServer
    } else {
        Layout::Uniform(groups.into_iter().map(|(_, v)| v).collect())
    }
}

/// The two-level program over `groups[server][local]` positions.
fn hierarchical(kind: CollectiveKind, inter: InterServer, groups: &[Vec<u32>]) -> Program {
    let (s, k) = (groups.len(), groups[0].len());
    let n = s * k;
    let slot = |j: usize| -> Vec<u32> { groups.iter().map(|g| g[j]).collect() };
    let algorithm = CollectiveAlgorithm::Hierarchical { inter };
    let inter_algo = inter_algorithm(inter);
    if kind == CollectiveKind::AllReduce {
        // No ownership to keep: local slot j reduces the contiguous j-th k-th of the buffer,
        // cut again as the inter-server algorithm needs.
        let inter_eff = effective(kind, inter_algo, s);
        let inner = flat_radix(kind, inter_eff, s as u32);
        let per: u32 = inner.iter().product();
        let mut radix = vec![k as u32];
        radix.extend(inner);
        let view = whole(k as u32 * per);
        let mut steps = side_by_side(
            groups
                .iter()
                .map(|g| ring_reduce_scatter(g, &view))
                .collect(),
        );
        let parts = split(&view, k);
        steps.extend(side_by_side(
            (0..k)
                .map(|j| flat_steps(kind, inter_eff, &slot(j), &parts[j]))
                .collect(),
        ));
        steps.extend(side_by_side(
            groups.iter().map(|g| ring_all_gather(g, &view)).collect(),
        ));
        return Program {
            kind,
            algorithm,
            size: n as u32,
            radix,
            steps,
        };
    }
    if kind == CollectiveKind::Broadcast {
        let members: Vec<u32> = (0..n as u32).collect();
        return flat(kind, CollectiveAlgorithm::Ring, &members);
    }
    // Reduce-scatter and all-gather keep position i's ownership of top-level piece i: local
    // slot j handles the pieces of every server's slot-j member.
    let block = |p: u32| p..p + 1;
    let slot_view = |j: usize| -> View { slot(j).into_iter().map(block).collect() };
    let intra_view: View = (0..k).flat_map(slot_view).collect();
    let inter_eff = effective(kind, inter_algo, s);
    let intra = |f: fn(&[u32], &[Range<u32>]) -> Steps| {
        side_by_side(groups.iter().map(|g| f(g, &intra_view)).collect())
    };
    let across = side_by_side(
        (0..k)
            .map(|j| flat_steps(kind, inter_eff, &slot(j), &slot_view(j)))
            .collect(),
    );
    let steps = match kind {
        CollectiveKind::ReduceScatter => {
            let mut v = intra(ring_reduce_scatter);
            v.extend(across);
            v
        }
        _ => {
            let mut v = across;
            v.extend(intra(ring_all_gather));
            v
        }
    };
    Program {
        kind,
        algorithm,
        size: n as u32,
        radix: vec![n as u32],
        steps,
    }
}

#[cfg(test)]
#[path = "program_tests.rs"]
mod tests;
