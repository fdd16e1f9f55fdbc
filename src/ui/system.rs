//! The System panel: CPU (process and machine), memory (process RSS, machine total and available) and NVIDIA
//! GPUs through NVML, sampled about once a second, with short history plots.

use egui::{RichText, Ui};
use egui_plot::{Line, Plot, PlotPoints};

use crate::app::preflight::format_bytes;
use crate::app::system::SystemSample;
use crate::app::WickApp;

/// Height of a history plot, in points.
const PLOT_HEIGHT: f32 = 120.0;

/// Draws the System panel.
pub fn system_ui(ui: &mut Ui, app: &mut WickApp) {
    ui.heading("System");
    let Some(monitor) = &app.panels.system else {
        ui.label("Starting…");
        return;
    };
    let Some(latest) = monitor.latest() else {
        ui.label("Sampling…");
        return;
    };
    let percent = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.0} %"));
    let bytes = |v: Option<u64>| v.map_or("—".to_string(), format_bytes);
    egui::Grid::new("system_readings").num_columns(2).spacing([16.0, 4.0]).show(ui, |ui| {
        ui.label("CPU (this process)");
        ui.label(format!("{} of one core", percent(latest.process_cpu_percent)));
        ui.end_row();
        ui.label("CPU (machine)");
        ui.label(format!("{} of {} cores", percent(latest.machine_cpu_percent), latest.cores));
        ui.end_row();
        ui.label("Memory (this process)");
        ui.label(format!("{} resident", bytes(latest.rss_bytes)));
        ui.end_row();
        ui.label("Memory (machine)");
        ui.label(format!("{} available of {}", bytes(latest.mem_available_bytes), bytes(latest.mem_total_bytes)));
        ui.end_row();
    });
    ui.add_space(6.0);
    match &latest.gpus {
        Ok(gpus) if !gpus.is_empty() => {
            for (index, gpu) in gpus.iter().enumerate() {
                ui.label(RichText::new(format!("GPU {index}: {}", gpu.name)).strong());
                let memory = match (gpu.mem_used_bytes, gpu.mem_total_bytes) {
                    (Some(used), Some(total)) => format!("{} of {}", format_bytes(used), format_bytes(total)),
                    _ => "—".to_string(),
                };
                let util = gpu.util_percent.map_or("—".to_string(), |u| format!("{u} %"));
                let temp = gpu.temperature_c.map_or("—".to_string(), |t| format!("{t} °C"));
                let power = gpu.power_watts.map_or("—".to_string(), |w| format!("{w:.0} W"));
                ui.label(format!("memory {memory} · utilisation {util} · {temp} · {power}"));
            }
        }
        Ok(_) => {
            ui.label("no NVIDIA GPU found (NVML: no devices)");
        }
        Err(why) => {
            let reason = why.strip_prefix("NVML: ").unwrap_or(why);
            ui.label(format!("no NVIDIA GPU found (NVML: {reason})"));
        }
    }
    ui.add_space(6.0);
    let history: Vec<&SystemSample> = monitor.history.iter().collect();
    let series = |f: &dyn Fn(&SystemSample) -> Option<f64>| -> Vec<[f64; 2]> {
        history.iter().filter_map(|s| f(s).map(|v| [s.at_secs, v])).collect()
    };
    history_plot_ui(
        ui,
        "CPU %",
        vec![("process", series(&|s| s.process_cpu_percent)), ("machine", series(&|s| s.machine_cpu_percent))],
    );
    let mib = |b: Option<u64>| b.map(|b| b as f64 / (1024.0 * 1024.0));
    history_plot_ui(
        ui,
        "Memory MiB",
        vec![
            ("process RSS", series(&|s| mib(s.rss_bytes))),
            (
                "machine used",
                series(&|s| mib(s.mem_total_bytes.zip(s.mem_available_bytes).map(|(t, a)| t.saturating_sub(a)))),
            ),
        ],
    );
    if latest.gpus.as_ref().is_ok_and(|g| !g.is_empty()) {
        history_plot_ui(
            ui,
            "GPU utilisation %",
            vec![(
                "GPU 0",
                series(&|s| s.gpus.as_ref().ok().and_then(|g| g.first()).and_then(|g| g.util_percent).map(f64::from)),
            )],
        );
    }
}

fn history_plot_ui(ui: &mut Ui, title: &str, series: Vec<(&str, Vec<[f64; 2]>)>) {
    ui.label(title);
    Plot::new(title).height(PLOT_HEIGHT).allow_scroll(false).legend(egui_plot::Legend::default()).show(ui, |plot| {
        for (name, points) in series {
            plot.line(Line::new(name, PlotPoints::from(points)));
        }
    });
}
