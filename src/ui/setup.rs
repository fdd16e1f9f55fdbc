//! The Setup panel: dataset, model, device, seed; the stage list with its timeline; every field validated
//! inline (errors next to the field their path names); presets; open / save TOML.

use std::collections::HashSet;

use egui::{Color32, ComboBox, DragValue, Response, RichText, Sense, TextEdit, Ui};

use std::path::PathBuf;

use crate::app::data_check::DataCheckState;
use crate::app::setup::{SetupState, StageOp};
use crate::app::AppCommand;
use crate::config::{
    BoxUnits, ConfigIssue, DatasetKind, EarlyStoppingConfig, MetricMode, ModelPreset, NanPolicy, ObjectLossMode,
    Precision, ResizeMode, ScheduleKind, ShapesVariant, StageConfig, Trainable, TrainableGroup, METRICS, PRESETS,
};
use crate::data::DataReport;

use super::ERROR_COLOR;

/// Colour of the kind of a data problem (skipped, not fatal).
const WARNING_COLOR: Color32 = Color32::from_rgb(230, 170, 60);

/// Draws the Setup panel. `training` disables nothing here (the draft is only used by the next Start).
pub fn setup_ui(ui: &mut Ui, setup: &mut SetupState, training: bool, commands: &mut Vec<AppCommand>) {
    setup.revalidate();
    toolbar_ui(ui, setup, training, commands);
    ui.separator();
    let task = setup.task().cloned();
    let kinds = setup.tasks.kinds();
    let mut new_kind = None;
    let SetupState { config, issues, selected_stage, data_check, .. } = setup;
    let shapes = config.task.kind == "shapes";
    let metric_names: Vec<String> =
        task.as_ref().map_or_else(|| METRICS.map(String::from).to_vec(), |t| t.metric_names());
    let mut fields = Fields { issues: issues.as_slice(), shown: HashSet::new() };
    egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
        ui.columns(2, |columns| {
            let ui = &mut columns[0];
            ui.heading("Run");
            egui::Grid::new("run_grid").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
                fields.row(ui, "Task", "task.kind", |ui| {
                    let response = ComboBox::from_id_salt("task_kind")
                        .selected_text(config.task.kind.clone())
                        .show_ui(ui, |ui| {
                            for kind in &kinds {
                                if ui.selectable_label(*kind == config.task.kind, kind.as_str()).clicked() {
                                    new_kind = Some(kind.clone());
                                }
                            }
                        })
                        .response;
                    match &task {
                        Some(task) => response.on_hover_text(&task.summary),
                        None => response,
                    }
                });
                fields
                    .row(ui, "Name", "name", |ui| ui.add(TextEdit::singleline(&mut config.name).desired_width(180.0)));
                fields.row(ui, "Seed", "seed", |ui| ui.add(DragValue::new(&mut config.seed)));
                fields.row(ui, "Device", "device", |ui| device_ui(ui, &mut config.device));
                fields.row(ui, "Precision", "precision", |ui| {
                    combo_ui(
                        ui,
                        "precision",
                        &mut config.precision,
                        &[(Precision::F32, "f32"), (Precision::Bf16, "bf16")],
                    )
                    .on_hover_text(
                        "bf16: autocast of the linear layers on CUDA (weights, gradients and optimizer state \
                             stay f32); the CPU trains in f32",
                    )
                });
                fields.row(ui, "Threads", "threads", |ui| {
                    ui.add(DragValue::new(&mut config.threads)).on_hover_text(
                        "CPU compute threads of the run; 0 = every core. A run started in this window uses at most \
                         the cores the window started with (RAYON_NUM_THREADS when set, else every core)",
                    )
                });
                if !shapes {
                    return;
                }
                fields.row(ui, "Model preset", "model.preset", |ui| {
                    combo_ui(
                        ui,
                        "model_preset",
                        &mut config.model.preset,
                        &[(ModelPreset::Tiny, "tiny"), (ModelPreset::Small, "small"), (ModelPreset::Base, "base")],
                    )
                });
                fields.row(ui, "Layout adapter", "model.adapter", |ui| {
                    ui.checkbox(&mut config.model.adapter, "with adapter")
                });
                fields.row(ui, "Resolution", "model.resolution", |ui| {
                    combo_ui(
                        ui,
                        "resolution",
                        &mut config.model.resolution,
                        &[(32, "32 px (patch 4)"), (64, "64 px (patch 8)")],
                    )
                    .on_hover_text("64 px suits photos; both give 8×8 tokens")
                });
            });
            if let Some(task) = task.as_ref().filter(|t| !t.settings.settings.is_empty()) {
                ui.add_space(8.0);
                ui.heading(format!("Task settings ({})", task.kind));
                egui::Grid::new("task_grid").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
                    for setting in &task.settings.settings {
                        let path = format!("task.{}", setting.key);
                        let table = &mut config.task.settings;
                        fields.row(ui, &setting.label, path, |ui| setting_ui(ui, setting, table, None));
                    }
                });
            }
            if shapes {
                ui.add_space(8.0);
                ui.heading("Dataset");
                egui::Grid::new("dataset_grid").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
                    let d = &mut config.dataset;
                    fields.row(ui, "Kind", "dataset.kind", |ui| {
                        combo_ui(
                            ui,
                            "dataset_kind",
                            &mut d.kind,
                            &[(DatasetKind::Shapes, "shapes (built in)"), (DatasetKind::Folder, "image folder")],
                        )
                    });
                    match d.kind {
                        DatasetKind::Shapes => {
                            fields.row(ui, "Variant", "dataset.variant", |ui| {
                                combo_ui(
                                    ui,
                                    "variant",
                                    &mut d.variant,
                                    &[(ShapesVariant::Plain, "plain"), (ShapesVariant::Noisy, "noisy")],
                                )
                            });
                            fields.row(ui, "Min objects", "dataset.min_objects", |ui| {
                                ui.add(DragValue::new(&mut d.min_objects))
                            });
                            fields.row(ui, "Max objects", "dataset.max_objects", |ui| {
                                ui.add(DragValue::new(&mut d.max_objects))
                            });
                            fields.row(ui, "Train size", "dataset.train_size", |ui| {
                                ui.add(DragValue::new(&mut d.train_size).speed(10))
                            });
                        }
                        DatasetKind::Folder => {
                            fields.row(ui, "Image folder", "dataset.path", |ui| {
                                path_ui(
                                    ui,
                                    &mut d.path,
                                    "root/<class>/*.png|jpg|webp|bmp",
                                    AppCommand::ChooseDataFolder,
                                    commands,
                                )
                            });
                            fields.row(ui, "Layouts", "dataset.layouts", |ui| {
                                path_ui(
                                    ui,
                                    &mut d.layouts,
                                    "optional layout JSONL",
                                    AppCommand::ChooseLayoutFile,
                                    commands,
                                )
                            });
                            fields.row(ui, "Box units", "dataset.box_units", |ui| {
                                combo_ui(
                                    ui,
                                    "box_units",
                                    &mut d.box_units,
                                    &[
                                        (BoxUnits::Auto, "auto"),
                                        (BoxUnits::Pixels, "pixels"),
                                        (BoxUnits::Normalized, "normalized"),
                                    ],
                                )
                            });
                            fields.row(ui, "Resize", "dataset.resize", |ui| {
                                combo_ui(
                                    ui,
                                    "resize",
                                    &mut d.resize,
                                    &[(ResizeMode::CenterCrop, "center crop"), (ResizeMode::Letterbox, "letterbox")],
                                )
                            });
                            fields.row(ui, "Held-out fraction", "dataset.heldout_fraction", |ui| {
                                ui.add(DragValue::new(&mut d.heldout_fraction).speed(0.01).max_decimals(3))
                                    .on_hover_text(
                                        "Of each class, kept out of training for evaluation (stored in the run)",
                                    )
                            });
                        }
                    }
                    fields.row(ui, "Subset fraction", "dataset.subset_fraction", |ui| {
                        ui.add(DragValue::new(&mut d.subset_fraction).speed(0.01).max_decimals(3))
                    });
                    fields.row(ui, "Dataset seed", "dataset.seed", |ui| ui.add(DragValue::new(&mut d.seed)));
                });
                if config.dataset.kind == DatasetKind::Folder {
                    data_check_ui(ui, data_check, commands);
                }
            }
            ui.add_space(8.0);
            ui.heading("Checkpoints and evaluation");
            egui::Grid::new("ckpt_grid").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
                fields.row(ui, "Keep last", "checkpoints.keep_last", |ui| {
                    ui.add(DragValue::new(&mut config.checkpoints.keep_last))
                });
                fields.row(ui, "On NaN", "checkpoints.on_nan", |ui| {
                    let choices: Vec<(NanPolicy, &str)> = NanPolicy::ALL.iter().map(|p| (*p, p.name())).collect();
                    combo_ui(ui, "on_nan", &mut config.checkpoints.on_nan, &choices).on_hover_text(
                        "what a step with a non-finite loss or gradient does: skip its update (fail after \
                         Max bad steps in a row), fail the run, or roll back to the newest checkpoint at a \
                         lower learning rate",
                    )
                });
                match config.checkpoints.on_nan {
                    NanPolicy::Skip => {
                        fields.row(ui, "Max bad steps", "checkpoints.max_bad_steps", |ui| {
                            ui.add(DragValue::new(&mut config.checkpoints.max_bad_steps))
                        });
                    }
                    NanPolicy::Rollback => {
                        fields.row(ui, "Rollback lr factor", "checkpoints.rollback_lr_factor", |ui| {
                            ui.add(
                                DragValue::new(&mut config.checkpoints.rollback_lr_factor).speed(0.01).max_decimals(3),
                            )
                        });
                        fields.row(ui, "Max rollbacks", "checkpoints.max_rollbacks", |ui| {
                            ui.add(DragValue::new(&mut config.checkpoints.max_rollbacks))
                        });
                    }
                    NanPolicy::Fail => {}
                }
                fields.row(ui, "Best metric", "eval.best_metric", |ui| {
                    metric_ui(ui, "best_metric", &mut config.eval.best_metric, &metric_names)
                });
                fields.row(ui, "EMA weights", "eval.sampler.use_ema", |ui| {
                    ui.checkbox(&mut config.eval.sampler.use_ema, "evaluate and sample the EMA weights")
                });
                if !shapes {
                    return;
                }
                fields.row(ui, "Eval samples", "eval.samples", |ui| ui.add(DragValue::new(&mut config.eval.samples)));
                let sampler = &mut config.eval.sampler;
                fields.row(ui, "Sampler steps", "eval.sampler.steps", |ui| {
                    ui.add(DragValue::new(&mut sampler.steps).range(1..=1000)).on_hover_text("Euler steps per image")
                });
                fields.row(ui, "Guidance", "eval.sampler.guidance", |ui| {
                    ui.add(DragValue::new(&mut sampler.guidance).speed(0.1).max_decimals(2))
                        .on_hover_text("Classifier-free guidance scale (1 = none)")
                });
                fields.row(ui, "Guide layout", "eval.sampler.guide_layout", |ui| {
                    ui.checkbox(&mut sampler.guide_layout, "guidance drops the layout too")
                });
                fields.row(ui, "Guidance interval", "eval.sampler.guidance_interval", |ui| {
                    super::compare::guidance_interval_ui(ui, &mut sampler.guidance_interval)
                });
                if config.dataset.kind == DatasetKind::Folder {
                    fields.row(ui, "Judge steps", "eval.judge_steps", |ui| {
                        ui.add(DragValue::new(&mut config.eval.judge_steps).speed(10))
                            .on_hover_text("Steps of the judge trained for this folder (cached per dataset)")
                    });
                }
            });

            let ui = &mut columns[1];
            ui.heading("Stages");
            fields.issue_ui(ui, "stages");
            timeline_ui(ui, &config.stages, *selected_stage, commands);
            ui.add_space(4.0);
            stage_list_ui(ui, &config.stages, *selected_stage, fields.issues, commands);
            ui.separator();
            if let Some(stage) = config.stages.get_mut(*selected_stage) {
                let index = *selected_stage;
                ui.label(RichText::new(format!("Stage {}: {}", index + 1, stage.name)).strong());
                stage_editor_ui(ui, stage, index, &mut fields, task.as_ref(), &config.task.settings);
            }
        });
        let leftover: Vec<&ConfigIssue> = fields.issues.iter().filter(|i| !fields.shown.contains(&i.path)).collect();
        if !leftover.is_empty() {
            ui.separator();
            ui.label(RichText::new("Other problems").strong().color(ERROR_COLOR));
            for issue in leftover {
                ui.label(RichText::new(issue.to_string()).color(ERROR_COLOR));
            }
        }
    });
    if let Some(kind) = new_kind {
        setup.set_task_kind(&kind);
    }
}

fn toolbar_ui(ui: &mut Ui, setup: &mut SetupState, training: bool, commands: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        let label = ui.label("Preset");
        let preset_response = ComboBox::from_id_salt("preset")
            .selected_text(setup.preset.clone())
            .show_ui(ui, |ui| {
                for (name, _) in PRESETS {
                    if ui.selectable_label(setup.preset == *name, *name).clicked() {
                        setup.preset = (*name).to_string();
                        commands.push(AppCommand::LoadPreset((*name).to_string()));
                    }
                }
            })
            .response
            .labelled_by(label.id);
        let _ = preset_response;
        if ui.button("Load preset").on_hover_text("Replace the config with the chosen preset").clicked() {
            commands.push(AppCommand::LoadPreset(setup.preset.clone()));
        }
        ui.separator();
        if ui.button("Open…").on_hover_text("Open a run config (TOML)").clicked() {
            commands.push(AppCommand::OpenConfig);
        }
        if ui.button("Save…").on_hover_text("Save this config as TOML").clicked() {
            commands.push(AppCommand::SaveConfig);
        }
        if let Some(file) = &setup.file {
            ui.weak(file.display().to_string());
        }
        ui.separator();
        let total = setup.config.total_steps();
        ui.label(format!("{} stages, {total} steps", setup.config.stages.len()));
        match setup.issues.len() {
            0 if training => {
                ui.weak("ready (a run is training)");
            }
            0 => {
                ui.label(RichText::new("ready to start").color(Color32::from_rgb(0x4c, 0xaf, 0x50)));
            }
            n => {
                ui.label(RichText::new(format!("{n} problem(s) — see the fields in red")).color(ERROR_COLOR));
            }
        }
    });
}

/// Rows of labelled fields with their issues, remembering which issue paths were shown.
struct Fields<'a> {
    issues: &'a [ConfigIssue],
    shown: HashSet<String>,
}

impl Fields<'_> {
    /// A grid row: the label, then the widget (labelled by it for screen readers and tests) and the problems
    /// of `path` in red.
    fn row(&mut self, ui: &mut Ui, label: &str, path: impl Into<String>, widget: impl FnOnce(&mut Ui) -> Response) {
        let path = path.into();
        let label = ui.label(label);
        ui.horizontal(|ui| {
            let _ = widget(ui).labelled_by(label.id);
            self.issue_ui(ui, &path);
        });
        ui.end_row();
    }

    /// The problems of exactly `path`, in red.
    fn issue_ui(&mut self, ui: &mut Ui, path: &str) {
        let mut any = false;
        for issue in self.issues.iter().filter(|i| i.path == path) {
            // Wrapped: a long message stays inside its column instead of running under the next one.
            ui.add(egui::Label::new(RichText::new(&issue.message).color(ERROR_COLOR)).wrap());
            any = true;
        }
        if any {
            self.shown.insert(path.to_string());
        }
    }
}

/// A path field: editable text, and a button that opens the file dialog (`choose`).
fn path_ui(
    ui: &mut Ui,
    path: &mut Option<PathBuf>,
    hint: &str,
    choose: AppCommand,
    commands: &mut Vec<AppCommand>,
) -> Response {
    let mut text = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let response = ui.add(TextEdit::singleline(&mut text).hint_text(hint).desired_width(200.0));
    if response.changed() {
        *path = (!text.trim().is_empty()).then(|| PathBuf::from(text.trim()));
    }
    if ui.button("Choose…").clicked() {
        commands.push(choose);
    }
    if path.is_some() && ui.small_button("Clear").clicked() {
        *path = None;
    }
    response
}

/// *Check data*: the button (or the running check's progress and Cancel), then the last report.
fn data_check_ui(ui: &mut Ui, check: &DataCheckState, commands: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        if check.is_running() {
            let (done, total) = check.progress();
            let fraction = if total > 0 { done as f32 / total as f32 } else { 0.0 };
            ui.add(
                egui::ProgressBar::new(fraction).text(format!("checking {done}/{total} files")).desired_width(240.0),
            );
            if ui.button("Cancel").clicked() {
                commands.push(AppCommand::CancelDataCheck);
            }
        } else if ui
            .button("Check data")
            .on_hover_text(
                "Read every file: counts per class, sizes, unreadable files, duplicates, layout problems. \
                 Interrupted checks continue where they stopped.",
            )
            .clicked()
        {
            commands.push(AppCommand::CheckData);
        }
    });
    match &check.last {
        None => {}
        Some(Err(message)) => {
            ui.label(RichText::new(format!("Data check failed: {message}")).color(ERROR_COLOR));
        }
        Some(Ok(report)) => report_ui(ui, report),
    }
}

/// The data report as tables: classes, sizes, layout summary, every problem.
fn report_ui(ui: &mut Ui, report: &DataReport) {
    ui.label(
        RichText::new(format!(
            "{} usable images of {} image files in {} classes ({:.1} s)",
            report.usable_images,
            report.image_files,
            report.classes.len(),
            report.check_secs
        ))
        .strong(),
    );
    for error in &report.errors {
        ui.label(RichText::new(error).color(ERROR_COLOR));
    }
    egui::Grid::new("data_classes").striped(true).num_columns(3).show(ui, |ui| {
        ui.label(RichText::new("Class").strong());
        ui.label(RichText::new("Files").strong());
        ui.label(RichText::new("Usable").strong());
        ui.end_row();
        for class in &report.classes {
            ui.label(&class.name);
            ui.label(class.files.to_string());
            let usable = RichText::new(class.usable.to_string());
            ui.label(if class.usable == 0 { usable.color(ERROR_COLOR) } else { usable });
            ui.end_row();
        }
    });
    let sizes: Vec<String> =
        report.image_sizes.iter().take(6).map(|s| format!("{}×{} ({})", s.width, s.height, s.count)).collect();
    if !sizes.is_empty() {
        ui.label(format!("Sizes: {}", sizes.join(", ")));
    }
    if let Some(layout) = &report.layout {
        ui.label(format!("Layouts: {}", layout.describe()));
    }
    if report.problems.is_empty() {
        ui.label("No problems found.");
        return;
    }
    egui::CollapsingHeader::new(format!("Problems ({}) — skipped, never fatal", report.problems.len()))
        .default_open(true)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().id_salt("data_problems").max_height(260.0).show(ui, |ui| {
                // One wrapped line per problem: the panel's column is narrow, and details are long.
                for problem in &report.problems {
                    ui.horizontal_wrapped(|ui| {
                        ui.label(RichText::new(problem.kind.label()).color(WARNING_COLOR));
                        match problem.line {
                            Some(line) => ui.label(RichText::new(format!("{}:{line}", problem.path)).monospace()),
                            None => ui.label(RichText::new(&problem.path).monospace()),
                        };
                        ui.add(egui::Label::new(&problem.detail).wrap());
                    });
                }
            });
        });
}

fn combo_ui<T: PartialEq + Copy>(ui: &mut Ui, id: &str, value: &mut T, options: &[(T, &str)]) -> Response {
    let selected = options.iter().find(|(v, _)| v == value).map_or("?", |(_, name)| *name);
    ComboBox::from_id_salt(id)
        .selected_text(selected)
        .show_ui(ui, |ui| {
            for (option, name) in options {
                ui.selectable_value(value, *option, *name);
            }
        })
        .response
}

fn metric_ui(ui: &mut Ui, id: &str, metric: &mut String, names: &[String]) -> Response {
    ComboBox::from_id_salt(id)
        .selected_text(metric.clone())
        .show_ui(ui, |ui| {
            for name in names {
                ui.selectable_value(metric, name.clone(), name.as_str());
            }
        })
        .response
}

/// One task setting's widget, editing `table[key]` (written only when changed). For a stage (`inherited`
/// = the run's value), the table is the stage's overrides: a value equal to the run's is removed again.
fn setting_ui(
    ui: &mut Ui,
    setting: &crate::task::settings::Setting,
    table: &mut toml::Table,
    inherited: Option<&toml::Value>,
) -> Response {
    use crate::task::settings::SettingKind;
    let default = setting.default_value();
    let current = table.get(&setting.key).or(inherited).cloned().unwrap_or(default);
    let (response, value) = match &setting.kind {
        SettingKind::Integer { min, max, .. } => {
            let mut v = current.as_integer().unwrap_or(0);
            let r = ui.add(DragValue::new(&mut v).range(*min..=*max));
            (r, toml::Value::Integer(v))
        }
        SettingKind::Float { min, max, .. } => {
            let mut v = current.as_float().or_else(|| current.as_integer().map(|i| i as f64)).unwrap_or(0.0);
            let r = ui.add(DragValue::new(&mut v).range(*min..=*max).speed(0.01).max_decimals(4));
            (r, toml::Value::Float(v))
        }
        SettingKind::Bool { .. } => {
            let mut v = current.as_bool().unwrap_or(false);
            let r = ui.checkbox(&mut v, "");
            (r, toml::Value::Boolean(v))
        }
        SettingKind::Path | SettingKind::Text { .. } => {
            let mut v = current.as_str().unwrap_or("").to_string();
            let hint = if setting.kind == SettingKind::Path { "empty = none" } else { "" };
            let r = ui.add(TextEdit::singleline(&mut v).desired_width(200.0).hint_text(hint));
            (r, toml::Value::String(v))
        }
        SettingKind::Choice { options, .. } => {
            let mut v = current.as_str().unwrap_or("").to_string();
            let r = ComboBox::from_id_salt(format!("setting_{}", setting.key))
                .selected_text(v.clone())
                .show_ui(ui, |ui| {
                    for option in options {
                        ui.selectable_value(&mut v, option.clone(), option.as_str());
                    }
                })
                .response;
            (r, toml::Value::String(v))
        }
    };
    if value != current {
        match inherited {
            Some(run_value) if *run_value == value => {
                table.remove(&setting.key);
            }
            _ => {
                table.insert(setting.key.clone(), value);
            }
        }
    }
    response.on_hover_text(&setting.help)
}

fn device_ui(ui: &mut Ui, device: &mut String) -> Response {
    ui.add(TextEdit::singleline(device).desired_width(100.0).hint_text("auto, cpu, cuda:0"))
        .on_hover_text("auto (CUDA when built with it and available, else CPU), cpu, or cuda:N")
}

/// The stages as bars on one global step axis; click one to edit it.
fn timeline_ui(ui: &mut Ui, stages: &[StageConfig], selected: usize, commands: &mut Vec<AppCommand>) {
    let total: u64 = stages.iter().map(|s| s.steps).sum();
    let width = ui.available_width().max(100.0);
    let (rect, response) = ui.allocate_exact_size(egui::vec2(width, 34.0), Sense::click());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
    if total == 0 {
        painter.text(
            rect.center(),
            egui::Align2::CENTER_CENTER,
            "no steps",
            egui::FontId::proportional(12.0),
            Color32::GRAY,
        );
        return;
    }
    let palette = [
        Color32::from_rgb(0x3f, 0x6f, 0xb5),
        Color32::from_rgb(0x5b, 0x9a, 0x5b),
        Color32::from_rgb(0xb5, 0x7f, 0x3f),
        Color32::from_rgb(0x8a, 0x5b, 0xb0),
    ];
    let bar = egui::Rect::from_min_max(rect.min, egui::pos2(rect.max.x, rect.min.y + 22.0));
    let mut start = 0u64;
    let mut hovered_text = None;
    for (i, stage) in stages.iter().enumerate() {
        let x0 = bar.min.x + bar.width() * start as f32 / total as f32;
        let x1 = bar.min.x + bar.width() * (start + stage.steps) as f32 / total as f32;
        let r = egui::Rect::from_min_max(egui::pos2(x0, bar.min.y), egui::pos2(x1.max(x0 + 1.0), bar.max.y));
        let mut fill = palette[i % palette.len()];
        if i != selected {
            fill = fill.gamma_multiply(0.6);
        }
        painter.rect_filled(r.shrink(1.0), 2.0, fill);
        painter.text(
            r.center(),
            egui::Align2::CENTER_CENTER,
            &stage.name,
            egui::FontId::proportional(11.0),
            Color32::WHITE,
        );
        painter.text(
            egui::pos2(x0 + 2.0, bar.max.y + 1.0),
            egui::Align2::LEFT_TOP,
            start.to_string(),
            egui::FontId::proportional(9.0),
            ui.visuals().weak_text_color(),
        );
        if let Some(pos) = response.hover_pos().or(response.interact_pointer_pos()) {
            if r.contains(egui::pos2(pos.x, r.center().y)) {
                hovered_text =
                    Some(format!("{}: steps {}..{} ({} steps)", stage.name, start, start + stage.steps, stage.steps));
                if response.clicked() {
                    commands.push(AppCommand::Stage(StageOp::Select(i)));
                }
            }
        }
        start += stage.steps;
    }
    painter.text(
        egui::pos2(bar.max.x - 2.0, bar.max.y + 1.0),
        egui::Align2::RIGHT_TOP,
        total.to_string(),
        egui::FontId::proportional(9.0),
        ui.visuals().weak_text_color(),
    );
    if let Some(text) = hovered_text {
        response.on_hover_text(text);
    }
}

fn stage_list_ui(
    ui: &mut Ui,
    stages: &[StageConfig],
    selected: usize,
    issues: &[ConfigIssue],
    commands: &mut Vec<AppCommand>,
) {
    for (i, stage) in stages.iter().enumerate() {
        let prefix = format!("stages[{i}]");
        let bad = issues.iter().any(|issue| {
            issue.path == prefix
                || issue.path.starts_with(&format!("{prefix}."))
                || issue.path.starts_with(&format!("{prefix}["))
        });
        let mut text = RichText::new(format!("{}. {} — {} steps", i + 1, stage.name, stage.steps));
        if bad {
            text = text.color(ERROR_COLOR);
        }
        if ui.selectable_label(i == selected, text).clicked() {
            commands.push(AppCommand::Stage(StageOp::Select(i)));
        }
    }
    ui.horizontal_wrapped(|ui| {
        let has = selected < stages.len();
        if ui.button("Add stage").clicked() {
            commands.push(AppCommand::Stage(StageOp::Add));
        }
        if ui.add_enabled(has, egui::Button::new("Duplicate stage")).clicked() {
            commands.push(AppCommand::Stage(StageOp::Duplicate(selected)));
        }
        if ui.add_enabled(has, egui::Button::new("Remove stage")).clicked() {
            commands.push(AppCommand::Stage(StageOp::Remove(selected)));
        }
        if ui.add_enabled(has && selected > 0, egui::Button::new("Move up")).clicked() {
            commands.push(AppCommand::Stage(StageOp::MoveUp(selected)));
        }
        if ui.add_enabled(selected + 1 < stages.len(), egui::Button::new("Move down")).clicked() {
            commands.push(AppCommand::Stage(StageOp::MoveDown(selected)));
        }
    });
}

fn stage_editor_ui(
    ui: &mut Ui,
    stage: &mut StageConfig,
    index: usize,
    fields: &mut Fields<'_>,
    task: Option<&crate::task::TaskDescriptor>,
    run_settings: &toml::Table,
) {
    let p = |field: &str| format!("stages[{index}].{field}");
    egui::Grid::new(format!("stage_grid_{index}")).num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
        for setting in task.iter().flat_map(|t| t.settings.settings.iter()).filter(|s| s.per_stage) {
            let inherited = run_settings.get(&setting.key).cloned().unwrap_or_else(|| setting.default_value());
            let label = format!("{} (this stage)", setting.label);
            fields.row(ui, &label, p(&format!("task.{}", setting.key)), |ui| {
                setting_ui(ui, setting, &mut stage.task, Some(&inherited))
            });
        }
        fields
            .row(ui, "Stage name", p("name"), |ui| ui.add(TextEdit::singleline(&mut stage.name).desired_width(160.0)));
        fields.row(ui, "Steps", p("steps"), |ui| ui.add(DragValue::new(&mut stage.steps).speed(10)));
        fields.row(ui, "Trainable", p("trainable"), |ui| trainable_ui(ui, &mut stage.trainable));
        if let Trainable::Globs(globs) = &stage.trainable {
            for (g, _) in globs.iter().enumerate() {
                fields.issue_ui(ui, &format!("stages[{index}].trainable[{g}]"));
            }
        }
        fields.row(ui, "Batch size", p("batch_size"), |ui| ui.add(DragValue::new(&mut stage.batch_size)));
        fields.row(ui, "Grad accumulation", p("grad_accum"), |ui| ui.add(DragValue::new(&mut stage.grad_accum)));
        fields.row(ui, "Learning rate", p("lr"), |ui| {
            ui.add(
                DragValue::new(&mut stage.lr).speed(1e-5).max_decimals(6).custom_formatter(|v, _| format!("{v:.2e}")),
            )
        });
        fields.row(ui, "Schedule", p("schedule.kind"), |ui| {
            combo_ui(
                ui,
                "schedule_kind",
                &mut stage.schedule.kind,
                &[
                    (ScheduleKind::Constant, "constant"),
                    (ScheduleKind::Cosine, "cosine"),
                    (ScheduleKind::Linear, "linear"),
                ],
            )
        });
        fields.row(ui, "Warmup steps", p("schedule.warmup_steps"), |ui| {
            ui.add(DragValue::new(&mut stage.schedule.warmup_steps))
        });
        fields.row(ui, "LR floor", p("schedule.floor"), |ui| {
            ui.add(DragValue::new(&mut stage.schedule.floor).speed(0.01).max_decimals(3))
        });
        fields.row(ui, "Weight decay", p("weight_decay"), |ui| {
            ui.add(DragValue::new(&mut stage.weight_decay).speed(0.001).max_decimals(4))
        });
        fields.row(ui, "Grad clip", p("grad_clip"), |ui| {
            ui.add(DragValue::new(&mut stage.grad_clip).speed(0.01).max_decimals(3)).on_hover_text("0 = no clipping")
        });
        fields.row(ui, "EMA decay", p("ema_decay"), |ui| {
            ui.add(DragValue::new(&mut stage.ema_decay).speed(0.0005).max_decimals(4)).on_hover_text("0 = no EMA")
        });
        // The denoiser's own stage options: other tasks ignore them, so they are not offered there.
        if task.is_none_or(|t| t.kind == "shapes") {
            fields.row(ui, "Class dropout", p("class_dropout"), |ui| {
                ui.add(DragValue::new(&mut stage.class_dropout).speed(0.01).max_decimals(3))
            });
            fields.row(ui, "Layout dropout", p("layout_dropout"), |ui| {
                ui.add(DragValue::new(&mut stage.layout_dropout).speed(0.01).max_decimals(3))
            });
            fields.row(ui, "Object loss weight", p("object_loss_weight"), |ui| {
                ui.add(DragValue::new(&mut stage.object_loss_weight).speed(0.05).max_decimals(2)).on_hover_text(
                    "Extra loss weight on pixels inside object boxes: 3 = they count 4 times; 0 = plain mean",
                )
            });
            fields.row(ui, "Object loss spread", p("object_loss_mode"), |ui| {
                let options = [(ObjectLossMode::Pixels, "per pixel"), (ObjectLossMode::Objects, "per object")];
                combo_ui(ui, "object_loss_mode", &mut stage.object_loss_mode, &options).on_hover_text(
                    "Per pixel: every object pixel gains the weight. Per object: every object gains the same total, \
                     so a small object's pixels weigh more",
                )
            });
            fields.row(ui, "Timestep logit mean", p("timestep_logit_mean"), |ui| {
                ui.add(DragValue::new(&mut stage.timestep_logit_mean).speed(0.05).range(-3.0..=3.0).max_decimals(2))
                    .on_hover_text(
                        "Where training timesteps centre: 0 = t 0.5; negative = more low-noise (detail) training",
                    )
            });
        }
        fields.row(ui, "Log every", p("log_every"), |ui| ui.add(DragValue::new(&mut stage.log_every)));
        fields.row(ui, "Eval every", p("eval_every"), |ui| {
            ui.add(DragValue::new(&mut stage.eval_every)).on_hover_text("0 = never")
        });
        fields.row(ui, "Save every", p("save_every"), |ui| {
            ui.add(DragValue::new(&mut stage.save_every)).on_hover_text("0 = only at the end of the stage")
        });
        fields.row(ui, "Sample every", p("sample_every"), |ui| {
            ui.add(DragValue::new(&mut stage.sample_every)).on_hover_text("0 = only with checkpoints")
        });
        fields.row(ui, "Early stopping", p("early_stopping"), |ui| {
            let mut on = stage.early_stopping.is_some();
            let response = ui.checkbox(&mut on, "stop when the metric stops improving");
            if response.changed() {
                stage.early_stopping = on.then(EarlyStoppingConfig::default);
            }
            response
        });
        if let Some(es) = &mut stage.early_stopping {
            fields.row(ui, "Metric", p("early_stopping.metric"), |ui| {
                let names = task.map_or_else(|| METRICS.map(String::from).to_vec(), |t| t.metric_names());
                metric_ui(ui, "es_metric", &mut es.metric, &names)
            });
            fields.row(ui, "Mode", p("early_stopping.mode"), |ui| {
                combo_ui(ui, "es_mode", &mut es.mode, &[(MetricMode::Min, "min"), (MetricMode::Max, "max")])
            });
            fields.row(ui, "Patience", p("early_stopping.patience"), |ui| ui.add(DragValue::new(&mut es.patience)));
            fields.row(ui, "Min delta", p("early_stopping.min_delta"), |ui| {
                ui.add(DragValue::new(&mut es.min_delta).speed(0.001).max_decimals(4))
            });
        }
        fields.row(ui, "Warm start", p("warm_start"), |ui| {
            let mut text = stage.warm_start.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let response = ui
                .add(TextEdit::singleline(&mut text).desired_width(220.0).hint_text("checkpoint directory (optional)"));
            if response.changed() {
                stage.warm_start = (!text.is_empty()).then(|| text.into());
            }
            response
        });
    });
}

fn trainable_ui(ui: &mut Ui, trainable: &mut Trainable) -> Response {
    let current = match trainable {
        Trainable::Group(TrainableGroup::All) => "all",
        Trainable::Group(TrainableGroup::Adapter) => "adapter",
        Trainable::Group(TrainableGroup::Layout) => "layout",
        Trainable::Group(TrainableGroup::Base) => "base",
        Trainable::Globs(_) => "name globs",
    };
    let mut response = ComboBox::from_id_salt("trainable")
        .selected_text(current)
        .show_ui(ui, |ui| {
            for (name, value) in [
                ("all", Trainable::Group(TrainableGroup::All)),
                ("adapter", Trainable::Group(TrainableGroup::Adapter)),
                ("layout", Trainable::Group(TrainableGroup::Layout)),
                ("base", Trainable::Group(TrainableGroup::Base)),
            ] {
                if ui.selectable_label(current == name, name).clicked() {
                    *trainable = value;
                }
            }
            if ui.selectable_label(current == "name globs", "name globs").clicked() && current != "name globs" {
                *trainable = Trainable::Globs(vec!["blocks.*.adapter_*".to_string()]);
            }
        })
        .response;
    if let Trainable::Globs(globs) = trainable {
        let mut text = globs.join(", ");
        let edit = ui.add(TextEdit::singleline(&mut text).desired_width(200.0).hint_text("glob, glob, …"));
        if edit.changed() {
            *globs = text.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect();
        }
        response = response.union(edit);
    }
    response
}
