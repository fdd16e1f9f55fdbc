//! One writer per run directory: the process that trains a run holds `train.lock` in it, naming its pid,
//! host and start time. A second trainer (the window and `wick resume`, or two `wick resume`s) is refused
//! with a message naming the holder; a lock left by a process that is gone (same host, pid not running, or
//! running but started at another time: a reused pid) is taken over, with a warning.
//!
//! The lock file is created whole or not at all (written beside it, then hard-linked into place, which fails
//! when a lock exists), so a reader never sees half a lock. On a host other than the holder's, liveness
//! cannot be checked: the lock is respected, and the message says how to clear it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "train.lock";

/// Who holds a run's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// When the lock was taken (RFC 3339, UTC).
    pub since: String,
    /// The process's start time in clock ticks since boot (Linux `/proc/PID/stat` field 22), to tell a
    /// reused pid from the holder; `None` where it cannot be read.
    pub process_start_ticks: Option<u64>,
    /// What holds it: `train` (`wick train` / `wick resume` / the window).
    pub purpose: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {} (since {})", self.pid, self.host, self.since)
    }
}

/// Whether a lock's holder still runs, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// This process.
    Ours,
    /// Another live process on this host.
    Running,
    /// Gone: no such process on this host, or the pid now belongs to a process started later.
    Gone,
    /// Held on another host (or on a system whose processes this build cannot inspect).
    Unknown,
}

impl LockHolder {
    /// This process, for `purpose`.
    fn this_process(purpose: &str) -> Self {
        let pid = std::process::id();
        Self {
            pid,
            host: host_name(),
            since: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| "?".to_string()),
            process_start_ticks: process_start_ticks(pid),
            purpose: purpose.to_string(),
        }
    }

    /// Whether the holder still runs.
    pub fn liveness(&self) -> Liveness {
        if self.host != host_name() || !Path::new("/proc/self/stat").exists() {
            return Liveness::Unknown;
        }
        if self.pid == std::process::id() && self.process_start_ticks == process_start_ticks(self.pid) {
            return Liveness::Ours;
        }
        match process_start_ticks(self.pid) {
            None => Liveness::Gone,
            Some(ticks) if self.process_start_ticks.is_some_and(|held| held != ticks) => Liveness::Gone,
            Some(_) => Liveness::Running,
        }
    }
}

/// The lock on a run directory, released (its file removed) when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    holder: LockHolder,
}

impl RunLock {
    /// Takes the lock of the run directory `run_root` for `purpose`, taking over a stale one. Fails, naming
    /// the holder, when another live process (or one on another host) holds it.
    pub fn acquire(run_root: &Path, purpose: &str) -> Result<Self> {
        let path = run_root.join(LOCK_FILE);
        let holder = LockHolder::this_process(purpose);
        for _attempt in 0..3 {
            if create_whole(&path, &holder)? {
                return Ok(Self { path, holder });
            }
            let Some(existing) = read_holder(&path)? else {
                continue; // removed between our try and the read: try again
            };
            match existing.liveness() {
                Liveness::Gone => {
                    take_over_stale(&path, &existing)?;
                    tracing::warn!(
                        "{}: took over the lock of {existing}, which no longer runs (it was not stopped cleanly)",
                        run_root.display()
                    );
                }
                Liveness::Ours => bail!(
                    "{} is already being trained by this process ({existing}); wait for that run to stop",
                    run_root.display()
                ),
                Liveness::Running => bail!(
                    "{} is being trained by another Wick, {existing} — stop it first (or open the run read-only in \
                     the window to follow it); lock file {}",
                    run_root.display(),
                    path.display()
                ),
                Liveness::Unknown => bail!(
                    "{} is locked by {existing}, which this machine cannot check — if no Wick is training this run \
                     there any more, delete {} and try again",
                    run_root.display(),
                    path.display()
                ),
            }
        }
        bail!(
            "{}: could not take the run's lock ({}); another process keeps taking it",
            run_root.display(),
            path.display()
        )
    }

    /// Who holds it (this process).
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only our own lock is removed: never one a later process took over after us.
        if read_holder(&self.path).ok().flatten().as_ref() == Some(&self.holder) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove the run lock {}: {e}", self.path.display());
            }
        }
    }
}

/// The holder of the lock in `run_root`, if it is locked. An unreadable lock file is an error naming it.
pub fn lock_holder(run_root: &Path) -> Result<Option<LockHolder>> {
    read_holder(&run_root.join(LOCK_FILE))
}

fn read_holder(path: &Path) -> Result<Option<LockHolder>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read the run lock {}", path.display())),
    };
    serde_json::from_slice(&bytes).map(Some).with_context(|| {
        format!("the run lock {} is damaged — if no Wick is training this run, delete it", path.display())
    })
}

/// Creates the lock file whole (written beside it, then linked into place); false when a lock exists.
fn create_whole(path: &Path, holder: &LockHolder) -> Result<bool> {
    let staging = path.with_extension(format!("lock.{}.tmp", holder.pid));
    std::fs::write(&staging, serde_json::to_vec_pretty(holder)?)
        .with_context(|| format!("cannot write the run lock {}", staging.display()))?;
    let linked = match std::fs::hard_link(&staging, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            // A filesystem without hard links: exclusive creation, then the content.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(&serde_json::to_vec_pretty(holder)?)
                        .and_then(|()| file.sync_all())
                        .with_context(|| format!("cannot write the run lock {}", path.display()))?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e).with_context(|| format!("cannot create the run lock {}", path.display())),
            }
        }
    };
    let _ = std::fs::remove_file(&staging);
    linked
}

/// Moves a stale lock aside (one process wins the rename) and checks it was the one examined; a lock that
/// changed meanwhile is put back.
fn take_over_stale(path: &Path, stale: &LockHolder) -> Result<()> {
    let aside = path.with_extension(format!("lock.stale.{}", std::process::id()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot move the stale run lock {} aside", path.display())),
    }
    if read_holder(&aside).ok().flatten().as_ref() != Some(stale) {
        // Another process took it over between our read and the rename: give its lock back.
        let _ = std::fs::hard_link(&aside, path);
    }
    let _ = std::fs::remove_file(&aside);
    Ok(())
}

/// This machine's host name.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// A process's start time in clock ticks since boot (Linux), `None` when it does not run (a zombie, killed
/// but not yet reaped by its parent, counts as not running) or cannot be read.
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (the command) is in parentheses and may hold spaces: count fields after its closing one.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_the_first_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path(), "train").unwrap();
        assert_eq!(lock_holder(dir.path()).unwrap().as_ref(), Some(lock.holder()));
        let err = RunLock::acquire(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("this process"), "{err}");
        drop(lock);
        assert_eq!(lock_holder(dir.path()).unwrap(), None, "released");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no staging file left");
    }

    #[test]
    fn a_live_process_lock_is_respected_and_a_dead_or_reused_pid_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |holder: &LockHolder| std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_vec(holder).unwrap());
        // A live process: pid 1 (init), with its real start time.
        let live =
            LockHolder { pid: 1, process_start_ticks: process_start_ticks(1), ..LockHolder::this_process("train") };
        write(&live).unwrap();
        let err = RunLock::acquire(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("pid 1 on host") && err.contains("another Wick"), "{err}");
        // The same pid with another start time: a reused pid, the holder is gone.
        let reused = LockHolder { process_start_ticks: live.process_start_ticks.map(|t| t + 1), ..live.clone() };
        write(&reused).unwrap();
        assert_eq!(reused.liveness(), Liveness::Gone);
        drop(RunLock::acquire(dir.path(), "train").expect("a reused pid's lock is stale"));
        // A process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        write(&LockHolder { pid, process_start_ticks: None, ..LockHolder::this_process("train") }).unwrap();
        let lock = RunLock::acquire(dir.path(), "train").expect("a dead process's lock is stale");
        assert_eq!(lock.holder().pid, std::process::id());
        // Another host: cannot be checked, so it is respected.
        drop(lock);
        write(&LockHolder { host: "elsewhere".into(), ..LockHolder::this_process("train") }).unwrap();
        let err = RunLock::acquire(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("host elsewhere") && err.contains("delete"), "{err}");
        std::fs::write(dir.path().join(LOCK_FILE), b"{ torn").unwrap();
        let err = RunLock::acquire(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains(LOCK_FILE), "{err}");
    }
}
