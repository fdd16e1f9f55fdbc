//! Runs other tools wrote, in the window (driven headless by egui_kittest): a TensorBoard run overlaid with a
//! Wick run in Live and followed as it grows; a Hugging Face Trainer run's checkpoints in Checkpoints.

mod common;

use std::path::Path;
use std::time::Duration;

use common::external::write_hf_checkpoint;
use common::{create_run, settle, step_until, tiny_two_stage, train_events};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use wick::app::dialog::ScriptedDialog;
use wick::app::state::{Panel, Persisted};
use wick::app::store::names;
use wick::app::{AppCommand, WickApp};
use wick::interop::tensorboard::EventWriter;
use wick::interop::RunKind;
use wick::train::TrainOptions;

fn harness(runs_dir: &Path, dialog: &ScriptedDialog) -> Harness<'static, WickApp> {
    let runs_dir = runs_dir.to_path_buf();
    let dialog = dialog.clone();
    Harness::builder().with_size(egui::vec2(1700.0, 1100.0)).build_eframe(move |cc| {
        WickApp::with_state(cc.egui_ctx.clone(), runs_dir, Box::new(dialog), Persisted::default())
    })
}

fn loss_points(harness: &Harness<'_, WickApp>, root: &Path) -> usize {
    harness.state().stores.get(root).and_then(|s| s.series.get(names::LOSS)).map_or(0, |s| s.len())
}

#[test]
fn a_tensorboard_run_overlays_a_wick_run_in_live_and_its_new_points_appear() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &tiny_two_stage(3, 3));
    train_events(&dir, TrainOptions::default());
    // A SummaryWriter run in a folder of the runs folder, still being written.
    let tb = runs.path().join("pytorch/Dec07_10-00-00_host");
    let mut writer = EventWriter::create(&tb, "0").unwrap();
    for step in 0..4 {
        let values =
            [("train/loss".to_string(), 2.0 / (step + 1) as f64), ("eval/accuracy".to_string(), 0.1 * step as f64)];
        writer.write_scalars(step, 1.7e9 + step as f64, &values).unwrap();
    }
    writer.write_scalars(4, 1.7e9 + 4.0, &[("train/loss".to_string(), f64::NAN)]).unwrap();

    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(3), |h| h.state().runs.len() == 2);
    let kinds: Vec<RunKind> = harness.state().runs.iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&RunKind::Wick) && kinds.contains(&RunKind::TensorBoard), "{kinds:?}");
    harness.get_by_label("tensorboard");

    // View the Wick run, then overlay the TensorBoard run (Ctrl-click).
    harness.get_by_label(&dir.id()).click();
    settle(&mut harness);
    harness.state_mut().commands.push(AppCommand::SelectRun { root: tb.clone(), add: true });
    step_until(&mut harness, Duration::from_secs(3), |h| loss_points(h, dir.root()) == 6 && loss_points(h, &tb) == 5);
    assert_eq!(harness.state().persisted.panel, Panel::Live);
    assert_eq!(harness.state().selected, vec![dir.root().to_path_buf(), tb.clone()]);
    // Both runs on the loss plot, the external one's NaN kept as a non-finite mark; its other tags grouped.
    let store = &harness.state().stores[&tb];
    assert!(store.series[names::LOSS].values[4].is_nan());
    assert!(store.markers.iter().any(|m| m.message.contains("is NaN at step 4")), "{:?}", store.markers);
    assert!(store.series.contains_key("eval/accuracy"));
    harness.get_by_label("eval");
    // The loss plot's legend names each run.
    let wick_id: String = dir.id().chars().take(16).collect();
    assert!(harness.query_all_by_label_contains(&wick_id.to_string()).count() > 0);
    assert!(harness.query_all_by_label_contains("Dec07_10-00-00_host: loss").count() > 0);

    // New points reach the window while the file grows (read from where the reader stopped).
    for step in 5..8 {
        writer.write_scalars(step, 1.7e9 + step as f64, &[("train/loss".to_string(), 0.2)]).unwrap();
    }
    step_until(&mut harness, Duration::from_secs(2), |h| loss_points(h, &tb) == 8);
    assert_eq!(loss_points(&harness, dir.root()), 6, "the Wick run is unchanged");

    // Compare: the images the external run logged, next to the Wick run's checkpoint grids, a step each.
    let mut png = Vec::new();
    image::RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    writer.write_image(2, 1.7e9 + 2.0, "samples", &png).unwrap();
    writer.write_image(6, 1.7e9 + 6.0, "samples", &png).unwrap();
    harness.get_by_label("Compare").click();
    settle(&mut harness);
    let ctx = harness.ctx.clone();
    harness.state_mut().panels.logged.add_column(&tb, &ctx);
    harness.state_mut().panels.logged.add_column(dir.root(), &ctx);
    step_until(&mut harness, Duration::from_secs(3), |h| h.state().panels.logged.images.len() == 2);
    settle(&mut harness);
    let steps = |h: &Harness<'_, WickApp>, root: &Path| -> Vec<i64> {
        h.state().panels.logged.images[root]["samples"].iter().map(|i| i.step).collect()
    };
    assert_eq!(steps(&harness, &tb), [2, 6]);
    assert_eq!(steps(&harness, dir.root()), [3, 6], "the Wick run's checkpoint grids, from its own event files");
    let shown: Vec<i64> = {
        let logged = &harness.state().panels.logged;
        logged.columns.iter().filter_map(|c| logged.image_of(c)).map(|i| i.step).collect()
    };
    assert_eq!(shown, [6, 6], "both columns start at their newest image");
    assert_eq!(harness.query_all_by_label("Remove").count(), 2, "one column each");
}

#[test]
fn a_trainer_runs_checkpoints_are_tabled_with_their_metrics_best_mark_and_verified() {
    let runs = tempfile::tempdir().unwrap();
    let out = runs.path().join("gpt2-finetune");
    let history = [
        r#"{"epoch": 0.5, "grad_norm": 1.25, "learning_rate": 4e-05, "loss": 2.5, "step": 10}"#,
        r#"{"epoch": 0.5, "eval_accuracy": 0.625, "eval_loss": 1.75, "eval_runtime": 0.5, "step": 10}"#,
        r#"{"epoch": 1.0, "grad_norm": NaN, "learning_rate": 2e-05, "loss": 1.5, "step": 20}"#,
        r#"{"epoch": 1.0, "eval_accuracy": 0.75, "eval_loss": 1.5, "eval_runtime": 0.5, "step": 20}"#,
    ];
    for (step, count) in [(10u64, 2usize), (20, 4)] {
        let checkpoint = out.join(format!("checkpoint-{step}"));
        write_hf_checkpoint(&checkpoint, step);
        let state = format!(
            "{{\n  \"best_metric\": 1.5,\n  \"best_model_checkpoint\": \"{}\",\n  \"global_step\": {step},\n  \
             \"log_history\": [\n    {}\n  ],\n  \"max_steps\": 20\n}}",
            out.join("checkpoint-20").display(),
            history[..count].join(",\n    ")
        );
        std::fs::write(checkpoint.join("trainer_state.json"), state).unwrap();
    }
    // checkpoint-10's weights were cut short.
    let weights = out.join("checkpoint-10/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 8]).unwrap();

    let mut harness = harness(runs.path(), &ScriptedDialog::new());
    step_until(&mut harness, Duration::from_secs(3), |h| h.state().runs.len() == 1);
    assert_eq!(harness.state().runs[0].kind, RunKind::HfTrainer);
    harness.get_by_label("hf-trainer");
    harness.get_by_label("gpt2-finetune").click();
    settle(&mut harness);
    harness.get_by_label("Checkpoints").click();
    step_until(&mut harness, Duration::from_secs(3), |h| h.state().panels.checkpoints.report.is_some());
    harness.get_by_label("checkpoint-10");
    harness.get_by_label("checkpoint-20");
    harness.get_by_label("eval_loss");
    harness.get_by_label("best");
    harness.get_by_label_contains("Use checkpoint-20");
    assert!(harness.query_by_label("Fork from here").is_none(), "a Trainer checkpoint cannot be forked");

    harness.get_by_label("Verify").click();
    step_until(&mut harness, Duration::from_secs(3), |h| {
        h.query_by_label("verified").is_some() && h.query_by_label_contains("truncated").is_some()
    });
    harness.get_by_label_contains("checkpoint-10/model.safetensors: the file is truncated");
}
