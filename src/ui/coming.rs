//! Placeholders for the panels that come later (Checkpoints, Compare, Logs, System, Preflight).

use egui::Ui;

use crate::app::state::Panel;

/// Says the panel is coming.
pub fn coming_ui(ui: &mut Ui, panel: Panel) {
    ui.vertical_centered(|ui| {
        ui.add_space(40.0);
        ui.heading(panel.title());
        ui.label(format!("The {} panel is coming.", panel.title()));
    });
}
