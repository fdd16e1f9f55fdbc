//! The trainer: a thread that runs a run's stages and reports [`TrainEvent`]s; the recorder writes them.
//!
//! ```text
//! start(run dir, options) ─▶ thread "trainer-<id>" ══events══▶ recorder thread ══events══▶ TrainerHandle::events
//!        TrainerHandle::pause / resume / stop / save_now ──commands──▶ (polled at step boundaries)
//! ```
//! The trainer never blocks on its watchers: both channels are unbounded.

pub mod checkpointing;
pub mod ema;
pub mod noise;
pub mod optimizer;
pub mod policy;
pub mod step;
mod trainer;

use std::thread::JoinHandle;

use anyhow::{Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::run::recorder::{spawn_recorder, Notify, RecordProgress};
use crate::run::{RunDir, TrainEvent};

pub use step::shard_ranges;
pub use trainer::select_device;

use crate::task::{Task, TaskContext};

/// Requests a watcher can send to a running trainer; each takes effect at the next step boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainCommand {
    /// Pause after the current step.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Save a checkpoint and end the run as `stopped` (resumable).
    Stop,
    /// Save a checkpoint now and continue.
    SaveNow,
}

/// How to start a trainer.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest intact checkpoint (from the start when there is none).
    pub resume: bool,
    /// Stop (with a checkpoint, as [`TrainCommand::Stop`]) once this global step is reached.
    pub stop_at_step: Option<u64>,
    /// Fault injection for tests: put a NaN into the batch of these global steps (1-based step numbers).
    pub inject_nan_at_steps: Vec<u64>,
    /// Called after each event reaches [`TrainerHandle::events`] (the GUI wakes its window with it).
    pub notify: Option<Notify>,
}

/// A running trainer: its events and its command inbox.
pub struct TrainerHandle {
    /// Every event, after the recorder has written it to the run directory.
    pub events: Receiver<TrainEvent>,
    commands: Sender<TrainCommand>,
    run_dir: RunDir,
    trainer: Option<JoinHandle<()>>,
    recorder: Option<JoinHandle<()>>,
    /// Keeps log.txt attached while the trainer lives (dropped after the threads are joined).
    _log: crate::logging::RunLogGuard,
    /// The run's lock, released after the threads are joined (the recorder writes until its end).
    _lock: crate::run::RunLock,
}

/// Starts training the run in `run_dir` (its run.toml) on a new thread, with the built-in task its
/// `[task] kind` names. A program with tasks of its own starts runs through its
/// [`crate::task::registry::TaskRegistry`], or with [`start_task`].
pub fn start(run_dir: RunDir, options: TrainOptions) -> Result<TrainerHandle> {
    crate::task::registry::TaskRegistry::builtin().start(run_dir, options)
}

/// Starts training the run in `run_dir` on a new thread with a task of type `T`, which `open` makes on the
/// trainer thread from the run's config and directory.
pub fn start_task<T: Task>(
    run_dir: RunDir,
    options: TrainOptions,
    open: impl FnOnce(&TaskContext) -> Result<T> + Send + 'static,
) -> Result<TrainerHandle> {
    // Before anything is written: one process trains a run at a time.
    let lock = crate::run::RunLock::acquire(run_dir.root(), "train")?;
    let config = run_dir.config()?;
    crate::logging::ensure_run_logging();
    let log = crate::logging::attach_run_log(&run_dir.log_path())?;
    let (event_tx, event_rx) = unbounded();
    let (out_tx, out_rx) = unbounded();
    let (command_tx, command_rx) = unbounded();
    // The recorder's first failed write (a full disk, a deleted folder) stops the trainer: a run whose
    // logs cannot be written is not trained on blind.
    let recorded = std::sync::Arc::new(RecordProgress::default());
    let recorder = spawn_recorder(run_dir.clone(), event_rx, out_tx, recorded.clone(), options.notify.clone())?;
    let dir = run_dir.clone();
    let channels = trainer::TrainerChannels { events: event_tx, commands: command_rx, recorded };
    let trainer = std::thread::Builder::new()
        .name(format!("trainer-{}", run_dir.id()))
        .spawn(move || trainer::run_guarded(config, dir, options, Box::new(open), channels))
        .context("cannot start the trainer thread")?;
    Ok(TrainerHandle {
        events: out_rx,
        commands: command_tx,
        run_dir,
        trainer: Some(trainer),
        recorder: Some(recorder),
        _log: log,
        _lock: lock,
    })
}

impl TrainerHandle {
    /// Sends a command; ignored when the trainer has already ended.
    pub fn send(&self, command: TrainCommand) {
        let _ = self.commands.send(command);
    }

    /// The run being trained.
    pub fn run_dir(&self) -> &RunDir {
        &self.run_dir
    }

    /// Waits until the trainer and the recorder have ended (all events recorded).
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        if let Some(thread) = self.trainer.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.recorder.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TrainerHandle {
    fn drop(&mut self) {
        // Dropping the handle of a live trainer stops it cleanly (checkpoint at a step boundary).
        if self.trainer.as_ref().is_some_and(|t| !t.is_finished()) {
            self.send(TrainCommand::Stop);
        }
        self.join_threads();
    }
}
