//! Messages from the platform. Each one is a signed envelope, verified in
//! one place (`signed`); each handler then checks the whole inner message
//! (`limits` included) before applying anything and reports what happened;
//! the session task publishes any resync request.

use crate::convert;
use crate::encode::{EventBody, encode_event};
use crate::identity::{IdentityOutcome, handle_identity, off_the_runtime};
use crate::signed::{self, DownlinkTrust};
use crate::watch::{Freshness, Held, PlatformWatch};
use crate::{EVENT_STREAM, Topics, limits};
use gate_core::{Direction, Lane, ModeOrigin, ModeSchedule, UnixMillis};
use gate_envelope::Refusal;
use gate_proto::v1 as pb;
use gate_store::{Priority, Store};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tracing::{info, warn};

/// The largest downlink message accepted; anything bigger is hostile or a
/// mistake, and is refused before decoding.
pub const MAX_DOWNLINK_BYTES: usize = gate_envelope::MAX_ENVELOPE_BYTES;

/// Counts of what came down.
#[derive(Debug, Default)]
pub struct DownlinkCounters {
    pub mode_changes: AtomicU64,
    pub identity_applied: AtomicU64,
    pub identity_staged: AtomicU64,
    pub identity_duplicates: AtomicU64,
    pub resync_requests: AtomicU64,
    /// Verified messages whose content was malformed, and messages on
    /// topics the gate does not handle, dropped.
    pub rejected: AtomicU64,
    pub health_applied: AtomicU64,
    pub health_answers: AtomicU64,
    pub trust_updates: AtomicU64,
    /// Trust lists refused (by their envelope or their content).
    pub trust_rejected: AtomicU64,
    /// Envelopes refused, by reason, in the order of `Refusal::ALL`.
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// The last accepted message of a stream delivered again (a retained
    /// message on reconnection): ignored.
    pub again: AtomicU64,
    pub key_rotations: AtomicU64,
    /// Signed `SiteReset`s applied.
    pub resets: AtomicU64,
}

impl DownlinkCounters {
    /// Envelopes refused for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        let index = Refusal::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.refused[index].load(Ordering::Relaxed)
    }

    fn count_refusal(&self, reason: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.refused[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the gate must say back after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    None,
    Resync {
        local_version: u64,
        reason: &'static str,
    },
    /// The outbox gained an entry (a recorded mode change).
    OutboxChanged,
    /// The health batches are out of step.
    HealthResync {
        local_version: u64,
    },
    /// An answer to an online health check.
    HealthAnswer {
        correlation_id: String,
        answer: crate::HealthAnswer,
    },
}

/// Everything a mode-change event needs to say where it happened.
#[derive(Debug, Clone)]
pub struct EventContext {
    pub site_id: String,
    pub gate_id: String,
    pub lane: Lane,
    pub direction: Direction,
    pub policy_version: String,
}

/// One downlink message (the bytes as received on `topic`) through exactly
/// the handler the MQTT session runs for it, envelope check included,
/// without a broker: for the fuzz targets and tests that drive the handlers
/// with hostile bytes. Returns what the session would do next (`none`,
/// `resync`, `outbox_changed`, `health_resync`, `health_answer`).
#[allow(clippy::too_many_arguments)] // The same parts as the session's handler.
pub fn handle_downlink(
    store: &mut Store,
    topics: &Topics,
    context: &EventContext,
    counters: &DownlinkCounters,
    trust: &mut DownlinkTrust,
    topic: &str,
    bytes: &[u8],
    now: UnixMillis,
) -> &'static str {
    // Freshness is the session's; here each message is judged on its own.
    let watch = PlatformWatch::default();
    let mut fresh =
        Freshness::new(std::time::Duration::from_secs(3600), std::time::Duration::from_secs(86_400), Instant::now(), 0);
    match handle(store, topics, context, counters, trust, (&mut fresh, &watch), topic, bytes, now) {
        Reply::None => "none",
        Reply::Resync { .. } => "resync",
        Reply::OutboxChanged => "outbox_changed",
        Reply::HealthResync { .. } => "health_resync",
        Reply::HealthAnswer { .. } => "health_answer",
    }
}

/// Every downlink message: verified by `signed::check` first; only an
/// accepted envelope's payload reaches the handler of its stream.
#[allow(clippy::too_many_arguments)] // The session's parts, borrowed separately.
pub(crate) fn handle(
    store: &mut Store,
    topics: &Topics,
    context: &EventContext,
    counters: &DownlinkCounters,
    trust: &mut DownlinkTrust,
    freshness: (&mut Freshness, &PlatformWatch),
    topic: &str,
    bytes: &[u8],
    now: UnixMillis,
) -> Reply {
    if bytes.is_empty() {
        // A retained message cleared on the broker: nothing to apply, and
        // what was applied stays.
        tracing::debug!(topic, "empty downlink message (a cleared retained message); ignored");
        return Reply::None;
    }
    let checked = signed::check(topics, trust, topic, bytes, |key| match signed::load_last(store, key) {
        Ok(last) => last,
        // Unreadable replay state: refuse (as a replay) rather than accept.
        Err(_) => Some(signed::LastAccepted { counter: u64::MAX, digest: [0; 32] }),
    });
    let (stream, opened) = match checked {
        signed::Checked::Accepted { stream, opened, last } => {
            if let Err(e) = signed::save_last(store, &opened.replay_key(), last) {
                warn!(topic, error = %e, "cannot persist the replay counter; message not applied");
                return Reply::None;
            }
            freshness.0.on_verified(freshness.1, opened.issued_at_ms, Instant::now());
            (stream, opened)
        }
        signed::Checked::Again { stream } => {
            counters.again.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic, stream, "the last accepted message again; ignored");
            return Reply::None;
        }
        signed::Checked::Refused { stream: None, .. } => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(topic, "message on a topic this gate does not handle; dropped");
            return Reply::None;
        }
        signed::Checked::Refused { stream: Some(stream), refusal } => {
            counters.count_refusal(refusal);
            if stream == "trust" {
                counters.trust_rejected.fetch_add(1, Ordering::Relaxed);
            }
            warn!(
                topic,
                stream,
                reason = refusal.as_str(),
                bytes = bytes.len(),
                "downlink message refused; nothing applied"
            );
            return Reply::None;
        }
    };
    let payload = opened.payload.as_slice();
    match stream {
        "mode" => handle_mode(store, topics, context, counters, payload, now),
        "identity" => handle_identity_message(store, counters, topic, payload, now),
        "health" => match crate::health::handle_health_batch(store, payload, now) {
            crate::health::BatchOutcome::Applied { version } => {
                counters.health_applied.fetch_add(1, Ordering::Relaxed);
                info!(topic, version, "health records updated");
                Reply::None
            }
            crate::health::BatchOutcome::Duplicate => Reply::None,
            crate::health::BatchOutcome::Gap { local_version } => {
                info!(topic, local_version, "health batches out of step; asking for a resync");
                Reply::HealthResync { local_version }
            }
            crate::health::BatchOutcome::Rejected { why } => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(topic, %why, "health batch rejected; nothing applied");
                Reply::None
            }
        },
        "health_resp" => match crate::health::decode_response(payload) {
            Ok((correlation_id, answer)) => {
                if let crate::HealthAnswer::Record(record) = &answer
                    && let Err(e) = store.put_health_record(record)
                {
                    warn!(topic, error = %e, "could not store the fresh health record");
                }
                counters.health_answers.fetch_add(1, Ordering::Relaxed);
                Reply::HealthAnswer { correlation_id, answer }
            }
            Err(why) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(topic, %why, "health response rejected");
                Reply::None
            }
        },
        "trust" => match crate::health::handle_trust(store, payload) {
            Ok(Some(version)) => {
                counters.trust_updates.fetch_add(1, Ordering::Relaxed);
                info!(topic, version, "trust list for health certificates updated");
                Reply::None
            }
            Ok(None) => Reply::None,
            Err(why) => {
                counters.trust_rejected.fetch_add(1, Ordering::Relaxed);
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(topic, %why, "trust list ignored");
                Reply::None
            }
        },
        "keys" => {
            match rotate_keys(store, trust, payload) {
                Ok(ids) => {
                    counters.key_rotations.fetch_add(1, Ordering::Relaxed);
                    info!(topic, signed_by = %opened.key_id, keys = %ids, "platform keys rotated");
                }
                Err(why) => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(topic, %why, "key rotation refused; the keys stay");
                }
            }
            Reply::None
        }
        "heartbeat" => match pb::PlatformHeartbeat::decode(payload) {
            Ok(heartbeat) => {
                let (fresh, watch) = freshness;
                let held = held_versions(store, &trust.gate);
                tracing::debug!(topic, ?heartbeat, ?held, "platform heartbeat");
                if fresh.on_heartbeat(watch, heartbeat, opened.issued_at_ms, held, now, Instant::now()) {
                    info!(
                        topic,
                        "the platform's heartbeat names versions this gate does not have; asking for a resync"
                    );
                    Reply::Resync { local_version: held.identity_version, reason: "heartbeat" }
                } else {
                    Reply::None
                }
            }
            Err(e) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(topic, error = %e, "not a PlatformHeartbeat; ignored");
                Reply::None
            }
        },
        "reset" => match reset_site(store, trust, payload) {
            Ok(what) => {
                counters.resets.fetch_add(1, Ordering::Relaxed);
                warn!(topic, signed_by = %opened.key_id, reset = %what, "the platform reset this site's versions");
                let local_version = store.identity_state().map(|s| s.version).unwrap_or(0);
                // Ask at once for what the platform holds now.
                Reply::Resync { local_version, reason: "reset" }
            }
            Err(why) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(topic, %why, "site reset refused; nothing changed");
                Reply::None
            }
        },
        _ => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(topic, stream, "verified message on a stream this gate does not handle yet; dropped");
            Reply::None
        }
    }
}

fn handle_identity_message(
    store: &mut Store,
    counters: &DownlinkCounters,
    topic: &str,
    payload: &[u8],
    now: UnixMillis,
) -> Reply {
    match handle_identity(store, payload, now) {
        IdentityOutcome::Applied { version } => {
            counters.identity_applied.fetch_add(1, Ordering::Relaxed);
            info!(topic, version, "identity table updated");
            // The new table is live; what it replaced is freed a batch at a
            // time, behind it (a failure leaves it to the next snapshot).
            let started = Instant::now();
            match off_the_runtime(|| store.free_replaced_identity_tables()) {
                Ok(()) => info!(took_ms = started.elapsed().as_millis() as u64, "replaced identity tables freed"),
                Err(e) => warn!(error = %e, "cannot free the replaced identity tables yet"),
            }
            Reply::None
        }
        IdentityOutcome::Staged { version, chunk_index, chunk_count } => {
            counters.identity_staged.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic, version, chunk_index, chunk_count, "snapshot chunk staged");
            Reply::None
        }
        IdentityOutcome::Duplicate => {
            counters.identity_duplicates.fetch_add(1, Ordering::Relaxed);
            Reply::None
        }
        IdentityOutcome::Resync { local_version, reason } => {
            info!(topic, local_version, reason, "identity out of step; asking for a resync");
            Reply::Resync { local_version, reason }
        }
        IdentityOutcome::Rejected { why } => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(topic, %why, "identity message rejected; nothing applied");
            let local_version = store.identity_state().map(|s| s.version).unwrap_or(0);
            Reply::Resync { local_version, reason: "corrupt" }
        }
    }
}

/// The versions this gate holds, as a heartbeat names them.
pub(crate) fn held_versions(store: &Store, gate: &str) -> Held {
    let mode_counter = [gate_envelope::replay_key("mode", ""), gate_envelope::replay_key("mode", gate)]
        .iter()
        .filter_map(|key| signed::load_last(store, key).ok().flatten())
        .map(|last| last.counter)
        .max()
        .unwrap_or(0);
    Held {
        identity_version: store.identity_state().map(|s| s.version).unwrap_or(0),
        health_version: store.health_state().map(|s| s.version).unwrap_or(0),
        trust_version: store.trust_list_version().unwrap_or(0),
        mode_counter,
    }
}

/// Streams whose replay counters a `SiteReset` with `counters` forgets:
/// every one but "keys" and "reset" themselves, so a reset can be replayed
/// neither to undo a rotation nor to repeat itself.
const RESETTABLE_STREAMS: &[&str] = &["mode", "identity", "health", "health_resp", "trust", "heartbeat", "revocation"];

/// A signed `SiteReset`: the named versions go back to 0 (the next snapshot
/// or batch of any version is taken), and the named counters are forgotten.
/// Returns what was reset.
fn reset_site(store: &mut Store, trust: &DownlinkTrust, payload: &[u8]) -> Result<String, String> {
    let reset = pb::SiteReset::decode(payload).map_err(|e| format!("not a SiteReset: {e}"))?;
    limits::site_reset(&reset).map_err(|e| e.to_string())?;
    if !(reset.identity || reset.health || reset.counters) {
        return Err("a reset naming nothing".into());
    }
    store.reset_synced_versions(reset.identity, reset.health).map_err(|e| format!("cannot reset the versions: {e}"))?;
    if reset.counters {
        signed::forget_counters(store, RESETTABLE_STREAMS, &trust.gate)
            .map_err(|e| format!("cannot reset the counters: {e}"))?;
    }
    let named: Vec<&str> = [(reset.identity, "identity"), (reset.health, "health"), (reset.counters, "counters")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    Ok(named.join(","))
}

/// A signed `KeyRotation`: the full new key set, persisted, in force at
/// once. Returns the new key ids.
fn rotate_keys(store: &Store, trust: &mut DownlinkTrust, payload: &[u8]) -> Result<String, String> {
    let rotation = pb::KeyRotation::decode(payload).map_err(|e| format!("not a KeyRotation: {e}"))?;
    limits::key_rotation(&rotation).map_err(|e| e.to_string())?;
    let mut keys = Vec::with_capacity(rotation.keys.len());
    for (i, spec) in rotation.keys.iter().enumerate() {
        keys.push(gate_envelope::parse_key_spec(spec).map_err(|e| format!("keys[{i}]: {e}"))?);
    }
    if keys.is_empty() {
        return Err("a rotation to no key at all would lock the platform out".into());
    }
    signed::save_rotation(store, &keys, &trust.configured).map_err(|e| format!("cannot persist the keys: {e}"))?;
    trust.verifier = gate_envelope::Verifier::new(keys);
    Ok(trust.verifier.key_ids().collect::<Vec<_>>().join(","))
}

fn handle_mode(
    store: &mut Store,
    topics: &Topics,
    context: &EventContext,
    counters: &DownlinkCounters,
    payload: &[u8],
    now: UnixMillis,
) -> Reply {
    let topic = topics.mode.as_str();
    let change = match pb::ModeChange::decode(payload) {
        Ok(change) => change,
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(topic, error = %e, "not a ModeChange; ignored");
            return Reply::None;
        }
    };
    if let Err(why) = limits::mode_change(&change) {
        counters.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(topic, %why, "ModeChange refused; the mode stays");
        return Reply::None;
    }
    let mode = match convert::mode_from_wire(change.mode) {
        Ok(mode) => mode,
        Err(why) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(topic, %why, "ModeChange refused; the mode stays");
            return Reply::None;
        }
    };
    let origin = ModeOrigin { operator: format!("platform:{}", change.issued_by), reason: change.reason.clone() };
    let current = match store.mode_schedule() {
        Ok(current) => current,
        Err(e) => {
            warn!(topic, error = %e, "cannot read the stored mode; ModeChange not applied");
            return Reply::None;
        }
    };
    // The retained message comes again on every connection: the same change
    // is not a new one.
    if let Some(current) = &current
        && current.after == mode
        && current.effective_at_ms == change.effective_at_ms
        && current.origin == origin
    {
        return Reply::None;
    }
    let schedule = current.unwrap_or_else(|| ModeSchedule::constant(gate_core::Mode::Normal)).with_change(
        now,
        mode,
        change.effective_at_ms,
        origin.clone(),
    );
    // The mode row and its event commit together or not at all.
    let record = context.record(
        now,
        schedule.at(now),
        EventBody::ModeChange { mode, operator: origin.operator.clone(), note: origin.reason.clone() },
    );
    let written = store.write(|w| {
        w.set_mode_schedule(&schedule)?;
        w.append_event(EVENT_STREAM, Priority::Important, now, |seq| encode_event(&record, seq))
    });
    if let Err(e) = written {
        warn!(topic, error = %e, "cannot persist the mode and its event; ModeChange not applied");
        return Reply::None;
    }
    counters.mode_changes.fetch_add(1, Ordering::Relaxed);
    info!(topic, mode = mode.as_str(), effective_at_ms = change.effective_at_ms, operator = %origin.operator, "site mode set by the platform");
    Reply::OutboxChanged
}

/// A technician's mode change (`gatectl mode set`), made through the store
/// so that it works with the daemon stopped too: the schedule changes now
/// and a `ModeChange` event with who and why is queued in the outbox, in one
/// place for every caller. `operator` is the full `technician:<login>`.
/// Returns the event's `seq`.
pub fn set_mode_by_technician(
    store: &mut Store,
    context: &EventContext,
    mode: gate_core::Mode,
    operator: &str,
    reason: &str,
    now: UnixMillis,
) -> gate_store::Result<u64> {
    let origin = ModeOrigin { operator: operator.to_owned(), reason: reason.to_owned() };
    let current = store.mode_schedule()?.unwrap_or_else(|| ModeSchedule::constant(gate_core::Mode::Normal));
    let schedule = current.with_change(now, mode, now, origin.clone());
    let record =
        context.record(now, mode, EventBody::ModeChange { mode, operator: origin.operator, note: origin.reason });
    // The mode row and its event commit together or not at all.
    store.write(|w| {
        w.set_mode_schedule(&schedule)?;
        w.append_event(EVENT_STREAM, Priority::Important, now, |seq| encode_event(&record, seq))
    })
}

#[cfg(test)]
mod tests {
    //! The mode row and its event against a real SQLite file made to fail
    //! (`gate_store::faults`): both commit, or neither.

    use super::*;
    use gate_core::{GateId, Mode, SiteId};
    use gate_store::faults;

    fn context() -> EventContext {
        EventContext {
            site_id: "heshan-c03".into(),
            gate_id: "east-1".into(),
            lane: Lane::Pedestrian,
            direction: Direction::Both,
            policy_version: "p1".into(),
        }
    }

    #[test]
    fn a_mode_change_and_its_event_commit_together_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("gated.db");
        let mut store = Store::open(&db).expect("open");
        let topics = Topics::new(
            "village",
            &SiteId::try_new("heshan-c03").expect("site"),
            &GateId::try_new("east-1").expect("gate"),
        );
        let counters = DownlinkCounters::default();
        let change = pb::ModeChange {
            mode: convert::mode_to_wire(Mode::Wartime) as i32,
            effective_at_ms: 1_000,
            issued_by: "district-office".into(),
            reason: "drill".into(),
        }
        .encode_to_vec();
        let before = faults::row_counts(&db).expect("counts");
        // Each statement of the transaction made to fail in turn: the mode
        // row, the event's sequence, the outbox row.
        let statements: [(&str, Option<&str>); 3] =
            [("meta", None), ("sequence", Some("NEW.stream = 'events'")), ("outbox", None)];
        for (table, condition) in statements {
            faults::fail_writes(&db, table, condition).expect("inject");
            let reply = handle_mode(&mut store, &topics, &context(), &counters, &change, 2_000);
            assert!(matches!(reply, Reply::None), "{table}: nothing to publish");
            assert_eq!(store.mode_schedule().expect("mode"), None, "{table}: the mode row did not move");
            assert_eq!(faults::row_counts(&db).expect("counts"), before, "{table}: nothing half-written");
            let technician =
                set_mode_by_technician(&mut store, &context(), Mode::Wartime, "technician:li", "test", 2_000);
            assert!(technician.is_err(), "{table}: the technician's change fails whole too");
            assert_eq!(store.mode_schedule().expect("mode"), None, "{table}");
            assert_eq!(faults::row_counts(&db).expect("counts"), before, "{table}");
            faults::heal_writes(&db, table).expect("heal");
        }
        assert_eq!(counters.mode_changes.load(Ordering::Relaxed), 0);
        // Healed: the mode row and its event land together.
        let reply = handle_mode(&mut store, &topics, &context(), &counters, &change, 2_000);
        assert!(matches!(reply, Reply::OutboxChanged));
        assert_eq!(store.mode_schedule().expect("mode").map(|s| s.at(2_000)), Some(Mode::Wartime));
        let counts: std::collections::HashMap<_, _> = faults::row_counts(&db).expect("counts").into_iter().collect();
        assert_eq!(counts["outbox"], 1, "one ModeChange event");
        set_mode_by_technician(&mut store, &context(), Mode::Normal, "technician:li", "test", 3_000).expect("set");
        assert_eq!(store.mode_schedule().expect("mode").map(|s| s.at(3_000)), Some(Mode::Normal));
        let counts: std::collections::HashMap<_, _> = faults::row_counts(&db).expect("counts").into_iter().collect();
        assert_eq!(counts["outbox"], 2);
    }
}
