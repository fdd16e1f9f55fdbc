//! The checkpoint table of a run — step, stage, loss, validation loss, evaluation metrics, gate mean, best and Pareto marks —
//! and the recommendation of which checkpoint to use. `wick report` prints it; the GUI shows the same rows.

use std::collections::BTreeMap;

use anyhow::Result;

use super::decisions::{pareto_front, recommend, CheckpointRow, Recommendation};
use crate::run::atomic::read_jsonl;
use crate::run::events::EvalRecord;
use crate::run::RunDir;

/// One checkpoint of a run with what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// Directory name.
    pub checkpoint: String,
    /// Global step.
    pub step: u64,
    /// Stage of the metrics logged at that step (or of the evaluation).
    pub stage: String,
    /// Training loss logged at that step.
    pub loss: Option<f64>,
    /// The evaluation at that step, when there was one.
    pub eval: Option<EvalRecord>,
    /// Mean |gate| logged at that step.
    pub gate_mean: Option<f64>,
    /// Whether state.json names it the best checkpoint.
    pub best: bool,
    /// Whether it is on the FID / top-1 Pareto front.
    pub pareto: bool,
}

/// Every sealed checkpoint of `dir` with its metrics, and the recommendation.
pub fn checkpoint_report(dir: &RunDir) -> Result<(Vec<ReportRow>, Recommendation)> {
    let metrics: BTreeMap<u64, _> = dir.read_metrics()?.into_iter().map(|m| (m.step, m)).collect();
    let mut evals: BTreeMap<u64, EvalRecord> = BTreeMap::new();
    for record in read_jsonl::<EvalRecord>(&dir.evals_path())? {
        evals.insert(record.step, record);
    }
    let best = dir.read_state().ok().and_then(|s| s.best).map(|b| b.checkpoint);
    let mut rows: Vec<ReportRow> = dir
        .checkpoints()?
        .into_iter()
        .filter(|c| c.sealed)
        .map(|c| {
            let m = metrics.get(&c.step);
            let eval = evals.get(&c.step).cloned();
            let stage =
                m.map(|m| m.stage.clone()).or_else(|| eval.as_ref().map(|e| e.stage.clone())).unwrap_or_default();
            ReportRow {
                best: best.as_deref() == Some(c.name.as_str()),
                checkpoint: c.name,
                step: c.step,
                stage,
                loss: m.and_then(|m| m.loss),
                gate_mean: m.map(|m| m.gate_mean),
                eval,
                pareto: false,
            }
        })
        .collect();
    let points: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let e = r.eval.as_ref();
            (e.and_then(|e| e.fid).unwrap_or(f64::NAN), e.and_then(|e| e.top1).unwrap_or(f64::NAN))
        })
        .collect();
    for index in pareto_front(&points) {
        rows[index].pareto = true;
    }
    let decision_rows: Vec<CheckpointRow> = rows
        .iter()
        .map(|r| CheckpointRow {
            step: r.step,
            stage: r.stage.clone(),
            fid: r.eval.as_ref().and_then(|e| e.fid),
            top1: r.eval.as_ref().and_then(|e| e.top1),
            iou: r.eval.as_ref().and_then(|e| e.iou),
            gate_mean: r.gate_mean.unwrap_or(0.0),
        })
        .collect();
    let recommendation = recommend(&decision_rows);
    Ok((rows, recommendation))
}

/// The table as aligned text, one line per checkpoint, then the recommendation.
pub fn format_report(rows: &[ReportRow], recommendation: &Recommendation) -> String {
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let mut out = format!(
        "{:<15} {:>7} {:<10} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>8}  marks\n",
        "checkpoint", "step", "stage", "loss", "val_loss", "fid", "top1", "top2", "top3", "iou", "gate"
    );
    for r in rows {
        let e = r.eval.as_ref();
        let marks = [(r.best, "best"), (r.pareto, "pareto")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, m)| *m)
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "{:<15} {:>7} {:<10} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>8}  {}\n",
            r.checkpoint,
            r.step,
            r.stage,
            cell(r.loss, 4),
            cell(e.and_then(|e| e.val_loss), 4),
            cell(e.and_then(|e| e.fid), 3),
            cell(e.and_then(|e| e.top1), 3),
            cell(e.and_then(|e| e.top2), 3),
            cell(e.and_then(|e| e.top3), 3),
            cell(e.and_then(|e| e.iou), 3),
            cell(r.gate_mean, 4),
            marks
        ));
    }
    out.push('\n');
    out.push_str(&recommendation.message);
    out.push('\n');
    out
}
