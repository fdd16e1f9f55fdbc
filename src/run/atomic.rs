//! Crash-safe file writes: rewrite by temporary file + fsync + rename; append whole lines.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::disk::{check_write, write_error};

/// Replaces `path` with `bytes` atomically: a crash at any instant leaves either the old or the new content.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    // Errors name the file the user knows (`path`): the temporary one is an implementation detail.
    let written = check_write(path).and_then(|()| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        // A half-written temporary file only takes space a full disk lacks; the old content is untouched.
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(e, path, "rewriting"));
    }
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
    path: std::path::PathBuf,
}

impl JsonlAppender {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| write_error(e, path, "opening for appending"))?;
        let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                check_write(path)
                    .and_then(|()| file.write_all(b"\n"))
                    .map_err(|e| write_error(e, path, "repairing the torn last line of"))?;
            }
        }
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Appends one record as a single line (one write call, so a reader never sees half of it unless the
    /// process dies inside the call). A failed write (a full disk) is cut back off, so the file never keeps
    /// half a line in the middle.
    pub fn append<T: serde::Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let len_before = self.file.metadata().map(|m| m.len()).ok();
        if let Err(e) = check_write(&self.path).and_then(|()| self.file.write_all(&line)) {
            if let Some(len) = len_before {
                let _ = self.file.set_len(len);
            }
            return Err(write_error(e, &self.path, "appending to"));
        }
        Ok(())
    }

    /// Pushes buffered data to the operating system and the disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| write_error(e, &self.path, "flushing"))?;
        self.file.sync_data().map_err(|e| write_error(e, &self.path, "flushing"))?;
        Ok(())
    }
}

/// What a JSON-lines file held: the records that read, and the 1-based numbers of the lines that did not
/// (a line torn by a crash, garbage written over it, a record of an unknown shape).
#[derive(Debug, Clone)]
pub struct JsonlContents<T> {
    /// Every readable record, in file order.
    pub records: Vec<T>,
    /// Line numbers (1-based) of the non-blank lines that are not a record.
    pub damaged_lines: Vec<usize>,
}

impl<T> JsonlContents<T> {
    /// A sentence for the user when lines were skipped: the file, how many, and which (the first few).
    pub fn damage_note(&self, path: &Path) -> Option<String> {
        if self.damaged_lines.is_empty() {
            return None;
        }
        const SHOWN: usize = 5;
        let mut which: Vec<String> = self.damaged_lines.iter().take(SHOWN).map(|n| n.to_string()).collect();
        if self.damaged_lines.len() > SHOWN {
            which.push("…".to_string());
        }
        let count = self.damaged_lines.len();
        Some(format!(
            "{}: {count} unreadable line{} skipped (line{} {}); the other {} records are shown",
            path.display(),
            if count == 1 { "" } else { "s" },
            if count == 1 { "" } else { "s" },
            which.join(", "),
            self.records.len()
        ))
    }
}

/// Reads a JSON-lines file (none yet: no records), skipping blank lines and counting every line that is not
/// a record: one damaged line never hides the rest of a run.
pub fn read_jsonl_contents<T: serde::de::DeserializeOwned>(path: &Path) -> Result<JsonlContents<T>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(JsonlContents { records: Vec::new(), damaged_lines: Vec::new() })
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut records = Vec::new();
    let mut damaged_lines = Vec::new();
    // Split on bytes: a line of invalid UTF-8 is one damaged line, not a reason to drop the file.
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => records.push(record),
            Err(_) => damaged_lines.push(index + 1),
        }
    }
    Ok(JsonlContents { records, damaged_lines })
}

/// Reads a JSON-lines file's records, skipping damaged lines (said in the log with the file and lines).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let contents = read_jsonl_contents(path)?;
    if let Some(note) = contents.damage_note(path) {
        tracing::warn!("{note}");
    }
    Ok(contents.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Record {
        step: u64,
    }

    #[test]
    fn damaged_lines_are_skipped_counted_and_named_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"{\"step\":1}\n");
        bytes.extend_from_slice(b"{\"step\":2,\"lo\n"); // torn by a crash, then ended by the appender
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(b"\xff\xfe garbage \x00\n"); // not even UTF-8
        bytes.extend_from_slice(b"{\"other\":true}\n"); // JSON, but not a record
        bytes.extend_from_slice(b"{\"step\":3}\n");
        bytes.extend_from_slice(b"{\"step\":4"); // torn last line
        std::fs::write(&path, &bytes).unwrap();

        let contents = read_jsonl_contents::<Record>(&path).unwrap();
        assert_eq!(contents.records, vec![Record { step: 1 }, Record { step: 3 }]);
        assert_eq!(contents.damaged_lines, vec![2, 4, 5, 7]);
        let note = contents.damage_note(&path).unwrap();
        assert!(note.contains("metrics.jsonl: 4 unreadable lines skipped (lines 2, 4, 5, 7)"), "{note}");
        assert!(note.contains("the other 2 records are shown"), "{note}");
        assert_eq!(read_jsonl::<Record>(&path).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_file_has_no_records_and_a_clean_one_no_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let none = read_jsonl_contents::<Record>(&path).unwrap();
        assert!(none.records.is_empty() && none.damage_note(&path).is_none());
        let mut appender = JsonlAppender::open(&path).unwrap();
        appender.append(&Record { step: 7 }).unwrap();
        let clean = read_jsonl_contents::<Record>(&path).unwrap();
        assert_eq!(clean.records, vec![Record { step: 7 }]);
        assert!(clean.damage_note(&path).is_none());
    }
}
