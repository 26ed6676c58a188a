//! The one reader of a model argument, for every command: a preset name (or alias), a model
//! TOML file, or a Hugging Face `config.json` (any path ending in `.json`).

use std::path::Path;

use crate::config::{preset_toml, ModelConfig};
use crate::hf::from_hf_config;
use crate::{Loaded, ModelError};

/// Whether `arg` names a file rather than a preset: it ends in `.toml` or `.json`, has a
/// path separator, or is an existing file.
pub fn is_file_arg(arg: &str) -> bool {
    arg.ends_with(".toml")
        || arg.ends_with(".json")
        || arg.contains('/')
        || Path::new(arg).is_file()
}

/// Reads a model argument: a `.json` file is a Hugging Face `config.json`, another file a
/// model TOML, anything else a preset name.
pub fn load(arg: &str) -> Result<Loaded, ModelError> {
    if !is_file_arg(arg) {
        return Ok(Loaded {
            config: ModelConfig::from_toml(preset_toml(arg)?, arg)?,
            notes: Vec::new(),
        });
    }
    let text = std::fs::read_to_string(arg).map_err(|e| ModelError::Read {
        path: arg.to_string(),
        message: e.to_string(),
    })?;
    from_text(&text, arg)
}

/// A model file's text, read by its name's extension (`.json`: Hugging Face).
pub fn from_text(text: &str, source_name: &str) -> Result<Loaded, ModelError> {
    if source_name.ends_with(".json") {
        from_hf_config(text, source_name)
    } else {
        Ok(Loaded {
            config: ModelConfig::from_toml(text, source_name)?,
            notes: Vec::new(),
        })
    }
}
