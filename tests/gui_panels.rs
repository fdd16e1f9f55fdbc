//! The Checkpoints, Compare, Logs, System and Preflight panels and the toasts, driven without a window by
//! egui_kittest: widgets are found by their accessible labels; workers are waited for by stepping with short
//! sleeps, bounded by a timeout.

mod common;

use common::{settle, step_until};

use std::path::{Path, PathBuf};
use std::time::Duration;

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use wick::app::checkpoints::Integrity;
use wick::app::dialog::ScriptedDialog;
use wick::app::state::{Panel, Persisted};
use wick::app::WickApp;
use wick::config::RunConfig;
use wick::run::{RunDir, TrainEvent};
use wick::train::{self, TrainOptions};

/// A window on `runs_dir` showing `panel`, with `run` selected.
fn harness(runs_dir: &Path, dialog: &ScriptedDialog, panel: Panel, run: Option<&Path>) -> Harness<'static, WickApp> {
    let runs_dir = runs_dir.to_path_buf();
    let dialog = dialog.clone();
    let persisted = Persisted { panel, last_opened_run: run.map(Path::to_path_buf), ..Persisted::default() };
    Harness::builder()
        .with_size(egui::vec2(1700.0, 1100.0))
        .build_eframe(move |cc| WickApp::with_state(cc.egui_ctx.clone(), runs_dir, Box::new(dialog), persisted))
}

/// A tiny two-stage run trained to the end by the engine, evaluated at steps 3 and 6 (16 samples, 4 sampler
/// steps), with checkpoints at both.
fn trained_run(runs: &Path) -> RunDir {
    let mut config = common::tiny_two_stage(3, 3);
    for stage in &mut config.stages {
        stage.eval_every = 3;
    }
    let dir = common::create_run(runs, &config);
    train::start(dir.clone(), TrainOptions::default()).expect("trainer starts").join();
    dir
}

fn report_loaded(h: &Harness<'_, WickApp>) -> bool {
    h.state().panels.checkpoints.report.as_ref().is_some_and(|r| !r.rows.is_empty())
}

#[test]
fn checkpoints_are_listed_with_badges_verified_and_a_damaged_file_is_named() {
    let runs = tempfile::tempdir().unwrap();
    let dir = trained_run(runs.path());
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Checkpoints, Some(dir.root()));
    step_until(&mut harness, Duration::from_secs(20), report_loaded);

    let report = harness.state().panels.checkpoints.report.clone().unwrap();
    let names: Vec<String> = report.rows.iter().map(|r| r.row.checkpoint.clone()).collect();
    assert_eq!(names, ["step-00000003", "step-00000006"]);
    for name in &names {
        harness.get_by_label(name);
    }
    assert!(report.rows.iter().any(|r| r.row.best), "state.json names a best checkpoint");
    harness.get_by_label("best");
    assert!(report.recommendation.contains("step-"), "recommendation: {}", report.recommendation);
    harness.get_by_label(&report.recommendation);
    assert_eq!(harness.query_all_by_label("not yet checked").count(), 2);
    assert!(report.rows.iter().all(|r| r.size_bytes > 0));

    harness.get_by_label("Verify").click();
    step_until(&mut harness, Duration::from_secs(20), |h| {
        let c = &h.state().panels.checkpoints;
        report.rows.iter().all(|r| c.integrity_of(&r.dir) == Integrity::Verified)
    });
    assert_eq!(harness.query_all_by_label("verified").count(), 2);
    assert_eq!(harness.query_all_by_label("✔").count(), 2);

    // Flip one byte of the first checkpoint's weights.
    let weights = report.rows[0].dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    harness.get_by_label("Verify").click();
    step_until(&mut harness, Duration::from_secs(20), |h| {
        matches!(h.state().panels.checkpoints.integrity_of(&report.rows[0].dir), Integrity::Damaged(_))
    });
    assert!(harness.query_by_label_contains("✘").is_some(), "the damaged checkpoint is marked");
    harness.get_by_label_contains("model.safetensors: sha256");
    assert_eq!(harness.query_all_by_label("verified").count(), 1, "the other checkpoint is still intact");

    // Fork from the second checkpoint: the Setup draft warm-starts from it.
    harness.query_all_by_label("Fork from here").nth(1).expect("a fork button per row").click();
    settle(&mut harness);
    let app = harness.state();
    assert_eq!(app.persisted.panel, Panel::Setup, "status: {:?}", app.status);
    assert_eq!(app.setup.config.stages[0].warm_start.as_deref(), Some(report.rows[1].dir.as_path()));
    assert_eq!(app.setup.config.stages.len(), 2);
    assert!(app.status.as_ref().is_some_and(|s| !s.error && s.text.contains("warm-starts")), "{:?}", app.status);
}

#[test]
fn two_checkpoints_are_compared_side_by_side_and_the_grid_saved() {
    let runs = tempfile::tempdir().unwrap();
    let dir = trained_run(runs.path());
    let dialog = ScriptedDialog::new();
    let mut harness = harness(runs.path(), &dialog, Panel::Checkpoints, Some(dir.root()));
    step_until(&mut harness, Duration::from_secs(20), report_loaded);

    harness.get_by_label("step-00000003").click();
    settle(&mut harness);
    harness.get_by_label("step-00000006").click();
    settle(&mut harness);
    harness.get_by_label("Compare selected (2)").click();
    settle(&mut harness);
    assert_eq!(harness.state().persisted.panel, Panel::Compare);
    assert_eq!(harness.state().panels.compare.settings.checkpoints.len(), 2);
    {
        let settings = &mut harness.state_mut().panels.compare.settings;
        settings.steps = 4;
        settings.rows = 2;
    }
    harness.get_by_label("Generate").click();
    settle(&mut harness);
    step_until(&mut harness, Duration::from_secs(60), |h| {
        let c = &h.state().panels.compare;
        c.job.is_none() && (c.result.is_some() || c.error.is_some())
    });
    let compare = &harness.state().panels.compare;
    assert_eq!(compare.error, None);
    let result = compare.result.as_ref().unwrap();
    assert_eq!(result.description.columns, ["step-00000003", "step-00000006"]);
    assert_eq!(result.geometry.columns, 2);
    assert_eq!(result.geometry.rows, 2);
    assert!(result.png.starts_with(b"\x89PNG"));
    assert!(harness.query_by_label("step 6").is_some(), "column titles are shown, short");

    harness.get_by_label("Difference |A−B|").click();
    settle(&mut harness);
    assert!(harness.state().panels.compare.textures.difference.is_some());
    harness.get_by_label("|A − B|");

    let out = runs.path().join("grid.png");
    dialog.push(&out);
    harness.get_by_label("Save PNG…").click();
    step_until(&mut harness, Duration::from_secs(10), |_| out.is_file());
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));

    // One checkpoint at several gate scales: one column per scale.
    harness.query_all_by_label("×").next().expect("a remove button per checkpoint").click();
    settle(&mut harness);
    assert_eq!(harness.state().panels.compare.settings.checkpoints.len(), 1);
    harness.state_mut().panels.compare.settings.gate_scales_text = "0, 1".to_string();
    harness.get_by_label("Generate").click();
    settle(&mut harness);
    step_until(&mut harness, Duration::from_secs(60), |h| h.state().panels.compare.job.is_none());
    let compare = &harness.state().panels.compare;
    assert_eq!(compare.error, None);
    let columns = &compare.result.as_ref().unwrap().description.columns;
    assert_eq!(columns, &["step-00000006 gate×0", "step-00000006 gate×1"]);
}

#[test]
fn the_log_is_tailed_and_the_level_filter_hides_lines() {
    let runs = tempfile::tempdir().unwrap();
    let dir = common::create_run(runs.path(), &common::tiny_two_stage(2, 1));
    let log = dir.log_path();
    std::fs::write(
        &log,
        "2026-01-01T00:00:00Z  INFO [trainer] wick::train: hello from the panels test\n\
         2026-01-01T00:00:01Z DEBUG [trainer] wick::train: a debug detail\n",
    )
    .unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Logs, Some(dir.root()));
    step_until(&mut harness, Duration::from_secs(10), |h| {
        h.query_by_label_contains("hello from the panels test").is_some()
    });
    harness.get_by_label_contains("a debug detail");

    // Appended lines arrive (read by offset).
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(file, "2026-01-01T00:00:02Z  WARN [trainer] wick::train: appended later").unwrap();
    drop(file);
    step_until(&mut harness, Duration::from_secs(10), |h| h.query_by_label_contains("appended later").is_some());

    harness.get_by_label("INFO").click();
    settle(&mut harness);
    assert!(harness.query_by_label_contains("hello from the panels test").is_none(), "INFO lines are hidden");
    harness.get_by_label_contains("a debug detail");

    harness.state_mut().panels.logs.search = "APPENDED".to_string();
    settle(&mut harness);
    assert!(harness.query_by_label_contains("a debug detail").is_none(), "the search hides other lines");
    harness.get_by_label_contains("appended later");
}

#[test]
fn the_system_panel_shows_a_gpu_or_says_there_is_none() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::System, None);
    step_until(&mut harness, Duration::from_secs(10), |h| {
        h.state().panels.system.as_ref().is_some_and(|m| m.latest().is_some())
    });
    let gpu = harness.query_by_label_contains("GPU 0:").is_some();
    let none = harness.query_by_label_contains("no NVIDIA GPU found").is_some();
    assert!(gpu || none, "a GPU name or the NVML reason is shown");
    harness.get_by_label_contains("resident");
    harness.get_by_label("CPU (machine)");
}

#[test]
fn preflight_of_the_smoke_preset_passes_every_check() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Preflight, None);
    harness.state_mut().setup.replace(RunConfig::preset("smoke").unwrap(), None);
    settle(&mut harness);
    harness.get_by_label("Run preflight").click();
    step_until(&mut harness, Duration::from_secs(60), |h| h.state().panels.preflight.result.is_some());
    let (name, items) = harness.state().panels.preflight.result.clone().unwrap();
    assert_eq!(name, "smoke");
    let failed: Vec<_> = items.iter().filter(|i| !i.ok).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
    for label in ["Image tensor", "Layout tensors", "Dtypes", "Peak memory", "Estimated time"] {
        assert!(items.iter().any(|i| i.label == label), "{label} is checked");
        harness.get_by_label(label);
    }
    for stage in ["stage 1 `base`", "stage 2 `adapter`"] {
        for what in ["Forward", "Backward", "Gradients", "Parameters"] {
            harness.get_by_label(&format!("{what} ({stage})"));
        }
    }
    harness.get_by_label_contains("[8, 4, 4]");
    harness.get_by_label(&format!("All {} checks of `smoke` passed.", items.len()));
    assert_eq!(harness.query_all_by_label("✔").count(), items.len());
}

#[test]
fn toasts_show_run_events_and_errors_stay_until_clicked() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Setup, None);
    let root = PathBuf::from("/nowhere/run-1");
    harness.state_mut().panels.observe_events(
        &root,
        "run-1",
        &[
            TrainEvent::NanDetected {
                step: 4,
                stage: "base".into(),
                consecutive: 1,
                message: "the loss is NaN".into(),
            },
            TrainEvent::Failed { step: 5, message: "out of memory".into() },
        ],
    );
    settle(&mut harness);
    harness.get_by_label_contains("NaN at step 4");
    harness.get_by_label_contains("run failed — out of memory").click();
    settle(&mut harness);
    assert!(harness.query_by_label_contains("out of memory").is_none(), "a click dismisses the error");
    assert_eq!(harness.state().panels.toasts.items.len(), 1);
}

#[test]
fn a_run_trained_in_the_window_raises_toasts_and_fills_the_checkpoint_table_as_it_saves() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Setup, None);
    harness.state_mut().setup.replace(RunConfig::preset("smoke").unwrap(), None);
    settle(&mut harness);
    harness.get_by_label("Start").click();
    settle(&mut harness);
    assert!(harness.state().is_training(), "status: {:?}", harness.state().status);
    harness.state_mut().persisted.panel = Panel::Checkpoints;
    // A notice fades after a few seconds: look for it when it appears, not after the run (which takes as
    // long as the machine's load makes it).
    let toast_shown =
        |h: &Harness<'_, WickApp>| h.state().panels.toasts.items.iter().any(|t| t.text.contains("stage base finished"));
    step_until(&mut harness, Duration::from_secs(60), |h| toast_shown(h) || !h.state().is_training());
    let toasts: Vec<String> = harness.state().panels.toasts.items.iter().map(|t| t.text.clone()).collect();
    assert!(toasts.iter().any(|t| t.contains("stage base finished")), "toasts: {toasts:?}");
    harness.get_by_label_contains("stage base finished");
    step_until(&mut harness, Duration::from_secs(120), |h| {
        let app = h.state();
        !app.is_training() && app.panels.checkpoints.report.as_ref().is_some_and(|r| r.rows.len() == 5)
    });
    harness.get_by_label("step-00000050");
}

/// A chars run in the window: Setup shows the task's own settings, the Start button trains it, Live plots
/// its exact-match, the Checkpoints table has its metric columns, and Compare shows its text samples side by
/// side.
#[test]
fn a_chars_run_is_set_up_trained_tabled_and_its_text_samples_compared() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new(), Panel::Setup, None);
    settle(&mut harness);
    harness.get_by_label("Preset").click();
    settle(&mut harness);
    harness.get_by_label("chars-smoke").click();
    settle(&mut harness);
    assert_eq!(harness.state().setup.config.task.kind, "chars");
    harness.get_by_label("Task settings (chars)");
    harness.get_by_label("Context");
    harness.get_by_label("Digits (this stage)");
    assert!(harness.query_by_label("Model preset").is_none(), "the shapes model's fields are hidden");
    for shapes_only in ["Class dropout", "Layout dropout", "Object loss weight", "Timestep logit mean"] {
        assert!(harness.query_by_label(shapes_only).is_none(), "the stage editor offers {shapes_only}");
    }
    harness.state_mut().setup.config.device = "cpu".to_string();
    harness.get_by_label("Start").click();
    settle(&mut harness);
    assert!(harness.state().is_training(), "status: {:?}", harness.state().status);
    step_until(&mut harness, Duration::from_secs(60), |h| !h.state().is_training());
    let root = harness.state().runs.first().map(|r| r.root.clone()).expect("the run is listed");
    assert_eq!(RunDir::open(&root).unwrap().read_state().unwrap().status, wick::run::RunStatus::Finished);
    // Live: the task's metrics have plots of their own, and no FID plot is drawn for a chars run.
    let shown = |h: &Harness<'_, WickApp>, label: &str| h.query_all_by_label(label).count() > 0;
    step_until(&mut harness, Duration::from_secs(20), |h| shown(h, "exact match"));
    assert!(shown(&harness, "bits/char"));
    assert!(!shown(&harness, "FID (judge)"));

    harness.state_mut().persisted.panel = Panel::Checkpoints;
    step_until(&mut harness, Duration::from_secs(20), report_loaded);
    let report = harness.state().panels.checkpoints.report.clone().unwrap();
    assert_eq!(report.rows.len(), 4);
    for column in ["held-out loss", "exact match", "bits/char"] {
        assert!(shown(&harness, column), "no {column} column");
    }
    assert!(!shown(&harness, "FID"));
    harness.get_by_label("step-00000005").click();
    settle(&mut harness);
    harness.get_by_label("step-00000020").click();
    settle(&mut harness);
    harness.get_by_label("Compare selected (2)").click();
    settle(&mut harness);
    harness.get_by_label("Generate").click();
    step_until(&mut harness, Duration::from_secs(20), |h| h.state().panels.compare.text.is_some());
    let table = harness.state().panels.compare.text.clone().unwrap();
    assert_eq!(table.columns, ["step-00000005", "step-00000020"]);
    assert_eq!(table.rows.len(), 4);
    for row in &table.rows {
        assert!(shown(&harness, &row.prompt), "prompt {} not shown", row.prompt);
    }
    harness.get_by_label_contains("what differs from the column to the left");
}
