//! The durable outbox, the per-stream sequence counters, and [`Writer`],
//! the one transaction every change of a decision goes through.
//!
//! The outbox keeps streams (`events`, `alerts`), never MQTT topics: which
//! topic a stream goes to is the uplink's business, so a changed topic
//! prefix strands nothing.

use crate::{Result, Store, StoreError};
use gate_core::{ModeSchedule, UnixMillis};
use rusqlite::{OptionalExtension, Transaction, params};
use std::path::Path;

/// One queued event or message waiting for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox; publishing follows it.
    pub id: i64,
    pub stream: String,
    pub seq: u64,
    pub payload: Vec<u8>,
    pub created_ms: UnixMillis,
}

/// Depth and age of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub depth: u64,
    pub oldest_created_ms: Option<UnixMillis>,
}

/// How an outbox row fares when the outbox is over capacity: routine rows
/// (granted passes, passages) are dropped before anything else (blocks,
/// alarms, alerts, mode changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Routine = 0,
    Important = 1,
}

/// The writes of one transaction ([`Store::write`]). Nothing is durable
/// until the closure that holds it returns `Ok` and the commit succeeds.
pub struct Writer<'a> {
    pub(crate) tx: Transaction<'a>,
    pub(crate) path: &'a Path,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Writer<'_> {
    fn wrap(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.to_owned(), source }
    }

    /// Appends one event to the outbox: takes the stream's next sequence
    /// number, lets `encode` build the payload with it, stores it and
    /// advances the counter. Sequence numbers have no gaps and survive
    /// restarts, since the counter moves only with a committed row.
    pub fn append_event(
        &mut self,
        stream: &str,
        priority: Priority,
        created_ms: UnixMillis,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        debug_assert!(!stream.starts_with('#'), "stream names starting with # are the store's own counters");
        let seq = self.next_in(stream)?;
        let position = self.next_in(crate::schema::OUTBOX_POSITION)?;
        let payload = encode(seq as u64);
        self.tx
            .prepare_cached(
                "INSERT INTO main.outbox (id, stream, seq, payload, created_ms, priority)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![position, stream, seq, payload, created_ms, priority as i64]))
            .map_err(self.wrap())?;
        Ok(seq as u64)
    }

    /// Takes the next number of one counter of `sequence` (1 for a new one).
    fn next_in(&mut self, counter: &str) -> Result<i64> {
        self.advance(&SEQUENCE, counter)
    }

    /// Counts one use of a visitor pass; returns the uses so far.
    pub fn count_pass_use(&mut self, pass_id: &str) -> Result<u32> {
        self.advance(&PASS_USES, pass_id).map(|n| n as u32)
    }

    /// Advances `counter`'s row for `key` and returns its number (1 for a
    /// new row).
    ///
    /// An UPDATE (an INSERT the first time), then a read, rather than one
    /// upsert or an UPDATE .. RETURNING: SQLite opens a statement journal
    /// for either (an upsert may write twice; RETURNING runs as a trigger),
    /// a 64 KiB buffer allocated and freed on every decision, and the
    /// allocator gave the memory back to the kernel (`brk`) each time.
    /// Writing first matters: a deferred transaction whose first statement
    /// only reads would have to upgrade to the write lock later, and fails
    /// at once (`SQLITE_BUSY`, no retry) if another connection committed in
    /// between.
    fn advance(&mut self, counter: &Counter, key: &str) -> Result<i64> {
        let advanced =
            self.tx.prepare_cached(counter.advance).and_then(|mut s| s.execute(params![key])).map_err(self.wrap())?;
        if advanced == 0 {
            self.tx.prepare_cached(counter.create).and_then(|mut s| s.execute(params![key])).map_err(self.wrap())?;
            return Ok(1);
        }
        self.tx
            .prepare_cached(counter.read)
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)))
            .map_err(self.wrap())
    }

    /// The anti-passback state: `subject` last passed at `side`.
    pub fn record_passage(&mut self, subject: &str, side: &str, at_ms: UnixMillis) -> Result<()> {
        // Not an upsert: see `advance`.
        let updated = self
            .tx
            .prepare_cached("UPDATE main.passback SET side = ?2, at_ms = ?3 WHERE subject = ?1")
            .and_then(|mut s| s.execute(params![subject, side, at_ms]))
            .map_err(self.wrap())?;
        if updated == 0 {
            self.tx
                .prepare_cached("INSERT INTO main.passback (subject, side, at_ms) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![subject, side, at_ms]))
                .map_err(self.wrap())?;
        }
        Ok(())
    }

    pub fn meta_set(&mut self, key: &str, value: &str) -> Result<()> {
        crate::local::meta_set(&self.tx, key, value).map_err(self.wrap())
    }

    pub fn set_mode_schedule(&mut self, schedule: &ModeSchedule) -> Result<()> {
        self.meta_set("mode_schedule", &crate::local::encode_schedule(schedule))
    }

    /// A grant handed to the gate, kept until its passage (or its deadline)
    /// so that a restart in between still knows the door was opened on
    /// purpose.
    pub fn add_pending_grant(&mut self, side: &str, granted_at_ms: UnixMillis, deadline_ms: UnixMillis) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO main.pending_grant (side, granted_at_ms, deadline_ms) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![side, granted_at_ms, deadline_ms]))
            .map(|_| ())
            .map_err(self.wrap())
    }

    /// Ends the oldest pending grant of `side` (its passage or its timeout
    /// happened), and any whose deadline is before `now_ms`.
    pub fn end_pending_grant(&mut self, side: &str, now_ms: UnixMillis) -> Result<()> {
        self.tx
            .prepare_cached(
                "DELETE FROM main.pending_grant WHERE deadline_ms < ?2 OR id = (
                    SELECT id FROM main.pending_grant WHERE side = ?1 ORDER BY id LIMIT 1)",
            )
            .and_then(|mut s| s.execute(params![side, now_ms]))
            .map(|_| ())
            .map_err(self.wrap())
    }

    /// Removes entries the broker acknowledged. Removing one twice is harmless.
    pub fn outbox_remove(&mut self, ids: &[i64]) -> Result<()> {
        let mut stmt = self.tx.prepare_cached("DELETE FROM main.outbox WHERE id = ?1").map_err(self.wrap())?;
        for id in ids {
            stmt.execute(params![id]).map_err(|source| StoreError::Sqlite { path: self.path.to_owned(), source })?;
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// Runs a `DELETE .. RETURNING stream, seq`: what it removed.
    fn delete_returning_seqs(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(self.wrap())?;
        let rows = stmt
            .query_map(params, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(self.wrap())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())
    }
}

/// A counter kept in one row per key: the statements that advance it
/// ([`Writer::advance`]), each taking the key as `?1`; a new row counts 1.
struct Counter {
    advance: &'static str,
    create: &'static str,
    read: &'static str,
}

/// The per-stream `seq` (and the outbox positions): the row holds the next one.
const SEQUENCE: Counter = Counter {
    advance: "UPDATE main.sequence SET next_seq = next_seq + 1 WHERE stream = ?1",
    create: "INSERT INTO main.sequence (stream, next_seq) VALUES (?1, 2)",
    read: "SELECT next_seq - 1 FROM main.sequence WHERE stream = ?1",
};

/// A visitor pass's uses: the row holds the uses so far.
const PASS_USES: Counter = Counter {
    advance: "UPDATE main.pass_use SET uses = uses + 1 WHERE pass_id = ?1",
    create: "INSERT INTO main.pass_use (pass_id, uses) VALUES (?1, 1)",
    read: "SELECT uses FROM main.pass_use WHERE pass_id = ?1",
};

/// Seq ranges dropped from the outbox: (stream, first seq, last seq).
pub type DroppedRanges = Vec<(String, u64, u64)>;

impl Writer<'_> {
    /// Drops the `count` oldest outbox entries, routine ones before any
    /// other, and says which seq ranges went.
    ///
    /// Routine entries are looked for among the oldest
    /// `count + ROUTINE_SEARCH` only, in position order, so the search
    /// stops early and never reads a whole outbox of blocks and alerts
    /// every few seconds; short of routine ones there, the oldest others
    /// go. (An index on priority would find them anywhere, but every
    /// decision paid a page of it in its commit.)
    pub fn drop_oldest(&mut self, count: u64) -> Result<DroppedRanges> {
        const ROUTINE_SEARCH: u64 = 100_000;
        self.drop_oldest_within(count, ROUTINE_SEARCH)
    }

    /// [`Writer::drop_oldest`], routine entries looked for among the oldest
    /// `count + search` only.
    pub(crate) fn drop_oldest_within(&mut self, count: u64, search: u64) -> Result<DroppedRanges> {
        let mut dropped = self.delete_returning_seqs(
            "DELETE FROM main.outbox WHERE id IN (
                SELECT id FROM (SELECT id, priority FROM main.outbox ORDER BY id LIMIT ?2)
                WHERE priority = ?3 LIMIT ?1)
             RETURNING stream, seq",
            params![count as i64, (count + search) as i64, Priority::Routine as i64],
        )?;
        let rest = count.saturating_sub(dropped.len() as u64);
        if rest > 0 {
            dropped.extend(self.delete_returning_seqs(
                "DELETE FROM main.outbox WHERE id IN (SELECT id FROM main.outbox ORDER BY id LIMIT ?1)
                 RETURNING stream, seq",
                params![rest as i64],
            )?);
        }
        dropped.sort();
        let mut ranges: DroppedRanges = Vec::new();
        for (stream, seq) in dropped {
            match ranges.last_mut() {
                Some((s, _, last)) if *s == stream && *last + 1 == seq => *last = seq,
                _ => ranges.push((stream, seq, seq)),
            }
        }
        Ok(ranges)
    }
}

impl Store {
    /// Keeps the outbox within `max` entries: past it, drops the oldest
    /// unsent ones (routine first) and lets `explain` record what went (an
    /// `outbox_overflow` event), in one transaction, so the gap is never
    /// silent. Returns the dropped ranges, `None` when within capacity.
    pub fn enforce_outbox_capacity(
        &mut self,
        max: u64,
        explain: impl FnOnce(&mut Writer<'_>, &DroppedRanges) -> Result<()>,
    ) -> Result<Option<DroppedRanges>> {
        let max = max.max(1);
        // Ids only grow, so their span bounds the depth: the exact count
        // (a scan) is taken only when the span says it may be over.
        let span: i64 = self
            .conn
            .query_row("SELECT coalesce(max(id) - min(id) + 1, 0) FROM main.outbox", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if (span as u64) <= max {
            return Ok(None);
        }
        let depth = self.outbox_stats()?.depth;
        if depth <= max {
            return Ok(None);
        }
        // Room for the explaining event itself.
        let excess = depth - (max - 1);
        self.write(|w| {
            let dropped = w.drop_oldest(excess)?;
            explain(w, &dropped)?;
            Ok(Some(dropped))
        })
    }

    /// [`Writer::append_event`] in a transaction of its own.
    pub fn append_event(
        &mut self,
        stream: &str,
        priority: Priority,
        created_ms: UnixMillis,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        self.write(|w| w.append_event(stream, priority, created_ms, encode))
    }

    /// The next sequence number a stream would take (1 for a new stream).
    pub fn next_seq(&self, stream: &str) -> Result<u64> {
        self.conn
            .query_row("SELECT next_seq FROM main.sequence WHERE stream = ?1", params![stream], |r| r.get::<_, i64>(0))
            .optional()
            .map(|n| n.unwrap_or(1) as u64)
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` queued entries after outbox position `after_id`, oldest first.
    pub fn outbox_after(&self, after_id: i64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, stream, seq, payload, created_ms FROM main.outbox
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after_id, limit as i64], |r| {
                Ok(OutboxEntry {
                    id: r.get(0)?,
                    stream: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
                    payload: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Removes entries the broker acknowledged, in one transaction with its
    /// own fsync. It once skipped it (`synchronous = NORMAL`: a removal lost
    /// to a power cut only sends entries again), but then the next
    /// decision's commit flushed the removals' log pages along with its
    /// own: while a backlog drained, a card waited 4.3 ms at the median for
    /// the uplink's writes (2.3 ms with this; `gate-bench --only
    /// card_to_unlock_draining`). Removing one twice is harmless.
    pub fn outbox_remove(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|w| w.outbox_remove(ids))
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        self.conn
            .query_row("SELECT count(*), min(created_ms) FROM main.outbox", [], |r| {
                Ok(OutboxStats { depth: r.get::<_, i64>(0)? as u64, oldest_created_ms: r.get(1)? })
            })
            .map_err(|e| self.err(e))
    }

    /// Queued entries per stream (for diagnostics): stream, depth, oldest.
    pub fn outbox_by_stream(&self) -> Result<Vec<(String, u64, UnixMillis)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT stream, count(*), min(created_ms) FROM main.outbox GROUP BY stream ORDER BY stream")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
