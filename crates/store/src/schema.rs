//! Schema migrations, applied in order and recorded in `user_version`.

use rusqlite::Connection;

pub(crate) enum MigrateError {
    Sqlite(rusqlite::Error),
    TooNew { found: i64, supported: i64 },
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Each entry takes the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: identity table, credentials by keyed hash, sequences, outbox, meta.
    "CREATE TABLE person (
        person_id     TEXT PRIMARY KEY,
        category      TEXT NOT NULL CHECK (category IN ('resident', 'worker', 'visitor')),
        status        TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'blocked')),
        valid_from_ms INTEGER NOT NULL,
        valid_to_ms   INTEGER NOT NULL,
        display_name  TEXT NOT NULL
     );
     -- key = HMAC-SHA256(site key, kind || 0x00 || value): never the value itself.
     CREATE TABLE credential (
        kind      TEXT NOT NULL,
        key       BLOB NOT NULL CHECK (length(key) = 32),
        person_id TEXT NOT NULL REFERENCES person (person_id) ON DELETE CASCADE,
        PRIMARY KEY (kind, key)
     ) WITHOUT ROWID;
     CREATE INDEX credential_person ON credential (person_id);
     CREATE TABLE sequence (
        stream   TEXT PRIMARY KEY,
        next_seq INTEGER NOT NULL
     );
     CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        stream     TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        UNIQUE (stream, seq)
     );
     CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
];

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
