//! The run this window trains: its [`TrainerHandle`], its status as told by events, and the ETA.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;

use crate::run::{RunDir, RunStatus, TrainEvent};
use crate::train::{TrainCommand, TrainOptions, TrainerHandle};

/// How long a frame may spend draining trainer events before it goes on drawing.
pub const DRAIN_BUDGET: Duration = Duration::from_millis(4);

/// Window of recent steps the speed (and so the ETA) is measured over.
const SPEED_WINDOW: Duration = Duration::from_secs(30);

/// How long closing the window waits for the trainer to checkpoint and stop.
pub const EXIT_WAIT: Duration = Duration::from_secs(60);

/// The run being trained by this window.
pub struct TrainingSession {
    handle: Option<TrainerHandle>,
    /// The run directory.
    pub root: PathBuf,
    /// The run id.
    pub id: String,
    /// Status as told by the trainer's events.
    pub status: RunStatus,
    /// Global step reached.
    pub step: u64,
    /// Steps in the plan.
    pub total_steps: u64,
    /// Why it failed, once.
    pub failure: Option<String>,
    /// Whether a Stop was sent.
    pub stop_requested: bool,
    recent: VecDeque<(Instant, u64)>,
}

impl TrainingSession {
    /// Starts (or, with `resume`, continues) training `dir`; `notify` wakes the window after each event.
    pub fn start(
        tasks: &crate::task::registry::TaskRegistry,
        dir: RunDir,
        resume: bool,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> anyhow::Result<Self> {
        let root = dir.root().to_path_buf();
        let id = dir.id();
        let total_steps = dir.config()?.total_steps();
        let handle = tasks.start(dir, TrainOptions { resume, notify: Some(notify), ..Default::default() })?;
        Ok(Self {
            handle: Some(handle),
            root,
            id,
            status: RunStatus::Running,
            step: 0,
            total_steps,
            failure: None,
            stop_requested: false,
            recent: VecDeque::new(),
        })
    }

    /// Whether the trainer is still alive (running or paused).
    pub fn is_active(&self) -> bool {
        self.handle.is_some()
    }

    /// Sends a command to the trainer (ignored once it ended).
    pub fn send(&mut self, command: TrainCommand) {
        if command == TrainCommand::Stop {
            self.stop_requested = true;
        }
        if let Some(handle) = &self.handle {
            handle.send(command);
        }
    }

    /// Takes the events that arrived, for at most `budget`; returns them and whether more are waiting.
    pub fn drain(&mut self, budget: Duration) -> (Vec<TrainEvent>, bool) {
        let started = Instant::now();
        let mut events = Vec::new();
        let Some(receiver) = self.handle.as_ref().map(|h| h.events.clone()) else { return (events, false) };
        let mut ended = false;
        let mut more = false;
        loop {
            if started.elapsed() >= budget {
                more = !receiver.is_empty();
                break;
            }
            match receiver.try_recv() {
                Ok(event) => {
                    self.observe(&event);
                    ended |= event.is_terminal();
                    events.push(event);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    ended = true;
                    if !matches!(self.status, RunStatus::Finished | RunStatus::Stopped | RunStatus::Failed) {
                        self.status = RunStatus::Failed;
                        self.failure =
                            Some("the trainer ended without saying why — see log.txt in the run folder".into());
                    }
                    break;
                }
            }
        }
        if ended && !more {
            self.finish_in_background();
        }
        (events, more)
    }

    fn observe(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Started { step, total_steps, .. } => {
                self.step = *step;
                self.total_steps = *total_steps;
                self.status = RunStatus::Running;
                self.recent.clear();
            }
            TrainEvent::Metrics(m) => {
                self.step = m.step;
                let now = Instant::now();
                self.recent.push_back((now, m.step));
                while self.recent.len() > 2 && self.recent.front().is_some_and(|(t, _)| now - *t > SPEED_WINDOW) {
                    self.recent.pop_front();
                }
            }
            TrainEvent::Paused { .. } => {
                self.status = RunStatus::Paused;
                self.recent.clear();
            }
            TrainEvent::Resumed { .. } => self.status = RunStatus::Running,
            TrainEvent::Stopped { step, .. } => {
                self.step = *step;
                self.status = RunStatus::Stopped;
            }
            TrainEvent::Finished { step, .. } => {
                self.step = *step;
                self.status = RunStatus::Finished;
            }
            TrainEvent::Failed { message, .. } => {
                self.status = RunStatus::Failed;
                self.failure = Some(message.clone());
            }
            _ => {}
        }
    }

    /// Steps per second over the recent window, when known.
    pub fn steps_per_s(&self) -> Option<f64> {
        let (t0, s0) = self.recent.front()?;
        let (t1, s1) = self.recent.back()?;
        let secs = (*t1 - *t0).as_secs_f64();
        (secs > 0.0 && s1 > s0).then(|| (s1 - s0) as f64 / secs)
    }

    /// Seconds until global step `target`, at the recent speed.
    pub fn eta_secs(&self, target: u64) -> Option<f64> {
        if self.status != RunStatus::Running {
            return None;
        }
        Some(target.saturating_sub(self.step) as f64 / self.steps_per_s()?)
    }

    /// Lets the trainer's threads end on their own thread (joining never blocks the window).
    fn finish_in_background(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = std::thread::Builder::new().name("trainer-join".into()).spawn(move || handle.join());
        }
    }

    /// On exit: asks the trainer to stop with a checkpoint and waits for it, at most `wait`. Returns whether
    /// it ended in time.
    pub fn stop_and_wait(&mut self, wait: Duration) -> bool {
        let Some(handle) = self.handle.take() else { return true };
        handle.send(TrainCommand::Stop);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let spawned = std::thread::Builder::new().name("trainer-stop".into()).spawn(move || {
            // Drain so the recorder never waits on us, then join (dropping joins the threads).
            for _ in handle.events.iter() {}
            handle.join();
            let _ = done_tx.send(());
        });
        spawned.is_ok() && done_rx.recv_timeout(wait).is_ok()
    }
}
