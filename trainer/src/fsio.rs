//! Files the trainer writes and checks: the FNV-1a content hash (checkpoint manifests, the
//! tokenizer's hash) and writing a file atomically (a temporary file, then a rename).

use std::path::Path;

use crate::TrainError;

/// FNV-1a, 64 bit: the content hash that ties checkpoints to their tokenizer.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
