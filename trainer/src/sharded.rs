//! Sharded checkpoints of the distributed executor: one safetensors file per rank with the
//! weights of its model parts and the Adam moments of its optimizer shard, plus a manifest
//! (the plan's strategy, the step, the settings, every file's content hash).
//!
//! Writing is collective and atomic: every rank writes its file into a hidden temporary
//! folder, all ranks meet at a barrier, then rank 0 hashes the files, writes the tokenizer and
//! the manifest and renames the folder to `step-N` (a crash before the rename leaves no
//! `step-N` and `latest` still names the previous checkpoint).
//!
//! Reading assembles the whole model's weights and moments from the saved plan's parts
//! ([`load_whole`]); each rank of any plan — the same one (resume) or another (re-sharding,
//! MindSpore's strategy-checkpoint conversion) — then cuts out its own part with
//! [`Layout::gather`]. Single-device checkpoints load the same way.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use pangu_model::ModelConfig;
use pangu_strategies::Strategy;
use safetensors::tensor::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::fsio::{fnv1a, write_atomic};
use crate::host;
use crate::model::Layout;
use crate::TrainError;

/// Format tag of sharded manifests.
pub const FORMAT: &str = "pangu-twin-sharded-checkpoint/1";

/// The manifest of a sharded checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedManifest {
    /// [`FORMAT`].
    pub format: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Seed of the run.
    pub seed: u64,
    /// The model.
    pub model: ModelConfig,
    /// The strategy the ranks ran (their parts follow from it).
    pub strategy: Strategy,
    /// FNV-1a of the tokenizer.
    pub tokenizer_hash: String,
    /// Training settings.
    pub settings: serde_json::Value,
    /// File name → FNV-1a of its bytes.
    pub files: BTreeMap<String, String>,
}

/// The whole model's training state.
#[derive(Debug, Clone, PartialEq)]
pub struct WholeState {
    /// Weights in the whole model's layout.
    pub params: Vec<f32>,
    /// Adam first moments.
    pub m: Vec<f32>,
    /// Adam second moments.
    pub v: Vec<f32>,
}

/// One model part of a rank, as saved.
pub struct PartState<'a> {
    /// Its layout.
    pub layout: &'a Layout,
    /// Its weights.
    pub params: &'a [f32],
    /// Adam moments of `shard` of its flat buffer (the ranges concatenated).
    pub m: &'a [f32],
    /// Second moments.
    pub v: &'a [f32],
    /// The ranges of the flat buffer this rank updates.
    pub shard: &'a [Range<usize>],
}

/// The file of rank `r`.
pub fn rank_file(r: usize) -> String {
    format!("rank-{r:05}.safetensors")
}

/// The hidden folder a checkpoint of `step` is written into.
pub fn temp_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!(".step-{step:08}.partial"))
}

fn le(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes rank `rank`'s file into `tmp` (created if needed).
pub fn write_rank(tmp: &Path, rank: usize, parts: &[PartState<'_>]) -> Result<(), TrainError> {
    std::fs::create_dir_all(tmp).map_err(|e| TrainError::io(tmp, e))?;
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (ci, p) in parts.iter().enumerate() {
        for t in &p.layout.tensors {
            raw.push((
                format!("c{ci}.w.{}", t.name),
                t.shape.clone(),
                le(&p.params[t.range()]),
            ));
        }
        raw.push((format!("c{ci}.m"), vec![p.m.len()], le(p.m)));
        raw.push((format!("c{ci}.v"), vec![p.v.len()], le(p.v)));
    }
    let bytes = checkpoint::serialize_f32(&raw)?;
    let p = tmp.join(rank_file(rank));
    std::fs::write(&p, bytes).map_err(|e| TrainError::io(&p, e))
}

/// Rank 0, after every rank wrote its file into `tmp`: hashes them, writes the tokenizer and
/// the manifest, renames `tmp` to `run_dir/step-N` and points `latest` at it.
pub fn finish(
    run_dir: &Path,
    tmp: &Path,
    mut manifest: ShardedManifest,
    ranks: usize,
    tokenizer_json: &[u8],
) -> Result<PathBuf, TrainError> {
    let tp = tmp.join("tokenizer.json");
    std::fs::write(&tp, tokenizer_json).map_err(|e| TrainError::io(&tp, e))?;
    manifest.format = FORMAT.into();
    manifest.files.clear();
    let names = (0..ranks)
        .map(rank_file)
        .chain(std::iter::once("tokenizer.json".to_string()));
    for f in names {
        let p = tmp.join(&f);
        let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
        manifest.files.insert(f, format!("{:016x}", fnv1a(&bytes)));
    }
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| TrainError::Config(format!("manifest: {e}")))?;
    let mp = tmp.join("manifest.json");
    std::fs::write(&mp, json).map_err(|e| TrainError::io(&mp, e))?;
    let name = format!("step-{:08}", manifest.step);
    let final_dir = run_dir.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    Ok(final_dir)
}

/// Whether the checkpoint at `dir` (a step folder or a run folder) is sharded.
pub fn is_sharded(dir: &Path) -> Result<bool, TrainError> {
    let ck = checkpoint::resolve(dir)?;
    let mp = ck.join("manifest.json");
    let text = std::fs::read(&mp).map_err(|e| TrainError::io(&mp, e))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| TrainError::invalid(&mp, format!("unreadable manifest: {e}")))?;
    Ok(v["format"] == FORMAT)
}

/// What [`load_whole`] returns: the manifest's facts and the whole state.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Step folder read.
    pub dir: PathBuf,
    /// Optimizer steps done.
    pub step: u64,
    /// Seed.
    pub seed: u64,
    /// Model.
    pub model: ModelConfig,
    /// The strategy it was saved under (`None` for a single-device checkpoint).
    pub strategy: Option<Strategy>,
    /// Settings.
    pub settings: serde_json::Value,
    /// Tokenizer file bytes.
    pub tokenizer_json: Vec<u8>,
    /// Its hash as the manifest gives it.
    pub tokenizer_hash: String,
    /// Weights and moments of the whole model.
    pub state: WholeState,
}

fn f32s(
    path: &Path,
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, TrainError> {
    let v = st.tensor(name).map_err(|_| {
        TrainError::invalid(
            path,
            format!("tensor {name} is missing: the file does not belong to this checkpoint's plan"),
        )
    })?;
    if v.dtype() != Dtype::F32 || v.shape() != shape {
        return Err(TrainError::invalid(
            path,
            format!(
                "tensor {name} is {:?} {:?}, the plan needs F32 {shape:?}",
                v.dtype(),
                v.shape()
            ),
        ));
    }
    Ok(v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Reads a checkpoint (sharded or single-device) into the whole model's state, checking
/// every file against the manifest's hash.
pub fn load_whole(dir: &Path) -> Result<Loaded, TrainError> {
    let ck = checkpoint::resolve(dir)?;
    if !is_sharded(&ck)? {
        let (man, _) = checkpoint::read_manifest(&ck)?;
        let layout = Layout::new(&man.model).map_err(|e| e.in_file(ck.join("manifest.json")))?;
        let (man, st, tok) = checkpoint::load(&ck, &layout)?;
        return Ok(Loaded {
            dir: ck,
            step: man.step,
            seed: man.seed,
            model: man.model,
            strategy: None,
            settings: man.settings,
            tokenizer_json: tok,
            tokenizer_hash: man.tokenizer_hash,
            state: WholeState {
                params: st.params,
                m: st.m,
                v: st.v,
            },
        });
    }
    let mp = ck.join("manifest.json");
    let text = std::fs::read(&mp).map_err(|e| TrainError::io(&mp, e))?;
    let man: ShardedManifest = serde_json::from_slice(&text)
        .map_err(|e| TrainError::invalid(&mp, format!("unreadable manifest: {e}")))?;
    if man.format != FORMAT {
        return Err(TrainError::invalid(
            &mp,
            format!("format '{}' is not '{FORMAT}'", man.format),
        ));
    }
    let files = checkpoint::read_hashed(&ck, &man.files)?;
    let plan =
        crate::host::plan_for(&man.model, &man.strategy.to_spec()).map_err(|e| e.in_file(&mp))?;
    let whole = Layout::new(&man.model).map_err(|e| e.in_file(&mp))?;
    let mut state = WholeState {
        params: vec![0.0; whole.total],
        m: vec![0.0; whole.total],
        v: vec![0.0; whole.total],
    };
    let sharded = crate::host::is_sharded(&plan);
    for r in 0..plan.mesh.size() {
        let name = rank_file(r as usize);
        let path = ck.join(&name);
        let bytes = files.get(&name).ok_or_else(|| {
            TrainError::invalid(&mp, format!("the manifest lists no {name} for rank {r}"))
        })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            TrainError::invalid(&path, format!("not a readable safetensors file: {e}"))
        })?;
        let c = plan.mesh.coords(r);
        for (ci, chunk) in plan.stages[c.pp as usize].chunks.iter().enumerate() {
            let layout = Layout::part(&man.model, &host::chunk_part(&plan, chunk, c))?;
            let mut p = vec![0.0f32; layout.total];
            for t in &layout.tensors {
                let w = f32s(&path, &st, &format!("c{ci}.w.{}", t.name), &t.shape)?;
                p[t.range()].copy_from_slice(&w);
            }
            layout.scatter(&whole, &p, &mut state.params);
            let buckets = host::chunk_buckets(&plan, c.pp, ci, &layout);
            let index = host::reduction_index(&plan, c);
            let shard = host::shard_ranges(&plan, &buckets, &layout, index);
            let held: usize = shard.iter().map(Range::len).sum();
            // Moments: each element from the member of the dp·cp group that updates it.
            if sharded || index == 0 {
                for (key, out) in [("m", &mut state.m), ("v", &mut state.v)] {
                    let part_m = f32s(&path, &st, &format!("c{ci}.{key}"), &[held])?;
                    let mut full = vec![0.0f32; layout.total];
                    let mut at = 0;
                    for r in &shard {
                        full[r.clone()].copy_from_slice(&part_m[at..at + r.len()]);
                        at += r.len();
                    }
                    for r in &shard {
                        layout.scatter_within(&whole, &full, out, r);
                    }
                }
            }
        }
    }
    let tokenizer_json = files
        .get("tokenizer.json")
        .cloned()
        .ok_or_else(|| TrainError::invalid(&mp, "the manifest lists no tokenizer.json"))?;
    Ok(Loaded {
        dir: ck,
        step: man.step,
        seed: man.seed,
        model: man.model,
        strategy: Some(man.strategy),
        settings: man.settings,
        tokenizer_json,
        tokenizer_hash: man.tokenizer_hash,
        state,
    })
}
