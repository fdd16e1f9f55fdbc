//! Data order (seeded per-epoch permutations walked by a data cursor) and batch assembly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::boxes::normalize_box;
use super::dataset::Dataset;
use super::shapes::{below, Sample};

/// Fixed last word of every epoch-order key, so order streams never coincide with sample streams.
const ORDER_KEY_TAG: u64 = 0x5749_434b_4f52_4431; // "WICKORD1"

/// A batch, flat row-major buffers ready for `Tensor::from_vec`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Samples in the batch.
    pub size: usize,
    /// `[size, 3, H, W]` pixels in [-1, 1].
    pub images: Vec<f32>,
    /// `[size]` class labels (largest object's class).
    pub labels: Vec<u32>,
    /// `[size, slots, 4]` normalised boxes `[x0, y0, x1, y1]`; empty slots are `[0, 0, 0, 0]`.
    pub boxes: Vec<f32>,
    /// `[size, slots]` slot classes; empty slots carry the dataset's null class.
    pub box_classes: Vec<u32>,
    /// Data cursor of this batch's first sample (training samples consumed before it). For held-out
    /// batches, the held-out index of the first sample.
    pub cursor: u64,
    /// Box fixes made while assembling the batch (see [`normalize_box`]); empty for generated data.
    pub warnings: Vec<String>,
}

/// Indices of `count` training samples starting at data cursor `cursor`: the cursor counts samples consumed
/// since the start of the run; epoch `e = cursor / len` walks a seeded permutation of `0..len` (different per
/// epoch, a pure function of `(order_seed, epoch)`). Crossing an epoch boundary inside a batch works.
///
/// Computes each needed epoch's permutation from scratch (O(len)); streaming callers should keep an
/// [`EpochOrder`] instead. Returns no indices when `len == 0`.
pub fn batch_indices(order_seed: u64, len: u64, cursor: u64, count: usize) -> Vec<u64> {
    EpochOrder::new(order_seed, len).indices(cursor, count)
}

/// The data order with the current epoch's permutation cached: consecutive calls within one epoch cost
/// O(count), and an epoch's permutation is computed once (O(len) time and `8 · len` bytes).
#[derive(Debug, Clone)]
pub struct EpochOrder {
    order_seed: u64,
    len: u64,
    /// Epoch whose permutation `permutation` holds, if any.
    epoch: Option<u64>,
    permutation: Vec<u64>,
}

impl EpochOrder {
    /// The order of a training set of `len` samples under `order_seed`; nothing is computed yet.
    pub fn new(order_seed: u64, len: u64) -> Self {
        Self { order_seed, len, epoch: None, permutation: Vec::new() }
    }

    /// Training-set size this order walks.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the training set is empty (then every index list is empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Same as [`batch_indices`] with this order's seed and length, reusing the cached permutation.
    pub fn indices(&mut self, cursor: u64, count: usize) -> Vec<u64> {
        if self.len == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(count);
        for position in cursor..cursor.saturating_add(count as u64) {
            let epoch = position / self.len;
            if self.epoch != Some(epoch) {
                self.permutation = epoch_permutation(self.order_seed, self.len, epoch);
                self.epoch = Some(epoch);
            }
            out.push(self.permutation[(position % self.len) as usize]);
        }
        out
    }
}

/// The permutation of `0..len` for `epoch`: Fisher–Yates driven by ChaCha8 keyed by (order_seed, epoch).
fn epoch_permutation(order_seed: u64, len: u64, epoch: u64) -> Vec<u64> {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&order_seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[24..32].copy_from_slice(&ORDER_KEY_TAG.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut permutation: Vec<u64> = (0..len).collect();
    for i in (1..permutation.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        permutation.swap(i, j);
    }
    permutation
}

/// Builds the training batch of `size` samples at data cursor `cursor`.
pub fn make_batch(dataset: &Dataset, order_seed: u64, cursor: u64, size: usize) -> Batch {
    let indices = batch_indices(order_seed, dataset.len(), cursor, size);
    make_batch_from_indices(dataset, &indices, cursor)
}

/// Builds a batch of the held-out samples `start_index..start_index + size` (for evaluation; the batch's
/// `cursor` is `start_index`).
pub fn make_heldout_batch(dataset: &Dataset, start_index: u64, size: usize) -> Batch {
    let samples: Vec<(u64, Sample)> =
        (start_index..start_index + size as u64).map(|i| (i, dataset.heldout_sample(i))).collect();
    assemble(dataset, samples, start_index)
}

/// Builds a batch of the given training sample indices, labelled with `cursor`.
pub fn make_batch_from_indices(dataset: &Dataset, indices: &[u64], cursor: u64) -> Batch {
    let samples: Vec<(u64, Sample)> = indices.iter().map(|&i| (i, dataset.sample(i))).collect();
    assemble(dataset, samples, cursor)
}

/// Packs samples into flat buffers; every box goes through [`normalize_box`], objects beyond the slots
/// are left out of the layout (with a warning).
fn assemble(dataset: &Dataset, samples: Vec<(u64, Sample)>, cursor: u64) -> Batch {
    let size = samples.len();
    let slots = dataset.slots();
    let image_len = dataset.image_len();
    let mut batch = Batch {
        size,
        images: Vec::with_capacity(size * image_len),
        labels: Vec::with_capacity(size),
        boxes: vec![0.0; size * slots * 4],
        box_classes: vec![dataset.null_class(); size * slots],
        cursor,
        warnings: Vec::new(),
    };
    for (row, (index, sample)) in samples.into_iter().enumerate() {
        if sample.image.len() == image_len {
            batch.images.extend_from_slice(&sample.image);
        } else {
            batch.warnings.push(format!(
                "sample {index}: image has {} values, expected {image_len}; filled with -1",
                sample.image.len()
            ));
            batch.images.extend(std::iter::repeat_n(-1.0, image_len));
        }
        batch.labels.push(sample.label);
        let mut slot = 0;
        for (k, object) in sample.objects.iter().enumerate() {
            let (fixed, warning) = normalize_box(object.bbox);
            if let Some(warning) = warning {
                batch.warnings.push(format!("sample {index} object {k}: {warning}"));
            }
            let Some(bbox) = fixed else { continue };
            if slot == slots {
                batch.warnings.push(format!(
                    "sample {index}: {} objects but {slots} layout slots; object {k} left out of the layout",
                    sample.objects.len()
                ));
                break;
            }
            let at = row * slots + slot;
            batch.boxes[at * 4..at * 4 + 4].copy_from_slice(&bbox);
            batch.box_classes[at] = object.class;
            slot += 1;
        }
    }
    batch
}
