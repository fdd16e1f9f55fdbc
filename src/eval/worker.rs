//! The evaluation worker: judges generated images on its own thread (features → FID against cached real
//! statistics, top-k of the requested class, IoU of the requested box) while the trainer writes its
//! checkpoint. The trainer pays for the sampling; the judging overlaps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::fid::GaussianStats;
use super::judge::{train_judge, JudgeReport, JudgeTrainConfig};
use super::sampler::EvalSet;
use super::scores::{mean_iou, top_k_all};
use crate::config::RunConfig;
use crate::data::{make_heldout_batch, Dataset};
use crate::model::judge::{load_judge, load_judge_bytes, Judge, JUDGE_FEATURES};
use crate::run::atomic::atomic_write;
use crate::run::checkpoint::sha256_hex;

/// The built-in judge of the shapes task (`wick judge train` writes it; committed under assets/judge/).
pub const BUILTIN_JUDGE: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/judge/shapes.safetensors"));

/// Images judged per forward pass.
const JUDGE_BATCH: usize = 250;

/// What the judge makes of a set of images.
pub struct Judged {
    /// Features [count × JUDGE_FEATURES].
    pub features: Vec<f32>,
    /// Class logits [count × the judge's classes].
    pub logits: Vec<f32>,
    /// Main-object boxes.
    pub boxes: Vec<[f32; 4]>,
}

/// Runs the judge over `count` images [count, 3, H, W].
pub fn judge_images(judge: &Judge, images: &[f32], count: usize, side: usize, device: &Device) -> Result<Judged> {
    let image_len = 3 * side * side;
    let mut out = Judged { features: Vec::new(), logits: Vec::new(), boxes: Vec::new() };
    let mut start = 0;
    while start < count {
        let n = JUDGE_BATCH.min(count - start);
        let x =
            Tensor::from_vec(images[start * image_len..(start + n) * image_len].to_vec(), (n, 3, side, side), device)?;
        let judged = judge.forward(&x)?;
        out.features.extend(judged.features.flatten_all()?.to_vec1::<f32>()?);
        out.logits.extend(judged.logits.flatten_all()?.to_vec1::<f32>()?);
        out.boxes.extend(judged.boxes.to_vec2::<f32>()?.into_iter().map(|b| [b[0], b[1], b[2], b[3]]));
        start += n;
    }
    Ok(out)
}

/// Cached Gaussian statistics of real images' judge features.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RealStatsCache {
    key: String,
    stats: GaussianStats,
}

/// The judge named by a config (`None` = built-in) and a key that identifies its weights.
pub fn open_judge(path: Option<&Path>, device: &Device) -> Result<(Judge, String)> {
    match path {
        None => Ok((load_judge_bytes(BUILTIN_JUDGE, device).context("the built-in judge")?, sha256_hex(BUILTIN_JUDGE))),
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read the judge {}", path.display()))?;
            Ok((load_judge(path, device)?, sha256_hex(&bytes)))
        }
    }
}

/// What a cache key adds for the device a result was computed on: nothing for the CPU (so caches made before
/// keys named devices stay valid), `|cuda` or `|metal` otherwise (GPU kernels round differently, so their
/// results are cached apart).
fn device_cache_tag(device: &Device) -> &'static str {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "",
        candle_core::DeviceLocation::Cuda { .. } => "|cuda",
        candle_core::DeviceLocation::Metal { .. } => "|metal",
    }
}

/// The judge a run's evaluation uses, a key identifying its weights, and — for a judge trained here — its
/// report: the config's `eval.judge` file; else for the shapes task the built-in judge; else (a folder) a
/// judge trained on the dataset's training images, cached in `cache_dir` per dataset content.
pub fn judge_for_run(
    config: &RunConfig,
    dataset: &Dataset,
    cache_dir: Option<&Path>,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Judge, String, Option<JudgeReport>)> {
    let folder = match (config.eval.judge.as_deref(), dataset) {
        (Some(path), _) => {
            let (judge, key) = open_judge(Some(path), device)?;
            anyhow::ensure!(
                judge.classes() == dataset.class_names().len(),
                "the judge {} tells {} classes apart, but the dataset has {} ({})",
                path.display(),
                judge.classes(),
                dataset.class_names().len(),
                dataset.class_names().join(", ")
            );
            return Ok((judge, key, None));
        }
        (None, Dataset::Shapes(_)) => {
            let (judge, key) = open_judge(None, device)?;
            return Ok((judge, key, None));
        }
        (None, Dataset::Folder(folder)) => folder,
    };
    let train = JudgeTrainConfig {
        seed: 0,
        steps: config.eval.judge_steps,
        dataset: config.dataset.clone(),
        flip: true,
        ..JudgeTrainConfig::default()
    };
    let key = sha256_hex(
        format!("{}|{}|{}{}", folder.content_key(), train.steps, train.seed, device_cache_tag(device)).as_bytes(),
    );
    let files = cache_dir.map(|dir| {
        let stem = format!("judge-{}", &key[..16]);
        (dir.join(format!("{stem}.safetensors")), dir.join(format!("{stem}.json")))
    });
    if let Some((weights, report_file)) = &files {
        if weights.is_file() && report_file.is_file() {
            let cached = load_judge(weights, device).and_then(|judge| {
                let report: JudgeReport = serde_json::from_slice(&std::fs::read(report_file)?)?;
                Ok((judge, report))
            });
            match cached {
                Ok((judge, report)) => return Ok((judge, key, Some(report))),
                Err(e) => tracing::warn!("cached judge {} is damaged ({e:#}): training it again", weights.display()),
            }
        }
    }
    let steps = train.steps;
    let (varmap, judge, report) = train_judge(&train, dataset, device, |step, _| progress(step, steps))?;
    if let Some((weights, report_file)) = &files {
        let save = || -> Result<()> {
            if let Some(dir) = weights.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tensors: Vec<(String, Tensor)> = crate::model::sorted_vars(&varmap)?
                .into_iter()
                .map(|(name, var)| (name, var.as_tensor().clone()))
                .collect();
            let bytes = crate::train::checkpointing::safetensors_bytes(tensors.iter().map(|(n, t)| (n, t)))?;
            atomic_write(weights, &bytes)?;
            atomic_write(report_file, &serde_json::to_vec_pretty(&report)?)
        };
        if let Err(e) = save() {
            tracing::warn!("cannot cache the judge in {}: {e:#}", weights.display());
        }
    }
    Ok((judge, key, Some(report)))
}

/// A key identifying a dataset's real images (the config for the procedural task, the content for a folder).
pub fn dataset_key(dataset: &Dataset, config: &crate::config::DatasetConfig) -> Result<String> {
    Ok(match dataset {
        Dataset::Shapes(_) => sha256_hex(serde_json::to_string(config)?.as_bytes()),
        Dataset::Folder(folder) => folder.content_key(),
    })
}

/// Statistics of `count` held-out real images, from `cache_dir` when computed before for the same dataset
/// (`dataset_key`), judge and count (a damaged cache file is recomputed).
pub fn real_stats(
    judge: &Judge,
    judge_key: &str,
    dataset: &Dataset,
    dataset_key: &str,
    count: usize,
    cache_dir: Option<&Path>,
    device: &Device,
) -> Result<GaussianStats> {
    let key = sha256_hex(format!("{judge_key}|{dataset_key}|{count}{}", device_cache_tag(device)).as_bytes());
    let cache_file: Option<PathBuf> = cache_dir.map(|d| d.join(format!("real-stats-{}.json", &key[..16])));
    if let Some(file) = &cache_file {
        if let Ok(bytes) = std::fs::read(file) {
            match serde_json::from_slice::<RealStatsCache>(&bytes) {
                Ok(cached) if cached.key == key && cached.stats.check().is_ok() => return Ok(cached.stats),
                _ => tracing::warn!("{} is damaged or stale; recomputing real statistics", file.display()),
            }
        }
    }
    let batch = make_heldout_batch(dataset, 0, count);
    let judged = judge_images(judge, &batch.images, count, dataset.image_size(), device)?;
    let stats = GaussianStats::from_features(&judged.features, count, JUDGE_FEATURES)?;
    if let Some(file) = &cache_file {
        let write = || -> Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            atomic_write(file, &serde_json::to_vec(&RealStatsCache { key: key.clone(), stats: stats.clone() })?)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot cache real statistics in {}: {e:#}", file.display());
        }
    }
    Ok(stats)
}

/// Scores of one set of generated images.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// FID against the real statistics.
    pub fid: f64,
    /// top-1, top-2, top-3 of the requested class.
    pub top_k: [f64; 3],
    /// Mean IoU of the requested main-object box and the judged one, over the images that request one
    /// (NaN when none does: data without layouts).
    pub iou: f64,
}

/// Judges generated images of `set` against `real`.
pub fn score_images(
    judge: &Judge,
    real: &GaussianStats,
    set: &EvalSet,
    images: &[f32],
    device: &Device,
) -> Result<Scores> {
    let judged = judge_images(judge, images, set.count, set.image_size, device)?;
    let stats = GaussianStats::from_features(&judged.features, set.count, JUDGE_FEATURES)?;
    let null_class = set.class_names.len() as u32;
    let (requested, judged_boxes): (Vec<[f32; 4]>, Vec<[f32; 4]>) = (0..set.count)
        .filter(|&i| set.box_classes[i * set.slots] != null_class)
        .map(|i| {
            let b = &set.boxes[i * set.slots * 4..i * set.slots * 4 + 4];
            ([b[0], b[1], b[2], b[3]], judged.boxes[i])
        })
        .unzip();
    Ok(Scores {
        fid: stats.fid(real),
        top_k: top_k_all(&judged.logits, judge.classes(), &set.labels),
        iou: mean_iou(&requested, &judged_boxes),
    })
}

/// A job for the worker: generated images of the fixed set.
pub struct EvalJob {
    /// Images [count, 3, H, W].
    pub images: Vec<f32>,
}

/// The evaluation thread and its channels.
pub struct EvalWorker {
    jobs: Option<Sender<EvalJob>>,
    results: Receiver<Result<Scores>>,
    thread: Option<JoinHandle<()>>,
}

impl EvalWorker {
    /// Starts the worker for the fixed evaluation set `set`. `prepare` runs first, on the worker's thread:
    /// it loads (or trains) the judge and the real images' statistics, so the trainer keeps stepping
    /// meanwhile. A failure of `prepare` is the result of every job submitted.
    pub fn spawn(
        prepare: impl FnOnce() -> Result<(Judge, GaussianStats)> + Send + 'static,
        set: Arc<EvalSet>,
        device: Device,
    ) -> Result<Self> {
        let (job_tx, job_rx) = unbounded::<EvalJob>();
        let (result_tx, result_rx) = unbounded();
        // The judge's kernels keep to the spawning run's thread limit.
        let kernel_threads = crate::model::kernel_thread_limit();
        // Its log lines go to the spawning run's log.txt only.
        let run_log = crate::logging::current_run_log();
        let thread = std::thread::Builder::new()
            .name("eval".to_string())
            .spawn(move || {
                crate::logging::bind_thread_to(run_log.as_deref());
                crate::model::limit_kernel_threads(kernel_threads);
                let prepared = prepare().map_err(|e| format!("{e:#}"));
                for job in job_rx.iter() {
                    let start = Instant::now();
                    let scores = match &prepared {
                        Ok((judge, real)) => score_images(judge, real, &set, &job.images, &device),
                        Err(message) => Err(anyhow::anyhow!("the judge could not be prepared: {message}")),
                    };
                    tracing::debug!("judged {} images in {:.2} s", set.count, start.elapsed().as_secs_f64());
                    if result_tx.send(scores).is_err() {
                        break;
                    }
                }
            })
            .context("cannot start the evaluation thread")?;
        Ok(Self { jobs: Some(job_tx), results: result_rx, thread: Some(thread) })
    }

    /// Hands generated images to the worker.
    pub fn submit(&self, job: EvalJob) -> Result<()> {
        self.jobs
            .as_ref()
            .context("the evaluation worker is closed")?
            .send(job)
            .map_err(|_| anyhow::anyhow!("the evaluation worker has stopped"))
    }

    /// Waits for the result of the oldest submitted job.
    pub fn result(&self) -> Result<Scores> {
        self.results.recv().map_err(|_| anyhow::anyhow!("the evaluation worker stopped without a result"))?
    }
}

impl Drop for EvalWorker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
