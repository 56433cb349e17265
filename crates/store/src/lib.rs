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
//! `Send` but not `Sync`. Blocking calls: async code never holds a `Store`,
//! it holds a [`StoreThread`], a connection on its own thread that runs jobs
//! sent over a bounded channel and answers by oneshot. Each user has its own
//! connection and SQLite arbitrates (WAL: readers never block the writer).
//!
//! Everything one decision changes (its event and `seq`, the outbox row, a
//! pass use, the anti-passback state, an alert, a mode row) is written by
//! [`Store::write`] in one transaction: all of it or none of it.

mod actor;
#[cfg(any(test, feature = "test-faults"))]
pub mod faults;
mod health;
mod identity;
mod local;
mod outbox;
mod reset;
mod schema;
mod snapshot;
mod summary;

pub use actor::{BACKGROUND_NICE, Closed, StoreThread, SubmitError, Urgency, lower_this_threads_priority};
pub use health::{HealthBatch, HealthState};
pub use identity::{DeltaOutcome, IdentityDelta, IdentityState, ImportSummary, NewPerson};
pub use local::{PassbackEntry, PendingGrant};
pub use outbox::{DroppedRanges, OutboxEntry, OutboxStats, Priority, Writer};
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
    /// The connection's thread is gone (it could not open the database,
    /// or the daemon is stopping).
    #[error("database {path}: its connection thread has stopped")]
    Stopped { path: PathBuf },
}

/// What kind of failure a [`StoreError`] is, for metrics, status and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The disk (or the database's page limit) is full: `SQLITE_FULL`.
    Full,
    /// Another connection holds the lock past the busy timeout.
    Busy,
    /// The operating system failed a read or write, or the file cannot be
    /// opened or written (read-only, gone).
    Io,
    /// The file or a row in it is damaged.
    Corrupt,
    /// Anything else (a constraint, a bug, a stopped connection thread).
    Other,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] =
        [ErrorClass::Full, ErrorClass::Busy, ErrorClass::Io, ErrorClass::Corrupt, ErrorClass::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Full => "full",
            ErrorClass::Busy => "busy",
            ErrorClass::Io => "io",
            ErrorClass::Corrupt => "corrupt",
            ErrorClass::Other => "other",
        }
    }
}

impl StoreError {
    /// The class of this failure.
    pub fn class(&self) -> ErrorClass {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::Sqlite { source: rusqlite::Error::SqliteFailure(e, _), .. } => match e.code {
                C::DiskFull => ErrorClass::Full,
                C::DatabaseBusy | C::DatabaseLocked => ErrorClass::Busy,
                C::SystemIoFailure | C::CannotOpen | C::ReadOnly | C::PermissionDenied | C::NoLargeFileSupport => {
                    ErrorClass::Io
                }
                C::DatabaseCorrupt | C::NotADatabase => ErrorClass::Corrupt,
                _ => ErrorClass::Other,
            },
            StoreError::Sqlite { .. } | StoreError::Stopped { .. } => ErrorClass::Other,
            StoreError::SchemaTooNew { .. } | StoreError::CorruptRow { .. } => ErrorClass::Corrupt,
        }
    }
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

/// How long a connection waits for another's write lock, at most.
pub const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The busy handler of every store connection. SQLite's own (behind
/// `busy_timeout`) sleeps 1, 2, 5, 10 ms... between tries: a decision that
/// met the uplink's short acknowledgement transaction (well under a
/// millisecond) slept 3 ms or more behind it, and a card took 4.5 ms to
/// unlock while the outbox drained. This one tries again every 100 µs for
/// the first 10 ms, then every millisecond, until [`BUSY_WAIT`].
fn retry_while_busy(tries: i32) -> bool {
    match busy_pause(tries) {
        Some(pause) => {
            std::thread::sleep(pause);
            true
        }
        None => false,
    }
}

/// The pause before try `tries + 1`, or `None` once [`BUSY_WAIT`] is spent.
fn busy_pause(tries: i32) -> Option<Duration> {
    const QUICK: i32 = 100;
    let (waited, pause) = if tries < QUICK {
        (Duration::from_micros(100) * tries as u32, Duration::from_micros(100))
    } else {
        (Duration::from_millis(10) + Duration::from_millis(1) * (tries - QUICK) as u32, Duration::from_millis(1))
    };
    (waited < BUSY_WAIT).then_some(pause)
}

impl Store {
    /// Opens (creating if needed) and migrates the databases at `path` and
    /// [`identity_path`]`(path)`.
    pub fn open(path: &Path) -> Result<Store> {
        let wrap = |source| StoreError::Sqlite { path: path.to_owned(), source };
        let mut conn = Connection::open(path).map_err(wrap)?;
        conn.busy_handler(Some(retry_while_busy)).map_err(wrap)?;
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
        // What is deleted or replaced is overwritten with zeros, so a
        // removed person's row does not linger in a free page. The identity
        // file fully (freed pages too); the main file, which holds no name
        // and no ID number in clear (events carry the masked forms), only
        // where that costs no extra write: its outbox is emptied all day.
        conn.pragma_update(Some("ident"), "secure_delete", "ON").map_err(wrap)?;
        conn.pragma_update(Some("main"), "secure_delete", "FAST").map_err(wrap)?;
        // A snapshot sorts millions of rows in a temporary table: the file
        // shrinks when it is dropped, so the kernel discards those pages
        // instead of writing them back (hundreds of megabytes, half a
        // minute later, in front of a card's commit).
        conn.pragma_update(Some("temp"), "auto_vacuum", "FULL").map_err(wrap)?;
        let mut store = Store { conn, path: path.to_owned() };
        let migrated = schema::migrate(&mut store.conn).map_err(|e| match e {
            schema::MigrateError::Sqlite(source) => StoreError::Sqlite { path: path.to_owned(), source },
            schema::MigrateError::TooNew { found, supported } => {
                StoreError::SchemaTooNew { path: path.to_owned(), found, supported }
            }
        })?;
        if migrated.names_masked {
            // The names in clear are still in free pages (tables dropped
            // by earlier snapshots, before secure_delete) and in the
            // write-ahead log: rebuild the file and empty the log.
            store.conn.execute_batch("VACUUM ident").map_err(wrap)?;
            store.conn.query_row("PRAGMA ident.wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(wrap)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// Runs `f` in one transaction and commits when it returns `Ok`: what it
    /// wrote is durable together or not at all (an error, a failed commit or
    /// a panic rolls everything back).
    pub fn write<T>(&mut self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        // Deferred, and every first statement writes `main` only: it takes
        // the main database's write lock without the identity database's,
        // which `BEGIN IMMEDIATE` would also take (it locks every attached
        // file) and a snapshot being applied holds for seconds.
        let tx = self.conn.transaction().map_err(wrap)?;
        let mut writer = Writer { tx, path: &self.path };
        let value = f(&mut writer)?;
        writer.tx.commit().map_err(wrap)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
