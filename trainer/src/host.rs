//! A plan on this machine, and what the executor derives from it: the `cpu-host` cluster as
//! N virtual devices (optionally grouped into virtual servers, so that hierarchical
//! collectives run on one host), the executor's check of a plan, each chunk's model part, the
//! flat-buffer ranges of the plan's chunk parts and gradient buckets, and a rank's optimizer
//! shard. The distributed executor and the sharded checkpoints both read them here.

use std::ops::Range;

use pangu_model::ModelConfig;
use pangu_strategies::collective::{chunk, CollectiveGroup};
use pangu_strategies::plan::{ChunkPart, GradBucket};
use pangu_strategies::strategy::{OptShard, Precision, StrategySpec};
use pangu_strategies::{Chunk, CollectiveKind, Coords, LayerId, Plan};

use crate::comm::GroupPrograms;
use crate::model::{Layout, Part};
use crate::train::Settings;
use crate::TrainError;

/// The plan of `spec` for `cfg` on this machine: the `cpu-host` preset with one virtual
/// device per rank (dp × cp × tp × pp; dp defaults to 1), fp32 unless the spec says otherwise.
pub fn plan_for(cfg: &ModelConfig, spec: &StrategySpec) -> Result<Plan, TrainError> {
    plan_on(cfg, spec, 1)
}

/// [`plan_for`] with the devices grouped into `servers` virtual servers (consecutive ranks
/// per server), so that collectives see a multi-server placement.
pub fn plan_on(cfg: &ModelConfig, spec: &StrategySpec, servers: u32) -> Result<Plan, TrainError> {
    let mut spec = spec.clone();
    spec.precision.get_or_insert(Precision::Fp32);
    // The executor trains the PanGu-α architecture, whose framework keeps the vocabulary
    // unpadded (MindSpore): padding only where tp needs it (to a multiple of tp), unless the
    // spec says otherwise (Megatron's default 128 pads to a multiple of 128·tp). Either runs:
    // the padded rows are masked out of the softmax (`model::Part::vocab_pad`), so the
    // default changes no result, only the work spent on padding.
    spec.vocab_divisible_by.get_or_insert(1);
    let devices = spec.dp.unwrap_or(1)
        * spec.cp.unwrap_or(1).max(1)
        * spec.tp.unwrap_or(1)
        * spec.pp.unwrap_or(1);
    spec.dp.get_or_insert(1);
    spec.devices = Some(devices);
    let cluster = host_cluster(devices, servers)?;
    // The run's sequence length and batch: the spec's, a legacy model file's, or the
    // reference run's (pangu-alpha-tiny's 128 × 8).
    let shape = pangu_strategies::run_shape(cfg, &spec)?;
    let cfg = cfg
        .with_seq_len(shape.seq_len)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let (strategy, _) =
        pangu_strategies::strategy::resolve(&spec, &spec, shape.global_batch, devices)?;
    Ok(Plan::new(&cfg, &cluster, &strategy)?)
}

/// This machine as `devices` virtual devices: the `cpu-host` preset with the devices split
/// over `servers` virtual servers (threads or processes of one machine) and the machine's
/// memory split between them.
pub fn host_cluster(devices: u32, servers: u32) -> Result<pangu_hardware::Cluster, TrainError> {
    let text = pangu_hardware::preset_toml("cpu-host")?;
    let mut spec = pangu_hardware::ClusterSpec::from_toml(text, "cpu-host")?;
    let machine = spec.chip.hbm.0 * u64::from(spec.server.chips);
    let devices = devices.max(1);
    let servers = servers.max(1);
    if !devices.is_multiple_of(servers) {
        return Err(TrainError::Config(format!(
            "--virtual-servers {servers} does not divide the {devices} devices; use a divisor of {devices}"
        )));
    }
    spec.chips = devices;
    spec.server.chips = devices / servers;
    // The machine's cores are split evenly between the virtual servers.
    spec.server.shared_cores = spec.server.shared_cores.map(|c| c / f64::from(servers));
    if servers > 1 {
        spec.network.nics_per_server = 1;
        spec.network.servers_per_rack = servers;
    }
    spec.chip.hbm = pangu_hardware::Bytes(machine / u64::from(devices));
    Ok(pangu_hardware::Cluster::new(spec)?)
}

/// Checks that the executor can run `plan` with `settings`; the error names the value.
pub fn check_plan(plan: &Plan, settings: &Settings) -> Result<(), TrainError> {
    settings.validate()?;
    let s = &plan.strategy;
    if s.precision != Precision::Fp32 {
        return Err(TrainError::Unsupported(format!(
            "precision {}: the CPU executor trains in fp32 (set precision = \"fp32\")",
            s.precision
        )));
    }
    if s.tp_comm_overlap {
        return Err(TrainError::Unsupported(
            "tp_comm_overlap: the CPU executor runs the sequence-parallel all-gathers and \
             reduce-scatters between its products, not split and overlapped with them; drop the \
             key to train (the results are the same), keep it to simulate Megatron's overlap"
                .into(),
        ));
    }
    // A device's rows of a micro-batch: its s/cp tokens of each sample.
    let tokens = plan.model.seq_len / s.cp.max(1);
    let rows = s.micro_batch_size * tokens;
    if s.seq_parallel && s.tp > 1 && !rows.is_multiple_of(s.tp) {
        return Err(TrainError::Config(format!(
            "seq_parallel: the {rows} rows of a micro-batch (micro-batch size {} × {tokens} tokens of the sequence on each cp rank) do not split into tp {} blocks",
            s.micro_batch_size, s.tp
        )));
    }
    if settings.batch != s.global_batch as usize
        || settings.micro_batches != s.micro_batches as usize
    {
        return Err(TrainError::Config(format!(
            "the training settings ask for batch {} in {} micro-batches but the plan has global batch {} in {} micro-batches",
            settings.batch, settings.micro_batches, s.global_batch, s.micro_batches
        )));
    }
    Ok(())
}

/// Global layer indices of a chunk of the plan.
pub fn layer_range(cfg: &ModelConfig, layers: &[LayerId]) -> Range<usize> {
    let idx = |l: &LayerId| match l {
        LayerId::Block(i) => *i as usize,
        LayerId::Query => cfg.layers as usize - 1,
    };
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) => idx(a)..idx(b) + 1,
        _ => 0..0,
    }
}

/// The model part the device at `at` holds for `chunk` (its tensor-parallel slice, and its
/// tokens under context parallelism).
pub fn chunk_part(plan: &Plan, chunk: &Chunk, at: Coords) -> Part {
    let s = &plan.strategy;
    Part {
        tp: s.tp as usize,
        tp_rank: at.tp as usize,
        layers: layer_range(&plan.model, &chunk.layers),
        embedding: chunk.embedding,
        head: chunk.head,
        seq_parallel: s.seq_parallel && s.tp > 1,
        cp: s.cp.max(1) as usize,
        cp_rank: at.cp as usize,
        vocab_pad: plan.padded_vocab.saturating_sub(plan.model.vocab) as usize,
    }
}

/// The ranges of `layout`'s flat buffer that hold one of the plan's chunk parts.
pub fn part_ranges(layout: &Layout, part: ChunkPart) -> Vec<Range<usize>> {
    let p = &layout.part;
    let shared = layout.shares_table();
    let ranges = match part {
        ChunkPart::SharedTable => vec![layout.wte.clone()],
        ChunkPart::Embedding if shared => vec![layout.wpe.clone()],
        ChunkPart::Embedding => vec![layout.wte.clone(), layout.wpe.clone()],
        ChunkPart::Layer(i) => {
            let mut v = vec![layout.layers.get(i).map(|l| l.span()).unwrap_or(0..0)];
            if p.layers.start + i + 1 == layout.dims.layers && layout.dims.query {
                v.push(layout.wqe.clone());
            }
            v
        }
        ChunkPart::Head => vec![
            layout.lnf_g.clone(),
            layout.lnf_b.clone(),
            layout.head_w.clone(),
        ],
    };
    ranges.into_iter().filter(|r| !r.is_empty()).collect()
}

/// A gradient bucket of the plan as ranges of a chunk's flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRanges {
    /// The plan's bucket.
    pub bucket: GradBucket,
    /// Its parts' ranges in buffer order, touching ones joined (a bucket of whole layers is
    /// one range: reduced and gathered in place).
    pub ranges: Vec<Range<usize>>,
    /// Elements.
    pub len: usize,
}

impl BucketRanges {
    /// The ranges of the bucket's elements `within` (offsets into the bucket's concatenation).
    pub fn sub(&self, within: Range<usize>) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut at = 0;
        for r in &self.ranges {
            let (lo, hi) = (within.start.max(at), within.end.min(at + r.len()));
            if lo < hi {
                out.push(r.start + lo - at..r.start + hi - at);
            }
            at += r.len();
        }
        out
    }
}

/// The gradient buckets of chunk `ci` of `stage`, in the plan's issue order.
pub fn chunk_buckets(plan: &Plan, stage: u32, ci: usize, layout: &Layout) -> Vec<BucketRanges> {
    plan.grad_buckets(stage)
        .into_iter()
        .filter(|b| b.chunk == ci)
        .map(|bucket| {
            let mut parts: Vec<Range<usize>> = bucket
                .parts
                .iter()
                .flat_map(|&p| part_ranges(layout, p))
                .collect();
            parts.sort_by_key(|r| r.start);
            let mut ranges: Vec<Range<usize>> = Vec::with_capacity(parts.len());
            for r in parts {
                match ranges.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => ranges.push(r),
                }
            }
            let len = ranges.iter().map(Range::len).sum();
            BucketRanges {
                bucket,
                ranges,
                len,
            }
        })
        .collect()
}

/// Whether the plan shards the optimizer (and so the reduced gradients) over its dp·cp
/// gradient-reduction group.
pub fn is_sharded(plan: &Plan) -> bool {
    plan.strategy.opt_shard != OptShard::None && plan.strategy.dp_cp() > 1
}

/// The position of the device at `at` in its gradient-reduction group of dp·cp ranks (dp
/// index major, cp index minor: [`pangu_strategies::Mesh::group_of`]'s order).
pub fn reduction_index(plan: &Plan, at: Coords) -> usize {
    (at.dp * plan.strategy.cp.max(1) + at.cp) as usize
}

/// The ranges of a chunk's flat buffer that member `dp_rank` of the gradient-reduction group
/// ([`reduction_index`]) updates: its [`chunk`] of every bucket when the optimizer is
/// sharded, else the whole buffer.
pub fn shard_ranges(
    plan: &Plan,
    buckets: &[BucketRanges],
    layout: &Layout,
    dp_rank: usize,
) -> Vec<Range<usize>> {
    if !is_sharded(plan) {
        return std::iter::once(0..layout.total).collect();
    }
    let dp = plan.strategy.dp_cp() as usize;
    buckets
        .iter()
        .flat_map(|b| b.sub(chunk(b.len, dp, dp_rank)))
        .collect()
}

/// The collective programs of one group of the plan (ranks are chips of its mesh).
pub fn programs(plan: &Plan, key: CollectiveGroup, ranks: &[usize]) -> GroupPrograms {
    let chips: Vec<u32> = ranks.iter().map(|&r| r as u32).collect();
    GroupPrograms {
        all_reduce: plan.program(key, CollectiveKind::AllReduce, &chips),
        reduce_scatter: plan.program(key, CollectiveKind::ReduceScatter, &chips),
        all_gather: plan.program(key, CollectiveKind::AllGather, &chips),
    }
}
