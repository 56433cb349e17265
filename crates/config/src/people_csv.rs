//! The identity CSV (`person_id,category,id_number,name,valid_from,valid_to`)
//! that both `gatectl identity import` and `gate-platform identity import`
//! take: decoding (UTF-8 or GBK), and every row checked before anything is
//! written. Errors name the line and never echo an ID number; a row keeps
//! the number only as its keyed hash under the site key.

use gate_core::{Category, CivilDate, CredentialKind, IdNumber, SiteKey, UtcOffset};
use std::collections::HashMap;
use std::path::Path;

pub const HEADER: [&str; 6] = ["person_id", "category", "id_number", "name", "valid_from", "valid_to"];

/// The text encodings an identity file may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GBK, read as GB 18030 (its superset): what Excel saves on a Chinese
    /// Windows machine.
    Gbk,
}

/// The file's text, and a note when the encoding was guessed.
#[derive(Debug)]
pub struct Decoded {
    pub text: String,
    pub note: Option<String>,
}

/// Decodes the file: in the encoding asked for, or, when none was, as UTF-8
/// if it is valid UTF-8 and else as GBK if it is valid GBK (saying so).
pub fn decode(file: &Path, bytes: &[u8], asked: Option<Encoding>) -> Result<Decoded, String> {
    let name = file.display();
    let utf8 = |bytes: &[u8]| std::str::from_utf8(bytes).map(|t| t.strip_prefix('\u{feff}').unwrap_or(t).to_owned());
    let gbk = |bytes: &[u8]| {
        encoding_rs::GB18030.decode_without_bom_handling_and_without_replacement(bytes).map(|t| t.into_owned())
    };
    match asked {
        Some(Encoding::Utf8) => utf8(bytes).map(|text| Decoded { text, note: None }).map_err(|e| {
            format!(
                "{name}: not UTF-8 (first bad byte at offset {}); a file saved by Excel on a Chinese Windows \
                 machine is GBK: try --encoding gbk",
                e.valid_up_to()
            )
        }),
        Some(Encoding::Gbk) => gbk(bytes).map(|text| Decoded { text, note: None }).ok_or_else(|| {
            format!("{name}: not GBK / GB 18030 (first bad byte at offset {})", first_bad_gbk_byte(bytes))
        }),
        None => match utf8(bytes) {
            Ok(text) => Ok(Decoded { text, note: None }),
            Err(e) => match gbk(bytes) {
                Some(text) => Ok(Decoded {
                    text,
                    note: Some(format!(
                        "{name}: not UTF-8; read as GBK (GB 18030), as Excel saves CSV on a Chinese Windows \
                         machine. Check the names below; --encoding gbk says so and skips this guess"
                    )),
                }),
                None => Err(format!(
                    "{name}: neither UTF-8 (first bad byte at offset {}) nor GBK; save it as \"CSV UTF-8\" \
                     or say --encoding",
                    e.valid_up_to()
                )),
            },
        },
    }
}

/// Where GB 18030 decoding first fails (for the error message).
fn first_bad_gbk_byte(bytes: &[u8]) -> usize {
    let mut decoder = encoding_rs::GB18030.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(bytes.len() * 3 + 8);
    let (result, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
    match result {
        encoding_rs::DecoderResult::Malformed(bad, consumed_after) => {
            read.saturating_sub(usize::from(bad) + usize::from(consumed_after))
        }
        _ => read,
    }
}

/// One checked row: the ID number only as its keyed hash under the site key.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonRow {
    pub person_id: String,
    pub category: Category,
    pub display_name: String,
    /// The first and last millisecond of the validity days, in the site's
    /// offset.
    pub valid_from_ms: i64,
    pub valid_to_ms: i64,
    pub id_number_key: [u8; 32],
}

impl std::fmt::Debug for PersonRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonRow")
            .field("person_id", &self.person_id)
            .field("category", &self.category)
            .field("valid_from_ms", &self.valid_from_ms)
            .field("valid_to_ms", &self.valid_to_ms)
            .finish_non_exhaustive()
    }
}

/// Parses and checks the whole file; on any bad row returns every problem
/// found, each with its line, never an ID number in clear.
pub fn parse_people(file: &Path, text: &str, key: &SiteKey, offset: UtcOffset) -> Result<Vec<PersonRow>, Vec<String>> {
    let at = |line: u64, message: String| format!("{}:{line}: {message}", file.display());
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return Err(vec![at(1, format!("cannot read the header: {e}"))]),
    };
    if header != HEADER {
        return Err(vec![at(1, format!("the header must be `{}`, found `{}`", HEADER.join(","), header.join(",")))]);
    }
    let mut errors = Vec::new();
    let mut people = Vec::new();
    let mut seen_people: HashMap<String, u64> = HashMap::new();
    let mut seen_numbers: HashMap<[u8; 32], u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(at(line, format!("malformed row: {}", csv_problem(&e))));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let mut row_errors = Vec::new();

        let person_id = field(0);
        if person_id.is_empty() || person_id.len() > 64 {
            row_errors.push("person_id must be 1 to 64 characters".to_owned());
        } else if let Some(first) = seen_people.insert(person_id.to_owned(), line) {
            row_errors.push(format!("person_id {person_id:?} already appears on line {first}"));
        }
        let category = Category::parse(field(1));
        if category.is_none() {
            row_errors.push(format!("category must be resident, worker or visitor, found {:?}", field(1)));
        }
        let id_number = match IdNumber::parse(field(2)) {
            Ok(id) => Some(id),
            Err(e) => {
                row_errors.push(format!("id_number {}: {e}", gate_core::id_number::mask_id_like(field(2))));
                None
            }
        };
        let name = field(3);
        if name.is_empty() {
            row_errors.push("name must not be empty".to_owned());
        }
        let mut date = |i: usize, key: &str| {
            CivilDate::parse_iso(field(i)).map_err(|e| row_errors.push(format!("{key} {:?}: {e}", field(i)))).ok()
        };
        let valid_from = date(4, "valid_from");
        let valid_to = date(5, "valid_to");
        if let (Some(from), Some(to)) = (valid_from, valid_to)
            && from > to
        {
            row_errors.push(format!("valid_from {from} is after valid_to {to}"));
        }
        let hash = id_number.as_ref().map(|id| key.credential_key(CredentialKind::IdNumber, id.expose()));
        if let (Some(hash), Some(id)) = (hash, &id_number)
            && let Some(first) = seen_numbers.insert(hash, line)
        {
            row_errors.push(format!("id_number {} already appears on line {first}", id.masked()));
        }
        if !row_errors.is_empty() {
            errors.extend(row_errors.into_iter().map(|m| at(line, m)));
            continue;
        }
        if let (Some(category), Some(from), Some(to), Some(hash)) = (category, valid_from, valid_to, hash) {
            people.push(PersonRow {
                person_id: person_id.to_owned(),
                category,
                display_name: name.to_owned(),
                valid_from_ms: from.start_ms(offset),
                valid_to_ms: to.end_ms(offset),
                id_number_key: hash,
            });
        }
    }
    if errors.is_empty() { Ok(people) } else { Err(errors) }
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("expected {expected_len} fields, found {len}")
        }
        _ => "unreadable CSV".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<PersonRow>, Vec<String>> {
        parse_people(Path::new("people.csv"), text, &SiteKey::from_bytes([3; 32]), UtcOffset::CHINA)
    }

    const HEAD: &str = "person_id,category,id_number,name,valid_from,valid_to\n";

    #[test]
    fn good_file_with_bom_and_x() {
        let text = format!(
            "\u{feff}{HEAD}p1,resident,35020319900101123x,张三,2024-01-01,2030-12-31\np2,worker,11010519491231002X,李四,2024-01-01,2024-01-01\n"
        );
        let people = parse(&text).expect("valid");
        assert_eq!(people.len(), 2);
        assert_eq!(people[1].category, Category::Worker);
        assert_eq!(people[1].valid_to_ms - people[1].valid_from_ms, 86_400_000 - 1);
        let expected = SiteKey::from_bytes([3; 32]).credential_key(CredentialKind::IdNumber, "35020319900101123X");
        assert_eq!(people[0].id_number_key, expected, "the hash of the number, its x upper-cased");
        assert!(!format!("{people:?}").contains("35020319900101123"), "no number in a debug print");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line_and_no_number_in_clear() {
        let text = format!(
            "{HEAD}p1,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n\
             p2,tenant,350203199001011237,李四,2024-13-01,2030-12-31\n\
             p1,worker,11010519491231002X,王五,2024-01-01,2023-01-01\n\
             p4,visitor,35020319900101123X,赵六,2024-01-01\n"
        );
        let errors = parse(&text).expect_err("bad rows");
        let all = errors.join("\n");
        assert!(all.contains("people.csv:3: category"), "{all}");
        assert!(all.contains("people.csv:3: id_number 350203********1237: the check character"), "{all}");
        assert!(all.contains("people.csv:3: valid_from \"2024-13-01\": "), "{all}");
        assert!(all.contains("people.csv:4: person_id \"p1\" already appears on line 2"), "{all}");
        assert!(all.contains("people.csv:4: valid_from 2024-01-01 is after valid_to 2023-01-01"), "{all}");
        assert!(all.contains("people.csv:5: malformed row: expected 6 fields, found 5"), "{all}");
        assert!(!all.contains("350203199001011237") && !all.contains("35020319900101123X"), "{all}");
    }

    #[test]
    fn duplicate_id_numbers_are_refused() {
        let text = format!(
            "{HEAD}p1,resident,35020319900101123X,a,2024-01-01,2030-12-31\np2,resident,35020319900101123x,b,2024-01-01,2030-12-31\n"
        );
        let errors = parse(&text).expect_err("duplicate");
        assert_eq!(errors, vec!["people.csv:3: id_number 350203********123X already appears on line 2".to_owned()]);
    }

    #[test]
    fn gbk_files_are_read_as_gbk_when_told_and_detected_when_not() {
        let utf8 = format!("{HEAD}p1,resident,35020319900101123X,陈建国,2024-01-01,2030-12-31\n");
        let (gbk, _, unmappable) = encoding_rs::GBK.encode(&utf8);
        assert!(!unmappable);
        assert_ne!(gbk.as_ref(), utf8.as_bytes(), "the name is encoded differently");
        let file = Path::new("people.csv");
        let told = decode(file, &gbk, Some(Encoding::Gbk)).expect("gbk");
        assert_eq!((told.text.as_str(), told.note), (utf8.as_str(), None));
        let guessed = decode(file, &gbk, None).expect("detected");
        assert_eq!(guessed.text, utf8);
        assert!(guessed.note.as_deref().is_some_and(|n| n.contains("read as GBK")), "{:?}", guessed.note);
        let refused = decode(file, &gbk, Some(Encoding::Utf8)).expect_err("not utf-8");
        assert!(
            refused.contains("not UTF-8 (first bad byte at offset") && refused.contains("--encoding gbk"),
            "{refused}"
        );
        // GB 18030's four-byte sequences (here U+20000, outside GBK).
        let (four, _, _) = encoding_rs::GB18030.encode("𠀀");
        assert_eq!(decode(file, &four, Some(Encoding::Gbk)).expect("gb18030").text, "𠀀");
        let plain = decode(file, utf8.as_bytes(), None).expect("utf-8");
        assert_eq!((plain.text.as_str(), plain.note), (utf8.as_str(), None));
        // Neither: a lone lead byte at the end.
        let broken = decode(file, b"abc\x81", None).expect_err("neither");
        assert!(broken.contains("neither UTF-8 (first bad byte at offset 3) nor GBK"), "{broken}");
        let broken = decode(file, b"abc\x81", Some(Encoding::Gbk)).expect_err("not gbk");
        assert!(broken.contains("not GBK / GB 18030 (first bad byte at offset 3)"), "{broken}");
    }

    #[test]
    fn wrong_header_is_refused() {
        let errors = parse("id,category\n").expect_err("header");
        assert!(errors[0].starts_with("people.csv:1: the header must be"), "{errors:?}");
    }
}
