//! The Checkpoints panel: every checkpoint of the primary run with its metrics, size and integrity, best and
//! Pareto badges, the recommendation, Verify, Fork from here, and the selection sent to Compare.

use egui::{Color32, RichText, Ui};

use super::ERROR_COLOR;
use crate::app::checkpoints::{CheckpointsState, Integrity};
use crate::app::panels::PanelCommand;
use crate::app::preflight::format_bytes;
use crate::app::{AppCommand, WickApp};

/// Colour of the "best" badge.
const BEST_COLOR: Color32 = Color32::from_rgb(0xe0, 0xb0, 0x30);
/// Colour of the "Pareto" badge.
const PARETO_COLOR: Color32 = Color32::from_rgb(0x5a, 0x9b, 0xe6);
/// Colour of a verified checkpoint.
pub const OK_COLOR: Color32 = Color32::from_rgb(0x4c, 0xaf, 0x50);

/// Draws the Checkpoints panel.
pub fn checkpoints_ui(ui: &mut Ui, app: &mut WickApp, commands: &mut Vec<AppCommand>) {
    let Some(root) = app.primary_run() else {
        ui.label("Select a run in the Runs list to see its checkpoints.");
        return;
    };
    let run_id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let state = &mut app.panels.checkpoints;
    ui.horizontal(|ui| {
        ui.heading(format!("Checkpoints of {run_id}"));
        if state.is_loading() {
            ui.spinner();
        }
    });
    if let Some(error) = &state.error {
        ui.label(RichText::new(error).color(ERROR_COLOR));
    }
    let Some(report) = &state.report else {
        if state.error.is_none() {
            ui.label("Loading…");
        }
        return;
    };
    ui.label(RichText::new(&report.recommendation).strong());
    if let Some(judge) = &report.judge {
        ui.label(format!(
            "Scored by a judge trained on this data ({}): held-out accuracy {:.3}{} on {} images — FID and top-k are \
             as trustworthy as that.",
            judge.classes.join(", "),
            judge.accuracy,
            judge.mean_iou.map(|iou| format!(", box IoU {iou:.3}")).unwrap_or_default(),
            judge.heldout
        ));
    }
    ui.add_space(4.0);
    let has_rows = !report.rows.is_empty();
    ui.horizontal(|ui| {
        if ui
            .add_enabled(has_rows, egui::Button::new("Verify"))
            .on_hover_text(if report.kind == crate::interop::RunKind::Wick {
                "Check every file against its manifest (size and sha256)"
            } else {
                "Check every safetensors file (header, offsets, NaN / Inf), the shard index and trainer_state.json"
            })
            .clicked()
        {
            commands.push(AppCommand::Panels(PanelCommand::VerifyAll));
        }
        let picked = state.picked.len();
        let label = format!("Compare selected ({picked})");
        if ui
            .add_enabled(picked > 0, egui::Button::new(label))
            .on_hover_text("Tick 2–4 checkpoints (or 1 to compare gate scales)")
            .clicked()
        {
            commands.push(AppCommand::Panels(PanelCommand::CompareSelected));
        }
    });
    ui.add_space(4.0);
    if !has_rows {
        ui.label("No checkpoints yet.");
        return;
    }
    table_ui(ui, state, commands);
}

/// A painted ✔ (green) or ✘ (red), whose accessible label is that character: egui's default fonts have
/// neither glyph.
pub fn mark_ui(ui: &mut Ui, ok: bool) -> egui::Response {
    let size = ui.text_style_height(&egui::TextStyle::Body);
    let (rect, response) = ui.allocate_exact_size(egui::vec2(size, size), egui::Sense::hover());
    let label = if ok { "✔" } else { "✘" };
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, label));
    if ui.is_rect_visible(rect) {
        let r = rect.shrink(size * 0.18);
        let painter = ui.painter();
        if ok {
            let stroke = egui::Stroke::new(2.0, OK_COLOR);
            let points = [
                r.left_center() + egui::vec2(0.0, r.height() * 0.05),
                egui::pos2(r.left() + r.width() * 0.38, r.bottom()),
                r.right_top(),
            ];
            painter.line_segment([points[0], points[1]], stroke);
            painter.line_segment([points[1], points[2]], stroke);
        } else {
            let stroke = egui::Stroke::new(2.0, ERROR_COLOR);
            painter.line_segment([r.left_top(), r.right_bottom()], stroke);
            painter.line_segment([r.right_top(), r.left_bottom()], stroke);
        }
    }
    response
}

fn table_ui(ui: &mut Ui, state: &mut CheckpointsState, commands: &mut Vec<AppCommand>) {
    let Some(report) = &state.report else { return };
    let cell = |v: Option<f64>, digits: usize| {
        v.filter(|x| x.is_finite()).map_or("—".to_string(), |v| format!("{v:.digits$}"))
    };
    let mut toggles = Vec::new();
    let wick_run = report.kind == crate::interop::RunKind::Wick;
    egui::ScrollArea::both().auto_shrink([false, false]).show(ui, |ui| {
        let columns = report.columns.as_deref();
        let count = 6 + columns.map_or(9, |c| c.len());
        egui::Grid::new("checkpoints_table").striped(true).num_columns(count).spacing([14.0, 4.0]).show(ui, |ui| {
            let mut titles: Vec<String> = ["Checkpoint", "", "Stage", "Step", "Loss"].map(String::from).to_vec();
            match columns {
                Some(columns) => titles.extend(columns.iter().map(|m| m.display.clone())),
                None => {
                    titles.extend(["Val loss", "FID", "Top-1", "Top-2", "Top-3", "IoU", "Gate mean"].map(String::from))
                }
            }
            titles.extend(["Size", "", "Integrity"].map(String::from));
            for title in titles {
                ui.label(RichText::new(title).strong());
            }
            ui.end_row();
            for info in &report.rows {
                let row = &info.row;
                let eval = row.eval.as_ref();
                let mut picked = state.picked.contains(&info.dir);
                if !wick_run {
                    ui.label(&row.checkpoint).on_hover_text(info.dir.display().to_string());
                } else if ui.checkbox(&mut picked, &row.checkpoint).on_hover_text("Compare this checkpoint").changed() {
                    toggles.push(info.dir.clone());
                }
                ui.horizontal(|ui| {
                    if row.best {
                        ui.label(RichText::new("best").strong().color(BEST_COLOR))
                            .on_hover_text("The best checkpoint by the run's metric");
                    }
                    if row.pareto {
                        let front = match columns {
                            Some([a, b, ..]) => format!("On the {} / {} Pareto front", a.display, b.display),
                            _ => "On the FID / top-1 Pareto front".to_string(),
                        };
                        ui.label(RichText::new("Pareto").color(PARETO_COLOR)).on_hover_text(front);
                    }
                });
                ui.label(&row.stage);
                ui.label(row.step.to_string());
                ui.label(cell(row.loss, 4));
                match columns {
                    Some(columns) => {
                        for metric in columns {
                            let digits = if metric.name.contains("loss") { 4 } else { 3 };
                            let direction = match metric.mode {
                                crate::config::MetricMode::Min => "lower is better",
                                crate::config::MetricMode::Max => "higher is better",
                            };
                            ui.label(cell(eval.and_then(|e| e.metric(&metric.name)), digits))
                                .on_hover_text(format!("{} ({}): {direction}", metric.display, metric.name));
                        }
                    }
                    None => {
                        ui.label(cell(eval.and_then(|e| e.val_loss), 4)).on_hover_text(
                            "Validation loss: a fixed held-out batch, the same timesteps and noise at every evaluation",
                        );
                        ui.label(cell(eval.and_then(|e| e.fid), 3));
                        ui.label(cell(eval.and_then(|e| e.top1), 3));
                        ui.label(cell(eval.and_then(|e| e.top2), 3));
                        ui.label(cell(eval.and_then(|e| e.top3), 3));
                        ui.label(cell(eval.and_then(|e| e.iou), 3));
                        ui.label(cell(row.gate_mean, 4));
                    }
                }
                ui.label(format_bytes(info.size_bytes));
                if !wick_run {
                    ui.label("");
                } else if ui
                    .small_button("Fork from here")
                    .on_hover_text("A new Setup draft whose first stage starts from these weights")
                    .clicked()
                {
                    commands.push(AppCommand::Panels(PanelCommand::Fork(info.dir.clone())));
                }
                match state.integrity_of(&info.dir) {
                    Integrity::Unchecked => ui.weak("not yet checked"),
                    Integrity::Checking => ui.weak("checking…"),
                    Integrity::Verified => {
                        ui.horizontal(|ui| {
                            mark_ui(ui, true);
                            ui.label(RichText::new("verified").color(OK_COLOR));
                        })
                        .response
                    }
                    Integrity::Damaged(problems) => {
                        ui.horizontal(|ui| {
                            mark_ui(ui, false);
                            ui.label(RichText::new(problems.join("; ")).color(ERROR_COLOR));
                        })
                        .response
                    }
                };
                ui.end_row();
            }
        });
    });
    for dir in toggles {
        if !state.picked.remove(&dir) {
            state.picked.insert(dir);
        }
    }
}
