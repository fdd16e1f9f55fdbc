//! TensorBoard event files (`events.out.tfevents.*`): the `Event` / `Summary` protobuf messages (the field
//! numbers of tensorflow's event.proto, summary.proto and tensor.proto, decoded by prost), a log directory
//! read as one run as its files grow, and a writer whose files TensorBoard reads.
//!
//! Scalars come as `simple_value` (what `SummaryWriter.add_scalar` writes) or as tensors (`float_val`,
//! `double_val`, or `tensor_content` of a float / double / half / int tensor); images as `Value.image` (PNG)
//! or the `images` plugin's string tensor; text as the `text` plugin's string tensor. Every point is kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use prost::Message;

use super::tfrecord::{frame_record, FileTail, RecordProblem};
use super::{ScalarPoint, Series};

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `brain.Event:2` in a file's first record.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// The values logged at this step.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    /// A session's start or end: a `START` at step `s` says a resumed writer supersedes the points of
    /// earlier files at steps `s` and later (as `SummaryWriter(purge_step=s)` writes).
    #[prost(message, optional, tag = "7")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionLog {
    /// `SessionLog.SessionStatus`: 1 is `START`.
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// The checkpoint a session started from, if any.
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    /// A message.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.SessionStatus.START`.
const SESSION_START: i32 = 1;

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// The values, each with its tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    /// The tag (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// An old-style scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// An old-style image.
    #[prost(message, optional, tag = "4")]
    pub image: Option<SummaryImage>,
    /// A new-style value: a tensor, read as its plugin says.
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    /// Which plugin wrote the tensor.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryImage {
    /// Pixels high.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Pixels wide.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The encoded image (PNG).
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    /// `scalars`, `images`, `text`, ...
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own metadata.
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto` (the fields a summary uses).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `tensorflow.DataType`.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Raw little-endian values.
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    /// Half / bfloat16 values, one per int.
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
    /// Float values.
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    /// Double values.
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    /// Int32 values.
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    /// String values (text; an image plugin's width, height and PNGs).
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
    /// Int64 values.
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
}

/// `tensorflow.DataType` values a scalar may have.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const DOUBLE: i32 = 2;
    pub const INT32: i32 = 3;
    pub const BFLOAT16: i32 = 14;
    pub const INT64: i32 = 9;
    pub const HALF: i32 = 19;
    pub const STRING: i32 = 7;
}

impl TensorProto {
    /// The tensor's single value as a number, whichever way it was stored.
    pub fn scalar(&self) -> Option<f64> {
        if let Some(v) = self.float_val.first() {
            return Some(f64::from(*v));
        }
        if let Some(v) = self.double_val.first() {
            return Some(*v);
        }
        let content = &self.tensor_content;
        let bytes = |n: usize| content.get(..n);
        match self.dtype {
            dtype::FLOAT => bytes(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            dtype::DOUBLE => bytes(8).and_then(|b| b.try_into().ok()).map(f64::from_le_bytes),
            dtype::HALF => bytes(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .or_else(|| self.half_val.first().map(|v| *v as u16))
                .map(half_to_f64),
            dtype::BFLOAT16 => bytes(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .or_else(|| self.half_val.first().map(|v| *v as u16))
                .map(|bits| f64::from(f32::from_bits(u32::from(bits) << 16))),
            dtype::INT32 => bytes(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .or_else(|| self.int_val.first().copied())
                .map(f64::from),
            dtype::INT64 => bytes(8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_le_bytes)
                .or_else(|| self.int64_val.first().copied())
                .map(|v| v as f64),
            _ => None,
        }
    }
}

/// An IEEE half-precision value.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

/// An image logged at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedImage {
    /// The global step.
    pub step: i64,
    /// Seconds since the epoch.
    pub wall_time: f64,
    /// The encoded image (PNG, as TensorBoard's writers store it).
    pub png: Vec<u8>,
}

/// Text logged at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedText {
    /// The global step.
    pub step: i64,
    /// Seconds since the epoch.
    pub wall_time: f64,
    /// The text (Markdown, as TensorBoard's text plugin shows it).
    pub text: String,
}

/// Everything read from a TensorBoard log directory so far.
#[derive(Debug, Default, Clone)]
pub struct TensorBoardData {
    /// Scalars by tag, every point, in step order (points of one step in the order they were written).
    pub scalars: BTreeMap<String, Series>,
    /// Images by tag.
    pub images: BTreeMap<String, Vec<LoggedImage>>,
    /// Text by tag.
    pub text: BTreeMap<String, Vec<LoggedText>>,
    /// Records that could not be read: named, skipped.
    pub problems: Vec<String>,
    /// Steps at which a writer said it restarted (`SessionLog START`): in a merged run, the points of earlier
    /// files at these steps and later are superseded and dropped, as TensorBoard drops them.
    pub restarts: Vec<i64>,
    /// Wall time of the first record (the file's creation): files are merged in this order.
    pub started_wall_time: Option<f64>,
}

/// The event files of one directory (not its subdirectories), in name order (their names start with the
/// creation time).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_event_file(p))
        .collect();
    files.sort();
    files
}

/// Whether `path` is named as TensorBoard names event files.
pub fn is_event_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("events.out.tfevents."))
}

/// A TensorBoard log directory read as one run as its files grow: each [`LogDirReader::poll`] reads only the
/// bytes appended since the last one, picks up new files, and re-reads a file replaced by a copy.
#[derive(Debug)]
pub struct LogDirReader {
    dir: PathBuf,
    tails: Vec<FileTail>,
    /// What each file contributed, kept apart so one file can be re-read alone.
    per_file: Vec<TensorBoardData>,
    merged: TensorBoardData,
}

impl LogDirReader {
    /// A reader of `dir`, nothing read yet.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), tails: Vec::new(), per_file: Vec::new(), merged: TensorBoardData::default() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What has been read.
    pub fn data(&self) -> &TensorBoardData {
        &self.merged
    }

    /// Reads new records; returns whether anything changed.
    pub fn poll(&mut self) -> bool {
        for path in event_files(&self.dir) {
            if !self.tails.iter().any(|t| t.path() == path) {
                self.tails.push(FileTail::new(&path));
                self.per_file.push(TensorBoardData::default());
            }
        }
        let mut changed = false;
        for (tail, data) in self.tails.iter_mut().zip(&mut self.per_file) {
            let poll = match tail.poll() {
                Ok(poll) => poll,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let problem = format!("{}: {e}", tail.path().display());
                    if !data.problems.contains(&problem) {
                        data.problems.push(problem);
                        changed = true;
                    }
                    continue;
                }
            };
            if poll.restarted {
                *data = TensorBoardData::default();
                changed = true;
            }
            changed |= !poll.records.is_empty() || !poll.problems.is_empty();
            data.problems.extend(poll.problems.iter().map(RecordProblem::to_string));
            for (offset, record) in poll.records {
                match Event::decode(record.as_slice()) {
                    Ok(event) => add_event(data, &event),
                    Err(e) => data.problems.push(format!(
                        "{} at byte {offset}: not a TensorBoard event ({e}): skipped",
                        tail.path().display()
                    )),
                }
            }
        }
        if changed {
            self.merged = merge(&self.per_file);
        }
        changed
    }
}

/// Reads a log directory once.
pub fn read_log_dir(dir: &Path) -> TensorBoardData {
    let mut reader = LogDirReader::new(dir);
    reader.poll();
    reader.merged
}

/// The files' data as one run, files in the order they were started: a file that begins with a restart at
/// step `s` first drops the points of the files before it at `s` and later; then each tag's points are put
/// in step order (a stable sort, so a step logged twice keeps its order).
fn merge(files: &[TensorBoardData]) -> TensorBoardData {
    let mut order: Vec<&TensorBoardData> = files.iter().collect();
    order.sort_by(|a, b| a.started_wall_time.unwrap_or(f64::MAX).total_cmp(&b.started_wall_time.unwrap_or(f64::MAX)));
    let mut out = TensorBoardData::default();
    for file in order {
        if let Some(&from) = file.restarts.iter().min() {
            for series in out.scalars.values_mut() {
                series.points.retain(|p| p.step < from);
            }
            for images in out.images.values_mut() {
                images.retain(|i| i.step < from);
            }
            for text in out.text.values_mut() {
                text.retain(|t| t.step < from);
            }
        }
        for (tag, series) in &file.scalars {
            out.scalars.entry(tag.clone()).or_default().points.extend_from_slice(&series.points);
        }
        for (tag, images) in &file.images {
            out.images.entry(tag.clone()).or_default().extend_from_slice(images);
        }
        for (tag, text) in &file.text {
            out.text.entry(tag.clone()).or_default().extend_from_slice(text);
        }
        out.problems.extend_from_slice(&file.problems);
    }
    out.scalars.retain(|_, s| !s.points.is_empty());
    for series in out.scalars.values_mut() {
        series.points.sort_by_key(|p| p.step);
    }
    for images in out.images.values_mut() {
        images.sort_by_key(|i| i.step);
    }
    for text in out.text.values_mut() {
        text.sort_by_key(|t| t.step);
    }
    out
}

fn plugin(value: &SummaryValue) -> &str {
    value.metadata.as_ref().and_then(|m| m.plugin_data.as_ref()).map_or("", |p| p.plugin_name.as_str())
}

/// Adds one event's values to `data`.
fn add_event(data: &mut TensorBoardData, event: &Event) {
    data.started_wall_time.get_or_insert(event.wall_time);
    if event.session_log.as_ref().is_some_and(|log| log.status == SESSION_START) {
        data.restarts.push(event.step);
    }
    let Some(summary) = &event.summary else {
        return;
    };
    let wall_time = event.wall_time;
    for value in &summary.value {
        if let Some(v) = value.simple_value {
            let point = ScalarPoint { step: event.step, wall_time: Some(wall_time), value: f64::from(v) };
            data.scalars.entry(value.tag.clone()).or_default().points.push(point);
        } else if let Some(image) = &value.image {
            let logged = LoggedImage { step: event.step, wall_time, png: image.encoded_image_string.clone() };
            data.images.entry(value.tag.clone()).or_default().push(logged);
        } else if let Some(tensor) = &value.tensor {
            match plugin(value) {
                "images" => {
                    // [width, height, image, image, ...] as strings.
                    for png in tensor.string_val.iter().skip(2) {
                        let logged = LoggedImage { step: event.step, wall_time, png: png.clone() };
                        data.images.entry(value.tag.clone()).or_default().push(logged);
                    }
                }
                "text" => {
                    let text = tensor.string_val.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>();
                    let logged = LoggedText { step: event.step, wall_time, text: text.join("\n") };
                    data.text.entry(value.tag.clone()).or_default().push(logged);
                }
                _ => {
                    if let Some(v) = tensor.scalar() {
                        let point = ScalarPoint { step: event.step, wall_time: Some(wall_time), value: v };
                        data.scalars.entry(value.tag.clone()).or_default().points.push(point);
                    }
                }
            }
        }
    }
}

/// Writes an event file TensorBoard reads: scalars as `simple_value` (as `SummaryWriter.add_scalar` does)
/// and images as PNG `Value.image`. Each call appends whole records and flushes them, so a reader never
/// sees more than one partial record.
#[derive(Debug)]
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.<host>.<pid>.<n>.<suffix>` (`n` counts the files this
    /// process made, so two in one second differ) and writes its version record.
    pub fn create(dir: &Path, suffix: &str) -> Result<Self> {
        static FILES_MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = FILES_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "wick".to_string());
        let name = format!("events.out.tfevents.{:010}.{host}.{}.{n}.{suffix}", now.as_secs(), std::process::id());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = Self { file, path };
        let version = Event {
            wall_time: now.as_secs_f64(),
            step: 0,
            file_version: Some("brain.Event:2".to_string()),
            ..Default::default()
        };
        writer.write_events(&[version])?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `events` as records, in one write.
    pub fn write_events(&mut self, events: &[Event]) -> Result<()> {
        let mut bytes = Vec::new();
        for event in events {
            bytes.extend(frame_record(&event.encode_to_vec()));
        }
        self.file.write_all(&bytes).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Says that this file continues a run from `step`: readers drop the points earlier files hold at `step`
    /// and later (a resumed run logs them again). Write it first, as `SummaryWriter(purge_step=step)` does.
    pub fn write_restart(&mut self, step: i64, wall_time: f64) -> Result<()> {
        let log = SessionLog { status: SESSION_START, ..Default::default() };
        self.write_events(&[Event { wall_time, step, session_log: Some(log), ..Default::default() }])
    }

    /// Appends text (Markdown, as the `text` plugin shows it) of one step.
    pub fn write_text(&mut self, step: i64, wall_time: f64, tag: &str, text: &str) -> Result<()> {
        let metadata =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".to_string(), content: Vec::new() }) };
        let tensor =
            TensorProto { dtype: dtype::STRING, string_val: vec![text.as_bytes().to_vec()], ..Default::default() };
        let value =
            SummaryValue { tag: tag.to_string(), tensor: Some(tensor), metadata: Some(metadata), ..Default::default() };
        self.write_events(&[scalar_event(step, wall_time, vec![value])])
    }

    /// Appends scalars of one step.
    pub fn write_scalars(&mut self, step: i64, wall_time: f64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue { tag: tag.clone(), simple_value: Some(*v as f32), ..Default::default() })
            .collect();
        self.write_events(&[scalar_event(step, wall_time, value)])
    }

    /// Appends a PNG image of one step.
    pub fn write_image(&mut self, step: i64, wall_time: f64, tag: &str, png: &[u8]) -> Result<()> {
        let (width, height) = image::ImageReader::new(std::io::Cursor::new(png))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .unwrap_or((0, 0));
        let image = SummaryImage {
            height: height as i32,
            width: width as i32,
            colorspace: 3,
            encoded_image_string: png.to_vec(),
        };
        let value = SummaryValue { tag: tag.to_string(), image: Some(image), ..Default::default() };
        self.write_events(&[scalar_event(step, wall_time, vec![value])])
    }
}

fn scalar_event(step: i64, wall_time: f64, value: Vec<SummaryValue>) -> Event {
    Event { wall_time, step, summary: Some(Summary { value }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor_value(tag: &str, tensor: TensorProto) -> SummaryValue {
        SummaryValue { tag: tag.into(), tensor: Some(tensor), ..Default::default() }
    }

    #[test]
    fn scalars_written_every_way_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path(), "test").unwrap();
        writer.write_scalars(1, 10.0, &[("train/loss".into(), 0.5)]).unwrap();
        let values = vec![
            tensor_value("f", TensorProto { dtype: dtype::FLOAT, float_val: vec![1.5], ..Default::default() }),
            tensor_value("d", TensorProto { dtype: dtype::DOUBLE, double_val: vec![2.25], ..Default::default() }),
            tensor_value(
                "c",
                TensorProto {
                    dtype: dtype::DOUBLE,
                    tensor_content: 3.125f64.to_le_bytes().to_vec(),
                    ..Default::default()
                },
            ),
            tensor_value(
                "h",
                TensorProto {
                    dtype: dtype::HALF,
                    tensor_content: 0x3c00u16.to_le_bytes().to_vec(),
                    ..Default::default()
                },
            ),
        ];
        writer.write_events(&[scalar_event(2, 11.0, values)]).unwrap();
        let data = read_log_dir(dir.path());
        let value = |tag: &str| data.scalars[tag].points[0].value;
        assert_eq!(data.scalars["train/loss"].points, [ScalarPoint { step: 1, wall_time: Some(10.0), value: 0.5 }]);
        assert_eq!((value("f"), value("d"), value("c"), value("h")), (1.5, 2.25, 3.125, 1.0));
        assert!(data.problems.is_empty(), "{:?}", data.problems);
    }

    #[test]
    fn half_precision_values_decode() {
        assert_eq!(half_to_f64(0x3c00), 1.0);
        assert_eq!(half_to_f64(0xc000), -2.0);
        assert_eq!(half_to_f64(0x7c00), f64::INFINITY);
        assert!(half_to_f64(0x7e00).is_nan());
    }
}
