//! What the trainer reports: [`TrainEvent`] and the records written to metrics.jsonl and events.jsonl.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One logged training step: a line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Global step after this step was applied (1-based).
    pub step: u64,
    /// Stage name.
    pub stage: String,
    /// Seconds of training so far in this run (summed over sessions: resumes continue the clock).
    pub wall_secs: f64,
    /// Training loss of the step (mean over micro-batches); `None` when it was not finite.
    pub loss: Option<f64>,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Global L2 norm of the trainable parameters' gradients before clipping; `None` when not finite.
    pub grad_norm: Option<f64>,
    /// Each adapter block's raw gate value.
    pub gates: Vec<f64>,
    /// Mean of |gate| over the blocks (0 without adapter).
    pub gate_mean: f64,
    /// Training throughput over the last logging interval.
    pub samples_per_s: f64,
    /// Resident memory of the process, when known.
    pub rss_bytes: Option<u64>,
    /// GPU memory in use, when known.
    pub gpu_mem_bytes: Option<u64>,
    /// A task's other named scalars of this step (`group/name`); absent from runs that have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scalars: BTreeMap<String, f64>,
}

/// One evaluation: a line of evals.jsonl.
///
/// The shapes task's metrics have fields of their own (as in every run recorded before tasks); any other
/// task's metrics sit beside them at the top level of the line, read into [`EvalRecord::other`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Global step evaluated (a checkpoint of the same step exists).
    pub step: u64,
    /// Stage name.
    pub stage: String,
    /// FID (judge features) of the generated vs real images; `None` when it could not be computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
    /// Fraction of generated images whose requested class is the judge's top-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    /// … within the judge's top 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top2: Option<f64>,
    /// … within the judge's top 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top3: Option<f64>,
    /// Mean IoU of requested and judged main-object boxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    /// Mean training loss of the steps logged since the previous evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Validation loss: the flow-matching loss of the weights samples are drawn with, on a fixed held-out
    /// batch with fixed timesteps and noise (classes and layouts kept) — the same inputs at every evaluation,
    /// so unlike the training loss it is free of batch-to-batch noise. `None` in runs recorded before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Images generated and judged.
    pub samples: usize,
    /// Seconds spent sampling on the trainer thread.
    pub sample_secs: f64,
    /// Seconds the evaluation took in all (sampling + judging + FID).
    pub eval_secs: f64,
    /// The stage's early-stopping counters after this evaluation, when it has a rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<super::state::EarlyStopState>,
    /// Metrics of other tasks by name (`null` when not finite).
    #[serde(flatten)]
    pub other: BTreeMap<String, Option<f64>>,
}

impl EvalRecord {
    /// The value of a metric by name: `fid`, `top1`, `top2`, `top3`, `iou`, `loss`, `val_loss`, or any
    /// other task's metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "fid" => self.fid,
            "top1" => self.top1,
            "top2" => self.top2,
            "top3" => self.top3,
            "iou" => self.iou,
            "loss" => self.loss,
            "val_loss" => self.val_loss,
            other => self.other.get(other).copied().flatten(),
        }
    }

    /// Sets a metric by name (see [`Self::metric`]); `None` records it as missing.
    pub fn set_metric(&mut self, name: &str, value: Option<f64>) {
        match name {
            "fid" => self.fid = value,
            "top1" => self.top1 = value,
            "top2" => self.top2 = value,
            "top3" => self.top3 = value,
            "iou" => self.iou = value,
            "loss" => self.loss = value,
            "val_loss" => self.val_loss = value,
            other => {
                self.other.insert(other.to_string(), value);
            }
        }
    }
}

/// Everything the trainer reports, in order. Metrics go to metrics.jsonl; all others to events.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The trainer started (fresh or resumed) and knows its plan.
    Started {
        /// Global step training starts from.
        step: u64,
        /// Steps in the whole plan.
        total_steps: u64,
        /// Whether this continues from a checkpoint.
        resumed_from: Option<String>,
        /// Human-readable summary.
        message: String,
    },
    /// A stage began.
    StageStarted {
        /// Global step of the stage's first step.
        step: u64,
        /// Stage name.
        stage: String,
        /// Stage index in the plan.
        index: usize,
        /// Planned end step (exclusive).
        end_step: u64,
        /// Human-readable summary (what trains, how many parameters).
        message: String,
    },
    /// A stage ended (all its steps done).
    StageFinished {
        /// Global step after the stage's last step.
        step: u64,
        /// Stage name.
        stage: String,
        /// Human-readable summary.
        message: String,
    },
    /// Metrics of a logged step.
    Metrics(MetricsRecord),
    /// Results of an evaluation (goes to evals.jsonl).
    Eval(EvalRecord),
    /// A checkpoint became the best by the run's chosen metric; it is kept whatever `keep_last` prunes.
    BestCheckpoint {
        /// Global step of the checkpoint.
        step: u64,
        /// Checkpoint directory name.
        checkpoint: String,
        /// The metric.
        metric: String,
        /// Its value.
        value: f64,
        /// Human-readable summary.
        message: String,
    },
    /// A stage stopped early because its metric stopped improving; the next stage (if any) starts.
    EarlyStopped {
        /// Global step at which the stage ended.
        step: u64,
        /// Stage name.
        stage: String,
        /// Why.
        message: String,
    },
    /// An adapter gate alert: collapse, over-activation or sudden convergence.
    GateAlert {
        /// Global step.
        step: u64,
        /// `collapse`, `over_activation` or `sudden_convergence`.
        alert: crate::eval::GateAlertKind,
        /// What was seen.
        message: String,
    },
    /// A fixed-seed sample grid was written.
    SamplesSaved {
        /// Global step.
        step: u64,
        /// The PNG, relative to the run directory.
        path: String,
        /// Human-readable summary.
        message: String,
    },
    /// A checkpoint is complete on disk.
    CheckpointSaved {
        /// Global step of the checkpoint.
        step: u64,
        /// Stage name.
        stage: String,
        /// Checkpoint directory name, e.g. `step-00000400`.
        checkpoint: String,
        /// Total size of its files.
        bytes: u64,
        /// Human-readable summary.
        message: String,
    },
    /// A checkpoint was deleted by the `keep_last` policy.
    CheckpointPruned {
        /// Global step when pruned.
        step: u64,
        /// Checkpoint directory name.
        checkpoint: String,
        /// Why.
        message: String,
    },
    /// A step produced a non-finite loss or gradient and was not applied.
    NanDetected {
        /// Global step of the bad step.
        step: u64,
        /// Stage name.
        stage: String,
        /// Bad steps in a row so far.
        consecutive: u32,
        /// What was non-finite.
        message: String,
    },
    /// A non-finite step sent the run back to its newest checkpoint, at a lower learning rate
    /// (`on_nan = "rollback"`).
    RolledBack {
        /// Global step of the non-finite step.
        step: u64,
        /// Global step training continues from: the checkpoint's.
        to_step: u64,
        /// The checkpoint returned to.
        checkpoint: String,
        /// Index of the stage training continues in.
        stage_index: usize,
        /// Name of that stage.
        stage: String,
        /// Global step at which that stage started.
        stage_start_step: u64,
        /// The learning-rate multiplier from now on (the product of every rollback's factor).
        lr_scale: f64,
        /// Rollbacks in this run so far, this one included.
        rollbacks: u32,
        /// Human-readable summary.
        message: String,
    },
    /// A recoverable problem worth a user's attention (e.g. a box normalised).
    Warning {
        /// Global step.
        step: u64,
        /// What happened.
        message: String,
    },
    /// Training paused at a step boundary.
    Paused {
        /// Global step.
        step: u64,
        /// Human-readable summary.
        message: String,
    },
    /// Training resumed after a pause.
    Resumed {
        /// Global step.
        step: u64,
        /// Human-readable summary.
        message: String,
    },
    /// Training stopped on request, with a checkpoint; the run can be resumed.
    Stopped {
        /// Global step.
        step: u64,
        /// Human-readable summary.
        message: String,
    },
    /// Every stage is done.
    Finished {
        /// Final global step.
        step: u64,
        /// Human-readable summary.
        message: String,
    },
    /// The run failed; `message` says why.
    Failed {
        /// Global step when it failed.
        step: u64,
        /// The reason.
        message: String,
    },
}

impl TrainEvent {
    /// Global step the event refers to.
    pub fn step(&self) -> u64 {
        match self {
            Self::Metrics(m) => m.step,
            Self::Eval(e) => e.step,
            Self::BestCheckpoint { step, .. }
            | Self::EarlyStopped { step, .. }
            | Self::GateAlert { step, .. }
            | Self::SamplesSaved { step, .. }
            | Self::Started { step, .. }
            | Self::StageStarted { step, .. }
            | Self::StageFinished { step, .. }
            | Self::CheckpointSaved { step, .. }
            | Self::CheckpointPruned { step, .. }
            | Self::NanDetected { step, .. }
            | Self::RolledBack { step, .. }
            | Self::Warning { step, .. }
            | Self::Paused { step, .. }
            | Self::Resumed { step, .. }
            | Self::Stopped { step, .. }
            | Self::Finished { step, .. }
            | Self::Failed { step, .. } => *step,
        }
    }

    /// Whether the run's trainer ends after this event.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Stopped { .. } | Self::Finished { .. } | Self::Failed { .. })
    }

    /// The event's message (for metrics, a one-line summary).
    pub fn message(&self) -> String {
        match self {
            Self::Metrics(m) => format!(
                "step {} loss {} lr {:.3e}",
                m.step,
                m.loss.map_or("non-finite".to_string(), |l| format!("{l:.5}")),
                m.lr
            ),
            Self::Eval(e) => {
                let show = |name: &str, value: Option<f64>| {
                    format!("{name} {}", value.map_or("-".to_string(), |v| format!("{v:.3}")))
                };
                let mut parts: Vec<String> = Vec::new();
                if e.fid.is_some() || e.top1.is_some() || e.iou.is_some() {
                    parts.extend([show("fid", e.fid), show("top1", e.top1), show("iou", e.iou)]);
                }
                parts.extend(e.other.iter().map(|(name, value)| show(name, *value)));
                if parts.is_empty() {
                    parts.push(show("val_loss", e.val_loss));
                }
                format!("eval at step {}: {} ({:.1} s)", e.step, parts.join(" "), e.eval_secs)
            }
            Self::BestCheckpoint { message, .. }
            | Self::EarlyStopped { message, .. }
            | Self::GateAlert { message, .. }
            | Self::SamplesSaved { message, .. }
            | Self::Started { message, .. }
            | Self::StageStarted { message, .. }
            | Self::StageFinished { message, .. }
            | Self::CheckpointSaved { message, .. }
            | Self::CheckpointPruned { message, .. }
            | Self::NanDetected { message, .. }
            | Self::RolledBack { message, .. }
            | Self::Warning { message, .. }
            | Self::Paused { message, .. }
            | Self::Resumed { message, .. }
            | Self::Stopped { message, .. }
            | Self::Finished { message, .. }
            | Self::Failed { message, .. } => message.clone(),
        }
    }
}

/// A line of events.jsonl: the event with the wall-clock time it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Seconds since the Unix epoch.
    pub unix_secs: f64,
    /// The event.
    #[serde(flatten)]
    pub event: TrainEvent,
}
