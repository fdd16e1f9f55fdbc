//! examples/custom_task.rs — a model Wick does not ship, written against the public API only — trains into
//! a complete run directory and resumes exactly.

mod common;

#[allow(dead_code)]
#[path = "../examples/custom_task.rs"]
mod custom_task;

use wick::run::TrainEvent;
use wick::task::registry::TaskRegistry;
use wick::train::TrainOptions;

fn train(tasks: &TaskRegistry, dir: &wick::run::RunDir, options: TrainOptions) -> Vec<TrainEvent> {
    let handle = tasks.start(dir.clone(), options).unwrap();
    let events: Vec<TrainEvent> = handle.events.iter().collect();
    handle.join();
    events
}

#[test]
fn the_custom_task_trains_reports_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let tasks = TaskRegistry::builtin().with(custom_task::AutoencoderTask::open);
    let mut config = custom_task::config().unwrap();
    config.device = "cpu".to_string();
    for stage in &mut config.stages {
        stage.steps = 30;
        stage.eval_every = 10;
        stage.save_every = 10;
    }
    config.checkpoints.keep_last = 10;
    let whole = tasks.create_run(runs.path(), &config).unwrap();
    let events = train(&tasks, &whole, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 60, .. })), "{:?}", events.last());
    // A complete run directory: task.json, verified checkpoints with samples, evaluations of its metrics.
    let task = whole.task_descriptor().expect("task.json");
    assert_eq!(task.kind, "autoencoder");
    for c in whole.checkpoints().unwrap() {
        assert!(wick::run::verify_checkpoint(&c.dir).is_empty(), "{}", c.name);
        assert!(c.dir.join("samples.png").is_file());
    }
    let (rows, recommendation) = wick::eval::report::checkpoint_report(&whole).unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.eval.as_ref().is_some_and(|e| e.metric("psnr").is_some())));
    assert!(recommendation.message.contains("highest PSNR"), "{}", recommendation.message);
    // The run reopens from disk (its config validated against task.json's schema).
    assert_eq!(whole.config().unwrap().task.kind, "autoencoder");

    let reference = common::loss_bits(&whole);
    config.name = "stopped".to_string();
    let stopped = tasks.create_run(runs.path(), &config).unwrap();
    train(&tasks, &stopped, TrainOptions { stop_at_step: Some(25), ..Default::default() });
    train(&tasks, &stopped, TrainOptions { resume: true, stop_at_step: Some(41), ..Default::default() });
    let events = train(&tasks, &stopped, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{events:?}");
    let mut logged = common::loss_bits(&stopped);
    logged.dedup();
    assert_eq!(logged, reference);
}
