//! Checkpoints: weights and optimizer state in safetensors, plus a JSON manifest, written
//! atomically.
//!
//! A run directory holds `step-NNNNNNNN/` folders and a `latest` file naming the newest. Each
//! folder is written under a temporary name and renamed into place only when complete (a
//! rename within one directory is atomic on POSIX file systems), so a crash leaves either the
//! previous checkpoint or the new one, never half of one. The manifest records the content
//! hash of every file, so a truncated or altered file is reported instead of loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pangu_model::ModelConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::fsio::fnv1a;
use crate::model::Layout;
use crate::TrainError;

/// Manifest format tag.
pub const FORMAT: &str = "pangu-twin-checkpoint/1";

/// Writes `bytes` to `path` through a temporary file and a rename (kept here for callers of
/// `checkpoint::write_atomic`; it lives in [`crate::fsio`]).
pub use crate::fsio::write_atomic;

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Samples consumed (the data position).
    pub samples_seen: u64,
    /// The run's seed (initial weights, dropout masks and data order derive from it).
    pub seed: u64,
    /// The model.
    pub model: ModelConfig,
    /// Hash of the tokenizer's vocabulary.
    pub tokenizer_hash: String,
    /// The training settings of the run (JSON object written by the trainer).
    pub settings: serde_json::Value,
    /// Parameters.
    pub params: u64,
    /// FNV-1a hash of each file in the folder.
    pub files: BTreeMap<String, String>,
}

fn to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises the tensors of `layout` from `buf`, names prefixed with `prefix`.
fn tensors_bytes(layout: &Layout, bufs: &[(&str, &[f32])]) -> Result<Vec<u8>, TrainError> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = bufs
        .iter()
        .flat_map(|(prefix, buf)| {
            layout.tensors.iter().map(move |t| {
                (
                    format!("{prefix}{}", t.name),
                    t.shape.clone(),
                    to_bytes(&buf[t.range()]),
                )
            })
        })
        .collect();
    serialize_f32(&raw)
}

/// Serialises named f32 tensors (name, shape, little-endian bytes) as safetensors.
pub(crate) fn serialize_f32(raw: &[(String, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>, TrainError> {
    let views = raw
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Config(format!("tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| TrainError::Config(format!("safetensors: {e}")))
}

/// Reads the tensors of `layout` named `prefix + name` from safetensors bytes into `out`.
fn read_tensors(
    path: &Path,
    bytes: &[u8],
    layout: &Layout,
    prefix: &str,
    out: &mut [f32],
) -> Result<(), TrainError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| TrainError::invalid(path, format!("not a readable safetensors file: {e}")))?;
    for t in &layout.tensors {
        let name = format!("{prefix}{}", t.name);
        let v = st.tensor(&name).map_err(|_| {
            TrainError::invalid(
                path,
                format!("tensor {name} is missing: the checkpoint is of another model"),
            )
        })?;
        if v.dtype() != Dtype::F32 || v.shape() != t.shape.as_slice() {
            return Err(TrainError::invalid(
                path,
                format!(
                    "tensor {name} is {:?} {:?}, this model needs F32 {:?}: the checkpoint is of another model",
                    v.dtype(),
                    v.shape(),
                    t.shape
                ),
            ));
        }
        for (o, c) in out[t.range()].iter_mut().zip(v.data().chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Ok(())
}

/// Model and optimizer state of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Parameters.
    pub params: Vec<f32>,
    /// Adam first moments.
    pub m: Vec<f32>,
    /// Adam second moments.
    pub v: Vec<f32>,
}

/// Writes checkpoint `manifest.step` into `run_dir` (and the tokenizer file beside the tensors)
/// and points `latest` at it; returns the folder.
pub fn save(
    run_dir: &Path,
    layout: &Layout,
    state: &State,
    manifest: &Manifest,
    tokenizer_json: &[u8],
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let name = format!("step-{:08}", manifest.step);
    let final_dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "weights.safetensors",
            tensors_bytes(layout, &[("", &state.params)])?,
        ),
        (
            "optimizer.safetensors",
            tensors_bytes(layout, &[("m.", &state.m), ("v.", &state.v)])?,
        ),
        ("tokenizer.json", tokenizer_json.to_vec()),
    ];
    let mut man = manifest.clone();
    for (f, bytes) in &files {
        let p = tmp.join(f);
        std::fs::write(&p, bytes).map_err(|e| TrainError::io(&p, e))?;
        man.files
            .insert((*f).to_string(), format!("{:016x}", fnv1a(bytes)));
    }
    let json = serde_json::to_vec_pretty(&man)
        .map_err(|e| TrainError::Config(format!("manifest: {e}")))?;
    let p = tmp.join("manifest.json");
    std::fs::write(&p, json).map_err(|e| TrainError::io(&p, e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    Ok(final_dir)
}

/// The checkpoint folder `path` names: a `step-N` folder itself, or a run folder whose
/// `latest` file names one.
pub fn resolve(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join("manifest.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("latest");
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).map_err(|e| TrainError::io(&latest, e))?;
        let dir = path.join(name.trim());
        if dir.join("manifest.json").is_file() {
            return Ok(dir);
        }
        return Err(TrainError::invalid(
            &latest,
            format!("names {}, which holds no manifest.json", dir.display()),
        ));
    }
    Err(TrainError::invalid(
        path,
        "no checkpoint here: expected a step-N folder with manifest.json, or a run folder with a `latest` file",
    ))
}

/// Reads a checkpoint's manifest and checks every file against its recorded hash.
pub fn read_manifest(dir: &Path) -> Result<(Manifest, BTreeMap<String, Vec<u8>>), TrainError> {
    let mp = dir.join("manifest.json");
    let text = std::fs::read(&mp).map_err(|e| TrainError::io(&mp, e))?;
    let man: Manifest = serde_json::from_slice(&text)
        .map_err(|e| TrainError::invalid(&mp, format!("unreadable manifest: {e}")))?;
    if man.format != FORMAT {
        return Err(TrainError::invalid(
            &mp,
            format!("format '{}' is not '{FORMAT}'", man.format),
        ));
    }
    let files = read_hashed(dir, &man.files)?;
    Ok((man, files))
}

/// Reads the files a manifest lists (name → FNV-1a hash) from `dir`, checking each hash.
pub fn read_hashed(
    dir: &Path,
    listed: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<u8>>, TrainError> {
    let mut files = BTreeMap::new();
    for (f, h) in listed {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
        let got = format!("{:016x}", fnv1a(&bytes));
        if &got != h {
            return Err(TrainError::invalid(
                &p,
                format!("content hash {got} differs from the manifest's {h}: the file is truncated or corrupt"),
            ));
        }
        files.insert(f.clone(), bytes);
    }
    Ok(files)
}

/// Loads a checkpoint for `layout`: the manifest, the state and the tokenizer file's bytes.
pub fn load(dir: &Path, layout: &Layout) -> Result<(Manifest, State, Vec<u8>), TrainError> {
    let (man, files) = read_manifest(dir)?;
    let get = |f: &str| {
        files
            .get(f)
            .ok_or_else(|| TrainError::invalid(dir, format!("the manifest lists no {f}")))
    };
    let mut state = State {
        params: vec![0.0; layout.total],
        m: vec![0.0; layout.total],
        v: vec![0.0; layout.total],
    };
    read_tensors(
        &dir.join("weights.safetensors"),
        get("weights.safetensors")?,
        layout,
        "",
        &mut state.params,
    )?;
    let opt = get("optimizer.safetensors")?;
    let op = dir.join("optimizer.safetensors");
    read_tensors(&op, opt, layout, "m.", &mut state.m)?;
    read_tensors(&op, opt, layout, "v.", &mut state.v)?;
    Ok((man, state, get("tokenizer.json")?.clone()))
}
