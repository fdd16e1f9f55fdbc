//! The procedural `shapes` task: coloured circles, squares, triangles and crosses on a plain background.
//!
//! A sample is a pure function of (dataset seed, stream, index): its random numbers come from a
//! [`ChaCha8Rng`] keyed by all three, and only the raw ChaCha stream is used (no `rand` distribution whose
//! values could change between crate versions), so `sample(i)` is identical on every call, thread and
//! machine.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{DatasetConfig, ShapesVariant};

use super::NUM_CLASSES;

/// Stream id of the training samples.
const STREAM_TRAIN: u64 = 1;
/// Stream id of the held-out (evaluation) samples; never equal to [`STREAM_TRAIN`].
const STREAM_HELDOUT: u64 = 2;
/// Fixed last word of every sample key, so these streams differ from any other use of the same seed.
const SAMPLE_KEY_TAG: u64 = 0x5749_434b_5348_5031; // "WICKSHP1"

/// Smallest object side, as a fraction of the image side.
const MIN_SIZE_FRAC: f32 = 0.28;
/// Largest object side, as a fraction of the image side.
const MAX_SIZE_FRAC: f32 = 0.6;
/// Smallest side of the main (labelled) object, which is placed first.
const MAIN_MIN_SIZE_FRAC: f32 = 0.42;
/// Other objects' sides are at most this fraction of the main object's, so the label (the largest object)
/// is never a matter of a pixel: its area is at least 1/0.8² ≈ 1.56 times any other's.
const OTHER_MAX_SIZE_RATIO: f32 = 0.8;
/// Candidate placements tried per object before taking the least-overlapping one.
const PLACEMENT_TRIES: u32 = 64;
/// After this many failed tries the largest allowed size has shrunk to [`MIN_SIZE_FRAC`].
const SHRINK_TRIES: u32 = 32;
/// Largest accepted overlap: intersection area over the smaller box's area.
const MAX_OVERLAP_FRAC: f32 = 0.1;
/// Colour candidates tried per object.
const COLOUR_TRIES: u32 = 48;
/// Smallest RGB distance (channels in [0, 1]) between an object's colour and the background colour.
const MIN_BACKGROUND_DISTANCE: f32 = 0.55;
/// Smallest luma difference (Rec. 601 weights, channels in [0, 1]) between an object and the background,
/// so shapes stand out in brightness too, not only in hue.
const MIN_BACKGROUND_LUMA_CONTRAST: f32 = 0.2;
/// Preferred smallest RGB distance between the colours of two objects of one image.
const MIN_OBJECT_DISTANCE: f32 = 0.3;
/// Half-width of the triangular per-pixel noise of the `noisy` variant (channels in [0, 1]).
const NOISE_AMPLITUDE: f32 = 0.08;
/// Width of a cross's arms as a fraction of its side.
const CROSS_ARM_FRAC: f32 = 0.36;
/// Supersampling grid per pixel side (SUPERSAMPLE² coverage samples per pixel).
const SUPERSAMPLE: usize = 4;
/// A pixel whose centre is farther than this (in pixels) from a shape's edge has coverage exactly 0 or 1
/// (the farthest coverage sample lies 0.375·√2 ≈ 0.53 px from the centre).
const EDGE_BAND_PX: f32 = 0.54;

/// One object of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Shape class: 0 circle, 1 square, 2 triangle, 3 cross (see [`super::CLASS_NAMES`]).
    pub class: u32,
    /// Normalised box `[x0, y0, x1, y1]` that the drawn shape touches on all four sides.
    pub bbox: [f32; 4],
    /// Fill colour, RGB in [-1, 1] (the image's value range).
    pub colour: [f32; 3],
}

/// One image with its label and objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Channel-major `[3, H, W]` pixels in [-1, 1].
    pub image: Vec<f32>,
    /// Class of the largest object (by box area); always `objects[0].class`.
    pub label: u32,
    /// The objects, largest box first (drawn in this order, so smaller objects lie on top).
    pub objects: Vec<Object>,
}

/// The procedural shapes task: a pure function of (dataset seed, index).
///
/// Cheap to clone (a handful of numbers); `Send + Sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesDataset {
    seed: u64,
    variant: ShapesVariant,
    min_objects: usize,
    max_objects: usize,
    len: u64,
    image_size: usize,
    slots: usize,
    null_class: u32,
}

impl ShapesDataset {
    /// The dataset of `cfg`, rendering `image_size`² images with layouts of `slots` slots whose empty slots
    /// carry class `null_class`.
    ///
    /// The object count range is kept well defined even for a config that skipped validation: at least 1,
    /// at most `slots` (a warning is logged when a value had to be clamped).
    pub fn new(cfg: &DatasetConfig, image_size: usize, slots: usize, null_class: u32) -> Self {
        let max_objects = cfg.max_objects.min(slots).max(1);
        let min_objects = cfg.min_objects.clamp(1, max_objects);
        if max_objects != cfg.max_objects || min_objects != cfg.min_objects {
            tracing::warn!(
                min_objects = cfg.min_objects,
                max_objects = cfg.max_objects,
                slots,
                "shapes dataset: object count clamped to {min_objects}..={max_objects}"
            );
        }
        let wanted = (cfg.train_size as f64 * cfg.subset_fraction).round();
        let len = if wanted.is_finite() && wanted >= 1.0 { wanted as u64 } else { 1 };
        Self { seed: cfg.seed, variant: cfg.variant, min_objects, max_objects, len, image_size, slots, null_class }
    }

    /// Training images in use: `round(train_size * subset_fraction)`, at least 1. The subset is the prefix
    /// `0..len` of the training stream, so smaller subsets are contained in larger ones.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false (a dataset has at least one image); present for API symmetry with [`Self::len`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Training sample `index` (meaningful for `index < len()`, defined for any index).
    pub fn sample(&self, index: u64) -> Sample {
        self.generate(STREAM_TRAIN, index)
    }

    /// Held-out sample `index`, from a stream separate from the training one (for evaluation).
    pub fn heldout_sample(&self, index: u64) -> Sample {
        self.generate(STREAM_HELDOUT, index)
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Layout slots per sample.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Class index of an empty layout slot.
    pub fn null_class(&self) -> u32 {
        self.null_class
    }

    /// Seed of the dataset's content.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Variant of the task.
    pub fn variant(&self) -> ShapesVariant {
        self.variant
    }

    /// Values in one image: `3 * image_size²`.
    pub fn image_len(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// Renders sample `index` of `stream`.
    fn generate(&self, stream: u64, index: u64) -> Sample {
        let mut rng = sample_rng(self.seed, stream, index);
        let span = (self.max_objects - self.min_objects + 1) as u64;
        let count = self.min_objects + below(&mut rng, span) as usize;
        let background = [unit(&mut rng), unit(&mut rng), unit(&mut rng)];

        let mut boxes: Vec<[f32; 4]> = Vec::with_capacity(count);
        for _ in 0..count {
            let (min_side, max_side) = match boxes.first() {
                None => (MAIN_MIN_SIZE_FRAC, MAX_SIZE_FRAC),
                Some(main) => (MIN_SIZE_FRAC, ((main[2] - main[0]) * OTHER_MAX_SIZE_RATIO).max(MIN_SIZE_FRAC)),
            };
            let placed = place_box(&mut rng, &boxes, min_side, max_side);
            boxes.push(placed);
        }
        let mut objects: Vec<(u32, [f32; 4], [f32; 3])> = Vec::with_capacity(count);
        let mut colours: Vec<[f32; 3]> = Vec::with_capacity(count);
        for bbox in boxes {
            let class = below(&mut rng, u64::from(NUM_CLASSES)) as u32;
            let colour = pick_colour(&mut rng, background, &colours);
            colours.push(colour);
            objects.push((class, bbox, colour));
        }
        // Largest box first; the stable sort keeps generation order among equal areas.
        objects.sort_by(|a, b| box_area(&b.1).total_cmp(&box_area(&a.1)));

        let size = self.image_size;
        let plane_len = size * size;
        let mut image = vec![0.0f32; 3 * plane_len];
        for (channel, plane) in image.chunks_exact_mut(plane_len.max(1)).enumerate() {
            plane.fill(background[channel]);
        }
        if self.variant == ShapesVariant::Noisy {
            for value in &mut image {
                let bits = rng.next_u64();
                let a = (bits >> 40) as f32 * (1.0 / 16_777_216.0);
                let b = ((bits >> 8) & 0xFF_FFFF) as f32 * (1.0 / 16_777_216.0);
                *value = (*value + (a + b - 1.0) * NOISE_AMPLITUDE).clamp(0.0, 1.0);
            }
        }
        for (class, bbox, colour) in &objects {
            let geometry = Geometry::new(*class, bbox, size as f32);
            draw(&mut image, size, &geometry, bbox, *colour);
        }
        for value in &mut image {
            *value = *value * 2.0 - 1.0;
        }

        let objects: Vec<Object> = objects
            .into_iter()
            .map(|(class, bbox, colour)| Object { class, bbox, colour: colour.map(|c| c * 2.0 - 1.0) })
            .collect();
        let label = objects.first().map_or(0, |o| o.class);
        Sample { image, label, objects }
    }
}

/// The generator of one sample: ChaCha8 keyed by (seed, stream, index, tag), so distinct triples never
/// share a key.
fn sample_rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    key[24..32].copy_from_slice(&SAMPLE_KEY_TAG.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Uniform in [0, 1) with 24 bits of resolution.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform in [lo, hi).
fn uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * unit(rng)
}

/// Unbiased uniform integer in `0..n` (Lemire's multiply-and-reject); 0 when `n == 0`.
pub(crate) fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let mut product = u128::from(rng.next_u64()) * u128::from(n);
    if (product as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (product as u64) < threshold {
            product = u128::from(rng.next_u64()) * u128::from(n);
        }
    }
    (product >> 64) as u64
}

/// Area of a normalised box.
fn box_area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection area over the smaller box's area.
fn overlap_fraction(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let smaller = box_area(a).min(box_area(b));
    if smaller > 0.0 {
        w * h / smaller
    } else {
        0.0
    }
}

/// A square box of side in [min_side, max_side] of the image that overlaps `placed` little: rejection
/// sampling with a bounded number of tries, the allowed size shrinking towards the minimum as tries fail; if
/// every try fails, the least-overlapping candidate.
fn place_box(rng: &mut ChaCha8Rng, placed: &[[f32; 4]], min_side: f32, max_side: f32) -> [f32; 4] {
    let mut best: Option<([f32; 4], f32)> = None;
    for attempt in 0..PLACEMENT_TRIES {
        let shrink = (attempt as f32 / SHRINK_TRIES as f32).min(1.0);
        let upper = max_side - (max_side - min_side) * shrink;
        let side = uniform(rng, min_side, upper);
        let x0 = uniform(rng, 0.0, 1.0 - side);
        let y0 = uniform(rng, 0.0, 1.0 - side);
        let candidate = [x0, y0, (x0 + side).min(1.0), (y0 + side).min(1.0)];
        let overlap = placed.iter().map(|p| overlap_fraction(p, &candidate)).fold(0.0f32, f32::max);
        if best.is_none_or(|(_, best_overlap)| overlap < best_overlap) {
            best = Some((candidate, overlap));
        }
        if overlap <= MAX_OVERLAP_FRAC {
            break;
        }
    }
    best.map_or([0.2, 0.2, 0.2 + MIN_SIZE_FRAC, 0.2 + MIN_SIZE_FRAC], |(b, _)| b)
}

/// Euclidean RGB distance.
fn colour_distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Rec. 601 luma.
fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// A colour clearly distinct from the background (always) and, when possible, from the other objects'.
fn pick_colour(rng: &mut ChaCha8Rng, background: [f32; 3], others: &[[f32; 3]]) -> [f32; 3] {
    let mut fallback: Option<[f32; 3]> = None;
    for _ in 0..COLOUR_TRIES {
        let colour = [unit(rng), unit(rng), unit(rng)];
        if colour_distance(colour, background) < MIN_BACKGROUND_DISTANCE
            || (luma(colour) - luma(background)).abs() < MIN_BACKGROUND_LUMA_CONTRAST
        {
            continue;
        }
        if others.iter().all(|o| colour_distance(colour, *o) >= MIN_OBJECT_DISTANCE) {
            return colour;
        }
        fallback.get_or_insert(colour);
    }
    // Black or white, whichever is farther in luma (at least 0.5 away in luma).
    fallback.unwrap_or(if luma(background) < 0.5 { [1.0; 3] } else { [0.0; 3] })
}

/// A shape in pixel coordinates, as a field that is negative inside and positive outside, with
/// `field > r` guaranteeing every point within `r` is outside and `field < -r` every point inside.
#[derive(Debug, Clone, Copy)]
enum Geometry {
    /// Disc.
    Circle { cx: f32, cy: f32, radius: f32 },
    /// Axis-aligned rectangle `[x0, y0, x1, y1]`.
    Rect([f32; 4]),
    /// Convex polygon as half-planes `nx·x + ny·y − c ≤ 0` with unit normals.
    Triangle([[f32; 3]; 3]),
    /// Union of two rectangles.
    Cross([[f32; 4]; 2]),
}

impl Geometry {
    /// The shape of `class` filling the normalised `bbox` tightly, in an image of `size_px` pixels.
    fn new(class: u32, bbox: &[f32; 4], size_px: f32) -> Self {
        let [x0, y0, x1, y1] = bbox.map(|v| v * size_px);
        let (cx, cy) = ((x0 + x1) * 0.5, (y0 + y1) * 0.5);
        match class {
            0 => Self::Circle { cx, cy, radius: (x1 - x0).min(y1 - y0) * 0.5 },
            2 => {
                // Apex at the top centre, base along the bottom edge.
                let vertices = [(cx, y0), (x1, y1), (x0, y1)];
                let centroid = ((cx + x1 + x0) / 3.0, (y0 + y1 + y1) / 3.0);
                let mut planes = [[0.0f32; 3]; 3];
                for (k, plane) in planes.iter_mut().enumerate() {
                    let (px, py) = vertices[k];
                    let (qx, qy) = vertices[(k + 1) % 3];
                    let length = ((qx - px).powi(2) + (qy - py).powi(2)).sqrt().max(f32::EPSILON);
                    let (mut nx, mut ny) = ((qy - py) / length, -(qx - px) / length);
                    if nx * (centroid.0 - px) + ny * (centroid.1 - py) > 0.0 {
                        nx = -nx;
                        ny = -ny;
                    }
                    *plane = [nx, ny, nx * px + ny * py];
                }
                Self::Triangle(planes)
            }
            3 => {
                let half_arm = (x1 - x0).min(y1 - y0) * CROSS_ARM_FRAC * 0.5;
                Self::Cross([[x0, cy - half_arm, x1, cy + half_arm], [cx - half_arm, y0, cx + half_arm, y1]])
            }
            _ => Self::Rect([x0, y0, x1, y1]),
        }
    }

    /// Signed field at pixel coordinates (x, y): < 0 inside.
    #[inline]
    fn field(&self, x: f32, y: f32) -> f32 {
        match self {
            Self::Circle { cx, cy, radius } => ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() - radius,
            Self::Rect(r) => rect_field(r, x, y),
            Self::Triangle(planes) => {
                planes.iter().map(|[nx, ny, c]| nx * x + ny * y - c).fold(f32::NEG_INFINITY, f32::max)
            }
            Self::Cross([a, b]) => rect_field(a, x, y).min(rect_field(b, x, y)),
        }
    }
}

/// Field of an axis-aligned rectangle (max of its four half-planes).
#[inline]
fn rect_field(r: &[f32; 4], x: f32, y: f32) -> f32 {
    (r[0] - x).max(x - r[2]).max(r[1] - y).max(y - r[3])
}

/// Composites `geometry` in `colour` over the `[3, size, size]` image (values in [0, 1]) with
/// supersampled coverage, visiting only the pixels of `bbox`.
fn draw(image: &mut [f32], size: usize, geometry: &Geometry, bbox: &[f32; 4], colour: [f32; 3]) {
    let size_px = size as f32;
    let plane_len = size * size;
    let to_pixel_range = |lo: f32, hi: f32| {
        let start = (lo * size_px).floor().max(0.0) as usize;
        let end = ((hi * size_px).ceil().max(0.0) as usize).min(size);
        start..end
    };
    let rows = to_pixel_range(bbox[1], bbox[3]);
    let columns = to_pixel_range(bbox[0], bbox[2]);
    let step = 1.0 / SUPERSAMPLE as f32;
    let samples_per_pixel = (SUPERSAMPLE * SUPERSAMPLE) as f32;
    for py in rows {
        for px in columns.clone() {
            let (x, y) = (px as f32, py as f32);
            let centre_field = geometry.field(x + 0.5, y + 0.5);
            let coverage = if centre_field >= EDGE_BAND_PX {
                continue;
            } else if centre_field <= -EDGE_BAND_PX {
                1.0
            } else {
                let mut inside = 0u32;
                for sy in 0..SUPERSAMPLE {
                    let sample_y = y + (sy as f32 + 0.5) * step;
                    for sx in 0..SUPERSAMPLE {
                        if geometry.field(x + (sx as f32 + 0.5) * step, sample_y) < 0.0 {
                            inside += 1;
                        }
                    }
                }
                if inside == 0 {
                    continue;
                }
                inside as f32 / samples_per_pixel
            };
            let offset = py * size + px;
            for (channel, &c) in colour.iter().enumerate() {
                let value = &mut image[channel * plane_len + offset];
                *value += (c - *value) * coverage;
            }
        }
    }
}

/// Renders a `[3, H, W]` image in [-1, 1] to 8-bit RGB `[H, W, 3]` (for grids and debugging). Values are
/// clamped; missing values (a too-short `image`) render black.
pub fn to_rgb8(image: &[f32], image_size: usize) -> Vec<u8> {
    let plane_len = image_size * image_size;
    let mut rgb = vec![0u8; 3 * plane_len];
    for (pixel, out) in rgb.chunks_exact_mut(3).enumerate() {
        for (channel, byte) in out.iter_mut().enumerate() {
            let value = image.get(channel * plane_len + pixel).copied().unwrap_or(-1.0);
            *byte = ((value + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        }
    }
    rgb
}
