//! `gate-platform identity import`: the identity CSV `gatectl identity
//! import` takes (`person_id,category,id_number,name,valid_from,valid_to`),
//! checked whole, into PostgreSQL as encoded `gate.v1.Person`s whose only
//! credential is the ID number's keyed hash under the site key: the number
//! itself is never stored nor logged. An import that changes anything
//! raises the site's identity version; each person row remembers the
//! version that last changed it, which is what a delta is made of.

use std::collections::HashMap;
use std::path::Path;

use deadpool_postgres::Pool;
use gate_core::{Category, CivilDate, CredentialKind, IdNumber, SiteKey, UtcOffset};
use gate_proto::v1 as pb;
use prost::Message;

use crate::db::DbError;

pub const HEADER: [&str; 6] = ["person_id", "category", "id_number", "name", "valid_from", "valid_to"];

/// The file's text: UTF-8 (a byte-order mark is dropped), or else GBK /
/// GB 18030, as Excel saves CSV on a Chinese Windows machine.
pub fn decode_text(file: &Path, bytes: &[u8]) -> Result<String, String> {
    match std::str::from_utf8(bytes) {
        Ok(t) => Ok(t.strip_prefix('\u{feff}').unwrap_or(t).to_owned()),
        Err(e) => encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(|t| t.into_owned())
            .ok_or_else(|| {
                format!("{}: neither UTF-8 (first bad byte at offset {}) nor GBK", file.display(), e.valid_up_to())
            }),
    }
}

/// Parses and checks every row; on any bad row returns every problem, each
/// with its line, never an ID number in clear.
pub fn parse_people(file: &Path, text: &str, key: &SiteKey, offset: UtcOffset) -> Result<Vec<pb::Person>, Vec<String>> {
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
                errors.push(at(line, "malformed row (wrong number of fields or unreadable CSV)".into()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let mut row = Vec::new();
        let person_id = field(0);
        if person_id.is_empty() || person_id.len() > 64 {
            row.push("person_id must be 1 to 64 characters".to_owned());
        } else if let Some(first) = seen_people.insert(person_id.to_owned(), line) {
            row.push(format!("person_id {person_id:?} already appears on line {first}"));
        }
        let category = Category::parse(field(1));
        if category.is_none() {
            row.push(format!("category must be resident, worker or visitor, found {:?}", field(1)));
        }
        let hash = match IdNumber::parse(field(2)) {
            Ok(id) => {
                let hash = key.credential_key(CredentialKind::IdNumber, id.expose());
                if let Some(first) = seen_numbers.insert(hash, line) {
                    row.push(format!("id_number {} already appears on line {first}", id.masked()));
                }
                Some(hash)
            }
            Err(e) => {
                row.push(format!("id_number {}: {e}", gate_core::id_number::mask_id_like(field(2))));
                None
            }
        };
        let name = field(3);
        if name.is_empty() {
            row.push("name must not be empty".to_owned());
        }
        let mut date = |i: usize, key: &str| {
            CivilDate::parse_iso(field(i)).map_err(|e| row.push(format!("{key} {:?}: {e}", field(i)))).ok()
        };
        let (from, to) = (date(4, "valid_from"), date(5, "valid_to"));
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            row.push(format!("valid_from {f} is after valid_to {t}"));
        }
        if !row.is_empty() {
            errors.extend(row.into_iter().map(|m| at(line, m)));
            continue;
        }
        if let (Some(category), Some(from), Some(to), Some(hash)) = (category, from, to, hash) {
            people.push(pb::Person {
                person_id: person_id.to_owned(),
                category: crate::downlink::category_to_wire(category) as i32,
                status: pb::PersonStatus::Active as i32,
                valid_from_ms: from.start_ms(offset),
                valid_to_ms: to.end_ms(offset),
                display_name: name.to_owned(),
                credentials: vec![pb::Credential { r#type: pb::CredentialType::IdCard as i32, key: hash.to_vec() }],
                ..Default::default()
            });
        }
    }
    if errors.is_empty() { Ok(people) } else { Err(errors) }
}

/// What an import changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub added: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// The site's identity version after the import.
    pub version: i64,
    /// The newest version sent to the gates.
    pub published: i64,
}

/// Upserts `people` into the site's table in one transaction; the version
/// goes up by one when anything changed.
pub async fn import(pool: &Pool, site: &str, people: &[pb::Person]) -> Result<ImportSummary, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO site_downlink (site_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&site]).await?;
    let row = tx
        .query_one(
            "SELECT identity_version, identity_published FROM site_downlink WHERE site_id = $1 FOR UPDATE",
            &[&site],
        )
        .await?;
    let (current, published): (i64, i64) = (row.get(0), row.get(1));
    let next = current + 1;
    let (mut added, mut changed, mut unchanged) = (0, 0, 0);
    for person in people {
        let bytes = person.encode_to_vec();
        let old = tx
            .query_opt(
                "SELECT person, deleted FROM identity_people WHERE site_id = $1 AND person_id = $2",
                &[&site, &person.person_id],
            )
            .await?;
        match old {
            Some(row) if row.get::<_, Vec<u8>>(0) == bytes && !row.get::<_, bool>(1) => unchanged += 1,
            old => {
                if old.is_some() {
                    changed += 1;
                } else {
                    added += 1;
                }
                tx.execute(
                    "INSERT INTO identity_people (site_id, person_id, person, changed_version) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (site_id, person_id) DO UPDATE
                     SET person = excluded.person, changed_version = excluded.changed_version, deleted = false",
                    &[&site, &person.person_id, &bytes, &next],
                )
                .await?;
            }
        }
    }
    let version = if added + changed > 0 {
        tx.execute("UPDATE site_downlink SET identity_version = $2 WHERE site_id = $1", &[&site, &next]).await?;
        next
    } else {
        current
    };
    tx.commit().await?;
    Ok(ImportSummary { added, changed, unchanged, version, published })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<pb::Person>, Vec<String>> {
        parse_people(Path::new("people.csv"), text, &SiteKey::from_bytes([3; 32]), UtcOffset::CHINA)
    }

    #[test]
    fn rows_become_people_with_only_the_keyed_hash() {
        let people = parse(
            "\u{feff}person_id,category,id_number,name,valid_from,valid_to\n\
             p1,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n",
        )
        .expect("valid");
        assert_eq!(people.len(), 1);
        let p = &people[0];
        assert_eq!((p.person_id.as_str(), p.display_name.as_str()), ("p1", "张三"));
        let expected = SiteKey::from_bytes([3; 32]).credential_key(CredentialKind::IdNumber, "35020319900101123X");
        assert_eq!(p.credentials[0].key, expected.to_vec());
        assert!(!format!("{p:?}").contains("35020319900101123X"));
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line_and_no_number_in_clear() {
        let errors = parse(
            "person_id,category,id_number,name,valid_from,valid_to\n\
             p1,resident,35020319900101123X,A,2024-01-01,2030-12-31\n\
             p1,alien,350203199001011237,B,2024-13-01,2030-12-31\n",
        )
        .expect_err("invalid");
        let all = errors.join("\n");
        assert!(all.contains("people.csv:3: person_id \"p1\" already appears on line 2"), "{all}");
        assert!(all.contains("people.csv:3: category"), "{all}");
        assert!(all.contains("people.csv:3: id_number 350203********1237"), "{all}");
        assert!(!all.contains("350203199001011237"), "{all}");
    }
}
