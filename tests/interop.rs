//! Runs made by other tools, read as they are written: TensorBoard event files (written here as
//! `torch.utils.tensorboard.SummaryWriter` writes them: a version record, then `simple_value` scalars) and
//! Hugging Face `trainer_state.json` files (as `json.dumps(indent=2, sort_keys=True)` writes them, NaN
//! literals included), through the library and through `wick runs`, `wick scalars` and `wick report`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use common::external::{write_hf_checkpoint, write_safetensors};
use common::{create_run, tiny_two_stage, train_events};
use wick::interop::Series;
use wick::train::TrainOptions;

use wick::interop::hf::{StateTail, BROKEN_AFTER_POLLS};
use wick::interop::tensorboard::{EventWriter, LogDirReader};
use wick::interop::tfrecord::frame_record;

fn wick(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wick")).args(args).output().expect("wick runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn losses(reader: &LogDirReader, tag: &str) -> Vec<(i64, f64)> {
    reader.data().scalars.get(tag).map_or_else(Vec::new, |s| s.points.iter().map(|p| (p.step, p.value)).collect())
}

/// A TensorBoard directory of two files (a run restarted: its second file continues the steps).
fn write_tensorboard_run(dir: &Path) {
    let mut first = EventWriter::create(dir, "1").unwrap();
    for step in 0..5 {
        first.write_scalars(step, 1.7e9 + step as f64, &[("train/loss".into(), 1.0 / (step + 1) as f64)]).unwrap();
    }
    first.write_scalars(5, 1.7e9 + 5.0, &[("train/loss".into(), f64::NAN)]).unwrap();
    let mut second = EventWriter::create(dir, "2").unwrap();
    for step in 6..10 {
        second
            .write_scalars(step, 1.7e9 + step as f64, &[("train/loss".into(), 0.1), ("eval/acc".into(), 0.5)])
            .unwrap();
    }
}

/// A Trainer output directory with two checkpoints; the newer one's state is the longer.
fn write_hf_run(dir: &Path) {
    let entries = [
        r#"{"epoch": 0.5, "grad_norm": 1.25, "learning_rate": 4e-05, "loss": 2.5, "step": 10}"#,
        r#"{"epoch": 1.0, "eval_accuracy": 0.625, "eval_loss": 1.75, "eval_runtime": 0.5, "step": 10}"#,
        r#"{"epoch": 1.5, "grad_norm": NaN, "learning_rate": 2e-05, "loss": 1.5, "step": 20}"#,
        r#"{"epoch": 2.0, "eval_accuracy": 0.75, "eval_loss": 1.5, "eval_runtime": 0.5, "step": 20}"#,
    ];
    for (step, count) in [(10u64, 2usize), (20, 4)] {
        let checkpoint = dir.join(format!("checkpoint-{step}"));
        std::fs::create_dir_all(&checkpoint).unwrap();
        let best = if step == 20 { r#""best_metric": 1.5, "best_model_checkpoint": "out/checkpoint-20","# } else { "" };
        let text = format!(
            "{{\n  {best}\n  \"global_step\": {step},\n  \"log_history\": [\n    {}\n  ],\n  \"max_steps\": 20\n}}",
            entries[..count].join(",\n    ")
        );
        std::fs::write(checkpoint.join("trainer_state.json"), text).unwrap();
    }
}

#[test]
fn two_event_files_read_as_one_run_in_step_order_with_every_point() {
    let dir = tempfile::tempdir().unwrap();
    write_tensorboard_run(dir.path());
    let mut reader = LogDirReader::new(dir.path());
    assert!(reader.poll());
    let loss = losses(&reader, "train/loss");
    assert_eq!(loss.iter().map(|p| p.0).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(loss[5].1.is_nan(), "a NaN is kept as NaN");
    assert_eq!(losses(&reader, "eval/acc").len(), 4);
    assert!(reader.data().problems.is_empty(), "{:?}", reader.data().problems);
    assert!(!reader.poll(), "nothing new");
}

#[test]
fn a_record_failing_its_crc_is_named_and_skipped_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path(), "x").unwrap();
    writer.write_scalars(1, 1.0, &[("loss".into(), 1.0)]).unwrap();
    let path = writer.path().to_path_buf();
    let damaged_at = std::fs::metadata(&path).unwrap().len();
    writer.write_scalars(2, 2.0, &[("loss".into(), 2.0)]).unwrap();
    writer.write_scalars(3, 3.0, &[("loss".into(), 3.0)]).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[damaged_at as usize + 14] ^= 0x40; // inside the second scalar record's data
    std::fs::write(&path, bytes).unwrap();
    let mut reader = LogDirReader::new(dir.path());
    reader.poll();
    assert_eq!(losses(&reader, "loss"), [(1, 1.0), (3, 3.0)]);
    let problems = &reader.data().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&path.display().to_string()) && problems[0].contains("CRC"), "{}", problems[0]);
}

#[test]
fn a_file_growing_while_open_is_followed_from_its_offset_through_a_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path(), "live").unwrap();
    writer.write_scalars(1, 1.0, &[("loss".into(), 1.0)]).unwrap();
    let path = writer.path().to_path_buf();
    let mut reader = LogDirReader::new(dir.path());
    reader.poll();
    assert_eq!(losses(&reader, "loss"), [(1, 1.0)]);

    // The writer is caught mid-record: half of it on disk.
    let record = {
        let other = tempfile::tempdir().unwrap();
        let mut scratch = EventWriter::create(other.path(), "scratch").unwrap();
        let start = std::fs::metadata(scratch.path()).unwrap().len() as usize;
        scratch.write_scalars(2, 2.0, &[("loss".into(), 2.0)]).unwrap();
        std::fs::read(scratch.path()).unwrap()[start..].to_vec()
    };
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&record[..record.len() / 2]).unwrap();
    file.flush().unwrap();
    reader.poll();
    assert_eq!(losses(&reader, "loss"), [(1, 1.0)], "a partial record is not a point");
    assert!(reader.data().problems.is_empty(), "a partial record is not an error: {:?}", reader.data().problems);
    file.write_all(&record[record.len() / 2..]).unwrap();
    file.write_all(&frame_record(b"\x09\0\0\0\0\0\0\x08\x40")).unwrap(); // an Event of wall_time 3.0
    file.flush().unwrap();
    assert!(reader.poll());
    assert_eq!(losses(&reader, "loss"), [(1, 1.0), (2, 2.0)], "points are not read twice");
}

#[test]
fn a_file_replaced_by_a_copy_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path(), "synced").unwrap();
    writer.write_scalars(1, 1.0, &[("loss".into(), 1.0)]).unwrap();
    let path = writer.path().to_path_buf();
    let mut reader = LogDirReader::new(dir.path());
    reader.poll();
    // rsync writes the new version to a temporary name and renames it over the old one.
    let other = tempfile::tempdir().unwrap();
    let mut copy = EventWriter::create(other.path(), "synced").unwrap();
    copy.write_scalars(1, 1.0, &[("loss".into(), 0.5)]).unwrap();
    copy.write_scalars(2, 2.0, &[("loss".into(), 0.25)]).unwrap();
    let staged = dir.path().join(".synced.tmp");
    std::fs::copy(copy.path(), &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    assert!(reader.poll());
    assert_eq!(losses(&reader, "loss"), [(1, 0.5), (2, 0.25)]);
}

#[test]
fn a_half_written_state_file_is_waited_for_and_one_that_stays_broken_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_run(dir.path());
    let state_file = dir.path().join("checkpoint-20/trainer_state.json");
    let whole = std::fs::read_to_string(&state_file).unwrap();
    std::fs::write(&state_file, &whole[..whole.len() / 2]).unwrap();
    let mut tail = StateTail::new(dir.path());
    tail.poll();
    assert!(tail.state().is_none() && tail.problem().is_none(), "half a file is neither state nor broken");
    std::fs::write(&state_file, &whole).unwrap();
    // The rewrite may keep the length; the content is what changed (a new modification time or size).
    std::fs::write(&state_file, format!("{whole}\n")).unwrap();
    assert!(tail.poll());
    let state = tail.state().expect("the whole file is read");
    assert_eq!(state.global_step, Some(20));
    assert!(state.series()["grad_norm"].points[1].value.is_nan());

    std::fs::write(&state_file, "{ \"global_step\": 2").unwrap();
    for _ in 0..BROKEN_AFTER_POLLS {
        tail.poll();
    }
    let problem = tail.problem().expect("a file that stays broken is reported");
    assert!(problem.contains("checkpoint-20/trainer_state.json"), "{problem}");
    assert_eq!(tail.state().unwrap().global_step, Some(20), "the last good state is kept");
}

#[test]
fn wick_runs_lists_every_kind_and_wick_scalars_writes_every_point() {
    let root = tempfile::tempdir().unwrap();
    let tb = root.path().join("tb/Dec07_10-00-00_host");
    write_tensorboard_run(&tb);
    let hf = root.path().join("hf/out");
    write_hf_run(&hf);
    // The Trainer's own TensorBoard files belong to its run, not a run of their own.
    EventWriter::create(&hf.join("runs/Dec07_10-00-00_host"), "0").unwrap();

    let (ok, stdout, stderr) = wick(&["runs", root.path().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("hf-trainer") && lines[0].contains("20") && lines[0].ends_with("hf/out"), "{stdout}");
    assert!(lines[1].starts_with("tensorboard") && lines[1].contains(" 9 "), "{stdout}");

    let (ok, csv, stderr) = wick(&["scalars", tb.to_str().unwrap(), "--tag", "train/*"]);
    assert!(ok, "{stderr}");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "tag,step,wall_time,value");
    assert_eq!(rows.len(), 11, "{csv}");
    assert_eq!(rows[1], "train/loss,0,1700000000,1");
    assert_eq!(rows[6], "train/loss,5,1700000005,NaN");

    let (ok, jsonl, stderr) = wick(&["scalars", hf.to_str().unwrap(), "--format", "jsonl", "--tag", "grad_norm"]);
    assert!(ok, "{stderr}");
    let points: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["value"], 1.25);
    assert_eq!(points[1]["value"], "NaN");
    assert!(points[1]["wall_time"].is_null(), "trainer_state.json has no wall time");
}

#[test]
fn wick_report_tables_a_trainer_runs_checkpoints_and_recommends_one() {
    let root = tempfile::tempdir().unwrap();
    write_hf_run(root.path());
    let (ok, stdout, stderr) = wick(&["report", root.path().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("eval_loss") && lines[0].contains("eval_accuracy"), "{stdout}");
    assert!(lines[1].starts_with("checkpoint-10") && lines[1].contains("1.7500"), "{stdout}");
    assert!(lines[2].starts_with("checkpoint-20") && lines[2].contains("best"), "{stdout}");
    assert!(stdout.contains("Use checkpoint-20: lowest eval_loss 1.5"), "{stdout}");
    assert!(!stdout.contains("eval_runtime"), "timings are not metrics: {stdout}");

    let (ok, stdout, _) =
        wick(&["report", root.path().to_str().unwrap(), "--metric", "eval_accuracy", "--mode", "max"]);
    assert!(ok);
    assert!(stdout.contains("Use checkpoint-20: highest eval_accuracy 0.75"), "{stdout}");
}

#[test]
fn wick_verify_checks_trainer_checkpoints_and_names_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    write_hf_checkpoint(&out.join("checkpoint-10"), 10);
    let (ok, stdout, _) = wick(&["verify", out.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("model.safetensors (2 tensors"), "{stdout}");
    assert!(stdout.contains("optimizer.pt (") && stdout.contains("pickle: not opened"), "{stdout}");
    assert!(stdout.contains("can be resumed"), "{stdout}");

    // A NaN in a tensor; a truncated file; a shard index naming a missing shard and missing a tensor.
    write_hf_checkpoint(&out.join("checkpoint-20"), 20);
    write_safetensors(
        &out.join("checkpoint-20/model.safetensors"),
        &[("wte.weight", vec![0.5, f32::NAN, f32::INFINITY])],
    );
    write_hf_checkpoint(&out.join("checkpoint-30"), 30);
    let weights = out.join("checkpoint-30/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 5]).unwrap();
    let sharded = out.join("checkpoint-40");
    write_hf_checkpoint(&sharded, 40);
    std::fs::remove_file(sharded.join("model.safetensors")).unwrap();
    std::fs::remove_file(sharded.join("scheduler.pt")).unwrap();
    write_safetensors(&sharded.join("model-00001-of-00002.safetensors"), &[("a", vec![1.0]), ("b", vec![2.0])]);
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();

    let (ok, stdout, _) = wick(&["verify", out.to_str().unwrap()]);
    assert!(!ok, "exit 1 when a checkpoint is bad:\n{stdout}");
    assert!(stdout.contains("ok   ") && stdout.contains("checkpoint-10"), "{stdout}");
    assert!(stdout.contains("tensor wte.weight holds 1 NaN and 1 infinite value(s)"), "{stdout}");
    assert!(stdout.contains("checkpoint-30/model.safetensors: the file is truncated"), "{stdout}");
    assert!(stdout.contains("names shard model-00002-of-00002.safetensors, which does not exist"), "{stdout}");
    assert!(stdout.contains("does not name tensor b"), "{stdout}");
    assert!(stdout.contains("cannot be resumed exactly: no scheduler.pt"), "{stdout}");
    assert!(stdout.contains("4 checkpoint(s) checked, 3 bad"), "{stdout}");

    // One checkpoint alone, by its path.
    let (ok, stdout, _) = wick(&["verify", out.join("checkpoint-10").to_str().unwrap()]);
    assert!(ok && stdout.contains("1 checkpoint(s) checked, 0 bad"), "{stdout}");
}

/// A stage's output directory: `checkpoint-<end>/trainer_state.json` with the given train log entries
/// (step, loss, learning rate), as `json.dumps(indent=2, sort_keys=True)` writes it.
fn write_stage(dir: &Path, end: u64, max_steps: u64, entries: &[(u64, f64, f64)]) {
    let checkpoint = dir.join(format!("checkpoint-{end}"));
    std::fs::create_dir_all(&checkpoint).unwrap();
    let history: Vec<serde_json::Value> = entries
        .iter()
        .map(|(step, loss, lr)| serde_json::json!({"epoch": *step as f64 / 100.0, "learning_rate": lr, "loss": loss, "step": step}))
        .collect();
    let state = serde_json::json!({"global_step": end, "log_history": history, "max_steps": max_steps});
    std::fs::write(checkpoint.join("trainer_state.json"), serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

#[test]
fn wick_stages_checks_a_curriculum_of_trainer_runs() {
    let root = tempfile::tempdir().unwrap();
    let stage1: Vec<(u64, f64, f64)> =
        (1..=4).map(|i| (i * 10, 2.0 - i as f64 * 0.1, 1e-3 * (1.0 - i as f64 / 8.0))).collect();
    let mut stage2 = stage1.clone();
    stage2.extend((5..=8).map(|i| (i * 10, 2.0 - i as f64 * 0.1, 1e-3 * (1.0 - i as f64 / 8.0))));
    write_stage(&root.path().join("Stage1"), 40, 40, &stage1);
    write_stage(&root.path().join("Stage2"), 80, 80, &stage2);
    let dirs =
        |names: &[&str]| names.iter().map(|n| root.path().join(n).to_string_lossy().into_owned()).collect::<Vec<_>>();
    let mut args = vec!["stages".to_string()];
    args.extend(dirs(&["Stage1", "Stage2"]));
    let (ok, stdout, _) = wick(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{stdout}");
    assert!(stdout.contains("every stage continues the one before it"), "{stdout}");
    assert!(
        stdout.lines().any(
            |l| l.starts_with("Stage2") && l.split_whitespace().collect::<Vec<_>>() == ["Stage2", "40", "80", "40"]
        ),
        "{stdout}"
    );

    // Stage3 forgot resume_from_checkpoint: a fresh counter and a fresh schedule.
    write_stage(
        &root.path().join("Stage3"),
        40,
        40,
        &stage1.iter().map(|(s, l, _)| (*s, *l, 1e-3)).collect::<Vec<_>>(),
    );
    // Stage4 resumed Stage2's end with a "relative" max_steps of 40: nothing trained.
    write_stage(&root.path().join("Stage4"), 80, 40, &stage2);
    let mut args = vec!["stages".to_string()];
    args.extend(dirs(&["Stage1", "Stage2", "Stage3"]));
    let (ok, stdout, _) = wick(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains(
            "Stage3 starts at global step 0 after Stage2 ended at 80: the optimizer, scheduler and step counter were \
             not restored — resume from Stage2/checkpoint-80"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("Stage3's learning rate rises to"), "{stdout}");
    let mut args = vec!["stages".to_string()];
    args.extend(dirs(&["Stage1", "Stage2", "Stage4"]));
    let (ok, stdout, _) = wick(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("Stage4 trained no step: it resumed at global step 80 with max_steps 40"), "{stdout}");

    // Stage5 resumed Stage1 properly, but with a longer max_steps its linear decay began again higher up.
    let mut stage5 = stage1.clone();
    stage5.extend((5..=8).map(|i| (i * 10, 1.5, 1e-3 * (1.0 - i as f64 / 16.0))));
    write_stage(&root.path().join("Stage5"), 80, 100, &stage5);
    let mut args = vec!["stages".to_string()];
    args.extend(dirs(&["Stage1", "Stage5"]));
    let (ok, stdout, _) = wick(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("Stage5's learning rate rises to 6.875e-4 at global step 50"), "{stdout}");
    assert!(stdout.contains("a decaying schedule is a function of max_steps (100)"), "{stdout}");
}

/// Each tag's (step, value as the f32 TensorBoard stores) points.
fn as_f32_points(scalars: &BTreeMap<String, Series>) -> BTreeMap<String, Vec<(i64, u32)>> {
    scalars
        .iter()
        .map(|(tag, s)| (tag.clone(), s.points.iter().map(|p| (p.step, (p.value as f32).to_bits())).collect()))
        .collect()
}

#[test]
fn a_wick_run_writes_tensorboard_files_with_every_point_and_a_resume_supersedes_what_it_runs_again() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(6, 6));
    train_events(&dir, TrainOptions { stop_at_step: Some(5), ..Default::default() });
    // Lose the stop's checkpoint: the resume starts from step 3 and logs steps 4 and 5 again.
    std::fs::remove_dir_all(dir.checkpoints_dir().join(wick::run::checkpoint::checkpoint_name(5))).unwrap();
    train_events(&dir, TrainOptions { resume: true, ..Default::default() });

    let files = wick::interop::tensorboard::event_files(dir.root());
    assert_eq!(files.len(), 2, "one event file a session: {files:?}");
    let ours = wick::interop::wick::scalars(dir.root()).unwrap();
    assert!(ours.contains_key("train/loss") && ours.contains_key("train/lr") && ours.contains_key("train/gates/0"));
    assert_eq!(ours["train/loss"].points.len(), 12);
    let written = wick::interop::tensorboard::read_log_dir(dir.root());
    assert!(written.problems.is_empty(), "{:?}", written.problems);
    assert_eq!(as_f32_points(&written.scalars), as_f32_points(&ours), "every point, once, equal");
    let image_steps: Vec<i64> = written.images["samples"].iter().map(|i| i.step).collect();
    assert_eq!(image_steps, [3, 6, 9, 12], "one sample grid per checkpoint kept");
    let first = &written.images["samples"][0].png;
    assert_eq!(first, &std::fs::read(dir.checkpoints_dir().join("step-00000003/samples.png")).unwrap());

    // A run made before Wick wrote these files gets them from `wick export tensorboard`.
    let root = dir.root().to_str().unwrap();
    let (ok, _, stderr) = wick(&["export", "tensorboard", root]);
    assert!(!ok && stderr.contains("already has TensorBoard files") && stderr.contains("--replace"), "{stderr}");
    let (ok, stdout, stderr) = wick(&["export", "tensorboard", root, "--replace"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("4 sample grids") && stdout.contains("replaced 2 earlier file(s)"), "{stdout}");
    assert_eq!(wick::interop::tensorboard::event_files(dir.root()).len(), 1);
    let exported = wick::interop::tensorboard::read_log_dir(dir.root());
    assert_eq!(as_f32_points(&exported.scalars), as_f32_points(&ours));
    assert_eq!(exported.images["samples"].iter().map(|i| i.step).collect::<Vec<_>>(), [3, 6, 9, 12]);
}
