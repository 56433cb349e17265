//! Schema migrations, applied in order and recorded in `user_version`.

use rusqlite::{Connection, Transaction};

pub(crate) enum MigrateError {
    Sqlite(rusqlite::Error),
    TooNew { found: i64, supported: i64 },
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Each entry takes the main database from version `index` to `index + 1`.
pub(crate) const MAIN_MIGRATIONS: &[&str] = &[
    // 1: sequences, outbox, pass uses and revocations, anti-passback, meta.
    "CREATE TABLE sequence (
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
     CREATE TABLE pass_use (
        pass_id TEXT PRIMARY KEY,
        uses    INTEGER NOT NULL
     );
     CREATE TABLE passback (
        subject TEXT PRIMARY KEY,
        side    TEXT NOT NULL,
        at_ms   INTEGER NOT NULL
     );
     CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
     );",
    // 2: the trust list for signed health certificates (signer certificates
    //    in DER), replaced whole by each accepted update.
    "CREATE TABLE trust_list (
        version INTEGER NOT NULL,
        position INTEGER NOT NULL,
        der     BLOB NOT NULL,
        PRIMARY KEY (version, position)
     );",
    // 3: the outbox keeps streams, not MQTT topics (the uplink maps one to
    //    the other, so a changed topic prefix strands nothing); a priority
    //    for dropping when over capacity (0 routine, 1 important; rows from
    //    before are all kept as important); grants waiting for their
    //    passage, so a restart in between knows the door was opened on
    //    purpose.
    "ALTER TABLE outbox DROP COLUMN topic;
     ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
     CREATE INDEX outbox_priority ON outbox (priority, id);
     CREATE TABLE pending_grant (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        side          TEXT NOT NULL,
        granted_at_ms INTEGER NOT NULL,
        deadline_ms   INTEGER NOT NULL
     );",
    // 4: a decision's commit writes fewer pages (and so fewer write-ahead
    //    log frames to flush): five became two for an event. Outbox
    //    positions come from the `#outbox` row of `sequence`, a page every
    //    append writes anyway, instead of AUTOINCREMENT's `sqlite_sequence`
    //    page; positions still never repeat (the uplink's cursor relies on
    //    it). No UNIQUE (stream, seq) index: the counter, advanced in the
    //    same transaction as the row, is what makes a seq unique. No
    //    priority index: dropping routine rows first looks at the oldest
    //    rows only (`Writer::drop_oldest`). Pending grants lose
    //    AUTOINCREMENT too: a plain rowid still grows, which is all their
    //    order needs. The copy makes the write-ahead log as big as the
    //    outbox for once, on the first start after the upgrade.
    "CREATE TABLE outbox_v4 (
        id         INTEGER PRIMARY KEY,
        stream     TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        payload    BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        priority   INTEGER NOT NULL
     );
     INSERT INTO outbox_v4 (id, stream, seq, payload, created_ms, priority)
        SELECT id, stream, seq, payload, created_ms, priority FROM outbox ORDER BY id;
     INSERT INTO sequence (stream, next_seq) VALUES ('#outbox', 1 + max(
        coalesce((SELECT max(id) FROM outbox), 0),
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)));
     DROP TABLE outbox;
     ALTER TABLE outbox_v4 RENAME TO outbox;
     CREATE TABLE pending_grant_v4 (
        id            INTEGER PRIMARY KEY,
        side          TEXT NOT NULL,
        granted_at_ms INTEGER NOT NULL,
        deadline_ms   INTEGER NOT NULL
     );
     INSERT INTO pending_grant_v4 SELECT id, side, granted_at_ms, deadline_ms FROM pending_grant ORDER BY id;
     DROP TABLE pending_grant;
     ALTER TABLE pending_grant_v4 RENAME TO pending_grant;
     DELETE FROM sqlite_sequence;",
];

/// The row of `sequence` that counts outbox positions (not a stream: a
/// stream's name never starts with `#`).
pub(crate) const OUTBOX_POSITION: &str = "#outbox";

/// One migration: SQL, or Rust where SQL cannot say it (SQLite has no
/// function to mask a name).
pub(crate) enum Step {
    Sql(&'static str),
    Rust(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// The identity database (attached as `ident`), migrated the same way. It
/// is a separate file so that applying a two-million-row snapshot never
/// holds the lock the decision loop needs to record events.
pub(crate) const IDENTITY_MIGRATIONS: &[Step] = &[
    // 1: people, credentials and watchlist by keyed hash, pass revocations,
    //    the synced version.
    Step::Sql(
        "CREATE TABLE ident.identity_state (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        version       INTEGER NOT NULL,
        synced_at_ms  INTEGER
     );
     INSERT INTO ident.identity_state (id, version) VALUES (1, 0);
     CREATE TABLE ident.person (
        person_id     TEXT PRIMARY KEY,
        category      TEXT NOT NULL CHECK (category IN ('resident', 'worker', 'visitor')),
        status        TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'blocked')),
        valid_from_ms INTEGER NOT NULL,
        valid_to_ms   INTEGER NOT NULL,
        display_name  TEXT NOT NULL,
        -- unit-separator (0x1f) joined lists; NULL allowed_gates = all gates
        tags          TEXT NOT NULL DEFAULT '',
        allowed_gates TEXT,
        -- 'mask:start:end' entries joined by ';'
        time_windows  TEXT NOT NULL DEFAULT ''
     );
     -- key = HMAC-SHA256(site key, kind || 0x00 || value): never the value itself.
     CREATE TABLE ident.credential (
        kind       TEXT NOT NULL,
        key        BLOB NOT NULL CHECK (length(key) = 32),
        person_id  TEXT NOT NULL,
        PRIMARY KEY (kind, key)
     ) WITHOUT ROWID;
     CREATE INDEX ident.credential_person ON credential (person_id);
     CREATE TABLE ident.watchlist (
        kind       TEXT NOT NULL,
        key        BLOB NOT NULL CHECK (length(key) = 32),
        PRIMARY KEY (kind, key)
     ) WITHOUT ROWID;
     CREATE TABLE ident.pass_revoked (
        pass_id TEXT PRIMARY KEY
     );",
    ),
    // 2: health records, versioned like identity deltas.
    Step::Sql(
        "CREATE TABLE ident.health_state (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        version      INTEGER NOT NULL,
        synced_at_ms INTEGER
     );
     INSERT INTO ident.health_state (id, version) VALUES (1, 0);
     CREATE TABLE ident.health (
        person_id         TEXT PRIMARY KEY,
        colour            TEXT NOT NULL,
        nat_positive      INTEGER,
        nat_sampled_at_ms INTEGER,
        vaccine_doses     INTEGER NOT NULL,
        last_dose_at_ms   INTEGER,
        travel_risk       INTEGER NOT NULL,
        risk_areas        TEXT NOT NULL,
        assessed_at_ms    INTEGER NOT NULL,
        expires_at_ms     INTEGER NOT NULL
     ) WITHOUT ROWID;",
    ),
    // 3: names were stored in clear until now; only the masked form is
    //    kept from here on (`Store::open` then vacuums the file, so no
    //    free page keeps an old name).
    Step::Rust(mask_stored_names),
    // 4: each person row lists its credentials, so that a delta finds them
    //    without an index on `credential.person_id`, and a snapshot can build
    //    its tables in key order in short transactions (`snapshot`).
    Step::Rust(list_credentials_on_person_rows),
];

/// The index of the identity migration that masks the names stored before.
pub(crate) const IDENTITY_NAMES_MASKED: i64 = 3;

/// Masks `display_name` in the live table, and in a snapshot being staged
/// or a previous table not yet dropped, if there are any.
fn mask_stored_names(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    for table in ["person", "person_next", "person_old"] {
        let exists =
            tx.prepare("SELECT 1 FROM ident.sqlite_schema WHERE type = 'table' AND name = ?1")?.exists([table])?;
        if !exists {
            continue;
        }
        let rows: Vec<(i64, String)> = tx
            .prepare(&format!("SELECT rowid, display_name FROM ident.{table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = tx.prepare(&format!("UPDATE ident.{table} SET display_name = ?1 WHERE rowid = ?2"))?;
        for (rowid, name) in rows {
            let masked = gate_core::mask_name(&name);
            if masked != name {
                update.execute(rusqlite::params![masked, rowid])?;
            }
        }
    }
    Ok(())
}

/// Adds `person.credential_keys` and fills it from the credential table,
/// drops the index of credentials by person (named `credential_person`, or
/// after a snapshot `credential_person_v<version>`), and discards a snapshot
/// being staged: its staging table has no such column, and the gate asks the
/// platform for the snapshot again when its chunks stop coming.
fn list_credentials_on_person_rows(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE ident.person ADD COLUMN credential_keys BLOB NOT NULL DEFAULT x''")?;
    {
        let mut update = tx.prepare("UPDATE ident.person SET credential_keys = ?1 WHERE person_id = ?2")?;
        let mut select = tx.prepare("SELECT person_id, kind, key FROM ident.credential ORDER BY person_id")?;
        let mut rows = select.query([])?;
        let mut current: Option<(String, Vec<u8>)> = None;
        while let Some(row) = rows.next()? {
            let (person_id, kind, key): (String, String, Vec<u8>) = (row.get(0)?, row.get(1)?, row.get(2)?);
            if current.as_ref().is_some_and(|(id, _)| *id != person_id)
                && let Some((id, listed)) = current.take()
            {
                update.execute(rusqlite::params![listed, id])?;
            }
            let (_, listed) = current.get_or_insert_with(|| (person_id, Vec::new()));
            crate::identity::list_credential(listed, &kind, &key);
        }
        if let Some((id, listed)) = current {
            update.execute(rusqlite::params![listed, id])?;
        }
    }
    let by_person: Vec<String> = tx
        .prepare(
            "SELECT name FROM ident.sqlite_schema
             WHERE type = 'index' AND tbl_name = 'credential' AND name LIKE 'credential_person%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for name in by_person {
        tx.execute_batch(&format!("DROP INDEX ident.\"{name}\""))?;
    }
    tx.execute_batch(
        "DROP TABLE IF EXISTS ident.person_next;
         DROP TABLE IF EXISTS ident.credential_next;
         DROP TABLE IF EXISTS ident.watchlist_next;
         DROP TABLE IF EXISTS ident.revoked_next;
         DROP TABLE IF EXISTS ident.snapshot_progress;
         DROP TABLE IF EXISTS ident.snapshot_chunk;",
    )
}

/// What the migrations did that the caller finishes outside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// Names stored in clear were masked just now: the identity file still
    /// has them in free pages and its write-ahead log until a vacuum.
    pub names_masked: bool,
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<Migrated, MigrateError> {
    let main: Vec<Step> = MAIN_MIGRATIONS.iter().map(|sql| Step::Sql(sql)).collect();
    migrate_schema(conn, "main", &main)?;
    let (from, to) = migrate_schema(conn, "ident", IDENTITY_MIGRATIONS)?;
    // A fresh database (from 0) never held a name in clear.
    Ok(Migrated { names_masked: from > 0 && from < IDENTITY_NAMES_MASKED && to >= IDENTITY_NAMES_MASKED })
}

/// Applies the missing steps, each in its own transaction; the versions
/// before and after.
fn migrate_schema(conn: &mut Connection, schema: &str, migrations: &[Step]) -> Result<(i64, i64), MigrateError> {
    let found: i64 = conn.pragma_query_value(Some(schema), "user_version", |r| r.get(0))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(MigrateError::TooNew { found, supported });
    }
    for (index, step) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql)?,
            Step::Rust(apply) => apply(&tx)?,
        }
        tx.pragma_update(Some(schema), "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok((found, supported))
}
