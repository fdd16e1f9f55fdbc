//! Side-by-side samples of checkpoints (or of one checkpoint at several gate scales) on identical inputs:
//! what `wick sample` writes and the GUI's Compare panel shows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::grid::{render_grid, RenderedGrid};
use super::sampler::{sample_images, EvalSet, SamplerConfig};
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::model::{load_model, spec_from_weights, Denoiser, ModelSpec};

/// EMA weights file of a checkpoint.
pub const EMA_FILE: &str = "ema.safetensors";

/// A checkpoint's denoiser, with EMA weights when asked and present. Returns the model and which file it used.
pub fn load_checkpoint_model(checkpoint: &Path, use_ema: bool, device: &Device) -> Result<(Denoiser, PathBuf)> {
    let raw = if checkpoint.is_dir() { checkpoint.join("model.safetensors") } else { checkpoint.to_path_buf() };
    if !raw.is_file() {
        bail!("{} holds no model.safetensors — is it a checkpoint directory?", checkpoint.display());
    }
    let ema = raw.with_file_name(EMA_FILE);
    let file = if use_ema && ema.is_file() { ema } else { raw.clone() };
    let spec = spec_from_weights(&raw)?;
    let (_, model) = load_model(spec, &file, device)?;
    Ok((model, file))
}

/// The run a checkpoint belongs to (`<run>/checkpoints/step-N/`): its root and frozen config, or `None` for a
/// checkpoint outside a run (then the defaults — the shapes task — apply).
pub fn run_of_checkpoint(checkpoint: &Path) -> Option<(PathBuf, RunConfig)> {
    let run = checkpoint.parent().and_then(Path::parent)?;
    let text = std::fs::read_to_string(run.join("run.toml")).ok()?;
    let config = RunConfig::from_toml_str(&text, "run.toml").ok()?;
    Some((run.to_path_buf(), config))
}

/// The data a checkpoint was trained on, for its model `spec`: its run's dataset with the run's split (so
/// the held-out images stay held out), or the shapes task for a checkpoint outside a run.
pub fn dataset_of_checkpoint(checkpoint: &Path, spec: &ModelSpec) -> Result<(Dataset, RunConfig)> {
    match run_of_checkpoint(checkpoint) {
        Some((run, config)) => {
            let dataset = crate::run::data::open_run_dataset(&run, &config, spec, false, |_| {})
                .with_context(|| format!("the data of the run {}", run.display()))?;
            Ok((dataset, config))
        }
        None => {
            let config = RunConfig::default();
            let dataset = Dataset::open(
                &config.dataset,
                spec.image_size,
                spec.slots,
                spec.null_class(),
                &crate::data::FolderOptions::default(),
                |_| {},
            )?;
            Ok((dataset, config))
        }
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareRequest {
    /// Checkpoint directories, one column each (or a single one with several gate scales).
    pub checkpoints: Vec<PathBuf>,
    /// Gate scales; with one checkpoint, one column per scale.
    pub gate_scales: Vec<f64>,
    /// Seed of the fixed noise.
    pub seed: u64,
    /// Rows (fixed inputs).
    pub count: usize,
    /// Sampler settings (its gate_scale is overridden per column).
    pub sampler: SamplerConfig,
    /// Pixels per image pixel in the grid.
    pub scale: u32,
    /// A first column of the real held-out images the rows' layouts come from: what the columns aim at.
    pub real_images: bool,
}

/// Title of the column of real images.
pub const REAL_COLUMN_TITLE: &str = "real (held-out)";

/// Samples every column on the same inputs and renders the grid; `progress(done, total)` after each column.
pub fn compare_grid(
    request: &CompareRequest,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<RenderedGrid> {
    let Some(first) = request.checkpoints.first() else { bail!("no checkpoint to sample") };
    if request.checkpoints.len() > 1 && request.gate_scales.len() > 1 {
        bail!("give several checkpoints or several gate scales, not both");
    }
    let mut columns = Vec::new();
    let mut titles = Vec::new();
    let scales =
        if request.gate_scales.is_empty() { vec![request.sampler.gate_scale] } else { request.gate_scales.clone() };
    let jobs: Vec<(PathBuf, f64)> = if request.checkpoints.len() == 1 {
        scales.iter().map(|s| (first.clone(), *s)).collect()
    } else {
        request.checkpoints.iter().map(|c| (c.clone(), scales[0])).collect()
    };
    let mut set: Option<EvalSet> = None;
    let mut dataset: Option<Dataset> = None;
    let mut null_class = 0;
    for (index, (checkpoint, gate_scale)) in jobs.iter().enumerate() {
        let (model, _) = load_checkpoint_model(checkpoint, request.sampler.use_ema, device)?;
        let spec = model.spec();
        null_class = spec.null_class();
        let set = match &mut set {
            Some(set) => {
                anyhow::ensure!(
                    set.image_size == spec.image_size && set.class_names.len() == spec.classes,
                    "{} is a {}-pixel model of {} classes; the first column's is {} pixels and {} classes",
                    checkpoint.display(),
                    spec.image_size,
                    spec.classes,
                    set.image_size,
                    set.class_names.len()
                );
                set
            }
            None => {
                let data = dataset.insert(dataset_of_checkpoint(first, &spec)?.0);
                set.insert(EvalSet::fixed(data, request.seed, request.count))
            }
        };
        let config = SamplerConfig { gate_scale: *gate_scale, ..request.sampler };
        let images = sample_images(&model, set, &config, spec.null_class(), device)
            .with_context(|| format!("sampling {}", checkpoint.display()))?;
        columns.push(images);
        let name = checkpoint.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        titles.push(if jobs.len() > 1 && request.checkpoints.len() == 1 {
            format!("{name} gate×{gate_scale}")
        } else {
            name
        });
        progress(index + 1, jobs.len());
    }
    let set = set.context("nothing was sampled")?;
    if let Some(dataset) = dataset.filter(|_| request.real_images) {
        columns.insert(0, set.real_images(&dataset));
        titles.insert(0, REAL_COLUMN_TITLE.to_string());
    }
    render_grid(&titles, &columns, &set, request.scale, null_class)
}

/// Scores one checkpoint the way a run's evaluation does (FID, top-k, IoU on `samples` fixed inputs drawn
/// from `seed`), with any sampler settings: how a user checks whether more steps, another guidance scale or a
/// gate scale would have scored better, without training again. Real statistics (and a folder's judge) are
/// cached in the checkpoint's runs folder (`<runs>/.cache`), or in `cache_dir` for a checkpoint outside a run.
pub fn evaluate_checkpoint(
    checkpoint: &Path,
    sampler: &SamplerConfig,
    seed: u64,
    samples: usize,
    cache_dir: Option<&Path>,
    device: &Device,
) -> Result<super::worker::Scores> {
    use super::worker::{dataset_key, judge_for_run, real_stats, score_images};
    let (model, _) = load_checkpoint_model(checkpoint, sampler.use_ema, device)?;
    let spec = model.spec();
    let (dataset, config) = dataset_of_checkpoint(checkpoint, &spec)?;
    // A checkpoint of a run uses its runs folder's cache (where the run's judge already is).
    let run_cache = run_of_checkpoint(checkpoint).and_then(|(run, _)| crate::run::data::runs_cache_dir(&run));
    let cache_dir = run_cache.as_deref().or(cache_dir);
    let set = EvalSet::fixed(&dataset, seed, samples);
    let (judge, judge_key, _) = judge_for_run(&config, &dataset, cache_dir, device, |_, _| {})?;
    let dataset_key = dataset_key(&dataset, &config.dataset)?;
    let real = real_stats(&judge, &judge_key, &dataset, &dataset_key, samples, cache_dir, device)?;
    let images = sample_images(&model, &set, sampler, spec.null_class(), device)
        .with_context(|| format!("sampling {}", checkpoint.display()))?;
    score_images(&judge, &real, &set, &images, device)
}

/// Text samples of several checkpoints side by side: one row per fixed prompt, one column per checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TextComparison {
    /// Column titles: the checkpoints' names.
    pub columns: Vec<String>,
    /// The rows, in prompt order.
    pub rows: Vec<TextRow>,
}

/// One prompt across checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct TextRow {
    /// The prompt.
    pub prompt: String,
    /// The right continuation, when the task knows it.
    pub expected: Option<String>,
    /// Each checkpoint's completion, in column order.
    pub completions: Vec<String>,
}

/// The text samples (samples.json) of `checkpoints` side by side; `None` when the first checkpoint's samples
/// are not text (an image task). Every checkpoint must hold text samples of the same prompts.
pub fn text_comparison(checkpoints: &[PathBuf]) -> Result<Option<TextComparison>> {
    let mut columns = Vec::new();
    let mut rows: Vec<TextRow> = Vec::new();
    for (column, dir) in checkpoints.iter().enumerate() {
        let path = dir.join("samples.json");
        let file = match crate::task::TextSamplesFile::read(&path) {
            Ok(Some(file)) => file,
            // The first checkpoint's samples are not text (or unreadable): an image task's comparison.
            Ok(None) | Err(_) if column == 0 => return Ok(None),
            Ok(None) => anyhow::bail!("{} holds no text samples", path.display()),
            Err(e) => return Err(e),
        };
        columns.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        for (i, sample) in file.samples.iter().enumerate() {
            if column == 0 {
                rows.push(TextRow {
                    prompt: sample.prompt.clone(),
                    expected: sample.expected.clone(),
                    completions: Vec::new(),
                });
            }
            match rows.get_mut(i) {
                Some(row) if row.prompt == sample.prompt => row.completions.push(sample.completion.clone()),
                _ => anyhow::bail!(
                    "{}: prompt {} is {:?}, not the one of {} — these checkpoints are not of one run's task",
                    path.display(),
                    i + 1,
                    sample.prompt,
                    checkpoints[0].display()
                ),
            }
        }
    }
    rows.retain(|r| r.completions.len() == columns.len());
    Ok(Some(TextComparison { columns, rows }))
}

/// The comparison as aligned text: a column per checkpoint, `✓` after a completion equal to the expected
/// answer, `*` after one that differs from the column to its left.
pub fn format_text_comparison(table: &TextComparison) -> String {
    let show = |s: &str| s.replace('\n', "⏎");
    let width = |items: &mut dyn Iterator<Item = usize>| items.max().unwrap_or(0);
    let prompt_w = width(&mut table.rows.iter().map(|r| r.prompt.chars().count())).max(6);
    let expected_w = width(&mut table.rows.iter().map(|r| r.expected.as_deref().map_or(0, |e| e.chars().count())));
    let column_w: Vec<usize> = (0..table.columns.len())
        .map(|c| {
            let title = crate::eval::grid::short_title(&table.columns[c]).chars().count();
            width(&mut table.rows.iter().map(|r| show(&r.completions[c]).chars().count() + 2)).max(title)
        })
        .collect();
    let mut out = format!("{:<prompt_w$}", "prompt");
    if expected_w > 0 {
        out.push_str(&format!("  {:<w$}", "expected", w = expected_w.max(8)));
    }
    for (c, title) in table.columns.iter().enumerate() {
        out.push_str(&format!("  {:<w$}", crate::eval::grid::short_title(title), w = column_w[c]));
    }
    out.push('\n');
    for row in &table.rows {
        out.push_str(&format!("{:<prompt_w$}", row.prompt));
        if expected_w > 0 {
            out.push_str(&format!("  {:<w$}", row.expected.as_deref().unwrap_or(""), w = expected_w.max(8)));
        }
        for (c, completion) in row.completions.iter().enumerate() {
            let right = row.expected.as_deref() == Some(completion.as_str());
            let changed = c > 0 && row.completions[c - 1] != *completion;
            let mark = format!("{}{}", if right { "✓" } else { "" }, if changed { "*" } else { "" });
            out.push_str(&format!("  {:<w$}", format!("{}{mark}", show(completion)), w = column_w[c]));
        }
        out.push('\n');
    }
    out.push_str("\n✓ = the expected answer; * = differs from the column to its left\n");
    out
}

/// Which characters of `text` differ from `other` at the same position (extra characters differ).
pub fn differing_chars(text: &str, other: &str) -> Vec<bool> {
    let other: Vec<char> = other.chars().collect();
    text.chars().enumerate().map(|(i, c)| other.get(i) != Some(&c)).collect()
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn differing_characters_are_marked_position_by_position() {
        assert_eq!(differing_chars("142", "42"), vec![true, true, true]);
        assert_eq!(differing_chars("43", "42"), vec![false, true]);
        assert_eq!(differing_chars("42", "42"), vec![false, false]);
    }

    #[test]
    fn checkpoints_of_text_samples_line_up_by_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, completions: [&str; 2]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).unwrap();
            let samples: Vec<crate::task::TextSample> = ["1+2=", "3+4="]
                .iter()
                .zip(completions)
                .map(|(p, c)| crate::task::TextSample {
                    prompt: p.to_string(),
                    completion: c.to_string(),
                    expected: None,
                })
                .collect();
            let file = crate::task::TextSamplesFile::new(&samples);
            std::fs::write(path.join("samples.json"), serde_json::to_vec(&file).unwrap()).unwrap();
            path
        };
        let a = write("step-00000010", ["4", "8"]);
        let b = write("step-00000020", ["3", "7"]);
        let table = text_comparison(&[a, b]).unwrap().unwrap();
        assert_eq!(table.columns, vec!["step-00000010", "step-00000020"]);
        assert_eq!(table.rows[1].completions, vec!["8", "7"]);
    }
}
