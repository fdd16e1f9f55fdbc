//! The Setup panel's draft config, its validation, and the stage list operations.

use std::path::PathBuf;

use crate::config::{ConfigIssue, RunConfig};

/// The preset loaded when the window opens.
pub const DEFAULT_PRESET: &str = "demo";

/// The draft run config being edited.
pub struct SetupState {
    /// The draft.
    pub config: RunConfig,
    /// The stage whose fields are shown.
    pub selected_stage: usize,
    /// Problems of the draft (empty = it can run).
    pub issues: Vec<ConfigIssue>,
    /// The preset chosen in the combo box.
    pub preset: String,
    /// The file the draft was opened from or saved to.
    pub file: Option<PathBuf>,
    /// *Check data* of the draft's image folder.
    pub data_check: super::data_check::DataCheckState,
    /// The tasks the window can train (the built-in ones, plus a program's own).
    pub tasks: crate::task::registry::TaskRegistry,
    validated: Option<RunConfig>,
}

/// Structural edits of the stage list (applied after the frame is drawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOp {
    /// Append a new stage (a copy of the last one's settings with a fresh name, or the defaults).
    Add,
    /// Insert a copy of stage i after it.
    Duplicate(usize),
    /// Remove stage i.
    Remove(usize),
    /// Swap stage i with the one before.
    MoveUp(usize),
    /// Swap stage i with the one after.
    MoveDown(usize),
    /// Show stage i's fields.
    Select(usize),
}

impl SetupState {
    /// A draft holding `config`.
    pub fn new(config: RunConfig, preset: &str) -> Self {
        let mut state = Self {
            config,
            selected_stage: 0,
            issues: Vec::new(),
            preset: preset.to_string(),
            file: None,
            data_check: Default::default(),
            tasks: crate::task::registry::TaskRegistry::builtin(),
            validated: None,
        };
        state.revalidate();
        state
    }

    /// The draft with the default preset.
    pub fn with_default_preset() -> Self {
        let config = RunConfig::preset(DEFAULT_PRESET).unwrap_or_default();
        Self::new(config, DEFAULT_PRESET)
    }

    /// Forgets the last validation (the next frame validates again, e.g. after the tasks changed).
    pub fn invalidate(&mut self) {
        self.validated = None;
    }

    /// The descriptor of the draft's task, when the window knows it.
    pub fn task(&self) -> Option<&crate::task::TaskDescriptor> {
        self.tasks.descriptor(&self.config.task.kind)
    }

    /// Switches the draft to another task: its settings at their defaults, no stage overrides, and the
    /// task's headline metric picks the best checkpoint unless the current one is also the new task's.
    pub fn set_task_kind(&mut self, kind: &str) {
        if self.config.task.kind == kind {
            return;
        }
        let Some(task) = self.tasks.descriptor(kind).cloned() else { return };
        self.config.task.kind = kind.to_string();
        self.config.task.settings = task.settings.defaults();
        for stage in &mut self.config.stages {
            stage.task.clear();
        }
        if task.metric(&self.config.eval.best_metric).is_none() {
            if let Some(first) = task.metrics.first() {
                self.config.eval.best_metric = first.name.clone();
                self.config.eval.best_mode = None;
            }
        }
        for stage in &mut self.config.stages {
            if let Some(es) = &mut stage.early_stopping {
                if task.metric(&es.metric).is_none() {
                    es.metric = "loss".to_string();
                    es.mode = crate::config::MetricMode::Min;
                }
            }
        }
    }

    /// Validates the draft again when it changed since the last validation.
    pub fn revalidate(&mut self) {
        if self.validated.as_ref() == Some(&self.config) {
            return;
        }
        self.issues = self.tasks.validate(&self.config).err().unwrap_or_default();
        self.validated = Some(self.config.clone());
        if self.selected_stage >= self.config.stages.len() {
            self.selected_stage = self.config.stages.len().saturating_sub(1);
        }
    }

    /// The problems at exactly `path`.
    pub fn issues_at<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a ConfigIssue> + 'a {
        self.issues.iter().filter(move |i| i.path == path)
    }

    /// Whether stage `index` has any problem.
    pub fn stage_has_issues(&self, index: usize) -> bool {
        let prefix = format!("stages[{index}]");
        self.issues.iter().any(|i| {
            i.path == prefix || i.path.starts_with(&format!("{prefix}.")) || i.path.starts_with(&format!("{prefix}["))
        })
    }

    /// Why Start is disabled, if it is.
    pub fn start_blocker(&self) -> Option<String> {
        match self.issues.len() {
            0 => None,
            1 => Some(format!("Fix the config first: {}", self.issues[0])),
            n => Some(format!("Fix the config first: {n} problems, the first: {}", self.issues[0])),
        }
    }

    /// Replaces the draft (preset or file) and selects its first stage.
    pub fn replace(&mut self, config: RunConfig, file: Option<PathBuf>) {
        self.config = config;
        self.file = file;
        self.selected_stage = 0;
        self.revalidate();
    }

    /// Applies a stage list edit.
    pub fn apply(&mut self, op: StageOp) {
        let stages = &mut self.config.stages;
        match op {
            StageOp::Add => {
                let mut stage = stages.last().cloned().unwrap_or_default();
                stage.name = unique_name(stages, "stage");
                stage.warm_start = None;
                stages.push(stage);
                self.selected_stage = stages.len() - 1;
            }
            StageOp::Duplicate(i) if i < stages.len() => {
                let mut stage = stages[i].clone();
                stage.name = unique_name(stages, &format!("{}-copy", stages[i].name));
                stages.insert(i + 1, stage);
                self.selected_stage = i + 1;
            }
            StageOp::Remove(i) if i < stages.len() => {
                stages.remove(i);
                self.selected_stage = i.min(stages.len().saturating_sub(1));
            }
            StageOp::MoveUp(i) if i > 0 && i < stages.len() => {
                stages.swap(i - 1, i);
                self.selected_stage = i - 1;
            }
            StageOp::MoveDown(i) if i + 1 < stages.len() => {
                stages.swap(i, i + 1);
                self.selected_stage = i + 1;
            }
            StageOp::Select(i) if i < stages.len() => self.selected_stage = i,
            _ => {}
        }
        self.revalidate();
    }
}

/// `base`, or `base-2`, `base-3`… : the first name no stage has.
fn unique_name(stages: &[crate::config::StageConfig], base: &str) -> String {
    let taken = |name: &str| stages.iter().any(|s| s.name == name);
    if !taken(base) {
        return base.to_string();
    }
    (2..).map(|n| format!("{base}-{n}")).find(|name| !taken(name)).unwrap_or_else(|| base.to_string())
}
