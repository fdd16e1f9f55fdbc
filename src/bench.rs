//! `wick bench`: training throughput of the denoiser on fixed random batches — forward, backward and AdamW,
//! the same work `shared/reference/dit_reference.py` times for PyTorch (data generation excluded).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::config::ModelPreset;
use crate::model::{self, ModelSpec};
use crate::train::optimizer::AdamW;

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model size.
    pub preset: ModelPreset,
    /// Images per step.
    pub batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// CPU threads in use (informational: the caller sets the pool size).
    pub threads: usize,
}

/// One line of `wick bench` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Always `candle`.
    pub framework: String,
    /// Preset name.
    pub preset: String,
    /// Images per step.
    pub batch: usize,
    /// CPU threads.
    pub threads: usize,
    /// Parameter count.
    pub params: usize,
    /// Optimizer steps per second.
    pub steps_per_s: f64,
    /// Training images per second.
    pub samples_per_s: f64,
    /// Device description.
    pub device: String,
}

/// Times `options.steps` training steps after `options.warmup` untimed ones.
pub fn run_bench(options: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let spec = ModelSpec::from_preset(options.preset, true);
    let (varmap, model) = model::build_model(spec, device, 0)?;
    let params = model::sorted_vars(&varmap)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let b = options.batch;
    let side = spec.image_size;
    let image_len = b * 3 * side * side;
    let x0: Vec<f32> = (0..image_len).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let x0 = Tensor::from_vec(x0, (b, 3, side, side), device)?;
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..spec.classes as u32)).collect();
    let y = Tensor::from_vec(y, b, device)?;
    let boxes: Vec<f32> = (0..b * spec.slots * 4).map(|_| rng.random::<f32>()).collect();
    let boxes = Tensor::from_vec(boxes, (b, spec.slots, 4), device)?;
    let classes: Vec<u32> = (0..b * spec.slots).map(|_| rng.random_range(0..=spec.classes as u32)).collect();
    let box_classes = Tensor::from_vec(classes, (b, spec.slots), device)?;
    let mut optimizer = AdamW::default();
    let mut step = |rng: &mut ChaCha8Rng| -> Result<f32> {
        let t: Vec<f32> = (0..b).map(|_| 1.0 / (1.0 + (-rng.sample::<f32, _>(StandardNormal)).exp())).collect();
        let t = Tensor::from_vec(t, b, device)?;
        let eps: Vec<f32> = (0..image_len).map(|_| rng.sample(StandardNormal)).collect();
        let eps = Tensor::from_vec(eps, (b, 3, side, side), device)?;
        let loss = model::flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &box_classes)?;
        let store = loss.backward()?;
        let grads: HashMap<String, Tensor> =
            params.iter().filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
        optimizer.step(&params, &grads, 1e-4, 0.0)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    for _ in 0..options.warmup {
        step(&mut rng)?;
    }
    let start = Instant::now();
    for _ in 0..options.steps {
        step(&mut rng)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(BenchReport {
        framework: "candle".to_string(),
        preset: options.preset.name().to_string(),
        batch: b,
        threads: options.threads,
        params: model::param_count(spec),
        steps_per_s: options.steps as f64 / secs,
        samples_per_s: (options.steps * b) as f64 / secs,
        device: format!("{device:?}"),
    })
}
