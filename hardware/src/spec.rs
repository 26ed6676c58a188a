//! The cluster description as users write it (TOML), and its validation.
//!
//! A cluster is described by its shape, not by listing every chip: a chip type, a server of
//! `chips_per_server` chips split into `islands` groups of directly connected chips, a path
//! between the islands of one server, NICs that connect servers to a top-of-rack switch, racks
//! of `servers_per_rack` servers, and a spine joining the racks with an oversubscription ratio.
//! [`crate::Topology::build`] turns this into a graph of chips, switches and directed links.

use serde::{Deserialize, Serialize};

use crate::units::{Bandwidth, Bytes, FlopRate, Seconds};
use crate::HardwareError;

/// One accelerator chip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChipSpec {
    /// Marketing name, e.g. "Ascend 910".
    pub name: String,
    /// Dense fp16 matrix peak.
    pub fp16: FlopRate,
    /// Dense bf16 matrix peak; absent when the chip has no bf16 matrix unit.
    #[serde(default)]
    pub bf16: Option<FlopRate>,
    /// fp32 peak (matrix unit where one exists, else vector).
    #[serde(default)]
    pub fp32: Option<FlopRate>,
    /// Dense fp8 matrix peak (E4M3/E5M2 operands, as NVIDIA's Transformer Engine uses them),
    /// without 2:4 structured sparsity: datasheets often print the sparse figure, twice this.
    /// `None` when the chip has no fp8 matrix format usable for training: A100, V100, and the
    /// Ascend 910, 910B and 910C (their cube units take fp16, bf16 from the 910B on, hf32/fp32
    /// and int8; Huawei's fp8 formats start with the Ascend 950). The presets cite each value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8: Option<FlopRate>,
    /// HBM capacity.
    pub hbm: Bytes,
    /// HBM bandwidth.
    pub hbm_bandwidth: Bandwidth,
    /// Memory the runtime keeps for itself (context, workspace); not available to a job.
    #[serde(default)]
    pub reserved: Bytes,
    /// Whether the chip's usual training stack computes attention with a fused kernel that
    /// keeps no s×s matrix (FlashAttention, Dao et al. 2022/2023, and its vendor forms): the
    /// default of the strategy's `attention` key (`flash` when true, `materialised` when
    /// false or absent). True for NVIDIA Ampere and later (FlashAttention-2 needs sm80+; it
    /// has been the default of Megatron-core, NeMo, llm-foundry and torchtitan since 2023)
    /// and the Ascend 910B/910C (CANN's FlashAttentionScore fused op, which MindSpeed uses);
    /// false for the V100 (sm70: no FlashAttention build), the Ascend 910 as PanGu-α ran it
    /// (MindSpore 2021 had no fused attention kernel) and the CPU executor. The presets cite
    /// each value.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fused_attention: bool,
    /// The units a matrix product's output tiles are spread over: streaming multiprocessors on
    /// NVIDIA GPUs, AI (cube) cores on Ascend. With a calibration that gives the library's tile
    /// sizes, the simulator prices a GEMM by its tiles and waves over these units (tile and
    /// wave quantisation); absent, by a smooth efficiency curve. The presets cite each value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_units: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ChipSpec {
    /// The memory a job can use: HBM minus what the runtime reserves.
    pub fn usable_memory(&self) -> Bytes {
        self.hbm.saturating_sub(self.reserved)
    }
}

/// A point-to-point link: bandwidth per direction and one-way latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Bandwidth in each direction.
    pub bandwidth: Bandwidth,
    /// One-way latency added per traversal.
    pub latency: Seconds,
}

/// How chips inside one island talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IslandKind {
    /// A direct link between every pair of chips (Ascend HCCS islands of 4).
    FullMesh,
    /// Every chip has one port into a non-blocking switch (NVSwitch).
    Switch,
}

/// The chips of an island and how they connect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IslandSpec {
    /// Full mesh or switch.
    pub kind: IslandKind,
    /// For `full-mesh`, each pairwise link; for `switch`, each chip's port.
    #[serde(flatten)]
    pub link: LinkSpec,
}

/// How traffic crosses between two islands of one server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CrossIsland {
    /// Through a shared switch inside the server (e.g. PCIe); each chip has a port of this speed.
    Switch {
        /// Each chip's port into the switch, each direction.
        bandwidth: Bandwidth,
        /// One-way latency of a hop.
        latency: Seconds,
    },
    /// Out through the NICs and back in through the top-of-rack switch.
    Network,
}

/// A server (node): chips, islands and the path between islands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    /// Chips per server.
    pub chips: u32,
    /// Number of islands the chips split into (1 when all chips share one fabric).
    #[serde(default = "one")]
    pub islands: u32,
    /// Links inside an island.
    pub island: IslandSpec,
    /// Path between islands; required when `islands > 1`.
    #[serde(default)]
    pub cross_island: Option<CrossIsland>,
    /// Set when the server's chips are virtual devices sharing one host's cores (a CPU
    /// machine running one executor rank per device): how many cores' worth of throughput
    /// they share. Each chip's rates are then one core's, and concurrent compute divides the
    /// cores equally, as Linux's scheduler time-slices runnable threads (processor sharing:
    /// `k` busy devices each run at `min(1, shared_cores / k)` of a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_cores: Option<f64>,
}

fn one() -> u32 {
    1
}

/// The scale-out network: NICs, top-of-rack switches and a spine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// NICs per server; chip `i` of a server uses NIC `i * nics / chips`.
    pub nics_per_server: u32,
    /// Each NIC's port to its top-of-rack switch.
    pub nic: LinkSpec,
    /// The link from a chip to its NIC (PCIe or on-chip).
    pub host_link: LinkSpec,
    /// Servers under one top-of-rack (leaf) switch.
    pub servers_per_rack: u32,
    /// Downlink over uplink capacity of a top-of-rack switch (1.0 = non-blocking).
    pub spine_oversubscription: f64,
    /// Latency of one hop between a top-of-rack switch and the spine.
    pub spine_latency: Seconds,
}

/// A whole cluster, as a preset file or a user's TOML describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Preset or user name.
    pub name: String,
    /// One line for listings.
    #[serde(default)]
    pub description: String,
    /// Total chips (GPUs/NPUs), not servers.
    pub chips: u32,
    /// The accelerator.
    pub chip: ChipSpec,
    /// The server shape.
    pub server: ServerSpec,
    /// The scale-out network.
    pub network: NetworkSpec,
    /// Collective library family used by default ("hccl" or "nccl").
    #[serde(default = "default_library")]
    pub collective_library: CollectiveLibrary,
}

fn default_library() -> CollectiveLibrary {
    CollectiveLibrary::Nccl
}

/// Which vendor library's algorithm choices a cluster follows by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectiveLibrary {
    /// Huawei HCCL (Ascend).
    Hccl,
    /// NVIDIA NCCL.
    Nccl,
}

impl ClusterSpec {
    /// Chips per island.
    pub fn island_size(&self) -> u32 {
        self.server.chips / self.server.islands.max(1)
    }

    /// Number of servers (the last may be partly used when `chips < chips_per_server`).
    pub fn servers(&self) -> u32 {
        self.chips.div_ceil(self.server.chips)
    }

    /// Checks every value and the shape; errors name the field and what would be valid.
    pub fn validate(&self) -> Result<(), HardwareError> {
        self.validate_shape()?;
        self.validate_chip_and_server()?;
        self.validate_network()
    }

    /// The error for `field`.
    fn bad(&self, field: &str, reason: String) -> Result<(), HardwareError> {
        Err(HardwareError::Invalid {
            cluster: self.name.clone(),
            field: field.into(),
            reason,
        })
    }

    /// Chip, server and island counts: bounded, and fitting together.
    fn validate_shape(&self) -> Result<(), HardwareError> {
        let bad = |field: &str, reason: String| self.bad(field, reason);
        if self.chips == 0 {
            return bad("chips", "a cluster needs at least one chip".into());
        }
        // Bounds that keep the topology graph in memory: four times the largest clusters
        // built so far (~100 k accelerators), and servers of at most 1024 chips.
        const MAX_CHIPS: u32 = 1 << 19;
        if self.chips > MAX_CHIPS {
            return bad(
                "chips",
                format!("{} is beyond this tool's bound of {MAX_CHIPS}", self.chips),
            );
        }
        for (field, v) in [
            ("server.chips", self.server.chips),
            ("server.islands", self.server.islands),
            ("network.nics_per_server", self.network.nics_per_server),
        ] {
            if v > 1024 {
                return bad(field, format!("{v} is beyond this tool's bound of 1024"));
            }
        }
        if self.server.island.kind == IslandKind::FullMesh && self.island_size() > 64 {
            return bad(
                "server.island.kind",
                format!(
                    "a full mesh of {} chips per island needs {} links per island; full meshes are built up to 64 chips (use kind = \"switch\")",
                    self.island_size(),
                    u64::from(self.island_size()) * u64::from(self.island_size() - 1)
                ),
            );
        }
        if self.server.chips == 0 {
            return bad("server.chips", "a server needs at least one chip".into());
        }
        if self.server.islands == 0 || !self.server.chips.is_multiple_of(self.server.islands) {
            return bad(
                "server.islands",
                format!(
                    "{} islands do not split {} chips evenly; use a divisor of {}",
                    self.server.islands, self.server.chips, self.server.chips
                ),
            );
        }
        if self.chips > self.server.chips && !self.chips.is_multiple_of(self.server.chips) {
            let lo = self.chips / self.server.chips * self.server.chips;
            let lo = lo.max(self.server.chips);
            let hi = lo.saturating_add(self.server.chips);
            return bad(
                "chips",
                format!(
                    "{} chips is not a whole number of {}-chip servers; use {} or {}",
                    self.chips, self.server.chips, lo, hi
                ),
            );
        }
        // A partial full-mesh server holds whole islands, or a part of one island whose size
        // divides it (Ascend: 1, 2, 4 or 8 chips per server, [CANN]).
        let isl = self.island_size();
        if self.chips < self.server.chips
            && self.server.island.kind == IslandKind::FullMesh
            && !self.chips.is_multiple_of(isl)
            && !isl.is_multiple_of(self.chips)
        {
            return bad(
                "chips",
                format!(
                    "a partial server must hold whole {isl}-chip islands or a divisor of {isl} chips, got {}",
                    self.chips
                ),
            );
        }
        Ok(())
    }

    /// The chip's rates and memory, the islands' links and the path between islands.
    fn validate_chip_and_server(&self) -> Result<(), HardwareError> {
        let bad = |field: &str, reason: String| self.bad(field, reason);
        if let Some(c) = self.server.shared_cores {
            if !(c.is_finite() && c > 0.0 && c <= 1e6) {
                return bad(
                    "server.shared_cores",
                    format!("{c} cores: give a positive number of cores (e.g. 2 or 1.6)"),
                );
            }
        }
        check_rate("chip.fp16", self.chip.fp16.0, self)?;
        // The optional rates, where given, obey the same rule as fp16.
        for (field, rate) in [
            ("chip.bf16", self.chip.bf16),
            ("chip.fp32", self.chip.fp32),
            ("chip.fp8", self.chip.fp8),
        ] {
            if let Some(r) = rate {
                check_rate(field, r.0, self)?;
            }
        }
        check_positive_bytes("chip.hbm", self.chip.hbm, self)?;
        if self.chip.compute_units == Some(0) {
            return bad(
                "chip.compute_units",
                "0 units: give the chip's SM or AI-core count (e.g. 108 for an A100), or leave it out"
                    .into(),
            );
        }
        if self.chip.reserved >= self.chip.hbm {
            return bad(
                "chip.reserved",
                "the runtime reservation leaves no memory".into(),
            );
        }
        check_link("server.island", &self.server.island.link, self)?;
        if self.server.islands > 1 {
            match &self.server.cross_island {
                None => {
                    return bad(
                        "server.cross_island",
                        "a server with several islands needs a cross-island path \
                         (via = \"switch\" with bandwidth and latency, or via = \"network\")"
                            .into(),
                    )
                }
                Some(CrossIsland::Switch { bandwidth, latency }) => check_link(
                    "server.cross_island",
                    &LinkSpec {
                        bandwidth: *bandwidth,
                        latency: *latency,
                    },
                    self,
                )?,
                Some(CrossIsland::Network) => {}
            }
        }
        Ok(())
    }

    /// NICs, links, racks and the spine, where servers (or islands) talk over the network.
    fn validate_network(&self) -> Result<(), HardwareError> {
        let bad = |field: &str, reason: String| self.bad(field, reason);
        let needs_network = self.servers() > 1
            || matches!(self.server.cross_island, Some(CrossIsland::Network))
                && self.server.islands > 1;
        if needs_network {
            if self.network.nics_per_server == 0 {
                return bad(
                    "network.nics_per_server",
                    format!(
                        "0 NICs leaves the {} servers disconnected; give each server at least one NIC",
                        self.servers()
                    ),
                );
            }
            check_link("network.nic", &self.network.nic, self)?;
            check_link("network.host_link", &self.network.host_link, self)?;
            if self.network.servers_per_rack == 0 {
                return bad(
                    "network.servers_per_rack",
                    "a rack needs at least one server".into(),
                );
            }
            let o = self.network.spine_oversubscription;
            if !(o.is_finite() && o >= 1.0) {
                return bad(
                    "network.spine_oversubscription",
                    format!("{o} is not a ratio >= 1 (1.0 means non-blocking)"),
                );
            }
        }
        if self.network.nics_per_server > self.server.chips {
            return bad(
                "network.nics_per_server",
                format!(
                    "{} NICs for {} chips: at most one NIC per chip is modelled",
                    self.network.nics_per_server, self.server.chips
                ),
            );
        }
        Ok(())
    }
}

fn check_rate(field: &str, v: f64, c: &ClusterSpec) -> Result<(), HardwareError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(HardwareError::Invalid {
            cluster: c.name.clone(),
            field: field.into(),
            reason: format!("{v} must be a positive, finite number"),
        })
    }
}

fn check_positive_bytes(field: &str, v: Bytes, c: &ClusterSpec) -> Result<(), HardwareError> {
    if v.0 > 0 {
        Ok(())
    } else {
        Err(HardwareError::Invalid {
            cluster: c.name.clone(),
            field: field.into(),
            reason: "must be more than 0 bytes".into(),
        })
    }
}

fn check_link(field: &str, l: &LinkSpec, c: &ClusterSpec) -> Result<(), HardwareError> {
    check_rate(&format!("{field}.bandwidth"), l.bandwidth.0, c)?;
    if !l.latency.0.is_finite() {
        return Err(HardwareError::Invalid {
            cluster: c.name.clone(),
            field: format!("{field}.latency"),
            reason: "must be finite".into(),
        });
    }
    Ok(())
}
