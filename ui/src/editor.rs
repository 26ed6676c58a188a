//! The strategy editor's fields and the plan they make with the chosen model and cluster:
//! the same resolution and `Plan::new` validation as the CLI.

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::{OptShard, Plan, RankOrder, Remat, ScheduleKind, Strategy, StrategySpec};

/// The strategy editor's fields (0 means "derive it", as an omitted flag does).
#[derive(Debug, Clone, PartialEq)]
pub struct Editor {
    /// Data-parallel degree (0: fill the devices).
    pub dp: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Micro-batches (0: from the micro-batch size).
    pub micro_batches: u32,
    /// Micro-batch size.
    pub micro_batch_size: u32,
    /// Schedule.
    pub schedule: String,
    /// Optimizer sharding.
    pub opt_shard: OptShard,
    /// Remat.
    pub remat: String,
    /// Sequence parallelism.
    pub seq_parallel: bool,
    /// Rank numbering (placement).
    pub rank_order: RankOrder,
}

impl Default for Editor {
    /// Everything derived but the degrees: tp 1, pp 1, micro-batch size 1, 1F1B.
    fn default() -> Editor {
        Editor {
            dp: 0,
            tp: 1,
            pp: 1,
            micro_batches: 0,
            micro_batch_size: 1,
            schedule: "1f1b".into(),
            opt_shard: OptShard::None,
            remat: "none".into(),
            seq_parallel: false,
            rank_order: RankOrder::PANGU,
        }
    }
}

impl Editor {
    /// The fields of a resolved strategy.
    pub fn from_strategy(s: &Strategy) -> Editor {
        Editor {
            dp: s.dp,
            tp: s.tp,
            pp: s.pp,
            micro_batches: s.micro_batches,
            micro_batch_size: s.micro_batch_size,
            schedule: s.schedule.to_string(),
            opt_shard: s.opt_shard,
            remat: s.remat.to_string(),
            seq_parallel: s.seq_parallel,
            rank_order: s.rank_order,
        }
    }

    /// As a strategy spec; errors name the field.
    pub fn spec(&self) -> Result<StrategySpec, String> {
        let nz = |v: u32| (v > 0).then_some(v);
        Ok(StrategySpec {
            dp: nz(self.dp),
            tp: Some(self.tp),
            pp: Some(self.pp),
            micro_batches: nz(self.micro_batches),
            micro_batch_size: nz(self.micro_batch_size),
            schedule: Some(
                self.schedule
                    .parse::<ScheduleKind>()
                    .map_err(|e| format!("schedule: {e}"))?,
            ),
            opt_shard: Some(self.opt_shard),
            remat: Some(
                self.remat
                    .parse::<Remat>()
                    .map_err(|e| format!("remat: {e}"))?,
            ),
            seq_parallel: Some(self.seq_parallel),
            rank_order: Some(self.rank_order),
            ..StrategySpec::default()
        })
    }

    /// The model preset's reference strategy on `chips` chips of a cluster preset, if it has
    /// one.
    pub fn reference(model: &str, cluster: &str, chips: u32) -> Option<Editor> {
        let m = ModelConfig::preset(model).ok()?;
        let c = Cluster::from_name(&format!("{cluster}:{chips}")).ok()?;
        let r = pangu_strategies::resolve_inputs(&m, Some(c), &StrategySpec::default()).ok()?;
        Some(Editor::from_strategy(&r.strategy))
    }
}

/// The plan of `editor`'s strategy for a model preset on `chips` chips of a cluster preset
/// whose NIC and island bandwidths are scaled by `bandwidth`; errors say why it is invalid.
pub fn plan(
    model: &str,
    cluster: &str,
    chips: u32,
    bandwidth: f32,
    editor: &Editor,
) -> Result<Plan, String> {
    let m = ModelConfig::preset(model).map_err(|e| e.to_string())?;
    let text = pangu_hardware::preset_toml(cluster).map_err(|e| e.to_string())?;
    let mut spec =
        pangu_hardware::ClusterSpec::from_toml(text, cluster).map_err(|e| e.to_string())?;
    spec.chips = chips;
    let f = f64::from(bandwidth);
    spec.network.nic.bandwidth = pangu_hardware::Bandwidth(spec.network.nic.bandwidth.0 * f);
    spec.server.island.link.bandwidth =
        pangu_hardware::Bandwidth(spec.server.island.link.bandwidth.0 * f);
    let cluster = Cluster::new(spec).map_err(|e| e.to_string())?;
    let user = editor.spec()?;
    let r =
        pangu_strategies::resolve_inputs(&m, Some(cluster), &user).map_err(|e| e.to_string())?;
    Plan::new(&r.model, &r.cluster, &r.strategy).map_err(|e| e.to_string())
}
