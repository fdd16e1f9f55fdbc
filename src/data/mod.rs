//! Training data: the procedural `shapes` task or an image folder with layouts ([`Dataset`]), the data check
//! (`wick data check`), box hygiene, batching and the prefetch thread.
//!
//! Everything here is a pure function of seeds and counters, so a run (and a resumed run) sees exactly the
//! same data on every machine:
//!
//! ```text
//! ShapesDataset::sample(index)            pure function of (dataset seed, index)     ─┐
//! batch_indices(order_seed, len, cursor)  epoch = cursor / len walks a permutation   ─┼─▶ make_batch
//! Prefetcher                              thread "prefetch" running make_batch ahead ─┘   ─▶ Batch
//! ```
//!
//! The *data cursor* counts training samples consumed since the start of the run; a checkpoint only needs
//! to store it (plus the order seed) to resume the data stream exactly.
//!
//! Conventions: images are channel-major `[3, H, W]` `f32` in [-1, 1]; boxes are normalised
//! `[x0, y0, x1, y1]` in [0, 1] with x along the columns (left → right) and y along the rows
//! (top → bottom), `x0 < x1`, `y0 < y1`.

mod batch;
mod boxes;
pub mod check;
mod dataset;
pub mod folder;
pub mod layouts;
mod prefetch;
pub mod scan;
mod shapes;

pub use batch::{batch_indices, make_batch, make_batch_from_indices, make_heldout_batch, Batch, EpochOrder};
pub use boxes::normalize_box;
pub use check::{check_folder, CheckRequest, DataCheck, DataProblem, DataReport, ProblemKind};
pub use dataset::{dataset_class_names, Dataset};
pub use folder::{DataSplit, FolderDataset, FolderOptions};
pub use prefetch::{DatasetBatches, Prefetcher};
pub use scan::{folder_class_names, ScanProgress};
pub use shapes::{to_rgb8, Object, Sample, ShapesDataset};

/// Number of real shape classes (class indices `0..NUM_CLASSES`).
pub const NUM_CLASSES: u32 = 4;

/// Human-readable names of the shape classes, indexed by class.
pub const CLASS_NAMES: [&str; NUM_CLASSES as usize] = ["circle", "square", "triangle", "cross"];
