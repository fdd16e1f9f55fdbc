//! TFRecord framing, the container of TensorBoard event files: each record is
//! `u64 length | u32 masked CRC-32C of the length bytes | data | u32 masked CRC-32C of the data`, all little
//! endian. [`FileTail`] reads a file being written incrementally from the offset it reached, waits at a
//! partial last record, skips a record whose data fails its CRC, and notices a file replaced by a copy.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Largest record accepted: TensorBoard's own records are far smaller (an image summary is a PNG). A length
/// above it is damage, not a record, and reading that file stops there.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;

/// The masking TensorFlow applies to a CRC stored next to the data it covers.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One record framed for a file.
pub fn frame_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// What went wrong with one record; the message names the file and the byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordProblem {
    /// The file.
    pub path: PathBuf,
    /// Where the record starts.
    pub offset: u64,
    /// What is wrong, in words.
    pub problem: String,
}

impl std::fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}: {}", self.path.display(), self.offset, self.problem)
    }
}

/// The records found in `bytes` (a file's contents from `base_offset` on): complete records, the problems
/// met, and how many bytes were consumed. A partial record at the end is not consumed (nor a problem); a
/// length that fails its CRC stops the scan (`damaged` is set: nothing after it can be framed).
#[derive(Debug, Default)]
pub struct Scan {
    /// Data of every complete record whose CRCs hold, with its offset.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Records skipped.
    pub problems: Vec<RecordProblem>,
    /// Bytes consumed from the start of the slice.
    pub consumed: usize,
    /// The framing is broken at `base_offset + consumed`: nothing more can be read from this file.
    pub damaged: bool,
}

/// Splits `bytes` into records.
pub fn scan_records(path: &Path, bytes: &[u8], base_offset: u64) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0usize;
    while bytes.len() - at >= 12 {
        let offset = base_offset + at as u64;
        let header = &bytes[at..at + 8];
        let stored_length_crc = u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if masked_crc32c(header) != stored_length_crc {
            scan.problems.push(RecordProblem {
                path: path.to_path_buf(),
                offset,
                problem: "the record length fails its CRC: the rest of the file cannot be read".to_string(),
            });
            scan.damaged = true;
            break;
        }
        let length = u64::from_le_bytes(header.try_into().unwrap_or([0; 8]));
        if length > MAX_RECORD_BYTES {
            scan.problems.push(RecordProblem {
                path: path.to_path_buf(),
                offset,
                problem: format!("a record of {length} bytes is over the {MAX_RECORD_BYTES}-byte limit"),
            });
            scan.damaged = true;
            break;
        }
        let total = 12 + length as usize + 4;
        if bytes.len() - at < total {
            break; // a partial record: the writer has not finished it
        }
        let data = &bytes[at + 12..at + 12 + length as usize];
        let crc_at = at + 12 + length as usize;
        let stored = u32::from_le_bytes([bytes[crc_at], bytes[crc_at + 1], bytes[crc_at + 2], bytes[crc_at + 3]]);
        if masked_crc32c(data) == stored {
            scan.records.push((offset, data.to_vec()));
        } else {
            scan.problems.push(RecordProblem {
                path: path.to_path_buf(),
                offset,
                problem: format!("a record of {length} bytes fails its data CRC: skipped"),
            });
        }
        at += total;
    }
    scan.consumed = at;
    scan
}

/// What identifies the file at a path, to notice it being replaced by another (rsync writes a copy and
/// renames it over the old one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    #[cfg(unix)]
    inode: u64,
    #[cfg(unix)]
    device: u64,
}

fn identity(meta: &std::fs::Metadata) -> Identity {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Identity { inode: meta.ino(), device: meta.dev() }
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Identity {}
    }
}

/// New records of one file since the last poll.
#[derive(Debug, Default)]
pub struct Poll {
    /// The file is another one than before (replaced or truncated): everything read from it before is void,
    /// and `records` starts from its beginning.
    pub restarted: bool,
    /// New records, in file order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Problems met in the new bytes.
    pub problems: Vec<RecordProblem>,
}

/// A file of records read as it grows: each [`FileTail::poll`] reads only the bytes after the last complete
/// record.
#[derive(Debug)]
pub struct FileTail {
    path: PathBuf,
    offset: u64,
    identity: Option<Identity>,
    damaged: bool,
}

impl FileTail {
    /// A tail of `path`, at its start.
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_path_buf(), offset: 0, identity: None, damaged: false }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes read so far (the start of the first record not yet complete).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads what was appended since the last poll.
    pub fn poll(&mut self) -> std::io::Result<Poll> {
        let mut file = std::fs::File::open(&self.path)?;
        let meta = file.metadata()?;
        let mut poll = Poll::default();
        let now = identity(&meta);
        if self.identity.is_some_and(|before| before != now) || meta.len() < self.offset {
            poll.restarted = true;
            self.offset = 0;
            self.damaged = false;
        }
        self.identity = Some(now);
        if self.damaged || meta.len() == self.offset {
            return Ok(poll);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::with_capacity((meta.len() - self.offset) as usize);
        file.take(meta.len() - self.offset).read_to_end(&mut bytes)?;
        let scan = scan_records(&self.path, &bytes, self.offset);
        self.offset += scan.consumed as u64;
        self.damaged = scan.damaged;
        poll.records = scan.records;
        poll.problems = scan.problems;
        Ok(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_matches_tensorflows_test_vector() {
        assert_eq!(masked_crc32c(b"\x1a\x11CRC test, one two"), 0x5794_d08a);
    }

    #[test]
    fn framed_records_scan_back_and_a_partial_tail_is_left_for_later() {
        let mut bytes = frame_record(b"first");
        bytes.extend(frame_record(b"second"));
        let whole = bytes.len();
        bytes.extend(&frame_record(b"third")[..7]);
        let scan = scan_records(Path::new("f"), &bytes, 0);
        assert_eq!(scan.records.iter().map(|(_, d)| d.as_slice()).collect::<Vec<_>>(), [&b"first"[..], b"second"]);
        assert_eq!(scan.consumed, whole);
        assert!(scan.problems.is_empty() && !scan.damaged);
    }

    #[test]
    fn a_record_with_a_bad_data_crc_is_skipped_and_named() {
        let mut bytes = frame_record(b"first");
        let second_at = bytes.len();
        let mut damaged = frame_record(b"second");
        damaged[14] ^= 0xff;
        bytes.extend(damaged);
        bytes.extend(frame_record(b"third"));
        let scan = scan_records(Path::new("events"), &bytes, 100);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(scan.problems[0].offset, 100 + second_at as u64);
        assert!(scan.problems[0].to_string().contains("events at byte"), "{}", scan.problems[0]);
    }

    #[test]
    fn a_length_that_fails_its_crc_stops_the_file() {
        let mut bytes = frame_record(b"first");
        let mut damaged = frame_record(b"second");
        damaged[0] ^= 0x01;
        bytes.extend(damaged);
        let scan = scan_records(Path::new("f"), &bytes, 0);
        assert_eq!(scan.records.len(), 1);
        assert!(scan.damaged);
    }
}
