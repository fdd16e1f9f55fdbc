//! The engine end to end through the library: run directory, checkpoints, resume, NaN guard, stages.

mod common;

use common::{create_run, loss_bits, tiny_two_stage, train_events};
use wick::run::{RunDir, RunStatus, TrainEvent};
use wick::train::{self, TrainCommand, TrainOptions};

fn read_weights(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).expect("weights file")
}

#[test]
fn a_run_leaves_a_complete_verified_run_directory() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(6, 6));
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })), "{events:?}");

    for file in ["run.toml", "state.json", "metrics.jsonl", "events.jsonl", "log.txt"] {
        assert!(dir.root().join(file).is_file(), "{file} missing");
    }
    let state = dir.read_state().unwrap();
    assert_eq!(state.status, RunStatus::Finished);
    assert_eq!(state.global_step, 12);
    let ledger: Vec<(String, u64, u64, bool)> =
        state.stages.iter().map(|e| (e.name.clone(), e.start_step, e.end_step, e.finished)).collect();
    assert_eq!(ledger, vec![("base".into(), 0, 6, true), ("adapter".into(), 6, 12, true)]);

    let metrics = dir.read_metrics().unwrap();
    assert_eq!(metrics.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert!(metrics.iter().all(|m| m.loss.is_some_and(f64::is_finite)));
    assert_eq!(metrics[0].stage, "base");
    assert_eq!(metrics[11].stage, "adapter");

    let kinds: Vec<String> = dir
        .read_events()
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(&e.event).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in ["started", "stage_started", "stage_finished", "checkpoint_saved", "finished"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} event in {kinds:?}");
    }
    // Each checkpoint is named after the stage that trained its weights, the stage's last one included
    // (it is saved once the counters already point at the next stage).
    let saved: Vec<(u64, String)> = dir
        .read_events()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            TrainEvent::CheckpointSaved { step, stage, .. } => Some((step, stage)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, String)> =
        [(3, "base"), (6, "base"), (9, "adapter"), (12, "adapter")].map(|(s, n)| (s, n.to_string())).into();
    assert_eq!(saved, expected);
    let log = std::fs::read_to_string(dir.log_path()).unwrap();
    assert!(log.contains("stage `adapter`"), "log.txt lacks the stage events:\n{log}");

    let checkpoints = dir.checkpoints().unwrap();
    assert_eq!(checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![3, 6, 9, 12]);
    for checkpoint in &checkpoints {
        assert!(wick::run::verify_checkpoint(&checkpoint.dir).is_empty());
        for file in ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "trainer.json", "manifest.json"] {
            assert!(checkpoint.dir.join(file).is_file(), "{} lacks {file}", checkpoint.name);
        }
    }
    assert!(!runs.path().read_dir().unwrap().flatten().any(|e| e
        .path()
        .join("checkpoints")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|c| c.file_name().to_string_lossy().ends_with(".tmp"))));
}

#[test]
fn one_flipped_byte_fails_verification_naming_the_file() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(3, 3));
    train_events(&dir, TrainOptions::default());
    let checkpoint = &dir.checkpoints().unwrap()[0];
    let target = checkpoint.dir.join("optimizer.safetensors");
    let mut bytes = std::fs::read(&target).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&target, bytes).unwrap();
    let problems = wick::run::verify_checkpoint(&checkpoint.dir);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, target);
    assert!(problems[0].problem.contains("sha256"), "{}", problems[0].problem);
}

#[test]
fn resume_is_bit_exact_mid_stage_and_across_the_stage_boundary() {
    let config = tiny_two_stage(6, 6);
    let runs = tempfile::tempdir().unwrap();
    let whole = create_run(runs.path(), &config);
    train_events(&whole, TrainOptions::default());
    let reference = loss_bits(&whole);
    assert_eq!(reference.len(), 12);
    let final_weights = read_weights(&whole.checkpoints().unwrap().last().unwrap().dir);

    // Stop mid-base, exactly at the boundary, and mid-adapter (twice in one run), resuming each time.
    for stops in [vec![4], vec![6], vec![2, 8]] {
        let dir = create_run(runs.path(), &config);
        let mut resume = false;
        for stop in &stops {
            let events = train_events(&dir, TrainOptions { resume, stop_at_step: Some(*stop), ..Default::default() });
            assert!(matches!(events.last(), Some(TrainEvent::Stopped { step, .. }) if step == stop), "{events:?}");
            assert_eq!(dir.read_state().unwrap().status, RunStatus::Stopped);
            resume = true;
        }
        let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
        assert!(matches!(events.first(), Some(TrainEvent::Started { resumed_from: Some(_), .. })));
        assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })));
        assert_eq!(loss_bits(&dir), reference, "losses differ after stops at {stops:?}");
        let weights = read_weights(&dir.checkpoints().unwrap().last().unwrap().dir);
        assert!(weights == final_weights, "final weights differ after stops at {stops:?}");
        let ledger = dir.read_state().unwrap().stages;
        assert_eq!((ledger[1].start_step, ledger[1].end_step), (6, 12));
    }
}

/// Batches of 16 train as two loss shards on the CPU, each on a thread of its own: a stopped and resumed run
/// on one thread gives the bits of the uninterrupted run on two.
#[test]
fn sharded_batches_resume_bit_exact_whatever_the_thread_count() {
    let mut config = tiny_two_stage(3, 3);
    for stage in &mut config.stages {
        stage.batch_size = 16;
    }
    let runs = tempfile::tempdir().unwrap();
    config.threads = 2;
    let whole = create_run(runs.path(), &config);
    train_events(&whole, TrainOptions::default());
    let reference = loss_bits(&whole);
    assert_eq!(reference.len(), 6);
    config.threads = 1;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { stop_at_step: Some(4), ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Stopped { step: 4, .. })), "{events:?}");
    train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert_eq!(loss_bits(&dir), reference, "one thread with a resume differs from two threads straight through");
    let last = |d: &RunDir| read_weights(&d.checkpoints().unwrap().last().unwrap().dir);
    assert!(last(&dir) == last(&whole), "final weights differ");
}

#[test]
fn an_object_loss_weight_changes_only_the_stage_that_sets_it() {
    let runs = tempfile::tempdir().unwrap();
    let plain = tiny_two_stage(3, 3);
    let mut weighted = plain.clone();
    weighted.stages[1].object_loss_weight = 3.0;
    let (plain_dir, weighted_dir) = (create_run(runs.path(), &plain), create_run(runs.path(), &weighted));
    train_events(&plain_dir, TrainOptions::default());
    train_events(&weighted_dir, TrainOptions::default());
    let (a, b) = (loss_bits(&plain_dir), loss_bits(&weighted_dir));
    assert_eq!(a.len(), 6);
    assert_eq!(a[..3], b[..3], "the base stage has no object weight: identical losses");
    for ((step, plain), (_, weighted)) in a[3..].iter().zip(&b[3..]) {
        let (plain, weighted) = (f64::from_bits(plain.unwrap()), f64::from_bits(weighted.unwrap()));
        assert!(weighted.is_finite() && weighted != plain, "step {step}: {weighted} vs {plain}");
    }
}

#[test]
fn adapter_gates_stay_zero_in_the_base_stage_and_move_in_the_adapter_stage() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(5, 5));
    train_events(&dir, TrainOptions::default());
    let metrics = dir.read_metrics().unwrap();
    for m in &metrics {
        assert_eq!(m.gates.len(), 2);
        if m.stage == "base" {
            assert!(m.gates.iter().all(|g| *g == 0.0), "gate moved in the base stage: {m:?}");
        }
    }
    let last = metrics.last().unwrap();
    assert!(last.gates.iter().all(|g| *g != 0.0), "gates did not move in the adapter stage: {last:?}");
}

#[test]
fn a_nan_in_a_batch_is_caught_and_the_run_continues_uncorrupted() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(6, 3));
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![4], ..Default::default() });
    let nan: Vec<&TrainEvent> = events.iter().filter(|e| matches!(e, TrainEvent::NanDetected { .. })).collect();
    assert_eq!(nan.len(), 1, "{events:?}");
    assert!(matches!(nan[0], TrainEvent::NanDetected { step: 4, consecutive: 1, .. }));
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 9, .. })));
    let metrics = dir.read_metrics().unwrap();
    assert_eq!(metrics[3].loss, None, "the bad step's loss is recorded as non-finite");
    assert!(metrics.iter().filter(|m| m.step != 4).all(|m| m.loss.is_some_and(f64::is_finite)));
    for checkpoint in dir.checkpoints().unwrap() {
        assert!(wick::run::verify_checkpoint(&checkpoint.dir).is_empty());
        let weights =
            candle_core::safetensors::load(checkpoint.dir.join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        for (name, tensor) in weights {
            let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{name} in {} is not finite", checkpoint.name);
        }
    }
}

#[test]
fn too_many_bad_steps_in_a_row_fail_the_run_and_keep_earlier_checkpoints() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(9, 3);
    config.checkpoints.max_bad_steps = 3;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![5, 6, 7], ..Default::default() });
    match events.last() {
        Some(TrainEvent::Failed { message, .. }) => assert!(message.contains("3 consecutive steps"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    let state = dir.read_state().unwrap();
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.message.unwrap().contains("non-finite"));
    let checkpoints = dir.checkpoints().unwrap();
    // Skipped steps leave the weights untouched, so the checkpoint at step 6 is as sound as the one at 3.
    assert_eq!(checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![3, 6]);
    assert!(checkpoints.iter().all(|c| wick::run::verify_checkpoint(&c.dir).is_empty()));
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let runs = tempfile::tempdir().unwrap();
    let mut big = tiny_two_stage(2, 1);
    big.stages[0].batch_size = 8;
    let mut accumulated = big.clone();
    accumulated.stages[0].batch_size = 4;
    accumulated.stages[0].grad_accum = 2;
    let big_dir = create_run(runs.path(), &big);
    let acc_dir = create_run(runs.path(), &accumulated);
    train_events(&big_dir, TrainOptions { stop_at_step: Some(2), ..Default::default() });
    train_events(&acc_dir, TrainOptions { stop_at_step: Some(2), ..Default::default() });
    let (a, b) = (big_dir.read_metrics().unwrap(), acc_dir.read_metrics().unwrap());
    for (x, y) in a.iter().zip(&b) {
        let (lx, ly) = (x.loss.unwrap(), y.loss.unwrap());
        assert!((lx - ly).abs() <= 1e-5 * lx.abs(), "loss {lx} vs {ly} at step {}", x.step);
        let (gx, gy) = (x.grad_norm.unwrap(), y.grad_norm.unwrap());
        assert!((gx - gy).abs() <= 1e-4 * gx.abs(), "grad norm {gx} vs {gy} at step {}", x.step);
    }
    let load = |dir: &wick::run::RunDir| {
        let last = dir.checkpoints().unwrap().last().unwrap().dir.join("model.safetensors");
        candle_core::safetensors::load(last, &candle_core::Device::Cpu).unwrap()
    };
    let (wa, wb) = (load(&big_dir), load(&acc_dir));
    for (name, ta) in &wa {
        let diff = (ta - &wb[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }
}

#[test]
fn keep_last_prunes_old_checkpoints() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(9, 3);
    config.checkpoints.keep_last = 2;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    assert_eq!(dir.checkpoints().unwrap().iter().map(|c| c.step).collect::<Vec<_>>(), vec![9, 12]);
    assert!(events.iter().any(|e| matches!(e, TrainEvent::CheckpointPruned { .. })));
}

#[test]
fn stop_command_checkpoints_and_the_run_resumes_to_the_end() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(40, 3));
    let handle = train::start(dir.clone(), TrainOptions::default()).unwrap();
    handle.send(TrainCommand::Pause);
    let mut stopped_at = None;
    for event in handle.events.iter() {
        match event {
            TrainEvent::Paused { .. } => handle.send(TrainCommand::Stop),
            TrainEvent::Stopped { step, .. } => stopped_at = Some(step),
            _ => {}
        }
    }
    handle.join();
    let step = stopped_at.expect("the run stopped");
    assert!(step < 43);
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Stopped);
    assert_eq!(dir.checkpoints().unwrap().last().unwrap().step, step);
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 43, .. })));
}

#[test]
fn a_stage_warm_starts_from_another_runs_checkpoint_and_missing_adapter_weights_start_at_zero_gate() {
    let runs = tempfile::tempdir().unwrap();
    // A run of the model without adapter...
    let mut plain = tiny_two_stage(3, 1);
    plain.model.adapter = false;
    plain.stages.truncate(1);
    plain.stages[0].trainable = wick::config::Trainable::Group(wick::config::TrainableGroup::All);
    let source = create_run(runs.path(), &plain);
    train_events(&source, TrainOptions::default());
    let checkpoint = source.checkpoints().unwrap().last().unwrap().dir.clone();

    // ...warm-starts the adapter stage of a run with adapter.
    let mut config = tiny_two_stage(2, 2);
    config.stages.remove(0);
    config.stages[0].warm_start = Some(checkpoint.clone());
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{events:?}");
    let warning = events.iter().find_map(|e| match e {
        TrainEvent::Warning { message, .. } if message.contains("warm start") => Some(message.clone()),
        _ => None,
    });
    assert!(warning.expect("a warm-start event").contains("adapter tensors were not in it"));
    let metrics = dir.read_metrics().unwrap();
    assert_eq!(metrics[0].gates.len(), 2);

    // The base weights it trained from are the source's, untouched (the adapter stage freezes them).
    let load = |d: &std::path::Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (before, after) = (load(&checkpoint), load(&dir.checkpoints().unwrap().last().unwrap().dir));
    for (name, tensor) in &before {
        let diff = (tensor - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{name} changed");
    }

    // A checkpoint of another preset is refused with the stage and the tensor named.
    let mut wrong = tiny_two_stage(1, 1);
    wrong.model.preset = wick::config::ModelPreset::Small;
    wrong.stages[1].warm_start = Some(checkpoint);
    let dir = create_run(runs.path(), &wrong);
    let events = train_events(&dir, TrainOptions::default());
    match events.last() {
        Some(TrainEvent::Failed { message, .. }) => assert!(message.contains("stages[1].warm_start"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Two runs training at once in one process, each on its own compute pool and evaluating: each log.txt holds
/// its own run's lines only (the trainer body runs on a pool thread, the judge on an eval thread).
#[test]
fn two_runs_at_once_each_log_only_their_own_lines() {
    let runs = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let mut config = common::tiny_two_stage(4, 2);
        config.name = name.to_string();
        config.threads = 1;
        config.stages[0].eval_every = 2;
        config.stages[1].eval_every = 2;
        common::create_run(runs.path(), &config)
    };
    let (a, b) = (make("left"), make("right"));
    // Resuming a run with no checkpoint logs a warning naming its directory from the trainer body.
    let start = |dir: &RunDir| train::start(dir.clone(), TrainOptions { resume: true, ..Default::default() }).unwrap();
    let (ha, hb) = (start(&a), start(&b));
    let events_a: Vec<TrainEvent> = ha.events.iter().collect();
    let events_b: Vec<TrainEvent> = hb.events.iter().collect();
    ha.join();
    hb.join();
    assert!(matches!(events_a.last(), Some(TrainEvent::Finished { .. })), "{events_a:?}");
    assert!(matches!(events_b.last(), Some(TrainEvent::Finished { .. })), "{events_b:?}");
    for (dir, other) in [(&a, &b), (&b, &a)] {
        let log = std::fs::read_to_string(dir.log_path()).unwrap();
        let own = dir.root().display().to_string();
        let foreign = other.root().display().to_string();
        assert!(log.contains(&format!("{own}: no intact checkpoint")), "{log}");
        assert!(!log.contains(&foreign), "{} holds lines of the other run:\n{log}", dir.log_path().display());
        // Three evaluations, each judged on this run's eval thread.
        assert_eq!(log.matches("judged 16 images").count(), 3, "{log}");
    }
}

#[test]
fn a_bf16_run_on_a_machine_without_cuda_fails_at_the_start_saying_why() {
    if cfg!(feature = "cuda") {
        return; // with CUDA built in, `auto` may find a GPU and train in bf16 there
    }
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(2, 1);
    config.device = "auto".to_string();
    config.precision = wick::config::Precision::Bf16;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    match events.last() {
        Some(TrainEvent::Failed { message, .. }) => {
            assert!(message.contains("bf16") && message.contains("CPU") && message.contains("f32"), "{message}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(dir.checkpoints().unwrap().is_empty(), "nothing trained");
}

#[test]
fn a_damaged_state_json_is_rebuilt_from_the_logs_and_the_run_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(4, 2);
    let reference = create_run(runs.path(), &config);
    train_events(&reference, TrainOptions::default());
    let dir = create_run(runs.path(), &config);
    train_events(&dir, TrainOptions { stop_at_step: Some(3), ..Default::default() });
    let original = dir.read_state().unwrap();

    // Empty: reading names the file; the rebuild from run.toml and the logs says what the file said.
    std::fs::write(dir.state_path(), b"").unwrap();
    let err = format!("{:#}", dir.read_state().unwrap_err());
    assert!(err.contains("state.json"), "{err}");
    let rebuilt = wick::run::recorder::rebuild_state(&dir, "was empty").unwrap();
    assert_eq!(rebuilt.status, RunStatus::Stopped);
    assert_eq!(
        (rebuilt.global_step, &rebuilt.stages, &rebuilt.best, &rebuilt.last_checkpoint, rebuilt.total_steps),
        (original.global_step, &original.stages, &original.best, &original.last_checkpoint, original.total_steps)
    );
    assert!(rebuilt.message.unwrap().contains("rebuilt"));
    // The window lists it (rebuilt for display, the file left as it is) instead of an error.
    let listed = wick::app::workers::summarize_run(dir.root(), false).unwrap();
    assert_eq!((listed.status, listed.global_step), (RunStatus::Stopped, 3));
    assert!(listed.message.as_deref().unwrap_or_default().contains("not rewritten"));
    assert!(listed.resumable());
    assert_eq!(std::fs::read(dir.state_path()).unwrap(), b"", "a reader does not write");

    // Garbage: a resume rebuilds it, keeps the damaged file, and continues exactly.
    std::fs::write(dir.state_path(), b"{ \"status\": \"runn").unwrap();
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 6, .. })), "{events:?}");
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Finished);
    let kept: Vec<_> = std::fs::read_dir(dir.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.json.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept");
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), b"{ \"status\": \"runn");
    let bits = |d: &wick::run::RunDir| {
        d.read_metrics().unwrap().into_iter().map(|m| (m.step, m.loss.map(f64::to_bits))).collect::<Vec<_>>()
    };
    assert_eq!(bits(&dir), bits(&reference), "the same losses as an uninterrupted run");
}

#[test]
fn a_checkpoint_from_a_newer_wick_is_refused_naming_its_trainer_json() {
    use sha2::Digest;
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(4, 2));
    train_events(&dir, TrainOptions { stop_at_step: Some(3), ..Default::default() });
    let checkpoint = dir.checkpoints().unwrap().last().unwrap().dir.clone();
    // What a later Wick with a trainer format above this one's would have sealed (manifest updated to match).
    let path = checkpoint.join("trainer.json");
    let mut trainer: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(trainer["format"], 1, "a run without rollbacks is written as format 1, which any Wick resumes");
    trainer["format"] = (wick::train::checkpointing::TRAINER_FORMAT + 1).into();
    let bytes = serde_json::to_vec_pretty(&trainer).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let manifest_path = checkpoint.join("manifest.json");
    let mut manifest: wick::run::checkpoint::Manifest =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let entry = manifest.files.get_mut("trainer.json").unwrap();
    entry.bytes = bytes.len() as u64;
    entry.sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    assert!(wick::run::verify_checkpoint(&checkpoint).is_empty(), "sealed as a newer Wick seals it");

    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    match events.last() {
        Some(TrainEvent::Failed { message, .. }) => {
            assert!(message.contains("newer Wick") && message.contains(&path.display().to_string()), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the checkpoint is left as it was");
}
