//! [`RunStore`]: every metrics, evaluation and event point of one run, in memory, for the plots.
//!
//! A store is filled either from a run directory ([`RunStore::load`], on a background thread) or, for the run
//! this window trains, event by event ([`RunStore::apply`]); both paths go through `apply`, so a run replayed
//! from disk looks exactly like the same run watched live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::config::RunConfig;
use crate::run::atomic::read_jsonl_contents;
use crate::run::dir::newest_per_step;
use crate::run::events::{EvalRecord, EventRecord, MetricsRecord};
use crate::run::{LedgerEntry, RunDir, RunState, RunStatus, TrainEvent};

use super::envelope::{extend_blocks, BlockSummary};

/// Names of the series every run has (gates add `gate[i]`).
pub mod names {
    /// Training loss.
    pub const LOSS: &str = "loss";
    /// Learning rate.
    pub const LR: &str = "lr";
    /// Gradient norm before clipping.
    pub const GRAD_NORM: &str = "grad_norm";
    /// Mean |gate|.
    pub const GATE_MEAN: &str = "gate_mean";
    /// Training throughput.
    pub const SAMPLES_PER_S: &str = "samples_per_s";
    /// Resident memory in MiB.
    pub const RSS_MIB: &str = "rss_mib";
    /// GPU memory in MiB.
    pub const GPU_MIB: &str = "gpu_mib";
    /// FID (judge).
    pub const FID: &str = "fid";
    /// Top-1 / top-2 / top-3.
    pub const TOP: [&str; 3] = ["top1", "top2", "top3"];
    /// Layout IoU.
    pub const IOU: &str = "iou";
    /// Validation loss (fixed held-out batch) at each evaluation.
    pub const VAL_LOSS: &str = "val_loss";
    /// The name of block `i`'s gate series.
    pub fn gate(i: usize) -> String {
        format!("gate[{i}]")
    }
}

/// One series: every point, ascending in step; `NaN` marks a non-finite value.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Global step of each point.
    pub steps: Vec<f64>,
    /// Training seconds of each point.
    pub wall_secs: Vec<f64>,
    /// Values (`NaN` = not finite).
    pub values: Vec<f64>,
    /// Min/max summaries of `values` (see [`super::envelope`]), kept up to date on every push.
    pub blocks: Vec<BlockSummary>,
    summarized_len: usize,
}

impl Series {
    /// Appends a point; a point at or before the last step replaces the tail from that step on (a resume
    /// that re-ran steps).
    pub fn push(&mut self, step: f64, wall_secs: f64, value: f64) {
        if self.steps.last().is_some_and(|&last| step <= last) {
            let keep = self.steps.partition_point(|&s| s < step);
            self.steps.truncate(keep);
            self.wall_secs.truncate(keep);
            self.values.truncate(keep);
            self.blocks.clear();
            self.summarized_len = 0;
        }
        self.steps.push(step);
        self.wall_secs.push(wall_secs);
        self.values.push(value);
    }

    /// Brings the block summaries up to date (cheap when nothing changed).
    pub fn refresh_blocks(&mut self) {
        if self.summarized_len != self.values.len() {
            extend_blocks(&mut self.blocks, &self.values);
            self.summarized_len = self.values.len();
        }
    }

    /// Points in the series.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the series has no point.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Kinds of event markers drawn on the plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MarkerKind {
    /// A checkpoint was saved.
    Checkpoint,
    /// A checkpoint became the best.
    Best,
    /// A non-finite loss or gradient.
    Nan,
    /// An adapter gate alert.
    GateAlert,
    /// A stage stopped early.
    EarlyStop,
    /// The run stopped, finished or failed.
    End,
}

impl MarkerKind {
    /// Human-readable name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Checkpoint => "checkpoint",
            Self::Best => "best",
            Self::Nan => "NaN",
            Self::GateAlert => "gate alert",
            Self::EarlyStop => "early stop",
            Self::End => "end",
        }
    }
}

/// An event drawn on the plots.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Global step.
    pub step: u64,
    /// What happened.
    pub kind: MarkerKind,
    /// The event's message.
    pub message: String,
}

/// Every point of one run.
#[derive(Debug, Clone, Default)]
pub struct RunStore {
    /// The run directory.
    pub root: PathBuf,
    /// The run id (directory name).
    pub id: String,
    /// The frozen config, when it could be read.
    pub config: Option<RunConfig>,
    /// state.json as last read (disk runs) or as known from events (the live run).
    pub state: Option<RunState>,
    /// Series by name.
    pub series: BTreeMap<String, Series>,
    /// Event markers in order.
    pub markers: Vec<Marker>,
    /// Stages on the global step axis.
    pub ledger: Vec<LedgerEntry>,
    /// Every event message in order (step, message), for hover text and the status line.
    pub messages: Vec<(u64, String)>,
    /// Events applied so far.
    pub events_applied: u64,
    /// What the run's task declares (task.json), when known.
    pub task: Option<crate::task::TaskDescriptor>,
    /// What wrote the run (an external run's store comes from [`super::external`]).
    pub kind: crate::interop::RunKind,
    /// One sentence per log file that had unreadable lines (skipped, counted, named), shown above the plots.
    pub damage_notes: Vec<String>,
    /// The run's folder was gone at the last scan: what is shown is what was read before.
    pub vanished: bool,
    last_wall_secs: f64,
}

impl RunStore {
    /// An empty store for the run at `root`.
    pub fn new(root: &Path) -> Self {
        let id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self { root: root.to_path_buf(), id, ..Self::default() }
    }

    /// Reads a whole run directory (config, state, metrics, evaluations, events). Slow for long runs: call it
    /// on a background thread.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = RunDir::open(root)?;
        let mut store = Self::new(root);
        let text = std::fs::read_to_string(dir.config_path())?;
        store.config = RunConfig::from_toml_str(&text, &dir.config_path().display().to_string()).ok();
        store.task = dir.task_descriptor();
        let state = dir.read_state().ok();
        if let Some(state) = &state {
            store.ledger = state.stages.clone();
        } else if let Some(config) = &store.config {
            store.ledger = crate::run::dir::planned_ledger(config);
        }
        let metrics = read_jsonl_contents::<MetricsRecord>(&dir.metrics_path())?;
        let evals = read_jsonl_contents::<EvalRecord>(&dir.evals_path())?;
        let events = read_jsonl_contents::<EventRecord>(&dir.events_path())?;
        store.damage_notes = [
            metrics.damage_note(&dir.metrics_path()),
            evals.damage_note(&dir.evals_path()),
            events.damage_note(&dir.events_path()),
        ]
        .into_iter()
        .flatten()
        .collect();
        for record in newest_per_step(metrics.records) {
            store.apply(&TrainEvent::Metrics(record));
        }
        for record in evals.records {
            store.apply(&TrainEvent::Eval(record));
        }
        for record in events.records {
            if !matches!(record.event, TrainEvent::Metrics(_) | TrainEvent::Eval(_)) {
                store.apply(&record.event);
            }
        }
        store.state = state;
        store.refresh_blocks();
        Ok(store)
    }

    /// Adds one event's points and markers.
    pub fn apply(&mut self, event: &TrainEvent) {
        self.events_applied += 1;
        match event {
            TrainEvent::Metrics(m) => {
                let (step, wall) = (m.step as f64, m.wall_secs);
                self.last_wall_secs = wall;
                let opt = |v: Option<f64>| v.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
                self.push(names::LOSS, step, wall, opt(m.loss));
                self.push(names::LR, step, wall, m.lr);
                self.push(names::GRAD_NORM, step, wall, opt(m.grad_norm));
                if !m.gates.is_empty() {
                    for (i, gate) in m.gates.iter().enumerate() {
                        self.push(&names::gate(i), step, wall, *gate);
                    }
                    self.push(names::GATE_MEAN, step, wall, m.gate_mean);
                }
                self.push(names::SAMPLES_PER_S, step, wall, m.samples_per_s);
                for (name, value) in &m.scalars {
                    self.push(name, step, wall, *value);
                }
                if let Some(rss) = m.rss_bytes {
                    self.push(names::RSS_MIB, step, wall, rss as f64 / (1024.0 * 1024.0));
                }
                if let Some(gpu) = m.gpu_mem_bytes {
                    self.push(names::GPU_MIB, step, wall, gpu as f64 / (1024.0 * 1024.0));
                }
                if let Some(state) = &mut self.state {
                    state.global_step = m.step;
                    state.stage = m.stage.clone();
                    state.last_loss = m.loss;
                    state.wall_secs = wall;
                }
            }
            TrainEvent::Eval(e) => {
                let step = e.step as f64;
                let wall = self.wall_at_step(e.step);
                let opt = |v: Option<f64>| v.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
                if self.is_shapes() {
                    self.push(names::FID, step, wall, opt(e.fid));
                    for (name, value) in names::TOP.iter().zip([e.top1, e.top2, e.top3]) {
                        self.push(name, step, wall, opt(value));
                    }
                    self.push(names::IOU, step, wall, opt(e.iou));
                }
                for (name, value) in &e.other {
                    self.push(name, step, wall, opt(*value));
                }
                // Runs recorded before the validation loss existed have none: no point, rather than a NaN mark.
                if let Some(v) = e.val_loss {
                    self.push(names::VAL_LOSS, step, wall, v);
                }
            }
            other => {
                self.messages.push((other.step(), other.message()));
                let kind = match other {
                    TrainEvent::CheckpointSaved { .. } => Some(MarkerKind::Checkpoint),
                    TrainEvent::BestCheckpoint { .. } => Some(MarkerKind::Best),
                    TrainEvent::NanDetected { .. } | TrainEvent::RolledBack { .. } => Some(MarkerKind::Nan),
                    TrainEvent::GateAlert { .. } => Some(MarkerKind::GateAlert),
                    TrainEvent::EarlyStopped { .. } => Some(MarkerKind::EarlyStop),
                    TrainEvent::Stopped { .. } | TrainEvent::Finished { .. } | TrainEvent::Failed { .. } => {
                        Some(MarkerKind::End)
                    }
                    _ => None,
                };
                if let Some(kind) = kind {
                    self.markers.push(Marker { step: other.step(), kind, message: other.message() });
                }
                self.apply_to_state(other);
            }
        }
    }

    /// Keeps the in-memory state (status, stage, ledger) in step with the live run's events.
    fn apply_to_state(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::StageStarted { step, stage, index, end_step, .. } => {
                if let Some(entry) = self.ledger.get_mut(*index) {
                    entry.name = stage.clone();
                    entry.start_step = *step;
                    entry.end_step = *end_step;
                } else if *index == self.ledger.len() {
                    self.ledger.push(LedgerEntry {
                        name: stage.clone(),
                        start_step: *step,
                        end_step: *end_step,
                        finished: false,
                        first_eval: None,
                        last_eval: None,
                    });
                }
                if let Some(state) = &mut self.state {
                    state.stage = stage.clone();
                    state.stage_index = *index;
                }
            }
            TrainEvent::StageFinished { step, stage, .. } | TrainEvent::EarlyStopped { step, stage, .. } => {
                if let Some(entry) = self.ledger.iter_mut().find(|e| &e.name == stage) {
                    entry.end_step = *step;
                    entry.finished = true;
                }
            }
            _ => {}
        }
        let Some(state) = &mut self.state else { return };
        let status = match event {
            TrainEvent::Started { step, total_steps, .. } => {
                state.global_step = *step;
                state.total_steps = *total_steps;
                Some(RunStatus::Running)
            }
            TrainEvent::Paused { .. } => Some(RunStatus::Paused),
            TrainEvent::Resumed { .. } => Some(RunStatus::Running),
            TrainEvent::Stopped { .. } => Some(RunStatus::Stopped),
            TrainEvent::Finished { .. } => Some(RunStatus::Finished),
            TrainEvent::Failed { message, .. } => {
                state.message = Some(message.clone());
                Some(RunStatus::Failed)
            }
            TrainEvent::BestCheckpoint { step, checkpoint, metric, value, .. } => {
                state.best = Some(crate::run::state::BestState {
                    metric: metric.clone(),
                    value: *value,
                    step: *step,
                    checkpoint: checkpoint.clone(),
                });
                None
            }
            _ => None,
        };
        if let Some(status) = status {
            state.status = status;
        }
    }

    /// Appends one point to the series `name` (made when new); `NaN` marks a non-finite value.
    pub fn push_point(&mut self, name: &str, step: f64, wall_secs: f64, value: f64) {
        self.push(name, step, wall_secs, value);
    }

    fn push(&mut self, name: &str, step: f64, wall_secs: f64, value: f64) {
        match self.series.get_mut(name) {
            Some(series) => series.push(step, wall_secs, value),
            None => {
                let mut series = Series::default();
                series.push(step, wall_secs, value);
                self.series.insert(name.to_string(), series);
            }
        }
    }

    /// Brings every series' min/max summaries up to date (after events were applied).
    pub fn refresh_blocks(&mut self) {
        for series in self.series.values_mut() {
            series.refresh_blocks();
        }
    }

    /// Training seconds at a global step, from the loss series (the last known time for later steps).
    pub fn wall_at_step(&self, step: u64) -> f64 {
        let Some(loss) = self.series.get(names::LOSS) else { return self.last_wall_secs };
        if loss.is_empty() {
            return self.last_wall_secs;
        }
        let i = loss.steps.partition_point(|&s| s < step as f64);
        loss.wall_secs[i.min(loss.len() - 1)]
    }

    /// What the run's task declares: task.json, else the built-in task run.toml names (shapes for runs
    /// recorded before tasks existed).
    pub fn descriptor(&self) -> crate::task::TaskDescriptor {
        if let Some(task) = &self.task {
            return task.clone();
        }
        let kind = self.config.as_ref().map_or("shapes", |c| c.task.kind.as_str());
        let registry = crate::task::registry::TaskRegistry::builtin();
        registry
            .descriptor(kind)
            .cloned()
            .unwrap_or_else(<crate::tasks::shapes::ShapesTask as crate::task::Task>::descriptor)
    }

    /// Whether the run is of the shapes task (FID, top-k and IoU are its metrics).
    pub fn is_shapes(&self) -> bool {
        if self.kind != crate::interop::RunKind::Wick {
            return false;
        }
        match (&self.task, &self.config) {
            (Some(task), _) => task.kind == "shapes",
            (None, Some(config)) => config.task.kind == "shapes",
            (None, None) => true,
        }
    }

    /// The number of gate series (adapter blocks).
    pub fn gate_count(&self) -> usize {
        (0..).take_while(|i| self.series.contains_key(&names::gate(*i))).count()
    }

    /// The run's status as far as this store knows.
    pub fn status(&self) -> Option<RunStatus> {
        self.state.as_ref().map(|s| s.effective_status())
    }
}
