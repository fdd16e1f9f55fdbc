//! Hostile input, fuzzed: every reader of a file a user (or another tool) hands Wick — run configs, layout
//! JSONL, a run's JSONL logs, TensorBoard event files, `trainer_state.json`, images, safetensors weights —
//! fed generated and mutated inputs. Each input must be read or refused with a message naming the place
//! (a field path, a line, the file); none may panic, and no single allocation may exceed the bound stated
//! for its reader (so a size declared inside a file never allocates beyond what the file holds).
//!
//! Inputs are valid files (presets, files Wick and the other tools write) mutated byte-wise and, where the
//! format has a structure worth keeping, structure-wise (TOML values replaced, protobuf payloads re-framed
//! with valid CRCs, image headers that declare huge sizes with valid checksums). proptest shrinks any failure
//! to its smallest input.
//!
//! `cargo test` runs a fixed number of cases per reader (`WICK_FUZZ_CASES` overrides it);
//! `scripts/fuzz SECONDS` runs each reader for that long and prints executions and time per reader.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use wick::config::{BoxUnits, ConfigError, RunConfig, PRESETS};

// ---------------------------------------------------------------------------------------------------------
// The largest single allocation a reader makes, per thread.

thread_local! {
    static LARGEST_ALLOCATION: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting on each thread the largest block asked for.
struct WatchedAllocator;

fn note_allocation(size: usize) {
    // `try_with`: the slot may already be gone while a thread exits; a const-initialised Cell needs no
    // allocation of its own, so this never re-enters the allocator.
    let _ = LARGEST_ALLOCATION.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's contract; the only
// addition is a store into a thread-local Cell, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for WatchedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: the caller's guarantees for `layout` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: `ptr` and `layout` come from this allocator (that is, from `System`), as the caller promises.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: WatchedAllocator = WatchedAllocator;

/// Runs `read`, returning its result and the largest single allocation it made on this thread.
fn largest_allocation_of<R>(read: impl FnOnce() -> R) -> (R, usize) {
    LARGEST_ALLOCATION.with(|largest| largest.set(0));
    let out = read();
    (out, LARGEST_ALLOCATION.with(Cell::get))
}

/// The bound on one allocation of a reader of text and records: 64 × the input's size + 1 MiB. Containers
/// grow with what the input holds (a record per few bytes, doubling); a declared size that were trusted
/// would break it.
fn allocation_bound(input_bytes: usize) -> usize {
    64 * input_bytes + (1 << 20)
}

/// The bound for `trainer_state.json`: 256 × the input's size + 1 MiB. Its parser (json5, for the NaN and
/// Infinity Python writes) keeps every token of the file in one queue, ~100 bytes per byte of brackets.
fn json5_allocation_bound(input_bytes: usize) -> usize {
    256 * input_bytes + (1 << 20)
}

fn check_allocation(what: &str, input_bytes: usize, largest: usize, bound: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        largest <= bound,
        "{what}: an allocation of {largest} bytes for an input of {input_bytes} bytes (bound {bound})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The driver: a fixed number of cases, or a time budget per reader.

/// Runs `check` on inputs of `strategy`: `default_cases` of them, `WICK_FUZZ_CASES` if set, or as many as
/// fit in `WICK_FUZZ_SECS` seconds. Fails with the smallest failing input. Prints what it ran.
fn fuzz<S>(reader: &str, default_cases: u32, strategy: S, check: impl Fn(S::Value) -> Result<bool, TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let budget_secs: Option<f64> = std::env::var("WICK_FUZZ_SECS").ok().and_then(|s| s.parse().ok());
    let cases = std::env::var("WICK_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default_cases);
    let started = Instant::now();
    let executions = Cell::new(0u64);
    let read_whole = Cell::new(0u64);
    let slowest_secs = Cell::new(0f64);
    for batch in 0u64.. {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&batch.to_le_bytes());
        for (i, b) in reader.bytes().take(24).enumerate() {
            seed[8 + i] = b;
        }
        let config = Config {
            cases: if budget_secs.is_some() { 512 } else { cases },
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        let outcome = runner.run(&strategy, |input| {
            executions.set(executions.get() + 1);
            let one = Instant::now();
            let result = check(input);
            slowest_secs.set(slowest_secs.get().max(one.elapsed().as_secs_f64()));
            read_whole.set(read_whole.get() + u64::from(matches!(result, Ok(true))));
            result.map(|_| ())
        });
        if let Err(failure) = outcome {
            panic!("fuzzing the {reader} reader: {failure}");
        }
        if budget_secs.is_none_or(|secs| started.elapsed().as_secs_f64() >= secs) {
            break;
        }
    }
    eprintln!(
        "fuzz {reader}: {} executions in {:.1} s, 0 failures ({} read whole, the rest refused or read in part; \
         slowest input {:.1} ms)",
        executions.get(),
        started.elapsed().as_secs_f64(),
        read_whole.get(),
        slowest_secs.get() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------------------
// Byte-wise mutation.

/// One byte-wise change; positions wrap around the input's length.
#[derive(Debug, Clone)]
enum Edit {
    FlipBits(usize, u8),
    Insert(usize, Vec<u8>),
    InsertToken(usize, usize),
    Delete(usize, usize),
    Repeat { at: usize, len: usize, times: usize },
    Truncate(usize),
    Splice { from: usize, len: usize, to: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), 1..=255u8).prop_map(|(at, bits)| Edit::FlipBits(at, bits)),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Edit::InsertToken(at, token)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Edit::Delete(at, len)),
        1 => (any::<usize>(), 1..32usize, 1..64usize).prop_map(|(at, len, times)| Edit::Repeat { at, len, times }),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), 1..64usize, any::<usize>()).prop_map(|(from, len, to)| Edit::Splice { from, len, to }),
    ]
}

fn apply(seed: &[u8], edits: &[Edit], tokens: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let at = |i: usize, out: &Vec<u8>| if out.is_empty() { 0 } else { i % (out.len() + 1) };
        match e {
            Edit::FlipBits(i, bits) if !out.is_empty() => {
                let i = i % out.len();
                out[i] ^= bits;
            }
            Edit::FlipBits(..) => {}
            Edit::Insert(i, bytes) => {
                let i = at(*i, &out);
                out.splice(i..i, bytes.iter().copied());
            }
            Edit::InsertToken(i, token) => {
                let i = at(*i, &out);
                out.splice(i..i, tokens[token % tokens.len()].iter().copied());
            }
            Edit::Delete(i, len) => {
                let i = at(*i, &out);
                let end = (i + len).min(out.len());
                out.drain(i..end);
            }
            Edit::Repeat { at: i, len, times } => {
                let i = at(*i, &out);
                let end = (i + len).min(out.len());
                let piece = out[i..end].to_vec();
                for _ in 0..*times {
                    out.splice(i..i, piece.iter().copied());
                }
            }
            Edit::Truncate(i) => {
                let i = at(*i, &out);
                out.truncate(i);
            }
            Edit::Splice { from, len, to } => {
                let from = at(*from, &out);
                let end = (from + len).min(out.len());
                let piece = out[from..end].to_vec();
                let to = at(*to, &out);
                out.splice(to..to, piece);
            }
        }
    }
    out
}

/// Tokens worth inserting into text formats: extreme numbers, brackets, quotes, nesting deep enough to
/// exhaust a recursive parser's stack, huge strings.
fn text_tokens() -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = [
        "-1",
        "0",
        "1e309",
        "-1e309",
        "nan",
        "inf",
        "-inf",
        "NaN",
        "Infinity",
        "-0.0",
        "18446744073709551616",
        "9223372036854775807",
        "-9223372036854775808",
        "4294967296",
        "1e-320",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "'",
        "'''",
        "\"\"\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "\n",
        "\r\n",
        "=",
        ",",
        ":",
        "#",
        "[[stages]]\n",
        "[model]\n",
        "null",
        "true",
        "false",
        "\u{0}",
        "\u{feff}",
        "\u{202e}",
        "é",
        "💥",
        "1979-05-27T07:32:00Z",
    ]
    .iter()
    .map(|t| t.as_bytes().to_vec())
    .collect();
    tokens.push("[".repeat(50_000).into_bytes());
    tokens.push("{\"a\":".repeat(20_000).into_bytes());
    tokens.push("a = [".repeat(20_000).into_bytes());
    tokens.push("x = {".repeat(20_000).into_bytes());
    tokens.push("a".repeat(100_000).into_bytes());
    tokens.push("9".repeat(5_000).into_bytes());
    tokens
}

/// Tokens worth inserting into binary formats: extreme little-endian lengths and magic numbers.
fn binary_tokens() -> Vec<Vec<u8>> {
    let mut tokens: Vec<Vec<u8>> = vec![
        u64::MAX.to_le_bytes().to_vec(),
        (1u64 << 40).to_le_bytes().to_vec(),
        u32::MAX.to_le_bytes().to_vec(),
        0x8000_0000u32.to_le_bytes().to_vec(),
        0x7fff_ffffu32.to_be_bytes().to_vec(),
        vec![0xff; 10],
        vec![0x80; 10],
        vec![0; 16],
        b"\x89PNG\r\n\x1a\n".to_vec(),
        b"IHDR".to_vec(),
        b"IDAT".to_vec(),
        b"IEND".to_vec(),
        vec![0xff, 0xd8, 0xff],
        vec![0xff, 0xc0],
        b"RIFF".to_vec(),
        b"VP8L".to_vec(),
        b"BM".to_vec(),
    ];
    tokens.extend(text_tokens().into_iter().take(30));
    tokens
}

/// An input file's bytes; printed escaped (a failing input is shown so).
#[derive(Clone)]
struct Bytes(Vec<u8>);

impl Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 3000;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        let more = if self.0.len() > SHOWN { "…" } else { "" };
        write!(f, "b\"{}{more}\" ({} bytes)", shown.escape_ascii(), self.0.len())
    }
}

/// Inputs made by editing one of `seeds` byte-wise.
fn mutated(seeds: Vec<Vec<u8>>, tokens: Vec<Vec<u8>>) -> impl Strategy<Value = Bytes> {
    let seeds = Arc::new(seeds);
    let tokens = Arc::new(tokens);
    (0..seeds.len(), vec(edit(), 0..6)).prop_map(move |(i, edits)| Bytes(apply(&seeds[i], &edits, &tokens)))
}

// ---------------------------------------------------------------------------------------------------------
// Run configs.

fn words() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "cpu",
            "cuda:0",
            "cuda:99",
            "auto",
            "tiny",
            "small",
            "base",
            "huge",
            "linear",
            "cosine",
            "constant",
            "skip",
            "fail",
            "rollback",
            "f32",
            "bf16",
            "shapes",
            "chars",
            "folder",
            "pixels",
            "normalized",
            "adapter*",
            "*",
            "blocks.*",
            "../../etc/passwd",
            "/dev/zero",
            "/nonexistent/data",
            "base",
            "adapter",
            "loss",
            "fid",
            "val_loss",
            "min",
            "max",
        ])
        .prop_map(str::to_string),
        vec(any::<char>(), 0..12).prop_map(String::from_iter),
    ]
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    use toml::Value;
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0i64, -1, 1, 2, 3, 7, 64, 1000, i64::MAX, i64::MIN, 1 << 32, 1 << 53])
            .prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 1e-300, 1e300, 0.5, 2.0])
            .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        words().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((words(), inner), 0..4).prop_map(|kv| Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// One structure-wise change of a TOML document; the location wraps around the document's places.
#[derive(Debug, Clone)]
enum TreeEdit {
    Replace(usize, toml::Value),
    Remove(usize),
    AddKey(usize, String, toml::Value),
}

fn tree_edit() -> impl Strategy<Value = TreeEdit> {
    prop_oneof![
        3 => (any::<usize>(), toml_value()).prop_map(|(at, v)| TreeEdit::Replace(at, v)),
        1 => (any::<usize>()).prop_map(TreeEdit::Remove),
        1 => (any::<usize>(), words(), toml_value()).prop_map(|(at, k, v)| TreeEdit::AddKey(at, k, v)),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every place in `value`: the path of each table entry and array element.
fn places(value: &toml::Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                path.push(Step::Key(key.clone()));
                out.push(path.clone());
                places(child, path, out);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Step::Index(i));
                out.push(path.clone());
                places(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn parent_of<'v>(root: &'v mut toml::Value, path: &[Step]) -> Option<&'v mut toml::Value> {
    let mut at = root;
    for step in path {
        at = match (step, at) {
            (Step::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Step::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(at)
}

fn apply_tree(seed: &toml::Value, edits: &[TreeEdit]) -> String {
    let mut doc = seed.clone();
    for e in edits {
        let mut all = Vec::new();
        places(&doc, &mut Vec::new(), &mut all);
        let (TreeEdit::Replace(at, _) | TreeEdit::Remove(at) | TreeEdit::AddKey(at, ..)) = e;
        let path = all.get(at % all.len().max(1)).cloned().unwrap_or_default();
        let Some((last, parent_path)) = path.split_last() else { continue };
        let Some(parent) = parent_of(&mut doc, parent_path) else { continue };
        match (e, last, parent) {
            (TreeEdit::Replace(_, v), Step::Key(k), toml::Value::Table(t)) => {
                t.insert(k.clone(), v.clone());
            }
            (TreeEdit::Replace(_, v), Step::Index(i), toml::Value::Array(a)) => a[*i] = v.clone(),
            (TreeEdit::Remove(_), Step::Key(k), toml::Value::Table(t)) => {
                t.remove(k);
            }
            (TreeEdit::Remove(_), Step::Index(i), toml::Value::Array(a)) => {
                a.remove(*i);
            }
            (TreeEdit::AddKey(_, k, v), _, toml::Value::Table(t)) => {
                t.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    toml::to_string(&doc).unwrap_or_default()
}

/// Config texts: the presets, and each with every default written out.
fn config_seeds() -> Vec<String> {
    let mut seeds: Vec<String> = PRESETS.iter().map(|(_, text)| text.to_string()).collect();
    for (name, _) in PRESETS {
        let config = RunConfig::preset(name).expect("preset parses");
        seeds.push(config.to_toml_string().expect("preset serialises"));
    }
    seeds
}

/// Loads `bytes` as a config file: it loads and survives a round trip, or is refused naming the file and
/// a field path (or line and column) with a message.
fn check_config_file(dir: &Path, bytes: &[u8]) -> Result<bool, TestCaseError> {
    let path = dir.join("run.toml");
    std::fs::write(&path, bytes).map_err(|e| TestCaseError::fail(format!("writing the input: {e}")))?;
    let (loaded, largest) = largest_allocation_of(|| RunConfig::load(&path));
    check_allocation("config", bytes.len(), largest, allocation_bound(bytes.len()))?;
    let read = loaded.is_ok();
    match loaded {
        Ok(config) => {
            let _ = (config.total_steps(), config.stage_ledger());
            let text = config.to_toml_string().map_err(|e| TestCaseError::fail(format!("re-serialising: {e}")))?;
            let again = RunConfig::from_toml_str(&text, "again").map_err(|e| {
                TestCaseError::fail(format!("a loaded config does not load again after saving: {e}\n{text}"))
            })?;
            // Compared as saved files: a field the task does not use may hold NaN, which equals nothing.
            let text_again = again.to_toml_string().map_err(|e| TestCaseError::fail(format!("re-serialising: {e}")))?;
            prop_assert_eq!(text_again, text, "a loaded config changes when saved and loaded again");
        }
        Err(ConfigError::Read { path: named, .. }) => prop_assert_eq!(named, path),
        Err(ConfigError::Parse { origin, path: field, message }) => {
            prop_assert_eq!(origin, path.display().to_string());
            prop_assert!(!field.trim().is_empty() && !message.trim().is_empty(), "{field}: {message}");
        }
        Err(ConfigError::Invalid { origin, issues }) => {
            prop_assert_eq!(origin, path.display().to_string());
            prop_assert!(!issues.is_empty());
            for issue in issues {
                prop_assert!(!issue.path.trim().is_empty() && !issue.message.trim().is_empty(), "{issue}");
            }
        }
    }
    Ok(read)
}

#[test]
fn configs_load_or_are_refused_with_a_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = config_seeds().into_iter().map(String::into_bytes).collect();
    fuzz("config (bytes)", 3000, mutated(seeds, text_tokens()), |bytes| check_config_file(dir.path(), &bytes.0));
}

#[test]
fn configs_with_values_of_every_kind_load_or_are_refused_with_a_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let trees: Vec<toml::Value> =
        config_seeds().iter().map(|text| toml::from_str(text).expect("seed parses as TOML")).collect();
    let trees = Arc::new(trees);
    let strategy = (0..trees.len(), vec(tree_edit(), 1..5))
        .prop_map(move |(i, edits)| Bytes(apply_tree(&trees[i], &edits).into_bytes()));
    fuzz("config (values)", 3000, strategy, |bytes| check_config_file(dir.path(), &bytes.0));
}

// ---------------------------------------------------------------------------------------------------------
// Layout JSONL.

fn layout_seeds() -> Vec<Vec<u8>> {
    [
        concat!(
            "{\"image\": \"cat/001.png\", \"objects\": [{\"class\": \"cat\", \"bbox\": [1, 2, 30, 40]}]}\n",
            "{\"image\": \"dog/002.png\", \"objects\": [{\"class\": 1, \"bbox\": [0, 0, 10, 10]}, ",
            "{\"class\": \"dog\", \"bbox\": [5.5, 2.25, 1, 9]}]}\n",
            "\n{\"image\": \"cat/003.jpg\"}\n",
        ),
        concat!(
            "{\"image\": \"cat/001.png\", \"objects\": [{\"class\": \"cat\", \"bbox\": [0.1, 0.2, 0.5, 0.9]}]}\n",
            "{\"image\": \"dog/002.png\", \"objects\": [{\"class\": \"dog\", \"bbox\": [0, 0, 1, 1]}]}\n",
        ),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn layout_lines_are_read_or_refused_by_line() {
    use std::collections::{HashMap, HashSet};
    let classes = vec!["cat".to_string(), "dog".to_string()];
    let sizes: HashMap<String, (u32, u32)> =
        [("cat/001.png", (64, 48)), ("dog/002.png", (10, 10)), ("cat/003.jpg", (1, 1))]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let files: HashSet<String> = sizes.keys().cloned().chain(["cat/broken.png".to_string()]).collect();
    let strategy = (mutated(layout_seeds(), text_tokens()), prop::sample::select(vec![0usize, 1, 2]));
    fuzz("layout JSONL", 5000, strategy, |(Bytes(bytes), units)| {
        let units = [BoxUnits::Auto, BoxUnits::Pixels, BoxUnits::Normalized][units];
        let text = String::from_utf8_lossy(&bytes);
        let (layouts, largest) = largest_allocation_of(|| {
            wick::data::layouts::parse_layouts("layouts.jsonl", &text, &classes, &sizes, &files, units)
        });
        check_allocation("layout JSONL", bytes.len(), largest, allocation_bound(bytes.len()))?;
        let line_count = text.lines().count();
        prop_assert_eq!(layouts.lines, text.lines().filter(|l| !l.trim().is_empty()).count());
        prop_assert_eq!(layouts.objects, layouts.by_image.values().map(Vec::len).sum::<usize>());
        for problem in &layouts.problems {
            prop_assert!(!problem.detail.trim().is_empty() && !problem.path.is_empty(), "{problem:?}");
            if let Some(line) = problem.line {
                prop_assert!((1..=line_count).contains(&line), "{problem:?} of {line_count} lines");
            }
        }
        for objects in layouts.by_image.values() {
            for object in objects {
                let [x0, y0, x1, y1] = object.bbox;
                prop_assert!((object.class as usize) < classes.len(), "{object:?}");
                prop_assert!(object.bbox.iter().all(|v| (0.0..=1.0).contains(v)) && x0 < x1 && y0 < y1, "{object:?}");
            }
        }
        Ok(layouts.problems.is_empty())
    });
}

// ---------------------------------------------------------------------------------------------------------
// A run's JSONL logs.

#[test]
fn damaged_run_logs_are_read_with_every_bad_line_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-run");
    let seeds: Vec<Vec<u8>> = ["metrics.jsonl", "events.jsonl", "evals.jsonl"]
        .iter()
        .map(|name| {
            let bytes = std::fs::read(fixtures.join(name)).unwrap();
            bytes[..bytes.len().min(4000)].to_vec()
        })
        .collect();
    let path = dir.path().join("metrics.jsonl");
    fuzz("run JSONL logs", 3000, mutated(seeds, text_tokens()), |Bytes(bytes)| {
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (metrics, largest) = largest_allocation_of(|| {
            (
                wick::run::atomic::read_jsonl_contents::<wick::run::MetricsRecord>(&path),
                wick::run::atomic::read_jsonl_contents::<wick::run::EventRecord>(&path),
            )
        });
        check_allocation("run JSONL logs", bytes.len(), largest, allocation_bound(bytes.len()))?;
        // Blank as JSON sees it: only JSON's own whitespace (a vertical tab is not).
        let non_blank = bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
        let (Ok(metrics), Ok(events)) = metrics else {
            return Err(TestCaseError::fail("a damaged log is refused whole instead of read line by line"));
        };
        prop_assert_eq!(metrics.records.len() + metrics.damaged_lines.len(), non_blank);
        prop_assert_eq!(events.records.len() + events.damaged_lines.len(), non_blank);
        if !metrics.damaged_lines.is_empty() {
            prop_assert!(metrics.damage_note(&path).is_some_and(|note| note.contains("metrics.jsonl")));
        }
        Ok(metrics.damaged_lines.is_empty())
    });
}

// ---------------------------------------------------------------------------------------------------------
// trainer_state.json.

const TRAINER_STATE: &str = r#"{
  "best_metric": 0.4123,
  "best_model_checkpoint": "out/checkpoint-20",
  "epoch": 2.0,
  "global_step": 30,
  "is_hyper_param_search": false,
  "log_history": [
    {"epoch": 0.33, "grad_norm": 1.25, "learning_rate": 5e-05, "loss": 2.3456, "step": 10},
    {"epoch": 0.33, "eval_loss": NaN, "eval_runtime": 1.5, "eval_samples_per_second": 100.0, "step": 10},
    {"epoch": 0.67, "grad_norm": Infinity, "learning_rate": 4e-05, "loss": 1.9, "step": 20},
    {"epoch": 0.67, "eval_loss": 0.4123, "eval_accuracy": 0.81, "step": 20},
    {"epoch": 1.0, "step": 30, "total_flos": 1234.0, "train_loss": 2.0, "train_runtime": 12.5}
  ],
  "logging_steps": 10,
  "max_steps": 30,
  "trial_name": null
}"#;

#[test]
fn trainer_state_files_are_read_or_refused() {
    let seeds = vec![TRAINER_STATE.as_bytes().to_vec()];
    fuzz("trainer_state.json", 3000, mutated(seeds, text_tokens()), |Bytes(bytes)| {
        let text = String::from_utf8_lossy(&bytes);
        let (parsed, largest) = largest_allocation_of(|| {
            wick::interop::hf::TrainerState::parse(&text).map(|state| {
                let series = state.series();
                let evals = state.eval_metrics_at(20);
                (series.len(), evals.len())
            })
        });
        check_allocation("trainer_state.json", bytes.len(), largest, json5_allocation_bound(bytes.len()))?;
        if let Err(e) = &parsed {
            prop_assert!(!e.to_string().trim().is_empty());
        }
        Ok(parsed.is_ok())
    });
}

// ---------------------------------------------------------------------------------------------------------
// TensorBoard event files.

/// The records of an event file as TensorBoard's writers leave it: version, scalars, an image, text, a
/// restart.
fn event_payloads() -> Vec<Vec<u8>> {
    use wick::interop::tensorboard::EventWriter;
    let dir = tempfile::tempdir().unwrap();
    let mut writer = EventWriter::create(dir.path(), "seed").unwrap();
    writer.write_scalars(1, 1.5e9, &[("loss".to_string(), 0.5), ("lr".to_string(), 1e-3)]).unwrap();
    writer.write_image(2, 1.5e9 + 1.0, "samples", &tiny_images()[0]).unwrap();
    writer.write_text(3, 1.5e9 + 2.0, "notes", "hello **world**").unwrap();
    writer.write_restart(2, 1.5e9 + 3.0).unwrap();
    writer.write_scalars(2, 1.5e9 + 4.0, &[("loss".to_string(), f64::NAN)]).unwrap();
    let path = writer.path().to_path_buf();
    let bytes = std::fs::read(&path).unwrap();
    let scan = wick::interop::tfrecord::scan_records(&path, &bytes, 0);
    assert!(scan.problems.is_empty());
    scan.records.into_iter().map(|(_, record)| record).collect()
}

/// A record of an event file: a written one, edited or not, or any bytes; framed with valid CRCs or, now and
/// then, with bytes of the framing changed too.
#[derive(Debug, Clone)]
enum RecordInput {
    Framed(usize, Vec<Edit>),
    Raw(Vec<u8>),
}

#[test]
fn tensorboard_event_files_are_read_or_skipped_naming_the_file() {
    let payloads = Arc::new(event_payloads());
    let tokens = Arc::new(binary_tokens());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.out.tfevents.1500000000.fuzz");
    let record = prop_oneof![
        4 => (any::<usize>(), vec(edit(), 0..4)).prop_map(|(i, edits)| RecordInput::Framed(i, edits)),
        1 => vec(any::<u8>(), 0..64).prop_map(RecordInput::Raw),
    ];
    let strategy = (vec(record, 1..8), vec(edit(), 0..2));
    fuzz("TensorBoard records", 3000, strategy, |(records, file_edits)| {
        let mut bytes = Vec::new();
        for record in &records {
            let payload = match record {
                RecordInput::Framed(i, edits) => apply(&payloads[i % payloads.len()], edits, &tokens),
                RecordInput::Raw(raw) => raw.clone(),
            };
            bytes.extend(wick::interop::tfrecord::frame_record(&payload));
        }
        let bytes = apply(&bytes, &file_edits, &tokens);
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (data, largest) = largest_allocation_of(|| wick::interop::tensorboard::read_log_dir(dir.path()));
        check_allocation("TensorBoard records", bytes.len(), largest, allocation_bound(bytes.len()))?;
        for problem in &data.problems {
            prop_assert!(problem.contains("events.out.tfevents.1500000000.fuzz"), "{problem}");
        }
        Ok(data.problems.is_empty())
    });
}

// ---------------------------------------------------------------------------------------------------------
// Images.

/// A 5 × 3 image in each format Wick reads.
fn tiny_images() -> Vec<Vec<u8>> {
    use image::{DynamicImage, ImageFormat, RgbImage};
    let rgb = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 50) as u8, (y * 80) as u8, 128]));
    let mut out = Vec::new();
    for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Bmp] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(rgb.clone()).write_to(&mut bytes, format).unwrap();
        out.push(bytes.into_inner());
    }
    let mut gray16 = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(4, 4, |x, _| image::Luma([(x * 9000) as u16])))
        .write_to(&mut gray16, ImageFormat::Png)
        .unwrap();
    out.push(gray16.into_inner());
    out
}

/// A PNG whose header declares `width` × `height` (with a valid header CRC) over a tiny image's data.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = tiny_images()[0].clone();
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A BMP whose header declares `width` × `height` over a tiny image's data.
fn bmp_declaring(width: i32, height: i32) -> Vec<u8> {
    let mut bmp = tiny_images()[3].clone();
    bmp[18..22].copy_from_slice(&width.to_le_bytes());
    bmp[22..26].copy_from_slice(&height.to_le_bytes());
    bmp
}

fn check_image(bytes: &[u8]) -> Result<bool, TestCaseError> {
    use wick::data::scan::{decode_image, MAX_DECODE_BYTES, MAX_IMAGE_SIDE};
    let (decoded, largest) = largest_allocation_of(|| decode_image(bytes));
    check_allocation("images", bytes.len(), largest, MAX_DECODE_BYTES as usize + (1 << 20))?;
    match &decoded {
        Ok(image) => prop_assert!(image.width() <= MAX_IMAGE_SIDE && image.height() <= MAX_IMAGE_SIDE),
        Err(reason) => prop_assert!(!reason.trim().is_empty()),
    }
    Ok(decoded.is_ok())
}

#[test]
fn images_decode_or_are_refused_within_the_stated_memory() {
    let sides = prop::sample::select(vec![
        0u32,
        1,
        7,
        4096,
        5792,
        5793,
        8192,
        16_384,
        16_385,
        30_000,
        65_535,
        1 << 20,
        u32::MAX >> 1,
        u32::MAX,
    ]);
    let strategy = prop_oneof![
        3 => mutated(tiny_images(), binary_tokens()),
        1 => (sides.clone(), sides.clone()).prop_map(|(w, h)| Bytes(png_declaring(w, h))),
        1 => (sides.clone(), sides, any::<bool>())
            .prop_map(|(w, h, flip)| Bytes(bmp_declaring(w as i32, if flip { -(h as i32) } else { h as i32 }))),
    ];
    fuzz("images", 5000, strategy, |bytes| check_image(&bytes.0));
}

/// A lossless WebP of 115 bytes that declares an image of about 70 million pixels.
const FOUND_WEBP: &[u8] = b"RIFF\x9a\x00\x00\x00WEBPVP8L\x8d\x00\x00\x00/\x04S\x10\x0e\x00\xc0\x03\x91\x00\x00\x00\x00\x008\xff\x01\x00\x00\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00x \x12\x00\x00\x00\x00\x00\xe7?\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00`\x00\x00\x00\x00\x00@\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80H\xed>\x02\x00";

#[test]
fn tiny_files_declaring_huge_images_are_refused_naming_the_limit() {
    use wick::data::scan::decode_image;
    for (what, bytes) in [
        ("a PNG of 100000 × 100000", png_declaring(100_000, 100_000)),
        ("a PNG of 16384 × 16384 (over 32 Mpx)", png_declaring(16_384, 16_384)),
        ("a BMP of 30000 × 30000", bmp_declaring(30_000, 30_000)),
        // Found by this fuzzer: a 115-byte lossless WebP over 8000 px a side made its decoder allocate 280 MB
        // in one block, past the allocation limit the decoder was given.
        ("a WebP of 115 bytes", FOUND_WEBP.to_vec()),
    ] {
        let (decoded, largest) = largest_allocation_of(|| decode_image(&bytes));
        let reason = decoded.err().unwrap_or_else(|| panic!("{what} decoded"));
        assert!(reason.contains("too large") || reason.contains("does not decode"), "{what}: {reason}");
        assert!(largest < (64 << 20), "{what}: allocated {largest} bytes from a {}-byte file", bytes.len());
    }
    let reason = decode_image(&png_declaring(100_000, 100_000)).unwrap_err();
    assert!(reason.contains("declares 100000 × 100000 px") && reason.contains("16384 px a side"), "{reason}");
}

// ---------------------------------------------------------------------------------------------------------
// Safetensors weights.

fn tiny_weights() -> Vec<u8> {
    let spec = wick::model::ModelSpec::from_preset(wick::config::ModelPreset::Tiny, false);
    let (varmap, _) = wick::model::build_model(spec, &candle_core::Device::Cpu, 1).unwrap();
    let vars = wick::model::sorted_vars(&varmap).unwrap();
    wick::train::checkpointing::safetensors_bytes(vars.iter().map(|(name, var)| (name, var.as_tensor()))).unwrap()
}

/// A safetensors file: the valid one with its JSON header edited (the header length fixed up, or not), or
/// with bytes anywhere edited.
#[derive(Debug, Clone)]
enum WeightsInput {
    Header { edits: Vec<Edit>, fix_length: bool },
    Anywhere(Vec<Edit>),
}

#[test]
fn safetensors_files_load_or_are_refused_naming_the_file() {
    let weights = Arc::new(tiny_weights());
    let tokens = Arc::new(text_tokens());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let spec = wick::model::ModelSpec::from_preset(wick::config::ModelPreset::Tiny, false);
    let strategy = prop_oneof![
        3 => (vec(edit(), 1..4), any::<bool>()).prop_map(|(edits, fix_length)| WeightsInput::Header { edits, fix_length }),
        1 => vec(edit(), 1..4).prop_map(WeightsInput::Anywhere),
    ];
    fuzz("safetensors", 1000, strategy, |input| {
        let bytes = match &input {
            WeightsInput::Header { edits, fix_length } => {
                let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
                let header = apply(&weights[8..8 + header_len], edits, &tokens);
                let declared = if *fix_length { header.len() as u64 } else { header_len as u64 };
                let mut out = declared.to_le_bytes().to_vec();
                out.extend(header);
                out.extend_from_slice(&weights[8 + header_len..]);
                out
            }
            WeightsInput::Anywhere(edits) => apply(&weights, edits, &tokens),
        };
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ((spec_read, loaded), largest) = largest_allocation_of(|| {
            (
                wick::model::spec_from_weights(&path).map(|_| ()),
                wick::model::load_model(spec, &path, &candle_core::Device::Cpu).map(|_| ()),
            )
        });
        check_allocation("safetensors", bytes.len(), largest, allocation_bound(bytes.len()))?;
        let read = loaded.is_ok();
        for result in [spec_read, loaded] {
            if let Err(e) = result {
                let message = format!("{e:#}");
                prop_assert!(message.contains("model.safetensors"), "{message}");
            }
        }
        Ok(read)
    });
}

#[test]
fn the_fixtures_of_this_file_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    for seed in config_seeds() {
        assert!(check_config_file(dir.path(), seed.as_bytes()).unwrap());
        RunConfig::load(&dir.path().join("run.toml")).unwrap();
    }
    for image in tiny_images() {
        wick::data::scan::decode_image(&image).unwrap();
    }
    assert!(wick::interop::hf::TrainerState::parse(TRAINER_STATE).unwrap().series().contains_key("loss"));
    assert_eq!(event_payloads().len(), 6);
}
