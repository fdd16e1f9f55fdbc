//! Rules a parsed [`RunConfig`](super::RunConfig) must satisfy.
//!
//! Every message has the form `<what is wrong> — <why it matters or what to do>`, and every issue carries
//! the exact field path (`stages[1].steps`, `dataset.max_objects`, `stages[0].trainable[2]`), so the setup
//! panel can put it next to the field and the command line can print it as `path: message`.

use std::collections::HashMap;

use super::{
    DatasetConfig, DatasetKind, EarlyStoppingConfig, MetricMode, Precision, RunConfig, StageConfig, Trainable,
    TrainableGroup,
};

/// Layout slots per image in the built-in model: `dataset.max_objects` cannot exceed it.
pub const LAYOUT_SLOTS: usize = 4;

/// Metrics early stopping can watch.
pub const METRICS: [&str; 7] = ["loss", "val_loss", "fid", "top1", "top2", "top3", "iou"];

/// Longest run name accepted (it prefixes a directory name).
const MAX_NAME_CHARS: usize = 100;

/// Most compute threads a config may ask for (a typo such as 10000 would start that many threads).
const MAX_THREADS: usize = 1024;

/// One problem in a config: the field path, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path such as `stages[1].steps`.
    pub path: String,
    /// What is wrong and what to do, e.g. `must be > 0 — this stage would train no steps`.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The direction in which a metric improves, or `None` for an unknown metric.
pub fn metric_mode(metric: &str) -> Option<MetricMode> {
    match metric {
        "loss" | "val_loss" | "fid" => Some(MetricMode::Min),
        "top1" | "top2" | "top3" | "iou" => Some(MetricMode::Max),
        _ => None,
    }
}

/// Collects issues.
#[derive(Default)]
struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue { path: path.into(), message: message.into() });
    }
}

impl RunConfig {
    /// Every problem of the config, or `Ok` when it can run.
    ///
    /// Issues come in field order (run, dataset, checkpoints, then each stage). The check of
    /// `warm_start` looks at the file system (relative paths are relative to the current directory), so
    /// validate a config on the machine that will train it; to merely *view* a frozen `run.toml`, use
    /// [`RunConfig::from_toml_str`] alone.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        crate::task::registry::TaskRegistry::builtin().validate(self)
    }

    /// [`Self::validate`] for a config whose task is described by `task` (`None`: a kind this program does
    /// not know; `known_kinds` lists those it does). The task's `[task]` and `[stages.task]` tables are
    /// checked against its schema, and metric names against its metrics.
    pub fn validate_for(
        &self,
        task: Option<&crate::task::TaskDescriptor>,
        known_kinds: &[String],
    ) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Issues::default();
        let shapes = self.task.kind == "shapes";
        match task {
            None => issues.add(
                "task.kind",
                format!(
                    "unknown task {:?} — use one of {} (a program that registers its own task knows its kind)",
                    self.task.kind,
                    known_kinds.join(", ")
                ),
            ),
            Some(task) => {
                issues.0.extend(task.settings.check(&self.task.settings, "task", false));
                for (index, stage) in self.stages.iter().enumerate() {
                    issues.0.extend(task.settings.check(&stage.task, &format!("stages[{index}].task"), true));
                }
            }
        }
        let metrics = Metrics(task);
        check_run_name(&self.name, &mut issues);
        check_device(&self.device, &mut issues);
        if self.precision == Precision::Bf16 {
            if self.device == "cpu" {
                issues.add(
                    "precision",
                    "\"bf16\" is for CUDA devices — the CPU trains in \"f32\": set precision = \"f32\" or device = \"cuda:N\"",
                );
            } else if !shapes {
                issues.add(
                    "precision",
                    format!(
                        "the `{}` task trains in \"f32\" only — bf16 autocast is the shapes task's",
                        self.task.kind
                    ),
                );
            }
        }
        if self.threads > MAX_THREADS {
            issues.add(
                "threads",
                format!(
                    "must be ≤ {MAX_THREADS}, found {} — it is the run's CPU compute threads; 0 uses every core",
                    self.threads
                ),
            );
        }
        if shapes {
            check_dataset(&self.dataset, &mut issues);
        }
        if self.checkpoints.keep_last == 0 {
            issues.add("checkpoints.keep_last", "must be ≥ 1 — with 0 no checkpoint would stay on disk to resume from");
        }
        if self.checkpoints.max_bad_steps == 0 {
            issues.add(
                "checkpoints.max_bad_steps",
                "must be ≥ 1 — it is how many consecutive steps with a non-finite loss or gradient \
                 fail the run; 5 is a good start",
            );
        }
        let factor = self.checkpoints.rollback_lr_factor;
        if !(factor > 0.0 && factor <= 1.0) {
            issues.add(
                "checkpoints.rollback_lr_factor",
                format!(
                    "must be in (0, 1], found {factor} — each rollback multiplies the learning rate by it; 0.5 halves it"
                ),
            );
        }
        if self.checkpoints.max_rollbacks == 0 {
            issues.add(
                "checkpoints.max_rollbacks",
                "must be ≥ 1 — it is how many times a run returns to its newest checkpoint before a non-finite \
                 step fails it; 3 is a good start",
            );
        }
        if shapes && !matches!(self.model.resolution, 32 | 64) {
            issues.add(
                "model.resolution",
                format!(
                    "must be 32 or 64, found {} — 32 for the built-in task, 64 (patch 8) for photos",
                    self.model.resolution
                ),
            );
        }
        check_eval(&self.eval, shapes, &metrics, &mut issues);
        if self.stages.is_empty() {
            issues.add(
                "stages",
                "must list at least one stage — add a [[stages]] table with a name and a number of steps",
            );
        }
        let mut first_with_name: HashMap<&str, usize> = HashMap::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let prefix = format!("stages[{index}]");
            let name = stage.name.trim();
            if name.is_empty() {
                issues
                    .add(format!("{prefix}.name"), "must not be empty — name the stage, e.g. \"base\" or \"adapter\"");
            } else if let Some(first) = first_with_name.get(name) {
                issues.add(
                    format!("{prefix}.name"),
                    format!(
                        "\"{name}\" is already the name of stages[{first}] — stage names must be unique; \
                         rename this one, e.g. \"{name}-2\""
                    ),
                );
            } else {
                first_with_name.insert(name, index);
            }
            check_stage(stage, &prefix, !shapes || self.model.adapter, &metrics, &mut issues);
        }
        if issues.0.is_empty() {
            Ok(())
        } else {
            Err(issues.0)
        }
    }
}

fn check_run_name(name: &str, issues: &mut Issues) {
    const PATH: &str = "name";
    const FIX: &str = "use letters, digits, `-`, `_` or `.`, e.g. \"demo-1\"";
    if name.trim().is_empty() {
        issues.add(PATH, "must not be empty — it names the run's directory; use something like \"demo\"");
        return;
    }
    if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\')) {
        issues.add(PATH, format!("contains the path separator `{c}` — the name must be one directory name; {FIX}"));
    } else if let Some(c) =
        name.chars().find(|c| c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|'))
    {
        issues.add(
            PATH,
            format!("contains {}, which some systems do not allow in a directory name — {FIX}", describe_char(c)),
        );
    } else if name == "." || name == ".." {
        issues.add(PATH, format!("cannot be `{name}` — it must name a directory of its own; {FIX}"));
    } else if name.starts_with('.') {
        issues.add(PATH, "starts with `.`, which would hide the run directory — start it with a letter or digit");
    } else if name.trim() != name {
        issues.add(PATH, "starts or ends with a space — remove it, the run directory would be hard to type");
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        issues.add(
            PATH,
            format!("is {chars} characters long — keep it to {MAX_NAME_CHARS} or fewer, it prefixes a directory name"),
        );
    }
}

fn describe_char(c: char) -> String {
    if c.is_control() {
        format!("the control character U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

fn check_device(device: &str, issues: &mut Issues) {
    let valid = device == "auto"
        || device == "cpu"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && n.parse::<usize>().is_ok());
    if !valid {
        let hint = if device == "cuda" || device == "gpu" {
            " — write \"cuda:0\" for the first GPU"
        } else {
            " — \"auto\" picks CUDA when available, else the CPU"
        };
        issues.add(
            "device",
            format!("must be \"auto\", \"cpu\" or \"cuda:N\" (e.g. \"cuda:0\"), found {device:?}{hint}"),
        );
    }
}

fn check_dataset(d: &DatasetConfig, issues: &mut Issues) {
    if d.kind == DatasetKind::Folder {
        check_folder_dataset(d, issues);
        return;
    }
    if d.min_objects == 0 {
        issues.add("dataset.min_objects", "must be ≥ 1 — every image shows at least one object");
    }
    if d.max_objects < d.min_objects {
        issues.add(
            "dataset.max_objects",
            format!(
                "is {} but min_objects is {} — max_objects must be ≥ min_objects; raise it or lower min_objects",
                d.max_objects, d.min_objects
            ),
        );
    }
    if d.max_objects > LAYOUT_SLOTS {
        issues.add(
            "dataset.max_objects",
            format!(
                "is {} — must be ≤ {LAYOUT_SLOTS}, the model has {LAYOUT_SLOTS} layout slots per image",
                d.max_objects
            ),
        );
    }
    if d.train_size == 0 {
        issues.add("dataset.train_size", "must be ≥ 1 — the training set would be empty");
    }
    if !(d.subset_fraction > 0.0 && d.subset_fraction <= 1.0) {
        issues.add(
            "dataset.subset_fraction",
            format!(
                "must be in (0, 1], found {} — it is the fraction of the training set used; 1.0 uses all of it",
                d.subset_fraction
            ),
        );
    } else if d.train_size > 0 && (d.train_size as f64 * d.subset_fraction).floor() < 1.0 {
        issues.add(
            "dataset.subset_fraction",
            format!(
                "{} of {} images keeps no image — raise subset_fraction or train_size",
                d.subset_fraction, d.train_size
            ),
        );
    }
}

/// The file-system checks of an image folder dataset; what is *in* the files is `wick data check`'s job
/// (run before every run's first step).
fn check_folder_dataset(d: &DatasetConfig, issues: &mut Issues) {
    match &d.path {
        None => issues.add("dataset.path", "required: the image folder, one subfolder per class"),
        Some(path) if !path.is_dir() => issues.add(
            "dataset.path",
            format!(
                "\"{}\" {} — point it at the folder that holds one subfolder per class",
                path.display(),
                if path.exists() { "is not a folder" } else { "does not exist" }
            ),
        ),
        Some(path) => match crate::data::folder_class_names(path) {
            Ok(classes) if classes.is_empty() => issues.add(
                "dataset.path",
                format!("\"{}\" has no class subfolder — put each class's images in root/<class>/", path.display()),
            ),
            Ok(_) => {}
            Err(e) => issues.add("dataset.path", format!("{e:#}")),
        },
    }
    if let Some(layouts) = &d.layouts {
        if !layouts.is_file() {
            issues.add(
                "dataset.layouts",
                format!("\"{}\" is not a file — the layout JSONL, one line per image", layouts.display()),
            );
        }
    }
    if !(d.heldout_fraction > 0.0 && d.heldout_fraction <= 0.5) {
        issues.add(
            "dataset.heldout_fraction",
            format!(
                "must be in (0, 0.5], found {} — the fraction of each class kept out of training for \
                 evaluation; 0.1 is a good start",
                d.heldout_fraction
            ),
        );
    }
    if !(d.subset_fraction > 0.0 && d.subset_fraction <= 1.0) {
        issues.add(
            "dataset.subset_fraction",
            format!("must be in (0, 1], found {} — the fraction of the training images used", d.subset_fraction),
        );
    }
}

/// The metrics a config may name: its task's, or the shapes task's when the task is unknown.
struct Metrics<'a>(Option<&'a crate::task::TaskDescriptor>);

impl Metrics<'_> {
    fn mode(&self, name: &str) -> Option<MetricMode> {
        match self.0 {
            Some(task) => task.metric(name).map(|m| m.mode),
            None => metric_mode(name),
        }
    }

    fn names(&self) -> String {
        match self.0 {
            Some(task) => task.metric_names().join(", "),
            None => METRICS.join(", "),
        }
    }
}

fn check_stage(stage: &StageConfig, prefix: &str, model_has_adapter: bool, metrics: &Metrics, issues: &mut Issues) {
    let path = |field: &str| format!("{prefix}.{field}");

    if stage.steps == 0 {
        issues.add(path("steps"), "must be > 0 — this stage would train no steps");
    }
    if stage.batch_size == 0 {
        issues.add(path("batch_size"), "must be > 0 — a batch needs at least one image");
    }
    if stage.grad_accum == 0 {
        issues.add(
            path("grad_accum"),
            "must be ≥ 1 — it is the number of micro-batches per optimizer step (1 = no accumulation)",
        );
    }
    check_trainable(&stage.trainable, prefix, model_has_adapter, issues);

    if !stage.lr.is_finite() || stage.lr <= 0.0 {
        issues.add(
            path("lr"),
            format!("must be a positive number, found {} — typical peak rates are 1e-4 to 3e-3", stage.lr),
        );
    } else if stage.lr > 1.0 {
        issues.add(
            path("lr"),
            format!(
                "is {}, far too high: AdamW steps would be larger than the weights and training would \
                 diverge — typical peak rates are 1e-4 to 3e-3",
                stage.lr
            ),
        );
    }
    if !stage.weight_decay.is_finite() || stage.weight_decay < 0.0 {
        issues.add(
            path("weight_decay"),
            format!("must be a finite number ≥ 0, found {} — use 0 for no weight decay", stage.weight_decay),
        );
    }
    if !stage.grad_clip.is_finite() || stage.grad_clip < 0.0 {
        issues.add(
            path("grad_clip"),
            format!(
                "must be a finite number ≥ 0, found {} — use 0 to turn clipping off, or a norm such as 1.0",
                stage.grad_clip
            ),
        );
    }
    if !(0.0..1.0).contains(&stage.ema_decay) {
        issues.add(
            path("ema_decay"),
            format!(
                "must be in [0, 1), found {} — 0 turns the EMA off; 0.999 averages over about the last 1000 steps",
                stage.ema_decay
            ),
        );
    }
    for (field, value, what) in [
        ("class_dropout", stage.class_dropout, "replacing the class label by the null class"),
        ("layout_dropout", stage.layout_dropout, "dropping an image's whole layout"),
    ] {
        if !(0.0..=1.0).contains(&value) {
            issues.add(
                path(field),
                format!("must be a probability in [0, 1], found {value} — it is the chance of {what}"),
            );
        }
    }

    if !(stage.object_loss_weight.is_finite() && stage.object_loss_weight >= 0.0) {
        issues.add(
            path("object_loss_weight"),
            format!(
                "must be a finite number ≥ 0, found {} — 0 weighs every pixel alike; 3 makes an object's pixels count 4 times",
                stage.object_loss_weight
            ),
        );
    }

    if !(stage.timestep_logit_mean.is_finite() && stage.timestep_logit_mean.abs() <= 3.0) {
        issues.add(
            path("timestep_logit_mean"),
            format!(
                "must be in [-3, 3], found {} — 0 centres training timesteps on t = 0.5; -1 puts the median at \
                 t = 0.27 (more low-noise training), +1 at t = 0.73",
                stage.timestep_logit_mean
            ),
        );
    }

    let schedule = &stage.schedule;
    if !(0.0..=1.0).contains(&schedule.floor) {
        issues.add(
            path("schedule.floor"),
            format!(
                "must be in [0, 1], found {} — it is the final rate as a fraction of lr (0 decays to zero, \
                 0.1 ends at a tenth)",
                schedule.floor
            ),
        );
    }
    if stage.steps > 0 && schedule.warmup_steps >= stage.steps {
        issues.add(
            path("schedule.warmup_steps"),
            format!(
                "is {} but the stage trains only {} steps — the stage would never reach its peak rate lr; \
                 use at most {} warmup steps (typically 5–10% of the stage)",
                schedule.warmup_steps,
                stage.steps,
                stage.steps - 1
            ),
        );
    }

    if stage.log_every == 0 {
        issues.add(path("log_every"), "must be ≥ 1 — metrics are logged every log_every steps; 1 logs every step");
    }

    if let Some(es) = &stage.early_stopping {
        check_early_stopping(es, stage, prefix, metrics, issues);
    }

    if let Some(dir) = &stage.warm_start {
        let shown = dir.display();
        if dir.as_os_str().is_empty() {
            issues.add(
                path("warm_start"),
                "is empty — point it at a checkpoint directory such as \
                 \"runs/<run>/checkpoints/step-00000400\", or remove the line",
            );
        } else if !dir.exists() {
            issues.add(
                path("warm_start"),
                format!(
                    "\"{shown}\" does not exist — point it at a checkpoint directory such as \
                     \"runs/<run>/checkpoints/step-00000400\" (relative paths start in the current directory)"
                ),
            );
        } else if !dir.is_dir() {
            issues.add(
                path("warm_start"),
                format!("\"{shown}\" is a file — point it at the checkpoint directory that holds model.safetensors"),
            );
        }
    }
}

fn check_trainable(trainable: &Trainable, prefix: &str, model_has_adapter: bool, issues: &mut Issues) {
    match trainable {
        Trainable::Group(group @ (TrainableGroup::Adapter | TrainableGroup::Layout)) if !model_has_adapter => issues
            .add(
                format!("{prefix}.trainable"),
                format!(
                    "is \"{}\" but model.adapter = false — nothing useful would train; set model.adapter = true, \
                     or train \"base\" or \"all\"",
                    Trainable::Group(*group)
                ),
            ),
        Trainable::Group(_) => {}
        Trainable::Globs(globs) if globs.is_empty() => issues.add(
            format!("{prefix}.trainable"),
            "is an empty list — nothing would train; list name globs such as [\"blocks.*.adapter_*\"], \
             or use \"all\", \"adapter\" or \"base\"",
        ),
        Trainable::Globs(globs) => {
            for (i, glob) in globs.iter().enumerate() {
                let path = format!("{prefix}.trainable[{i}]");
                if glob.is_empty() {
                    issues.add(path, "is an empty glob, which matches no parameter — remove it or write a name glob");
                } else if let Err(e) = glob::Pattern::new(glob) {
                    issues.add(
                        path,
                        format!(
                            "{glob:?} is not a valid glob ({} at character {}) — globs use `*`, `?` and \
                             `[...]`, e.g. \"blocks.*.adapter_*\"",
                            e.msg, e.pos
                        ),
                    );
                }
            }
        }
    }
}

fn check_early_stopping(
    es: &EarlyStoppingConfig,
    stage: &StageConfig,
    prefix: &str,
    metrics: &Metrics,
    issues: &mut Issues,
) {
    let path = |field: &str| format!("{prefix}.early_stopping.{field}");
    match metrics.mode(&es.metric) {
        None => issues.add(path("metric"), format!("unknown metric {:?} — use one of {}", es.metric, metrics.names())),
        Some(better) => {
            if better != es.mode {
                let (word, mode) = match better {
                    MetricMode::Min => ("lower", "min"),
                    MetricMode::Max => ("higher", "max"),
                };
                issues.add(
                    path("mode"),
                    format!("does not fit {:?}, where {word} is better — set mode = \"{mode}\"", es.metric),
                );
            }
            if es.metric != "loss" && stage.eval_every == 0 {
                issues.add(
                    format!("{prefix}.eval_every"),
                    format!(
                        "is 0 (never evaluate) but early_stopping watches {:?}, which is only measured at \
                         evaluations — set eval_every > 0, or watch \"loss\"",
                        es.metric
                    ),
                );
            }
        }
    }
    if es.patience == 0 {
        issues.add(path("patience"), "must be ≥ 1 — it is how many evaluations without improvement stop the stage");
    }
    if !es.min_delta.is_finite() || es.min_delta < 0.0 {
        issues.add(
            path("min_delta"),
            format!(
                "must be a finite number ≥ 0, found {} — it is the smallest change that counts as an \
                 improvement; 0 counts any improvement",
                es.min_delta
            ),
        );
    }
}

fn check_eval(eval: &super::EvalConfig, shapes: bool, metrics: &Metrics, issues: &mut Issues) {
    if metrics.mode(&eval.best_metric).is_none() {
        issues
            .add("eval.best_metric", format!("unknown metric {:?} — use one of {}", eval.best_metric, metrics.names()));
    }
    if !shapes {
        return; // the rest are the shapes task's sampler and judge settings
    }
    if eval.samples < 2 {
        issues
            .add("eval.samples", format!("is {} — FID needs at least 2 images; 500 is the usual budget", eval.samples));
    }
    if eval.judge_steps == 0 {
        issues.add(
            "eval.judge_steps",
            "must be ≥ 1 — steps of the judge trained for a folder dataset; 1500 is the default",
        );
    }
    if eval.grid_rows == 0 {
        issues.add("eval.grid_rows", "must be ≥ 1 — the sample grid needs at least one row; 8 is a good start");
    }
    if eval.sampler.steps == 0 {
        issues.add("eval.sampler.steps", "must be ≥ 1 — the sampler needs at least one Euler step; 20 is the default");
    }
    if eval.sampler.batch_size == 0 {
        issues.add("eval.sampler.batch_size", "must be ≥ 1 — images per forward pass while sampling");
    }
    if !eval.sampler.guidance.is_finite() || eval.sampler.guidance < 0.0 {
        issues.add(
            "eval.sampler.guidance",
            format!("is {} — must be a finite number ≥ 0 (1 = no guidance)", eval.sampler.guidance),
        );
    }
    let [low, high] = eval.sampler.guidance_interval;
    if !(0.0 <= low && low <= high && high <= 1.0) {
        issues.add(
            "eval.sampler.guidance_interval",
            format!(
                "is [{low}, {high}] — must be [low, high] with 0 ≤ low ≤ high ≤ 1: the t (1 = noise, 0 = image) \
                 where guidance applies; [0, 1] = every step"
            ),
        );
    }
    if !eval.sampler.gate_scale.is_finite() {
        issues.add("eval.sampler.gate_scale", "must be a finite number (1 = gates as trained)");
    }
    if let Some(judge) = &eval.judge {
        if !judge.is_file() {
            issues.add(
                "eval.judge",
                format!("\"{}\" does not exist — leave it out to use the built-in judge", judge.display()),
            );
        }
    }
}
