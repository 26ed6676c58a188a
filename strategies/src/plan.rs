//! `Plan`: a validated strategy applied to a model and a cluster.
//!
//! A plan holds everything both consumers need and nothing they must recompute: the device
//! grid and its groups on the topology, each stage's layers (per model chunk), the op graph of
//! each model part at the plan's shape, the pipeline schedule's action lists, the
//! communication each device performs, the memory of each stage, and warnings.

use std::collections::BTreeMap;

use pangu_hardware::{Bytes, Cluster, Level};
use pangu_model::ops::{part_ops, totals, CollectiveKind, Op, OpShape, OpTotals, Part};
use pangu_model::ModelConfig;
use serde::Serialize;

use crate::collective::{default_algorithm, CommVolume, GroupKind};
use crate::memory::{self, MemoryBreakdown};
use crate::mesh::Mesh;
use crate::schedule::{self, Action, Schedule};
use crate::strategy::{Axis, OptShard, Precision, Remat, ScheduleKind, Strategy};
use crate::PlanError;

/// A layer of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerId {
    /// Ordinary transformer block `i`.
    Block(u32),
    /// The PanGu-α query layer (after the blocks).
    Query,
}

/// One model chunk of a stage (one per stage unless the schedule interleaves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// Virtual stage index `chunk·p + stage`.
    pub virtual_stage: u32,
    /// Layers in order.
    pub layers: Vec<LayerId>,
    /// Holds the embedding (virtual stage 0).
    pub embedding: bool,
    /// Holds the final norm, head and loss (last virtual stage).
    pub head: bool,
}

/// A pipeline stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// Stage index.
    pub index: u32,
    /// Model chunks, chunk 0 first.
    pub chunks: Vec<Chunk>,
    /// Parameters held by each device of the stage.
    pub params: u64,
    /// Memory of each device of the stage.
    pub memory: MemoryBreakdown,
}

/// The op graphs of the model's parts at the plan's shape (one device's share).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartOps {
    /// Shape they were built for.
    pub shape: OpShape,
    /// An ordinary block.
    pub block: Vec<Op>,
    /// The query layer (empty without one).
    pub query: Vec<Op>,
    /// Embedding.
    pub embedding: Vec<Op>,
    /// Final norm, head, loss.
    pub head: Vec<Op>,
}

impl PartOps {
    /// The ops of a layer.
    pub fn layer(&self, l: LayerId) -> &[Op] {
        match l {
            LayerId::Block(_) => &self.block,
            LayerId::Query => &self.query,
        }
    }
}

/// A validated strategy applied to a model and a cluster.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The model.
    pub model: ModelConfig,
    /// The cluster.
    pub cluster: Cluster,
    /// The strategy.
    pub strategy: Strategy,
    /// The device grid.
    pub mesh: Mesh,
    /// Stages with their layers and memory.
    pub stages: Vec<Stage>,
    /// Per-part op graphs.
    pub ops: PartOps,
    /// The pipeline schedule.
    pub schedule: Schedule,
    /// Communication per step of the busiest device, by group and purpose.
    pub comms: Vec<CommVolume>,
    /// Memory a device may use (HBM minus the runtime's reservation).
    pub capacity: Bytes,
    /// Things that work but deserve attention.
    pub warnings: Vec<String>,
    /// How derived values were chosen.
    pub notes: Vec<String>,
}

/// (group, purpose, collective, bytes per call): communication with equal keys is summed.
type CommKey = (GroupKind, &'static str, Option<CollectiveKind>, u64);

/// Common divisors of the values, for "what would fit" messages.
fn divisors_of_all(vals: &[u32], limit: u32) -> Vec<u32> {
    (1..=limit)
        .filter(|d| vals.iter().all(|v| v % d == 0))
        .collect()
}

fn fmt_list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl Plan {
    /// Validates the strategy against the model and cluster and builds the plan. Memory over
    /// capacity is an error ([`PlanError::OutOfMemory`]) with the breakdown and the switches
    /// that would make it fit.
    pub fn new(
        model: &ModelConfig,
        cluster: &Cluster,
        strategy: &Strategy,
    ) -> Result<Plan, PlanError> {
        let plan = Plan::build(model, cluster, strategy)?;
        if plan.fits() {
            Ok(plan)
        } else {
            Err(plan.out_of_memory_error())
        }
    }

    /// Like [`Plan::new`] but keeps a plan that does not fit in memory (for reports, search).
    pub fn build(model: &ModelConfig, cluster: &Cluster, s: &Strategy) -> Result<Plan, PlanError> {
        model.validate().map_err(PlanError::Model)?;
        let mut warnings = Vec::new();
        check_devices(s, cluster)?;
        check_tp(model, s)?;
        let v = s.schedule.chunks();
        check_pipeline(model, s, v)?;
        let act_bytes = check_precision(s, cluster)?;
        if s.seq_parallel && s.tp == 1 {
            warnings.push("sequence parallelism has no effect with tp 1".to_string());
        }
        let shape = OpShape {
            micro_batch: s.micro_batch_size,
            tp: s.tp,
            seq_parallel: s.seq_parallel,
            act_bytes,
        };
        let ops = PartOps {
            shape,
            block: part_ops(model, Part::Block, shape),
            query: if model.query_layer {
                part_ops(model, Part::QueryLayer, shape)
            } else {
                Vec::new()
            },
            embedding: part_ops(model, Part::Embedding, shape),
            head: part_ops(model, Part::Head, shape),
        };
        let mesh = Mesh {
            pp: s.pp,
            dp: s.dp,
            tp: s.tp,
            order: s.rank_order,
        };
        let schedule = schedule::build(s.schedule, s.pp, s.micro_batches);
        let layout = layer_layout(model, s, v)?;
        let capacity = cluster.spec.chip.usable_memory();
        let mut plan = Plan {
            model: model.clone(),
            cluster: cluster.clone(),
            strategy: s.clone(),
            mesh,
            stages: Vec::new(),
            ops,
            schedule,
            comms: Vec::new(),
            capacity,
            warnings,
            notes: Vec::new(),
        };
        plan.stages = (0..s.pp).map(|st| plan.build_stage(st, &layout)).collect();
        plan.comms = plan.communication();
        plan.placement_warnings();
        Ok(plan)
    }

    fn build_stage(&self, st: u32, layout: &[Vec<LayerId>]) -> Stage {
        let p = self.strategy.pp;
        let v = self.strategy.schedule.chunks();
        let chunks: Vec<Chunk> = (0..v)
            .map(|c| {
                let vs = c * p + st;
                Chunk {
                    virtual_stage: vs,
                    layers: layout[vs as usize].clone(),
                    embedding: vs == 0,
                    head: vs == p * v - 1,
                }
            })
            .collect();
        let tot = |o: &[Op]| totals(o);
        let (block, query, emb, head) = (
            tot(&self.ops.block),
            tot(&self.ops.query),
            tot(&self.ops.embedding),
            tot(&self.ops.head),
        );
        let holds_embedding = chunks.iter().any(|c| c.embedding);
        let mut params = 0u64;
        for c in &chunks {
            for l in &c.layers {
                params += match l {
                    LayerId::Block(_) => block.params,
                    LayerId::Query => query.params,
                };
            }
            if c.embedding {
                params += emb.params;
            }
            if c.head {
                // A tied head shares the embedding table when both sit on this device.
                params += self
                    .ops
                    .head
                    .iter()
                    .filter(|o| !(o.tied_copy && holds_embedding))
                    .map(|o| o.params)
                    .sum::<u64>();
            }
        }
        let memory = self.stage_memory(st, &chunks, params, &block, &query, &emb, &head);
        Stage {
            index: st,
            chunks,
            params,
            memory,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_memory(
        &self,
        st: u32,
        chunks: &[Chunk],
        params: u64,
        block: &OpTotals,
        query: &OpTotals,
        emb: &OpTotals,
        head: &OpTotals,
    ) -> MemoryBreakdown {
        let s = &self.strategy;
        let (weights, gradients, optimizer) =
            memory::model_state(params, s.dp, s.opt_shard, s.precision, s.micro_batches > 1);
        let input = self.layer_input_bytes();
        let per_chunk: Vec<Bytes> = chunks
            .iter()
            .map(|c| {
                let n_block = c
                    .layers
                    .iter()
                    .filter(|l| matches!(l, LayerId::Block(_)))
                    .count() as u32;
                let n_query = c.layers.len() as u32 - n_block;
                let mut b = memory::stored_for_layers(n_block, block, input, s.remat)
                    + memory::stored_for_layers(n_query, query, input, s.remat);
                if c.embedding {
                    b += emb.saved;
                }
                if c.head {
                    b += head.saved;
                }
                b
            })
            .collect();
        let mut activations = memory::peak_activations(&self.schedule, st, &per_chunk);
        let n_max = chunks
            .iter()
            .map(|c| c.layers.len() as u32)
            .max()
            .unwrap_or(0);
        let has_query = chunks.iter().any(|c| c.layers.contains(&LayerId::Query));
        let layer_saved = if has_query {
            block.saved.max(query.saved)
        } else {
            block.saved
        };
        activations += memory::recompute_working_set(n_max, layer_saved, s.remat);
        let mut buffers = Bytes(0);
        if s.pp > 1 {
            buffers += Bytes(4 * self.p2p_bytes().0);
        }
        let (_, gb, _) = memory::bytes_per_param(s.precision, s.micro_batches > 1);
        if s.dp > 1 && s.opt_shard == OptShard::None {
            buffers += Bytes((2 * s.grad_bucket.0).min(params * gb));
        }
        if s.opt_shard == OptShard::Zero3 {
            // Two parts' gathered weights (the running one and the prefetched one).
            buffers += Bytes(2 * block.params.max(query.params) * s.gather_bytes());
        }
        let total = weights + gradients + optimizer + activations + buffers;
        MemoryBreakdown {
            weights,
            gradients,
            optimizer,
            activations,
            buffers,
            total,
        }
    }

    /// Bytes of a layer's input activation on one device (what full recompute keeps).
    pub fn layer_input_bytes(&self) -> Bytes {
        let s = &self.strategy;
        let tok = u64::from(s.micro_batch_size) * u64::from(self.model.seq_len);
        let split = if s.seq_parallel && s.tp > 1 {
            u64::from(s.tp)
        } else {
            1
        };
        Bytes(tok * u64::from(self.model.hidden) * u64::from(self.ops.shape.act_bytes) / split)
    }

    /// Bytes of one pipeline message (activation or gradient of one micro-batch).
    pub fn p2p_bytes(&self) -> Bytes {
        self.layer_input_bytes()
    }

    /// The largest memory of any device.
    pub fn max_memory(&self) -> MemoryBreakdown {
        self.stages
            .iter()
            .map(|s| s.memory)
            .max_by_key(|m| m.total.0)
            .unwrap_or(MemoryBreakdown {
                weights: Bytes(0),
                gradients: Bytes(0),
                optimizer: Bytes(0),
                activations: Bytes(0),
                buffers: Bytes(0),
                total: Bytes(0),
            })
    }

    /// Whether every device fits in memory.
    pub fn fits(&self) -> bool {
        self.max_memory().total <= self.capacity
    }

    /// Forward FLOPs of one micro-batch through a chunk, and backward including recomputation.
    pub fn chunk_flops(&self, c: &Chunk) -> (f64, f64, f64) {
        let mut f = 0.0;
        let mut b = 0.0;
        let mut re = 0.0;
        for l in &c.layers {
            let t = totals(self.ops.layer(*l));
            f += t.fwd_flops.0;
            b += t.bwd_flops.0;
            re += match self.strategy.remat {
                Remat::None => 0.0,
                Remat::Selective => t.selective_fwd_flops.0,
                Remat::Full | Remat::Every(_) => t.fwd_flops.0,
            };
        }
        for (on, part) in [(c.embedding, &self.ops.embedding), (c.head, &self.ops.head)] {
            if on {
                let t = totals(part);
                f += t.fwd_flops.0;
                b += t.bwd_flops.0;
            }
        }
        (f, b, re)
    }

    /// Idle fraction of the pipeline from running the schedule with each chunk's FLOPs as its
    /// duration (free communication): `(p-1)/(m+p-1)` for balanced 1F1B and GPipe, less with
    /// interleaving, more when stages are unbalanced.
    pub fn bubble_fraction(&self) -> f64 {
        let cost: Vec<Vec<(f64, f64)>> = self
            .stages
            .iter()
            .map(|s| {
                s.chunks
                    .iter()
                    .map(|c| {
                        let (f, b, r) = self.chunk_flops(c);
                        (f, b + r)
                    })
                    .collect()
            })
            .collect();
        self.schedule
            .time(
                |s, c| cost[s as usize][c as usize].0,
                |s, c| cost[s as usize][c as usize].1,
            )
            .map(|t| t.bubble_fraction())
            .unwrap_or(f64::NAN)
    }

    /// The chips of every group of an axis.
    pub fn groups(&self, axis: Axis) -> Vec<Vec<u32>> {
        self.mesh.groups(axis)
    }

    /// Highest topology level any group of an axis spans, and servers / chips-per-server of
    /// the widest group.
    fn group_span(&self, axis: Axis) -> (Level, u32, u32) {
        let topo = &self.cluster.topology;
        let mut level = Level::Island;
        let mut servers = 1;
        let mut per_server = 1;
        for g in self.mesh.groups(axis) {
            level = level.max(topo.span(&g));
            let mut ids: Vec<u32> = g.iter().map(|&c| topo.position(c).server).collect();
            ids.sort_unstable();
            ids.dedup();
            servers = servers.max(ids.len() as u32);
            per_server = per_server.max(g.len() as u32 / ids.len().max(1) as u32);
        }
        (level, servers, per_server)
    }

    fn placement_warnings(&mut self) {
        if self.strategy.tp > 1 {
            let (level, ..) = self.group_span(Axis::Tp);
            let spec = &self.cluster.spec;
            let msg = match level {
                Level::Island => None,
                Level::Server => Some(format!(
                    "tp {} group spans the {} islands of a server: its collectives ride the slower cross-island path \
                     instead of the {} island links only",
                    self.strategy.tp,
                    spec.server.islands,
                    spec.server.island.link.bandwidth
                )),
                Level::Rack | Level::Spine => Some(format!(
                    "tp {} group spans servers (rank order {}): every layer's tensor-parallel all-reduces cross the {} NIC",
                    self.strategy.tp, self.strategy.rank_order, spec.network.nic.bandwidth
                )),
            };
            self.warnings.extend(msg);
        }
    }

    /// The communication of the busiest device per step, by group and purpose.
    fn communication(&self) -> Vec<CommVolume> {
        let s = &self.strategy;
        let lib = self.cluster.spec.collective_library;
        let mut out: BTreeMap<CommKey, (u64, u32)> = BTreeMap::new();
        let mut add = |g: GroupKind,
                       purpose: &'static str,
                       c: Option<CollectiveKind>,
                       bytes: Bytes,
                       calls: u64,
                       size: u32| {
            if calls > 0 && bytes.0 > 0 {
                out.entry((g, purpose, c, bytes.0)).or_insert((0, size)).0 += calls;
            }
        };
        let m = u64::from(s.micro_batches);
        // Tensor-parallel collectives: the busiest stage's share.
        let recompute_comms = matches!(s.remat, Remat::Full | Remat::Every(_));
        let busiest = self
            .stages
            .iter()
            .max_by_key(|st| st.chunks.iter().map(|c| c.layers.len()).sum::<usize>());
        if let (true, Some(stage)) = (s.tp > 1, busiest) {
            for c in &stage.chunks {
                let mut parts: Vec<(&[Op], bool)> = c
                    .layers
                    .iter()
                    .map(|l| (self.ops.layer(*l), true))
                    .collect();
                if c.embedding {
                    parts.push((&self.ops.embedding, false));
                }
                if c.head {
                    parts.push((&self.ops.head, false));
                }
                for (ops, is_layer) in parts {
                    for o in ops {
                        let Some(tc) = o.comm else { continue };
                        if let Some(k) = tc.fwd {
                            let n = if is_layer && recompute_comms { 2 } else { 1 };
                            add(GroupKind::Tp, "activations", Some(k), tc.bytes, m * n, s.tp);
                        }
                        if let Some(k) = tc.bwd {
                            add(
                                GroupKind::Tp,
                                "activation gradients",
                                Some(k),
                                tc.bytes,
                                m,
                                s.tp,
                            );
                        }
                    }
                }
            }
        }
        // Pipeline sends of the busiest stage (each send is matched by a receive elsewhere).
        if s.pp > 1 {
            let sends = self.schedule.stages.iter().map(|acts| {
                acts.iter()
                    .filter(|a| {
                        matches!(
                            a,
                            Action::SendActivation { .. } | Action::SendGradient { .. }
                        )
                    })
                    .count()
            });
            add(
                GroupKind::Pp,
                "activations and gradients",
                None,
                self.p2p_bytes(),
                sends.max().unwrap_or(0) as u64,
                2,
            );
        }
        // Data-parallel gradient reduction and optimizer sharding.
        let max_params = self.stages.iter().map(|st| st.params).max().unwrap_or(0);
        let (_, gb, _) = memory::bytes_per_param(s.precision, s.micro_batches > 1);
        if s.dp > 1 {
            // Buckets of `grad_bucket` bytes and one remainder, as DDP-style fusion sends them.
            let bucket = s.grad_bucket.0.max(1);
            let buckets =
                |total: u64| [(Bytes(bucket), total / bucket), (Bytes(total % bucket), 1)];
            let grad_op = if s.opt_shard == OptShard::None {
                CollectiveKind::AllReduce
            } else {
                CollectiveKind::ReduceScatter
            };
            for (bytes, calls) in buckets(max_params * gb) {
                add(
                    GroupKind::Dp,
                    "gradients",
                    Some(grad_op),
                    bytes,
                    calls,
                    s.dp,
                );
            }
            let (purpose, rounds) = match s.opt_shard {
                OptShard::None => ("", 0),
                OptShard::Zero1 | OptShard::Zero2 => ("updated weights", 1),
                OptShard::Mindspore => ("weights before forward", 1),
                OptShard::Zero3 => ("weights for forward and backward", 2),
            };
            for (bytes, calls) in buckets(max_params * s.gather_bytes()) {
                add(
                    GroupKind::Opt,
                    purpose,
                    Some(CollectiveKind::AllGather),
                    bytes,
                    calls * rounds,
                    s.dp,
                );
            }
        }
        // Tied embedding between first and last stage.
        if s.pp > 1 && self.model.tied_embeddings {
            let emb =
                u64::from(self.model.vocab) / u64::from(s.tp) * u64::from(self.model.hidden) * gb;
            add(
                GroupKind::Embedding,
                "tied embedding gradient",
                Some(CollectiveKind::AllReduce),
                Bytes(emb),
                1,
                2,
            );
        }
        // Global-norm clipping: one fp32 scalar per group.
        for (on, size) in [
            (s.tp > 1, s.tp),
            (s.pp > 1, s.pp),
            (
                matches!(s.opt_shard, OptShard::Zero2 | OptShard::Zero3) && s.dp > 1,
                s.dp,
            ),
        ] {
            if on {
                add(
                    GroupKind::Clip,
                    "gradient norm",
                    Some(CollectiveKind::AllReduce),
                    Bytes(4),
                    1,
                    size,
                );
            }
        }
        let spans: BTreeMap<GroupKind, (Level, u32, u32)> = [
            (GroupKind::Tp, self.group_span(Axis::Tp)),
            (GroupKind::Dp, self.group_span(Axis::Dp)),
            (GroupKind::Opt, self.group_span(Axis::Dp)),
            (GroupKind::Pp, self.pp_neighbour_span()),
            (GroupKind::Embedding, self.embedding_span()),
            (GroupKind::Clip, self.group_span(Axis::Pp)),
        ]
        .into_iter()
        .collect();
        out.into_iter()
            .map(|((group, purpose, collective, bytes), (calls, size))| {
                let (span, servers, per_server) =
                    spans.get(&group).copied().unwrap_or((Level::Spine, 1, 1));
                CommVolume {
                    group,
                    collective,
                    purpose,
                    group_size: size,
                    bytes_per_call: Bytes(bytes),
                    calls_per_step: calls,
                    algorithm: collective.map(|_| default_algorithm(lib, servers, per_server)),
                    span,
                }
            })
            .collect()
    }

    fn pp_neighbour_span(&self) -> (Level, u32, u32) {
        let topo = &self.cluster.topology;
        let level = self
            .mesh
            .groups(Axis::Pp)
            .iter()
            .flat_map(|g| g.windows(2).map(|w| topo.level_between(w[0], w[1])))
            .max()
            .unwrap_or(Level::Island);
        (level, 2, 1)
    }

    fn embedding_span(&self) -> (Level, u32, u32) {
        let topo = &self.cluster.topology;
        let level = self
            .mesh
            .groups(Axis::Pp)
            .iter()
            .map(|g| topo.level_between(g[0], g[g.len() - 1]))
            .max()
            .unwrap_or(Level::Island);
        (level, 2, 1)
    }

    /// The same plan with a changed strategy (for what-ifs).
    pub fn with_strategy(&self, s: &Strategy) -> Result<Plan, PlanError> {
        Plan::build(&self.model, &self.cluster, s)
    }

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
        if s.remat == Remat::None {
            cands.push((
                "--remat selective".into(),
                Strategy {
                    remat: Remat::Selective,
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
        if s.dp % 2 == 0 {
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
        if s.micro_batch_size > 1 && s.micro_batch_size % 2 == 0 {
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

    fn out_of_memory_error(&self) -> PlanError {
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
                 optimizer {}, activations {}, buffers {}; {fix_text}",
                mem.total,
                self.capacity,
                self.cluster.spec.chip.hbm,
                self.cluster.spec.chip.reserved,
                mem.weights,
                mem.gradients,
                mem.optimizer,
                mem.activations,
                mem.buffers
            ),
        }
    }
}

fn check_devices(s: &Strategy, cluster: &Cluster) -> Result<(), PlanError> {
    if s.dp * s.tp * s.pp != s.devices {
        return Err(PlanError::Devices(format!(
            "dp {} × tp {} × pp {} = {} ≠ {} devices",
            s.dp,
            s.tp,
            s.pp,
            s.dp * s.tp * s.pp,
            s.devices
        )));
    }
    if s.devices > cluster.chips() {
        return Err(PlanError::Devices(format!(
            "the strategy uses {} devices but cluster {} has {} chips",
            s.devices,
            cluster.spec.name,
            cluster.chips()
        )));
    }
    if s.global_batch != s.dp * s.micro_batch_size * s.micro_batches {
        return Err(PlanError::Batch(format!(
            "dp {} × micro-batch size {} × micro-batches {} = {} ≠ global batch {}",
            s.dp,
            s.micro_batch_size,
            s.micro_batches,
            s.dp * s.micro_batch_size * s.micro_batches,
            s.global_batch
        )));
    }
    Ok(())
}

fn check_tp(m: &ModelConfig, s: &Strategy) -> Result<(), PlanError> {
    let vals = [
        ("heads", m.heads),
        ("kv_heads", m.kv_heads()),
        ("hidden", m.hidden),
        ("ffn", m.ffn),
        ("vocab", m.vocab),
    ];
    if let Some((name, v)) = vals.iter().find(|(_, v)| v % s.tp != 0) {
        let ok = divisors_of_all(&vals.map(|(_, v)| v), 64.min(s.devices));
        let ok: Vec<u32> = ok
            .into_iter()
            .filter(|t| s.devices % (t * s.pp) == 0)
            .collect();
        return Err(PlanError::TensorParallel(format!(
            "tp {} does not divide {name} {v} of {}; tp must divide heads {}, kv_heads {}, hidden {}, ffn {} and vocab {}: \
             with pp {} on {} devices use one of {}",
            s.tp,
            m.name,
            m.heads,
            m.kv_heads(),
            m.hidden,
            m.ffn,
            m.vocab,
            s.pp,
            s.devices,
            fmt_list(&ok)
        )));
    }
    Ok(())
}

fn check_pipeline(m: &ModelConfig, s: &Strategy, v: u32) -> Result<(), PlanError> {
    let virt = s.pp * v;
    if virt > m.layers {
        return Err(PlanError::Pipeline(format!(
            "pp {} × {} chunk(s) = {virt} pipeline pieces but {} has only {} layers; use pp ≤ {}",
            s.pp,
            v,
            m.name,
            m.layers,
            m.layers / v
        )));
    }
    match s.schedule {
        ScheduleKind::OneFOneB if s.micro_batches < s.pp => Err(PlanError::Schedule(format!(
            "1F1B needs at least as many micro-batches as stages: {} micro-batches < pp {}; raise the global batch, \
             lower --micro-batch-size, or use --schedule gpipe",
            s.micro_batches, s.pp
        ))),
        ScheduleKind::Interleaved { chunks } if s.micro_batches % s.pp != 0 || s.micro_batches < s.pp => {
            Err(PlanError::Schedule(format!(
                "interleaved:{chunks} needs the micro-batch count to be a multiple of pp: {} micro-batches with pp {}",
                s.micro_batches, s.pp
            )))
        }
        _ => Ok(()),
    }
}

fn check_precision(s: &Strategy, c: &Cluster) -> Result<u32, PlanError> {
    let chip = &c.spec.chip;
    let missing = match s.precision {
        Precision::Bf16 if chip.bf16.is_none() => Some("bf16"),
        Precision::Fp32 if chip.fp32.is_none() => Some("fp32"),
        _ => None,
    };
    if let Some(p) = missing {
        return Err(PlanError::Precision(format!(
            "{} has no {p} compute rate in cluster {}; use --precision fp16 or give chip.{p} in a cluster file",
            chip.name, c.spec.name
        )));
    }
    Ok(s.precision.act_bytes())
}

/// Layers of each virtual stage: explicit, or PanGu-α's `stage = i·V // L` ([R]).
fn layer_layout(m: &ModelConfig, s: &Strategy, v: u32) -> Result<Vec<Vec<LayerId>>, PlanError> {
    let virt = s.pp * v;
    let id = |i: u32| {
        if m.query_layer && i == m.layers - 1 {
            LayerId::Query
        } else {
            LayerId::Block(i)
        }
    };
    let counts: Vec<u32> = match &s.layers_per_stage {
        Some(c) => {
            if c.len() as u32 != virt || c.iter().sum::<u32>() != m.layers || c.contains(&0) {
                return Err(PlanError::Pipeline(format!(
                    "layers_per_stage {:?} must list {virt} positive counts (pp {} × {v} chunks) summing to {} layers",
                    c, s.pp, m.layers
                )));
            }
            c.clone()
        }
        None => {
            let mut c = vec![0u32; virt as usize];
            for i in 0..m.layers {
                c[(u64::from(i) * u64::from(virt) / u64::from(m.layers)) as usize] += 1;
            }
            c
        }
    };
    let mut out = Vec::with_capacity(virt as usize);
    let mut next = 0;
    for n in counts {
        out.push((next..next + n).map(id).collect());
        next += n;
    }
    Ok(out)
}
