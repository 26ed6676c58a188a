//! The strategy editor's fields and the plan they make with the chosen model and cluster:
//! the same resolution and `Plan::new` validation as the CLI.

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_strategies::strategy::CpComm;
use pangu_strategies::{
    Attention, GradAccumulation, OptShard, Plan, Precision, RankOrder, Remat, ScheduleKind,
    Strategy, StrategySpec,
};

/// The choice that leaves a setting to the model, cluster and reference run (as an omitted
/// flag does).
pub const DERIVED: &str = "default";

/// The strategy editor's fields (0 means "derive it", as an omitted flag does).
#[derive(Debug, Clone, PartialEq)]
pub struct Editor {
    /// Data-parallel degree (0: fill the devices).
    pub dp: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Context-parallel degree.
    pub cp: u32,
    /// How the context-parallel ranks exchange keys and values.
    pub cp_comm: CpComm,
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
    /// Its collectives overlapped with their GEMMs (Megatron's `--tp-comm-overlap`).
    pub tp_comm_overlap: bool,
    /// How micro-batches' gradients are summed (`fused` into the weight-gradient product, or a
    /// `separate` pass: Megatron-LM 2021).
    pub grad_accumulation: GradAccumulation,
    /// Pipeline sends block the sending stage (Megatron without `--overlap-p2p-communication`).
    pub p2p_blocking: bool,
    /// Rank numbering (placement).
    pub rank_order: RankOrder,
    /// Training precision ([`DERIVED`]: the chip's or the reference run's).
    pub precision: String,
    /// Attention kernel ([`DERIVED`]: the chip's default).
    pub attention: String,
}

impl Default for Editor {
    /// Everything derived but the degrees: tp 1, pp 1, micro-batch size 1, 1F1B.
    fn default() -> Editor {
        Editor {
            dp: 0,
            tp: 1,
            pp: 1,
            cp: 1,
            cp_comm: CpComm::Ring,
            micro_batches: 0,
            micro_batch_size: 1,
            schedule: "1f1b".into(),
            opt_shard: OptShard::None,
            remat: "none".into(),
            seq_parallel: false,
            tp_comm_overlap: false,
            grad_accumulation: GradAccumulation::Fused,
            p2p_blocking: false,
            rank_order: RankOrder::PANGU,
            precision: DERIVED.into(),
            attention: DERIVED.into(),
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
            cp: s.cp,
            cp_comm: s.cp_comm,
            micro_batches: s.micro_batches,
            micro_batch_size: s.micro_batch_size,
            schedule: s.schedule.to_string(),
            opt_shard: s.opt_shard,
            remat: s.remat.to_string(),
            seq_parallel: s.seq_parallel,
            tp_comm_overlap: s.tp_comm_overlap,
            grad_accumulation: s.grad_accumulation,
            p2p_blocking: s.p2p_blocking,
            rank_order: s.rank_order,
            precision: s.precision.to_string(),
            attention: s.attention.to_string(),
        }
    }

    /// As a strategy spec; errors name the field.
    pub fn spec(&self) -> Result<StrategySpec, String> {
        let nz = |v: u32| (v > 0).then_some(v);
        let precision = match self.precision.as_str() {
            DERIVED => None,
            p => Some(
                p.parse::<Precision>()
                    .map_err(|e| format!("precision: {e}"))?,
            ),
        };
        let attention = match self.attention.as_str() {
            DERIVED => None,
            a => Some(
                a.parse::<Attention>()
                    .map_err(|e| format!("attention: {e}"))?,
            ),
        };
        Ok(StrategySpec {
            dp: nz(self.dp),
            tp: Some(self.tp),
            pp: Some(self.pp),
            cp: Some(self.cp),
            cp_comm: Some(self.cp_comm),
            precision,
            attention,
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
            tp_comm_overlap: Some(self.tp_comm_overlap),
            grad_accumulation: Some(self.grad_accumulation),
            p2p_blocking: Some(self.p2p_blocking),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The editor shows every field of a reference strategy, so that simulating it unedited
    /// runs that strategy (context parallelism, precision and attention included).
    #[test]
    fn an_unedited_reference_plans_the_reference() {
        for (model, cluster, chips) in [
            ("llama3-405b", "dgx-h100", 16384),
            ("pangu-alpha-200b", "ascend910", 2048),
        ] {
            let m = ModelConfig::preset(model).unwrap();
            let c = Cluster::from_name(&format!("{cluster}:{chips}")).unwrap();
            let want = pangu_strategies::resolve_inputs(&m, Some(c), &StrategySpec::default())
                .unwrap()
                .strategy;
            let e = Editor::reference(model, cluster, chips).unwrap();
            let got = plan(model, cluster, chips, 1.0, &e).unwrap().strategy;
            assert_eq!(got, want, "{model}");
        }
        // The fields that differ from a plain data-parallel default are really carried.
        let e = Editor::reference("llama3-405b", "dgx-h100", 16384).unwrap();
        assert_ne!(e.precision, DERIVED);
        assert_ne!(e.attention, DERIVED);
    }

    #[test]
    fn a_bad_choice_names_its_field() {
        let e = Editor {
            precision: "fp12".into(),
            ..Editor::default()
        };
        assert!(e.spec().unwrap_err().starts_with("precision:"));
        let e = Editor {
            attention: "sparse".into(),
            ..Editor::default()
        };
        assert!(e.spec().unwrap_err().starts_with("attention:"));
    }

    #[test]
    fn the_overlap_box_reaches_the_plan_and_its_rule_is_the_planner_s() {
        let mut e = Editor::reference("gpt3-175b", "dgx-h100", 512).unwrap();
        assert!(e.seq_parallel && !e.tp_comm_overlap);
        e.tp_comm_overlap = true;
        let p = plan("gpt3-175b", "dgx-h100", 512, 1.0, &e).unwrap();
        assert!(p.strategy.tp_comm_overlap);
        e.seq_parallel = false;
        let err = plan("gpt3-175b", "dgx-h100", 512, 1.0, &e).unwrap_err();
        assert!(err.contains("tp_comm_overlap"), "{err}");
    }

    #[test]
    fn the_gradient_accumulation_choice_reaches_the_plan() {
        let mut e = Editor::reference("gpt3-175b", "dgx-a100-80g", 1024).unwrap();
        assert_eq!(e.grad_accumulation, GradAccumulation::Fused);
        e.grad_accumulation = GradAccumulation::Separate;
        let p = plan("gpt3-175b", "dgx-a100-80g", 1024, 1.0, &e).unwrap();
        assert_eq!(p.strategy.grad_accumulation, GradAccumulation::Separate);
        assert_eq!(Editor::from_strategy(&p.strategy), e);
        assert!(!e.p2p_blocking);
        e.p2p_blocking = true;
        let p = plan("gpt3-175b", "dgx-a100-80g", 1024, 1.0, &e).unwrap();
        assert!(p.strategy.p2p_blocking);
        assert_eq!(Editor::from_strategy(&p.strategy), e);
    }
}
