//! Which ranks hold and write which bytes of the training state (`Plan::state_shards`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_model::ModelConfig;
use pangu_strategies::{resolve_inputs, OptShard, Plan, StrategySpec};

fn plan(shard: OptShard) -> Plan {
    let m = ModelConfig::preset("pangu-alpha-350m").unwrap();
    let spec = StrategySpec {
        devices: Some(16),
        tp: Some(2),
        pp: Some(2),
        opt_shard: Some(shard),
        ..StrategySpec::default()
    };
    let c = pangu_hardware::Cluster::from_name("ascend910:16").unwrap();
    let r = resolve_inputs(&m, Some(c), &spec).unwrap();
    Plan::new(&r.model, &r.cluster, &r.strategy).unwrap()
}

#[test]
fn sharding_spreads_the_writes_and_keeps_the_total() {
    let mut totals = Vec::new();
    for shard in [OptShard::None, OptShard::Zero1, OptShard::Zero3] {
        let p = plan(shard);
        let s = &p.strategy;
        assert_eq!(s.dp, 4);
        let shards = p.state_shards();
        assert_eq!(shards.len(), 16);
        let writers = shards.iter().filter(|x| x.written > 0).count() as u32;
        let held: u64 = shards.iter().map(|x| x.held).sum();
        // Weights (2 bytes) and optimizer state (12 bytes) of every parameter slice a replica
        // holds, once per replica when nothing is sharded.
        let replica: u64 = p.stages.iter().map(|st| st.params).sum::<u64>() * u64::from(s.tp);
        match shard {
            OptShard::None => {
                assert_eq!(writers, s.tp * s.pp, "only replica 0 writes");
                assert_eq!(held, replica * 14 * u64::from(s.dp));
            }
            OptShard::Zero1 => {
                assert_eq!(
                    writers, s.devices,
                    "every replica writes its optimizer slice"
                );
                assert_eq!(held, replica * (2 * u64::from(s.dp) + 12));
            }
            _ => {
                assert_eq!(writers, s.devices);
                assert_eq!(held, replica * 14);
            }
        }
        totals.push(p.checkpoint_bytes());
    }
    // The same state however it is spread (up to rounding of the slices).
    for t in &totals[1..] {
        assert!(t.abs_diff(totals[0]) <= 64, "{totals:?}");
    }
}
