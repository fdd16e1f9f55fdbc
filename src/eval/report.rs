//! The checkpoint table of a run — step, stage, loss, validation loss, evaluation metrics, gate mean, best and Pareto marks —
//! and the recommendation of which checkpoint to use. `wick report` prints it; the GUI shows the same rows.

use std::collections::BTreeMap;

use anyhow::Result;

use super::decisions::{pareto_front, pareto_front_of, recommend, recommend_by_metric, CheckpointRow, Recommendation};
use crate::run::atomic::read_jsonl;
use crate::run::events::EvalRecord;
use crate::run::RunDir;
use crate::task::{MetricSpec, TaskDescriptor};

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
    /// Whether it is on the Pareto front of the task's first two metrics (FID / top-1 for shapes).
    pub pareto: bool,
}

/// The metric columns of a run's table: its task's declared metrics (val_loss first, as the table has
/// always shown it), for shapes FID, top-1/2/3 and IoU.
pub fn report_columns(task: &TaskDescriptor) -> Vec<MetricSpec> {
    let mut columns: Vec<MetricSpec> = task.metrics.iter().filter(|m| m.name == "val_loss").cloned().collect();
    columns.extend(task.metrics.iter().filter(|m| m.name != "val_loss").cloned());
    columns
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
    let task = dir.task_descriptor();
    if let Some(task) = task.filter(|t| t.kind != "shapes") {
        let config = dir.config().ok();
        let recommendation = recommend_for_task(&mut rows, &task, config.as_ref());
        return Ok((rows, recommendation));
    }
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

/// Pareto marks over the task's first two metrics and the recommendation by the run's best metric (the
/// task's headline metric when the config names another task's).
fn recommend_for_task(
    rows: &mut [ReportRow],
    task: &TaskDescriptor,
    config: Option<&crate::config::RunConfig>,
) -> Recommendation {
    let value = |r: &ReportRow, name: &str| r.eval.as_ref().and_then(|e| e.metric(name));
    if let [first, second, ..] = task.metrics.as_slice() {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (value(r, &first.name).unwrap_or(f64::NAN), value(r, &second.name).unwrap_or(f64::NAN)))
            .collect();
        for index in pareto_front_of(&points, (first.mode, second.mode)) {
            rows[index].pareto = true;
        }
    }
    let chosen = config
        .and_then(|c| task.metric(&c.eval.best_metric).map(|m| (m, c.eval.best_mode)))
        .map(|(m, mode)| MetricSpec { mode: mode.unwrap_or(m.mode), ..m })
        .or_else(|| task.metrics.first().cloned());
    let steps: Vec<(u64, String)> = rows.iter().map(|r| (r.step, r.stage.clone())).collect();
    let Some(metric) = chosen else {
        return recommend_by_metric(&steps, &vec![None; rows.len()], "metric", crate::config::MetricMode::Min);
    };
    let values: Vec<Option<f64>> = rows.iter().map(|r| value(r, &metric.name)).collect();
    recommend_by_metric(&steps, &values, &metric.display, metric.mode)
}

/// A row's marks: `best`, `pareto`, both or none.
fn marks(row: &ReportRow) -> String {
    [(row.best, "best"), (row.pareto, "pareto")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table as aligned text with the task's metric columns, one line per checkpoint, then the
/// recommendation.
pub fn format_report_for(
    columns: &[MetricSpec],
    rows: &[ReportRow],
    recommendation: &Recommendation,
    with_gates: bool,
) -> String {
    let cell = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let width = |m: &MetricSpec| m.name.len().max(8);
    let mut out = format!("{:<15} {:>7} {:<10} {:>8}", "checkpoint", "step", "stage", "loss");
    for m in columns {
        out.push_str(&format!(" {:>w$}", m.name, w = width(m)));
    }
    if with_gates {
        out.push_str(&format!(" {:>8}", "gate"));
    }
    out.push_str("  marks\n");
    for r in rows {
        let marks = marks(r);
        out.push_str(&format!("{:<15} {:>7} {:<10} {:>8}", r.checkpoint, r.step, r.stage, cell(r.loss, 4)));
        for m in columns {
            let digits = if m.name.contains("loss") { 4 } else { 3 };
            out.push_str(&format!(
                " {:>w$}",
                cell(r.eval.as_ref().and_then(|e| e.metric(&m.name)), digits),
                w = width(m)
            ));
        }
        if with_gates {
            out.push_str(&format!(" {:>8}", cell(r.gate_mean, 4)));
        }
        out.push_str(&format!("  {marks}\n"));
    }
    out.push('\n');
    out.push_str(&recommendation.message);
    out.push('\n');
    out
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
        let marks = marks(r);
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
