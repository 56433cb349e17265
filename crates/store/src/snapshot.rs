//! Full identity snapshots from the platform: staged chunk by chunk, built
//! in key order, switched in atomically, and what they replaced freed.
//!
//! The live tables a snapshot builds are `WITHOUT ROWID` tables keyed as
//! they are looked up (`person` by id, `credential` and `watchlist` by kind
//! and keyed hash, `pass_revoked` by pass id): one B-tree each, appended to
//! in key order. People arrive in the order of their id (the platform sends
//! them so), and go straight into `person_built`; the other rows are
//! appended to index-less staging tables (`credential_next`, ...) and
//! copied into their built tables in key order once the last chunk is in,
//! through a temporary copy sorted by key. The chunks
//! received so far are in `ident.snapshot_chunk`. Then one transaction
//! renames the live tables away, renames the built ones into place and sets
//! the synced version. Readers on other connections keep reading the old
//! tables until that commit (WAL), so lookups never wait and never see half
//! a snapshot. Behind the switch, `free_replaced_identity_tables` empties
//! the old and the staged tables (their freed pages zeroed,
//! `secure_delete`) and drops them.
//!
//! Every step goes a batch at a time: a few hundred rows, about a hundred
//! kilobytes of log, per transaction, each made durable by its own fsync,
//! and the log checkpointed every `SNAPSHOT_CHECKPOINT_PAGES`. The card
//! path's commit waits on the same disk, and a flush waits for whatever was
//! written before it: an index built by one `CREATE INDEX` over two million
//! rows put a hundred megabytes through the log in one commit, and a card
//! that came while its checkpoint flushed waited 35-156 ms. Paced, a
//! snapshot takes about twice as long as a bare bulk insert of its rows
//! (it took about as long), and a card meets at most a batch on the disk.
//! The clean-up, which nothing waits for, pauses between its batches.
//!
//! A person's credentials are found through the list on their row
//! (`person.credential_keys`), not an index by person, which no copy in key
//! order could append to. Tables of the first migration's layout (a rowid
//! `person`, the index by person, dropped by migration 4) work the same
//! with every query and upsert.

use crate::identity::{person_upsert_sql, upsert_person_row};
use crate::{NewPerson, Result, Store, StoreError};
use gate_core::{CredentialKind, UnixMillis};
use rusqlite::{Connection, OptionalExtension, params};

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

/// The tables a snapshot replaces: built in key order, then switched in.
struct SnapshotTable {
    /// Where chunks are appended as they arrive (a rowid table, no key),
    /// to be copied into `built` in key order once all are in. `None` for
    /// people: the platform sends them in the order of their id, so they go
    /// straight into `built` (into its middle, more slowly, when they do not).
    staged: Option<&'static str>,
    built: &'static str,
    live: &'static str,
    /// The columns and CHECKs, the live ones. The CHECKs say `a OR b OR c`
    /// rather than `IN (a, b, c)`, which SQLite evaluates by building a
    /// temporary table for every row inserted (a tenth of the staging time at
    /// two million rows).
    columns: &'static str,
    /// The built table's primary key (it is `WITHOUT ROWID`: one B-tree,
    /// the rows in key order, no separate index to write).
    key: &'static str,
    /// Rows per transaction, as a multiple of the batch: rows of a few dozen
    /// bytes go four times as many at once as a person's.
    rows_per_batch: usize,
}

const TABLES: [SnapshotTable; 4] = [
    SnapshotTable {
        staged: None,
        built: "person_built",
        live: "person",
        columns: "
            person_id       TEXT NOT NULL,
            category        TEXT NOT NULL
                            CHECK (category = 'resident' OR category = 'worker' OR category = 'visitor'),
            status          TEXT NOT NULL CHECK (status = 'active' OR status = 'suspended' OR status = 'blocked'),
            valid_from_ms   INTEGER NOT NULL,
            valid_to_ms     INTEGER NOT NULL,
            display_name    TEXT NOT NULL,
            tags            TEXT NOT NULL DEFAULT '',
            allowed_gates   TEXT,
            time_windows    TEXT NOT NULL DEFAULT '',
            credential_keys BLOB NOT NULL DEFAULT x''",
        key: "person_id",
        rows_per_batch: 1,
    },
    SnapshotTable {
        staged: Some("credential_next"),
        built: "credential_built",
        live: "credential",
        columns: "
            kind      TEXT NOT NULL,
            key       BLOB NOT NULL CHECK (length(key) = 32),
            person_id TEXT NOT NULL",
        key: "kind, key",
        rows_per_batch: 4,
    },
    SnapshotTable {
        staged: Some("watchlist_next"),
        built: "watchlist_built",
        live: "watchlist",
        columns: "
            kind TEXT NOT NULL,
            key  BLOB NOT NULL CHECK (length(key) = 32)",
        key: "kind, key",
        rows_per_batch: 4,
    },
    SnapshotTable {
        staged: Some("revoked_next"),
        built: "revoked_built",
        live: "pass_revoked",
        columns: "
            pass_id TEXT NOT NULL",
        key: "pass_id",
        rows_per_batch: 4,
    },
];

/// People staged, copied or deleted per transaction (`rows_per_batch` times
/// as many narrower rows): about a hundred kilobytes of log, made durable by
/// that transaction's own fsync, so that a card's commit never queues behind
/// more than that on the disk.
pub(crate) const SNAPSHOT_BATCH_ROWS: usize = 512;

/// The log is copied into the identity file every this many pages while a
/// snapshot is applied (SQLite's default is 1000, four megabytes flushed at
/// once), for the same reason.
const SNAPSHOT_CHECKPOINT_PAGES: i64 = 64;

impl SnapshotTable {
    /// The column names alone, in table order.
    fn column_names(&self) -> Vec<&'static str> {
        self.columns.split(',').filter_map(|definition| definition.split_whitespace().next()).collect()
    }

    fn old(&self) -> String {
        format!("{}_old", self.live)
    }

    /// Where a staging's rows are, while it lasts.
    fn staging(&self) -> &'static str {
        self.staged.unwrap_or(self.built)
    }

    fn batch(&self, batch: usize) -> usize {
        batch * self.rows_per_batch
    }
}

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

/// Runs `f` with the log checkpointed every `SNAPSHOT_CHECKPOINT_PAGES`.
/// `ident.synchronous` stays FULL: every batch's commit flushes its own few
/// hundred kilobytes, where NORMAL would leave them to pile up for the
/// checkpoint to flush at once.
fn paced<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    conn.pragma_update(None, "wal_autocheckpoint", SNAPSHOT_CHECKPOINT_PAGES)?;
    let result = f(conn);
    let restored = conn.pragma_update(None, "wal_autocheckpoint", 1000);
    let value = result?;
    restored?;
    Ok(value)
}

impl Store {
    /// Stages one snapshot chunk; the chunk that completes the snapshot also
    /// switches it in. A chunk received twice changes nothing; a chunk of a
    /// newer version than the one staging discards that staging; an older
    /// one is ignored. After `Activated`, call
    /// `free_replaced_identity_tables`.
    pub fn stage_snapshot_chunk(&mut self, chunk: &SnapshotChunk, now_ms: UnixMillis) -> Result<SnapshotOutcome> {
        let wrap = wrapper(&self.path);
        let staged = paced(&mut self.conn, |conn| stage(conn, chunk, now_ms, SNAPSHOT_BATCH_ROWS)).map_err(&wrap)?;
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
        paced(&mut self.conn, |conn| {
            if table_exists(conn, "snapshot_progress")? {
                conn.execute_batch("DELETE FROM ident.snapshot_progress; DELETE FROM ident.snapshot_chunk;")?;
            }
            for table in &TABLES {
                empty_and_drop(conn, table.staging(), table.key, table.batch(SNAPSHOT_BATCH_ROWS), Pace::Unhurried)?;
            }
            Ok(())
        })
        .map_err(wrap)
    }

    /// Empties and drops what the last switch replaced (the old tables, the
    /// staged ones), a batch at a time, and the health records of people it
    /// dropped. Readers already see the new tables; the freed pages serve the
    /// next staging. Safe to call at any time: without a switch behind it,
    /// it finds nothing to do.
    pub fn free_replaced_identity_tables(&mut self) -> Result<()> {
        let wrap = wrapper(&self.path);
        paced(&mut self.conn, |conn| {
            if progress(conn)?.is_some() {
                // The staged tables are a staging's, not leftovers.
                return Ok(());
            }
            let mut replaced = false;
            for table in &TABLES {
                let batch = table.batch(SNAPSHOT_BATCH_ROWS);
                replaced |= table_exists(conn, &table.old())?;
                empty_and_drop(conn, &table.old(), table.key, batch, Pace::Unhurried)?;
                if let Some(staged) = table.staged {
                    empty_and_drop(conn, staged, table.key, batch, Pace::Unhurried)?;
                }
            }
            if replaced {
                // People the snapshot dropped take their health records with them.
                conn.execute(
                    "DELETE FROM ident.health WHERE person_id NOT IN (SELECT person_id FROM ident.person)",
                    [],
                )?;
            }
            Ok(())
        })
        .map_err(wrap)
    }

    /// Builds the complete staging in key order, then switches it in with
    /// one commit. False when there was nothing to switch any more.
    fn activate(&mut self, version: u64, now_ms: UnixMillis) -> Result<bool> {
        self.activate_in_batches(version, now_ms, SNAPSHOT_BATCH_ROWS)
    }

    /// `activate`, `batch` rows per transaction.
    fn activate_in_batches(&mut self, version: u64, now_ms: UnixMillis, batch: usize) -> Result<bool> {
        let wrap = wrapper(&self.path);
        let started = std::time::Instant::now();
        paced(&mut self.conn, |conn| {
            // Leftovers of a build, or of a switch, that a crash interrupted.
            for table in &TABLES {
                if table.staged.is_some() {
                    empty_and_drop(conn, table.built, table.key, table.batch(batch), Pace::Steady)?;
                }
                empty_and_drop(conn, &table.old(), table.key, table.batch(batch), Pace::Steady)?;
            }
            build_in_key_order(conn, batch)
        })
        .map_err(&wrap)?;
        let tx = self.conn.transaction().map_err(&wrap)?;
        lock_ident(&tx).map_err(&wrap)?;
        let still_complete =
            progress(&tx).map_err(&wrap)?.is_some_and(|p| p.version == version && p.received == p.chunk_count);
        let live: i64 =
            tx.query_row("SELECT version FROM ident.identity_state WHERE id = 1", [], |r| r.get(0)).map_err(&wrap)?;
        if !still_complete || live as u64 >= version {
            // Replaced by another staging, or overtaken by deltas (another
            // connection's): switching would go back in time. The built
            // tables go with the next activation's leftovers.
            return Ok(false);
        }
        // Legacy renames leave references from other tables, triggers and
        // views naming `person` (and so on) alone: after the switch they mean
        // the new table, as they should.
        tx.pragma_update(None, "legacy_alter_table", true).map_err(&wrap)?;
        for table in &TABLES {
            tx.execute_batch(&format!(
                "ALTER TABLE ident.{live} RENAME TO {old};
                 ALTER TABLE ident.{built} RENAME TO {live};",
                live = table.live,
                old = table.old(),
                built = table.built
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
        tx.commit().map_err(&wrap)?;
        tracing::info!(
            version,
            built_ms = started.elapsed().as_millis() as u64,
            "identity snapshot built in key order and switched in"
        );
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

/// What to do with a chunk, decided in one transaction.
enum ChunkPlan {
    Done(Staged),
    Append,
    /// Start a staging: a first chunk, or one that replaces the staging.
    StartOver,
}

fn stage(conn: &mut Connection, chunk: &SnapshotChunk, now_ms: UnixMillis, batch: usize) -> rusqlite::Result<Staged> {
    // Read only: no commit to flush.
    let plan = {
        let tx = conn.transaction()?;
        let plan = plan_chunk(&tx, chunk)?;
        tx.commit()?;
        plan
    };
    match plan {
        ChunkPlan::Done(staged) => return Ok(staged),
        ChunkPlan::Append => {}
        ChunkPlan::StartOver => {
            // The staging this replaces can be two million rows.
            for table in &TABLES {
                empty_and_drop(conn, table.staging(), table.key, table.batch(batch), Pace::Steady)?;
            }
            let tx = conn.transaction()?;
            lock_ident(&tx)?;
            tx.execute_batch(BOOKKEEPING)?;
            create_staging(&tx)?;
            tx.execute("DELETE FROM ident.snapshot_chunk", [])?;
            tx.execute(
                "INSERT INTO ident.snapshot_progress (id, version, chunk_count, started_ms, last_activity_ms)
                 VALUES (1, ?1, ?2, ?3, ?3)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version, chunk_count = excluded.chunk_count,
                   started_ms = excluded.started_ms, last_activity_ms = excluded.last_activity_ms",
                params![chunk.version as i64, chunk.chunk_count, now_ms],
            )?;
            tx.commit()?;
        }
    }
    // The rows, `batch` people a transaction; the last one also records the
    // chunk as received. A crash before it leaves rows of a chunk not
    // recorded, which is received and staged again: the build keeps one row
    // per key.
    let pieces: Vec<Piece<'_>> = chunk
        .people
        .chunks(batch)
        .map(Piece::People)
        .chain(chunk.watchlist.chunks(4 * batch).map(Piece::Watchlist))
        .chain(chunk.revoked_passes.chunks(4 * batch).map(Piece::Revoked))
        .collect();
    let last = pieces.len().saturating_sub(1);
    for (index, piece) in pieces.iter().enumerate() {
        let tx = conn.transaction()?;
        match piece {
            Piece::People(people) => append_people(&tx, people)?,
            Piece::Watchlist(entries) => append_watchlist(&tx, entries)?,
            Piece::Revoked(passes) => append_revoked(&tx, passes)?,
        }
        if index < last {
            tx.commit()?;
            continue;
        }
        let received = record_chunk(&tx, chunk, now_ms)?;
        tx.commit()?;
        return Ok(staged(received, chunk));
    }
    // A chunk without rows.
    let tx = conn.transaction()?;
    let received = record_chunk(&tx, chunk, now_ms)?;
    tx.commit()?;
    Ok(staged(received, chunk))
}

/// A batch of one chunk's rows.
enum Piece<'a> {
    People(&'a [NewPerson]),
    Watchlist(&'a [(CredentialKind, [u8; 32])]),
    Revoked(&'a [String]),
}

/// Records the chunk as received; how many of its version are.
fn record_chunk(tx: &Connection, chunk: &SnapshotChunk, now_ms: UnixMillis) -> rusqlite::Result<u32> {
    tx.execute(
        "INSERT INTO ident.snapshot_chunk (version, chunk_index) VALUES (?1, ?2)",
        params![chunk.version as i64, chunk.chunk_index],
    )?;
    tx.execute("UPDATE ident.snapshot_progress SET last_activity_ms = ?1 WHERE id = 1", [now_ms])?;
    tx.query_row("SELECT count(*) FROM ident.snapshot_chunk WHERE version = ?1", [chunk.version as i64], |r| r.get(0))
}

fn staged(received: u32, chunk: &SnapshotChunk) -> Staged {
    if received >= chunk.chunk_count {
        Staged::Complete
    } else {
        Staged::Outcome(SnapshotOutcome::Staged { received, of: chunk.chunk_count })
    }
}

fn plan_chunk(tx: &Connection, chunk: &SnapshotChunk) -> rusqlite::Result<ChunkPlan> {
    let live: i64 = tx.query_row("SELECT version FROM ident.identity_state WHERE id = 1", [], |r| r.get(0))?;
    let live = live as u64;
    if chunk.version == live {
        return Ok(ChunkPlan::Done(Staged::Outcome(SnapshotOutcome::Duplicate)));
    }
    if chunk.version < live {
        return Ok(ChunkPlan::Done(Staged::Outcome(SnapshotOutcome::Stale)));
    }
    Ok(match progress(tx)? {
        Some(p) if chunk.version < p.version => ChunkPlan::Done(Staged::Outcome(SnapshotOutcome::Stale)),
        Some(p) if chunk.version == p.version && chunk.chunk_count == p.chunk_count => {
            let seen = tx
                .prepare_cached("SELECT 1 FROM ident.snapshot_chunk WHERE version = ?1 AND chunk_index = ?2")?
                .exists(params![chunk.version as i64, chunk.chunk_index])?;
            match seen {
                true if p.received == p.chunk_count => ChunkPlan::Done(Staged::CompleteBefore),
                true => ChunkPlan::Done(Staged::Outcome(SnapshotOutcome::Duplicate)),
                false => ChunkPlan::Append,
            }
        }
        // Nothing staging, a newer version, or the same version cut into a
        // different number of chunks (the same content, so starting over is
        // safe, and mixing two cuts could never complete).
        _ => ChunkPlan::StartOver,
    })
}

/// Creates the staging tables, empty.
fn create_staging(conn: &Connection) -> rusqlite::Result<()> {
    for table in &TABLES {
        let SnapshotTable { columns, key, .. } = table;
        let staging = table.staging();
        let create = match table.staged {
            Some(_) => format!("CREATE TABLE ident.{staging} ({columns})"),
            None => format!("CREATE TABLE ident.{staging} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID"),
        };
        conn.execute_batch(&format!("DROP TABLE IF EXISTS ident.{staging}; {create};"))?;
    }
    Ok(())
}

fn append_people(tx: &Connection, people: &[NewPerson]) -> rusqlite::Result<()> {
    let mut person = tx.prepare_cached(&person_upsert_sql("person_built"))?;
    let mut credential =
        tx.prepare_cached("INSERT INTO ident.credential_next (kind, key, person_id) VALUES (?1, ?2, ?3)")?;
    for new in people {
        let p = &new.person;
        upsert_person_row(&mut person, new)?;
        for (kind, key) in &new.credentials {
            credential.execute(params![kind.as_str(), &key[..], p.person_id])?;
        }
    }
    Ok(())
}

fn append_watchlist(tx: &Connection, entries: &[(CredentialKind, [u8; 32])]) -> rusqlite::Result<()> {
    let mut watch = tx.prepare_cached("INSERT INTO ident.watchlist_next (kind, key) VALUES (?1, ?2)")?;
    for (kind, key) in entries {
        watch.execute(params![kind.as_str(), &key[..]])?;
    }
    Ok(())
}

fn append_revoked(tx: &Connection, passes: &[String]) -> rusqlite::Result<()> {
    let mut revoked = tx.prepare_cached("INSERT INTO ident.revoked_next (pass_id) VALUES (?1)")?;
    for pass_id in passes {
        revoked.execute([pass_id])?;
    }
    Ok(())
}

/// Copies each staged table into its built table in the order of its key:
/// every row lands at the end of the built table's B-tree, `batch` rows per
/// transaction. The rows come from a temporary copy sorted by key
/// (connection-private, never in the write-ahead log, gone with the copy).
/// A snapshot that names the same key twice keeps the last, as a delta
/// would: the later row, sorted after the earlier one, overwrites it.
fn build_in_key_order(conn: &mut Connection, batch: usize) -> rusqlite::Result<()> {
    for table in &TABLES {
        let SnapshotTable { built, key, columns, .. } = table;
        let Some(staged) = table.staged else { continue };
        let started = std::time::Instant::now();
        let names = table.column_names().join(", ");
        conn.execute_batch(&format!(
            "CREATE TABLE ident.{built} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID;
             DROP TABLE IF EXISTS temp.snapshot_sorted;
             CREATE TEMP TABLE snapshot_sorted AS SELECT {names} FROM ident.{staged} ORDER BY {key}, rowid;"
        ))?;
        let rows: i64 = conn.query_row("SELECT coalesce(max(rowid), 0) FROM temp.snapshot_sorted", [], |r| r.get(0))?;
        let sorted = started.elapsed();
        let names_list = table.column_names();
        let key_columns: Vec<&str> = key.split(',').map(str::trim).collect();
        let updates: Vec<String> =
            names_list.iter().filter(|n| !key_columns.contains(n)).map(|n| format!("{n} = excluded.{n}")).collect();
        let on_conflict =
            if updates.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
        let mut copy = conn.prepare(&format!(
            "INSERT INTO ident.{built} ({names})
             SELECT {names} FROM temp.snapshot_sorted WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid
             ON CONFLICT ({key}) {on_conflict}"
        ))?;
        // Each statement is its own transaction (autocommit).
        let batch = table.batch(batch) as i64;
        let mut done = 0;
        while done < rows {
            copy.execute([done, done + batch])?;
            done += batch;
        }
        drop(copy);
        conn.execute_batch("DROP TABLE temp.snapshot_sorted")?;
        tracing::debug!(
            table = built,
            rows,
            sort_ms = sorted.as_millis() as u64,
            copy_ms = (started.elapsed() - sorted).as_millis() as u64,
            "snapshot table built"
        );
    }
    Ok(())
}

/// Empties `table`, if it exists, `batch` rows per transaction (each
/// batch's freed pages zeroed, `secure_delete`), then drops it: dropped
/// whole, a two-million-row table would put its size through the log in
/// one commit. `selector` picks the rows: `rowid`, or the key of a `WITHOUT
/// ROWID` table (the first migration's and the built ones).
/// How `empty_and_drop` spends the disk.
#[derive(Clone, Copy)]
enum Pace {
    /// Batch after batch: a snapshot waits for it.
    Steady,
    /// A pause as long as each batch took, after it: nothing waits for
    /// it, and every megabyte a second less is a card's commit that meets
    /// a quieter disk (freeing ten million rows at full pace slowed cards
    /// to 30-75 ms).
    Unhurried,
}

fn empty_and_drop(conn: &mut Connection, table: &str, key: &str, batch: usize, pace: Pace) -> rusqlite::Result<()> {
    let without_rowid: Option<bool> = conn
        .query_row(
            "SELECT sql LIKE '%WITHOUT ROWID%' FROM ident.sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(without_rowid) = without_rowid else { return Ok(()) };
    let selector = if without_rowid { key } else { "rowid" };
    let mut delete = conn.prepare(&format!(
        "DELETE FROM ident.{table} WHERE ({selector}) IN (SELECT {selector} FROM ident.{table} LIMIT ?1)"
    ))?;
    loop {
        let started = std::time::Instant::now();
        let deleted = delete.execute([batch as i64])?;
        if deleted < batch {
            break;
        }
        if let Pace::Unhurried = pace {
            std::thread::sleep(started.elapsed());
        }
    }
    drop(delete);
    conn.execute_batch(&format!("DROP TABLE ident.{table}"))
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

    fn scrambled_key(i: usize) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        key
    }

    /// The identity database's write-ahead log never grows past what a few
    /// batches and a checkpoint's worth of pages take: no commit of a
    /// snapshot (staging a 10,000-person chunk, copying 20,000 credentials,
    /// freeing them) puts more than a batch through the log at once. The log
    /// file keeps its largest size, so its size at the end is the peak.
    #[test]
    fn a_big_snapshot_never_puts_more_than_a_batch_through_the_log_at_once() {
        let (dir, mut store) = open();
        let people = 20_000;
        let everyone: Vec<NewPerson> = (0..people)
            .map(|i| NewPerson {
                credentials: vec![(CredentialKind::IdNumber, scrambled_key(i))],
                ..person(&format!("p{i:05}"), 0)
            })
            .collect();
        let chunk = |index: u32| SnapshotChunk {
            version: 1,
            chunk_index: index,
            chunk_count: 2,
            people: everyone[index as usize * people / 2..(index as usize + 1) * people / 2].to_vec(),
            ..Default::default()
        };
        store.stage_snapshot_chunk(&chunk(0), 1).expect("stage");
        assert_eq!(store.stage_snapshot_chunk(&chunk(1), 2).expect("stage"), SnapshotOutcome::Activated { version: 1 });
        let leftovers = |store: &Store| -> i64 {
            store
                .conn
                .query_row(
                    "SELECT count(*) FROM ident.sqlite_schema WHERE type = 'table'
                     AND (name LIKE '%_next' OR name LIKE '%_built' OR name LIKE '%_old')",
                    [],
                    |r| r.get(0),
                )
                .expect("schema")
        };
        assert_eq!(leftovers(&store), 7, "the old and the staged tables wait for the clean-up");
        let temp_pages: i64 = store.conn.query_row("PRAGMA temp.page_count", [], |r| r.get(0)).expect("temp");
        assert!(temp_pages <= 2, "the sorted copy's {temp_pages} pages are left in the temporary file");
        store.free_replaced_identity_tables().expect("free");
        assert_eq!(leftovers(&store), 0, "staged, built and old tables are all dropped after the clean-up");

        let wal = std::fs::metadata(format!("{}-wal", crate::identity_path(&dir.path().join("g.db")).display()))
            .expect("the identity log")
            .len();
        // Ten thousand people in one commit would be about 1.5 MB of log.
        let bound = (SNAPSHOT_CHECKPOINT_PAGES as u64 + 64) * 4096;
        assert!(wal <= bound, "the identity log reached {wal} bytes (bound {bound})");
        assert_eq!(store.person_count().expect("count"), people as u64);
        for i in [0, people / 2, people - 1] {
            let found = store.find_person_by_credential(CredentialKind::IdNumber, &scrambled_key(i)).expect("lookup");
            assert_eq!(found.map(|p| p.person_id), Some(format!("p{i:05}")));
        }
    }

    #[test]
    fn duplicate_keys_across_batches_keep_the_last() {
        let (_dir, mut store) = open();
        let mut first = chunk(1, 0, 2, &[1, 2, 3]);
        first.people.push(person("p1", 9));
        first.watchlist.push((CredentialKind::IdNumber, [200; 32]));
        let mut last = chunk(1, 1, 2, &[4]);
        let mut renamed = person("p2", 1);
        renamed.person.display_name = "李四".into();
        last.people.push(renamed);
        assert!(matches!(stage(&mut store.conn, &first, 1, 2).expect("stage"), Staged::Outcome(_)));
        assert!(matches!(stage(&mut store.conn, &last, 2, 2).expect("stage"), Staged::Complete));
        assert!(store.activate_in_batches(1, 3, 2).expect("activate"));
        assert_eq!(store.person_count().expect("count"), 4, "p1 and p2 once each");
        assert_eq!(found(&store, 1).as_deref(), Some("p2"), "key 1: the last person to name it");
        assert_eq!(found(&store, 9).as_deref(), Some("p1"));
        assert_eq!(store.find_person("p2").expect("find").map(|p| p.display_name).as_deref(), Some("李*"));
        assert!(store.is_watchlisted(CredentialKind::IdNumber, &[200; 32]).expect("watch"));
        // A delta deleting p1 takes the credential p1's last row lists.
        let delta = IdentityDelta { from_version: 1, to_version: 2, deletes: vec!["p1".into()], ..Default::default() };
        assert_eq!(store.apply_delta(&delta, 4).expect("delta"), crate::DeltaOutcome::Applied);
        assert_eq!(found(&store, 9), None);
        assert_eq!(found(&store, 1).as_deref(), Some("p2"), "a key moved to someone else stays theirs");
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
        store.free_replaced_identity_tables().expect("nothing replaced");
        assert!(table_exists(&store.conn, "credential_next").expect("schema"), "a staging is not a leftover");
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
        store.free_replaced_identity_tables().expect("free");
        assert!(store.health_record("kept").expect("read").is_some());
        assert_eq!(store.health_record("gone").expect("read"), None);
    }
}
