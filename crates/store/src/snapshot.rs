//! Full identity snapshots from the platform: staged chunk by chunk, then
//! switched in atomically.
//!
//! Chunks are appended to index-less staging tables (`ident.person_next`,
//! `credential_next`, `watchlist_next`, `revoked_next`), one short transaction
//! per chunk, with the chunks received so far in `ident.snapshot_chunk`. When
//! the last chunk arrives, unique indexes are built on the staged tables (a
//! sorted build, far cheaper than two million random-key B-tree inserts),
//! then one transaction renames the live tables away, renames the staged ones
//! into place and sets the synced version. Readers on other connections keep
//! reading the old tables until that commit (WAL), so lookups never wait and
//! never see half a snapshot.
//!
//! After the first snapshot the live tables are rowid tables with unique
//! indexes instead of the primary keys the first migration created (index
//! names carry the version; CHECKs are spelled with OR, same meaning): the
//! queries, the `ON CONFLICT` upserts of deltas and the constraints work the
//! same on both layouts. Copying the staged rows into primary-key tables
//! instead took three times as long in a 2,000,000-row trial; the price is
//! one more B-tree descent per lookup (p99 still about 30 µs at 2,000,000).

use crate::identity::{encode_gates, encode_list, encode_windows};
use crate::{NewPerson, Result, Store, StoreError};
use gate_core::{CredentialKind, UnixMillis};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

/// One chunk of a full snapshot, already checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotChunk {
    pub version: u64,
    pub chunk_index: u32,
    pub chunk_count: u32,
    pub people: Vec<NewPerson>,
    pub watchlist: Vec<(CredentialKind, [u8; 32])>,
    pub revoked_passes: Vec<String>,
}

/// What staging one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Kept; `received` of `of` chunks of this version are staged.
    Staged { received: u32, of: u32 },
    /// That was the last chunk: the snapshot is now the live table.
    Activated { version: u64 },
    /// This chunk was staged before, or its version is already live: nothing changed.
    Duplicate,
    /// Older than the live table or than the snapshot being staged: ignored.
    Stale,
}

/// The snapshot being staged, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotProgress {
    pub version: u64,
    pub chunk_count: u32,
    pub received: u32,
    pub started_ms: UnixMillis,
    /// The last chunk staged, or the last resync asked for it.
    pub last_activity_ms: UnixMillis,
}

/// Bookkeeping tables, created on first use.
const BOOKKEEPING: &str = "
    CREATE TABLE IF NOT EXISTS ident.snapshot_progress (
        id               INTEGER PRIMARY KEY CHECK (id = 1),
        version          INTEGER NOT NULL,
        chunk_count      INTEGER NOT NULL,
        started_ms       INTEGER NOT NULL,
        last_activity_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ident.snapshot_chunk (
        version     INTEGER NOT NULL,
        chunk_index INTEGER NOT NULL,
        PRIMARY KEY (version, chunk_index)
    ) WITHOUT ROWID;";

/// The staging tables: the live columns and CHECKs, no key and no index, so
/// that appending stays sequential. The CHECKs say `a OR b OR c` rather than
/// `IN (a, b, c)`, which SQLite evaluates by building a temporary table for
/// every row inserted (a tenth of the staging time at two million rows).
const STAGING: &str = "
    DROP TABLE IF EXISTS ident.person_next;
    DROP TABLE IF EXISTS ident.credential_next;
    DROP TABLE IF EXISTS ident.watchlist_next;
    DROP TABLE IF EXISTS ident.revoked_next;
    CREATE TABLE ident.person_next (
        person_id     TEXT NOT NULL,
        category      TEXT NOT NULL
                      CHECK (category = 'resident' OR category = 'worker' OR category = 'visitor'),
        status        TEXT NOT NULL CHECK (status = 'active' OR status = 'suspended' OR status = 'blocked'),
        valid_from_ms INTEGER NOT NULL,
        valid_to_ms   INTEGER NOT NULL,
        display_name  TEXT NOT NULL,
        tags          TEXT NOT NULL DEFAULT '',
        allowed_gates TEXT,
        time_windows  TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE ident.credential_next (
        kind      TEXT NOT NULL,
        key       BLOB NOT NULL CHECK (length(key) = 32),
        person_id TEXT NOT NULL
    );
    CREATE TABLE ident.watchlist_next (
        kind TEXT NOT NULL,
        key  BLOB NOT NULL CHECK (length(key) = 32)
    );
    CREATE TABLE ident.revoked_next (
        pass_id TEXT NOT NULL
    );";

/// Staged table → live table.
const SWAP: [(&str, &str); 4] = [
    ("person_next", "person"),
    ("credential_next", "credential"),
    ("watchlist_next", "watchlist"),
    ("revoked_next", "pass_revoked"),
];

/// Indexes the live tables need: (table, name stem, columns, unique). Names
/// carry the version, since an index cannot be renamed and the live table's
/// indexes exist while the next ones are built.
const INDEXES: [(&str, &str, &str, bool); 5] = [
    ("person_next", "person_id", "person_id", true),
    ("credential_next", "credential_key", "kind, key", true),
    ("credential_next", "credential_person", "person_id", false),
    ("watchlist_next", "watchlist_key", "kind, key", true),
    ("revoked_next", "pass_revoked_id", "pass_id", true),
];

fn wrapper(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Sqlite { path: path.clone(), source }
}

fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM ident.sqlite_schema WHERE type = 'table' AND name = ?1")?.exists([name])
}

/// Takes the identity database's write lock as the transaction's first
/// statement. A deferred transaction that read first could not upgrade if
/// another connection wrote meanwhile; `BEGIN IMMEDIATE` would also lock the
/// main database, which the decision loop needs to record events.
fn lock_ident(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("UPDATE ident.identity_state SET version = version WHERE id = 1", []).map(drop)
}

/// Runs `f` with `ident.synchronous = NORMAL`: a staging lost to a power cut
/// only means a resync, and skipping an fsync per chunk keeps the disk free
/// for the decision loop's durable commits.
fn relaxed<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    conn.pragma_update(Some("ident"), "synchronous", "NORMAL")?;
    let result = f(conn);
    let restored = conn.pragma_update(Some("ident"), "synchronous", "FULL");
    let value = result?;
    restored?;
    Ok(value)
}

impl Store {
    /// Stages one snapshot chunk in its own transaction; the chunk that
    /// completes the snapshot also switches it in. A chunk received twice
    /// changes nothing; a chunk of a newer version than the one staging
    /// discards that staging; an older one is ignored.
    pub fn stage_snapshot_chunk(&mut self, chunk: &SnapshotChunk, now_ms: UnixMillis) -> Result<SnapshotOutcome> {
        let wrap = wrapper(&self.path);
        let staged = relaxed(&mut self.conn, |conn| stage(conn, chunk, now_ms)).map_err(&wrap)?;
        match staged {
            Staged::Outcome(outcome) => Ok(outcome),
            // `CompleteBefore`: complete, but the switch did not finish (a
            // crash, an error): a repeated chunk is the moment to finish it.
            Staged::Complete | Staged::CompleteBefore => Ok(if self.activate(chunk.version, now_ms)? {
                SnapshotOutcome::Activated { version: chunk.version }
            } else {
                SnapshotOutcome::Stale
            }),
        }
    }

    /// The snapshot being staged, if any (for the missing-chunk timeout).
    pub fn snapshot_progress(&self) -> Result<Option<SnapshotProgress>> {
        progress(&self.conn).map_err(wrapper(&self.path))
    }

    /// Records that a resync was asked for the staging snapshot, so that the
    /// missing-chunk timeout starts again instead of asking on every check.
    pub fn note_snapshot_resync(&mut self, now_ms: UnixMillis) -> Result<()> {
        let wrap = wrapper(&self.path);
        if !table_exists(&self.conn, "snapshot_progress").map_err(&wrap)? {
            return Ok(());
        }
        self.conn
            .execute("UPDATE ident.snapshot_progress SET last_activity_ms = ?1 WHERE id = 1", [now_ms])
            .map(drop)
            .map_err(wrap)
    }

    /// Drops the snapshot being staged, if any.
    pub fn discard_snapshot(&mut self) -> Result<()> {
        let wrap = wrapper(&self.path);
        let tx = self.conn.transaction().map_err(&wrap)?;
        lock_ident(&tx).map_err(&wrap)?;
        if table_exists(&tx, "snapshot_progress").map_err(&wrap)? {
            tx.execute_batch(
                "DELETE FROM ident.snapshot_progress;
                 DELETE FROM ident.snapshot_chunk;
                 DROP TABLE IF EXISTS ident.person_next;
                 DROP TABLE IF EXISTS ident.credential_next;
                 DROP TABLE IF EXISTS ident.watchlist_next;
                 DROP TABLE IF EXISTS ident.revoked_next;",
            )
            .map_err(&wrap)?;
        }
        tx.commit().map_err(wrap)
    }

    /// Indexes the complete staging, then switches it in with one commit.
    /// False when there was nothing to switch any more.
    fn activate(&mut self, version: u64, now_ms: UnixMillis) -> Result<bool> {
        let wrap = wrapper(&self.path);
        relaxed(&mut self.conn, |conn| build_indexes(conn, version)).map_err(&wrap)?;
        // Leftovers of a switch interrupted after its commit.
        relaxed(&mut self.conn, drop_old).map_err(&wrap)?;
        let tx = self.conn.transaction().map_err(&wrap)?;
        lock_ident(&tx).map_err(&wrap)?;
        let still_complete =
            progress(&tx).map_err(&wrap)?.is_some_and(|p| p.version == version && p.received == p.chunk_count);
        let live: i64 =
            tx.query_row("SELECT version FROM ident.identity_state WHERE id = 1", [], |r| r.get(0)).map_err(&wrap)?;
        if !still_complete || live as u64 >= version {
            // Replaced by another staging, or overtaken by deltas (another
            // connection's): switching would go back in time.
            return Ok(false);
        }
        // Legacy renames leave references from other tables, triggers and
        // views naming `person` (and so on) alone: after the switch they mean
        // the new table, as they should.
        tx.pragma_update(None, "legacy_alter_table", true).map_err(&wrap)?;
        for (next, live) in SWAP {
            tx.execute_batch(&format!(
                "ALTER TABLE ident.{live} RENAME TO {live}_old;
                 ALTER TABLE ident.{next} RENAME TO {live};"
            ))
            .map_err(&wrap)?;
        }
        tx.pragma_update(None, "legacy_alter_table", false).map_err(&wrap)?;
        tx.execute(
            "UPDATE ident.identity_state SET version = ?1, synced_at_ms = ?2 WHERE id = 1",
            params![version as i64, now_ms],
        )
        .map_err(&wrap)?;
        tx.execute_batch("DELETE FROM ident.snapshot_progress; DELETE FROM ident.snapshot_chunk;").map_err(&wrap)?;
        // `ident.synchronous` is FULL here: the switch itself is durable.
        tx.commit().map_err(&wrap)?;
        // Freeing the old pages takes a while at two million rows; readers
        // already see the new tables, and the pages serve the next staging.
        relaxed(&mut self.conn, drop_old).map_err(&wrap)?;
        // People the snapshot dropped take their health records with them.
        self.conn
            .execute("DELETE FROM ident.health WHERE person_id NOT IN (SELECT person_id FROM ident.person)", [])
            .map_err(wrap)?;
        Ok(true)
    }
}

enum Staged {
    Outcome(SnapshotOutcome),
    /// This chunk completed the staging.
    Complete,
    /// A repeated chunk of a staging that was complete already.
    CompleteBefore,
}

fn progress(conn: &Connection) -> rusqlite::Result<Option<SnapshotProgress>> {
    if !table_exists(conn, "snapshot_progress")? {
        return Ok(None);
    }
    conn.query_row(
        "SELECT p.version, p.chunk_count, p.started_ms, p.last_activity_ms,
                (SELECT count(*) FROM ident.snapshot_chunk c WHERE c.version = p.version)
         FROM ident.snapshot_progress p WHERE p.id = 1",
        [],
        |r| {
            Ok(SnapshotProgress {
                version: r.get::<_, i64>(0)? as u64,
                chunk_count: r.get(1)?,
                started_ms: r.get(2)?,
                last_activity_ms: r.get(3)?,
                received: r.get(4)?,
            })
        },
    )
    .optional()
}

fn stage(conn: &mut Connection, chunk: &SnapshotChunk, now_ms: UnixMillis) -> rusqlite::Result<Staged> {
    let tx = conn.transaction()?;
    lock_ident(&tx)?;
    let live: i64 = tx.query_row("SELECT version FROM ident.identity_state WHERE id = 1", [], |r| r.get(0))?;
    let live = live as u64;
    if chunk.version == live {
        return Ok(Staged::Outcome(SnapshotOutcome::Duplicate));
    }
    if chunk.version < live {
        return Ok(Staged::Outcome(SnapshotOutcome::Stale));
    }
    tx.execute_batch(BOOKKEEPING)?;
    let current = progress(&tx)?;
    match current {
        Some(p) if chunk.version < p.version => return Ok(Staged::Outcome(SnapshotOutcome::Stale)),
        Some(p) if chunk.version == p.version && chunk.chunk_count == p.chunk_count => {
            let seen = tx
                .prepare_cached("SELECT 1 FROM ident.snapshot_chunk WHERE version = ?1 AND chunk_index = ?2")?
                .exists(params![chunk.version as i64, chunk.chunk_index])?;
            if seen {
                return Ok(if p.received == p.chunk_count {
                    Staged::CompleteBefore
                } else {
                    Staged::Outcome(SnapshotOutcome::Duplicate)
                });
            }
        }
        // Nothing staging, a newer version, or the same version cut into a
        // different number of chunks (the same content, so starting over is
        // safe, and mixing two cuts could never complete).
        _ => {
            tx.execute_batch(STAGING)?;
            tx.execute("DELETE FROM ident.snapshot_chunk", [])?;
            tx.execute(
                "INSERT INTO ident.snapshot_progress (id, version, chunk_count, started_ms, last_activity_ms)
                 VALUES (1, ?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, chunk_count = excluded.chunk_count,
                   started_ms = excluded.started_ms, last_activity_ms = excluded.last_activity_ms",
                params![chunk.version as i64, chunk.chunk_count, now_ms],
            )?;
        }
    }
    append_rows(&tx, chunk)?;
    tx.execute(
        "INSERT INTO ident.snapshot_chunk (version, chunk_index) VALUES (?1, ?2)",
        params![chunk.version as i64, chunk.chunk_index],
    )?;
    tx.execute("UPDATE ident.snapshot_progress SET last_activity_ms = ?1 WHERE id = 1", [now_ms])?;
    let received: u32 =
        tx.query_row("SELECT count(*) FROM ident.snapshot_chunk WHERE version = ?1", [chunk.version as i64], |r| {
            r.get(0)
        })?;
    tx.commit()?;
    Ok(if received >= chunk.chunk_count {
        Staged::Complete
    } else {
        Staged::Outcome(SnapshotOutcome::Staged { received, of: chunk.chunk_count })
    })
}

fn append_rows(tx: &Connection, chunk: &SnapshotChunk) -> rusqlite::Result<()> {
    let mut person = tx.prepare_cached(
        "INSERT INTO ident.person_next (person_id, category, status, valid_from_ms, valid_to_ms, display_name,
                                        tags, allowed_gates, time_windows)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut credential =
        tx.prepare_cached("INSERT INTO ident.credential_next (kind, key, person_id) VALUES (?1, ?2, ?3)")?;
    for new in &chunk.people {
        let p = &new.person;
        person.execute(params![
            p.person_id,
            p.category.as_str(),
            p.status.as_str(),
            p.valid_from_ms,
            p.valid_to_ms,
            gate_core::mask_name(&p.display_name),
            encode_list(&p.tags),
            encode_gates(&p.allowed_gates),
            encode_windows(&p.time_windows),
        ])?;
        for (kind, key) in &new.credentials {
            credential.execute(params![kind.as_str(), &key[..], p.person_id])?;
        }
    }
    let mut watch = tx.prepare_cached("INSERT INTO ident.watchlist_next (kind, key) VALUES (?1, ?2)")?;
    for (kind, key) in &chunk.watchlist {
        watch.execute(params![kind.as_str(), &key[..]])?;
    }
    let mut revoked = tx.prepare_cached("INSERT INTO ident.revoked_next (pass_id) VALUES (?1)")?;
    for pass_id in &chunk.revoked_passes {
        revoked.execute([pass_id])?;
    }
    Ok(())
}

/// Builds the live indexes on the staged tables, each in its own
/// transaction (only the identity database is locked; readers go on). A
/// snapshot that names the same key twice keeps the last one, as a delta
/// would: duplicates are removed only when the unique build fails, so the
/// usual case pays nothing for them.
fn build_indexes(conn: &Connection, version: u64) -> rusqlite::Result<()> {
    for (table, stem, columns, unique) in INDEXES {
        let create = format!(
            "CREATE {} INDEX IF NOT EXISTS ident.{stem}_v{version} ON {table} ({columns})",
            if unique { "UNIQUE" } else { "" }
        );
        match conn.execute(&create, []) {
            Err(rusqlite::Error::SqliteFailure(e, _)) if unique && e.code == ErrorCode::ConstraintViolation => {
                conn.execute(
                    &format!(
                        "DELETE FROM ident.{table} WHERE rowid NOT IN
                           (SELECT max(rowid) FROM ident.{table} GROUP BY {columns})"
                    ),
                    [],
                )?;
                conn.execute(&create, [])?;
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}

fn drop_old(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    lock_ident(&tx)?;
    for (_, live) in SWAP {
        tx.execute(&format!("DROP TABLE IF EXISTS ident.{live}_old"), [])?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityDelta;
    use gate_core::{Category, PersonRecord, PersonStatus};

    fn person(id: &str, key: u8) -> NewPerson {
        let mut person = PersonRecord::new(id, Category::Resident, PersonStatus::Active, 0, i64::MAX);
        person.display_name = "张三".into();
        NewPerson { person, credentials: vec![(CredentialKind::IdNumber, [key; 32])] }
    }

    fn chunk(version: u64, chunk_index: u32, chunk_count: u32, keys: &[u8]) -> SnapshotChunk {
        SnapshotChunk {
            version,
            chunk_index,
            chunk_count,
            people: keys.iter().map(|k| person(&format!("p{k}"), *k)).collect(),
            watchlist: vec![(CredentialKind::IdNumber, [200 + chunk_index as u8; 32])],
            revoked_passes: vec![format!("vp-{version}-{chunk_index}")],
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("g.db")).expect("open");
        (dir, store)
    }

    fn found(store: &Store, key: u8) -> Option<String> {
        store.find_person_by_credential(CredentialKind::IdNumber, &[key; 32]).expect("lookup").map(|p| p.person_id)
    }

    #[test]
    fn chunks_out_of_order_switch_in_when_complete() {
        let (_dir, mut store) = open();
        store.import_people(&[person("old", 99)]).expect("import");
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(5, 2, 3, &[5, 6]), 10).expect("stage"),
            SnapshotOutcome::Staged { received: 1, of: 3 }
        );
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(5, 0, 3, &[1, 2]), 11).expect("stage"),
            SnapshotOutcome::Staged { received: 2, of: 3 }
        );
        let progress = store.snapshot_progress().expect("progress").expect("staging");
        assert_eq!((progress.version, progress.received, progress.chunk_count), (5, 2, 3));
        assert_eq!((progress.started_ms, progress.last_activity_ms), (10, 11));
        assert_eq!(found(&store, 1), None, "nothing live before the last chunk");
        assert_eq!(found(&store, 99).as_deref(), Some("old"));
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(5, 1, 3, &[3, 4]), 12).expect("stage"),
            SnapshotOutcome::Activated { version: 5 }
        );
        assert_eq!(store.identity_state().expect("state"), crate::IdentityState { version: 5, synced_at_ms: Some(12) });
        assert_eq!(store.person_count().expect("count"), 6);
        assert_eq!(found(&store, 4).as_deref(), Some("p4"));
        assert_eq!(found(&store, 99), None, "the snapshot replaced the table");
        assert!(store.is_watchlisted(CredentialKind::IdNumber, &[201; 32]).expect("watch"));
        assert!(store.is_pass_revoked("vp-5-2").expect("revoked"));
        assert_eq!(store.find_person("p6").expect("find").map(|p| p.display_name).as_deref(), Some("张*"));
        assert_eq!(store.snapshot_progress().expect("progress"), None);
        // Every chunk again: the live version, nothing changes.
        for i in 0..3 {
            assert_eq!(
                store.stage_snapshot_chunk(&chunk(5, i, 3, &[7]), 13).expect("stage"),
                SnapshotOutcome::Duplicate
            );
        }
        assert_eq!(store.person_count().expect("count"), 6);
        assert_eq!(store.snapshot_progress().expect("progress"), None);
    }

    #[test]
    fn a_chunk_received_twice_is_staged_once() {
        let (_dir, mut store) = open();
        let first = chunk(3, 0, 2, &[1, 2]);
        assert_eq!(
            store.stage_snapshot_chunk(&first, 1).expect("stage"),
            SnapshotOutcome::Staged { received: 1, of: 2 }
        );
        assert_eq!(store.stage_snapshot_chunk(&first, 2).expect("stage"), SnapshotOutcome::Duplicate);
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(3, 1, 2, &[3]), 3).expect("stage"),
            SnapshotOutcome::Activated { version: 3 }
        );
        assert_eq!(store.person_count().expect("count"), 3, "no person twice");
    }

    #[test]
    fn older_versions_are_ignored_and_newer_ones_replace_the_staging() {
        let (_dir, mut store) = open();
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(4, 0, 2, &[1]), 1).expect("stage"),
            SnapshotOutcome::Staged { received: 1, of: 2 }
        );
        assert_eq!(store.stage_snapshot_chunk(&chunk(3, 1, 2, &[2]), 2).expect("stage"), SnapshotOutcome::Stale);
        // A newer version starts over: chunk 0 of version 4 does not count.
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(6, 1, 2, &[3]), 3).expect("stage"),
            SnapshotOutcome::Staged { received: 1, of: 2 }
        );
        assert_eq!(store.stage_snapshot_chunk(&chunk(4, 1, 2, &[2]), 4).expect("stage"), SnapshotOutcome::Stale);
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(6, 0, 2, &[4]), 5).expect("stage"),
            SnapshotOutcome::Activated { version: 6 }
        );
        assert_eq!(found(&store, 1), None, "version 4's chunk was discarded");
        assert_eq!((found(&store, 3).as_deref(), found(&store, 4).as_deref()), (Some("p3"), Some("p4")));
        assert_eq!(store.stage_snapshot_chunk(&chunk(5, 0, 1, &[9]), 6).expect("stage"), SnapshotOutcome::Stale);
        assert_eq!(store.person_count().expect("count"), 2);
    }

    #[test]
    fn the_same_version_recut_starts_over() {
        let (_dir, mut store) = open();
        store.stage_snapshot_chunk(&chunk(2, 0, 3, &[1]), 1).expect("stage");
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(2, 0, 1, &[1, 2]), 2).expect("stage"),
            SnapshotOutcome::Activated { version: 2 }
        );
        assert_eq!(store.person_count().expect("count"), 2);
    }

    #[test]
    fn duplicate_keys_in_a_snapshot_keep_the_last() {
        let (_dir, mut store) = open();
        let mut last = chunk(1, 1, 2, &[]);
        last.people = vec![person("p1", 1), person("p2", 1)];
        last.watchlist.push((CredentialKind::IdNumber, [200; 32]));
        store.stage_snapshot_chunk(&chunk(1, 0, 2, &[1]), 1).expect("stage");
        assert_eq!(store.stage_snapshot_chunk(&last, 2).expect("stage"), SnapshotOutcome::Activated { version: 1 });
        assert_eq!(store.person_count().expect("count"), 2);
        assert_eq!(found(&store, 1).as_deref(), Some("p2"));
        assert!(store.is_watchlisted(CredentialKind::IdNumber, &[200; 32]).expect("watch"));
    }

    #[test]
    fn deltas_and_second_snapshots_work_on_switched_tables() {
        let (_dir, mut store) = open();
        store.stage_snapshot_chunk(&chunk(1, 0, 1, &[1, 2]), 1).expect("stage");
        let mut changed = person("p1", 11);
        changed.person.status = PersonStatus::Suspended;
        let delta = IdentityDelta {
            from_version: 1,
            to_version: 2,
            upserts: vec![changed, person("p3", 3)],
            deletes: vec!["p2".into()],
            watch_add: vec![(CredentialKind::Plate, [7; 32])],
            revoke_passes: vec!["vp-1-0".into(), "vp-x".into()],
            ..Default::default()
        };
        assert_eq!(store.apply_delta(&delta, 2).expect("delta"), crate::DeltaOutcome::Applied);
        assert_eq!(found(&store, 1), None, "the upsert replaced p1's credentials");
        assert_eq!(
            store.find_person_by_credential(CredentialKind::IdNumber, &[11; 32]).expect("q").map(|p| p.status),
            Some(PersonStatus::Suspended)
        );
        assert_eq!((found(&store, 2), found(&store, 3).as_deref()), (None, Some("p3")));
        assert!(store.is_watchlisted(CredentialKind::Plate, &[7; 32]).expect("watch"));
        assert!(store.is_pass_revoked("vp-x").expect("revoked"));
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(9, 0, 1, &[5]), 3).expect("stage"),
            SnapshotOutcome::Activated { version: 9 }
        );
        assert_eq!(store.person_count().expect("count"), 1);
        assert!(!store.is_pass_revoked("vp-x").expect("revoked"));
    }

    #[test]
    fn a_second_connection_sees_the_old_table_until_the_switch() {
        let (dir, mut store) = open();
        store.import_people(&[person("old", 99)]).expect("import");
        let reader = Store::open(&dir.path().join("g.db")).expect("second connection");
        assert_eq!(found(&reader, 99).as_deref(), Some("old"));
        store.stage_snapshot_chunk(&chunk(7, 0, 2, &[1]), 1).expect("stage");
        assert_eq!((found(&reader, 99).as_deref(), found(&reader, 1)), (Some("old"), None));
        assert_eq!(reader.identity_state().expect("state").version, 0);
        store.stage_snapshot_chunk(&chunk(7, 1, 2, &[2]), 2).expect("stage");
        assert_eq!((found(&reader, 99), found(&reader, 1).as_deref()), (None, Some("p1")));
        assert_eq!(reader.identity_state().expect("state").version, 7);
        assert_eq!(reader.person_count().expect("count"), 2);
    }

    #[test]
    fn a_reader_in_a_transaction_keeps_its_snapshot_across_the_switch() {
        let (dir, mut store) = open();
        store.import_people(&[person("old", 99)]).expect("import");
        let reader = Store::open(&dir.path().join("g.db")).expect("second connection");
        reader.conn.execute_batch("BEGIN; SELECT count(*) FROM ident.person;").expect("read transaction");
        store.stage_snapshot_chunk(&chunk(7, 0, 1, &[1]), 1).expect("stage");
        assert_eq!((found(&reader, 99).as_deref(), found(&reader, 1)), (Some("old"), None), "never half a switch");
        reader.conn.execute_batch("COMMIT").expect("end");
        assert_eq!((found(&reader, 99), found(&reader, 1).as_deref()), (None, Some("p1")));
    }

    #[test]
    fn progress_resync_note_and_discard() {
        let (_dir, mut store) = open();
        assert_eq!(store.snapshot_progress().expect("progress"), None);
        store.note_snapshot_resync(5).expect("note without staging");
        store.stage_snapshot_chunk(&chunk(2, 1, 4, &[1]), 10).expect("stage");
        store.note_snapshot_resync(70).expect("note");
        let p = store.snapshot_progress().expect("progress").expect("staging");
        assert_eq!((p.received, p.started_ms, p.last_activity_ms), (1, 10, 70));
        store.discard_snapshot().expect("discard");
        assert_eq!(store.snapshot_progress().expect("progress"), None);
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(2, 1, 4, &[1]), 80).expect("stage"),
            SnapshotOutcome::Staged { received: 1, of: 4 }
        );
    }

    #[test]
    fn a_snapshot_takes_the_health_records_of_people_it_dropped() {
        use gate_core::{HealthColour, HealthRecord};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("g.db")).expect("open");
        let mut first = NewPerson {
            person: gate_core::PersonRecord::new(
                "kept",
                gate_core::Category::Resident,
                gate_core::PersonStatus::Active,
                0,
                1,
            ),
            credentials: vec![(gate_core::CredentialKind::IdNumber, [1; 32])],
        };
        let gone = NewPerson {
            person: gate_core::PersonRecord::new(
                "gone",
                gate_core::Category::Resident,
                gate_core::PersonStatus::Active,
                0,
                1,
            ),
            credentials: vec![(gate_core::CredentialKind::IdNumber, [2; 32])],
        };
        store.import_people(&[first.clone(), gone]).expect("import");
        for id in ["kept", "gone"] {
            store
                .put_health_record(&HealthRecord {
                    person_id: id.into(),
                    colour: HealthColour::Green,
                    nat: None,
                    vaccine_doses: 0,
                    last_dose_at_ms: None,
                    travel_risk: false,
                    risk_areas: vec![],
                    assessed_at_ms: 0,
                    expires_at_ms: 1,
                })
                .expect("health");
        }
        first.person.display_name = "still here".into();
        let chunk =
            SnapshotChunk { version: 1, chunk_index: 0, chunk_count: 1, people: vec![first], ..Default::default() };
        assert_eq!(store.stage_snapshot_chunk(&chunk, 5).expect("stage"), SnapshotOutcome::Activated { version: 1 });
        assert!(store.health_record("kept").expect("read").is_some());
        assert_eq!(store.health_record("gone").expect("read"), None);
    }
}
