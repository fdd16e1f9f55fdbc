//! The Compare panel: 2–4 checkpoints (or one at several gate scales) sampled on the same inputs, the grid with
//! its column titles, a zoomed cell, A/B flicker, the |A − B| difference, and Save PNG….

use std::path::PathBuf;
use std::time::Duration;

use egui::{DragValue, RichText, TextureOptions, Ui};

use super::ERROR_COLOR;
use crate::app::compare::{crop_cell, crop_column, difference_image, CompareState, MAX_CHECKPOINTS};
use crate::app::panels::PanelCommand;
use crate::app::{AppCommand, WickApp};

/// How long each side of the A/B flicker shows.
const FLICKER_EVERY: Duration = Duration::from_millis(600);

/// Largest on-screen size of the grid, in points.
const MAX_GRID_WIDTH: f32 = 900.0;

/// Draws the Compare panel.
pub fn compare_ui(ui: &mut Ui, app: &mut WickApp, commands: &mut Vec<AppCommand>) {
    ui.heading("Compare checkpoints");
    egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
        logged_images_ui(ui, app);
        ui.separator();
        let state = &mut app.panels.compare;
        choice_ui(ui, state);
        ui.separator();
        settings_ui(ui, state);
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            let running = state.job.is_some();
            if ui
                .add_enabled(!running && !state.settings.checkpoints.is_empty(), egui::Button::new("Generate"))
                .clicked()
            {
                commands.push(AppCommand::Panels(PanelCommand::Generate));
            }
            if let Some(job) = &state.job {
                let (done, total) = job.progress();
                let fraction = if total > 0 { done as f32 / total as f32 } else { 0.0 };
                ui.add(
                    egui::ProgressBar::new(fraction)
                        .text(format!("sampling column {} of {total}", (done + 1).min(total)))
                        .desired_width(260.0),
                );
            }
            if state.result.is_some() && ui.button("Save PNG…").clicked() {
                commands.push(AppCommand::Panels(PanelCommand::SaveComparePng));
            }
        });
        if let Some(error) = &state.error {
            ui.label(RichText::new(error).color(ERROR_COLOR));
        }
        if state.result.is_some() {
            ui.separator();
            result_ui(ui, state);
        }
        if let Some(table) = &state.text {
            ui.separator();
            text_result_ui(ui, table);
        }
    });
}

/// Colour of a completion that equals the expected answer.
const RIGHT_COLOR: egui::Color32 = egui::Color32::from_rgb(90, 190, 90);
/// Background of characters that differ from the column to the left.
const CHANGED_BACKGROUND: egui::Color32 = egui::Color32::from_rgb(120, 80, 20);

/// Text samples side by side: a row per prompt, a column per checkpoint; characters that differ from the
/// column to the left are highlighted, completions equal to the expected answer are green, others red.
fn text_result_ui(ui: &mut Ui, table: &crate::eval::compare::TextComparison) {
    ui.label(
        RichText::new("Highlighted: what differs from the column to the left. Green: the expected answer.").weak(),
    );
    let mono = egui::TextStyle::Monospace.resolve(ui.style());
    let text_color = ui.visuals().text_color();
    egui::Grid::new("compare_text").striped(true).spacing([18.0, 4.0]).show(ui, |ui| {
        ui.label(RichText::new("prompt").strong());
        if table.rows.iter().any(|r| r.expected.is_some()) {
            ui.label(RichText::new("expected").strong());
        }
        for title in &table.columns {
            ui.label(RichText::new(crate::eval::grid::short_title(title)).strong()).on_hover_text(title);
        }
        ui.end_row();
        let with_expected = table.rows.iter().any(|r| r.expected.is_some());
        for row in &table.rows {
            ui.label(RichText::new(&row.prompt).monospace());
            if with_expected {
                ui.label(RichText::new(row.expected.as_deref().unwrap_or("")).monospace());
            }
            for (i, completion) in row.completions.iter().enumerate() {
                let color = match &row.expected {
                    Some(expected) if expected == completion => RIGHT_COLOR,
                    Some(_) => ERROR_COLOR,
                    None => text_color,
                };
                let changed = match i.checked_sub(1).and_then(|p| row.completions.get(p)) {
                    Some(previous) => crate::eval::compare::differing_chars(completion, previous),
                    None => vec![false; completion.chars().count()],
                };
                let mut job = egui::text::LayoutJob::default();
                for (c, changed) in completion.chars().zip(changed) {
                    let shown = if c == '\n' { '⏎' } else { c };
                    let format = egui::TextFormat {
                        font_id: mono.clone(),
                        color,
                        background: if changed { CHANGED_BACKGROUND } else { egui::Color32::TRANSPARENT },
                        ..Default::default()
                    };
                    job.append(&shown.to_string(), 0.0, format);
                }
                if completion.is_empty() {
                    job.append(
                        "(nothing)",
                        0.0,
                        egui::TextFormat { font_id: mono.clone(), color, ..Default::default() },
                    );
                }
                ui.label(job);
            }
            ui.end_row();
        }
    });
}

fn choice_ui(ui: &mut Ui, state: &mut CompareState) {
    let chosen = &mut state.settings.checkpoints;
    ui.label(match chosen.len() {
        0 => "Choose 2–4 checkpoints (from the Checkpoints panel or below), or one to compare gate scales.".to_string(),
        1 => "One checkpoint: one column per gate scale.".to_string(),
        n => format!("{n} checkpoints, one column each."),
    });
    let mut remove = None;
    for (index, dir) in chosen.iter().enumerate() {
        ui.horizontal(|ui| {
            if ui.small_button("×").on_hover_text("Remove").clicked() {
                remove = Some(index);
            }
            ui.label(short_name(dir));
        });
    }
    if let Some(index) = remove {
        chosen.remove(index);
    }
    if chosen.len() < MAX_CHECKPOINTS {
        let mut add: Option<PathBuf> = None;
        egui::ComboBox::from_label("Add checkpoint").selected_text("choose…").show_ui(ui, |ui| {
            if state.available.is_empty() {
                ui.weak("no checkpoints found");
            }
            for (run, checkpoints) in &state.available {
                for (name, dir) in checkpoints {
                    if ui.selectable_label(false, format!("{run} / {name}")).clicked() {
                        add = Some(dir.clone());
                    }
                }
            }
        });
        if let Some(dir) = add {
            if !state.settings.checkpoints.contains(&dir) {
                state.settings.checkpoints.push(dir);
            }
        }
    }
    if state.settings.checkpoints.len() == 1 {
        ui.horizontal(|ui| {
            ui.label("Gate scales");
            ui.text_edit_singleline(&mut state.settings.gate_scales_text)
                .on_hover_text("Comma-separated, e.g. 0,0.5,1");
        });
    }
}

fn settings_ui(ui: &mut Ui, state: &mut CompareState) {
    let s = &mut state.settings;
    ui.horizontal_wrapped(|ui| {
        ui.label("Sampler steps");
        ui.add(DragValue::new(&mut s.steps).range(1..=1000));
        ui.label("Guidance");
        ui.add(DragValue::new(&mut s.guidance).range(0.0..=20.0).speed(0.05));
        ui.checkbox(&mut s.guide_layout, "Guide layout")
            .on_hover_text("Guidance also drops the layout in its unconditional branch (strengthens the layout)");
        ui.label("Guided t");
        guidance_interval_ui(ui, &mut s.guidance_interval);
        ui.checkbox(&mut s.use_ema, "EMA weights");
        ui.checkbox(&mut s.real_images, "Real images")
            .on_hover_text("A first column of the real held-out images the rows' layouts come from");
        ui.label("Seed");
        ui.add(DragValue::new(&mut s.seed));
        ui.label("Rows");
        ui.add(DragValue::new(&mut s.rows).range(1..=32));
        ui.label("Zoom ×");
        ui.add(DragValue::new(&mut s.scale).range(1..=8));
    });
}

fn result_ui(ui: &mut Ui, state: &mut CompareState) {
    let Some(result) = &state.result else { return };
    let geometry = result.geometry;
    let ctx = ui.ctx().clone();
    let grid = state
        .textures
        .grid
        .get_or_insert_with(|| ctx.load_texture("compare-grid", result.image.clone(), TextureOptions::NEAREST))
        .clone();
    let image_size = egui::vec2(result.image.size[0] as f32, result.image.size[1] as f32);
    let shown = if image_size.x > MAX_GRID_WIDTH { image_size * (MAX_GRID_WIDTH / image_size.x) } else { image_size };
    let factor = shown.x / image_size.x.max(1.0);
    // Column titles over their columns; the image carries each row's requested objects in their boxes' colours.
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        let pitch = (geometry.cell_px + geometry.gap_px) as f32 * factor;
        ui.add_space((geometry.origin_px[0] + geometry.gap_px) as f32 * factor);
        for title in &result.description.columns {
            let short = crate::eval::grid::short_title(title);
            ui.add_sized([pitch, 18.0], egui::Label::new(RichText::new(short).strong()).truncate())
                .on_hover_text(title);
        }
    });
    ui.horizontal_top(|ui| {
        let response = ui.add(egui::Image::new((grid.id(), shown)).sense(egui::Sense::click()));
        if response.clicked() {
            if let Some(pos) = response.interact_pointer_pos() {
                let local = (pos - response.rect.min) / factor;
                state.zoom = geometry.cell_at(local.x, local.y);
            }
        }
        response.on_hover_text("Click a cell to zoom it");
        if let Some((column, row)) = state.zoom {
            let texture = match &state.textures.zoom {
                Some((key, texture)) if *key == (column, row) => texture.clone(),
                _ => {
                    let texture = ctx.load_texture(
                        "compare-zoom",
                        crop_cell(&result.image, &geometry, column, row),
                        TextureOptions::NEAREST,
                    );
                    state.textures.zoom = Some(((column, row), texture.clone()));
                    texture
                }
            };
            ui.vertical(|ui| {
                let title = result.description.columns.get(column).cloned().unwrap_or_default();
                ui.label(format!("{title}, row {}", row + 1));
                if let Some(request) = result.description.rows.get(row) {
                    let objects: Vec<String> = request.objects.iter().map(|(c, _)| c.clone()).collect();
                    ui.weak(format!("class {}; layout: {}", request.class, objects.join(", ")));
                }
                ui.add(egui::Image::new((texture.id(), egui::vec2(256.0, 256.0))));
                if ui.small_button("Close zoom").clicked() {
                    state.zoom = None;
                }
            });
        }
    });
    if geometry.columns < 2 {
        return;
    }
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let titles = &result.description.columns;
        column_combo_ui(ui, "A", &mut state.column_a, titles);
        column_combo_ui(ui, "B", &mut state.column_b, titles);
        ui.toggle_value(&mut state.flicker, "A/B flicker");
        ui.toggle_value(&mut state.show_difference, "Difference |A−B|");
    });
    let key = (state.column_a, state.column_b);
    let column_size = egui::vec2(geometry.cell_px as f32, image_size.y) * factor;
    ui.horizontal_top(|ui| {
        if state.flicker {
            let textures = match &state.textures.flicker {
                Some((k, textures)) if *k == key => textures.clone(),
                _ => {
                    let a = ctx.load_texture(
                        "compare-a",
                        crop_column(&result.image, &geometry, key.0),
                        TextureOptions::NEAREST,
                    );
                    let b = ctx.load_texture(
                        "compare-b",
                        crop_column(&result.image, &geometry, key.1),
                        TextureOptions::NEAREST,
                    );
                    state.textures.flicker = Some((key, [a.clone(), b.clone()]));
                    [a, b]
                }
            };
            let phase = (ui.input(|i| i.time) / FLICKER_EVERY.as_secs_f64()) as u64 % 2;
            ui.vertical(|ui| {
                ui.label(if phase == 0 { "A" } else { "B" });
                ui.add(egui::Image::new((textures[phase as usize].id(), column_size)));
            });
            ui.ctx().request_repaint_after(FLICKER_EVERY);
        }
        if state.show_difference {
            let texture = match &state.textures.difference {
                Some((k, texture)) if *k == key => texture.clone(),
                _ => {
                    let texture = ctx.load_texture(
                        "compare-diff",
                        difference_image(&result.image, &geometry, key.0, key.1),
                        TextureOptions::NEAREST,
                    );
                    state.textures.difference = Some((key, texture.clone()));
                    texture
                }
            };
            ui.vertical(|ui| {
                ui.label("|A − B|");
                ui.add(egui::Image::new((texture.id(), column_size)));
            });
        }
    });
}

fn column_combo_ui(ui: &mut Ui, label: &str, column: &mut usize, titles: &[String]) {
    let selected = titles.get(*column).cloned().unwrap_or_default();
    egui::ComboBox::from_label(label).selected_text(selected).show_ui(ui, |ui| {
        for (index, title) in titles.iter().enumerate() {
            ui.selectable_value(column, index, title);
        }
    });
}

/// `run-id / step-N` of a checkpoint directory.
fn short_name(dir: &std::path::Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let run =
        dir.parent().and_then(|p| p.parent()).and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    match run {
        Some(run) => format!("{run} / {name}"),
        None => name,
    }
}

/// Two linked fields `low – high` for the t interval (1 = noise, 0 = image) where guidance applies; each
/// bound is kept inside [0, 1] and on its side of the other.
pub(crate) fn guidance_interval_ui(ui: &mut Ui, interval: &mut [f64; 2]) -> egui::Response {
    let hint = "Guidance applies while t (1 = noise, 0 = image) is in this interval; 0 – 1 = every step";
    let [low, high] = interval;
    let mut response = ui.add(DragValue::new(low).range(0.0..=*high).speed(0.01).max_decimals(2)).on_hover_text(hint);
    ui.label("–");
    response |= ui.add(DragValue::new(high).range(*low..=1.0).speed(0.01).max_decimals(2)).on_hover_text(hint);
    response
}

/// Widest a logged image is drawn, in points.
const LOGGED_IMAGE_MAX_WIDTH: f32 = 360.0;

/// Columns of images runs logged to TensorBoard (any run: a Wick run logs each checkpoint's grid), each
/// with its run, tag and a step slider.
fn logged_images_ui(ui: &mut Ui, app: &mut WickApp) {
    let ctx = ui.ctx().clone();
    let runs: Vec<(std::path::PathBuf, String)> =
        app.runs.iter().map(|r| (r.root.clone(), format!("{} ({})", r.id, r.kind.name()))).collect();
    let logged = &mut app.panels.logged;
    ui.horizontal(|ui| {
        ui.strong("Logged images");
        ui.weak("images runs logged to TensorBoard, side by side — each column with its own step");
    });
    let mut add = None;
    egui::ComboBox::from_id_salt("logged_images_add").selected_text("Add a column…").show_ui(ui, |ui| {
        for (root, label) in &runs {
            if ui.selectable_label(false, label).clicked() {
                add = Some(root.clone());
            }
        }
    });
    if let Some(root) = add {
        logged.add_column(&root, &ctx);
    }
    let mut remove = None;
    ui.horizontal_top(|ui| {
        for i in 0..logged.columns.len() {
            let mut column = logged.columns[i].clone();
            ui.vertical(|ui| {
                ui.set_max_width(LOGGED_IMAGE_MAX_WIDTH);
                let id = column.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ui.horizontal(|ui| {
                    ui.strong(&id).on_hover_text(column.root.display().to_string());
                    if ui.small_button("Remove").clicked() {
                        remove = Some(i);
                    }
                    if ui.small_button("Reload").on_hover_text("Read the run's images again").clicked() {
                        logged.load(&column.root, &ctx);
                    }
                });
                if let Some(error) = logged.errors.get(&column.root) {
                    ui.label(RichText::new(error).color(ERROR_COLOR));
                }
                let Some(images) = logged.images.get(&column.root).cloned() else {
                    ui.spinner();
                    return;
                };
                if images.is_empty() {
                    ui.weak("this run logged no images");
                    return;
                }
                egui::ComboBox::from_id_salt(("logged_tag", i)).selected_text(&column.tag).show_ui(ui, |ui| {
                    for tag in images.keys() {
                        if ui.selectable_value(&mut column.tag, tag.clone(), tag).changed() {
                            column.index = images[tag].len().saturating_sub(1);
                        }
                    }
                });
                let Some(series) = images.get(&column.tag) else { return };
                let steps: Vec<i64> = series.iter().map(|i| i.step).collect();
                column.index = column.index.min(steps.len().saturating_sub(1));
                ui.add(
                    egui::Slider::new(&mut column.index, 0..=steps.len().saturating_sub(1))
                        .custom_formatter(|v, _| format!("step {}", steps.get(v as usize).copied().unwrap_or(0)))
                        .text("step"),
                );
                if let Some(texture) = logged.texture_of(&column, &ctx) {
                    let size = texture.size_vec2();
                    let scale = (LOGGED_IMAGE_MAX_WIDTH / size.x).min(4.0);
                    ui.image((texture.id(), size * scale));
                }
            });
            logged.columns[i] = column;
        }
    });
    if let Some(i) = remove {
        logged.columns.remove(i);
    }
}
