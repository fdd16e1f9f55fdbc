//! The training loop of one run, for any [`Task`]: stages, steps, the NaN guard, checkpoints, commands.
//!
//! The loop knows no model: the task builds it, makes its batches and computes its loss; evaluations and
//! samples are the task's too. What happens after a step is decided by [`super::policy`].

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
use super::optimizer::AdamW;
use super::policy;
use super::step::{apply_step, GradAccumulator, StepOutcome, UpdateSettings, Updated};
use super::{TrainCommand, TrainOptions};
use crate::config::{is_adapter_param, MetricMode, NanPolicy, RunConfig, StageConfig};
use crate::data::Prefetcher;
use crate::eval::{BestTracker, EarlyStopDecision, EarlyStopping, GateMonitor};
use crate::run::checkpoint::{checkpoint_name, newest_intact_checkpoint};
use crate::run::events::EvalRecord;
use crate::run::recorder::RecordProgress;
use crate::run::state::EarlyStopState;
use crate::run::{MetricsRecord, RunDir, TrainEvent};
use crate::task::{BatchSource, EvalContext, Samples, Task, TaskContext, TaskDescriptor};

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

/// Opens a run's task on the trainer thread (so opening data, which may take a while, reports its progress
/// and errors like the rest of the run).
pub type TaskOpener<T> = Box<dyn FnOnce(&TaskContext) -> Result<T> + Send>;

/// What the trainer talks through: events out, commands in, and the recorder's write failures in.
pub(super) struct TrainerChannels {
    pub events: Sender<TrainEvent>,
    pub commands: Receiver<TrainCommand>,
    /// How far the recorder got, and its first failed write.
    pub recorded: Arc<RecordProgress>,
}

/// Runs the trainer, turning any error or panic into a `failed` event with its reason.
pub(super) fn run_guarded<T: Task>(
    config: RunConfig,
    dir: RunDir,
    options: TrainOptions,
    open: TaskOpener<T>,
    channels: TrainerChannels,
) {
    let events = channels.events.clone();
    let log_path = dir.log_path();
    crate::logging::bind_thread_to_run_log(&log_path);
    let step = Arc::new(AtomicU64::new(0));
    let threads = config.threads;
    let outcome = {
        let step = step.clone();
        std::panic::catch_unwind(AssertUnwindSafe(move || -> Result<()> {
            let body = move || -> Result<()> {
                let mut trainer = Trainer::new(config, dir, options, open, channels, step)?;
                trainer.run()
            };
            if threads > 0 {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("compute-{i}"))
                    .build()
                    .context("cannot build the compute thread pool")?;
                pool.install(move || {
                    // The body runs on a pool thread: its log lines belong to this run's log.txt too.
                    crate::logging::bind_thread_to_run_log(&log_path);
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

/// Why the stage loop ended before finishing.
enum Interrupt {
    /// Stop with a checkpoint (a command, `stop_at_step`).
    Stop(String),
    /// Return to the newest checkpoint: the step `at_step` was non-finite (`what`), `on_nan = "rollback"`.
    RollBack { at_step: u64, what: String },
}

struct Trainer<T: Task> {
    config: RunConfig,
    dir: RunDir,
    options: TrainOptions,
    events: Sender<TrainEvent>,
    commands: Receiver<TrainCommand>,
    recorded: Arc<RecordProgress>,
    /// Events sent to the recorder so far.
    emitted: std::cell::Cell<u64>,
    progress: Arc<AtomicU64>,
    device: Device,
    task: T,
    descriptor: TaskDescriptor,
    params: NamedVars,
    optimizer: AdamW,
    ema: Ema,
    state: TrainerState,
    session_start: Instant,
    wall_at_session_start: f64,
    last_saved_step: Option<u64>,
    last_log: (Instant, u64),
    /// Samples an evaluation drew at this step, for the checkpoint saved at the same step.
    pending_samples: Option<(u64, Option<Samples>)>,
    /// Steps still to be poisoned by the NaN fault injection (each entry fires once).
    nan_injections_left: Vec<u64>,
}

impl<T: Task> Trainer<T> {
    fn new(
        config: RunConfig,
        dir: RunDir,
        options: TrainOptions,
        open: TaskOpener<T>,
        channels: TrainerChannels,
        progress: Arc<AtomicU64>,
    ) -> Result<Self> {
        let TrainerChannels { events, commands, recorded } = channels;
        let nan_injections_left = options.inject_nan_at_steps.clone();
        let device = select_device(&config.device)?;
        if config.precision == crate::config::Precision::Bf16 && device.is_cpu() {
            bail!(
                "precision = \"bf16\" is for CUDA devices, and this run trains on the CPU (device = {:?}{}): set \
                 precision = \"f32\"",
                config.device,
                if config.device == "auto" { ", no usable CUDA device found" } else { "" }
            );
        }
        let task = open(&TaskContext { config: &config, run_root: dir.root(), device: &device })?;
        let descriptor = T::descriptor();
        let varmap = task.init(noise::stream_seed(config.seed, Stream::Init), &device)?;
        let params: NamedVars = crate::model::sorted_vars(&varmap)?;
        let best_mode = config
            .eval
            .best_mode
            .or_else(|| descriptor.metric(&config.eval.best_metric).map(|m| m.mode))
            .unwrap_or(MetricMode::Min);
        let has_adapter = params.iter().any(|(n, _)| is_adapter_param(n));
        let state = TrainerState {
            format: super::checkpointing::TRAINER_FORMAT,
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
            best: Some(BestTracker::new(config.eval.best_metric.clone(), best_mode)),
            early_stopping: None,
            gate_monitor: has_adapter.then(|| GateMonitor::new(config.eval.gates.clone())),
            lr_scale: 1.0,
            rollbacks: Vec::new(),
        };
        Ok(Self {
            config,
            dir,
            options,
            events,
            commands,
            recorded,
            emitted: std::cell::Cell::new(0),
            progress,
            device,
            task,
            descriptor,
            params,
            optimizer: AdamW::default(),
            ema: Ema::default(),
            state,
            session_start: Instant::now(),
            wall_at_session_start: 0.0,
            last_saved_step: None,
            last_log: (Instant::now(), 0),
            pending_samples: None,
            nan_injections_left,
        })
    }

    fn emit(&self, event: TrainEvent) {
        // The recorder only goes away when the process is ending; nothing useful can be done then.
        let _ = self.events.send(event);
        self.emitted.set(self.emitted.get() + 1);
    }

    fn wall_secs(&self) -> f64 {
        self.wall_at_session_start + self.session_start.elapsed().as_secs_f64()
    }

    fn param_count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn run(&mut self) -> Result<()> {
        // Readers of the run (report, the window) learn its metrics and samples from task.json.
        self.dir.write_task(&self.descriptor)?;
        let resumed_from = if self.options.resume { self.restore()? } else { None };
        self.progress.store(self.state.global_step, Ordering::Relaxed);
        self.emit(TrainEvent::Started {
            step: self.state.global_step,
            total_steps: self.config.total_steps(),
            resumed_from: resumed_from.clone(),
            message: match &resumed_from {
                Some(name) => format!("resumed from {name} at step {}", self.state.global_step),
                None => format!(
                    "training {} ({} task, {} parameters, {} stages, {} steps) on {:?}",
                    self.config.name,
                    self.descriptor.kind,
                    self.param_count(),
                    self.config.stages.len(),
                    self.config.total_steps(),
                    self.device
                ),
            },
        });
        while self.state.stage_index < self.config.stages.len() {
            match self.run_stage()? {
                Some(Interrupt::Stop(reason)) => {
                    self.save()?;
                    self.emit(TrainEvent::Stopped { step: self.state.global_step, message: reason });
                    return Ok(());
                }
                Some(Interrupt::RollBack { at_step, what }) => self.roll_back(at_step, &what)?,
                None => {}
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

    /// Returns to the newest intact checkpoint after the non-finite step `at_step`, with the learning rate
    /// multiplied by `rollback_lr_factor`; fails once `max_rollbacks` rollbacks did not cure it. The wall
    /// clock and the rollback history survive the return; everything else is the checkpoint's.
    fn roll_back(&mut self, at_step: u64, what: &str) -> Result<()> {
        let policy = self.config.checkpoints.clone();
        let history = self.state.rollbacks.clone();
        let describe = |history: &[super::checkpointing::Rollback]| -> String {
            history
                .iter()
                .map(|r| format!("step {} → {} at lr × {}", r.at_step, r.to_step, r.lr_scale))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if history.len() as u32 >= policy.max_rollbacks {
            bail!(
                "step {at_step}: {what}, after {} rollbacks ({}) — the run keeps producing non-finite values, so \
                 it stopped (checkpoints.max_rollbacks = {}); lower the learning rate or check the data",
                history.len(),
                describe(&history),
                policy.max_rollbacks
            );
        }
        if newest_intact_checkpoint(&self.dir.checkpoints_dir())?.is_none() {
            bail!(
                "step {at_step}: {what}; on_nan = \"rollback\" has no checkpoint to return to (none was saved yet) \
                 — save earlier (save_every) or use on_nan = \"skip\""
            );
        }
        let lr_scale = self.state.lr_scale * policy.rollback_lr_factor;
        let wall_secs = self.wall_secs();
        let checkpoint = self.restore()?.context("the checkpoint to roll back to went away")?;
        self.wall_at_session_start = wall_secs;
        self.state.wall_secs = wall_secs;
        self.state.lr_scale = lr_scale;
        self.state.rollbacks = history;
        self.state.rollbacks.push(super::checkpointing::Rollback {
            at_step,
            to_step: self.state.global_step,
            what: what.to_string(),
            lr_scale,
        });
        self.state.consecutive_bad_steps = 0;
        self.pending_samples = None;
        self.progress.store(self.state.global_step, Ordering::Relaxed);
        let count = self.state.rollbacks.len() as u32;
        self.emit(TrainEvent::RolledBack {
            step: at_step,
            to_step: self.state.global_step,
            checkpoint: checkpoint.clone(),
            stage_index: self.state.stage_index,
            stage: self.state.stage.clone(),
            stage_start_step: self.state.stage_start_step,
            lr_scale,
            rollbacks: count,
            message: format!(
                "step {at_step}: {what}; rolled back to {checkpoint} (step {}) with the learning rate × {lr_scale} \
                 (rollback {count} of {} allowed)",
                self.state.global_step, policy.max_rollbacks
            ),
        });
        Ok(())
    }

    /// The learning rate of the current step of `stage`, after any rollback's scale.
    fn lr(&self, stage: &StageConfig) -> f64 {
        stage.lr_at(self.state.step_in_stage) * self.state.lr_scale
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
            let has_adapter = self.params.iter().any(|(n, _)| is_adapter_param(n));
            bail!(
                "stages[{index}].trainable matches no parameter of the {} model{}",
                self.model_name(),
                if has_adapter { "" } else { " (it has no adapter)" }
            );
        }
        if self.state.step_in_stage == 0 {
            self.begin_stage(index, &stage, &trainable)?;
        }
        let trainable_vars: NamedVars = self.params.iter().filter(|(n, _)| trainable.contains(n)).cloned().collect();
        let model = self.stage_model(&trainable)?;
        let trains_adapter = trainable.iter().any(|n| is_adapter_param(n));
        let source = self.task.data(&stage, noise::stream_seed(self.config.seed, Stream::DataOrder))?;
        let mut prefetcher = Prefetcher::spawn_source(source, self.state.data_cursor, stage.batch_size, PREFETCH_DEPTH);
        self.last_log = (Instant::now(), self.state.global_step);
        while self.state.step_in_stage < stage.steps {
            if let Some(interrupt) = self.poll_commands()? {
                return Ok(Some(interrupt));
            }
            let lr = self.lr(&stage);
            let outcome = self.train_step(&model, &stage, &trainable_vars, &mut prefetcher)?;
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
                    let policy = self.config.checkpoints.on_nan;
                    let step = self.state.global_step;
                    let consequence = match policy {
                        NanPolicy::Skip => {
                            format!("the update was skipped ({consecutive} of {limit} allowed in a row)")
                        }
                        NanPolicy::Fail => "the update was not applied and the run stops (on_nan = \"fail\")".into(),
                        NanPolicy::Rollback => {
                            "the update was not applied; rolling back (on_nan = \"rollback\")".into()
                        }
                    };
                    self.emit(TrainEvent::NanDetected {
                        step,
                        stage: stage.name.clone(),
                        consecutive,
                        message: format!("step {step}: {what}; {consequence}"),
                    });
                    match policy {
                        NanPolicy::Skip => {}
                        NanPolicy::Fail => bail!(
                            "step {step}: {what} — on_nan = \"fail\" stopped the run; nothing non-finite was saved, \
                             so it can be resumed from its newest checkpoint"
                        ),
                        NanPolicy::Rollback => {
                            drop(prefetcher);
                            return Ok(Some(Interrupt::RollBack { at_step: step, what }));
                        }
                    }
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
            let actions = policy::after_step(&stage, self.state.step_in_stage);
            if actions.log {
                self.log_metrics(&model, &stage, lr, loss, grad_norm)?;
            }
            if actions.evaluate && self.evaluate(&stage, actions.stage_done)? {
                break; // early stop: the stage ends here
            }
            if actions.stage_done {
                break;
            }
            if actions.save {
                self.save()?;
            } else if actions.samples {
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

    /// The model's name in messages: the task kind, with the shapes task's size preset.
    fn model_name(&self) -> String {
        if self.descriptor.kind == "shapes" {
            self.config.model.preset.name().to_string()
        } else {
            self.descriptor.kind.clone()
        }
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
        if missing.iter().any(|n| !is_adapter_param(n)) {
            bail!(
                "{origin}: lacks base parameters ({}); only adapter weights may be missing",
                missing.iter().filter(|n| !is_adapter_param(n)).cloned().collect::<Vec<_>>().join(", ")
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
    fn stage_model(&self, trainable: &HashSet<String>) -> Result<T::Model> {
        let tensors: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(name, var)| {
                let t = if trainable.contains(name) { var.as_tensor().clone() } else { var.as_tensor().detach() };
                (name.clone(), t)
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        self.task.build(vb).map_err(|e| anyhow::anyhow!("building the {} model: {e}", self.descriptor.kind))
    }

    /// Handles pending commands; blocks while paused. Returns an interrupt when the run must stop.
    fn poll_commands(&mut self) -> Result<Option<Interrupt>> {
        let mut paused = false;
        loop {
            if let Some(failure) = self.recorded.failure() {
                bail!("the run's files can no longer be written, so training stopped: {failure}");
            }
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
        model: &T::Model,
        stage: &StageConfig,
        trainable: &NamedVars,
        prefetcher: &mut Prefetcher<<T::Data as BatchSource>::Batch>,
    ) -> Result<StepOutcome> {
        let step_number = self.state.global_step + 1;
        let mut rng = noise::step_rng(self.config.seed, self.state.global_step);
        let mut accumulated = GradAccumulator::default();
        for micro in 0..stage.grad_accum {
            let mut batch = prefetcher.next_batch()?;
            for warning in self.task.take_warnings(&mut batch) {
                self.emit(TrainEvent::Warning { step: step_number, message: warning });
            }
            let mut shards = self.task.loss_shards(model, &batch, stage, &mut rng)?;
            let injected = self.nan_injections_left.iter().position(|s| *s == step_number);
            if let (0, Some(index), false) = (micro, injected, shards.is_empty()) {
                self.nan_injections_left.remove(index);
                let first = shards.remove(0);
                shards.insert(0, first.poisoned()); // fault injection for tests
            }
            accumulated.add(micro, shards, stage.grad_accum, trainable)?;
        }
        let settings = UpdateSettings {
            lr: self.lr(stage),
            weight_decay: stage.weight_decay,
            grad_clip: stage.grad_clip,
            ema_decay: stage.ema_decay,
        };
        let updated = Updated {
            optimizer: &mut self.optimizer,
            ema: &mut self.ema,
            ema_updates: &mut self.state.ema_updates,
            params: &self.params,
        };
        apply_step(accumulated, trainable, settings, updated)
    }

    fn log_metrics(
        &mut self,
        model: &T::Model,
        stage: &StageConfig,
        lr: f64,
        loss: Option<f64>,
        grad_norm: Option<f64>,
    ) -> Result<()> {
        let gates = self.task.gates(model)?;
        let scalars = self.task.scalars(model)?.into_iter().filter(|(_, v)| v.is_finite()).collect();
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
            gpu_mem_bytes: crate::monitor::device_memory_bytes(&self.device),
            scalars,
        }));
        Ok(())
    }

    /// The stage being trained (the last one once the plan is done).
    fn current_stage(&self) -> StageConfig {
        let last = self.config.stages.len().saturating_sub(1);
        self.config.stages.get(self.state.stage_index.min(last)).cloned().unwrap_or_default()
    }

    /// Saves a checkpoint of the current state with its samples (unless this step's is already on disk),
    /// then prunes old ones.
    fn save(&mut self) -> Result<()> {
        if self.last_saved_step == Some(self.state.global_step) {
            return Ok(());
        }
        let samples = match self.pending_samples.take() {
            Some((step, samples)) if step == self.state.global_step => samples,
            _ => self.draw_samples()?,
        };
        self.save_with_samples(samples)
    }

    fn save_with_samples(&mut self, samples: Option<Samples>) -> Result<()> {
        if self.last_saved_step == Some(self.state.global_step) {
            return Ok(());
        }
        // Every event sent so far is on disk before the checkpoint is: a checkpoint never gets ahead of the
        // logs, so a resume from it re-creates whatever a full disk kept from being written.
        self.recorded.wait_for(self.emitted.get()).map_err(|failure| {
            anyhow::anyhow!(
                "the run's files can no longer be written, so training stopped before saving step {}: {failure}",
                self.state.global_step
            )
        })?;
        self.state.wall_secs = self.wall_secs();
        let files = match &samples {
            Some(samples) => samples.files()?,
            None => Vec::new(),
        };
        let extra: Vec<(&str, &[u8])> = files.iter().map(|(name, bytes)| (*name, bytes.as_slice())).collect();
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
        let stage_names: Vec<String> = self.config.stages.iter().map(|s| s.name.clone()).collect();
        let stage = policy::checkpoint_stage(&stage_names, self.state.stage_index, self.state.step_in_stage);
        self.emit(TrainEvent::CheckpointSaved {
            step: self.state.global_step,
            stage,
            checkpoint: name,
            bytes,
            message: format!("checkpoint {} saved ({:.1} MB)", dir.display(), bytes as f64 / 1e6),
        });
        let entries = self.dir.checkpoints()?;
        let best = self.state.best.as_ref().and_then(|b| b.best()).and_then(|b| b.checkpoint.clone());
        let keep_last = self.config.checkpoints.keep_last;
        for entry in policy::prune(&entries, keep_last, self.state.global_step, best.as_deref()) {
            std::fs::remove_dir_all(&entry.dir).with_context(|| format!("cannot prune {}", entry.dir.display()))?;
            self.emit(TrainEvent::CheckpointPruned {
                step: self.state.global_step,
                checkpoint: entry.name.clone(),
                message: format!("pruned {} (keep_last = {keep_last})", entry.name),
            });
        }
        Ok(())
    }

    /// The model samples are drawn with: EMA weights when there are some and the config asks for them.
    fn sampling_model(&self) -> Result<T::Model> {
        let use_ema = self.config.eval.sampler.use_ema && !self.ema.is_empty();
        let tensors: HashMap<String, Tensor> = if use_ema {
            self.ema.tensors().iter().map(|(n, t)| (n.clone(), t.detach())).collect()
        } else {
            self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
        };
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        self.task
            .build(vb)
            .map_err(|e| anyhow::anyhow!("building the {} model for sampling: {e}", self.descriptor.kind))
    }

    /// The task's samples of the current sampling weights.
    fn draw_samples(&mut self) -> Result<Option<Samples>> {
        let model = self.sampling_model()?;
        let stage = self.current_stage();
        let ctx = EvalContext {
            step: self.state.global_step,
            stage: &stage,
            title: checkpoint_name(self.state.global_step),
            run_root: self.dir.root(),
        };
        self.task.samples(&model, &ctx)
    }

    /// Writes the samples outside any checkpoint: `samples/step-N.png` (+ .json), or `samples/step-N.json`.
    fn save_samples(&mut self) -> Result<()> {
        let Some(samples) = self.draw_samples()? else {
            return Ok(());
        };
        let dir = self.dir.root().join("samples");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = checkpoint_name(self.state.global_step);
        let mut shown = String::new();
        for (file, bytes) in samples.files()? {
            let extension = file.rsplit('.').next().unwrap_or("bin");
            crate::run::atomic::atomic_write(&dir.join(format!("{name}.{extension}")), &bytes)?;
            if shown.is_empty() || extension == "png" {
                shown = format!("samples/{name}.{extension}");
            }
        }
        self.emit(TrainEvent::SamplesSaved {
            step: self.state.global_step,
            path: shown,
            message: format!("samples saved at step {}", self.state.global_step),
        });
        Ok(())
    }

    /// Evaluates the current weights through the task, records the results, updates the best checkpoint and
    /// the stage's early stopping, and saves the checkpoint of this step (at a stage's end, the stage-end
    /// save does, with the samples drawn here). Returns true when the stage must stop early.
    fn evaluate(&mut self, stage: &StageConfig, at_stage_end: bool) -> Result<bool> {
        let start = Instant::now();
        let model = self.sampling_model()?;
        let ctx = EvalContext {
            step: self.state.global_step,
            stage,
            title: checkpoint_name(self.state.global_step),
            run_root: self.dir.root(),
        };
        let evaluation = self.task.evaluate(&model, &ctx)?;
        drop(model);
        let (loss_sum, loss_count) = std::mem::take(&mut self.state.losses_since_eval);
        let mut record = EvalRecord {
            step: self.state.global_step,
            stage: stage.name.clone(),
            loss: (loss_count > 0).then(|| loss_sum / loss_count as f64),
            ..EvalRecord::default()
        };
        let mut samples = None;
        if let Some(evaluation) = evaluation {
            for (name, value) in &evaluation.metrics {
                record.set_metric(name, value.is_finite().then_some(*value));
            }
            record.samples = evaluation.examples;
            record.sample_secs = evaluation.sample_secs;
            samples = evaluation.samples;
        }
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
        }
        if stopping || at_stage_end {
            // At a stage's end (early or planned) the checkpoint is saved once the state points at the next
            // stage, so a resume starts it cleanly; it takes the samples drawn here.
            self.pending_samples = Some((self.state.global_step, samples));
        } else {
            self.save_with_samples(samples)?;
        }
        Ok(stopping)
    }
}
