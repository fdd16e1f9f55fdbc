//! Sample grids: images side by side (one column per checkpoint or gate scale, one row per fixed input),
//! upscaled, with the requested boxes drawn over them; written as PNG with a JSON description.

use std::io::Cursor;

use anyhow::{Context, Result};
use image::{ImageFormat, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::sampler::EvalSet;

/// Outline colour of each class's boxes (circle, square, triangle, cross for the shapes task; cycled).
const BOX_COLOURS: [[u8; 3]; 4] = [[255, 64, 64], [64, 200, 255], [255, 220, 0], [120, 255, 120]];
/// Pixels between cells.
const GAP_PX: u32 = 4;
/// Background between cells.
const GAP_COLOUR: [u8; 3] = [24, 24, 28];

/// What one row of a grid asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridRow {
    /// Requested class (name).
    pub class: String,
    /// Requested objects: class name and normalised [x0, y0, x1, y1].
    pub objects: Vec<(String, [f32; 4])>,
}

/// samples.json: how to read a grid PNG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridDescription {
    /// Column titles (checkpoint names or gate scales), left to right.
    pub columns: Vec<String>,
    /// Row requests, top to bottom.
    pub rows: Vec<GridRow>,
    /// Pixels per image pixel.
    pub scale: u32,
    /// Pixels between cells.
    pub gap_px: u32,
}

/// Draws `columns` (each `[rows, 3, H, W]` in [-1, 1] for the items of `set`) into a grid; returns the PNG
/// bytes and the description.
pub fn render_grid(
    titles: &[String],
    columns: &[Vec<f32>],
    set: &EvalSet,
    scale: u32,
    null_class: u32,
) -> Result<(Vec<u8>, GridDescription)> {
    let side = set.image_size as u32;
    let cell = side * scale;
    let rows = set.count as u32;
    let cols = columns.len() as u32;
    let width = cols * cell + (cols + 1) * GAP_PX;
    let height = rows * cell + (rows + 1) * GAP_PX;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb(GAP_COLOUR));
    let image_len = 3 * set.image_size * set.image_size;
    for (c, images) in columns.iter().enumerate() {
        anyhow::ensure!(
            images.len() == set.count * image_len,
            "column {c} holds {} values, expected {}",
            images.len(),
            set.count * image_len
        );
        for r in 0..set.count {
            let x0 = GAP_PX + c as u32 * (cell + GAP_PX);
            let y0 = GAP_PX + r as u32 * (cell + GAP_PX);
            let pixels = &images[r * image_len..(r + 1) * image_len];
            blit(&mut canvas, pixels, set.image_size, scale, x0, y0);
            for slot in 0..set.slots {
                let class = set.box_classes[r * set.slots + slot];
                if class == null_class {
                    continue;
                }
                let b = &set.boxes[(r * set.slots + slot) * 4..(r * set.slots + slot + 1) * 4];
                let colour = BOX_COLOURS[class as usize % BOX_COLOURS.len()];
                draw_box(&mut canvas, [b[0], b[1], b[2], b[3]], cell, x0, y0, colour);
            }
        }
    }
    let rows_desc = (0..set.count)
        .map(|r| GridRow {
            class: class_name(&set.class_names, set.labels[r], null_class),
            objects: (0..set.slots)
                .filter(|s| set.box_classes[r * set.slots + s] != null_class)
                .map(|s| {
                    let b = &set.boxes[(r * set.slots + s) * 4..(r * set.slots + s + 1) * 4];
                    (
                        class_name(&set.class_names, set.box_classes[r * set.slots + s], null_class),
                        [b[0], b[1], b[2], b[3]],
                    )
                })
                .collect(),
        })
        .collect();
    let mut png = Vec::new();
    canvas.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).context("cannot encode the grid as PNG")?;
    Ok((png, GridDescription { columns: titles.to_vec(), rows: rows_desc, scale, gap_px: GAP_PX }))
}

fn class_name(names: &[String], class: u32, null_class: u32) -> String {
    if class == null_class {
        "none".to_string()
    } else {
        names.get(class as usize).map_or_else(|| format!("class {class}"), |n| n.to_string())
    }
}

/// Copies one [3, H, W] image in [-1, 1] into the canvas at (x0, y0), each pixel a `scale`×`scale` block.
fn blit(canvas: &mut RgbImage, image: &[f32], side: usize, scale: u32, x0: u32, y0: u32) {
    let plane = side * side;
    for y in 0..side {
        for x in 0..side {
            let rgb =
                [0, 1, 2].map(|ch| ((image[ch * plane + y * side + x] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
            for dy in 0..scale {
                for dx in 0..scale {
                    canvas.put_pixel(x0 + x as u32 * scale + dx, y0 + y as u32 * scale + dy, Rgb(rgb));
                }
            }
        }
    }
}

/// A 1-pixel outline of a normalised box inside the cell at (x0, y0).
fn draw_box(canvas: &mut RgbImage, b: [f32; 4], cell: u32, x0: u32, y0: u32, colour: [u8; 3]) {
    let to_px = |v: f32| ((v.clamp(0.0, 1.0) * cell as f32).round() as u32).min(cell - 1);
    let (left, top, right, bottom) = (to_px(b[0]), to_px(b[1]), to_px(b[2]), to_px(b[3]));
    for x in left..=right {
        canvas.put_pixel(x0 + x, y0 + top, Rgb(colour));
        canvas.put_pixel(x0 + x, y0 + bottom, Rgb(colour));
    }
    for y in top..=bottom {
        canvas.put_pixel(x0 + left, y0 + y, Rgb(colour));
        canvas.put_pixel(x0 + right, y0 + y, Rgb(colour));
    }
}
