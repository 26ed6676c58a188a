//! Chips, links, switches and cluster topologies, with presets as data.
//!
//! This crate describes the physical machine and nothing else: how fast a chip computes, how
//! much memory it has, which links join it to which switches, and how fast those are. Logical
//! groupings (tensor-, data- and pipeline-parallel groups) live in `pangu-strategies`.
//!
//! Main types:
//! - [`ClusterSpec`]: the shape of a cluster as a TOML file writes it (chip, server, islands,
//!   NICs, racks, spine). Presets are embedded TOML files ([`presets`]).
//! - [`Topology`]: the graph built from a spec: chips, switches and directed [`Link`]s, each in
//!   a named [`Level`] (island, server, rack, spine), with hierarchical routing.
//! - [`Cluster`]: a validated spec with its topology, as every other crate receives it.
//! - [`units`]: quantities as types ([`Bytes`], [`Seconds`], [`Bandwidth`], [`FlopRate`]).
//!
//! ```
//! let c = pangu_hardware::Cluster::from_name("ascend910:512").unwrap();
//! assert_eq!(c.chips(), 512);
//! // Chips 0 and 5 share a server but not an HCCS island.
//! assert_eq!(c.topology.level_between(0, 5), pangu_hardware::Level::Server);
//! ```

pub mod fxhash;
pub mod spec;
pub mod topology;
pub mod units;

pub use spec::{
    ChipSpec, ClusterSpec, CollectiveLibrary, CrossIsland, IslandKind, IslandSpec, LinkSpec,
    NetworkSpec, ServerSpec,
};
pub use topology::{Level, Link, LinkId, Node, Position, Topology};
pub use units::{Bandwidth, Bytes, FlopRate, Flops, Nanos, Seconds};

/// Errors from reading or checking a cluster description.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HardwareError {
    /// The name matches no preset.
    #[error("unknown cluster preset {name:?}; known presets: {known}")]
    UnknownPreset {
        /// What was asked for.
        name: String,
        /// Comma-separated list of presets.
        known: String,
    },
    /// `NAME:N` had a bad N.
    #[error("cannot read the chip count in {text:?}: {reason} (write NAME:N, e.g. ascend910:512)")]
    BadCount {
        /// The text given.
        text: String,
        /// Why.
        reason: String,
    },
    /// The TOML could not be parsed.
    #[error("cannot parse cluster file {source_name}: {message}")]
    Parse {
        /// File name or preset name.
        source_name: String,
        /// The parser's message, which names the field.
        message: String,
    },
    /// A value is out of range or the shape is inconsistent.
    #[error("cluster {cluster:?}: invalid {field}: {reason}")]
    Invalid {
        /// Cluster name.
        cluster: String,
        /// The offending field, as a TOML path.
        field: String,
        /// What is wrong and what would be valid.
        reason: String,
    },
    /// Two chips cannot reach each other.
    #[error("no route from chip {from} to chip {to}: {reason}")]
    NoRoute {
        /// Source chip.
        from: u32,
        /// Destination chip.
        to: u32,
        /// Why.
        reason: String,
    },
}

/// The embedded cluster presets: (name, TOML text).
pub fn presets() -> &'static [(&'static str, &'static str)] {
    &[
        ("ascend910", include_str!("../presets/ascend910.toml")),
        ("ascend910b", include_str!("../presets/ascend910b.toml")),
        (
            "cloudmatrix384",
            include_str!("../presets/cloudmatrix384.toml"),
        ),
        ("dgx-a100-40g", include_str!("../presets/dgx-a100-40g.toml")),
        ("dgx-a100-80g", include_str!("../presets/dgx-a100-80g.toml")),
        ("dgx-h100", include_str!("../presets/dgx-h100.toml")),
        ("dgx-h200", include_str!("../presets/dgx-h200.toml")),
        ("dgx-b200", include_str!("../presets/dgx-b200.toml")),
        ("gb200-nvl72", include_str!("../presets/gb200-nvl72.toml")),
        ("dgx2-v100", include_str!("../presets/dgx2-v100.toml")),
        ("cpu-host", include_str!("../presets/cpu-host.toml")),
    ]
}

/// Aliases accepted for preset names.
const ALIASES: &[(&str, &str)] = &[("dgx-a100", "dgx-a100-80g"), ("ascend", "ascend910")];

/// The TOML text of a preset, by name or alias.
pub fn preset_toml(name: &str) -> Result<&'static str, HardwareError> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(name, |(_, n)| n);
    presets()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| HardwareError::UnknownPreset {
            name: name.to_string(),
            known: presets()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl ClusterSpec {
    /// Parses a cluster TOML; `source_name` appears in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<ClusterSpec, HardwareError> {
        let spec: ClusterSpec = toml::from_str(text).map_err(|e| HardwareError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }
}

/// A validated cluster: its description and its graph.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The description.
    pub spec: ClusterSpec,
    /// The graph.
    pub topology: Topology,
}

impl Cluster {
    /// Builds a cluster from a spec.
    pub fn new(spec: ClusterSpec) -> Result<Cluster, HardwareError> {
        let topology = Topology::build(&spec)?;
        Ok(Cluster { spec, topology })
    }

    /// `NAME` or `NAME:N` (N chips, not servers), with NAME a preset.
    pub fn from_name(text: &str) -> Result<Cluster, HardwareError> {
        let (name, count) = split_count(text)?;
        let mut spec = ClusterSpec::from_toml(preset_toml(name)?, name)?;
        if let Some(n) = count {
            spec.chips = n;
        }
        Cluster::new(spec)
    }

    /// A user TOML file's text, with an optional chip-count override.
    pub fn from_toml(
        text: &str,
        source_name: &str,
        chips: Option<u32>,
    ) -> Result<Cluster, HardwareError> {
        let mut spec = ClusterSpec::from_toml(text, source_name)?;
        if let Some(n) = chips {
            spec.chips = n;
        }
        Cluster::new(spec)
    }

    /// Number of chips.
    pub fn chips(&self) -> u32 {
        self.spec.chips
    }
}

/// Splits `NAME:N` into the name and the count.
pub fn split_count(text: &str) -> Result<(&str, Option<u32>), HardwareError> {
    match text.rsplit_once(':') {
        None => Ok((text, None)),
        Some((name, n)) => {
            let count: u32 = n.trim().parse().map_err(|_| HardwareError::BadCount {
                text: text.to_string(),
                reason: format!("{n:?} is not a whole number"),
            })?;
            if count == 0 {
                return Err(HardwareError::BadCount {
                    text: text.to_string(),
                    reason: "a cluster needs at least one chip".into(),
                });
            }
            Ok((name, Some(count)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_builds() {
        for (name, _) in presets() {
            let c = Cluster::from_name(name).unwrap();
            assert!(c.chips() > 0);
            // Every chip reaches every other chip of a sample.
            for b in [1, c.chips() / 2, c.chips() - 1] {
                assert!(c.topology.route(0, b).is_ok(), "{name}: 0 -> {b}");
            }
        }
    }

    #[test]
    fn ascend_levels_follow_the_hierarchy() {
        let c = Cluster::from_name("ascend910").unwrap();
        let t = &c.topology;
        assert_eq!(c.chips(), 2048);
        assert_eq!(t.level_between(0, 3), Level::Island);
        assert_eq!(t.level_between(0, 4), Level::Server);
        assert_eq!(t.level_between(0, 8), Level::Rack);
        assert_eq!(t.level_between(0, 127), Level::Rack);
        assert_eq!(t.level_between(0, 128), Level::Spine);
        // HCCS: one direct hop at 30 GB/s.
        let r = t.route(1, 2).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(t.links()[r[0] as usize].bandwidth, Bandwidth(30e9));
        // Cross-island goes through the server's switch; cross-rack through the spine.
        assert_eq!(t.route(0, 4).unwrap().len(), 2);
        let r = t.route(0, 200).unwrap();
        assert_eq!(r.len(), 6);
        let (bw, lat) = t.path_summary(0, 200).unwrap();
        assert_eq!(bw, Bandwidth(12.5e9));
        assert!(lat.0 > 0.0);
    }

    #[test]
    fn spine_capacity_follows_oversubscription() {
        let mut spec = ClusterSpec::from_toml(preset_toml("ascend910").unwrap(), "x").unwrap();
        spec.network.spine_oversubscription = 4.0;
        let c = Cluster::new(spec).unwrap();
        let up = c
            .topology
            .links()
            .iter()
            .find(|l| l.to == Node::Spine)
            .unwrap();
        // 16 servers x 8 NICs x 12.5 GB/s / 4
        assert!((up.bandwidth.0 - 16.0 * 8.0 * 12.5e9 / 4.0).abs() < 1.0);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let e = Cluster::from_name("tpu-v9").unwrap_err().to_string();
        assert!(e.contains("ascend910"), "{e}");
        let e = Cluster::from_name("ascend910:12").unwrap_err().to_string();
        assert!(e.contains("chips") && e.contains("16"), "{e}");
        let e = Cluster::from_name("ascend910:x").unwrap_err().to_string();
        assert!(e.contains("whole number"), "{e}");
        let text = preset_toml("ascend910")
            .unwrap()
            .replace("\"30 GB/s\"", "0");
        let e = Cluster::from_toml(&text, "f.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.island.bandwidth"), "{e}");
        let text = preset_toml("ascend910")
            .unwrap()
            .replace("nics_per_server = 8", "nics_per_server = 0");
        let e = Cluster::from_toml(&text, "f.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("disconnected"), "{e}");
        let text = preset_toml("ascend910")
            .unwrap()
            .replace("chips = 2048", "chips = 2048\nbogus = 1");
        let e = Cluster::from_toml(&text, "f.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn small_partial_server_is_one_island() {
        let c = Cluster::from_name("ascend910:4").unwrap();
        assert_eq!(c.topology.span(&[0, 1, 2, 3]), Level::Island);
        assert!(Cluster::from_name("ascend910:3").is_err());
    }
}
