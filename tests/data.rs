//! Tests of `wick::data`: the procedural shapes task, box hygiene, batching and prefetching.

use std::collections::HashSet;

use wick::config::{DatasetConfig, ShapesVariant};
use wick::data::{
    batch_indices, make_batch, make_heldout_batch, normalize_box, to_rgb8, Dataset, EpochOrder, Prefetcher, Sample,
    ShapesDataset, NUM_CLASSES,
};

const SIZE: usize = 32;
const SLOTS: usize = 4;
const NULL: u32 = 4;

fn dataset_with(cfg: DatasetConfig) -> Dataset {
    Dataset::Shapes(ShapesDataset::new(&cfg, SIZE, SLOTS, NULL))
}

fn dataset(seed: u64) -> Dataset {
    dataset_with(DatasetConfig { seed, ..DatasetConfig::default() })
}

fn box_area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

#[test]
fn samples_are_deterministic_and_seeded() {
    let a = dataset(11);
    let b = dataset(11);
    for i in [0u64, 1, 17, 49_999, 1 << 40] {
        assert_eq!(a.sample(i), a.sample(i), "same dataset, index {i}");
        assert_eq!(a.sample(i), b.sample(i), "equal datasets, index {i}");
        assert_eq!(a.heldout_sample(i), b.heldout_sample(i), "held-out, index {i}");
    }
    // Across threads too.
    let c = a.clone();
    let from_thread = std::thread::spawn(move || c.sample(5)).join().expect("thread");
    assert_eq!(from_thread, a.sample(5));

    let other = dataset(12);
    for i in 0..20u64 {
        assert_ne!(a.sample(i).image, other.sample(i).image, "different seeds, index {i}");
    }
    // Different indices differ.
    assert_ne!(a.sample(0).image, a.sample(1).image);
}

#[test]
fn heldout_differs_from_training() {
    let d = dataset(0);
    let train: HashSet<Vec<u32>> =
        (0..300u64).map(|i| d.sample(i).image.iter().map(|v| v.to_bits()).collect()).collect();
    for i in 0..300u64 {
        let held: Vec<u32> = d.heldout_sample(i).image.iter().map(|v| v.to_bits()).collect();
        assert!(!train.contains(&held), "held-out sample {i} equals a training sample");
    }
}

#[test]
fn images_have_the_right_length_and_range() {
    for variant in [ShapesVariant::Plain, ShapesVariant::Noisy] {
        let d = dataset_with(DatasetConfig { variant, ..DatasetConfig::default() });
        assert_eq!(d.image_len(), 3 * SIZE * SIZE);
        for i in 0..200u64 {
            let s = d.sample(i);
            assert_eq!(s.image.len(), 3 * SIZE * SIZE);
            assert!(s.image.iter().all(|v| v.is_finite() && (-1.0..=1.0).contains(v)), "{variant:?} {i}");
        }
    }
    // Another image size works.
    let d = ShapesDataset::new(&DatasetConfig::default(), 48, SLOTS, NULL);
    assert_eq!(d.sample(3).image.len(), 3 * 48 * 48);
}

#[test]
fn objects_labels_and_boxes_are_valid() {
    let cfg = DatasetConfig { min_objects: 1, max_objects: 3, ..DatasetConfig::default() };
    let d = dataset_with(cfg);
    let mut counts = [0usize; 4];
    for i in 0..500u64 {
        let s = d.sample(i);
        let n = s.objects.len();
        assert!((1..=3).contains(&n), "sample {i} has {n} objects");
        counts[n] += 1;
        let largest = s.objects.iter().max_by(|a, b| box_area(&a.bbox).total_cmp(&box_area(&b.bbox))).expect("objects");
        assert_eq!(s.label, largest.class, "sample {i}: label is the largest object's class");
        assert_eq!(s.label, s.objects[0].class, "sample {i}: largest object first");
        let main_area = box_area(&s.objects[0].bbox);
        for other in &s.objects[1..] {
            assert!(main_area >= 1.5 * box_area(&other.bbox), "sample {i}: the labelled object is clearly the largest");
        }
        for o in &s.objects {
            assert!(o.class < NUM_CLASSES);
            let [x0, y0, x1, y1] = o.bbox;
            assert!((0.0..=1.0).contains(&x0) && (0.0..=1.0).contains(&x1), "{:?}", o.bbox);
            assert!((0.0..=1.0).contains(&y0) && (0.0..=1.0).contains(&y1), "{:?}", o.bbox);
            assert!(x0 < x1 && y0 < y1, "{:?}", o.bbox);
            let (w, h) = (x1 - x0, y1 - y0);
            assert!((0.27..=0.61).contains(&w) && (0.27..=0.61).contains(&h), "size {w}×{h}");
            assert_eq!(normalize_box(o.bbox), (Some(o.bbox), None), "generated boxes need no fixing");
            assert!(o.colour.iter().all(|c| (-1.0..=1.0).contains(c)));
        }
    }
    assert!(counts[1] > 100 && counts[2] > 100 && counts[3] > 100, "object counts {counts:?}");

    // A fixed object count is honoured.
    let d = dataset_with(DatasetConfig { min_objects: 2, max_objects: 2, ..DatasetConfig::default() });
    assert!((0..50u64).all(|i| d.sample(i).objects.len() == 2));
}

/// Pixel bounds (columns x0..=x1, rows y0..=y1) of the pixels that differ from the background.
fn drawn_extent(sample: &Sample) -> Option<[usize; 4]> {
    let rgb = to_rgb8(&sample.image, SIZE);
    let background = [rgb[0], rgb[1], rgb[2]];
    // The top-left pixel is background unless an object covers it; take the most common colour instead.
    let mut tally: std::collections::HashMap<[u8; 3], usize> = std::collections::HashMap::new();
    for p in rgb.chunks_exact(3) {
        *tally.entry([p[0], p[1], p[2]]).or_default() += 1;
    }
    let background = tally.into_iter().max_by_key(|(_, n)| *n).map_or(background, |(c, _)| c);
    let mut extent: Option<[usize; 4]> = None;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let p = &rgb[(y * SIZE + x) * 3..(y * SIZE + x) * 3 + 3];
            let differs = p.iter().zip(background).any(|(a, b)| a.abs_diff(b) > 2);
            if differs {
                let e = extent.get_or_insert([x, y, x, y]);
                e[0] = e[0].min(x);
                e[1] = e[1].min(y);
                e[2] = e[2].max(x);
                e[3] = e[3].max(y);
            }
        }
    }
    extent
}

#[test]
fn boxes_are_tight_around_lone_objects() {
    let d = dataset_with(DatasetConfig { min_objects: 1, max_objects: 1, ..DatasetConfig::default() });
    let mut seen_classes = [0usize; 4];
    for i in 0..200u64 {
        let s = d.sample(i);
        assert_eq!(s.objects.len(), 1);
        let o = &s.objects[0];
        seen_classes[o.class as usize] += 1;
        let [ex0, ey0, ex1, ey1] = drawn_extent(&s).unwrap_or_else(|| panic!("sample {i}: nothing drawn"));
        let [bx0, by0, bx1, by1] = o.bbox.map(|v| v * SIZE as f32);
        // Every drawn pixel overlaps the box (pixel p spans [p, p + 1)).
        assert!(ex0 as f32 + 1.0 > bx0 && (ex1 as f32) < bx1, "sample {i}: columns {ex0}..={ex1} vs {bx0}..{bx1}");
        assert!(ey0 as f32 + 1.0 > by0 && (ey1 as f32) < by1, "sample {i}: rows {ey0}..={ey1} vs {by0}..{by1}");
        // And the drawing reaches (within ~1 px) each side of the box.
        let slack = 1.05;
        assert!(ex0 as f32 <= bx0 + slack, "sample {i} class {}: left {ex0} vs {bx0}", o.class);
        assert!(ey0 as f32 <= by0 + slack, "sample {i} class {}: top {ey0} vs {by0}", o.class);
        assert!(ex1 as f32 + 1.0 >= bx1 - slack, "sample {i} class {}: right {ex1} vs {bx1}", o.class);
        assert!(ey1 as f32 + 1.0 >= by1 - slack, "sample {i} class {}: bottom {ey1} vs {by1}", o.class);
    }
    assert!(seen_classes.iter().all(|&n| n > 20), "every class checked: {seen_classes:?}");
}

#[test]
fn batches_have_layouts_with_null_slots() {
    let d = dataset(3);
    let batch = make_batch(&d, 9, 0, 16);
    assert_eq!(batch.size, 16);
    assert_eq!(batch.images.len(), 16 * 3 * SIZE * SIZE);
    assert_eq!(batch.labels.len(), 16);
    assert_eq!(batch.boxes.len(), 16 * SLOTS * 4);
    assert_eq!(batch.box_classes.len(), 16 * SLOTS);
    assert_eq!(batch.cursor, 0);
    assert!(batch.warnings.is_empty(), "{:?}", batch.warnings);
    let indices = batch_indices(9, d.len(), 0, 16);
    for (row, &index) in indices.iter().enumerate() {
        let s = d.sample(index);
        assert_eq!(&batch.images[row * 3 * SIZE * SIZE..(row + 1) * 3 * SIZE * SIZE], &s.image[..]);
        assert_eq!(batch.labels[row], s.label);
        for slot in 0..SLOTS {
            let class = batch.box_classes[row * SLOTS + slot];
            let bbox = &batch.boxes[(row * SLOTS + slot) * 4..(row * SLOTS + slot) * 4 + 4];
            match s.objects.get(slot) {
                Some(o) => {
                    assert_eq!(class, o.class);
                    assert_eq!(bbox, &o.bbox[..]);
                }
                None => {
                    assert_eq!(class, NULL, "empty slot has the null class");
                    assert_eq!(bbox, &[0.0; 4][..], "empty slot has a zero box");
                }
            }
        }
        // The first slot holds the labelled (largest) object.
        assert_eq!(batch.box_classes[row * SLOTS], batch.labels[row]);
    }
    assert!(batch.box_classes.contains(&NULL), "some slots are empty with 1–3 objects in 4 slots");

    let held = make_heldout_batch(&d, 100, 4);
    assert_eq!(held.cursor, 100);
    assert_eq!(&held.images[..3 * SIZE * SIZE], &d.heldout_sample(100).image[..]);
}

#[test]
fn batch_indices_walk_a_permutation_per_epoch() {
    let len = 97u64;
    for epoch in 0..3u64 {
        let indices = batch_indices(5, len, epoch * len, len as usize);
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..len).collect::<Vec<_>>(), "epoch {epoch} covers each index once");
        assert_ne!(indices, (0..len).collect::<Vec<_>>(), "epoch {epoch} is shuffled");
    }
    let e0 = batch_indices(5, len, 0, len as usize);
    let e1 = batch_indices(5, len, len, len as usize);
    assert_ne!(e0, e1, "epochs use different permutations");
    assert_ne!(e0, batch_indices(6, len, 0, len as usize), "order seeds differ");
    assert_eq!(e0, batch_indices(5, len, 0, len as usize), "pure function");

    // Continuity: two batches of 5 == one of 10, also across an epoch boundary.
    for start in [0u64, 40, 92, 190] {
        let mut two = batch_indices(5, len, start, 5);
        two.extend(batch_indices(5, len, start + 5, 5));
        assert_eq!(two, batch_indices(5, len, start, 10), "start {start}");
    }
    // A batch crossing the boundary takes the end of one epoch and the start of the next.
    let crossing = batch_indices(5, len, len - 3, 6);
    assert_eq!(&crossing[..3], &e0[e0.len() - 3..]);
    assert_eq!(&crossing[3..], &e1[..3]);

    // The cached order agrees with the stateless function, in any access order.
    let mut order = EpochOrder::new(5, len);
    for start in [0u64, 300, 7, 96, 500] {
        assert_eq!(order.indices(start, 13), batch_indices(5, len, start, 13), "start {start}");
    }
    assert!(batch_indices(5, 0, 0, 4).is_empty());
}

#[test]
fn dataset_len_follows_subset_fraction() {
    let d = dataset_with(DatasetConfig { train_size: 1000, subset_fraction: 0.25, ..DatasetConfig::default() });
    assert_eq!(d.len(), 250);
    let d = dataset_with(DatasetConfig { train_size: 10, subset_fraction: 0.001, ..DatasetConfig::default() });
    assert_eq!(d.len(), 1);
    let d = dataset_with(DatasetConfig { train_size: 3, subset_fraction: 0.5, ..DatasetConfig::default() });
    assert_eq!(d.len(), 2, "rounds");
    let batch = make_batch(&dataset_with(DatasetConfig { train_size: 4, ..DatasetConfig::default() }), 1, 0, 12);
    assert_eq!(batch.size, 12, "batches larger than the dataset wrap over epochs");
}

#[test]
fn prefetcher_matches_make_batch() {
    let d = dataset_with(DatasetConfig { train_size: 50, ..DatasetConfig::default() });
    let (order_seed, start, size) = (21u64, 37u64, 8usize);
    let mut prefetcher = Prefetcher::spawn(d.clone(), order_seed, start, size, 2);
    for k in 0..15u64 {
        let cursor = start + k * size as u64;
        assert_eq!(prefetcher.next_cursor(), cursor);
        let got = prefetcher.next_batch().expect("batch");
        assert_eq!(got.cursor, cursor);
        assert_eq!(got, make_batch(&d, order_seed, cursor, size), "batch at cursor {cursor}");
    }
}

/// Dropping a prefetcher stops and joins its thread, whether it is blocked sending into a full channel or
/// building a batch nobody will take. (How long that takes depends on the machine's load: it is not timed.)
#[test]
fn prefetcher_drop_stops_its_thread() {
    let d = dataset(0);
    // Full channel (thread blocked in send): wait until the channel is full, then drop.
    let mut prefetcher = Prefetcher::spawn(d.clone(), 1, 0, 64, 4);
    prefetcher.next_batch().expect("batch");
    drop(prefetcher);
    // Mid-generation, never consumed.
    let prefetcher = Prefetcher::spawn(d, 1, 0, 256, 1);
    drop(prefetcher);
}

#[test]
fn normalize_box_cases() {
    // Inside: unchanged, no warning.
    assert_eq!(normalize_box([0.1, 0.2, 0.5, 0.6]), (Some([0.1, 0.2, 0.5, 0.6]), None));
    assert_eq!(normalize_box([0.0, 0.0, 1.0, 1.0]), (Some([0.0, 0.0, 1.0, 1.0]), None));

    // Out of range: clipped with a warning.
    let (b, w) = normalize_box([-0.2, 0.1, 1.3, 0.5]);
    assert_eq!(b, Some([0.0, 0.1, 1.0, 0.5]));
    let w = w.expect("warning");
    assert!(w.contains("clipped"), "{w}");

    // Swapped with a warning.
    let (b, w) = normalize_box([0.7, 0.8, 0.2, 0.3]);
    assert_eq!(b, Some([0.2, 0.3, 0.7, 0.8]));
    let w = w.expect("warning");
    assert!(w.contains("x0 > x1") && w.contains("y0 > y1") && w.contains("swapped"), "{w}");

    // Swapped and clipped.
    let (b, w) = normalize_box([1.5, 0.1, 0.5, 0.4]);
    assert_eq!(b, Some([0.5, 0.1, 1.0, 0.4]));
    let w = w.expect("warning");
    assert!(w.contains("swapped") && w.contains("clipped"), "{w}");

    // Degenerate: dropped.
    let (b, w) = normalize_box([0.3, 0.3, 0.3, 0.6]);
    assert_eq!(b, None);
    assert!(w.expect("warning").contains("dropped"));
    let (b, w) = normalize_box([1.2, 0.1, 1.5, 0.4]);
    assert_eq!(b, None, "entirely outside");
    assert!(w.expect("warning").contains("dropped"));

    // Non-finite: dropped.
    for bad in [[f32::NAN, 0.1, 0.5, 0.5], [0.1, 0.1, f32::INFINITY, 0.5]] {
        let (b, w) = normalize_box(bad);
        assert_eq!(b, None);
        let w = w.expect("warning");
        assert!(w.contains("non-finite") && w.contains("dropped"), "{w}");
    }
}

#[test]
fn classes_are_roughly_balanced() {
    let d = dataset(4);
    let mut counts = [0usize; NUM_CLASSES as usize];
    for i in 0..2000u64 {
        counts[d.sample(i).label as usize] += 1;
    }
    // Expected 500 each; a binomial σ is ~19, so ±100 is > 5σ.
    for (class, &n) in counts.iter().enumerate() {
        assert!((400..=600).contains(&n), "class {class}: {n} of 2000 ({counts:?})");
    }
}

#[test]
fn to_rgb8_maps_the_range() {
    let size = 2;
    let mut image = vec![0.0f32; 3 * size * size];
    image[0] = -1.0; // red of pixel 0
    image[1] = 1.0; // red of pixel 1
    image[4] = 2.0; // green of pixel 0, clamped
    let rgb = to_rgb8(&image, size);
    assert_eq!(rgb.len(), size * size * 3);
    assert_eq!(&rgb[0..3], &[0, 255, 128]);
    assert_eq!(&rgb[3..6], &[255, 128, 128]);
}
