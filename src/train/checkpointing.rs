//! Saving and loading the trainer's complete state as a checkpoint directory (see [`crate::run::checkpoint`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ema::Ema;
use super::optimizer::AdamW;
use crate::run::checkpoint::{read_manifest, read_verified, verify_checkpoint, CheckpointWriter};

/// The trainer.json format this build writes and reads: a later Wick that changes what a resume needs
/// raises it, so that an older Wick refuses its checkpoints instead of resuming them inexactly.
/// Format 2 added the rollback learning-rate scale: a state with a scale other than 1 is written as format 2
/// (an older Wick would resume it at the full rate), any other as format 1.
pub const TRAINER_FORMAT: u32 = 2;

fn first_trainer_format() -> u32 {
    1
}

fn unit_scale() -> f64 {
    1.0
}

/// One return to an earlier checkpoint after a non-finite step (`on_nan = "rollback"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// Global step of the non-finite step.
    pub at_step: u64,
    /// Global step of the checkpoint returned to.
    pub to_step: u64,
    /// What was non-finite.
    pub what: String,
    /// The learning-rate multiplier after it.
    pub lr_scale: f64,
}

/// trainer.json: counters and streams needed to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Its format ([`TRAINER_FORMAT`]; files written before the field existed are format 1).
    #[serde(default = "first_trainer_format")]
    pub format: u32,
    /// Steps applied (or skipped by the NaN guard) so far on the global axis.
    pub global_step: u64,
    /// Index of the stage the next step belongs to.
    pub stage_index: usize,
    /// Name of that stage.
    pub stage: String,
    /// Steps of that stage already done.
    pub step_in_stage: u64,
    /// Global step at which that stage started.
    pub stage_start_step: u64,
    /// Training samples consumed so far (the data order's position).
    pub data_cursor: u64,
    /// Consecutive non-finite steps at the time of saving.
    pub consecutive_bad_steps: u32,
    /// Seconds of training so far over all sessions.
    pub wall_secs: f64,
    /// The run seed the random streams derive from; step `s` draws from stream `s` of each key.
    pub seed: u64,
    /// Description of the random streams, for people reading the file.
    pub rng_streams: String,
    /// EMA updates so far (the EMA's warm-up follows it).
    #[serde(default)]
    pub ema_updates: u64,
    /// Steps in which adapter parameters trained (gate collapse alerts count these).
    #[serde(default)]
    pub adapter_steps: u64,
    /// Sum and count of the logged losses since the last evaluation.
    #[serde(default)]
    pub losses_since_eval: (f64, u64),
    /// The best checkpoint so far.
    #[serde(default)]
    pub best: Option<crate::eval::BestTracker>,
    /// The current stage's early-stopping rule and counters.
    #[serde(default)]
    pub early_stopping: Option<crate::eval::EarlyStopping>,
    /// Gate alert state.
    #[serde(default)]
    pub gate_monitor: Option<crate::eval::GateMonitor>,
    /// Every stage's learning rate is multiplied by this: 1 until a rollback lowered it.
    #[serde(default = "unit_scale")]
    pub lr_scale: f64,
    /// The rollbacks so far, oldest first.
    #[serde(default)]
    pub rollbacks: Vec<Rollback>,
}

impl TrainerState {
    /// The oldest trainer.json format that resumes this state exactly (what [`TrainerState::format`] is set
    /// to when saving), so checkpoints an older Wick can resume stay readable by it.
    pub fn needed_format(&self) -> u32 {
        if self.lr_scale != 1.0 {
            2
        } else {
            1
        }
    }
}

/// Names and variables of every parameter, sorted by name.
pub type NamedVars = Vec<(String, Var)>;

/// Serialises named tensors to safetensors bytes (sorted by name).
pub fn safetensors_bytes<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<Vec<u8>> {
    let mut items: Vec<(&String, &Tensor)> = tensors.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    Ok(safetensors::tensor::serialize(items, None)?)
}

/// Refuses to save weights that hold NaN or infinity.
pub fn ensure_finite(params: &NamedVars) -> Result<()> {
    for (name, var) in params {
        let finite = var.as_tensor().flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
        if !finite {
            bail!("parameter `{name}` holds non-finite values; refusing to checkpoint it");
        }
    }
    Ok(())
}

/// Writes a complete checkpoint for `state.global_step`; returns its directory and size.
pub fn save_checkpoint(
    checkpoints_dir: &Path,
    params: &NamedVars,
    ema: &Ema,
    optimizer: &AdamW,
    state: &TrainerState,
    extra_files: &[(&str, &[u8])],
) -> Result<(PathBuf, u64)> {
    ensure_finite(params)?;
    let mut writer = CheckpointWriter::begin(checkpoints_dir, state.global_step)?;
    let weights: Vec<(&String, Tensor)> = params.iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    writer.write_file("model.safetensors", &safetensors_bytes(weights.iter().map(|(n, t)| (*n, t)))?)?;
    if !ema.is_empty() {
        writer.write_file("ema.safetensors", &safetensors_bytes(ema.tensors())?)?;
    }
    let opt = optimizer.state_tensors()?;
    writer.write_file("optimizer.safetensors", &safetensors_bytes(&opt)?)?;
    let state = TrainerState { format: state.needed_format(), ..state.clone() };
    writer.write_file("trainer.json", &serde_json::to_vec_pretty(&state)?)?;
    for (name, bytes) in extra_files {
        writer.write_file(name, bytes)?;
    }
    writer.finish()
}

/// Everything read back from a verified checkpoint.
pub struct LoadedCheckpoint {
    /// Model weights by name.
    pub weights: HashMap<String, Tensor>,
    /// EMA weights, when the checkpoint has them.
    pub ema: Option<HashMap<String, Tensor>>,
    /// Optimizer state tensors.
    pub optimizer: HashMap<String, Tensor>,
    /// Counters.
    pub state: TrainerState,
}

/// Reads a checkpoint, refusing it when any file differs from its manifest.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<LoadedCheckpoint> {
    let problems = verify_checkpoint(dir);
    if let Some(first) = problems.first() {
        bail!("checkpoint {} is damaged: {first}", dir.display());
    }
    let manifest = read_manifest(dir)?;
    let load = |name: &str| -> Result<HashMap<String, Tensor>> {
        let bytes = read_verified(dir, &manifest, name)?;
        candle_core::safetensors::load_buffer(&bytes, device)
            .with_context(|| format!("{} is not valid safetensors", dir.join(name).display()))
    };
    let weights = load("model.safetensors")?;
    let ema = if manifest.files.contains_key("ema.safetensors") { Some(load("ema.safetensors")?) } else { None };
    let optimizer = load("optimizer.safetensors")?;
    let state_bytes = read_verified(dir, &manifest, "trainer.json")?;
    let path = dir.join("trainer.json");
    let format = serde_json::from_slice::<serde_json::Value>(&state_bytes)
        .ok()
        .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
    if let Some(format) = format.filter(|f| *f > u64::from(TRAINER_FORMAT)) {
        bail!(
            "{} was written by a newer Wick (trainer format {format}; this Wick reads up to {TRAINER_FORMAT}) — \
             resume it with that Wick or a newer one",
            path.display()
        );
    }
    let state = serde_json::from_slice(&state_bytes)
        .with_context(|| format!("{} is not a valid trainer state", path.display()))?;
    Ok(LoadedCheckpoint { weights, ema, optimizer, state })
}

/// Copies `weights` into the model's variables. Strict: every parameter must be present with its shape and
/// no unknown name may appear. Non-strict (warm start): parameters missing from `weights` keep their
/// initial values and are returned; unknown names and wrong shapes are still errors.
pub fn assign_weights(
    params: &NamedVars,
    weights: &HashMap<String, Tensor>,
    strict: bool,
    origin: &str,
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, var) in params {
        match weights.get(name) {
            Some(t) => {
                if t.dims() != var.dims() {
                    bail!("{origin}: `{name}` has shape {:?}, the model expects {:?}", t.dims(), var.dims());
                }
                var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
            None if strict => bail!("{origin}: lacks parameter `{name}`"),
            None => missing.push(name.clone()),
        }
    }
    let mut unknown: Vec<&String> = weights.keys().filter(|k| !params.iter().any(|(n, _)| n == *k)).collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        bail!(
            "{origin}: has `{name}`{}, which this model does not have — is it from another preset?",
            if unknown.len() > 1 { format!(" and {} more", unknown.len() - 1) } else { String::new() }
        );
    }
    Ok(missing)
}
