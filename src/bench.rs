//! `wick bench`: the speed of the built-in model, as one JSON line.
//!
//! - Training (the default): the trainer's own step ([`crate::train::step`]) on the shapes task — its loss
//!   with the noise, timestep and dropout draws made every step, backward, the non-finite guard, the global
//!   gradient norm, clipping, AdamW and the EMA — on a few batches made before the clock starts (data
//!   generation excluded, as `shared/reference/dit_reference.py` excludes it for PyTorch).
//! - `--sampler`: evaluation sampling, images/s of the Euler sampler with classifier-free guidance (the two
//!   halves in one batch), as checkpoints' grids and FID samples are drawn; `scripts/dit_reference.py
//!   --sampler` times the same loop in PyTorch.
//!
//! Each report also gives the model's achieved FLOP/s ([`crate::model::train_flops_per_image`]) beside the
//! single-precision GEMM rate measured in the same process on the same threads, so the share of the machine a
//! step uses can be read off.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ModelPreset, RunConfig, StageConfig};
use crate::eval::sampler::{sample_images, EvalSet, SamplerConfig};
use crate::model::{self, ModelSpec};
use crate::task::{BatchSource, Task, TaskContext};
use crate::tasks::shapes::ShapesTask;
use crate::train::ema::Ema;
use crate::train::optimizer::AdamW;
use crate::train::step::{apply_step, GradAccumulator, StepOutcome, UpdateSettings, Updated};

/// Distinct batches cycled through by the training bench.
const BENCH_BATCHES: usize = 4;
/// Side of the square matrices the GEMM rate is measured on.
const GEMM_SIDE: usize = 1024;

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model size.
    pub preset: ModelPreset,
    /// Images per step (training) or per sampled batch (`sampler`).
    pub batch: usize,
    /// Timed steps (training) or timed sampled batches (`sampler`).
    pub steps: usize,
    /// Untimed steps (or batches) first.
    pub warmup: usize,
    /// CPU threads in use (informational: the caller sets the pool size).
    pub threads: usize,
    /// Time evaluation sampling instead of training.
    pub sampler: Option<SamplerConfig>,
}

/// One line of `wick bench` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always `candle`.
    pub framework: String,
    /// `train` or `sampler`.
    pub mode: String,
    /// Preset name.
    pub preset: String,
    /// Images per step.
    pub batch: usize,
    /// CPU threads.
    pub threads: usize,
    /// Parameter count.
    pub params: usize,
    /// Optimizer steps (or sampled batches) per second.
    pub steps_per_s: f64,
    /// Training (or sampled) images per second.
    pub samples_per_s: f64,
    /// Model FLOPs per image of the timed work (training: 3× the forward pass; sampling: one forward pass
    /// per Euler step, two for a guided one).
    pub flops_per_sample: u64,
    /// Model FLOPs achieved per second, in billions.
    pub model_gflop_per_s: f64,
    /// A single-precision GEMM of [`GEMM_SIDE`]² matrices on the same device and threads, in billions of
    /// FLOPs per second.
    pub gemm_gflop_per_s: f64,
    /// Sampler Euler steps (`sampler` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_steps: Option<usize>,
    /// Sampler guidance scale (`sampler` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// Device description.
    pub device: String,
    /// gemm's f32 kernel on this CPU ([`crate::model::matmul_kernel`]).
    pub matmul_kernel: String,
}

/// Runs the bench `options` ask for on `device`.
pub fn run_bench(options: &BenchOptions, device: &Device) -> Result<BenchReport> {
    match &options.sampler {
        None => bench_training(options, device),
        Some(sampler) => bench_sampler(options, sampler, device),
    }
}

/// The run config the bench's training step follows: one stage training every parameter with the settings a
/// typical stage of the demo uses (clipping at 1, EMA, class and layout dropout).
fn bench_config(options: &BenchOptions) -> RunConfig {
    let mut config = RunConfig { name: "bench".to_string(), ..RunConfig::default() };
    config.model.preset = options.preset;
    config.model.adapter = true;
    config.dataset.train_size = (options.batch * BENCH_BATCHES).max(1);
    config.stages = vec![StageConfig {
        name: "bench".to_string(),
        steps: (options.warmup + options.steps) as u64,
        batch_size: options.batch,
        lr: 1e-4,
        grad_clip: 1.0,
        ema_decay: 0.999,
        class_dropout: 0.1,
        layout_dropout: 0.1,
        ..StageConfig::default()
    }];
    config
}

/// The shapes task of [`bench_config`]. It is procedural: its run root is never read or written when no stage
/// evaluates.
fn open_bench_task(config: &RunConfig, device: &Device) -> Result<ShapesTask> {
    let run_root = std::env::temp_dir().join("wick-bench");
    ShapesTask::open(&TaskContext { config, run_root: &run_root, device })
}

fn bench_training(options: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let config = bench_config(options);
    let stage = config.stages[0].clone();
    let task = open_bench_task(&config, device)?;
    let varmap = task.init(0, device)?;
    let model = task.build(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let params = model::sorted_vars(&varmap)?;
    let mut source = task.data(&stage, 0)?;
    let batches = (0..BENCH_BATCHES)
        .map(|i| source.batch((i * options.batch) as u64, options.batch))
        .collect::<Result<Vec<_>>>()
        .context("making the bench's batches")?;
    let mut optimizer = AdamW::default();
    let mut ema = Ema::default();
    let mut ema_updates = 0u64;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let settings = UpdateSettings {
        lr: stage.lr,
        weight_decay: stage.weight_decay,
        grad_clip: stage.grad_clip,
        ema_decay: stage.ema_decay,
    };
    let mut step = |index: usize| -> Result<()> {
        let mut accumulated = GradAccumulator::default();
        let shards = task.loss_shards(&model, &batches[index % batches.len()], &stage, &mut rng)?;
        accumulated.add(0, shards, 1, &params)?;
        let updated =
            Updated { optimizer: &mut optimizer, ema: &mut ema, ema_updates: &mut ema_updates, params: &params };
        match apply_step(accumulated, &params, settings, updated)? {
            StepOutcome::Applied { .. } => Ok(()),
            StepOutcome::Skipped { what, .. } => anyhow::bail!("bench step {index}: {what}"),
        }
    };
    for index in 0..options.warmup {
        step(index)?;
    }
    let start = Instant::now();
    for index in 0..options.steps {
        step(options.warmup + index)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let spec = ModelSpec::from_preset(options.preset, true);
    report(options, "train", secs, model::train_flops_per_image(spec), device)
}

fn bench_sampler(options: &BenchOptions, sampler: &SamplerConfig, device: &Device) -> Result<BenchReport> {
    let spec = ModelSpec::from_preset(options.preset, true);
    let task = open_bench_task(&bench_config(options), device)?;
    // Sampling runs on detached weights, as the trainer's and `wick sample`'s models do (no autograd graph).
    let tensors: HashMap<String, Tensor> =
        model::sorted_vars(&task.init(0, device)?)?.into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
    let model = task.build(VarBuilder::from_tensors(tensors, DType::F32, device))?;
    let dataset = task.dataset();
    let set = EvalSet::fixed(dataset, 0, options.batch);
    let config = SamplerConfig { batch_size: options.batch, ..*sampler };
    let sample = || sample_images(&model, &set, &config, spec.null_class(), device).map(|_| ());
    for _ in 0..options.warmup {
        sample()?;
    }
    let start = Instant::now();
    for _ in 0..options.steps {
        sample()?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let flops = model::forward_flops_per_image(spec) * config.forward_passes() as u64;
    let mut report = report(options, "sampler", secs, flops, device)?;
    report.sampler_steps = Some(config.steps);
    report.guidance = Some(config.guidance);
    Ok(report)
}

fn report(
    options: &BenchOptions,
    mode: &str,
    secs: f64,
    flops_per_sample: u64,
    device: &Device,
) -> Result<BenchReport> {
    let samples_per_s = (options.steps * options.batch) as f64 / secs;
    Ok(BenchReport {
        framework: "candle".to_string(),
        mode: mode.to_string(),
        preset: options.preset.name().to_string(),
        batch: options.batch,
        threads: options.threads,
        params: model::param_count(ModelSpec::from_preset(options.preset, true)),
        steps_per_s: options.steps as f64 / secs,
        samples_per_s,
        flops_per_sample,
        model_gflop_per_s: samples_per_s * flops_per_sample as f64 / 1e9,
        gemm_gflop_per_s: gemm_rate(device)? / 1e9,
        sampler_steps: None,
        guidance: None,
        device: format!("{device:?}"),
        matmul_kernel: model::matmul_kernel().to_string(),
    })
}

/// FLOP/s of a [`GEMM_SIDE`]² single-precision matrix product on `device` (best of five after a warm-up).
fn gemm_rate(device: &Device) -> Result<f64> {
    let a = Tensor::randn(0f32, 1f32, (GEMM_SIDE, GEMM_SIDE), device)?;
    let b = Tensor::randn(0f32, 1f32, (GEMM_SIDE, GEMM_SIDE), device)?;
    let mut best = f64::INFINITY;
    for round in 0..6 {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        if round > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * (GEMM_SIDE as f64).powi(3) / best.max(1e-12))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(sampler: Option<SamplerConfig>) -> BenchOptions {
        BenchOptions { preset: ModelPreset::Tiny, batch: 2, steps: 1, warmup: 1, threads: 1, sampler }
    }

    #[test]
    fn training_bench_runs_the_trainers_step_and_counts_flops() {
        let report = run_bench(&options(None), &Device::Cpu).unwrap();
        assert_eq!((report.mode.as_str(), report.batch), ("train", 2));
        assert!(report.samples_per_s > 0.0 && report.gemm_gflop_per_s > 0.0);
        let spec = ModelSpec::from_preset(ModelPreset::Tiny, true);
        assert_eq!(report.flops_per_sample, model::train_flops_per_image(spec));
    }

    #[test]
    fn sampler_bench_counts_a_forward_pass_per_step_and_two_when_guided() {
        let sampler = SamplerConfig { steps: 3, guidance: 2.0, ..SamplerConfig::default() };
        let report = run_bench(&options(Some(sampler)), &Device::Cpu).unwrap();
        assert_eq!((report.mode.as_str(), report.sampler_steps), ("sampler", Some(3)));
        let spec = ModelSpec::from_preset(ModelPreset::Tiny, true);
        assert_eq!(report.flops_per_sample, 6 * model::forward_flops_per_image(spec));
    }
}
