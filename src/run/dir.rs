//! [`RunDir`]: one run's directory and the paths of its files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::atomic::{atomic_write, read_jsonl};
use super::checkpoint::{list_checkpoints, CheckpointEntry};
use super::events::{EventRecord, MetricsRecord};
use super::state::{unix_now_secs, RunState};
use crate::build_info::BuildInfo;
use crate::config::RunConfig;

/// The file of a run directory that holds its task's [`crate::task::TaskDescriptor`].
pub const TASK_FILE: &str = "task.json";

/// A run directory on disk (`runs/<run-id>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates `runs_dir/<name>-<YYYYMMDD-HHMMSS>/` with the frozen run.toml (every default filled in) and a
    /// fresh state.json. The config must already be valid.
    pub fn create(runs_dir: &Path, name: &str, config: &RunConfig) -> Result<Self> {
        let registry = crate::task::registry::TaskRegistry::builtin();
        Self::create_with_task(runs_dir, name, config, registry.descriptor(&config.task.kind))
    }

    /// [`Self::create`] for a run of the task described by `task` (written to task.json, so readers of the
    /// run know its metrics and samples without knowing the task's code).
    pub fn create_with_task(
        runs_dir: &Path,
        name: &str,
        config: &RunConfig,
        task: Option<&crate::task::TaskDescriptor>,
    ) -> Result<Self> {
        std::fs::create_dir_all(runs_dir).with_context(|| format!("cannot create {}", runs_dir.display()))?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!("[year][month][day]-[hour][minute][second]"))
            .unwrap_or_else(|_| "now".to_string());
        let base = format!("{name}-{stamp}");
        let mut root = runs_dir.join(&base);
        let mut suffix = 2;
        // create_dir (not _all) fails when the directory exists, so two runs never share one.
        loop {
            match std::fs::create_dir(&root) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    root = runs_dir.join(format!("{base}-{suffix}"));
                    suffix += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", root.display())),
            }
        }
        let dir = Self { root };
        std::fs::create_dir_all(dir.checkpoints_dir())?;
        let mut frozen = config.clone();
        frozen.name = name.to_string();
        // The run must find its data again from any working directory (the window, a resume elsewhere).
        for path in [&mut frozen.dataset.path, &mut frozen.dataset.layouts].into_iter().flatten() {
            if let Ok(absolute) = std::path::absolute(&*path) {
                *path = absolute;
            }
        }
        if let Some(task) = task {
            let paths = task.settings.settings.iter().filter(|s| s.kind == crate::task::settings::SettingKind::Path);
            for setting in paths {
                if let Some(toml::Value::String(path)) = frozen.task.settings.get_mut(&setting.key) {
                    if let (false, Ok(absolute)) = (path.is_empty(), std::path::absolute(&*path)) {
                        *path = absolute.display().to_string();
                    }
                }
            }
            dir.write_task(task)?;
        }
        let toml = frozen.to_toml_string()?;
        atomic_write(&dir.config_path(), toml.as_bytes())?;
        let now = unix_now_secs();
        let state = RunState {
            total_steps: frozen.total_steps(),
            stages: planned_ledger(&frozen),
            created_unix_secs: now,
            updated_unix_secs: now,
            build: Some(BuildInfo::current()),
            ..RunState::default()
        };
        dir.write_state(&state)?;
        Ok(dir)
    }

    /// Opens an existing run directory (it must hold run.toml).
    pub fn open(root: &Path) -> Result<Self> {
        let dir = Self { root: root.to_path_buf() };
        if !dir.config_path().is_file() {
            bail!("{} is not a Wick run: it has no run.toml", root.display());
        }
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run id (the directory's name).
    pub fn id(&self) -> String {
        self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// run.toml.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("run.toml")
    }
    /// state.json.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// metrics.jsonl.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// evals.jsonl.
    pub fn evals_path(&self) -> PathBuf {
        self.root.join("evals.jsonl")
    }
    /// events.jsonl.
    pub fn events_path(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }
    /// log.txt.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("log.txt")
    }
    /// checkpoints/.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// task.json: what the run's task declares (metrics, samples, settings).
    pub fn task_path(&self) -> PathBuf {
        self.root.join(TASK_FILE)
    }

    /// Writes task.json.
    pub fn write_task(&self, task: &crate::task::TaskDescriptor) -> Result<()> {
        atomic_write(&self.task_path(), &serde_json::to_vec_pretty(task)?)
    }

    /// What the run's task declares: task.json when the run has one, else the built-in task its run.toml
    /// names (runs recorded before tasks existed are shapes runs); `None` for an unknown kind without
    /// task.json, or a damaged task.json.
    pub fn task_descriptor(&self) -> Option<crate::task::TaskDescriptor> {
        if let Ok(bytes) = std::fs::read(self.task_path()) {
            match serde_json::from_slice(&bytes) {
                Ok(task) => return Some(task),
                Err(e) => tracing::warn!(
                    "{} is damaged ({e}); using the built-in task of run.toml",
                    self.task_path().display()
                ),
            }
        }
        let kind = std::fs::read_to_string(self.config_path())
            .ok()
            .and_then(|text| RunConfig::from_toml_str(&text, "run.toml").ok())
            .map_or_else(|| "shapes".to_string(), |c| c.task.kind);
        crate::task::registry::TaskRegistry::builtin().descriptor(&kind).cloned()
    }

    /// The frozen config, validated (its task's settings against task.json's schema when the run has one).
    pub fn config(&self) -> Result<RunConfig> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)
            .map_err(|source| crate::config::ConfigError::Read { path: path.clone(), source })?;
        let origin = path.display().to_string();
        let config = RunConfig::from_toml_str(&text, &origin)?;
        let task = self.task_descriptor().filter(|t| t.kind == config.task.kind);
        let kinds = crate::task::registry::TaskRegistry::builtin().kinds();
        config
            .validate_for(task.as_ref(), &kinds)
            .map_err(|issues| crate::config::ConfigError::Invalid { origin, issues })?;
        Ok(config)
    }

    /// Reads state.json.
    pub fn read_state(&self) -> Result<RunState> {
        let path = self.state_path();
        let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is not a valid run state", path.display()))
    }

    /// Rewrites state.json atomically.
    pub fn write_state(&self, state: &RunState) -> Result<()> {
        let text = serde_json::to_vec_pretty(state)?;
        atomic_write(&self.state_path(), &text)
    }

    /// Every metrics record; where a step was logged more than once (a resume re-ran it), the newest wins.
    pub fn read_metrics(&self) -> Result<Vec<MetricsRecord>> {
        Ok(newest_per_step(read_jsonl::<MetricsRecord>(&self.metrics_path())?))
    }

    /// Every metrics record in file order, repeats included.
    pub fn read_metrics_raw(&self) -> Result<Vec<MetricsRecord>> {
        read_jsonl(&self.metrics_path())
    }

    /// Every event in file order.
    pub fn read_events(&self) -> Result<Vec<EventRecord>> {
        read_jsonl(&self.events_path())
    }

    /// Checkpoint directories, sorted by step.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointEntry>> {
        list_checkpoints(&self.checkpoints_dir())
    }
}

/// Metrics records with one per step: where a step was logged more than once (a resume or a rollback re-ran
/// it), the one later in the file wins.
pub fn newest_per_step(records: Vec<MetricsRecord>) -> Vec<MetricsRecord> {
    let mut by_step = std::collections::BTreeMap::new();
    for record in records {
        by_step.insert(record.step, record);
    }
    by_step.into_values().collect()
}

/// The stage ledger as planned by the config, before any stage ran.
pub fn planned_ledger(config: &RunConfig) -> Vec<super::state::LedgerEntry> {
    config
        .stage_ledger()
        .into_iter()
        .map(|(name, start_step, end_step)| super::state::LedgerEntry {
            name,
            start_step,
            end_step,
            finished: false,
            first_eval: None,
            last_eval: None,
        })
        .collect()
}

/// Every run directory directly under `runs_dir`, newest first by name.
pub fn scan_runs(runs_dir: &Path) -> Result<Vec<RunDir>> {
    let mut runs = Vec::new();
    let read = match std::fs::read_dir(runs_dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runs),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", runs_dir.display())),
    };
    for item in read.flatten() {
        if item.path().join("run.toml").is_file() {
            runs.push(RunDir { root: item.path() });
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.id()));
    Ok(runs)
}
