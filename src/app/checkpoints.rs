//! The Checkpoints panel's logic: the primary run's checkpoint report loaded on a worker (and loaded again when
//! the live run saves or scores a checkpoint), integrity checks on a worker, and the selection sent to Compare.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::config::RunConfig;
use crate::eval::report::{checkpoint_report, ReportRow};
use crate::run::checkpoint::verify_checkpoint;
use crate::run::{RunDir, TrainEvent};

/// One checkpoint as the table shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The report's row (step, stage, metrics, badges).
    pub row: ReportRow,
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Total size of its files.
    pub size_bytes: u64,
}

/// A run's checkpoints, loaded off the UI thread.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointReport {
    /// The run directory.
    pub root: PathBuf,
    /// Every sealed checkpoint, oldest first.
    pub rows: Vec<CheckpointInfo>,
    /// The recommendation in plain words.
    pub recommendation: String,
    /// The run's config (forks start from it).
    pub config: Option<RunConfig>,
    /// The judge trained for an image-folder run (judge.json): how far its FID and top-k can be trusted.
    pub judge: Option<crate::eval::judge::JudgeReport>,
    /// What the report was made from: an unchanged fingerprint means the report need not be read again.
    pub fingerprint: ReportFingerprint,
    /// The metric columns: the run's task's declared metrics; `None` for the shapes task's fixed columns.
    pub columns: Option<Vec<crate::task::MetricSpec>>,
    /// What wrote the run: a Trainer run's checkpoints can be verified, not forked or sampled.
    pub kind: crate::interop::RunKind,
}

/// Cheap summary of what a checkpoint report depends on: the sealed checkpoints, the size of evals.jsonl and
/// the best checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportFingerprint {
    /// Sealed checkpoint names.
    pub checkpoints: Vec<String>,
    /// Size of evals.jsonl.
    pub evals_bytes: u64,
    /// The best checkpoint state.json names.
    pub best: Option<String>,
}

/// The fingerprint of a run's checkpoints (a directory listing and two small reads).
pub fn report_fingerprint(dir: &RunDir) -> anyhow::Result<ReportFingerprint> {
    Ok(ReportFingerprint {
        checkpoints: dir.checkpoints()?.into_iter().filter(|c| c.sealed).map(|c| c.name).collect(),
        evals_bytes: std::fs::metadata(dir.evals_path()).map_or(0, |m| m.len()),
        best: dir.read_state().ok().and_then(|s| s.best).map(|b| b.checkpoint),
    })
}

/// What is known about a checkpoint's files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Integrity {
    /// Not verified in this window yet.
    #[default]
    Unchecked,
    /// Being verified.
    Checking,
    /// Every file matches the manifest.
    Verified,
    /// Problems found: each names the file and what is wrong.
    Damaged(Vec<String>),
}

/// A finished load: the run and its new report (`None`: unchanged since the last one), or why it failed.
type LoadResult = (PathBuf, Result<Option<CheckpointReport>, String>);

/// State of the Checkpoints panel.
pub struct CheckpointsState {
    /// The report shown (the primary run's, once loaded).
    pub report: Option<CheckpointReport>,
    /// Why the report could not be loaded.
    pub error: Option<String>,
    /// Integrity of each checkpoint directory checked in this window.
    pub integrity: HashMap<PathBuf, Integrity>,
    /// Checkpoints ticked to be compared.
    pub picked: BTreeSet<PathBuf>,
    /// The run whose report is wanted.
    wanted: Option<PathBuf>,
    /// A load is running for this run.
    loading: Option<PathBuf>,
    /// The wanted run changed on disk since the last load started.
    dirty: bool,
    load_tx: Sender<LoadResult>,
    load_rx: Receiver<LoadResult>,
    verify_tx: Sender<(PathBuf, Vec<String>)>,
    verify_rx: Receiver<(PathBuf, Vec<String>)>,
}

impl Default for CheckpointsState {
    fn default() -> Self {
        let (load_tx, load_rx) = unbounded();
        let (verify_tx, verify_rx) = unbounded();
        Self {
            report: None,
            error: None,
            integrity: HashMap::new(),
            picked: BTreeSet::new(),
            wanted: None,
            loading: None,
            dirty: false,
            load_tx,
            load_rx,
            verify_tx,
            verify_rx,
        }
    }
}

/// Loads a run's checkpoint report with sizes (disk: call it on a worker); `None` when its fingerprint equals
/// `previous`.
pub fn load_report(root: &Path, previous: Option<&ReportFingerprint>) -> anyhow::Result<Option<CheckpointReport>> {
    if crate::interop::run_kind_of(root) == Some(crate::interop::RunKind::HfTrainer) {
        return load_trainer_report(root, previous);
    }
    let dir = RunDir::open(root)?;
    let fingerprint = report_fingerprint(&dir)?;
    if previous == Some(&fingerprint) {
        return Ok(None);
    }
    let (rows, recommendation) = checkpoint_report(&dir)?;
    let dirs: HashMap<String, PathBuf> = dir.checkpoints()?.into_iter().map(|c| (c.name, c.dir)).collect();
    let rows = rows
        .into_iter()
        .map(|row| {
            let dir = dirs.get(&row.checkpoint).cloned().unwrap_or_else(|| dir.checkpoints_dir().join(&row.checkpoint));
            let size_bytes = dir_size_bytes(&dir);
            CheckpointInfo { row, dir, size_bytes }
        })
        .collect();
    Ok(Some(CheckpointReport {
        root: root.to_path_buf(),
        rows,
        recommendation: recommendation.message,
        config: dir.config().ok(),
        judge: std::fs::read(root.join(crate::run::data::JUDGE_REPORT_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
        fingerprint,
        columns: dir.task_descriptor().filter(|t| t.kind != "shapes").map(|t| crate::eval::report::report_columns(&t)),
        kind: crate::interop::RunKind::Wick,
    }))
}

/// The checkpoint table of a Hugging Face Trainer output directory: one row per `checkpoint-N` with the eval
/// metrics logged at its step, the Trainer's best model and the Pareto front, as `wick report` tables it.
fn load_trainer_report(root: &Path, previous: Option<&ReportFingerprint>) -> anyhow::Result<Option<CheckpointReport>> {
    use crate::interop::hf;
    let saved = hf::checkpoints(root);
    let state_file = hf::newest_state_file(root);
    let fingerprint = ReportFingerprint {
        checkpoints: saved.iter().map(|c| format!("checkpoint-{}", c.step)).collect(),
        evals_bytes: state_file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map_or(0, |m| m.len()),
        best: state_file.map(|f| f.display().to_string()),
    };
    if previous == Some(&fingerprint) {
        return Ok(None);
    }
    let run = hf::HfRun::open(root)?;
    let report = hf::report(&run, None, None);
    let dirs: HashMap<u64, PathBuf> = saved.into_iter().map(|c| (c.step, c.dir)).collect();
    let rows = report
        .rows
        .iter()
        .map(|row| {
            let dir = dirs.get(&row.step).cloned().unwrap_or_else(|| root.join(&row.checkpoint));
            let eval = crate::run::events::EvalRecord {
                step: row.step,
                other: row.metrics.iter().map(|(name, value)| (name.clone(), Some(*value))).collect(),
                ..Default::default()
            };
            let row = ReportRow {
                checkpoint: row.checkpoint.clone(),
                step: row.step,
                stage: String::new(),
                loss: row.loss,
                eval: Some(eval),
                gate_mean: None,
                best: row.best,
                pareto: row.pareto,
            };
            CheckpointInfo { size_bytes: dir_size_bytes(&dir), row, dir }
        })
        .collect();
    let columns = report
        .columns
        .iter()
        .map(|name| {
            let mode = match &report.metric {
                Some((metric, mode)) if metric == name => *mode,
                _ => hf::guess_mode(name),
            };
            crate::task::MetricSpec::new(name, name, mode)
        })
        .collect();
    let best = run.state.best_model_checkpoint.as_ref().map_or_else(String::new, |best| {
        let value = run.state.best_metric.map_or_else(String::new, |v| format!(" ({v:.4})"));
        format!(" The Trainer's best model: {best}{value}.")
    });
    Ok(Some(CheckpointReport {
        root: root.to_path_buf(),
        rows,
        recommendation: format!("{}{best}", report.recommendation.message),
        config: None,
        judge: None,
        fingerprint,
        columns: Some(columns),
        kind: crate::interop::RunKind::HfTrainer,
    }))
}

/// The problems of one checkpoint directory: a Wick checkpoint against its manifest, a Trainer checkpoint by
/// its safetensors files, index and state.
pub fn checkpoint_problems(dir: &Path) -> Vec<String> {
    if dir.join(crate::run::checkpoint::MANIFEST).is_file() {
        verify_checkpoint(dir).iter().map(ToString::to_string).collect()
    } else {
        crate::interop::hf_verify::verify_hf_checkpoint(dir).problems
    }
}

/// Sum of the sizes of the files directly in `dir` (0 when unreadable).
pub fn dir_size_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|read| read.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Whether a trainer event changes a run's checkpoint table.
pub fn changes_checkpoints(event: &TrainEvent) -> bool {
    matches!(
        event,
        TrainEvent::CheckpointSaved { .. }
            | TrainEvent::CheckpointPruned { .. }
            | TrainEvent::BestCheckpoint { .. }
            | TrainEvent::Eval(_)
    )
}

impl CheckpointsState {
    /// Asks for the report of `root` (none: clears it); loads it when it is another run than the one shown.
    pub fn want(&mut self, root: Option<&Path>, ctx: &egui::Context) {
        if self.wanted.as_deref() != root {
            self.wanted = root.map(Path::to_path_buf);
            self.report = None;
            self.error = None;
            self.picked.clear();
            self.dirty = true;
        }
        self.poll(ctx);
    }

    /// Marks `root` as changed on disk: its report is loaded again.
    pub fn invalidate(&mut self, root: &Path) {
        if self.wanted.as_deref() == Some(root) {
            self.dirty = true;
        }
    }

    /// Takes worker results and starts a load when one is due.
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Ok((root, result)) = self.load_rx.try_recv() {
            if self.loading.as_ref() == Some(&root) {
                self.loading = None;
            }
            if self.wanted.as_ref() != Some(&root) {
                continue;
            }
            match result {
                Ok(Some(report)) => {
                    self.error = None;
                    self.report = Some(report);
                }
                Ok(None) => self.error = None,
                Err(why) => self.error = Some(why),
            }
        }
        while let Ok((dir, problems)) = self.verify_rx.try_recv() {
            let integrity = if problems.is_empty() { Integrity::Verified } else { Integrity::Damaged(problems) };
            self.integrity.insert(dir, integrity);
        }
        if self.dirty && self.loading.is_none() {
            if let Some(root) = self.wanted.clone() {
                self.dirty = false;
                self.loading = Some(root.clone());
                let tx = self.load_tx.clone();
                let ctx = ctx.clone();
                let previous = self.report.as_ref().filter(|r| r.root == root).map(|r| r.fingerprint.clone());
                let spawned = std::thread::Builder::new().name("checkpoint-report".into()).spawn(move || {
                    let result = load_report(&root, previous.as_ref())
                        .map_err(|e| format!("cannot read the checkpoints of {}: {e:#}", root.display()));
                    let _ = tx.send((root, result));
                    ctx.request_repaint();
                });
                if let Err(e) = spawned {
                    self.loading = None;
                    self.error = Some(format!("cannot start the checkpoint loader: {e}"));
                }
            }
        }
    }

    /// Whether a report load is running.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// The integrity of a checkpoint directory.
    pub fn integrity_of(&self, dir: &Path) -> Integrity {
        self.integrity.get(dir).cloned().unwrap_or_default()
    }

    /// Verifies `dirs` against their manifests on a worker; results arrive one checkpoint at a time.
    pub fn verify(&mut self, dirs: Vec<PathBuf>, ctx: &egui::Context) -> Result<(), String> {
        for dir in &dirs {
            self.integrity.insert(dir.clone(), Integrity::Checking);
        }
        let tx = self.verify_tx.clone();
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("checkpoint-verify".into())
            .spawn(move || {
                for dir in dirs {
                    let problems = checkpoint_problems(&dir);
                    if tx.send((dir, problems)).is_err() {
                        return;
                    }
                    ctx.request_repaint();
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the verifier: {e}"))
    }
}

/// The draft of a fork: `config` with the first stage warm-started from `checkpoint` and a new name.
pub fn fork_config(config: &RunConfig, checkpoint: &Path) -> RunConfig {
    let mut fork = config.clone();
    let step = checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    fork.name = format!("{}-fork-{}", config.name, step.trim_start_matches("step-").trim_start_matches('0'));
    if let Some(first) = fork.stages.first_mut() {
        first.warm_start = Some(checkpoint.to_path_buf());
    }
    fork
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_warm_starts_its_first_stage_from_the_checkpoint() {
        let mut config = RunConfig::preset("smoke").expect("preset");
        config.stages[1].warm_start = None;
        let fork = fork_config(&config, Path::new("/runs/smoke-1/checkpoints/step-00000030"));
        assert_eq!(fork.stages[0].warm_start.as_deref(), Some(Path::new("/runs/smoke-1/checkpoints/step-00000030")));
        assert_eq!(fork.stages[1].warm_start, None);
        assert_eq!(fork.name, "smoke-fork-30");
    }
}
