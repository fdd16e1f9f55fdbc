//! The `wick` command: parses arguments and hands over to the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use wick::config::{ConfigError, ModelPreset, RunConfig};
use wick::run::{RunDir, TrainEvent};
use wick::train::{self, TrainOptions};

/// Wick: a training workbench for candle. Without a subcommand it opens the window (the demo curriculum
/// loaded in Setup); `wick demo` trains the demo curriculum headless.
#[derive(Parser)]
#[command(name = "wick", version = VERSION, about)]
struct Cli {
    /// Folder holding the runs.
    #[arg(long, global = true, default_value = "runs")]
    runs_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train the demo curriculum (assets/presets/demo.toml) headless, with a progress bar.
    Demo,
    /// Start a run from a config file (TOML) and train it to the end.
    Train {
        /// The run config, e.g. assets/presets/smoke.toml.
        config: PathBuf,
        /// Run name (default: the config's `name`).
        #[arg(long)]
        name: Option<String>,
        /// Stop (with a checkpoint) after this global step.
        #[arg(long)]
        stop_at: Option<u64>,
    },
    /// Continue a run from its newest intact checkpoint.
    Resume {
        /// The run directory.
        run_dir: PathBuf,
        /// Stop (with a checkpoint) after this global step.
        #[arg(long)]
        stop_at: Option<u64>,
    },
    /// Check every checkpoint of a run against its manifest (sizes and sha256); on a Hugging Face Trainer
    /// output directory or checkpoint-N, check its safetensors files, shard index, NaN / Inf and whether it
    /// can be resumed.
    Verify {
        /// The run directory (or a single checkpoint directory).
        run_dir: PathBuf,
    },
    /// Check a curriculum trained as several Hugging Face Trainer runs, one output directory per stage in
    /// order: each stage continues the previous one's global step and learning-rate schedule and trains.
    Stages {
        /// The stages' output directories, in order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Write a run's files in another tool's format.
    Export {
        #[command(subcommand)]
        what: ExportCommand,
    },
    /// Run the denoiser of a checkpoint on saved inputs (x, t, y, boxes, box_classes) and write `v`.
    Predict {
        /// Checkpoint directory (holding model.safetensors) or the weights file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Input safetensors.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// The checkpoint table of a run (metrics, best and Pareto marks) and which checkpoint to use: a Wick
    /// run, or a Hugging Face Trainer output directory (one row per checkpoint-N).
    Report {
        /// The run directory.
        run_dir: PathBuf,
        /// The metric the recommendation follows (a Trainer run: an eval_* key; default: the one its
        /// best_metric is, else eval_loss).
        #[arg(long)]
        metric: Option<String>,
        /// Whether lower or higher is better for --metric (default: guessed from its name).
        #[arg(long, value_parser = ["min", "max"])]
        mode: Option<String>,
    },
    /// Every run under PATH (searched recursively): Wick runs, TensorBoard log directories and Hugging Face
    /// Trainer output directories, with their last step, number of series and last update.
    Runs {
        /// Folder to search.
        #[arg(default_value = "runs")]
        path: PathBuf,
    },
    /// Every scalar point of one run of any kind (Wick, TensorBoard, Hugging Face Trainer), no sampling.
    Scalars {
        /// The run directory.
        run: PathBuf,
        /// Only tags matching this glob (e.g. 'eval/*').
        #[arg(long)]
        tag: Option<String>,
        /// csv (tag,step,wall_time,value) or jsonl.
        #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
        format: String,
    },
    /// Sample checkpoints side by side on identical inputs (one column per checkpoint or gate scale).
    Sample {
        /// Checkpoint directories.
        #[arg(required = true)]
        checkpoints: Vec<PathBuf>,
        /// Gate scales, comma-separated (e.g. 0,0.5,1); with one checkpoint, one column each.
        #[arg(long, value_delimiter = ',')]
        gate_scales: Vec<f64>,
        /// Seed of the fixed noise and layouts.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rows.
        #[arg(long, default_value_t = 8)]
        count: usize,
        #[command(flatten)]
        sampler: SamplerArgs,
        /// Add a first column of the real held-out images the rows' layouts come from.
        #[arg(long)]
        real: bool,
        /// Output PNG (a .json describing the cells is written beside it).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Score checkpoints (FID, top-1/2/3, IoU) with any sampler settings, as a run's evaluation would.
    Eval {
        /// Checkpoint directories.
        #[arg(required = true)]
        checkpoints: Vec<PathBuf>,
        /// Images generated (and real images compared).
        #[arg(long, default_value_t = 500)]
        samples: usize,
        /// Seed of the fixed noise and layouts.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Multiplies every adapter gate (1 = as trained, 0 = adapter off).
        #[arg(long, default_value_t = 1.0)]
        gate_scale: f64,
        #[command(flatten)]
        sampler: SamplerArgs,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Your own data: check an image folder (and its layout JSONL) before training on it.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The judge network behind FID, top-k and IoU.
    Judge {
        #[command(subcommand)]
        command: JudgeCommand,
    },
    /// Time the trainer's step (forward, backward, guard, clipping, AdamW, EMA) on prepared batches — or,
    /// with --sampler, evaluation sampling — and print one JSON line (images/s, model and GEMM FLOP/s).
    Bench {
        /// Model preset: tiny, small or base.
        #[arg(long, default_value = "small")]
        preset: String,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// CPU threads (0 = every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Time the Euler sampler with guidance instead of training (--batch images per sampled batch,
        /// --steps batches).
        #[arg(long)]
        sampler: bool,
        /// Euler steps per sample (with --sampler).
        #[arg(long, default_value_t = 20, requires = "sampler")]
        sampler_steps: usize,
        /// Guidance scale (with --sampler; 1 = none).
        #[arg(long, default_value_t = 2.0, requires = "sampler")]
        guidance: f64,
        #[command(flatten)]
        device: DeviceArg,
    },
}

/// `wick export` formats.
#[derive(Subcommand)]
enum ExportCommand {
    /// TensorBoard event files in the run directory, from its metrics, evaluations and samples (for a run
    /// made before Wick wrote them as it trained).
    Tensorboard {
        /// The run directory.
        run_dir: PathBuf,
        /// Replace the event files Wick wrote before.
        #[arg(long)]
        replace: bool,
    },
}

/// `--device` of the commands that compute (`auto` = CUDA 0 when this build has CUDA and a GPU answers, else the
/// CPU), as a run config's `device` field.
#[derive(clap::Args)]
struct DeviceArg {
    /// Where to compute: auto, cpu or cuda:N.
    #[arg(long = "device", default_value = "auto", value_name = "auto|cpu|cuda:N")]
    choice: String,
}

impl DeviceArg {
    fn select(&self) -> Result<candle_core::Device> {
        train::select_device(&self.choice).with_context(|| format!("--device {}", self.choice))
    }
}

/// Sampler settings shared by `wick sample` and `wick eval` (defaults: the evaluation's).
#[derive(clap::Args)]
struct SamplerArgs {
    /// Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 2.0)]
    guidance: f64,
    /// Guidance also drops the layout in its unconditional branch (strengthens the layout too).
    #[arg(long)]
    guide_layout: bool,
    /// Apply guidance only while t (1 = noise, 0 = image) is in LOW,HIGH (e.g. 0.2,0.8); outside, the
    /// conditional prediction alone
    #[arg(long, value_name = "LOW,HIGH", value_parser = parse_interval, default_value = "0,1")]
    guidance_interval: [f64; 2],
    /// Use the raw weights even when the checkpoint has EMA weights.
    #[arg(long)]
    raw: bool,
}

impl SamplerArgs {
    fn config(&self, gate_scale: f64) -> wick::eval::sampler::SamplerConfig {
        wick::eval::sampler::SamplerConfig {
            steps: self.steps,
            guidance: self.guidance,
            guide_layout: self.guide_layout,
            guidance_interval: self.guidance_interval,
            gate_scale,
            use_ema: !self.raw,
            ..Default::default()
        }
    }
}

/// Parses `LOW,HIGH` with 0 ≤ LOW ≤ HIGH ≤ 1.
fn parse_interval(text: &str) -> Result<[f64; 2], String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [low, high] = parts.as_slice() else {
        return Err(format!("expected two numbers LOW,HIGH such as 0.2,0.8, found `{text}`"));
    };
    let number = |s: &str| s.parse::<f64>().map_err(|_| format!("`{s}` is not a number (in `{text}`)"));
    let (low, high) = (number(low)?, number(high)?);
    if !(0.0 <= low && low <= high && high <= 1.0) {
        return Err(format!("need 0 ≤ LOW ≤ HIGH ≤ 1, found {low},{high}"));
    }
    Ok([low, high])
}

/// `wick --version`: crate version, git hash, cargo features.
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("WICK_GIT_HASH"), ", features: [", env!("WICK_FEATURES"), "])");

#[derive(Subcommand)]
enum JudgeCommand {
    /// Train the judge deterministically on real images — the `shapes` task, or an image folder
    /// (`--dataset`) — and write its weights and a report (held-out accuracy, box IoU) beside them.
    Train {
        /// Seed of the weights and data order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Optimizer steps.
        #[arg(long, default_value_t = 4000)]
        steps: usize,
        /// An image folder (one subfolder per class) to train on instead of the shapes task.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// The folder's layout JSONL (trains the box head).
        #[arg(long, requires = "dataset")]
        layouts: Option<PathBuf>,
        /// Image side the folder is read at: 32 or 64.
        #[arg(long, default_value_t = 32)]
        resolution: usize,
        /// Output weights file (the report goes to the same name with .json).
        #[arg(long, default_value = "assets/judge/shapes.safetensors")]
        out: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Scan every file of an image folder (resumable: an interrupted check continues) and report counts per
    /// class, image sizes, unreadable files, duplicates and layout problems. JSON on stdout, a summary on
    /// stderr; exit code 1 when the data cannot train.
    Check {
        /// The image folder: one subfolder per class.
        path: PathBuf,
        /// The layout JSONL (one line per image).
        #[arg(long)]
        layouts: Option<PathBuf>,
        /// Units of the layout boxes: auto, pixels or normalized.
        #[arg(long, default_value = "auto")]
        box_units: String,
    },
}

/// Exit code for a config that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before any thread or candle op exists: allocator and thread-pool settings training speed depends on.
    wick::model::tune_cpu_runtime();
    let cli = Cli::parse();
    wick::logging::init("warn");
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some() { EXIT_CONFIG } else { 1 };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        None => {
            wick::app::run_native(wick::app::AppOptions {
                runs_dir: cli.runs_dir,
                tasks: wick::task::registry::TaskRegistry::builtin(),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Demo) => {
            let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/presets/demo.toml");
            eprintln!("wick demo: training the demo curriculum ({}) headless", preset.display());
            train_new(&preset, &cli.runs_dir, None, None)
        }
        Some(Command::Train { config, name, stop_at }) => train_new(&config, &cli.runs_dir, name, stop_at),
        Some(Command::Resume { run_dir, stop_at }) => {
            let dir = RunDir::open(&run_dir)?;
            let config = dir.config()?;
            wick::model::set_compute_threads(config.threads);
            watch(train::start(dir, TrainOptions { resume: true, stop_at_step: stop_at, ..Default::default() })?)
        }
        Some(Command::Verify { run_dir }) => verify(&run_dir),
        Some(Command::Stages { dirs }) => {
            let check = wick::interop::hf_stages::check_stages(&dirs);
            print!("{}", wick::interop::hf_stages::format_stages(&check));
            Ok(if check.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some(Command::Export { what: ExportCommand::Tensorboard { run_dir, replace } }) => {
            let summary = wick::interop::wick::export_tensorboard(&run_dir, replace)?;
            println!(
                "wrote {} ({} scalar points, {} sample grids{})",
                summary.path.display(),
                summary.scalar_points,
                summary.samples,
                if summary.replaced.is_empty() {
                    String::new()
                } else {
                    format!("; replaced {} earlier file(s)", summary.replaced.len())
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Runs { path }) => list_runs(&path),
        Some(Command::Scalars { run, tag, format }) => {
            let run = wick::interop::open_run(&run)?;
            let scalars = wick::interop::read_scalars(&run)?;
            let pattern = tag
                .as_deref()
                .map(glob::Pattern::new)
                .transpose()
                .with_context(|| format!("--tag {:?} is not a glob", tag.as_deref().unwrap_or_default()))?;
            let format =
                if format == "jsonl" { wick::interop::ScalarFormat::Jsonl } else { wick::interop::ScalarFormat::Csv };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            wick::interop::write_scalars(&mut out, &scalars, pattern.as_ref(), format)?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Predict { checkpoint, input, output, device }) => {
            wick::model::predict_file(&checkpoint, &input, &output, &device.select()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Report { run_dir, metric, mode }) => {
            let mode =
                mode.map(|m| if m == "min" { wick::config::MetricMode::Min } else { wick::config::MetricMode::Max });
            if wick::interop::run_kind_of(&run_dir) == Some(wick::interop::RunKind::HfTrainer) {
                let run = wick::interop::hf::HfRun::open(&run_dir)?;
                let report = wick::interop::hf::report(&run, metric.as_deref(), mode);
                print!("{}", wick::interop::hf::format_report(&report, &run.state));
                return Ok(ExitCode::SUCCESS);
            }
            let dir = RunDir::open(&run_dir)?;
            let (rows, recommendation) = wick::eval::report::checkpoint_report(&dir)?;
            match dir.task_descriptor().filter(|t| t.kind != "shapes") {
                Some(task) => {
                    let columns = wick::eval::report::report_columns(&task);
                    print!("{}", wick::eval::report::format_report_for(&columns, &rows, &recommendation, false));
                }
                None => print!("{}", wick::eval::report::format_report(&rows, &recommendation)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Sample { checkpoints, gate_scales, seed, count, sampler, real, out, device }) => {
            // A text task's checkpoints carry their samples: print them side by side (and write them to OUT).
            if let Some(table) = wick::eval::compare::text_comparison(&checkpoints)? {
                let text = wick::eval::compare::format_text_comparison(&table);
                print!("{text}");
                wick::run::atomic::atomic_write(&out, text.as_bytes())?;
                return Ok(ExitCode::SUCCESS);
            }
            let device = device.select()?;
            let sampler = sampler.config(1.0);
            let request = wick::eval::compare::CompareRequest {
                checkpoints,
                gate_scales,
                seed,
                count,
                sampler,
                scale: 4,
                real_images: real,
            };
            let grid = wick::eval::compare::compare_grid(&request, &device, |done, total| {
                eprintln!("sampled column {done}/{total}");
            })?;
            let description = grid.description;
            wick::run::atomic::atomic_write(&out, &grid.png)?;
            wick::run::atomic::atomic_write(&out.with_extension("json"), &serde_json::to_vec_pretty(&description)?)?;
            eprintln!(
                "wrote {} ({} columns × {} rows)",
                out.display(),
                description.columns.len(),
                description.rows.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Eval { checkpoints, samples, seed, gate_scale, sampler, device }) => {
            let device = device.select()?;
            let sampler = sampler.config(gate_scale);
            let cache = cli.runs_dir.join(".cache");
            println!("{:<40} {:>9} {:>6} {:>6} {:>6} {:>6}", "checkpoint", "fid", "top1", "top2", "top3", "iou");
            for checkpoint in &checkpoints {
                let scores = wick::eval::compare::evaluate_checkpoint(
                    checkpoint,
                    &sampler,
                    seed,
                    samples,
                    Some(&cache),
                    &device,
                )
                .with_context(|| format!("evaluating {}", checkpoint.display()))?;
                println!(
                    "{:<40} {:>9.2} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
                    checkpoint.display(),
                    scores.fid,
                    scores.top_k[0],
                    scores.top_k[1],
                    scores.top_k[2],
                    scores.iou
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Judge {
            command: JudgeCommand::Train { seed, steps, dataset, layouts, resolution, out, device },
        }) => {
            let options = JudgeTrainArgs { seed, steps, folder: dataset, layouts, resolution };
            judge_train(&cli.runs_dir, options, &out, &device.select()?)
        }
        // The check's journal lives in the runs folder's .cache, shared with the runs.
        Some(Command::Data { command: DataCommand::Check { path, layouts, box_units } }) => {
            data_check(&path, layouts, &box_units, &cli.runs_dir)
        }
        Some(Command::Bench { preset, batch, steps, warmup, threads, sampler, sampler_steps, guidance, device }) => {
            let preset: ModelPreset = serde_json::from_value(serde_json::Value::String(preset.clone()))
                .map_err(|_| anyhow::anyhow!("--preset {preset}: expected tiny, small or base"))?;
            wick::model::set_compute_threads(threads);
            let threads =
                if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
            let sampler = sampler.then(|| wick::eval::sampler::SamplerConfig {
                steps: sampler_steps,
                guidance,
                ..Default::default()
            });
            let options = wick::bench::BenchOptions { preset, batch, steps, warmup, threads, sampler };
            let report = wick::bench::run_bench(&options, &device.select()?)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn train_new(config_path: &Path, runs_dir: &Path, name: Option<String>, stop_at: Option<u64>) -> Result<ExitCode> {
    let config = RunConfig::load(config_path)?;
    wick::model::set_compute_threads(config.threads);
    check_folder_before_run(&config, config_path, runs_dir)?;
    let name = name.unwrap_or_else(|| config.name.clone());
    let dir = RunDir::create(runs_dir, &name, &config)?;
    eprintln!("run directory: {}", dir.root().display());
    watch(train::start(dir, TrainOptions { stop_at_step: stop_at, ..Default::default() })?)
}

/// For an image-folder dataset: checks the data before a run directory exists, so data that cannot train is
/// refused like a config error (exit code 2) instead of leaving a failed run behind. The scan's journal in
/// the runs folder's cache makes the trainer's own check of the same files a directory listing.
fn check_folder_before_run(config: &RunConfig, config_path: &Path, runs_dir: &Path) -> Result<()> {
    if config.dataset.kind != wick::config::DatasetKind::Folder {
        return Ok(());
    }
    let Some(root) = config.dataset.path.clone() else { return Ok(()) };
    let request = wick::data::CheckRequest {
        root,
        layouts: config.dataset.layouts.clone(),
        box_units: config.dataset.box_units,
        slots: wick::config::LAYOUT_SLOTS,
        cache_dir: Some(runs_dir.join(".cache")),
    };
    let bar = stderr_bar(0, "check [{bar:30}] {pos}/{len} files ({eta})")?;
    let check = wick::data::check_folder(&request, &std::sync::atomic::AtomicBool::new(false), |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    })?;
    bar.finish_and_clear();
    if check.report.errors.is_empty() {
        return Ok(());
    }
    let issues = check
        .report
        .errors
        .iter()
        .map(|message| wick::config::ConfigIssue { path: "dataset.path".to_string(), message: message.clone() })
        .collect();
    Err(wick::config::ConfigError::Invalid { origin: config_path.display().to_string(), issues }.into())
}

/// Follows a trainer's events until it ends, with a progress bar on a terminal and plain lines otherwise.
/// Ctrl-C is not intercepted: the process dies, and `wick resume` continues from the newest checkpoint.
fn watch(handle: train::TrainerHandle) -> Result<ExitCode> {
    let dir = handle.run_dir().clone();
    let total = dir.config()?.total_steps();
    let on_terminal = std::io::stderr().is_terminal();
    let bar = if on_terminal {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})")
                .context("progress bar template")?
                .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let say = |line: String| match &bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    };
    let mut last_plain = Instant::now() - Duration::from_secs(60);
    let mut outcome = ExitCode::FAILURE;
    for event in handle.events.iter() {
        match &event {
            TrainEvent::Metrics(m) => {
                let loss = m.loss.map_or("non-finite".to_string(), |l| format!("{l:.4}"));
                let gate = if m.gates.is_empty() { String::new() } else { format!(" gate {:.4}", m.gate_mean) };
                match &bar {
                    Some(bar) => {
                        bar.set_position(m.step);
                        bar.set_prefix(m.stage.clone());
                        bar.set_message(format!("loss {loss} lr {:.2e}{gate}", m.lr));
                    }
                    None if last_plain.elapsed() >= Duration::from_secs(2) || m.step == total => {
                        last_plain = Instant::now();
                        eprintln!(
                            "step {}/{} [{}] loss {loss} lr {:.2e} grad {:.3}{gate} {:.0} samples/s",
                            m.step,
                            total,
                            m.stage,
                            m.lr,
                            m.grad_norm.unwrap_or(f64::NAN),
                            m.samples_per_s
                        );
                    }
                    None => {}
                }
            }
            TrainEvent::Started { step, total_steps, .. } => {
                if let Some(bar) = &bar {
                    bar.set_length(*total_steps);
                    bar.set_position(*step);
                    bar.reset_eta();
                }
                say(event.message());
            }
            TrainEvent::CheckpointPruned { .. } => {}
            TrainEvent::Finished { .. } | TrainEvent::Stopped { .. } => {
                outcome = ExitCode::SUCCESS;
                say(event.message());
            }
            TrainEvent::Failed { message, .. } => say(format!("FAILED: {message}")),
            _ => say(event.message()),
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    handle.join();
    eprintln!("run directory: {}", dir.root().display());
    Ok(outcome)
}

/// `wick verify` on a Trainer output directory (every checkpoint-N) or one Trainer checkpoint.
fn verify_hf(path: &Path) -> Result<ExitCode> {
    let dirs: Vec<PathBuf> =
        if path.join("trainer_state.json").is_file() && wick::interop::hf::checkpoints(path).is_empty() {
            vec![path.to_path_buf()]
        } else {
            wick::interop::hf::checkpoints(path).into_iter().map(|c| c.dir).collect()
        };
    if dirs.is_empty() {
        println!("{}: no checkpoint-N folders", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut bad = 0;
    for dir in &dirs {
        let check = wick::interop::hf_verify::verify_hf_checkpoint(dir);
        println!("{} {}", if check.ok() { "ok  " } else { "BAD " }, dir.display());
        bad += usize::from(!check.ok());
        for problem in &check.problems {
            println!("     {problem}");
        }
        for note in &check.notes {
            println!("     {note}");
        }
        println!("     {}", check.resume_line());
    }
    println!("{} checkpoint(s) checked, {} bad", dirs.len(), bad);
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `wick verify`: every checkpoint of a run (or one checkpoint directory) against its manifest.
fn verify(path: &Path) -> Result<ExitCode> {
    let is_hf_checkpoint = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("checkpoint-"))
        && !path.join(wick::run::checkpoint::MANIFEST).is_file();
    if is_hf_checkpoint || wick::interop::run_kind_of(path) == Some(wick::interop::RunKind::HfTrainer) {
        return verify_hf(path);
    }
    let dirs: Vec<PathBuf> = if path.join(wick::run::checkpoint::MANIFEST).is_file() {
        vec![path.to_path_buf()]
    } else {
        let run = RunDir::open(path)?;
        run.checkpoints()?.into_iter().map(|c| c.dir).collect()
    };
    if dirs.is_empty() {
        println!("{}: no checkpoints", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut bad = 0;
    for dir in &dirs {
        let problems = wick::run::verify_checkpoint(dir);
        if problems.is_empty() {
            println!("ok   {}", dir.display());
        } else {
            bad += 1;
            println!("BAD  {}", dir.display());
            for problem in problems {
                println!("     {problem}");
            }
        }
    }
    println!("{} checkpoint(s) checked, {} bad", dirs.len(), bad);
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn stderr_bar(len: u64, template: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(len);
    if std::io::stderr().is_terminal() {
        bar.set_style(ProgressStyle::with_template(template).context("template")?);
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    Ok(bar)
}

/// `wick data check`: the data report as JSON (stdout) and a summary (stderr).
fn data_check(path: &Path, layouts: Option<PathBuf>, box_units: &str, runs_dir: &Path) -> Result<ExitCode> {
    let box_units: wick::config::BoxUnits = serde_json::from_value(serde_json::Value::String(box_units.to_string()))
        .map_err(|_| anyhow::anyhow!("--box-units {box_units}: expected auto, pixels or normalized"))?;
    let request = wick::data::CheckRequest {
        root: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        layouts,
        box_units,
        slots: wick::config::LAYOUT_SLOTS,
        cache_dir: Some(runs_dir.join(".cache")),
    };
    let bar = stderr_bar(0, "check [{bar:30}] {pos}/{len} files {msg} ({eta})")?;
    let mut last = Instant::now();
    let check = wick::data::check_folder(&request, &std::sync::atomic::AtomicBool::new(false), |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        if p.reused > 0 {
            bar.set_message(format!("({} from an earlier scan)", p.reused));
        }
        if bar.is_hidden() && (last.elapsed() >= Duration::from_secs(10) || p.done == p.total) {
            last = Instant::now();
            eprintln!("checked {}/{} files", p.done, p.total);
        }
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&check.report)?);
    eprintln!("{}", check.report.summary());
    Ok(if check.report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `wick judge train`: trains the judge, prints and writes its held-out accuracy and box IoU.
/// What `wick judge train` trains on.
struct JudgeTrainArgs {
    seed: u64,
    steps: usize,
    folder: Option<PathBuf>,
    layouts: Option<PathBuf>,
    resolution: usize,
}

fn judge_train(runs_dir: &Path, args: JudgeTrainArgs, out: &Path, device: &candle_core::Device) -> Result<ExitCode> {
    let JudgeTrainArgs { seed, steps, folder, layouts, resolution } = args;
    let mut config = wick::eval::judge::JudgeTrainConfig { seed, steps, ..Default::default() };
    let dataset = match folder {
        None => wick::data::Dataset::Shapes(wick::data::ShapesDataset::new(
            &config.dataset,
            32,
            wick::config::LAYOUT_SLOTS,
            wick::model::judge::JUDGE_CLASSES as u32,
        )),
        Some(root) => {
            anyhow::ensure!(matches!(resolution, 32 | 64), "--resolution {resolution}: expected 32 or 64");
            config.flip = true;
            config.dataset = wick::config::DatasetConfig {
                kind: wick::config::DatasetKind::Folder,
                path: Some(root),
                layouts,
                ..Default::default()
            };
            let classes = wick::data::dataset_class_names(&config.dataset)?;
            let options = wick::data::FolderOptions { cache_dir: Some(runs_dir.join(".cache")), split: None };
            let dataset = wick::data::Dataset::open(
                &config.dataset,
                resolution,
                wick::config::LAYOUT_SLOTS,
                classes.len() as u32,
                &options,
                |_| {},
            )?;
            if let Some(folder) = dataset.as_folder() {
                eprintln!("{}", folder.report().summary());
            }
            dataset
        }
    };
    let bar = stderr_bar(steps as u64, "judge [{bar:30}] {pos}/{len} {msg} ({eta})")?;
    let mut last = Instant::now();
    let (varmap, _, report) = wick::eval::judge::train_judge(&config, &dataset, device, |step, loss| {
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss:.4}"));
        if bar.is_hidden() && (last.elapsed() >= Duration::from_secs(10) || step == steps) {
            last = Instant::now();
            eprintln!("judge step {step}/{steps} loss {loss:.4}");
        }
    })?;
    bar.finish_and_clear();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tensors: Vec<(String, candle_core::Tensor)> =
        wick::model::sorted_vars(&varmap)?.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let bytes = wick::train::checkpointing::safetensors_bytes(tensors.iter().map(|(n, t)| (n, t)))?;
    wick::run::atomic::atomic_write(out, &bytes)?;
    let report_path = out.with_extension("json");
    wick::run::atomic::atomic_write(&report_path, &serde_json::to_vec_pretty(&report)?)?;
    println!(
        "judge: held-out accuracy {:.4}, mean box IoU {} on {} real images ({:.0} s); wrote {} and {}",
        report.accuracy,
        report.mean_iou.map_or_else(|| "- (no layouts)".to_string(), |iou| format!("{iou:.4}")),
        report.heldout,
        report.train_secs,
        out.display(),
        report_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `wick runs`: one line per run found under `path`.
fn list_runs(path: &Path) -> Result<ExitCode> {
    let runs = wick::interop::find_runs(path)?;
    println!("{:<12} {:>10} {:>7}  {:<20}  path", "kind", "last step", "series", "last update (UTC)");
    for run in &runs {
        let line = match wick::interop::summarize(run) {
            Ok(summary) => {
                let updated = summary
                    .updated_unix_secs
                    .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs as i64).ok())
                    .and_then(|t| {
                        t.format(&time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
                            .ok()
                    })
                    .unwrap_or_else(|| "-".to_string());
                let step = summary.last_step.map_or("-".to_string(), |s| s.to_string());
                format!(
                    "{:<12} {:>10} {:>7}  {:<20}  {}",
                    run.kind.name(),
                    step,
                    summary.series,
                    updated,
                    run.path.display()
                )
            }
            Err(e) => {
                format!("{:<12} {:>10} {:>7}  {:<20}  {} ({e:#})", run.kind.name(), "?", "?", "?", run.path.display())
            }
        };
        println!("{line}");
    }
    if runs.is_empty() {
        eprintln!("no runs under {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
