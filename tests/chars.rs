//! The `chars` task: a character-level language model trained, evaluated, sampled and resumed by the same
//! engine as the shapes task.

mod common;

use common::{create_run, loss_bits, train_events};
use wick::config::RunConfig;
use wick::run::events::EvalRecord;
use wick::run::TrainEvent;
use wick::task::TextSamplesFile;
use wick::train::TrainOptions;

fn smoke() -> RunConfig {
    let mut config = RunConfig::preset("chars-smoke").unwrap();
    config.device = "cpu".to_string();
    config
}

#[test]
fn chars_smoke_trains_evaluates_and_saves_text_samples() {
    let runs = tempfile::tempdir().unwrap();
    let dir = create_run(runs.path(), &smoke());
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { step: 20, .. })), "{:?}", events.last());
    let evals: Vec<EvalRecord> = wick::run::atomic::read_jsonl(&dir.evals_path()).unwrap();
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![5, 10, 15, 20]);
    for e in &evals {
        let exact = e.metric("exact_match").expect("exact_match recorded");
        assert!((0.0..=1.0).contains(&exact), "{e:?}");
        let val = e.metric("val_loss").unwrap();
        let bpc = e.metric("bpc").unwrap();
        assert!(val > 0.0 && (bpc - val / std::f64::consts::LN_2).abs() < 1e-12, "{e:?}");
        assert_eq!(e.samples, 20, "20 held-out prompts judged");
        assert!(e.fid.is_none(), "no shapes metric in a chars run: {e:?}");
    }
    // The held-out loss falls from a 13-character uniform guess (ln 13 ≈ 2.56 nats).
    assert!(evals[0].metric("val_loss").unwrap() < 2.6);
    assert!(evals[3].metric("val_loss").unwrap() < evals[0].metric("val_loss").unwrap(), "{evals:?}");
    // Every checkpoint holds text samples of the same prompts; the best is named by exact-match.
    let checkpoints = dir.checkpoints().unwrap();
    assert_eq!(checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![5, 10, 15, 20]);
    let mut prompts = None;
    for c in &checkpoints {
        let file = TextSamplesFile::read(&c.dir.join("samples.json")).unwrap().expect("text samples");
        assert_eq!(file.samples.len(), 4);
        let these: Vec<String> = file.samples.iter().map(|s| s.prompt.clone()).collect();
        assert!(these.iter().all(|p| p.ends_with('=') && p.contains('+')), "{these:?}");
        assert!(file.samples.iter().all(|s| s.expected.is_some()));
        assert!(!c.dir.join("samples.png").exists());
        assert_eq!(prompts.get_or_insert(these.clone()), &these);
    }
    for c in &checkpoints {
        assert!(wick::run::verify_checkpoint(&c.dir).is_empty(), "{}", c.name);
    }
    let state = dir.read_state().unwrap();
    assert_eq!(state.best.as_ref().map(|b| b.metric.as_str()), Some("exact_match"));
    // chars.json pins the text: the built-in sums and their 13 characters.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.root().join("chars.json")).unwrap()).unwrap();
    assert_eq!(record["source"], "sums");
    assert_eq!(record["vocab"], "\n+0123456789=");
}

#[test]
fn a_chars_run_resumes_bit_exactly_mid_stage_and_at_the_stage_boundary() {
    let runs = tempfile::tempdir().unwrap();
    let mut config = smoke();
    config.name = "whole".to_string();
    let whole = create_run(runs.path(), &config);
    train_events(&whole, TrainOptions::default());
    let reference = loss_bits(&whole);
    assert_eq!(reference.len(), 20);
    for stops in [vec![7u64, 13], vec![10]] {
        config.name = format!("stopped-{}", stops.len());
        let dir = create_run(runs.path(), &config);
        let mut resume = false;
        for stop in &stops {
            train_events(&dir, TrainOptions { resume, stop_at_step: Some(*stop), ..Default::default() });
            resume = true;
        }
        let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
        assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{events:?}");
        let mut logged = loss_bits(&dir);
        logged.dedup();
        assert_eq!(logged, reference, "stops at {stops:?}");
        let a: Vec<EvalRecord> = wick::run::atomic::read_jsonl(&whole.evals_path()).unwrap();
        let b: Vec<EvalRecord> = wick::run::atomic::read_jsonl(&dir.evals_path()).unwrap();
        let key = |e: &EvalRecord| (e.step, e.metric("exact_match"), e.metric("val_loss").map(f64::to_bits));
        assert_eq!(a.iter().map(key).collect::<Vec<_>>(), b.iter().map(key).collect::<Vec<_>>());
    }
}

#[test]
fn a_bad_text_file_is_refused_before_the_first_step_naming_it() {
    let runs = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    // A missing file: validation names the field and the file.
    let mut config = smoke();
    config.task.settings.insert("text".into(), toml::Value::String("/no/such/corpus.txt".into()));
    let issues = config.validate().unwrap_err();
    assert!(issues.iter().any(|i| i.path == "task.text" && i.message.contains("corpus.txt")), "{issues:?}");
    // Empty, binary and non-UTF-8 files: the run fails before its first step, naming the file.
    for (name, bytes) in
        [("empty.txt", &b""[..]), ("binary.txt", b"PK\x03\x04\0\0\x14\0"), ("latin1.txt", b"na\xefve caf\xe9")]
    {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        config.task.settings.insert("text".into(), toml::Value::String(path.display().to_string()));
        config.name = name.replace('.', "-");
        let dir = create_run(runs.path(), &config);
        let events = train_events(&dir, TrainOptions::default());
        let Some(TrainEvent::Failed { step: 0, message }) = events.last() else { panic!("{events:?}") };
        assert!(message.contains(name), "{message}");
        assert!(dir.read_metrics().unwrap().is_empty(), "no step was trained");
        assert!(dir.checkpoints().unwrap().is_empty());
    }
}

#[test]
fn a_text_file_of_the_users_trains_with_a_split_stored_in_the_run() {
    let runs = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("capitals.txt");
    let lines: String = (0..400).map(|i| format!("country {i} has capital city{}\n", i * 7 % 13)).collect();
    std::fs::write(&path, &lines).unwrap();
    let mut config = smoke();
    config.task.settings.insert("text".into(), toml::Value::String(path.display().to_string()));
    config.task.settings.insert("separator".into(), toml::Value::String("capital ".into()));
    for stage in &mut config.stages {
        stage.task.clear();
    }
    let dir = create_run(runs.path(), &config);
    let events = train_events(&dir, TrainOptions::default());
    assert!(matches!(events.last(), Some(TrainEvent::Finished { .. })), "{:?}", events.last());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.root().join("chars.json")).unwrap()).unwrap();
    let (train, heldout) = (record["train_chars"].as_u64().unwrap(), record["heldout_chars"].as_u64().unwrap());
    assert_eq!(train + heldout, lines.chars().count() as u64);
    assert!(heldout > 0 && train > heldout);
    let evals: Vec<EvalRecord> = wick::run::atomic::read_jsonl(&dir.evals_path()).unwrap();
    assert!(evals.iter().all(|e| e.metric("exact_match").is_some() && e.metric("bpc").is_some()));
    let samples = TextSamplesFile::read(&dir.checkpoints().unwrap()[0].dir.join("samples.json")).unwrap().unwrap();
    assert!(samples.samples.iter().all(|s| s.prompt.ends_with("capital ")), "{samples:?}");
    // The file changes: a resume refuses it, naming chars.json and the file.
    std::fs::write(&path, "something else entirely, and long enough to train on\n".repeat(20)).unwrap();
    let events = train_events(&dir, TrainOptions { resume: true, ..Default::default() });
    let Some(TrainEvent::Failed { message, .. }) = events.last() else { panic!("{events:?}") };
    assert!(message.contains("chars.json") && message.contains("capitals.txt"), "{message}");
}
