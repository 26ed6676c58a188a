//! Chakra execution traces: the encoder round-trips through prost, every task of every rank is
//! one node of the right type, dependencies and send/receive pairs are consistent, folded and
//! full runs give the same files, and an independent decoder (Python's protobuf, descriptors
//! built by hand from the schema's field numbers) agrees with the simulator's task graph.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_sim::chakra::{self, Export, Node, NodeType, Value};
use pangu_sim::workload::{Stream, Work, Workload};
use pangu_sim::{full_workload, simulate_full, Options};
use pangu_strategies::{resolve_inputs, Plan, StrategySpec};
use serde_json::json;

/// pangu-alpha-350m on 8 chips: tp 2, pp 2, dp 2 (collectives of two kinds of group and
/// pipeline transfers).
fn plan() -> Plan {
    let m = ModelConfig::preset("pangu-alpha-350m").unwrap();
    let user = StrategySpec::from_toml("tp = 2\npp = 2", "test").unwrap();
    let r = resolve_inputs(&m, Some(Cluster::from_name("ascend910:8").unwrap()), &user).unwrap();
    Plan::new(&r.model, &r.cluster, &r.strategy).unwrap()
}

fn kind(work: Work) -> NodeType {
    match work {
        Work::Compute { .. } => NodeType::CompNode,
        Work::Coll { .. } => NodeType::CommCollNode,
        Work::Send { .. } => NodeType::CommSendNode,
        Work::Recv => NodeType::CommRecvNode,
    }
}

fn int(n: &Node, name: &str) -> i64 {
    match n.attr(name) {
        Some(Value::Int64Val(v)) => *v,
        Some(Value::Int32Val(v)) => i64::from(*v),
        other => panic!("node {} attribute {name}: {other:?}", n.id),
    }
}

#[test]
fn every_task_is_one_node_and_the_files_decode_to_what_was_encoded() {
    let p = plan();
    let w = full_workload(&p).unwrap();
    let ex = Export::new(&p, &w).unwrap();
    let mut per_type: BTreeMap<NodeType, usize> = BTreeMap::new();
    let mut sends = BTreeMap::new();
    let mut recvs = BTreeMap::new();
    for rank in 0..p.strategy.devices {
        let nodes = ex.nodes(rank);
        let bytes = chakra::encode(ex.metadata(), &nodes);
        assert_eq!(bytes, ex.encode_rank(rank));
        let (meta, back) = chakra::decode(&bytes).unwrap();
        assert_eq!(&meta, ex.metadata());
        assert_eq!(meta.version, chakra::VERSION);
        assert_eq!(back, nodes);
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.id, i as u64);
            assert!(n.data_deps.iter().all(|&d| d < n.id), "{n:?}");
            assert!(n.ctrl_deps.is_empty());
            assert_eq!(n.attr("is_cpu_op"), Some(&Value::BoolVal(false)));
            let t = NodeType::try_from(n.r#type).unwrap();
            *per_type.entry(t).or_default() += 1;
            if t == NodeType::CommSendNode || t == NodeType::CommRecvNode {
                let k = (int(n, "comm_src"), int(n, "comm_dst"), int(n, "comm_tag"));
                let size = int(n, "comm_size");
                let side = if t == NodeType::CommSendNode {
                    assert_eq!(k.0, i64::from(rank));
                    &mut sends
                } else {
                    assert_eq!(k.1, i64::from(rank));
                    &mut recvs
                };
                assert!(side.insert(k, size).is_none(), "two nodes with {k:?}");
            }
        }
    }
    let mut per_kind: BTreeMap<NodeType, usize> = BTreeMap::new();
    for t in &w.tasks {
        *per_kind.entry(kind(t.work)).or_default() += 1;
    }
    assert_eq!(per_type, per_kind);
    assert_eq!(
        per_kind.len(),
        4,
        "the job has every kind of task: {per_kind:?}"
    );
    // Every send has its receive: same source, destination, tag and size.
    assert!(!sends.is_empty());
    assert_eq!(sends, recvs);
}

#[test]
fn dependencies_are_the_graph_edges_and_the_stream_order() {
    let p = plan();
    let w = full_workload(&p).unwrap();
    let ex = Export::new(&p, &w).unwrap();
    let rank = 1;
    let nodes = ex.nodes(rank);
    let mine: Vec<u32> = (0..w.tasks.len() as u32)
        .filter(|&t| w.tasks[t as usize].device == rank)
        .collect();
    let local = |t: u32| mine.iter().position(|&m| m == t).unwrap() as u64;
    let mut expected: Vec<Vec<u64>> = vec![Vec::new(); mine.len()];
    for &t in &mine {
        for &s in w.succ.of(t) {
            if w.tasks[s as usize].device == rank {
                expected[local(s) as usize].push(local(t));
            }
        }
    }
    for s in [Stream::Compute, Stream::Tp, Stream::Dp] {
        for pair in w.streams[rank as usize][s as usize].windows(2) {
            expected[local(pair[1]) as usize].push(local(pair[0]));
        }
    }
    for (n, mut e) in nodes.iter().zip(expected) {
        e.sort_unstable();
        e.dedup();
        assert_eq!(n.data_deps, e, "node {}", n.name);
    }
    // Compute nodes carry their duration and FLOPs.
    let comp: Vec<(&Node, u32)> = nodes
        .iter()
        .zip(&mine)
        .filter(|(n, _)| n.r#type == NodeType::CompNode as i32)
        .map(|(n, &t)| (n, t))
        .collect();
    for (n, t) in &comp {
        let Work::Compute { ns, .. } = w.tasks[*t as usize].work else {
            unreachable!()
        };
        assert_eq!(n.duration_micros, (ns + 500) / 1000);
        assert_eq!(n.attr("duration_nanos"), Some(&Value::Uint64Val(ns)));
    }
    let flops: f64 = comp
        .iter()
        .map(|(n, _)| n.attr("num_ops").map_or(0, |_| int(n, "num_ops")) as f64)
        .sum();
    let want = w.flops[rank as usize];
    assert!(
        (flops - want).abs() <= 1e-6 * want + comp.len() as f64,
        "{flops} vs {want}"
    );
}

#[test]
fn a_folded_run_exports_the_same_files_as_a_full_one() {
    let p = plan();
    let (run, folded) = simulate_full(&p, Options::default()).unwrap();
    assert!(run.folded.is_some(), "the test job folds");
    assert!(
        Export::new(&p, &folded).is_err(),
        "a folded graph is refused"
    );
    let (_, full_run) = simulate_full(&p, Options::FULL).unwrap();
    let rebuilt = full_workload(&p).unwrap();
    let (a, b) = (
        Export::new(&p, &full_run).unwrap(),
        Export::new(&p, &rebuilt).unwrap(),
    );
    for rank in 0..p.strategy.devices {
        assert_eq!(a.encode_rank(rank), b.encode_rank(rank), "rank {rank}");
    }
    // The representatives' tasks in the folded graph are the full graph's on those ranks.
    let sig = |w: &Workload, r: u32| -> Vec<String> {
        w.tasks
            .iter()
            .filter(|t| t.device == r)
            .map(|t| {
                let work = match t.work {
                    Work::Coll { inst } => {
                        let c = &w.colls[inst as usize];
                        format!("{:?} {:?} {}", c.kind, c.ranks, c.bytes)
                    }
                    other => format!("{other:?}"),
                };
                format!("{:?} {:?} {} {work}", t.label, t.stream, t.deps)
            })
            .collect()
    };
    for &r in &folded.devices {
        assert_eq!(sig(&folded, r), sig(&rebuilt, r), "rank {r}");
    }
}

/// The simulator's task graph as JSON, for the independent checker.
fn graph_json(p: &Plan, w: &Workload) -> serde_json::Value {
    let stream = |s: Stream| match s {
        Stream::Compute => "compute",
        Stream::Tp => "tp",
        Stream::Dp => "dp",
        Stream::Free => "free",
    };
    let tasks: Vec<serde_json::Value> = w
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({
                "id": i,
                "device": t.device,
                "stream": stream(t.stream),
                "succ": w.succ.of(i as u32),
            });
            match t.work {
                Work::Compute { ns, .. } => {
                    v["kind"] = json!("compute");
                    v["ns"] = json!(ns);
                    v["flops"] = json!(w.task_flops[i]);
                }
                Work::Coll { inst } => {
                    let c = &w.colls[inst as usize];
                    v["kind"] = json!("collective");
                    v["collective"] = json!(format!("{:?}", c.kind));
                    v["ranks"] = json!(c.ranks);
                    v["bytes"] = json!(c.bytes);
                }
                Work::Send { dst, bytes } => {
                    v["kind"] = json!("send");
                    v["dst"] = json!(dst);
                    v["bytes"] = json!(bytes);
                }
                Work::Recv => v["kind"] = json!("recv"),
            }
            v
        })
        .collect();
    let streams: Vec<&[Vec<u32>; 3]> = w.streams.iter().collect();
    json!({"ranks": p.strategy.devices, "tasks": tasks, "streams": streams})
}

/// A Python 3 that has Google's protobuf: `python3` on the path, or Debian's own interpreter
/// (where the `python3-protobuf` package installs it).
fn python_with_protobuf() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import google.protobuf"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pangu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn python_protobuf_decodes_the_files_as_the_task_graph_says() {
    let Some(py) = python_with_protobuf() else {
        eprintln!(
            "SKIPPED: no python3 with google.protobuf (Debian: apt-get install python3-protobuf; scripts/test.sh installs it)"
        );
        return;
    };
    let p = plan();
    let w = full_workload(&p).unwrap();
    let dir = scratch("chakra-py");
    let written = Export::new(&p, &w).unwrap().write_dir(&dir).unwrap();
    assert_eq!(written.files, p.strategy.devices);
    assert_eq!(written.nodes, w.tasks.len() as u64);
    let graph = dir.join("graph.json");
    std::fs::write(&graph, serde_json::to_vec(&graph_json(&p, &w)).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-chakra.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(&dir)
        .arg(&graph)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{py} {}: {text}", script.display());
    assert!(text.contains(&format!("{} nodes", w.tasks.len())), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
