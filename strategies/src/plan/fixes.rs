//! What would make a plan fit: switches to turn off, single changes, the out-of-memory error.

use pangu_hardware::Bytes;

use super::Plan;
use crate::strategy::{Attention, OptShard, Remat, Strategy};
use crate::PlanError;

impl Plan {
    /// What this plan would need with optimizer sharding off, and with remat off: the
    /// (switch, flag, max bytes per device) of each switch that is on.
    pub fn switches_off(&self) -> Vec<(String, String, Bytes)> {
        let s = &self.strategy;
        let variants = [
            (
                s.opt_shard != OptShard::None,
                "optimizer sharding off",
                "--opt-shard none",
                Strategy {
                    opt_shard: OptShard::None,
                    ..s.clone()
                },
            ),
            (
                s.remat != Remat::None,
                "remat off",
                "--remat none",
                Strategy {
                    remat: Remat::None,
                    ..s.clone()
                },
            ),
        ];
        variants
            .into_iter()
            .filter(|(on, ..)| *on)
            .filter_map(|(_, name, flag, v)| {
                self.with_strategy(&v)
                    .ok()
                    .map(|p| (name.to_string(), flag.to_string(), p.max_memory().total))
            })
            .collect()
    }

    /// Single changes that would make a plan fit, with the memory each gives.
    pub fn fixes(&self) -> Vec<(String, Bytes)> {
        let s = &self.strategy;
        let mut cands: Vec<(String, Strategy)> = Vec::new();
        if !matches!(s.remat, Remat::Full) {
            cands.push((
                "--remat full".into(),
                Strategy {
                    remat: Remat::Full,
                    ..s.clone()
                },
            ));
        }
        // With a fused attention kernel there is nothing for selective recompute to drop.
        if s.remat == Remat::None && s.attention == Attention::Materialised {
            cands.push((
                "--remat selective".into(),
                Strategy {
                    remat: Remat::Selective,
                    ..s.clone()
                },
            ));
        }
        // Only where the chip's stack has the fused kernel (a what-if elsewhere, not a fix).
        if s.attention == Attention::Materialised && self.cluster.spec.chip.fused_attention {
            cands.push((
                "--attention flash".into(),
                Strategy {
                    attention: Attention::Flash,
                    ..s.clone()
                },
            ));
        }
        for o in [OptShard::Mindspore, OptShard::Zero2, OptShard::Zero3] {
            if o > s.opt_shard && s.dp > 1 {
                cands.push((
                    format!("--opt-shard {o}"),
                    Strategy {
                        opt_shard: o,
                        ..s.clone()
                    },
                ));
            }
        }
        if !s.seq_parallel && s.tp > 1 {
            cands.push((
                "--seq-parallel".into(),
                Strategy {
                    seq_parallel: true,
                    ..s.clone()
                },
            ));
        }
        if s.dp.is_multiple_of(2) {
            let tp = s.tp * 2;
            cands.push((
                format!("--tp {tp}"),
                Strategy {
                    tp,
                    dp: s.dp / 2,
                    micro_batches: s.micro_batches * 2,
                    layers_per_stage: None,
                    ..s.clone()
                },
            ));
            let pp = s.pp * 2;
            cands.push((
                format!("--pp {pp}"),
                Strategy {
                    pp,
                    dp: s.dp / 2,
                    micro_batches: s.micro_batches * 2,
                    layers_per_stage: None,
                    ..s.clone()
                },
            ));
        }
        if s.micro_batch_size > 1 && s.micro_batch_size.is_multiple_of(2) {
            let b = s.micro_batch_size / 2;
            cands.push((
                format!("--micro-batch-size {b}"),
                Strategy {
                    micro_batch_size: b,
                    micro_batches: s.micro_batches * 2,
                    ..s.clone()
                },
            ));
        }
        cands
            .into_iter()
            .filter_map(|(flag, st)| {
                let p = self.with_strategy(&st).ok()?;
                p.fits().then(|| (flag, p.max_memory().total))
            })
            .collect()
    }

    pub(super) fn out_of_memory_error(&self) -> PlanError {
        let (stage, mem) = self
            .stages
            .iter()
            .map(|s| (s.index, s.memory))
            .max_by_key(|(_, m)| m.total.0)
            .unwrap_or((0, self.max_memory()));
        let fixes = self.fixes();
        let fix_text = if fixes.is_empty() {
            "no single switch makes it fit: add devices, or combine remat, optimizer sharding and more tp/pp".to_string()
        } else {
            format!(
                "it would fit with: {}",
                fixes
                    .iter()
                    .map(|(f, b)| format!("{f} ({b})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        PlanError::OutOfMemory {
            message: format!(
                "stage {stage} needs {} per device but {} is usable ({} HBM − {} reserved): weights {}, gradients {}, \
                 optimizer {}, activations {}, buffers {}{}; {fix_text}",
                mem.total,
                self.capacity,
                self.cluster.spec.chip.hbm,
                self.cluster.spec.chip.reserved,
                mem.weights,
                mem.gradients,
                mem.optimizer,
                mem.activations,
                mem.buffers,
                if mem.fp8_weights.0 > 0 {
                    format!(", fp8 weight copies {}", mem.fp8_weights)
                } else {
                    String::new()
                }
            ),
        }
    }
}
