//! Bounds on every string of every downlink message, checked after the
//! envelope was verified and before anything is applied or logged: a
//! length limit per field and no control characters. A string over its
//! limit is refused by field name and size, never echoed (a 1 MB
//! `issued_by` must not become a 1 MB log line, meta value and event).

use gate_proto::v1 as pb;
use std::fmt;

/// Ids: person, pass, gate, correlation ids, tags, risk areas.
pub const ID_MAX: usize = 64;
/// A person's display name, in bytes (UTF-8: about 40 Chinese characters).
pub const NAME_MAX: usize = 128;
/// Free text for people: who issued a mode, why, a rotation's note.
pub const TEXT_MAX: usize = 256;
/// A "KEYID:HEX" entry.
pub const KEY_SPEC_MAX: usize = gate_envelope::MAX_NAME_LEN + 1 + 64;
/// Strings in one repeated field of a person or record (tags, gates, areas).
pub const LIST_MAX: usize = 64;
/// Keys in one rotation.
pub const KEYS_MAX: usize = 16;

/// Which field broke which rule; shows no part of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError {
    pub field: &'static str,
    pub what: Broken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    TooLong { bytes: usize, max: usize },
    TooMany { count: usize, max: usize },
    ControlCharacter,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.what {
            Broken::TooLong { bytes, max } => write!(f, "{}: {bytes} bytes, more than {max}", self.field),
            Broken::TooMany { count, max } => write!(f, "{}: {count} entries, more than {max}", self.field),
            Broken::ControlCharacter => write!(f, "{}: holds a control character", self.field),
        }
    }
}

impl std::error::Error for LimitError {}

/// One string: at most `max` bytes, no control character (C0, DEL, C1).
pub fn text(field: &'static str, value: &str, max: usize) -> Result<(), LimitError> {
    if value.len() > max {
        return Err(LimitError { field, what: Broken::TooLong { bytes: value.len(), max } });
    }
    if value.chars().any(char::is_control) {
        return Err(LimitError { field, what: Broken::ControlCharacter });
    }
    Ok(())
}

/// A repeated string field: at most `max_count` entries, each within `max`.
pub fn list(field: &'static str, values: &[String], max: usize, max_count: usize) -> Result<(), LimitError> {
    if values.len() > max_count {
        return Err(LimitError { field, what: Broken::TooMany { count: values.len(), max: max_count } });
    }
    values.iter().try_for_each(|v| text(field, v, max))
}

pub fn mode_change(m: &pb::ModeChange) -> Result<(), LimitError> {
    text("issued_by", &m.issued_by, TEXT_MAX)?;
    text("reason", &m.reason, TEXT_MAX)
}

pub fn person(p: &pb::Person) -> Result<(), LimitError> {
    text("person.person_id", &p.person_id, ID_MAX)?;
    text("person.display_name", &p.display_name, NAME_MAX)?;
    list("person.tags", &p.tags, ID_MAX, LIST_MAX)?;
    list("person.allowed_gates", &p.allowed_gates, ID_MAX, LIST_MAX)
}

/// Id lists of an identity message (deletes, revoked passes) may be long:
/// their count is bounded by the envelope size, each entry here.
fn ids(field: &'static str, values: &[String]) -> Result<(), LimitError> {
    list(field, values, ID_MAX, usize::MAX)
}

pub fn identity_batch(b: &pb::IdentityBatch) -> Result<(), LimitError> {
    match &b.body {
        None => Ok(()),
        Some(pb::identity_batch::Body::Snapshot(s)) => {
            s.people.iter().try_for_each(person)?;
            ids("revoked_passes", &s.revoked_passes)
        }
        Some(pb::identity_batch::Body::Delta(d)) => {
            d.upserts.iter().try_for_each(person)?;
            ids("deletes", &d.deletes)?;
            ids("revoke_passes", &d.revoke_passes)
        }
    }
}

pub fn health_record(r: &pb::HealthRecord) -> Result<(), LimitError> {
    text("record.person_id", &r.person_id, ID_MAX)?;
    list("record.risk_areas", &r.risk_areas, ID_MAX, LIST_MAX)
}

pub fn health_batch(b: &pb::HealthBatch) -> Result<(), LimitError> {
    b.upserts.iter().try_for_each(health_record)?;
    ids("deletes", &b.deletes)
}

pub fn health_response(r: &pb::HealthResponse) -> Result<(), LimitError> {
    text("correlation_id", &r.correlation_id, ID_MAX)?;
    r.record.as_ref().map_or(Ok(()), health_record)
}

pub fn key_rotation(k: &pb::KeyRotation) -> Result<(), LimitError> {
    list("keys", &k.keys, KEY_SPEC_MAX, KEYS_MAX)?;
    text("note", &k.note, TEXT_MAX)
}

pub fn site_reset(r: &pb::SiteReset) -> Result<(), LimitError> {
    text("note", &r.note, TEXT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_megabyte_is_refused_by_size_without_its_content() {
        let m = pb::ModeChange { issued_by: "A".repeat(1 << 20), ..Default::default() };
        let e = mode_change(&m).expect_err("too long");
        assert_eq!(e.to_string(), "issued_by: 1048576 bytes, more than 256");
    }

    #[test]
    fn control_characters_are_refused_anywhere() {
        for bad in ["ops\n", "a\u{1b}[31m", "\u{7f}", "x\u{85}", "\0"] {
            let m = pb::ModeChange { reason: bad.into(), ..Default::default() };
            assert_eq!(mode_change(&m).expect_err(bad).what, Broken::ControlCharacter);
        }
        let ok =
            pb::ModeChange {
                issued_by: "鹤山街道办 王警官".into(), reason: "疫情防控".into(), ..Default::default()
            };
        assert_eq!(mode_change(&ok), Ok(()));
        let p = pb::Person { person_id: "p-1".into(), tags: vec!["ok".into(), "bad\t".into()], ..Default::default() };
        let batch = pb::IdentityBatch {
            body: Some(pb::identity_batch::Body::Delta(pb::IdentityDelta { upserts: vec![p], ..Default::default() })),
        };
        assert_eq!(identity_batch(&batch).expect_err("tab").field, "person.tags");
        let r = pb::HealthResponse { correlation_id: "c".repeat(65), ..Default::default() };
        assert!(matches!(health_response(&r).expect_err("long").what, Broken::TooLong { bytes: 65, max: 64 }));
        let k = pb::KeyRotation { keys: vec!["k".into(); 17], ..Default::default() };
        assert!(matches!(key_rotation(&k).expect_err("many").what, Broken::TooMany { count: 17, .. }));
    }
}
