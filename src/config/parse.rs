//! Turning TOML and schema errors into `(path, message)` pairs a person can act on.

use serde_path_to_error::Segment;

/// The path shown for errors that belong to the whole file.
pub(crate) const TOP_LEVEL: &str = "(top level)";
/// The path shown for TOML syntax errors.
pub(crate) const SYNTAX: &str = "(syntax)";

/// A TOML syntax error: path [`SYNTAX`], message `line L, column C: what is wrong` followed by the
/// offending line with a caret under the column.
pub(crate) fn describe_syntax_error(text: &str, error: &toml::de::Error) -> (String, String) {
    let message = error.message().trim();
    let message = match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let source_line = text.lines().nth(line - 1).unwrap_or("");
            let (excerpt, caret_column) = excerpt_around(source_line, column);
            let gutter = line.to_string();
            format!(
                "line {line}, column {column}: {message}\n  {gutter} | {excerpt}\n  {pad} | {spaces}^",
                pad = " ".repeat(gutter.len()),
                spaces = " ".repeat(caret_column - 1),
            )
        }
        None => message.to_string(),
    };
    (SYNTAX.to_string(), message)
}

/// A schema error (unknown key, wrong type, unknown variant...): the field path and a friendly message.
///
/// * An unknown key is reported on the table that holds it: `stages[0]: unknown field `lrr`, expected one
///   of ... — did you mean `lr`?`.
/// * Rust type names become words: `expected u64` → `expected a whole number ≥ 0`.
/// * The location in the text is appended when known: `(line 3, column 9)`.
pub(crate) fn describe_schema_error(
    text: &str,
    error: &serde_path_to_error::Error<toml::de::Error>,
) -> (String, String) {
    let inner = error.inner();
    let raw = inner.message().trim();
    let mut segments: Vec<&Segment> = error.path().iter().collect();

    let mut message = raw.to_string();
    if let Some(unknown) = backticked_after(raw, "unknown field `") {
        // serde_path_to_error puts the unknown key itself at the end of the path; the user wants the table.
        if matches!(segments.last(), Some(Segment::Map { key }) if *key == unknown) {
            segments.pop();
        }
        if let Some(hint) = suggestion(raw, &unknown) {
            message.push_str(&format!(" — did you mean `{hint}`?"));
        }
    } else if let Some(unknown) = backticked_after(raw, "unknown variant `") {
        if let Some(hint) = suggestion(raw, &unknown) {
            message.push_str(&format!(" — did you mean `{hint}`?"));
        }
    }
    let message = friendly_types(&message);
    let message = match inner.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    };
    (format_path(&segments), message)
}

/// `stages[1].schedule.kind`, or [`TOP_LEVEL`] for the empty path.
fn format_path(segments: &[&Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Unknown => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push('?');
            }
        }
    }
    if path.is_empty() {
        TOP_LEVEL.to_string()
    } else {
        path
    }
}

/// Characters of a long source line shown either side of an error's column.
const EXCERPT_CHARS: usize = 60;

/// The part of `line` shown under an error at 1-based `column` (all of it when short; else up to
/// [`EXCERPT_CHARS`] characters either side, `…` where cut) and the caret's column in that excerpt.
fn excerpt_around(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    let from = column.saturating_sub(1 + EXCERPT_CHARS);
    let to = (column + EXCERPT_CHARS).min(chars.len());
    let mut excerpt: String = if from > 0 { "…".to_string() } else { String::new() };
    excerpt.extend(chars.get(from..to).unwrap_or_default());
    if to < chars.len() {
        excerpt.push('…');
    }
    (excerpt, column - from + usize::from(from > 0))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The text between `prefix` and the next backtick, when `message` starts with `prefix`.
fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    rest.find('`').map(|end| rest[..end].to_string())
}

/// The closest of the backticked names after "expected" in a serde message, if close enough to `word`.
fn suggestion(message: &str, word: &str) -> Option<String> {
    let (_, expected) = message.split_once("expected")?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    did_you_mean(word, &candidates).map(str::to_string)
}

/// The candidate closest to `word`, if it is a plausible typo: at most a third of the word's length in
/// edits (at least one; swapping two neighbours counts as one edit), or the candidate starts with the
/// word (`warmup` → `warmup_steps`).
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    let close = candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    close.or_else(|| {
        let mut prefixed = candidates.iter().filter(|c| word.chars().count() >= 3 && c.starts_with(&word));
        match (prefixed.next(), prefixed.next()) {
            (Some(only), None) => Some(*only),
            _ => None,
        }
    })
}

/// Edit distance over characters (insertions, deletions, substitutions, and swaps of neighbours).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j] = distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Replaces Rust type names in serde's "expected ..." with words.
fn friendly_types(message: &str) -> String {
    const WORDS: [(&str, &str); 5] = [
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected f64", "expected a number such as 0.001"),
        ("expected a sequence", "expected a list [...]"),
    ];
    let mut out = message.to_string();
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    // `expected struct StageConfig` → `expected a table`: the Rust type name means nothing to a user.
    if let Some(start) = out.find("expected struct ") {
        let name_start = start + "expected struct ".len();
        let name_end = out[name_start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map(|i| name_start + i)
            .unwrap_or(out.len());
        out.replace_range(start..name_end, "expected a table");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("lrr", "lr"), 1);
        assert_eq!(edit_distance("cosin", "cosine"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("nmae", "name"), 1);
    }

    #[test]
    fn did_you_mean_picks_close_names_only() {
        assert_eq!(did_you_mean("adaptr", &["all", "adapter", "base"]), Some("adapter"));
        assert_eq!(did_you_mean("huge", &["tiny", "small", "base"]), None);
        assert_eq!(did_you_mean("warmup", &["kind", "warmup_steps", "floor"]), Some("warmup_steps"));
        assert_eq!(did_you_mean("ab", &["abc", "abd"]), Some("abc"));
        assert_eq!(did_you_mean("xyz", &["xyz_a", "xyz_b"]), None);
    }

    #[test]
    fn line_column_is_one_based() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
