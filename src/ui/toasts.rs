//! Toasts: stacked at the top right over everything; notices fade, errors stay until clicked.

use std::time::Instant;

use egui::{Align2, RichText};

use super::ERROR_COLOR;
use crate::app::toasts::Toasts;

/// Width of a toast, in points.
const TOAST_WIDTH: f32 = 360.0;

/// Draws the toasts; a click dismisses one.
pub fn toasts_ui(ctx: &egui::Context, toasts: &mut Toasts) {
    if toasts.items.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut dismissed = Vec::new();
    egui::Area::new(egui::Id::unique("toasts"))
        .anchor(Align2::RIGHT_TOP, egui::vec2(-12.0, 64.0))
        .order(egui::Order::Foreground)
        .interactable(true)
        .show(ctx, |ui| {
            ui.set_max_width(TOAST_WIDTH);
            for toast in toasts.items.iter().rev() {
                ui.scope(|ui| {
                    ui.multiply_opacity(toast.opacity(now));
                    let response = egui::Frame::popup(ui.style())
                        .show(ui, |ui| {
                            ui.set_width(TOAST_WIDTH);
                            let text = RichText::new(&toast.text);
                            ui.add(egui::Label::new(if toast.error { text.color(ERROR_COLOR) } else { text }).wrap());
                            if toast.error {
                                ui.weak("click to dismiss");
                            }
                        })
                        .response
                        .interact(egui::Sense::click());
                    if response.clicked() {
                        dismissed.push(toast.id);
                    }
                });
                ui.add_space(4.0);
            }
        });
    for id in dismissed {
        toasts.dismiss(id);
    }
}
