//! The task boundary: what a model brings to Wick, and nothing the engine owns.
//!
//! A [`Task`] supplies its model's variables (built under a `VarBuilder` with stable names), batches as a
//! pure function of a data cursor, the loss of a batch given the step's random stream, and optionally named
//! scalars per logged step, an evaluation into named [`MetricSpec`]s (each with its direction) and
//! [`Samples`] a person compares across checkpoints (an image grid, or text). Its own settings are the
//! run config's `[task]` table, described by a [`settings::Schema`] that validation and the window read.
//!
//! The engine ([`crate::train`]) owns everything else for every task: stages and `trainable` globs, AdamW,
//! schedules, clipping, accumulation, EMA, the NaN guard, checkpoints with manifests, exact resume, events,
//! the recorder, the best checkpoint, early stopping, the run directory.
//!
//! ```text
//! TaskDescriptor (kind, metrics, settings schema) ── config validation, the window's Setup, wick report
//! Task::init ─▶ variables (seeded) ─▶ engine: per stage Task::build(VarBuilder of trainable + frozen tensors)
//! Task::data(stage) ─▶ BatchSource on the prefetch thread ─▶ Task::loss_shards(model, batch, stage, step rng)
//!   (default: one shard, Task::loss) ─▶ shards' forward + backward on the compute threads ─▶ summed gradients
//! Task::gates / scalars every log_every; Task::evaluate(sampling weights) every eval_every; Task::samples
//! with every checkpoint ─▶ samples.png / samples.json (image grid) or samples.json (text)
//! ```
//!
//! Built-in tasks live in [`crate::tasks`]; a user's own task is started with [`crate::train::start_task`]
//! (see `examples/custom_task.rs`).

pub mod init;
pub mod registry;
pub mod settings;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::config::MetricMode;
use crate::config::{RunConfig, StageConfig};

/// A metric a task reports at evaluations: its name in evals.jsonl, how people read it, and its direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// Field name in evals.jsonl, e.g. `fid` or `exact_match`.
    pub name: String,
    /// Short name for tables and plots, e.g. `FID (judge)`.
    pub display: String,
    /// Whether lower or higher is better.
    pub mode: MetricMode,
}

impl MetricSpec {
    /// A metric called `name`, shown as `display`, better in direction `mode`.
    pub fn new(name: &str, display: &str, mode: MetricMode) -> Self {
        Self { name: name.to_string(), display: display.to_string(), mode }
    }
}

/// What a task's samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// No samples.
    #[default]
    None,
    /// An image grid (samples.png with samples.json describing its cells).
    Image,
    /// Text: completions of fixed prompts (samples.json).
    Text,
}

/// Everything the engine, validation and the window know about a kind of task before one is opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDescriptor {
    /// The `[task] kind` that selects it, e.g. `shapes`.
    pub kind: String,
    /// One line saying what it trains.
    pub summary: String,
    /// Metrics its evaluations report (besides the engine's own `loss`, the mean training loss since the
    /// previous evaluation). The first is its headline metric.
    pub metrics: Vec<MetricSpec>,
    /// What its samples are.
    pub samples: SampleKind,
    /// Its settings: the `[task]` table's keys (and `[stages.task]`'s, for those marked per stage).
    pub settings: settings::Schema,
}

impl TaskDescriptor {
    /// The metric called `name`: the task's own, or the engine's `loss`.
    pub fn metric(&self, name: &str) -> Option<MetricSpec> {
        if name == "loss" {
            return Some(MetricSpec::new("loss", "train loss", MetricMode::Min));
        }
        self.metrics.iter().find(|m| m.name == name).cloned()
    }

    /// Names of every metric a stage's early stopping or `eval.best_metric` may use.
    pub fn metric_names(&self) -> Vec<String> {
        std::iter::once("loss".to_string()).chain(self.metrics.iter().map(|m| m.name.clone())).collect()
    }
}

/// One text sample: a fixed prompt and what the model wrote after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSample {
    /// The prompt, the same at every checkpoint.
    pub prompt: String,
    /// The model's continuation.
    pub completion: String,
    /// The right continuation, when there is one (for exact-match tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
}

/// Samples of one checkpoint, as written into its directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// A PNG grid and the JSON that describes its cells.
    Image {
        /// samples.png.
        png: Vec<u8>,
        /// samples.json.
        json: Vec<u8>,
    },
    /// Text samples (samples.json).
    Text(Vec<TextSample>),
}

impl Samples {
    /// The files of these samples: `(file name, bytes)`.
    pub fn files(&self) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(match self {
            Self::Image { png, json } => vec![("samples.png", png.clone()), ("samples.json", json.clone())],
            Self::Text(samples) => vec![("samples.json", serde_json::to_vec_pretty(&TextSamplesFile::new(samples))?)],
        })
    }
}

/// samples.json of a text task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSamplesFile {
    /// Always `text`: tells this file from an image grid's description.
    pub kind: String,
    /// The samples, in prompt order.
    pub samples: Vec<TextSample>,
}

impl TextSamplesFile {
    /// The file holding `samples`.
    pub fn new(samples: &[TextSample]) -> Self {
        Self { kind: "text".to_string(), samples: samples.to_vec() }
    }

    /// Reads a checkpoint's samples.json when it holds text samples; `None` for an image grid's description.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("text") {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_value(value)
                .map_err(|e| anyhow::anyhow!("{} is not a text samples file: {e}", path.display()))?,
        ))
    }
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Metric values by name (names from the task's [`TaskDescriptor::metrics`]); a non-finite value is
    /// recorded as missing.
    pub metrics: Vec<(String, f64)>,
    /// Examples evaluated.
    pub examples: usize,
    /// Seconds spent generating on the trainer thread.
    pub sample_secs: f64,
    /// The checkpoint's samples, when the evaluation made them on the way (saves drawing them twice).
    pub samples: Option<Samples>,
}

/// Where an evaluation or a sample grid happens.
pub struct EvalContext<'a> {
    /// Global step of the weights.
    pub step: u64,
    /// The stage being trained.
    pub stage: &'a StageConfig,
    /// Title of the samples (the checkpoint's name, e.g. `step-00000400`).
    pub title: String,
    /// The run directory (tasks may write reports beside the engine's files).
    pub run_root: &'a Path,
}

/// Where a task is opened: the run's frozen config, its directory and device.
pub struct TaskContext<'a> {
    /// The run config (run.toml), every default filled in.
    pub config: &'a RunConfig,
    /// The run directory.
    pub run_root: &'a Path,
    /// The device the run trains on.
    pub device: &'a Device,
}

impl TaskContext<'_> {
    /// The runs folder's shared cache directory (decoded data, trained judges), when the run is in one.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        crate::run::data::runs_cache_dir(self.run_root)
    }
}

/// A part of a micro-batch's loss (see [`Task::loss_shards`]): `weight` times the loss `compute` returns.
pub struct LossShard<'a> {
    /// The shard's share of the micro-batch's loss (its examples over the batch's, for a mean).
    pub weight: f64,
    compute: Box<dyn FnOnce() -> Result<Tensor> + Send + 'a>,
}

impl<'a> LossShard<'a> {
    /// A shard whose loss `compute` builds (forward pass included) on the thread that runs it.
    pub fn new(weight: f64, compute: impl FnOnce() -> Result<Tensor> + Send + 'a) -> Self {
        Self { weight, compute: Box::new(compute) }
    }

    /// The whole micro-batch as one shard, its loss already computed.
    pub fn ready(loss: Tensor) -> Self {
        Self::new(1.0, move || Ok(loss))
    }

    /// The shard's loss tensor, with its graph.
    pub fn compute(self) -> Result<Tensor> {
        (self.compute)()
    }

    /// The same shard with its loss made NaN (fault injection for tests).
    pub(crate) fn poisoned(self) -> Self {
        let Self { weight, compute } = self;
        Self::new(weight, move || Ok((compute()? * f64::NAN)?))
    }
}

/// A source of training batches, run on the prefetch thread.
///
/// A batch must be a pure function of the source's seed, `cursor` (examples consumed before it) and `size`:
/// that is what makes a resumed run see the same data as an uninterrupted one.
pub trait BatchSource: Send + 'static {
    /// One batch.
    type Batch: Send + 'static;

    /// The `size` examples starting at data position `cursor`.
    fn batch(&mut self, cursor: u64, size: usize) -> Result<Self::Batch>;
}

/// A model Wick can train. See the module doc; `examples/custom_task.rs` is a complete one.
///
/// Parameter names are the task's own; those named `blocks.N.adapter_*` form the zero-initialised adapter
/// that the `adapter` / `base` trainable groups, the gate-collapse alert and warm starts know about.
pub trait Task: Send + 'static {
    /// The model, built on a `VarBuilder` (once per stage, and for sampling).
    type Model;
    /// Where a stage's batches come from.
    type Data: BatchSource;

    /// The kind, metrics, sample kind and settings schema (known before a task is opened).
    fn descriptor() -> TaskDescriptor
    where
        Self: Sized;

    /// The model on `vb`. The engine calls it with tracked variables for what a stage trains and detached
    /// tensors for what it freezes, and with the sampling weights for evaluation: it must only read `vb`.
    fn build(&self, vb: VarBuilder) -> candle_core::Result<Self::Model>;

    /// Fresh variables, a pure function of `seed`. The default builds the model under a VarBuilder that
    /// draws every variable from its own seeded stream (see [`init::seeded_varmap`]), honouring the `Init`
    /// hints of candle_nn's layers.
    fn init(&self, seed: u64, device: &Device) -> Result<VarMap> {
        init::seeded_varmap(seed, device, |vb| self.build(vb).map(|_| ()))
    }

    /// The batches of `stage`, ordered by the data-order seed `order_seed`.
    fn data(&self, stage: &StageConfig, order_seed: u64) -> Result<Self::Data>;

    /// The loss of one micro-batch: a scalar tensor. `rng` is the step's random stream (noise, dropout):
    /// draw from it only, so a resumed step draws the same numbers.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &<Self::Data as BatchSource>::Batch,
        stage: &StageConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor>;

    /// The loss of one micro-batch as [`LossShard`]s: parts of it whose losses, each times its weight, sum to
    /// [`Task::loss`]'s. On the CPU the engine computes the shards' losses and gradients on threads of their
    /// own (one shard per thread at a time, no barrier between ops) and adds them in shard order, so the
    /// result depends on the shards, never on the thread count. Draw from `rng` here, before returning, and
    /// in the same order as `loss` does. Split where [`crate::train::shard_ranges`] says (`device` is where
    /// the model runs: there is one shard off the CPU). The default is one shard: `loss` on this thread.
    fn loss_shards<'a>(
        &'a self,
        model: &'a Self::Model,
        batch: &'a <Self::Data as BatchSource>::Batch,
        stage: &'a StageConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<LossShard<'a>>> {
        Ok(vec![LossShard::ready(self.loss(model, batch, stage, rng)?)])
    }

    /// Warnings a batch carries (e.g. a box that had to be normalised); reported as events.
    fn take_warnings(&self, _batch: &mut <Self::Data as BatchSource>::Batch) -> Vec<String> {
        Vec::new()
    }

    /// Raw values of zero-initialised gates, logged every `log_every` steps and watched by the gate alerts.
    fn gates(&self, _model: &Self::Model) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }

    /// Other named scalars to log with every `log_every` step (`group/name` groups them in the window).
    fn scalars(&self, _model: &Self::Model) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }

    /// Evaluates the sampling weights (EMA when kept and asked for); `None` when the task has no evaluation.
    fn evaluate(&mut self, _model: &Self::Model, _ctx: &EvalContext) -> Result<Option<Evaluation>> {
        Ok(None)
    }

    /// The samples of the sampling weights, saved with every checkpoint; `None` when the task has none.
    fn samples(&mut self, _model: &Self::Model, _ctx: &EvalContext) -> Result<Option<Samples>> {
        Ok(None)
    }
}
