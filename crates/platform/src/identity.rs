//! `gate-platform identity import`: the identity CSV `gatectl identity
//! import` takes (`person_id,category,id_number,name,valid_from,valid_to`,
//! parsed by the same `gate_config::people_csv`), checked whole, into
//! PostgreSQL as encoded `gate.v1.Person`s whose only
//! credential is the ID number's keyed hash under the site key: the number
//! itself is never stored nor logged. An import that changes anything
//! raises the site's identity version; each person row remembers the
//! version that last changed it, which is what a delta is made of.

use deadpool_postgres::Pool;
use gate_config::people_csv::PersonRow;
use gate_proto::v1 as pb;
use prost::Message;

use crate::db::DbError;

/// A checked CSV row (`gate_config::people_csv`, the parser `gatectl`
/// uses too) as the `gate.v1.Person` the gates receive: its one credential
/// is the ID number's keyed hash, its name the masked form.
pub fn person_of(row: &PersonRow) -> pb::Person {
    pb::Person {
        person_id: row.person_id.clone(),
        category: crate::downlink::category_to_wire(row.category) as i32,
        status: pb::PersonStatus::Active as i32,
        valid_from_ms: row.valid_from_ms,
        valid_to_ms: row.valid_to_ms,
        // The gates store and show only the masked form, so the masked
        // form is all that goes down the wire (and into this table).
        display_name: gate_core::mask_name(&row.display_name),
        credentials: vec![pb::Credential {
            r#type: pb::CredentialType::IdCard as i32,
            key: row.id_number_key.to_vec(),
        }],
        ..Default::default()
    }
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
    use gate_core::{CredentialKind, SiteKey, UtcOffset};
    use std::path::Path;

    #[test]
    fn rows_become_people_with_only_the_keyed_hash() {
        let key = SiteKey::from_bytes([3; 32]);
        let rows = gate_config::people_csv::parse_people(
            Path::new("people.csv"),
            "person_id,category,id_number,name,valid_from,valid_to\n\
             p1,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n",
            &key,
            UtcOffset::CHINA,
        )
        .expect("valid");
        let p = person_of(&rows[0]);
        assert_eq!((p.person_id.as_str(), p.display_name.as_str()), ("p1", "张*"));
        assert_eq!(p.category, pb::Category::Resident as i32);
        let expected = key.credential_key(CredentialKind::IdNumber, "35020319900101123X");
        assert_eq!(p.credentials[0].key, expected.to_vec());
        assert!(!format!("{p:?}").contains("35020319900101123X"));
    }
}
