//! A rank's groups (tensor, context, data, pipeline, the tied table's pair) and the plan's
//! collective programs for each.

use pangu_strategies::collective::{CollectiveGroup, KvExchange};
use pangu_strategies::strategy::Axis;
use pangu_strategies::{Coords, Plan};

use crate::comm::GroupPrograms;
use crate::host;

/// One group of this rank: its members (world ranks) and the plan's programs for it.
pub(super) struct Members {
    pub(super) ranks: Vec<usize>,
    pub(super) programs: GroupPrograms,
}

impl Members {
    pub(super) fn new(plan: &Plan, key: CollectiveGroup, ranks: Vec<usize>) -> Members {
        let programs = host::programs(plan, key, &ranks);
        Members { ranks, programs }
    }

    pub(super) fn size(&self) -> usize {
        self.ranks.len()
    }
}

/// The context-parallel group of this rank and the plan's K/V exchange over it.
pub(super) struct CpMembers {
    pub(super) ranks: Vec<usize>,
    pub(super) exchange: KvExchange,
}

/// The groups of this rank.
pub(super) struct Groups {
    pub(super) tp: Members,
    pub(super) cp: CpMembers,
    /// The gradient-reduction group: dp·cp ranks (dp index major, cp index minor).
    pub(super) dp: Members,
    /// The data-parallel group with optimizer sharding's programs.
    pub(super) opt: Members,
    pub(super) pp: Members,
    /// First and last stage of this pipeline (the tied table's copies).
    pub(super) embedding: Members,
}

impl Groups {
    pub(super) fn new(plan: &Plan, rank: usize) -> Groups {
        let mesh = plan.mesh;
        let me = mesh.coords(rank as u32);
        let s = &plan.strategy;
        let cp = me.cp;
        let at = |pp: u32, dp: u32, tp: u32| mesh.rank(Coords { pp, dp, tp, cp }) as usize;
        let of = |axis| -> Vec<usize> {
            mesh.group_of(axis, rank as u32)
                .into_iter()
                .map(|r| r as usize)
                .collect()
        };
        // Gradients are reduced (and the optimizer sharded) over dp·cp ranks.
        let dp = of(Axis::Dp);
        let tp: Vec<usize> = (0..s.tp).map(|t| at(me.pp, me.dp, t)).collect();
        let pp: Vec<usize> = (0..s.pp).map(|p| at(p, me.dp, me.tp)).collect();
        let embedding = vec![pp[0], pp[pp.len() - 1]];
        let cp = of(Axis::Cp);
        let chips: Vec<u32> = cp.iter().map(|&r| r as u32).collect();
        Groups {
            tp: Members::new(plan, CollectiveGroup::Tp, tp),
            cp: CpMembers {
                exchange: plan.kv_exchange(&chips),
                ranks: cp,
            },
            opt: Members::new(plan, CollectiveGroup::Opt, dp.clone()),
            dp: Members::new(plan, CollectiveGroup::Dp, dp),
            embedding: Members::new(plan, CollectiveGroup::Pp, embedding),
            pp: Members::new(plan, CollectiveGroup::Pp, pp),
        }
    }
}
