//! The Euler sampler of the rectified-flow model, with classifier-free guidance and a gate-scale override,
//! and the fixed-seed evaluation set that makes samples comparable across checkpoints and runs.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::data::{make_heldout_batch, Dataset};
use crate::model::Denoiser;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Euler steps from t = 1 (noise) to t = 0 (image).
    pub steps: usize,
    /// Classifier-free guidance scale: 1 = conditional only, > 1 pushes towards the condition.
    pub guidance: f64,
    /// What the unconditional branch of guidance drops: `false` = the class only (guidance strengthens the
    /// class), `true` = the class and the layout (guidance strengthens both). Dropping the layout needs a
    /// model that saw empty layouts in training (`layout_dropout` > 0 in the stages that train the adapter).
    pub guide_layout: bool,
    /// Guidance applies while the step's t (1 = noise, 0 = image) lies in `[low, high]`; outside it the
    /// conditional prediction alone moves the sample (and only it is computed). `[0, 1]` = every step.
    pub guidance_interval: [f64; 2],
    /// Multiplies every adapter gate (1 = as trained, 0 = adapter off).
    pub gate_scale: f64,
    /// Sample with the EMA weights when the checkpoint has them.
    pub use_ema: bool,
    /// Images per forward pass (memory bound).
    pub batch_size: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            steps: 20,
            guidance: 2.0,
            guide_layout: false,
            guidance_interval: [0.0, 1.0],
            gate_scale: 1.0,
            use_ema: true,
            batch_size: 64,
        }
    }
}

impl SamplerConfig {
    /// The t of each Euler step, from 1 (noise) down to `1 / steps`.
    pub fn step_times(&self) -> impl Iterator<Item = f64> {
        let steps = self.steps.max(1);
        let dt = 1.0 / steps as f64;
        (0..steps).map(move |i| 1.0 - i as f64 * dt)
    }

    /// Whether the step at `t` applies guidance: a guidance scale other than 1 and `t` inside
    /// `guidance_interval` (bounds inclusive, with a tolerance for the rounding of `1 - i / steps`).
    pub fn guides_at(&self, t: f64) -> bool {
        const TOLERANCE: f64 = 1e-9;
        let [low, high] = self.guidance_interval;
        self.guidance != 1.0 && t >= low - TOLERANCE && t <= high + TOLERANCE
    }

    /// Forward passes per image of one sample: one per step, two for a guided step.
    pub fn forward_passes(&self) -> usize {
        self.step_times().map(|t| if self.guides_at(t) { 2 } else { 1 }).sum()
    }
}

/// Fixed inputs of an evaluation: the same noise, classes and layouts for every checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSet {
    /// Number of images.
    pub count: usize,
    /// Image side.
    pub image_size: usize,
    /// Layout slots per image.
    pub slots: usize,
    /// Starting noise, [count, 3, H, W].
    pub noise: Vec<f32>,
    /// Requested classes, `[count]`.
    pub labels: Vec<u32>,
    /// Requested boxes, [count, slots, 4].
    pub boxes: Vec<f32>,
    /// Requested box classes, [count, slots] (null class = empty slot).
    pub box_classes: Vec<u32>,
    /// Names of the classes (the null class is `class_names.len()`).
    pub class_names: Vec<String>,
}

impl EvalSet {
    /// `count` held-out layouts (classes and boxes of real held-out images, so every request is plausible)
    /// and starting noise drawn from `seed`: a pure function of the dataset, `seed` and `count`.
    pub fn fixed(dataset: &Dataset, seed: u64, count: usize) -> Self {
        let batch = make_heldout_batch(dataset, 0, count);
        let side = dataset.image_size();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let noise: Vec<f32> = (0..count * 3 * side * side).map(|_| StandardNormal.sample(&mut rng)).collect();
        Self {
            count,
            image_size: side,
            slots: dataset.slots(),
            noise,
            labels: batch.labels,
            boxes: batch.boxes,
            box_classes: batch.box_classes,
            class_names: dataset.class_names(),
        }
    }

    /// The real held-out images whose layouts [`fixed`](Self::fixed) took for this set (same `dataset`),
    /// `[count, 3, H, W]` in [-1, 1]: what a sample of each item aims at.
    pub fn real_images(&self, dataset: &Dataset) -> Vec<f32> {
        make_heldout_batch(dataset, 0, self.count).images
    }

    /// The first `n` items (or all).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.count);
        let image = 3 * self.image_size * self.image_size;
        Self {
            count: n,
            image_size: self.image_size,
            slots: self.slots,
            noise: self.noise[..n * image].to_vec(),
            labels: self.labels[..n].to_vec(),
            boxes: self.boxes[..n * self.slots * 4].to_vec(),
            box_classes: self.box_classes[..n * self.slots].to_vec(),
            class_names: self.class_names.clone(),
        }
    }
}

/// Generates one image per item of `set` (values in [-1, 1], [count, 3, H, W] flattened).
/// `null_class` is the label that means "no class" (the unconditional branch of guidance).
pub fn sample_images(
    model: &Denoiser,
    set: &EvalSet,
    config: &SamplerConfig,
    null_class: u32,
    device: &Device,
) -> Result<Vec<f32>> {
    let side = set.image_size;
    let image = 3 * side * side;
    let mut out = Vec::with_capacity(set.count * image);
    let chunk = config.batch_size.max(1);
    let mut start = 0;
    while start < set.count {
        let n = chunk.min(set.count - start);
        let range = start..start + n;
        let noise = &set.noise[range.start * image..range.end * image];
        let labels = &set.labels[range.clone()];
        let boxes = &set.boxes[range.start * set.slots * 4..range.end * set.slots * 4];
        let box_classes = &set.box_classes[range.start * set.slots..range.end * set.slots];
        let images =
            sample_chunk(model, noise, labels, boxes, box_classes, set.slots, side, config, null_class, device)?;
        out.extend(images);
        start += n;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn sample_chunk(
    model: &Denoiser,
    noise: &[f32],
    labels: &[u32],
    boxes: &[f32],
    box_classes: &[u32],
    slots: usize,
    side: usize,
    config: &SamplerConfig,
    null_class: u32,
    device: &Device,
) -> Result<Vec<f32>> {
    let n = labels.len();
    let guided = config.step_times().any(|t| config.guides_at(t));
    // With guidance, the conditional and unconditional halves run as one batch of 2n.
    let (labels_in, boxes_in, classes_in, rows) = if guided {
        let mut l = labels.to_vec();
        l.extend(std::iter::repeat_n(null_class, n));
        let mut b = boxes.to_vec();
        let mut c = box_classes.to_vec();
        if config.guide_layout {
            b.extend(std::iter::repeat_n(0.0, boxes.len()));
            c.extend(std::iter::repeat_n(null_class, box_classes.len()));
        } else {
            b.extend_from_slice(boxes);
            c.extend_from_slice(box_classes);
        }
        (l, b, c, 2 * n)
    } else {
        (labels.to_vec(), boxes.to_vec(), box_classes.to_vec(), n)
    };
    let y = Tensor::from_vec(labels_in, rows, device)?;
    let boxes_t = Tensor::from_vec(boxes_in, (rows, slots, 4), device)?;
    let classes_t = Tensor::from_vec(classes_in, (rows, slots), device)?;
    // The conditional inputs alone (the first n rows whether or not guidance doubled them), for unguided steps.
    let (y_cond, boxes_cond, classes_cond) = (y.narrow(0, 0, n)?, boxes_t.narrow(0, 0, n)?, classes_t.narrow(0, 0, n)?);
    let mut x = Tensor::from_vec(noise.to_vec(), (n, 3, side, side), device)?;
    let dt = 1.0 / config.steps.max(1) as f64;
    for t_now in config.step_times() {
        let v = if config.guides_at(t_now) {
            let t = Tensor::full(t_now as f32, rows, device)?;
            let x_in = Tensor::cat(&[&x, &x], 0)?;
            let v = model.forward_with_gate_scale(&x_in, &t, &y, &boxes_t, &classes_t, config.gate_scale)?;
            let cond = v.narrow(0, 0, n)?;
            let uncond = v.narrow(0, n, n)?;
            (&uncond + ((cond - &uncond)? * config.guidance)?)?
        } else {
            let t = Tensor::full(t_now as f32, n, device)?;
            model.forward_with_gate_scale(&x, &t, &y_cond, &boxes_cond, &classes_cond, config.gate_scale)?
        };
        // x_t = (1 - t) x0 + t eps, v = eps - x0: stepping t down by dt moves x by -dt v.
        x = (x - (v * dt)?)?;
    }
    Ok(x.clamp(-1f32, 1f32)?.flatten_all()?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelPreset;
    use crate::model::{build_model, randomize_zero_init, ModelSpec};

    fn config(steps: usize, guidance: f64, guidance_interval: [f64; 2]) -> SamplerConfig {
        SamplerConfig { steps, guidance, guide_layout: true, guidance_interval, ..SamplerConfig::default() }
    }

    #[test]
    fn guidance_applies_at_the_steps_inside_its_interval() {
        let middle = config(10, 6.0, [0.2, 0.8]);
        let times: Vec<f64> = middle.step_times().collect();
        assert_eq!(times.len(), 10);
        assert!((times[0] - 1.0).abs() < 1e-12 && (times[9] - 0.1).abs() < 1e-9);
        let guided: Vec<bool> = times.iter().map(|&t| middle.guides_at(t)).collect();
        // t = 1.0, 0.9 | 0.8 … 0.2 (both bounds inclusive, despite 1 - 8 · 0.1 rounding) | 0.1
        assert_eq!(guided, [false, false, true, true, true, true, true, true, true, false]);
        assert_eq!(middle.forward_passes(), 17);
        assert_eq!(config(10, 6.0, [0.0, 1.0]).forward_passes(), 20);
        assert_eq!(config(10, 1.0, [0.0, 1.0]).forward_passes(), 10, "guidance 1 is no guidance");
    }

    #[test]
    fn guidance_outside_every_step_samples_like_no_guidance() {
        let device = Device::Cpu;
        let spec = ModelSpec::from_preset(ModelPreset::Tiny, true);
        let (varmap, model) = build_model(spec, &device, 1).unwrap();
        randomize_zero_init(spec, &varmap, 2).unwrap();
        let (count, side, slots) = (3, spec.image_size, spec.slots);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let set = EvalSet {
            count,
            image_size: side,
            slots,
            noise: (0..count * 3 * side * side).map(|_| StandardNormal.sample(&mut rng)).collect(),
            labels: vec![0, 1, 2],
            boxes: (0..count * slots).flat_map(|_| [0.1f32, 0.2, 0.6, 0.7]).collect(),
            box_classes: (0..count * slots).map(|i| if i % slots == 0 { (i / slots) as u32 } else { 4 }).collect(),
            class_names: Vec::new(),
        };
        let null = spec.null_class();
        let sample = |c: SamplerConfig| sample_images(&model, &set, &c, null, &device).unwrap();
        let plain = sample(config(4, 1.0, [0.0, 1.0]));
        // 4 steps: t = 1, 0.75, 0.5, 0.25 — none lies in [0, 0.2].
        assert_eq!(sample(config(4, 6.0, [0.0, 0.2])), plain);
        let everywhere = sample(config(4, 6.0, [0.0, 1.0]));
        let first_step_only = sample(config(4, 6.0, [0.9, 1.0]));
        assert_ne!(everywhere, plain);
        assert_ne!(first_step_only, plain);
        assert_ne!(first_step_only, everywhere);
    }
}
