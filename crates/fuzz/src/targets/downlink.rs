//! Every downlink handler, through the entry point the MQTT session uses
//! (`gate_sync::handle_downlink`), against a real SQLite store in a
//! temporary folder. Inputs are protobuf messages built from the gate's own
//! schema (versions taken from the store, so a share of them applies) and
//! byte-level mutations of them.
//!
//! Oracle beyond "no panic": a message the handler rejected changed
//! nothing (the identity and health versions are the same after it).

use crate::rng::Rng;
use crate::{Target, class};
use ed25519_dalek::SigningKey;
use gate_core::{Direction, GateId, Lane, SiteId};
use gate_pass::PlatformKeys;
use gate_proto::v1 as pb;
use gate_store::Store;
use gate_sync::{DownlinkCounters, EventContext, Topics};
use prost::Message;
use std::sync::atomic::Ordering;

const SITE: &str = "sz-futian-01";
const GATE: &str = "gate-01";
/// The handlers' `now`: 2026-01-01T00:00:00Z.
const NOW_MS: i64 = 1_767_225_600_000;
/// Executions before the store is thrown away and made anew, so the
/// database (every mode change queues an event) stays small.
const FRESH_STORE_EVERY: u64 = 20_000;

/// Which handler a target drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mode,
    Identity,
    Health,
    HealthAnswer,
    Trust,
}

pub struct Downlink {
    kind: Kind,
    dir: tempfile::TempDir,
    store: Store,
    topics: Topics,
    context: EventContext,
    counters: DownlinkCounters,
    keys: PlatformKeys,
    signing: SigningKey,
    execs: u64,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink").field("kind", &self.kind).field("execs", &self.execs).finish_non_exhaustive()
    }
}

fn store_dir() -> tempfile::TempDir {
    crate::scratch_dir()
}

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("gated.db")).unwrap_or_else(|e| panic!("downlink target: cannot open a store: {e}"))
}

impl Downlink {
    pub fn new(kind: Kind) -> Self {
        let dir = store_dir();
        let store = open_store(&dir);
        let site = SiteId::try_new(SITE).unwrap_or_else(|e| panic!("{e}"));
        let gate = GateId::try_new(GATE).unwrap_or_else(|e| panic!("{e}"));
        let signing = SigningKey::from_bytes(&[42; 32]);
        let keys = PlatformKeys::from_raw(&[signing.verifying_key().to_bytes()])
            .unwrap_or_else(|_| panic!("a valid Ed25519 key"));
        Downlink {
            kind,
            dir,
            store,
            topics: Topics::new("village", &site, &gate),
            context: EventContext {
                site_id: SITE.into(),
                gate_id: GATE.into(),
                lane: Lane::Pedestrian,
                direction: Direction::Entry,
                policy_version: "fuzz".into(),
            },
            counters: DownlinkCounters::default(),
            keys,
            signing,
            execs: 0,
        }
    }

    fn topic(&self) -> &str {
        match self.kind {
            Kind::Mode => &self.topics.mode,
            Kind::Identity => &self.topics.identity,
            Kind::Health => &self.topics.health,
            Kind::HealthAnswer => &self.topics.health_resp,
            Kind::Trust => &self.topics.trust,
        }
    }

    fn versions(&self) -> (u64, u64) {
        let identity = self.store.identity_state().map(|s| s.version).unwrap_or(u64::MAX);
        let health = self.store.health_state().map(|s| s.version).unwrap_or(u64::MAX);
        (identity, health)
    }

    fn message(&self, rng: &mut Rng) -> Vec<u8> {
        let (identity_version, health_version) = match self.kind {
            Kind::Identity | Kind::Health => self.versions(),
            _ => (0, 0),
        };
        match self.kind {
            Kind::Mode => pb::ModeChange {
                mode: rng.below(5) as i32,
                effective_at_ms: *rng.pick(&[0, NOW_MS, NOW_MS + 60_000, i64::MAX, i64::MIN, -1]),
                issued_by: rng.text(),
                reason: rng.text(),
            }
            .encode_to_vec(),
            Kind::Identity => {
                let body = if rng.coin() {
                    pb::identity_batch::Body::Delta(pb::IdentityDelta {
                        from_version: if rng.below(4) == 0 { rng.number() } else { identity_version },
                        to_version: identity_version.wrapping_add(rng.number()),
                        upserts: (0..rng.below(4)).map(|_| person(rng)).collect(),
                        deletes: (0..rng.below(3)).map(|_| person_id(rng)).collect(),
                        watch_add: (0..rng.below(2)).map(|_| credential(rng)).collect(),
                        watch_remove: (0..rng.below(2)).map(|_| credential(rng)).collect(),
                        revoke_passes: (0..rng.below(2)).map(|_| rng.text()).collect(),
                    })
                } else {
                    let count = 1 + rng.below(3) as u32;
                    pb::identity_batch::Body::Snapshot(pb::IdentitySnapshotChunk {
                        version: identity_version.wrapping_add(rng.number()),
                        chunk_index: if rng.below(4) == 0 {
                            rng.number() as u32
                        } else {
                            rng.below(count as usize) as u32
                        },
                        chunk_count: if rng.below(6) == 0 { rng.number() as u32 } else { count },
                        people: (0..rng.below(4)).map(|_| person(rng)).collect(),
                        watchlist: (0..rng.below(2)).map(|_| credential(rng)).collect(),
                        revoked_passes: (0..rng.below(2)).map(|_| rng.text()).collect(),
                    })
                };
                pb::IdentityBatch { body: Some(body) }.encode_to_vec()
            }
            Kind::Health => pb::HealthBatch {
                from_version: if rng.below(4) == 0 { rng.number() } else { health_version },
                to_version: health_version.wrapping_add(rng.number()),
                upserts: (0..rng.below(4)).map(|_| health_record(rng)).collect(),
                deletes: (0..rng.below(2)).map(|_| person_id(rng)).collect(),
            }
            .encode_to_vec(),
            Kind::HealthAnswer => {
                pb::HealthResponse { correlation_id: rng.text(), record: rng.coin().then(|| health_record(rng)) }
                    .encode_to_vec()
            }
            Kind::Trust => {
                let certificates = (0..rng.below(3)).map(|_| rng.bytes(64)).collect();
                if rng.below(4) == 0 {
                    // Signed by a key the gate trusts: the list itself is parsed.
                    gate_sync::sign_trust_list(rng.number(), certificates, &self.signing)
                } else {
                    pb::SignedTrustList {
                        trust_list: pb::TrustList { version: rng.number(), certificates, issued_at_ms: 0 }
                            .encode_to_vec(),
                        signature: rng.bytes(70),
                        kid: hex::encode(rng.bytes(4)),
                    }
                    .encode_to_vec()
                }
            }
        }
    }
}

fn person_id(rng: &mut Rng) -> String {
    if rng.below(4) == 0 { rng.text() } else { format!("P{:04}", rng.below(50)) }
}

fn credential(rng: &mut Rng) -> pb::Credential {
    pb::Credential {
        r#type: rng.below(6) as i32,
        key: if rng.below(4) == 0 { rng.bytes(40) } else { vec![rng.byte(); 32] },
    }
}

fn person(rng: &mut Rng) -> pb::Person {
    pb::Person {
        person_id: person_id(rng),
        category: rng.below(5) as i32,
        status: rng.below(5) as i32,
        valid_from_ms: *rng.pick(&[0, NOW_MS - 1, i64::MIN, i64::MAX]),
        valid_to_ms: *rng.pick(&[NOW_MS + 86_400_000, 0, i64::MAX, -1]),
        display_name: rng.text(),
        tags: (0..rng.below(3)).map(|_| rng.text()).collect(),
        allowed_gates: (0..rng.below(2)).map(|_| rng.pick(&[GATE, "gate-02", ""]).to_string()).collect(),
        time_windows: (0..rng.below(2))
            .map(|_| pb::TimeWindow {
                weekdays: rng.number() as u32,
                start_minute: rng.below(1500) as u32,
                end_minute: rng.below(1500) as u32,
            })
            .collect(),
        credentials: (0..rng.below(3)).map(|_| credential(rng)).collect(),
    }
}

fn health_record(rng: &mut Rng) -> pb::HealthRecord {
    pb::HealthRecord {
        person_id: person_id(rng),
        colour: rng.below(6) as i32,
        nat: rng.below(5) as i32,
        nat_sampled_at_ms: *rng.pick(&[NOW_MS - 3_600_000, 0, i64::MIN, i64::MAX]),
        vaccine_doses: rng.number() as u32,
        last_dose_at_ms: *rng.pick(&[NOW_MS - 86_400_000, 0, -1]),
        travel_risk: rng.coin(),
        risk_areas: (0..rng.below(3)).map(|_| rng.text()).collect(),
        assessed_at_ms: *rng.pick(&[NOW_MS, 0, i64::MAX]),
        expires_at_ms: *rng.pick(&[NOW_MS + 86_400_000, 0, NOW_MS - 1]),
    }
}

impl Target for Downlink {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(13);
        let mut out: Vec<Vec<u8>> = (0..8).map(|_| self.message(&mut rng)).collect();
        out.push(Vec::new());
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        Some(self.message(rng))
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        // Protobuf tags of the fields that matter, and long varints.
        crate::tokens(&[
            &[0x08],
            &[0x10],
            &[0x0a],
            &[0x12],
            &[0x1a],
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        ])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        self.execs += 1;
        if self.execs.is_multiple_of(FRESH_STORE_EVERY) {
            let dir = store_dir();
            self.store = open_store(&dir);
            self.dir = dir;
        }
        // Only the versioned handlers are checked for "nothing applied":
        // four queries an execution are not spent where no version moves.
        let versioned = matches!(self.kind, Kind::Identity | Kind::Health);
        let before = if versioned { self.versions() } else { (0, 0) };
        let rejected_before =
            self.counters.rejected.load(Ordering::Relaxed) + self.counters.trust_rejected.load(Ordering::Relaxed);
        let topic = self.topic().to_owned();
        let reply = gate_sync::handle_downlink(
            &mut self.store,
            &self.topics,
            &self.context,
            &self.counters,
            &self.keys,
            &topic,
            input,
            NOW_MS,
        );
        let rejected = self.counters.rejected.load(Ordering::Relaxed)
            + self.counters.trust_rejected.load(Ordering::Relaxed)
            > rejected_before;
        let after = if versioned { self.versions() } else { (0, 0) };
        if rejected && after != before {
            panic!("a rejected {:?} message changed the store: {before:?} -> {after:?}", self.kind);
        }
        class(&(reply, rejected, after == before))
    }
}
