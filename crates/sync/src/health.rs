//! Health downlink: versioned health batches, the online health check
//! (request / response with a correlation id), and the signed trust list
//! for health certificates.

use gate_core::{HealthColour, HealthRecord, NatResult, UnixMillis};
use gate_proto::v1 as pb;
use gate_store::{DeltaOutcome, HealthBatch, Store};
use prost::Message;
use tokio::sync::oneshot;

/// The decision loop asks the platform for a fresh record of one person.
#[derive(Debug)]
pub struct HealthQuery {
    pub person_id: String,
    /// Answered when the platform replies; dropped (an error at the
    /// receiver) when the gate is offline.
    pub reply: oneshot::Sender<HealthAnswer>,
}

/// The platform's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthAnswer {
    Record(HealthRecord),
    /// The platform has no record for the person.
    NoRecord,
}

pub(crate) fn record_from_wire(r: pb::HealthRecord) -> Result<HealthRecord, String> {
    if r.person_id.is_empty() || r.person_id.len() > 64 {
        return Err("health record person_id must be 1 to 64 bytes".into());
    }
    let colour = match pb::HealthColour::try_from(r.colour) {
        Ok(pb::HealthColour::Green) => HealthColour::Green,
        Ok(pb::HealthColour::Yellow) => HealthColour::Yellow,
        Ok(pb::HealthColour::Red) => HealthColour::Red,
        Ok(pb::HealthColour::Unassessed) => HealthColour::Unassessed,
        _ => return Err(format!("unknown health colour {}", r.colour)),
    };
    let nat = match pb::NatOutcome::try_from(r.nat) {
        Ok(pb::NatOutcome::None) => None,
        Ok(pb::NatOutcome::Negative) => Some(NatResult { positive: false, sampled_at_ms: r.nat_sampled_at_ms }),
        Ok(pb::NatOutcome::Positive) => Some(NatResult { positive: true, sampled_at_ms: r.nat_sampled_at_ms }),
        _ => return Err(format!("unknown nucleic-acid outcome {}", r.nat)),
    };
    if r.expires_at_ms < r.assessed_at_ms {
        return Err("health record expires before it was assessed".into());
    }
    Ok(HealthRecord {
        person_id: r.person_id,
        colour,
        nat,
        vaccine_doses: r.vaccine_doses,
        last_dose_at_ms: (r.last_dose_at_ms > 0).then_some(r.last_dose_at_ms),
        travel_risk: r.travel_risk,
        risk_areas: r.risk_areas,
        assessed_at_ms: r.assessed_at_ms,
        expires_at_ms: r.expires_at_ms,
    })
}

/// What a health batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchOutcome {
    Applied { version: u64 },
    Duplicate,
    Gap { local_version: u64 },
    Rejected { why: String },
}

pub(crate) fn handle_health_batch(store: &mut Store, payload: &[u8], now: UnixMillis) -> BatchOutcome {
    let batch = match pb::HealthBatch::decode(payload) {
        Ok(b) => b,
        Err(e) => return BatchOutcome::Rejected { why: format!("not a HealthBatch: {e}") },
    };
    if let Err(e) = crate::limits::health_batch(&batch) {
        return BatchOutcome::Rejected { why: e.to_string() };
    }
    if batch.to_version <= batch.from_version {
        return BatchOutcome::Rejected { why: "health batch to_version must exceed from_version".into() };
    }
    let upserts = match batch.upserts.into_iter().map(record_from_wire).collect::<Result<Vec<_>, _>>() {
        Ok(u) => u,
        Err(why) => return BatchOutcome::Rejected { why },
    };
    let domain =
        HealthBatch { from_version: batch.from_version, to_version: batch.to_version, upserts, deletes: batch.deletes };
    match store.apply_health_batch(&domain, now) {
        Ok(DeltaOutcome::Applied) => BatchOutcome::Applied { version: domain.to_version },
        Ok(DeltaOutcome::AlreadyApplied) => BatchOutcome::Duplicate,
        Ok(DeltaOutcome::Gap { local_version }) => BatchOutcome::Gap { local_version },
        Err(e) => BatchOutcome::Rejected { why: format!("store refused the health batch: {e}") },
    }
}

/// Decodes a health response: its correlation id and the answer.
pub(crate) fn decode_response(payload: &[u8]) -> Result<(String, HealthAnswer), String> {
    let resp = pb::HealthResponse::decode(payload).map_err(|e| format!("not a HealthResponse: {e}"))?;
    crate::limits::health_response(&resp).map_err(|e| e.to_string())?;
    let answer = match resp.record {
        Some(record) => HealthAnswer::Record(record_from_wire(record)?),
        None => HealthAnswer::NoRecord,
    };
    Ok((resp.correlation_id, answer))
}

/// Stores a trust list (its envelope, verified before, is its signature).
/// Returns the new version, or `None` when it is not newer.
pub(crate) fn handle_trust(store: &mut Store, payload: &[u8]) -> Result<Option<u64>, String> {
    let list = pb::TrustList::decode(payload).map_err(|e| format!("not a TrustList: {e}"))?;
    if list.certificates.len() > 1_000 {
        return Err(format!("{} certificates is more than a trust list holds", list.certificates.len()));
    }
    match store.set_trust_list(list.version, &list.certificates) {
        Ok(true) => Ok(Some(list.version)),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("store refused the trust list: {e}")),
    }
}

/// A `TrustList` payload, to be sealed in an envelope on stream "trust"
/// (platform side; tests and hw-sim use it).
pub fn encode_trust_list(version: u64, certificates: Vec<Vec<u8>>, issued_at_ms: i64) -> Vec<u8> {
    pb::TrustList { version, certificates, issued_at_ms }.encode_to_vec()
}

/// A `HealthBatch` payload from domain records (platform side, for tests).
pub fn encode_health_batch_for_tests(from: u64, to: u64, records: &[HealthRecord]) -> Vec<u8> {
    pb::HealthBatch {
        from_version: from,
        to_version: to,
        upserts: records.iter().map(record_to_wire).collect(),
        deletes: vec![],
    }
    .encode_to_vec()
}

pub(crate) fn record_to_wire(r: &HealthRecord) -> pb::HealthRecord {
    pb::HealthRecord {
        person_id: r.person_id.clone(),
        colour: match r.colour {
            HealthColour::Green => pb::HealthColour::Green,
            HealthColour::Yellow => pb::HealthColour::Yellow,
            HealthColour::Red => pb::HealthColour::Red,
            HealthColour::Unassessed => pb::HealthColour::Unassessed,
        } as i32,
        nat: match r.nat {
            None => pb::NatOutcome::None,
            Some(n) if n.positive => pb::NatOutcome::Positive,
            Some(_) => pb::NatOutcome::Negative,
        } as i32,
        nat_sampled_at_ms: r.nat.map_or(0, |n| n.sampled_at_ms),
        vaccine_doses: r.vaccine_doses,
        last_dose_at_ms: r.last_dose_at_ms.unwrap_or(0),
        travel_risk: r.travel_risk,
        risk_areas: r.risk_areas.clone(),
        assessed_at_ms: r.assessed_at_ms,
        expires_at_ms: r.expires_at_ms,
    }
}
