//! The tasks a program can train, by kind: the built-in ones, plus any a program registers (its own model
//! in the window and the command line, as `examples/custom_task.rs` does).

use std::sync::Arc;

use anyhow::Result;

use super::{Task, TaskContext, TaskDescriptor};
use crate::config::{ConfigIssue, RunConfig};
use crate::run::RunDir;
use crate::train::{TrainOptions, TrainerHandle};

type Starter = Arc<dyn Fn(RunDir, TrainOptions) -> Result<TrainerHandle> + Send + Sync>;

/// One registered kind of task.
#[derive(Clone)]
pub struct TaskEntry {
    /// What it is: kind, metrics, samples, settings.
    pub descriptor: TaskDescriptor,
    start: Starter,
}

/// The kinds of task a program knows.
#[derive(Clone)]
pub struct TaskRegistry {
    entries: Vec<TaskEntry>,
}

impl Default for TaskRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl std::fmt::Debug for TaskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| &e.descriptor.kind)).finish()
    }
}

impl TaskRegistry {
    /// The built-in tasks: `shapes` and `chars`.
    pub fn builtin() -> Self {
        Self { entries: Vec::new() }
            .with::<crate::tasks::shapes::ShapesTask>(crate::tasks::shapes::ShapesTask::open)
            .with::<crate::tasks::chars::CharsTask>(crate::tasks::chars::CharsTask::open)
    }

    /// Adds a task kind (replacing a registered one of the same kind); `open` makes the task of a run.
    pub fn with<T: Task>(mut self, open: fn(&TaskContext) -> Result<T>) -> Self {
        let descriptor = T::descriptor();
        self.entries.retain(|e| e.descriptor.kind != descriptor.kind);
        let start: Starter = Arc::new(move |dir, options| crate::train::start_task(dir, options, open));
        self.entries.push(TaskEntry { descriptor, start });
        self
    }

    /// The descriptor of `kind`.
    pub fn descriptor(&self, kind: &str) -> Option<&TaskDescriptor> {
        self.entries.iter().find(|e| e.descriptor.kind == kind).map(|e| &e.descriptor)
    }

    /// Every registered kind, in registration order.
    pub fn kinds(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.descriptor.kind.clone()).collect()
    }

    /// Starts training the run in `dir` with the task its run.toml names.
    pub fn start(&self, dir: RunDir, options: TrainOptions) -> Result<TrainerHandle> {
        let config = dir.config()?;
        let entry = self.entries.iter().find(|e| e.descriptor.kind == config.task.kind).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: task kind {:?} is not known to this program (known: {})",
                dir.config_path().display(),
                config.task.kind,
                self.kinds().join(", ")
            )
        })?;
        (entry.start)(dir, options)
    }

    /// Validates `config` and creates its run directory under `runs_dir` (with its task.json).
    pub fn create_run(&self, runs_dir: &std::path::Path, config: &RunConfig) -> Result<RunDir> {
        self.validate(config).map_err(|issues| crate::config::ConfigError::Invalid {
            origin: format!("run config {:?}", config.name),
            issues,
        })?;
        RunDir::create_with_task(runs_dir, &config.name, config, self.descriptor(&config.task.kind))
    }

    /// Every problem of `config`, its task's settings checked against the task's schema.
    pub fn validate(&self, config: &RunConfig) -> Result<(), Vec<ConfigIssue>> {
        config.validate_for(self.descriptor(&config.task.kind), &self.kinds())
    }
}
