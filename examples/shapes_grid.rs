//! Writes an 8×8 grid of `shapes` samples as a binary PPM and measures batch-generation speed.
//!
//! ```text
//! cargo run --release --example shapes_grid -- [OUT.ppm] [--scale N] [--boxes] [--noisy] [--seed N]
//! ```
//!
//! `--scale` enlarges each pixel N× (nearest neighbour, default 4); `--boxes` outlines each object's box
//! (in the object's slot order: white, then grey) to check tightness.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};
use wick::config::{DatasetConfig, ShapesVariant};
use wick::data::{batch_indices, make_batch, to_rgb8, Dataset, Prefetcher, ShapesDataset, CLASS_NAMES};

/// Grid side in samples.
const GRID_SIDE: usize = 8;
/// Gap between tiles, in source pixels.
const GAP_PX: usize = 2;

fn main() -> anyhow::Result<()> {
    let mut out_path = "grid.ppm".to_string();
    let mut scale = 4usize;
    let mut draw_boxes = false;
    let mut cfg = DatasetConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scale" => scale = args.next().context("--scale needs a value")?.parse().context("--scale")?,
            "--seed" => cfg.seed = args.next().context("--seed needs a value")?.parse().context("--seed")?,
            "--boxes" => draw_boxes = true,
            "--noisy" => cfg.variant = ShapesVariant::Noisy,
            other if other.starts_with("--") => bail!("unknown option {other}"),
            other => out_path = other.to_string(),
        }
    }
    let scale = scale.max(1);
    let image_size = 32;
    let dataset = Dataset::Shapes(ShapesDataset::new(&cfg, image_size, 4, 4));

    // The grid: sample i at row i / 8, column i % 8.
    let tile = image_size + GAP_PX;
    let side_px = (GRID_SIDE * tile + GAP_PX) * scale;
    let mut canvas = vec![40u8; side_px * side_px * 3];
    let mut labels = Vec::new();
    for i in 0..GRID_SIDE * GRID_SIDE {
        let sample = dataset.sample(i as u64);
        labels.push(CLASS_NAMES[sample.label as usize]);
        let mut rgb = to_rgb8(&sample.image, image_size);
        let (ox, oy) = (GAP_PX + (i % GRID_SIDE) * tile, GAP_PX + (i / GRID_SIDE) * tile);
        for y in 0..image_size * scale {
            for x in 0..image_size * scale {
                let (sx, sy) = (x / scale, y / scale);
                let src = (sy * image_size + sx) * 3;
                let dst = ((oy * scale + y) * side_px + ox * scale + x) * 3;
                canvas[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
        if draw_boxes {
            for (k, object) in sample.objects.iter().enumerate() {
                let shade = if k == 0 { 255 } else { 160 };
                let [x0, y0, x1, y1] = object
                    .bbox
                    .map(|v| ((v * (image_size * scale) as f32).round() as usize).min(image_size * scale - 1));
                for x in x0..=x1 {
                    for y in [y0, y1] {
                        let dst = ((oy * scale + y) * side_px + ox * scale + x) * 3;
                        canvas[dst..dst + 3].fill(shade);
                    }
                }
                for y in y0..=y1 {
                    for x in [x0, x1] {
                        let dst = ((oy * scale + y) * side_px + ox * scale + x) * 3;
                        canvas[dst..dst + 3].fill(shade);
                    }
                }
            }
        }
        rgb.clear();
    }
    let mut file = std::fs::File::create(&out_path).with_context(|| format!("cannot create {out_path}"))?;
    write!(file, "P6\n{side_px} {side_px}\n255\n").with_context(|| format!("cannot write {out_path}"))?;
    file.write_all(&canvas).with_context(|| format!("cannot write {out_path}"))?;
    println!("wrote {out_path} ({side_px}×{side_px} px)");
    for row in labels.chunks(GRID_SIDE) {
        println!("  {}", row.iter().map(|l| format!("{l:<9}")).collect::<String>());
    }

    // Speed: batches of 64, single thread.
    let batch_size = 64;
    let warmup_batches = 5;
    let timed_batches = 200;
    for b in 0..warmup_batches {
        let _ = make_batch(&dataset, 7, (b * batch_size) as u64, batch_size);
    }
    let started = Instant::now();
    let mut checksum = 0.0f64;
    for b in 0..timed_batches {
        let batch = make_batch(&dataset, 7, (b * batch_size) as u64, batch_size);
        checksum += f64::from(batch.images[0]);
    }
    let per_batch_ms = started.elapsed().as_secs_f64() * 1e3 / timed_batches as f64;
    println!("make_batch(64): {per_batch_ms:.3} ms per batch ({checksum:.1})");

    // One epoch permutation of the default 50,000 images (what make_batch recomputes on every call and
    // the Prefetcher computes once per epoch).
    let started = Instant::now();
    let indices = batch_indices(7, dataset.len(), 0, 1);
    println!("epoch permutation of {}: {:.3} ms ({indices:?})", dataset.len(), started.elapsed().as_secs_f64() * 1e3);

    // Through the prefetcher (includes channel hand-off), 64 batches.
    let mut prefetcher = Prefetcher::spawn(dataset.clone(), 7, 0, batch_size, 4);
    let started = Instant::now();
    for _ in 0..timed_batches {
        prefetcher.next_batch()?;
    }
    let per_batch_ms = started.elapsed().as_secs_f64() * 1e3 / timed_batches as f64;
    println!("Prefetcher(64): {per_batch_ms:.3} ms per batch consumed");

    let noisy = Dataset::Shapes(ShapesDataset::new(
        &DatasetConfig { variant: ShapesVariant::Noisy, ..cfg.clone() },
        image_size,
        4,
        4,
    ));
    let started = Instant::now();
    for b in 0..timed_batches {
        let _ = make_batch(&noisy, 7, (b * batch_size) as u64, batch_size);
    }
    let per_batch_ms = started.elapsed().as_secs_f64() * 1e3 / timed_batches as f64;
    println!("make_batch(64), noisy: {per_batch_ms:.3} ms per batch");
    Ok(())
}
