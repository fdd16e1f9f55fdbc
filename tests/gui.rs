//! The window, driven without a window by egui_kittest: widgets are found by their accessible labels.

mod common;

use common::{settle, step_until};

use std::path::Path;
use std::time::Duration;

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use wick::app::dialog::ScriptedDialog;
use wick::app::state::{Panel, Persisted};
use wick::app::WickApp;
use wick::run::{RunDir, RunStatus};
use wick::train::{self, TrainOptions};

fn harness(runs_dir: &Path, dialog: &ScriptedDialog) -> Harness<'static, WickApp> {
    let runs_dir = runs_dir.to_path_buf();
    let dialog = dialog.clone();
    Harness::builder().with_size(egui::vec2(1700.0, 1100.0)).build_eframe(move |cc| {
        WickApp::with_state(cc.egui_ctx.clone(), runs_dir, Box::new(dialog), Persisted::default())
    })
}

/// Whether the Start button is disabled.
fn start_disabled(harness: &Harness<'_, WickApp>) -> bool {
    harness.get_by_label("Start").accesskit_node().is_disabled()
}

#[test]
fn an_invalid_stage_field_shows_its_error_inline_and_disables_start() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    settle(&mut harness);
    assert_eq!(harness.state().persisted.panel, Panel::Setup);
    assert_eq!(harness.state().setup.config.name, "demo", "the demo curriculum is loaded at start");
    assert!(!start_disabled(&harness), "the demo config is valid");
    let steps = harness.state().setup.config.stages[0].steps;

    harness.get_by_label("Steps").set_value_accesskit(0.0);
    settle(&mut harness);
    assert_eq!(harness.state().setup.config.stages[0].steps, 0);
    harness.get_by_label_contains("must be > 0");
    assert!(start_disabled(&harness), "Start is disabled while the config has errors");

    harness.get_by_label("Steps").set_value_accesskit(steps as f64);
    harness.get_by_label("Learning rate").set_value_accesskit(-0.001);
    settle(&mut harness);
    assert!(harness.query_by_label_contains("must be > 0").is_none());
    harness.get_by_label_contains("must be a positive number");
    assert!(start_disabled(&harness));

    harness.get_by_label("Learning rate").set_value_accesskit(0.001);
    settle(&mut harness);
    assert!(harness.query_by_label_contains("must be a positive number").is_none());
    assert!(!start_disabled(&harness), "fixed: Start is enabled again, issues: {:?}", harness.state().setup.issues);
}

#[test]
fn stages_can_be_added_duplicated_moved_and_removed() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    settle(&mut harness);
    let names =
        |h: &Harness<'_, WickApp>| h.state().setup.config.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let before = names(&harness);
    let n = before.len();
    assert!(n >= 2, "the demo curriculum has stages: {before:?}");

    harness.get_by_label("Add stage").click();
    settle(&mut harness);
    assert_eq!(names(&harness).len(), n + 1);
    assert_eq!(harness.state().setup.selected_stage, n);

    harness.get_by_label("Duplicate stage").click();
    settle(&mut harness);
    let after = names(&harness);
    assert_eq!(after.len(), n + 2);
    assert_eq!(after[n + 1], format!("{}-copy", after[n]));
    harness.get_by_label_contains(&format!("{}. {}", n + 2, after[n + 1]));

    harness.get_by_label("Move up").click();
    settle(&mut harness);
    assert_eq!(names(&harness)[n], after[n + 1]);

    harness.get_by_label("Remove stage").click();
    settle(&mut harness);
    harness.get_by_label("Remove stage").click();
    settle(&mut harness);
    assert_eq!(names(&harness), before);
    assert!(!start_disabled(&harness));
}

#[test]
fn the_smoke_preset_trains_from_start_to_finished_and_is_listed() {
    let runs = tempfile::tempdir().unwrap();
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    settle(&mut harness);

    harness.get_by_label("Preset").click();
    settle(&mut harness);
    harness.get_by_label("smoke").click();
    settle(&mut harness);
    assert_eq!(harness.state().setup.config.name, "smoke");

    harness.get_by_label("Start").click();
    settle(&mut harness);
    assert!(harness.state().is_training(), "status: {:?}", harness.state().status);
    assert_eq!(harness.state().persisted.panel, Panel::Live);
    assert!(start_disabled(&harness), "no second run while one trains");

    step_until(&mut harness, Duration::from_secs(120), |h| {
        let app = h.state();
        !app.is_training() && app.runs.iter().any(|r| r.status == RunStatus::Finished)
    });
    let app = harness.state();
    let session = app.session.as_ref().unwrap();
    assert_eq!(session.status, RunStatus::Finished, "failure: {:?}", app.status);
    let id = session.id.clone();
    assert!(id.starts_with("smoke-"));
    let store = &app.stores[&session.root];
    assert_eq!(store.series["loss"].len(), 50, "every logged step reached the RunStore");
    assert!(harness.query_all_by_label("finished").count() >= 2, "top bar and Runs panel say finished");
    assert!(harness.query_all_by_label(&id).count() >= 2, "the run is named in the top bar and listed in Runs");
}

#[test]
fn a_run_written_by_the_engine_opens_from_a_folder_elsewhere() {
    let runs = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = common::tiny_two_stage(2, 1);
    let dir = RunDir::create(elsewhere.path(), "from-cli", &config).unwrap();
    train::start(dir.clone(), TrainOptions::default()).unwrap().join();
    let id = dir.id();

    let dialog = ScriptedDialog::new();
    let mut harness = harness(runs.path(), &dialog);
    settle(&mut harness);
    assert!(harness.query_by_label(&id).is_none());

    dialog.push(dir.root());
    harness.get_by_label("Open run folder…").click();
    step_until(&mut harness, Duration::from_secs(20), |h| {
        h.state().runs.iter().any(|r| r.id == id) && h.state().stores.contains_key(dir.root())
    });
    assert_eq!(harness.state().persisted.panel, Panel::Live);
    assert!(harness.query_all_by_label(&id).count() >= 2, "listed in Runs and named in the top bar");
    assert_eq!(harness.state().stores[dir.root()].series["loss"].len(), 3);
    assert_eq!(harness.state().persisted.extra_runs, vec![dir.root().to_path_buf()]);

    // CSV export of the shown series, through the dialog.
    let csv = elsewhere.path().join("series.csv");
    dialog.push(&csv);
    harness.get_by_label("Export CSV…").click();
    step_until(&mut harness, Duration::from_secs(20), |h| {
        h.state().status.as_ref().is_some_and(|s| s.text.starts_with("Exported"))
    });
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some("series,step,wall_secs,value"));
    assert!(text.lines().any(|l| l.starts_with("loss,3,")), "{text}");
}

#[test]
fn a_config_saves_to_toml_and_opens_again() {
    let runs = tempfile::tempdir().unwrap();
    let file = runs.path().join("my-run.toml");
    let dialog = ScriptedDialog::new();
    let mut harness = harness(runs.path(), &dialog);
    settle(&mut harness);
    harness.get_by_label("Add stage").click();
    settle(&mut harness);
    let saved = harness.state().setup.config.clone();

    dialog.push(&file);
    harness.get_by_label("Save…").click();
    settle(&mut harness);
    assert!(file.is_file(), "status: {:?}", harness.state().status);

    harness.get_by_label("Load preset").click();
    settle(&mut harness);
    assert_ne!(harness.state().setup.config, saved);

    dialog.push(&file);
    harness.get_by_label("Open…").click();
    settle(&mut harness);
    assert_eq!(harness.state().setup.config, saved);
    assert_eq!(harness.state().setup.file.as_deref(), Some(file.as_path()));

    // A broken file is reported once in the status line and leaves the draft alone.
    std::fs::write(&file, "[[stages]]\nname = \"x\"\nsteps = \"many\"\n").unwrap();
    dialog.push(&file);
    harness.get_by_label("Open…").click();
    settle(&mut harness);
    let status = harness.state().status.clone().unwrap();
    assert!(status.error && status.text.contains("stages[0].steps"), "{status:?}");
    assert_eq!(harness.state().setup.config, saved);
}

#[test]
fn saved_window_state_from_an_older_version_still_loads() {
    let state: Persisted = serde_json::from_str(r#"{"panel": "Live", "unknown_field_from_the_future": 1}"#).unwrap();
    assert_eq!(state.panel, Panel::Live);
    assert!(state.dark_mode);
}

#[test]
fn closing_the_window_while_training_stops_with_a_checkpoint_and_the_run_resumes_next_launch() {
    let runs = tempfile::tempdir().unwrap();
    let root = {
        let mut harness = harness(runs.path(), &ScriptedDialog::new());
        settle(&mut harness);
        harness.state_mut().commands.push(wick::app::AppCommand::LoadPreset("smoke".into()));
        settle(&mut harness);
        harness.get_by_label("Start").click();
        settle(&mut harness);
        assert!(harness.state().is_training());
        // What eframe calls when the window closes.
        harness.state_mut().shutdown();
        let root = harness.state().session.as_ref().unwrap().root.clone();
        let state = RunDir::open(&root).unwrap().read_state().unwrap();
        assert_eq!(state.status, RunStatus::Stopped, "stopped with a checkpoint, not left running");
        root
    };

    // Next launch: the run is listed as stopped and resumes to the end.
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(10), |h| h.state().runs.iter().any(|r| r.root == root));
    assert_eq!(harness.state().runs[0].status, RunStatus::Stopped);
    harness.get_by_label("Resume run").click();
    settle(&mut harness);
    assert!(harness.state().is_training());
    step_until(&mut harness, Duration::from_secs(120), |h| !h.state().is_training());
    assert_eq!(harness.state().session.as_ref().unwrap().status, RunStatus::Finished);
    let state = RunDir::open(&root).unwrap().read_state().unwrap();
    assert_eq!((state.status, state.global_step), (RunStatus::Finished, 50));
    step_until(&mut harness, Duration::from_secs(10), |h| h.state().stores.contains_key(&root));
    let loss = &harness.state().stores[&root].series["loss"];
    assert_eq!(loss.len(), 50, "the history loaded from disk plus the steps trained after the resume");
}

#[test]
fn an_image_folder_is_chosen_checked_without_freezing_and_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let layouts = common::image_folder(&root, 12);
    let runs = tmp.path().join("runs");
    let dialog = ScriptedDialog::new();
    let mut harness = harness(&runs, &dialog);
    settle(&mut harness);
    harness.get_by_label("Preset").click();
    settle(&mut harness);
    harness.get_by_label("smoke").click();
    settle(&mut harness);

    harness.get_by_label("Kind").click();
    settle(&mut harness);
    harness.get_by_label("image folder").click();
    settle(&mut harness);
    dialog.push(&root);
    harness.query_all_by_label("Choose…").next().expect("the folder's Choose button").click();
    settle(&mut harness);
    dialog.push(&layouts);
    harness.query_all_by_label("Choose…").nth(1).expect("the layout file's Choose button").click();
    settle(&mut harness);
    let dataset = &harness.state().setup.config.dataset;
    assert_eq!((dataset.path.as_deref(), dataset.layouts.as_deref()), (Some(root.as_path()), Some(layouts.as_path())));
    // The evaluation's sampler is edited here too; a folder adds its judge's training steps.
    for field in ["Guidance", "Guide layout", "Guidance interval"] {
        assert!(harness.query_by_label(field).is_some(), "the Setup panel edits the sampler's {field}");
    }
    assert!(harness.query_by_label("Judge steps").is_some());

    harness.get_by_label("Check data").click();
    harness.step();
    let mut frames_while_checking = 0;
    step_until(&mut harness, Duration::from_secs(60), |h| {
        if h.state().setup.data_check.is_running() {
            frames_while_checking += 1;
        }
        h.state().setup.data_check.last.is_some()
    });
    assert!(frames_while_checking > 0, "the window kept drawing frames while the check ran");
    settle(&mut harness);
    let report = harness.state().setup.data_check.last.clone().unwrap().expect("the check succeeds");
    assert_eq!(report.usable_images, 36);
    for shown in ["circle/truncated.png", "square/empty.png", "triangle/notes.txt", "circle/copy-of-000.png"] {
        assert!(harness.query_by_label_contains(shown).is_some(), "{shown} is listed in the report");
    }
    assert!(harness.query_by_label_contains("36 usable images").is_some());

    // Train on it like the built-in task (short stages; one evaluation with a judge trained for this data).
    {
        let config = &mut harness.state_mut().setup.config;
        config.dataset.heldout_fraction = 0.2;
        config.eval.samples = 8;
        config.eval.grid_rows = 2;
        config.eval.sampler.steps = 4;
        config.eval.judge_steps = 20;
        config.stages[0].steps = 6;
        config.stages[1].steps = 4;
        config.stages[1].eval_every = 4;
    }
    settle(&mut harness);
    assert!(!start_disabled(&harness), "issues: {:?}", harness.state().setup.issues);
    harness.get_by_label("Start").click();
    settle(&mut harness);
    step_until(&mut harness, Duration::from_secs(180), |h| {
        let app = h.state();
        !app.is_training() && app.session.as_ref().is_some_and(|s| s.status != RunStatus::Running)
    });
    let app = harness.state();
    let session = app.session.as_ref().unwrap();
    assert_eq!(session.status, RunStatus::Finished, "status: {:?}", app.status);
    let run = RunDir::open(&session.root).unwrap();
    assert!(run.root().join("split.json").is_file() && run.root().join("data_report.json").is_file());
    let evals: Vec<wick::run::events::EvalRecord> = wick::run::atomic::read_jsonl(&run.evals_path()).unwrap();
    assert!(evals.iter().any(|e| e.step == 10 && e.fid.is_some() && e.iou.is_some()), "{evals:?}");

    // The Checkpoints panel says how far the judge trained for this data can be trusted.
    harness.state_mut().persisted.panel = Panel::Checkpoints;
    step_until(&mut harness, Duration::from_secs(30), |h| h.query_by_label_contains("held-out accuracy").is_some());
    assert!(harness.query_by_label_contains("judge trained on this data (circle, square, triangle)").is_some());
}

#[test]
fn checkpoints_are_compared_as_their_run_evaluated_them_and_saved_with_labels() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = common::tiny_two_stage(3, 3);
    config.eval.sampler.steps = 3;
    config.eval.sampler.guidance = 2.5;
    config.eval.sampler.guidance_interval = [0.3, 0.7];
    config.eval.seed = 7;
    let dir = RunDir::create(runs.path(), "cmp", &config).unwrap();
    train::start(dir.clone(), TrainOptions::default()).unwrap().join();
    let checkpoints: Vec<_> = dir.checkpoints().unwrap().into_iter().map(|c| c.dir).collect();
    assert_eq!(checkpoints.len(), 2, "steps 3 and 6");

    let dialog = ScriptedDialog::new();
    let mut harness = harness(runs.path(), &dialog);
    step_until(&mut harness, Duration::from_secs(20), |h| h.query_by_label(&dir.id()).is_some());
    harness.get_by_label(&dir.id()).click();
    step_until(&mut harness, Duration::from_secs(20), |h| h.state().stores.contains_key(dir.root()));
    harness.get_by_label("Checkpoints").click();
    step_until(&mut harness, Duration::from_secs(20), |h| h.query_by_label("step-00000006").is_some());
    // Tick both checkpoints, then send them to Compare: it samples the way the run's evaluations did.
    harness.get_by_label("step-00000003").click();
    settle(&mut harness);
    harness.get_by_label("step-00000006").click();
    settle(&mut harness);
    harness.get_by_label("Compare selected (2)").click();
    settle(&mut harness);
    assert_eq!(harness.state().persisted.panel, Panel::Compare);
    let settings = &harness.state().panels.compare.settings;
    assert_eq!((settings.steps, settings.guidance, settings.guidance_interval, settings.seed), (3, 2.5, [0.3, 0.7], 7));
    assert_eq!(settings.checkpoints, checkpoints);

    harness.get_by_label("Generate").click();
    step_until(&mut harness, Duration::from_secs(60), |h| {
        h.state().panels.compare.result.is_some() || h.state().panels.compare.error.is_some()
    });
    let compare = &harness.state().panels.compare;
    let result = compare.result.as_ref().unwrap_or_else(|| panic!("{:?}", compare.error));
    assert_eq!(result.description.columns, ["step-00000003", "step-00000006"]);
    // The shown grid carries each row's requests at the left (titles are text above it); clicking a cell finds it.
    assert!(harness.query_by_label("step 6").is_some(), "column titles are shown, short");
    let [left, top] = result.geometry.origin_px;
    assert!(left > 0 && top == 0, "{:?}", result.geometry);
    let [x, y] = result.geometry.cell_origin(1, 0);
    assert_eq!(result.geometry.cell_at(x as f32 + 1.0, y as f32 + 1.0), Some((1, 0)));
    assert_eq!(result.geometry.cell_at(1.0, y as f32 + 1.0), None, "a row label is no cell");

    let out = runs.path().join("compare.png");
    dialog.push(&out);
    harness.get_by_label("Save PNG…").click();
    step_until(&mut harness, Duration::from_secs(20), |_| out.exists());
    // The file is the grid shown, with the column titles written above it.
    let saved = image::open(&out).unwrap().to_rgb8();
    let result = harness.state().panels.compare.result.as_ref().unwrap();
    let title_px = result.description.origin_px[1] as usize;
    assert!(title_px > 0);
    assert_eq!(
        [saved.width() as usize, saved.height() as usize],
        [result.image.size[0], result.image.size[1] + title_px]
    );

    // The real images the rows' layouts come from, as a first column to judge the samples against.
    harness.get_by_label("Real images").click();
    settle(&mut harness);
    harness.get_by_label("Generate").click();
    step_until(&mut harness, Duration::from_secs(60), |h| {
        h.state().panels.compare.result.as_ref().is_some_and(|r| r.description.columns.len() == 3)
            || h.state().panels.compare.error.is_some()
    });
    let compare = &harness.state().panels.compare;
    let result = compare.result.as_ref().unwrap_or_else(|| panic!("{:?}", compare.error));
    assert_eq!(result.description.columns, [wick::eval::compare::REAL_COLUMN_TITLE, "step-00000003", "step-00000006"]);
}

#[test]
fn the_last_opened_run_comes_back_only_where_it_is_listed() {
    let runs = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let config = common::tiny_two_stage(1, 1);
    let here = RunDir::create(runs.path(), "here", &config).unwrap();
    let elsewhere = RunDir::create(other.path(), "elsewhere", &config).unwrap();
    let open_with = |last: &Path, extra: Vec<std::path::PathBuf>| {
        let persisted =
            Persisted { last_opened_run: Some(last.to_path_buf()), extra_runs: extra, ..Persisted::default() };
        let runs_dir = runs.path().to_path_buf();
        let harness = Harness::builder().with_size(egui::vec2(1200.0, 800.0)).build_eframe(move |cc| {
            WickApp::with_state(cc.egui_ctx.clone(), runs_dir, Box::new(ScriptedDialog::new()), persisted)
        });
        harness.state().selected.clone()
    };
    assert_eq!(open_with(here.root(), vec![]), [here.root().to_path_buf()], "a run of this runs folder comes back");
    assert!(open_with(elsewhere.root(), vec![]).is_empty(), "a run of another runs folder, not listed here, does not");
    let extra = vec![elsewhere.root().to_path_buf()];
    assert_eq!(open_with(elsewhere.root(), extra), [elsewhere.root().to_path_buf()], "unless it was opened from there");
}

#[test]
fn a_run_another_process_trains_is_shown_locked_without_resume_until_that_process_is_gone() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = common::tiny_two_stage(4, 2);
    config.name = "held".into();
    let dir = common::create_run(runs.path(), &config);
    common::train_events(&dir, TrainOptions { stop_at_step: Some(3), ..Default::default() });
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Stopped);
    // Another process of this host holds the run's lock (as a `wick resume` in a terminal would).
    let mut other = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let holder = wick::run::LockHolder {
        pid: other.id(),
        host: wick::run::lock::host_name(),
        since: "2026-12-07T10:00:00Z".into(),
        process_start_ticks: None,
        purpose: "train".into(),
    };
    std::fs::write(dir.root().join(wick::run::lock::LOCK_FILE), serde_json::to_vec(&holder).unwrap()).unwrap();

    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(120), |h| h.state().runs.iter().any(|r| r.root == dir.root()));
    assert_eq!(harness.state().runs[0].locked_by.as_ref().map(|h| h.pid), Some(other.id()));
    harness.get_by_label_contains(&format!("Locked: trained by pid {}", other.id()));
    assert!(harness.query_by_label("Resume run").is_none(), "a locked run cannot be resumed here");

    // The holder is gone (killed): its lock is stale, and the run can be resumed.
    other.kill().unwrap();
    other.wait().unwrap();
    step_until(&mut harness, Duration::from_secs(120), |h| h.state().runs.iter().any(|r| r.resumable()));
    settle(&mut harness);
    harness.get_by_label("Resume run").click();
    settle(&mut harness);
    step_until(&mut harness, Duration::from_secs(120), |h| !h.state().is_training());
    assert_eq!(dir.read_state().unwrap().status, RunStatus::Finished);
    assert!(wick::run::lock_holder(dir.root()).unwrap().is_none(), "the lock is released at the end");
}

#[test]
fn a_run_trained_outside_the_window_is_followed_live() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = common::tiny_two_stage(4, 2);
    config.name = "elsewhere".into();
    let dir = common::create_run(runs.path(), &config);
    common::train_events(&dir, TrainOptions { stop_at_step: Some(3), ..Default::default() });
    let root = dir.root().to_path_buf();
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(120), |h| h.state().runs.iter().any(|r| r.root == root));
    harness.state_mut().commands.push(wick::app::AppCommand::SelectRun { root: root.clone(), add: false });
    let losses = |h: &Harness<'_, WickApp>| h.state().stores.get(&root).map_or(0, |s| s.series["loss"].len());
    step_until(&mut harness, Duration::from_secs(120), |h| losses(h) == 3);
    // Another trainer (not the window's) finishes the run; the window follows it without being asked.
    common::train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    step_until(&mut harness, Duration::from_secs(120), |h| losses(h) == 6);
    assert_eq!(harness.state().stores[&root].state.as_ref().map(|s| s.status), Some(RunStatus::Finished));
}

#[test]
fn damaged_log_lines_and_a_deleted_run_folder_are_said_above_the_plots() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = common::tiny_two_stage(4, 2);
    config.name = "damaged".into();
    let dir = common::create_run(runs.path(), &config);
    common::train_events(&dir, TrainOptions::default());
    let text = std::fs::read_to_string(dir.metrics_path()).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    std::fs::write(dir.metrics_path(), format!("{first}\n{{\"step\": 2, \"lo\n{rest}")).unwrap();
    let root = dir.root().to_path_buf();
    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(120), |h| h.state().runs.iter().any(|r| r.root == root));
    harness.state_mut().commands.push(wick::app::AppCommand::SelectRun { root: root.clone(), add: false });
    harness.state_mut().persisted.panel = Panel::Live;
    let losses = |h: &Harness<'_, WickApp>| h.state().stores.get(&root).map_or(0, |s| s.series["loss"].len());
    step_until(&mut harness, Duration::from_secs(120), |h| losses(h) == 6);
    harness.get_by_label_contains("metrics.jsonl: 1 unreadable line skipped (line 2); the other 6 records are shown");

    // The folder goes away while it is shown: said, the plots kept, nothing panics.
    std::fs::remove_dir_all(&root).unwrap();
    step_until(&mut harness, Duration::from_secs(120), |h| h.state().stores.get(&root).is_some_and(|s| s.vanished));
    settle(&mut harness);
    harness.get_by_label_contains("no longer exists (deleted or moved?)");
    assert_eq!(losses(&harness), 6);
    assert!(harness.state().runs.iter().all(|r| r.root != root), "no longer listed");
}
