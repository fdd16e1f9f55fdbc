//! The `shapes` task: the denoiser of [`crate::model`] with its gated spatial adapter, trained with the
//! rectified-flow loss on [`crate::data`]'s procedural shapes or an image folder; evaluated by the judge
//! (FID, top-k, IoU on its worker thread) and the validation loss; samples are image grids.
//!
//! Its settings are the run config's `dataset`, `model` and `eval` tables and the stages' dropout and loss
//! options (they predate tasks, and every run recorded before keeps them there).

pub mod validation;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;

use self::validation::{ValidationSet, VALIDATION_IMAGES};
use crate::config::{MetricMode, ObjectLossMode, Precision, RunConfig, StageConfig};
use crate::data::{dataset_class_names, Batch, Dataset, DatasetBatches};
use crate::eval::grid::render_grid;
use crate::eval::sampler::{sample_images, EvalSet};
use crate::eval::worker::{dataset_key, judge_for_run, real_stats, EvalJob, EvalWorker};
use crate::model::{self, Denoiser, ModelSpec};
use crate::task::settings::Schema;
use crate::task::{
    EvalContext, Evaluation, LossShard, MetricSpec, SampleKind, Samples, Task, TaskContext, TaskDescriptor,
};
use crate::train::noise;

/// The shapes task of one run.
pub struct ShapesTask {
    config: RunConfig,
    run_root: PathBuf,
    device: Device,
    spec: ModelSpec,
    dataset: Dataset,
    /// The fixed evaluation inputs (made when first needed).
    eval_set: Option<Arc<EvalSet>>,
    /// The judge's worker (started at the first evaluation).
    worker: Option<EvalWorker>,
    /// The fixed held-out batch of the validation loss (made when first needed).
    validation: Option<ValidationSet>,
}

impl ShapesTask {
    /// The training forward's autocast dtype (`precision`).
    fn autocast(&self) -> Option<DType> {
        match self.config.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }

    /// Draws a micro-batch's noise, timesteps and dropouts from the step's stream (in sample order) and
    /// applies them: the inputs of its loss.
    fn draw_inputs(&self, batch: &Batch, stage: &StageConfig, rng: &mut ChaCha8Rng) -> StepInputs {
        let (b, side, slots, null) = (batch.size, self.spec.image_size, self.spec.slots, self.spec.null_class());
        let mut eps = Vec::new();
        let draws = noise::draw_samples(rng, b, 3 * side * side, noise::DrawSettings::of_stage(stage), &mut eps);
        let mut labels = batch.labels.clone();
        let mut boxes = batch.boxes.clone();
        let mut box_classes = batch.box_classes.clone();
        for (i, draw) in draws.iter().enumerate() {
            if draw.drop_class {
                labels[i] = null;
            }
            if draw.drop_layout {
                box_classes[i * slots..(i + 1) * slots].fill(null);
                boxes[i * slots * 4..(i + 1) * slots * 4].fill(0.0);
            }
        }
        // The image's objects weigh whether or not its layout was dropped: they are in the picture either way.
        let pixel_weights = (stage.object_loss_weight > 0.0).then(|| {
            model::object_pixel_weights(
                &batch.boxes,
                &batch.box_classes,
                slots,
                null,
                side,
                stage.object_loss_weight as f32,
                stage.object_loss_mode == ObjectLossMode::Objects,
            )
        });
        StepInputs {
            size: b,
            side,
            slots,
            images: batch.images.clone(),
            eps,
            t: draws.iter().map(|d| d.t).collect(),
            labels,
            boxes,
            box_classes,
            pixel_weights,
        }
    }

    /// The run's dataset (the procedural shapes or an image folder).
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Opens the run's dataset (checking a folder's files, with progress in the log) and sizes the model.
    pub fn open(ctx: &TaskContext) -> Result<Self> {
        let config = ctx.config.clone();
        let classes = dataset_class_names(&config.dataset)?;
        let spec = ModelSpec::for_config(&config.model, classes.len());
        let mut last_report = Instant::now();
        let dataset = crate::run::data::open_run_dataset(ctx.run_root, &config, &spec, true, |p| {
            if last_report.elapsed().as_secs_f64() >= 5.0 || p.done == p.total {
                last_report = Instant::now();
                tracing::info!("checking the data: {}/{} files ({} from an earlier scan)", p.done, p.total, p.reused);
            }
        })?;
        if let Some(folder) = dataset.as_folder() {
            let report = folder.report();
            tracing::info!(
                "data: {} training and {} held-out images of {} classes ({}); {} problems skipped (data_report.json)",
                folder.len(),
                folder.heldout_len(),
                report.classes.len(),
                folder.class_names().join(", "),
                report.problems.len()
            );
        }
        let evaluates = config.stages.iter().any(|stage| stage.eval_every > 0);
        let mut task = Self {
            config,
            run_root: ctx.run_root.to_path_buf(),
            device: ctx.device.clone(),
            spec,
            dataset,
            eval_set: None,
            worker: None,
            validation: None,
        };
        if evaluates {
            // The judge gets ready (for an image folder: trains) beside the first steps, not before them.
            task.ensure_worker()?;
        }
        Ok(task)
    }

    /// The fixed evaluation inputs, made on first use.
    fn eval_set(&mut self) -> Arc<EvalSet> {
        let count = self.config.eval.samples.max(self.config.eval.grid_rows);
        let (dataset, seed) = (&self.dataset, self.config.eval.seed);
        self.eval_set.get_or_insert_with(|| Arc::new(EvalSet::fixed(dataset, seed, count))).clone()
    }

    /// The fixed-seed sample grid of `model` (the first `grid_rows` evaluation inputs).
    fn sample_grid(&mut self, model: &Denoiser, title: &str) -> Result<Samples> {
        let rows = self.config.eval.grid_rows;
        let set = self.eval_set().take(rows);
        let images = sample_images(model, &set, &self.config.eval.sampler, self.spec.null_class(), &self.device)?;
        let grid = render_grid(&[title.to_string()], &[images], &set, 4, self.spec.null_class())?;
        Ok(Samples::Image { png: grid.png, json: serde_json::to_vec_pretty(&grid.description)? })
    }

    /// Starts the judge's worker if it is not running. The judge is loaded, or for an image folder trained
    /// (or taken from the runs folder's cache), on the worker's own thread, and so are the real images'
    /// statistics: the trainer keeps stepping meanwhile and waits only when it needs the first scores.
    fn ensure_worker(&mut self) -> Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let set = self.eval_set();
        let cache = crate::run::data::runs_cache_dir(&self.run_root);
        let (config, dataset, device, run_root) =
            (self.config.clone(), self.dataset.clone(), self.device.clone(), self.run_root.clone());
        let count = set.count;
        let prepare = move || prepare_judge(&config, &dataset, cache.as_deref(), &device, &run_root, count);
        self.worker = Some(EvalWorker::spawn(prepare, set, self.device.clone())?);
        Ok(())
    }
}

/// The judge of a run and the statistics of `count` real images under it, writing the report of a judge
/// trained for this run's image folder into the run directory.
fn prepare_judge(
    config: &RunConfig,
    dataset: &Dataset,
    cache: Option<&std::path::Path>,
    device: &Device,
    run_root: &std::path::Path,
    count: usize,
) -> Result<(crate::model::judge::Judge, crate::eval::fid::GaussianStats)> {
    let mut last_report = Instant::now();
    let (judge, judge_key, judge_report) = judge_for_run(config, dataset, cache, device, |step, steps| {
        if last_report.elapsed().as_secs_f64() >= 5.0 || step == steps {
            last_report = Instant::now();
            tracing::info!("training the judge of this dataset: step {step}/{steps}");
        }
    })?;
    if let Some(report) = judge_report {
        tracing::info!(
            "judge: held-out accuracy {:.3}{} on {} real images — how far FID and top-k can be trusted",
            report.accuracy,
            report.mean_iou.map(|iou| format!(", box IoU {iou:.3}")).unwrap_or_default(),
            report.heldout
        );
        crate::run::atomic::atomic_write(
            &run_root.join(crate::run::data::JUDGE_REPORT_FILE),
            &serde_json::to_vec_pretty(&report)?,
        )?;
    }
    let dataset_key = dataset_key(dataset, &config.dataset)?;
    let real = real_stats(&judge, &judge_key, dataset, &dataset_key, count, cache, device)?;
    Ok((judge, real))
}

/// The shapes task's metrics, in the order its tables show them.
pub fn shapes_metrics() -> Vec<MetricSpec> {
    vec![
        MetricSpec::new("fid", "FID (judge)", MetricMode::Min),
        MetricSpec::new("top1", "top-1", MetricMode::Max),
        MetricSpec::new("top2", "top-2", MetricMode::Max),
        MetricSpec::new("top3", "top-3", MetricMode::Max),
        MetricSpec::new("iou", "IoU", MetricMode::Max),
        MetricSpec::new("val_loss", "val loss", MetricMode::Min),
    ]
}

impl Task for ShapesTask {
    type Model = Denoiser;
    type Data = DatasetBatches;

    fn descriptor() -> TaskDescriptor {
        TaskDescriptor {
            kind: "shapes".to_string(),
            summary: "a DiT denoiser with a gated layout adapter, on procedural shapes or your image folder"
                .to_string(),
            metrics: shapes_metrics(),
            samples: SampleKind::Image,
            // Its settings are the run config's dataset, model and eval tables (Setup's own fields).
            settings: Schema::default(),
        }
    }

    fn build(&self, vb: VarBuilder) -> candle_core::Result<Denoiser> {
        Denoiser::new(self.spec, vb)
    }

    fn init(&self, seed: u64, device: &Device) -> Result<VarMap> {
        Ok(model::build_model(self.spec, device, seed)?.0)
    }

    fn data(&self, _stage: &StageConfig, order_seed: u64) -> Result<DatasetBatches> {
        Ok(DatasetBatches::new(self.dataset.clone(), order_seed))
    }

    /// The flow-matching loss of one micro-batch, with this step's noise, timesteps and dropouts.
    fn loss(&self, model: &Denoiser, batch: &Batch, stage: &StageConfig, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let inputs = self.draw_inputs(batch, stage, rng);
        model::with_autocast(self.autocast(), || inputs.loss(model, 0..batch.size, &self.device))
    }

    /// The loss of [`Self::loss`] in the shards of [`crate::train::shard_ranges`], each a mean over its own
    /// examples (or pixel weights) weighted by its share of the batch's.
    fn loss_shards<'a>(
        &'a self,
        model: &'a Denoiser,
        batch: &'a Batch,
        stage: &'a StageConfig,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<LossShard<'a>>> {
        let inputs = Arc::new(self.draw_inputs(batch, stage, rng));
        let ranges = crate::train::shard_ranges(batch.size, &self.device);
        let autocast = self.autocast();
        Ok(ranges
            .into_iter()
            .map(|range| {
                let inputs = Arc::clone(&inputs);
                LossShard::new(inputs.share(&range), move || {
                    model::with_autocast(autocast, || inputs.loss(model, range, &self.device))
                })
            })
            .collect())
    }

    fn take_warnings(&self, batch: &mut Batch) -> Vec<String> {
        std::mem::take(&mut batch.warnings)
    }

    fn gates(&self, model: &Denoiser) -> Result<Vec<f64>> {
        Ok(model.gate_values()?.into_iter().map(f64::from).collect())
    }

    /// Samples the fixed set, has the worker judge it while the grid is sampled and the validation loss
    /// computed, and returns FID, top-k, IoU, the validation loss and the grid.
    fn evaluate(&mut self, model: &Denoiser, ctx: &EvalContext) -> Result<Option<Evaluation>> {
        let start = Instant::now();
        self.ensure_worker()?;
        let set = self.eval_set();
        let images = sample_images(model, &set, &self.config.eval.sampler, self.spec.null_class(), &self.device)?;
        let sample_secs = start.elapsed().as_secs_f64();
        let worker = self.worker.as_ref().context("the evaluation worker is not running")?;
        worker.submit(EvalJob { images })?;
        let grid = self.sample_grid(model, &ctx.title)?;
        if self.validation.is_none() {
            self.validation =
                Some(ValidationSet::new(&self.dataset, self.config.seed, VALIDATION_IMAGES, &self.device)?);
        }
        let val_loss = match &self.validation {
            Some(set) => Some(set.loss(model)?),
            None => None,
        };
        let scores = self.worker.as_ref().context("the evaluation worker is not running")?.result()?;
        let mut metrics = vec![
            ("fid".to_string(), scores.fid),
            ("top1".to_string(), scores.top_k[0]),
            ("top2".to_string(), scores.top_k[1]),
            ("top3".to_string(), scores.top_k[2]),
            ("iou".to_string(), scores.iou),
        ];
        if let Some(loss) = val_loss {
            metrics.push(("val_loss".to_string(), loss));
        }
        Ok(Some(Evaluation { metrics, examples: set.count, sample_secs, samples: Some(grid) }))
    }

    fn samples(&mut self, model: &Denoiser, ctx: &EvalContext) -> Result<Option<Samples>> {
        Ok(Some(self.sample_grid(model, &ctx.title)?))
    }
}

/// A micro-batch's training inputs on the host: its images with this step's draws applied (noise,
/// timesteps, class and layout dropout) and the optional per-pixel loss weights.
struct StepInputs {
    size: usize,
    side: usize,
    slots: usize,
    images: Vec<f32>,
    eps: Vec<f32>,
    t: Vec<f32>,
    labels: Vec<u32>,
    boxes: Vec<f32>,
    box_classes: Vec<u32>,
    /// `[B, side, side]` object weights of `object_loss_weight`, when on.
    pixel_weights: Option<Vec<f32>>,
}

impl StepInputs {
    /// The share of the batch's loss that the examples `range` carry: their pixel weight over the batch's,
    /// or their count over the batch size.
    fn share(&self, range: &std::ops::Range<usize>) -> f64 {
        match &self.pixel_weights {
            Some(weights) => {
                let per = self.side * self.side;
                let sum = |w: &[f32]| w.iter().map(|&v| f64::from(v)).sum::<f64>();
                sum(&weights[range.start * per..range.end * per]) / sum(weights).max(f64::MIN_POSITIVE)
            }
            None => range.len() as f64 / self.size.max(1) as f64,
        }
    }

    /// The flow-matching loss of the examples `range` (mean over them, or weighted by their pixel weights).
    fn loss(&self, model: &Denoiser, range: std::ops::Range<usize>, device: &Device) -> Result<Tensor> {
        let (b, side, slots) = (range.len(), self.side, self.slots);
        let image = 3 * side * side;
        let rows = |per: usize| range.start * per..range.end * per;
        let x0 = Tensor::from_slice(&self.images[rows(image)], (b, 3, side, side), device)?;
        let eps = Tensor::from_slice(&self.eps[rows(image)], (b, 3, side, side), device)?;
        let t = Tensor::from_slice(&self.t[range.clone()], b, device)?;
        let y = Tensor::from_slice(&self.labels[range.clone()], b, device)?;
        let boxes = Tensor::from_slice(&self.boxes[rows(slots * 4)], (b, slots, 4), device)?;
        let box_classes = Tensor::from_slice(&self.box_classes[rows(slots)], (b, slots), device)?;
        if let Some(weights) = &self.pixel_weights {
            let weights = Tensor::from_slice(&weights[rows(side * side)], (b, 1, side, side), device)?;
            return Ok(model::weighted_flow_matching_loss(model, &x0, &t, &eps, &y, &boxes, &box_classes, &weights)?);
        }
        Ok(model::flow_matching_loss(model, &x0, &t, &eps, &y, &boxes, &box_classes)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use rand::SeedableRng;

    use super::*;
    use crate::config::ModelPreset;
    use crate::task::BatchSource;
    use crate::train::step::GradAccumulator;

    /// A tiny shapes task with a batch of 16 (two loss shards on the CPU) and its parameters.
    fn tiny_task(object_loss_weight: f64) -> (ShapesTask, StageConfig, VarMap) {
        let mut config = RunConfig { name: "shards".to_string(), ..RunConfig::default() };
        config.model.preset = ModelPreset::Tiny;
        config.model.adapter = true;
        config.dataset.train_size = 16;
        config.stages = vec![StageConfig {
            name: "s".to_string(),
            steps: 1,
            batch_size: 16,
            class_dropout: 0.3,
            layout_dropout: 0.3,
            object_loss_weight,
            ..StageConfig::default()
        }];
        let stage = config.stages[0].clone();
        let root = std::env::temp_dir().join("wick-shard-test");
        let task = ShapesTask::open(&TaskContext { config: &config, run_root: &root, device: &Device::Cpu }).unwrap();
        let varmap = task.init(1, &Device::Cpu).unwrap();
        crate::model::randomize_zero_init(task.spec, &varmap, 2).unwrap();
        (task, stage, varmap)
    }

    /// Loss and gradients of one micro-batch, computed as `shards` says, on a pool of `threads`.
    fn step_gradients(
        task: &ShapesTask,
        stage: &StageConfig,
        varmap: &VarMap,
        sharded: bool,
        threads: usize,
    ) -> (f64, Vec<(String, Vec<f32>)>) {
        let model = task.build(VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu)).unwrap();
        let params = crate::model::sorted_vars(varmap).unwrap();
        let batch = task.data(stage, 0).unwrap().batch(0, 16).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let shards = if sharded {
                task.loss_shards(&model, &batch, stage, &mut rng).unwrap()
            } else {
                vec![LossShard::ready(task.loss(&model, &batch, stage, &mut rng).unwrap())]
            };
            assert_eq!(shards.len(), if sharded { 2 } else { 1 });
            let mut accumulated = GradAccumulator::default();
            accumulated.add(0, shards, 1, &params).unwrap();
            let (loss, grads) = accumulated.into_parts();
            let mut grads: Vec<_> =
                grads.into_iter().map(|(n, g)| (n, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (loss, grads)
        })
    }

    #[test]
    fn loss_shards_give_the_whole_batchs_loss_and_gradients_whatever_the_thread_count() {
        for object_loss_weight in [0.0, 2.0] {
            let (task, stage, varmap) = tiny_task(object_loss_weight);
            let (whole_loss, whole) = step_gradients(&task, &stage, &varmap, false, 2);
            let (loss, sharded) = step_gradients(&task, &stage, &varmap, true, 2);
            assert!((loss - whole_loss).abs() <= 1e-6 * whole_loss.abs(), "loss {loss} against {whole_loss}");
            assert_eq!(sharded.len(), whole.len());
            for ((name, a), (_, b)) in sharded.iter().zip(&whole) {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(diff <= 1e-4 * scale, "weight {object_loss_weight}: {name} differs by {diff} (scale {scale})");
            }
            // The shards, not the threads, fix the sums: one thread gives the same bits as two.
            let (one_loss, one_thread) = step_gradients(&task, &stage, &varmap, true, 1);
            assert_eq!(one_loss.to_bits(), loss.to_bits());
            assert_eq!(one_thread, sharded, "one thread and two differ");
        }
    }
}
