//! Evaluation inside runs: evals.jsonl, the best checkpoint, early stopping, sample grids.

mod common;

use common::{create_run, tiny_two_stage, train_events};
use wick::config::{EarlyStoppingConfig, MetricMode};
use wick::run::TrainEvent;
use wick::train::TrainOptions;

#[test]
fn evaluations_are_recorded_and_the_best_checkpoint_is_marked() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(4, 4);
    for stage in &mut config.stages {
        stage.eval_every = 2;
    }
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{events:?}");
    let evals: Vec<wick::run::events::EvalRecord> = wick::run::atomic::read_jsonl(&dir.evals_path()).unwrap();
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![2, 4, 6, 8]);
    for e in &evals {
        assert!(e.fid.is_some_and(|f| f.is_finite() && f >= 0.0), "{e:?}");
        let (t1, t2, t3) = (e.top1.unwrap(), e.top2.unwrap(), e.top3.unwrap());
        assert!(0.0 <= t1 && t1 <= t2 && t2 <= t3 && t3 <= 1.0, "{e:?}");
        assert!(e.iou.is_some_and(|i| (0.0..=1.0).contains(&i)));
        assert!(e.val_loss.is_some_and(|l| l.is_finite() && l > 0.0), "validation loss missing: {e:?}");
        assert_eq!(e.samples, 16);
        assert!(e.eval_secs >= e.sample_secs);
    }
    let best_fid = evals.iter().map(|e| e.fid.unwrap()).fold(f64::INFINITY, f64::min);
    let state = dir.read_state().unwrap();
    let best = state.best.expect("state.json names the best checkpoint");
    assert_eq!(best.metric, "fid");
    assert_eq!(best.value, best_fid);
    assert!(dir.checkpoints().unwrap().iter().any(|c| c.name == best.checkpoint));
    assert!(events.iter().any(|e| matches!(e, TrainEvent::BestCheckpoint { .. })));
    // The stage ledger keeps each stage's first and last evaluation.
    let ledger: Vec<(u64, u64)> = state
        .stages
        .iter()
        .map(|e| (e.first_eval.as_ref().unwrap().step, e.last_eval.as_ref().unwrap().step))
        .collect();
    assert_eq!(ledger, vec![(2, 4), (6, 8)]);
    assert_eq!(state.stages[1].last_eval.as_ref().unwrap().iou, evals[3].iou);
    assert_eq!(state.stages[0].first_eval.as_ref().unwrap().fid, evals[0].fid);
}

#[test]
fn the_best_checkpoint_survives_pruning() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(8, 2);
    config.checkpoints.keep_last = 1;
    // Loss falls, so with "higher is better" the first evaluation stays the best for the whole run.
    config.eval.best_metric = "loss".to_string();
    config.eval.best_mode = Some(MetricMode::Max);
    config.stages[0].eval_every = 2;
    config.stages[0].lr = 5e-3;
    let dir = create_run(runs.path(), &config);
    train_events(&dir, TrainOptions::default());
    let best = dir.read_state().unwrap().best.unwrap();
    let names: Vec<String> = dir.checkpoints().unwrap().into_iter().map(|c| c.name).collect();
    assert!(names.contains(&best.checkpoint), "best {} pruned; left {names:?}", best.checkpoint);
    assert!(names.contains(&"step-00000010".to_string()), "the newest stays too: {names:?}");
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn early_stopping_ends_the_stage_and_the_next_one_starts() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(20, 3);
    config.stages[0].eval_every = 2;
    // No improvement can beat a min_delta of 100: the first evaluation sets the best, the next ones miss.
    config.stages[0].early_stopping =
        Some(EarlyStoppingConfig { metric: "loss".into(), mode: MetricMode::Min, patience: 2, min_delta: 100.0 });
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    let stopped = events.iter().find_map(|e| match e {
        TrainEvent::EarlyStopped { step, message, .. } => Some((*step, message.clone())),
        _ => None,
    });
    let (step, message) = stopped.expect("an early_stopped event");
    assert_eq!(step, 6, "evaluations at 2 (best), 4 and 6 (patience 2 used up)");
    assert!(message.contains("loss"), "{message}");
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 9, .. })), "{events:?}");
    let ledger = dir.read_state().unwrap().stages;
    assert_eq!((ledger[0].start_step, ledger[0].end_step), (0, 6));
    assert_eq!((ledger[1].start_step, ledger[1].end_step), (6, 9));
    let metrics = dir.read_metrics().unwrap();
    assert_eq!(metrics[6].stage, "adapter");
}

#[test]
fn a_checkpoint_sample_grid_is_identical_when_regenerated() {
    let runs = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(3, 3);
    let dir = create_run(runs.path(), &config);
    train_events(&dir, TrainOptions::default());
    let checkpoint = dir.checkpoints().unwrap().last().unwrap().dir.clone();
    let saved = std::fs::read(checkpoint.join("samples.png")).unwrap();
    let request = wick::eval::compare::CompareRequest {
        checkpoints: vec![checkpoint.clone()],
        gate_scales: vec![],
        seed: config.eval.seed,
        count: config.eval.grid_rows,
        sampler: config.eval.sampler,
        scale: 4,
        real_images: false,
    };
    let grid = wick::eval::compare::compare_grid(&request, &candle_core::Device::Cpu, |_, _| {}).unwrap();
    assert_eq!(grid.description.rows.len(), 2);
    assert!(grid.png == saved, "the regenerated grid differs from the checkpoint's samples.png");

    // With the real images beside it: a first column holding the held-out images the layouts come from.
    let with_real = wick::eval::compare::CompareRequest { real_images: true, ..request };
    let grid = wick::eval::compare::compare_grid(&with_real, &candle_core::Device::Cpu, |_, _| {}).unwrap();
    let d = &grid.description;
    assert_eq!(d.columns, vec![wick::eval::compare::REAL_COLUMN_TITLE.to_string(), checkpoint_name(&checkpoint)]);
    let spec = wick::model::spec_from_weights(&checkpoint.join("model.safetensors")).unwrap();
    let (dataset, _) = wick::eval::compare::dataset_of_checkpoint(&checkpoint, &spec).unwrap();
    let real = wick::data::make_heldout_batch(&dataset, 0, d.rows.len()).images;
    let side = spec.image_size as u32;
    let plane = (side * side) as usize;
    let (mut same_real, mut same_sampled, mut pixels) = (0, 0, 0);
    for row in 0..d.rows.len() as u32 {
        for (y, x) in (0..side).flat_map(|y| (0..side).map(move |x| (y, x))) {
            // The centre of the image pixel's 4×4 block (box outlines run along block edges).
            let at = |column: u32| {
                let cell = side * d.scale + d.gap_px;
                let px = d.origin_px[0] + d.gap_px + column * cell + x * d.scale + d.scale / 2;
                let py = d.origin_px[1] + d.gap_px + row * cell + y * d.scale + d.scale / 2;
                grid.image.get_pixel(px, py).0
            };
            let index = row as usize * 3 * plane + (y * side + x) as usize;
            let expected = [0, 1, 2].map(|c| ((real[index + c * plane] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
            pixels += 1;
            same_real += usize::from(at(0) == expected);
            same_sampled += usize::from(at(1) == expected);
        }
    }
    assert!(
        same_real * 100 >= pixels * 97,
        "{same_real} of {pixels} pixels of the real column are the held-out images"
    );
    assert!(
        same_sampled * 2 < pixels,
        "the sampled column matches the real images too often ({same_sampled} of {pixels})"
    );
}

fn checkpoint_name(checkpoint: &std::path::Path) -> String {
    checkpoint.file_name().unwrap().to_string_lossy().into_owned()
}
