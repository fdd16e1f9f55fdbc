//! The one door a run's writes go through: every file Wick writes for a run (atomic rewrites, log appends,
//! checkpoint files) is written by [`write_synced`] or checked by [`check_write`] first. That gives two
//! things:
//!
//! - **Errors said as a user needs them**: a full disk reads "no space left on <file>", a read-only one
//!   "<file> is on a read-only file system", a deleted run folder "<folder> no longer exists" — the file is
//!   always named ([`write_error`]).
//! - **Faults on demand** for tests, in the spirit of SQLite's test VFS: [`inject`] makes the writes to
//!   chosen files fail exactly as the kernel fails them (the same [`std::io::ErrorKind`]), from a chosen
//!   write on, until the returned guard is dropped ("space is back"). Rules match by path, so tests running
//!   side by side in one process only hit their own run folders.

use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::Result;

/// A failure [`inject`] can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The disk is full (`ENOSPC`).
    NoSpace,
    /// The file system was remounted read-only (`EROFS`).
    ReadOnly,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::NoSpace => io::Error::new(ErrorKind::StorageFull, "No space left on device (injected)"),
            Fault::ReadOnly => io::Error::new(ErrorKind::ReadOnlyFilesystem, "Read-only file system (injected)"),
        }
    }
}

/// Which writes an injected fault hits.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Only paths under this folder (a test's own run folder).
    pub under: PathBuf,
    /// Only files whose name contains this (`metrics.jsonl`, `state.json`, `model.safetensors`; empty: all).
    pub file_name_contains: String,
    /// Matching writes that still succeed before the first failure.
    pub succeed_first: u32,
    /// What the failing writes report.
    pub fault: Fault,
}

struct ActiveRule {
    id: u64,
    rule: FaultRule,
    seen: u32,
}

static ANY_RULE: AtomicBool = AtomicBool::new(false);
static RULES: Mutex<Vec<ActiveRule>> = Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes its fault when dropped: the disk has space again, or is writable again.
#[must_use = "the fault is removed when the guard is dropped"]
pub struct FaultGuard {
    id: u64,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let mut rules = RULES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rules.retain(|r| r.id != self.id);
        ANY_RULE.store(!rules.is_empty(), Ordering::SeqCst);
    }
}

/// Makes the writes `rule` matches fail (tests and fault drills only; nothing in Wick calls it).
pub fn inject(rule: FaultRule) -> FaultGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    let mut rules = RULES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    rules.push(ActiveRule { id, rule, seen: 0 });
    ANY_RULE.store(true, Ordering::SeqCst);
    FaultGuard { id }
}

/// The injected failure for a write to `path`, if a rule says so (counts the write against the rules).
pub fn check_write(path: &Path) -> io::Result<()> {
    if !ANY_RULE.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut rules = RULES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for active in rules.iter_mut() {
        if path.starts_with(&active.rule.under) && name.contains(&active.rule.file_name_contains) {
            active.seen += 1;
            if active.seen > active.rule.succeed_first {
                return Err(active.rule.fault.error());
            }
        }
    }
    Ok(())
}

/// An I/O error while `doing` something to `path`, said the way a user can act on it.
pub fn write_error(error: io::Error, path: &Path, doing: &str) -> anyhow::Error {
    let shown = path.display();
    let what = match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            format!("no space left on {shown} ({doing}): free some space, then resume the run")
        }
        ErrorKind::ReadOnlyFilesystem => format!("{shown} is on a read-only file system ({doing})"),
        ErrorKind::PermissionDenied => format!("permission denied: {shown} ({doing})"),
        ErrorKind::NotFound => {
            let folder = missing_ancestor(path).unwrap_or_else(|| path.to_path_buf());
            format!("{} no longer exists ({doing} {shown}): was the run folder moved or deleted?", folder.display())
        }
        _ => format!("cannot {doing} {shown}"),
    };
    anyhow::Error::new(error).context(what)
}

/// The highest folder above `path` that is gone (the run folder, when it was deleted).
fn missing_ancestor(path: &Path) -> Option<PathBuf> {
    let mut gone = None;
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() || ancestor.exists() {
            break;
        }
        gone = Some(ancestor.to_path_buf());
    }
    gone
}

/// Creates (or truncates) `path`, writes `bytes` and flushes them to the disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    check_write(path).map_err(|e| write_error(e, path, "writing"))?;
    let mut file = File::create(path).map_err(|e| write_error(e, path, "creating"))?;
    file.write_all(bytes).map_err(|e| write_error(e, path, "writing"))?;
    file.sync_all().map_err(|e| write_error(e, path, "flushing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_fault_hits_only_its_files_from_the_chosen_write_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let target = dir.path().join("metrics.jsonl");
        let guard = inject(FaultRule {
            under: dir.path().to_path_buf(),
            file_name_contains: "metrics".into(),
            succeed_first: 2,
            fault: Fault::NoSpace,
        });
        assert!(check_write(&target).is_ok());
        assert!(check_write(&dir.path().join("state.json")).is_ok(), "another file of the run");
        assert!(check_write(&target).is_ok());
        let error = write_synced(&target, b"x").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.starts_with(&format!("no space left on {}", target.display())), "{message}");
        assert!(check_write(&other.path().join("metrics.jsonl")).is_ok(), "another folder");
        drop(guard);
        write_synced(&target, b"x").unwrap();
    }

    #[test]
    fn a_vanished_folder_is_named_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run-1");
        let error = write_synced(&run.join("checkpoints").join("x.json"), b"{}").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.starts_with(&format!("{} no longer exists", run.display())), "{message}");
    }
}
