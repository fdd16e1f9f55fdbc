//! CPU time of one frame of the window with the Live panel showing 8 series × 1,000,000 points, rendered
//! headless (egui pass + tessellation, no GPU). Prints the median and the 90th percentile.
//!
//! `cargo bench --bench ui_frame` (release). Also times recomputing the 8 envelopes for a new x-range,
//! which is what a pan or zoom frame adds.

use std::time::Instant;

use wick::app::dialog::ScriptedDialog;
use wick::app::state::{Panel, Persisted};
use wick::app::store::RunStore;
use wick::app::WickApp;
use wick::run::events::MetricsRecord;
use wick::run::TrainEvent;

const POINTS: usize = 1_000_000;
const FRAMES: usize = 60;

fn main() {
    let runs = std::env::temp_dir().join(format!("wick-bench-ui-{}", std::process::id()));
    let root = runs.join("bench-run");
    let mut store = RunStore::new(&root);
    let started = Instant::now();
    for i in 0..POINTS {
        let step = i as u64 + 1;
        let x = i as f64;
        let mut loss = 2.0 * (-x / 200_000.0).exp() + 0.05 * (x * 0.37).sin();
        if i == 500_000 {
            loss = 40.0; // A single spike: it must stay visible.
        }
        store.apply(&TrainEvent::Metrics(MetricsRecord {
            step,
            stage: "base".to_string(),
            wall_secs: x * 0.01,
            loss: if i == 700_000 { None } else { Some(loss) },
            lr: 1e-3 * (1.0 - x / POINTS as f64),
            grad_norm: Some(1.0 + 0.3 * (x * 0.11).cos()),
            gates: vec![0.01 * (x * 1e-5).sin(), 0.02 * (x * 2e-5).sin()],
            gate_mean: 0.015,
            samples_per_s: 500.0 + 20.0 * (x * 0.05).sin(),
            rss_bytes: Some(500 << 20),
            gpu_mem_bytes: None,
            scalars: Default::default(),
        }));
    }
    store.refresh_blocks();
    let series: usize = store.series.len();
    eprintln!("built {series} series × {POINTS} points in {:.1} s", started.elapsed().as_secs_f64());

    let ctx = egui::Context::default();
    let persisted = Persisted { panel: Panel::Live, ..Persisted::default() };
    let mut app = WickApp::with_state(ctx.clone(), runs.clone(), Box::new(ScriptedDialog::new()), persisted);
    app.show_store(store);

    // WICK_BENCH_HEIGHT=2400 makes every plot visible at once (1000: about four, the rest scrolled away).
    let height: f32 = std::env::var("WICK_BENCH_HEIGHT").ok().and_then(|h| h.parse().ok()).unwrap_or(1000.0);
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1600.0, height))),
        ..Default::default()
    };
    let frame = |app: &mut WickApp| {
        let t = Instant::now();
        let output = ctx.run_ui(input(), |ui| {
            app.logic();
            wick::ui::app_ui(ui, app);
            app.apply_commands();
        });
        let primitives = ctx.tessellate(output.shapes, output.pixels_per_point);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let vertices: usize = primitives
            .iter()
            .map(|p| match &p.primitive {
                egui::epaint::Primitive::Mesh(mesh) => mesh.vertices.len(),
                egui::epaint::Primitive::Callback(_) => 0,
            })
            .sum();
        (ms, vertices)
    };
    // Warm-up: first frames lay out, size the plots and build the envelopes.
    let mut vertices = 0;
    for _ in 0..5 {
        vertices = frame(&mut app).1;
    }
    let plotted: usize = app.stores[&root]
        .series
        .keys()
        .filter_map(|name| {
            let key = wick::app::plot_data::EnvelopeKey {
                run: root.clone(),
                series: name.clone(),
                x_axis: wick::app::state::XAxis::Step,
                log: false,
            };
            app.plot_cache.get(&key).map(|e| e.line.len())
        })
        .sum();
    let mut times: Vec<f64> = (0..FRAMES).map(|_| frame(&mut app).0).collect();
    times.sort_by(f64::total_cmp);
    let median = times[FRAMES / 2];
    let p90 = times[FRAMES * 9 / 10];

    // A pan/zoom frame: every envelope recomputed for a new x-range.
    let store = &app.stores[&root];
    let keys: Vec<_> = store.series.keys().cloned().collect();
    let mut cache = wick::app::plot_data::PlotCache::default();
    cache.width_px = 1400;
    let t = Instant::now();
    let mut reps = 0;
    for r in 0..20 {
        cache.x_range = Some((1000.0 * r as f64, 900_000.0 - 1000.0 * r as f64));
        for name in &keys {
            let key = wick::app::plot_data::EnvelopeKey {
                run: root.clone(),
                series: name.clone(),
                x_axis: wick::app::state::XAxis::Step,
                log: false,
            };
            cache.prepare(&key, store);
        }
        reps += 1;
    }
    let recompute_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!(
        "ui_frame: {series} series × {POINTS} points, {FRAMES} frames at 1600×{height}: median {median:.2} ms, p90 {p90:.2} ms ({plotted} envelope points plotted, {vertices} vertices); \
         recomputing all envelopes for a new x-range: {recompute_ms:.2} ms"
    );
    let _ = std::fs::remove_dir_all(&runs);
}
