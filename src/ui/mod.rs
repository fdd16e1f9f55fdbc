//! Drawing: one file per panel. Panels read the app's state and push [`AppCommand`]s; nothing here changes
//! global state directly (the Setup panel edits its own draft).

pub mod checkpoints;
pub mod compare;
pub mod live;
pub mod logs;
pub mod preflight;
pub mod runs;
pub mod setup;
pub mod system;
pub mod toasts;
pub mod top_bar;

use egui::{Color32, RichText, Ui};

use crate::app::state::Panel;
use crate::app::{AppCommand, WickApp};
use crate::run::RunStatus;

/// Colour of error text.
pub const ERROR_COLOR: Color32 = Color32::from_rgb(0xe0, 0x4f, 0x4f);

/// Draws the whole window: top bar, panel tabs, status line, runs list and the chosen panel.
pub fn app_ui(ui: &mut Ui, app: &mut WickApp) {
    let mut commands = std::mem::take(&mut app.commands);
    egui::Panel::top("top_bar").show(ui, |ui| {
        top_bar::top_bar_ui(ui, app, &mut commands);
        ui.add_space(2.0);
        tabs_ui(ui, app.persisted.panel, &mut commands);
    });
    egui::Panel::bottom("status_line").show(ui, |ui| status_line_ui(ui, app));
    egui::Panel::left("runs").resizable(true).default_size(280.0).show(ui, |ui| {
        runs::runs_ui(ui, app, &mut commands);
    });
    egui::CentralPanel::default_margins().show(ui, |ui| match app.persisted.panel {
        Panel::Setup => {
            setup::setup_ui(ui, &mut app.setup, app.session.as_ref().is_some_and(|s| s.is_active()), &mut commands)
        }
        Panel::Live => live::live_ui(ui, app, &mut commands),
        Panel::Checkpoints => checkpoints::checkpoints_ui(ui, app, &mut commands),
        Panel::Compare => compare::compare_ui(ui, app, &mut commands),
        Panel::Logs => logs::logs_ui(ui, app),
        Panel::System => system::system_ui(ui, app),
        Panel::Preflight => preflight::preflight_ui(ui, app, &mut commands),
    });
    toasts::toasts_ui(&ui.ctx().clone(), &mut app.panels.toasts);
    app.commands.append(&mut commands);
}

fn tabs_ui(ui: &mut Ui, current: Panel, commands: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        for panel in Panel::ALL {
            if ui.selectable_label(current == panel, panel.title()).clicked() && current != panel {
                commands.push(AppCommand::ShowPanel(panel));
            }
        }
    });
}

fn status_line_ui(ui: &mut Ui, app: &WickApp) {
    ui.horizontal(|ui| match &app.status {
        Some(message) if message.error => {
            ui.label(RichText::new(&message.text).color(ERROR_COLOR));
        }
        Some(message) => {
            ui.label(&message.text);
        }
        None => {
            ui.weak(format!("Runs folder: {}", app.runs_dir.display()));
        }
    });
}

/// The colour a run status is drawn in.
pub fn status_color(status: RunStatus) -> Color32 {
    match status {
        RunStatus::Running => Color32::from_rgb(0x4c, 0xaf, 0x50),
        RunStatus::Paused => Color32::from_rgb(0xe0, 0xb0, 0x30),
        RunStatus::Finished => Color32::from_rgb(0x5a, 0x9b, 0xe6),
        RunStatus::Failed => ERROR_COLOR,
        RunStatus::Stopped | RunStatus::Interrupted => Color32::from_rgb(0xd0, 0x80, 0x30),
        RunStatus::Created => Color32::GRAY,
    }
}

/// `1 h 02 min`, `3 min 20 s`, `12 s`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".to_string();
    }
    let secs = secs.round() as u64;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, (secs % 3600) / 60),
    }
}
