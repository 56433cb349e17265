//! `gate.v1` messages → database rows. Enumerations become their wire names
//! in lower case without the prefix (`REASON_BLOCKLISTED` → `blocklisted`);
//! a value this build does not know (a newer gate) is kept as `kind_7`
//! rather than refused.

use gate_proto::v1 as pb;
use serde_json::json;

/// `PREFIX_NAME` → `name`; `UNSPECIFIED` → `None`.
fn name(wire: Option<&str>, prefix: &str, raw: i32) -> Option<String> {
    match wire {
        Some(n) => {
            let n = n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase();
            (n != "unspecified").then_some(n)
        }
        None => Some(format!("{}{raw}", prefix.to_ascii_lowercase())),
    }
}

pub fn kind_name(raw: i32) -> String {
    name(pb::EventKind::try_from(raw).ok().map(|k| k.as_str_name()), "EVENT_KIND_", raw)
        .unwrap_or_else(|| "unspecified".into())
}
pub fn decision_name(raw: i32) -> Option<String> {
    name(pb::Decision::try_from(raw).ok().map(|k| k.as_str_name()), "DECISION_", raw)
}
pub fn reason_name(raw: i32) -> Option<String> {
    name(pb::Reason::try_from(raw).ok().map(|k| k.as_str_name()), "REASON_", raw)
}
/// Every reason name the wire knows (`blocklisted`, `expired`, ...).
pub fn reason_names() -> Vec<String> {
    (0..256).filter_map(|raw| pb::Reason::try_from(raw).ok().and_then(|r| reason_name(r as i32))).collect()
}
pub fn category_name(raw: i32) -> Option<String> {
    name(pb::Category::try_from(raw).ok().map(|k| k.as_str_name()), "CATEGORY_", raw)
}
fn credential_name(raw: i32) -> Option<String> {
    name(pb::CredentialType::try_from(raw).ok().map(|k| k.as_str_name()), "CREDENTIAL_TYPE_", raw)
}
fn lane_name(raw: i32) -> Option<String> {
    name(pb::Lane::try_from(raw).ok().map(|k| k.as_str_name()), "LANE_", raw)
}
fn direction_name(raw: i32) -> Option<String> {
    name(pb::Direction::try_from(raw).ok().map(|k| k.as_str_name()), "DIRECTION_", raw)
}
pub fn mode_name(raw: i32) -> Option<String> {
    name(pb::Mode::try_from(raw).ok().map(|k| k.as_str_name()), "MODE_", raw)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A `GateEvent` as the `events` table stores it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub site_id: String,
    pub gate_id: String,
    pub seq: i64,
    pub occurred_at_ms: i64,
    pub kind: String,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub category: Option<String>,
    pub credential_type: Option<String>,
    /// Masked by the gate.
    pub subject: Option<String>,
    pub person_id: Option<String>,
    pub lane: Option<String>,
    pub direction: Option<String>,
    pub side: Option<String>,
    pub mode: Option<String>,
    pub policy_version: Option<String>,
    pub tags: Vec<String>,
    pub pass_id: Option<String>,
    pub operator: Option<String>,
    pub note: Option<String>,
    pub alarm: Option<String>,
    pub facts_json: Option<String>,
}

impl From<&pb::GateEvent> for EventRow {
    fn from(e: &pb::GateEvent) -> Self {
        EventRow {
            event_id: e.event_id.clone(),
            site_id: e.site_id.clone(),
            gate_id: e.gate_id.clone(),
            seq: e.seq as i64,
            occurred_at_ms: e.occurred_at_ms,
            kind: kind_name(e.kind),
            decision: decision_name(e.decision),
            reason: reason_name(e.reason),
            category: category_name(e.category),
            credential_type: credential_name(e.credential_type),
            subject: non_empty(&e.subject),
            person_id: non_empty(&e.person_id),
            lane: lane_name(e.lane),
            direction: direction_name(e.direction),
            side: direction_name(e.side),
            mode: mode_name(e.mode),
            policy_version: non_empty(&e.policy_version),
            tags: e.tags.clone(),
            pass_id: non_empty(&e.pass_id),
            operator: non_empty(&e.operator),
            note: non_empty(&e.note),
            alarm: non_empty(&e.alarm),
            facts_json: (!e.facts.is_empty()).then(|| json!(e.facts).to_string()),
        }
    }
}

/// A gate's `Alert` as the `alerts` table stores it.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub alert_id: String,
    /// `alarm` (a gate alarm) or `refusal` (a refused person).
    pub kind: String,
    pub site_id: String,
    pub gate_id: String,
    pub seq: Option<i64>,
    pub occurred_at_ms: i64,
    pub reason: Option<String>,
    pub category: Option<String>,
    pub subject: Option<String>,
    pub person_id: Option<String>,
    pub alarm: Option<String>,
    pub mode: Option<String>,
    pub repeat_count: i32,
    pub first_occurred_at_ms: i64,
    pub facts_json: Option<String>,
}

impl From<&pb::Alert> for AlertRow {
    fn from(a: &pb::Alert) -> Self {
        AlertRow {
            alert_id: a.alert_id.clone(),
            kind: if a.alarm.is_empty() { "refusal".into() } else { "alarm".into() },
            site_id: a.site_id.clone(),
            gate_id: a.gate_id.clone(),
            seq: (a.seq > 0).then_some(a.seq as i64),
            occurred_at_ms: a.occurred_at_ms,
            reason: reason_name(a.reason),
            category: category_name(a.category),
            subject: non_empty(&a.subject),
            person_id: non_empty(&a.person_id),
            alarm: non_empty(&a.alarm),
            mode: mode_name(a.mode),
            repeat_count: a.repeat_count.min(i32::MAX as u32) as i32,
            first_occurred_at_ms: if a.first_occurred_at_ms > 0 { a.first_occurred_at_ms } else { a.occurred_at_ms },
            facts_json: (!a.facts.is_empty()).then(|| json!(a.facts).to_string()),
        }
    }
}

/// The devices of a status, as JSON for the fleet view.
pub fn devices_json(s: &pb::GateStatus) -> String {
    json!(
        s.devices
            .iter()
            .map(|d| json!({"name": d.name, "connected": d.connected, "errors": d.errors,
                            "reconnects": d.reconnects, "last_error": d.last_error}))
            .collect::<Vec<_>>()
    )
    .to_string()
}

/// An event by which the gate says it dropped unsent events (its outbox
/// was full).
pub fn is_outbox_overflow(e: &pb::GateEvent) -> bool {
    kind_name(e.kind) == "outbox_overflow"
}

/// The stream an `outbox_overflow` event names and its unparsed list of
/// dropped numbers; `None` for any other event.
pub fn dropped_list(e: &pb::GateEvent) -> Option<(&str, &str)> {
    if !is_outbox_overflow(e) {
        return None;
    }
    let list = e.facts.get("dropped").or_else(|| e.facts.get("dropped_seqs"))?;
    Some((e.facts.get("stream").map_or("events", String::as_str), list))
}

/// `1-5,9,12..=14` → [(1,5),(9,9),(12,14)]; malformed items are skipped.
pub fn parse_ranges(list: &str) -> Vec<(u64, u64)> {
    list.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (a, b) = item
                .split_once("..=")
                .or_else(|| item.split_once('-'))
                .or_else(|| item.split_once(".."))
                .unwrap_or((item, item));
            let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
            (a >= 1 && a <= b).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerations_read_as_lower_case_names() {
        assert_eq!(reason_name(pb::Reason::Blocklisted as i32).as_deref(), Some("blocklisted"));
        assert_eq!(reason_name(0), None);
        assert_eq!(kind_name(pb::EventKind::Decision as i32), "decision");
        assert_eq!(category_name(999).as_deref(), Some("category_999"));
        assert_eq!(direction_name(pb::Direction::Exit as i32).as_deref(), Some("exit"));
    }

    #[test]
    fn ranges_parse_leniently() {
        assert_eq!(parse_ranges("1-5, 9,12..=14,x,7-3"), vec![(1, 5), (9, 9), (12, 14)]);
    }
}
