//! The top bar: current run and status, Start / Pause / Resume / Stop, device, progress and ETA.

use egui::{Button, ProgressBar, RichText, Ui};

use crate::app::{AppCommand, WickApp};
use crate::run::RunStatus;

use super::{format_duration, status_color};

/// Draws the top bar.
pub fn top_bar_ui(ui: &mut Ui, app: &mut WickApp, commands: &mut Vec<AppCommand>) {
    let training = app.is_training();
    let current = app.current_run().map(|p| p.to_path_buf());
    let status = current.as_deref().and_then(|root| app.status_of(root));
    let live_status = app.session.as_ref().filter(|s| s.is_active()).map(|s| s.status);
    let stop_requested = app.session.as_ref().is_some_and(|s| s.stop_requested && s.is_active());

    ui.horizontal(|ui| {
        ui.heading("Wick");
        ui.separator();
        match &current {
            Some(root) => {
                let id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ui.label(RichText::new(id).strong());
                let kind = app.summary(root).map(|s| s.kind).unwrap_or_default();
                if kind != crate::interop::RunKind::Wick {
                    ui.weak(format!("{} run (read only)", kind.name()));
                } else if let Some(status) = status {
                    ui.label(RichText::new(status.as_str()).color(status_color(status)));
                }
            }
            None => {
                ui.weak("no run");
            }
        }
        ui.separator();

        let blocker = app.setup.start_blocker();
        let start_enabled = !training && blocker.is_none();
        let start = ui.add_enabled(start_enabled, Button::new("Start"));
        let start = match (&blocker, training) {
            (_, true) => start.on_disabled_hover_text("A run is training — stop it first"),
            (Some(why), false) => start.on_disabled_hover_text(why),
            (None, false) => start.on_hover_text("Start a new run from the Setup panel's config"),
        };
        if start.clicked() {
            commands.push(AppCommand::Start);
        }

        let pause_enabled = live_status == Some(RunStatus::Running) && !stop_requested;
        if ui.add_enabled(pause_enabled, Button::new("Pause")).clicked() {
            commands.push(AppCommand::Pause);
        }

        let resumable_root = current
            .as_ref()
            .filter(|_| !training)
            .filter(|root| app.summary(root).is_some_and(|s| s.resumable()))
            .cloned();
        let resume_enabled = live_status == Some(RunStatus::Paused) || resumable_root.is_some();
        let resume = ui
            .add_enabled(resume_enabled, Button::new("Resume"))
            .on_hover_text("Continue a paused run, or a stopped/interrupted run from its newest checkpoint");
        if resume.clicked() {
            match (live_status, resumable_root) {
                (Some(RunStatus::Paused), _) => commands.push(AppCommand::Resume),
                (_, Some(root)) => commands.push(AppCommand::ResumeRun(root)),
                _ => {}
            }
        }

        let stop_enabled = training && !stop_requested;
        let stop = ui
            .add_enabled(stop_enabled, Button::new("Stop"))
            .on_hover_text("Save a checkpoint at the next step boundary and stop (the run stays resumable)");
        if stop.clicked() {
            commands.push(AppCommand::Stop);
        }
        ui.separator();

        let device = current
            .as_ref()
            .and_then(|root| app.stores.get(root))
            .and_then(|store| store.config.as_ref())
            .map_or_else(|| app.setup.config.device.clone(), |c| c.device.clone());
        ui.label(format!("device: {device}"));
        ui.separator();

        progress_ui(ui, app, current.as_deref());

        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let label = if app.persisted.dark_mode { "Light theme" } else { "Dark theme" };
            if ui.small_button(label).clicked() {
                app.persisted.dark_mode = !app.persisted.dark_mode;
            }
        });
    });
}

/// Progress bar with the stage, global step / total, and the ETAs of the stage and of the plan.
fn progress_ui(ui: &mut Ui, app: &WickApp, current: Option<&std::path::Path>) {
    let Some(root) = current else { return };
    if app.summary(root).is_some_and(|s| s.kind != crate::interop::RunKind::Wick) {
        return;
    }
    let store = app.stores.get(root);
    let session = app.session.as_ref().filter(|s| s.root == root);
    let (step, total) = match (session, store.and_then(|s| s.state.as_ref()), app.summary(root)) {
        (Some(s), _, _) => (s.step, s.total_steps),
        (None, Some(state), _) => (state.global_step, state.total_steps),
        (None, None, Some(summary)) => (summary.global_step, summary.total_steps),
        _ => return,
    };
    let ledger = store.map(|s| s.ledger.as_slice()).unwrap_or_default();
    let stage = ledger
        .iter()
        .find(|e| step >= e.start_step && step < e.end_step)
        .or_else(|| ledger.last().filter(|e| step >= e.end_step));
    let stage_name = stage.map_or("", |e| e.name.as_str());
    let fraction = if total > 0 { step as f32 / total as f32 } else { 0.0 };
    ui.add(
        ProgressBar::new(fraction.clamp(0.0, 1.0)).desired_width(260.0).text(format!("{stage_name}  {step} / {total}")),
    );
    if let Some(session) = session.filter(|s| s.is_active()) {
        let stage_eta = stage.and_then(|e| session.eta_secs(e.end_step));
        let plan_eta = session.eta_secs(total);
        match (stage_eta, plan_eta) {
            (Some(stage_secs), Some(plan_secs)) => {
                ui.label(format!("ETA stage {} · plan {}", format_duration(stage_secs), format_duration(plan_secs)));
            }
            _ => {
                ui.weak("ETA —");
            }
        }
    }
}
