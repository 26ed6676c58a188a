//! Chakra execution traces (ET) of a simulated step, the input format of ASTRA-sim and the
//! other Chakra-based tools.
//!
//! One file per rank, `DIR/pangu.<rank>.et` (ASTRA-sim reads `{prefix}.{npu}.et`, prefix
//! `DIR/pangu`): a varint-length-prefixed [`GlobalMetadata`], then one varint-length-prefixed
//! [`Node`] per task of that rank, the framing of Chakra's `protolib` `encodeMessage` /
//! `decodeMessage`. Every task of the workload becomes one node on its rank, numbered from 0
//! in task order (a topological order: a task's dependencies on its own rank come before it):
//!
//! - compute segments, the optimizer and step ends: `COMP_NODE` with `duration_micros`
//!   (rounded; `duration_nanos` keeps the exact value) and, where the op graph gives them, the
//!   FLOPs as `num_ops`;
//! - collectives: `COMM_COLL_NODE` with `comm_type` (`ALL_REDUCE`, `ALL_GATHER`,
//!   `REDUCE_SCATTER`, `BROADCAST`), `comm_size` (the full buffer in bytes, as the simulator
//!   prices it: the all-reduce buffer, the gathered output, the reduce-scatter input),
//!   `pg_name` and `pg_ranks` (the group's ranks in group order);
//! - pipeline sends and receives: `COMM_SEND_NODE` / `COMM_RECV_NODE` with `comm_src`,
//!   `comm_dst`, `comm_size` and `comm_tag`, the tag numbering the transfers from one rank to
//!   another in task order, so a send and its receive carry the same (src, dst, tag).
//!
//! Every node has `is_cpu_op = false` (device work; ASTRA-sim refuses communication on the CPU
//! and Chakra's feeder takes a node without the attribute for a CPU op). Attribute types follow
//! Chakra's converters and feeder: `comm_type`, `comm_size` and `num_ops` as `int64_val`,
//! `comm_src`, `comm_dst` and `comm_tag` as `int32_val`, `pg_name` as `string_val`.
//!
//! **Dependencies are all data dependencies** (`data_deps`): the workload's edges between tasks
//! of the same rank, plus the stream order (each task on the compute, tp or dp stream after the
//! previous task of that stream, which the simulator runs one at a time in program order).
//! Chakra's feeder and ASTRA-sim's workload layer resolve only `data_deps`; `ctrl_deps` is
//! where Chakra's PyTorch converter records the caller of an operator, and it converts those
//! into data dependencies because, as it says, simulators expect execution order there. The
//! workload's edges from a send to its receive on another rank are not dependencies in the
//! files: the pair's matching (src, dst, tag) carries them.
//!
//! **Process groups.** ASTRA-sim reads `pg_name` as an integer (`std::stoi`) and looks it up in
//! its `--comm-group-configuration` JSON (`{"1": [ranks], ...}`); "0" or none would mean every
//! rank. So a group's name is its number, 1 up, in the sorted order of the distinct rank lists
//! of the step (a function of the groups' ranks, the same in every file), and
//! [`Export::write_dir`] writes that JSON beside the traces as `comm_groups.json`.
//!
//! **Every rank.** A folded simulation builds tasks for one representative per orbit only;
//! [`crate::full_workload`] builds the same task graph for every rank (no simulation), which
//! is what [`Export::new`] takes. The files do not depend on whether the step was folded.

mod proto;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use proto::{
    AttributeProto, CollectiveCommType, GlobalMetadata, Int64List, IoInfo, Node, NodeType, Value,
};

use pangu_strategies::{CollectiveKind, Plan};
use prost::Message;

use crate::run::describe;
use crate::workload::{Work, Workload};
use crate::SimError;

/// The schema version written in [`GlobalMetadata::version`] (the one Chakra's own trace
/// generator writes).
pub const VERSION: &str = "0.0.4";

/// The file of `rank`'s trace in `dir`.
pub fn trace_path(dir: &Path, rank: u32) -> PathBuf {
    dir.join(format!("pangu.{rank}.et"))
}

/// One end of a pipeline transfer, as its node states it.
#[derive(Debug, Clone, Copy)]
struct P2p {
    src: u32,
    dst: u32,
    tag: u32,
    bytes: f64,
}

/// A workload of every rank, ready to be written as Chakra traces.
#[derive(Debug)]
pub struct Export<'a> {
    w: &'a Workload,
    meta: GlobalMetadata,
    /// Task ids of each rank, in task order.
    by_rank: Vec<Vec<u32>>,
    /// Position of each task among its rank's tasks: its node id.
    local: Vec<u32>,
    /// Both ends of every pipeline transfer, by task.
    p2p: HashMap<u32, P2p>,
    /// Distinct groups' ranks; group `i` is named `i + 1`.
    groups: Vec<Vec<u32>>,
    /// Group number of each collective instance.
    pg_of: Vec<u32>,
}

/// What [`Export::write_dir`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Trace files (one per rank).
    pub files: u32,
    /// Nodes over all files.
    pub nodes: u64,
    /// Bytes over all files, `comm_groups.json` included.
    pub bytes: u64,
}

impl<'a> Export<'a> {
    /// Prepares the export of `w`, which must hold the tasks of every rank of `plan` (see
    /// [`crate::full_workload`]).
    pub fn new(plan: &Plan, w: &'a Workload) -> Result<Export<'a>, SimError> {
        let n = plan.strategy.devices;
        if w.devices.len() != n as usize {
            return Err(SimError::Input(format!(
                "a Chakra trace needs the tasks of all {n} ranks; this task graph has {} (folded): build it with pangu_sim::full_workload",
                w.devices.len()
            )));
        }
        let mut by_rank: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
        let mut local = Vec::with_capacity(w.tasks.len());
        for (i, t) in w.tasks.iter().enumerate() {
            let list = &mut by_rank[t.device as usize];
            local.push(list.len() as u32);
            list.push(i as u32);
        }
        let p2p = pair_transfers(w)?;
        let mut distinct: BTreeMap<&[u32], u32> = BTreeMap::new();
        for c in &w.colls {
            distinct.insert(&c.ranks, 0);
        }
        let mut groups = Vec::with_capacity(distinct.len());
        for (i, (ranks, id)) in distinct.iter_mut().enumerate() {
            *id = i as u32 + 1;
            groups.push(ranks.to_vec());
        }
        let pg_of = w.colls.iter().map(|c| distinct[&c.ranks[..]]).collect();
        let s = &plan.strategy;
        let text = |name: &str, v: String| AttributeProto::new(name, Value::StringVal(v));
        let meta = GlobalMetadata {
            version: VERSION.to_string(),
            attr: vec![
                text("source", "pangu-twin simulate".into()),
                text("model", plan.model.name.clone()),
                text("cluster", plan.cluster.spec.name.clone()),
                text("strategy", s.summary()),
                AttributeProto::new("ranks", Value::Uint64Val(u64::from(n))),
            ],
        };
        Ok(Export {
            w,
            meta,
            by_rank,
            local,
            p2p,
            groups,
            pg_of,
        })
    }

    /// The metadata message every file starts with.
    pub fn metadata(&self) -> &GlobalMetadata {
        &self.meta
    }

    /// The process groups: group `i` (named `i + 1` in `pg_name`) has ranks `groups()[i]`.
    pub fn groups(&self) -> &[Vec<u32>] {
        &self.groups
    }

    /// The nodes of `rank`, in id order.
    pub fn nodes(&self, rank: u32) -> Vec<Node> {
        let w = self.w;
        let tasks = &self.by_rank[rank as usize];
        let mut deps: Vec<Vec<u64>> = vec![Vec::new(); tasks.len()];
        for &t in tasks {
            for &s in w.succ.of(t) {
                if w.tasks[s as usize].device == rank {
                    deps[self.local[s as usize] as usize].push(u64::from(self.local[t as usize]));
                }
            }
        }
        for stream in &w.streams[rank as usize] {
            for pair in stream.windows(2) {
                let (a, b) = (self.local[pair[0] as usize], self.local[pair[1] as usize]);
                deps[b as usize].push(u64::from(a));
            }
        }
        tasks
            .iter()
            .zip(deps)
            .map(|(&t, mut d)| {
                d.sort_unstable();
                d.dedup();
                self.node(t, d)
            })
            .collect()
    }

    fn node(&self, t: u32, data_deps: Vec<u64>) -> Node {
        let w = self.w;
        let task = &w.tasks[t as usize];
        let mut attr = vec![AttributeProto::new("is_cpu_op", Value::BoolVal(false))];
        let int = |name: &str, v: f64| AttributeProto::new(name, Value::Int64Val(v.round() as i64));
        let i32v = |name: &str, v: u32| AttributeProto::new(name, Value::Int32Val(v as i32));
        let mut duration_micros = 0;
        let kind = match task.work {
            Work::Compute { ns, .. } => {
                duration_micros = (ns + 500) / 1000;
                attr.push(AttributeProto::new("duration_nanos", Value::Uint64Val(ns)));
                let flops = w.task_flops.get(t as usize).copied().unwrap_or(0.0);
                if flops > 0.0 {
                    attr.push(int("num_ops", flops));
                }
                NodeType::CompNode
            }
            Work::Coll { inst } => {
                let c = &w.colls[inst as usize];
                attr.push(int("comm_type", f64::from(comm_type(c.kind) as i32)));
                attr.push(int("comm_size", c.bytes));
                let pg = self.pg_of[inst as usize];
                attr.push(AttributeProto::new(
                    "pg_name",
                    Value::StringVal(pg.to_string()),
                ));
                let ranks = c.ranks.iter().map(|&r| i64::from(r)).collect();
                attr.push(AttributeProto::new(
                    "pg_ranks",
                    Value::Int64List(Int64List { values: ranks }),
                ));
                NodeType::CommCollNode
            }
            Work::Send { .. } | Work::Recv => {
                let p = self.p2p[&t];
                attr.push(i32v("comm_src", p.src));
                attr.push(i32v("comm_dst", p.dst));
                attr.push(int("comm_size", p.bytes));
                attr.push(i32v("comm_tag", p.tag));
                if matches!(task.work, Work::Send { .. }) {
                    NodeType::CommSendNode
                } else {
                    NodeType::CommRecvNode
                }
            }
        };
        Node {
            id: u64::from(self.local[t as usize]),
            name: describe(task.label, task.work, w),
            r#type: kind as i32,
            data_deps,
            duration_micros,
            attr,
            ..Default::default()
        }
    }

    /// `rank`'s trace file as bytes: the metadata, then every node, each length-prefixed.
    pub fn encode_rank(&self, rank: u32) -> Vec<u8> {
        encode(&self.meta, &self.nodes(rank))
    }

    /// Writes `pangu.<rank>.et` for every rank and `comm_groups.json` into `dir` (created if
    /// missing), ranks in parallel.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<Written> {
        use rayon::prelude::*;
        std::fs::create_dir_all(dir)?;
        let per_rank: Vec<(u64, u64)> = (0..self.by_rank.len() as u32)
            .into_par_iter()
            .map(|r| {
                let bytes = self.encode_rank(r);
                let path = trace_path(dir, r);
                std::fs::write(&path, &bytes).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
                Ok((self.by_rank[r as usize].len() as u64, bytes.len() as u64))
            })
            .collect::<std::io::Result<_>>()?;
        let groups: serde_json::Map<String, serde_json::Value> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| ((i + 1).to_string(), serde_json::json!(g)))
            .collect();
        let json = serde_json::to_vec_pretty(&groups)?;
        let mut f = std::fs::File::create(dir.join("comm_groups.json"))?;
        f.write_all(&json)?;
        Ok(Written {
            files: per_rank.len() as u32,
            nodes: per_rank.iter().map(|p| p.0).sum(),
            bytes: per_rank.iter().map(|p| p.1).sum::<u64>() + json.len() as u64,
        })
    }
}

/// Chakra's collective type of a collective kind.
pub fn comm_type(kind: CollectiveKind) -> CollectiveCommType {
    match kind {
        CollectiveKind::AllReduce => CollectiveCommType::AllReduce,
        CollectiveKind::AllGather => CollectiveCommType::AllGather,
        CollectiveKind::ReduceScatter => CollectiveCommType::ReduceScatter,
        CollectiveKind::Broadcast => CollectiveCommType::Broadcast,
    }
}

/// Both ends of every pipeline transfer: a send's successor on its destination rank is its
/// receive; tags count the transfers of each (src, dst) in task order.
fn pair_transfers(w: &Workload) -> Result<HashMap<u32, P2p>, SimError> {
    let mut p2p = HashMap::new();
    let mut next_tag: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    for (i, t) in w.tasks.iter().enumerate() {
        let Work::Send { dst, bytes } = t.work else {
            continue;
        };
        let recv = w.succ.of(i as u32).iter().copied().find(|&s| {
            let r = &w.tasks[s as usize];
            r.device == dst && r.work == Work::Recv
        });
        let Some(recv) = recv else {
            return Err(SimError::Input(format!(
                "pipeline send {i} from rank {} to rank {dst} has no receive",
                t.device
            )));
        };
        let tag = next_tag.entry((t.device, dst)).or_insert(0);
        let p = P2p {
            src: t.device,
            dst,
            tag: *tag,
            bytes,
        };
        *tag += 1;
        p2p.insert(i as u32, p);
        p2p.insert(recv, p);
    }
    let unpaired = w
        .tasks
        .iter()
        .enumerate()
        .filter(|(i, t)| t.work == Work::Recv && !p2p.contains_key(&(*i as u32)))
        .count();
    if unpaired > 0 {
        return Err(SimError::Input(format!(
            "{unpaired} pipeline receive(s) have no send"
        )));
    }
    Ok(p2p)
}

/// A trace file's bytes: `meta`, then each node, each prefixed by its length as a varint.
pub fn encode(meta: &GlobalMetadata, nodes: &[Node]) -> Vec<u8> {
    let mut buf = Vec::new();
    // Infallible: a Vec grows as needed.
    let _ = meta.encode_length_delimited(&mut buf);
    for n in nodes {
        let _ = n.encode_length_delimited(&mut buf);
    }
    buf
}

/// Reads a trace file's bytes back: the metadata and the nodes.
pub fn decode(mut bytes: &[u8]) -> Result<(GlobalMetadata, Vec<Node>), prost::DecodeError> {
    let meta = GlobalMetadata::decode_length_delimited(&mut bytes)?;
    let mut nodes = Vec::new();
    while !bytes.is_empty() {
        nodes.push(Node::decode_length_delimited(&mut bytes)?);
    }
    Ok((meta, nodes))
}
