//! The privacy scan: every file a gate leaves (databases, WAL files, logs,
//! a capture of its MQTT traffic) searched for the test people's ID numbers
//! and names, in UTF-8 and in UTF-16 (both byte orders). A hit names the
//! file, the encoding and the masked needle, never the needle itself.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hit {
    pub file: PathBuf,
    pub encoding: &'static str,
    /// The needle masked (first and last character of a name, 6 + 4 of a
    /// number), so the report itself leaks nothing.
    pub masked: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanReport {
    pub files: usize,
    pub bytes: u64,
    pub needles: usize,
    pub hits: Vec<Hit>,
}

fn mask(needle: &str) -> String {
    let chars: Vec<char> = needle.chars().collect();
    match chars.len() {
        0..=2 => "*".repeat(chars.len()),
        n if n > 10 => format!(
            "{}{}{}",
            chars[..6].iter().collect::<String>(),
            "*".repeat(n - 10),
            chars[n - 4..].iter().collect::<String>()
        ),
        n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
    }
}

fn encodings(needle: &str) -> [(&'static str, Vec<u8>); 3] {
    [
        ("utf-8", needle.as_bytes().to_vec()),
        ("utf-16le", needle.encode_utf16().flat_map(u16::to_le_bytes).collect()),
        ("utf-16be", needle.encode_utf16().flat_map(u16::to_be_bytes).collect()),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// Scans every file under `dir` for `id_numbers` and `names`.
pub fn scan(dir: &Path, id_numbers: &[String], names: &[String]) -> ScanReport {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.sort();
    let mut report = ScanReport { needles: id_numbers.len() + names.len(), ..ScanReport::default() };
    for file in files {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        report.files += 1;
        report.bytes += bytes.len() as u64;
        let needles = id_numbers.iter().map(|n| (n, "id_number")).chain(names.iter().map(|n| (n, "name")));
        for (needle, kind) in needles {
            for (encoding, pattern) in encodings(needle) {
                if contains(&bytes, &pattern) {
                    report.hits.push(Hit { file: file.clone(), encoding, masked: mask(needle), kind });
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_number_and_a_name_in_every_encoding_and_masks_them() {
        let dir = tempfile::tempdir().expect("dir");
        let id = "35020319900101123X".to_owned();
        let name = "张三丰".to_owned();
        std::fs::write(dir.path().join("a.log"), format!("x {id} y")).expect("write");
        let utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        std::fs::write(dir.path().join("b.db"), [b"\0\0".as_slice(), &utf16].concat()).expect("write");
        std::fs::write(dir.path().join("c.wal"), "350203********123X 张*丰").expect("write");
        let report = scan(dir.path(), &[id], &[name]);
        assert_eq!(report.files, 3);
        let found: Vec<(&str, &str, &str)> =
            report.hits.iter().map(|h| (h.kind, h.encoding, h.masked.as_str())).collect();
        assert_eq!(found, vec![("id_number", "utf-8", "350203********123X"), ("name", "utf-16le", "张*丰")]);
    }
}
