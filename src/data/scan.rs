//! Scanning an image folder: which files are images of which class, which of them decode, their sizes and
//! content hashes. A scan keeps a journal (one JSON line per file) in the cache folder, so an interrupted scan
//! continues where it stopped and a second scan of unchanged files costs only a directory listing.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File extensions (lower case) read as images.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Files decoded between two journal flushes and progress reports.
const CHUNK: usize = 32;

/// A file found under the root, before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Path relative to the root, `/`-separated (`cats/001.png`).
    pub rel_path: String,
    /// Class folder it lies in (`None` for a file directly in the root).
    pub class: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when the file system has none).
    pub mtime_ns: u64,
}

/// What reading one image file found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Decodes: its size and content hash.
    Ok {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// SHA-256 of the file's bytes, hex.
        sha256: String,
    },
    /// Does not decode (or cannot be read); the decoder's reason.
    Unreadable {
        /// Why, in the decoder's words.
        reason: String,
    },
}

/// One journal line: a file and what reading it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileCheck {
    /// Path relative to the root, `/`-separated.
    pub path: String,
    /// Size in bytes when read.
    pub size_bytes: u64,
    /// Modification time when read (ns since the epoch).
    pub mtime_ns: u64,
    /// The result.
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

/// The subfolders of `root` that are classes: every non-hidden directory, sorted by name. Class index `i`
/// is the `i`-th name.
pub fn folder_class_names(root: &Path) -> Result<Vec<String>> {
    let entries =
        std::fs::read_dir(root).with_context(|| format!("cannot list the image folder {}", root.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list the image folder {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Every file under `root` (hidden files and folders skipped), in path order. Files of class folders are
/// found recursively.
pub fn list_files(root: &Path) -> Result<Vec<ListedFile>> {
    let mut files = Vec::new();
    walk(root, root, None, &mut files)?;
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(files)
}

fn walk(root: &Path, dir: &Path, class: Option<&str>, out: &mut Vec<ListedFile>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let metadata = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            let class = class.map_or(name.clone(), str::to_string);
            walk(root, &path, Some(&class), out)?;
        } else if metadata.is_file() {
            let mtime_ns = metadata
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            out.push(ListedFile {
                rel_path: relative_path(root, &path),
                class: class.map(str::to_string),
                size_bytes: metadata.len(),
                mtime_ns,
            });
        }
    }
    Ok(())
}

/// `path` relative to `root`, `/`-separated.
fn relative_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// Whether `rel_path` has an image extension.
pub fn has_image_extension(rel_path: &str) -> bool {
    Path::new(rel_path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// Largest width or height of an image Wick decodes (a dataset image, a logged sample): a file declaring more
/// is refused from its header, before anything is allocated for its pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Most pixels of an image Wick decodes: 32 Mi (a 5792 × 5792 image), checked from the header before
/// decoding. Decoders allocate up to 8 bytes a pixel in one block (16-bit RGBA, or WebP's ARGB buffer beside
/// its output), so this bounds one image's largest allocation by [`MAX_DECODE_BYTES`].
pub const MAX_IMAGE_PIXELS: u64 = 32 << 20;

/// Most memory one image's decoder may allocate in one block: 256 MiB (see [`MAX_IMAGE_PIXELS`]); also
/// given to the decoder as its allocation limit.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Decodes an image file's bytes (format from the content, not the extension), within [`MAX_IMAGE_SIDE`],
/// [`MAX_IMAGE_PIXELS`] and [`MAX_DECODE_BYTES`].
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::DynamicImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".to_string());
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read: {e}"))
    };
    let mut decoder = reader()?;
    if decoder.format().is_none() {
        return Err("not an image: the content matches no known image format".to_string());
    }
    // The header alone, before any decoder allocates for the pixels: some (WebP's) allocate beyond the
    // decoder's own allocation limit.
    let (width, height) = reader()?.into_dimensions().map_err(|e| format!("does not decode: {e}"))?;
    let too_large = |why: String| {
        format!(
            "too large to decode: {why}; Wick decodes images up to {MAX_IMAGE_SIDE} px a side and {} Mpx",
            MAX_IMAGE_PIXELS >> 20
        )
    };
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(too_large(format!("the header declares {width} × {height} px")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    decoder.limits(limits);
    decoder.decode().map_err(|e| match e {
        image::ImageError::Limits(e) => too_large(e.to_string()),
        e => format!("does not decode: {e}"),
    })
}

/// Reads and decodes one file.
fn check_file(root: &Path, file: &ListedFile) -> FileCheck {
    let outcome = match std::fs::read(root.join(&file.rel_path)) {
        Err(e) => FileOutcome::Unreadable { reason: format!("cannot read: {e}") },
        Ok(bytes) => match decode_image(&bytes) {
            Ok(image) => FileOutcome::Ok {
                width: image.width(),
                height: image.height(),
                sha256: format!("{:x}", Sha256::digest(&bytes)),
            },
            Err(reason) => FileOutcome::Unreadable { reason },
        },
    };
    FileCheck { path: file.rel_path.clone(), size_bytes: file.size_bytes, mtime_ns: file.mtime_ns, outcome }
}

/// Progress of a scan: files done (read now or reused from the journal) of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanProgress {
    /// Files done.
    pub done: usize,
    /// Image files to read in all.
    pub total: usize,
    /// Of `done`, how many came from an earlier scan's journal.
    pub reused: usize,
}

/// The journal file of a scan of `root` in `cache_dir`.
pub fn journal_path(cache_dir: &Path, root: &Path) -> PathBuf {
    let key = format!("{:x}", Sha256::digest(root.to_string_lossy().as_bytes()));
    cache_dir.join(format!("scan-{}.jsonl", &key[..16]))
}

/// Reads every image file of `files` (those with an image extension), reusing the journal's result for each
/// file whose size and modification time are unchanged, and appending new results to it as they come.
///
/// `progress` is called after every chunk of files; when `cancel` becomes true the scan stops after the
/// current chunk with an error (what was read stays in the journal: the next scan continues from there).
/// Without a `cache_dir` nothing is journalled. Returns the results in path order and how many of them
/// came from the journal.
pub fn scan_images(
    root: &Path,
    files: &[ListedFile],
    cache_dir: Option<&Path>,
    cancel: &AtomicBool,
    mut progress: impl FnMut(ScanProgress),
) -> Result<(Vec<FileCheck>, usize)> {
    let images: Vec<&ListedFile> =
        files.iter().filter(|f| f.class.is_some() && has_image_extension(&f.rel_path)).collect();
    let journal_file = cache_dir.map(|dir| journal_path(dir, root));
    let previous = journal_file.as_deref().map(read_journal).unwrap_or_default();
    let mut results: HashMap<String, FileCheck> = HashMap::with_capacity(images.len());
    let mut to_read: Vec<&ListedFile> = Vec::new();
    for file in &images {
        match previous.get(&file.rel_path) {
            Some(check) if check.size_bytes == file.size_bytes && check.mtime_ns == file.mtime_ns => {
                results.insert(file.rel_path.clone(), check.clone());
            }
            _ => to_read.push(file),
        }
    }
    let reused = results.len();
    let mut writer = match &journal_file {
        Some(path) => Some(open_journal(path, &previous, &results)?),
        None => None,
    };
    let total = images.len();
    progress(ScanProgress { done: reused, total, reused });
    for chunk in to_read.chunks(CHUNK) {
        if cancel.load(Ordering::Relaxed) {
            bail!("scan of {} cancelled after {} of {total} files", root.display(), results.len());
        }
        let checks: Vec<FileCheck> = chunk.par_iter().map(|file| check_file(root, file)).collect();
        if let Some(writer) = writer.as_mut() {
            for check in &checks {
                serde_json::to_writer(&mut *writer, check)?;
                writer.write_all(b"\n")?;
            }
            writer.flush().context("cannot write the scan journal")?;
        }
        for check in checks {
            results.insert(check.path.clone(), check);
        }
        progress(ScanProgress { done: results.len(), total, reused });
    }
    let mut ordered: Vec<FileCheck> = images.iter().filter_map(|f| results.remove(&f.rel_path)).collect();
    ordered.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((ordered, reused))
}

/// The journal's entries by path (a damaged line, e.g. the half-written last line of an interrupted scan,
/// is skipped; a later line for the same path wins).
fn read_journal(path: &Path) -> HashMap<String, FileCheck> {
    let Ok(file) = File::open(path) else { return HashMap::new() };
    BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|line| serde_json::from_str::<FileCheck>(&line).ok())
        .map(|check| (check.path.clone(), check))
        .collect()
}

/// Opens the journal for appending. When the journal holds stale entries (files changed or gone), it is first
/// rewritten with only the entries still valid, so it does not grow without bound.
fn open_journal(
    path: &Path,
    previous: &HashMap<String, FileCheck>,
    still_valid: &HashMap<String, FileCheck>,
) -> Result<BufWriter<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    }
    if previous.len() != still_valid.len() {
        let mut valid: Vec<&FileCheck> = still_valid.values().collect();
        valid.sort_by(|a, b| a.path.cmp(&b.path));
        let mut text = Vec::new();
        for check in valid {
            serde_json::to_writer(&mut text, check)?;
            text.push(b'\n');
        }
        crate::run::atomic::atomic_write(path, &text)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the scan journal {}", path.display()))?;
    Ok(BufWriter::new(file))
}
