//! The Preflight panel: runs one batch of each stage of the Setup draft on a worker and shows the checklist.

use egui::{RichText, Ui};

use super::checkpoints::mark_ui;
use crate::app::panels::PanelCommand;
use crate::app::{AppCommand, WickApp};

/// Draws the Preflight panel.
pub fn preflight_ui(ui: &mut Ui, app: &mut WickApp, commands: &mut Vec<AppCommand>) {
    ui.heading("Preflight");
    ui.label(format!(
        "One batch of each stage of the Setup draft `{}` through a fresh model: shapes, dtypes, forward, backward, \
         gradients, parameters, memory and a time estimate.",
        app.setup.config.name
    ));
    let state = &app.panels.preflight;
    ui.horizontal(|ui| {
        if ui.add_enabled(!state.is_running(), egui::Button::new("Run preflight")).clicked() {
            commands.push(AppCommand::Panels(PanelCommand::RunPreflight));
        }
        if state.is_running() {
            ui.spinner();
            ui.label("running…");
        }
    });
    let Some((name, items)) = &state.result else { return };
    ui.separator();
    let failed = items.iter().filter(|i| !i.ok).count();
    ui.label(
        RichText::new(if failed == 0 {
            format!("All {} checks of `{name}` passed.", items.len())
        } else {
            format!("{failed} of {} checks of `{name}` failed.", items.len())
        })
        .strong(),
    );
    egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
        egui::Grid::new("preflight_checks").num_columns(3).spacing([10.0, 4.0]).striped(true).show(ui, |ui| {
            for item in items {
                mark_ui(ui, item.ok);
                ui.label(&item.label);
                ui.add(egui::Label::new(&item.message).wrap());
                ui.end_row();
            }
        });
    });
}
