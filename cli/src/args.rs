//! Options shared by every command that takes a model, a cluster and a strategy.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use pangu_hardware::{split_count, Cluster};
use pangu_model::ModelConfig;
use pangu_strategies::launch::Launch;
use pangu_strategies::{resolve_inputs, Reference, Remat, Resolved, ScheduleKind, StrategySpec};

use crate::flag_enums::{
    lenient, AttentionFlag, CpCommFlag, GatherFlag, GradAccumulationFlag, OptShardFlag,
    PrecisionFlag, PrefetchFlag, RankOrderFlag,
};

/// Model and cluster selection.
#[derive(Debug, Clone, Args)]
pub(crate) struct SetupArgs {
    /// Model preset name (see `pangu models`), a model TOML file, or a Hugging Face
    /// `config.json` (a path ending in `.json`: Llama, Mistral, Qwen2, GPT-2) [default:
    /// pangu-alpha-200b, or the shape in --megatron-args].
    #[arg(long)]
    pub model: Option<String>,
    /// Cluster preset or TOML file, with an optional chip count: `ascend910:512`,
    /// `dgx-a100-80g:64`, `my-cluster.toml:256`. Default: the model's reference cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

/// Inline strategy flags; they override a `--strategy` file, which overrides the model's
/// reference strategy.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct StrategyArgs {
    /// Strategy TOML file (keys are these flag names with underscores).
    #[arg(long, value_name = "FILE")]
    pub strategy: Option<String>,
    /// Megatron-LM arguments, e.g. "--num-layers 24 --tensor-model-parallel-size 8 ...":
    /// the model shape (used as the model) and the strategy; they override --strategy, flags
    /// override them. Shell variables are not expanded.
    #[arg(
        long,
        value_name = "ARGS",
        conflicts_with = "megatron_args_file",
        allow_hyphen_values = true
    )]
    pub megatron_args: Option<String>,
    /// A file holding Megatron-LM arguments (as --megatron-args; `\` continuations allowed).
    #[arg(long, value_name = "FILE")]
    pub megatron_args_file: Option<String>,
    /// A DeepSpeed JSON config (batches, ZeRO stage, precision); combines with --model or
    /// --megatron-args.
    #[arg(long, value_name = "FILE")]
    pub deepspeed_config: Option<String>,
    /// Chips the job uses (default: the whole cluster).
    #[arg(long)]
    pub devices: Option<u32>,
    /// Data-parallel degree (default: fills the devices).
    #[arg(long)]
    pub dp: Option<u32>,
    /// Op-level (tensor) parallel degree.
    #[arg(long)]
    pub tp: Option<u32>,
    /// Pipeline stages.
    #[arg(long)]
    pub pp: Option<u32>,
    /// Context-parallel degree: the sequence split over this many ranks (2·cp must divide
    /// the sequence; default 1).
    #[arg(long)]
    pub cp: Option<u32>,
    /// Context parallelism's K/V exchange: `ring` (Megatron-core's p2p ring, overlapped
    /// with attention; default) or `all-gather` (Llama 3's).
    #[arg(long, value_parser = lenient::<CpCommFlag>())]
    pub cp_comm: Option<CpCommFlag>,
    /// Micro-batches per step per pipeline.
    #[arg(long)]
    pub micro_batches: Option<u32>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub micro_batch_size: Option<u32>,
    /// Sequences per optimizer step (default: the model preset's reference run).
    #[arg(long)]
    pub global_batch: Option<u32>,
    /// Training sequence length in tokens (default: the model preset's reference run; a
    /// config.json's max_position_embeddings is not one).
    #[arg(long)]
    pub seq_len: Option<u32>,
    /// Pipeline schedule: gpipe, 1f1b or interleaved:V.
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Optimizer sharding over the data-parallel group.
    #[arg(long, value_parser = lenient::<OptShardFlag>())]
    pub opt_shard: Option<OptShardFlag>,
    /// Rematerialisation: none, selective, full or every:K.
    #[arg(long)]
    pub remat: Option<Remat>,
    /// Sequence parallelism (`--seq-parallel` or `--seq-parallel=false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub seq_parallel: Option<bool>,
    /// Precision.
    #[arg(long, value_parser = lenient::<PrecisionFlag>())]
    pub precision: Option<PrecisionFlag>,
    /// Rank numbering, slowest axis first, e.g. pp-dp-tp (PanGu-α's) or dp-pp-tp.
    #[arg(long, value_parser = lenient::<RankOrderFlag>())]
    pub rank_order: Option<RankOrderFlag>,
    /// ZeRO-3 weight gathers in the training precision (`compute`, default) or in `fp32`
    /// (FSDP with fp32 `param_dtype`, e.g. Composer's 2023 `DEFAULT` mixed precision).
    #[arg(long, value_parser = lenient::<GatherFlag>())]
    pub zero3_gather: Option<GatherFlag>,
    /// ZeRO-3 backward prefetch: `pre` (default; the next gather overlaps this part's
    /// backward) or `post` (gathered after it: FSDP `BACKWARD_POST`, Composer's default).
    #[arg(long, value_parser = lenient::<PrefetchFlag>())]
    pub zero3_prefetch: Option<PrefetchFlag>,
    /// How micro-batches' weight gradients are summed: `fused` (default; the weight-gradient
    /// product adds into the buffer, Megatron-core) or `separate` (an add pass per weight and
    /// micro-batch: Megatron-LM 2021, `--no-gradient-accumulation-fusion`).
    #[arg(long, value_parser = lenient::<GradAccumulationFlag>())]
    pub grad_accumulation: Option<GradAccumulationFlag>,
    /// Collective algorithm of a group: `KIND=ALGO` with KIND tp, dp, opt, pp or cp and ALGO
    /// auto, ring, tree, halving-doubling or hierarchical (repeatable); a bare `ALGO` sets
    /// every group. `auto` is the cluster's collective library's default.
    #[arg(long, value_name = "KIND=ALGO")]
    pub collective: Vec<String>,
    /// Pad the vocabulary to a multiple of this × tp (Megatron-LM's
    /// `--make-vocab-size-divisible-by`; default 128, PanGu-α's references 1).
    #[arg(long, value_name = "N")]
    pub vocab_divisible_by: Option<u32>,
    /// The attention kernel: `flash` (one fused kernel that keeps no s×s matrix:
    /// FlashAttention, cuDNN's fused attention, CANN's FlashAttentionScore) or `materialised`
    /// (separate softmax and dropout kernels; the scores are written and kept). Default:
    /// materialised on every chip for now (the A100/H100 calibration was fitted with it; the
    /// plan's note says when the chip's stack would fuse attention).
    #[arg(long, value_parser = lenient::<AttentionFlag>())]
    pub attention: Option<AttentionFlag>,
    /// Overlap the sequence-parallel all-gathers and reduce-scatters with the GEMMs they feed
    /// or drain (Megatron-LM's `--tp-comm-overlap`; needs tp > 1 and --seq-parallel).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub tp_comm_overlap: Option<bool>,
    /// A pipeline stage waits for each send to complete before computing on (Megatron-LM
    /// without `--overlap-p2p-communication`, DeepSpeed's pipeline engine). Default false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub p2p_blocking: Option<bool>,
}

impl StrategyArgs {
    /// The launch configuration (Megatron arguments and/or a DeepSpeed config), if given.
    pub(crate) fn launch(&self) -> Result<Option<Launch>> {
        let megatron = match (&self.megatron_args, &self.megatron_args_file) {
            (Some(line), _) => Some(Launch::from_megatron(line).context("--megatron-args")?),
            (None, Some(path)) => {
                Some(Launch::from_megatron_file(Path::new(path)).context("--megatron-args-file")?)
            }
            (None, None) => None,
        };
        let deepspeed = self
            .deepspeed_config
            .as_deref()
            .map(|p| Launch::from_deepspeed_file(Path::new(p)).context("--deepspeed-config"))
            .transpose()?;
        Ok(match (megatron, deepspeed) {
            (Some(m), Some(d)) => Some(m.combine(d)?),
            (m, d) => m.or(d),
        })
    }

    /// The user's spec, for commands whose model is not a simulated one (`train`): the file,
    /// the launch configuration, the flags; launch notes go to stderr.
    pub(crate) fn spec(&self) -> Result<StrategySpec> {
        let launch = self.launch()?;
        if let Some(l) = &launch {
            if l.model.is_some() {
                bail!(
                    "the Megatron arguments carry a model shape, but this command takes its model from --model;                      drop --num-layers / --hidden-size / --num-attention-heads from them"
                );
            }
            for n in l.summary_notes() {
                eprintln!("note: {n}");
            }
        }
        self.spec_with(launch.as_ref())
    }

    /// The user's spec: the file (if any), overlaid with the launch configuration, overlaid
    /// with the flags.
    pub(crate) fn spec_with(&self, launch: Option<&Launch>) -> Result<StrategySpec> {
        let file = match &self.strategy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read strategy file {path}"))?;
                StrategySpec::from_toml(&text, path)?
            }
            None => StrategySpec::default(),
        };
        let flags = StrategySpec {
            devices: self.devices,
            dp: self.dp,
            tp: self.tp,
            pp: self.pp,
            cp: self.cp,
            cp_comm: self.cp_comm.map(Into::into),
            micro_batches: self.micro_batches,
            micro_batch_size: self.micro_batch_size,
            global_batch: self.global_batch,
            seq_len: self.seq_len,
            schedule: self.schedule,
            opt_shard: self.opt_shard.map(Into::into),
            remat: self.remat,
            seq_parallel: self.seq_parallel,
            precision: self.precision.map(Into::into),
            rank_order: self.rank_order.map(Into::into),
            layers_per_stage: None,
            grad_bucket: None,
            zero3_gather: self.zero3_gather.map(Into::into),
            zero3_prefetch: self.zero3_prefetch.map(Into::into),
            vocab_divisible_by: self.vocab_divisible_by,
            attention: self.attention.map(Into::into),
            tp_comm_overlap: self.tp_comm_overlap,
            grad_accumulation: self.grad_accumulation.map(Into::into),
            p2p_blocking: self.p2p_blocking,
            collectives: if self.collective.is_empty() {
                None
            } else {
                Some(
                    pangu_strategies::collective::CollectivesSpec::from_flags(&self.collective)
                        .map_err(anyhow::Error::msg)?,
                )
            },
        };
        let launch = launch.map(|l| l.spec.clone()).unwrap_or_default();
        Ok(file.overlay(&launch).overlay(&flags))
    }
}

fn is_file_arg(s: &str) -> bool {
    pangu_model::load::is_file_arg(s)
}

/// A model preset, model TOML or Hugging Face config.json (what the file's shape leaves out
/// is printed as notes on stderr).
pub(crate) fn load_model(arg: &str) -> Result<ModelConfig> {
    let loaded = pangu_model::load(arg)?;
    for n in &loaded.notes {
        eprintln!("note: {arg}: {n}");
    }
    Ok(loaded.config)
}

/// A cluster preset or file, `NAME[:N]`.
pub(crate) fn load_cluster(arg: &str) -> Result<Cluster> {
    let (name, count) = split_count(arg)?;
    if is_file_arg(name) {
        let text = std::fs::read_to_string(name)
            .with_context(|| format!("cannot read cluster file {name}"))?;
        Ok(Cluster::from_toml(&text, name, count)?)
    } else {
        Ok(Cluster::from_name(arg)?)
    }
}

/// Everything a plan needs, resolved.
pub(crate) struct Setup {
    /// The model at the run's sequence length.
    pub model: ModelConfig,
    pub resolved: Resolved,
}

/// The model and the user's spec, before resolution, with the launch configuration's notes.
pub(crate) struct Inputs {
    pub model: ModelConfig,
    pub spec: StrategySpec,
    pub notes: Vec<String>,
}

/// The model preset used when neither --model nor a Megatron shape is given.
const DEFAULT_MODEL: &str = "pangu-alpha-200b";

impl SetupArgs {
    /// `--cluster`, else the model's reference cluster (`reference`: the model's reference).
    pub(crate) fn cluster_or_reference(
        &self,
        model: &ModelConfig,
        reference: Option<&Reference>,
    ) -> Result<Cluster> {
        match (&self.cluster, reference) {
            (Some(c), _) => load_cluster(c),
            (None, Some(r)) => Ok(Cluster::from_name(&r.cluster)?),
            (None, None) => bail!(
                "model {} ({:.3} B parameters) has no reference cluster to plan it on; pass --cluster NAME:N (see `pangu clusters`), e.g. --cluster dgx-h100:8",
                model.name,
                model.params().total as f64 / 1e9
            ),
        }
    }

    /// The model (the launch's shape, else --model, else the default preset) with the spec's
    /// training length, and the spec: strategy file < launch configuration < flags.
    pub(crate) fn inputs(&self) -> Result<Inputs> {
        let launch = self.strategy.launch()?;
        let model = match (launch.as_ref().and_then(|l| l.model.as_ref()), &self.model) {
            (Some(_), Some(m)) => bail!(
                "--model {m} and a model shape in the Megatron arguments: give one (drop --model, \
                 or drop --num-layers / --hidden-size / --num-attention-heads from the arguments)"
            ),
            (Some(m), None) => m.clone(),
            (None, m) => load_model(m.as_deref().unwrap_or(DEFAULT_MODEL))?,
        };
        let spec = self.strategy.spec_with(launch.as_ref())?;
        let model = spec.model_for(&model)?;
        let notes = launch.map(|l| l.summary_notes()).unwrap_or_default();
        Ok(Inputs { model, spec, notes })
    }

    pub(crate) fn resolve(&self) -> Result<Setup> {
        let Inputs { model, spec, notes } = self.inputs()?;
        let cluster = self.cluster.as_deref().map(load_cluster).transpose()?;
        if spec.layers_per_stage.is_some() && spec.pp.is_none() {
            bail!("layers_per_stage needs pp in the same strategy file");
        }
        let mut resolved = resolve_inputs(&model, cluster, &spec)?;
        resolved.notes.splice(0..0, notes);
        Ok(Setup {
            model: resolved.model.clone(),
            resolved,
        })
    }
}

/// How the executor's ranks communicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// One thread per rank in this process.
    Threads,
    /// One process per rank under `mpirun -np N` (a build with `--features mpi`).
    Mpi,
}

impl Backend {
    /// Errors unless this binary can run the backend.
    pub(crate) fn available(self) -> Result<()> {
        if self == Backend::Mpi && !cfg!(feature = "mpi") {
            bail!(
                "--backend mpi: this binary was built without MPI; build it with `cargo build --release --features mpi` \
                 (needs Debian's libopenmpi-dev, openmpi-bin and libclang-dev) and start it with `mpirun -np N`"
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Threads => "threads",
            Backend::Mpi => "mpi",
        })
    }
}
