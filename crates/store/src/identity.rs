//! The identity table: people, their credentials and the watchlist, all
//! keyed by HMAC under the site key; pass revocations; the version synced
//! from the platform, and deltas applied against it.

use crate::{Result, Store, StoreError};
use gate_core::{AllowedGates, Category, CredentialKind, PersonRecord, PersonStatus, TimeWindow, UnixMillis};
use rusqlite::{OptionalExtension, Transaction, params};

/// One person and their credentials, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPerson {
    pub person: PersonRecord,
    pub credentials: Vec<(CredentialKind, [u8; 32])>,
}

/// What an import changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    pub people: usize,
    pub credentials: usize,
}

/// The synced identity version and when it last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentityState {
    pub version: u64,
    pub synced_at_ms: Option<UnixMillis>,
}

/// A change set from the platform, valid only on top of `from_version`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityDelta {
    pub from_version: u64,
    pub to_version: u64,
    pub upserts: Vec<NewPerson>,
    pub deletes: Vec<String>,
    pub watch_add: Vec<(CredentialKind, [u8; 32])>,
    pub watch_remove: Vec<(CredentialKind, [u8; 32])>,
    pub revoke_passes: Vec<String>,
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOutcome {
    Applied,
    /// The local version already is `to_version` (or newer): nothing changed.
    AlreadyApplied,
    /// The local version is not `from_version`: nothing changed, a resync is due.
    Gap {
        local_version: u64,
    },
}

const SEP: char = '\u{1f}';

pub(crate) fn encode_list(items: &[String]) -> String {
    items.join(&SEP.to_string())
}

fn decode_list(raw: &str) -> Vec<String> {
    if raw.is_empty() { Vec::new() } else { raw.split(SEP).map(str::to_owned).collect() }
}

pub(crate) fn encode_windows(windows: &[TimeWindow]) -> String {
    windows.iter().map(|w| format!("{}:{}:{}", w.weekdays, w.start_min, w.end_min)).collect::<Vec<_>>().join(";")
}

fn decode_windows(raw: &str) -> Option<Vec<TimeWindow>> {
    if raw.is_empty() {
        return Some(Vec::new());
    }
    raw.split(';')
        .map(|w| {
            let mut parts = w.split(':');
            let weekdays = parts.next()?.parse().ok()?;
            let start_min = parts.next()?.parse().ok()?;
            let end_min = parts.next()?.parse().ok()?;
            Some(TimeWindow { weekdays, start_min, end_min })
        })
        .collect()
}

/// A person's credentials as their row lists them (`person.credential_keys`),
/// so that replacing or deleting the person finds them without an index on
/// `credential.person_id`: for each, the kind's name, a 0 byte, the 32-byte key.
pub(crate) fn encode_credentials(credentials: &[(CredentialKind, [u8; 32])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(credentials.len() * 44);
    for (kind, key) in credentials {
        list_credential(&mut out, kind.as_str(), key);
    }
    out
}

/// Appends one credential to a `credential_keys` list.
pub(crate) fn list_credential(listed: &mut Vec<u8>, kind: &str, key: &[u8]) {
    listed.extend_from_slice(kind.as_bytes());
    listed.push(0);
    listed.extend_from_slice(key);
}

/// The (kind, key) pairs of `encode_credentials`; a damaged tail is left out
/// (its credentials stay bound, as an unlisted one would).
pub(crate) fn listed_credentials(raw: &[u8]) -> Vec<(&str, &[u8])> {
    let mut listed = Vec::new();
    let mut rest = raw;
    while let Some(end) = rest.iter().position(|b| *b == 0) {
        let (kind, after) = (&rest[..end], &rest[end + 1..]);
        let (Ok(kind), Some(key)) = (std::str::from_utf8(kind), after.get(..32)) else { break };
        listed.push((kind, key));
        rest = &after[32..];
    }
    listed
}

pub(crate) fn encode_gates(gates: &AllowedGates) -> Option<String> {
    match gates {
        AllowedGates::All => None,
        AllowedGates::Only(list) => Some(encode_list(list)),
    }
}

type PersonRow = (String, String, String, i64, i64, String, String, Option<String>, String);

impl Store {
    fn person_from_row(&self, row: PersonRow) -> Result<PersonRecord> {
        let (person_id, category, status, valid_from_ms, valid_to_ms, display_name, tags, gates, windows) = row;
        let corrupt = |detail: String| StoreError::CorruptRow { path: self.path.clone(), table: "person", detail };
        let category = Category::parse(&category).ok_or_else(|| corrupt(format!("unknown category {category:?}")))?;
        let status = PersonStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?;
        let time_windows = decode_windows(&windows).ok_or_else(|| corrupt("unreadable time windows".into()))?;
        Ok(PersonRecord {
            person_id,
            category,
            status,
            valid_from_ms,
            valid_to_ms,
            display_name,
            tags: decode_list(&tags),
            allowed_gates: gates.map_or(AllowedGates::All, |g| AllowedGates::Only(decode_list(&g))),
            time_windows,
        })
    }

    /// The person a credential's keyed hash belongs to.
    pub fn find_person_by_credential(&self, kind: CredentialKind, key: &[u8; 32]) -> Result<Option<PersonRecord>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT p.person_id, p.category, p.status, p.valid_from_ms, p.valid_to_ms, p.display_name,
                        p.tags, p.allowed_gates, p.time_windows
                 FROM ident.credential c JOIN ident.person p ON p.person_id = c.person_id
                 WHERE c.kind = ?1 AND c.key = ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![kind.as_str(), &key[..]], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        row.map(|row| self.person_from_row(row)).transpose()
    }

    /// A person by id.
    pub fn find_person(&self, person_id: &str) -> Result<Option<PersonRecord>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT person_id, category, status, valid_from_ms, valid_to_ms, display_name,
                        tags, allowed_gates, time_windows
                 FROM ident.person WHERE person_id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![person_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        row.map(|row| self.person_from_row(row)).transpose()
    }

    /// Whether a credential's keyed hash is on the watchlist.
    pub fn is_watchlisted(&self, kind: CredentialKind, key: &[u8; 32]) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM ident.watchlist WHERE kind = ?1 AND key = ?2")
            .and_then(|mut s| s.exists(params![kind.as_str(), &key[..]]))
            .map_err(|e| self.err(e))
    }

    pub fn is_pass_revoked(&self, pass_id: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM ident.pass_revoked WHERE pass_id = ?1")
            .and_then(|mut s| s.exists(params![pass_id]))
            .map_err(|e| self.err(e))
    }

    /// Number of people in the identity table.
    pub fn person_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM ident.person", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn identity_state(&self) -> Result<IdentityState> {
        self.conn
            .query_row("SELECT version, synced_at_ms FROM ident.identity_state WHERE id = 1", [], |r| {
                Ok(IdentityState { version: r.get::<_, i64>(0)? as u64, synced_at_ms: r.get(1)? })
            })
            .map_err(|e| self.err(e))
    }

    /// Writes people and their credentials in one transaction: all or
    /// nothing. An existing person is replaced, credentials included. Local
    /// provisioning: the synced version does not change.
    pub fn import_people(&mut self, people: &[NewPerson]) -> Result<ImportSummary> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        let summary = upsert_people(&tx, people).map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        tx.commit().map_err(|source| StoreError::Sqlite { path, source })?;
        Ok(summary)
    }

    /// Adds credentials to the watchlist (local provisioning and tests).
    pub fn watchlist_add(&mut self, entries: &[(CredentialKind, [u8; 32])]) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(wrap)?;
        watch(&tx, entries, true).map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    /// Applies a platform delta in one transaction, only on top of its
    /// `from_version`. Applying the same delta twice changes nothing.
    pub fn apply_delta(&mut self, delta: &IdentityDelta, now_ms: UnixMillis) -> Result<DeltaOutcome> {
        self.apply_versioned("identity_state", delta.from_version, delta.to_version, now_ms, |tx| {
            delete_people(tx, &delta.deletes)?;
            upsert_people(tx, &delta.upserts)?;
            watch(tx, &delta.watch_add, true)?;
            watch(tx, &delta.watch_remove, false)?;
            for pass_id in &delta.revoke_passes {
                tx.prepare_cached("INSERT OR IGNORE INTO ident.pass_revoked (pass_id) VALUES (?1)")?
                    .execute(params![pass_id])?;
            }
            Ok(())
        })
    }

    /// Applies a change set valid only on top of `from`, in one transaction
    /// on the identity database: already at `to` or beyond changes nothing,
    /// any other version is a gap. `state` names the single-row version table.
    pub(crate) fn apply_versioned(
        &mut self,
        state: &'static str,
        from: u64,
        to: u64,
        now_ms: UnixMillis,
        apply: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<DeltaOutcome> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        // Deferred, and the first statement writes `ident` only: this takes
        // the identity database's write lock and not the main one's, which
        // `BEGIN IMMEDIATE` would also take (it locks every attached file),
        // holding up the decision loop's outbox writes.
        let tx = self.conn.transaction().map_err(wrap)?;
        let local: i64 = tx
            .query_row(&format!("UPDATE ident.{state} SET version = version WHERE id = 1 RETURNING version"), [], |r| {
                r.get(0)
            })
            .map_err(wrap)?;
        let local = local as u64;
        if local >= to {
            return Ok(DeltaOutcome::AlreadyApplied);
        }
        if local != from {
            return Ok(DeltaOutcome::Gap { local_version: local });
        }
        apply(&tx).map_err(wrap)?;
        tx.execute(
            &format!("UPDATE ident.{state} SET version = ?1, synced_at_ms = ?2 WHERE id = 1"),
            params![to as i64, now_ms],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(DeltaOutcome::Applied)
    }
}

/// Inserts or replaces a person row in `ident.{table}` (the live table, or
/// a snapshot's `person_built`), bound by `upsert_person_row`.
pub(crate) fn person_upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO ident.{table} (person_id, category, status, valid_from_ms, valid_to_ms, display_name,
                                    tags, allowed_gates, time_windows, credential_keys)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (person_id) DO UPDATE SET
           category = excluded.category, status = excluded.status,
           valid_from_ms = excluded.valid_from_ms, valid_to_ms = excluded.valid_to_ms,
           display_name = excluded.display_name, tags = excluded.tags,
           allowed_gates = excluded.allowed_gates, time_windows = excluded.time_windows,
           credential_keys = excluded.credential_keys"
    )
}

/// Runs a `person_upsert_sql` statement for one person.
pub(crate) fn upsert_person_row(upsert: &mut rusqlite::CachedStatement<'_>, new: &NewPerson) -> rusqlite::Result<()> {
    let p = &new.person;
    upsert.execute(params![
        p.person_id,
        p.category.as_str(),
        p.status.as_str(),
        p.valid_from_ms,
        p.valid_to_ms,
        // Never the name itself: the masked form is all a screen needs.
        gate_core::mask_name(&p.display_name),
        encode_list(&p.tags),
        encode_gates(&p.allowed_gates),
        encode_windows(&p.time_windows),
        encode_credentials(&new.credentials),
    ])?;
    Ok(())
}

pub(crate) fn upsert_people(tx: &Transaction<'_>, people: &[NewPerson]) -> rusqlite::Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let mut upsert = tx.prepare_cached(&person_upsert_sql("person"))?;
    let mut bind = tx.prepare_cached(
        "INSERT INTO ident.credential (kind, key, person_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, key) DO UPDATE SET person_id = excluded.person_id",
    )?;
    for new in people {
        let p = &new.person;
        unbind_credentials(tx, &p.person_id)?;
        upsert_person_row(&mut upsert, new)?;
        for (kind, key) in &new.credentials {
            bind.execute(params![kind.as_str(), &key[..], p.person_id])?;
            summary.credentials += 1;
        }
        summary.people += 1;
    }
    Ok(summary)
}

fn delete_people(tx: &Transaction<'_>, person_ids: &[String]) -> rusqlite::Result<()> {
    let mut drop_person = tx.prepare_cached("DELETE FROM ident.person WHERE person_id = ?1")?;
    for id in person_ids {
        unbind_credentials(tx, id)?;
        drop_person.execute(params![id])?;
    }
    Ok(())
}

/// Removes the credentials a person's row lists, those still bound to that
/// person (a later upsert may have moved one to someone else).
fn unbind_credentials(tx: &Transaction<'_>, person_id: &str) -> rusqlite::Result<()> {
    let listed: Option<Vec<u8>> = tx
        .prepare_cached("SELECT credential_keys FROM ident.person WHERE person_id = ?1")?
        .query_row([person_id], |r| r.get(0))
        .optional()?;
    let Some(listed) = listed else { return Ok(()) };
    let mut unbind =
        tx.prepare_cached("DELETE FROM ident.credential WHERE kind = ?1 AND key = ?2 AND person_id = ?3")?;
    for (kind, key) in listed_credentials(&listed) {
        unbind.execute(params![kind, key, person_id])?;
    }
    Ok(())
}

fn watch(tx: &Transaction<'_>, entries: &[(CredentialKind, [u8; 32])], add: bool) -> rusqlite::Result<()> {
    let sql = if add {
        "INSERT OR IGNORE INTO ident.watchlist (kind, key) VALUES (?1, ?2)"
    } else {
        "DELETE FROM ident.watchlist WHERE kind = ?1 AND key = ?2"
    };
    let mut stmt = tx.prepare_cached(sql)?;
    for (kind, key) in entries {
        stmt.execute(params![kind.as_str(), &key[..]])?;
    }
    Ok(())
}
