//! [`Dataset`]: the one type the trainer, the evaluation and the window read samples from, whichever kind of
//! data a run uses.

use anyhow::Result;

use super::folder::{FolderDataset, FolderOptions};
use super::scan::{folder_class_names, ScanProgress};
use super::shapes::{Sample, ShapesDataset};
use super::CLASS_NAMES;
use crate::config::{DatasetConfig, DatasetKind};

/// The data of a run. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// The procedural shapes task.
    Shapes(ShapesDataset),
    /// An image folder (with optional layouts).
    Folder(FolderDataset),
}

impl Dataset {
    /// Opens the data of `config` for a model of `image_size`² pixels, `slots` layout slots and null class
    /// `null_class`. A folder is checked and decoded (from the cache when possible); `progress` follows its
    /// scan.
    pub fn open(
        config: &DatasetConfig,
        image_size: usize,
        slots: usize,
        null_class: u32,
        options: &FolderOptions,
        progress: impl FnMut(ScanProgress),
    ) -> Result<Self> {
        Ok(match config.kind {
            DatasetKind::Shapes => Self::Shapes(ShapesDataset::new(config, image_size, slots, null_class)),
            DatasetKind::Folder => {
                Self::Folder(FolderDataset::open(config, image_size, slots, null_class, options, progress)?)
            }
        })
    }

    /// Training images in use.
    pub fn len(&self) -> u64 {
        match self {
            Self::Shapes(d) => d.len(),
            Self::Folder(d) => d.len(),
        }
    }

    /// Whether the training set is empty (never, for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Training sample `index`.
    pub fn sample(&self, index: u64) -> Sample {
        match self {
            Self::Shapes(d) => d.sample(index),
            Self::Folder(d) => d.sample(index),
        }
    }

    /// Held-out sample `index` (a folder's held-out set wraps around).
    pub fn heldout_sample(&self, index: u64) -> Sample {
        match self {
            Self::Shapes(d) => d.heldout_sample(index),
            Self::Folder(d) => d.heldout_sample(index),
        }
    }

    /// Distinct held-out images (`None`: unlimited, generated).
    pub fn heldout_len(&self) -> Option<u64> {
        match self {
            Self::Shapes(_) => None,
            Self::Folder(d) => Some(d.heldout_len()),
        }
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        match self {
            Self::Shapes(d) => d.image_size(),
            Self::Folder(d) => d.image_size(),
        }
    }

    /// Layout slots per sample.
    pub fn slots(&self) -> usize {
        match self {
            Self::Shapes(d) => d.slots(),
            Self::Folder(d) => d.slots(),
        }
    }

    /// Class index of an empty layout slot.
    pub fn null_class(&self) -> u32 {
        match self {
            Self::Shapes(d) => d.null_class(),
            Self::Folder(d) => d.null_class(),
        }
    }

    /// Values in one image: `3 * image_size²`.
    pub fn image_len(&self) -> usize {
        3 * self.image_size() * self.image_size()
    }

    /// Class names in class-index order.
    pub fn class_names(&self) -> Vec<String> {
        match self {
            Self::Shapes(_) => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
            Self::Folder(d) => d.class_names().to_vec(),
        }
    }

    /// Whether samples carry layouts (IoU means something).
    pub fn has_layouts(&self) -> bool {
        match self {
            Self::Shapes(_) => true,
            Self::Folder(d) => d.has_layouts(),
        }
    }

    /// The folder dataset, if this is one.
    pub fn as_folder(&self) -> Option<&FolderDataset> {
        match self {
            Self::Folder(d) => Some(d),
            Self::Shapes(_) => None,
        }
    }
}

/// Class names of a dataset config without loading it (a folder's class subfolders, sorted).
pub fn dataset_class_names(config: &DatasetConfig) -> Result<Vec<String>> {
    match config.kind {
        DatasetKind::Shapes => Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect()),
        DatasetKind::Folder => {
            let root = config.path.as_deref().ok_or_else(|| anyhow::anyhow!("dataset.path is not set"))?;
            let names = folder_class_names(root)?;
            if names.is_empty() {
                anyhow::bail!("the image folder {} has no class subfolder", root.display());
            }
            Ok(names)
        }
    }
}
