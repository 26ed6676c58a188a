//! Collectives: the algorithms, which one a group uses ([`choose`], the one place that
//! decides), the programs that describe them ([`program`]) and the communication a plan
//! performs, shared by simulator and executor.

pub mod kv;
pub mod program;

use std::fmt;
use std::str::FromStr;

use pangu_hardware::{Bytes, CollectiveLibrary, Level};
pub use pangu_model::ops::CollectiveKind;
use serde::{Deserialize, Serialize};

pub use kv::KvExchange;
pub use program::{chunk, Combine, Program, Transfer, PIPELINE_CHUNKS};

/// How a collective is carried out (the simulator prices it, the executor runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveAlgorithm {
    /// Ring: reduce-scatter then all-gather around a ring; 2(n-1) steps of 1/n of the data.
    Ring,
    /// Two binary trees, each carrying half the data, pipelined in chunks (NCCL's double
    /// binary tree; all-reduce only, other kinds run the ring).
    DoubleBinaryTree,
    /// Recursive halving (reduce-scatter) then doubling (all-gather); log2(n) steps (Thakur et
    /// al. 2005). Needs a power-of-two group.
    HalvingDoubling,
    /// Ring inside each server, then `inter` across servers among one chip per server slot,
    /// then ring inside each server again.
    Hierarchical {
        /// Algorithm among servers.
        inter: InterServer,
    },
}

impl fmt::Display for CollectiveAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectiveAlgorithm::Ring => f.write_str("ring"),
            CollectiveAlgorithm::DoubleBinaryTree => f.write_str("tree"),
            CollectiveAlgorithm::HalvingDoubling => f.write_str("halving-doubling"),
            CollectiveAlgorithm::Hierarchical { inter } => {
                let inter = match inter {
                    InterServer::Ring => "ring",
                    InterServer::HalvingDoubling => "halving-doubling",
                    InterServer::DoubleBinaryTree => "tree",
                };
                write!(f, "hierarchical(ring inside, {inter} across servers)")
            }
        }
    }
}

/// The across-servers part of a hierarchical collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InterServer {
    /// Ring across servers.
    Ring,
    /// Recursive halving-doubling across servers.
    HalvingDoubling,
    /// Double binary tree across servers.
    DoubleBinaryTree,
}

/// The default algorithm a vendor library picks for a group.
///
/// - HCCL (Ascend): inside one server a ring ("level 0" is not user-configurable); across
///   servers recursive halving-doubling when the server count is a power of two, ring otherwise
///   (CANN `HCCL_ALGO` documentation, Atlas training series). With several chips of the group
///   per server the two levels combine hierarchically.
/// - NCCL (NVIDIA): rings for the large messages training sends. With one GPU per node in
///   the group, a flat ring. With several, NCCL runs many channels whose rings cross between
///   nodes at different GPUs, so the cross-node traffic spreads evenly over all the node's
///   NICs; for bandwidth that is what the two-level (hierarchical) schedule does, which is
///   how it is modelled. NCCL's trees serve small all-reduces at scale and are selectable.
pub fn default_algorithm(
    lib: CollectiveLibrary,
    servers: u32,
    chips_per_server: u32,
) -> CollectiveAlgorithm {
    if servers <= 1 {
        return CollectiveAlgorithm::Ring;
    }
    let inter = inter_default(lib, servers);
    match (chips_per_server > 1, inter) {
        (true, inter) => CollectiveAlgorithm::Hierarchical { inter },
        (false, InterServer::HalvingDoubling) => CollectiveAlgorithm::HalvingDoubling,
        (false, InterServer::DoubleBinaryTree) => CollectiveAlgorithm::DoubleBinaryTree,
        (false, InterServer::Ring) => CollectiveAlgorithm::Ring,
    }
}

/// What a strategy asks for a group's collectives (`[collectives]` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgorithmChoice {
    /// The vendor library's default for the group's placement ([`default_algorithm`]).
    #[default]
    Auto,
    /// Ring.
    Ring,
    /// Double binary tree (all-reduce; other kinds run the ring).
    Tree,
    /// Recursive halving-doubling (power-of-two groups; others run the ring).
    HalvingDoubling,
    /// Ring inside servers, the library's inter-server default across them.
    Hierarchical,
}

impl AlgorithmChoice {
    /// Every value, in the order help texts list them.
    pub const ALL: [AlgorithmChoice; 5] = [
        AlgorithmChoice::Auto,
        AlgorithmChoice::Ring,
        AlgorithmChoice::Tree,
        AlgorithmChoice::HalvingDoubling,
        AlgorithmChoice::Hierarchical,
    ];

    /// The name in TOML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmChoice::Auto => "auto",
            AlgorithmChoice::Ring => "ring",
            AlgorithmChoice::Tree => "tree",
            AlgorithmChoice::HalvingDoubling => "halving-doubling",
            AlgorithmChoice::Hierarchical => "hierarchical",
        }
    }
}

impl fmt::Display for AlgorithmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AlgorithmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let s = match s.as_str() {
            "double-binary-tree" | "double_binary_tree" => "tree",
            "halving_doubling" | "hd" => "halving-doubling",
            other => other,
        };
        AlgorithmChoice::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown collective algorithm {s:?}; use one of {}",
                    AlgorithmChoice::ALL.map(AlgorithmChoice::name).join(", ")
                )
            })
    }
}

/// The groups a `[collectives]` table has a key for. The clipping norms use the key of the
/// axis they sum over; the tied embedding's pair lies on the pipeline axis (`pp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveGroup {
    /// Tensor-parallel group.
    Tp,
    /// Data-parallel group (gradient reduction).
    Dp,
    /// Data-parallel group, optimizer sharding's weight gathers.
    Opt,
    /// Pipeline axis (tied embedding, norms over the stages).
    Pp,
    /// Context-parallel group: the all-gather variant's K/V exchange (the ring variant is
    /// always Megatron-core's neighbour ring).
    Cp,
}

impl CollectiveGroup {
    /// Every key.
    pub const ALL: [CollectiveGroup; 5] = [
        CollectiveGroup::Tp,
        CollectiveGroup::Dp,
        CollectiveGroup::Opt,
        CollectiveGroup::Pp,
        CollectiveGroup::Cp,
    ];

    /// The key's name.
    pub fn name(self) -> &'static str {
        match self {
            CollectiveGroup::Tp => "tp",
            CollectiveGroup::Dp => "dp",
            CollectiveGroup::Opt => "opt",
            CollectiveGroup::Pp => "pp",
            CollectiveGroup::Cp => "cp",
        }
    }
}

impl FromStr for CollectiveGroup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CollectiveGroup::ALL
            .into_iter()
            .find(|g| g.name() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown collective group {s:?}; use one of {}",
                    CollectiveGroup::ALL.map(CollectiveGroup::name).join(", ")
                )
            })
    }
}

/// The algorithm choice of every group (a resolved strategy's `[collectives]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collectives {
    /// Tensor-parallel collectives.
    #[serde(default)]
    pub tp: AlgorithmChoice,
    /// Gradient reductions over the data-parallel group.
    #[serde(default)]
    pub dp: AlgorithmChoice,
    /// Optimizer sharding's weight all-gathers.
    #[serde(default)]
    pub opt: AlgorithmChoice,
    /// Collectives along the pipeline axis.
    #[serde(default)]
    pub pp: AlgorithmChoice,
    /// The all-gather K/V exchange of context parallelism.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub cp: AlgorithmChoice,
}

fn is_auto(a: &AlgorithmChoice) -> bool {
    *a == AlgorithmChoice::Auto
}

impl Collectives {
    /// The choice for a group.
    pub fn get(&self, g: CollectiveGroup) -> AlgorithmChoice {
        match g {
            CollectiveGroup::Tp => self.tp,
            CollectiveGroup::Dp => self.dp,
            CollectiveGroup::Opt => self.opt,
            CollectiveGroup::Pp => self.pp,
            CollectiveGroup::Cp => self.cp,
        }
    }

    /// Sets the choice for a group.
    pub fn set(&mut self, g: CollectiveGroup, a: AlgorithmChoice) {
        match g {
            CollectiveGroup::Tp => self.tp = a,
            CollectiveGroup::Dp => self.dp = a,
            CollectiveGroup::Opt => self.opt = a,
            CollectiveGroup::Pp => self.pp = a,
            CollectiveGroup::Cp => self.cp = a,
        }
    }

    /// Whether every group is `auto`.
    pub fn is_auto(&self) -> bool {
        *self == Collectives::default()
    }

    /// `tp=ring dp=auto ...` for the non-`auto` groups.
    pub fn summary(&self) -> String {
        CollectiveGroup::ALL
            .into_iter()
            .filter(|&g| self.get(g) != AlgorithmChoice::Auto)
            .map(|g| format!("{}={}", g.name(), self.get(g)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A `[collectives]` table as written: every key optional (a later layer overrides only the
/// keys it sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectivesSpec {
    /// `tp` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<AlgorithmChoice>,
    /// `dp` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<AlgorithmChoice>,
    /// `opt` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opt: Option<AlgorithmChoice>,
    /// `pp` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pp: Option<AlgorithmChoice>,
    /// `cp` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cp: Option<AlgorithmChoice>,
}

impl CollectivesSpec {
    /// `self` with the keys `over` sets replaced.
    pub fn overlay(&self, over: &CollectivesSpec) -> CollectivesSpec {
        CollectivesSpec {
            tp: over.tp.or(self.tp),
            dp: over.dp.or(self.dp),
            opt: over.opt.or(self.opt),
            pp: over.pp.or(self.pp),
            cp: over.cp.or(self.cp),
        }
    }

    /// Unset keys are `auto`.
    pub fn resolve(&self) -> Collectives {
        Collectives {
            tp: self.tp.unwrap_or_default(),
            dp: self.dp.unwrap_or_default(),
            opt: self.opt.unwrap_or_default(),
            pp: self.pp.unwrap_or_default(),
            cp: self.cp.unwrap_or_default(),
        }
    }

    /// Every key set.
    pub fn from_resolved(c: &Collectives) -> CollectivesSpec {
        CollectivesSpec {
            tp: Some(c.tp),
            dp: Some(c.dp),
            opt: Some(c.opt),
            pp: Some(c.pp),
            cp: Some(c.cp),
        }
    }

    /// Reads `--collective` values: `KIND=ALGO` sets one group, a bare `ALGO` every group;
    /// later values win. The error names the value and what would work.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<CollectivesSpec, String> {
        let mut out = CollectivesSpec::default();
        for f in flags {
            let f = f.as_ref();
            match f.split_once('=') {
                Some((g, a)) => {
                    let g: CollectiveGroup =
                        g.parse().map_err(|e| format!("--collective {f}: {e}"))?;
                    let a: AlgorithmChoice =
                        a.parse().map_err(|e| format!("--collective {f}: {e}"))?;
                    match g {
                        CollectiveGroup::Tp => out.tp = Some(a),
                        CollectiveGroup::Dp => out.dp = Some(a),
                        CollectiveGroup::Opt => out.opt = Some(a),
                        CollectiveGroup::Pp => out.pp = Some(a),
                        CollectiveGroup::Cp => out.cp = Some(a),
                    }
                }
                None => {
                    let a: AlgorithmChoice =
                        f.parse().map_err(|e| format!("--collective {f}: {e}"))?;
                    out = CollectivesSpec {
                        tp: Some(a),
                        dp: Some(a),
                        opt: Some(a),
                        pp: Some(a),
                        cp: Some(a),
                    };
                }
            }
        }
        Ok(out)
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        *self == CollectivesSpec::default()
    }
}

/// The algorithm a group of `servers` servers with `per_server` members each runs, given the
/// strategy's choice: `auto` is the vendor default ([`default_algorithm`]); `hierarchical`
/// takes the vendor's inter-server algorithm.
pub fn choose(
    lib: CollectiveLibrary,
    choice: AlgorithmChoice,
    servers: u32,
    per_server: u32,
) -> CollectiveAlgorithm {
    match choice {
        AlgorithmChoice::Auto => default_algorithm(lib, servers, per_server),
        AlgorithmChoice::Ring => CollectiveAlgorithm::Ring,
        AlgorithmChoice::Tree => CollectiveAlgorithm::DoubleBinaryTree,
        AlgorithmChoice::HalvingDoubling => CollectiveAlgorithm::HalvingDoubling,
        AlgorithmChoice::Hierarchical => CollectiveAlgorithm::Hierarchical {
            inter: inter_default(lib, servers),
        },
    }
}

/// The vendor's algorithm across `servers` servers.
fn inter_default(lib: CollectiveLibrary, servers: u32) -> InterServer {
    match lib {
        CollectiveLibrary::Hccl if servers.is_power_of_two() => InterServer::HalvingDoubling,
        _ => InterServer::Ring,
    }
}

/// Servers and members per server of a group whose member `i` sits on server `servers[i]`.
pub fn placement_shape(servers: &[u32]) -> (u32, u32) {
    let mut ids = servers.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let n = ids.len().max(1) as u32;
    (n, servers.len() as u32 / n)
}

/// Which logical group a communication runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// Tensor (op-level) parallel group.
    Tp,
    /// Data-parallel group (gradient reduction).
    Dp,
    /// Pipeline neighbours (point-to-point).
    Pp,
    /// Data-parallel group, for optimizer sharding's weight all-gathers.
    Opt,
    /// First and last stage, for the tied embedding's gradient.
    Embedding,
    /// Groups of the global-norm gradient clipping (tp, then pp, and dp when gradients are
    /// sharded).
    Clip,
    /// Context-parallel group: the K/V exchange of attention.
    Cp,
}

impl GroupKind {
    /// Name as in reports.
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::Tp => "tp",
            GroupKind::Dp => "dp",
            GroupKind::Pp => "pp",
            GroupKind::Opt => "opt",
            GroupKind::Embedding => "embedding",
            GroupKind::Clip => "clip",
            GroupKind::Cp => "cp",
        }
    }
}

/// One kind of communication a device performs in a step: what, in which group, how often,
/// how big, and the algorithm the library would use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommVolume {
    /// Group kind.
    pub group: GroupKind,
    /// Collective, or `None` for point-to-point sends.
    pub collective: Option<CollectiveKind>,
    /// What it is for.
    pub purpose: &'static str,
    /// Ranks in the group (2 for point-to-point).
    pub group_size: u32,
    /// Bytes of one call (the full buffer for all-reduce; gathered size for all-gather).
    pub bytes_per_call: Bytes,
    /// Calls per step on the busiest device.
    pub calls_per_step: u64,
    /// Algorithm by the vendor library's default.
    pub algorithm: Option<CollectiveAlgorithm>,
    /// Highest topology level the group spans.
    pub span: Level,
}

impl CommVolume {
    /// Message bytes per step: `bytes_per_call × calls_per_step`.
    pub fn bytes_per_step(&self) -> Bytes {
        Bytes(self.bytes_per_call.0 * self.calls_per_step)
    }

    /// Bytes each device sends per step under a bandwidth-optimal algorithm: `2(n-1)/n` of the
    /// buffer for an all-reduce, `(n-1)/n` for all-gather and reduce-scatter, the message for
    /// a send (Patarasuk & Yuan 2009; Chan et al. 2007 lower bounds).
    pub fn wire_bytes_per_step(&self) -> Bytes {
        let n = f64::from(self.group_size.max(1));
        let f = match self.collective {
            None => 1.0,
            Some(CollectiveKind::AllReduce) => 2.0 * (n - 1.0) / n,
            Some(
                CollectiveKind::AllGather
                | CollectiveKind::ReduceScatter
                | CollectiveKind::Broadcast,
            ) => (n - 1.0) / n,
        };
        Bytes::from_f64_ceil(self.bytes_per_step().as_f64() * f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_defaults() {
        use CollectiveAlgorithm as A;
        assert_eq!(default_algorithm(CollectiveLibrary::Hccl, 1, 8), A::Ring);
        assert_eq!(
            default_algorithm(CollectiveLibrary::Hccl, 16, 1),
            A::HalvingDoubling
        );
        assert_eq!(default_algorithm(CollectiveLibrary::Hccl, 12, 1), A::Ring);
        assert_eq!(
            default_algorithm(CollectiveLibrary::Hccl, 16, 8),
            A::Hierarchical {
                inter: InterServer::HalvingDoubling
            }
        );
        assert_eq!(
            default_algorithm(CollectiveLibrary::Nccl, 16, 8),
            A::Hierarchical {
                inter: InterServer::Ring
            }
        );
    }

    #[test]
    fn wire_bytes_follow_the_lower_bounds() {
        let v = CommVolume {
            group: GroupKind::Dp,
            collective: Some(CollectiveKind::AllReduce),
            purpose: "x",
            group_size: 4,
            bytes_per_call: Bytes(1000),
            calls_per_step: 2,
            algorithm: None,
            span: Level::Rack,
        };
        assert_eq!(v.wire_bytes_per_step(), Bytes(3000));
    }
}
