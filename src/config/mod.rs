//! Run configuration: [`RunConfig`] and its ordered [`StageConfig`]s, loaded from TOML.
//!
//! Every field has a default, so a config file only says what differs. Loading refuses unknown keys and
//! wrong types with the field path; [`RunConfig::validate`] returns *every* remaining problem at once, each
//! with its field path and a fix.
//!
//! Also here, as pure functions of the config: the learning-rate schedule ([`StageConfig::lr_at`]), the
//! stage ledger on the global step axis ([`RunConfig::stage_ledger`], [`RunConfig::stage_at`]), which
//! parameters a stage trains ([`Trainable::matches`]), and the built-in presets ([`PRESETS`],
//! [`RunConfig::preset`]; files in `assets/presets/`).

mod parse;
mod schedule;
mod trainable;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use trainable::is_adapter_param;
pub use validate::{metric_mode, ConfigIssue, LAYOUT_SLOTS, METRICS};

/// The presets shipped with Wick (`assets/presets/<name>.toml`), as `(name, TOML text)`, compiled in so the
/// binary needs no asset directory. Load one with [`RunConfig::preset`].
pub const PRESETS: &[(&str, &str)] = &[
    ("smoke", include_str!("../../assets/presets/smoke.toml")),
    ("demo", include_str!("../../assets/presets/demo.toml")),
    ("chars-smoke", include_str!("../../assets/presets/chars-smoke.toml")),
    ("chars-demo", include_str!("../../assets/presets/chars-demo.toml")),
];

/// A whole run: what to train on, which model, and the ordered stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Human-readable run name; also the prefix of the run directory's name.
    pub name: String,
    /// Seed of every random stream of the run (initial weights, data order, noise, timesteps, dropout).
    pub seed: u64,
    /// `auto` (CUDA when built with it and available, else CPU), `cpu`, or `cuda:N`.
    pub device: String,
    /// Threads for candle's CPU kernels; 0 = every core.
    pub threads: usize,
    /// Arithmetic of the training forward pass: `f32`, or `bf16` autocast on CUDA (the linear layers' matrix
    /// products in bf16; weights, gradients and optimizer state stay f32). f32 on the CPU.
    pub precision: Precision,
    /// Which task trains (`kind`, default `shapes`) and its own settings (see [`crate::task::settings`]).
    /// The shapes task's settings are the `dataset`, `model` and `eval` tables below.
    pub task: TaskConfig,
    /// The dataset.
    pub dataset: DatasetConfig,
    /// The model.
    pub model: ModelConfig,
    /// Checkpoint retention and the NaN guard, shared by all stages.
    pub checkpoints: CheckpointConfig,
    /// How evaluations sample and judge, which metric picks the best checkpoint, gate alert thresholds.
    pub eval: EvalConfig,
    /// Stages, trained in order on one global step axis.
    pub stages: Vec<StageConfig>,
}

/// The `[task]` table: the task's kind and its own settings, checked against its schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// The task: `shapes` (the built-in denoiser), `chars` (a character-level language model), or the kind
    /// of a task a program registers.
    #[serde(default = "default_task_kind")]
    pub kind: String,
    /// The task's settings (every other key of the table).
    #[serde(flatten)]
    pub settings: toml::Table,
}

fn default_task_kind() -> String {
    "shapes".to_string()
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self { kind: default_task_kind(), settings: toml::Table::new() }
    }
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// Dataset kind: the procedural `shapes` task, or an image `folder` of the user's.
    pub kind: DatasetKind,
    /// `folder`: the root holding one subfolder per class (`root/<class>/*.png|jpg|jpeg|webp|bmp`).
    /// A relative path is relative to the current directory; a run freezes it as an absolute path.
    pub path: Option<PathBuf>,
    /// `folder`: optional layout JSONL, one line per image:
    /// `{"image": "cats/001.png", "objects": [{"class": "cat", "bbox": [x0, y0, x1, y1]}]}`.
    pub layouts: Option<PathBuf>,
    /// `folder`: whether layout boxes are in pixels of the original image or normalised to [0, 1];
    /// `auto` decides per file (pixels when any coordinate exceeds 1) and says so in the data report.
    pub box_units: BoxUnits,
    /// `folder`: how a non-square image becomes the model's square input.
    pub resize: ResizeMode,
    /// `folder`: fraction of each class held out for evaluation (a seeded split stored in the run).
    pub heldout_fraction: f64,
    /// Variant of the shapes task.
    pub variant: ShapesVariant,
    /// Fewest objects per image (≥ 1).
    pub min_objects: usize,
    /// Most objects per image (≤ the model's layout slots).
    pub max_objects: usize,
    /// Images in one epoch of the training set.
    pub train_size: usize,
    /// Fraction of the training set that is used, in (0, 1].
    pub subset_fraction: f64,
    /// Seed of the dataset's content (separate from the run seed, so runs can share data); for a folder,
    /// the seed of the train / held-out split.
    pub seed: u64,
}

/// Units of the boxes in a layout JSONL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxUnits {
    /// Pixels when any coordinate in the file exceeds 1, else normalised (reported either way).
    Auto,
    /// Pixels of the original image.
    Pixels,
    /// Fractions of the original image's width and height, in [0, 1].
    Normalized,
}

/// Arithmetic of a run's training forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 autocast (CUDA only): every linear layer's inputs and weight cast to bf16 for its product, the
    /// result back to f32; LayerNorm, attention, the loss and every stored tensor stay f32.
    Bf16,
}

/// How a non-square image is made square.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Keep the central square and scale it: fills the frame, cuts the long side's ends.
    CenterCrop,
    /// Scale the long side to fit and pad the short side with black: keeps everything.
    Letterbox,
}

/// How `object_loss_weight` spreads over an image's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectLossMode {
    /// Every object pixel weighs `1 + w`: a large object gains more weight than a small one.
    #[default]
    Pixels,
    /// Every object gains the same total weight, `w` times the pixels of a box a quarter of the image wide,
    /// spread over its own pixels: a small object's pixels weigh more than a large one's.
    Objects,
}

/// Which dataset a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// The built-in procedural shapes task.
    Shapes,
    /// An image folder with one subfolder per class, and optionally a layout JSONL.
    Folder,
}

/// Variants of the procedural shapes task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapesVariant {
    /// Filled shapes of random colours on a plain random background.
    Plain,
    /// As `plain`, with light pixel noise on the background.
    Noisy,
}

/// The model and its size preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Size preset.
    pub preset: ModelPreset,
    /// Whether the blocks carry the gated spatial (layout) adapter.
    pub adapter: bool,
    /// Input side in pixels: 32 (patch 4) or 64 (patch 8, for photos); both give 8×8 tokens.
    pub resolution: usize,
}

/// Size presets of the built-in denoiser (see `shared/reference/dit_reference.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPreset {
    /// 226,802 parameters with the adapter: tests.
    Tiny,
    /// 896,788 parameters: the demo on a laptop CPU.
    Small,
    /// 2,298,294 parameters.
    Base,
}

/// Checkpoint retention and the NaN guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Newest checkpoints kept on disk (older ones are pruned; the best one is always kept). ≥ 1.
    pub keep_last: usize,
    /// With `on_nan = "skip"`: a run fails after this many consecutive steps with a non-finite loss or
    /// gradient. ≥ 1.
    pub max_bad_steps: u32,
    /// What a step with a non-finite loss or gradient does (its update is never applied).
    pub on_nan: NanPolicy,
    /// With `on_nan = "rollback"`: each rollback multiplies the learning rate by this. In (0, 1].
    pub rollback_lr_factor: f64,
    /// With `on_nan = "rollback"`: the run fails at the non-finite step after this many rollbacks. ≥ 1.
    pub max_rollbacks: u32,
}

/// What the trainer does when a step's loss or gradient is not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Skip the update and go on; fail after `max_bad_steps` such steps in a row.
    #[default]
    Skip,
    /// Fail at once (the newest checkpoint stays the run's last word).
    Fail,
    /// Return to the newest checkpoint, multiply the learning rate by `rollback_lr_factor`, and go on; fail
    /// after `max_rollbacks` rollbacks.
    Rollback,
}

impl NanPolicy {
    /// Every policy, in the order the window lists them.
    pub const ALL: [NanPolicy; 3] = [NanPolicy::Skip, NanPolicy::Fail, NanPolicy::Rollback];

    /// The name a config file uses.
    pub fn name(self) -> &'static str {
        match self {
            NanPolicy::Skip => "skip",
            NanPolicy::Fail => "fail",
            NanPolicy::Rollback => "rollback",
        }
    }
}

/// Evaluation settings shared by all stages (each stage sets its own `eval_every`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Generated (and real) images per evaluation: FID, top-k and IoU are computed over them.
    pub samples: usize,
    /// Seed of the fixed evaluation inputs (noise, classes, layouts), the same for every checkpoint.
    pub seed: u64,
    /// Rows of the sample grid saved with checkpoints and every `sample_every` steps.
    pub grid_rows: usize,
    /// Sampler settings.
    pub sampler: crate::eval::sampler::SamplerConfig,
    /// Metric that picks the best checkpoint: `fid`, `top1`, `top2`, `top3`, `iou` or `loss`.
    pub best_metric: String,
    /// Whether lower or higher is better for `best_metric` (default: the metric's natural direction).
    pub best_mode: Option<MetricMode>,
    /// Judge weights; empty = the built-in judge of the shapes task, or for a folder dataset a judge
    /// trained on its training split (cached per dataset, `judge_steps` steps).
    pub judge: Option<PathBuf>,
    /// Steps of the judge trained for a folder dataset when `judge` is empty.
    pub judge_steps: usize,
    /// Adapter gate alert thresholds.
    pub gates: crate::eval::GateAlertConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            samples: 500,
            seed: 0,
            grid_rows: 8,
            sampler: crate::eval::sampler::SamplerConfig::default(),
            best_metric: "fid".to_string(),
            best_mode: None,
            judge: None,
            judge_steps: 1500,
            gates: crate::eval::GateAlertConfig::default(),
        }
    }
}

/// One stage of the curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageConfig {
    /// Stage name, unique within the run.
    pub name: String,
    /// Optimizer steps this stage trains (> 0).
    pub steps: u64,
    /// What trains: `"all"`, `"adapter"`, `"base"`, or a list of name globs such as `["blocks.*.adapter_*"]`.
    pub trainable: Trainable,
    /// Images per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated into one optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 = no clipping.
    pub grad_clip: f64,
    /// Decay of the exponential moving average of the weights (ema.safetensors). 0 = no averaging: no EMA
    /// is kept until a stage asks for one; once one exists, a stage with 0 makes it follow the weights.
    pub ema_decay: f64,
    /// Probability of replacing the class label by the null class (classifier-free guidance).
    pub class_dropout: f64,
    /// Probability of dropping the whole layout (every slot empty) for an image.
    pub layout_dropout: f64,
    /// Extra weight of the loss on the pixels inside an image's object boxes: their squared error counts
    /// `1 + object_loss_weight` times a background pixel's (the loss is normalised by the total weight, so it
    /// stays on the scale of a plain mean). 0 = the plain mean of the reference.
    pub object_loss_weight: f64,
    /// How `object_loss_weight` spreads over objects: per pixel (default) or the same per object.
    pub object_loss_mode: ObjectLossMode,
    /// Location of the logit-normal distribution training timesteps are drawn from: t = sigmoid(m + n),
    /// n ~ N(0, 1). 0 = the reference's (median t = 0.5); negative values train more at low noise, where fine
    /// detail is drawn, positive more at high noise, where composition is. The validation loss always uses 0.
    pub timestep_logit_mean: f64,
    /// Log metrics every this many steps.
    pub log_every: u64,
    /// Evaluate every this many steps; 0 = never.
    pub eval_every: u64,
    /// Save a checkpoint every this many steps (and at the end of the stage); 0 = only at the end.
    pub save_every: u64,
    /// Save a fixed-seed sample grid every this many steps; 0 = only with checkpoints.
    pub sample_every: u64,
    /// Stop the stage early when a metric stops improving.
    pub early_stopping: Option<EarlyStoppingConfig>,
    /// Start this stage from another run's checkpoint directory (weights only).
    pub warm_start: Option<PathBuf>,
    /// The stage's overrides of per-stage task settings (`[stages.task]`), e.g. the chars task's `digits`.
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    pub task: toml::Table,
}

/// Which parameters a stage trains.
///
/// In TOML: `"all"`, `"adapter"`, `"base"`, or a list of name globs. Deserialization is hand-written (see
/// `trainable.rs`) so a bad value gets a clear message instead of serde's "did not match any variant".
/// [`Trainable::matches`] says whether a parameter name trains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Trainable {
    /// `"all"`, `"adapter"` or `"base"`.
    Group(TrainableGroup),
    /// Parameter-name globs; a parameter trains when any glob matches it.
    Globs(Vec<String>),
}

/// Named groups of parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainableGroup {
    /// Every parameter.
    All,
    /// Only the spatial adapter (`blocks.*.adapter_*`).
    Adapter,
    /// The layout path: the adapter and the layout encoder that feeds it (`box_mlp.*`,
    /// `layout_class_embed.*`). Like `adapter`, it leaves the image-only model untouched.
    Layout,
    /// Everything but the adapter.
    Base,
}

/// A learning-rate schedule: linear warmup, then constant / cosine / linear decay to `floor × lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0 at the start of the stage.
    pub warmup_steps: u64,
    /// Final rate as a fraction of `lr`, in [0, 1].
    pub floor: f64,
}

/// Shapes of a learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Constant at `lr`.
    Constant,
    /// Half-cosine from `lr` to `floor × lr`.
    Cosine,
    /// Straight line from `lr` to `floor × lr`.
    Linear,
}

/// Early stopping: stop the stage when `metric` has not improved by `min_delta` for `patience` evaluations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    /// Metric name: `loss`, `fid`, `top1`, `top2`, `top3` or `iou`.
    pub metric: String,
    /// Whether lower (`min`) or higher (`max`) is better.
    pub mode: MetricMode,
    /// Evaluations without improvement before the stage stops (≥ 1).
    pub patience: u32,
    /// Smallest change that counts as an improvement (≥ 0).
    pub min_delta: f64,
}

/// Direction in which a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricMode {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".to_string(),
            seed: 0,
            device: "auto".to_string(),
            threads: 0,
            precision: Precision::F32,
            task: TaskConfig::default(),
            dataset: DatasetConfig::default(),
            model: ModelConfig::default(),
            checkpoints: CheckpointConfig::default(),
            eval: EvalConfig::default(),
            stages: Vec::new(),
        }
    }
}

impl Default for DatasetConfig {
    fn default() -> Self {
        Self {
            kind: DatasetKind::Shapes,
            path: None,
            layouts: None,
            box_units: BoxUnits::Auto,
            resize: ResizeMode::CenterCrop,
            heldout_fraction: 0.1,
            variant: ShapesVariant::Plain,
            min_objects: 1,
            max_objects: 3,
            train_size: 50_000,
            subset_fraction: 1.0,
            seed: 0,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { preset: ModelPreset::Small, adapter: true, resolution: 32 }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { keep_last: 3, max_bad_steps: 5, on_nan: NanPolicy::Skip, rollback_lr_factor: 0.5, max_rollbacks: 3 }
    }
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            name: "stage".to_string(),
            steps: 100,
            trainable: Trainable::Group(TrainableGroup::All),
            batch_size: 32,
            grad_accum: 1,
            lr: 1e-3,
            schedule: ScheduleConfig::default(),
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.0,
            class_dropout: 0.1,
            layout_dropout: 0.0,
            object_loss_weight: 0.0,
            object_loss_mode: ObjectLossMode::Pixels,
            timestep_logit_mean: 0.0,
            log_every: 10,
            eval_every: 0,
            save_every: 0,
            sample_every: 0,
            early_stopping: None,
            warm_start: None,
            task: toml::Table::new(),
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_steps: 0, floor: 0.0 }
    }
}

impl Default for EarlyStoppingConfig {
    fn default() -> Self {
        Self { metric: "loss".to_string(), mode: MetricMode::Min, patience: 5, min_delta: 0.0 }
    }
}

impl ModelPreset {
    /// The preset's name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Base => "base",
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (typo'd key, wrong type, unknown preset...).
    ///
    /// `path` is the field path (`stages[0].steps`), the table holding an unknown key (`stages[0]` for a
    /// typo'd key inside the first stage), `(top level)`, or `(syntax)` for a TOML syntax error, whose
    /// message starts with `line L, column C: `. Schema messages end with `(line L, column C)` when the
    /// position is known.
    #[error("{origin}: {path}: {message}")]
    Parse {
        /// File name or `<string>`.
        origin: String,
        /// Field path such as `stages[1].lr`, or `(top level)`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The config parsed but breaks rules; every problem is listed.
    #[error("{origin}: {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// File name or `<string>`.
        origin: String,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

impl RunConfig {
    /// Parses TOML without validating; errors name the field path.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_error =
            |path: String, message: String| ConfigError::Parse { origin: origin.to_string(), path, message };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let (path, message) = parse::describe_syntax_error(text, &e);
            parse_error(path, message)
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let (path, message) = parse::describe_schema_error(text, &e);
            parse_error(path, message)
        })
    }

    /// A built-in preset by name (see [`PRESETS`]), parsed but not validated.
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Self::from_toml_str(text, &format!("assets/presets/{n}.toml")),
            None => {
                let available: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                Err(ConfigError::Parse {
                    origin: "presets".to_string(),
                    path: "(preset)".to_string(),
                    message: format!("no preset called {name:?} — available: {}", available.join(", ")),
                })
            }
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        let config = Self::from_toml_str(&text, &origin)?;
        config.validate().map_err(|issues| ConfigError::Invalid { origin, issues })?;
        Ok(config)
    }

    /// The config as TOML, every default filled in.
    pub fn to_toml_string(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Total optimizer steps of the plan (sum over stages).
    pub fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.steps).sum()
    }

    /// Each stage's `(name, start, end)` on the global step axis: the stage trains global steps
    /// `start..end` (`end` exclusive), and the next stage starts at `end`. A zero-step stage (which
    /// validation rejects) gets an empty range.
    pub fn stage_ledger(&self) -> Vec<(String, u64, u64)> {
        let mut start = 0u64;
        self.stages
            .iter()
            .map(|stage| {
                let end = start.saturating_add(stage.steps);
                let entry = (stage.name.clone(), start, end);
                start = end;
                entry
            })
            .collect()
    }

    /// The stage that trains global step `global_step` (0-based) and the step within that stage, or `None`
    /// once the plan is done (`global_step >= total_steps()`).
    pub fn stage_at(&self, global_step: u64) -> Option<(usize, u64)> {
        let mut start = 0u64;
        for (index, stage) in self.stages.iter().enumerate() {
            let end = start.saturating_add(stage.steps);
            if global_step < end {
                return Some((index, global_step - start));
            }
            start = end;
        }
        None
    }
}
