//! The Runs panel: every run in the runs folder (and opened from elsewhere), to view, overlay and resume.

use egui::{RichText, Ui};

use crate::app::workers::RunSummary;
use crate::app::{AppCommand, WickApp};

use super::{status_color, ERROR_COLOR};

/// Draws the runs list.
pub fn runs_ui(ui: &mut Ui, app: &WickApp, commands: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        ui.heading("Runs");
        if ui.button("Open run folder…").on_hover_text("View a run directory from anywhere").clicked() {
            commands.push(AppCommand::OpenRunFolder);
        }
    });
    ui.weak("Click to view, Ctrl-click to overlay");
    ui.separator();
    if app.runs.is_empty() {
        ui.weak(format!("No runs in {} yet", app.runs_dir.display()));
        return;
    }
    let training = app.is_training();
    egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
        for run in &app.runs {
            run_row_ui(ui, app, run, training, commands);
            ui.separator();
        }
    });
}

fn run_row_ui(ui: &mut Ui, app: &WickApp, run: &RunSummary, training: bool, commands: &mut Vec<AppCommand>) {
    let selected = app.selected.contains(&run.root);
    let status = app.status_of(&run.root).unwrap_or(run.status);
    let title = ui.selectable_label(selected, RichText::new(&run.id).strong());
    let title = title.on_hover_text(run.root.display().to_string());
    if title.clicked() {
        let add = ui.input(|i| i.modifiers.command || i.modifiers.ctrl);
        commands.push(AppCommand::SelectRun { root: run.root.clone(), add });
        if app.persisted.panel == crate::app::state::Panel::Setup {
            commands.push(AppCommand::ShowPanel(crate::app::state::Panel::Live));
        }
    }
    if run.kind != crate::interop::RunKind::Wick {
        external_row_ui(ui, app, run);
        return;
    }
    ui.horizontal(|ui| {
        ui.label(RichText::new(status.as_str()).color(status_color(status)));
        ui.weak(format!("{}/{}", run.global_step, run.total_steps));
        if let Some(best) = &run.best {
            ui.label(format!("best {} {:.3}", best.metric, best.value));
        }
        if run.external {
            ui.weak("(external)");
        }
    });
    ui.horizontal(|ui| {
        ui.weak(format!("started {}", format_unix(run.created_unix_secs)));
        if run.resumable() && !training {
            let resume = ui.small_button("Resume run").on_hover_text("Continue from the newest intact checkpoint");
            if resume.clicked() {
                commands.push(AppCommand::ResumeRun(run.root.clone()));
            }
        }
    });
    if let Some(holder) = &run.locked_by {
        ui.label(RichText::new(format!("Locked: trained by {holder} — read-only here")).small())
            .on_hover_text("Another Wick process holds this run's lock: it can be watched here, not resumed");
    }
    if let Some(message) = run.message.as_ref().filter(|_| status == crate::run::RunStatus::Failed) {
        ui.label(RichText::new(message).color(ERROR_COLOR).small());
    }
}

/// Colour of an external run's kind badge.
const KIND_COLOR: egui::Color32 = egui::Color32::from_rgb(0xc0, 0x8a, 0xe0);

/// The second and third lines of a run another tool wrote: its kind, last step, number of series once
/// loaded, and when its files last changed.
fn external_row_ui(ui: &mut Ui, app: &WickApp, run: &RunSummary) {
    let store = app.stores.get(&run.root);
    ui.horizontal(|ui| {
        ui.label(RichText::new(run.kind.name()).color(KIND_COLOR))
            .on_hover_text("Written by another tool; Wick reads it as it is written, and never writes into it");
        let last_step = store
            .and_then(|s| s.series.values().filter_map(|series| series.steps.last().copied()).reduce(f64::max))
            .map(|s| s as u64)
            .unwrap_or(run.global_step);
        ui.weak(format!("step {last_step}"));
        if let Some(store) = store {
            ui.weak(format!("{} series", store.series.len()));
        }
        if run.external {
            ui.weak("(external)");
        }
    });
    ui.weak(format!("updated {}", format_unix(run.updated_unix_secs)));
}

/// `2026-05-01 14:03 UTC` for Unix seconds.
pub fn format_unix(unix_secs: f64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "—".to_string())
}
