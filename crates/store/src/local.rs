//! Local state that is the gate's own: meta values (the mode), visitor-pass
//! use counts, anti-passback, grants waiting for their passage. Writes go
//! through [`crate::Writer`], so a decision changes them in its own
//! transaction.

use crate::{Result, Store};
use gate_core::{Mode, ModeOrigin, ModeSchedule, UnixMillis};
use rusqlite::{Connection, OptionalExtension, params};

/// A grant the gate was told about and whose passage was not seen yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGrant {
    pub side: String,
    pub granted_at_ms: UnixMillis,
    pub deadline_ms: UnixMillis,
}

pub(crate) fn meta_set(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO main.meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![key, value]))
    .map(|_| ())
}

/// before \x1f after \x1f effective_at \x1f operator \x1f reason
pub(crate) fn encode_schedule(schedule: &ModeSchedule) -> String {
    let strip = |s: &str| s.replace('\u{1f}', " ");
    [
        schedule.before.as_str().to_owned(),
        schedule.after.as_str().to_owned(),
        schedule.effective_at_ms.to_string(),
        strip(&schedule.origin.operator),
        strip(&schedule.origin.reason),
    ]
    .join("\u{1f}")
}

/// The last granted passage of a subject (person or pass) at this gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassbackEntry {
    pub side: String,
    pub at_ms: UnixMillis,
}

impl Store {
    /// A small key/value table for local state (mode, policy notes).
    pub fn meta_get(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM main.meta WHERE key = ?1")
            .and_then(|mut s| s.query_row(params![key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// One value, in a statement of its own (use [`crate::Writer::meta_set`]
    /// to change it together with other rows).
    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        meta_set(&self.conn, key, value).map_err(|e| self.err(e))
    }

    /// The persisted mode schedule; `None` before the first mode was ever set.
    pub fn mode_schedule(&self) -> Result<Option<ModeSchedule>> {
        let Some(raw) = self.meta_get("mode_schedule")? else { return Ok(None) };
        // before \x1f after \x1f effective_at \x1f operator \x1f reason
        let parts: Vec<&str> = raw.split('\u{1f}').collect();
        let parsed = (|| {
            Some(ModeSchedule {
                before: Mode::parse(parts.first()?)?,
                after: Mode::parse(parts.get(1)?)?,
                effective_at_ms: parts.get(2)?.parse().ok()?,
                origin: ModeOrigin { operator: (*parts.get(3)?).to_owned(), reason: (*parts.get(4)?).to_owned() },
            })
        })();
        parsed.map(Some).ok_or_else(|| crate::StoreError::CorruptRow {
            path: self.path.clone(),
            table: "meta",
            detail: "unreadable mode_schedule".into(),
        })
    }

    pub fn set_mode_schedule(&mut self, schedule: &ModeSchedule) -> Result<()> {
        self.write(|w| w.set_mode_schedule(schedule))
    }

    /// How often a visitor pass was used at this gate.
    pub fn pass_uses(&self, pass_id: &str) -> Result<u32> {
        self.conn
            .prepare_cached("SELECT uses FROM main.pass_use WHERE pass_id = ?1")
            .and_then(|mut s| s.query_row(params![pass_id], |r| r.get::<_, i64>(0)).optional())
            .map(|n| n.unwrap_or(0) as u32)
            .map_err(|e| self.err(e))
    }

    pub fn count_pass_use(&mut self, pass_id: &str) -> Result<u32> {
        self.write(|w| w.count_pass_use(pass_id))
    }

    pub fn last_passage(&self, subject: &str) -> Result<Option<PassbackEntry>> {
        self.conn
            .prepare_cached("SELECT side, at_ms FROM main.passback WHERE subject = ?1")
            .and_then(|mut s| {
                s.query_row(params![subject], |r| Ok(PassbackEntry { side: r.get(0)?, at_ms: r.get(1)? })).optional()
            })
            .map_err(|e| self.err(e))
    }

    pub fn record_passage(&mut self, subject: &str, side: &str, at_ms: UnixMillis) -> Result<()> {
        self.write(|w| w.record_passage(subject, side, at_ms))
    }

    /// Grants whose passage was not seen yet and whose deadline is not past
    /// `now_ms`, oldest first.
    pub fn pending_grants(&self, now_ms: UnixMillis) -> Result<Vec<PendingGrant>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT side, granted_at_ms, deadline_ms FROM main.pending_grant
                 WHERE deadline_ms >= ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![now_ms], |r| {
                Ok(PendingGrant { side: r.get(0)?, granted_at_ms: r.get(1)?, deadline_ms: r.get(2)? })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
