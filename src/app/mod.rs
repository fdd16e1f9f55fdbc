//! The eframe App: state, per-frame logic (drain events within a budget, take worker results) and the
//! commands clicks push during a frame, applied after the panels are drawn. No drawing here: panels are in
//! [`crate::ui`].
//!
//! ```text
//! frame: logic()  ─ trainer events (≤ 4 ms) ─▶ RunStore of the live run
//!                 ─ runs scanner results, loaded RunStores, setup validation
//!        ui()     ─ panels draw from the state and push AppCommands
//!                 ─ commands applied (start, stop, load, save, select…)
//! ```

pub mod checkpoints;
pub mod compare;
pub mod data_check;
pub mod dialog;
pub mod envelope;
pub mod external;
pub mod logged_images;
pub mod logs;
pub mod panels;
pub mod plot_data;
pub mod preflight;
pub mod session;
pub mod setup;
pub mod state;
pub mod store;
pub mod system;
pub mod toasts;
pub mod workers;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::RunConfig;
use crate::run::{RunDir, RunStatus};
use crate::train::TrainCommand;

use dialog::FileDialog;
use plot_data::PlotCache;
use session::TrainingSession;
use setup::{SetupState, StageOp};

use crate::task::registry::TaskRegistry;
use state::{Panel, Persisted, STORAGE_KEY};
use store::RunStore;
use workers::{RunSummary, RunsScanner, ScanRequest, StoreLoader};

/// How the window is started.
pub struct AppOptions {
    /// The folder holding the runs.
    pub runs_dir: PathBuf,
    /// The tasks Setup offers and runs train with: [`TaskRegistry::builtin`], plus a program's own.
    pub tasks: TaskRegistry,
}

/// Opens the window and runs it until it is closed.
pub fn run_native(options: AppOptions) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_title("Wick").with_inner_size([1400.0, 900.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Wick",
        native,
        Box::new(move |cc| {
            let mut app = WickApp::new(cc, options.runs_dir, Box::new(dialog::RfdDialog));
            app.set_tasks(options.tasks);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

/// What a click asks for; applied after the frame's panels are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum AppCommand {
    /// Start a new run from the Setup draft.
    Start,
    /// Pause the live run.
    Pause,
    /// Resume the paused live run.
    Resume,
    /// Stop the live run with a checkpoint.
    Stop,
    /// Continue a stopped or interrupted run from its newest checkpoint.
    ResumeRun(PathBuf),
    /// Replace the draft with a built-in preset.
    LoadPreset(String),
    /// Open a config file into the draft.
    OpenConfig,
    /// Save the draft to a file.
    SaveConfig,
    /// Add a run directory from elsewhere.
    OpenRunFolder,
    /// View a run; with `add`, toggle it in the overlay set instead.
    SelectRun {
        /// The run directory.
        root: PathBuf,
        /// Ctrl-click: add to (or remove from) the overlay.
        add: bool,
    },
    /// An edit of the stage list.
    Stage(StageOp),
    /// Export the Live panel's shown series as CSV.
    ExportCsv,
    /// Choose the image folder of the draft's dataset (file dialog).
    ChooseDataFolder,
    /// Choose the layout JSONL of the draft's dataset (file dialog).
    ChooseLayoutFile,
    /// Check the draft's image folder on a worker.
    CheckData,
    /// Stop the running data check.
    CancelDataCheck,
    /// Show a panel.
    ShowPanel(Panel),
    /// A command of the Checkpoints, Compare, Logs, System or Preflight panel.
    Panels(panels::PanelCommand),
}

/// A message in the status line: shown once, until replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMessage {
    /// The text.
    pub text: String,
    /// Whether it reports an error.
    pub error: bool,
}

/// The Wick window.
pub struct WickApp {
    /// Persisted settings.
    pub persisted: Persisted,
    /// The runs folder.
    pub runs_dir: PathBuf,
    /// The Setup draft.
    pub setup: SetupState,
    /// The run this window trains (also kept after it ended, until the next start).
    pub session: Option<TrainingSession>,
    /// Every run found, newest first.
    pub runs: Vec<RunSummary>,
    /// Viewed runs; the first is the primary one (top bar, CSV export).
    pub selected: Vec<PathBuf>,
    /// Loaded runs.
    pub stores: HashMap<PathBuf, RunStore>,
    /// The Live panel's prepared plot data.
    pub plot_cache: PlotCache,
    /// The status line.
    pub status: Option<StatusMessage>,
    /// Commands pushed during this frame.
    pub commands: Vec<AppCommand>,
    /// State of the Checkpoints, Compare, Logs, System and Preflight panels and of the toasts.
    pub panels: panels::PanelsState,
    loading: HashSet<PathBuf>,
    loaded_version: HashMap<PathBuf, f64>,
    scanner: RunsScanner,
    loader: StoreLoader,
    /// One reader thread per viewed external run (TensorBoard, Trainer).
    watchers: HashMap<PathBuf, external::ExternalWatcher>,
    dialog: Box<dyn FileDialog>,
    ctx: egui::Context,
    csv_result: Option<crossbeam_channel::Receiver<Result<String, String>>>,
    /// A resumed run whose history is still loading: its events wait here, then go on top of the history.
    pending_events: Option<(PathBuf, Vec<crate::run::TrainEvent>)>,
}

impl WickApp {
    /// The window's state, restoring persisted settings from eframe's storage when there are any.
    pub fn new(cc: &eframe::CreationContext<'_>, runs_dir: PathBuf, dialog: Box<dyn FileDialog>) -> Self {
        let persisted: Persisted =
            cc.storage.and_then(|storage| eframe::get_value(storage, STORAGE_KEY)).unwrap_or_default();
        Self::with_state(cc.egui_ctx.clone(), runs_dir, dialog, persisted)
    }

    /// Offers `tasks` in Setup and trains runs with them (a program with its own task registers it here).
    pub fn set_tasks(&mut self, tasks: TaskRegistry) {
        self.setup.tasks = tasks;
        self.setup.invalidate();
    }

    /// The window's state from explicit persisted settings (tests, benchmarks).
    pub fn with_state(
        ctx: egui::Context,
        runs_dir: PathBuf,
        dialog: Box<dyn FileDialog>,
        persisted: Persisted,
    ) -> Self {
        let scanner = RunsScanner::start(
            ScanRequest { runs_dir: runs_dir.clone(), extra: persisted.extra_runs.clone() },
            ctx.clone(),
        );
        // The last-opened run comes back if it is still there and listed (in this runs folder or opened from
        // elsewhere), not when the window now looks at another runs folder.
        let listed = |p: &PathBuf| p.starts_with(&runs_dir) || persisted.extra_runs.contains(p);
        let selected = persisted
            .last_opened_run
            .iter()
            .filter(|p| crate::interop::run_kind_of(p).is_some() && listed(p))
            .cloned()
            .collect();
        let app = Self {
            persisted,
            runs_dir,
            setup: SetupState::with_default_preset(),
            session: None,
            runs: Vec::new(),
            selected,
            stores: HashMap::new(),
            plot_cache: PlotCache::default(),
            status: None,
            commands: Vec::new(),
            panels: panels::PanelsState::default(),
            loading: HashSet::new(),
            loaded_version: HashMap::new(),
            scanner,
            loader: StoreLoader::new(ctx.clone()),
            watchers: HashMap::new(),
            dialog,
            ctx,
            csv_result: None,
            pending_events: None,
        };
        app.apply_theme();
        app
    }

    /// Shows a message in the status line (errors also go to the log).
    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        let text = text.into();
        if error {
            tracing::warn!("{text}");
        }
        self.status = Some(StatusMessage { text, error });
    }

    /// The summary of a listed run.
    pub fn summary(&self, root: &Path) -> Option<&RunSummary> {
        self.runs.iter().find(|r| r.root == root)
    }

    /// The run the top bar describes: the live one, else the primary selection.
    pub fn current_run(&self) -> Option<&Path> {
        match &self.session {
            Some(s) if s.is_active() || self.selected.is_empty() => Some(&s.root),
            _ => self.selected.first().map(PathBuf::as_path),
        }
    }

    /// The status of a run: from the live session's events, else from its store or the last scan.
    pub fn status_of(&self, root: &Path) -> Option<RunStatus> {
        if let Some(session) = self.session.as_ref().filter(|s| s.root == root) {
            return Some(session.status);
        }
        self.summary(root).map(|s| s.status).or_else(|| self.stores.get(root).and_then(RunStore::status))
    }

    /// Whether this window is training a run right now.
    pub fn is_training(&self) -> bool {
        self.session.as_ref().is_some_and(TrainingSession::is_active)
    }

    fn apply_theme(&self) {
        self.ctx.set_theme(if self.persisted.dark_mode { egui::Theme::Dark } else { egui::Theme::Light });
    }

    /// Per-frame work that does not draw: trainer events, worker results, validation.
    pub fn logic(&mut self) {
        self.setup.data_check.poll();
        // Trainer events, within the frame's budget.
        let mut failure = None;
        let mut ended = false;
        let mut end_message = None;
        if let Some(session) = &mut self.session {
            let (events, more) = session.drain(session::DRAIN_BUDGET);
            let waiting = self.pending_events.as_mut().filter(|(root, _)| *root == session.root);
            if let Some((_, buffer)) = waiting {
                buffer.extend(events.iter().cloned());
            } else if !events.is_empty() {
                let store = self.stores.entry(session.root.clone()).or_insert_with(|| RunStore::new(&session.root));
                for event in &events {
                    store.apply(event);
                }
                store.refresh_blocks();
                self.panels.observe_events(&session.root, &session.id, &events);
            }
            ended = events.iter().any(|e| e.is_terminal());
            end_message =
                events.iter().rev().find(|e| e.is_terminal()).map(|e| format!("{}: {}", session.id, e.message()));
            failure = session.failure.take().map(|why| format!("Run {} failed: {why}", session.id));
            if more {
                self.ctx.request_repaint();
            }
        }
        if ended {
            self.scanner.rescan(self.scan_request());
        }
        if let Some(text) = failure {
            self.say(text, true);
        } else if let Some(text) = end_message {
            self.say(text, false);
        }
        // Runs folder.
        while let Ok(result) = self.scanner.results.try_recv() {
            self.runs = result.runs;
            self.follow_runs_written_elsewhere();
            // A loaded run whose folder is gone (deleted, moved, a disk unmounted) keeps its plots, said so.
            for (root, store) in &mut self.stores {
                store.vanished = !root.exists();
            }
            if let Some((dir, why)) = result.errors.first() {
                let text = format!("cannot read run {}: {why}", dir.display());
                if self.status.as_ref().map(|s| &s.text) != Some(&text) {
                    self.say(text, true);
                }
            }
        }
        // Loaded runs.
        while let Ok((root, result)) = self.loader.results.try_recv() {
            self.loading.remove(&root);
            let buffered = match self.pending_events.take() {
                Some((pending, events)) if pending == root => Some(events),
                other => {
                    self.pending_events = other;
                    None
                }
            };
            match (result, buffered) {
                (Ok(mut store), Some(events)) => {
                    // The resumed run: its history, then what it did since.
                    for event in &events {
                        store.apply(event);
                    }
                    store.refresh_blocks();
                    self.stores.insert(root, store);
                }
                (Ok(store), None) => {
                    let live = self.session.as_ref().is_some_and(|s| s.root == root && s.is_active());
                    if !live {
                        self.stores.insert(root, store);
                    }
                }
                (Err(why), buffered) => {
                    if let Some(events) = buffered {
                        let mut store = RunStore::new(&root);
                        for event in &events {
                            store.apply(event);
                        }
                        store.refresh_blocks();
                        self.stores.insert(root.clone(), store);
                    }
                    self.say(format!("cannot load run {}: {why}", root.display()), true);
                }
            }
        }
        self.request_loads();
        self.setup.revalidate();
        if let Some(rx) = &self.csv_result {
            if let Ok(result) = rx.try_recv() {
                self.csv_result = None;
                match result {
                    Ok(text) => self.say(text, false),
                    Err(text) => self.say(text, true),
                }
            }
        }
        self.panels_logic();
    }

    /// Loads selected runs that are not in memory, or whose state.json changed on disk (a run written by
    /// another process). The live run is fed by its events instead; an external run by its watcher.
    fn request_loads(&mut self) {
        for root in self.selected.clone() {
            let kind = self.summary(&root).map(|s| s.kind).or_else(|| external::kind_of(&root));
            if let Some(kind) = kind.filter(|k| *k != crate::interop::RunKind::Wick) {
                if !self.watchers.contains_key(&root) {
                    let watcher = external::ExternalWatcher::start(
                        external::found(&root, kind),
                        self.loader.sender(),
                        self.ctx.clone(),
                    );
                    self.watchers.insert(root.clone(), watcher);
                    self.loading.insert(root);
                }
                continue;
            }
            if self.loading.contains(&root) {
                continue;
            }
            if self.session.as_ref().is_some_and(|s| s.root == root) {
                continue;
            }
            let version = self.summary(&root).map_or(0.0, |s| s.updated_unix_secs);
            let stale = self.loaded_version.get(&root).is_none_or(|v| *v != version);
            if stale {
                self.loaded_version.insert(root.clone(), version);
                self.loading.insert(root.clone());
                self.loader.load(root);
            }
        }
    }

    /// Views a run already in memory (benchmarks, tests): it is not reloaded from disk.
    pub fn show_store(&mut self, store: RunStore) {
        let root = store.root.clone();
        let version = self.summary(&root).map_or(0.0, |s| s.updated_unix_secs);
        self.loaded_version.insert(root.clone(), version);
        self.stores.insert(root.clone(), store);
        self.select(root.clone(), false);
        self.loaded_version.insert(root, version);
    }

    /// Whether a run is being loaded from disk.
    pub fn is_loading(&self, root: &Path) -> bool {
        self.loading.contains(root)
    }

    fn scan_request(&self) -> ScanRequest {
        ScanRequest { runs_dir: self.runs_dir.clone(), extra: self.persisted.extra_runs.clone() }
    }

    /// Applies the commands pushed during the frame.
    pub fn apply_commands(&mut self) {
        for command in std::mem::take(&mut self.commands) {
            if let Err(e) = self.apply(command) {
                self.say(format!("{e:#}"), true);
            }
        }
    }

    fn apply(&mut self, command: AppCommand) -> anyhow::Result<()> {
        match command {
            AppCommand::Start => self.start_new_run()?,
            AppCommand::Pause => self.send(TrainCommand::Pause),
            AppCommand::Resume => self.send(TrainCommand::Resume),
            AppCommand::Stop => {
                self.send(TrainCommand::Stop);
                self.say("Stopping at the next step boundary (with a checkpoint)…", false);
            }
            AppCommand::ResumeRun(root) => self.resume_run(&root)?,
            AppCommand::LoadPreset(name) => {
                let config = RunConfig::preset(&name)?;
                self.setup.preset = name.clone();
                self.setup.replace(config, None);
                self.say(format!("Loaded the {name} preset"), false);
            }
            AppCommand::OpenConfig => {
                if let Some(path) = self.dialog.open_config() {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    let config = RunConfig::from_toml_str(&text, &path.display().to_string())?;
                    self.setup.replace(config, Some(path.clone()));
                    self.say(format!("Opened {}", path.display()), false);
                }
            }
            AppCommand::SaveConfig => {
                let suggested = format!("{}.toml", self.setup.config.name);
                if let Some(path) = self.dialog.save_config(&suggested) {
                    let text = self.setup.config.to_toml_string()?;
                    crate::run::atomic::atomic_write(&path, text.as_bytes())?;
                    self.setup.file = Some(path.clone());
                    self.say(format!("Saved {}", path.display()), false);
                }
            }
            AppCommand::ChooseDataFolder => {
                if let Some(path) = self.dialog.pick_data_folder() {
                    self.setup.config.dataset.kind = crate::config::DatasetKind::Folder;
                    self.setup.config.dataset.path = Some(path.clone());
                    self.say(format!("Image folder {}: press Check data to scan it", path.display()), false);
                }
            }
            AppCommand::ChooseLayoutFile => {
                if let Some(path) = self.dialog.pick_layout_file() {
                    self.setup.config.dataset.layouts = Some(path);
                }
            }
            AppCommand::CheckData => {
                let cache_dir = self.runs_dir.join(".cache");
                self.setup
                    .data_check
                    .start(&self.setup.config.dataset, cache_dir, &self.ctx)
                    .map_err(anyhow::Error::msg)?;
            }
            AppCommand::CancelDataCheck => {
                self.setup.data_check.cancel();
                self.say("Data check cancelled; checking again continues where it stopped", false);
            }
            AppCommand::OpenRunFolder => {
                if let Some(path) = self.dialog.open_run_folder() {
                    let kind = crate::interop::open_run(&path)?.kind;
                    let root = match kind {
                        crate::interop::RunKind::Wick => RunDir::open(&path)?.root().to_path_buf(),
                        _ => std::path::absolute(&path).unwrap_or(path.clone()),
                    };
                    let id = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    if !self.persisted.extra_runs.contains(&root) && root.parent() != Some(self.runs_dir.as_path()) {
                        self.persisted.extra_runs.push(root.clone());
                    }
                    self.scanner.rescan(self.scan_request());
                    self.select(root, false);
                    self.persisted.panel = Panel::Live;
                    self.say(format!("Opened {} run {id}", kind.name()), false);
                }
            }
            AppCommand::SelectRun { root, add } => self.select(root, add),
            AppCommand::Stage(op) => self.setup.apply(op),
            AppCommand::ExportCsv => self.export_csv(),
            AppCommand::ShowPanel(panel) => self.persisted.panel = panel,
            AppCommand::Panels(command) => self.apply_panel_command(command)?,
        }
        Ok(())
    }

    fn select(&mut self, root: PathBuf, add: bool) {
        if add {
            if let Some(i) = self.selected.iter().position(|r| r == &root) {
                if self.selected.len() > 1 {
                    self.selected.remove(i);
                }
            } else {
                self.selected.push(root);
            }
        } else {
            self.selected = vec![root];
        }
        self.persisted.last_opened_run = self.selected.first().cloned();
        let keep: Vec<PathBuf> =
            self.selected.iter().cloned().chain(self.session.iter().map(|s| s.root.clone())).collect();
        self.stores.retain(|root, _| keep.contains(root));
        self.watchers.retain(|root, _| keep.contains(root));
        self.loaded_version.retain(|root, _| keep.contains(root));
        self.plot_cache.retain_runs(&keep);
    }

    fn send(&mut self, command: TrainCommand) {
        if let Some(session) = &mut self.session {
            session.send(command);
        }
    }

    fn notify(&self) -> Arc<dyn Fn() + Send + Sync> {
        let ctx = self.ctx.clone();
        Arc::new(move || ctx.request_repaint())
    }

    fn start_new_run(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_training(), "a run is already training — stop it first");
        self.setup.revalidate();
        if let Some(blocker) = self.setup.start_blocker() {
            anyhow::bail!(blocker);
        }
        let config = self.setup.config.clone();
        let dir = self.setup.tasks.create_run(&self.runs_dir, &config)?;
        self.begin_session(dir, false)
    }

    /// Reloads, off the UI thread, each loaded Wick run whose state.json another process has rewritten since
    /// (a run trained by `wick resume` in a terminal, or by another window): such a run is followed live.
    fn follow_runs_written_elsewhere(&mut self) {
        let live = self.session.as_ref().filter(|s| s.is_active()).map(|s| s.root.clone());
        let stale: Vec<PathBuf> = self
            .runs
            .iter()
            .filter(|run| run.kind == crate::interop::RunKind::Wick && Some(&run.root) != live.as_ref())
            .filter(|run| !self.loading.contains(&run.root))
            .filter(|run| {
                // Every rewrite of state.json stamps `updated_unix_secs`.
                let loaded = self.stores.get(&run.root).and_then(|store| store.state.as_ref());
                loaded.is_some_and(|state| state.updated_unix_secs != run.updated_unix_secs)
            })
            .map(|run| run.root.clone())
            .collect();
        for root in stale {
            self.loading.insert(root.clone());
            self.loader.load(root);
        }
    }

    fn resume_run(&mut self, root: &Path) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_training(), "a run is already training — stop it first");
        let dir = RunDir::open(root)?;
        self.begin_session(dir, true)
    }

    fn begin_session(&mut self, dir: RunDir, resume: bool) -> anyhow::Result<()> {
        let root = dir.root().to_path_buf();
        let session = TrainingSession::start(&self.setup.tasks, dir.clone(), resume, self.notify())?;
        let verb = if resume { "Resumed" } else { "Started" };
        self.say(format!("{verb} run {}", session.id), false);
        self.session = Some(session);
        self.stores.remove(&root);
        if resume {
            // The history may be long: load it off the UI thread; events wait in `pending_events` meanwhile.
            self.pending_events = Some((root.clone(), Vec::new()));
            self.loading.insert(root.clone());
            self.loader.load(root.clone());
        } else {
            let mut store = RunStore::new(&root);
            store.config = dir.config().ok();
            store.task = dir.task_descriptor();
            store.state = dir.read_state().ok();
            store.ledger = store.state.as_ref().map(|s| s.stages.clone()).unwrap_or_default();
            self.loading.remove(&root);
            self.stores.insert(root.clone(), store);
        }
        self.select(root, false);
        self.persisted.panel = Panel::Live;
        self.scanner.rescan(self.scan_request());
        Ok(())
    }

    fn export_csv(&mut self) {
        let Some(root) = self.selected.first().cloned().or_else(|| self.session.as_ref().map(|s| s.root.clone()))
        else {
            self.say("Select a run to export its series", true);
            return;
        };
        let Some(store) = self.stores.get(&root) else {
            self.say("The run is still loading — try again in a moment", true);
            return;
        };
        let Some(path) = self.dialog.save_csv(&format!("{}.csv", store.id)) else { return };
        let x_range = self.plot_cache.x_range;
        let x_axis = self.persisted.live.x_axis;
        // Copy what is needed, then write on a thread: a long run is millions of lines.
        let series: Vec<(String, store::Series)> = store.series.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.csv_result = Some(rx);
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new().name("csv-export".into()).spawn(move || {
            let result = write_csv(&path, &series, x_range, x_axis)
                .map(|rows| format!("Exported {rows} rows to {}", path.display()))
                .map_err(|e| format!("cannot export {}: {e:#}", path.display()));
            let _ = tx.send(result);
            ctx.request_repaint();
        });
        if let Err(e) = spawned {
            self.say(format!("cannot start the export: {e}"), true);
        }
    }

    /// On exit: stop a live run with a checkpoint, waiting a bounded time.
    pub fn shutdown(&mut self) {
        if let Some(session) = &mut self.session {
            if session.is_active() && !session.stop_and_wait(session::EXIT_WAIT) {
                tracing::warn!(
                    "the trainer did not stop within {:?}; the run will show as interrupted",
                    session::EXIT_WAIT
                );
            }
        }
    }
}

/// Writes every point of `series` within the x-range (all when `None`) as `series,step,wall_secs,value` rows.
pub fn write_csv(
    path: &Path,
    series: &[(String, store::Series)],
    x_range: Option<(f64, f64)>,
    x_axis: state::XAxis,
) -> anyhow::Result<usize> {
    use std::io::Write;
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "series,step,wall_secs,value")?;
    let mut rows = 0;
    for (name, s) in series {
        for i in 0..s.len() {
            let x = match x_axis {
                state::XAxis::Step => s.steps[i],
                state::XAxis::WallTime => s.wall_secs[i],
            };
            if x_range.is_some_and(|(lo, hi)| x < lo || x > hi) {
                continue;
            }
            let value = if s.values[i].is_finite() { s.values[i].to_string() } else { "NaN".to_string() };
            writeln!(out, "{name},{},{},{value}", s.steps[i], s.wall_secs[i])?;
            rows += 1;
        }
    }
    out.flush()?;
    Ok(rows)
}

impl eframe::App for WickApp {
    fn logic(&mut self, _ctx: &egui::Context, _frame: &mut eframe::Frame) {
        WickApp::logic(self);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let theme_before = self.persisted.dark_mode;
        crate::ui::app_ui(ui, self);
        self.apply_commands();
        if theme_before != self.persisted.dark_mode {
            self.apply_theme();
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.persisted);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.shutdown();
    }
}
