//! The Live panel: linked plots of the viewed runs (loss with smoothing, lr, grad norm with the clip line,
//! gates, FID, judge scores, throughput, memory), stage bands, event markers with their messages on hover,
//! log scale, step or wall-time axis, CSV export. Plots get per-pixel envelopes from
//! [`crate::app::plot_data::PlotCache`], never the raw series.

use std::path::PathBuf;

use egui::{Color32, Id, Slider, Ui};
use egui_plot::{Legend, Line, LineStyle, MarkerShape, Plot, PlotPoints, Points, Span, VLine};

use crate::app::plot_data::{EnvelopeKey, PlotCache, SMOOTHED_LOSS};
use crate::app::state::{LiveSettings, XAxis};
use crate::app::store::{names, MarkerKind, RunStore};
use crate::app::{AppCommand, WickApp};

/// Height of one plot, in points.
const PLOT_HEIGHT: f32 = 190.0;

/// Colours of the series of one plot.
const PALETTE: [Color32; 8] = [
    Color32::from_rgb(0x4e, 0x9a, 0xe6),
    Color32::from_rgb(0xe6, 0x8a, 0x3c),
    Color32::from_rgb(0x5c, 0xb8, 0x5c),
    Color32::from_rgb(0xd6, 0x5c, 0xb0),
    Color32::from_rgb(0xc9, 0xc1, 0x4a),
    Color32::from_rgb(0x7a, 0x6c, 0xe0),
    Color32::from_rgb(0x4a, 0xc4, 0xc4),
    Color32::from_rgb(0xb0, 0x7a, 0x50),
];

/// One plot: its title and the series it draws.
struct PlotSpec {
    title: String,
    /// (series name, legend label, emphasised).
    series: Vec<(String, String, bool)>,
    /// Draw the gradient clip threshold.
    clip_line: bool,
}

/// Title of the gates plot.
const GATES_TITLE: &str = "Adapter gates";

/// The smallest y-range of the gates plot: gates sit at exactly 0 until the adapter trains, and a flat series
/// would otherwise get an arbitrary range.
const GATES_MIN_HALF_SPAN: f64 = 0.02;

/// Series the fixed plots draw (gates are `gate[i]`).
const KNOWN_SERIES: [&str; 14] = [
    names::LOSS,
    SMOOTHED_LOSS,
    names::LR,
    names::GRAD_NORM,
    names::GATE_MEAN,
    names::SAMPLES_PER_S,
    names::RSS_MIB,
    names::GPU_MIB,
    names::FID,
    names::TOP[0],
    names::TOP[1],
    names::TOP[2],
    names::IOU,
    names::VAL_LOSS,
];

/// The plots of `stores`: the known series in their plots (the shapes task's only when a shown run has
/// them), then every other series a task or run reports, grouped by the part of its name before `/` (a name
/// without `/` is a plot of its own, titled by the metric's display name when a task declares it).
fn plot_specs(stores: &[&RunStore], settings: &LiveSettings) -> Vec<PlotSpec> {
    let s = |name: &str, label: &str, strong: bool| (name.to_string(), label.to_string(), strong);
    let spec = |title: &str, series: Vec<(String, String, bool)>| PlotSpec {
        title: title.to_string(),
        series,
        clip_line: false,
    };
    let mut loss = vec![s(names::LOSS, "loss", settings.smoothing <= 0.0)];
    if settings.smoothing > 0.0 {
        loss.push(s(SMOOTHED_LOSS, "loss (smoothed)", true));
    }
    let shapes = stores.iter().any(|st| st.is_shapes());
    let has = |name: &str| stores.iter().any(|st| st.series.get(name).is_some_and(|series| !series.is_empty()));
    let gate_count = stores.iter().map(|st| st.gate_count()).max().unwrap_or(0);
    let mut gates: Vec<_> = (0..gate_count).map(|i| (names::gate(i), format!("gate {i}"), false)).collect();
    gates.push(s(names::GATE_MEAN, "gate mean |g|", true));
    let mut specs = vec![
        spec("Loss", loss),
        spec("Learning rate", vec![s(names::LR, "lr", true)]),
        PlotSpec {
            title: "Gradient norm".to_string(),
            series: vec![s(names::GRAD_NORM, "grad norm", true)],
            clip_line: true,
        },
    ];
    if shapes || gate_count > 0 {
        specs.push(spec(GATES_TITLE, gates));
    }
    if shapes || has(names::VAL_LOSS) {
        specs.push(spec("Validation loss", vec![s(names::VAL_LOSS, "val_loss", true)]));
    }
    if shapes {
        specs.push(spec("FID (judge)", vec![s(names::FID, "FID (judge)", true)]));
        specs.push(spec(
            "Judge scores",
            vec![
                s(names::TOP[0], "top-1", true),
                s(names::TOP[1], "top-2", false),
                s(names::TOP[2], "top-3", false),
                s(names::IOU, "IoU", true),
            ],
        ));
    }
    // Every other series, grouped by prefix.
    // Display names come from the stores' task.json (read when they were loaded): nothing is built per frame.
    let display = |name: &str| {
        stores
            .iter()
            .filter_map(|st| st.task.as_ref())
            .find_map(|task| task.metrics.iter().find(|m| m.name == name).map(|m| m.display.clone()))
    };
    let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for store in stores {
        for name in store.series.keys() {
            if KNOWN_SERIES.contains(&name.as_str()) || name.starts_with("gate[") {
                continue;
            }
            let group = name.split_once('/').map_or(name.as_str(), |(prefix, _)| prefix).to_string();
            let members = groups.entry(group).or_default();
            if !members.contains(name) {
                members.push(name.clone());
            }
        }
    }
    for (group, members) in groups {
        let title = if members.len() == 1 && members[0] == group { display(&group).unwrap_or(group) } else { group };
        let series = members
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let label = display(name).unwrap_or_else(|| name.clone());
                (name.clone(), label, i == 0)
            })
            .collect();
        specs.push(PlotSpec { title, series, clip_line: false });
    }
    specs.push(spec("Throughput", vec![s(names::SAMPLES_PER_S, "samples/s", true)]));
    specs.push(spec("Memory", vec![s(names::RSS_MIB, "RSS MiB", true), s(names::GPU_MIB, "GPU MiB", false)]));
    specs
}

/// Draws the Live panel.
pub fn live_ui(ui: &mut Ui, app: &mut WickApp, commands: &mut Vec<AppCommand>) {
    let settings_before = app.persisted.live.clone();
    toolbar_ui(ui, &mut app.persisted.live, commands);
    if settings_before.x_axis != app.persisted.live.x_axis {
        app.plot_cache.x_range = None;
    }
    let settings = app.persisted.live.clone();
    ui.separator();

    let runs: Vec<PathBuf> = app.selected.iter().filter(|r| app.stores.contains_key(*r)).cloned().collect();
    if runs.is_empty() {
        let loading = app.selected.iter().any(|r| app.is_loading(r));
        ui.vertical_centered(|ui| {
            ui.add_space(30.0);
            if loading {
                ui.spinner();
                ui.label("Loading the run…");
            } else {
                ui.label("Select a run in the Runs panel, or start one from Setup.");
            }
        });
        return;
    }
    let stores: Vec<&RunStore> = runs.iter().filter_map(|r| app.stores.get(r)).collect();
    for store in stores.iter().filter(|s| s.vanished) {
        let text = format!(
            "{} no longer exists (deleted or moved?): the plots show what was read before it went",
            store.root.display()
        );
        ui.colored_label(ui.visuals().error_fg_color, text);
    }
    for note in stores.iter().flat_map(|s| &s.damage_notes) {
        ui.colored_label(ui.visuals().warn_fg_color, format!("Damaged log: {note}"));
    }
    let specs = plot_specs(&stores, &settings);

    // Prepare every envelope (mutable phase), then draw from the cache (shared phase).
    let cache = &mut app.plot_cache;
    cache.recomputed = 0;
    let reset_bounds = cache.shown_runs != runs;
    if reset_bounds {
        cache.shown_runs = runs.clone();
        cache.x_range = None;
    }
    for store in &stores {
        cache.update_smoothed(store, settings.smoothing);
    }
    for spec in &specs {
        for store in &stores {
            for (name, _, _) in &spec.series {
                cache.prepare(&key(&store.root, name, &settings), store);
            }
        }
    }
    let cache: &PlotCache = cache;
    let link = Id::unique("live_plots");
    let mut frame_info: Option<(bool, (f64, f64), usize)> = None;
    egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
        for spec in &specs {
            ui.label(egui::RichText::new(&spec.title).strong());
            let info = plot_ui(ui, spec, &stores, cache, &settings, link, reset_bounds);
            if frame_info.is_none() {
                frame_info = Some(info);
            }
        }
    });
    if let Some((auto_x, bounds, width_px)) = frame_info {
        let cache = &mut app.plot_cache;
        cache.x_range = if auto_x { None } else { Some(bounds) };
        if cache.width_px != width_px {
            cache.width_px = width_px;
            ui.ctx().request_repaint();
        }
    }
}

fn key(run: &std::path::Path, series: &str, settings: &LiveSettings) -> EnvelopeKey {
    EnvelopeKey { run: run.to_path_buf(), series: series.to_string(), x_axis: settings.x_axis, log: settings.log_scale }
}

fn toolbar_ui(ui: &mut Ui, settings: &mut LiveSettings, commands: &mut Vec<AppCommand>) {
    ui.horizontal(|ui| {
        ui.add(Slider::new(&mut settings.smoothing, 0.0..=0.999).text("Loss smoothing"));
        ui.separator();
        ui.checkbox(&mut settings.log_scale, "Log scale");
        ui.separator();
        ui.label("X axis:");
        ui.radio_value(&mut settings.x_axis, XAxis::Step, "Step");
        ui.radio_value(&mut settings.x_axis, XAxis::WallTime, "Wall time");
        ui.separator();
        ui.checkbox(&mut settings.show_markers, "Event markers");
        ui.separator();
        if ui.button("Export CSV…").on_hover_text("Every point of the shown x-range, full resolution").clicked() {
            commands.push(AppCommand::ExportCsv);
        }
    });
}

fn marker_color(kind: MarkerKind) -> Color32 {
    match kind {
        MarkerKind::Checkpoint => Color32::from_rgba_unmultiplied(150, 150, 150, 90),
        MarkerKind::Best => Color32::from_rgb(0x4c, 0xaf, 0x50),
        MarkerKind::Nan => Color32::from_rgb(0xe0, 0x4f, 0x4f),
        MarkerKind::GateAlert => Color32::from_rgb(0xe0, 0xb0, 0x30),
        MarkerKind::EarlyStop => Color32::from_rgb(0xb0, 0x6f, 0xe0),
        MarkerKind::End => Color32::from_rgb(0x5a, 0x9b, 0xe6),
    }
}

fn x_of(store: &RunStore, step: u64, settings: &LiveSettings) -> f64 {
    match settings.x_axis {
        XAxis::Step => step as f64,
        XAxis::WallTime => store.wall_at_step(step),
    }
}

/// One plot, back at its automatic bounds when `reset_bounds`; returns (x auto-bounds, visible x-range, data
/// width in points).
fn plot_ui(
    ui: &mut Ui,
    spec: &PlotSpec,
    stores: &[&RunStore],
    cache: &PlotCache,
    settings: &LiveSettings,
    link: Id,
    reset_bounds: bool,
) -> (bool, (f64, f64), usize) {
    let log = settings.log_scale;
    let overlay = stores.len() > 1;
    let mut plot = Plot::new(spec.title.as_str())
        .height(PLOT_HEIGHT)
        .link_axis(link, [true, false])
        .link_cursor(link, [true, false])
        .legend(Legend::default())
        // The mouse wheel scrolls the panel, never pans the plot under the pointer (drag pans, Ctrl+wheel zooms).
        .allow_scroll(false)
        .x_axis_label(match settings.x_axis {
            XAxis::Step => "step",
            XAxis::WallTime => "training seconds",
        });
    if log {
        plot = plot.y_axis_formatter(|mark, _| format!("{:.1e}", 10f64.powf(mark.value)));
    } else {
        plot = plot
            .y_grid_spacer(egui_plot::uniform_grid_spacer(|input| one_two_five_steps(input.base_step_size)))
            .y_axis_formatter(|mark, _| tick_label(mark.value, mark.step_size));
    }
    let primary = stores[0];
    // Every plot spans the same x-range in auto mode: the whole plan (and every point), so linked plots line up.
    let x_end = stores
        .iter()
        .map(|st| {
            let plan_end = st.ledger.last().map_or(0.0, |e| x_of(st, e.end_step, settings));
            let data_end = st.series.get(names::LOSS).map_or(0.0, |l| match settings.x_axis {
                XAxis::Step => l.steps.last().copied().unwrap_or(0.0),
                XAxis::WallTime => l.wall_secs.last().copied().unwrap_or(0.0),
            });
            plan_end.max(data_end)
        })
        .fold(1.0, f64::max);
    plot = plot.include_x(0.0).include_x(x_end).y_axis_min_width(56.0);
    if reset_bounds {
        plot = plot.reset();
    }
    if spec.title == GATES_TITLE && !log {
        plot = plot.include_y(-GATES_MIN_HALF_SPAN).include_y(GATES_MIN_HALF_SPAN);
    }
    let response =
        plot.show(ui, |plot_ui| {
            // Stage bands of the primary run (unnamed: the legend lists only the series; the top bar and the
            // Setup timeline name the stages).
            for (i, entry) in primary.ledger.iter().enumerate() {
                let (a, b) = (x_of(primary, entry.start_step, settings), x_of(primary, entry.end_step, settings));
                if b > a {
                    let fill = if i % 2 == 0 {
                        Color32::from_white_alpha(10)
                    } else {
                        Color32::from_rgba_unmultiplied(90, 140, 220, 14)
                    };
                    plot_ui.span(Span::new("", a..=b).fill(fill).border_width(0.0));
                }
            }
            if spec.clip_line {
                if let Some(config) = &primary.config {
                    for (stage, entry) in config.stages.iter().zip(&primary.ledger) {
                        if stage.grad_clip > 0.0 {
                            let y = if log { stage.grad_clip.log10() } else { stage.grad_clip };
                            let (a, b) =
                                (x_of(primary, entry.start_step, settings), x_of(primary, entry.end_step, settings));
                            plot_ui.line(
                                Line::new("clip threshold", PlotPoints::new(vec![[a, y], [b, y]]))
                                    .color(Color32::from_rgb(0xe0, 0x4f, 0x4f))
                                    .style(LineStyle::dashed_loose()),
                            );
                        }
                    }
                }
            }
            for (r, store) in stores.iter().enumerate() {
                for (s, (name, label, strong)) in spec.series.iter().enumerate() {
                    let Some(env) = cache.get(&key(&store.root, name, settings)) else { continue };
                    let color = PALETTE[(s + 3 * r) % PALETTE.len()];
                    let legend = if overlay { format!("{}: {label}", short_id(&store.id)) } else { label.clone() };
                    let faint = !*strong && name == names::LOSS;
                    let line_color = if faint { color.gamma_multiply(0.35) } else { color };
                    plot_ui.line(
                        Line::new(legend.clone(), PlotPoints::Borrowed(&env.line))
                            .color(line_color)
                            .width(if *strong { 1.6 } else { 1.0 }),
                    );
                    if env.line.len() < 64 {
                        plot_ui.points(
                            Points::new(legend.clone(), PlotPoints::Borrowed(&env.line)).color(line_color).radius(2.5),
                        );
                    }
                    if !env.nan_markers.is_empty() {
                        plot_ui.points(
                            Points::new("non-finite", PlotPoints::Borrowed(&env.nan_markers))
                                .shape(MarkerShape::Cross)
                                .radius(5.0)
                                .color(Color32::from_rgb(0xe0, 0x4f, 0x4f)),
                        );
                    }
                }
            }
            if settings.show_markers {
                for marker in &primary.markers {
                    plot_ui.vline(
                        VLine::new("", x_of(primary, marker.step, settings))
                            .color(marker_color(marker.kind))
                            .width(if marker.kind == MarkerKind::Checkpoint { 0.5 } else { 1.2 }),
                    );
                }
            }
            plot_ui.auto_bounds().x
        });

    // Event messages near the pointer.
    if settings.show_markers {
        if let Some(pos) = response.response.hover_pos() {
            let near: Vec<String> = primary
                .markers
                .iter()
                .filter(|m| {
                    let x = response.transform.position_from_point_x(x_of(primary, m.step, settings));
                    (x - pos.x).abs() <= 4.0
                })
                .map(|m| format!("step {} · {}: {}", m.step, m.kind.label(), m.message))
                .collect();
            if !near.is_empty() {
                response.response.clone().on_hover_ui_at_pointer(|ui| {
                    for line in near.iter().take(8) {
                        ui.label(line);
                    }
                });
            }
        }
    }
    let bounds = response.transform.bounds();
    let width_px = response.transform.frame().width().round().max(1.0) as usize;
    (response.inner, (bounds.min()[0], bounds.max()[0]), width_px)
}

/// The run id without its time stamp when that is long.
fn short_id(id: &str) -> &str {
    id.char_indices().nth(24).map_or(id, |(i, _)| &id[..i])
}

/// Grid steps at 1, 2 or 5 × 10^k, the finest at least `min_step`, each coarser one a multiple of the one before.
/// egui_plot's default uses powers of 10 only, and labels a step only when it is ≥ 20 px apart: a plot spanning
/// 0.1 in 190 px — the adapter gates — then labelled nothing but 0.
fn one_two_five_steps(min_step: f64) -> [f64; 3] {
    if !(min_step.is_finite() && min_step > 0.0) {
        return [1.0, 5.0, 10.0];
    }
    let decade = 10f64.powf(min_step.log10().floor());
    let mantissa = [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * decade >= min_step * (1.0 - 1e-9)).unwrap_or(10.0);
    let finest = mantissa * decade;
    // 1 → 5 → 10, 2 → 10 → 20, 5 → 10 → 50 (in units of the decade).
    let medium = if mantissa == 5.0 { 2.0 } else { 5.0 };
    [finest, finest * medium, finest * 10.0]
}

/// A tick label with the decimals its step needs: 0.5 on a step of 0.5 is "0.5" (egui_plot's default rounds the
/// decimals of a 5 × 10^k step down and shows "0").
fn tick_label(value: f64, step: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let decimals = if step > 0.0 && step.is_finite() { (-step.log10()).ceil().clamp(0.0, 12.0) as usize } else { 2 };
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::{one_two_five_steps, tick_label};

    #[test]
    fn tick_labels_carry_the_decimals_of_their_step() {
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        assert_eq!(tick_label(-0.05, 0.05), "-0.05");
        assert_eq!(tick_label(0.2, 0.2), "0.2");
        assert_eq!(tick_label(300.0, 100.0), "300");
        assert_eq!(tick_label(-0.0, 1.0), "0");
        assert_eq!(tick_label(1.0, 1.0), "1");
    }

    #[test]
    fn grid_steps_are_one_two_five_and_nest() {
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs());
        assert!(close(one_two_five_steps(0.0013), [0.002, 0.01, 0.02]));
        assert!(close(one_two_five_steps(0.003), [0.005, 0.01, 0.05]));
        assert!(close(one_two_five_steps(0.01), [0.01, 0.05, 0.1]));
        assert!(close(one_two_five_steps(70.0), [100.0, 500.0, 1000.0]));
        assert_eq!(one_two_five_steps(0.0), [1.0, 5.0, 10.0]);
        for min in [1e-5, 3.3e-3, 0.7, 42.0, 9e6] {
            let [a, b, c] = one_two_five_steps(min);
            assert!(a >= min * (1.0 - 1e-9) && a < min * 2.5 + 1e-12, "{min}: {a}");
            assert!(((b / a).round() - b / a).abs() < 1e-9 && ((c / b).round() - c / b).abs() < 1e-9, "{a} {b} {c}");
        }
    }
}
