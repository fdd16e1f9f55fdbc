//! The `chars` task: a character-level transformer language model ([`model::CharModel`]) trained on a
//! UTF-8 text file, or with no data at all on built-in lines of integer addition (`17+25=42`).
//!
//! - Settings: the `[task]` table (see [`CharsTask::schema`]); `digits` may change per stage, which is how
//!   a curriculum goes from short sums to longer ones.
//! - Metrics at every evaluation: `exact_match` (greedy completions of held-out prompts such as `17+25=`
//!   that give exactly `42`), `val_loss` (held-out cross-entropy, nats per character) and `bpc` (the same in
//!   bits per character).
//! - Samples: completions of fixed held-out prompts, saved with every checkpoint as text and compared side
//!   by side in the window.
//! - The run directory gets `chars.json`: the text's source, sha256, vocabulary and split sizes. A resumed
//!   run refuses a text file that changed since.

pub mod data;
pub mod model;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use self::data::{read_text, CharBatch, Sums, TextCorpus, TrainWindows, Vocab, Windows, SUMS_VOCAB};
use self::model::{CharModel, CharModelSpec};
use crate::config::{MetricMode, StageConfig};
use crate::task::settings::Schema;
use crate::task::{
    EvalContext, Evaluation, MetricSpec, SampleKind, Samples, Task, TaskContext, TaskDescriptor, TextSample,
};

/// Held-out windows the validation loss is computed on.
const VALIDATION_WINDOWS: usize = 256;

/// Prompts completed per forward pass.
const GENERATE_BATCH: usize = 256;

/// The file in the run directory that pins the text, its vocabulary and its split.
pub const CHARS_FILE: &str = "chars.json";

/// The chars task's settings (the `[task]` table, a stage's `[stages.task]` over it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CharsSettings {
    /// A UTF-8 text file; empty = the built-in sums.
    pub text: String,
    /// Built-in sums: most digits of each operand.
    pub digits: i64,
    /// Fraction held out (sum pairs, or blocks of 1,024 characters of a file).
    pub heldout_fraction: f64,
    /// Seed of the training / held-out split (stored in the run with the rest of run.toml).
    pub split_seed: i64,
    /// Characters the model sees at once.
    pub context: i64,
    /// Width of the residual stream.
    pub width: i64,
    /// Transformer blocks.
    pub layers: i64,
    /// Attention heads (divides `width`).
    pub heads: i64,
    /// Built-in sums: digits of the held-out sums that exact-match and the validation loss judge (0 = `digits`).
    pub eval_digits: i64,
    /// Held-out prompts completed for exact-match.
    pub eval_prompts: i64,
    /// Prompts completed for the samples of each checkpoint.
    pub sample_prompts: i64,
    /// Most characters a completion writes.
    pub max_new_chars: i64,
    /// A text file: in held-out lines, what ends a prompt (exact-match completes the rest of the line).
    pub separator: String,
}

/// One prompt and its expected continuation.
#[derive(Debug, Clone, PartialEq)]
struct Prompt {
    prompt: String,
    expected: Option<String>,
}

/// `chars.json`: what the run's text was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharsRecord {
    /// `sums`, or the text file's path.
    pub source: String,
    /// sha256 of the text file (empty for the sums).
    pub sha256: String,
    /// The vocabulary, in token order.
    pub vocab: String,
    /// Characters of the training part (0 for the sums: they are drawn, not stored).
    pub train_chars: usize,
    /// Characters of the held-out part.
    pub heldout_chars: usize,
}

/// Where the text comes from.
enum Source {
    Sums(Sums),
    Text(Arc<TextCorpus>),
}

/// The chars task of one run.
pub struct CharsTask {
    run_table: toml::Table,
    settings: CharsSettings,
    source: Source,
    vocab: Vocab,
    spec: CharModelSpec,
    device: Device,
    eval_seed: u64,
    /// Held-out windows of the validation loss (made when first needed).
    validation: Option<(Tensor, Tensor)>,
    eval_prompts: Vec<Prompt>,
    sample_prompts: Vec<Prompt>,
}

impl CharsTask {
    /// The settings' schema: names, defaults, ranges and help.
    pub fn schema() -> Schema {
        Schema::default()
            .path("text", "Text file", "a UTF-8 text file to learn; empty = the built-in sums (17+25=42)")
            .integer("digits", "Digits", 2, (1, 6), "built-in sums: most digits of each operand")
            .per_stage()
            .float("heldout_fraction", "Held out", 0.1, (0.01, 0.5), "fraction of the sums (or the file) held out")
            .integer("split_seed", "Split seed", 0, (0, i64::MAX), "seed of the training / held-out split")
            .integer("context", "Context", 32, (4, 1024), "characters the model sees at once")
            .integer("width", "Width", 128, (8, 2048), "width of the residual stream (a multiple of heads)")
            .integer("layers", "Layers", 2, (1, 48), "transformer blocks")
            .integer("heads", "Heads", 4, (1, 64), "attention heads per block")
            .integer("eval_digits", "Eval digits", 0, (0, 6), "built-in sums: digits of the judged sums; 0 = digits")
            .integer("eval_prompts", "Eval prompts", 500, (1, 100_000), "held-out prompts judged by exact-match")
            .integer("sample_prompts", "Sample prompts", 8, (1, 64), "prompts completed for each checkpoint")
            .integer("max_new_chars", "Max new chars", 24, (1, 1024), "most characters a completion writes")
            .text("separator", "Separator", "=", "text file: held-out lines are prompt + separator + answer")
    }

    /// Opens the run's text: the built-in sums, or the file (checked: missing, empty, binary and non-UTF-8
    /// files are refused naming it). Writes `chars.json` on the first start and checks it on a resume.
    pub fn open(ctx: &TaskContext) -> Result<Self> {
        let schema = Self::schema();
        let run_table = ctx.config.task.settings.clone();
        let settings: CharsSettings = schema.resolve(&run_table, None)?;
        let context = usize::try_from(settings.context).context("task.context")?;
        let (source, vocab, record) = if settings.text.is_empty() {
            let sums = Sums { split_seed: settings.split_seed as u64, heldout_fraction: settings.heldout_fraction };
            let vocab = Vocab { chars: SUMS_VOCAB.chars().collect() };
            let record = CharsRecord {
                source: "sums".to_string(),
                sha256: String::new(),
                vocab: SUMS_VOCAB.to_string(),
                train_chars: 0,
                heldout_chars: 0,
            };
            (Source::Sums(sums), vocab, record)
        } else {
            let corpus = read_text(
                &PathBuf::from(&settings.text),
                settings.heldout_fraction,
                settings.split_seed as u64,
                context + 1,
            )?;
            let record = CharsRecord {
                source: settings.text.clone(),
                sha256: corpus.sha256.clone(),
                vocab: corpus.vocab.chars.iter().collect(),
                train_chars: corpus.train.len(),
                heldout_chars: corpus.heldout.len(),
            };
            tracing::info!(
                "text {}: {} training and {} held-out characters, {} distinct",
                settings.text,
                corpus.train.len(),
                corpus.heldout.len(),
                corpus.vocab.len()
            );
            let vocab = corpus.vocab.clone();
            (Source::Text(Arc::new(corpus)), vocab, record)
        };
        let record_path = ctx.run_root.join(CHARS_FILE);
        if record_path.is_file() {
            let bytes =
                std::fs::read(&record_path).with_context(|| format!("cannot read {}", record_path.display()))?;
            let earlier: CharsRecord =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", record_path.display()))?;
            if earlier != record {
                bail!(
                    "{}: the run was trained on {} (sha256 {}), but {} now reads differently (sha256 {}) — restore \
                     the file, or start a new run",
                    record_path.display(),
                    earlier.source,
                    if earlier.sha256.is_empty() { "-" } else { &earlier.sha256 },
                    record.source,
                    if record.sha256.is_empty() { "-" } else { &record.sha256 }
                );
            }
        } else {
            crate::run::atomic::atomic_write(&record_path, &serde_json::to_vec_pretty(&record)?)?;
        }
        let spec = CharModelSpec {
            vocab: vocab.len(),
            context,
            width: settings.width as usize,
            layers: settings.layers as usize,
            heads: settings.heads as usize,
        };
        if spec.width % spec.heads != 0 {
            bail!("task.width: {} is not a multiple of task.heads ({})", spec.width, spec.heads);
        }
        let mut task = Self {
            run_table,
            settings,
            source,
            vocab,
            spec,
            device: ctx.device.clone(),
            eval_seed: ctx.config.eval.seed,
            validation: None,
            eval_prompts: Vec::new(),
            sample_prompts: Vec::new(),
        };
        let count = (task.settings.eval_prompts.max(task.settings.sample_prompts)) as usize;
        let prompts = task.heldout_prompts(count);
        task.sample_prompts = prompts.iter().take(task.settings.sample_prompts as usize).cloned().collect();
        task.eval_prompts =
            prompts.into_iter().filter(|p| p.expected.is_some()).take(task.settings.eval_prompts as usize).collect();
        Ok(task)
    }

    /// Digits of the judged sums.
    fn eval_digits(&self) -> u32 {
        let d = if self.settings.eval_digits > 0 { self.settings.eval_digits } else { self.settings.digits };
        d as u32
    }

    /// Windows of the held-out part (sums at the judged digits).
    fn heldout_windows(&self) -> Windows {
        match &self.source {
            Source::Sums(sums) => Windows::Sums { sums: *sums, digits: self.eval_digits(), vocab: self.vocab.clone() },
            Source::Text(corpus) => Windows::Text { tokens: Arc::clone(&corpus.heldout) },
        }
    }

    /// Fixed held-out prompts: sums `a+b=` with their answers, or for a text file, held-out lines cut at
    /// the separator (with the rest of the line expected), else the starts of held-out lines.
    fn heldout_prompts(&self, count: usize) -> Vec<Prompt> {
        match &self.source {
            Source::Sums(sums) => sums
                .heldout_pairs(self.eval_digits(), count, self.eval_seed)
                .into_iter()
                .map(|(a, b)| Prompt { prompt: format!("{a}+{b}="), expected: Some((a + b).to_string()) })
                .collect(),
            Source::Text(corpus) => {
                let text = self.vocab.decode(&corpus.heldout);
                let separator = &self.settings.separator;
                let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
                let with_answer: Vec<Prompt> = lines
                    .iter()
                    .filter_map(|l| {
                        if separator.is_empty() {
                            return None;
                        }
                        let at = l.rfind(separator.as_str())? + separator.len();
                        let (prompt, answer) = l.split_at(at);
                        (!answer.trim().is_empty())
                            .then(|| Prompt { prompt: prompt.to_string(), expected: Some(answer.to_string()) })
                    })
                    .take(count)
                    .collect();
                if !with_answer.is_empty() {
                    return with_answer;
                }
                let keep = (self.spec.context / 2).max(1);
                lines
                    .iter()
                    .take(count)
                    .map(|l| Prompt { prompt: l.chars().take(keep).collect(), expected: None })
                    .collect()
            }
        }
    }

    /// What a prompt is fed as: after a newline, as lines start in training, when the text has newlines.
    fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        let prefix = if self.vocab.chars.contains(&'\n') { "\n" } else { "" };
        self.vocab.encode(&format!("{prefix}{prompt}"))
    }

    /// Greedy completions of `prompts`, each up to the first newline or `max_new` characters.
    fn complete(&self, model: &CharModel, prompts: &[Prompt], max_new: usize) -> Result<Vec<String>> {
        let newline = self.vocab.chars.iter().position(|&c| c == '\n').map(|i| i as u32);
        let encoded: Vec<Vec<u32>> = prompts.iter().map(|p| self.prompt_tokens(&p.prompt)).collect::<Result<_>>()?;
        let mut completions = vec![Vec::<u32>::new(); prompts.len()];
        // Prompts of one length run together, so every row of a forward pass has the same positions.
        let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, tokens) in encoded.iter().enumerate() {
            by_length.entry(tokens.len()).or_default().push(i);
        }
        for rows in by_length.values() {
            for chunk in rows.chunks(GENERATE_BATCH) {
                let mut sequences: Vec<Vec<u32>> = chunk.iter().map(|&i| encoded[i].clone()).collect();
                let mut done = vec![false; chunk.len()];
                for _ in 0..max_new {
                    let len = sequences[0].len().min(self.spec.context);
                    let window: Vec<u32> = sequences.iter().flat_map(|s| s[s.len() - len..].iter().copied()).collect();
                    let tokens = Tensor::from_vec(window, (chunk.len(), len), &self.device)?;
                    let logits = model.forward(&tokens)?.reshape((chunk.len(), len, self.spec.vocab))?;
                    let next = logits.narrow(1, len - 1, 1)?.squeeze(1)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
                    for (row, &token) in next.iter().enumerate() {
                        sequences[row].push(token);
                        if !done[row] {
                            if Some(token) == newline {
                                done[row] = true;
                            } else {
                                completions[chunk[row]].push(token);
                            }
                        }
                    }
                    if done.iter().all(|&d| d) {
                        break;
                    }
                }
            }
        }
        Ok(completions.iter().map(|c| self.vocab.decode(c)).collect())
    }

    /// Mean held-out cross-entropy of `model` over the fixed validation windows (nats per character).
    fn validation_loss(&mut self, model: &CharModel) -> Result<f64> {
        if self.validation.is_none() {
            let batch: CharBatch =
                self.heldout_windows().batch(self.eval_seed, 0, VALIDATION_WINDOWS, self.spec.context, true)?;
            let shape = (batch.size, batch.context);
            self.validation = Some((
                Tensor::from_vec(batch.tokens, shape, &self.device)?,
                Tensor::from_vec(batch.targets, shape, &self.device)?,
            ));
        }
        let (tokens, targets) = self.validation.as_ref().context("validation windows")?;
        let mut total = 0.0;
        let chunk = 64;
        let mut start = 0;
        while start < VALIDATION_WINDOWS {
            let n = chunk.min(VALIDATION_WINDOWS - start);
            let loss = model.loss(&tokens.narrow(0, start, n)?, &targets.narrow(0, start, n)?)?;
            total += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            start += n;
        }
        Ok(total / VALIDATION_WINDOWS as f64)
    }

    fn text_samples(&self, model: &CharModel) -> Result<Vec<TextSample>> {
        let completions = self.complete(model, &self.sample_prompts, self.settings.max_new_chars as usize)?;
        Ok(self
            .sample_prompts
            .iter()
            .zip(completions)
            .map(|(p, completion)| TextSample { prompt: p.prompt.clone(), completion, expected: p.expected.clone() })
            .collect())
    }
}

impl Task for CharsTask {
    type Model = CharModel;
    type Data = TrainWindows;

    fn descriptor() -> TaskDescriptor {
        TaskDescriptor {
            kind: "chars".to_string(),
            summary: "a character-level transformer language model, on your text file or built-in sums".to_string(),
            metrics: vec![
                MetricSpec::new("exact_match", "exact match", MetricMode::Max),
                MetricSpec::new("val_loss", "held-out loss", MetricMode::Min),
                MetricSpec::new("bpc", "bits/char", MetricMode::Min),
            ],
            samples: SampleKind::Text,
            settings: Self::schema(),
        }
    }

    fn build(&self, vb: VarBuilder) -> candle_core::Result<CharModel> {
        CharModel::new(self.spec, vb)
    }

    fn data(&self, stage: &StageConfig, order_seed: u64) -> Result<TrainWindows> {
        let settings: CharsSettings = Self::schema().resolve(&self.run_table, Some(&stage.task))?;
        let windows = match &self.source {
            Source::Sums(sums) => {
                Windows::Sums { sums: *sums, digits: settings.digits as u32, vocab: self.vocab.clone() }
            }
            Source::Text(corpus) => Windows::Text { tokens: Arc::clone(&corpus.train) },
        };
        Ok(TrainWindows { windows, seed: order_seed, context: self.spec.context })
    }

    fn loss(
        &self,
        model: &CharModel,
        batch: &CharBatch,
        _stage: &StageConfig,
        _rng: &mut ChaCha8Rng,
    ) -> Result<Tensor> {
        let shape = (batch.size, batch.context);
        let tokens = Tensor::from_slice(&batch.tokens, shape, &self.device)?;
        let targets = Tensor::from_slice(&batch.targets, shape, &self.device)?;
        Ok(model.loss(&tokens, &targets)?)
    }

    fn evaluate(&mut self, model: &CharModel, _ctx: &EvalContext) -> Result<Option<Evaluation>> {
        let start = Instant::now();
        let val_loss = self.validation_loss(model)?;
        let mut metrics = Vec::new();
        if !self.eval_prompts.is_empty() {
            let max_new = self.eval_prompts.iter().filter_map(|p| p.expected.as_ref()).map(|e| e.chars().count()).max();
            let completions = self.complete(model, &self.eval_prompts, max_new.unwrap_or(1) + 1)?;
            let right = self
                .eval_prompts
                .iter()
                .zip(&completions)
                .filter(|(p, c)| p.expected.as_deref() == Some(c.as_str()))
                .count();
            metrics.push(("exact_match".to_string(), right as f64 / self.eval_prompts.len() as f64));
        }
        metrics.push(("val_loss".to_string(), val_loss));
        metrics.push(("bpc".to_string(), val_loss / std::f64::consts::LN_2));
        let samples = Samples::Text(self.text_samples(model)?);
        Ok(Some(Evaluation {
            metrics,
            examples: self.eval_prompts.len(),
            sample_secs: start.elapsed().as_secs_f64(),
            samples: Some(samples),
        }))
    }

    fn samples(&mut self, model: &CharModel, _ctx: &EvalContext) -> Result<Option<Samples>> {
        Ok(Some(Samples::Text(self.text_samples(model)?)))
    }
}
