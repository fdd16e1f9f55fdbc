//! Logging: `tracing` events go to the console (filtered) and, in full, to the log.txt of every run
//! currently attached, so nothing is only on a console.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Open log.txt files, each receiving every event at DEBUG and above.
static RUN_LOGS: OnceLock<Mutex<Vec<(PathBuf, File)>>> = OnceLock::new();

fn run_logs() -> &'static Mutex<Vec<(PathBuf, File)>> {
    RUN_LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

thread_local! {
    /// The run log this thread writes to (trainer and recorder threads); unset = every attached log.
    static THREAD_RUN_LOG: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Sends this thread's log events only to `path` (a run's log.txt, attached with [`attach_run_log`]).
pub fn bind_thread_to_run_log(path: &Path) {
    THREAD_RUN_LOG.with(|bound| *bound.borrow_mut() = Some(path.to_path_buf()));
}

/// The run log this thread is bound to, if any: a thread that starts helpers (evaluation, prefetch) binds
/// them to the same log with [`bind_thread_to_run_log`].
pub fn current_run_log() -> Option<PathBuf> {
    THREAD_RUN_LOG.with(|bound| bound.borrow().clone())
}

/// Binds this thread to `path` when it is `Some` (see [`current_run_log`]).
pub fn bind_thread_to(path: Option<&Path>) {
    if let Some(path) = path {
        bind_thread_to_run_log(path);
    }
}

/// Makes sure run logs receive events even when the program installed no subscriber (tests, embedders):
/// installs one with only the run-log layer if none is set.
pub fn ensure_run_logging() {
    if !tracing::dispatcher::has_been_set() {
        let _ = tracing_subscriber::registry().with(RunLogLayer).try_init();
    }
}

/// Installs the global subscriber: console output filtered by `WICK_LOG` (default `console_default`, e.g.
/// `"warn"`), plus the run-log layer. Calling it again is harmless.
pub fn init(console_default: &str) {
    let filter = EnvFilter::try_from_env("WICK_LOG").unwrap_or_else(|_| EnvFilter::new(console_default));
    let console = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter);
    let _ = tracing_subscriber::registry().with(console).with(RunLogLayer).try_init();
}

/// Keeps a run's log.txt attached to the log while alive.
pub struct RunLogGuard {
    path: PathBuf,
}

/// Appends every log event from now on to `path` (a run's log.txt) until the guard is dropped.
pub fn attach_run_log(path: &Path) -> anyhow::Result<RunLogGuard> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    if let Ok(mut logs) = run_logs().lock() {
        logs.push((path.to_path_buf(), file));
    }
    Ok(RunLogGuard { path: path.to_path_buf() })
}

impl Drop for RunLogGuard {
    fn drop(&mut self) {
        if let Ok(mut logs) = run_logs().lock() {
            if let Some(index) = logs.iter().position(|(p, _)| *p == self.path) {
                let (_, mut file) = logs.remove(index);
                let _ = file.flush();
            }
        }
    }
}

struct RunLogLayer;

struct MessageVisitor {
    text: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.text, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for RunLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::DEBUG {
            return;
        }
        let Ok(mut logs) = run_logs().lock() else { return };
        if logs.is_empty() {
            return;
        }
        let mut visitor = MessageVisitor { text: String::new() };
        event.record(&mut visitor);
        let now = time::OffsetDateTime::now_utc();
        let stamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "?".to_string());
        let thread = std::thread::current();
        let line = format!(
            "{stamp} {level:>5} [{}] {}: {}\n",
            thread.name().unwrap_or("?"),
            event.metadata().target(),
            visitor.text
        );
        let bound = THREAD_RUN_LOG.with(|bound| bound.borrow().clone());
        for (path, file) in logs.iter_mut() {
            if bound.as_ref().is_none_or(|b| b == path) {
                let _ = file.write_all(line.as_bytes());
            }
        }
    }
}
