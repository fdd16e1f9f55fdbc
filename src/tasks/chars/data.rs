//! The chars task's text: built-in integer sums (`17+25=42`, one per line) or a UTF-8 file of the user's,
//! split into training and held-out parts by a seed, and the windows the model trains on.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::task::BatchSource;

/// Characters of the built-in sums, in token order.
pub const SUMS_VOCAB: &str = "\n+0123456789=";

/// Largest text file read (the whole file is held in memory as tokens).
pub const MAX_TEXT_BYTES: u64 = 256 << 20;

/// Characters of a held-out block of a text file.
const BLOCK_CHARS: usize = 1024;

/// A character ↔ token mapping: token `i` is the `i`-th character.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// The characters, in token order.
    pub chars: Vec<char>,
}

impl Vocab {
    /// The vocabulary of `text`: its distinct characters, sorted.
    pub fn of_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// Tokens of `text`; an error names the first character outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.chars
                    .binary_search(&c)
                    .ok()
                    .or_else(|| self.chars.iter().position(|&v| v == c))
                    .map(|i| i as u32)
                    .with_context(|| format!("character {c:?} is not in the model's vocabulary"))
            })
            .collect()
    }

    /// Text of `tokens` (unknown tokens become U+FFFD).
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens.iter().map(|&t| self.chars.get(t as usize).copied().unwrap_or('\u{fffd}')).collect()
    }

    /// Distinct characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether it has no characters.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }
}

/// A 64-bit mix (splitmix64's finaliser): spreads nearby inputs over the whole range.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform number in [0, 1) from a hash.
fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The built-in sums: every `a+b=c` with operands below 10^digits; a pair is held out when the hash of
/// (split seed, a, b) falls under the held-out fraction, whatever the digits, so stages on short and long
/// sums share one split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sums {
    /// Seed of the split.
    pub split_seed: u64,
    /// Fraction of pairs held out.
    pub heldout_fraction: f64,
}

impl Sums {
    /// Whether the pair (a, b) is held out.
    pub fn is_heldout(&self, a: u64, b: u64) -> bool {
        unit(mix(self.split_seed ^ mix(a.wrapping_mul(0x1_0000_0001) ^ b.rotate_left(32)))) < self.heldout_fraction
    }

    /// The line of a pair, newline included: `17+25=42\n`.
    pub fn line(a: u64, b: u64) -> String {
        format!("{a}+{b}={}\n", a + b)
    }

    /// A pair with operands below 10^digits drawn from `rng`, held out or not as asked.
    pub fn draw(&self, rng: &mut ChaCha8Rng, digits: u32, heldout: bool) -> (u64, u64) {
        let bound = 10u64.pow(digits);
        loop {
            let (a, b) = (rng.random_range(0..bound), rng.random_range(0..bound));
            if self.is_heldout(a, b) == heldout {
                return (a, b);
            }
        }
    }

    /// The first `count` held-out pairs with operands below 10^digits in the order drawn from `seed`
    /// (each once; fewer when there are fewer).
    pub fn heldout_pairs(&self, digits: u32, count: usize, seed: u64) -> Vec<(u64, u64)> {
        let bound = 10u64.pow(digits);
        if bound * bound <= 1 << 20 {
            // Few enough to list: every held-out pair in a seeded shuffle.
            let mut all: Vec<(u64, u64)> = (0..bound)
                .flat_map(|a| (0..bound).map(move |b| (a, b)))
                .filter(|&(a, b)| self.is_heldout(a, b))
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for i in (1..all.len()).rev() {
                all.swap(i, rng.random_range(0..=i));
            }
            all.truncate(count);
            return all;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let mut pairs = Vec::new();
        while pairs.len() < count {
            let pair = self.draw(&mut rng, digits, true);
            if seen.insert(pair) {
                pairs.push(pair);
            }
        }
        pairs
    }
}

/// A text file read and checked: its tokens split into training and held-out parts.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    /// The file.
    pub path: PathBuf,
    /// sha256 of its bytes (a resumed run refuses a file that changed).
    pub sha256: String,
    /// Its vocabulary.
    pub vocab: Vocab,
    /// Tokens of the training blocks, in file order (shared with every stage's batch source).
    pub train: std::sync::Arc<Vec<u32>>,
    /// Tokens of the held-out blocks, in file order.
    pub heldout: std::sync::Arc<Vec<u32>>,
}

/// Reads a user's text file, refusing a missing, empty, oversized, binary or non-UTF-8 one with a message
/// naming it, and splits it into blocks of 1,024 characters held out with probability `heldout_fraction`
/// (seeded by `split_seed`; at least one block each way).
pub fn read_text(path: &Path, heldout_fraction: f64, split_seed: u64, min_chars: usize) -> Result<TextCorpus> {
    let shown = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("task.text: cannot read {shown}"))?;
    if !meta.is_file() {
        bail!("task.text: {shown} is not a file");
    }
    if meta.len() > MAX_TEXT_BYTES {
        bail!("task.text: {shown} is {} bytes; at most {MAX_TEXT_BYTES} are read — use a smaller file", meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("task.text: cannot read {shown}"))?;
    if bytes.is_empty() {
        bail!("task.text: {shown} is empty — a language model needs text to learn from");
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        bail!("task.text: {shown} is binary (a NUL byte at offset {at}), not text");
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "task.text: {shown} is not UTF-8 (invalid bytes at offset {}) — save it as UTF-8",
            e.valid_up_to()
        )
    })?;
    let controls = text.chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')).count();
    if controls * 10 > text.chars().count() {
        bail!("task.text: {shown} looks binary ({controls} control characters), not text");
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < 2 * min_chars {
        bail!(
            "task.text: {shown} has {} characters; it needs at least {} (twice the context + 1) to give both a \
             training and a held-out part",
            chars.len(),
            2 * min_chars
        );
    }
    let vocab = Vocab::of_text(text);
    let blocks: Vec<&[char]> = chars.chunks(BLOCK_CHARS.max(min_chars)).collect();
    let mut held: Vec<bool> =
        (0..blocks.len()).map(|i| unit(mix(split_seed ^ mix(i as u64))) < heldout_fraction).collect();
    if blocks.len() >= 2 {
        if held.iter().all(|&h| !h) {
            let last = held.len() - 1;
            held[last] = true;
        }
        if held.iter().all(|&h| h) {
            held[0] = false;
        }
    }
    let (mut train, mut heldout) = (String::new(), String::new());
    for (block, held) in blocks.iter().zip(&held) {
        let target = if *held { &mut heldout } else { &mut train };
        target.extend(block.iter());
    }
    if blocks.len() < 2 {
        // One block: the last part of it is held out.
        let cut = chars.len() - (((chars.len() as f64) * heldout_fraction) as usize).max(min_chars);
        train = chars[..cut].iter().collect();
        heldout = chars[cut..].iter().collect();
    }
    if train.chars().count() < min_chars || heldout.chars().count() < min_chars {
        bail!("task.text: {shown}: the split leaves a part shorter than the context; use a longer file");
    }
    Ok(TextCorpus {
        path: path.to_path_buf(),
        sha256: crate::run::checkpoint::sha256_hex(&bytes),
        train: std::sync::Arc::new(vocab.encode(&train)?),
        heldout: std::sync::Arc::new(vocab.encode(&heldout)?),
        vocab,
    })
}

/// A batch of windows: `tokens` and next-character `targets`, both [size, context] row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CharBatch {
    /// Windows in the batch.
    pub size: usize,
    /// Characters per window.
    pub context: usize,
    /// Input tokens.
    pub tokens: Vec<u32>,
    /// The character after each input token.
    pub targets: Vec<u32>,
}

/// Where windows come from.
#[derive(Debug, Clone)]
pub enum Windows {
    /// Lines of built-in sums with operands below 10^digits.
    Sums {
        /// The split.
        sums: Sums,
        /// Most digits of an operand.
        digits: u32,
        /// The sums' vocabulary.
        vocab: Vocab,
    },
    /// Slices of a text.
    Text {
        /// The tokens windows are cut from.
        tokens: std::sync::Arc<Vec<u32>>,
    },
}

impl Windows {
    /// The `context + 1` tokens of window number `index` drawn with `seed`: a pure function of both. A sums
    /// window starts at a line's beginning (a newline, then whole lines); a text window anywhere.
    pub fn window(&self, seed: u64, index: u64, context: usize, heldout: bool) -> Result<Vec<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(index)));
        match self {
            Self::Sums { sums, digits, vocab } => {
                let mut text = String::from("\n");
                while text.len() < context + 1 {
                    let (a, b) = sums.draw(&mut rng, *digits, heldout);
                    text.push_str(&Sums::line(a, b));
                }
                let mut tokens = vocab.encode(&text)?;
                tokens.truncate(context + 1);
                Ok(tokens)
            }
            Self::Text { tokens } => {
                if tokens.len() < context + 1 {
                    bail!("the text has {} characters, fewer than the context + 1 ({})", tokens.len(), context + 1);
                }
                let start = rng.random_range(0..=tokens.len() - (context + 1));
                Ok(tokens[start..start + context + 1].to_vec())
            }
        }
    }

    /// `size` windows starting at window number `first` as a batch.
    pub fn batch(&self, seed: u64, first: u64, size: usize, context: usize, heldout: bool) -> Result<CharBatch> {
        let mut tokens = Vec::with_capacity(size * context);
        let mut targets = Vec::with_capacity(size * context);
        for i in 0..size as u64 {
            let window = self.window(seed, first + i, context, heldout)?;
            tokens.extend_from_slice(&window[..context]);
            targets.extend_from_slice(&window[1..]);
        }
        Ok(CharBatch { size, context, tokens, targets })
    }
}

/// The training batches of one stage, on the prefetch thread.
pub struct TrainWindows {
    /// Where windows come from.
    pub windows: Windows,
    /// The data-order seed.
    pub seed: u64,
    /// Characters per window.
    pub context: usize,
}

impl BatchSource for TrainWindows {
    type Batch = CharBatch;

    fn batch(&mut self, cursor: u64, size: usize) -> Result<CharBatch> {
        self.windows.batch(self.seed, cursor, size, self.context, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_is_held_out_at_every_digit_count_or_never() {
        let sums = Sums { split_seed: 3, heldout_fraction: 0.1 };
        let held = (0..100u64).flat_map(|a| (0..100u64).map(move |b| (a, b))).filter(|&(a, b)| sums.is_heldout(a, b));
        let count = held.count();
        assert!((800..1200).contains(&count), "{count} of 10000 held out");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (a, b) = sums.draw(&mut rng, 2, false);
            assert!(!sums.is_heldout(a, b) && a < 100 && b < 100);
        }
        let pairs = sums.heldout_pairs(2, 50, 9);
        assert_eq!(pairs.len(), 50);
        assert!(pairs.iter().all(|&(a, b)| sums.is_heldout(a, b)));
        assert_eq!(pairs, sums.heldout_pairs(2, 50, 9));
    }

    #[test]
    fn sums_windows_are_whole_lines_from_a_newline_and_pure_functions_of_their_index() {
        let windows = Windows::Sums {
            sums: Sums { split_seed: 0, heldout_fraction: 0.1 },
            digits: 2,
            vocab: Vocab { chars: SUMS_VOCAB.chars().collect() },
        };
        let vocab = Vocab { chars: SUMS_VOCAB.chars().collect() };
        let w = windows.window(5, 17, 24, false).unwrap();
        assert_eq!(w.len(), 25);
        let text = vocab.decode(&w);
        assert!(text.starts_with('\n'), "{text:?}");
        for line in text[1..].split('\n').filter(|l| l.contains('=')).take(2) {
            let (lhs, rhs) = line.split_once('=').unwrap();
            let (a, b) = lhs.split_once('+').unwrap();
            if !rhs.is_empty() && text[1..].contains(&format!("{line}\n")) {
                assert_eq!(a.parse::<u64>().unwrap() + b.parse::<u64>().unwrap(), rhs.parse::<u64>().unwrap());
            }
        }
        assert_eq!(w, windows.window(5, 17, 24, false).unwrap());
        assert_ne!(w, windows.window(5, 18, 24, false).unwrap());
    }

    #[test]
    fn bad_text_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8], expect: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = read_text(&path, 0.1, 0, 17).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(expect), "{e}");
        };
        check("empty.txt", b"", "empty");
        check("nul.txt", b"abc\0def", "binary");
        check("latin1.txt", b"caf\xe9 au lait, encore du caf\xe9 s'il vous pla\xeet", "not UTF-8");
        check("short.txt", b"hello", "characters");
        let e = read_text(&dir.path().join("missing.txt"), 0.1, 0, 17).unwrap_err().to_string();
        assert!(e.contains("missing.txt"), "{e}");
        let path = dir.path().join("ok.txt");
        std::fs::write(&path, "the quick brown fox jumps over the lazy dog\n".repeat(100)).unwrap();
        let corpus = read_text(&path, 0.2, 1, 17).unwrap();
        assert!(!corpus.train.is_empty() && !corpus.heldout.is_empty());
        assert_eq!(corpus.train.len() + corpus.heldout.len(), 4400);
        assert_eq!(corpus.vocab.decode(&corpus.vocab.encode("fox").unwrap()), "fox");
    }
}
