//! The layout JSONL of an image folder: one line per image,
//! `{"image": "cats/001.png", "objects": [{"class": "cat", "bbox": [x0, y0, x1, y1]}, ...]}`.
//!
//! Every problem is reported with its line number; nothing is dropped or changed silently.

use std::collections::HashMap;

use serde::Deserialize;

use super::boxes::normalize_box;
use super::check::{DataProblem, ProblemKind};
use crate::config::BoxUnits;

/// One object of a layout line, its box normalised to the *original* image (before crop or letterbox).
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutObject {
    /// Class index (position of the class folder in the sorted class list).
    pub class: u32,
    /// `[x0, y0, x1, y1]` in [0, 1] of the original image.
    pub bbox: [f32; 4],
}

/// A parsed layout file.
#[derive(Debug, Clone, Default)]
pub struct Layouts {
    /// Objects of each image (by path relative to the root), as listed in the file.
    pub by_image: HashMap<String, Vec<LayoutObject>>,
    /// Units the boxes were read in (`auto` resolved).
    pub units: Option<BoxUnits>,
    /// Non-empty lines in the file.
    pub lines: usize,
    /// Objects kept.
    pub objects: usize,
    /// Everything that was wrong, by line.
    pub problems: Vec<DataProblem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    image: String,
    #[serde(default)]
    objects: Vec<RawObject>,
}

#[derive(Deserialize)]
struct RawObject {
    class: serde_json::Value,
    bbox: Vec<f64>,
}

/// Parses the layout file `text` (`file_name` is used in messages) against the class folders and the
/// readable images (`image_sizes`: original width and height by relative path).
pub fn parse_layouts(
    file_name: &str,
    text: &str,
    class_names: &[String],
    image_sizes: &HashMap<String, (u32, u32)>,
    all_files: &std::collections::HashSet<String>,
    units: BoxUnits,
) -> Layouts {
    let mut layouts = Layouts::default();
    let mut parsed: Vec<(usize, RawLine)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        layouts.lines += 1;
        match serde_json::from_str::<RawLine>(line) {
            Ok(raw) => parsed.push((line_number, raw)),
            Err(e) => layouts.problems.push(problem(
                ProblemKind::LayoutParse,
                file_name,
                line_number,
                format!("not a layout line: {e} — expected {{\"image\": \"class/file.png\", \"objects\": [...]}}"),
            )),
        }
    }
    let resolved = match units {
        BoxUnits::Auto => {
            let any_above_one = parsed
                .iter()
                .flat_map(|(_, raw)| raw.objects.iter().flat_map(|o| o.bbox.iter()))
                .any(|v| v.is_finite() && *v > 1.0);
            if any_above_one {
                BoxUnits::Pixels
            } else {
                BoxUnits::Normalized
            }
        }
        other => other,
    };
    layouts.units = Some(resolved);
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (line_number, raw) in parsed {
        let image = raw.image.trim_start_matches("./").to_string();
        if let Some(first) = first_line_of.get(&image) {
            layouts.problems.push(problem(
                ProblemKind::LayoutDuplicateLine,
                file_name,
                line_number,
                format!("second line for {image} (first on line {first}): ignored"),
            ));
            continue;
        }
        first_line_of.insert(image.clone(), line_number);
        let Some(&(width, height)) = image_sizes.get(&image) else {
            let detail = if all_files.contains(&image) {
                format!("names {image}, which is not a readable image of a class folder: line ignored")
            } else {
                format!("names {image}, which is not in the folder: line ignored")
            };
            layouts.problems.push(problem(ProblemKind::LayoutMissingImage, file_name, line_number, detail));
            continue;
        };
        let mut objects = Vec::with_capacity(raw.objects.len());
        for (k, object) in raw.objects.into_iter().enumerate() {
            let class_name = match &object.class {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let Some(class) = class_names.iter().position(|c| *c == class_name) else {
                layouts.problems.push(problem(
                    ProblemKind::LayoutUnknownClass,
                    file_name,
                    line_number,
                    format!(
                        "object {k} of {image}: class {class_name:?} is not a class folder ({}): object dropped",
                        class_names.join(", ")
                    ),
                ));
                continue;
            };
            let [x0, y0, x1, y1] = match object.bbox[..] {
                [a, b, c, d] => [a, b, c, d],
                _ => {
                    layouts.problems.push(problem(
                        ProblemKind::LayoutBadBox,
                        file_name,
                        line_number,
                        format!(
                            "object {k} of {image}: bbox has {} numbers, expected 4: object dropped",
                            object.bbox.len()
                        ),
                    ));
                    continue;
                }
            };
            let (sx, sy) = match resolved {
                BoxUnits::Pixels => (f64::from(width), f64::from(height)),
                _ => (1.0, 1.0),
            };
            let normalised = [x0 / sx, y0 / sy, x1 / sx, y1 / sy].map(|v| v as f32);
            let (fixed, warning) = normalize_box(normalised);
            if let Some(warning) = warning {
                layouts.problems.push(problem(
                    ProblemKind::LayoutBadBox,
                    file_name,
                    line_number,
                    format!("object {k} of {image} ({width}×{height} px): {warning}"),
                ));
            }
            if let Some(bbox) = fixed {
                objects.push(LayoutObject { class: class as u32, bbox });
            }
        }
        layouts.objects += objects.len();
        layouts.by_image.insert(image, objects);
    }
    layouts
}

fn problem(kind: ProblemKind, file_name: &str, line: usize, detail: String) -> DataProblem {
    DataProblem { kind, path: file_name.to_string(), line: Some(line), detail }
}
