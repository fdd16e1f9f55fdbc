//! The run directory: the contract between trainer, command line and GUI.
//!
//! ```text
//! runs/<run-id>/
//!   run.toml  state.json  metrics.jsonl  evals.jsonl  events.jsonl  log.txt
//!   train.lock                                     (while a process trains it: pid, host, since)
//!   split.json  data_report.json  judge.json        (image-folder runs: the split, the data check, the judge)
//!   checkpoints/step-00000400/{model,ema,optimizer}.safetensors trainer.json manifest.json
//! ```
//! Every rewrite is atomic (temporary file, fsync, rename); a checkpoint is sealed by its manifest; one
//! process at a time trains a run ([`lock`]).

pub mod atomic;
pub mod checkpoint;
pub mod data;
pub mod dir;
pub mod disk;
pub mod events;
pub mod lock;
pub mod recorder;
pub mod state;

pub use checkpoint::{verify_checkpoint, CheckpointEntry, VerifyProblem};
pub use dir::{scan_runs, RunDir};
pub use events::{EventRecord, MetricsRecord, TrainEvent};
pub use lock::{lock_holder, LockHolder, RunLock};
pub use state::{LedgerEntry, RunState, RunStatus};
