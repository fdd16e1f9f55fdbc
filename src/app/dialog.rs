//! File dialogs behind a small trait, so tests can inject paths instead of opening a window.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The file dialogs the window uses. Each call blocks until the user answers; `None` = cancelled (or no
/// desktop portal is available).
pub trait FileDialog {
    /// Choose a run config (TOML) to open.
    fn open_config(&self) -> Option<PathBuf>;
    /// Choose where to save a run config, suggesting `file_name`.
    fn save_config(&self, file_name: &str) -> Option<PathBuf>;
    /// Choose a run directory (one holding run.toml).
    fn open_run_folder(&self) -> Option<PathBuf>;
    /// Choose where to save a CSV file, suggesting `file_name`.
    fn save_csv(&self, file_name: &str) -> Option<PathBuf>;
    /// Choose where to save a PNG image, suggesting `file_name`.
    fn save_png(&self, _file_name: &str) -> Option<PathBuf> {
        None
    }
    /// Choose an image folder (one subfolder per class).
    fn pick_data_folder(&self) -> Option<PathBuf> {
        None
    }
    /// Choose a layout JSONL file.
    fn pick_layout_file(&self) -> Option<PathBuf> {
        None
    }
}

/// The real dialogs (rfd: the XDG desktop portal on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct RfdDialog;

impl FileDialog for RfdDialog {
    fn open_config(&self) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Open run config").add_filter("TOML", &["toml"]).pick_file()
    }
    fn save_config(&self, file_name: &str) -> Option<PathBuf> {
        rfd::FileDialog::new()
            .set_title("Save run config")
            .add_filter("TOML", &["toml"])
            .set_file_name(file_name)
            .save_file()
    }
    fn open_run_folder(&self) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Open run folder").pick_folder()
    }
    fn save_csv(&self, file_name: &str) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Export CSV").add_filter("CSV", &["csv"]).set_file_name(file_name).save_file()
    }
    fn save_png(&self, file_name: &str) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Save PNG").add_filter("PNG", &["png"]).set_file_name(file_name).save_file()
    }
    fn pick_data_folder(&self) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Image folder (one subfolder per class)").pick_folder()
    }
    fn pick_layout_file(&self) -> Option<PathBuf> {
        rfd::FileDialog::new().set_title("Layout file").add_filter("JSON lines", &["jsonl", "json"]).pick_file()
    }
}

/// A dialog for tests: every call takes the next injected path (`None` when there is none left).
#[derive(Debug, Default, Clone)]
pub struct ScriptedDialog {
    answers: Arc<Mutex<VecDeque<PathBuf>>>,
}

impl ScriptedDialog {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the answer to the next dialog call (clones share the queue).
    pub fn push(&self, path: impl Into<PathBuf>) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.push_back(path.into());
        }
    }

    fn next(&self) -> Option<PathBuf> {
        self.answers.lock().ok().and_then(|mut answers| answers.pop_front())
    }
}

impl FileDialog for ScriptedDialog {
    fn open_config(&self) -> Option<PathBuf> {
        self.next()
    }
    fn save_config(&self, _file_name: &str) -> Option<PathBuf> {
        self.next()
    }
    fn open_run_folder(&self) -> Option<PathBuf> {
        self.next()
    }
    fn save_csv(&self, _file_name: &str) -> Option<PathBuf> {
        self.next()
    }
    fn save_png(&self, _file_name: &str) -> Option<PathBuf> {
        self.next()
    }
    fn pick_data_folder(&self) -> Option<PathBuf> {
        self.next()
    }
    fn pick_layout_file(&self) -> Option<PathBuf> {
        self.next()
    }
}
