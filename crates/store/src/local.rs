//! Local state that is the gate's own: meta values (the mode), visitor-pass
//! use counts, anti-passback.

use crate::{Result, Store};
use gate_core::{Mode, ModeOrigin, ModeSchedule, UnixMillis};
use rusqlite::{OptionalExtension, params};

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

    pub fn meta_set(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO main.meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
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

    pub fn set_mode_schedule(&self, schedule: &ModeSchedule) -> Result<()> {
        let strip = |s: &str| s.replace('\u{1f}', " ");
        let raw = [
            schedule.before.as_str().to_owned(),
            schedule.after.as_str().to_owned(),
            schedule.effective_at_ms.to_string(),
            strip(&schedule.origin.operator),
            strip(&schedule.origin.reason),
        ]
        .join("\u{1f}");
        self.meta_set("mode_schedule", &raw)
    }

    /// How often a visitor pass was used at this gate.
    pub fn pass_uses(&self, pass_id: &str) -> Result<u32> {
        self.conn
            .prepare_cached("SELECT uses FROM main.pass_use WHERE pass_id = ?1")
            .and_then(|mut s| s.query_row(params![pass_id], |r| r.get::<_, i64>(0)).optional())
            .map(|n| n.unwrap_or(0) as u32)
            .map_err(|e| self.err(e))
    }

    pub fn count_pass_use(&self, pass_id: &str) -> Result<u32> {
        self.conn
            .prepare_cached(
                "INSERT INTO main.pass_use (pass_id, uses) VALUES (?1, 1)
                 ON CONFLICT (pass_id) DO UPDATE SET uses = uses + 1 RETURNING uses",
            )
            .and_then(|mut s| s.query_row(params![pass_id], |r| r.get::<_, i64>(0)))
            .map(|n| n as u32)
            .map_err(|e| self.err(e))
    }

    pub fn last_passage(&self, subject: &str) -> Result<Option<PassbackEntry>> {
        self.conn
            .prepare_cached("SELECT side, at_ms FROM main.passback WHERE subject = ?1")
            .and_then(|mut s| {
                s.query_row(params![subject], |r| Ok(PassbackEntry { side: r.get(0)?, at_ms: r.get(1)? })).optional()
            })
            .map_err(|e| self.err(e))
    }

    pub fn record_passage(&self, subject: &str, side: &str, at_ms: UnixMillis) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO main.passback (subject, side, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (subject) DO UPDATE SET side = excluded.side, at_ms = excluded.at_ms",
            )
            .and_then(|mut s| s.execute(params![subject, side, at_ms]))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}
