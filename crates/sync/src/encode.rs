//! Domain facts to protobuf bytes. The wire types never leak out of this
//! crate: callers hand over plain records and get bytes back.

use gate_core::{BlockReason, Category, CredentialKind, Decision, Direction, Lane, Mode, UnixMillis, Verdict};
use gate_proto::v1 as pb;
use prost::Message;

/// What happened, by kind of event.
#[derive(Debug, Clone)]
pub enum EventBody {
    /// A credential was presented and decided.
    Decision {
        credential: CredentialKind,
        /// Already masked; never a credential in clear.
        subject_masked: String,
        verdict: Verdict,
        side: Side,
        pass_id: Option<String>,
        /// The facts behind a health decision (colour, hours since sampling).
        facts: Vec<(String, String)>,
    },
    /// The mode changed (platform or technician).
    ModeChange { mode: Mode, operator: String, note: String },
    /// A technician opened the gate by hand.
    ManualOpen { side: Side, operator: String, note: String },
    /// Someone went through after a grant.
    Passage { side: Side },
    /// A gate alarm.
    Alarm { name: String },
    /// The outbox was over capacity: these (stream, first, last) seq
    /// ranges were dropped unsent.
    OutboxOverflow { dropped: Vec<(String, u64, u64)> },
}

/// One event, as the daemon recorded it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub event_id: String,
    pub site_id: String,
    pub gate_id: String,
    pub occurred_at_ms: UnixMillis,
    pub lane: Lane,
    pub direction: Direction,
    pub mode: Mode,
    pub policy_version: String,
    pub body: EventBody,
}

impl crate::EventContext {
    /// A new event of this gate (a fresh `event_id`): the one place an
    /// [`EventRecord`] is built.
    pub fn record(&self, occurred_at_ms: UnixMillis, mode: Mode, body: EventBody) -> EventRecord {
        EventRecord {
            event_id: uuid::Uuid::new_v4().to_string(),
            site_id: self.site_id.clone(),
            gate_id: self.gate_id.clone(),
            occurred_at_ms,
            lane: self.lane,
            direction: self.direction,
            mode,
            policy_version: self.policy_version.clone(),
            body,
        }
    }
}

/// Which side of the gate, as the wire knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Entry,
    Exit,
}

/// The `GateEvent` bytes for an event that took sequence number `seq`.
pub fn encode_event(record: &EventRecord, seq: u64) -> Vec<u8> {
    let mut event = pb::GateEvent {
        event_id: record.event_id.clone(),
        seq,
        site_id: record.site_id.clone(),
        gate_id: record.gate_id.clone(),
        occurred_at_ms: record.occurred_at_ms,
        lane: lane(record.lane) as i32,
        direction: direction(record.direction) as i32,
        mode: crate::convert::mode_to_wire(record.mode) as i32,
        policy_version: record.policy_version.clone(),
        ..Default::default()
    };
    let side_wire = |s: Side| match s {
        Side::Entry => pb::Direction::Entry as i32,
        Side::Exit => pb::Direction::Exit as i32,
    };
    match &record.body {
        EventBody::Decision { credential, subject_masked, verdict, side, pass_id, facts } => {
            event.facts = facts.iter().cloned().collect();
            event.kind = pb::EventKind::Decision as i32;
            event.credential_type = credential_type(*credential) as i32;
            event.subject = subject_masked.clone();
            event.person_id = verdict.person_id.clone().unwrap_or_default();
            event.category = verdict.category.map_or(pb::Category::Unspecified, category) as i32;
            event.decision = decision(verdict.decision) as i32;
            event.reason = verdict.reason.map_or(pb::Reason::Unspecified, reason) as i32;
            event.tags = verdict.tags.clone();
            event.side = side_wire(*side);
            event.pass_id = pass_id.clone().unwrap_or_default();
        }
        EventBody::ModeChange { mode, operator, note } => {
            event.kind = pb::EventKind::ModeChange as i32;
            event.mode = crate::convert::mode_to_wire(*mode) as i32;
            event.operator = operator.clone();
            event.note = note.clone();
        }
        EventBody::ManualOpen { side, operator, note } => {
            event.kind = pb::EventKind::ManualOpen as i32;
            event.side = side_wire(*side);
            event.operator = operator.clone();
            event.note = note.clone();
        }
        EventBody::Passage { side } => {
            event.kind = pb::EventKind::Passage as i32;
            event.side = side_wire(*side);
        }
        EventBody::Alarm { name } => {
            event.kind = pb::EventKind::Alarm as i32;
            event.alarm = name.clone();
        }
        EventBody::OutboxOverflow { dropped } => {
            event.kind = pb::EventKind::OutboxOverflow as i32;
            event.dropped = dropped
                .iter()
                .map(|(stream, first, last)| pb::SeqRange { stream: stream.clone(), first: *first, last: *last })
                .collect();
        }
    }
    event.encode_to_vec()
}

/// One alert for the management departments.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub alert_id: String,
    pub site_id: String,
    pub gate_id: String,
    pub occurred_at_ms: UnixMillis,
    /// Masked.
    pub subject: String,
    pub person_id: Option<String>,
    pub category: Option<Category>,
    pub reason: Option<BlockReason>,
    pub alarm: Option<String>,
    /// The facts behind the reason; never more personal data than needed.
    pub facts: Vec<(String, String)>,
    pub repeat_count: u32,
    pub first_occurred_at_ms: UnixMillis,
    pub mode: Mode,
}

/// The `Alert` bytes for an alert that took sequence number `seq`.
pub fn encode_alert(record: &AlertRecord, seq: u64) -> Vec<u8> {
    pb::Alert {
        alert_id: record.alert_id.clone(),
        seq,
        site_id: record.site_id.clone(),
        gate_id: record.gate_id.clone(),
        occurred_at_ms: record.occurred_at_ms,
        subject: record.subject.clone(),
        person_id: record.person_id.clone().unwrap_or_default(),
        category: record.category.map_or(pb::Category::Unspecified, category) as i32,
        reason: record.reason.map_or(pb::Reason::Unspecified, reason) as i32,
        facts: record.facts.iter().cloned().collect(),
        repeat_count: record.repeat_count,
        first_occurred_at_ms: record.first_occurred_at_ms,
        alarm: record.alarm.clone().unwrap_or_default(),
        mode: crate::convert::mode_to_wire(record.mode) as i32,
    }
    .encode_to_vec()
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

/// The site state reported in the status message.
#[derive(Debug, Clone, Default)]
pub struct SiteState {
    pub mode: Mode,
    pub policy_version: String,
    pub identity: gate_store::IdentityState,
    pub health: gate_store::HealthState,
    pub trust_version: u64,
    /// `ok`, `low`, `full`, or a recent failure's class.
    pub store_state: String,
    pub disk_free_bytes: u64,
}

/// The retained status message.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename the list.
pub fn encode_status(
    online: bool,
    site_id: &str,
    gate_id: &str,
    version: &str,
    outbox: gate_store::OutboxStats,
    devices: &[crate::DeviceReport],
    site: &SiteState,
    now: UnixMillis,
) -> Vec<u8> {
    pb::GateStatus {
        mode: crate::convert::mode_to_wire(site.mode) as i32,
        policy_version: site.policy_version.clone(),
        identity_version: site.identity.version,
        identity_synced_at_ms: site.identity.synced_at_ms.unwrap_or(0),
        health_version: site.health.version,
        health_synced_at_ms: site.health.synced_at_ms.unwrap_or(0),
        trust_version: site.trust_version,
        store_state: site.store_state.clone(),
        disk_free_bytes: site.disk_free_bytes,
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
        BlockReason::CheckpointClosed => pb::Reason::CheckpointClosed,
        BlockReason::CategoryNotAllowed => pb::Reason::CategoryNotAllowed,
        BlockReason::GateNotAllowed => pb::Reason::GateNotAllowed,
        BlockReason::OutsideTimeWindow => pb::Reason::OutsideTimeWindow,
        BlockReason::Blocklisted => pb::Reason::Blocklisted,
        BlockReason::VisitorPassRequired => pb::Reason::VisitorPassRequired,
        BlockReason::PassInvalid => pb::Reason::PassInvalid,
        BlockReason::PassExpired => pb::Reason::PassExpired,
        BlockReason::PassWrongGate => pb::Reason::PassWrongGate,
        BlockReason::PassUsedUp => pb::Reason::PassUsedUp,
        BlockReason::PassRevoked => pb::Reason::PassRevoked,
        BlockReason::AntiPassback => pb::Reason::AntiPassback,
        BlockReason::UnknownVehicle => pb::Reason::UnknownVehicle,
        BlockReason::HealthCodeRed => pb::Reason::HealthCodeRed,
        BlockReason::HealthCodeYellow => pb::Reason::HealthCodeYellow,
        BlockReason::NatMissing => pb::Reason::NatMissing,
        BlockReason::NatExpired => pb::Reason::NatExpired,
        BlockReason::NatPositive => pb::Reason::NatPositive,
        BlockReason::VaccinationInsufficient => pb::Reason::VaccinationInsufficient,
        BlockReason::TravelRisk => pb::Reason::TravelRisk,
        BlockReason::HealthRecordStale => pb::Reason::HealthRecordStale,
        BlockReason::HealthUnverified => pb::Reason::HealthUnverified,
        BlockReason::CardUnreadable => pb::Reason::CardUnreadable,
        BlockReason::PlatformStale => pb::Reason::PlatformStale,
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
        let record = EventRecord {
            event_id: "e-1".into(),
            site_id: "s".into(),
            gate_id: "g".into(),
            occurred_at_ms: 42,
            lane: Lane::Pedestrian,
            direction: Direction::Entry,
            mode: Mode::Wartime,
            policy_version: "p1".into(),
            body: EventBody::Decision {
                credential: CredentialKind::IdNumber,
                subject_masked: "350203********123X".into(),
                verdict: Verdict::block(BlockReason::UnknownPerson),
                side: Side::Entry,
                pass_id: None,
                facts: vec![],
            },
        };
        let event = pb::GateEvent::decode(encode_event(&record, 7).as_slice()).expect("decode");
        assert_eq!(event.mode(), pb::Mode::Wartime);
        assert_eq!(event.policy_version, "p1");
        assert_eq!(event.side(), pb::Direction::Entry);
        assert_eq!(event.seq, 7);
        assert_eq!(event.reason(), pb::Reason::UnknownPerson);
        assert_eq!(event.decision(), pb::Decision::Block);
        assert_eq!(event.subject, "350203********123X");
        assert_eq!(event.person_id, "");
    }
}
