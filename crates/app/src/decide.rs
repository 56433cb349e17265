//! The decision loop: one task that owns the store connection used for
//! decisions. For each credential it asks the identity table, lets the
//! engine decide, records the event durably, and only then commands the
//! gate. If the event cannot be recorded, the gate stays shut.

use gate_config::Config;
use gate_core::{BlockReason, CredentialKind, Decision, Direction, SiteKey, UtcOffset};
use gate_devices::gate_io::{GateCommand, GateIoEvent, PassageSide};
use gate_devices::idcard::CardEvent;
use gate_devices::sam::CardError;
use gate_engine::{Attempt, CredentialFacts, decide};
use gate_store::Store;
use gate_sync::{DecisionRecord, EVENT_STREAM, Topics, encode_decision_event};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Counts of what the loop did, for diagnostics and tests.
#[derive(Debug, Default)]
pub struct DecisionCounters {
    pub passed: AtomicU64,
    pub blocked: AtomicU64,
    /// Attempts that could not be decided or recorded (the gate stayed shut).
    pub failed: AtomicU64,
    /// Card reads the reader could not make sense of (no decision made).
    pub unreadable_cards: AtomicU64,
    pub passages: AtomicU64,
}

pub(crate) struct DecisionLoop {
    site_key: SiteKey,
    store: Store,
    outbox_changed: Arc<Notify>,
    gate: Option<mpsc::Sender<GateCommand>>,
    counters: Arc<DecisionCounters>,
    topics: Topics,
    site_id: String,
    gate_id: String,
    lane: gate_core::Lane,
    direction: Direction,
    offset: UtcOffset,
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
        DecisionLoop {
            site_key,
            store,
            outbox_changed,
            gate,
            counters,
            topics: Topics::new(&config.mqtt.topic_prefix, &config.site.id, &config.gate.id),
            site_id: config.site.id.to_string(),
            gate_id: config.gate.id.to_string(),
            lane: config.gate.lane,
            direction: config.gate.direction,
            offset: config.site.utc_offset,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut cards: mpsc::Receiver<CardEvent>,
        mut gate_events: mpsc::Receiver<GateIoEvent>,
        shutdown: CancellationToken,
    ) {
        let mut cards_open = true;
        let mut gate_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                card = cards.recv(), if cards_open => match card {
                    Some(card) => self.on_card(card, crate::wall_clock_ms()).await,
                    None => cards_open = false,
                },
                event = gate_events.recv(), if gate_open => match event {
                    Some(event) => self.on_gate_event(event),
                    None => gate_open = false,
                },
            }
        }
    }

    async fn on_card(&mut self, card: CardEvent, now: gate_core::UnixMillis) {
        let (facts, subject, person) = match &card {
            CardEvent::Read(record) => {
                let key = self
                    .site_key
                    .credential_key(CredentialKind::IdNumber, record.id_number.expose());
                let person = match self
                    .store
                    .find_person_by_credential(CredentialKind::IdNumber, &key)
                {
                    Ok(person) => person,
                    Err(e) => {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        error!(error = %e, "identity lookup failed; gate stays shut");
                        return;
                    }
                };
                (
                    CredentialFacts::IdCard {
                        card_valid_to: record.valid_to,
                    },
                    record.id_number.masked(),
                    person,
                )
            }
            CardEvent::Rejected(CardError::InvalidIdNumber { masked }) => (
                CredentialFacts::Refused(BlockReason::InvalidIdNumber),
                masked.clone(),
                None,
            ),
            CardEvent::Rejected(CardError::UnsupportedCardType { .. }) => (
                CredentialFacts::Refused(BlockReason::UnsupportedCard),
                String::new(),
                None,
            ),
            CardEvent::Rejected(other) => {
                self.counters
                    .unreadable_cards
                    .fetch_add(1, Ordering::Relaxed);
                warn!(error = %other, "card could not be read; no decision made");
                return;
            }
        };
        let verdict = decide(
            Attempt {
                credential: facts,
                person: person.as_ref(),
            },
            now,
            self.offset,
        );
        let record = DecisionRecord {
            event_id: uuid::Uuid::new_v4().to_string(),
            site_id: self.site_id.clone(),
            gate_id: self.gate_id.clone(),
            occurred_at_ms: now,
            credential: CredentialKind::IdNumber,
            subject_masked: subject,
            verdict,
            lane: self.lane,
            direction: self.direction,
        };
        // Recorded before the gate moves: a pass that cannot be recorded is
        // not a pass.
        let seq = match self
            .store
            .append_event(EVENT_STREAM, &self.topics.events, now, |seq| {
                encode_decision_event(&record, seq)
            }) {
            Ok(seq) => seq,
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "could not record the decision; gate stays shut");
                return;
            }
        };
        self.outbox_changed.notify_one();
        let verdict = &record.verdict;
        let reason = verdict.reason.map_or("", BlockReason::as_str);
        let person_id = verdict.person_id.as_deref().unwrap_or("");
        let category = verdict.category.map_or("", |c| c.as_str());
        match verdict.decision {
            Decision::Pass => {
                self.counters.passed.fetch_add(1, Ordering::Relaxed);
                info!(seq, decision = "pass", subject = %record.subject_masked, person_id, category, "decision");
                // Only `Send` values may live across this await (the store
                // connection is not `Sync`), hence the clone.
                unlock(self.gate.clone(), self.direction).await;
            }
            Decision::Block => {
                self.counters.blocked.fetch_add(1, Ordering::Relaxed);
                info!(seq, decision = "block", reason, subject = %record.subject_masked, person_id, category, "decision");
            }
        }
    }

    fn on_gate_event(&self, event: GateIoEvent) {
        match event {
            GateIoEvent::Passage(side) => {
                self.counters.passages.fetch_add(1, Ordering::Relaxed);
                info!(side = ?side, "passage");
            }
            GateIoEvent::Unlocked(side) => debug!(side = ?side, "unlocked"),
            GateIoEvent::Relocked(side) => debug!(side = ?side, "relocked"),
            GateIoEvent::Fault(fault) => warn!(%fault, "gate IO fault"),
        }
    }
}

async fn unlock(gate: Option<mpsc::Sender<GateCommand>>, direction: Direction) {
    let Some(gate) = gate else {
        debug!("no gate configured; nothing to unlock");
        return;
    };
    let side = match direction {
        Direction::Exit => PassageSide::Exit,
        Direction::Entry | Direction::Both => PassageSide::Entry,
    };
    if gate.send(GateCommand::Unlock(side)).await.is_err() {
        warn!("gate driver is not running; the gate stays shut");
    }
}
