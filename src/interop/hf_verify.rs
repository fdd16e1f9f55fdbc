//! `wick verify` on a Hugging Face Trainer checkpoint (`checkpoint-N/`): every `*.safetensors` file's header
//! parses and its tensors' offsets tile the file exactly; a sharded model's `*.index.json` names only shards
//! that exist and every tensor once; float tensors hold no NaN / Inf; `trainer_state.json` parses; and
//! whether the checkpoint can be resumed is said. Pickle files (`*.bin`, `*.pt`, `*.pth`) are never
//! unpickled: only their presence and size are reported.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::Deserialize;

/// The most header bytes a safetensors file may declare (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Bytes read at a time while scanning tensors.
const SCAN_CHUNK_BYTES: usize = 8 << 20;
/// Files a checkpoint needs to be resumed with `resume_from_checkpoint` (besides the model).
const RESUME_FILES: [&str; 2] = ["optimizer.pt", "scheduler.pt"];

/// What verifying one checkpoint found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HfCheckpointCheck {
    /// The directory.
    pub dir: PathBuf,
    /// What is wrong, each naming its file (and tensor): the checkpoint is bad when any.
    pub problems: Vec<String>,
    /// What is there and fine: safetensors files with their tensor counts, pickles with their sizes.
    pub notes: Vec<String>,
    /// Tensors checked in all safetensors files.
    pub tensors: usize,
    /// Files missing for a resume (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`); empty when it can be
    /// resumed.
    pub missing_for_resume: Vec<String>,
}

impl HfCheckpointCheck {
    /// Whether nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line on resuming.
    pub fn resume_line(&self) -> String {
        if self.missing_for_resume.is_empty() {
            "can be resumed (optimizer, scheduler and RNG states present)".to_string()
        } else {
            format!("cannot be resumed exactly: no {}", self.missing_for_resume.join(", "))
        }
    }
}

#[derive(Deserialize)]
struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// A safetensors file's header: `__metadata__` aside, tensors by name.
fn read_header(
    file: &mut std::fs::File,
    path: &Path,
    file_len: u64,
) -> Result<(u64, Vec<(String, TensorEntry)>), String> {
    let name = path.display();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| format!("{name}: shorter than a safetensors header ({file_len} bytes)"))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES || header_len > file_len.saturating_sub(8) {
        return Err(format!("{name}: its header length ({header_len} bytes) does not fit the file ({file_len} bytes)"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| format!("{name}: cannot read its header: {e}"))?;
    let fields: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("{name}: its header is not valid JSON ({e})"))?;
    let mut tensors = Vec::new();
    for (tensor, value) in fields {
        if tensor == "__metadata__" {
            continue;
        }
        let entry: TensorEntry = serde_json::from_value(value)
            .map_err(|e| format!("{name}: tensor {tensor}: its header entry is not a safetensors entry ({e})"))?;
        tensors.push((tensor, entry));
    }
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    Ok((header_len, tensors))
}

/// Counts of non-finite values in one float tensor's bytes.
#[derive(Default)]
struct NonFinite {
    nan: u64,
    inf: u64,
}

impl NonFinite {
    fn add(&mut self, is_nan: bool, is_inf: bool) {
        self.nan += u64::from(is_nan);
        self.inf += u64::from(is_inf);
    }

    /// Scans whole elements of `bytes` of `dtype` (little-endian).
    fn scan(&mut self, dtype: Dtype, bytes: &[u8]) {
        match dtype {
            Dtype::F32 => {
                for b in bytes.chunks_exact(4) {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.add(v.is_nan(), v.is_infinite());
                }
            }
            Dtype::F64 => {
                for b in bytes.chunks_exact(8) {
                    let v = f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    self.add(v.is_nan(), v.is_infinite());
                }
            }
            // Half and bfloat16: all exponent bits set means Inf (zero mantissa) or NaN.
            Dtype::F16 => {
                for b in bytes.chunks_exact(2) {
                    let bits = u16::from_le_bytes([b[0], b[1]]);
                    let special = bits & 0x7c00 == 0x7c00;
                    self.add(special && bits & 0x03ff != 0, special && bits & 0x03ff == 0);
                }
            }
            Dtype::BF16 => {
                for b in bytes.chunks_exact(2) {
                    let bits = u16::from_le_bytes([b[0], b[1]]);
                    let special = bits & 0x7f80 == 0x7f80;
                    self.add(special && bits & 0x007f != 0, special && bits & 0x007f == 0);
                }
            }
            _ => {}
        }
    }
}

/// The element size of the float dtypes scanned for NaN / Inf.
fn scanned_element_bytes(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F16 | Dtype::BF16 => Some(2),
        Dtype::F32 => Some(4),
        Dtype::F64 => Some(8),
        _ => None,
    }
}

/// Checks one safetensors file; returns its tensor names (for the index check).
fn check_safetensors(path: &Path, check: &mut HfCheckpointCheck) -> Vec<String> {
    let name = path.display().to_string();
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => {
            check.problems.push(format!("{name}: cannot open it ({e})"));
            return Vec::new();
        }
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let (header_len, tensors) = match read_header(&mut file, path, file_len) {
        Ok(header) => header,
        Err(problem) => {
            check.problems.push(problem);
            return Vec::new();
        }
    };
    let data_len = file_len - 8 - header_len;
    // The tensors must tile the data section from 0 with no gap or overlap, each its shape's size.
    let mut expected_start = 0u64;
    for (tensor, entry) in &tensors {
        let (start, end) = entry.data_offsets;
        if start != expected_start || end < start {
            check.problems.push(format!(
                "{name}: tensor {tensor} is at bytes {start}..{end} of the data, expected to start at {expected_start}"
            ));
            return Vec::new();
        }
        let elements = entry.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let bits = elements.and_then(|n| n.checked_mul(entry.dtype.bitsize() as u64));
        if bits.map(|b| b.div_ceil(8)) != Some(end - start) {
            check.problems.push(format!(
                "{name}: tensor {tensor} ({:?} {:?}) takes {} bytes, not what its shape needs",
                entry.dtype,
                entry.shape,
                end - start
            ));
            return Vec::new();
        }
        expected_start = end;
    }
    if expected_start != data_len {
        let what = if expected_start > data_len { "truncated" } else { "longer than its header says" };
        check.problems.push(format!(
            "{name}: the file is {what}: its header says the tensors end at data byte {expected_start}, the data has \
             {data_len} bytes"
        ));
        return tensors.into_iter().map(|(t, _)| t).collect();
    }
    // Scan the float tensors in order, reading the data section once.
    let mut buffer = vec![0u8; SCAN_CHUNK_BYTES];
    for (tensor, entry) in &tensors {
        let (start, end) = entry.data_offsets;
        let Some(element) = scanned_element_bytes(entry.dtype) else {
            if let Err(e) = std::io::copy(&mut (&mut file).take(end - start), &mut std::io::sink()) {
                check.problems.push(format!("{name}: cannot read tensor {tensor}: {e}"));
                return Vec::new();
            }
            continue;
        };
        let mut counts = NonFinite::default();
        let mut left = (end - start) as usize;
        while left > 0 {
            let want = left.min(SCAN_CHUNK_BYTES / element * element);
            if let Err(e) = file.read_exact(&mut buffer[..want]) {
                check.problems.push(format!("{name}: cannot read tensor {tensor}: {e}"));
                return Vec::new();
            }
            counts.scan(entry.dtype, &buffer[..want]);
            left -= want;
        }
        if counts.nan > 0 || counts.inf > 0 {
            check
                .problems
                .push(format!("{name}: tensor {tensor} holds {} NaN and {} infinite value(s)", counts.nan, counts.inf));
        }
    }
    check.tensors += tensors.len();
    check.notes.push(format!(
        "{} ({} tensors, {})",
        file_name(path),
        tensors.len(),
        crate::monitor::format_bytes(file_len)
    ));
    tensors.into_iter().map(|(t, _)| t).collect()
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Verifies a Trainer checkpoint directory (see the module's doc).
pub fn verify_hf_checkpoint(dir: &Path) -> HfCheckpointCheck {
    let mut check = HfCheckpointCheck { dir: dir.to_path_buf(), ..Default::default() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    if files.is_empty() {
        check.problems.push(format!("{}: empty, or not a folder", dir.display()));
        return check;
    }
    let mut shard_tensors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut indexes = Vec::new();
    for path in files.iter().filter(|p| p.is_file()) {
        let name = file_name(path);
        if name.ends_with(".safetensors") {
            let tensors = check_safetensors(path, &mut check);
            shard_tensors.insert(name, tensors);
        } else if name.ends_with(".safetensors.index.json") {
            indexes.push(path.clone());
        } else if [".bin", ".pt", ".pth"].iter().any(|ext| name.ends_with(ext)) {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            check.notes.push(format!("{name} ({}, pickle: not opened)", crate::monitor::format_bytes(size)));
        }
    }
    for index in &indexes {
        check_index(index, &shard_tensors, &mut check);
    }
    if shard_tensors.is_empty() && !files.iter().any(|p| file_name(p).ends_with(".bin")) {
        check.problems.push(format!("{}: no model weights (*.safetensors or *.bin)", dir.display()));
    }
    let state = dir.join("trainer_state.json");
    match std::fs::read_to_string(&state) {
        Ok(text) => {
            if let Err(e) = super::hf::TrainerState::parse(&text) {
                check.problems.push(format!("{}: {e:#}", state.display()));
            }
        }
        Err(_) => check.missing_for_resume.push("trainer_state.json".to_string()),
    }
    let deepspeed = dir.join("latest").is_file();
    for needed in RESUME_FILES {
        if !deepspeed && !dir.join(needed).is_file() {
            check.missing_for_resume.push(needed.to_string());
        }
    }
    if !files.iter().any(|p| file_name(p).starts_with("rng_state") && file_name(p).ends_with(".pth")) {
        check.missing_for_resume.push("rng_state*.pth".to_string());
    }
    check
}

/// A sharded model's index: every shard it names exists, and every tensor is in exactly one shard, the one
/// the index names.
fn check_index(index: &Path, shards: &BTreeMap<String, Vec<String>>, check: &mut HfCheckpointCheck) {
    let name = index.display();
    let parsed: Result<ShardIndex, String> = std::fs::read(index)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
    let map = match parsed {
        Ok(parsed) => parsed.weight_map,
        Err(e) => {
            check.problems.push(format!("{name}: not a shard index ({e})"));
            return;
        }
    };
    let named: BTreeSet<&String> = map.values().collect();
    for shard in &named {
        if !shards.contains_key(shard.as_str()) {
            check.problems.push(format!("{name} names shard {shard}, which does not exist"));
        }
    }
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (shard, tensors) in shards.iter().filter(|(s, _)| named.contains(s)) {
        for tensor in tensors {
            holders.entry(tensor).or_default().push(shard);
        }
    }
    for (tensor, shard) in &map {
        match holders.get(tensor.as_str()).map(Vec::as_slice) {
            Some([one]) if one == shard => {}
            Some([one]) => check.problems.push(format!("{name}: tensor {tensor} is in {one}, the index says {shard}")),
            Some(many) if many.len() > 1 => check.problems.push(format!(
                "{name}: tensor {tensor} is in {} shards ({})",
                many.len(),
                many.join(", ")
            )),
            _ if shards.contains_key(shard) => {
                check.problems.push(format!("{name}: tensor {tensor} is not in {shard}, where the index says it is"))
            }
            _ => {}
        }
    }
    for (tensor, held) in &holders {
        if !map.contains_key(*tensor) {
            check.problems.push(format!("{name} does not name tensor {tensor} (in {})", held.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_and_bfloat16_specials_are_counted() {
        let mut counts = NonFinite::default();
        let halves: Vec<u8> = [0x3c00u16, 0x7c00, 0x7e00, 0xfc00].iter().flat_map(|b| b.to_le_bytes()).collect();
        counts.scan(Dtype::F16, &halves);
        assert_eq!((counts.nan, counts.inf), (1, 2));
        let mut counts = NonFinite::default();
        let brains: Vec<u8> = [0x3f80u16, 0x7f80, 0x7fc0].iter().flat_map(|b| b.to_le_bytes()).collect();
        counts.scan(Dtype::BF16, &brains);
        assert_eq!((counts.nan, counts.inf), (1, 1));
    }
}
