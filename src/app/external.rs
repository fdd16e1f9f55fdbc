//! Runs other tools wrote — TensorBoard log directories and Hugging Face Trainer output directories — in the
//! window beside Wick's own: summarised cheaply for the Runs panel (file times and, for a Trainer run, its
//! small state file), and read into [`RunStore`]s by one [`ExternalWatcher`] thread per viewed run. A watcher
//! keeps its readers (file offsets, the state file's last version) and sends a new store only when new
//! points reached the disk, so a run being written shows them within a poll and no file is read twice.
//!
//! Tags are put under Wick's names where they mean the same (`loss`, `train/loss` → the loss plot;
//! `learning_rate`, `train/lr` → the learning-rate plot; `grad_norm`), so an external run overlays a Wick run
//! on the same plots; every other tag is plotted under its own name, grouped by its prefix (a Trainer's
//! `eval_loss` becomes `eval/loss`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::store::{names, Marker, MarkerKind, RunStore};
use super::workers::{LoadResult, RunSummary};
use crate::interop::hf::{checkpoints, HfCheckpoint, StateTail, TrainerState};
use crate::interop::tensorboard::{LogDirReader, TensorBoardData};
use crate::interop::{FoundRun, RunKind, Series};
use crate::run::RunStatus;

/// How often a watcher looks at its run's files.
pub const POLL_EVERY: Duration = Duration::from_millis(500);
/// Most NaN / Inf markers one external run puts on the plots.
const MAX_NON_FINITE_MARKERS: usize = 50;

/// The name a run's tag is plotted under.
pub fn plot_name(kind: RunKind, tag: &str) -> String {
    match tag {
        "loss" | "train/loss" => names::LOSS.to_string(),
        "learning_rate" | "lr" | "train/learning_rate" | "train/lr" => names::LR.to_string(),
        "grad_norm" | "train/grad_norm" => names::GRAD_NORM.to_string(),
        other if kind == RunKind::HfTrainer && !other.contains('/') => match other.strip_prefix("eval_") {
            Some(metric) => format!("eval/{metric}"),
            None => format!("train/{other}"),
        },
        other => other.to_string(),
    }
}

fn mtime_secs(path: &Path) -> Option<f64> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    modified.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}

/// The oldest and newest modification times of the files directly in `dir` and one level down.
fn file_times(dir: &Path) -> (f64, f64) {
    let mut oldest = f64::INFINITY;
    let mut newest: f64 = 0.0;
    let mut visit = |path: &Path| {
        if let Some(t) = mtime_secs(path) {
            oldest = oldest.min(t);
            newest = newest.max(t);
        }
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                visit(&inner.path());
            }
        } else {
            visit(&path);
        }
    }
    (if oldest.is_finite() { oldest } else { newest }, newest)
}

/// The Runs panel's line for an external run, from file times (and a Trainer run's state file, when it
/// parses: it is small). Event files are not read here; the watcher of a viewed run reads them.
pub fn summarize_external(found: &FoundRun, external: bool) -> RunSummary {
    let (created, updated) = file_times(&found.path);
    let state = crate::interop::hf::newest_state_file(&found.path)
        .filter(|_| found.kind == RunKind::HfTrainer)
        .and_then(|file| std::fs::read_to_string(file).ok())
        .and_then(|text| TrainerState::parse(&text).ok());
    RunSummary {
        root: found.path.clone(),
        id: found.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        status: RunStatus::Finished,
        best: None,
        created_unix_secs: created,
        updated_unix_secs: updated,
        global_step: state.as_ref().and_then(|s| s.global_step).unwrap_or(0),
        total_steps: state.as_ref().and_then(|s| s.max_steps).unwrap_or(0),
        message: None,
        external,
        kind: found.kind,
        locked_by: None,
    }
}

/// Adds `series` to `store` under its plot name, wall times relative to `start_wall` (`wall_of` supplies
/// times for points without one).
fn add_series(store: &mut RunStore, name: &str, series: &Series, start_wall: f64, wall_of: &dyn Fn(i64) -> f64) {
    let mut non_finite = store.markers.iter().filter(|m| m.kind == MarkerKind::Nan).count();
    for point in &series.points {
        let wall = point.wall_time.map_or_else(|| wall_of(point.step), |w| w - start_wall);
        let value = if point.value.is_finite() { point.value } else { f64::NAN };
        store.push_point(name, point.step as f64, wall, value);
        if !point.value.is_finite() && non_finite < MAX_NON_FINITE_MARKERS {
            non_finite += 1;
            let message = format!("{name} is {} at step {}", crate::interop::format_value(point.value), point.step);
            store.markers.push(Marker { step: point.step.max(0) as u64, kind: MarkerKind::Nan, message });
        }
    }
}

/// The first wall time of any point.
fn first_wall(data: &TensorBoardData) -> f64 {
    data.scalars.values().filter_map(|s| s.points.first()?.wall_time).fold(f64::INFINITY, f64::min)
}

/// A store of a TensorBoard log directory's scalars (wall times as seconds since its first point).
pub fn tensorboard_store(root: &Path, data: &TensorBoardData) -> RunStore {
    let mut store = RunStore::new(root);
    store.kind = RunKind::TensorBoard;
    let start = first_wall(data);
    for (tag, series) in &data.scalars {
        add_series(&mut store, &plot_name(RunKind::TensorBoard, tag), series, start, &|_| 0.0);
    }
    for problem in &data.problems {
        store.messages.push((0, problem.clone()));
    }
    store.refresh_blocks();
    store
}

/// A store of a Trainer run: its state's `log_history` series, its checkpoints and best checkpoint as
/// markers, wall times from its TensorBoard callback's files when it wrote any (else from `train_runtime`).
pub fn trainer_store(
    root: &Path,
    state: &TrainerState,
    saved: &[HfCheckpoint],
    callbacks: &[&TensorBoardData],
) -> RunStore {
    let mut store = RunStore::new(root);
    store.kind = RunKind::HfTrainer;
    // Step → seconds since the first logged point, from the callback's `train/loss` (or any) series.
    let mut wall_by_step: BTreeMap<i64, f64> = BTreeMap::new();
    for data in callbacks {
        let start = first_wall(data);
        let series = data.scalars.get("train/loss").or_else(|| data.scalars.values().next());
        for point in series.into_iter().flat_map(|s| &s.points) {
            if let Some(wall) = point.wall_time {
                wall_by_step.insert(point.step, wall - start);
            }
        }
    }
    let runtime = state
        .log_history
        .iter()
        .rev()
        .find_map(|e| match e.get("train_runtime") {
            Some(crate::interop::hf::LogValue::Number(v)) => Some(*v),
            _ => None,
        })
        .zip(state.global_step.filter(|s| *s > 0));
    let wall_of = |step: i64| match wall_by_step.range(..=step).next_back() {
        Some((_, wall)) => *wall,
        None => runtime.map_or(0.0, |(secs, steps)| secs * step as f64 / steps as f64),
    };
    for (tag, series) in state.series() {
        add_series(&mut store, &plot_name(RunKind::HfTrainer, &tag), &series, 0.0, &wall_of);
    }
    let best = state.best_model_checkpoint.as_deref().and_then(|p| Path::new(p).file_name()).map(|n| n.to_owned());
    for checkpoint in saved {
        let name = checkpoint.dir.file_name().map(|n| n.to_owned());
        store.markers.push(Marker {
            step: checkpoint.step,
            kind: MarkerKind::Checkpoint,
            message: format!("checkpoint-{} saved", checkpoint.step),
        });
        if name.is_some() && name == best {
            let metric = state.best_metric.map_or_else(String::new, |v| format!(" ({v:.4})"));
            store.markers.push(Marker {
                step: checkpoint.step,
                kind: MarkerKind::Best,
                message: format!("checkpoint-{} is the Trainer's best model{metric}", checkpoint.step),
            });
        }
    }
    store.markers.sort_by_key(|m| m.step);
    store.refresh_blocks();
    store
}

/// What a watcher reads.
enum Source {
    TensorBoard(LogDirReader),
    Trainer { state: StateTail, callbacks: Vec<LogDirReader> },
}

impl Source {
    fn new(found: &FoundRun) -> Self {
        match found.kind {
            RunKind::HfTrainer => Self::Trainer { state: StateTail::new(&found.path), callbacks: Vec::new() },
            _ => Self::TensorBoard(LogDirReader::new(&found.path)),
        }
    }

    /// Reads what is new; returns a new store when anything changed.
    fn poll(&mut self, root: &Path) -> Option<Result<RunStore, String>> {
        match self {
            Self::TensorBoard(reader) => reader.poll().then(|| Ok(tensorboard_store(root, reader.data()))),
            Self::Trainer { state, callbacks } => {
                let mut changed = state.poll();
                // The callback starts a new runs/<date>/ folder each launch.
                for entry in std::fs::read_dir(root.join("runs")).into_iter().flatten().flatten() {
                    let dir = entry.path();
                    if dir.is_dir() && !callbacks.iter().any(|r| r.dir() == dir) {
                        callbacks.push(LogDirReader::new(&dir));
                    }
                }
                for reader in callbacks.iter_mut() {
                    changed |= reader.poll();
                }
                if !changed {
                    return None;
                }
                if let Some(problem) = state.problem() {
                    return Some(Err(problem.to_string()));
                }
                let current = state.state()?;
                let data: Vec<&TensorBoardData> = callbacks.iter().map(LogDirReader::data).collect();
                Some(Ok(trainer_store(root, current, &checkpoints(root), &data)))
            }
        }
    }
}

/// Reads one external run on its own thread while it is viewed; dropping it ends the thread.
pub struct ExternalWatcher {
    stop: Arc<AtomicBool>,
}

impl ExternalWatcher {
    /// Starts watching `found`: every change becomes a store sent on `results` (with `ctx` woken).
    pub fn start(found: FoundRun, results: Sender<LoadResult>, ctx: egui::Context) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let shown = found.path.display().to_string();
        let spawned = std::thread::Builder::new().name("external-run".to_string()).spawn(move || {
            let mut source = Source::new(&found);
            while !stopped.load(Ordering::Relaxed) {
                if let Some(result) = source.poll(&found.path) {
                    if results.send((found.path.clone(), result)).is_err() {
                        return;
                    }
                    ctx.request_repaint();
                }
                std::thread::sleep(POLL_EVERY);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start watching {shown}: {e}");
        }
        Self { stop }
    }
}

impl Drop for ExternalWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every external run (TensorBoard or Trainer) under the runs folder; Wick's runs are listed apart.
pub fn external_runs_under(runs_dir: &Path) -> Vec<FoundRun> {
    crate::interop::find_runs(runs_dir)
        .map(|runs| runs.into_iter().filter(|r| r.kind != RunKind::Wick).collect())
        .unwrap_or_default()
}

/// The kind of the run at `path`, if it is one.
pub fn kind_of(path: &Path) -> Option<RunKind> {
    crate::interop::run_kind_of(path)
}

/// `path` as a found run of its kind.
pub fn found(path: &Path, kind: RunKind) -> FoundRun {
    FoundRun { kind, path: PathBuf::from(path) }
}
