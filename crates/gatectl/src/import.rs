//! Parsing and checking an identity CSV file. Every row is checked before
//! anything is written; errors name the line and never echo an ID number.

use gate_core::{Category, CivilDate, CredentialKind, IdNumber, PersonRecord, PersonStatus, SiteKey, UtcOffset};
use gate_store::NewPerson;
use std::collections::HashMap;
use std::path::Path;

pub const HEADER: [&str; 6] = ["person_id", "category", "id_number", "name", "valid_from", "valid_to"];

/// Parses the whole file; on any bad row returns every problem found.
pub fn parse_people(
    file: &Path,
    bytes: &[u8],
    key: &SiteKey,
    offset: UtcOffset,
) -> Result<Vec<NewPerson>, Vec<String>> {
    let at = |line: u64, message: String| format!("{}:{line}: {message}", file.display());
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => {
            return Err(vec![format!("{}: not UTF-8 (first bad byte at offset {})", file.display(), e.valid_up_to())]);
        }
    };
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
        let valid_from = CivilDate::parse_iso(field(4)).map_err(|e| row_errors.push(format!("valid_from: {e}"))).ok();
        let valid_to = CivilDate::parse_iso(field(5)).map_err(|e| row_errors.push(format!("valid_to: {e}"))).ok();
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
            let mut person =
                PersonRecord::new(person_id, category, PersonStatus::Active, from.start_ms(offset), to.end_ms(offset));
            person.display_name = name.to_owned();
            people.push(NewPerson { person, credentials: vec![(CredentialKind::IdNumber, hash)] });
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

    fn parse(text: &str) -> Result<Vec<NewPerson>, Vec<String>> {
        parse_people(Path::new("people.csv"), text.as_bytes(), &SiteKey::from_bytes([3; 32]), UtcOffset::CHINA)
    }

    const HEAD: &str = "person_id,category,id_number,name,valid_from,valid_to\n";

    #[test]
    fn good_file_with_bom_and_x() {
        let text = format!(
            "\u{feff}{HEAD}p1,resident,35020319900101123x,张三,2024-01-01,2030-12-31\np2,worker,11010519491231002X,李四,2024-01-01,2024-01-01\n"
        );
        let people = parse(&text).expect("valid");
        assert_eq!(people.len(), 2);
        assert_eq!(people[1].person.category, Category::Worker);
        assert_eq!(people[1].person.valid_to_ms - people[1].person.valid_from_ms, 86_400_000 - 1);
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
        assert!(all.contains("people.csv:3: valid_from"), "{all}");
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
    fn wrong_header_is_refused() {
        let errors = parse("id,category\n").expect_err("header");
        assert!(errors[0].starts_with("people.csv:1: the header must be"), "{errors:?}");
    }
}
