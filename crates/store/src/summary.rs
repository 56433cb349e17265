//! What the identity table holds, for `gatectl status`: people by category,
//! credentials by kind, and the last import made on the box itself (the
//! platform's changes are dated by the identity state's `synced_at_ms`).

use crate::{Result, Store};
use gate_core::UnixMillis;
use rusqlite::params;

/// Counts of the identity table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentitySummary {
    pub people: u64,
    pub residents: u64,
    pub workers: u64,
    pub visitors: u64,
    /// Resident ID cards (credentials of kind `id_number`).
    pub id_cards: u64,
    pub ic_cards: u64,
    pub plates: u64,
    pub last_import: Option<LocalImport>,
}

/// A technician's `gatectl identity import`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImport {
    pub at_ms: UnixMillis,
    /// `technician:<login>`.
    pub operator: String,
    pub people: u64,
}

const LAST_IMPORT: &str = "identity_last_import";

impl Store {
    /// Counts people and credentials (a scan of both tables: for status
    /// requests, not for the decision path).
    pub fn identity_summary(&self) -> Result<IdentitySummary> {
        let mut summary = IdentitySummary::default();
        let mut people = self
            .conn
            .prepare("SELECT category, count(*) FROM ident.person GROUP BY category")
            .map_err(|e| self.err(e))?;
        let rows = people
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (category, n) = row.map_err(|e| self.err(e))?;
            summary.people += n;
            match category.as_str() {
                "resident" => summary.residents = n,
                "worker" => summary.workers = n,
                "visitor" => summary.visitors = n,
                _ => {}
            }
        }
        let mut credentials =
            self.conn.prepare("SELECT kind, count(*) FROM ident.credential GROUP BY kind").map_err(|e| self.err(e))?;
        let rows = credentials
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (kind, n) = row.map_err(|e| self.err(e))?;
            match kind.as_str() {
                "id_number" => summary.id_cards = n,
                "ic_card" => summary.ic_cards = n,
                "plate" => summary.plates = n,
                _ => {}
            }
        }
        summary.last_import = self.meta_get(LAST_IMPORT)?.and_then(|raw| {
            // at_ms \x1f operator \x1f people
            let mut parts = raw.split('\u{1f}');
            let at_ms = parts.next()?.parse().ok()?;
            let operator = parts.next()?.to_owned();
            let people = parts.next()?.parse().ok()?;
            Some(LocalImport { at_ms, operator, people })
        });
        Ok(summary)
    }

    /// Records a technician's import, for `gatectl status`.
    pub fn note_local_import(&self, import: &LocalImport) -> Result<()> {
        let value = format!("{}\u{1f}{}\u{1f}{}", import.at_ms, import.operator.replace('\u{1f}', " "), import.people);
        self.conn
            .execute(
                "INSERT INTO main.meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![LAST_IMPORT, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewPerson;
    use gate_core::{Category, CredentialKind, PersonRecord, PersonStatus};

    #[test]
    fn counts_people_by_category_and_credentials_by_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("gated.db")).expect("store");
        assert_eq!(store.identity_summary().expect("empty"), IdentitySummary::default());
        let person = |id: &str, category, keys: &[(CredentialKind, u8)]| NewPerson {
            person: PersonRecord::new(id, category, PersonStatus::Active, 0, 1),
            credentials: keys.iter().map(|(k, b)| (*k, [*b; 32])).collect(),
        };
        store
            .import_people(&[
                person("r1", Category::Resident, &[(CredentialKind::IdNumber, 1), (CredentialKind::Plate, 2)]),
                person("r2", Category::Resident, &[(CredentialKind::IdNumber, 3)]),
                person("v1", Category::Visitor, &[(CredentialKind::IdNumber, 4), (CredentialKind::IcCard, 5)]),
            ])
            .expect("import");
        let import = LocalImport { at_ms: 42, operator: "technician:li.wei".into(), people: 3 };
        store.note_local_import(&import).expect("note");
        let summary = store.identity_summary().expect("summary");
        assert_eq!(
            summary,
            IdentitySummary {
                people: 3,
                residents: 2,
                workers: 0,
                visitors: 1,
                id_cards: 3,
                ic_cards: 1,
                plates: 1,
                last_import: Some(import),
            }
        );
    }
}
