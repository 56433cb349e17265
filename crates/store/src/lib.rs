//! The gate's local SQLite databases, and the only crate that knows SQL.
//!
//! Two files: the main database (per-stream sequence counters, the durable
//! outbox, pass uses, anti-passback state, a meta table) and, attached as
//! `ident`, the identity database (people, credentials and watchlist keyed
//! by HMAC under the site key, never in clear; pass revocations; the synced
//! version). Separate files so that applying a large identity snapshot never
//! holds the lock the decision loop needs to record an event.
//!
//! Both run in WAL mode with `synchronous = FULL`: an event that
//! `append_event` returned is on disk. A `Store` is one connection; it is
//! `Send` but not `Sync`, so each task that needs the database opens its own
//! and SQLite arbitrates (WAL: readers never block the writer).

mod health;
mod identity;
mod local;
mod outbox;
mod schema;
mod reset;
mod snapshot;
mod summary;

pub use health::{HealthBatch, HealthState};
pub use identity::{DeltaOutcome, IdentityDelta, IdentityState, ImportSummary, NewPerson};
pub use local::PassbackEntry;
pub use outbox::{OutboxEntry, OutboxStats};
pub use snapshot::{SnapshotChunk, SnapshotOutcome, SnapshotProgress};
pub use summary::{IdentitySummary, LocalImport};

use rusqlite::Connection;
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
    #[error("database {path}: schema version {found} is newer than this daemon understands ({supported})")]
    SchemaTooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("database {path}: corrupt row in {table}: {detail}")]
    CorruptRow { path: PathBuf, table: &'static str, detail: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One connection to the gate databases.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The identity database's file, next to the main one: `gated.db` →
/// `gated.identity.db`.
pub fn identity_path(main: &Path) -> PathBuf {
    let stem = main.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "gated".into());
    main.with_file_name(format!("{stem}.identity.db"))
}

impl Store {
    /// Opens (creating if needed) and migrates the databases at `path` and
    /// [`identity_path`]`(path)`.
    pub fn open(path: &Path) -> Result<Store> {
        let wrap = |source| StoreError::Sqlite { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(wrap)?;
        // Plans that never depend on bound values. Without it, a cached join
        // (the credential lookup) is re-prepared on every use, since rusqlite
        // clears bindings between uses: 20 µs of a 30 µs lookup.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(wrap)?;
        let ident = identity_path(path);
        conn.execute("ATTACH DATABASE ?1 AS ident", [ident.to_string_lossy()]).map_err(wrap)?;
        for schema in ["main", "ident"] {
            conn.pragma_update(Some(schema), "journal_mode", "WAL").map_err(wrap)?;
            conn.pragma_update(Some(schema), "synchronous", "FULL").map_err(wrap)?;
        }
        let mut store = Store { conn, path: path.to_owned() };
        schema::migrate(&mut store.conn).map_err(|e| match e {
            schema::MigrateError::Sqlite(source) => StoreError::Sqlite { path: path.to_owned(), source },
            schema::MigrateError::TooNew { found, supported } => {
                StoreError::SchemaTooNew { path: path.to_owned(), found, supported }
            }
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }
}

#[cfg(test)]
mod tests;
