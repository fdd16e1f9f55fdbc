//! Background workers of the window: the runs-folder scanner and the run loader. Neither ever blocks the UI:
//! results come back over channels, and each worker wakes the window with `request_repaint`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::run::state::BestState;
use crate::run::{RunDir, RunStatus};

use super::store::RunStore;

/// How often the runs folder is rescanned.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// One run as listed in the Runs panel.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run directory.
    pub root: PathBuf,
    /// The run id (directory name).
    pub id: String,
    /// Status, with dead `running` runs shown as `interrupted`.
    pub status: RunStatus,
    /// The best checkpoint so far.
    pub best: Option<BestState>,
    /// When the run was created (Unix seconds).
    pub created_unix_secs: f64,
    /// Last rewrite of state.json (Unix seconds): a changed value means new data on disk.
    pub updated_unix_secs: f64,
    /// Global step reached.
    pub global_step: u64,
    /// Steps in the plan.
    pub total_steps: u64,
    /// Why it failed (or another message of the state).
    pub message: Option<String>,
    /// Whether it lies outside the runs folder (opened with "Open run folder…").
    pub external: bool,
    /// What wrote it: Wick, or another tool (TensorBoard, a Hugging Face Trainer).
    pub kind: crate::interop::RunKind,
    /// Another process that trains it now (its lock): the window shows the run read-only.
    pub locked_by: Option<crate::run::LockHolder>,
}

impl RunSummary {
    /// Whether "Resume" makes sense: stopped or interrupted (or paused by a process that is gone), and no
    /// other process holds the run's lock.
    pub fn resumable(&self) -> bool {
        matches!(self.status, RunStatus::Stopped | RunStatus::Interrupted) && self.locked_by.is_none()
    }
}

/// Reads a run's summary (run.toml must exist; state.json is small).
pub fn summarize_run(root: &Path, external: bool) -> anyhow::Result<RunSummary> {
    let dir = RunDir::open(root)?;
    // An unreadable state.json is rebuilt from the logs for display (the window only reads; a resume
    // rewrites it).
    let state = match dir.read_state() {
        Ok(state) => state,
        Err(e) => crate::run::recorder::rebuild_state(&dir, &format!("is unreadable ({e:#}), not rewritten here"))?,
    };
    Ok(RunSummary {
        root: root.to_path_buf(),
        id: dir.id(),
        status: state.effective_status(),
        best: state.best.clone(),
        created_unix_secs: state.created_unix_secs,
        updated_unix_secs: state.updated_unix_secs,
        global_step: state.global_step,
        total_steps: state.total_steps,
        message: state.message.clone(),
        external,
        kind: crate::interop::RunKind::Wick,
        locked_by: other_process_lock(root),
    })
}

/// The holder of a run's lock when it is another live process (or one this machine cannot check); a stale
/// lock, or this process's own, is none.
fn other_process_lock(root: &Path) -> Option<crate::run::LockHolder> {
    use crate::run::lock::Liveness;
    let holder = crate::run::lock_holder(root).ok().flatten()?;
    matches!(holder.liveness(), Liveness::Running | Liveness::Unknown).then_some(holder)
}

/// What the scanner should look at.
#[derive(Debug, Clone, Default)]
pub struct ScanRequest {
    /// The runs folder.
    pub runs_dir: PathBuf,
    /// Run directories elsewhere.
    pub extra: Vec<PathBuf>,
}

/// The result of one scan.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// Every readable run, newest first.
    pub runs: Vec<RunSummary>,
    /// Runs that could not be read: (directory, why).
    pub errors: Vec<(PathBuf, String)>,
}

/// Scans the runs folder every [`RESCAN_EVERY`] (and at once on [`RunsScanner::rescan`]) on a thread.
pub struct RunsScanner {
    requests: Sender<ScanRequest>,
    /// Scan results, newest last.
    pub results: Receiver<ScanResult>,
}

impl RunsScanner {
    /// Starts the scanner thread; it ends when the scanner is dropped.
    pub fn start(request: ScanRequest, ctx: egui::Context) -> Self {
        let (request_tx, request_rx) = unbounded::<ScanRequest>();
        let (result_tx, result_rx) = unbounded();
        let spawned = std::thread::Builder::new().name("runs-scanner".to_string()).spawn(move || {
            let mut request = request;
            let mut last: Option<(Vec<RunSummary>, usize)> = None;
            loop {
                let result = scan(&request);
                let fingerprint = (result.runs.clone(), result.errors.len());
                if last.as_ref() != Some(&fingerprint) {
                    last = Some(fingerprint);
                    if result_tx.send(result).is_err() {
                        return;
                    }
                    ctx.request_repaint();
                }
                match request_rx.recv_timeout(RESCAN_EVERY) {
                    Ok(next) => {
                        request = next;
                        // Take the newest of several queued requests.
                        while let Ok(next) = request_rx.try_recv() {
                            request = next;
                        }
                        last = None;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the runs scanner: {e}");
        }
        Self { requests: request_tx, results: result_rx }
    }

    /// Scans again now (with possibly new folders).
    pub fn rescan(&self, request: ScanRequest) {
        let _ = self.requests.send(request);
    }
}

/// One scan of the runs folder and the extra run directories.
pub fn scan(request: &ScanRequest) -> ScanResult {
    let mut result = ScanResult::default();
    match crate::run::scan_runs(&request.runs_dir) {
        Ok(dirs) => {
            for dir in dirs {
                match summarize_run(dir.root(), false) {
                    Ok(summary) => result.runs.push(summary),
                    Err(e) => result.errors.push((dir.root().to_path_buf(), format!("{e:#}"))),
                }
            }
        }
        Err(e) => result.errors.push((request.runs_dir.clone(), format!("{e:#}"))),
    }
    for found in super::external::external_runs_under(&request.runs_dir) {
        result.runs.push(super::external::summarize_external(&found, false));
    }
    for root in &request.extra {
        if result.runs.iter().any(|r| &r.root == root) {
            continue;
        }
        match super::external::kind_of(root) {
            Some(kind) if kind != crate::interop::RunKind::Wick => {
                let found = super::external::found(root, kind);
                result.runs.push(super::external::summarize_external(&found, true));
                continue;
            }
            _ => {}
        }
        match summarize_run(root, true) {
            Ok(summary) => result.runs.push(summary),
            Err(e) => result.errors.push((root.clone(), format!("{e:#}"))),
        }
    }
    result.runs.sort_by(|a, b| b.created_unix_secs.total_cmp(&a.created_unix_secs).then_with(|| b.id.cmp(&a.id)));
    result
}

/// A finished load: the run and its store, or why it could not be read.
pub type LoadResult = (PathBuf, Result<RunStore, String>);

/// Loads run directories into [`RunStore`]s, one thread per request.
pub struct StoreLoader {
    sender: Sender<LoadResult>,
    /// Finished loads.
    pub results: Receiver<LoadResult>,
    ctx: egui::Context,
}

impl StoreLoader {
    /// A loader that wakes `ctx` when a load finishes.
    pub fn new(ctx: egui::Context) -> Self {
        let (sender, results) = unbounded();
        Self { sender, results, ctx }
    }

    /// Where loads are sent: external runs' watchers send their stores here too.
    pub fn sender(&self) -> Sender<LoadResult> {
        self.sender.clone()
    }

    /// Loads `root` on a new thread.
    pub fn load(&self, root: PathBuf) {
        let sender = self.sender.clone();
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new().name("run-loader".to_string()).spawn(move || {
            let result = RunStore::load(&root).map_err(|e| format!("{e:#}"));
            let _ = sender.send((root, result));
            ctx.request_repaint();
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start a run loader: {e}");
        }
    }
}
