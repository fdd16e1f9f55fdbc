//! Integration tests of the config module through the public API: validation rules and their paths,
//! parse errors, TOML round trips, the learning-rate schedule, the stage ledger, trainable matching and
//! the shipped presets.

use std::path::PathBuf;

use wick::config::{
    ConfigError, ConfigIssue, EarlyStoppingConfig, MetricMode, ObjectLossMode, Precision, RunConfig, ScheduleConfig,
    ScheduleKind, ShapesVariant, StageConfig, Trainable, TrainableGroup, PRESETS,
};

// ── helpers ─────────────────────────────────────────────────────────────────────────────────────────────

/// A valid three-stage config (base, adapter, finetune) that tests break one field at a time.
fn valid() -> RunConfig {
    let stage = |name: &str, steps: u64, trainable: TrainableGroup| StageConfig {
        name: name.to_string(),
        steps,
        trainable: Trainable::Group(trainable),
        ..StageConfig::default()
    };
    let config = RunConfig {
        name: "test-run".to_string(),
        stages: vec![
            stage("base", 30, TrainableGroup::Base),
            stage("adapter", 20, TrainableGroup::Adapter),
            stage("finetune", 10, TrainableGroup::All),
        ],
        ..RunConfig::default()
    };
    assert_eq!(config.validate(), Ok(()), "the test fixture itself must be valid");
    config
}

fn issues(config: &RunConfig) -> Vec<ConfigIssue> {
    config.validate().err().unwrap_or_default()
}

/// Asserts the config has exactly one issue, at `path`, and returns it.
#[track_caller]
fn only_issue(config: &RunConfig, path: &str) -> ConfigIssue {
    let found = issues(config);
    assert_eq!(found.len(), 1, "expected exactly one issue at {path}, got {found:#?}");
    assert_eq!(found[0].path, path, "issue: {}", found[0]);
    assert!(found[0].message.contains(" — "), "message should say what to do: {}", found[0]);
    found[0].clone()
}

#[track_caller]
fn assert_valid(config: &RunConfig) {
    assert_eq!(config.validate(), Ok(()));
}

/// Parses TOML that must fail; returns (path, message).
#[track_caller]
fn parse_error(text: &str) -> (String, String) {
    match RunConfig::from_toml_str(text, "test.toml") {
        Err(ConfigError::Parse { origin, path, message }) => {
            assert_eq!(origin, "test.toml");
            (path, message)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn presets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join("presets")
}

// ── validation: one rule at a time ──────────────────────────────────────────────────────────────────────

#[test]
fn fixture_and_defaults_with_one_stage_are_valid() {
    assert_valid(&valid());
    let mut config = RunConfig::default();
    config.stages.push(StageConfig::default());
    assert_valid(&config);
}

#[test]
fn no_stages() {
    let mut config = valid();
    config.stages.clear();
    let issue = only_issue(&config, "stages");
    assert!(issue.message.contains("[[stages]]"), "{issue}");
}

#[test]
fn empty_stage_name() {
    let mut config = valid();
    config.stages[1].name = "  ".to_string();
    only_issue(&config, "stages[1].name");
}

#[test]
fn duplicate_stage_name_is_reported_on_the_later_stage() {
    let mut config = valid();
    config.stages[2].name = "base".to_string();
    let issue = only_issue(&config, "stages[2].name");
    assert!(issue.message.contains("stages[0]"), "{issue}");
    assert!(issue.message.contains("unique"), "{issue}");
}

#[test]
fn zero_steps() {
    let mut config = valid();
    config.stages[1].steps = 0;
    let issue = only_issue(&config, "stages[1].steps");
    assert_eq!(issue.to_string(), "stages[1].steps: must be > 0 — this stage would train no steps");
}

#[test]
fn zero_batch_size_and_grad_accum() {
    let mut config = valid();
    config.stages[0].batch_size = 0;
    only_issue(&config, "stages[0].batch_size");
    let mut config = valid();
    config.stages[2].grad_accum = 0;
    only_issue(&config, "stages[2].grad_accum");
}

#[test]
fn learning_rate_must_be_positive_finite_and_sane() {
    for lr in [0.0, -1e-3, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 2.0, 1e3] {
        let mut config = valid();
        config.stages[1].lr = lr;
        only_issue(&config, "stages[1].lr");
    }
    for lr in [1e-6, 3e-3, 1.0] {
        let mut config = valid();
        config.stages[1].lr = lr;
        assert_valid(&config);
    }
    let mut config = valid();
    config.stages[0].lr = 5.0;
    assert!(only_issue(&config, "stages[0].lr").message.contains("too high"));
}

#[test]
fn weight_decay_and_grad_clip() {
    for value in [-0.1, f64::NAN, f64::INFINITY] {
        let mut config = valid();
        config.stages[0].weight_decay = value;
        only_issue(&config, "stages[0].weight_decay");
        let mut config = valid();
        config.stages[0].grad_clip = value;
        only_issue(&config, "stages[0].grad_clip");
    }
    let mut config = valid();
    config.stages[0].weight_decay = 0.05;
    config.stages[0].grad_clip = 0.0;
    assert_valid(&config);
}

#[test]
fn ema_decay_in_zero_one_half_open() {
    for value in [1.0, 1.5, -0.1, f64::NAN] {
        let mut config = valid();
        config.stages[2].ema_decay = value;
        only_issue(&config, "stages[2].ema_decay");
    }
    for value in [0.0, 0.999, 0.9999] {
        let mut config = valid();
        config.stages[2].ema_decay = value;
        assert_valid(&config);
    }
}

#[test]
fn dropouts_are_probabilities() {
    for value in [-0.1, 1.01, f64::NAN] {
        let mut config = valid();
        config.stages[0].class_dropout = value;
        only_issue(&config, "stages[0].class_dropout");
        let mut config = valid();
        config.stages[1].layout_dropout = value;
        only_issue(&config, "stages[1].layout_dropout");
    }
    let mut config = valid();
    config.stages[0].class_dropout = 1.0;
    config.stages[0].layout_dropout = 1.0;
    // A layout dropout with an adapter stage is fine.
    config.stages[1].layout_dropout = 0.5;
    assert_valid(&config);
}

#[test]
fn object_loss_weight_is_finite_and_not_negative() {
    for value in [-1.0, f64::NAN, f64::INFINITY] {
        let mut config = valid();
        config.stages[1].object_loss_weight = value;
        only_issue(&config, "stages[1].object_loss_weight");
    }
    let mut config = valid();
    config.stages[1].object_loss_weight = 3.0;
    assert_valid(&config);
}

#[test]
fn schedule_floor_in_zero_one() {
    for value in [-0.5, 1.5, f64::NAN] {
        let mut config = valid();
        config.stages[0].schedule.floor = value;
        only_issue(&config, "stages[0].schedule.floor");
    }
    let mut config = valid();
    config.stages[0].schedule.floor = 1.0;
    assert_valid(&config);
}

#[test]
fn warmup_must_end_inside_the_stage() {
    let mut config = valid();
    config.stages[0].schedule.warmup_steps = 30; // == steps
    let issue = only_issue(&config, "stages[0].schedule.warmup_steps");
    assert!(issue.message.contains("never reach its peak rate"), "{issue}");
    config.stages[0].schedule.warmup_steps = 1000;
    only_issue(&config, "stages[0].schedule.warmup_steps");
    config.stages[0].schedule.warmup_steps = 29;
    assert_valid(&config);
}

#[test]
fn zero_step_stage_does_not_also_complain_about_warmup() {
    let mut config = valid();
    config.stages[0].steps = 0;
    config.stages[0].schedule.warmup_steps = 0;
    only_issue(&config, "stages[0].steps");
}

#[test]
fn log_every_zero() {
    let mut config = valid();
    config.stages[2].log_every = 0;
    only_issue(&config, "stages[2].log_every");
}

#[test]
fn cadences_longer_than_the_stage_are_fine() {
    let mut config = valid();
    for stage in &mut config.stages {
        stage.log_every = 1_000_000;
        stage.eval_every = 1_000_000;
        stage.save_every = 1_000_000;
        stage.sample_every = 1_000_000;
    }
    assert_valid(&config);
}

#[test]
fn early_stopping_rules() {
    let with = |es: EarlyStoppingConfig, eval_every: u64| {
        let mut config = valid();
        config.stages[1].early_stopping = Some(es);
        config.stages[1].eval_every = eval_every;
        config
    };
    // Fine: loss (needs no evaluation), fid with evaluations, top1 maximised.
    assert_valid(&with(EarlyStoppingConfig::default(), 0));
    assert_valid(&with(EarlyStoppingConfig { metric: "fid".into(), ..Default::default() }, 100));
    for metric in ["top1", "top2", "top3", "iou"] {
        let es = EarlyStoppingConfig { metric: metric.into(), mode: MetricMode::Max, ..Default::default() };
        assert_valid(&with(es, 50));
    }

    let issue = only_issue(
        &with(EarlyStoppingConfig { metric: "accuracy".into(), ..Default::default() }, 100),
        "stages[1].early_stopping.metric",
    );
    for metric in ["loss", "fid", "top1", "top2", "top3", "iou"] {
        assert!(issue.message.contains(metric), "{issue}");
    }
    only_issue(
        &with(EarlyStoppingConfig { patience: 0, ..Default::default() }, 100),
        "stages[1].early_stopping.patience",
    );
    for min_delta in [-1e-3, f64::NAN, f64::INFINITY] {
        only_issue(
            &with(EarlyStoppingConfig { min_delta, ..Default::default() }, 100),
            "stages[1].early_stopping.min_delta",
        );
    }
    // Maximising FID or minimising top-1 is a mistake.
    let issue = only_issue(
        &with(EarlyStoppingConfig { metric: "top1".into(), mode: MetricMode::Min, ..Default::default() }, 100),
        "stages[1].early_stopping.mode",
    );
    assert!(issue.message.contains("mode = \"max\""), "{issue}");
    only_issue(
        &with(EarlyStoppingConfig { metric: "fid".into(), mode: MetricMode::Max, ..Default::default() }, 100),
        "stages[1].early_stopping.mode",
    );
    // An evaluation metric needs evaluations.
    only_issue(&with(EarlyStoppingConfig { metric: "fid".into(), ..Default::default() }, 0), "stages[1].eval_every");
}

#[test]
fn trainable_globs() {
    let mut config = valid();
    config.stages[2].trainable = Trainable::Globs(vec![]);
    only_issue(&config, "stages[2].trainable");

    let mut config = valid();
    config.stages[2].trainable =
        Trainable::Globs(vec!["blocks.*.adapter_*".into(), "blocks.[0-".into(), "final.*".into()]);
    let issue = only_issue(&config, "stages[2].trainable[1]");
    assert!(issue.message.contains("not a valid glob"), "{issue}");

    let mut config = valid();
    config.stages[2].trainable = Trainable::Globs(vec!["x".into(), String::new()]);
    only_issue(&config, "stages[2].trainable[1]");

    let mut config = valid();
    config.stages[2].trainable = Trainable::Globs(vec!["blocks.*.adapter_*".into(), "t_embed.*".into()]);
    assert_valid(&config);
}

#[test]
fn adapter_stage_needs_an_adapter() {
    let mut config = valid();
    config.model.adapter = false;
    let issue = only_issue(&config, "stages[1].trainable");
    assert!(issue.message.contains("nothing useful would train"), "{issue}");
    config.stages[1].trainable = Trainable::Group(TrainableGroup::Layout);
    let issue = only_issue(&config, "stages[1].trainable");
    assert!(issue.message.contains("is \"layout\" but model.adapter = false"), "{issue}");
    // Without the adapter, base / all / globs stages are fine.
    config.stages.remove(1);
    assert_valid(&config);
}

#[test]
fn precision_is_f32_or_bf16_and_bf16_needs_cuda_and_the_shapes_task() {
    assert_eq!(valid().precision, Precision::F32, "f32 unless asked");
    let (path, message) = parse_error("precision = \"fp16\"\n");
    assert_eq!(path, "precision");
    assert!(message.contains("f32") && message.contains("bf16"), "{message}");
    let mut config = valid();
    config.precision = Precision::Bf16;
    assert_valid(&config); // device = "auto": checked again when the device is known
    config.device = "cuda:1".into();
    assert_valid(&config);
    config.device = "cpu".into();
    assert!(only_issue(&config, "precision").message.contains("CUDA"));
    let mut chars = RunConfig::from_toml_str(
        "precision = \"bf16\"\n[task]\nkind = \"chars\"\n[[stages]]\nname = \"s\"\n",
        "chars.toml",
    )
    .expect("parses");
    chars.device = "cuda:0".into();
    let found = issues(&chars);
    assert!(found.iter().any(|i| i.path == "precision" && i.message.contains("`chars`")), "{found:#?}");
}

#[test]
fn device_names() {
    for device in ["auto", "cpu", "cuda:0", "cuda:3"] {
        let mut config = valid();
        config.device = device.to_string();
        assert_valid(&config);
    }
    for device in ["gpu", "cuda", "cuda:", "cuda:x", "cuda:-1", "CPU", "", "cuda:0 "] {
        let mut config = valid();
        config.device = device.to_string();
        let issue = only_issue(&config, "device");
        assert!(issue.message.contains("\"cuda:N\""), "{issue}");
    }
}

#[test]
fn dataset_rules() {
    let check = |edit: &dyn Fn(&mut RunConfig), path: &str| {
        let mut config = valid();
        edit(&mut config);
        only_issue(&config, path)
    };
    check(&|c| c.dataset.min_objects = 0, "dataset.min_objects");
    check(&|c| c.dataset.max_objects = 0, "dataset.max_objects");
    check(
        &|c| {
            c.dataset.min_objects = 3;
            c.dataset.max_objects = 2;
        },
        "dataset.max_objects",
    );
    let issue = check(&|c| c.dataset.max_objects = 5, "dataset.max_objects");
    assert!(issue.message.contains("4 layout slots"), "{issue}");
    check(&|c| c.dataset.train_size = 0, "dataset.train_size");
    for fraction in [0.0, -0.5, 1.5, f64::NAN] {
        check(&|c| c.dataset.subset_fraction = fraction, "dataset.subset_fraction");
    }
    let issue = check(
        &|c| {
            c.dataset.train_size = 10;
            c.dataset.subset_fraction = 0.05;
        },
        "dataset.subset_fraction",
    );
    assert!(issue.message.contains("keeps no image"), "{issue}");

    let mut config = valid();
    config.dataset.min_objects = 4;
    config.dataset.max_objects = 4;
    config.dataset.subset_fraction = 0.1;
    assert_valid(&config);
}

#[test]
fn checkpoint_rules() {
    let mut config = valid();
    config.checkpoints.keep_last = 0;
    only_issue(&config, "checkpoints.keep_last");
    let mut config = valid();
    config.checkpoints.max_bad_steps = 0;
    only_issue(&config, "checkpoints.max_bad_steps");
}

#[test]
fn run_name_must_make_a_directory_name() {
    for name in ["", "   ", "a/b", "a\\b", "a:b", "what?", "tab\there", "..", ".", ".hidden", " padded"] {
        let mut config = valid();
        config.name = name.to_string();
        only_issue(&config, "name");
    }
    let mut config = valid();
    config.name = "x".repeat(101);
    only_issue(&config, "name");
    for name in ["demo", "demo-1", "lr_3e-3.v2", "Run 7", "été"] {
        let mut config = valid();
        config.name = name.to_string();
        assert_valid(&config);
    }
}

#[test]
fn warm_start_must_exist_and_be_a_directory() {
    let mut config = valid();
    let missing = PathBuf::from("/definitely/not/here/step-00000400");
    config.stages[1].warm_start = Some(missing.clone());
    let issue = only_issue(&config, "stages[1].warm_start");
    assert!(issue.message.contains(&missing.display().to_string()), "{issue}");
    assert!(issue.message.contains("does not exist"), "{issue}");

    let dir = tempfile::tempdir().expect("tempdir");
    config.stages[1].warm_start = Some(dir.path().to_path_buf());
    assert_valid(&config);

    let file = dir.path().join("model.safetensors");
    std::fs::write(&file, b"x").expect("write");
    config.stages[1].warm_start = Some(file);
    only_issue(&config, "stages[1].warm_start");
}

#[test]
fn every_problem_is_reported_at_once_in_field_order() {
    let mut config = valid();
    config.name = "a/b".to_string();
    config.device = "gpu".to_string();
    config.dataset.max_objects = 9;
    config.checkpoints.keep_last = 0;
    config.stages[0].lr = -1.0;
    config.stages[1].steps = 0;
    config.stages[1].batch_size = 0;
    config.stages[2].name = "base".to_string();
    config.stages[2].schedule.warmup_steps = 10;
    let paths: Vec<String> = issues(&config).into_iter().map(|i| i.path).collect();
    assert_eq!(
        paths,
        [
            "name",
            "device",
            "dataset.max_objects",
            "checkpoints.keep_last",
            "stages[0].lr",
            "stages[1].steps",
            "stages[1].batch_size",
            "stages[2].name",
            "stages[2].schedule.warmup_steps",
        ]
    );
}

#[test]
fn invalid_file_fails_to_load_with_every_issue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.toml");
    let mut config = valid();
    config.stages[0].steps = 0;
    config.stages[1].log_every = 0;
    std::fs::write(&path, config.to_toml_string().expect("toml")).expect("write");
    match RunConfig::load(&path) {
        Err(ConfigError::Invalid { issues, .. }) => {
            assert_eq!(issues.len(), 2);
            assert_eq!(issues[0].path, "stages[0].steps");
            assert_eq!(issues[1].path, "stages[1].log_every");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let text = RunConfig::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("2 problem(s)") && text.contains("would train no steps"), "{text}");

    std::fs::write(&path, valid().to_toml_string().expect("toml")).expect("write");
    assert_eq!(RunConfig::load(&path).expect("valid file loads"), valid());
    assert!(matches!(RunConfig::load(&dir.path().join("nope.toml")), Err(ConfigError::Read { .. })));
}

// ── parse errors ────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn typo_key_names_its_table_and_suggests_the_field() {
    let (path, message) = parse_error("[[stages]]\nname = \"a\"\nlrr = 0.1\n");
    assert_eq!(path, "stages[0]");
    assert!(message.starts_with("unknown field `lrr`, expected one of"), "{message}");
    assert!(message.contains("did you mean `lr`?"), "{message}");
    assert!(message.contains("line 3"), "{message}");

    let (path, message) =
        parse_error("[[stages]]\nname = \"a\"\n[[stages]]\nname = \"b\"\n[stages.schedule]\nwarmup = 5\n");
    assert_eq!(path, "stages[1].schedule");
    assert!(
        message.contains("unknown field `warmup`") && message.contains("did you mean `warmup_steps`?"),
        "{message}"
    );

    let (path, message) = parse_error("nmae = \"x\"\n");
    assert_eq!(path, "(top level)");
    assert!(message.contains("did you mean `name`?"), "{message}");
}

#[test]
fn wrong_type_names_the_field() {
    let (path, message) = parse_error("[[stages]]\nsteps = \"ten\"\n");
    assert_eq!(path, "stages[0].steps");
    assert!(message.contains("\"ten\"") && message.contains("whole number"), "{message}");

    let (path, _) = parse_error("[[stages]]\nname = \"a\"\n[[stages]]\nlr = \"fast\"\n");
    assert_eq!(path, "stages[1].lr");
    let (path, _) = parse_error("[[stages]]\nsteps = -5\n");
    assert_eq!(path, "stages[0].steps");
    let (path, _) = parse_error("[model]\nadapter = \"yes\"\n");
    assert_eq!(path, "model.adapter");
}

#[test]
fn unknown_preset_names_model_preset_and_lists_the_valid_ones() {
    let (path, message) = parse_error("[model]\npreset = \"huge\"\n");
    assert_eq!(path, "model.preset");
    for name in ["tiny", "small", "base"] {
        assert!(message.contains(&format!("`{name}`")), "{message}");
    }
}

#[test]
fn unknown_variants_point_at_the_field() {
    let (path, message) = parse_error("[[stages]]\n[stages.schedule]\nkind = \"cosin\"\n");
    assert_eq!(path, "stages[0].schedule.kind");
    assert!(message.contains("did you mean `cosine`?"), "{message}");
    let (path, _) = parse_error("[[stages]]\n[stages.early_stopping]\nmode = \"lowest\"\n");
    assert_eq!(path, "stages[0].early_stopping.mode");
    let (path, _) = parse_error("[dataset]\nvariant = \"fuzzy\"\n");
    assert_eq!(path, "dataset.variant");
}

#[test]
fn bad_trainable_gets_a_clear_message() {
    let (path, message) = parse_error("[[stages]]\ntrainable = \"adaptr\"\n");
    assert_eq!(path, "stages[0].trainable");
    assert!(
        message.starts_with(
            r#"expected "all", "adapter", "layout", "base" or a list of name globs like ["blocks.*.adapter_*"], found "adaptr""#
        ),
        "{message}"
    );
    assert!(!message.contains("did not match any variant"), "{message}");

    let (path, message) = parse_error("[[stages]]\ntrainable = 3\n");
    assert_eq!(path, "stages[0].trainable");
    assert!(message.contains(r#"expected "all", "adapter", "layout", "base""#), "{message}");

    let (path, _) = parse_error("[[stages]]\ntrainable = [\"blocks.*\", 3]\n");
    assert_eq!(path, "stages[0].trainable[1]");
}

#[test]
fn trainable_parses_every_form() {
    let parse = |value: &str| {
        RunConfig::from_toml_str(&format!("[[stages]]\ntrainable = {value}\n"), "t").expect("parses").stages[0]
            .trainable
            .clone()
    };
    assert_eq!(parse("\"all\""), Trainable::Group(TrainableGroup::All));
    assert_eq!(parse("\"adapter\""), Trainable::Group(TrainableGroup::Adapter));
    assert_eq!(parse("\"layout\""), Trainable::Group(TrainableGroup::Layout));
    assert_eq!(parse("\"base\""), Trainable::Group(TrainableGroup::Base));
    assert_eq!(parse("[\"a.*\", \"b\"]"), Trainable::Globs(vec!["a.*".into(), "b".into()]));
    assert_eq!(parse("[]"), Trainable::Globs(vec![]));
}

#[test]
fn syntax_error_gives_line_and_column() {
    let (path, message) = parse_error("name = \"ok\"\nseed = \n");
    assert_eq!(path, "(syntax)");
    assert!(message.starts_with("line 2, column 8: "), "{message}");
    let (path, message) = parse_error("[[stages]\nname = \"a\"\n");
    assert_eq!(path, "(syntax)");
    assert!(message.starts_with("line 1, "), "{message}");
}

#[test]
fn a_syntax_error_in_a_very_long_line_shows_the_part_around_it() {
    // Found by tests/fuzz.rs: the caret was padded with a format width, which panics past 65,535 columns.
    let text = format!("name = \"ok\"\n{} seed\n", "a".repeat(100_000));
    let (path, message) = parse_error(&text);
    assert_eq!(path, "(syntax)");
    assert!(message.starts_with("line 2, column "), "{message}");
    assert!(message.len() < 1000, "the whole line is shown: {} bytes", message.len());
    let lines: Vec<&str> = message.lines().collect();
    let excerpt = lines[1].split(" | ").nth(1).unwrap();
    let caret = lines[2].split(" | ").nth(1).unwrap();
    assert!(excerpt.starts_with('…'), "{excerpt}");
    assert_eq!(caret.trim_start(), "^");
    let column: usize = message["line 2, column ".len()..].split(':').next().unwrap().parse().unwrap();
    let source_line = text.lines().nth(1).unwrap();
    let caret_at = caret.chars().count() - 1;
    assert_eq!(excerpt.chars().nth(caret_at), source_line.chars().nth(column - 1), "caret under column {column}");
    assert_eq!(source_line.chars().nth(column - 1), Some('s'), "toml points at the word after the key");
}

#[test]
fn parse_error_display_has_origin_path_and_message() {
    let err = RunConfig::from_toml_str("[[stages]]\nsteps = \"ten\"\n", "demo.toml").expect_err("fails");
    let text = err.to_string();
    assert!(text.starts_with("demo.toml: stages[0].steps: invalid type"), "{text}");
}

#[test]
fn empty_file_parses_to_defaults_and_then_asks_for_stages() {
    let config = RunConfig::from_toml_str("", "empty.toml").expect("parses");
    assert_eq!(config, RunConfig::default());
    only_issue(&config, "stages");
}

#[test]
fn integers_are_accepted_for_float_fields() {
    let config = RunConfig::from_toml_str("[[stages]]\nlr = 1\n", "t").expect("parses");
    assert_eq!(config.stages[0].lr, 1.0);
}

// ── round trip ──────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn toml_round_trip_is_exact() {
    let mut config = valid();
    config.seed = 12345678901234;
    config.dataset.variant = ShapesVariant::Noisy;
    config.dataset.subset_fraction = 0.3;
    config.stages[0].lr = 3e-4;
    config.stages[0].schedule = ScheduleConfig { kind: ScheduleKind::Linear, warmup_steps: 7, floor: 0.05 };
    config.stages[0].early_stopping =
        Some(EarlyStoppingConfig { metric: "top1".into(), mode: MetricMode::Max, patience: 3, min_delta: 1e-4 });
    config.stages[1].warm_start = Some(PathBuf::from("runs/old/checkpoints/step-00000400"));
    config.stages[2].trainable = Trainable::Globs(vec!["blocks.*.adapter_*".into(), "final.*".into()]);
    config.stages[2].ema_decay = 0.999;

    let text = config.to_toml_string().expect("serializes");
    let back = RunConfig::from_toml_str(&text, "round-trip").expect("parses back");
    assert_eq!(back, config, "TOML:\n{text}");

    for (name, _) in PRESETS {
        let preset = RunConfig::preset(name).expect("preset parses");
        let text = preset.to_toml_string().expect("serializes");
        assert_eq!(RunConfig::from_toml_str(&text, name).expect("parses back"), preset);
    }
}

// ── schedule ────────────────────────────────────────────────────────────────────────────────────────────

fn scheduled(kind: ScheduleKind, steps: u64, warmup: u64, floor: f64) -> StageConfig {
    StageConfig {
        steps,
        lr: 2e-3,
        schedule: ScheduleConfig { kind, warmup_steps: warmup, floor },
        ..Default::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
}

#[test]
fn warmup_rises_linearly_to_the_peak() {
    for kind in [ScheduleKind::Constant, ScheduleKind::Cosine, ScheduleKind::Linear] {
        let stage = scheduled(kind, 100, 10, 0.1);
        for s in 0..10 {
            assert!(close(stage.lr_at(s), 2e-3 * (s + 1) as f64 / 10.0), "{kind:?} step {s}");
        }
        assert!(stage.lr_at(0) > 0.0, "the first step must train");
        assert!(close(stage.lr_at(9), 2e-3), "warmup ends at the peak");
        assert!(close(stage.lr_at(10), 2e-3), "first step after warmup is at the peak");
    }
}

#[test]
fn cosine_peaks_after_warmup_ends_at_floor_and_never_rises() {
    let stage = scheduled(ScheduleKind::Cosine, 200, 20, 0.1);
    assert!(close(stage.lr_at(20), 2e-3));
    assert!(close(stage.lr_at(199), 0.1 * 2e-3), "last step at floor: {}", stage.lr_at(199));
    let mut previous = stage.lr_at(20);
    for s in 21..200 {
        let lr = stage.lr_at(s);
        assert!(lr <= previous, "rose at step {s}");
        assert!(lr >= 0.1 * 2e-3 - 1e-18);
        previous = lr;
    }
    // Midpoint of the decay: halfway between peak and floor.
    let stage = scheduled(ScheduleKind::Cosine, 101, 0, 0.0);
    assert!(close(stage.lr_at(50), 1e-3));
    assert!(close(stage.lr_at(100), 0.0) || stage.lr_at(100).abs() < 1e-18);
    // Past the end it stays at the floor.
    let stage = scheduled(ScheduleKind::Cosine, 50, 5, 0.2);
    assert!(close(stage.lr_at(49), 0.2 * 2e-3));
    assert!(close(stage.lr_at(500), 0.2 * 2e-3));
}

#[test]
fn linear_decay_midpoint_and_end() {
    let stage = scheduled(ScheduleKind::Linear, 101, 0, 0.0);
    assert!(close(stage.lr_at(0), 2e-3));
    assert!(close(stage.lr_at(50), 1e-3));
    assert!(stage.lr_at(100).abs() < 1e-18);
    let stage = scheduled(ScheduleKind::Linear, 111, 10, 0.5);
    assert!(close(stage.lr_at(10), 2e-3));
    assert!(close(stage.lr_at(60), 0.75 * 2e-3));
    assert!(close(stage.lr_at(110), 1e-3));
    let mut previous = stage.lr_at(10);
    for s in 11..111 {
        assert!(stage.lr_at(s) <= previous);
        previous = stage.lr_at(s);
    }
}

#[test]
fn constant_is_flat_and_ignores_floor() {
    let stage = scheduled(ScheduleKind::Constant, 50, 0, 0.3);
    for s in 0..60 {
        assert_eq!(stage.lr_at(s), 2e-3);
    }
}

#[test]
fn tiny_stages_are_well_defined() {
    for kind in [ScheduleKind::Constant, ScheduleKind::Cosine, ScheduleKind::Linear] {
        // One step: runs at the peak.
        assert!(close(scheduled(kind, 1, 0, 0.0).lr_at(0), 2e-3));
        // Warmup of steps − 1: the last step is the peak.
        let stage = scheduled(kind, 5, 4, 0.0);
        assert!(close(stage.lr_at(3), 2e-3 * 4.0 / 4.0));
        assert!(close(stage.lr_at(4), 2e-3));
        for s in 0..10 {
            assert!(stage.lr_at(s).is_finite());
        }
    }
}

// ── stage ledger ────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn stage_ledger_lays_stages_end_to_end() {
    let config = valid(); // 30 + 20 + 10
    assert_eq!(
        config.stage_ledger(),
        vec![("base".to_string(), 0, 30), ("adapter".to_string(), 30, 50), ("finetune".to_string(), 50, 60)]
    );
    assert_eq!(config.total_steps(), 60);
    assert!(RunConfig::default().stage_ledger().is_empty());
}

#[test]
fn stage_at_crosses_boundaries() {
    let config = valid();
    assert_eq!(config.stage_at(0), Some((0, 0)));
    assert_eq!(config.stage_at(29), Some((0, 29)));
    assert_eq!(config.stage_at(30), Some((1, 0)));
    assert_eq!(config.stage_at(49), Some((1, 19)));
    assert_eq!(config.stage_at(50), Some((2, 0)));
    assert_eq!(config.stage_at(59), Some((2, 9)));
    assert_eq!(config.stage_at(60), None);
    assert_eq!(config.stage_at(u64::MAX), None);
    assert_eq!(RunConfig::default().stage_at(0), None);
    // Every global step maps back into its ledger range.
    let ledger = config.stage_ledger();
    for step in 0..config.total_steps() {
        let (index, within) = config.stage_at(step).expect("inside the plan");
        assert_eq!(ledger[index].1 + within, step);
        assert!(step < ledger[index].2);
    }
}

#[test]
fn stage_at_skips_zero_step_stages() {
    let mut config = valid();
    config.stages[1].steps = 0;
    assert_eq!(config.stage_ledger()[1], ("adapter".to_string(), 30, 30));
    assert_eq!(config.stage_at(30), Some((2, 0)));
}

// ── trainable ───────────────────────────────────────────────────────────────────────────────────────────

const PARAMS: [&str; 8] = [
    "patch_embed.weight",
    "t_embed.mlp.0.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.adapter_gate",
    "blocks.0.adapter_attn.q.weight",
    "blocks.11.adapter_norm.bias",
    "blocks.11.mlp.fc1.bias",
    "final.linear.weight",
];

#[test]
fn trainable_groups_split_adapter_from_base() {
    let all = Trainable::Group(TrainableGroup::All);
    let adapter = Trainable::Group(TrainableGroup::Adapter);
    let base = Trainable::Group(TrainableGroup::Base);
    for name in PARAMS {
        let is_adapter = name.contains(".adapter_");
        assert!(all.matches(name));
        assert_eq!(adapter.matches(name), is_adapter, "{name}");
        assert_eq!(base.matches(name), !is_adapter, "{name}");
    }
}

#[test]
fn the_layout_group_is_the_adapter_and_the_layout_encoder() {
    let layout = Trainable::Group(TrainableGroup::Layout);
    for name in
        ["blocks.0.adapter_gate", "blocks.3.adapter_attn.kv.weight", "box_mlp.0.weight", "layout_class_embed.weight"]
    {
        assert!(layout.matches(name), "{name}");
    }
    for name in
        ["class_embed.weight", "blocks.0.attn.qkv.weight", "t_mlp.0.bias", "final_linear.weight", "patch_embed.bias"]
    {
        assert!(!layout.matches(name), "{name}");
    }
    assert_eq!(layout.to_string(), "layout");
}

#[test]
fn trainable_globs_cross_dots() {
    let adapter_glob = Trainable::Globs(vec!["blocks.*.adapter_*".into()]);
    assert!(adapter_glob.matches("blocks.0.adapter_attn.q.weight"));
    assert!(adapter_glob.matches("blocks.11.adapter_gate"));
    assert!(!adapter_glob.matches("blocks.0.attn.qkv.weight"));
    assert!(!adapter_glob.matches("xblocks.0.adapter_gate"), "a glob matches the whole name");
    for name in PARAMS {
        assert_eq!(adapter_glob.matches(name), Trainable::Group(TrainableGroup::Adapter).matches(name), "{name}");
    }

    let several = Trainable::Globs(vec!["final.*".into(), "blocks.1?.*".into(), "t_embed.mlp.[0-3].weight".into()]);
    assert!(several.matches("final.linear.weight"));
    assert!(several.matches("blocks.11.mlp.fc1.bias"));
    assert!(!several.matches("blocks.1.mlp.fc1.bias"));
    assert!(several.matches("t_embed.mlp.0.weight"));
    assert!(!several.matches("patch_embed.weight"));

    assert!(!Trainable::Globs(vec![]).matches("final.linear.weight"));
    assert!(!Trainable::Globs(vec!["blocks.[0-".into()]).matches("blocks.0.x"), "a broken glob matches nothing");
}

#[test]
fn trainable_displays_as_written() {
    assert_eq!(Trainable::Group(TrainableGroup::Adapter).to_string(), "adapter");
    assert_eq!(Trainable::Globs(vec!["a.*".into(), "b".into()]).to_string(), r#"["a.*", "b"]"#);
}

// ── presets ─────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn every_preset_file_parses_and_validates_cleanly() {
    let pattern = presets_dir().join("*.toml");
    let mut seen = Vec::new();
    for entry in glob::glob(&pattern.to_string_lossy()).expect("glob pattern") {
        let path = entry.expect("readable entry");
        let text = std::fs::read_to_string(&path).expect("read preset");
        let config = RunConfig::from_toml_str(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        if let Err(issues) = config.validate() {
            panic!("{} has issues:\n{issues:#?}", path.display());
        }
        // The file name is the run name and the key in PRESETS, with the same text compiled in.
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("utf-8 name").to_string();
        assert_eq!(config.name, stem, "{}", path.display());
        let builtin = PRESETS.iter().find(|(n, _)| *n == stem).map(|(_, t)| *t);
        assert_eq!(builtin, Some(text.as_str()), "{stem} must be listed in config::PRESETS");
        assert_eq!(RunConfig::load(&path).expect("loads"), config);
        seen.push(stem);
    }
    seen.sort();
    let mut listed: Vec<String> = PRESETS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(seen, listed, "every PRESETS entry has a file and vice versa");
    assert!(seen.contains(&"smoke".to_string()) && seen.contains(&"demo".to_string()));
}

#[test]
fn smoke_preset_is_what_tests_expect() {
    let smoke = RunConfig::preset("smoke").expect("smoke");
    assert_eq!(smoke.seed, 7);
    assert_eq!(smoke.model.preset.name(), "tiny");
    assert!(smoke.model.adapter);
    assert_eq!(smoke.checkpoints.keep_last, 10);
    assert_eq!(smoke.threads, 0);
    assert_eq!(smoke.stage_ledger(), vec![("base".to_string(), 0, 30), ("adapter".to_string(), 30, 50)]);
    let (base, adapter) = (&smoke.stages[0], &smoke.stages[1]);
    assert_eq!(base.trainable, Trainable::Group(TrainableGroup::Base));
    assert_eq!((base.batch_size, base.lr, base.log_every, base.save_every), (8, 1e-3, 1, 10));
    assert_eq!((base.schedule.kind, base.schedule.warmup_steps), (ScheduleKind::Cosine, 5));
    assert_eq!(base.layout_dropout, 1.0);
    assert_eq!(adapter.trainable, Trainable::Group(TrainableGroup::Adapter));
    assert_eq!((adapter.batch_size, adapter.lr, adapter.log_every, adapter.save_every), (8, 3e-3, 1, 10));
    assert_eq!(adapter.schedule.kind, ScheduleKind::Constant);
}

#[test]
fn demo_preset_is_the_base_then_adapter_curriculum() {
    let demo = RunConfig::preset("demo").expect("demo");
    assert_eq!(demo.model.preset.name(), "small");
    assert!(demo.model.adapter);
    let names: Vec<&str> = demo.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["base", "adapter"]);
    let [base, adapter] = [&demo.stages[0], &demo.stages[1]];
    assert_eq!(base.trainable, Trainable::Group(TrainableGroup::Base));
    assert_eq!(base.layout_dropout, 1.0);
    assert_eq!(base.schedule.kind, ScheduleKind::Cosine);
    assert_eq!((base.grad_clip, base.class_dropout), (1.0, 0.1));
    // The adapter joins and everything trains with it, on layouts, some of them empty so that guidance can
    // drop the layout in its unconditional branch; no weight decay pulls the zero-initialised gates back.
    assert_eq!(adapter.trainable, Trainable::Group(TrainableGroup::All));
    assert!(adapter.layout_dropout > 0.0 && adapter.layout_dropout < 0.5);
    assert_eq!(adapter.weight_decay, 0.0);
    assert!(demo.eval.sampler.guide_layout);
    for stage in &demo.stages {
        assert!([32, 64].contains(&stage.batch_size), "{}: {}", stage.name, stage.batch_size);
        assert!(stage.eval_every > 0 && stage.steps % stage.eval_every == 0, "{}: evaluated at its end", stage.name);
    }
}

#[test]
fn unknown_builtin_preset_lists_the_available_ones() {
    let text = RunConfig::preset("huge").expect_err("no such preset").to_string();
    assert!(text.contains("smoke") && text.contains("demo"), "{text}");
}

#[test]
fn timestep_logit_mean_is_a_finite_shift_of_at_most_three() {
    for value in [-3.5, 4.0, f64::NAN, f64::NEG_INFINITY] {
        let mut config = valid();
        config.stages[0].timestep_logit_mean = value;
        only_issue(&config, "stages[0].timestep_logit_mean");
    }
    let mut config = valid();
    config.stages[0].timestep_logit_mean = -0.5;
    config.stages[1].timestep_logit_mean = 3.0;
    assert_valid(&config);
}

#[test]
fn the_guidance_interval_lies_in_zero_one_low_first() {
    for interval in [[0.8, 0.2], [-0.1, 0.5], [0.2, 1.5], [f64::NAN, 1.0]] {
        let mut config = valid();
        config.eval.sampler.guidance_interval = interval;
        only_issue(&config, "eval.sampler.guidance_interval");
    }
    let mut config = valid();
    config.eval.sampler.guidance_interval = [0.5, 0.5];
    assert_valid(&config);
}

#[test]
fn object_loss_mode_reads_pixels_or_objects() {
    let parse = |value: &str| RunConfig::from_toml_str(&format!("[[stages]]\nobject_loss_mode = \"{value}\"\n"), "t");
    assert_eq!(parse("pixels").expect("parses").stages[0].object_loss_mode, ObjectLossMode::Pixels);
    assert_eq!(parse("objects").expect("parses").stages[0].object_loss_mode, ObjectLossMode::Objects);
    let (path, message) = parse_error("[[stages]]\nobject_loss_mode = \"boxes\"\n");
    assert!(message.contains("pixels") && message.contains("objects"), "{path}: {message}");
    assert_eq!(StageConfig::default().object_loss_mode, ObjectLossMode::Pixels);
}

#[test]
fn threads_beyond_any_machine_are_refused_with_the_fix() {
    let mut config = valid();
    config.threads = 10_000;
    only_issue(&config, "threads");
    let issues = config.validate().expect_err("refused");
    assert!(issues[0].message.contains("0 uses every core"), "{}", issues[0]);
    for threads in [0, 1, 2, 64] {
        config.threads = threads;
        assert_valid(&config);
    }
}

#[test]
fn the_nan_policy_is_skip_fail_or_rollback_with_a_factor_in_zero_one_and_at_least_one_rollback() {
    assert_eq!(valid().checkpoints.on_nan, wick::config::NanPolicy::Skip, "skip unless asked");
    let (path, message) = parse_error("[checkpoints]\non_nan = \"explode\"\n");
    assert_eq!(path, "checkpoints.on_nan");
    assert!(message.contains("rollback"), "{message}");
    let parsed = RunConfig::from_toml_str(
        "[checkpoints]\non_nan = \"rollback\"\nrollback_lr_factor = 0.25\nmax_rollbacks = 4\n[[stages]]\nname = \"s\"\n",
        "r.toml",
    )
    .expect("parses");
    assert_eq!(parsed.checkpoints.on_nan, wick::config::NanPolicy::Rollback);
    assert_eq!((parsed.checkpoints.rollback_lr_factor, parsed.checkpoints.max_rollbacks), (0.25, 4));
    for factor in [0.0, -0.5, 1.5, f64::NAN] {
        let mut config = valid();
        config.checkpoints.rollback_lr_factor = factor;
        only_issue(&config, "checkpoints.rollback_lr_factor");
    }
    let mut config = valid();
    config.checkpoints.rollback_lr_factor = 1.0;
    assert_valid(&config);
    config.checkpoints.max_rollbacks = 0;
    only_issue(&config, "checkpoints.max_rollbacks");
}
