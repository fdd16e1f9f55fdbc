//! The runs people already have, beside Wick's own: TensorBoard log directories and Hugging Face `Trainer`
//! output directories, found by what is on disk ([`find_runs`]) and read into the same series of scalar
//! points ([`read_scalars`]) that Wick's own metrics become.
//!
//! ```text
//!  PATH ──find_runs──▶ FoundRun { kind: wick | tensorboard | hf-trainer, path }
//!                         │
//!                         ▼ read_scalars
//!   metrics.jsonl + evals.jsonl   events.out.tfevents.* (tfrecord ─▶ prost Event)   trainer_state.json
//!                         └──────────────┬──────────────────────────┘──────────────────────┘
//!                                        ▼
//!                       BTreeMap<tag, Series { ScalarPoint { step, wall_time, value } }>
//! ```

pub mod hf;
pub mod hf_stages;
pub mod hf_verify;
pub mod tensorboard;
pub mod tfrecord;
pub mod wick;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One point of a scalar series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarPoint {
    /// The global step.
    pub step: i64,
    /// Seconds since the epoch, where the format records it.
    pub wall_time: Option<f64>,
    /// The value (NaN and ±inf kept as logged).
    pub value: f64,
}

/// Every point of one tag, in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// The points.
    pub points: Vec<ScalarPoint>,
}

/// What wrote a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum RunKind {
    /// A Wick run directory (run.toml).
    #[default]
    Wick,
    /// A TensorBoard log directory (`events.out.tfevents.*`).
    TensorBoard,
    /// A Hugging Face Trainer output directory (`trainer_state.json`, `checkpoint-N/`).
    HfTrainer,
}

impl RunKind {
    /// The kind as `wick runs` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wick => "wick",
            Self::TensorBoard => "tensorboard",
            Self::HfTrainer => "hf-trainer",
        }
    }
}

/// A run found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRun {
    /// What wrote it.
    pub kind: RunKind,
    /// Its directory.
    pub path: PathBuf,
}

/// What `dir` itself is, if a run (a Wick run first, then a Trainer output, then a TensorBoard directory).
pub fn run_kind_of(dir: &Path) -> Option<RunKind> {
    if dir.join("run.toml").is_file() {
        Some(RunKind::Wick)
    } else if hf::is_output_dir(dir) {
        Some(RunKind::HfTrainer)
    } else if !tensorboard::event_files(dir).is_empty() {
        Some(RunKind::TensorBoard)
    } else {
        None
    }
}

/// Deepest folder level searched below the given path (a runs folder holds runs a few levels down).
const MAX_DEPTH: usize = 8;

/// Every run under `root` (`root` itself included), by path. A run's own subdirectories are not searched:
/// a Trainer's `runs/*/` event files and `checkpoint-N/` belong to it, as a Wick run's files do.
pub fn find_runs(root: &Path) -> Result<Vec<FoundRun>> {
    anyhow::ensure!(root.is_dir(), "{} is not a folder", root.display());
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        if let Some(kind) = run_kind_of(&dir) {
            found.push(FoundRun { kind, path: dir });
            continue;
        }
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Symbolic links are not followed: a loop of them would never end.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Every scalar series of a run of any kind, by tag.
pub fn read_scalars(run: &FoundRun) -> Result<BTreeMap<String, Series>> {
    match run.kind {
        RunKind::Wick => wick::scalars(&run.path),
        RunKind::TensorBoard => Ok(tensorboard::read_log_dir(&run.path).scalars),
        RunKind::HfTrainer => Ok(hf::HfRun::open(&run.path)?.state.series()),
    }
}

/// A run at `path` (which must be one).
pub fn open_run(path: &Path) -> Result<FoundRun> {
    let kind = run_kind_of(path).with_context(|| {
        format!(
            "{} is not a run: no run.toml (Wick), trainer_state.json (Hugging Face Trainer) or \
             events.out.tfevents.* (TensorBoard) in it",
            path.display()
        )
    })?;
    Ok(FoundRun { kind, path: path.to_path_buf() })
}

/// A number as `wick scalars` writes it: `NaN`, `inf`, `-inf` for the non-finite.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-inf".to_string()
    } else {
        format!("{value}")
    }
}

/// What `wick runs` says of a run: its last step, how many series, when a file of it last changed.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run.
    pub run: FoundRun,
    /// The highest step of any point.
    pub last_step: Option<i64>,
    /// Number of scalar series.
    pub series: usize,
    /// Newest modification time of its files (seconds since the epoch).
    pub updated_unix_secs: Option<f64>,
}

/// Summarises `run` (reading its scalars).
pub fn summarize(run: &FoundRun) -> Result<RunSummary> {
    let scalars = read_scalars(run)?;
    let last_step = scalars.values().flat_map(|s| s.points.iter().map(|p| p.step)).max();
    Ok(RunSummary { run: run.clone(), last_step, series: scalars.len(), updated_unix_secs: newest_mtime(&run.path, 3) })
}

fn newest_mtime(dir: &Path, depth: usize) -> Option<f64> {
    let mut newest: Option<f64> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let time = if meta.is_dir() && depth > 0 {
            newest_mtime(&entry.path(), depth - 1)
        } else {
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())
        };
        newest = match (newest, time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    newest
}

/// How `wick scalars` writes points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarFormat {
    /// `tag,step,wall_time,value` with a header line.
    Csv,
    /// One JSON object a line: `{"tag", "step", "wall_time", "value"}` (non-finite values as strings).
    Jsonl,
}

/// Writes every point of the series whose tag matches `tag_glob` (all when `None`), by tag then step.
pub fn write_scalars(
    out: &mut dyn std::io::Write,
    scalars: &BTreeMap<String, Series>,
    tag_glob: Option<&glob::Pattern>,
    format: ScalarFormat,
) -> Result<usize> {
    let mut written = 0;
    let selected = scalars.iter().filter(|(tag, _)| tag_glob.is_none_or(|g| g.matches(tag)));
    match format {
        ScalarFormat::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            csv.write_record(["tag", "step", "wall_time", "value"])?;
            for (tag, series) in selected {
                for p in &series.points {
                    let wall = p.wall_time.map(|w| format!("{w}")).unwrap_or_default();
                    csv.write_record([tag.as_str(), &p.step.to_string(), &wall, &format_value(p.value)])?;
                    written += 1;
                }
            }
            csv.flush()?;
        }
        ScalarFormat::Jsonl => {
            for (tag, series) in selected {
                for p in &series.points {
                    let value = if p.value.is_finite() {
                        serde_json::json!(p.value)
                    } else {
                        serde_json::json!(format_value(p.value))
                    };
                    let line =
                        serde_json::json!({"tag": tag, "step": p.step, "wall_time": p.wall_time, "value": value});
                    writeln!(out, "{line}")?;
                    written += 1;
                }
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_written_as_the_issue_says() {
        assert_eq!([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5].map(format_value), ["NaN", "inf", "-inf", "0.5"]);
    }
}
