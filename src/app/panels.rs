//! State and commands of the Checkpoints, Compare, Logs, System and Preflight panels and of the toasts, kept
//! apart from the rest of the app: [`PanelsState`] is one field of [`WickApp`], [`PanelCommand`] one
//! [`AppCommand`](super::AppCommand) variant, [`WickApp::panels_logic`] one call per frame.

use std::path::{Path, PathBuf};

use super::checkpoints::{changes_checkpoints, fork_config, CheckpointsState};
use super::compare::CompareState;
use super::logs::LogsState;
use super::preflight::PreflightState;
use super::state::Panel;
use super::system::SystemMonitor;
use super::toasts::Toasts;
use super::WickApp;
use crate::run::TrainEvent;

/// A run's log, as [`crate::run::RunDir::log_path`] names it (the panel needs no opened RunDir).
const LOG_FILE: &str = "log.txt";

/// Runtime state of the panels (nothing here is persisted).
#[derive(Default)]
pub struct PanelsState {
    /// The Checkpoints panel.
    pub checkpoints: CheckpointsState,
    /// The Compare panel.
    pub compare: CompareState,
    /// Compare's columns of images runs logged to TensorBoard.
    pub logged: super::logged_images::LoggedImagesState,
    /// The Logs panel.
    pub logs: LogsState,
    /// The System panel's sampler (started when the panel is first shown).
    pub system: Option<SystemMonitor>,
    /// The Preflight panel.
    pub preflight: PreflightState,
    /// Notifications.
    pub toasts: Toasts,
    /// The primary run's state.json version last seen (a change means new checkpoints on disk).
    seen_version: Option<f64>,
    /// Outcome of saving the compared grid.
    save_result: Option<crossbeam_channel::Receiver<Result<String, String>>>,
}

/// What a click in these panels asks for; applied after the frame's panels are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum PanelCommand {
    /// Verify every checkpoint of the shown report.
    VerifyAll,
    /// Put the run's config into the Setup draft, its first stage warm-started from this checkpoint.
    Fork(PathBuf),
    /// Send the ticked checkpoints to the Compare panel.
    CompareSelected,
    /// Sample the Compare panel's settings.
    Generate,
    /// Save the compared grid as PNG (file dialog).
    SaveComparePng,
    /// Run the preflight of the Setup draft.
    RunPreflight,
}

impl PanelsState {
    /// Takes in a batch of the live run's events: toasts, and a new report when checkpoints changed.
    pub fn observe_events(&mut self, root: &Path, run_id: &str, events: &[TrainEvent]) {
        self.toasts.observe(events, run_id);
        if events.iter().any(changes_checkpoints) {
            self.checkpoints.invalidate(root);
            self.compare.invalidate_available();
        }
    }
}

impl WickApp {
    /// The run the Checkpoints and Logs panels describe: the primary selected run, else the live one.
    pub fn primary_run(&self) -> Option<PathBuf> {
        self.selected.first().cloned().or_else(|| self.session.as_ref().map(|s| s.root.clone()))
    }

    /// Per-frame work of the panels: worker results, and the workers the shown panel needs.
    pub fn panels_logic(&mut self) {
        let ctx = self.ctx.clone();
        let primary = self.primary_run();
        // A run written by another process changed on disk: its table is read again (when its checkpoints
        // changed). The live run's events say when instead.
        let live = self.session.as_ref().is_some_and(|s| s.is_active() && primary.as_ref() == Some(&s.root));
        if let Some(root) = primary.as_ref().filter(|_| !live) {
            let version = self.summary(root).map(|s| s.updated_unix_secs);
            if version.is_some() && version != self.panels.seen_version {
                self.panels.seen_version = version;
                self.panels.checkpoints.invalidate(root);
            }
        }
        let panel = self.persisted.panel;
        let panels = &mut self.panels;
        if panel == Panel::Checkpoints {
            panels.checkpoints.want(primary.as_deref(), &ctx);
        }
        panels.compare.poll();
        panels.logged.poll();
        if panel == Panel::Compare {
            let roots: Vec<(PathBuf, f64)> = self.runs.iter().map(|r| (r.root.clone(), r.updated_unix_secs)).collect();
            panels.compare.refresh_available(roots, &ctx);
        }
        if panel == Panel::Logs || panels.logs.tail.is_some() {
            panels.logs.follow(primary.map(|root| root.join(LOG_FILE)), &ctx);
        }
        if panel == Panel::System && panels.system.is_none() {
            panels.system = Some(SystemMonitor::start(&ctx));
        }
        if let Some(system) = &mut panels.system {
            system.poll();
        }
        panels.preflight.poll();
        let saved = panels.save_result.as_ref().and_then(|rx| rx.try_recv().ok());
        if let Some(result) = saved {
            panels.save_result = None;
            match result {
                Ok(text) => self.say(text, false),
                Err(text) => self.say(text, true),
            }
        }
        let panels = &mut self.panels;
        if let Some(after) = panels.toasts.expire(std::time::Instant::now()) {
            ctx.request_repaint_after(after);
        }
    }

    /// Applies a panel command.
    pub fn apply_panel_command(&mut self, command: PanelCommand) -> anyhow::Result<()> {
        let ctx = self.ctx.clone();
        match command {
            PanelCommand::VerifyAll => {
                let dirs: Vec<PathBuf> =
                    self.panels.checkpoints.report.iter().flat_map(|r| r.rows.iter().map(|c| c.dir.clone())).collect();
                anyhow::ensure!(!dirs.is_empty(), "no checkpoint to verify");
                let count = dirs.len();
                self.panels.checkpoints.verify(dirs, &ctx).map_err(anyhow::Error::msg)?;
                self.say(format!("Verifying {count} checkpoint(s)…"), false);
            }
            PanelCommand::Fork(checkpoint) => {
                let report = self.panels.checkpoints.report.as_ref();
                let config = report
                    .and_then(|r| r.config.clone())
                    .or_else(|| report.and_then(|r| self.stores.get(&r.root)).and_then(|s| s.config.clone()))
                    .ok_or_else(|| anyhow::anyhow!("the run's config is not loaded yet — try again in a moment"))?;
                let fork = fork_config(&config, &checkpoint);
                let stage = fork.stages.first().map(|s| s.name.clone()).unwrap_or_default();
                self.setup.replace(fork, None);
                self.persisted.panel = Panel::Setup;
                self.say(
                    format!(
                        "Forked into a new draft: stage `{stage}` warm-starts from {} — edit it and press Start",
                        checkpoint.display()
                    ),
                    false,
                );
            }
            PanelCommand::CompareSelected => {
                let picked: Vec<PathBuf> = self.panels.checkpoints.picked.iter().cloned().collect();
                anyhow::ensure!(!picked.is_empty(), "tick the checkpoints to compare first");
                anyhow::ensure!(
                    picked.len() <= super::compare::MAX_CHECKPOINTS,
                    "compare at most {} checkpoints ({} ticked)",
                    super::compare::MAX_CHECKPOINTS,
                    picked.len()
                );
                // Checkpoints of one run: sample as its evaluations did.
                let run = picked[0].parent().and_then(Path::parent);
                if let Some(config) = run.and_then(|run| self.stores.get(run)).and_then(|s| s.config.as_ref()) {
                    self.panels.compare.settings.use_evaluation_of(&config.eval);
                }
                self.panels.compare.settings.checkpoints = picked;
                self.persisted.panel = Panel::Compare;
            }
            PanelCommand::Generate => self.panels.compare.generate(&ctx).map_err(anyhow::Error::msg)?,
            PanelCommand::SaveComparePng => {
                let Some(result) = &self.panels.compare.result else { anyhow::bail!("generate a comparison first") };
                let png = result.png.clone();
                let Some(path) = self.dialog.save_png("compare.png") else { return Ok(()) };
                // Small (a few hundred KiB): written on a thread all the same, the UI never waits on disk.
                let (tx, rx) = crossbeam_channel::bounded(1);
                self.panels.save_result = Some(rx);
                let spawned = std::thread::Builder::new().name("png-save".into()).spawn(move || {
                    let result = crate::run::atomic::atomic_write(&path, &png)
                        .map(|()| format!("Saved {}", path.display()))
                        .map_err(|e| format!("cannot save {}: {e:#}", path.display()));
                    let _ = tx.send(result);
                    ctx.request_repaint();
                });
                spawned.map_err(|e| anyhow::anyhow!("cannot start saving the PNG: {e}"))?;
            }
            PanelCommand::RunPreflight => {
                self.setup.revalidate();
                self.panels
                    .preflight
                    .start(self.setup.config.clone(), Some(self.runs_dir.join(".cache")), &ctx)
                    .map_err(anyhow::Error::msg)?;
            }
        }
        Ok(())
    }
}
