//! Collective algorithms and the communication a plan performs, shared by simulator and executor.

use pangu_hardware::{Bytes, CollectiveLibrary, Level};
pub use pangu_model::ops::CollectiveKind;
use serde::Serialize;

/// How a collective is carried out (the simulator prices it, the executor runs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveAlgorithm {
    /// Ring: reduce-scatter then all-gather around a ring; 2(n-1) steps of 1/n of the data.
    Ring,
    /// Two complementary binary trees, each carrying half the data (NCCL's tree).
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
    let inter = match lib {
        CollectiveLibrary::Hccl if servers.is_power_of_two() => InterServer::HalvingDoubling,
        _ => InterServer::Ring,
    };
    match (chips_per_server > 1, inter) {
        (true, inter) => CollectiveAlgorithm::Hierarchical { inter },
        (false, InterServer::HalvingDoubling) => CollectiveAlgorithm::HalvingDoubling,
        (false, InterServer::DoubleBinaryTree) => CollectiveAlgorithm::DoubleBinaryTree,
        (false, InterServer::Ring) => CollectiveAlgorithm::Ring,
    }
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
