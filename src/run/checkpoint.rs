//! Checkpoint directories: written as `step-N.tmp/`, sealed by manifest.json (sizes and sha256 of every
//! file, written last) and renamed to `step-N/`; verified before use; pruned by `keep_last`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic::sync_dir;
use super::disk::{write_error, write_synced};

/// Name of the file that seals a checkpoint.
pub const MANIFEST: &str = "manifest.json";

/// Size and hash of one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}

/// manifest.json: what a complete checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of the checkpoint layout.
    pub format: u32,
    /// Global step of the checkpoint.
    pub step: u64,
    /// Every file but the manifest itself.
    pub files: BTreeMap<String, FileEntry>,
}

/// Directory name of the checkpoint at `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Parses `step-00000400` into 400.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// sha256 of bytes as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds one checkpoint directory; nothing is visible under the final name until [`finish`](Self::finish).
pub struct CheckpointWriter {
    step: u64,
    tmp_dir: PathBuf,
    final_dir: PathBuf,
    files: BTreeMap<String, FileEntry>,
    /// Renamed into place; until then, dropping the writer removes its temporary folder.
    sealed: bool,
}

impl CheckpointWriter {
    /// Starts `checkpoints_dir/step-N.tmp/`, removing a stale one left by a crash.
    pub fn begin(checkpoints_dir: &Path, step: u64) -> Result<Self> {
        let name = checkpoint_name(step);
        let tmp_dir = checkpoints_dir.join(format!("{name}.tmp"));
        let final_dir = checkpoints_dir.join(&name);
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).with_context(|| format!("cannot remove stale {}", tmp_dir.display()))?;
        }
        // Never `create_dir_all`: a run folder deleted while it trains must fail the save (and be said),
        // not be quietly recreated holding one checkpoint.
        if !checkpoints_dir.is_dir() {
            std::fs::create_dir(checkpoints_dir).map_err(|e| write_error(e, checkpoints_dir, "creating"))?;
        }
        std::fs::create_dir(&tmp_dir).map_err(|e| write_error(e, &tmp_dir, "creating"))?;
        Ok(Self { step, tmp_dir, final_dir, files: BTreeMap::new(), sealed: false })
    }

    /// Writes one file of the checkpoint and records its size and hash.
    pub fn write_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        write_synced(&self.tmp_dir.join(name), bytes)?;
        self.files.insert(name.to_string(), FileEntry { bytes: bytes.len() as u64, sha256: sha256_hex(bytes) });
        Ok(())
    }

    /// Seals the checkpoint: writes manifest.json last, then renames the directory into place.
    /// Returns the final directory and the total size of its files.
    pub fn finish(mut self) -> Result<(PathBuf, u64)> {
        let manifest = Manifest { format: 1, step: self.step, files: std::mem::take(&mut self.files) };
        let bytes: u64 = manifest.files.values().map(|f| f.bytes).sum();
        let text = serde_json::to_vec_pretty(&manifest)?;
        write_synced(&self.tmp_dir.join(MANIFEST), &text)?;
        sync_dir(&self.tmp_dir);
        if self.final_dir.exists() {
            // Same step saved again (e.g. stop right after a scheduled save): move the old one aside first so
            // a crash leaves at least one of the two complete.
            let old = self.final_dir.with_extension("old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&self.final_dir, &old)
                .with_context(|| format!("cannot move aside {}", self.final_dir.display()))?;
            std::fs::rename(&self.tmp_dir, &self.final_dir)
                .with_context(|| format!("cannot rename {}", self.tmp_dir.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp_dir, &self.final_dir)
                .with_context(|| format!("cannot rename {}", self.tmp_dir.display()))?;
        }
        if let Some(parent) = self.final_dir.parent() {
            sync_dir(parent);
        }
        self.sealed = true;
        Ok((self.final_dir.clone(), bytes))
    }
}

impl Drop for CheckpointWriter {
    /// A checkpoint that failed half-way (a full disk) is removed: its files only take the space the disk
    /// lacks, and no `step-N.tmp/` is left to puzzle over. The newest sealed checkpoint is untouched.
    fn drop(&mut self) {
        if !self.sealed && self.tmp_dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.tmp_dir) {
                tracing::warn!("cannot remove the unfinished {}: {e}", self.tmp_dir.display());
            }
        }
    }
}

/// One problem found by [`verify_checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProblem {
    /// The file concerned.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

/// Reads a checkpoint's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a valid manifest", path.display()))
}

/// Checks every file of a checkpoint against its manifest (existence, size, sha256). Empty = intact.
pub fn verify_checkpoint(dir: &Path) -> Vec<VerifyProblem> {
    let manifest = match read_manifest(dir) {
        Ok(manifest) => manifest,
        Err(e) => {
            return vec![VerifyProblem {
                file: dir.join(MANIFEST),
                problem: format!("{e:#} — the checkpoint is incomplete or damaged"),
            }]
        }
    };
    let mut problems = Vec::new();
    for (name, entry) in &manifest.files {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Err(e) => problems.push(VerifyProblem { file: path, problem: format!("cannot read: {e}") }),
            Ok(bytes) if bytes.len() as u64 != entry.bytes => problems.push(VerifyProblem {
                file: path,
                problem: format!("size {} bytes, manifest says {}", bytes.len(), entry.bytes),
            }),
            Ok(bytes) => {
                let actual = sha256_hex(&bytes);
                if actual != entry.sha256 {
                    problems.push(VerifyProblem {
                        file: path,
                        problem: format!("sha256 {actual} does not match the manifest's {}", entry.sha256),
                    });
                }
            }
        }
    }
    problems
}

/// A checkpoint directory found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// Global step.
    pub step: u64,
    /// Directory name, e.g. `step-00000400`.
    pub name: String,
    /// Full path.
    pub dir: PathBuf,
    /// Whether a manifest seals it (not verified: see [`verify_checkpoint`]).
    pub sealed: bool,
}

/// Every checkpoint directory (sealed or not; `.tmp` directories excluded), sorted by step.
pub fn list_checkpoints(checkpoints_dir: &Path) -> Result<Vec<CheckpointEntry>> {
    let mut entries = Vec::new();
    let read = match std::fs::read_dir(checkpoints_dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", checkpoints_dir.display())),
    };
    for item in read {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(step) = parse_checkpoint_name(&name) else { continue };
        if !item.file_type()?.is_dir() {
            continue;
        }
        let dir = item.path();
        let sealed = dir.join(MANIFEST).is_file();
        entries.push(CheckpointEntry { step, name, dir, sealed });
    }
    entries.sort_by_key(|e| e.step);
    Ok(entries)
}

/// The newest checkpoint that is sealed and passes verification; damaged ones are skipped with a warning.
pub fn newest_intact_checkpoint(checkpoints_dir: &Path) -> Result<Option<CheckpointEntry>> {
    for entry in list_checkpoints(checkpoints_dir)?.into_iter().rev() {
        if !entry.sealed {
            tracing::warn!("skipping {}: no manifest (incomplete checkpoint)", entry.dir.display());
            continue;
        }
        let problems = verify_checkpoint(&entry.dir);
        if problems.is_empty() {
            return Ok(Some(entry));
        }
        for problem in problems {
            tracing::warn!("skipping damaged checkpoint: {problem}");
        }
    }
    Ok(None)
}

/// Which sealed checkpoints to delete so that the newest `keep_last` remain, never touching `protected`.
pub fn checkpoints_to_prune<'a>(
    entries: &'a [CheckpointEntry],
    keep_last: usize,
    protected: &[String],
) -> Vec<&'a CheckpointEntry> {
    let sealed: Vec<&CheckpointEntry> = entries.iter().filter(|e| e.sealed).collect();
    let excess = sealed.len().saturating_sub(keep_last);
    sealed.into_iter().take(excess).filter(|e| !protected.contains(&e.name)).collect()
}

/// Reads a file that a manifest lists, checking size and hash first so damaged bytes are never used.
pub fn read_verified(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let Some(entry) = manifest.files.get(name) else {
        bail!("{} is not listed in {}", name, dir.join(MANIFEST).display());
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 != entry.bytes || sha256_hex(&bytes) != entry.sha256 {
        bail!("{} is damaged: its size or sha256 differs from the manifest", path.display());
    }
    Ok(bytes)
}
