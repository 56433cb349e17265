//! The gate's local SQLite database, and the only crate that knows SQL.
//!
//! It holds the identity table (people and their credentials, keyed by
//! HMAC under the site key, never in clear), the per-gate event sequence
//! counters and the durable outbox. The database runs in WAL mode with
//! `synchronous = FULL`: an event that `append_event` returned is on disk.
//!
//! A `Store` is one connection; it is `Send` but not `Sync`, so each task that
//! needs the database opens its own and SQLite arbitrates (WAL: readers never
//! block the writer).

mod schema;

use gate_core::{Category, CredentialKind, PersonRecord, PersonStatus, UnixMillis};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A database failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path}: schema version {found} is newer than this daemon understands ({supported})"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database {path}: corrupt row in {table}: {detail}")]
    CorruptRow {
        path: PathBuf,
        table: &'static str,
        detail: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One person and their credentials, ready to be written.
#[derive(Debug, Clone)]
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

/// One queued event or message waiting for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox; publishing follows it.
    pub id: i64,
    pub stream: String,
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    pub created_ms: UnixMillis,
}

/// Depth and age of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest_created_ms: Option<UnixMillis>,
}

/// One connection to the gate database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let wrap = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(wrap)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(wrap)?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
        };
        schema::migrate(&mut store.conn).map_err(|e| match e {
            schema::MigrateError::Sqlite(source) => StoreError::Sqlite {
                path: path.to_owned(),
                source,
            },
            schema::MigrateError::TooNew { found, supported } => StoreError::SchemaTooNew {
                path: path.to_owned(),
                found,
                supported,
            },
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The person a credential's keyed hash belongs to.
    pub fn find_person_by_credential(
        &self,
        kind: CredentialKind,
        key: &[u8; 32],
    ) -> Result<Option<PersonRecord>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.person_id, p.category, p.status, p.valid_from_ms, p.valid_to_ms, p.display_name
                 FROM credential c JOIN person p ON p.person_id = c.person_id
                 WHERE c.kind = ?1 AND c.key = ?2",
            )
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row(params![kind.as_str(), &key[..]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((person_id, category, status, valid_from_ms, valid_to_ms, display_name)) = row
        else {
            return Ok(None);
        };
        let corrupt = |detail: String| StoreError::CorruptRow {
            path: self.path.clone(),
            table: "person",
            detail,
        };
        let category = Category::parse(&category)
            .ok_or_else(|| corrupt(format!("unknown category {category:?}")))?;
        let status = PersonStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown status {status:?}")))?;
        Ok(Some(PersonRecord {
            person_id,
            category,
            status,
            valid_from_ms,
            valid_to_ms,
            display_name,
        }))
    }

    /// Writes people and their credentials in one transaction: all or
    /// nothing. An existing person is replaced, credentials included.
    pub fn import_people(&mut self, people: &[NewPerson]) -> Result<ImportSummary> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        let mut summary = ImportSummary::default();
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO person (person_id, category, status, valid_from_ms, valid_to_ms, display_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (person_id) DO UPDATE SET
                       category = excluded.category, status = excluded.status,
                       valid_from_ms = excluded.valid_from_ms, valid_to_ms = excluded.valid_to_ms,
                       display_name = excluded.display_name",
                )
                .map_err(wrap)?;
            let mut drop_credentials = tx
                .prepare_cached("DELETE FROM credential WHERE person_id = ?1")
                .map_err(wrap)?;
            let mut bind = tx
                .prepare_cached(
                    "INSERT INTO credential (kind, key, person_id) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, key) DO UPDATE SET person_id = excluded.person_id",
                )
                .map_err(wrap)?;
            for new in people {
                let p = &new.person;
                upsert
                    .execute(params![
                        p.person_id,
                        p.category.as_str(),
                        p.status.as_str(),
                        p.valid_from_ms,
                        p.valid_to_ms,
                        p.display_name
                    ])
                    .map_err(wrap)?;
                drop_credentials
                    .execute(params![p.person_id])
                    .map_err(wrap)?;
                for (kind, key) in &new.credentials {
                    bind.execute(params![kind.as_str(), &key[..], p.person_id])
                        .map_err(wrap)?;
                    summary.credentials += 1;
                }
                summary.people += 1;
            }
        }
        tx.commit().map_err(wrap)?;
        Ok(summary)
    }

    /// Number of people in the identity table.
    pub fn person_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM person", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Appends one event to the outbox. In a single transaction it takes the
    /// stream's next sequence number, lets `encode` build the payload with
    /// it, stores the payload and advances the counter. When it returns, the
    /// event is durable and its `seq` is taken: sequence numbers have no gaps
    /// and survive restarts.
    pub fn append_event(
        &mut self,
        stream: &str,
        topic: &str,
        created_ms: UnixMillis,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let seq: i64 = tx
            .query_row(
                "SELECT next_seq FROM sequence WHERE stream = ?1",
                params![stream],
                |r| r.get(0),
            )
            .optional()
            .map_err(wrap)?
            .unwrap_or(1);
        let payload = encode(seq as u64);
        tx.execute(
            "INSERT INTO outbox (stream, seq, topic, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![stream, seq, topic, payload, created_ms],
        )
        .map_err(wrap)?;
        tx.execute(
            "INSERT INTO sequence (stream, next_seq) VALUES (?1, ?2)
             ON CONFLICT (stream) DO UPDATE SET next_seq = excluded.next_seq",
            params![stream, seq + 1],
        )
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(seq as u64)
    }

    /// The next sequence number a stream would take (1 for a new stream).
    pub fn next_seq(&self, stream: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT next_seq FROM sequence WHERE stream = ?1",
                params![stream],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(1) as u64)
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` queued entries after outbox position `after_id`, oldest first.
    pub fn outbox_after(&self, after_id: i64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, stream, seq, topic, payload, created_ms FROM outbox
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after_id, limit as i64], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    stream: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
                    topic: r.get(3)?,
                    payload: r.get(4)?,
                    created_ms: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Removes an entry the broker acknowledged. Removing one twice is harmless.
    pub fn outbox_remove(&self, id: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        self.conn
            .query_row("SELECT count(*), min(created_ms) FROM outbox", [], |r| {
                Ok(OutboxStats {
                    depth: r.get::<_, i64>(0)? as u64,
                    oldest_created_ms: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))
    }

    /// A small key/value table for local state (mode, sync versions).
    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests;
