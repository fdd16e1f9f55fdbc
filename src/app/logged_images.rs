//! Compare's logged images: the images runs logged to TensorBoard (an external run's `add_image`, a Wick
//! run's checkpoint grids, which it writes to its own event files), side by side in columns, each with its
//! run, tag and a step slider. Event files are read and their PNGs decoded on a worker thread; the UI only
//! uploads the decoded pixels it shows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::interop::tensorboard::read_log_dir;

/// One decoded image of a tag.
#[derive(Clone)]
pub struct DecodedImage {
    /// The step it was logged at.
    pub step: i64,
    /// Its pixels.
    pub pixels: Arc<egui::ColorImage>,
}

/// Every image of one run, by tag, in step order.
pub type RunImages = BTreeMap<String, Vec<DecodedImage>>;

/// One column: a run's tag at the step its slider picks.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageColumn {
    /// The run directory.
    pub root: PathBuf,
    /// The tag shown.
    pub tag: String,
    /// Index into the tag's images (the slider's position).
    pub index: usize,
}

type Loaded = (PathBuf, Result<RunImages, String>);

/// State of the logged-images columns.
pub struct LoggedImagesState {
    /// The columns, left to right.
    pub columns: Vec<ImageColumn>,
    /// Images of the runs loaded so far.
    pub images: HashMap<PathBuf, Arc<RunImages>>,
    /// Why a run's images could not be read.
    pub errors: HashMap<PathBuf, String>,
    loading: HashSet<PathBuf>,
    textures: HashMap<(PathBuf, String, i64), egui::TextureHandle>,
    tx: Sender<Loaded>,
    rx: Receiver<Loaded>,
}

impl Default for LoggedImagesState {
    fn default() -> Self {
        let (tx, rx) = unbounded();
        Self {
            columns: Vec::new(),
            images: HashMap::new(),
            errors: HashMap::new(),
            loading: HashSet::new(),
            textures: HashMap::new(),
            tx,
            rx,
        }
    }
}

/// The TensorBoard directories of a run: its own folder (a TensorBoard run, a Wick run's event files) and a
/// Trainer's `runs/*/`.
fn event_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    for entry in std::fs::read_dir(root.join("runs")).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs
}

/// Reads and decodes every image a run logged (on a worker).
pub fn read_run_images(root: &Path) -> Result<RunImages, String> {
    let mut out: RunImages = BTreeMap::new();
    for dir in event_dirs(root) {
        let data = read_log_dir(&dir);
        for (tag, images) in data.images {
            for logged in images {
                let decoded = crate::data::scan::decode_image(&logged.png)
                    .map_err(|e| format!("{}: the image of {tag} at step {}: {e}", dir.display(), logged.step))?
                    .to_rgba8();
                let size = [decoded.width() as usize, decoded.height() as usize];
                let pixels = egui::ColorImage::from_rgba_unmultiplied(size, decoded.as_raw());
                out.entry(tag.clone()).or_default().push(DecodedImage { step: logged.step, pixels: Arc::new(pixels) });
            }
        }
    }
    for images in out.values_mut() {
        images.sort_by_key(|i| i.step);
    }
    Ok(out)
}

impl LoggedImagesState {
    /// Takes finished loads.
    pub fn poll(&mut self) {
        while let Ok((root, result)) = self.rx.try_recv() {
            self.loading.remove(&root);
            match result {
                Ok(images) => {
                    self.errors.remove(&root);
                    // A column added before its run loaded shows the run's first tag, at its newest image.
                    for column in self.columns.iter_mut().filter(|c| c.root == root) {
                        if !images.contains_key(&column.tag) {
                            column.tag = images.keys().next().cloned().unwrap_or_default();
                        }
                        column.index = images.get(&column.tag).map_or(0, |i| i.len().saturating_sub(1));
                    }
                    self.images.insert(root, Arc::new(images));
                }
                Err(why) => {
                    self.errors.insert(root, why);
                }
            }
        }
    }

    /// Whether a run's images are being read.
    pub fn is_loading(&self, root: &Path) -> bool {
        self.loading.contains(root)
    }

    /// Reads `root`'s images again (on a worker).
    pub fn load(&mut self, root: &Path, ctx: &egui::Context) {
        if !self.loading.insert(root.to_path_buf()) {
            return;
        }
        let (tx, ctx, root) = (self.tx.clone(), ctx.clone(), root.to_path_buf());
        let spawned = std::thread::Builder::new().name("logged-images".into()).spawn(move || {
            let result = read_run_images(&root);
            let _ = tx.send((root, result));
            ctx.request_repaint();
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start reading logged images: {e}");
        }
    }

    /// Adds a column for `root` (its images are read when not yet loaded).
    pub fn add_column(&mut self, root: &Path, ctx: &egui::Context) {
        let images = self.images.get(root);
        let tag = images.and_then(|i| i.keys().next().cloned()).unwrap_or_default();
        let index = images.and_then(|i| i.get(&tag)).map_or(0, |i| i.len().saturating_sub(1));
        self.columns.push(ImageColumn { root: root.to_path_buf(), tag, index });
        if images.is_none() {
            self.load(root, ctx);
        }
    }

    /// The image a column shows, if loaded.
    pub fn image_of(&self, column: &ImageColumn) -> Option<&DecodedImage> {
        self.images.get(&column.root)?.get(&column.tag)?.get(column.index)
    }

    /// The texture of a column's image (uploaded once).
    pub fn texture_of(&mut self, column: &ImageColumn, ctx: &egui::Context) -> Option<egui::TextureHandle> {
        let image = self.image_of(column)?.clone();
        let key = (column.root.clone(), column.tag.clone(), image.step);
        let texture = self.textures.entry(key).or_insert_with(|| {
            let name = format!("logged:{}:{}:{}", column.root.display(), column.tag, image.step);
            ctx.load_texture(name, (*image.pixels).clone(), egui::TextureOptions::NEAREST)
        });
        Some(texture.clone())
    }
}
