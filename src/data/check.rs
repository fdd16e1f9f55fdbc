//! `wick data check`: everything wrong with an image folder and its layout file, found before a run starts.
//!
//! ```text
//! list_files(root) ─▶ scan_images (decode + hash, journalled, resumable) ─┐
//! layout JSONL ─────▶ parse_layouts (per-line problems, box units) ───────┼─▶ DataCheck { report, usable }
//!                     duplicates by content hash (first path kept) ───────┘
//! ```
//!
//! Problems never stop the check: bad files are listed and skipped. Only a folder with no usable image, or a
//! class folder with none, is an error ([`DataReport::errors`]), which stops a run before its first step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::layouts::{parse_layouts, LayoutObject};
use super::scan::{folder_class_names, has_image_extension, list_files, scan_images, FileOutcome, ScanProgress};
use crate::config::BoxUnits;

/// Kinds of data problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A zero-byte image file.
    EmptyFile,
    /// An image file that cannot be read or decoded (truncated, corrupt, not an image).
    Unreadable,
    /// A file without an image extension inside a class folder: ignored.
    NotAnImage,
    /// A file directly in the root, outside every class folder: ignored.
    OutsideClassFolder,
    /// Same bytes as an earlier file: skipped, the earlier one is kept.
    Duplicate,
    /// A layout line that is not valid JSON of the expected form.
    LayoutParse,
    /// A layout line naming an image that is not in the folder (or not readable).
    LayoutMissingImage,
    /// A layout object whose class is not a class folder.
    LayoutUnknownClass,
    /// A layout box that was out of range, inverted, empty or malformed (fixed or dropped, as said).
    LayoutBadBox,
    /// A second layout line for the same image.
    LayoutDuplicateLine,
}

impl ProblemKind {
    /// Short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::EmptyFile => "empty file",
            Self::Unreadable => "unreadable",
            Self::NotAnImage => "not an image",
            Self::OutsideClassFolder => "outside class folders",
            Self::Duplicate => "duplicate",
            Self::LayoutParse => "layout: bad line",
            Self::LayoutMissingImage => "layout: missing image",
            Self::LayoutUnknownClass => "layout: unknown class",
            Self::LayoutBadBox => "layout: bad box",
            Self::LayoutDuplicateLine => "layout: repeated image",
        }
    }
}

/// One problem: what, where (file, and line for the layout file) and the details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataProblem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// File it concerns, relative to the root (or the layout file's name).
    pub path: String,
    /// 1-based line of the layout file, for layout problems.
    pub line: Option<usize>,
    /// What exactly, and what was done about it.
    pub detail: String,
}

/// Image counts of one class folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Folder name = class name.
    pub name: String,
    /// Image files found.
    pub files: usize,
    /// Of them, usable (decode, not a duplicate).
    pub usable: usize,
}

/// How many usable images have one size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeCount {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Images of this size.
    pub count: usize,
}

/// What the layout file held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutSummary {
    /// The layout file.
    pub file: PathBuf,
    /// Non-empty lines.
    pub lines: usize,
    /// Usable images that have a layout line.
    pub images_with_layout: usize,
    /// Usable images without one (they train with an empty layout).
    pub images_without_layout: usize,
    /// Objects kept.
    pub objects: usize,
    /// Units the boxes were read in (`pixels` or `normalized`; `detected` says whether `auto` chose).
    pub box_units: BoxUnits,
    /// Whether the units were detected (`box_units = "auto"`).
    pub units_detected: bool,
    /// Objects beyond the model's layout slots (the smallest boxes of an image), left out of training.
    pub objects_beyond_slots: usize,
    /// Layout slots per image the count above refers to.
    pub slots: usize,
}

impl LayoutSummary {
    /// One line: lines, images with and without a layout, objects, objects beyond the slots, box units.
    pub fn describe(&self) -> String {
        format!(
            "{} lines, {} images with a layout, {} without, {} objects ({} beyond {} slots), boxes in {}{}",
            self.lines,
            self.images_with_layout,
            self.images_without_layout,
            self.objects,
            self.objects_beyond_slots,
            self.slots,
            units_name(self.box_units),
            if self.units_detected { " (detected)" } else { "" }
        )
    }
}

/// The report of a data check (`wick data check` prints it as JSON; a run stores it as data_report.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// The image folder.
    pub root: PathBuf,
    /// Files found under the root (all kinds).
    pub files: usize,
    /// Image files read (by extension, in class folders).
    pub image_files: usize,
    /// Usable images: decode, not duplicates.
    pub usable_images: usize,
    /// Of the image files, how many the scan took from an earlier, interrupted or finished scan.
    pub reused_from_earlier_scan: usize,
    /// Per class folder, in class-index order.
    pub classes: Vec<ClassCount>,
    /// Sizes of the usable images, most common first.
    pub image_sizes: Vec<SizeCount>,
    /// Groups of files with identical bytes; the first of each group is kept.
    pub duplicates: Vec<Vec<String>>,
    /// The layout file, if one was given.
    pub layout: Option<LayoutSummary>,
    /// Every problem found, files first (in path order), then the layout file (in line order).
    pub problems: Vec<DataProblem>,
    /// What makes the data unusable for training (empty when it can train).
    pub errors: Vec<String>,
    /// Seconds the check took.
    pub check_secs: f64,
}

impl DataReport {
    /// Problems per kind, in kind order.
    pub fn problem_counts(&self) -> BTreeMap<ProblemKind, usize> {
        let mut counts = BTreeMap::new();
        for problem in &self.problems {
            *counts.entry(problem.kind).or_insert(0) += 1;
        }
        counts
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "{}: {} usable images of {} image files in {} classes ({} files in all)",
            self.root.display(),
            self.usable_images,
            self.image_files,
            self.classes.len(),
            self.files
        )];
        for class in &self.classes {
            lines.push(format!("  {:<20} {:>6} usable of {:>6}", class.name, class.usable, class.files));
        }
        if let Some(layout) = &self.layout {
            lines.push(format!("layouts {}: {}", layout.file.display(), layout.describe()));
        }
        for (kind, count) in self.problem_counts() {
            lines.push(format!("  {count:>5} × {}", kind.label()));
        }
        for error in &self.errors {
            lines.push(format!("error: {error}"));
        }
        lines.join("\n")
    }
}

/// `pixels` or `normalized`.
pub fn units_name(units: BoxUnits) -> &'static str {
    match units {
        BoxUnits::Auto => "auto",
        BoxUnits::Pixels => "pixels",
        BoxUnits::Normalized => "normalized",
    }
}

/// A usable image: what training needs to load it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsableImage {
    /// Path relative to the root.
    pub path: String,
    /// Class index.
    pub class: u32,
    /// Original width and height.
    pub size: (u32, u32),
    /// File size in bytes when checked.
    pub size_bytes: u64,
    /// Modification time when checked (ns since the epoch).
    pub mtime_ns: u64,
    /// Layout objects (boxes normalised to the original image), largest first; empty without a layout.
    pub objects: Vec<LayoutObject>,
}

/// The result of a check: the report and the images training can use.
#[derive(Debug, Clone)]
pub struct DataCheck {
    /// What was found.
    pub report: DataReport,
    /// Class names, in class-index order.
    pub class_names: Vec<String>,
    /// The usable images in path order.
    pub usable: Vec<UsableImage>,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    /// The image folder.
    pub root: PathBuf,
    /// The layout JSONL, if any.
    pub layouts: Option<PathBuf>,
    /// Units of its boxes.
    pub box_units: BoxUnits,
    /// Layout slots per image (objects beyond are counted).
    pub slots: usize,
    /// Where the scan journal lives (`None`: no journal, the scan starts over every time).
    pub cache_dir: Option<PathBuf>,
}

/// Checks an image folder (and its layout file). `progress` follows the scan; `cancel` stops it (the journal
/// keeps what was read, so the next check continues).
pub fn check_folder(
    request: &CheckRequest,
    cancel: &AtomicBool,
    progress: impl FnMut(ScanProgress),
) -> Result<DataCheck> {
    let start = Instant::now();
    let root = &request.root;
    if !root.is_dir() {
        anyhow::bail!("the image folder {} does not exist or is not a folder", root.display());
    }
    let class_names = folder_class_names(root)?;
    let files = list_files(root)?;
    let (checks, reused) = scan_images(root, &files, request.cache_dir.as_deref(), cancel, progress)?;

    let mut problems: Vec<DataProblem> = Vec::new();
    for file in &files {
        if file.class.is_none() {
            problems.push(DataProblem {
                kind: ProblemKind::OutsideClassFolder,
                path: file.rel_path.clone(),
                line: None,
                detail: "file in the root, outside every class folder: ignored".to_string(),
            });
        } else if !has_image_extension(&file.rel_path) {
            problems.push(DataProblem {
                kind: ProblemKind::NotAnImage,
                path: file.rel_path.clone(),
                line: None,
                detail: format!(
                    "not an image file name (images end in .{}): ignored",
                    super::scan::IMAGE_EXTENSIONS.join(", .")
                ),
            });
        }
    }
    let class_of: HashMap<&str, &str> =
        files.iter().filter_map(|f| Some((f.rel_path.as_str(), f.class.as_deref()?))).collect();
    let mut first_with_hash: HashMap<&str, usize> = HashMap::new();
    let mut duplicate_groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut readable: Vec<(&str, u32, u32)> = Vec::new();
    let stamps: HashMap<&str, (u64, u64)> =
        checks.iter().map(|c| (c.path.as_str(), (c.size_bytes, c.mtime_ns))).collect();
    for (index, check) in checks.iter().enumerate() {
        match &check.outcome {
            FileOutcome::Unreadable { reason } => problems.push(DataProblem {
                kind: if check.size_bytes == 0 { ProblemKind::EmptyFile } else { ProblemKind::Unreadable },
                path: check.path.clone(),
                line: None,
                detail: format!("{reason}: skipped"),
            }),
            FileOutcome::Ok { width, height, sha256 } => match first_with_hash.get(sha256.as_str()) {
                Some(&first) => {
                    let original = &checks[first].path;
                    problems.push(DataProblem {
                        kind: ProblemKind::Duplicate,
                        path: check.path.clone(),
                        line: None,
                        detail: format!("same bytes as {original}: skipped, {original} is kept"),
                    });
                    duplicate_groups.entry(first).or_insert_with(|| vec![original.clone()]).push(check.path.clone());
                }
                None => {
                    first_with_hash.insert(sha256, index);
                    readable.push((check.path.as_str(), *width, *height));
                }
            },
        }
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));

    let image_sizes_by_path: HashMap<String, (u32, u32)> =
        readable.iter().map(|(path, w, h)| (path.to_string(), (*w, *h))).collect();
    let all_files: HashSet<String> = files.iter().map(|f| f.rel_path.clone()).collect();
    let mut layout_summary = None;
    let mut objects_of: HashMap<String, Vec<LayoutObject>> = HashMap::new();
    if let Some(layout_file) = &request.layouts {
        let text = std::fs::read_to_string(layout_file)
            .with_context(|| format!("cannot read the layout file {}", layout_file.display()))?;
        let file_name = layout_file
            .file_name()
            .map_or_else(|| layout_file.display().to_string(), |n| n.to_string_lossy().into_owned());
        let parsed =
            parse_layouts(&file_name, &text, &class_names, &image_sizes_by_path, &all_files, request.box_units);
        let mut beyond_slots = 0;
        for objects in parsed.by_image.values() {
            beyond_slots += objects.len().saturating_sub(request.slots);
        }
        let with_layout = readable.iter().filter(|(path, ..)| parsed.by_image.contains_key(*path)).count();
        layout_summary = Some(LayoutSummary {
            file: layout_file.clone(),
            lines: parsed.lines,
            images_with_layout: with_layout,
            images_without_layout: readable.len() - with_layout,
            objects: parsed.objects,
            box_units: parsed.units.unwrap_or(request.box_units),
            units_detected: request.box_units == BoxUnits::Auto,
            objects_beyond_slots: beyond_slots,
            slots: request.slots,
        });
        problems.extend(parsed.problems);
        objects_of = parsed.by_image;
    }

    let mut usable: Vec<UsableImage> = Vec::with_capacity(readable.len());
    let mut size_counts: HashMap<(u32, u32), usize> = HashMap::new();
    for (path, width, height) in &readable {
        let Some(class_name) = class_of.get(path) else { continue };
        let Some(class) = class_names.iter().position(|c| c == class_name) else { continue };
        let mut objects = objects_of.remove(*path).unwrap_or_default();
        objects.sort_by(|a, b| area(&b.bbox).total_cmp(&area(&a.bbox)));
        *size_counts.entry((*width, *height)).or_insert(0) += 1;
        let (size_bytes, mtime_ns) = stamps.get(path).copied().unwrap_or_default();
        usable.push(UsableImage {
            path: path.to_string(),
            class: class as u32,
            size: (*width, *height),
            size_bytes,
            mtime_ns,
            objects,
        });
    }
    let classes: Vec<ClassCount> = class_names
        .iter()
        .enumerate()
        .map(|(index, name)| ClassCount {
            name: name.clone(),
            files: checks.iter().filter(|c| class_of.get(c.path.as_str()) == Some(&name.as_str())).count(),
            usable: usable.iter().filter(|u| u.class as usize == index).count(),
        })
        .collect();
    let mut errors = Vec::new();
    if class_names.is_empty() {
        errors.push(format!("{} has no class subfolder: put each class's images in root/<class>/", root.display()));
    } else if usable.is_empty() {
        errors.push(format!("{} has no usable image", root.display()));
    }
    for class in classes.iter().filter(|c| c.usable == 0) {
        if !usable.is_empty() {
            errors.push(format!(
                "class folder \"{}\" has no usable image ({} image files): add images or remove the folder",
                class.name, class.files
            ));
        }
    }
    let mut image_sizes: Vec<SizeCount> =
        size_counts.into_iter().map(|((width, height), count)| SizeCount { width, height, count }).collect();
    image_sizes.sort_by(|a, b| b.count.cmp(&a.count).then((a.width, a.height).cmp(&(b.width, b.height))));
    let report = DataReport {
        root: root.clone(),
        files: files.len(),
        image_files: checks.len(),
        usable_images: usable.len(),
        reused_from_earlier_scan: reused,
        classes,
        image_sizes,
        duplicates: duplicate_groups.into_values().collect(),
        layout: layout_summary,
        problems,
        errors,
        check_secs: start.elapsed().as_secs_f64(),
    };
    Ok(DataCheck { report, class_names, usable })
}

fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}
