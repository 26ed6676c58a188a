//! The simulator prices exactly what the executor runs: every collective of a step is the
//! plan's program for its group (the transfers the network gets are the program's, chip for
//! chip and byte for byte), and each device issues the plan's gradient buckets in the plan's
//! order (the executor's order: trainer/tests/dist.rs checks its side against the same list).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::collective::steps;
use pangu_sim::simulate_full;
use pangu_sim::workload::{Stream, Work};
use pangu_sim::Options;
use pangu_strategies::collective::CollectiveGroup;
use pangu_strategies::memory::bytes_per_param;
use pangu_strategies::{resolve_inputs, CollectiveKind, GroupKind, OptShard, Plan, StrategySpec};

fn plan(model: &str, cluster: &str, toml: &str) -> Plan {
    let m = ModelConfig::preset(model).unwrap();
    let user = StrategySpec::from_toml(toml, "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name(cluster).unwrap()), &user).unwrap();
    Plan::build(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn plans() -> Vec<Plan> {
    vec![
        plan("pangu-alpha-2.6b", "ascend910:32", "tp = 4\npp = 2\nmicro_batch_size = 1\nglobal_batch = 16\nopt_shard = \"zero1\"\ngrad_bucket = \"8 MiB\""),
        plan("gpt-22b", "dgx-a100-80g:32", "tp = 4\npp = 2\nmicro_batch_size = 1\nglobal_batch = 16\nschedule = \"interleaved:2\"\nseq_parallel = true\n[collectives]\ndp = \"tree\"\ntp = \"ring\""),
        plan("pangu-alpha-350m", "dgx-a100-80g:32", "tp = 2\nmicro_batch_size = 1\nglobal_batch = 32\nrank_order = \"pp-tp-dp\"\n[collectives]\ndp = \"hierarchical\""),
    ]
}

/// The `[collectives]` key a collective of this group kind over `ranks` follows.
fn key(p: &Plan, group: GroupKind, ranks: &[u32]) -> CollectiveGroup {
    use pangu_strategies::strategy::Axis;
    match group {
        GroupKind::Tp => CollectiveGroup::Tp,
        GroupKind::Dp => CollectiveGroup::Dp,
        GroupKind::Opt => CollectiveGroup::Opt,
        GroupKind::Cp => CollectiveGroup::Cp,
        GroupKind::Pp | GroupKind::Embedding => CollectiveGroup::Pp,
        GroupKind::Clip => {
            if p.mesh.group_of(Axis::Tp, ranks[0]) == ranks {
                CollectiveGroup::Tp
            } else if p.mesh.group_of(Axis::Pp, ranks[0]) == ranks {
                CollectiveGroup::Pp
            } else {
                CollectiveGroup::Dp
            }
        }
    }
}

/// Each plan with its task graph over every device.
fn workloads() -> Vec<(Plan, pangu_sim::Workload)> {
    let every = Options {
        fold: false,
        memo: false,
    };
    plans()
        .into_iter()
        .map(|p| {
            let w = simulate_full(&p, every).unwrap().1;
            (p, w)
        })
        .collect()
}

#[test]
fn every_collective_is_the_plans_program_transfer_for_transfer() {
    for (p, w) in workloads() {
        let topo = &p.cluster.topology;
        let mut algorithms = std::collections::BTreeSet::new();
        for c in &w.colls {
            let program = p.program(key(&p, c.group, &c.ranks), c.kind, &c.ranks);
            assert_eq!(c.algo, program.algorithm, "{:?} {:?}", c.group, c.ranks);
            algorithms.insert(format!("{}", c.algo));
            let priced = steps(c.kind, c.algo, &c.ranks, c.bytes, topo);
            assert_eq!(priced.len(), program.steps.len());
            for (s, step) in priced.iter().zip(&program.steps) {
                // Per (source chip, destination chip): the program's pieces, as bytes.
                let mut want: Vec<(u32, u32, f64)> = Vec::new();
                for t in step {
                    let (a, b) = (c.ranks[t.src as usize], c.ranks[t.dst as usize]);
                    let x = c.bytes * program.fraction(&t.pieces);
                    match want.iter_mut().find(|w| w.0 == a && w.1 == b) {
                        Some(w) => w.2 += x,
                        None => want.push((a, b, x)),
                    }
                }
                let mut got = s.clone();
                got.sort_by_key(|x| (x.0, x.1));
                want.sort_by_key(|x| (x.0, x.1));
                assert_eq!(got.len(), want.len(), "{:?}", c.algo);
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, g.1), (w.0, w.1));
                    assert!((g.2 - w.2).abs() <= 1e-9 * c.bytes.max(1.0));
                }
            }
        }
        assert!(algorithms.len() >= 2, "{algorithms:?}");
    }
}

#[test]
fn every_device_reduces_the_plans_gradient_buckets_in_the_plans_order() {
    for (p, w) in workloads() {
        let s = &p.strategy;
        let gb = bytes_per_param(s.precision, s.micro_batches > 1).1 as f64;
        let kind = if s.opt_shard == OptShard::None {
            CollectiveKind::AllReduce
        } else {
            CollectiveKind::ReduceScatter
        };
        for rank in 0..s.devices {
            let stage = p.mesh.coords(rank).pp;
            let want: Vec<f64> = p
                .grad_buckets(stage)
                .iter()
                .map(|b| b.params as f64 * gb)
                .collect();
            let got: Vec<f64> = w.streams[rank as usize][Stream::Dp as usize]
                .iter()
                .filter_map(|&t| match w.tasks[t as usize].work {
                    Work::Coll { inst } => Some(&w.colls[inst as usize]),
                    _ => None,
                })
                .filter(|c| c.group == GroupKind::Dp)
                .map(|c| {
                    assert_eq!(c.kind, kind);
                    c.bytes
                })
                .collect();
            assert!(want.len() >= 2, "rank {rank}: {want:?}");
            assert_eq!(got, want, "rank {rank}");
        }
    }
}
