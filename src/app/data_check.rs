//! The Setup panel's *Check data*: `wick data check` on a worker thread, with progress and cancel, so the
//! window never waits for a folder scan.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};

use crate::config::DatasetConfig;
use crate::data::{check_folder, CheckRequest, DataReport};

/// The check in progress, or the last one's result.
#[derive(Default)]
pub struct DataCheckState {
    /// Files done and the total of the check in progress.
    progress: Arc<(AtomicUsize, AtomicUsize)>,
    cancel: Arc<AtomicBool>,
    result: Option<Receiver<Result<DataReport, String>>>,
    thread: Option<JoinHandle<()>>,
    /// The last finished check: its report, or why it could not run.
    pub last: Option<Result<DataReport, String>>,
    /// The folder the last result is about.
    pub checked: Option<PathBuf>,
}

impl DataCheckState {
    /// Starts checking the dataset of `config` (an image folder), journalling in `cache_dir`; a check already
    /// running is cancelled first.
    pub fn start(&mut self, config: &DatasetConfig, cache_dir: PathBuf, ctx: &egui::Context) -> Result<(), String> {
        let root = config.path.clone().ok_or("choose the image folder first")?;
        self.cancel();
        let request = CheckRequest {
            root: root.clone(),
            layouts: config.layouts.clone(),
            box_units: config.box_units,
            slots: crate::config::LAYOUT_SLOTS,
            cache_dir: Some(cache_dir),
        };
        self.progress = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        self.cancel = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = bounded(1);
        let (progress, cancel, ctx) = (Arc::clone(&self.progress), Arc::clone(&self.cancel), ctx.clone());
        let thread = std::thread::Builder::new()
            .name("data-check".to_string())
            .spawn(move || {
                let result = check_folder(&request, &cancel, |p| {
                    progress.0.store(p.done, Ordering::Relaxed);
                    progress.1.store(p.total, Ordering::Relaxed);
                    ctx.request_repaint();
                })
                .map(|check| check.report)
                .map_err(|e| format!("{e:#}"));
                let _ = sender.send(result);
                ctx.request_repaint();
            })
            .map_err(|e| format!("cannot start the data check: {e}"))?;
        self.result = Some(receiver);
        self.thread = Some(thread);
        self.checked = Some(root);
        Ok(())
    }

    /// Takes the result when the worker has finished.
    pub fn poll(&mut self) {
        let Some(receiver) = &self.result else { return };
        if let Ok(result) = receiver.try_recv() {
            self.last = Some(result);
            self.result = None;
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Whether a check is running.
    pub fn is_running(&self) -> bool {
        self.result.is_some()
    }

    /// (files done, total) of the running check.
    pub fn progress(&self) -> (usize, usize) {
        (self.progress.0.load(Ordering::Relaxed), self.progress.1.load(Ordering::Relaxed))
    }

    /// Asks the running check to stop (what it read is kept: checking again continues from there). Returns at
    /// once: the worker ends after the chunk of files it is reading, and its result is dropped.
    pub fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.result = None;
        self.thread = None;
    }
}
