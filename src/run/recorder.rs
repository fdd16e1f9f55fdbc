//! The recorder: the only writer of a run's logs and state while it trains. It receives every
//! [`TrainEvent`] from the trainer, appends it to metrics.jsonl / events.jsonl, keeps state.json current
//! (atomic rewrites), and forwards the event to whoever watches (CLI progress bar, GUI).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};

use super::atomic::JsonlAppender;
use super::dir::RunDir;
use super::events::{EvalRecord, EventRecord, MetricsRecord, TrainEvent};
use super::state::{unix_now_secs, BestState, RunState, RunStatus};
use crate::build_info::BuildInfo;
use crate::interop::wick::TensorBoardMirror;

/// Called after each forwarded event (the GUI passes `ctx.request_repaint`).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// How far the recorder got, shared with the trainer. The trainer seals a checkpoint only once every event
/// it sent before is on disk ([`RecordProgress::wait_for`]): a checkpoint is never ahead of the run's logs,
/// so a resume from it re-creates every line a full disk kept from being written. A failed write is kept
/// here too, and stops the trainer at its next step.
#[derive(Default)]
pub struct RecordProgress {
    inner: std::sync::Mutex<Progress>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Progress {
    recorded: u64,
    failure: Option<String>,
    ended: bool,
}

impl RecordProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The recorder handled one more event; `failure` when writing it failed (the first one is kept).
    fn recorded(&self, failure: Option<String>) {
        let mut progress = self.lock();
        progress.recorded += 1;
        if progress.failure.is_none() {
            progress.failure = failure;
        }
        self.changed.notify_all();
    }

    /// The recorder's thread is ending.
    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// The first write that failed, said with its file.
    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Blocks until the first `count` events are recorded; `Err` with the failure when a write failed, or
    /// when the recorder is gone.
    pub fn wait_for(&self, count: u64) -> std::result::Result<(), String> {
        let mut progress = self.lock();
        loop {
            if let Some(failure) = &progress.failure {
                return Err(failure.clone());
            }
            if progress.recorded >= count {
                return Ok(());
            }
            if progress.ended {
                return Err("the recorder ended before recording every event".to_string());
            }
            progress = self.changed.wait(progress).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// Least time between two state.json rewrites caused by metrics alone.
const STATE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

struct Recorder {
    dir: RunDir,
    state: RunState,
    planned_steps: Vec<u64>,
    metrics: JsonlAppender,
    evals: JsonlAppender,
    events: JsonlAppender,
    last_state_write: Instant,
    /// TensorBoard event files of the run, beside its own logs; `None` until training starts, and after a
    /// write failed (said once in the log: the run's own files are what count).
    tensorboard: Option<TensorBoardMirror>,
    /// Seconds this session spent writing the TensorBoard file (said in the log when the session ends).
    tensorboard_secs: f64,
}

/// Starts the recorder thread for `dir`. It ends when the trainer's sender is dropped; if that happens
/// without a final event (stopped / finished / failed), it records the run as failed.
pub fn spawn_recorder(
    dir: RunDir,
    input: Receiver<TrainEvent>,
    output: Sender<TrainEvent>,
    progress: Arc<RecordProgress>,
    notify: Option<Notify>,
) -> Result<JoinHandle<()>> {
    let config = dir.config()?;
    let state = match dir.read_state() {
        Ok(state) => state,
        Err(e) => {
            // Nothing is thrown away: the unreadable file is kept beside the rebuilt one.
            let kept = dir.state_path().with_extension(format!("json.damaged-{}", unix_now_secs() as u64));
            if dir.state_path().exists() {
                std::fs::rename(dir.state_path(), &kept)
                    .with_context(|| format!("cannot move the damaged {} aside", dir.state_path().display()))?;
            }
            let why = format!("was unreadable ({e:#}; kept as {})", kept.display());
            let state = rebuild_state(&dir, &why)?;
            dir.write_state(&state)?;
            tracing::warn!("{}: state.json {why}; rebuilt from run.toml and the logs", dir.root().display());
            state
        }
    };
    let metrics = JsonlAppender::open(&dir.metrics_path())?;
    let evals = JsonlAppender::open(&dir.evals_path())?;
    let events = JsonlAppender::open(&dir.events_path())?;
    let mut recorder = Recorder {
        planned_steps: config.stages.iter().map(|s| s.steps).collect(),
        dir,
        state,
        metrics,
        evals,
        events,
        last_state_write: Instant::now(),
        tensorboard: None,
        tensorboard_secs: 0.0,
    };
    let name = format!("recorder-{}", recorder.dir.id());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::logging::bind_thread_to_run_log(&recorder.dir.log_path());
            let mut ended = false;
            for event in input.iter() {
                ended |= event.is_terminal();
                let failure = recorder.record(&event).err().map(|e| {
                    tracing::error!("cannot record {:?} in {}: {e:#}", event.message(), recorder.dir.root().display());
                    format!("{e:#}")
                });
                // The trainer stops at its next step (the first failure is the one it reports).
                progress.recorded(failure);
                // The watcher may be gone (CLI exited, window closed): recording goes on regardless.
                let _ = output.send(event);
                if let Some(notify) = &notify {
                    notify();
                }
            }
            if !ended {
                let event = TrainEvent::Failed {
                    step: recorder.state.global_step,
                    message: "the trainer ended without a final status (it may have panicked); \
                              see log.txt — the run can be resumed from its newest checkpoint"
                        .to_string(),
                };
                if let Err(e) = recorder.record(&event) {
                    tracing::error!("cannot record the failure: {e:#}");
                }
                let _ = output.send(event);
                if let Some(notify) = &notify {
                    notify();
                }
            }
            progress.end();
        })
        .context("cannot start the recorder thread")
}

impl Recorder {
    /// Writes `event`'s values to the run's TensorBoard file: a new file when training starts, scalars for
    /// metrics and evaluations, an image (or text) for samples. A failure stops the mirror, never the run.
    fn mirror(&mut self, event: &TrainEvent) {
        if let TrainEvent::Started { step, .. } = event {
            if !crate::interop::wick::tensorboard_enabled() {
                return;
            }
            self.tensorboard = match TensorBoardMirror::start(self.dir.root(), *step) {
                Ok(mirror) => Some(mirror),
                Err(e) => {
                    tracing::warn!("TensorBoard files will not be written for this run: {e:#}");
                    None
                }
            };
        }
        let Some(mirror) = &mut self.tensorboard else {
            return;
        };
        let start = Instant::now();
        let written = match event {
            TrainEvent::Metrics(m) => mirror.metrics(m),
            TrainEvent::Eval(e) => mirror.eval(e),
            TrainEvent::CheckpointSaved { step, checkpoint, .. } => mirror.checkpoint_saved(*step, checkpoint),
            TrainEvent::SamplesSaved { step, path, .. } => mirror.samples_saved(*step, path),
            _ => Ok(()),
        };
        self.tensorboard_secs += start.elapsed().as_secs_f64();
        if event.is_terminal() {
            tracing::info!(
                "TensorBoard file {} written in {:.1} ms this session (on the recorder's thread)",
                mirror.path().display(),
                self.tensorboard_secs * 1e3
            );
        }
        if let Err(e) = written {
            tracing::warn!("TensorBoard file {} no longer written: {e:#}", mirror.path().display());
            self.tensorboard = None;
        }
    }

    fn record(&mut self, event: &TrainEvent) -> Result<()> {
        self.mirror(event);
        let mut write_state = true;
        match event {
            TrainEvent::Metrics(m) => {
                self.metrics.append(m)?;
                apply_metrics(&mut self.state, m);
                write_state = self.last_state_write.elapsed() >= STATE_WRITE_INTERVAL;
                tracing::debug!(target: "wick::metrics", "{}", event.message());
            }
            TrainEvent::Eval(e) => {
                self.evals.append(e)?;
                self.evals.sync()?;
                apply_eval(&mut self.state, e);
                tracing::info!("{}", event.message());
            }
            other => {
                self.events.append(&EventRecord { unix_secs: unix_now_secs(), event: other.clone() })?;
                self.events.sync()?;
                apply_event(&mut self.state, &self.planned_steps, other);
                match other {
                    TrainEvent::Failed { .. } => tracing::error!("{}", other.message()),
                    TrainEvent::NanDetected { .. }
                    | TrainEvent::RolledBack { .. }
                    | TrainEvent::Warning { .. }
                    | TrainEvent::GateAlert { .. } => {
                        tracing::warn!("{}", other.message())
                    }
                    _ => tracing::info!("{}", other.message()),
                }
            }
        }
        if write_state || event.is_terminal() {
            if event.is_terminal() {
                self.metrics.sync()?;
            }
            self.state.updated_unix_secs = unix_now_secs();
            self.dir.write_state(&self.state)?;
            self.last_state_write = Instant::now();
        }
        Ok(())
    }
}

/// A metrics line's effect on the state.
fn apply_metrics(state: &mut RunState, m: &MetricsRecord) {
    state.global_step = m.step;
    state.last_loss = m.loss;
    state.wall_secs = m.wall_secs;
}

/// An evaluation's effect on the state.
fn apply_eval(state: &mut RunState, e: &EvalRecord) {
    state.last_eval_step = Some(e.step);
    // An evaluation after step s belongs to the stage whose steps end at or after s.
    if let Some(entry) = state.stages.iter_mut().find(|entry| entry.start_step < e.step && e.step <= entry.end_step) {
        entry.first_eval.get_or_insert_with(|| e.into());
        entry.last_eval = Some(e.into());
    }
    state.early_stopping = e.early_stopping.clone();
}

/// Any other event's effect on the state (stages `planned` steps long, as the config plans them).
fn apply_event(state: &mut RunState, planned: &[u64], event: &TrainEvent) {
    {
        match event {
            TrainEvent::Started { step, .. } => {
                state.status = RunStatus::Running;
                state.global_step = *step;
                state.pid = Some(std::process::id());
                state.message = None;
                state.build = Some(BuildInfo::current());
            }
            TrainEvent::StageStarted { step, stage, index, .. } => {
                state.stage = stage.clone();
                state.stage_index = *index;
                state.early_stopping = None;
                state.global_step = *step;
                replan(state, planned, *index, *step);
            }
            TrainEvent::StageFinished { step, .. } => {
                let index = state.stage_index;
                if let Some(entry) = state.stages.get_mut(index) {
                    entry.end_step = *step;
                    entry.finished = true;
                }
                replan(state, planned, index + 1, *step);
            }
            TrainEvent::RolledBack { to_step, stage_index, stage, stage_start_step, .. } => {
                state.global_step = *to_step;
                state.stage = stage.clone();
                state.stage_index = *stage_index;
                // The stage returned to (and every later one) runs again, as planned from its start.
                replan(state, planned, *stage_index, *stage_start_step);
            }
            TrainEvent::CheckpointSaved { checkpoint, .. } => state.last_checkpoint = Some(checkpoint.clone()),
            TrainEvent::Paused { .. } => state.status = RunStatus::Paused,
            TrainEvent::Resumed { .. } => state.status = RunStatus::Running,
            TrainEvent::Stopped { step, message } => {
                state.status = RunStatus::Stopped;
                state.global_step = *step;
                state.message = Some(message.clone());
            }
            TrainEvent::Finished { step, .. } => {
                state.status = RunStatus::Finished;
                state.global_step = *step;
            }
            TrainEvent::Failed { message, .. } => {
                state.status = RunStatus::Failed;
                state.message = Some(message.clone());
            }
            TrainEvent::BestCheckpoint { step, checkpoint, metric, value, .. } => {
                state.best = Some(BestState {
                    metric: metric.clone(),
                    value: *value,
                    step: *step,
                    checkpoint: checkpoint.clone(),
                });
            }
            TrainEvent::Metrics(_)
            | TrainEvent::Eval(_)
            | TrainEvent::EarlyStopped { .. }
            | TrainEvent::GateAlert { .. }
            | TrainEvent::SamplesSaved { .. }
            | TrainEvent::CheckpointPruned { .. }
            | TrainEvent::NanDetected { .. }
            | TrainEvent::Warning { .. } => {}
        }
    }
}

/// Lays stages `from..` (none of which has finished: stages run in order) out consecutively from
/// `start_step` with their `planned` lengths.
fn replan(state: &mut RunState, planned: &[u64], from: usize, start_step: u64) {
    let mut start = start_step;
    for (index, entry) in state.stages.iter_mut().enumerate().skip(from) {
        let steps = planned.get(index).copied().unwrap_or(0);
        entry.start_step = start;
        entry.end_step = start + steps;
        entry.finished = false;
        start = entry.end_step;
    }
    state.total_steps = state.stages.last().map_or(0, |e| e.end_step);
}

/// A state.json rebuilt from the run's config and logs, for one that is unreadable (`why`): the events
/// replayed as the recorder applied them, then the newest metrics line and every evaluation. A run that was
/// training is `interrupted` (resumable); `message` says the state was rebuilt.
pub fn rebuild_state(dir: &RunDir, why: &str) -> Result<RunState> {
    let config = dir.config()?;
    let planned: Vec<u64> = config.stages.iter().map(|s| s.steps).collect();
    let created = std::fs::metadata(dir.config_path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let mut state = RunState {
        total_steps: config.total_steps(),
        stages: super::dir::planned_ledger(&config),
        created_unix_secs: created,
        ..RunState::default()
    };
    for record in dir.read_events()? {
        apply_event(&mut state, &planned, &record.event);
    }
    if let Some(last) = dir.read_metrics_raw()?.last().filter(|m| m.step >= state.global_step) {
        apply_metrics(&mut state, last);
    }
    for eval in super::atomic::read_jsonl::<EvalRecord>(&dir.evals_path())? {
        apply_eval(&mut state, &eval);
    }
    if matches!(state.status, RunStatus::Running | RunStatus::Paused) {
        state.status = RunStatus::Interrupted;
    }
    state.pid = None;
    state.build = None;
    state.message = Some(format!("state.json {why}; rebuilt from run.toml and the run's logs"));
    state.updated_unix_secs = unix_now_secs();
    Ok(state)
}
