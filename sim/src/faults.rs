//! Faults of one step: slow devices (stragglers) and degraded or failed links.
//!
//! A straggler's compute tasks take `1 / speed` times as long (thermal throttling, a slow
//! HBM stack, a noisy neighbour); the devices that wait for it show the difference as
//! `tp_comm`, `dp_comm`, `bubble` or `idle`, whichever they were waiting for. A degraded link
//! keeps a fraction of its bandwidth; a failed link carries nothing, and the messages that
//! used it take the shortest path through links in service
//! ([`pangu_hardware::Topology::route`]) — or the simulation stops with an error naming the
//! link when the topology has none. Faults break the symmetry folding relies on, so a faulty
//! step simulates every device.
//!
//! File format (TOML):
//!
//! ```toml
//! [[straggler]]
//! device = 17          # rank
//! speed = 0.8          # fraction of nominal compute speed, in (0, 1]
//!
//! [[link]]
//! from = "nic:3:0"     # chip:C, nic:SERVER:I, tor:RACK, spine, island-switch:S:I, server-switch:S
//! to = "tor:0"
//! bandwidth_factor = 0.25   # degraded to a quarter; or `failed = true`
//! both_directions = true    # default
//! ```

use pangu_hardware::{LinkId, Node};
use pangu_strategies::Plan;
use serde::{Deserialize, Serialize};

use crate::workload::{Work, Workload};
use crate::SimError;

/// A slow device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Straggler {
    /// Rank.
    pub device: u32,
    /// Fraction of nominal compute speed, in (0, 1].
    pub speed: f64,
}

/// A degraded or failed link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFault {
    /// Source vertex (see the module docs for the syntax).
    pub from: String,
    /// Destination vertex.
    pub to: String,
    /// Remaining fraction of bandwidth, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_factor: Option<f64>,
    /// Out of service.
    #[serde(default)]
    pub failed: bool,
    /// Both directions of the cable (default true).
    #[serde(default = "yes")]
    pub both_directions: bool,
}

fn yes() -> bool {
    true
}

/// The faults of a simulated step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Slow devices.
    #[serde(default, rename = "straggler")]
    pub stragglers: Vec<Straggler>,
    /// Degraded or failed links.
    #[serde(default, rename = "link")]
    pub links: Vec<LinkFault>,
}

impl Faults {
    /// Parses a faults file; errors name the entry and the field.
    pub fn from_toml(text: &str, source: &str) -> Result<Faults, SimError> {
        toml::from_str(text).map_err(|e| SimError::Input(format!("{source}: {e}")))
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.stragglers.is_empty() && self.links.is_empty()
    }

    /// Checks the values against `plan`; errors name the entry, the field and what fits.
    pub fn validate(&self, plan: &Plan) -> Result<(), SimError> {
        let n = plan.strategy.devices;
        for (i, s) in self.stragglers.iter().enumerate() {
            if s.device >= n {
                return Err(SimError::Input(format!(
                    "straggler[{i}].device = {}: the job has ranks 0..{}",
                    s.device,
                    n.saturating_sub(1)
                )));
            }
            if !(s.speed > 0.0 && s.speed <= 1.0) {
                return Err(SimError::Input(format!(
                    "straggler[{i}].speed = {}: give a fraction of nominal speed in (0, 1]",
                    s.speed
                )));
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            self.link_ids(plan, i, l)?;
            match (l.bandwidth_factor, l.failed) {
                (Some(_), true) => {
                    return Err(SimError::Input(format!(
                        "link[{i}]: give bandwidth_factor (degraded) or failed = true, not both"
                    )))
                }
                (None, false) => {
                    return Err(SimError::Input(format!(
                        "link[{i}]: give bandwidth_factor in (0, 1] (degraded) or failed = true"
                    )))
                }
                (Some(f), false) if !(f > 0.0 && f <= 1.0) => {
                    return Err(SimError::Input(format!(
                        "link[{i}].bandwidth_factor = {f}: give a fraction in (0, 1] (use failed = true for 0)"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn link_ids(&self, plan: &Plan, i: usize, l: &LinkFault) -> Result<Vec<LinkId>, SimError> {
        let node = |field: &str, text: &str| -> Result<Node, SimError> {
            text.parse()
                .map_err(|e| SimError::Input(format!("link[{i}].{field}: {e}")))
        };
        let (a, b) = (node("from", &l.from)?, node("to", &l.to)?);
        let topo = &plan.cluster.topology;
        let one = |x: Node, y: Node| {
            topo.link_between(x, y).ok_or_else(|| {
                SimError::Input(format!(
                    "link[{i}]: the {} cluster has no link {x} -> {y} (links join chips to their island switch or island peers, chips to their NIC, NICs to their rack's tor, tors to the spine)",
                    plan.cluster.spec.name
                ))
            })
        };
        let mut ids = vec![one(a, b)?];
        if l.both_directions {
            ids.push(one(b, a)?);
        }
        Ok(ids)
    }

    /// `plan` on the faulty network: degraded links lose bandwidth, failed ones are avoided.
    pub fn apply_links(&self, plan: &Plan) -> Result<Plan, SimError> {
        self.validate(plan)?;
        let mut p = plan.clone();
        for (i, l) in self.links.iter().enumerate() {
            for id in self.link_ids(plan, i, l)? {
                if l.failed {
                    p.cluster.topology.fail(id);
                } else if let Some(f) = l.bandwidth_factor {
                    p.cluster.topology.degrade(id, f);
                }
            }
        }
        Ok(p)
    }

    /// Stretches the stragglers' compute tasks.
    pub fn apply_stragglers(&self, w: &mut Workload) {
        for s in &self.stragglers {
            for t in w.tasks.iter_mut().filter(|t| t.device == s.device) {
                if let Work::Compute { ns, .. } = &mut t.work {
                    *ns = (*ns as f64 / s.speed).round() as crate::engine::Time;
                }
            }
        }
    }
}
