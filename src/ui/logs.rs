//! The Logs panel: the primary run's log.txt, tailed live, with a level filter, search and auto-scroll.

use egui::{Color32, RichText, Ui};

use super::ERROR_COLOR;
use crate::app::logs::LogLevel;
use crate::app::WickApp;

/// Colour of WARN lines.
const WARN_COLOR: Color32 = Color32::from_rgb(0xe0, 0xb0, 0x30);

/// Draws the Logs panel.
pub fn logs_ui(ui: &mut Ui, app: &mut WickApp) {
    let state = &mut app.panels.logs;
    ui.horizontal(|ui| {
        ui.checkbox(&mut state.filter.error, "ERROR");
        ui.checkbox(&mut state.filter.warn, "WARN");
        ui.checkbox(&mut state.filter.info, "INFO");
        ui.checkbox(&mut state.filter.debug, "DEBUG");
        ui.separator();
        ui.add(egui::TextEdit::singleline(&mut state.search).hint_text("Search").desired_width(220.0));
        if !state.search.is_empty() && ui.small_button("×").on_hover_text("Clear the search").clicked() {
            state.search.clear();
        }
        ui.separator();
        ui.checkbox(&mut state.auto_scroll, "Auto-scroll");
    });
    let Some(tail) = &state.tail else {
        ui.label("Select a run in the Runs list to see its log.");
        return;
    };
    ui.weak(tail.path.display().to_string());
    if let Some(error) = &tail.error {
        ui.label(RichText::new(error).color(ERROR_COLOR));
    }
    let auto_scroll = state.auto_scroll;
    let total = tail.lines.len();
    let visible = state.visible().to_vec();
    let Some(tail) = &state.tail else { return };
    ui.weak(format!("{} of {total} lines shown", visible.len()));
    ui.separator();
    let row_height = ui.text_style_height(&egui::TextStyle::Monospace);
    egui::ScrollArea::both().auto_shrink([false, false]).stick_to_bottom(auto_scroll).show_rows(
        ui,
        row_height,
        visible.len(),
        |ui, rows| {
            for &index in &visible[rows] {
                let line = &tail.lines[index];
                let text = RichText::new(&line.text).monospace();
                let text = match line.level {
                    LogLevel::Error => text.color(ERROR_COLOR),
                    LogLevel::Warn => text.color(WARN_COLOR),
                    LogLevel::Info => text,
                    LogLevel::Debug => text.weak(),
                };
                ui.add(egui::Label::new(text).extend());
            }
        },
    );
}
