//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

pub mod external;
mod folder;
#[allow(unused_imports)]
pub use folder::image_folder;

use wick::config::{ModelPreset, RunConfig, StageConfig, Trainable, TrainableGroup};
use wick::run::{RunDir, TrainEvent};
use wick::train::{self, TrainOptions};

/// A two-stage config on the tiny model: `base` (layouts dropped) then `adapter`, small batches.
pub fn tiny_two_stage(base_steps: u64, adapter_steps: u64) -> RunConfig {
    let mut config = RunConfig { name: "t".to_string(), seed: 11, device: "cpu".to_string(), ..RunConfig::default() };
    config.model.preset = ModelPreset::Tiny;
    config.model.adapter = true;
    config.checkpoints.keep_last = 100;
    config.dataset.train_size = 200;
    // Small sample grids keep the tests quick: 2 rows, 4 Euler steps.
    config.eval.grid_rows = 2;
    config.eval.sampler.steps = 4;
    config.eval.samples = 16;
    config.stages = vec![
        StageConfig {
            name: "base".to_string(),
            steps: base_steps,
            trainable: Trainable::Group(TrainableGroup::Base),
            batch_size: 4,
            lr: 2e-3,
            layout_dropout: 1.0,
            log_every: 1,
            save_every: 3,
            ema_decay: 0.9,
            ..StageConfig::default()
        },
        StageConfig {
            name: "adapter".to_string(),
            steps: adapter_steps,
            trainable: Trainable::Group(TrainableGroup::Adapter),
            batch_size: 4,
            lr: 3e-3,
            log_every: 1,
            save_every: 3,
            ema_decay: 0.9,
            ..StageConfig::default()
        },
    ];
    config
}

/// Creates a run under `runs` and trains it (or resumes it) to the end; returns every event.
pub fn train_events(dir: &RunDir, options: TrainOptions) -> Vec<TrainEvent> {
    let handle = train::start(dir.clone(), options).expect("trainer starts");
    let events: Vec<TrainEvent> = handle.events.iter().collect();
    handle.join();
    events
}

/// Creates a run directory for `config` under `runs`.
pub fn create_run(runs: &Path, config: &RunConfig) -> RunDir {
    config.validate().expect("test config is valid");
    RunDir::create(runs, &config.name, config).expect("run directory")
}

/// (step, loss bits) of every metrics line in file order, repeats included.
pub fn loss_bits(dir: &RunDir) -> Vec<(u64, Option<u64>)> {
    dir.read_metrics_raw().expect("metrics readable").into_iter().map(|m| (m.step, m.loss.map(f64::to_bits))).collect()
}

/// A few frames of the window, letting commands apply and workers answer.
pub fn settle(harness: &mut egui_kittest::Harness<'_, wick::app::WickApp>) {
    for _ in 0..3 {
        harness.step();
    }
}

/// How long [`step_until`] waits before it calls a wait a hang: far beyond what any condition needs on a
/// loaded machine (these lose up to a third of their CPU to other tenants, and sibling tests train).
pub const HANG: std::time::Duration = std::time::Duration::from_secs(900);

/// Steps the window (with short sleeps) until `done` holds. `expected` says how long it takes on a quiet
/// machine (for the message); the test fails only after [`HANG`], so a busy machine never fails it.
pub fn step_until(
    harness: &mut egui_kittest::Harness<'_, wick::app::WickApp>,
    expected: std::time::Duration,
    mut done: impl FnMut(&egui_kittest::Harness<'_, wick::app::WickApp>) -> bool,
) {
    let start = std::time::Instant::now();
    while !done(harness) {
        assert!(
            start.elapsed() < HANG.max(expected),
            "still waiting after {:?} (expected about {expected:?}); status: {:?}",
            start.elapsed(),
            harness.state().status
        );
        harness.step();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    harness.step();
}
