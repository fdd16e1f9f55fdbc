//! Training and checking the judge ([`crate::model::judge`]) on real images of the task.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::box_iou;
use crate::config::DatasetConfig;
use crate::data::{make_heldout_batch, Batch, Prefetcher, ShapesDataset};
use crate::model::judge::{build_judge, Judge, JUDGE_CLASSES};
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
}

impl Default for JudgeTrainConfig {
    fn default() -> Self {
        Self { seed: 0, steps: 2000, batch_size: 64, lr: 1e-3, dataset: DatasetConfig::default(), heldout: 1000 }
    }
}

/// How good a judge is on held-out real images (written beside its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeReport {
    /// Fraction of held-out images whose main-object class the judge gets right.
    pub accuracy: f64,
    /// Mean IoU of the judged and true main-object boxes.
    pub mean_iou: f64,
    /// Held-out images scored.
    pub heldout: usize,
    /// The training it came from.
    pub config: JudgeTrainConfig,
    /// Seconds spent training.
    pub train_secs: f64,
}

/// Inputs and targets of a batch for the judge: images, class labels, main-object boxes (slot 0).
fn judge_tensors(batch: &Batch, side: usize, slots: usize, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let b = batch.size;
    let images = Tensor::from_vec(batch.images.clone(), (b, 3, side, side), device)?;
    let labels = Tensor::from_vec(batch.labels.clone(), b, device)?;
    let main_boxes: Vec<f32> = (0..b).flat_map(|i| batch.boxes[i * slots * 4..i * slots * 4 + 4].to_vec()).collect();
    let boxes = Tensor::from_vec(main_boxes, (b, 4), device)?;
    Ok((images, labels, boxes))
}

/// Trains a judge from `config.seed`; `progress(step, loss)` is called every step.
pub fn train_judge(
    config: &JudgeTrainConfig,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<(VarMap, Judge, JudgeReport)> {
    let start = Instant::now();
    let dataset = ShapesDataset::new(&config.dataset, 32, 4, JUDGE_CLASSES as u32);
    let (varmap, judge) = build_judge(device, config.seed)?;
    let params = crate::model::sorted_vars(&varmap)?;
    let mut optimizer = AdamW::default();
    let mut prefetcher = Prefetcher::spawn(dataset.clone(), config.seed, 0, config.batch_size, 4);
    for step in 0..config.steps {
        let batch = prefetcher.next_batch()?;
        let (images, labels, boxes) = judge_tensors(&batch, 32, 4, device)?;
        let out = judge.forward(&images)?;
        let class_loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
        let box_loss = (out.boxes - boxes)?.abs()?.mean_all()?;
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
    let (accuracy, mean_iou) = score_judge(&judge, &dataset, config.heldout, device)?;
    let report = JudgeReport {
        accuracy,
        mean_iou,
        heldout: config.heldout,
        config: config.clone(),
        train_secs: start.elapsed().as_secs_f64(),
    };
    Ok((varmap, judge, report))
}

/// Class accuracy and mean main-object box IoU of `judge` on `count` held-out real images.
pub fn score_judge(judge: &Judge, dataset: &ShapesDataset, count: usize, device: &Device) -> Result<(f64, f64)> {
    let mut correct = 0usize;
    let mut iou_sum = 0.0;
    let mut start = 0;
    while start < count {
        let n = 250.min(count - start);
        let batch = make_heldout_batch(dataset, start as u64, n);
        let (images, labels, boxes) = judge_tensors(&batch, dataset.image_size(), dataset.slots(), device)?;
        let out = judge.forward(&images)?;
        let predicted = out.logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let labels = labels.to_vec1::<u32>()?;
        correct += predicted.iter().zip(&labels).filter(|(p, l)| p == l).count();
        let judged = out.boxes.to_vec2::<f32>()?;
        let truth = boxes.to_vec2::<f32>()?;
        for (j, t) in judged.iter().zip(&truth) {
            iou_sum += box_iou([j[0], j[1], j[2], j[3]], [t[0], t[1], t[2], t[3]]);
        }
        start += n;
    }
    Ok((correct as f64 / count.max(1) as f64, iou_sum / count.max(1) as f64))
}
