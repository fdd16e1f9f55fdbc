//! Wick: a training workbench for candle.
//!
//! The library holds everything; `src/main.rs` only parses the command line. Data flow of a run:
//!
//! ```text
//! RunConfig (TOML, validated) ──▶ run::RunDir::create(runs/<id>/: run.toml, state.json)
//!                              └─▶ train::start(run dir) ─ thread "trainer-<id>"
//! trainer start: run::data::open_run_dataset ─▶ data::Dataset: the procedural shapes task, or an image
//!          folder (data::check_folder: journalled scan ─▶ data_report.json; decoded pixels cached in
//!          runs/.cache; the train / held-out split drawn once and kept in split.json)
//! trainer: for each stage, for each step: batch ◀─ data::Prefetcher thread (pure function of seed + cursor)
//!          forward → loss → backward → (accumulate) → NaN guard → clip → AdamW → EMA
//!          every log_every: TrainEvent::Metrics (+ gate alerts)
//!          every eval_every: eval::sampler (fixed EvalSet) ──images──▶ eval::worker thread "eval"
//!                            (judge → FID / top-k / IoU) ──scores──▶ best checkpoint, early stopping
//!                            (the judge: built in for shapes; for a folder trained once per dataset, cached)
//!                            + train::validation: val_loss on a fixed held-out batch (trainer thread)
//!          every save_every / eval / stage end: atomic checkpoint with its sample grid
//!          commands (pause, resume, stop, save-now) polled at step boundaries
//!    ══ unbounded channel (never blocks the trainer) ══▶ run::recorder thread: appends metrics.jsonl,
//!          evals.jsonl, events.jsonl, rewrites state.json atomically, then forwards every event
//!    ══ unbounded channel + notify (ctx.request_repaint) ══▶ consumers: the CLI's progress bar, or the
//!          window's app::session, drained ≤ 4 ms per frame into the run's app::store::RunStore
//! A run on disk loads back through run::RunDir (and eval::report) into the same RunStore on a loader
//! thread: the disk is the truth. The window (app: state, logic, commands; ui: one file per panel) draws
//! only from RunStores, handing the plots per-pixel min/max envelopes (app::envelope). Verify, compare
//! (eval::compare), log tailing, system probes, preflight and Setup's *Check data* (app::data_check) run on
//! worker threads that wake the UI.
//! ```

pub mod app;
pub mod bench;
pub mod build_info;
pub mod config;
pub mod data;
pub mod eval;
pub mod logging;
pub mod model;
pub mod monitor;
pub mod run;
pub mod train;
pub mod ui;
