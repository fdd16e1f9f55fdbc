//! The validation loss: the flow-matching loss on a fixed held-out batch with fixed timesteps and noise.
//!
//! The training loss of a step depends on that step's images, timesteps and noise, so over a short stage its
//! trend drowns in batch-to-batch noise. Scoring every evaluation on the *same* inputs removes that noise:
//! a falling validation loss means the model got better at the objective, whatever the batches were.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{make_heldout_batch, Dataset};
use crate::model::{self, Denoiser};
use crate::train::noise::{self, Stream};

/// Held-out images in the validation batch.
pub const VALIDATION_IMAGES: usize = 256;

/// Images per forward pass when scoring (bounds memory).
const CHUNK: usize = 64;

/// The fixed inputs of the validation loss, as tensors ready for the model.
pub struct ValidationSet {
    chunks: Vec<[Tensor; 6]>,
}

impl ValidationSet {
    /// `count` held-out images with their classes and layouts (nothing dropped), and timesteps and noise drawn
    /// from the run seed's validation stream: a pure function of the dataset, `seed` and `count`.
    pub fn new(dataset: &Dataset, seed: u64, count: usize, device: &Device) -> Result<Self> {
        let side = dataset.image_size();
        let slots = dataset.slots();
        let batch = make_heldout_batch(dataset, 0, count);
        let mut rng = ChaCha8Rng::seed_from_u64(noise::stream_seed(seed, Stream::Validation));
        let mut eps = Vec::new();
        let draws = noise::draw_samples(&mut rng, count, 3 * side * side, noise::DrawSettings::default(), &mut eps);
        let image = 3 * side * side;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < count {
            let n = CHUNK.min(count - start);
            let r = start..start + n;
            let t: Vec<f32> = draws[r.clone()].iter().map(|d| d.t).collect();
            chunks.push([
                Tensor::from_slice(&batch.images[r.start * image..r.end * image], (n, 3, side, side), device)?,
                Tensor::from_vec(t, n, device)?,
                Tensor::from_slice(&eps[r.start * image..r.end * image], (n, 3, side, side), device)?,
                Tensor::from_slice(&batch.labels[r.clone()], n, device)?,
                Tensor::from_slice(&batch.boxes[r.start * slots * 4..r.end * slots * 4], (n, slots, 4), device)?,
                Tensor::from_slice(&batch.box_classes[r.start * slots..r.end * slots], (n, slots), device)?,
            ]);
            start += n;
        }
        Ok(Self { chunks })
    }

    /// Mean loss of `model` over the set (every element weighs the same, as in one big batch).
    pub fn loss(&self, model: &Denoiser) -> Result<f64> {
        let mut weighted = 0.0;
        let mut total = 0usize;
        for [x0, t, eps, y, boxes, box_classes] in &self.chunks {
            let n = x0.dim(0)?;
            let loss = model::flow_matching_loss(model, x0, t, eps, y, boxes, box_classes)?.to_scalar::<f32>()?;
            weighted += f64::from(loss) * n as f64;
            total += n;
        }
        Ok(if total == 0 { f64::NAN } else { weighted / total as f64 })
    }
}
