//! The `wick` command line as a user runs it: config errors, verify, and resume after `kill -9`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tiny_two_stage;
use wick::run::{RunDir, TrainEvent};

fn wick() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wick"));
    command.env("WICK_LOG", "warn");
    command
}

fn run(args: &[&str]) -> Output {
    wick().args(args).output().expect("wick runs")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn the_run(runs: &Path) -> RunDir {
    let dirs: Vec<PathBuf> = runs.read_dir().unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    RunDir::open(&dirs[0]).unwrap()
}

#[test]
fn config_errors_name_their_field_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[[stages]]\nname = \"a\"\nlrr = 0.1\n", "stages[0]", "lrr"),
        ("[[stages]]\nname = \"a\"\nsteps = \"ten\"\n", "stages[0].steps", "ten"),
        ("[model]\npreset = \"huge\"\n[[stages]]\nname = \"a\"\n", "model.preset", "huge"),
        ("[[stages]]\nname = \"a\"\nsteps = 0\n", "stages[0].steps", "would train no steps"),
        ("[[stages]]\nname = \"a\"\nlr = -1.0\n", "stages[0].lr", "lr"),
    ];
    for (text, path, word) in cases {
        let config = write_config(tmp.path(), text);
        let out = run(&["train", config.to_str().unwrap(), "--runs-dir", tmp.path().join("runs").to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "config {text:?}: {stderr}");
        assert!(stderr.contains(path) && stderr.contains(word), "config {text:?} gave: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!tmp.path().join("runs").exists() || tmp.path().join("runs").read_dir().unwrap().next().is_none());
}

#[test]
fn verify_passes_then_names_the_corrupted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny_two_stage(3, 3).to_toml_string().unwrap());
    let runs = tmp.path().join("runs");
    let out = run(&["train", config.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = the_run(&runs);
    let out = run(&["verify", dir.root().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let target = dir.checkpoints().unwrap()[1].dir.join("model.safetensors");
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&target, bytes).unwrap();
    let out = run(&["verify", dir.root().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains(target.to_str().unwrap()), "{stdout}");
}

#[test]
fn eval_scores_a_checkpoint_the_same_way_twice_and_names_a_missing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny_two_stage(3, 3).to_toml_string().unwrap());
    let runs = tmp.path().join("runs");
    let out = run(&["train", config.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = the_run(&runs).checkpoints().unwrap().last().unwrap().dir.clone();
    let args =
        ["eval", checkpoint.to_str().unwrap(), "--samples", "12", "--steps", "3", "--guidance", "3", "--guide-layout"];
    let eval = |extra: &[&str]| {
        let out = wick().args(args).args(extra).args(["--runs-dir", runs.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = eval(&[]);
    let row = first.lines().nth(1).expect("a row per checkpoint");
    let numbers: Vec<f64> = row.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(numbers.len(), 5, "fid top1 top2 top3 iou: {row}");
    assert!(numbers[0].is_finite() && numbers[1..].iter().all(|v| (0.0..=1.0).contains(v)), "{row}");
    assert_eq!(eval(&[]), first, "the same inputs score the same");
    assert_ne!(eval(&["--seed", "1"]), first, "another seed, other inputs");

    let missing = tmp.path().join("no-such-checkpoint");
    let out = run(&["eval", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-checkpoint") && stderr.contains("model.safetensors"), "{stderr}");
}

#[test]
fn sample_with_device_cpu_redraws_a_cpu_runs_own_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(3, 3);
    let config_file = write_config(tmp.path(), &config.to_toml_string().unwrap());
    let runs = tmp.path().join("runs");
    let out = run(&["train", config_file.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = the_run(&runs).checkpoints().unwrap().last().unwrap().dir.clone();
    let grid = tmp.path().join("grid.png");
    let sampler = &config.eval.sampler;
    let (seed, rows, steps, guidance) = (
        config.eval.seed.to_string(),
        config.eval.grid_rows.to_string(),
        sampler.steps.to_string(),
        sampler.guidance.to_string(),
    );
    let sample = |device: &str| {
        wick()
            .args(["sample", checkpoint.to_str().unwrap(), "--seed", &seed, "--count", &rows, "--steps", &steps])
            .args(["--guidance", &guidance, "--out", grid.to_str().unwrap(), "--device", device])
            .output()
            .unwrap()
    };
    let out = sample("cpu");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = std::fs::read(checkpoint.join("samples.png")).unwrap();
    assert!(std::fs::read(&grid).unwrap() == saved, "`wick sample --device cpu` differs from the run's samples.png");

    let out = sample("gpu");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--device gpu") && stderr.contains("cuda:N"), "{stderr}");
    if !cfg!(feature = "cuda") {
        let out = sample("cuda:0");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--features cuda"), "{stderr}");
    }
}

/// Two writers: while `wick train` trains a run, `wick resume` of it is refused naming the holder (pid and
/// host) and writes nothing; once the holder is killed its lock is stale and is taken over.
#[test]
fn a_second_wick_on_a_training_run_is_refused_naming_the_holder_until_that_one_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_two_stage(100_000, 1);
    let config_path = write_config(tmp.path(), &config.to_toml_string().unwrap());
    let runs = tmp.path().join("runs");
    let mut child = wick()
        .args(["train", config_path.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it trains (a step logged); the deadline only catches a hang.
    let waiting = Instant::now();
    while metrics_lines(&runs) == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(600), "no step logged in 10 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the trainer ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    let dir = the_run(&runs);
    let holder = wick::run::lock_holder(dir.root()).unwrap().expect("a training run is locked");
    assert_eq!(holder.pid, child.id());
    let events_before = dir.read_events().unwrap().len();
    let out = run(&["resume", dir.root().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second writer must be refused");
    assert!(stderr.contains(&format!("pid {} on host {}", child.id(), holder.host)), "{stderr}");
    child.kill().unwrap(); // SIGKILL: the lock stays behind
    child.wait().unwrap();
    let events = dir.read_events().unwrap();
    let after = &events[events_before.min(events.len())..];
    assert!(
        !after.iter().any(|e| matches!(e.event, TrainEvent::Started { .. } | TrainEvent::Failed { .. })),
        "the refused resume wrote no start and no failure: {after:?}"
    );
    assert_eq!(wick::run::lock_holder(dir.root()).unwrap().map(|h| h.pid), Some(holder.pid), "left by the kill");
    let lock = wick::run::RunLock::acquire(dir.root(), "train").expect("a killed holder's lock is taken over");
    assert_eq!(lock.holder().pid, std::process::id());
    drop(lock);
    assert!(wick::run::lock_holder(dir.root()).unwrap().is_none());
    let out = run(&["verify", dir.root().to_str().unwrap()]);
    assert!(out.status.success(), "nothing saved was damaged: {}", String::from_utf8_lossy(&out.stdout));
}

/// Kills `wick train` with SIGKILL at several instants, resumes each time, and checks every logged loss
/// against an uninterrupted run, bit for bit.
#[test]
fn kill_9_at_any_instant_then_resume_logs_the_same_losses() {
    let mut config = tiny_two_stage(16, 12);
    config.stages[0].save_every = 2;
    config.stages[1].save_every = 2;
    kill_resume_matches_uninterrupted(&config.to_toml_string().unwrap(), 28);
}

/// The same for the chars task: killed mid-stage, `wick resume` continues with identical losses.
#[test]
fn a_chars_run_killed_mid_stage_resumes_with_the_same_losses() {
    let mut config = wick::config::RunConfig::preset("chars-smoke").unwrap();
    config.device = "cpu".to_string();
    for stage in &mut config.stages {
        stage.steps = 14;
        stage.save_every = 2;
    }
    kill_resume_matches_uninterrupted(&config.to_toml_string().unwrap(), 28);
}

/// Trains `config_text` once uninterrupted, then again killing it (SIGKILL) after varied delays counted from
/// a step the current process itself logged — not during start-up — and resuming each time; every logged
/// loss must equal the uninterrupted run's, bit for bit.
fn kill_resume_matches_uninterrupted(config_text: &str, total_steps: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let config_path = write_config(tmp.path(), config_text);

    let reference_runs = tmp.path().join("reference");
    let out = run(&["train", config_path.to_str().unwrap(), "--runs-dir", reference_runs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: std::collections::HashMap<u64, Option<u64>> =
        common::loss_bits(&the_run(&reference_runs)).into_iter().collect();
    assert_eq!(reference.len(), total_steps);

    let runs = tmp.path().join("killed");
    let mut child = wick()
        .args(["train", config_path.to_str().unwrap(), "--runs-dir", runs.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let delays_ms = [0u64, 37, 5, 90, 13, 61];
    let mut kills = 0;
    let mut lines_before = 0;
    for delay in delays_ms {
        // Wait until this process has logged a step of its own (the file grew past what was there); the
        // deadline only catches a hang.
        let waiting = Instant::now();
        while metrics_lines(&runs) <= lines_before {
            assert!(waiting.elapsed() < Duration::from_secs(600), "no new step logged in 10 minutes");
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break; // finished before we could kill it
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        lines_before = metrics_lines(&runs);
        let dir = the_run(&runs);
        child = wick()
            .args(["resume", dir.root().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "final resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(kills >= 2, "the run finished before it could be killed twice");

    let dir = the_run(&runs);
    let logged = common::loss_bits(&dir);
    assert!(logged.len() >= total_steps);
    for (step, bits) in &logged {
        assert_eq!(reference.get(step), Some(bits), "step {step} logged a different loss after a kill");
    }
    let steps: std::collections::BTreeSet<u64> = logged.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps.len(), total_steps, "every step is logged");
    assert_eq!(dir.read_state().unwrap().status, wick::run::RunStatus::Finished);
    let out = run(&["verify", dir.root().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Complete lines in the metrics.jsonl of the only run under `runs` (0 before it exists).
fn metrics_lines(runs: &Path) -> usize {
    runs.read_dir()
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .and_then(|e| std::fs::read(e.path().join("metrics.jsonl")).ok())
        .map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count())
}
