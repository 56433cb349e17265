//! What every TOML configuration loader of the project shares to report an
//! error the same way: line and column of a byte offset, what an item is
//! ("found integer 5"), the nearest known key for a misspelt one, and the
//! folder relative paths start from. Used by `gated`'s loader here and by
//! `gate-platform`'s.

use std::path::{Path, PathBuf};
use toml_edit::{Item, Value};

/// The folder relative paths are resolved against, made absolute.
pub fn base_folder(source: &Path) -> PathBuf {
    let folder = match source.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf())
}

/// 1-based line and column (in characters) of a byte offset.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// Levenshtein distance, in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within an edit distance of 2 (and closer than
/// rewriting the whole word), if any.
pub fn suggest<'k>(found: &str, candidates: &[&'k str]) -> Option<&'k str> {
    let len = found.chars().count();
    candidates
        .iter()
        .map(|&c| (edit_distance(found, c), c))
        .filter(|&(d, _)| d <= 2 && d < len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// What an item is, for "found ..." in messages.
pub fn describe(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_owned(),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::Value(v) => match v {
            Value::String(s) => format!("string {:?}", s.value()),
            Value::Integer(i) => format!("integer {}", i.value()),
            Value::Float(x) => format!("float {}", x.value()),
            Value::Boolean(b) => format!("boolean {}", b.value()),
            Value::Datetime(d) => format!("datetime {}", d.value()),
            Value::Array(_) => "an array".to_owned(),
            Value::InlineTable(_) => "an inline table".to_owned(),
        },
    }
}

/// "unknown key `prot` (expected one of: host, port); did you mean `port`?"
pub fn unknown_key_message(name: &str, item: &Item, known: &[&str]) -> String {
    let what = if item.is_table() || item.is_array_of_tables() { "table" } else { "key" };
    let mut message = format!("unknown {what} `{name}` (expected one of: {})", known.join(", "));
    if let Some(close) = suggest(name, known) {
        message.push_str(&format!("; did you mean `{close}`?"));
    }
    message
}
