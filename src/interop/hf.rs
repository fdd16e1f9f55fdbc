//! Hugging Face `Trainer` output directories: `trainer_state.json` at the root and in each `checkpoint-N/`
//! (the newest one wins), its `log_history` as series, and the checkpoints with the eval metrics logged at
//! their step. Every key is optional (older versions lack several); `NaN` and `Infinity` literals, which
//! Python's json writes, are read as such; a file caught half-written (Trainer truncates and rewrites it in
//! place) is read again rather than reported broken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{ScalarPoint, Series};
use crate::config::MetricMode;
use crate::eval::decisions::{pareto_front_of, recommend_named_by_metric, Recommendation};

/// The parts of `TrainerState` Wick reads; every key may be missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: Option<u64>,
    /// Steps the run was asked to train.
    pub max_steps: Option<u64>,
    /// Epochs done (fractional).
    pub epoch: Option<f64>,
    /// The best value of `metric_for_best_model`.
    pub best_metric: Option<f64>,
    /// The step of the best checkpoint (newer versions).
    pub best_global_step: Option<u64>,
    /// Path of the best checkpoint, as the trainer wrote it.
    pub best_model_checkpoint: Option<String>,
    /// Every logged dictionary, in order.
    pub log_history: Vec<BTreeMap<String, LogValue>>,
}

/// One value of a `log_history` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LogValue {
    /// A number (NaN and ±inf included).
    Number(f64),
    /// Anything else (strings, lists): not a series.
    Other(serde::de::IgnoredAny),
}

impl TrainerState {
    /// Parses a file's text (NaN / Infinity literals accepted).
    pub fn parse(text: &str) -> Result<Self> {
        json5::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Every numeric `log_history` key but `step` as a series, in logged order.
    pub fn series(&self) -> BTreeMap<String, Series> {
        let mut out: BTreeMap<String, Series> = BTreeMap::new();
        for entry in &self.log_history {
            let Some(LogValue::Number(step)) = entry.get("step") else {
                continue;
            };
            for (key, value) in entry {
                if let (LogValue::Number(v), false) = (value, key == "step") {
                    let point = ScalarPoint { step: *step as i64, wall_time: None, value: *v };
                    out.entry(key.clone()).or_default().points.push(point);
                }
            }
        }
        out
    }

    /// The eval metrics (`eval_*` keys but the timing ones) logged at `step`, the last logged value of each.
    pub fn eval_metrics_at(&self, step: u64) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for entry in &self.log_history {
            if entry.get("step") != Some(&LogValue::Number(step as f64)) {
                continue;
            }
            for (key, value) in entry {
                if let LogValue::Number(v) = value {
                    if key.starts_with("eval_") && !is_timing_key(key) {
                        out.insert(key.clone(), *v);
                    }
                }
            }
        }
        out
    }
}

/// Keys of an eval entry that time the evaluation rather than measure the model.
fn is_timing_key(key: &str) -> bool {
    key.ends_with("_runtime") || key.ends_with("_per_second")
}

/// How often and how long a half-written state file is read again before it counts as broken.
const HALF_WRITTEN_RETRIES: usize = 10;
const HALF_WRITTEN_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads a `trainer_state.json`. A parse failure is retried while the file changes under the reader (the
/// Trainer rewrites it in place); one that persists names the file.
pub fn read_trainer_state(path: &Path) -> Result<TrainerState> {
    let mut last_error = None;
    for attempt in 0..HALF_WRITTEN_RETRIES {
        if attempt > 0 {
            std::thread::sleep(HALF_WRITTEN_WAIT);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        match TrainerState::parse(&text) {
            Ok(state) => return Ok(state),
            Err(e) => last_error = Some(e),
        }
    }
    let e = last_error.unwrap_or_else(|| anyhow::anyhow!("unreadable"));
    Err(e).with_context(|| format!("{} is not a trainer state", path.display()))
}

/// Polls of unchanged, unparseable content after which a state file counts as broken rather than
/// half-written.
pub const BROKEN_AFTER_POLLS: usize = 3;

/// An output directory followed as the Trainer writes it: each [`StateTail::poll`] re-reads the winning
/// state file only when it changed, keeps the last good state while a rewrite is caught half-way, and calls
/// the file broken only when the same unparseable content is seen [`BROKEN_AFTER_POLLS`] times.
#[derive(Debug)]
pub struct StateTail {
    dir: PathBuf,
    seen: Option<(PathBuf, u64, Option<std::time::SystemTime>)>,
    failed_polls: usize,
    state: Option<TrainerState>,
    problem: Option<String>,
}

impl StateTail {
    /// A tail of the output directory `dir`, nothing read yet.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), seen: None, failed_polls: 0, state: None, problem: None }
    }

    /// The newest state read whole.
    pub fn state(&self) -> Option<&TrainerState> {
        self.state.as_ref()
    }

    /// Why the state file cannot be read, once that is certain.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Looks at the files again; returns whether the state changed.
    pub fn poll(&mut self) -> bool {
        let Some(file) = newest_state_file(&self.dir) else {
            return false;
        };
        let meta = std::fs::metadata(&file).ok();
        let key = (file.clone(), meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()));
        if self.seen.as_ref() == Some(&key) {
            if self.problem.is_none() && self.failed_polls > 0 {
                self.failed_polls += 1;
                if self.failed_polls >= BROKEN_AFTER_POLLS {
                    self.problem = Some(format!("{} is not a trainer state and has stopped changing", file.display()));
                    return true;
                }
            }
            return false;
        }
        self.seen = Some(key);
        let parsed = std::fs::read_to_string(&file).map_err(anyhow::Error::from).and_then(|t| TrainerState::parse(&t));
        match parsed {
            Ok(state) => {
                self.state = Some(state);
                self.failed_polls = 0;
                self.problem = None;
                true
            }
            Err(_) => {
                // Probably caught mid-rewrite: keep the last good state and look again next time.
                self.failed_polls = 1;
                false
            }
        }
    }
}

/// One `checkpoint-N` directory of an output directory.
#[derive(Debug, Clone, PartialEq)]
pub struct HfCheckpoint {
    /// Its step (the N of its name).
    pub step: u64,
    /// The directory.
    pub dir: PathBuf,
}

/// The `checkpoint-N` directories of `output_dir`, by step.
pub fn checkpoints(output_dir: &Path) -> Vec<HfCheckpoint> {
    let mut out: Vec<HfCheckpoint> = std::fs::read_dir(output_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            Some(HfCheckpoint { step, dir: e.path() })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    out
}

/// Whether `dir` looks like a Trainer output directory.
pub fn is_output_dir(dir: &Path) -> bool {
    dir.join("trainer_state.json").is_file()
        || checkpoints(dir).iter().any(|c| c.dir.join("trainer_state.json").is_file())
}

/// The state file that wins: the highest `checkpoint-N`'s, unless the root's (written by `save_state`) is
/// newer. Chosen by names and times, never by parsing, so a file caught half-written still wins.
pub fn newest_state_file(output_dir: &Path) -> Option<PathBuf> {
    let newest_checkpoint =
        checkpoints(output_dir).into_iter().rev().map(|c| c.dir.join("trainer_state.json")).find(|p| p.is_file());
    let root = Some(output_dir.join("trainer_state.json")).filter(|p| p.is_file());
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (newest_checkpoint, root) {
        (Some(checkpoint), Some(root)) if modified(&root) > modified(&checkpoint) => Some(root),
        (Some(checkpoint), _) => Some(checkpoint),
        (None, root) => root,
    }
}

/// An output directory read once: the winning state, its file, its checkpoints, and the TensorBoard files
/// of its `runs/*/` (when present).
#[derive(Debug, Clone)]
pub struct HfRun {
    /// The output directory.
    pub dir: PathBuf,
    /// The state file read.
    pub state_file: PathBuf,
    /// Its contents.
    pub state: TrainerState,
    /// The checkpoints on disk.
    pub checkpoints: Vec<HfCheckpoint>,
}

impl HfRun {
    /// Reads `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let state_file = newest_state_file(dir)
            .with_context(|| format!("{} holds no trainer_state.json (nor checkpoint-N/ with one)", dir.display()))?;
        let state = read_trainer_state(&state_file)?;
        Ok(Self { dir: dir.to_path_buf(), state_file, state, checkpoints: checkpoints(dir) })
    }

    /// The TensorBoard log directories of `runs/` (Trainer's TensorBoard callback writes one per launch).
    pub fn tensorboard_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !super::tensorboard::event_files(p).is_empty())
            .collect();
        dirs.sort();
        dirs
    }
}

/// The direction of a metric the run does not state, guessed from its name: losses, perplexities, error
/// rates lower; everything else (accuracy, F1, BLEU, ...) higher.
pub fn guess_mode(metric: &str) -> MetricMode {
    let lower = ["loss", "perplexity", "ppl", "error", "wer", "cer", "mse", "mae", "rmse"];
    if lower.iter().any(|w| metric.contains(w)) {
        MetricMode::Min
    } else {
        MetricMode::Max
    }
}

/// One `checkpoint-N` of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct HfReportRow {
    /// Directory name (`checkpoint-40`).
    pub checkpoint: String,
    /// Its step.
    pub step: u64,
    /// The newest training loss logged at or before its step.
    pub loss: Option<f64>,
    /// Eval metrics logged at its step.
    pub metrics: BTreeMap<String, f64>,
    /// The Trainer's `best_model_checkpoint`.
    pub best: bool,
    /// On the Pareto front of the chosen metric and the next eval metric.
    pub pareto: bool,
}

/// The checkpoint table of a Trainer output directory.
#[derive(Debug, Clone)]
pub struct HfReport {
    /// One row per checkpoint on disk, by step.
    pub rows: Vec<HfReportRow>,
    /// Eval metric columns, the chosen one first.
    pub columns: Vec<String>,
    /// The metric the recommendation follows, and its direction.
    pub metric: Option<(String, MetricMode)>,
    /// Which checkpoint to use, in plain words.
    pub recommendation: Recommendation,
}

/// The report of `run`: `metric` (default: the one whose value is the state's `best_metric`, else
/// `eval_loss`, else the first eval metric) in direction `mode` (default: guessed from its name).
pub fn report(run: &HfRun, metric: Option<&str>, mode: Option<MetricMode>) -> HfReport {
    let state = &run.state;
    let best_name = state
        .best_model_checkpoint
        .as_deref()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().to_string());
    let losses = state.series().remove("loss").unwrap_or_default();
    let mut rows: Vec<HfReportRow> = run
        .checkpoints
        .iter()
        .map(|c| {
            let checkpoint = c.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            HfReportRow {
                best: best_name.as_deref() == Some(checkpoint.as_str()),
                loss: losses.points.iter().rfind(|p| p.step <= c.step as i64).map(|p| p.value),
                metrics: state.eval_metrics_at(c.step),
                checkpoint,
                step: c.step,
                pareto: false,
            }
        })
        .collect();
    let mut names: Vec<String> = rows.iter().flat_map(|r| r.metrics.keys().cloned()).collect();
    names.sort();
    names.dedup();
    let stated = state.best_metric.and_then(|best| {
        let row = rows.iter().find(|r| r.best)?;
        row.metrics.iter().find(|(_, v)| **v == best).map(|(k, _)| k.clone())
    });
    let chosen = metric
        .map(str::to_string)
        .or(stated)
        .or_else(|| names.iter().find(|n| *n == "eval_loss").cloned())
        .or_else(|| names.first().cloned());
    let metric = chosen.map(|name| {
        let mode = mode.unwrap_or_else(|| guess_mode(&name));
        (name, mode)
    });
    let mut columns = names.clone();
    if let Some((name, _)) = &metric {
        columns.retain(|c| c != name);
        columns.insert(0, name.clone());
    }
    let named: Vec<(u64, String)> = rows.iter().map(|r| (r.step, r.checkpoint.clone())).collect();
    let recommendation = match &metric {
        Some((name, mode)) => {
            let values: Vec<Option<f64>> = rows.iter().map(|r| r.metrics.get(name).copied()).collect();
            if let Some(second) = columns.get(1) {
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .map(|r| {
                        let get = |k: &str| r.metrics.get(k).copied().unwrap_or(f64::NAN);
                        (get(name), get(second))
                    })
                    .collect();
                for index in pareto_front_of(&points, (*mode, guess_mode(second))) {
                    rows[index].pareto = true;
                }
            }
            recommend_named_by_metric(&named, &values, name, *mode)
        }
        None => recommend_named_by_metric(&named, &vec![None; rows.len()], "eval metric", MetricMode::Min),
    };
    HfReport { rows, columns, metric, recommendation }
}

/// The report as aligned text, then the recommendation and the Trainer's own best.
pub fn format_report(report: &HfReport, state: &TrainerState) -> String {
    let cell = |v: Option<f64>| {
        v.map_or("-".to_string(), |v| if v.is_finite() { format!("{v:.4}") } else { super::format_value(v) })
    };
    let width = |name: &str| name.len().max(8);
    let mut out = format!("{:<18} {:>8} {:>8}", "checkpoint", "step", "loss");
    for name in &report.columns {
        out.push_str(&format!(" {:>w$}", name, w = width(name)));
    }
    out.push_str("  marks\n");
    for row in &report.rows {
        out.push_str(&format!("{:<18} {:>8} {:>8}", row.checkpoint, row.step, cell(row.loss)));
        for name in &report.columns {
            out.push_str(&format!(" {:>w$}", cell(row.metrics.get(name).copied()), w = width(name)));
        }
        let marks: Vec<&str> =
            [(row.best, "best"), (row.pareto, "pareto")].iter().filter(|m| m.0).map(|m| m.1).collect();
        out.push_str(&format!("  {}\n", marks.join(" ")));
    }
    out.push('\n');
    out.push_str(&report.recommendation.message);
    out.push('\n');
    if let Some(best) = &state.best_model_checkpoint {
        let value = state.best_metric.map(|v| format!(" ({})", super::format_value(v))).unwrap_or_default();
        out.push_str(&format!("The Trainer's best model: {best}{value}.\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_infinity_literals_and_missing_keys_are_read() {
        let text = r#"{
  "global_step": 20,
  "log_history": [
    {"epoch": 0.5, "grad_norm": NaN, "learning_rate": 5e-05, "loss": 2.5, "step": 10},
    {"epoch": 1.0, "eval_loss": Infinity, "eval_runtime": 1.5, "eval_accuracy": 0.75, "step": 20},
    {"epoch": 1.0, "loss": -Infinity, "step": 20, "note": "text", "list": [1, 2]}
  ]
}"#;
        let state = TrainerState::parse(text).unwrap();
        assert_eq!(state.global_step, Some(20));
        assert_eq!(state.best_metric, None);
        let series = state.series();
        assert!(series["grad_norm"].points[0].value.is_nan());
        assert_eq!(series["loss"].points.iter().map(|p| p.value).collect::<Vec<_>>(), [2.5, f64::NEG_INFINITY]);
        assert_eq!(series["eval_loss"].points[0].value, f64::INFINITY);
        assert!(!series.contains_key("step") && !series.contains_key("note"));
        let metrics = state.eval_metrics_at(20);
        assert_eq!(metrics.keys().collect::<Vec<_>>(), ["eval_accuracy", "eval_loss"]);
    }

    #[test]
    fn an_old_file_with_few_keys_is_read() {
        let state = TrainerState::parse(r#"{"log_history": [{"loss": 1.0, "step": 1}]}"#).unwrap();
        assert_eq!(state.global_step, None);
        assert_eq!(state.series()["loss"].points.len(), 1);
    }
}
