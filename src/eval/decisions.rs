//! Decisions taken from evaluation results: early stopping, the best checkpoint, the FID/top-1 Pareto
//! front, and a plain-words recommendation. Pure state machines, serializable so the trainer can save them
//! in a checkpoint's trainer.json and resume exactly.

use serde::{Deserialize, Serialize};

use super::{fmt_value, ordinal};
use crate::config::{metric_mode, EarlyStoppingConfig, MetricMode};
use crate::run::checkpoint::checkpoint_name;

/// Whether `value` is better than `best` by more than `min_delta` in direction `mode`.
fn better(mode: MetricMode, value: f64, best: f64, min_delta: f64) -> bool {
    match mode {
        MetricMode::Min => best - value > min_delta,
        MetricMode::Max => value - best > min_delta,
    }
}

/// What [`EarlyStopping::observe`] decided about one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EarlyStopDecision {
    /// The value is the new best.
    Improved,
    /// No improvement, but patience is not exhausted yet.
    NoImprovement {
        /// Consecutive evaluations without improvement, this one included.
        evals_without: u32,
        /// Evaluations without improvement that stop the stage.
        patience: u32,
    },
    /// Patience is exhausted: stop the stage.
    Stop {
        /// Best value seen (NaN when no evaluation gave a finite value).
        best: f64,
        /// Consecutive evaluations without improvement.
        evals_without: u32,
    },
}

/// Early stopping of a stage on one metric: stop after `patience` consecutive evaluations that do not
/// improve on the best by more than `min_delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    mode: MetricMode,
    patience: u32,
    min_delta: f64,
    /// Best finite value so far.
    best: Option<f64>,
    /// 1-based number of the evaluation that gave `best`.
    best_eval: u32,
    /// Evaluations observed.
    evals: u32,
    /// Consecutive evaluations without improvement.
    evals_without: u32,
}

impl EarlyStopping {
    /// A fresh state for a stage's rule. A patience of 0 is treated as 1 (validation rejects it anyway) and a
    /// negative or non-finite `min_delta` as 0.
    pub fn new(config: &EarlyStoppingConfig) -> Self {
        let min_delta = if config.min_delta.is_finite() { config.min_delta.max(0.0) } else { 0.0 };
        Self {
            mode: config.mode,
            patience: config.patience.max(1),
            min_delta,
            best: None,
            best_eval: 0,
            evals: 0,
            evals_without: 0,
        }
    }

    /// Records one evaluation's value and decides. Improvement means better than the best so far by more than
    /// `min_delta` in the configured direction (the first finite value always improves); a non-finite value
    /// counts as no improvement. Once patience is exhausted every further call returns
    /// [`EarlyStopDecision::Stop`] as well.
    pub fn observe(&mut self, value: f64) -> EarlyStopDecision {
        self.evals = self.evals.saturating_add(1);
        let improved = value.is_finite() && self.best.is_none_or(|b| better(self.mode, value, b, self.min_delta));
        if improved {
            self.best = Some(value);
            self.best_eval = self.evals;
            self.evals_without = 0;
            return EarlyStopDecision::Improved;
        }
        self.evals_without = self.evals_without.saturating_add(1);
        if self.evals_without >= self.patience {
            EarlyStopDecision::Stop { best: self.best.unwrap_or(f64::NAN), evals_without: self.evals_without }
        } else {
            EarlyStopDecision::NoImprovement { evals_without: self.evals_without, patience: self.patience }
        }
    }

    /// Best finite value so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Consecutive evaluations without improvement.
    pub fn evals_without_improvement(&self) -> u32 {
        self.evals_without
    }

    /// Evaluations observed so far.
    pub fn evals(&self) -> u32 {
        self.evals
    }

    /// Whether patience is exhausted.
    pub fn should_stop(&self) -> bool {
        self.evals_without >= self.patience
    }

    /// A sentence for the `early_stopped` event, e.g. `fid has not improved by more than 0.5 for 3
    /// evaluations (best 12.3 at the 4th evaluation); stopping the stage`. Before patience is exhausted it
    /// ends with the patience instead of "stopping the stage".
    pub fn reason(&self, metric: &str) -> String {
        let by =
            if self.min_delta > 0.0 { format!(" by more than {}", fmt_value(self.min_delta)) } else { String::new() };
        let plural = if self.evals_without == 1 { "evaluation" } else { "evaluations" };
        let best = match self.best {
            Some(b) => format!("best {} at the {} evaluation", fmt_value(b), ordinal(self.best_eval)),
            None => "no finite value yet".to_string(),
        };
        let end =
            if self.should_stop() { "stopping the stage".to_string() } else { format!("patience {}", self.patience) };
        format!("{metric} has not improved{by} for {} {plural} ({best}); {end}", self.evals_without)
    }
}

/// The best value of a metric and where it was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEntry {
    /// Metric value.
    pub value: f64,
    /// Global step of the evaluation.
    pub step: u64,
    /// Checkpoint directory name holding the weights of that step, once saved.
    pub checkpoint: Option<String>,
}

/// Tracks the best value of one metric over a run (strict improvement, no `min_delta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestTracker {
    metric: String,
    mode: MetricMode,
    best: Option<BestEntry>,
}

impl BestTracker {
    /// A tracker for `metric`, better in direction `mode`.
    pub fn new(metric: impl Into<String>, mode: MetricMode) -> Self {
        Self { metric: metric.into(), mode, best: None }
    }

    /// A tracker for one of the known metrics ([`crate::config::METRICS`]), in its natural direction; `None`
    /// for an unknown name.
    pub fn for_metric(metric: &str) -> Option<Self> {
        metric_mode(metric).map(|mode| Self::new(metric, mode))
    }

    /// Records the value evaluated at `step`; true when it is a new best (strictly better than the previous
    /// best, or the first finite value). Non-finite values are ignored.
    pub fn observe(&mut self, value: f64, step: u64) -> bool {
        if !value.is_finite() || self.best.as_ref().is_some_and(|b| !better(self.mode, value, b.value, 0.0)) {
            return false;
        }
        self.best = Some(BestEntry { value, step, checkpoint: None });
        true
    }

    /// Names the checkpoint holding the current best's weights (call it when that checkpoint is complete).
    /// Returns false, and does nothing, when there is no best yet.
    pub fn attach_checkpoint(&mut self, name: impl Into<String>) -> bool {
        match &mut self.best {
            Some(best) => {
                best.checkpoint = Some(name.into());
                true
            }
            None => false,
        }
    }

    /// The best so far.
    pub fn best(&self) -> Option<&BestEntry> {
        self.best.as_ref()
    }

    /// The tracked metric's name.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// Direction in which the metric improves.
    pub fn mode(&self) -> MetricMode {
        self.mode
    }
}

/// Indices (ascending) of the non-dominated points of `(fid, top1)` pairs, FID lower-better and top-1
/// higher-better. A point is dominated when another is at least as good in both and strictly better in one;
/// equal points do not dominate each other, so duplicates on the front are all kept. Points with a
/// non-finite coordinate are never on the front and dominate nothing.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let finite = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let dominates = |a: &(f64, f64), b: &(f64, f64)| a.0 <= b.0 && a.1 >= b.1 && (a.0 < b.0 || a.1 > b.1);
    (0..points.len())
        .filter(|&i| finite(&points[i]) && !points.iter().any(|q| finite(q) && dominates(q, &points[i])))
        .collect()
}

/// One checkpoint's row in the checkpoints table, as [`recommend`] needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    /// Global step (the checkpoint is `step-NNNNNNNN`).
    pub step: u64,
    /// Stage the checkpoint was saved in.
    pub stage: String,
    /// FID (judge) of its evaluation, when evaluated.
    pub fid: Option<f64>,
    /// Top-1 accuracy, when evaluated.
    pub top1: Option<f64>,
    /// Mean IoU, when evaluated.
    pub iou: Option<f64>,
    /// Mean |gate| over the adapter blocks (0 without adapter).
    pub gate_mean: f64,
}

/// The checkpoint [`recommend`] suggests, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Index into the rows of the recommended checkpoint; `None` when there are no rows.
    pub index: Option<usize>,
    /// The recommendation in plain words.
    pub message: String,
}

/// Gate means below this count as "the adapter is off" in a recommendation's caveat.
const GATE_OFF: f64 = 1e-3;

/// Suggests a checkpoint in plain words. Deterministic rule:
///
/// 1. among rows with a finite FID: the lowest FID, ties broken by the higher top-1, then the later step; it
///    says whether the row is on the FID/top-1 Pareto front, and names the front's best top-1 checkpoint
///    when that is another one;
/// 2. without any FID: the highest top-1 (ties: later step);
/// 3. without any evaluation: the newest checkpoint.
///
/// A caveat is added when the chosen checkpoint's gate mean is below 1e-3 while another's is not (its
/// adapter may be ignoring layouts).
pub fn recommend(rows: &[CheckpointRow]) -> Recommendation {
    let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
    let name = |i: usize| format!("{} (stage {})", checkpoint_name(rows[i].step), rows[i].stage);
    let total = rows.len();
    let Some(newest) = (0..total).max_by_key(|&i| rows[i].step) else {
        return Recommendation { index: None, message: "No checkpoints yet.".to_string() };
    };
    let with_fid: Vec<usize> = (0..total).filter(|&i| finite(rows[i].fid).is_some()).collect();
    let with_top1: Vec<usize> = (0..total).filter(|&i| finite(rows[i].top1).is_some()).collect();
    let among = |n: usize| {
        if n == total {
            format!("among {n} checkpoint{}", if n == 1 { "" } else { "s" })
        } else {
            format!("among {n} evaluated checkpoint{} of {total}", if n == 1 { "" } else { "s" })
        }
    };
    let extras = |i: usize, skip_top1: bool| {
        let mut parts = String::new();
        if let (false, Some(t)) = (skip_top1, finite(rows[i].top1)) {
            parts.push_str(&format!(", top-1 {}", fmt_value(t)));
        }
        if let Some(iou) = finite(rows[i].iou) {
            parts.push_str(&format!(", IoU {}", fmt_value(iou)));
        }
        parts
    };

    let (index, mut message) = if !with_fid.is_empty() {
        let key = |i: usize| (finite(rows[i].fid).unwrap_or(f64::INFINITY), finite(rows[i].top1));
        let best = with_fid
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let ((fa, ta), (fb, tb)) = (key(a), key(b));
                fa.total_cmp(&fb)
                    .then_with(|| tb.unwrap_or(f64::NEG_INFINITY).total_cmp(&ta.unwrap_or(f64::NEG_INFINITY)))
                    .then_with(|| rows[b].step.cmp(&rows[a].step))
            })
            .unwrap_or(newest);
        // The Pareto front over rows with both FID and top-1.
        let both: Vec<usize> = with_fid.iter().copied().filter(|&i| finite(rows[i].top1).is_some()).collect();
        let points: Vec<(f64, f64)> =
            both.iter().map(|&i| (key(i).0, finite(rows[i].top1).unwrap_or(f64::NAN))).collect();
        let front: Vec<usize> = pareto_front(&points).into_iter().map(|k| both[k]).collect();
        let mut message = format!(
            "Use {}: lowest FID {} {}{}",
            name(best),
            fmt_value(key(best).0),
            among(with_fid.len()),
            extras(best, false)
        );
        if front.contains(&best) {
            message.push_str(", and it is on the FID/top-1 Pareto front.");
        } else {
            message.push('.');
        }
        let top1_of = |i: usize| finite(rows[i].top1).unwrap_or(f64::NEG_INFINITY);
        let most_accurate = front
            .iter()
            .copied()
            .max_by(|&a, &b| top1_of(a).total_cmp(&top1_of(b)).then_with(|| key(b).0.total_cmp(&key(a).0)));
        if let Some(other) = most_accurate.filter(|&o| o != best && top1_of(o) > top1_of(best)) {
            message.push_str(&format!(
                " For class accuracy, {} has top-1 {} at FID {}.",
                name(other),
                fmt_value(top1_of(other)),
                fmt_value(key(other).0)
            ));
        }
        (best, message)
    } else if !with_top1.is_empty() {
        let top1_of = |i: usize| finite(rows[i].top1).unwrap_or(f64::NEG_INFINITY);
        let best = with_top1
            .iter()
            .copied()
            .max_by(|&a, &b| top1_of(a).total_cmp(&top1_of(b)).then_with(|| rows[a].step.cmp(&rows[b].step)))
            .unwrap_or(newest);
        let message = format!(
            "Use {}: highest top-1 {} {} (no checkpoint has an FID){}.",
            name(best),
            fmt_value(top1_of(best)),
            among(with_top1.len()),
            extras(best, true)
        );
        (best, message)
    } else {
        let message = format!(
            "No checkpoint has been evaluated yet; the newest is {}, {} checkpoint{} in all.",
            name(newest),
            total,
            if total == 1 { "" } else { "s" }
        );
        (newest, message)
    };
    let gate = rows[index].gate_mean;
    if gate.abs() < GATE_OFF && rows.iter().any(|r| r.gate_mean.abs() >= GATE_OFF) {
        message.push_str(&format!(
            " Note: its adapter gates are near zero (mean {}), so it may ignore layouts.",
            fmt_value(gate)
        ));
    }
    Recommendation { index: Some(index), message }
}

/// Suggests a checkpoint by one declared metric, for tasks other than shapes. `values[i]` is row `i`'s value
/// of `metric` (shown as `display`), better in direction `mode`. Rule: the best finite value (ties: the later
/// step); without any, the newest checkpoint.
pub fn recommend_by_metric(
    steps_and_stages: &[(u64, String)],
    values: &[Option<f64>],
    display: &str,
    mode: MetricMode,
) -> Recommendation {
    let named: Vec<(u64, String)> = steps_and_stages
        .iter()
        .map(|(step, stage)| (*step, format!("{} (stage {stage})", checkpoint_name(*step))))
        .collect();
    recommend_named_by_metric(&named, values, display, mode)
}

/// [`recommend_by_metric`] over checkpoints named as their run names them (`checkpoint-40` of a
/// Hugging Face run): `steps_and_names[i]` is row `i`'s step and name.
pub fn recommend_named_by_metric(
    steps_and_stages: &[(u64, String)],
    values: &[Option<f64>],
    display: &str,
    mode: MetricMode,
) -> Recommendation {
    let name = |i: usize| steps_and_stages[i].1.clone();
    let total = steps_and_stages.len();
    let Some(newest) = (0..total).max_by_key(|&i| steps_and_stages[i].0) else {
        return Recommendation { index: None, message: "No checkpoints yet.".to_string() };
    };
    let finite: Vec<usize> =
        (0..total).filter(|&i| values.get(i).copied().flatten().is_some_and(f64::is_finite)).collect();
    let value = |i: usize| values[i].unwrap_or(f64::NAN);
    let best = finite.iter().copied().reduce(|a, b| {
        let (va, vb) = (value(a), value(b));
        let b_better = match mode {
            MetricMode::Min => vb < va,
            MetricMode::Max => vb > va,
        };
        if b_better || (vb == va && steps_and_stages[b].0 > steps_and_stages[a].0) {
            b
        } else {
            a
        }
    });
    match best {
        Some(best) => {
            let word = match mode {
                MetricMode::Min => "lowest",
                MetricMode::Max => "highest",
            };
            let among = if finite.len() == total {
                format!("among {total} checkpoint{}", if total == 1 { "" } else { "s" })
            } else {
                format!("among {} evaluated checkpoints of {total}", finite.len())
            };
            Recommendation {
                index: Some(best),
                message: format!("Use {}: {word} {display} {} {among}.", name(best), fmt_value(value(best))),
            }
        }
        None => Recommendation {
            index: Some(newest),
            message: format!(
                "No checkpoint has a {display} yet; the newest is {}, {total} checkpoint{} in all.",
                name(newest),
                if total == 1 { "" } else { "s" }
            ),
        },
    }
}

/// Indices of the non-dominated rows of two metrics with their own directions (see [`pareto_front`]).
pub fn pareto_front_of(points: &[(f64, f64)], modes: (MetricMode, MetricMode)) -> Vec<usize> {
    let flip = |v: f64, mode: MetricMode| if mode == MetricMode::Min { v } else { -v };
    // pareto_front wants (lower-better, higher-better).
    let mapped: Vec<(f64, f64)> = points.iter().map(|&(a, b)| (flip(a, modes.0), -flip(b, modes.1))).collect();
    pareto_front(&mapped)
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn the_recommendation_follows_the_declared_direction() {
        let rows: Vec<(u64, String)> = [10, 20, 30].iter().map(|&s| (s, "long".to_string())).collect();
        let values = [Some(0.5), Some(0.9), None];
        let up = recommend_by_metric(&rows, &values, "exact match", MetricMode::Max);
        assert_eq!(up.index, Some(1));
        assert!(up.message.contains("highest exact match 0.9") && up.message.contains("2 evaluated"), "{}", up.message);
        let down = recommend_by_metric(&rows, &values, "bits/char", MetricMode::Min);
        assert_eq!(down.index, Some(0));
        let none = recommend_by_metric(&rows, &[None, None, None], "bits/char", MetricMode::Min);
        assert_eq!(none.index, Some(2));
    }

    #[test]
    fn pareto_with_two_higher_better_metrics() {
        let points = [(0.5, 0.5), (0.9, 0.1), (0.4, 0.4), (0.1, 0.9)];
        assert_eq!(pareto_front_of(&points, (MetricMode::Max, MetricMode::Max)), vec![0, 1, 3]);
        assert_eq!(pareto_front_of(&points, (MetricMode::Min, MetricMode::Min)), vec![1, 2, 3]);
    }
}
