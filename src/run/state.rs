//! state.json: where a run stands, rewritten atomically by the recorder.

use serde::{Deserialize, Serialize};

use crate::build_info::BuildInfo;

/// Life cycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, not started yet.
    Created,
    /// A trainer is working on it (or was, when it died: see [`RunState::effective_status`]).
    Running,
    /// Paused at a step boundary.
    Paused,
    /// Every stage finished.
    Finished,
    /// Stopped on request with a checkpoint; resumable.
    Stopped,
    /// Failed; the message says why.
    Failed,
    /// Its process died without saying so (found `running` on disk with no live trainer); resumable.
    Interrupted,
}

impl RunStatus {
    /// Lower-case name as written in state.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One stage on the global step axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Stage name.
    pub name: String,
    /// First global step of the stage.
    pub start_step: u64,
    /// Global step after its last step (exclusive end): planned until the stage finishes, then actual.
    pub end_step: u64,
    /// Whether the stage has finished.
    pub finished: bool,
    /// The stage's first evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_eval: Option<EvalSummary>,
    /// The stage's latest evaluation (at its end once it has finished, when it evaluates there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_eval: Option<EvalSummary>,
}

/// The headline figures of one evaluation, as the stage ledger keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Global step evaluated.
    pub step: u64,
    /// FID (judge).
    pub fid: Option<f64>,
    /// top-1 accuracy of the requested class.
    pub top1: Option<f64>,
    /// Mean IoU of requested and judged boxes.
    pub iou: Option<f64>,
    /// Validation loss.
    pub val_loss: Option<f64>,
}

impl From<&super::events::EvalRecord> for EvalSummary {
    fn from(e: &super::events::EvalRecord) -> Self {
        Self { step: e.step, fid: e.fid, top1: e.top1, iou: e.iou, val_loss: e.val_loss }
    }
}

/// state.json's `best`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestState {
    /// Metric name.
    pub metric: String,
    /// Its best value.
    pub value: f64,
    /// Global step of that evaluation.
    pub step: u64,
    /// The checkpoint of that step.
    pub checkpoint: String,
}

/// state.json's `early_stopping`: where the current stage's rule stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopState {
    /// Stage name.
    pub stage: String,
    /// Metric watched.
    pub metric: String,
    /// Best value seen in the stage.
    pub best: Option<f64>,
    /// Evaluations since the last improvement.
    pub evals_without_improvement: u32,
    /// Evaluations allowed without improvement.
    pub patience: u32,
}

/// The content of state.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunState {
    /// Life-cycle status.
    pub status: RunStatus,
    /// Current stage name.
    pub stage: String,
    /// Current stage index.
    pub stage_index: usize,
    /// Steps applied so far on the global axis.
    pub global_step: u64,
    /// Steps in the whole plan (changes when a stage stops early).
    pub total_steps: u64,
    /// Each stage's [start, end) on the global step axis.
    pub stages: Vec<LedgerEntry>,
    /// The best checkpoint so far by the run's chosen metric.
    pub best: Option<BestState>,
    /// Newest evaluation's step.
    pub last_eval_step: Option<u64>,
    /// Early-stopping counters of the current stage, when it has a rule.
    pub early_stopping: Option<EarlyStopState>,
    /// Newest complete checkpoint's directory name.
    pub last_checkpoint: Option<String>,
    /// Loss of the newest logged step.
    pub last_loss: Option<f64>,
    /// Seconds of training over all sessions.
    pub wall_secs: f64,
    /// Process id of the trainer that last wrote this state (to tell a dead `running` run).
    pub pid: Option<u32>,
    /// Why the run failed or stopped.
    pub message: Option<String>,
    /// When the run was created, seconds since the Unix epoch.
    pub created_unix_secs: f64,
    /// When this state was written, seconds since the Unix epoch.
    pub updated_unix_secs: f64,
    /// The binary that wrote this state.
    pub build: Option<BuildInfo>,
}

impl Default for RunState {
    fn default() -> Self {
        Self {
            status: RunStatus::Created,
            stage: String::new(),
            stage_index: 0,
            global_step: 0,
            total_steps: 0,
            stages: Vec::new(),
            best: None,
            last_eval_step: None,
            early_stopping: None,
            last_checkpoint: None,
            last_loss: None,
            wall_secs: 0.0,
            pid: None,
            message: None,
            created_unix_secs: 0.0,
            updated_unix_secs: 0.0,
            build: None,
        }
    }
}

impl RunState {
    /// The status a reader should show: a `running` or `paused` state whose process is gone is `interrupted`.
    pub fn effective_status(&self) -> RunStatus {
        match self.status {
            RunStatus::Running | RunStatus::Paused => match self.pid {
                Some(pid) if pid == std::process::id() || process_alive(pid) => self.status,
                _ => RunStatus::Interrupted,
            },
            other => other,
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn process_alive(pid: u32) -> bool {
    // On Linux a live process has /proc/<pid>; elsewhere we cannot tell cheaply, so assume alive.
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
