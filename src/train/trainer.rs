//! The training loop of one run: stages, steps, the NaN guard, checkpoints, commands.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::checkpointing::{assign_weights, load_checkpoint, save_checkpoint, NamedVars, TrainerState};
use super::ema::Ema;
use super::noise::{self, Stream};
use super::optimizer::{clip_grads, global_grad_norm, AdamW};
use super::validation::{ValidationSet, VALIDATION_IMAGES};
use super::{TrainCommand, TrainOptions};
use crate::config::{metric_mode, MetricMode, RunConfig, StageConfig};
use crate::data::{dataset_class_names, Batch, Dataset, Prefetcher};
use crate::eval::grid::render_grid;
use crate::eval::sampler::{sample_images, EvalSet};
use crate::eval::worker::{dataset_key, judge_for_run, real_stats, EvalJob, EvalWorker};
use crate::eval::{BestTracker, EarlyStopDecision, EarlyStopping, GateMonitor};
use crate::model::{self, Denoiser, ModelSpec};
use crate::run::checkpoint::{checkpoint_name, checkpoints_to_prune, newest_intact_checkpoint};
use crate::run::events::EvalRecord;
use crate::run::state::EarlyStopState;
use crate::run::{MetricsRecord, RunDir, TrainEvent};

/// Batches kept ready by the prefetch thread.
const PREFETCH_DEPTH: usize = 4;

/// Picks the device a config asks for: `cpu`, `cuda:N`, or `auto` (CUDA 0 when this build has CUDA and a
/// GPU answers, else the CPU).
pub fn select_device(choice: &str) -> Result<Device> {
    match choice {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(device) => return Ok(device),
                    Err(e) => tracing::warn!("no usable CUDA device ({e}); training on the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
        other => {
            let index: usize = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("device `{other}`: expected auto, cpu or cuda:N"))?;
            if !cfg!(feature = "cuda") {
                bail!("device `{other}`: this build of Wick has no CUDA support — rebuild with `--features cuda`, or use device = \"cpu\"");
            }
            Device::new_cuda(index).with_context(|| format!("device `{other}` is not available"))
        }
    }
}

/// Runs the trainer, turning any error or panic into a `failed` event with its reason.
pub(super) fn run_guarded(
    config: RunConfig,
    dir: RunDir,
    options: TrainOptions,
    events: Sender<TrainEvent>,
    commands: Receiver<TrainCommand>,
) {
    crate::logging::bind_thread_to_run_log(&dir.log_path());
    let step = Arc::new(AtomicU64::new(0));
    let threads = config.threads;
    let outcome = {
        let events = events.clone();
        let step = step.clone();
        std::panic::catch_unwind(AssertUnwindSafe(move || -> Result<()> {
            let body = move || -> Result<()> {
                let mut trainer = Trainer::new(config, dir, options, events, commands, step)?;
                trainer.run()
            };
            if threads > 0 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("compute-{i}"))
                    .build()
                    .context("cannot build the compute thread pool")?;
                pool.install(move || {
                    // candle's matmuls now use this pool; wick's kernels are held to the same count.
                    crate::model::limit_kernel_threads(threads);
                    body()
                })
            } else {
                body()
            }
        }))
    };
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Some(format!("the trainer panicked: {what}"))
        }
    };
    if let Some(message) = failure {
        let _ = events.send(TrainEvent::Failed { step: step.load(Ordering::Relaxed), message });
    }
}

/// What one step did.
enum StepOutcome {
    /// The update was applied.
    Applied { loss: f64, grad_norm: f64 },
    /// Something was not finite; the update was skipped.
    Skipped { what: String, loss: Option<f64>, grad_norm: Option<f64> },
}

/// Why the stage loop ended before finishing.
enum Interrupt {
    Stop(String),
}

/// Sample grid files of a checkpoint: samples.png and samples.json.
struct GridFiles {
    png: Vec<u8>,
    json: Vec<u8>,
}

struct Trainer {
    config: RunConfig,
    dir: RunDir,
    options: TrainOptions,
    events: Sender<TrainEvent>,
    commands: Receiver<TrainCommand>,
    progress: Arc<AtomicU64>,
    device: Device,
    spec: ModelSpec,
    params: NamedVars,
    optimizer: AdamW,
    ema: Ema,
    dataset: Dataset,
    state: TrainerState,
    session_start: Instant,
    wall_at_session_start: f64,
    last_saved_step: Option<u64>,
    last_log: (Instant, u64),
    /// The fixed evaluation inputs (made when first needed).
    eval_set: Option<Arc<EvalSet>>,
    /// The judge's worker (started at the first evaluation).
    worker: Option<EvalWorker>,
    /// The fixed held-out batch of the validation loss (made when first needed).
    validation: Option<ValidationSet>,
}

impl Trainer {
    fn new(
        config: RunConfig,
        dir: RunDir,
        options: TrainOptions,
        events: Sender<TrainEvent>,
        commands: Receiver<TrainCommand>,
        progress: Arc<AtomicU64>,
    ) -> Result<Self> {
        let device = select_device(&config.device)?;
        let classes = dataset_class_names(&config.dataset)?;
        let spec = ModelSpec::for_config(&config.model, classes.len());
        let (varmap, _) = model::build_model(spec, &device, noise::stream_seed(config.seed, Stream::Init))?;
        let params: NamedVars = model::sorted_vars(&varmap)?;
        let mut last_report = Instant::now();
        let dataset = crate::run::data::open_run_dataset(dir.root(), &config, &spec, true, |p| {
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
        let state = TrainerState {
            global_step: 0,
            stage_index: 0,
            stage: config.stages.first().map(|s| s.name.clone()).unwrap_or_default(),
            step_in_stage: 0,
            stage_start_step: 0,
            data_cursor: 0,
            consecutive_bad_steps: 0,
            wall_secs: 0.0,
            seed: config.seed,
            rng_streams: "ChaCha8 keyed by (seed, purpose); step s draws from stream s; data order is a \
                          seeded permutation per epoch indexed by data_cursor"
                .to_string(),
            ema_updates: 0,
            adapter_steps: 0,
            losses_since_eval: (0.0, 0),
            best: Some(BestTracker::new(
                config.eval.best_metric.clone(),
                config.eval.best_mode.or_else(|| metric_mode(&config.eval.best_metric)).unwrap_or(MetricMode::Min),
            )),
            early_stopping: None,
            gate_monitor: config.model.adapter.then(|| GateMonitor::new(config.eval.gates.clone())),
        };
        Ok(Self {
            config,
            dir,
            options,
            events,
            commands,
            progress,
            device,
            spec,
            params,
            optimizer: AdamW::default(),
            ema: Ema::default(),
            dataset,
            state,
            session_start: Instant::now(),
            wall_at_session_start: 0.0,
            last_saved_step: None,
            last_log: (Instant::now(), 0),
            eval_set: None,
            worker: None,
            validation: None,
        })
    }

    fn emit(&self, event: TrainEvent) {
        // The recorder only goes away when the process is ending; nothing useful can be done then.
        let _ = self.events.send(event);
    }

    fn wall_secs(&self) -> f64 {
        self.wall_at_session_start + self.session_start.elapsed().as_secs_f64()
    }

    fn run(&mut self) -> Result<()> {
        let resumed_from = if self.options.resume { self.restore()? } else { None };
        self.progress.store(self.state.global_step, Ordering::Relaxed);
        self.emit(TrainEvent::Started {
            step: self.state.global_step,
            total_steps: self.config.total_steps(),
            resumed_from: resumed_from.clone(),
            message: match &resumed_from {
                Some(name) => format!("resumed from {name} at step {}", self.state.global_step),
                None => format!(
                    "training {} ({} parameters, {} stages, {} steps) on {:?}",
                    self.config.name,
                    model::param_count(self.spec),
                    self.config.stages.len(),
                    self.config.total_steps(),
                    self.device
                ),
            },
        });
        while self.state.stage_index < self.config.stages.len() {
            if let Some(Interrupt::Stop(reason)) = self.run_stage()? {
                self.save()?;
                self.emit(TrainEvent::Stopped { step: self.state.global_step, message: reason });
                return Ok(());
            }
        }
        self.save()?;
        self.emit(TrainEvent::Finished {
            step: self.state.global_step,
            message: format!("finished {} steps in {:.1} s", self.state.global_step, self.wall_secs()),
        });
        Ok(())
    }

    /// Loads the newest intact checkpoint; returns its name, or None (fresh start) when there is none.
    fn restore(&mut self) -> Result<Option<String>> {
        let Some(entry) = newest_intact_checkpoint(&self.dir.checkpoints_dir())? else {
            tracing::warn!("{}: no intact checkpoint; starting from step 0", self.dir.root().display());
            return Ok(None);
        };
        let loaded = load_checkpoint(&entry.dir, &self.device)?;
        let origin = entry.dir.join("model.safetensors").display().to_string();
        assign_weights(&self.params, &loaded.weights, true, &origin)?;
        if let Some(ema) = loaded.ema {
            self.ema.load(ema, &self.params)?;
        }
        self.optimizer.load_state_tensors(&loaded.optimizer, &self.params, &self.device)?;
        anyhow::ensure!(
            loaded.state.stage_index <= self.config.stages.len(),
            "{}: stage index {} is beyond the {} stages of run.toml",
            entry.dir.display(),
            loaded.state.stage_index,
            self.config.stages.len()
        );
        self.state = loaded.state;
        self.wall_at_session_start = self.state.wall_secs;
        self.session_start = Instant::now();
        self.last_saved_step = Some(self.state.global_step);
        Ok(Some(entry.name))
    }

    fn trainable_names(&self, stage: &StageConfig) -> HashSet<String> {
        self.params.iter().filter(|(n, _)| stage.trainable.matches(n)).map(|(n, _)| n.clone()).collect()
    }

    /// Runs the current stage from `state.step_in_stage` to its end (or an interrupt).
    fn run_stage(&mut self) -> Result<Option<Interrupt>> {
        let index = self.state.stage_index;
        let stage = self.config.stages[index].clone();
        let trainable = self.trainable_names(&stage);
        if trainable.is_empty() {
            bail!(
                "stages[{index}].trainable matches no parameter of the {} model{}",
                self.spec_name(),
                if self.spec.adapter { "" } else { " (its adapter is off)" }
            );
        }
        if self.state.step_in_stage == 0 {
            self.begin_stage(index, &stage, &trainable)?;
        }
        let trainable_vars: NamedVars = self.params.iter().filter(|(n, _)| trainable.contains(n)).cloned().collect();
        let model = self.stage_model(&trainable)?;
        let trains_adapter = trainable.iter().any(|n| model::is_adapter_param(n));
        let mut prefetcher = Prefetcher::spawn(
            self.dataset.clone(),
            noise::stream_seed(self.config.seed, Stream::DataOrder),
            self.state.data_cursor,
            stage.batch_size,
            PREFETCH_DEPTH,
        );
        self.last_log = (Instant::now(), self.state.global_step);
        while self.state.step_in_stage < stage.steps {
            if let Some(interrupt) = self.poll_commands()? {
                return Ok(Some(interrupt));
            }
            let outcome = self.train_step(&model, &stage, &trainable_vars, &mut prefetcher)?;
            let lr = stage.lr_at(self.state.step_in_stage);
            self.state.global_step += 1;
            self.state.step_in_stage += 1;
            self.state.data_cursor += (stage.batch_size * stage.grad_accum) as u64;
            self.progress.store(self.state.global_step, Ordering::Relaxed);
            if trains_adapter {
                self.state.adapter_steps += 1;
            }
            let (loss, grad_norm) = match outcome {
                StepOutcome::Applied { loss, grad_norm } => {
                    self.state.consecutive_bad_steps = 0;
                    (Some(loss), Some(grad_norm))
                }
                StepOutcome::Skipped { what, loss, grad_norm } => {
                    self.state.consecutive_bad_steps += 1;
                    let consecutive = self.state.consecutive_bad_steps;
                    let limit = self.config.checkpoints.max_bad_steps;
                    self.emit(TrainEvent::NanDetected {
                        step: self.state.global_step,
                        stage: stage.name.clone(),
                        consecutive,
                        message: format!(
                            "step {}: {what}; the update was skipped ({consecutive} of {limit} allowed in a row)",
                            self.state.global_step
                        ),
                    });
                    if consecutive >= limit {
                        bail!(
                            "{consecutive} consecutive steps had a non-finite loss or gradient (last at step {}: {what}); \
                             the run stopped so nothing non-finite is saved — lower the learning rate or check the data, \
                             then resume from the newest checkpoint",
                            self.state.global_step
                        );
                    }
                    (loss, grad_norm)
                }
            };
            let done = self.state.step_in_stage == stage.steps;
            if self.state.step_in_stage % stage.log_every == 0 || done {
                self.log_metrics(&model, &stage, lr, loss, grad_norm)?;
            }
            let step_in_stage = self.state.step_in_stage;
            let cadence = |every: u64| every > 0 && (step_in_stage % every == 0 || done);
            if cadence(stage.eval_every) && self.evaluate(&stage, done)? {
                break; // early stop: the stage ends here
            }
            if done {
                break;
            }
            if cadence(stage.save_every) {
                self.save()?;
            } else if cadence(stage.sample_every) {
                self.save_samples()?;
            }
            if self.options.stop_at_step == Some(self.state.global_step) {
                return Ok(Some(Interrupt::Stop(format!("stopped at step {} as asked", self.state.global_step))));
            }
        }
        drop(prefetcher);
        self.emit(TrainEvent::StageFinished {
            step: self.state.global_step,
            stage: stage.name.clone(),
            message: format!("stage `{}` finished at step {}", stage.name, self.state.global_step),
        });
        self.state.stage_index += 1;
        self.state.step_in_stage = 0;
        self.state.stage_start_step = self.state.global_step;
        self.state.stage = self.config.stages.get(self.state.stage_index).map(|s| s.name.clone()).unwrap_or_default();
        // The stage-end checkpoint already points at the next stage, so a resume starts it cleanly.
        self.save()?;
        if self.options.stop_at_step == Some(self.state.global_step)
            && self.state.stage_index < self.config.stages.len()
        {
            return Ok(Some(Interrupt::Stop(format!("stopped at step {} as asked", self.state.global_step))));
        }
        Ok(None)
    }

    fn spec_name(&self) -> &'static str {
        self.config.model.preset.name()
    }

    /// Start-of-stage work: warm start, optimizer moments carried or dropped, the `stage_started` event.
    fn begin_stage(&mut self, index: usize, stage: &StageConfig, trainable: &HashSet<String>) -> Result<()> {
        self.state.stage = stage.name.clone();
        self.state.stage_start_step = self.state.global_step;
        if let Some(path) = &stage.warm_start {
            self.warm_start(index, path)?;
        }
        // Moments survive only for parameters that trained in the previous stage and keep training now.
        let keep: HashSet<String> = match index.checked_sub(1).map(|i| &self.config.stages[i]) {
            Some(previous) if stage.warm_start.is_none() => {
                self.trainable_names(previous).intersection(trainable).cloned().collect()
            }
            _ => HashSet::new(),
        };
        self.optimizer.retain(&keep);
        self.state.early_stopping = stage.early_stopping.as_ref().map(EarlyStopping::new);
        let count: usize = self.params.iter().filter(|(n, _)| trainable.contains(n)).map(|(_, v)| v.elem_count()).sum();
        self.emit(TrainEvent::StageStarted {
            step: self.state.global_step,
            stage: stage.name.clone(),
            index,
            end_step: self.state.global_step + stage.steps,
            message: format!(
                "stage `{}` ({}/{}) starts at step {}: {} steps, {} of {} tensors train ({count} parameters), lr {:e}",
                stage.name,
                index + 1,
                self.config.stages.len(),
                self.state.global_step,
                stage.steps,
                trainable.len(),
                self.params.len(),
                stage.lr
            ),
        });
        Ok(())
    }

    fn warm_start(&mut self, index: usize, path: &std::path::Path) -> Result<()> {
        let weights_path = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
        if path.is_dir() && path.join(crate::run::checkpoint::MANIFEST).is_file() {
            let problems = crate::run::verify_checkpoint(path);
            if let Some(first) = problems.first() {
                bail!("stages[{index}].warm_start: checkpoint {} is damaged: {first}", path.display());
            }
        }
        let weights = candle_core::safetensors::load(&weights_path, &self.device)
            .with_context(|| format!("stages[{index}].warm_start: cannot load {}", weights_path.display()))?;
        let origin = format!("stages[{index}].warm_start {}", weights_path.display());
        let missing = assign_weights(&self.params, &weights, false, &origin)?;
        if missing.iter().any(|n| !model::is_adapter_param(n)) {
            bail!(
                "{origin}: lacks base parameters ({}); only adapter weights may be missing",
                missing.iter().filter(|n| !model::is_adapter_param(n)).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let message = if missing.is_empty() {
            format!("warm start from {}", weights_path.display())
        } else {
            format!(
                "warm start from {}: {} adapter tensors were not in it and keep their initial values (gates at zero)",
                weights_path.display(),
                missing.len()
            )
        };
        self.emit(TrainEvent::Warning { step: self.state.global_step, message });
        Ok(())
    }

    /// The model for a stage: trainable parameters are the tracked variables, frozen ones are detached, so
    /// backward computes no gradient it would throw away.
    fn stage_model(&self, trainable: &HashSet<String>) -> Result<Denoiser> {
        let tensors: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(name, var)| {
                let t = if trainable.contains(name) { var.as_tensor().clone() } else { var.as_tensor().detach() };
                (name.clone(), t)
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        Ok(Denoiser::new(self.spec, vb)?)
    }

    /// Handles pending commands; blocks while paused. Returns an interrupt when the run must stop.
    fn poll_commands(&mut self) -> Result<Option<Interrupt>> {
        let mut paused = false;
        loop {
            let command = if paused {
                match self.commands.recv_timeout(Duration::from_millis(200)) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Ok(Some(Interrupt::Stop("the watcher went away while paused".to_string())))
                    }
                }
            } else {
                match self.commands.try_recv() {
                    Ok(c) => c,
                    Err(_) => return Ok(None),
                }
            };
            match command {
                TrainCommand::Pause if !paused => {
                    paused = true;
                    self.emit(TrainEvent::Paused {
                        step: self.state.global_step,
                        message: format!("paused at step {}", self.state.global_step),
                    });
                }
                TrainCommand::Resume if paused => {
                    self.emit(TrainEvent::Resumed {
                        step: self.state.global_step,
                        message: format!("resumed at step {}", self.state.global_step),
                    });
                    return Ok(None);
                }
                TrainCommand::Stop => {
                    return Ok(Some(Interrupt::Stop(format!("stopped by request at step {}", self.state.global_step))))
                }
                TrainCommand::SaveNow => self.save()?,
                TrainCommand::Pause | TrainCommand::Resume => {}
            }
            if !paused {
                return Ok(None);
            }
        }
    }

    /// One optimizer step: every micro-batch forward and backward, accumulate, guard, clip, update, EMA.
    fn train_step(
        &mut self,
        model: &Denoiser,
        stage: &StageConfig,
        trainable: &NamedVars,
        prefetcher: &mut Prefetcher,
    ) -> Result<StepOutcome> {
        let step_number = self.state.global_step + 1;
        let mut rng = noise::step_rng(self.config.seed, self.state.global_step);
        let mut grads: HashMap<String, Tensor> = HashMap::new();
        let mut loss_sum = 0.0;
        let mut bad: Option<(String, Option<f64>)> = None;
        for micro in 0..stage.grad_accum {
            let mut batch = prefetcher.next_batch()?;
            if micro == 0 && self.options.inject_nan_at_steps.contains(&step_number) {
                if let Some(first) = batch.images.first_mut() {
                    *first = f32::NAN;
                }
            }
            for warning in batch.warnings.drain(..) {
                self.emit(TrainEvent::Warning { step: step_number, message: warning });
            }
            if bad.is_some() {
                continue; // keep the data order: the step's batches are consumed either way
            }
            let loss = self.micro_batch_loss(model, stage, &batch, &mut rng)?;
            let loss_value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            if !loss_value.is_finite() {
                bad = Some((format!("the loss of micro-batch {micro} is {loss_value}"), None));
                continue;
            }
            loss_sum += loss_value;
            let scaled = if stage.grad_accum > 1 { (loss / stage.grad_accum as f64)? } else { loss };
            let store = scaled.backward()?;
            for (name, var) in trainable {
                if let Some(g) = store.get(var.as_tensor()) {
                    let sum = match grads.remove(name) {
                        Some(acc) => (acc + g)?,
                        None => g.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
        }
        if let Some((what, loss)) = bad {
            return Ok(StepOutcome::Skipped { what, loss, grad_norm: None });
        }
        let loss = loss_sum / stage.grad_accum as f64;
        let grad_norm = global_grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            let culprit = grads
                .iter()
                .filter(|(_, g)| {
                    g.sqr().and_then(|s| s.sum_all()).and_then(|s| s.to_scalar::<f32>()).is_ok_and(|v| !v.is_finite())
                })
                .map(|(n, _)| n.clone())
                .min()
                .unwrap_or_default();
            return Ok(StepOutcome::Skipped {
                what: format!("the gradient norm is {grad_norm} (first non-finite: `{culprit}`)"),
                loss: Some(loss),
                grad_norm: None,
            });
        }
        clip_grads(&mut grads, grad_norm, stage.grad_clip)?;
        let lr = stage.lr_at(self.state.step_in_stage);
        self.optimizer.step(trainable, &grads, lr, stage.weight_decay)?;
        // Once an average exists it is kept current: a stage with ema_decay = 0 makes it follow the weights.
        if stage.ema_decay > 0.0 || !self.ema.is_empty() {
            let decay = Ema::warmed_decay(stage.ema_decay, self.state.ema_updates);
            self.ema.update(&self.params, decay)?;
            self.state.ema_updates += 1;
        }
        Ok(StepOutcome::Applied { loss, grad_norm })
    }

    /// The flow-matching loss of one micro-batch, with this step's noise, timesteps and dropouts.
    fn micro_batch_loss(
        &self,
        model: &Denoiser,
        stage: &StageConfig,
        batch: &Batch,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<Tensor> {
        let b = batch.size;
        let side = self.spec.image_size;
        let slots = self.spec.slots;
        let null = self.spec.null_class();
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
        let t: Vec<f32> = draws.iter().map(|d| d.t).collect();
        let device = &self.device;
        let x0 = Tensor::from_vec(batch.images.clone(), (b, 3, side, side), device)?;
        let eps = Tensor::from_vec(eps, (b, 3, side, side), device)?;
        let t = Tensor::from_vec(t, b, device)?;
        let y = Tensor::from_vec(labels, b, device)?;
        let boxes = Tensor::from_vec(boxes, (b, slots, 4), device)?;
        let box_classes = Tensor::from_vec(box_classes, (b, slots), device)?;
        if stage.object_loss_weight > 0.0 {
            // The image's objects, whether or not its layout was dropped: they are in the picture either way.
            let weights = model::object_pixel_weights(
                &batch.boxes,
                &batch.box_classes,
                slots,
                null,
                side,
                stage.object_loss_weight as f32,
                stage.object_loss_mode == crate::config::ObjectLossMode::Objects,
            );
            let weights = Tensor::from_vec(weights, (b, 1, side, side), device)?;
            return Ok(model::weighted_flow_matching_loss(model, &x0, &t, &eps, &y, &boxes, &box_classes, &weights)?);
        }
        Ok(model::flow_matching_loss(model, &x0, &t, &eps, &y, &boxes, &box_classes)?)
    }

    fn log_metrics(
        &mut self,
        model: &Denoiser,
        stage: &StageConfig,
        lr: f64,
        loss: Option<f64>,
        grad_norm: Option<f64>,
    ) -> Result<()> {
        let gates: Vec<f64> = model.gate_values()?.into_iter().map(f64::from).collect();
        let gate_mean =
            if gates.is_empty() { 0.0 } else { gates.iter().map(|g| g.abs()).sum::<f64>() / gates.len() as f64 };
        let (since, step_then) = self.last_log;
        let steps = self.state.global_step.saturating_sub(step_then);
        let secs = since.elapsed().as_secs_f64();
        let samples = steps as f64 * (stage.batch_size * stage.grad_accum) as f64;
        let samples_per_s = if secs > 0.0 { samples / secs } else { 0.0 };
        self.last_log = (Instant::now(), self.state.global_step);
        if let Some(loss) = loss {
            self.state.losses_since_eval.0 += loss;
            self.state.losses_since_eval.1 += 1;
        }
        let alerts = match &mut self.state.gate_monitor {
            Some(monitor) => monitor.observe(self.state.global_step, self.state.adapter_steps, &gates),
            None => Vec::new(),
        };
        for alert in alerts {
            self.emit(TrainEvent::GateAlert { step: alert.step, alert: alert.kind, message: alert.message });
        }
        self.emit(TrainEvent::Metrics(MetricsRecord {
            step: self.state.global_step,
            stage: stage.name.clone(),
            wall_secs: self.wall_secs(),
            loss,
            lr,
            grad_norm,
            gates,
            gate_mean,
            samples_per_s,
            rss_bytes: crate::monitor::rss_bytes(),
            gpu_mem_bytes: None,
        }));
        Ok(())
    }

    /// Saves a checkpoint of the current state with its sample grid (unless this step's is already on disk),
    /// then prunes old ones.
    fn save(&mut self) -> Result<()> {
        if self.last_saved_step == Some(self.state.global_step) {
            return Ok(());
        }
        let grid = self.sample_grid()?;
        self.save_with_grid(grid)
    }

    fn save_with_grid(&mut self, grid: GridFiles) -> Result<()> {
        if self.last_saved_step == Some(self.state.global_step) {
            return Ok(());
        }
        self.state.wall_secs = self.wall_secs();
        let extra: [(&str, &[u8]); 2] = [("samples.png", &grid.png), ("samples.json", &grid.json)];
        let (dir, bytes) = save_checkpoint(
            &self.dir.checkpoints_dir(),
            &self.params,
            &self.ema,
            &self.optimizer,
            &self.state,
            &extra,
        )?;
        self.last_saved_step = Some(self.state.global_step);
        let name = checkpoint_name(self.state.global_step);
        let stage = self
            .config
            .stages
            .get(self.state.stage_index.min(self.config.stages.len().saturating_sub(1)))
            .map(|s| s.name.clone())
            .unwrap_or_default();
        self.emit(TrainEvent::CheckpointSaved {
            step: self.state.global_step,
            stage,
            checkpoint: name.clone(),
            bytes,
            message: format!("checkpoint {} saved ({:.1} MB)", dir.display(), bytes as f64 / 1e6),
        });
        let entries = self.dir.checkpoints()?;
        let mut protected = vec![name];
        if let Some(best) = self.state.best.as_ref().and_then(|b| b.best()).and_then(|b| b.checkpoint.clone()) {
            protected.push(best);
        }
        for entry in checkpoints_to_prune(&entries, self.config.checkpoints.keep_last, &protected) {
            std::fs::remove_dir_all(&entry.dir).with_context(|| format!("cannot prune {}", entry.dir.display()))?;
            self.emit(TrainEvent::CheckpointPruned {
                step: self.state.global_step,
                checkpoint: entry.name.clone(),
                message: format!("pruned {} (keep_last = {})", entry.name, self.config.checkpoints.keep_last),
            });
        }
        Ok(())
    }

    /// The fixed evaluation inputs, made on first use.
    fn eval_set(&mut self) -> Arc<EvalSet> {
        if self.eval_set.is_none() {
            let count = self.config.eval.samples.max(self.config.eval.grid_rows);
            self.eval_set = Some(Arc::new(EvalSet::fixed(&self.dataset, self.config.eval.seed, count)));
        }
        self.eval_set.clone().unwrap_or_else(|| Arc::new(EvalSet::fixed(&self.dataset, self.config.eval.seed, 1)))
    }

    /// The denoiser samples are drawn with: EMA weights when there are some and the config asks for them.
    fn sampling_model(&self) -> Result<Denoiser> {
        let use_ema = self.config.eval.sampler.use_ema && !self.ema.is_empty();
        let tensors: HashMap<String, Tensor> = if use_ema {
            self.ema.tensors().iter().map(|(n, t)| (n.clone(), t.detach())).collect()
        } else {
            self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
        };
        Ok(Denoiser::new(self.spec, VarBuilder::from_tensors(tensors, DType::F32, &self.device))?)
    }

    /// The fixed-seed sample grid of the current weights (the first `grid_rows` evaluation inputs).
    fn sample_grid(&mut self) -> Result<GridFiles> {
        let rows = self.config.eval.grid_rows;
        let set = self.eval_set().take(rows);
        let model = self.sampling_model()?;
        let images = sample_images(&model, &set, &self.config.eval.sampler, self.spec.null_class(), &self.device)?;
        let title = checkpoint_name(self.state.global_step);
        let grid = render_grid(&[title], &[images], &set, 4, self.spec.null_class())?;
        Ok(GridFiles { png: grid.png, json: serde_json::to_vec_pretty(&grid.description)? })
    }

    /// Writes a sample grid outside any checkpoint: `samples/step-N.png` (+ .json).
    fn save_samples(&mut self) -> Result<()> {
        let grid = self.sample_grid()?;
        let dir = self.dir.root().join("samples");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = checkpoint_name(self.state.global_step);
        crate::run::atomic::atomic_write(&dir.join(format!("{name}.png")), &grid.png)?;
        crate::run::atomic::atomic_write(&dir.join(format!("{name}.json")), &grid.json)?;
        self.emit(TrainEvent::SamplesSaved {
            step: self.state.global_step,
            path: format!("samples/{name}.png"),
            message: format!("sample grid saved at step {}", self.state.global_step),
        });
        Ok(())
    }

    /// Starts the judge's worker on first use (loading the judge and the real statistics).
    fn ensure_worker(&mut self) -> Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let set = self.eval_set();
        let cache = crate::run::data::runs_cache_dir(self.dir.root());
        let mut last_report = Instant::now();
        let (judge, judge_key, judge_report) =
            judge_for_run(&self.config, &self.dataset, cache.as_deref(), &self.device, |step, steps| {
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
                &self.dir.root().join(crate::run::data::JUDGE_REPORT_FILE),
                &serde_json::to_vec_pretty(&report)?,
            )?;
        }
        let dataset_key = dataset_key(&self.dataset, &self.config.dataset)?;
        let real =
            real_stats(&judge, &judge_key, &self.dataset, &dataset_key, set.count, cache.as_deref(), &self.device)?;
        self.worker = Some(EvalWorker::spawn(judge, real, set, self.device.clone())?);
        Ok(())
    }

    /// Evaluates the current weights: samples the fixed set, has the worker judge it while the grid is
    /// sampled, records the results, updates the best checkpoint and the stage's early stopping, and saves
    /// the checkpoint of this step (at a stage's end, the stage-end save does). Returns true when the stage
    /// must stop early.
    fn evaluate(&mut self, stage: &StageConfig, at_stage_end: bool) -> Result<bool> {
        let start = Instant::now();
        self.ensure_worker()?;
        let set = self.eval_set();
        let model = self.sampling_model()?;
        let images = sample_images(&model, &set, &self.config.eval.sampler, self.spec.null_class(), &self.device)?;
        let sample_secs = start.elapsed().as_secs_f64();
        let worker = self.worker.as_ref().context("the evaluation worker is not running")?;
        worker.submit(EvalJob { images })?;
        let grid = self.sample_grid()?;
        if self.validation.is_none() {
            self.validation =
                Some(ValidationSet::new(&self.dataset, self.config.seed, VALIDATION_IMAGES, &self.device)?);
        }
        let val_loss = match &self.validation {
            Some(set) => Some(set.loss(&model)?).filter(|l| l.is_finite()),
            None => None,
        };
        let scores = self.worker.as_ref().context("the evaluation worker is not running")?.result()?;
        let (loss_sum, loss_count) = std::mem::take(&mut self.state.losses_since_eval);
        let mut record = EvalRecord {
            step: self.state.global_step,
            stage: stage.name.clone(),
            fid: scores.fid.is_finite().then_some(scores.fid),
            top1: Some(scores.top_k[0]),
            top2: Some(scores.top_k[1]),
            top3: Some(scores.top_k[2]),
            iou: scores.iou.is_finite().then_some(scores.iou),
            loss: (loss_count > 0).then(|| loss_sum / loss_count as f64),
            val_loss,
            samples: set.count,
            sample_secs,
            eval_secs: 0.0,
            early_stopping: None,
        };
        let checkpoint = checkpoint_name(self.state.global_step);
        let mut new_best = None;
        if let Some(tracker) = &mut self.state.best {
            if let Some(value) = record.metric(tracker.metric()) {
                if tracker.observe(value, self.state.global_step) {
                    tracker.attach_checkpoint(checkpoint.clone());
                    new_best = Some((tracker.metric().to_string(), value));
                }
            }
        }
        let mut stop = None;
        if let (Some(rule), Some(config)) = (&mut self.state.early_stopping, &stage.early_stopping) {
            let value = record.metric(&config.metric).unwrap_or(f64::NAN);
            if let EarlyStopDecision::Stop { .. } = rule.observe(value) {
                stop = Some(rule.reason(&config.metric));
            }
            record.early_stopping = Some(EarlyStopState {
                stage: stage.name.clone(),
                metric: config.metric.clone(),
                best: rule.best(),
                evals_without_improvement: rule.evals_without_improvement(),
                patience: config.patience,
            });
        }
        record.eval_secs = start.elapsed().as_secs_f64();
        self.emit(TrainEvent::Eval(record));
        if let Some((metric, value)) = new_best {
            self.emit(TrainEvent::BestCheckpoint {
                step: self.state.global_step,
                checkpoint: checkpoint.clone(),
                metric: metric.clone(),
                value,
                message: format!("new best checkpoint {checkpoint}: {metric} {}", crate::eval::fmt_value(value)),
            });
        }
        let stopping = stop.is_some();
        if let Some(reason) = stop {
            self.emit(TrainEvent::EarlyStopped {
                step: self.state.global_step,
                stage: stage.name.clone(),
                message: format!("stage `{}` stopped early at step {}: {reason}", stage.name, self.state.global_step),
            });
        } else if !at_stage_end {
            // At a stage's end (early or planned) the checkpoint is saved once the state points at the next
            // stage, so a resume starts it cleanly.
            self.save_with_grid(grid)?;
        }
        Ok(stopping)
    }
}
