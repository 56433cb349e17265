//! Domain facts to protobuf bytes. The wire types never leak out of this
//! crate: callers hand over plain records and get bytes back.

use gate_core::{
    BlockReason, Category, CredentialKind, Decision, Direction, Lane, UnixMillis, Verdict,
};
use gate_proto::v1 as pb;
use prost::Message;

/// One decision, as the daemon recorded it.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub event_id: String,
    pub site_id: String,
    pub gate_id: String,
    pub occurred_at_ms: UnixMillis,
    pub credential: CredentialKind,
    /// Already masked; never a credential in clear.
    pub subject_masked: String,
    pub verdict: Verdict,
    pub lane: Lane,
    pub direction: Direction,
}

/// The `GateEvent` bytes for a decision that took sequence number `seq`.
pub fn encode_decision_event(record: &DecisionRecord, seq: u64) -> Vec<u8> {
    let event = pb::GateEvent {
        event_id: record.event_id.clone(),
        seq,
        site_id: record.site_id.clone(),
        gate_id: record.gate_id.clone(),
        occurred_at_ms: record.occurred_at_ms,
        credential_type: credential_type(record.credential) as i32,
        subject: record.subject_masked.clone(),
        person_id: record.verdict.person_id.clone().unwrap_or_default(),
        category: record
            .verdict
            .category
            .map_or(pb::Category::Unspecified, category) as i32,
        decision: decision(record.verdict.decision) as i32,
        reason: record
            .verdict
            .reason
            .map_or(pb::Reason::Unspecified, reason) as i32,
        kind: pb::EventKind::Decision as i32,
        lane: lane(record.lane) as i32,
        direction: direction(record.direction) as i32,
    };
    event.encode_to_vec()
}

/// Health of one device for the status message.
pub(crate) fn device_status(report: &crate::DeviceReport) -> pb::DeviceStatus {
    pb::DeviceStatus {
        name: report.name.clone(),
        connected: report.connected,
        errors: report.errors,
        reconnects: report.reconnects,
        last_error: report.last_error.clone().unwrap_or_default(),
    }
}

/// The retained status message.
pub fn encode_status(
    online: bool,
    site_id: &str,
    gate_id: &str,
    version: &str,
    outbox: gate_store::OutboxStats,
    devices: &[crate::DeviceReport],
    now: UnixMillis,
) -> Vec<u8> {
    pb::GateStatus {
        online,
        site_id: site_id.to_owned(),
        gate_id: gate_id.to_owned(),
        version: version.to_owned(),
        outbox_depth: outbox.depth,
        oldest_queued_age_ms: outbox.oldest_created_ms.map_or(0, |t| (now - t).max(0)),
        devices: devices.iter().map(device_status).collect(),
        reported_at_ms: now,
    }
    .encode_to_vec()
}

fn credential_type(kind: CredentialKind) -> pb::CredentialType {
    match kind {
        CredentialKind::IdNumber => pb::CredentialType::IdCard,
        CredentialKind::QrPass => pb::CredentialType::QrCode,
        CredentialKind::IcCard => pb::CredentialType::IcCard,
        CredentialKind::Plate => pb::CredentialType::Plate,
    }
}

fn category(c: Category) -> pb::Category {
    match c {
        Category::Resident => pb::Category::Resident,
        Category::Worker => pb::Category::Worker,
        Category::Visitor => pb::Category::Visitor,
    }
}

fn decision(d: Decision) -> pb::Decision {
    match d {
        Decision::Pass => pb::Decision::Pass,
        Decision::Block => pb::Decision::Block,
    }
}

/// Kept exhaustive on purpose: a new domain reason without a wire value
/// does not compile.
fn reason(r: BlockReason) -> pb::Reason {
    match r {
        BlockReason::UnknownPerson => pb::Reason::UnknownPerson,
        BlockReason::Expired => pb::Reason::Expired,
        BlockReason::NotYetValid => pb::Reason::NotYetValid,
        BlockReason::Suspended => pb::Reason::Suspended,
        BlockReason::Blocked => pb::Reason::Blocked,
        BlockReason::InvalidIdNumber => pb::Reason::InvalidIdNumber,
        BlockReason::UnsupportedCard => pb::Reason::UnsupportedCard,
        BlockReason::CardExpired => pb::Reason::CardExpired,
    }
}

fn lane(l: Lane) -> pb::Lane {
    match l {
        Lane::Pedestrian => pb::Lane::Pedestrian,
        Lane::Vehicle => pb::Lane::Vehicle,
    }
}

fn direction(d: Direction) -> pb::Direction {
    match d {
        Direction::Entry => pb::Direction::Entry,
        Direction::Exit => pb::Direction::Exit,
        Direction::Both => pb::Direction::Both,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_match_the_wire_enum() {
        for r in BlockReason::ALL {
            let wire = reason(r).as_str_name();
            assert_eq!(wire, format!("REASON_{}", r.as_str().to_uppercase()), "{r}");
        }
    }

    #[test]
    fn decision_event_round_trips() {
        let record = DecisionRecord {
            event_id: "e-1".into(),
            site_id: "s".into(),
            gate_id: "g".into(),
            occurred_at_ms: 42,
            credential: CredentialKind::IdNumber,
            subject_masked: "350203********123X".into(),
            verdict: Verdict::block(BlockReason::UnknownPerson),
            lane: Lane::Pedestrian,
            direction: Direction::Entry,
        };
        let event =
            pb::GateEvent::decode(encode_decision_event(&record, 7).as_slice()).expect("decode");
        assert_eq!(event.seq, 7);
        assert_eq!(event.reason(), pb::Reason::UnknownPerson);
        assert_eq!(event.decision(), pb::Decision::Block);
        assert_eq!(event.subject, "350203********123X");
        assert_eq!(event.person_id, "");
    }
}
