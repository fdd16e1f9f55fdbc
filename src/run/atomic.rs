//! Crash-safe file writes: rewrite by temporary file + fsync + rename; append whole lines.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Replaces `path` with `bytes` atomically: a crash at any instant leaves either the old or the new content.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    {
        let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("cannot flush {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Flushes a directory's entries (renames, creations) to disk; best effort, as not every platform allows it.
pub fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// An append-only JSON-lines file. Opening repairs a torn last line (a crash mid-write) by ending it, so
/// the next record starts on a line of its own.
pub struct JsonlAppender {
    file: File,
}

impl JsonlAppender {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").with_context(|| format!("cannot repair {}", path.display()))?;
            }
        }
        Ok(Self { file })
    }

    /// Appends one record as a single line (one write call, so a reader never sees half of it unless the
    /// process dies inside the call).
    pub fn append<T: serde::Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        Ok(())
    }

    /// Pushes buffered data to the operating system and the disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file.flush()?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// Reads a JSON-lines file, skipping blank lines and a torn (unparsable) last line; an unparsable line in
/// the middle is an error naming the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(e) => {
                // A crash can tear the last line, or a line that a later session's appender then ended
                // with a newline: such a line is a truncated object. Anything else is real corruption.
                let torn = index + 1 == lines.len() || !line.trim_end().ends_with('}');
                if !torn {
                    return Err(e)
                        .with_context(|| format!("{}: line {} is not a valid record", path.display(), index + 1));
                }
                tracing::warn!("{}: ignoring torn line {}", path.display(), index + 1);
            }
        }
    }
    Ok(records)
}
