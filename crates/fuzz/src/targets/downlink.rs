//! Every downlink handler, through the entry point the MQTT session uses
//! (`gate_sync::handle_downlink`: the signed envelope checked, the replay
//! state read and written, then the stream's handler), against a real
//! SQLite store in a temporary folder. Inputs are protobuf messages built
//! from the gate's own schema (versions taken from the store, so a share of
//! them applies) and byte-level mutations of them. The first byte says what
//! the rest is: the message as received (an envelope, mutated whole), or an
//! inner payload the target seals for its stream with a trusted key and the
//! next counter, so the handler behind the signature is reached.
//!
//! Oracle beyond "no panic": a message the handler rejected changed
//! nothing (the identity and health versions are the same after it).

use crate::rng::Rng;
use crate::{Target, class};
use gate_core::{Direction, GateId, Lane, SiteId};
use gate_envelope::{Signer, Verifier};
use gate_proto::v1 as pb;
use gate_store::Store;
use gate_sync::signed::DownlinkTrust;
use gate_sync::{DownlinkCounters, EventContext, Refusal, Topics};
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
    trust: DownlinkTrust,
    signer: Signer,
    /// The next envelope counter: above every one accepted so far.
    counter: u64,
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
        let signer = Signer::from_seed([42; 32]);
        let trust = DownlinkTrust {
            verifier: Verifier::new([signer.key_spec()]),
            site: SITE.into(),
            gate: GATE.into(),
            configured: vec![signer.key_spec()],
        };
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
            trust,
            signer,
            counter: 0,
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

    fn stream(&self) -> &'static str {
        match self.kind {
            Kind::Mode => "mode",
            Kind::Identity => "identity",
            Kind::Health => "health",
            Kind::HealthAnswer => "health_resp",
            Kind::Trust => "trust",
        }
    }

    /// `payload` sealed for this target's stream with the next counter.
    fn seal(&mut self, payload: &[u8]) -> Vec<u8> {
        self.counter += 1;
        self.signer.seal(SITE, GATE, self.stream(), self.counter, NOW_MS, payload)
    }

    /// All the downlink counters of "not applied": rejected content, trust
    /// lists refused, envelopes refused.
    fn not_applied(&self) -> u64 {
        self.counters.rejected.load(Ordering::Relaxed)
            + self.counters.trust_rejected.load(Ordering::Relaxed)
            + Refusal::ALL.iter().map(|r| self.counters.refused(*r)).sum::<u64>()
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
            Kind::Trust => gate_sync::encode_trust_list(
                rng.number(),
                (0..rng.below(3)).map(|_| rng.bytes(64)).collect(),
                rng.number() as i64,
            ),
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

/// The first byte of an input: the rest is a message as received.
const RAW: u8 = 0;
/// Any other first byte: the rest is a payload to seal.
const SEALED: u8 = 1;

impl Target for Downlink {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(13);
        let mut out = Vec::new();
        for _ in 0..6 {
            let payload = self.message(&mut rng);
            let sealed = self.seal(&payload);
            out.push([&[SEALED][..], &payload].concat());
            out.push([&[RAW][..], &sealed].concat());
        }
        out.push(vec![SEALED]);
        out.push(vec![RAW]);
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let payload = self.message(rng);
        Some(if rng.below(4) == 0 {
            let sealed = self.seal(&payload);
            [&[RAW][..], &sealed].concat()
        } else {
            [&[SEALED][..], &payload].concat()
        })
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
        let rejected_before = self.not_applied();
        let topic = self.topic().to_owned();
        let bytes = match input.split_first() {
            Some((&RAW, rest)) => rest.to_vec(),
            Some((_, rest)) => self.seal(rest),
            None => Vec::new(),
        };
        let reply = gate_sync::handle_downlink(
            &mut self.store,
            &self.topics,
            &self.context,
            &self.counters,
            &mut self.trust,
            &topic,
            &bytes,
            NOW_MS,
        );
        let rejected = self.not_applied() > rejected_before;
        let after = if versioned { self.versions() } else { (0, 0) };
        if rejected && after != before {
            panic!("a rejected {:?} message changed the store: {before:?} -> {after:?}", self.kind);
        }
        class(&(reply, rejected, after == before))
    }
}
