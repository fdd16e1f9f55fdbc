//! The data of a run: opening its dataset with the train / held-out split stored in the run (split.json), and
//! the data check it started from (data_report.json).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::atomic::atomic_write;
use crate::config::RunConfig;
use crate::data::{DataSplit, Dataset, FolderOptions, ScanProgress};
use crate::model::ModelSpec;

/// The split of an image-folder run.
pub const SPLIT_FILE: &str = "split.json";
/// The data check an image-folder run started from.
pub const DATA_REPORT_FILE: &str = "data_report.json";
/// The judge an image-folder run's evaluation uses: its held-out accuracy and classes.
pub const JUDGE_REPORT_FILE: &str = "judge.json";

/// The cache shared by the runs of a runs folder (`<runs>/.cache`): scan journals, decoded pixels, judges
/// and real-image statistics.
pub fn runs_cache_dir(run_root: &Path) -> Option<PathBuf> {
    run_root.parent().map(|runs| runs.join(".cache"))
}

/// Opens the dataset of the run at `run_root` for a model `spec`. For an image folder the split comes from
/// the run's split.json; a run without one (a new run) draws it from the config and, when `write` is true,
/// stores it with the data check's report. `progress` follows the folder scan.
pub fn open_run_dataset(
    run_root: &Path,
    config: &RunConfig,
    spec: &ModelSpec,
    write: bool,
    progress: impl FnMut(ScanProgress),
) -> Result<Dataset> {
    let split_file = run_root.join(SPLIT_FILE);
    let split: Option<DataSplit> = if split_file.is_file() {
        let bytes = std::fs::read(&split_file).with_context(|| format!("cannot read {}", split_file.display()))?;
        Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", split_file.display()))?)
    } else {
        None
    };
    let options = FolderOptions { cache_dir: runs_cache_dir(run_root), split: split.clone() };
    let dataset = Dataset::open(&config.dataset, spec.image_size, spec.slots, spec.null_class(), &options, progress)?;
    anyhow::ensure!(
        dataset.class_names().len() == spec.classes,
        "the model has {} classes but the dataset has {} ({}) — the data changed since the run started?",
        spec.classes,
        dataset.class_names().len(),
        dataset.class_names().join(", ")
    );
    if let (true, Some(folder)) = (write, dataset.as_folder()) {
        if split.is_none() {
            atomic_write(&split_file, &serde_json::to_vec_pretty(folder.split())?)?;
        }
        atomic_write(&run_root.join(DATA_REPORT_FILE), &serde_json::to_vec_pretty(folder.report())?)?;
    }
    Ok(dataset)
}
