//! The durable outbox and the per-stream sequence counters.

use crate::{Result, Store, StoreError};
use gate_core::UnixMillis;
use rusqlite::{OptionalExtension, params};

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

impl Store {
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
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        // Deferred, and the first statement writes `main` only: it takes the
        // main database's write lock without the identity database's, which
        // `BEGIN IMMEDIATE` would also take (it locks every attached file)
        // and a snapshot being applied holds for seconds.
        let tx = self.conn.transaction().map_err(wrap)?;
        let seq: i64 = tx
            .prepare_cached(
                "INSERT INTO main.sequence (stream, next_seq) VALUES (?1, 2)
                 ON CONFLICT (stream) DO UPDATE SET next_seq = next_seq + 1
                 RETURNING next_seq - 1",
            )
            .and_then(|mut s| s.query_row(params![stream], |r| r.get(0)))
            .map_err(wrap)?;
        let payload = encode(seq as u64);
        tx.prepare_cached(
            "INSERT INTO main.outbox (stream, seq, topic, payload, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![stream, seq, topic, payload, created_ms]))
        .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(seq as u64)
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
                "SELECT id, stream, seq, topic, payload, created_ms FROM main.outbox
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
            .prepare_cached("DELETE FROM main.outbox WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats> {
        self.conn
            .query_row("SELECT count(*), min(created_ms) FROM main.outbox", [], |r| {
                Ok(OutboxStats { depth: r.get::<_, i64>(0)? as u64, oldest_created_ms: r.get(1)? })
            })
            .map_err(|e| self.err(e))
    }

    /// Queued entries per topic (for diagnostics).
    pub fn outbox_by_topic(&self) -> Result<Vec<(String, u64, UnixMillis)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT topic, count(*), min(created_ms) FROM main.outbox GROUP BY topic ORDER BY topic")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
