//! `Plan`: a validated strategy applied to a model and a cluster.
//!
//! A plan holds everything both consumers need and nothing they must recompute: the device
//! grid and its groups on the topology, each stage's layers (per model chunk), the op graph of
//! each model part at the plan's shape, the pipeline schedule's action lists, the
//! communication each device performs, the memory of each stage, and warnings.

use pangu_hardware::{Bytes, Cluster};
use pangu_model::ops::{part_ops, totals, Op, OpShape, OpTotals, Part};
use pangu_model::ModelConfig;
use serde::Serialize;

use crate::collective::CommVolume;
use crate::fp8;
use crate::memory::{self, MemoryBreakdown};
use crate::mesh::Mesh;
use crate::schedule::{self, Schedule};
use crate::strategy::{Attention, Axis, OptShard, Precision, Remat, Strategy};
use crate::PlanError;

mod buckets;
mod checks;
mod comm;
mod cp;
mod fixes;
mod state;

pub use buckets::{ChunkPart, GradBucket};
pub use cp::{cp_chunks, cp_token};
pub use state::StateShard;

use checks::{check_cp, check_devices, check_pipeline, check_precision, check_tp};

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
    /// The vocabulary padded to a multiple of `vocab_divisible_by × tp`: the word table's
    /// and the head's rows.
    pub padded_vocab: u32,
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
        model.validate_run().map_err(PlanError::Model)?;
        let mut warnings = Vec::new();
        check_devices(s, cluster)?;
        check_tp(model, s)?;
        check_cp(model, s)?;
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
            cp: s.cp.max(1),
            attention: s.attention,
        };
        // The op graph is the padded model's: the padding's rows are computed and stored.
        let padded_vocab = s.padded_vocab(model.vocab);
        let sized = ModelConfig {
            vocab: padded_vocab,
            ..model.clone()
        };
        let mut ops = PartOps {
            shape,
            block: part_ops(&sized, Part::Block, shape),
            query: if model.query_layer {
                part_ops(&sized, Part::QueryLayer, shape)
            } else {
                Vec::new()
            },
            embedding: part_ops(&sized, Part::Embedding, shape),
            head: part_ops(&sized, Part::Head, shape),
        };
        if s.precision == Precision::Fp8 {
            let act = u64::from(act_bytes);
            fp8::save_inputs_in_fp8(&mut ops.block, act);
            fp8::save_inputs_in_fp8(&mut ops.query, act);
        }
        let mut notes = Vec::new();
        if s.remat == Remat::Selective && s.attention == Attention::Flash {
            notes.push(
                "remat selective with flash attention: the fused kernel keeps no s×s activations \
                 and recomputes the scores in its own backward, so selective recompute drops and \
                 re-runs nothing (as remat none)"
                    .to_string(),
            );
        }
        if padded_vocab != model.vocab {
            notes.push(format!(
                "vocabulary {} padded to {padded_vocab} (a multiple of vocab_divisible_by {} × tp {}, as Megatron-LM pads it)",
                model.vocab, s.vocab_divisible_by, s.tp
            ));
        }
        let mesh = Mesh {
            pp: s.pp,
            dp: s.dp,
            tp: s.tp,
            cp: s.cp.max(1),
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
            padded_vocab,
            ops,
            schedule,
            comms: Vec::new(),
            capacity,
            warnings,
            notes,
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
        let (weights, gradients, optimizer) = memory::model_state(
            params,
            s.dp_cp(),
            s.opt_shard,
            s.precision,
            s.micro_batches > 1,
        );
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
        // Gradient fusion buffers: two buckets in flight, for a reduce-scatter as for an
        // all-reduce (DDP's and DeepSpeed's bucket buffers; the executor's too).
        if s.dp_cp() > 1 {
            buffers += Bytes((2 * s.grad_bucket.0).min(params * gb));
        }
        buffers += self.cp_buffers();
        if s.opt_shard == OptShard::Zero3 {
            // Two parts' gathered weights (the running one and the prefetched one).
            buffers += Bytes(2 * block.params.max(query.params) * s.gather_bytes());
        }
        let fp8_weights = self.fp8_memory(chunks);
        let total = weights + gradients + optimizer + activations + buffers + fp8_weights;
        MemoryBreakdown {
            weights,
            gradients,
            optimizer,
            activations,
            buffers,
            fp8_weights,
            total,
        }
    }

    /// Linear weight elements and fp8 GEMMs of the layers of `chunks` (see [`crate::fp8`]).
    fn linear_totals(&self, chunks: &[Chunk]) -> (u64, u64) {
        let (block, query) = (
            fp8::linear_totals(&self.ops.block),
            fp8::linear_totals(&self.ops.query),
        );
        let mut t = (0, 0);
        for l in chunks.iter().flat_map(|c| &c.layers) {
            let (w, g) = match l {
                LayerId::Block(_) => block,
                LayerId::Query => query,
            };
            t = (t.0 + w, t.1 + g);
        }
        t
    }

    /// The fp8 weight copies and scaling state a device of a stage keeps (0 unless fp8): of
    /// every held layer, or under ZeRO-3 of the two gathered layers.
    fn fp8_memory(&self, chunks: &[Chunk]) -> Bytes {
        if self.strategy.precision != Precision::Fp8 {
            return Bytes(0);
        }
        let (weights, gemms) = self.linear_totals(chunks);
        let copied = if self.strategy.opt_shard == OptShard::Zero3 {
            let (b, q) = (
                fp8::linear_totals(&self.ops.block).0,
                fp8::linear_totals(&self.ops.query).0,
            );
            (2 * b.max(q)).min(weights)
        } else {
            weights
        };
        fp8::weight_copy_bytes(copied) + fp8::scaling_state_bytes(gemms)
    }

    /// Linear weight elements a device of stage `st` casts to fp8 once per step (0 unless
    /// the precision is fp8).
    pub fn fp8_cast_weights(&self, st: u32) -> u64 {
        if self.strategy.precision != Precision::Fp8 {
            return 0;
        }
        self.stages
            .get(st as usize)
            .map_or(0, |s| self.linear_totals(&s.chunks).0)
    }

    /// Bytes of a layer's input activation on one device (what full recompute keeps).
    pub fn layer_input_bytes(&self) -> Bytes {
        let s = &self.strategy;
        // Context parallelism keeps s/cp tokens of each sequence on a device.
        let tok =
            u64::from(s.micro_batch_size) * u64::from(self.model.seq_len) / u64::from(s.cp.max(1));
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
                fp8_weights: Bytes(0),
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

    /// The same plan with a changed strategy (for what-ifs).
    pub fn with_strategy(&self, s: &Strategy) -> Result<Plan, PlanError> {
        Plan::build(&self.model, &self.cluster, s)
    }
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
