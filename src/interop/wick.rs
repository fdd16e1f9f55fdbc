//! A Wick run's own logs in the shapes other tools use: its metrics.jsonl / evals.jsonl lines as scalar
//! series (`train/<field>`, `eval/<field>`), and the same values as TensorBoard event files in the run
//! directory — written as the run trains ([`TensorBoardMirror`], driven by the recorder) or afterwards for a
//! run made before Wick wrote them ([`export_tensorboard`]). One function turns a line into tags and values,
//! so `wick scalars`, the window and TensorBoard see the same points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::tensorboard::{event_files, EventWriter};
use super::{ScalarPoint, Series};
use crate::run::events::{EvalRecord, MetricsRecord};
use crate::task::TextSamplesFile;

/// Tag prefix of metrics.jsonl fields.
pub const TRAIN_GROUP: &str = "train";
/// Tag prefix of evals.jsonl fields.
pub const EVAL_GROUP: &str = "eval";
/// Tag of each checkpoint's samples (an image grid, or text).
pub const SAMPLES_TAG: &str = "samples";
/// The last part of the names of the event files Wick writes, which [`export_tensorboard`] may replace.
pub const EVENT_FILE_SUFFIX: &str = "wick";

/// The environment variable that turns the TensorBoard files of new sessions off (`0`).
pub const TENSORBOARD_ENV: &str = "WICK_TENSORBOARD";

/// Whether runs write TensorBoard files as they train (yes, unless `WICK_TENSORBOARD=0`).
pub fn tensorboard_enabled() -> bool {
    std::env::var(TENSORBOARD_ENV).map_or(true, |v| v != "0")
}

/// Fields of Wick's metrics lines that are null when the value was not finite.
const NON_FINITE_AS_NULL: [&str; 2] = ["loss", "grad_norm"];
/// Fields that are not values of the step.
const NOT_SCALARS: [&str; 1] = ["step"];

/// The scalars of one metrics.jsonl or evals.jsonl line as `(group/field, value)`: numbers under their field
/// names, `gates` as `group/gates/N`, a task's `scalars` map under its own names; `loss` and `grad_norm`
/// logged as null (not finite) as NaN.
pub fn line_values(group: &str, fields: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, f64)> {
    let mut values = Vec::new();
    for (key, value) in fields {
        if NOT_SCALARS.contains(&key.as_str()) {
            continue;
        }
        match value {
            serde_json::Value::Number(n) => values.push((format!("{group}/{key}"), n.as_f64().unwrap_or(f64::NAN))),
            serde_json::Value::Null if NON_FINITE_AS_NULL.contains(&key.as_str()) || group == EVAL_GROUP => {
                values.push((format!("{group}/{key}"), f64::NAN))
            }
            serde_json::Value::Array(items) if key == "gates" => {
                for (i, v) in items.iter().enumerate() {
                    values.push((format!("{group}/gates/{i}"), v.as_f64().unwrap_or(f64::NAN)));
                }
            }
            serde_json::Value::Object(map) if key == "scalars" => {
                for (name, v) in map {
                    values.push((format!("{group}/{name}"), v.as_f64().unwrap_or(f64::NAN)));
                }
            }
            _ => {}
        }
    }
    values
}

/// The lines of a run's jsonl file as (step, fields); a torn last line (a run being written) is left out.
/// Where a step was logged twice (a resume re-ran it) the newer line wins.
fn read_lines(path: &Path) -> Result<BTreeMap<i64, serde_json::Map<String, serde_json::Value>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(step) = fields.get("step").and_then(serde_json::Value::as_i64) {
            lines.insert(step, fields);
        }
    }
    Ok(lines)
}

/// A Wick run's metrics.jsonl (`train/…`) and evals.jsonl (`eval/…`) fields as series.
pub fn scalars(root: &Path) -> Result<BTreeMap<String, Series>> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for (file, group) in [("metrics.jsonl", TRAIN_GROUP), ("evals.jsonl", EVAL_GROUP)] {
        for (step, fields) in read_lines(&root.join(file))? {
            for (tag, value) in line_values(group, &fields) {
                out.entry(tag).or_default().points.push(ScalarPoint { step, wall_time: None, value });
            }
        }
    }
    Ok(out)
}

fn record_fields<T: serde::Serialize>(record: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(record) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    }
}

/// Seconds since the epoch, now.
fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Checkpoint samples as TensorBoard shows them: the PNG grid, or the text samples as a Markdown table.
enum SampleEntry {
    Png(Vec<u8>),
    Text(String),
}

/// The samples in `dir` (`samples.png`, else a text `samples.json`), or those a `samples/` file holds.
fn read_samples(png: &Path, json: &Path) -> Option<SampleEntry> {
    if let Ok(bytes) = std::fs::read(png) {
        return Some(SampleEntry::Png(bytes));
    }
    let file: TextSamplesFile = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
    let mut table = String::from("| prompt | completion | expected |\n|---|---|---|\n");
    for sample in &file.samples {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        table.push_str(&format!(
            "| {} | {} | {} |\n",
            cell(&sample.prompt),
            cell(&sample.completion),
            cell(sample.expected.as_deref().unwrap_or(""))
        ));
    }
    Some(SampleEntry::Text(table))
}

fn write_samples(writer: &mut EventWriter, step: i64, wall_time: f64, entry: SampleEntry) -> Result<()> {
    match entry {
        SampleEntry::Png(png) => writer.write_image(step, wall_time, SAMPLES_TAG, &png),
        SampleEntry::Text(text) => writer.write_text(step, wall_time, SAMPLES_TAG, &text),
    }
}

/// The samples of checkpoint `checkpoint` of the run at `root`.
fn checkpoint_samples(root: &Path, checkpoint: &str) -> Option<SampleEntry> {
    let dir = root.join("checkpoints").join(checkpoint);
    read_samples(&dir.join("samples.png"), &dir.join("samples.json"))
}

/// The samples a `SamplesSaved` event names (`samples/step-N.png` or `.json`, relative to the run).
fn loose_samples(root: &Path, relative: &str) -> Option<SampleEntry> {
    let path = root.join(relative);
    read_samples(&path.with_extension("png"), &path.with_extension("json"))
}

/// TensorBoard event files of a Wick run, written as it trains: the recorder hands it every record (on its
/// own thread, never the trainer's). Each session of a run (each resume) writes a file of its own, which
/// starts by saying from which step it supersedes the files before it.
#[derive(Debug)]
pub struct TensorBoardMirror {
    root: PathBuf,
    writer: EventWriter,
}

impl TensorBoardMirror {
    /// Starts a new event file in the run directory `root` for a session that trains from step `from_step`
    /// (0, or the step of the checkpoint it resumed from): the points earlier files hold after it (logged by
    /// a session that went on past its last checkpoint) are superseded.
    pub fn start(root: &Path, from_step: u64) -> Result<Self> {
        let mut writer = EventWriter::create(root, EVENT_FILE_SUFFIX)?;
        writer.write_restart(from_step as i64 + 1, now_secs())?;
        Ok(Self { root: root.to_path_buf(), writer })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// A metrics.jsonl line's values.
    pub fn metrics(&mut self, record: &MetricsRecord) -> Result<()> {
        let values = line_values(TRAIN_GROUP, &record_fields(record));
        self.writer.write_scalars(record.step as i64, now_secs(), &values)
    }

    /// An evals.jsonl line's values.
    pub fn eval(&mut self, record: &EvalRecord) -> Result<()> {
        let values = line_values(EVAL_GROUP, &record_fields(record));
        self.writer.write_scalars(record.step as i64, now_secs(), &values)
    }

    /// The samples saved with checkpoint `checkpoint` (none when it has none, or was pruned already).
    pub fn checkpoint_saved(&mut self, step: u64, checkpoint: &str) -> Result<()> {
        match checkpoint_samples(&self.root, checkpoint) {
            Some(entry) => write_samples(&mut self.writer, step as i64, now_secs(), entry),
            None => Ok(()),
        }
    }

    /// Samples saved outside a checkpoint, at `relative` in the run directory.
    pub fn samples_saved(&mut self, step: u64, relative: &str) -> Result<()> {
        match loose_samples(&self.root, relative) {
            Some(entry) => write_samples(&mut self.writer, step as i64, now_secs(), entry),
            None => Ok(()),
        }
    }
}

/// What [`export_tensorboard`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The event file.
    pub path: PathBuf,
    /// Scalar points written.
    pub scalar_points: usize,
    /// Sample grids (or text tables) written.
    pub samples: usize,
    /// Event files Wick had written before, replaced.
    pub replaced: Vec<PathBuf>,
}

/// Writes a TensorBoard event file for the finished or stopped Wick run at `root` from its metrics.jsonl,
/// evals.jsonl and its checkpoints' and `samples/` samples. Wall times are the run's creation time plus its
/// training seconds. Event files Wick wrote before (`*.wick`) are an error unless `replace`; then they are
/// removed once the new file is complete, so a failure leaves them as they were.
pub fn export_tensorboard(root: &Path, replace: bool) -> Result<ExportSummary> {
    anyhow::ensure!(root.join("run.toml").is_file(), "{} is not a Wick run (no run.toml)", root.display());
    let earlier: Vec<PathBuf> =
        event_files(root).into_iter().filter(|p| p.extension().is_some_and(|e| e == EVENT_FILE_SUFFIX)).collect();
    if !earlier.is_empty() && !replace {
        anyhow::bail!(
            "{} already has TensorBoard files ({}); pass --replace to write them again",
            root.display(),
            earlier.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        );
    }
    let state: Option<crate::run::state::RunState> =
        std::fs::read(root.join("state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let created = state.as_ref().map_or(0.0, |s| s.created_unix_secs);
    let metrics = read_lines(&root.join("metrics.jsonl"))?;
    let evals = read_lines(&root.join("evals.jsonl"))?;
    // The wall time of a step: the run's creation plus the training seconds of the last metrics line at or
    // before it.
    let wall_time_at = |step: i64| {
        let secs = metrics.range(..=step).next_back().and_then(|(_, f)| f.get("wall_secs")?.as_f64()).unwrap_or(0.0);
        created + secs
    };

    let mut writer = EventWriter::create(root, EVENT_FILE_SUFFIX)?;
    let mut scalar_points = 0;
    for (lines, group) in [(&metrics, TRAIN_GROUP), (&evals, EVAL_GROUP)] {
        for (&step, fields) in lines.iter() {
            let values = line_values(group, fields);
            scalar_points += values.len();
            writer.write_scalars(step, wall_time_at(step), &values)?;
        }
    }
    let mut samples = 0;
    let mut sample_steps: BTreeMap<i64, SampleEntry> = BTreeMap::new();
    if let Ok(checkpoints) = crate::run::checkpoint::list_checkpoints(&root.join("checkpoints")) {
        for checkpoint in checkpoints {
            let name = checkpoint.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(entry) = checkpoint_samples(root, &name) {
                sample_steps.insert(checkpoint.step as i64, entry);
            }
        }
    }
    for entry in std::fs::read_dir(root.join("samples")).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(step) =
            path.file_stem().and_then(|s| s.to_str()).and_then(crate::run::checkpoint::parse_checkpoint_name)
        else {
            continue;
        };
        if sample_steps.contains_key(&(step as i64)) {
            continue;
        }
        if let Some(samples) = read_samples(&path.with_extension("png"), &path.with_extension("json")) {
            sample_steps.insert(step as i64, samples);
        }
    }
    for (step, entry) in sample_steps {
        write_samples(&mut writer, step, wall_time_at(step), entry)?;
        samples += 1;
    }
    let path = writer.path().to_path_buf();
    drop(writer);
    for old in &earlier {
        std::fs::remove_file(old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(ExportSummary { path, scalar_points, samples, replaced: earlier })
}
