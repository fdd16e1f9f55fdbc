//! The Logs panel's logic: a run's log.txt tailed by a worker that reads only the bytes appended since its last
//! read (by file offset), lines parsed for their level, and the level filter and search.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

/// How often the tail looks for new bytes.
pub const TAIL_EVERY: Duration = Duration::from_millis(300);

/// Most bytes read in one go (a huge log arrives over several reads).
const READ_CHUNK_BYTES: u64 = 4 << 20;

/// Most lines kept in memory; older ones are dropped from the view (the file keeps them).
pub const MAX_LINES: usize = 200_000;

/// Level of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// ERROR.
    Error,
    /// WARN.
    Warn,
    /// INFO.
    Info,
    /// DEBUG (and TRACE).
    Debug,
}

/// One line of log.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level (a continuation line takes the level of the line it continues).
    pub level: LogLevel,
    /// The text.
    pub text: String,
}

/// The level of a log.txt line (`<RFC 3339 time> <LEVEL> [thread] target: message`), if it starts like one.
pub fn parse_level(line: &str) -> Option<LogLevel> {
    let mut words = line.split_whitespace();
    let stamp = words.next()?;
    if !stamp.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    match words.next()? {
        "ERROR" => Some(LogLevel::Error),
        "WARN" => Some(LogLevel::Warn),
        "INFO" => Some(LogLevel::Info),
        "DEBUG" | "TRACE" => Some(LogLevel::Debug),
        _ => None,
    }
}

/// Which levels the Logs panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelFilter {
    /// Show ERROR lines.
    pub error: bool,
    /// Show WARN lines.
    pub warn: bool,
    /// Show INFO lines.
    pub info: bool,
    /// Show DEBUG lines.
    pub debug: bool,
}

impl Default for LevelFilter {
    fn default() -> Self {
        Self { error: true, warn: true, info: true, debug: true }
    }
}

impl LevelFilter {
    /// Whether lines of `level` are shown.
    pub fn shows(&self, level: LogLevel) -> bool {
        match level {
            LogLevel::Error => self.error,
            LogLevel::Warn => self.warn,
            LogLevel::Info => self.info,
            LogLevel::Debug => self.debug,
        }
    }
}

/// Whether `line` passes the level filter and contains `search` (case-insensitive; empty = any).
pub fn line_visible(line: &LogLine, filter: &LevelFilter, search_lower: &str) -> bool {
    filter.shows(line.level) && (search_lower.is_empty() || line.text.to_lowercase().contains(search_lower))
}

/// Splits newly read text into lines; `last_level` carries the level across calls for continuation lines.
pub fn parse_lines(text: &str, last_level: &mut LogLevel) -> Vec<LogLine> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let level = parse_level(l).unwrap_or(*last_level);
            *last_level = level;
            LogLine { level, text: l.to_string() }
        })
        .collect()
}

/// What the tail worker sends.
enum TailMessage {
    /// Lines appended since the last message.
    Lines(Vec<LogLine>),
    /// The file was truncated or replaced: start over.
    Reset,
    /// The file cannot be read (yet).
    Error(String),
}

/// A log.txt being tailed, and every line read so far.
pub struct LogTail {
    /// The file.
    pub path: PathBuf,
    /// Lines read so far (at most [`MAX_LINES`], newest last).
    pub lines: Vec<LogLine>,
    /// Why the file cannot be read, while it cannot.
    pub error: Option<String>,
    /// Lines dropped from the front so far (to keep at most [`MAX_LINES`]), or cleared by a reset.
    pub dropped: u64,
    rx: Receiver<TailMessage>,
    stop: Arc<AtomicBool>,
}

impl LogTail {
    /// Starts tailing `path` on a worker that wakes `ctx` when lines arrive.
    pub fn start(path: &Path, ctx: &egui::Context) -> Self {
        let (tx, rx) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let (file, flag, ctx) = (path.to_path_buf(), stop.clone(), ctx.clone());
        let spawned = std::thread::Builder::new().name("log-tail".into()).spawn(move || {
            let mut offset = 0u64;
            let mut pending: Vec<u8> = Vec::new();
            let mut last_level = LogLevel::Info;
            let mut reported_error = false;
            while !flag.load(Ordering::Relaxed) {
                match read_new_bytes(&file, offset) {
                    Ok(None) => {
                        offset = 0;
                        pending.clear();
                        if tx.send(TailMessage::Reset).is_err() {
                            return;
                        }
                    }
                    Ok(Some(bytes)) => {
                        reported_error = false;
                        offset += bytes.len() as u64;
                        pending.extend_from_slice(&bytes);
                        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
                            let complete: Vec<u8> = pending.drain(..=end).collect();
                            let lines = parse_lines(&String::from_utf8_lossy(&complete), &mut last_level);
                            if tx.send(TailMessage::Lines(lines)).is_err() {
                                return;
                            }
                            ctx.request_repaint();
                        }
                        if bytes.len() as u64 == READ_CHUNK_BYTES {
                            continue; // more is waiting
                        }
                    }
                    Err(why) => {
                        if !reported_error {
                            reported_error = true;
                            if tx.send(TailMessage::Error(why)).is_err() {
                                return;
                            }
                            ctx.request_repaint();
                        }
                    }
                }
                std::thread::sleep(TAIL_EVERY);
            }
        });
        let error = spawned.err().map(|e| format!("cannot start the log reader: {e}"));
        Self { path: path.to_path_buf(), lines: Vec::new(), error, dropped: 0, rx, stop }
    }

    /// Takes the lines that arrived.
    pub fn poll(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            match message {
                TailMessage::Lines(mut lines) => {
                    self.error = None;
                    self.lines.append(&mut lines);
                    if self.lines.len() > MAX_LINES {
                        let excess = self.lines.len() - MAX_LINES;
                        self.lines.drain(..excess);
                        self.dropped += excess as u64;
                    }
                }
                TailMessage::Reset => {
                    self.dropped += self.lines.len() as u64;
                    self.lines.clear();
                }
                TailMessage::Error(why) => self.error = Some(why),
            }
        }
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The bytes of `path` from `offset` on (at most [`READ_CHUNK_BYTES`]); `None` when the file is now shorter
/// than `offset` (truncated or replaced).
fn read_new_bytes(path: &Path, offset: u64) -> Result<Option<Vec<u8>>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if len < offset {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    if len > offset {
        file.seek(SeekFrom::Start(offset)).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        file.take(READ_CHUNK_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    Ok(Some(bytes))
}

/// State of the Logs panel.
pub struct LogsState {
    /// The tailed log (the primary run's).
    pub tail: Option<LogTail>,
    /// Levels shown.
    pub filter: LevelFilter,
    /// Search text.
    pub search: String,
    /// Keep the view at the newest line.
    pub auto_scroll: bool,
    /// Indices of the shown lines, and what they were computed for.
    view: Vec<usize>,
    view_key: Option<ViewKey>,
}

/// What the shown lines depend on: a change of filter or search, or lines dropped, recomputes them; new lines
/// only extend them.
#[derive(Debug, Clone, PartialEq)]
struct ViewKey {
    path: PathBuf,
    dropped: u64,
    len: usize,
    filter: LevelFilter,
    search: String,
}

impl Default for LogsState {
    fn default() -> Self {
        Self {
            tail: None,
            filter: LevelFilter::default(),
            search: String::new(),
            auto_scroll: true,
            view: Vec::new(),
            view_key: None,
        }
    }
}

impl LogsState {
    /// Indices into the tail's lines of those the filter and search show (cached; new lines are added
    /// incrementally).
    pub fn visible(&mut self) -> &[usize] {
        let Some(tail) = &self.tail else {
            self.view.clear();
            self.view_key = None;
            return &self.view;
        };
        let search = self.search.to_lowercase();
        let key = ViewKey {
            path: tail.path.clone(),
            dropped: tail.dropped,
            len: tail.lines.len(),
            filter: self.filter,
            search,
        };
        let start = match &self.view_key {
            Some(old) if *old == key => return &self.view,
            Some(old)
                if old.path == key.path
                    && old.dropped == key.dropped
                    && old.filter == key.filter
                    && old.search == key.search
                    && old.len <= key.len =>
            {
                old.len
            }
            _ => {
                self.view.clear();
                0
            }
        };
        let filter = self.filter;
        self.view.extend((start..tail.lines.len()).filter(|&i| line_visible(&tail.lines[i], &filter, &key.search)));
        self.view_key = Some(key);
        &self.view
    }

    /// Tails `log` (none: stops); a change of file starts over.
    pub fn follow(&mut self, log: Option<PathBuf>, ctx: &egui::Context) {
        if self.tail.as_ref().map(|t| &t.path) != log.as_ref() {
            self.tail = log.map(|path| LogTail::start(&path, ctx));
        }
        if let Some(tail) = &mut self.tail {
            tail.poll();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_from_log_lines_and_continuations_inherit_them() {
        let text = "2026-01-01T00:00:00Z  WARN [trainer] wick::train: careful\n  more of it\n2026-01-01T00:00:01Z DEBUG [x] y: z\n";
        let mut last = LogLevel::Info;
        let lines = parse_lines(text, &mut last);
        assert_eq!(
            lines.iter().map(|l| l.level).collect::<Vec<_>>(),
            [LogLevel::Warn, LogLevel::Warn, LogLevel::Debug]
        );
        assert_eq!(last, LogLevel::Debug);
        assert_eq!(parse_level("2026-01-01T00:00:00Z ERROR [t] w: boom"), Some(LogLevel::Error));
        assert_eq!(parse_level("no level here"), None);
    }

    #[test]
    fn the_filter_hides_levels_and_the_search_is_case_insensitive() {
        let line = |level, text: &str| LogLine { level, text: text.to_string() };
        let filter = LevelFilter { debug: false, ..LevelFilter::default() };
        assert!(!line_visible(&line(LogLevel::Debug, "a"), &filter, ""));
        assert!(line_visible(&line(LogLevel::Info, "Saved Checkpoint"), &filter, "checkpoint"));
        assert!(!line_visible(&line(LogLevel::Info, "Saved"), &filter, "checkpoint"));
    }

    #[test]
    fn the_tail_reads_appended_bytes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.txt");
        std::fs::write(&path, "one\n").expect("write");
        assert_eq!(read_new_bytes(&path, 0).expect("read"), Some(b"one\n".to_vec()));
        std::fs::write(&path, "one\ntwo\n").expect("write");
        assert_eq!(read_new_bytes(&path, 4).expect("read"), Some(b"two\n".to_vec()));
        assert_eq!(read_new_bytes(&path, 100).expect("read"), None, "truncated");
    }
}
