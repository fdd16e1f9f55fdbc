//! Faults a run survives (issue 17): a full disk in the middle of each kind of write, a read-only file
//! system, a run folder deleted while it trains, damaged log lines, and the NaN policies. Each test injects
//! the fault, checks that the message names the place, that nothing saved is lost, and that the run resumes
//! exactly once the fault is gone.

mod common;

use std::path::Path;

use common::{create_run, tiny_two_stage, train_events};
use wick::config::NanPolicy;
use wick::run::disk::{inject, Fault, FaultRule};
use wick::run::{RunDir, RunStatus, TrainEvent};
use wick::train::TrainOptions;

/// (step, loss bits) with one line per step (the newest, where a resume or a rollback re-ran a step).
fn losses(dir: &RunDir) -> Vec<(u64, Option<u64>)> {
    dir.read_metrics().unwrap().into_iter().map(|m| (m.step, m.loss.map(f64::to_bits))).collect()
}

/// The run's failure message, asserting that it ended failed.
#[track_caller]
fn failure(events: &[TrainEvent]) -> String {
    match events.last() {
        Some(TrainEvent::Failed { message, .. }) => {
            eprintln!("the run failed with: {message}");
            message.clone()
        }
        other => panic!("expected the run to fail, it ended with {other:?}"),
    }
}

/// Every checkpoint verifies and nothing half-written is left in checkpoints/.
#[track_caller]
fn checkpoints_sound(dir: &RunDir) -> Vec<u64> {
    let leftovers: Vec<String> = std::fs::read_dir(dir.checkpoints_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp") || name.ends_with(".old"))
        .collect();
    assert!(leftovers.is_empty(), "unfinished checkpoints left behind: {leftovers:?}");
    let checkpoints = dir.checkpoints().unwrap();
    for checkpoint in &checkpoints {
        let problems = wick::run::verify_checkpoint(&checkpoint.dir);
        assert!(problems.is_empty(), "{}: {problems:?}", checkpoint.name);
    }
    checkpoints.iter().map(|c| c.step).collect()
}

fn no_space_on(dir: &RunDir, file: &str, succeed_first: u32) -> wick::run::disk::FaultGuard {
    inject(FaultRule {
        under: dir.root().to_path_buf(),
        file_name_contains: file.to_string(),
        succeed_first,
        fault: Fault::NoSpace,
    })
}

/// A full disk hits `file` after `succeed_first` writes to it: the run fails naming the file, what was
/// saved verifies, and once space is back a resume ends with the losses of a run that never failed.
/// `check` sees the run (after the resume) and the failure message.
fn full_disk_then_resume(file: &str, succeed_first: u32, check: impl FnOnce(&RunDir, &str)) {
    let runs = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(6, 6);
    let reference = create_run(runs.path(), &config);
    train_events(&reference, TrainOptions::default());

    let dir = create_run(runs.path(), &config);
    let space = no_space_on(&dir, file, succeed_first);
    let message = failure(&train_events(&dir, TrainOptions::default()));
    assert!(message.contains("no space left on "), "{message}");
    assert!(message.contains(dir.root().to_str().unwrap()) && message.contains(file), "{message}");
    let saved = checkpoints_sound(&dir);
    assert!(saved.last().is_some_and(|step| *step < 12), "the run stopped before its end: {saved:?}");
    assert!(dir.read_state().is_ok(), "state.json stays readable (the old content, or the failure)");

    drop(space);
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })), "{events:?}");
    assert_eq!(losses(&dir), losses(&reference), "the resumed run has the losses of one that never failed");
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Finished);
    checkpoints_sound(&dir);
    check(&dir, &message);
}

#[test]
fn a_full_disk_while_appending_metrics_fails_the_run_naming_the_file_and_a_resume_is_exact() {
    full_disk_then_resume("metrics.jsonl", 7, |dir, message| {
        assert!(message.contains("metrics.jsonl"), "{message}");
        // No half line was left where the append failed.
        let contents = wick::run::atomic::read_jsonl_contents::<wick::run::MetricsRecord>(&dir.metrics_path()).unwrap();
        assert!(contents.damaged_lines.is_empty(), "{:?}", contents.damaged_lines);
    });
}

#[test]
fn a_full_disk_in_the_middle_of_a_checkpoint_keeps_the_one_before_and_leaves_no_tmp() {
    // The second checkpoint (step 6) fails on its third file, after the weights were written.
    full_disk_then_resume("optimizer.safetensors", 1, |_, message| {
        assert!(message.contains("step-00000006.tmp/optimizer.safetensors"), "{message}");
    });
}

#[test]
fn a_full_disk_while_rewriting_state_json_keeps_the_old_state_and_a_resume_is_exact() {
    full_disk_then_resume("state.json", 3, |_, message| assert!(message.contains("state.json"), "{message}"));
}

#[test]
fn a_read_only_file_system_fails_the_run_naming_the_file() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(6, 6));
    let read_only = inject(FaultRule {
        under: dir.root().to_path_buf(),
        file_name_contains: String::new(),
        succeed_first: 12,
        fault: Fault::ReadOnly,
    });
    let message = failure(&train_events(&dir, TrainOptions::default()));
    assert!(message.contains("is on a read-only file system"), "{message}");
    assert!(message.contains(dir.root().to_str().unwrap()), "{message}");
    drop(read_only);
    checkpoints_sound(&dir);
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })), "{events:?}");
}

#[test]
fn a_run_folder_deleted_while_it_trains_fails_the_run_saying_the_folder_is_gone() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(30, 1);
    config.stages.truncate(1);
    let dir = create_run(runs.path(), &config);
    let handle = wick::train::start(dir.clone(), TrainOptions::default()).unwrap();
    let mut events = Vec::new();
    // Pause once it trains, delete the folder, go on: the next write finds it gone.
    for event in handle.events.iter() {
        let step = event.step();
        let paused = matches!(event, TrainEvent::Paused { .. });
        events.push(event);
        if step == 2 && matches!(events.last(), Some(TrainEvent::Metrics(_))) {
            handle.send(wick::train::TrainCommand::Pause);
        }
        if paused {
            std::fs::remove_dir_all(dir.root()).unwrap();
            handle.send(wick::train::TrainCommand::Resume);
        }
        if events.last().is_some_and(TrainEvent::is_terminal) {
            break;
        }
    }
    handle.join();
    let message = failure(&events);
    assert!(message.contains(&format!("{} no longer exists", dir.root().display())), "{message}");
    assert!(!dir.root().exists(), "the deleted folder is not recreated by a checkpoint");
}

#[test]
fn on_nan_fail_stops_the_run_at_the_first_non_finite_step() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(6, 6);
    config.checkpoints.on_nan = NanPolicy::Fail;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![5], ..Default::default() });
    let message = failure(&events);
    assert!(message.starts_with("step 5: ") && message.contains("on_nan = \"fail\""), "{message}");
    assert_eq!(checkpoints_sound(&dir), vec![3]);
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Failed);
}

#[test]
fn on_nan_rollback_returns_to_the_newest_checkpoint_at_half_the_rate_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(6, 6);
    config.checkpoints.on_nan = NanPolicy::Rollback;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![5], ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })), "{events:?}");
    let rollbacks: Vec<&TrainEvent> = events.iter().filter(|e| matches!(e, TrainEvent::RolledBack { .. })).collect();
    assert_eq!(rollbacks.len(), 1, "{events:?}");
    match rollbacks[0] {
        TrainEvent::RolledBack { step, to_step, checkpoint, lr_scale, rollbacks, message, .. } => {
            assert_eq!((*step, *to_step, checkpoint.as_str(), *lr_scale, *rollbacks), (5, 3, "step-00000003", 0.5, 1));
            assert!(message.contains("rolled back to step-00000003"), "{message}");
        }
        _ => unreachable!(),
    }
    // Steps 4.. ran again at half the learning rate; every logged loss is finite.
    let metrics = dir.read_metrics().unwrap();
    assert_eq!(metrics.iter().map(|m| m.step).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert!(metrics.iter().all(|m| m.loss.is_some_and(f64::is_finite)), "{metrics:?}");
    for m in &metrics {
        let stage = &config.stages[usize::from(m.step > 6)];
        let step_in_stage = if m.step > 6 { m.step - 7 } else { m.step - 1 };
        let scale = if m.step > 3 { 0.5 } else { 1.0 };
        assert!((m.lr - stage.lr_at(step_in_stage) * scale).abs() < 1e-12, "step {}: lr {}", m.step, m.lr);
    }
    // The scale and the history are in the checkpoints, so a resume goes on at the lower rate.
    let last = dir.checkpoints().unwrap().last().unwrap().dir.join("trainer.json");
    let trainer: serde_json::Value = serde_json::from_slice(&std::fs::read(&last).unwrap()).unwrap();
    assert_eq!(trainer["lr_scale"], 0.5);
    assert_eq!(trainer["format"], 2, "an older Wick would resume it at the full rate: it must refuse");
    assert_eq!(trainer["rollbacks"].as_array().map(Vec::len), Some(1));

    let stopped = create_run(runs.path(), &config);
    let options = TrainOptions { inject_nan_at_steps: vec![5], stop_at_step: Some(8), ..Default::default() };
    train_events(&stopped, options);
    let events = train_events(&stopped, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 12, .. })), "{events:?}");
    assert_eq!(losses(&stopped), losses(&dir), "a run stopped after its rollback resumes exactly");
    let state = dir.read_state().unwrap();
    assert_eq!((state.status, state.global_step), (RunStatus::Finished, 12));
}

#[test]
fn a_run_that_keeps_producing_nan_fails_after_max_rollbacks_with_the_history() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(6, 6);
    config.checkpoints.on_nan = NanPolicy::Rollback;
    config.checkpoints.max_rollbacks = 2;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![5, 5, 5], ..Default::default() });
    let message = failure(&events);
    assert!(message.contains("after 2 rollbacks"), "{message}");
    assert!(message.contains("step 5 → 3 at lr × 0.5, step 5 → 3 at lr × 0.25"), "{message}");
    assert_eq!(events.iter().filter(|e| matches!(e, TrainEvent::RolledBack { .. })).count(), 2);
    assert_eq!(checkpoints_sound(&dir), vec![3]);
}

#[test]
fn a_rollback_before_any_checkpoint_fails_saying_there_is_none() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(6, 6);
    config.checkpoints.on_nan = NanPolicy::Rollback;
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions { inject_nan_at_steps: vec![2], ..Default::default() });
    let message = failure(&events);
    assert!(message.contains("no checkpoint to return to"), "{message}");
}

/// Writes `lines` into the middle of `path` (after its first line).
fn damage(path: &Path, lines: &[&[u8]]) {
    let text = std::fs::read(path).unwrap();
    let cut = text.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut damaged = text[..cut].to_vec();
    for line in lines {
        damaged.extend_from_slice(line);
        damaged.push(b'\n');
    }
    damaged.extend_from_slice(&text[cut..]);
    std::fs::write(path, damaged).unwrap();
}

#[test]
fn garbage_lines_in_a_runs_logs_are_skipped_counted_and_the_rest_is_shown() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = tiny_two_stage(6, 1);
    config.stages.truncate(1);
    config.stages[0].eval_every = 3;
    let dir = create_run(runs.path(), &config);
    train_events(&dir, TrainOptions::default());
    let clean = wick::app::store::RunStore::load(dir.root()).unwrap();
    assert!(clean.damage_notes.is_empty(), "{:?}", clean.damage_notes);

    damage(&dir.metrics_path(), &[b"{\"step\": 3, \"lo", b"\x00\x00\x00\x00"]);
    damage(&dir.evals_path(), &[b"not json at all"]);
    damage(&dir.events_path(), &[b"{\"kind\":\"no_such_event\",\"step\":1}"]);
    let store = wick::app::store::RunStore::load(dir.root()).unwrap();
    let notes = store.damage_notes.join("\n");
    assert_eq!(store.damage_notes.len(), 3, "{notes}");
    assert!(notes.contains("metrics.jsonl: 2 unreadable lines skipped (lines 2, 3)"), "{notes}");
    assert!(notes.contains("evals.jsonl: 1 unreadable line skipped (line 2)"), "{notes}");
    assert!(notes.contains("events.jsonl: 1 unreadable line skipped (line 2)"), "{notes}");
    for name in [wick::app::store::names::LOSS, wick::app::store::names::VAL_LOSS] {
        assert_eq!(store.series[name].len(), clean.series[name].len(), "{name}: every readable point is shown");
    }
    assert_eq!(store.markers.len(), clean.markers.len());
    // Reports and resumes read the same way: the damaged lines are skipped, not fatal.
    assert_eq!(dir.read_metrics().unwrap().len(), 6);
    assert_eq!(wick::eval::report::checkpoint_report(&dir).unwrap().0.len(), dir.checkpoints().unwrap().len());
}

/// A safetensors file with a header exactly as given (not checked) over `data`, and a declared header length.
fn lying_safetensors(declared_header_len: u64, header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = declared_header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Headers that lie: each is refused with the file named, before anything is allocated from what it claims.
fn lying_headers() -> Vec<(&'static str, Vec<u8>)> {
    let entry = |shape: &str, offsets: &str| {
        format!("{{\"blocks.0.w\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":{offsets}}}}}")
    };
    let honest = entry("[2,2]", "[0,16]");
    let sized = |header: &str, data: &[u8]| lying_safetensors(header.len() as u64, header, data);
    vec![
        ("a header length far beyond the file", lying_safetensors(1 << 40, &honest, &[0; 16])),
        ("a header length of u64::MAX", lying_safetensors(u64::MAX, &honest, &[0; 16])),
        ("offsets beyond the data", sized(&entry("[2,2]", "[0,4096]"), &[0; 16])),
        ("a shape larger than its bytes", sized(&entry("[1000000,1000000]", "[0,16]"), &[0; 16])),
        ("a shape smaller than its bytes", sized(&entry("[1,2]", "[0,16]"), &[0; 16])),
        ("offsets that run backwards", sized(&entry("[2,2]", "[16,0]"), &[0; 16])),
        ("a header that is not JSON", sized("{\"blocks.0.w\": [", &[0; 16])),
        ("an empty file", Vec::new()),
    ]
}

#[test]
fn a_warm_start_from_a_safetensors_file_whose_header_lies_is_refused_naming_the_file() {
    let runs = tempfile::tempdir().unwrap();
    for (what, bytes) in lying_headers() {
        // A folder of weights without a manifest (exported, copied by hand): only the file itself can be checked.
        let folder = runs.path().join(what.replace(' ', "-"));
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let mut config = tiny_two_stage(2, 1);
        config.stages[0].warm_start = Some(folder);
        let dir = create_run(runs.path(), &config);
        let message = failure(&train_events(&dir, TrainOptions::default()));
        assert!(message.contains(&path.display().to_string()), "{what}: {message}");
    }
}

#[test]
fn a_checkpoint_whose_weights_header_lies_is_refused_on_resume_naming_the_file() {
    use sha2::Digest;
    let runs = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(4, 2);
    for (what, bytes) in lying_headers() {
        let dir = create_run(runs.path(), &config);
        train_events(&dir, TrainOptions { stop_at_step: Some(3), ..Default::default() });
        // Sealed as if the lie had been written by the trainer: the manifest agrees with the file.
        let checkpoint = dir.checkpoints().unwrap().last().unwrap().dir.clone();
        let weights = checkpoint.join("model.safetensors");
        std::fs::write(&weights, &bytes).unwrap();
        let manifest_path = checkpoint.join("manifest.json");
        let mut manifest: wick::run::checkpoint::Manifest =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        let entry = manifest.files.get_mut("model.safetensors").unwrap();
        entry.bytes = bytes.len() as u64;
        entry.sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();

        let message = failure(&train_events(&dir, TrainOptions { resume: true, ..Default::default() }));
        assert!(message.contains(&weights.display().to_string()), "{what}: {message}");
        assert_eq!(std::fs::read(&weights).unwrap(), bytes, "{what}: the checkpoint is left as it was");
    }
}
