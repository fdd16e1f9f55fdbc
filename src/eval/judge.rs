//! Training and checking the judge ([`crate::model::judge`]) on real images of the task.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::box_iou;
use crate::config::DatasetConfig;
use crate::data::{make_heldout_batch, Batch, Dataset, Prefetcher};
use crate::model::judge::{build_judge, Judge};
use crate::train::optimizer::{clip_grads, global_grad_norm, AdamW};

/// Weight of the box-regression term (mean absolute error of normalised coordinates) in the judge's loss.
const BOX_LOSS_WEIGHT: f64 = 5.0;

/// How to train a judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeTrainConfig {
    /// Seed of the initial weights and the data order.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine decay to 5% of it).
    pub lr: f64,
    /// The real data.
    pub dataset: DatasetConfig,
    /// Held-out images scored at the end.
    pub heldout: usize,
    /// Mirror half of the training images left–right (boxes too), drawn from the seed: a small image folder
    /// is seen many times, and a judge that memorises it says little about new images.
    #[serde(default)]
    pub flip: bool,
}

impl Default for JudgeTrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 2000,
            batch_size: 64,
            lr: 1e-3,
            dataset: DatasetConfig::default(),
            heldout: 1000,
            flip: false,
        }
    }
}

/// Mirrors the images `[b, 3, side, side]` of the rows picked by `rng` left–right, with their boxes.
fn flip_some(batch: &mut Batch, side: usize, slots: usize, rng: &mut rand_chacha::ChaCha8Rng) {
    use rand::Rng;
    let image_len = 3 * side * side;
    for row in 0..batch.size {
        if !rng.random::<bool>() {
            continue;
        }
        for line in batch.images[row * image_len..(row + 1) * image_len].chunks_exact_mut(side) {
            line.reverse();
        }
        for slot in 0..slots {
            let b = &mut batch.boxes[(row * slots + slot) * 4..(row * slots + slot + 1) * 4];
            if b[2] > b[0] {
                let (x0, x1) = (b[0], b[2]);
                b[0] = 1.0 - x1;
                b[2] = 1.0 - x0;
            }
        }
    }
}

/// How good a judge is on held-out real images (written beside its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    /// Fraction of held-out images whose main-object class the judge gets right.
    pub accuracy: f64,
    /// Mean IoU of the judged and true main-object boxes (`None` for data without layouts).
    pub mean_iou: Option<f64>,
    /// Class names, in the order of the judge's class head.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Held-out images scored.
    pub heldout: usize,
    /// The training it came from.
    pub config: JudgeTrainConfig,
    /// Seconds spent training.
    pub train_secs: f64,
}

/// Inputs and targets of a batch for the judge: images, class labels, main-object boxes (slot 0) and a
/// `[B, 1]` mask that is 1 where the image has a main object (a layout), 0 where it has none.
fn judge_tensors(batch: &Batch, dataset: &Dataset, device: &Device) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (b, side, slots) = (batch.size, dataset.image_size(), dataset.slots());
    let images = Tensor::from_vec(batch.images.clone(), (b, 3, side, side), device)?;
    let labels = Tensor::from_vec(batch.labels.clone(), b, device)?;
    let main_boxes: Vec<f32> = (0..b).flat_map(|i| batch.boxes[i * slots * 4..i * slots * 4 + 4].to_vec()).collect();
    let has_box: Vec<f32> =
        (0..b).map(|i| if batch.box_classes[i * slots] == dataset.null_class() { 0.0 } else { 1.0 }).collect();
    let boxes = Tensor::from_vec(main_boxes, (b, 4), device)?;
    let mask = Tensor::from_vec(has_box, (b, 1), device)?;
    Ok((images, labels, boxes, mask))
}

/// Trains a judge on `dataset`'s training images from `config.seed`; `progress(step, loss)` is called every
/// step. The box head learns only from images that have a layout.
pub fn train_judge(
    config: &JudgeTrainConfig,
    dataset: &Dataset,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<(VarMap, Judge, JudgeReport)> {
    let start = Instant::now();
    let classes = dataset.class_names();
    let (varmap, judge) = build_judge(device, config.seed, classes.len())?;
    let params = crate::model::sorted_vars(&varmap)?;
    let mut optimizer = AdamW::default();
    let mut prefetcher = Prefetcher::spawn(dataset.clone(), config.seed, 0, config.batch_size, 4);
    let mut flips = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(config.seed ^ 0x464c_4950); // "FLIP"
    for step in 0..config.steps {
        let mut batch = prefetcher.next_batch()?;
        if config.flip {
            flip_some(&mut batch, dataset.image_size(), dataset.slots(), &mut flips);
        }
        let (images, labels, boxes, mask) = judge_tensors(&batch, dataset, device)?;
        let out = judge.forward(&images)?;
        let class_loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
        let boxed = f64::from(mask.sum_all()?.to_scalar::<f32>()?);
        let box_loss = if boxed > 0.0 {
            ((out.boxes - boxes)?.abs()?.broadcast_mul(&mask)?.sum_all()? / (4.0 * boxed))?
        } else {
            Tensor::zeros((), candle_core::DType::F32, device)?
        };
        let loss = (class_loss + (box_loss * BOX_LOSS_WEIGHT)?)?;
        let store = loss.backward()?;
        let mut grads: HashMap<String, Tensor> =
            params.iter().filter_map(|(n, v)| store.get(v.as_tensor()).map(|g| (n.clone(), g.clone()))).collect();
        let norm = global_grad_norm(&grads)?;
        clip_grads(&mut grads, norm, 5.0)?;
        let progress_frac = step as f64 / config.steps.max(1) as f64;
        let lr = config.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress_frac).cos()));
        optimizer.step(&params, &grads, lr, 1e-4)?;
        progress(step + 1, f64::from(loss.to_scalar::<f32>()?));
    }
    let heldout = dataset.heldout_len().map_or(config.heldout, |n| (n as usize).min(config.heldout));
    let (accuracy, mean_iou) = score_judge(&judge, dataset, heldout, device)?;
    let report = JudgeReport {
        accuracy,
        mean_iou,
        classes,
        heldout,
        config: config.clone(),
        train_secs: start.elapsed().as_secs_f64(),
    };
    Ok((varmap, judge, report))
}

/// Class accuracy and mean main-object box IoU (over the images that have a layout; `None` when none has)
/// of `judge` on `count` held-out real images.
pub fn score_judge(judge: &Judge, dataset: &Dataset, count: usize, device: &Device) -> Result<(f64, Option<f64>)> {
    let mut correct = 0usize;
    let mut iou_sum = 0.0;
    let mut boxed = 0usize;
    let mut start = 0;
    while start < count {
        let n = 250.min(count - start);
        let batch = make_heldout_batch(dataset, start as u64, n);
        let (images, labels, boxes, mask) = judge_tensors(&batch, dataset, device)?;
        let out = judge.forward(&images)?;
        let predicted = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let labels = labels.to_vec1::<u32>()?;
        correct += predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let judged = out.boxes.to_vec2::<f32>()?;
        let truth = boxes.to_vec2::<f32>()?;
        let mask = mask.flatten_all()?.to_vec1::<f32>()?;
        for ((j, t), m) in judged.iter().zip(&truth).zip(&mask) {
            if *m > 0.0 {
                iou_sum += box_iou([j[0], j[1], j[2], j[3]], [t[0], t[1], t[2], t[3]]);
                boxed += 1;
            }
        }
        start += n;
    }
    Ok((correct as f64 / count.max(1) as f64, (boxed > 0).then(|| iou_sum / boxed as f64)))
}
