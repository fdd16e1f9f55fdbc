//! Your own data: an image folder with a layout file, checked by `wick data check` and trained on like the
//! built-in task.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{create_run, image_folder, loss_bits, tiny_two_stage, train_events};
use wick::config::{DatasetKind, RunConfig};
use wick::data::{check_folder, CheckRequest, DataReport, DataSplit, ProblemKind};
use wick::run::TrainEvent;
use wick::train::TrainOptions;

fn request(root: &Path, layouts: Option<&Path>, cache: &Path) -> CheckRequest {
    CheckRequest {
        root: root.to_path_buf(),
        layouts: layouts.map(Path::to_path_buf),
        box_units: wick::config::BoxUnits::Auto,
        slots: 4,
        cache_dir: Some(cache.to_path_buf()),
    }
}

fn problems_of(report: &DataReport, kind: ProblemKind) -> Vec<String> {
    report.problems.iter().filter(|p| p.kind == kind).map(|p| format!("{} {}", p.path, p.detail)).collect()
}

#[test]
fn data_check_reports_every_problem_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 8);
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["data", "check"])
        .arg(&root)
        .arg("--layouts")
        .arg(&layouts)
        .arg("--runs-dir")
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: DataReport = serde_json::from_slice(&output.stdout).expect("stdout is the JSON report");

    let classes: Vec<(&str, usize, usize)> =
        report.classes.iter().map(|c| (c.name.as_str(), c.files, c.usable)).collect();
    // circle: 8 + a truncated file + a duplicate; square: 8 + a zero-byte file; the text file is not an image.
    assert_eq!(classes, [("circle", 10, 8), ("square", 9, 8), ("triangle", 8, 8)]);
    assert_eq!(report.usable_images, 24);
    assert!(report.image_sizes.iter().any(|s| (s.width, s.height) == (48, 40)), "{:?}", report.image_sizes);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let unreadable = problems_of(&report, ProblemKind::Unreadable);
    assert!(unreadable.len() == 1 && unreadable[0].starts_with("circle/truncated.png"), "{unreadable:?}");
    assert_eq!(problems_of(&report, ProblemKind::EmptyFile).len(), 1);
    assert!(problems_of(&report, ProblemKind::EmptyFile)[0].starts_with("square/empty.png"));
    assert!(problems_of(&report, ProblemKind::NotAnImage)[0].starts_with("triangle/notes.txt"));
    let duplicates = problems_of(&report, ProblemKind::Duplicate);
    assert!(duplicates.len() == 1 && duplicates[0].contains("circle/000.png"), "{duplicates:?}");
    assert_eq!(report.duplicates, vec![vec!["circle/000.png".to_string(), "circle/copy-of-000.png".to_string()]]);

    let missing = problems_of(&report, ProblemKind::LayoutMissingImage);
    assert!(missing.len() == 1 && missing[0].contains("circle/missing.png"), "{missing:?}");
    let bad_boxes = problems_of(&report, ProblemKind::LayoutBadBox);
    assert!(
        bad_boxes.len() == 1 && bad_boxes[0].contains("square/001.jpg") && bad_boxes[0].contains("clipped"),
        "{bad_boxes:?}"
    );
    let unknown = problems_of(&report, ProblemKind::LayoutUnknownClass);
    assert!(unknown.len() == 1 && unknown[0].contains("hexagon"), "{unknown:?}");
    let layout_lines: Vec<Option<usize>> =
        report.problems.iter().filter(|p| p.path == "layout_dataset.jsonl").map(|p| p.line).collect();
    assert!(layout_lines.iter().all(Option::is_some), "layout problems carry their line: {layout_lines:?}");

    let layout = report.layout.as_ref().expect("layout summary");
    assert_eq!(layout.box_units, wick::config::BoxUnits::Pixels, "pixel boxes are detected");
    assert!(layout.units_detected);
    assert_eq!(layout.images_with_layout, 24);
    // Every line but the unknown-class object's keeps its object.
    assert_eq!(layout.objects, 23);

    // A class folder with nothing usable makes the data unusable: exit code 1, the class named.
    std::fs::create_dir_all(root.join("hexagon")).unwrap();
    std::fs::write(root.join("hexagon/broken.png"), b"not a png").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["data", "check"])
        .arg(&root)
        .arg("--runs-dir")
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: DataReport = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report.errors.iter().any(|e| e.contains("\"hexagon\"")), "{:?}", report.errors);
    assert!(String::from_utf8_lossy(&output.stderr).contains("hexagon"));
}

#[test]
fn an_interrupted_check_continues_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 12);
    let cache = tmp.path().join("cache");
    let cancel = AtomicBool::new(false);
    let interrupted = check_folder(&request(&root, Some(&layouts), &cache), &cancel, |p| {
        if p.done > 0 {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    let message = format!("{:#}", interrupted.expect_err("the check was cancelled"));
    assert!(message.contains("cancelled"), "{message}");

    let resumed = check_folder(&request(&root, Some(&layouts), &cache), &AtomicBool::new(false), |_| {}).unwrap();
    assert!(resumed.report.reused_from_earlier_scan > 0, "the second check reused the first one's reads");
    assert!(resumed.report.reused_from_earlier_scan < resumed.report.image_files);
    let fresh =
        check_folder(&request(&root, Some(&layouts), &tmp.path().join("other")), &AtomicBool::new(false), |_| {})
            .unwrap();
    assert_eq!(fresh.report.reused_from_earlier_scan, 0);
    assert_eq!(resumed.report.problems, fresh.report.problems);
    assert_eq!(resumed.usable, fresh.usable);

    // A file that changes is read again.
    let again = check_folder(&request(&root, Some(&layouts), &cache), &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(again.report.reused_from_earlier_scan, again.report.image_files);
    std::fs::write(root.join("square/000.png"), b"overwritten by a bad sync").unwrap();
    let changed = check_folder(&request(&root, Some(&layouts), &cache), &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(changed.report.reused_from_earlier_scan, changed.report.image_files - 1);
    assert!(problems_of(&changed.report, ProblemKind::Unreadable).iter().any(|p| p.starts_with("square/000.png")));
}

fn evals_of(dir: &wick::run::RunDir) -> Vec<wick::run::events::EvalRecord> {
    wick::run::atomic::read_jsonl(&dir.evals_path()).unwrap()
}

fn folder_config(root: &Path, layouts: Option<&Path>) -> RunConfig {
    let mut config = tiny_two_stage(4, 4);
    config.dataset.kind = DatasetKind::Folder;
    config.dataset.path = Some(root.to_path_buf());
    config.dataset.layouts = layouts.map(Path::to_path_buf);
    config.dataset.heldout_fraction = 0.2;
    config.eval.samples = 8;
    config.eval.judge_steps = 40;
    for stage in &mut config.stages {
        stage.eval_every = 4;
    }
    config
}

#[test]
fn a_two_stage_run_on_an_image_folder_trains_evaluates_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 8);
    let runs = tmp.path().join("runs");
    let config = folder_config(&root, Some(&layouts));

    let whole = create_run(&runs, &config);
    let events = train_events(&whole, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 8, .. })), "{events:?}");
    let evals = evals_of(&whole);
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), [4, 8]);
    for eval in &evals {
        assert!(eval.fid.is_some_and(f64::is_finite), "{eval:?}");
        assert!(eval.top1.is_some() && eval.iou.is_some_and(f64::is_finite), "{eval:?}");
    }
    // The run keeps its split (no image on both sides), the data check and the judge's accuracy.
    let split: DataSplit = serde_json::from_slice(&std::fs::read(whole.root().join("split.json")).unwrap()).unwrap();
    assert_eq!(split.train.len() + split.heldout.len(), 24);
    assert!(wick::data::folder::shared_paths(&split).is_empty());
    assert!(
        split.heldout.iter().any(|p| p.starts_with("circle/"))
            && split.heldout.iter().any(|p| p.starts_with("triangle/"))
    );
    let report: DataReport =
        serde_json::from_slice(&std::fs::read(whole.root().join("data_report.json")).unwrap()).unwrap();
    assert_eq!(report.usable_images, 24);
    let judge: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.root().join("judge.json")).unwrap()).unwrap();
    assert!(judge["accuracy"].as_f64().is_some(), "{judge}");
    assert_eq!(judge["classes"], serde_json::json!(["circle", "square", "triangle"]));

    // Stopped mid-base and across the boundary, resumed: the same losses as the uninterrupted run.
    let dir = create_run(&runs, &config);
    for (stop, resume) in [(3, false), (5, true)] {
        let events = train_events(&dir, TrainOptions { resume, stop_at_step: Some(stop), ..Default::default() });
        assert!(matches!(events.last(), Some(TrainEvent::Stopped { .. })), "{events:?}");
    }
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 8, .. })), "{events:?}");
    assert_eq!(loss_bits(&dir), loss_bits(&whole));
    let resumed_evals: Vec<_> = evals_of(&dir).iter().map(|e| (e.step, e.fid.map(f64::to_bits))).collect();
    let whole_evals: Vec<_> = evals.iter().map(|e| (e.step, e.fid.map(f64::to_bits))).collect();
    assert_eq!(resumed_evals, whole_evals, "the same judge (cached) and held-out set score the resumed run");

    // Without a layout file the run trains and evaluates too; IoU is simply not computed.
    let mut no_layouts = folder_config(&root, None);
    no_layouts.stages.truncate(1);
    let dir = create_run(&runs, &no_layouts);
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{events:?}");
    let evals = evals_of(&dir);
    assert!(!evals.is_empty() && evals.iter().all(|e| e.iou.is_none() && e.fid.is_some()), "{evals:?}");
}

#[test]
fn a_damaged_pixel_cache_is_rebuilt_and_a_folder_without_usable_images_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 4);
    let cache = tmp.path().join("cache");
    let mut config = folder_config(&root, Some(&layouts)).dataset;
    config.resize = wick::config::ResizeMode::Letterbox;
    let options = wick::data::FolderOptions { cache_dir: Some(cache.clone()), split: None };
    let open = || wick::data::FolderDataset::open(&config, 32, 4, 3, &options, |_| {}).unwrap();
    let first = open();
    let cache_file = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pixels-"))
        .expect("a pixel cache file");
    let mut bytes = std::fs::read(&cache_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cache_file, &bytes).unwrap();
    let second = open();
    for i in 0..first.len() {
        assert_eq!(first.sample(i), second.sample(i), "sample {i} after the cache was rebuilt");
    }
    assert_ne!(std::fs::read(&cache_file).unwrap(), bytes, "the damaged cache was rewritten");
    // Letterboxed 48×40 images keep their boxes inside the picture: every box in [0, 1], non-empty.
    for i in 0..first.len() {
        for object in first.sample(i).objects {
            let [x0, y0, x1, y1] = object.bbox;
            assert!((0.0..=1.0).contains(&x0) && x0 < x1 && x1 <= 1.0 && 0.0 <= y0 && y0 < y1 && y1 <= 1.0);
        }
    }

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("cats")).unwrap();
    std::fs::write(empty.join("cats/0.png"), b"").unwrap();
    let mut run_config = folder_config(&empty, None);
    run_config.name = "empty".to_string();
    // `wick train` refuses it like a config error, before any run directory exists.
    let config_file = tmp.path().join("empty.toml");
    std::fs::write(&config_file, run_config.to_toml_string().unwrap()).unwrap();
    let cli_runs = tmp.path().join("cli-runs");
    let output = Command::new(env!("CARGO_BIN_EXE_wick"))
        .arg("train")
        .arg(&config_file)
        .arg("--runs-dir")
        .arg(&cli_runs)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("dataset.path"));
    let run_dirs = std::fs::read_dir(&cli_runs)
        .map_or(0, |d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count());
    assert_eq!(run_dirs, 0, "no run directory was created");
    // Started anyway (the window, the library), the run fails before its first step, naming the problem.
    let dir = create_run(&tmp.path().join("runs"), &run_config);
    let events = train_events(&dir, TrainOptions::default());
    let failure = events.iter().find_map(|e| match e {
        TrainEvent::Failed { message, .. } => Some(message.clone()),
        _ => None,
    });
    let message = failure.expect("the run fails before its first step");
    assert!(message.contains("no usable image"), "{message}");
    assert!(dir.read_metrics_raw().unwrap_or_default().is_empty(), "no step was trained");
}

#[test]
fn a_64_pixel_model_trains_on_a_folder_and_its_checkpoints_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 4);
    let mut config = folder_config(&root, Some(&layouts));
    config.model.resolution = 64;
    config.stages.truncate(1);
    config.stages[0].steps = 2;
    config.stages[0].eval_every = 2;
    let dir = create_run(&tmp.path().join("runs"), &config);
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 2, .. })), "{events:?}");
    let checkpoint = dir.checkpoints().unwrap().last().unwrap().dir.clone();
    let spec = wick::model::spec_from_weights(&checkpoint).unwrap();
    assert_eq!((spec.image_size, spec.patch, spec.classes, spec.tokens()), (64, 8, 3, 64));
    // The sample grid of a 64-pixel checkpoint: 64-pixel cells, class names from the folder.
    let grid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.join("samples.json")).unwrap()).unwrap();
    let classes: Vec<&str> = grid["rows"].as_array().unwrap().iter().map(|r| r["class"].as_str().unwrap()).collect();
    assert!(classes.iter().all(|c| ["circle", "square", "triangle"].contains(c)), "{classes:?}");
    let png = image::open(checkpoint.join("samples.png")).unwrap();
    assert!(png.width() >= 64 * 4, "cells are 64 pixels scaled up: {}", png.width());
}

#[test]
fn folder_samples_are_the_files_pixels_with_their_class_and_box() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = image_folder(&root, 6);
    let config = folder_config(&root, Some(&layouts)).dataset;
    let options = wick::data::FolderOptions { cache_dir: None, split: None };
    let dataset = wick::data::FolderDataset::open(&config, 32, 4, 3, &options, |_| {}).unwrap();
    let names = ["circle", "square", "triangle"];
    let mut checked = 0;
    for (i, path) in dataset.train_paths().into_iter().enumerate() {
        let sample = dataset.sample(i as u64);
        assert_eq!(names[sample.label as usize], path.split('/').next().unwrap(), "{path}: label");
        if !path.ends_with(".png") {
            continue;
        }
        let file = image::open(root.join(path)).unwrap().to_rgb8();
        if file.dimensions() != (32, 32) {
            continue;
        }
        // A 32×32 PNG at resolution 32 is taken as it is: channel-major, scaled to [-1, 1].
        let expected: Vec<f32> = (0..3)
            .flat_map(|c| file.pixels().map(move |p| f32::from(p[c]) / 127.5 - 1.0).collect::<Vec<_>>())
            .collect();
        let worst = sample.image.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{path}: pixels differ by {worst}");
        assert_eq!(sample.objects.len(), 1, "{path}");
        assert_eq!(sample.objects[0].class, sample.label, "{path}: its one object is of its class");
        checked += 1;
    }
    assert!(checked >= 3, "{checked} PNG files compared");
}
