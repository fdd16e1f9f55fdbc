//! Preflight: one batch of each stage of a draft config through a fresh model, on a worker, before a run —
//! tensor shapes and dtypes, forward and backward, gradients of every trainable parameter, parameter counts,
//! peak memory and an estimate of the whole plan's time. Each check is a line with ✔ or ✘ and a message.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Tensor};
use crossbeam_channel::{bounded, Receiver};

use crate::config::RunConfig;
use crate::data::{dataset_class_names, make_batch, Dataset, FolderOptions};
use crate::model::{build_model, flow_matching_loss, param_count, sorted_vars, ModelSpec};
use crate::train::noise::{draw_samples, step_rng, stream_seed, DrawSettings, Stream};

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckItem {
    /// What was checked.
    pub label: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen (or what went wrong).
    pub message: String,
}

impl CheckItem {
    fn new(label: impl Into<String>, ok: bool, message: impl Into<String>) -> Self {
        Self { label: label.into(), ok, message: message.into() }
    }
}

/// Peak resident memory of this process (VmHWM of /proc/self/status), when the platform tells.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub use crate::monitor::format_bytes;

/// Runs the preflight of `config` (seconds to minutes: call it on a worker). A failure to even start ends
/// the list with a ✘ line saying why. An image folder is checked and decoded with `cache_dir` (the runs
/// folder's cache, shared with its runs).
pub fn run_preflight(config: &RunConfig, cache_dir: Option<std::path::PathBuf>) -> Vec<CheckItem> {
    let mut items = Vec::new();
    if let Err(e) = preflight_into(config, cache_dir, &mut items) {
        items.push(CheckItem::new("Preflight", false, format!("{e:#}")));
    }
    items
}

fn preflight_into(
    config: &RunConfig,
    cache_dir: Option<std::path::PathBuf>,
    items: &mut Vec<CheckItem>,
) -> anyhow::Result<()> {
    match config.validate() {
        Ok(()) => items.push(CheckItem::new("Config is valid", true, "no problems")),
        Err(issues) => {
            let first = issues.first().map(ToString::to_string).unwrap_or_default();
            items.push(CheckItem::new(
                "Config is valid",
                false,
                format!("{} problem(s), the first: {first}", issues.len()),
            ));
            return Ok(());
        }
    }
    let device = crate::train::select_device(&config.device)?;
    let classes = dataset_class_names(&config.dataset)?;
    let spec = ModelSpec::for_config(&config.model, classes.len());
    let (varmap, model) = build_model(spec, &device, stream_seed(config.seed, Stream::Init))?;
    let vars = sorted_vars(&varmap)?;
    let options = FolderOptions { cache_dir, split: None };
    let dataset = Dataset::open(&config.dataset, spec.image_size, spec.slots, spec.null_class(), &options, |_| {})?;
    if let Some(folder) = dataset.as_folder() {
        let report = folder.report();
        items.push(CheckItem::new(
            "Data",
            report.errors.is_empty(),
            format!(
                "{} usable images in {} classes, {} training / {} held out; {} problems skipped",
                report.usable_images,
                report.classes.len(),
                folder.len(),
                folder.heldout_len(),
                report.problems.len()
            ),
        ));
    }
    let side = spec.image_size;
    let slots = spec.slots;
    let total_params = param_count(spec);
    let mut plan_secs = 0.0;
    let mut forward_secs_per_image = f64::NAN;
    for (index, stage) in config.stages.iter().enumerate() {
        let name = format!("stage {} `{}`", index + 1, stage.name);
        let batch = make_batch(&dataset, stream_seed(config.seed, Stream::DataOrder), 0, stage.batch_size);
        let b = batch.size;
        let mut rng = step_rng(config.seed, 0);
        let mut eps = Vec::new();
        let draws = draw_samples(&mut rng, b, 3 * side * side, DrawSettings::of_stage(stage), &mut eps);
        let t: Vec<f32> = draws.iter().map(|d| d.t).collect();
        let x0 = Tensor::from_vec(batch.images.clone(), (b, 3, side, side), &device)?;
        let eps = Tensor::from_vec(eps, (b, 3, side, side), &device)?;
        let t = Tensor::from_vec(t, b, &device)?;
        let y = Tensor::from_vec(batch.labels.clone(), b, &device)?;
        let boxes = Tensor::from_vec(batch.boxes.clone(), (b, slots, 4), &device)?;
        let box_classes = Tensor::from_vec(batch.box_classes.clone(), (b, slots), &device)?;
        if index == 0 {
            let channels = x0.dim(1)?;
            items.push(CheckItem::new(
                "Image tensor",
                x0.dims() == [b, 3, side, side],
                format!("{:?} ({channels} channels, RGB in [-1, 1])", x0.dims()),
            ));
            items.push(CheckItem::new(
                "Layout tensors",
                boxes.dims() == [b, slots, 4] && box_classes.dims() == [b, slots],
                format!("boxes {:?} [B,K,4], box classes {:?} [B,K]", boxes.dims(), box_classes.dims()),
            ));
            let dtypes_ok = x0.dtype() == DType::F32
                && boxes.dtype() == DType::F32
                && y.dtype() == DType::U32
                && box_classes.dtype() == DType::U32;
            items.push(CheckItem::new(
                "Dtypes",
                dtypes_ok,
                format!(
                    "images {:?}, boxes {:?}, labels {:?}, box classes {:?}",
                    x0.dtype(),
                    boxes.dtype(),
                    y.dtype(),
                    box_classes.dtype()
                ),
            ));
        }
        let started = Instant::now();
        let loss = match flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &box_classes) {
            Ok(loss) => loss,
            Err(e) => {
                items.push(CheckItem::new(format!("Forward ({name})"), false, format!("{e}")));
                return Ok(());
            }
        };
        let loss_value = loss.to_scalar::<f32>().context("reading the loss")?;
        let forward_secs = started.elapsed().as_secs_f64();
        items.push(CheckItem::new(
            format!("Forward ({name})"),
            loss_value.is_finite(),
            format!("loss {loss_value:.4} on a batch of {b} in {:.0} ms", forward_secs * 1e3),
        ));
        if index == 0 {
            forward_secs_per_image = forward_secs / b.max(1) as f64;
        }
        let grads = match loss.backward() {
            Ok(grads) => grads,
            Err(e) => {
                items.push(CheckItem::new(format!("Backward ({name})"), false, format!("{e}")));
                return Ok(());
            }
        };
        let step_secs = started.elapsed().as_secs_f64();
        items.push(CheckItem::new(
            format!("Backward ({name})"),
            true,
            format!("forward + backward {:.0} ms", step_secs * 1e3),
        ));
        let trainable: Vec<&String> = vars.iter().map(|(n, _)| n).filter(|n| stage.trainable.matches(n)).collect();
        let with_grad: HashSet<&String> =
            vars.iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).map(|(n, _)| n).collect();
        let missing: Vec<&str> = trainable.iter().filter(|n| !with_grad.contains(*n)).map(|n| n.as_str()).collect();
        let trainable_count: usize =
            vars.iter().filter(|(n, _)| stage.trainable.matches(n)).map(|(_, v)| v.as_tensor().elem_count()).sum();
        items.push(CheckItem::new(
            format!("Gradients ({name})"),
            missing.is_empty() && !trainable.is_empty(),
            if trainable.is_empty() {
                format!("`trainable = {}` matches no parameter", stage.trainable)
            } else if missing.is_empty() {
                format!("all {} trainable tensors get a gradient", trainable.len())
            } else {
                format!(
                    "{} of {} trainable tensors get no gradient: {}",
                    missing.len(),
                    trainable.len(),
                    missing.join(", ")
                )
            },
        ));
        items.push(CheckItem::new(
            format!("Parameters ({name})"),
            trainable_count > 0,
            format!("{trainable_count} trainable of {total_params} in total"),
        ));
        plan_secs += stage.steps as f64 * step_secs * stage.grad_accum.max(1) as f64;
        // Evaluations: every eval_every steps and at the stage's end; sample grids with every checkpoint.
        let sampler = &config.eval.sampler;
        let passes = sampler.forward_passes() as f64;
        let evals = stage.steps.checked_div(stage.eval_every).map_or(0, |n| n + 1);
        let saves = stage.steps.checked_div(stage.save_every).map_or(1, |n| n + 1);
        let per_image = forward_secs_per_image.max(0.0);
        plan_secs += evals as f64 * config.eval.samples as f64 * passes * per_image;
        plan_secs += saves as f64 * config.eval.grid_rows as f64 * passes * per_image;
    }
    items.push(CheckItem::new(
        "Peak memory",
        true,
        peak_rss_bytes().or_else(crate::monitor::rss_bytes).map_or("unknown on this platform".to_string(), |b| {
            format!("{} resident (whole process, peak)", format_bytes(b))
        }),
    ));
    items.push(CheckItem::new(
        "Estimated time",
        plan_secs.is_finite(),
        format!(
            "≈ {} for {} steps (measured step time × steps + evaluations and sample grids)",
            crate::ui::format_duration(plan_secs),
            config.total_steps()
        ),
    ));
    Ok(())
}

/// State of the Preflight panel.
#[derive(Default)]
pub struct PreflightState {
    /// The last checklist and the config name it was run for.
    pub result: Option<(String, Vec<CheckItem>)>,
    running: Option<Receiver<Vec<CheckItem>>>,
    running_name: String,
}

impl PreflightState {
    /// Starts a preflight of `config` on a worker (`cache_dir`: see [`run_preflight`]).
    pub fn start(
        &mut self,
        config: RunConfig,
        cache_dir: Option<std::path::PathBuf>,
        ctx: &egui::Context,
    ) -> Result<(), String> {
        if self.running.is_some() {
            return Err("a preflight is already running".to_string());
        }
        let (tx, rx) = bounded(1);
        let ctx = ctx.clone();
        self.running_name = config.name.clone();
        std::thread::Builder::new()
            .name("preflight".into())
            .spawn(move || {
                let _ = tx.send(run_preflight(&config, cache_dir));
                ctx.request_repaint();
            })
            .map_err(|e| format!("cannot start the preflight: {e}"))?;
        self.running = Some(rx);
        Ok(())
    }

    /// Whether a preflight is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Takes the worker's checklist.
    pub fn poll(&mut self) {
        if let Some(rx) = &self.running {
            match rx.try_recv() {
                Ok(items) => {
                    self.result = Some((std::mem::take(&mut self.running_name), items));
                    self.running = None;
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    let failed =
                        vec![CheckItem::new("Preflight", false, "the preflight worker ended without a result")];
                    self.result = Some((std::mem::take(&mut self.running_name), failed));
                    self.running = None;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_formatted_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
