//! The calibration → profile step: measure this machine with the executor's own code paths
//! (`pangu_trainer::calibrate`) and describe it as a cluster of virtual devices sharing its
//! cores, in the presets' TOML format, checked by reading it back.

use pangu_hardware::Cluster;
use pangu_model::ModelConfig;
use pangu_trainer::calibrate::{self, Machine};

use crate::TwinError;

/// The most virtual devices a profile describes.
pub const MAX_DEVICES: u32 = 1024;

/// What `pangu twin calibrate` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalibrationSettings {
    /// Virtual devices the profile describes (the executor's ranks).
    pub devices: u32,
    /// Sequences per micro-batch of the measured products.
    pub micro_batch_size: u32,
    /// Fewer repetitions.
    pub quick: bool,
}

/// A hardware profile: its TOML and the cluster it reads back as.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile in the presets' format (a cluster file the other commands read).
    pub toml: String,
    /// The profile, read back.
    pub cluster: Cluster,
}

/// A calibration: what was measured and the profile it gives.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The measurements.
    pub machine: Machine,
    /// The profile of the requested devices.
    pub profile: Profile,
}

/// The machine's memory from /proc/meminfo (24 GiB when unreadable).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(24 << 30, |kb| kb * 1024)
}

/// Measures this machine over `cfg`'s shapes with `micro_batch_size` sequences per product
/// and `workers` threads at once (at least the core count).
pub fn measure(cfg: &ModelConfig, micro_batch_size: u32, workers: u32, quick: bool) -> Machine {
    calibrate::measure(
        cfg.hidden as usize,
        cfg.ffn as usize,
        cfg.vocab as usize,
        cfg.heads as usize,
        cfg.seq_len as usize,
        micro_batch_size as usize * cfg.seq_len as usize,
        workers as usize,
        quick,
    )
}

/// The profile of `devices` virtual devices sharing the measured machine and its memory.
pub fn profile(machine: &Machine, devices: u32) -> Result<Profile, TwinError> {
    let toml = calibrate::profile_toml(machine, devices, memory_bytes());
    let cluster =
        Cluster::from_toml(&toml, "calibrated profile", None).map_err(TwinError::Profile)?;
    Ok(Profile { toml, cluster })
}

/// `cfg` at its run's sequence length: a legacy model file's own, else the reference run's
/// (pangu-alpha-tiny's 128); a model with neither is an error naming what to pass.
pub fn at_run_length(cfg: &ModelConfig) -> Result<ModelConfig, TwinError> {
    let shape = pangu_strategies::run_shape(cfg, &pangu_strategies::StrategySpec::default())?;
    Ok(cfg
        .with_seq_len(shape.seq_len)
        .map_err(pangu_strategies::PlanError::Model)?)
}

/// Measures this machine for `cfg` (at its run's sequence length) and writes the profile of
/// the requested devices.
pub fn calibrate(
    cfg: &ModelConfig,
    settings: &CalibrationSettings,
) -> Result<Calibration, TwinError> {
    if settings.devices == 0 || settings.devices > MAX_DEVICES {
        return Err(TwinError::Devices {
            devices: settings.devices,
        });
    }
    if settings.micro_batch_size == 0 {
        return Err(TwinError::EmptyMicroBatch);
    }
    let machine = measure(
        &at_run_length(cfg)?,
        settings.micro_batch_size,
        settings.devices,
        settings.quick,
    );
    let profile = profile(&machine, settings.devices)?;
    Ok(Calibration { machine, profile })
}
