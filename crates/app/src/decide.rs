//! The decision loop: one task that owns the store connection used for
//! decisions. For each credential it gathers the facts (identity table,
//! watchlist, pass state, anti-passback, mode and policy), lets the engine
//! decide, records the event durably (and an alert when the reason calls
//! for one), and only then commands the gate. If the event cannot be
//! recorded, the gate stays shut.

use crate::alerts::AlertBook;
use gate_config::{Config, Side};
use gate_core::{
    BlockReason, CredentialKind, Decision, Lane, Mode, ModeOrigin, ModeSchedule, SiteKey, UnixMillis, Verdict,
};
use gate_devices::gate_io::{GateCommand, GateIoEvent, PassageSide};
use gate_devices::idcard::CardEvent;
use gate_devices::plate_reader::{PlateEvent, PlateRead};
use gate_devices::qr_scanner::QrEvent;
use gate_devices::sam::CardError;
use gate_engine::{AntiPassback, Attempt, CredentialFacts, GateContext, HealthCheck, LastPassage, PassFacts, decide};
use gate_pass::PlatformKeys;
use gate_store::Store;
use gate_sync::{ALERT_STREAM, AlertRecord, EVENT_STREAM, EventBody, EventRecord, Topics, encode_alert, encode_event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Counts of what the loop did, for diagnostics, metrics and tests.
#[derive(Debug, Default)]
pub struct DecisionCounters {
    pub passed: AtomicU64,
    pub blocked: AtomicU64,
    /// Attempts that could not be decided or recorded (the gate stayed shut).
    pub failed: AtomicU64,
    /// Card reads the reader could not make sense of (no decision made).
    pub unreadable_cards: AtomicU64,
    /// QR frames that were not usable (not UTF-8, too long).
    pub unreadable_qr: AtomicU64,
    /// Plate reads below the confidence threshold or malformed (not decisions).
    pub unusable_plates: AtomicU64,
    pub passages: AtomicU64,
    pub alerts: AtomicU64,
    /// Blocks by reason name.
    pub blocked_by_reason: Mutex<HashMap<&'static str, u64>>,
}

impl DecisionCounters {
    fn count_block(&self, reason: BlockReason) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let mut by = self.blocked_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *by.entry(reason.as_str()).or_default() += 1;
    }

    /// Blocks so far for one reason.
    pub fn blocked_for(&self, reason: BlockReason) -> u64 {
        let by = self.blocked_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        by.get(reason.as_str()).copied().unwrap_or(0)
    }
}

/// A credential presented at one side of the gate.
#[derive(Debug)]
pub(crate) enum Presented {
    Card(CardEvent, Side),
    Qr(QrEvent, Side),
    Plate(PlateEvent, Side),
}

/// A valid visitor pass seen recently: a visitor's ID card read soon after
/// counts as covered by it.
#[derive(Debug, Clone)]
struct RecentPass {
    visitor_id_hash: String,
    at_ms: UnixMillis,
}

pub(crate) struct DecisionLoop {
    site_key: SiteKey,
    store: Store,
    outbox_changed: Arc<Notify>,
    gate: Option<mpsc::Sender<GateCommand>>,
    counters: Arc<DecisionCounters>,
    topics: Topics,
    config: Config,
    passes: PlatformKeys,
    recent_passes: Vec<RecentPass>,
    alerts: AlertBook,
}

/// Facts gathered for one attempt, before the engine runs.
struct Gathered {
    credential: CredentialKind,
    facts: CredentialFacts,
    subject: String,
    /// The keyed hash of the credential, when it has one.
    key: Option<[u8; 32]>,
    pass_id: Option<String>,
    visitor_id_hash: Option<String>,
}

impl DecisionLoop {
    pub(crate) fn new(
        config: &Config,
        site_key: SiteKey,
        store: Store,
        outbox_changed: Arc<Notify>,
        gate: Option<mpsc::Sender<GateCommand>>,
        counters: Arc<DecisionCounters>,
    ) -> Self {
        let passes = PlatformKeys::from_raw(&config.passes.platform_keys).unwrap_or_else(|index| {
            warn!(index, "[passes] platform_keys holds a key that is not a valid Ed25519 point; no pass will verify");
            PlatformKeys::default()
        });
        DecisionLoop {
            site_key,
            store,
            outbox_changed,
            gate,
            counters,
            topics: Topics::new(&config.mqtt.topic_prefix, &config.site.id, &config.gate.id),
            config: config.clone(),
            passes,
            recent_passes: Vec::new(),
            alerts: AlertBook::new(config.alerts.quiet_period.as_millis() as i64),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut presented: mpsc::Receiver<Presented>,
        mut gate_events: mpsc::Receiver<GateIoEvent>,
        shutdown: CancellationToken,
    ) {
        let mut presented_open = true;
        let mut gate_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                item = presented.recv(), if presented_open => match item {
                    Some(item) => {
                        let now = crate::wall_clock_ms();
                        if let Some((verdict, side)) = self.on_presented(item, now)
                            && verdict.decision == Decision::Pass {
                                // Only `Send` values may live across this await
                                // (the store connection is not `Sync`).
                                unlock(self.gate.clone(), side).await;
                            }
                    }
                    None => presented_open = false,
                },
                event = gate_events.recv(), if gate_open => match event {
                    Some(event) => self.on_gate_event(event, crate::wall_clock_ms()),
                    None => gate_open = false,
                },
            }
        }
    }

    /// The mode in force now; the default before any was ever set.
    pub(crate) fn mode(&self, now: UnixMillis) -> Mode {
        match self.store.mode_schedule() {
            Ok(Some(schedule)) => schedule.at(now),
            Ok(None) => Mode::Normal,
            Err(e) => {
                // An unreadable mode must not open the site up: assume the
                // strictest.
                error!(error = %e, "cannot read the site mode; deciding as in wartime");
                Mode::Wartime
            }
        }
    }

    fn gather(&mut self, item: Presented) -> Option<(Gathered, Side)> {
        match item {
            Presented::Card(card, side) => self.gather_card(card).map(|g| (g, side)),
            Presented::Qr(qr, side) => self.gather_qr(qr).map(|g| (g, side)),
            Presented::Plate(plate, side) => self.gather_plate(plate).map(|g| (g, side)),
        }
    }

    fn gather_card(&mut self, card: CardEvent) -> Option<Gathered> {
        let g = |facts, subject, key| Gathered {
            credential: CredentialKind::IdNumber,
            facts,
            subject,
            key,
            pass_id: None,
            visitor_id_hash: None,
        };
        match card {
            CardEvent::Read(record) => {
                let key = self.site_key.credential_key(CredentialKind::IdNumber, record.id_number.expose());
                Some(g(
                    CredentialFacts::IdCard { card_valid_to: record.valid_to },
                    record.id_number.masked(),
                    Some(key),
                ))
            }
            CardEvent::Rejected(CardError::InvalidIdNumber { masked }) => {
                Some(g(CredentialFacts::Refused(BlockReason::InvalidIdNumber), masked, None))
            }
            CardEvent::Rejected(CardError::UnsupportedCardType { .. }) => {
                Some(g(CredentialFacts::Refused(BlockReason::UnsupportedCard), String::new(), None))
            }
            CardEvent::Rejected(other) => {
                self.counters.unreadable_cards.fetch_add(1, Ordering::Relaxed);
                warn!(error = %other, "card could not be read; no decision made");
                None
            }
        }
    }

    fn gather_qr(&mut self, qr: QrEvent) -> Option<Gathered> {
        let text = match qr {
            QrEvent::Scanned(text) => text,
            QrEvent::Rejected(e) => {
                self.counters.unreadable_qr.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "QR frame unusable; no decision made");
                return None;
            }
        };
        if text.starts_with(gate_pass::PREFIX) {
            return Some(self.gather_pass(&text));
        }
        // Any other code is a static QR credential registered to a person.
        let key = self.site_key.credential_key(CredentialKind::QrPass, &text);
        Some(Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::IdCard { card_valid_to: None },
            subject: gate_core::id_number::mask_id_like(&text),
            key: Some(key),
            pass_id: None,
            visitor_id_hash: None,
        })
    }

    fn gather_pass(&mut self, token: &str) -> Gathered {
        let refused = |reason| Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::Refused(reason),
            subject: String::new(),
            key: None,
            pass_id: None,
            visitor_id_hash: None,
        };
        let pass = match self.passes.verify(token, self.config.site.id.as_str()) {
            Ok(pass) => pass,
            Err(e) => {
                warn!(error = %e, "visitor pass refused as invalid");
                return refused(BlockReason::PassInvalid);
            }
        };
        let uses_so_far = self.store.pass_uses(&pass.pass_id).unwrap_or_else(|e| {
            // Unknown use count: treat the pass as spent rather than let it
            // through more often than issued.
            error!(error = %e, "cannot read pass uses");
            u32::MAX
        });
        let revoked = self.store.is_pass_revoked(&pass.pass_id).unwrap_or_else(|e| {
            error!(error = %e, "cannot read pass revocations; treating the pass as revoked");
            true
        });
        let facts = PassFacts {
            pass_id: pass.pass_id.clone(),
            valid_from_ms: pass.valid_from_ms,
            valid_to_ms: pass.valid_to_ms,
            allowed_gates: pass.gates.clone(),
            max_uses: pass.max_uses,
            uses_so_far,
            revoked,
        };
        Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::VisitorPass(facts),
            subject: format!("pass:{}", pass.pass_id),
            key: None,
            pass_id: Some(pass.pass_id),
            visitor_id_hash: Some(pass.visitor_id_hash),
        }
    }

    fn gather_plate(&mut self, plate: PlateEvent) -> Option<Gathered> {
        match plate {
            PlateEvent::Read(PlateRead { plate, .. }) => {
                let key = self.site_key.credential_key(CredentialKind::Plate, &plate);
                Some(Gathered {
                    credential: CredentialKind::Plate,
                    facts: CredentialFacts::Plate,
                    subject: mask_plate(&plate),
                    key: Some(key),
                    pass_id: None,
                    visitor_id_hash: None,
                })
            }
            PlateEvent::LowConfidence { confidence } => {
                self.counters.unusable_plates.fetch_add(1, Ordering::Relaxed);
                debug!(confidence, "plate read below the confidence threshold; not a decision");
                None
            }
            PlateEvent::Rejected(e) => {
                self.counters.unusable_plates.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "plate line unusable; not a decision");
                None
            }
        }
    }

    /// Decides and records one attempt. Returns the verdict once it is
    /// durable; `None` when nothing was decided (unreadable input) or the
    /// decision could not be recorded (the gate stays shut).
    pub(crate) fn on_presented(&mut self, item: Presented, now: UnixMillis) -> Option<(Verdict, Side)> {
        let (g, side) = self.gather(item)?;
        if self.config.gate.lane == Lane::Vehicle && g.credential != CredentialKind::Plate {
            debug!("a person's credential at a vehicle lane is decided like any other");
        }
        let lookup = |store: &Store, key: &Option<[u8; 32]>| -> gate_store::Result<_> {
            match key {
                Some(key) => {
                    Ok((store.find_person_by_credential(g.credential, key)?, store.is_watchlisted(g.credential, key)?))
                }
                None => Ok((None, false)),
            }
        };
        let (person, watchlisted) = match lookup(&self.store, &g.key) {
            Ok(found) => found,
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "identity lookup failed; gate stays shut");
                return None;
            }
        };
        let passback_subject = person
            .as_ref()
            .map(|p| format!("person:{}", p.person_id))
            .or_else(|| g.pass_id.as_ref().map(|id| format!("pass:{id}")));
        let last_passage = match (&passback_subject, self.config.gate.anti_passback) {
            (Some(subject), mode) if mode != AntiPassback::Off => match self.store.last_passage(subject) {
                Ok(entry) => entry.and_then(|e| Side::parse(&e.side).map(|side| LastPassage { side, at_ms: e.at_ms })),
                Err(e) => {
                    error!(error = %e, "cannot read anti-passback state");
                    None
                }
            },
            _ => None,
        };
        self.recent_passes.retain(|p| now - p.at_ms <= self.config.passes.companion_window.as_millis() as i64);
        let companion_pass = g.key.is_some_and(|key| {
            let hash = hex::encode(key);
            self.recent_passes.iter().any(|p| p.visitor_id_hash.eq_ignore_ascii_case(&hash))
        });
        let mode = self.mode(now);
        let policy = self.config.policy.for_mode(mode);
        let context = GateContext {
            gate_id: self.config.gate.id.as_str(),
            flexible: self.config.gate.flexible,
            mode,
            policy,
            offset: self.config.site.utc_offset,
            anti_passback: self.config.gate.anti_passback,
            side,
        };
        let attempt = Attempt {
            credential: &g.facts,
            person: person.as_ref(),
            watchlisted,
            last_passage,
            companion_pass,
            health: HealthCheck::NotChecked,
        };
        let verdict = decide(attempt, context, now);
        let record = self.event_record(
            now,
            mode,
            EventBody::Decision {
                credential: g.credential,
                subject_masked: g.subject.clone(),
                verdict: verdict.clone(),
                side: wire_side(side),
                pass_id: g.pass_id.clone(),
            },
        );
        // Recorded before the gate moves: a pass that cannot be recorded is
        // not a pass.
        let seq =
            match self.store.append_event(EVENT_STREAM, &self.topics.events, now, |seq| encode_event(&record, seq)) {
                Ok(seq) => seq,
                Err(e) => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "could not record the decision; gate stays shut");
                    return None;
                }
            };
        let reason = verdict.reason.map_or("", BlockReason::as_str);
        let person_id = verdict.person_id.as_deref().unwrap_or("");
        let category = verdict.category.map_or("", |c| c.as_str());
        match verdict.decision {
            Decision::Pass => {
                self.counters.passed.fetch_add(1, Ordering::Relaxed);
                info!(seq, decision = "pass", credential = g.credential.as_str(), subject = %g.subject, person_id, category, mode = mode.as_str(), side = side.as_str(), "decision");
                if let Some(pass_id) = &g.pass_id {
                    if let Err(e) = self.store.count_pass_use(pass_id) {
                        error!(error = %e, "could not count a pass use");
                    }
                    if let Some(hash) = &g.visitor_id_hash {
                        self.recent_passes.push(RecentPass { visitor_id_hash: hash.clone(), at_ms: now });
                    }
                }
                if let Some(subject) = &passback_subject
                    && self.config.gate.anti_passback != AntiPassback::Off
                        && let Err(e) = self.store.record_passage(subject, side.as_str(), now) {
                            error!(error = %e, "could not record anti-passback state");
                        }
            }
            Decision::Block => {
                if let Some(r) = verdict.reason {
                    self.counters.count_block(r);
                }
                info!(seq, decision = "block", reason, credential = g.credential.as_str(), subject = %g.subject, person_id, category, mode = mode.as_str(), side = side.as_str(), "decision");
                if let Some(r) = verdict.reason.filter(|r| r.raises_alert()) {
                    self.raise_alert(now, mode, &g.subject, &verdict, r, Vec::new());
                }
            }
        }
        self.outbox_changed.notify_one();
        Some((verdict, side))
    }

    fn event_record(&self, now: UnixMillis, mode: Mode, body: EventBody) -> EventRecord {
        EventRecord {
            event_id: uuid::Uuid::new_v4().to_string(),
            site_id: self.config.site.id.to_string(),
            gate_id: self.config.gate.id.to_string(),
            occurred_at_ms: now,
            lane: self.config.gate.lane,
            direction: self.config.gate.direction,
            mode,
            policy_version: self.config.policy.version.clone(),
            body,
        }
    }

    /// Records an alert (or a repeat of one within the quiet period) in the
    /// alert stream of the outbox.
    fn raise_alert(
        &mut self,
        now: UnixMillis,
        mode: Mode,
        subject: &str,
        verdict: &Verdict,
        reason: BlockReason,
        facts: Vec<(String, String)>,
    ) {
        let occurrence = self.alerts.record(subject, reason.as_str(), now);
        let record = AlertRecord {
            alert_id: occurrence.alert_id.clone(),
            site_id: self.config.site.id.to_string(),
            gate_id: self.config.gate.id.to_string(),
            occurred_at_ms: now,
            subject: subject.to_owned(),
            person_id: verdict.person_id.clone(),
            category: verdict.category,
            reason: Some(reason),
            alarm: None,
            facts,
            repeat_count: occurrence.repeat_count,
            first_occurred_at_ms: occurrence.first_at_ms,
            mode,
        };
        match self.store.append_event(ALERT_STREAM, &self.topics.alerts, now, |seq| encode_alert(&record, seq)) {
            Ok(seq) => {
                self.counters.alerts.fetch_add(1, Ordering::Relaxed);
                warn!(
                    seq,
                    reason = reason.as_str(),
                    subject,
                    repeat = occurrence.repeat_count,
                    "alert to the management departments"
                );
            }
            Err(e) => error!(error = %e, "could not record an alert"),
        }
    }

    fn on_gate_event(&mut self, event: GateIoEvent, now: UnixMillis) {
        match event {
            GateIoEvent::Passage(side) => {
                self.counters.passages.fetch_add(1, Ordering::Relaxed);
                let side = match side {
                    PassageSide::Entry => Side::Entry,
                    PassageSide::Exit => Side::Exit,
                };
                let mode = self.mode(now);
                let record = self.event_record(now, mode, EventBody::Passage { side: wire_side(side) });
                match self.store.append_event(EVENT_STREAM, &self.topics.events, now, |seq| encode_event(&record, seq))
                {
                    Ok(seq) => info!(seq, side = side.as_str(), "passage"),
                    Err(e) => error!(error = %e, "could not record a passage"),
                }
                self.outbox_changed.notify_one();
            }
            GateIoEvent::Unlocked(side) => debug!(side = ?side, "unlocked"),
            GateIoEvent::Relocked(side) => debug!(side = ?side, "relocked"),
            GateIoEvent::Fault(fault) => warn!(%fault, "gate IO fault"),
        }
    }
}

fn wire_side(side: Side) -> gate_sync::Side {
    match side {
        Side::Entry => gate_sync::Side::Entry,
        Side::Exit => gate_sync::Side::Exit,
    }
}

/// Plates: province and the last two characters kept.
fn mask_plate(plate: &str) -> String {
    let chars: Vec<char> = plate.chars().collect();
    chars.iter().enumerate().map(|(i, c)| if i == 0 || i + 2 >= chars.len() { *c } else { '*' }).collect()
}

async fn unlock(gate: Option<mpsc::Sender<GateCommand>>, side: Side) {
    let Some(gate) = gate else {
        debug!("no gate configured; nothing to unlock");
        return;
    };
    let side = match side {
        Side::Entry => PassageSide::Entry,
        Side::Exit => PassageSide::Exit,
    };
    if gate.send(GateCommand::Unlock(side)).await.is_err() {
        warn!("gate driver is not running; the gate stays shut");
    }
}

/// Sets the mode as a technician (recorded as an event with who and why).
/// Used by `gatectl mode set` through the store, so it works with the
/// daemon stopped too.
pub fn set_mode_locally(
    store: &mut Store,
    config: &Config,
    mode: Mode,
    operator: &str,
    reason: &str,
    now: UnixMillis,
) -> gate_store::Result<u64> {
    let origin = ModeOrigin { operator: format!("technician:{operator}"), reason: reason.to_owned() };
    let current = store.mode_schedule()?.unwrap_or_else(|| ModeSchedule::constant(Mode::Normal));
    let schedule = current.with_change(now, mode, now, origin.clone());
    store.set_mode_schedule(&schedule)?;
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.site.id, &config.gate.id);
    let record = EventRecord {
        event_id: uuid::Uuid::new_v4().to_string(),
        site_id: config.site.id.to_string(),
        gate_id: config.gate.id.to_string(),
        occurred_at_ms: now,
        lane: config.gate.lane,
        direction: config.gate.direction,
        mode,
        policy_version: config.policy.version.clone(),
        body: EventBody::ModeChange { mode, operator: origin.operator, note: origin.reason },
    };
    store.append_event(EVENT_STREAM, &topics.events, now, |seq| encode_event(&record, seq))
}
