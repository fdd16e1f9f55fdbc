//! An image folder as a training set: the checked usable images, decoded once, resized to the model's
//! resolution, cached, split into train and held-out by a seed.
//!
//! ```text
//! check_folder ─▶ usable images ─▶ decode + crop/letterbox + resize (rayon) ─▶ u8 pixels ─▶ cache file
//!                                  split (seeded, per class; or the run's split.json) ─▶ train / held-out
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use image::imageops::FilterType;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::check::{check_folder, CheckRequest, DataReport, UsableImage};
use super::scan::{decode_image, ScanProgress};
use super::shapes::{below, Object, Sample};
use crate::config::{DatasetConfig, ResizeMode};

/// First bytes of a pixel cache file (the last digit is the format version).
const CACHE_MAGIC: &[u8; 8] = b"WICKPIX1";

/// The train / held-out split of a folder dataset, stored in the run as split.json so evaluation never sees
/// a training image, even if the folder changes before a resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSplit {
    /// Seed it was drawn with.
    pub seed: u64,
    /// Fraction of each class held out.
    pub heldout_fraction: f64,
    /// Training images (paths relative to the root).
    pub train: Vec<String>,
    /// Held-out images.
    pub heldout: Vec<String>,
}

/// How to open a folder dataset.
#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// Cache folder for the scan journal and the decoded pixels (`None`: nothing cached).
    pub cache_dir: Option<PathBuf>,
    /// A stored split to follow (a resumed run's); `None` draws one from the config's seed.
    pub split: Option<DataSplit>,
}

/// One usable image of the folder, ready to train on.
#[derive(Debug, Clone, PartialEq)]
struct Item {
    path: String,
    label: u32,
    /// Objects with boxes in the square model frame, largest first, at most `slots`.
    objects: Vec<Object>,
}

/// An image folder dataset: see the module doc. Cheap to clone (shared buffers); `Send + Sync`.
#[derive(Debug, Clone)]
pub struct FolderDataset {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    class_names: Vec<String>,
    image_size: usize,
    slots: usize,
    null_class: u32,
    /// `[items, H, W, 3]` RGB bytes.
    pixels: Vec<u8>,
    items: Vec<Item>,
    train: Vec<usize>,
    heldout: Vec<usize>,
    report: DataReport,
    split: DataSplit,
    has_layouts: bool,
    key: String,
}

impl FolderDataset {
    /// Checks the folder (see [`check_folder`]), then decodes every usable image at `image_size`² (from the
    /// cache when the same files were decoded before). Errors when the data cannot train (no usable image,
    /// a class without one, an empty split).
    pub fn open(
        config: &DatasetConfig,
        image_size: usize,
        slots: usize,
        null_class: u32,
        options: &FolderOptions,
        progress: impl FnMut(ScanProgress),
    ) -> Result<Self> {
        let root = config.path.clone().context("dataset.path is not set: name the image folder")?;
        let request = CheckRequest {
            root: root.clone(),
            layouts: config.layouts.clone(),
            box_units: config.box_units,
            slots,
            cache_dir: options.cache_dir.clone(),
        };
        let check = check_folder(&request, &AtomicBool::new(false), progress)?;
        if !check.report.errors.is_empty() {
            bail!("the data in {} cannot train: {}", root.display(), check.report.errors.join("; "));
        }
        let split = match &options.split {
            Some(split) => split.clone(),
            None => draw_split(
                &check.usable,
                check.class_names.len(),
                config.seed,
                config.heldout_fraction,
                config.subset_fraction,
            ),
        };
        let index_of: HashMap<&str, usize> =
            check.usable.iter().enumerate().map(|(i, u)| (u.path.as_str(), i)).collect();
        let pick = |paths: &[String], what: &str| -> Vec<usize> {
            let found: Vec<usize> = paths.iter().filter_map(|p| index_of.get(p.as_str()).copied()).collect();
            if found.len() < paths.len() {
                tracing::warn!(
                    "{} of the {} {what} images of the stored split are no longer usable in {}: left out",
                    paths.len() - found.len(),
                    paths.len(),
                    root.display()
                );
            }
            found
        };
        let train = pick(&split.train, "training");
        let heldout = pick(&split.heldout, "held-out");
        if train.is_empty() {
            bail!("no training image in {}: the folder needs at least 2 usable images", root.display());
        }
        if heldout.is_empty() {
            bail!(
                "no held-out image in {}: evaluation needs images kept out of training — add images (a class with \
                 2 or more images gives one) or raise dataset.heldout_fraction",
                root.display()
            );
        }
        let key = cache_key(&root, image_size, config.resize, &check.usable);
        let pixels = load_pixels(&root, &check.usable, image_size, config.resize, &key, options.cache_dir.as_deref())?;
        let has_layouts = config.layouts.is_some();
        let mut boxes_cut = 0usize;
        let items: Vec<Item> = check
            .usable
            .iter()
            .map(|usable| {
                let (objects, cut) = frame_objects(usable, image_size, config.resize, slots);
                boxes_cut += cut;
                Item { path: usable.path.clone(), label: usable.class, objects }
            })
            .collect();
        if boxes_cut > 0 {
            tracing::warn!(
                "{boxes_cut} layout boxes fall outside the square crop of their image: left out of the layouts"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                class_names: check.class_names,
                image_size,
                slots,
                null_class,
                pixels,
                items,
                train,
                heldout,
                report: check.report,
                split,
                has_layouts,
                key,
            }),
        })
    }

    /// Training images in use.
    pub fn len(&self) -> u64 {
        self.inner.train.len() as u64
    }

    /// Whether there is no training image (never, for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.inner.train.is_empty()
    }

    /// Held-out images.
    pub fn heldout_len(&self) -> u64 {
        self.inner.heldout.len() as u64
    }

    /// Training sample `index` (wraps around the training set).
    pub fn sample(&self, index: u64) -> Sample {
        let train = &self.inner.train;
        self.item_sample(train[(index % train.len() as u64) as usize])
    }

    /// Held-out sample `index` (wraps around the held-out set, so any evaluation size works).
    pub fn heldout_sample(&self, index: u64) -> Sample {
        let heldout = &self.inner.heldout;
        self.item_sample(heldout[(index % heldout.len() as u64) as usize])
    }

    fn item_sample(&self, item_index: usize) -> Sample {
        let inner = &*self.inner;
        let side = inner.image_size;
        let plane = side * side;
        let bytes = &inner.pixels[item_index * plane * 3..(item_index + 1) * plane * 3];
        let mut image = vec![0.0f32; 3 * plane];
        for (pixel, rgb) in bytes.chunks_exact(3).enumerate() {
            for (channel, &value) in rgb.iter().enumerate() {
                image[channel * plane + pixel] = f32::from(value) / 127.5 - 1.0;
            }
        }
        let item = &inner.items[item_index];
        Sample { image, label: item.label, objects: item.objects.clone() }
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.inner.image_size
    }

    /// Layout slots per sample.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// Class index of an empty layout slot.
    pub fn null_class(&self) -> u32 {
        self.inner.null_class
    }

    /// Class names (folder names), in class-index order.
    pub fn class_names(&self) -> &[String] {
        &self.inner.class_names
    }

    /// What the check found.
    pub fn report(&self) -> &DataReport {
        &self.inner.report
    }

    /// The train / held-out split in use.
    pub fn split(&self) -> &DataSplit {
        &self.inner.split
    }

    /// Whether a layout file was given (without one, IoU is not computed).
    pub fn has_layouts(&self) -> bool {
        self.inner.has_layouts
    }

    /// A key that changes whenever the images, their decoding or the split change (for caches of
    /// statistics and judges made from this data).
    pub fn content_key(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.inner.key.as_bytes());
        for &i in &self.inner.train {
            hasher.update(self.inner.items[i].path.as_bytes());
            hasher.update(b"\n");
        }
        hasher.update(b"|heldout|");
        for &i in &self.inner.heldout {
            hasher.update(self.inner.items[i].path.as_bytes());
            hasher.update(b"\n");
        }
        format!("{:x}", hasher.finalize())
    }

    /// Paths of the training images (for tests and reports).
    pub fn train_paths(&self) -> Vec<&str> {
        self.inner.train.iter().map(|&i| self.inner.items[i].path.as_str()).collect()
    }
}

/// A seeded split: per class, a shuffled list whose first `round(fraction · n)` images (at least 1 when the
/// class has 2 or more, never all of them) are held out; then `subset_fraction` of the training images.
pub fn draw_split(
    usable: &[UsableImage],
    classes: usize,
    seed: u64,
    heldout_fraction: f64,
    subset_fraction: f64,
) -> DataSplit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5350_4c49_5431); // "SPLIT1"
    let mut train = Vec::new();
    let mut heldout = Vec::new();
    for class in 0..classes {
        let mut paths: Vec<&str> =
            usable.iter().filter(|u| u.class as usize == class).map(|u| u.path.as_str()).collect();
        shuffle(&mut paths, &mut rng);
        let n = paths.len();
        let held = if n >= 2 { ((heldout_fraction * n as f64).round() as usize).clamp(1, n - 1) } else { 0 };
        heldout.extend(paths[..held].iter().map(|p| p.to_string()));
        train.extend(paths[held..].iter().map(|p| p.to_string()));
    }
    shuffle(&mut train, &mut rng);
    let keep = ((train.len() as f64 * subset_fraction).round() as usize).clamp(train.len().min(1), train.len());
    train.truncate(keep);
    train.sort();
    heldout.sort();
    DataSplit { seed, heldout_fraction, train, heldout }
}

fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Identifies the decoded pixels: root, resolution, resize mode and every usable file's path, size and time.
fn cache_key(root: &Path, image_size: usize, resize: ResizeMode, usable: &[UsableImage]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{}|{image_size}|{resize:?}|", root.display()).as_bytes());
    for u in usable {
        hasher.update(format!("{}|{}|{}\n", u.path, u.size_bytes, u.mtime_ns).as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// The cache file of a key.
pub fn pixel_cache_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("pixels-{}.bin", &key[..16]))
}

/// The decoded pixels of `usable`: from the cache when it holds them intact, else decoded (and cached).
fn load_pixels(
    root: &Path,
    usable: &[UsableImage],
    side: usize,
    resize: ResizeMode,
    key: &str,
    cache_dir: Option<&Path>,
) -> Result<Vec<u8>> {
    let expected_len = usable.len() * side * side * 3;
    let cache_file = cache_dir.map(|dir| pixel_cache_path(dir, key));
    if let Some(file) = &cache_file {
        if file.exists() {
            match read_cache(file, side, usable.len()) {
                Ok(pixels) if pixels.len() == expected_len => return Ok(pixels),
                Ok(_) => tracing::warn!("pixel cache {} has the wrong size: rebuilding it", file.display()),
                Err(e) => tracing::warn!("pixel cache {} is damaged ({e:#}): rebuilding it", file.display()),
            }
        }
    }
    let decoded: Vec<Result<Vec<u8>>> = usable
        .par_iter()
        .map(|u| {
            let path = root.join(&u.path);
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let image = decode_image(&bytes).map_err(|reason| {
                anyhow::anyhow!("{} changed since it was checked and {reason}; run again", path.display())
            })?;
            Ok(to_square(&image.to_rgb8(), side as u32, resize).into_raw())
        })
        .collect();
    let mut pixels = Vec::with_capacity(expected_len);
    for image in decoded {
        pixels.extend_from_slice(&image?);
    }
    if let Some(file) = &cache_file {
        if let Err(e) = write_cache(file, side, usable.len(), &pixels) {
            tracing::warn!("cannot write the pixel cache {}: {e:#}", file.display());
        }
    }
    Ok(pixels)
}

/// The square `side`² version of `image`: the central square scaled (center crop), or the whole image
/// scaled to fit and centred on black (letterbox).
pub fn to_square(image: &image::RgbImage, side: u32, resize: ResizeMode) -> image::RgbImage {
    let (width, height) = image.dimensions();
    match resize {
        ResizeMode::CenterCrop => {
            let crop = width.min(height);
            let view = image::imageops::crop_imm(image, (width - crop) / 2, (height - crop) / 2, crop, crop);
            image::imageops::resize(&view.to_image(), side, side, FilterType::Triangle)
        }
        ResizeMode::Letterbox => {
            let scale = f64::from(side) / f64::from(width.max(height));
            let new_width = ((f64::from(width) * scale).round() as u32).clamp(1, side);
            let new_height = ((f64::from(height) * scale).round() as u32).clamp(1, side);
            let scaled = image::imageops::resize(image, new_width, new_height, FilterType::Triangle);
            let mut canvas = image::RgbImage::new(side, side);
            image::imageops::overlay(
                &mut canvas,
                &scaled,
                i64::from((side - new_width) / 2),
                i64::from((side - new_height) / 2),
            );
            canvas
        }
    }
}

/// The layout boxes of `usable` in the square frame [`to_square`] makes, clipped to it; boxes that fall
/// outside (cropped away) are dropped and counted. At most `slots` objects, largest first.
fn frame_objects(usable: &UsableImage, side: usize, resize: ResizeMode, slots: usize) -> (Vec<Object>, usize) {
    let (width, height) = (usable.size.0 as f32, usable.size.1 as f32);
    let side_px = side as f32;
    let mut cut = 0;
    let mut objects = Vec::new();
    for object in &usable.objects {
        let [x0, y0, x1, y1] = object.bbox;
        let framed = match resize {
            ResizeMode::CenterCrop => {
                let crop = width.min(height);
                let (ox, oy) = (((width - crop) / 2.0).floor(), ((height - crop) / 2.0).floor());
                [
                    (x0 * width - ox) / crop,
                    (y0 * height - oy) / crop,
                    (x1 * width - ox) / crop,
                    (y1 * height - oy) / crop,
                ]
            }
            ResizeMode::Letterbox => {
                let scale = side_px / width.max(height);
                let (new_width, new_height) = ((width * scale).round(), (height * scale).round());
                let (px, py) = (((side_px - new_width) / 2.0).floor(), ((side_px - new_height) / 2.0).floor());
                [
                    (x0 * new_width + px) / side_px,
                    (y0 * new_height + py) / side_px,
                    (x1 * new_width + px) / side_px,
                    (y1 * new_height + py) / side_px,
                ]
            }
        };
        let clipped = framed.map(|v| v.clamp(0.0, 1.0));
        if clipped[2] - clipped[0] <= 0.0 || clipped[3] - clipped[1] <= 0.0 {
            cut += 1;
            continue;
        }
        objects.push(Object { class: object.class, bbox: clipped, colour: [0.0; 3] });
    }
    objects.truncate(slots);
    (objects, cut)
}

fn write_cache(file: &Path, side: usize, count: usize, pixels: &[u8]) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = Vec::with_capacity(pixels.len() + 52);
    bytes.extend_from_slice(CACHE_MAGIC);
    bytes.extend_from_slice(&(side as u32).to_le_bytes());
    bytes.extend_from_slice(&(count as u64).to_le_bytes());
    bytes.extend_from_slice(pixels);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    crate::run::atomic::atomic_write(file, &bytes)
}

fn read_cache(file: &Path, side: usize, count: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() < 52 || &bytes[..8] != CACHE_MAGIC {
        bail!("not a Wick pixel cache");
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        bail!("checksum mismatch");
    }
    let stored_side = u32::from_le_bytes(body[8..12].try_into()?) as usize;
    let stored_count = u64::from_le_bytes(body[12..20].try_into()?) as usize;
    if stored_side != side || stored_count != count {
        bail!("holds {stored_count} images of {stored_side} px, expected {count} of {side} px");
    }
    Ok(body[20..].to_vec())
}

/// Paths present in both lists (for tests: a split never shares an image).
pub fn shared_paths(split: &DataSplit) -> Vec<String> {
    let train: HashSet<&String> = split.train.iter().collect();
    split.heldout.iter().filter(|p| train.contains(p)).cloned().collect()
}
