//! Sample grids: images side by side (one column per checkpoint or gate scale, one row per fixed input),
//! upscaled, with the requested boxes drawn over them; written as PNG with a JSON description. The PNG carries
//! its own legend — column titles above, each row's requested objects at the left in their boxes' colours — so
//! a grid opened on its own says what every box asked for.

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
/// Column titles.
const TITLE_COLOUR: [u8; 3] = [220, 220, 228];
/// The class of a row that requests no layout.
const NO_LAYOUT_COLOUR: [u8; 3] = [150, 150, 158];
/// Side of a glyph of the label font, in pixels.
const GLYPH_PX: u32 = 8;
/// Pixels per text line (a glyph and two pixels of leading).
const LINE_PX: u32 = GLYPH_PX + 2;
/// Longest row label, in characters (longer class names are cut, ending in "..").
const MAX_LABEL_CHARS: usize = 14;

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
    /// Where the cells start in the PNG (left of them the row labels, above them the column titles); the cell
    /// of column c, row r starts at `origin_px + gap_px + (c, r) × (cell + gap_px)`. 0 in grids written before
    /// labels existed.
    #[serde(default)]
    pub origin_px: [u32; 2],
}

/// A rendered grid.
#[derive(Debug, Clone)]
pub struct RenderedGrid {
    /// The cells with their column titles and row labels.
    pub image: RgbImage,
    /// `image` as PNG, as written to files.
    pub png: Vec<u8>,
    /// How to read the PNG.
    pub description: GridDescription,
}

/// Draws `columns` (each `[rows, 3, H, W]` in [-1, 1] for the items of `set`) into a grid titled `titles`.
pub fn render_grid(
    titles: &[String],
    columns: &[Vec<f32>],
    set: &EvalSet,
    scale: u32,
    null_class: u32,
) -> Result<RenderedGrid> {
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
            for (class, b) in requested_objects(set, r, null_class) {
                draw_box(&mut canvas, b, cell, x0, y0, box_colour(class));
            }
        }
    }
    let mut row_labels = Vec::with_capacity(set.count);
    let rows_desc = (0..set.count)
        .map(|r| {
            let class = class_name(&set.class_names, set.labels[r], null_class);
            let objects: Vec<(String, [f32; 4], [u8; 3])> = requested_objects(set, r, null_class)
                .map(|(c, b)| (class_name(&set.class_names, c, null_class), b, box_colour(c)))
                .collect();
            row_labels.push(if objects.is_empty() {
                vec![(class.clone(), NO_LAYOUT_COLOUR)]
            } else {
                objects.iter().map(|(name, _, colour)| (name.clone(), *colour)).collect()
            });
            GridRow { class, objects: objects.into_iter().map(|(name, b, _)| (name, b)).collect() }
        })
        .collect();
    let (labelled, origin_px) = with_labels(&canvas, titles, &row_labels, cell);
    let mut png = Vec::new();
    labelled.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).context("cannot encode the grid as PNG")?;
    let description = GridDescription { columns: titles.to_vec(), rows: rows_desc, scale, gap_px: GAP_PX, origin_px };
    Ok(RenderedGrid { image: labelled, png, description })
}

/// The cells with column titles above and each row's labels (text, colour) at the left; returns the image and
/// where the cells start in it.
fn with_labels(
    cells: &RgbImage,
    titles: &[String],
    row_labels: &[Vec<(String, [u8; 3])>],
    cell: u32,
) -> (RgbImage, [u32; 2]) {
    let label_chars =
        row_labels.iter().flatten().map(|(text, _)| text.chars().count()).max().unwrap_or(0).min(MAX_LABEL_CHARS);
    let left_px = if label_chars == 0 { 0 } else { GAP_PX + label_chars as u32 * GLYPH_PX };
    let top_px = if titles.iter().all(|t| t.is_empty()) { 0 } else { GAP_PX + LINE_PX };
    let mut canvas = RgbImage::from_pixel(cells.width() + left_px, cells.height() + top_px, Rgb(GAP_COLOUR));
    image::imageops::replace(&mut canvas, cells, i64::from(left_px), i64::from(top_px));
    let title_chars = (cell / GLYPH_PX) as usize;
    for (c, title) in titles.iter().enumerate() {
        let x = left_px + GAP_PX + c as u32 * (cell + GAP_PX);
        draw_text(&mut canvas, x, GAP_PX, &title_tail(&short_title(title), title_chars), title_chars, TITLE_COLOUR);
    }
    let lines_per_cell = (cell / LINE_PX).max(1) as usize;
    for (r, labels) in row_labels.iter().enumerate() {
        let y = top_px + GAP_PX + r as u32 * (cell + GAP_PX);
        for (line, (text, colour)) in labels.iter().take(lines_per_cell).enumerate() {
            draw_text(&mut canvas, GAP_PX, y + line as u32 * LINE_PX, text, label_chars, *colour);
        }
    }
    (canvas, [left_px, top_px])
}

/// A checkpoint name as a column title: `step-00004800` → `step 4800` (the rest of the title kept).
pub fn short_title(title: &str) -> String {
    let Some(rest) = title.strip_prefix("step-") else { return title.to_string() };
    let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    if digits_end == 0 {
        return title.to_string();
    }
    let step = rest[..digits_end].trim_start_matches('0');
    format!("step {}{}", if step.is_empty() { "0" } else { step }, &rest[digits_end..])
}

/// The end of `text` when it is longer than `max_chars` (".." then the last characters): the end of a column
/// title is what tells columns apart.
fn title_tail(text: &str, max_chars: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(2);
    "..".chars().take(max_chars).chain(chars[chars.len() - keep..].iter().copied()).collect()
}

/// Writes `text` at (x, y) in the 8×8 label font, cut to `max_chars` (ending in ".."); characters the font
/// lacks show as '?'. Pixels outside the canvas are skipped.
fn draw_text(canvas: &mut RgbImage, x: u32, y: u32, text: &str, max_chars: usize, colour: [u8; 3]) {
    use font8x8::UnicodeFonts;
    let chars: Vec<char> = text.chars().collect();
    let shown: Vec<char> = if chars.len() > max_chars {
        chars.iter().take(max_chars.saturating_sub(2)).copied().chain("..".chars()).take(max_chars).collect()
    } else {
        chars
    };
    for (i, ch) in shown.into_iter().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i as u32 * GLYPH_PX;
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..GLYPH_PX {
                let (px, py) = (gx + column, y + row as u32);
                if bits & (1 << column) != 0 && px < canvas.width() && py < canvas.height() {
                    canvas.put_pixel(px, py, Rgb(colour));
                }
            }
        }
    }
}

/// The objects row `r` of `set` requests: (class, normalised box), empty slots left out.
fn requested_objects(set: &EvalSet, r: usize, null_class: u32) -> impl Iterator<Item = (u32, [f32; 4])> + '_ {
    (r * set.slots..(r + 1) * set.slots).filter_map(move |slot| {
        let class = set.box_classes[slot];
        let b = &set.boxes[slot * 4..slot * 4 + 4];
        (class != null_class).then_some((class, [b[0], b[1], b[2], b[3]]))
    })
}

/// Outline (and label) colour of a class's boxes.
fn box_colour(class: u32) -> [u8; 3] {
    BOX_COLOURS[class as usize % BOX_COLOURS.len()]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of 4-pixel images: a circle requested in row 0, no layout in row 1.
    fn set() -> EvalSet {
        EvalSet {
            count: 2,
            image_size: 4,
            slots: 2,
            noise: vec![0.0; 2 * 3 * 16],
            labels: vec![0, 1],
            boxes: vec![0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            box_classes: vec![0, 4, 4, 4],
            class_names: ["circle", "square", "triangle", "cross"].map(String::from).to_vec(),
        }
    }

    fn count_colour(image: &RgbImage, x: std::ops::Range<u32>, y: std::ops::Range<u32>, colour: [u8; 3]) -> usize {
        y.flat_map(|y| x.clone().map(move |x| (x, y))).filter(|&(x, y)| image.get_pixel(x, y).0 == colour).count()
    }

    #[test]
    fn the_png_shows_the_cells_under_their_titles_beside_their_requests() {
        let columns = vec![vec![0.5; 2 * 3 * 16], vec![-0.5; 2 * 3 * 16]];
        let titles = vec!["step-00000010".to_string(), "step-00000020".to_string()];
        let grid = render_grid(&titles, &columns, &set(), 8, 4).unwrap();
        let png = image::load_from_memory(&grid.png).unwrap().to_rgb8();
        assert!(png == grid.image);
        let [left, top] = grid.description.origin_px;
        assert_eq!(left, GAP_PX + 6 * GLYPH_PX, "as wide as the longest label: `circle`, `square`");
        assert_eq!(top, GAP_PX + LINE_PX);
        let cell = 4 * 8;
        assert_eq!((png.width(), png.height()), (left + 2 * cell + 3 * GAP_PX, top + 2 * cell + 3 * GAP_PX));
        // The cells start at the origin: row 1 (no boxes) is uniformly the column's value, 0.5 → 191, −0.5 → 64.
        let row1_y = top + 2 * GAP_PX + cell;
        for (column, value) in [(0u32, 191u8), (1, 64)] {
            let x0 = left + GAP_PX + column * (cell + GAP_PX);
            assert_eq!(count_colour(&png, x0..x0 + cell, row1_y..row1_y + cell, [value; 3]), (cell * cell) as usize);
        }
        // Titles above the cells; row 0 names its circle in the circle's box colour, row 1 (no layout) its class
        // in grey; nothing in the circle's colour beside row 1.
        assert!(count_colour(&png, left..png.width(), 0..top, TITLE_COLOUR) > 20);
        let row0 = top + GAP_PX..top + GAP_PX + cell;
        let row1 = top + 2 * GAP_PX + cell..top + 2 * GAP_PX + 2 * cell;
        assert!(count_colour(&png, 0..left, row0.clone(), BOX_COLOURS[0]) > 20);
        assert_eq!(count_colour(&png, 0..left, row1.clone(), BOX_COLOURS[0]), 0);
        assert!(count_colour(&png, 0..left, row1, NO_LAYOUT_COLOUR) > 20);
        assert_eq!(grid.description.rows[0].objects.len(), 1);
        assert!(grid.description.rows[1].objects.is_empty());
    }

    #[test]
    fn column_titles_are_short_and_keep_their_end() {
        assert_eq!(short_title("step-00004800"), "step 4800");
        assert_eq!(short_title("step-00000000"), "step 0");
        assert_eq!(short_title("step-00000700 gate×0.5"), "step 700 gate×0.5");
        assert_eq!(short_title("best"), "best");
        assert_eq!(title_tail("step 4800 gate×0.5", 12), "..0 gate×0.5");
        assert_eq!(title_tail("step 4800", 12), "step 4800");
    }

    #[test]
    fn long_labels_are_cut_and_unknown_characters_drawn() {
        let mut canvas = RgbImage::from_pixel(40, 8, Rgb([0, 0, 0]));
        draw_text(&mut canvas, 0, 0, "a very long class name ✓", 5, [255, 255, 255]);
        // Five glyphs at most: nothing is drawn beyond x = 40 (and nothing panics).
        assert!(count_colour(&canvas, 0..40, 0..8, [255, 255, 255]) > 0);
        let mut wide = RgbImage::from_pixel(80, 8, Rgb([0, 0, 0]));
        draw_text(&mut wide, 0, 0, "a very long class name", 5, [255, 255, 255]);
        assert_eq!(count_colour(&wide, 40..80, 0..8, [255, 255, 255]), 0, "cut to five characters");
        let mut question = RgbImage::from_pixel(8, 8, Rgb([0, 0, 0]));
        draw_text(&mut question, 0, 0, "✓", 1, [255, 255, 255]);
        assert!(count_colour(&question, 0..8, 0..8, [255, 255, 255]) > 0, "a character the font lacks shows as '?'");
    }
}
