//! Identity sync end to end: the platform (`hw_sim::platform`) publishes
//! snapshots in chunks and deltas on a real Mosquitto, the daemon runs
//! in-process on real SQLite files; what it applied is read back from its
//! store, its status and its decisions.

use anyhow::{Result, bail};
use gate_core::CredentialKind;
use gate_proto::v1 as pb;
use gate_tests::{
    EVENTS_TOPIC, GateFixture, IDENTITY_TOPIC, MODE_TOPIC, Mosquitto, RunningDaemon, SITE, STATUS_TOPIC, SYNC_TOPIC,
    Subscriber, init_test_logging, publish, publish_signed,
};
use hw_sim::platform::{Platform, PlatformConfig, PlatformPerson, generate_people};
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const LI: &str = "11010519491231002X";
const WAIT: Duration = Duration::from_secs(10);
/// 2020-01-01 to 2099-12-31, China time.
const VALID: (i64, i64) = (1_577_808_000_000, 4_102_415_999_999);

fn person(person_id: &str, id_number: &str, name: &str) -> PlatformPerson {
    PlatformPerson {
        person_id: person_id.into(),
        category: pb::Category::Resident,
        id_number: id_number.into(),
        name: name.into(),
        valid_from_ms: VALID.0,
        valid_to_ms: VALID.1,
    }
}

/// Zhang plus `extra` generated residents.
fn village(extra: usize) -> Vec<PlatformPerson> {
    let mut people = vec![person("p-zhang", ZHANG, "张三")];
    people.extend(generate_people(extra));
    people
}

struct Setup {
    broker: Mosquitto,
    sub: Subscriber,
    fx: GateFixture,
    daemon: RunningDaemon,
    platform: Platform,
}

/// Broker, subscriber, a gate with an empty identity table, the daemon
/// (connected) and a platform that does not answer sync requests unless
/// asked to.
async fn setup(answer_sync: bool) -> Result<Setup> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    // The gate's own topics only: the test subscriber takes 1 MiB messages,
    // and an oversized identity batch would stall its persistent session.
    let sub = Subscriber::connect(broker.port(), "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let key = hw_sim::platform::read_site_key(&fx.dir.path().join("site.key"))?;
    let mut config = PlatformConfig::new("127.0.0.1", broker.port(), SITE, key);
    config.answer_sync = answer_sync;
    config.signing = Some(gate_tests::platform_key());
    let platform = Platform::connect(config).await?;
    Ok(Setup { broker, sub, fx, daemon, platform })
}

fn store(fx: &GateFixture) -> gate_store::Store {
    gate_store::Store::open(&fx.store_path).expect("the daemon's store opens")
}

/// The person a gate's store finds for an ID number.
fn lookup(fx: &GateFixture, id_number: &str) -> Option<String> {
    let key = fx.credential_key(CredentialKind::IdNumber, id_number);
    store(fx).find_person_by_credential(CredentialKind::IdNumber, &key).expect("lookup").map(|p| p.person_id)
}

fn version(fx: &GateFixture) -> u64 {
    store(fx).identity_state().expect("state").version
}

async fn wait_version(fx: &GateFixture, expected: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while version(fx) != expected {
        if Instant::now() > deadline {
            bail!("identity version {} after {WAIT:?}, expected {expected}", version(fx));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn sync_requests(sub: &Subscriber) -> Vec<pb::SyncRequest> {
    sub.messages()
        .iter()
        .filter(|m| m.topic == SYNC_TOPIC)
        .map(|m| pb::SyncRequest::decode(m.payload.as_slice()).expect("a SyncRequest"))
        .collect()
}

fn resyncs(sub: &Subscriber, reason: &str) -> Vec<pb::SyncRequest> {
    sync_requests(sub).into_iter().filter(|r| r.reason == reason).collect()
}

/// Presents a card and returns the decision event it produced.
async fn decide(s: &Setup, id_number: &str) -> Result<pb::GateEvent> {
    let before = s.sub.decisions(EVENTS_TOPIC).len();
    s.fx.present_card(id_number, "张三").await?;
    s.sub.wait_until(WAIT, "a decision", |sub| sub.decisions(EVENTS_TOPIC).len() > before).await?;
    Ok(s.sub.decisions(EVENTS_TOPIC)[before].clone())
}

fn counter(s: &Setup, which: impl Fn(&gate_sync::DownlinkCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    which(&s.daemon.observed.link.downlink).load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_chunks_out_of_order_is_applied_and_reported() -> Result<()> {
    let s = setup(false).await?;
    let people = village(23);
    let chunks = s.platform.snapshot_payloads(&people, 7, 5);
    assert_eq!(chunks.len(), 5);
    for i in [3, 0, 4, 2] {
        s.platform.publish_identity(chunks[i].clone()).await?;
    }
    s.platform.flush(WAIT).await?;
    let deadline = Instant::now() + WAIT;
    while counter(&s, |c| &c.identity_staged) < 4 {
        assert!(Instant::now() < deadline, "four chunks staged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((version(&s.fx), lookup(&s.fx, ZHANG)), (0, None), "nothing applies before the last chunk");
    assert_eq!(decide(&s, ZHANG).await?.reason(), pb::Reason::UnknownPerson, "decisions go on meanwhile");

    s.platform.publish_identity(chunks[1].clone()).await?;
    wait_version(&s.fx, 7).await?;
    assert_eq!(store(&s.fx).person_count()?, 24);
    assert_eq!(lookup(&s.fx, ZHANG).as_deref(), Some("p-zhang"));
    assert_eq!(lookup(&s.fx, &people[20].id_number).as_deref(), Some(people[20].person_id.as_str()));
    let pass = decide(&s, ZHANG).await?;
    assert_eq!((pass.decision(), pass.person_id.as_str()), (pb::Decision::Pass, "p-zhang"));

    // The retained status says which version the gate decides on (it is
    // refreshed every 15 s).
    s.sub
        .wait_until(Duration::from_secs(20), "a status with the identity version", |sub| {
            sub.last_status(STATUS_TOPIC).is_some_and(|st| st.identity_version == 7 && st.identity_synced_at_ms > 0)
        })
        .await?;
    assert_eq!(counter(&s, |c| &c.rejected), 0);
    assert!(resyncs(&s.sub, "gap").is_empty() && resyncs(&s.sub, "corrupt").is_empty());
    s.daemon.stop().await?;
    drop(s.broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_with_a_gap_asks_for_a_resync_and_applies_nothing() -> Result<()> {
    let s = setup(false).await?;
    s.platform.publish_snapshot(&village(3), 1, 5000).await?;
    wait_version(&s.fx, 1).await?;

    s.platform.publish_delta(3, 4, &[person("p-li", LI, "李四")], &["p-zhang".into()]).await?;
    s.sub.wait_until(WAIT, "a gap resync request", |sub| !resyncs(sub, "gap").is_empty()).await?;
    let request = &resyncs(&s.sub, "gap")[0];
    assert_eq!((request.local_version, request.gate_id.as_str(), request.site_id.as_str()), (1, "east-1", SITE));
    assert_eq!(version(&s.fx), 1);
    assert_eq!((lookup(&s.fx, LI), lookup(&s.fx, ZHANG).as_deref()), (None, Some("p-zhang")), "nothing applied");

    // The delta the gate is missing, then the one it refused, apply in order.
    s.platform.publish_delta(1, 3, &[], &[]).await?;
    wait_version(&s.fx, 3).await?;
    s.platform.publish_delta(3, 4, &[person("p-li", LI, "李四")], &["p-zhang".into()]).await?;
    wait_version(&s.fx, 4).await?;
    assert_eq!((lookup(&s.fx, LI).as_deref(), lookup(&s.fx, ZHANG)), (Some("p-li"), None));
    assert_eq!(decide(&s, LI).await?.decision(), pb::Decision::Pass);
    s.daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_twice_changes_nothing() -> Result<()> {
    let s = setup(false).await?;
    let people = village(9);
    let chunks = s.platform.snapshot_payloads(&people, 2, 4);
    for chunk in chunks.iter().chain(chunks.iter()) {
        s.platform.publish_identity(chunk.clone()).await?;
    }
    s.platform.flush(WAIT).await?;
    wait_version(&s.fx, 2).await?;
    let delta = s.platform.delta_payload(2, 3, &[person("p-li", LI, "李四")], &["p-zhang".into()]);
    s.platform.publish_identity(delta.clone()).await?;
    wait_version(&s.fx, 3).await?;
    let duplicates = counter(&s, |c| &c.identity_duplicates);
    // The same delta, and the whole older snapshot, once more.
    s.platform.publish_identity(delta).await?;
    for chunk in &chunks {
        s.platform.publish_identity(chunk.clone()).await?;
    }
    s.platform.flush(WAIT).await?;
    let deadline = Instant::now() + WAIT;
    while counter(&s, |c| &c.identity_duplicates) < duplicates + 1 + chunks.len() as u64 {
        assert!(Instant::now() < deadline, "every repeated batch counted as a duplicate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version(&s.fx), 3);
    assert_eq!(store(&s.fx).person_count()?, 10, "9 + Zhang - Zhang + Li");
    assert_eq!((lookup(&s.fx, ZHANG), lookup(&s.fx, LI).as_deref()), (None, Some("p-li")), "no resurrection");
    assert_eq!(counter(&s, |c| &c.identity_applied), 2, "one snapshot, one delta");
    assert_eq!(counter(&s, |c| &c.rejected), 0);
    assert!(resyncs(&s.sub, "gap").is_empty() && resyncs(&s.sub, "corrupt").is_empty());
    s.daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_batches_are_rejected_counted_and_change_nothing() -> Result<()> {
    let s = setup(false).await?;
    s.platform.publish_snapshot(&village(2), 1, 5000).await?;
    wait_version(&s.fx, 1).await?;

    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    // Not protobuf at all (a varint field 1 that never ends).
    bad.push(("random bytes", vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x13]));
    // A snapshot whose last person has an unknown category: the valid
    // people of the same chunk must not be staged either.
    let good =
        s.platform.snapshot_payloads(&[person("p-li", LI, "李四"), person("p-x", "110105194912310010", "某")], 2, 5);
    let mut batch = pb::IdentityBatch::decode(good[0].as_slice())?;
    if let Some(pb::identity_batch::Body::Snapshot(chunk)) = batch.body.as_mut() {
        chunk.people[1].category = 99;
    }
    bad.push(("unknown enum value", batch.encode_to_vec()));
    // A delta whose credential key has 31 bytes.
    let mut batch =
        pb::IdentityBatch::decode(s.platform.delta_payload(1, 2, &[person("p-li", LI, "李四")], &[]).as_slice())?;
    if let Some(pb::identity_batch::Body::Delta(delta)) = batch.body.as_mut() {
        delta.upserts[0].credentials[0].key.truncate(31);
    }
    bad.push(("key of the wrong length", batch.encode_to_vec()));
    // A snapshot chunk index beyond its count.
    let mut batch = pb::IdentityBatch::decode(good[0].as_slice())?;
    if let Some(pb::identity_batch::Body::Snapshot(chunk)) = batch.body.as_mut() {
        chunk.chunk_index = 1;
    }
    bad.push(("chunk 1 of 1", batch.encode_to_vec()));
    // Over the 8 MiB limit (and inside the MQTT packet limit, so it reaches
    // the gate's check).
    bad.push(("oversized", vec![0u8; (8 << 20) + 100]));

    // Each signed by the platform: the content itself is refused.
    let dropped = |s: &Setup| {
        let c = &s.daemon.observed.link.downlink;
        c.rejected.load(Ordering::Relaxed) + gate_sync::Refusal::ALL.iter().map(|r| c.refused(*r)).sum::<u64>()
    };
    for (i, (what, payload)) in bad.iter().enumerate() {
        publish_signed(s.broker.port(), IDENTITY_TOPIC, payload.clone(), false).await?;
        let deadline = Instant::now() + WAIT;
        while dropped(&s) < i as u64 + 1 {
            assert!(Instant::now() < deadline, "{what}: not counted as rejected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(counter(&s, |c| &c.rejected), bad.len() as u64 - 1, "content refused after the signature verified");
    assert_eq!(s.daemon.observed.link.downlink.refused(gate_sync::Refusal::Oversize), 1);
    // Garbage on the mode topic is refused the same way.
    publish(s.broker.port(), MODE_TOPIC, vec![0xff; 7], false).await?;
    let deadline = Instant::now() + WAIT;
    while dropped(&s) < bad.len() as u64 + 1 {
        assert!(Instant::now() < deadline, "a corrupt ModeChange is counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every rejected identity batch asks for a resync; the oversized one is
    // refused before it is read.
    s.sub.wait_until(WAIT, "corrupt resync requests", |sub| resyncs(sub, "corrupt").len() >= bad.len() - 1).await?;
    assert!(resyncs(&s.sub, "corrupt").iter().all(|r| r.local_version == 1));

    assert_eq!(version(&s.fx), 1);
    assert_eq!(store(&s.fx).person_count()?, 3);
    assert_eq!(lookup(&s.fx, LI), None, "nothing of any corrupt batch applied");
    assert_eq!(store(&s.fx).snapshot_progress()?, None, "nothing staged");
    // Still alive and deciding, and still taking good batches.
    assert_eq!(decide(&s, ZHANG).await?.decision(), pb::Decision::Pass);
    s.platform.publish_delta(1, 2, &[person("p-li", LI, "李四")], &[]).await?;
    wait_version(&s.fx, 2).await?;
    assert_eq!(lookup(&s.fx, LI).as_deref(), Some("p-li"));
    s.daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_mqtt_packet_limit_is_dropped_by_the_broker_without_a_reconnection() -> Result<()> {
    let s = setup(false).await?;
    s.platform.publish_snapshot(&village(2), 1, 5000).await?;
    wait_version(&s.fx, 1).await?;
    let link = &s.daemon.observed.link;
    let (connections, errors) =
        (link.connections.load(Ordering::Relaxed), link.connection_errors.load(Ordering::Relaxed));
    // Past the packet limit the gate announced at CONNECT (8 MiB + 1 KiB)
    // the broker drops the message for the gate instead of sending it.
    publish(s.broker.port(), IDENTITY_TOPIC, vec![0u8; 9 << 20], false).await?;
    let deadline = Instant::now() + WAIT;
    while !s.broker.log().contains("Dropping too large outgoing PUBLISH for gated-heshan-c03-east-1") {
        assert!(Instant::now() < deadline, "the broker dropped the message for the gate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(link.connections.load(Ordering::Relaxed), connections, "no reconnection");
    assert_eq!(link.connection_errors.load(Ordering::Relaxed), errors);
    s.daemon.wait_connected().await?;
    assert_eq!((version(&s.fx), store(&s.fx).person_count()?), (1, 3));
    assert_eq!(decide(&s, ZHANG).await?.decision(), pb::Decision::Pass);
    s.platform.publish_delta(1, 2, &[person("p-li", LI, "李四")], &[]).await?;
    wait_version(&s.fx, 2).await?;
    s.daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_records_events_and_checks_their_seq() -> Result<()> {
    let s = setup(false).await?;
    s.platform.publish_snapshot(&village(12), 5, 5).await?;
    wait_version(&s.fx, 5).await?;
    for id in [ZHANG, LI, ZHANG] {
        decide(&s, id).await?;
    }
    let decisions = |p: &Platform| -> Vec<pb::GateEvent> {
        p.events().into_iter().map(|e| e.event).filter(|e| e.kind() == pb::EventKind::Decision).collect()
    };
    let deadline = Instant::now() + WAIT;
    while decisions(&s.platform).len() < 3 || s.platform.events().len() < s.sub.unique_events(EVENTS_TOPIC).len() {
        assert!(Instant::now() < deadline, "the platform got every event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Decisions and the passages after each unlock share one gap-free sequence.
    let events = s.platform.events();
    let seqs: Vec<u64> = events.iter().map(|e| e.event.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.gate == "east-1"));
    let decisions = decisions(&s.platform);
    assert_eq!(decisions[0].subject, "350203********123X", "masked as received");
    assert_eq!(decisions[1].reason(), pb::Reason::UnknownPerson);
    assert!(s.platform.gaps().is_empty() && s.platform.duplicates().is_empty());
    assert!(s.platform.sync_requests().iter().all(|(gate, _)| gate == "east-1"));
    s.daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gate_gets_the_snapshot_by_asking() -> Result<()> {
    let s = setup(true).await?;
    let people = village(12);
    s.platform.publish_snapshot(&people, 3, 4).await?;
    wait_version(&s.fx, 3).await?;
    // A second gate of the site, started after the snapshot went out.
    let fx2 = GateFixture::new(s.broker.port(), &[])?;
    let mut config = fx2.config();
    config.gate.id = gate_core::GateId::try_new("west-2")?;
    config.mqtt.client_id = "gated-heshan-c03-west-2".into();
    std::fs::copy(s.fx.dir.path().join("site.key"), fx2.dir.path().join("site.key"))?;
    let daemon2 = RunningDaemon::start(config);
    daemon2.wait_connected().await?;
    wait_version(&fx2, 3).await?;
    assert_eq!(
        store(&fx2)
            .find_person_by_credential(CredentialKind::IdNumber, &s.fx.credential_key(CredentialKind::IdNumber, ZHANG))?
            .map(|p| p.person_id)
            .as_deref(),
        Some("p-zhang")
    );
    assert!(s.platform.sync_requests().iter().any(|(gate, r)| gate == "west-2" && r.local_version == 0));
    daemon2.stop().await?;
    s.daemon.stop().await?;
    Ok(())
}

#[test]
fn a_snapshot_missing_a_chunk_asks_again_after_the_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = gate_store::Store::open(&dir.path().join("g.db"))?;
    let key = [7u8; 32];
    let people = village(4);
    let chunks: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            let chunk = pb::IdentitySnapshotChunk {
                version: 9,
                chunk_index: i,
                chunk_count: 2,
                people: people[i as usize * 3..(i as usize * 3 + 3).min(people.len())]
                    .iter()
                    .map(|p| pb::Person {
                        person_id: p.person_id.clone(),
                        category: pb::Category::Resident as i32,
                        status: pb::PersonStatus::Active as i32,
                        valid_from_ms: p.valid_from_ms,
                        valid_to_ms: p.valid_to_ms,
                        display_name: p.name.clone(),
                        credentials: vec![pb::Credential {
                            r#type: pb::CredentialType::IdCard as i32,
                            key: hw_sim::platform::credential_key(&key, "id_number", &p.id_number).to_vec(),
                        }],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            pb::IdentityBatch { body: Some(pb::identity_batch::Body::Snapshot(chunk)) }.encode_to_vec()
        })
        .collect();
    let t0 = 1_000_000;
    assert_eq!(
        gate_sync::handle_identity(&mut store, &chunks[1], t0),
        gate_sync::IdentityOutcome::Staged { version: 9, chunk_index: 1, chunk_count: 2 }
    );
    let stall = gate_sync::SNAPSHOT_STALL_MS;
    assert_eq!(gate_sync::check_stalled(&mut store, t0 + stall - 1), None);
    let missing = gate_sync::IdentityOutcome::Resync { local_version: 0, reason: "missing_chunk" };
    assert_eq!(gate_sync::check_stalled(&mut store, t0 + stall), Some(missing.clone()));
    assert_eq!(gate_sync::check_stalled(&mut store, t0 + stall + 1), None, "once per timeout");
    assert_eq!(gate_sync::check_stalled(&mut store, t0 + 2 * stall), Some(missing));
    assert_eq!(
        gate_sync::handle_identity(&mut store, &chunks[0], t0 + 2 * stall + 5),
        gate_sync::IdentityOutcome::Applied { version: 9 }
    );
    assert_eq!(gate_sync::check_stalled(&mut store, t0 + 10 * stall), None, "nothing staging any more");
    assert_eq!(store.person_count()?, 5);
    Ok(())
}

#[test]
fn snapshot_chunk_fields_are_checked_before_anything_is_staged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = gate_store::Store::open(&dir.path().join("g.db"))?;
    let person = pb::Person {
        person_id: "p1".into(),
        category: pb::Category::Resident as i32,
        status: pb::PersonStatus::Active as i32,
        valid_from_ms: VALID.0,
        valid_to_ms: VALID.1,
        credentials: vec![pb::Credential { r#type: pb::CredentialType::IdCard as i32, key: vec![1; 32] }],
        ..Default::default()
    };
    let chunk = |version: u64, chunk_index: u32, chunk_count: u32| {
        let chunk = pb::IdentitySnapshotChunk {
            version,
            chunk_index,
            chunk_count,
            people: vec![person.clone()],
            ..Default::default()
        };
        pb::IdentityBatch { body: Some(pb::identity_batch::Body::Snapshot(chunk)) }.encode_to_vec()
    };
    for (what, payload) in [
        ("version 0", chunk(0, 0, 1)),
        ("version past i64", chunk(u64::MAX, 0, 1)),
        ("no chunks", chunk(1, 0, 0)),
        ("too many chunks", chunk(1, 0, gate_sync::MAX_SNAPSHOT_CHUNKS + 1)),
        ("index past the count", chunk(1, 2, 2)),
        ("empty batch", pb::IdentityBatch { body: None }.encode_to_vec()),
    ] {
        let outcome = gate_sync::handle_identity(&mut store, &payload, 1);
        assert!(matches!(outcome, gate_sync::IdentityOutcome::Rejected { .. }), "{what}: {outcome:?}");
    }
    assert_eq!(store.snapshot_progress()?, None);
    assert_eq!((store.person_count()?, store.identity_state()?.version), (0, 0));
    assert_eq!(
        gate_sync::handle_identity(&mut store, &chunk(1, 0, 1), 1),
        gate_sync::IdentityOutcome::Applied { version: 1 }
    );
    Ok(())
}

/// Whether any of the gate's database files (and their logs) holds `needle`.
fn store_files_hold(fx: &GateFixture, needle: &str) -> bool {
    let ident = gate_store::identity_path(&fx.store_path);
    [fx.store_path.clone(), ident]
        .iter()
        .flat_map(|base| ["", "-wal"].map(|suffix| format!("{}{suffix}", base.display())))
        .filter_map(|file| std::fs::read(file).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// A stop between a snapshot's switch and the freeing of what it replaced
/// leaves the old tables, with the people the snapshot dropped: the daemon
/// frees them when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_a_snapshot_replaced_are_freed_when_the_daemon_starts_again() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let chunk = |version: u64, ids: &[&str]| gate_store::SnapshotChunk {
        version,
        chunk_index: 0,
        chunk_count: 1,
        people: ids
            .iter()
            .enumerate()
            .map(|(i, id)| gate_store::NewPerson {
                person: gate_core::PersonRecord::new(
                    *id,
                    gate_core::Category::Resident,
                    gate_core::PersonStatus::Active,
                    VALID.0,
                    VALID.1,
                ),
                credentials: vec![(CredentialKind::IdNumber, [i as u8 + 1; 32])],
            })
            .collect(),
        ..Default::default()
    };
    {
        let mut store = store(&fx);
        store.stage_snapshot_chunk(&chunk(1, &["p-kept", "p-dropped-0417"]), 1)?;
        store.free_replaced_identity_tables()?;
        // Switched in, and stopped before the clean-up.
        assert_eq!(
            store.stage_snapshot_chunk(&chunk(2, &["p-kept"]), 2)?,
            gate_store::SnapshotOutcome::Activated { version: 2 }
        );
    }
    assert!(store_files_hold(&fx, "p-dropped-0417"), "the replaced table still holds the dropped person");
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    daemon.stop().await?;
    assert_eq!(version(&fx), 2);
    assert_eq!(lookup_key(&fx, [1; 32]).as_deref(), Some("p-kept"));
    assert!(!store_files_hold(&fx, "p-dropped-0417"), "the dropped person's rows are freed and zeroed");
    Ok(())
}

fn lookup_key(fx: &GateFixture, key: [u8; 32]) -> Option<String> {
    store(fx).find_person_by_credential(CredentialKind::IdNumber, &key).expect("lookup").map(|p| p.person_id)
}
