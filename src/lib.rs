//! Wick: a training workbench for candle.
//!
//! The library holds everything; `src/main.rs` only parses the command line. The engine knows models only
//! through the [`task::Task`] trait: the built-in [`tasks::shapes`] (the layout-adapter denoiser) and
//! [`tasks::chars`] (a character-level language model), or a user's own (`examples/custom_task.rs`). Data
//! flow of a run:
//!
//! ```text
//! RunConfig (TOML: [task] kind + its settings, checked against the task's settings::Schema; stages)
//!    ──▶ task::registry::TaskRegistry::create_run ─▶ run::RunDir (run.toml, state.json, task.json)
//!    ──▶ TaskRegistry::start ─▶ train::start_task::<T: Task>(run dir) ─ thread "trainer-<id>"
//! trainer start: Task::open(TaskContext) on the trainer thread (shapes: data::Dataset, procedural or an
//!          image folder with its journalled check, pixel cache and split.json; chars: built-in sums or a
//!          checked UTF-8 file, chars.json); Task::init ─▶ seeded variables (task::init for any VarBuilder model)
//! trainer (train::trainer, a plain loop over the config and the task; knows no model):
//!          for each stage: Task::build(VarBuilder: trainable vars + frozen tensors); Task::data(stage)
//!          ─▶ data::Prefetcher thread (BatchSource: pure function of seed + cursor)
//!          each step: Task::loss_shards(batch, step rng) ═▶ each shard's forward + backward on a compute
//!          thread of its own ═▶ gradients summed in shard order → (accumulate) → NaN guard → clip → AdamW → EMA
//!          (train::step, the same code `wick bench` times on prepared batches)
//!          train::policy decides after every step: log (Task::gates ─▶ gate alerts, Task::scalars),
//!          evaluate, save, samples; which checkpoints to prune (best and newest kept)
//!          every eval_every: Task::evaluate(sampling weights) ─▶ named metrics (directions declared in
//!                            its TaskDescriptor) ─▶ best checkpoint, early stopping
//!                            (shapes: sampler ──images──▶ eval::worker thread "eval": judge → FID / top-k /
//!                            IoU, + validation loss; chars: held-out loss, bits/char, exact-match)
//!          every save_every / eval / stage end: atomic checkpoint with the task's samples (an image grid, or
//!          text samples), drawn once per step
//!          commands (pause, resume, stop, save-now) polled at step boundaries; a non-finite step skips,
//!          fails, or rolls back to the newest checkpoint at a lower rate (checkpoints.on_nan)
//!    ══ unbounded channel (never blocks the trainer) ══▶ run::recorder thread: appends metrics.jsonl,
//!          evals.jsonl, events.jsonl, rewrites state.json atomically, then forwards every event
//!          ◀── recorder::RecordProgress: events recorded + the first failed write; a checkpoint is sealed
//!              only once every event before it is on disk, a failed write stops the trainer
//!          (every write of a run's files goes through run::disk: errors name the file; tests inject faults)
//!    ══ unbounded channel + notify (ctx.request_repaint) ══▶ consumers: the CLI's progress bar, or the
//!          window's app::session, drained ≤ 4 ms per frame into the run's app::store::RunStore
//! A run on disk loads back through run::RunDir (task.json says its metrics; eval::report) into the same
//! RunStore on a loader thread: the disk is the truth. The window (app: state, logic, commands; ui: one file
//! per panel) draws only from RunStores — Live plots every series a run has, the Checkpoints table takes its
//! columns from the declared metrics, Compare shows image grids or text samples side by side — handing the
//! plots per-pixel min/max envelopes (app::envelope). Verify, compare (eval::compare), log tailing, system
//! probes, preflight and Setup's *Check data* (app::data_check) run on worker threads that wake the UI.
//!
//!  other tools' runs ── interop::find_runs ──▶ TensorBoard dirs (tfrecord ─▶ prost Event, read from
//!  offsets as files grow) · HF Trainer output (trainer_state.json) ──▶ series of (step, wall_time, value)
//!  for `wick runs` / `wick scalars` / `wick report`
//! ```

pub mod app;
pub mod bench;
pub mod build_info;
pub mod config;
pub mod data;
pub mod eval;
pub mod interop;
pub mod logging;
pub mod model;
pub mod monitor;
pub mod run;
pub mod task;
pub mod tasks;
pub mod train;
pub mod ui;
