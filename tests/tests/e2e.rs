//! One card through one gate, end to end: a real Mosquitto on an ephemeral
//! port, the SAM reader and the Modbus IO board simulated by `hw-sim` on
//! pseudo-terminals, the daemon in-process, real SQLite files.

use anyhow::Result;
use gate_proto::v1 as pb;
use gate_tests::{
    EVENTS_TOPIC, FixtureOptions, GATE, GateFixture, MARKER_LAMP_KEYS, Mosquitto, RunningDaemon, SITE, STATUS_TOPIC,
    Subscriber, init_test_logging, resident,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ZHANG: &str = "35020319900101123X";
const LI: &str = "11010519491231002X";
/// Valid check character, but nobody in the identity table.
const STRANGER: &str = "440524188001010014";
/// Wrong check character.
const FORGED: &str = "350203199001011237";

const WAIT: Duration = Duration::from_secs(10);

/// A red lamp every refusal lights, for [`GateFixture::settle_gate`].
fn marker_lamp() -> FixtureOptions {
    FixtureOptions { gate_keys: MARKER_LAMP_KEYS.into(), ..Default::default() }
}

fn unlocks(fx: &GateFixture, coil: u16) -> usize {
    fx.gate.coil_writes().iter().filter(|w| w.coil == coil && w.on).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_passes_and_stranger_is_blocked_without_unlock() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], marker_lamp())?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the pass event", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    let pass = &sub.decisions(EVENTS_TOPIC)[0];
    assert_eq!(pass.decision(), pb::Decision::Pass);
    assert_eq!(pass.reason(), pb::Reason::Unspecified);
    assert_eq!(pass.person_id, "p-001");
    assert_eq!(pass.category(), pb::Category::Resident);
    assert_eq!(pass.credential_type(), pb::CredentialType::IdCard);
    assert_eq!(pass.subject, "350203********123X");
    assert_eq!((pass.seq, pass.site_id.as_str(), pass.gate_id.as_str()), (1, SITE, GATE));
    assert_eq!(pass.event_id.len(), 36, "a UUID");
    // Pulse mode: the entry coil went on, then off again.
    tokio::time::timeout(WAIT, async {
        while unlocks(&fx, 0) != 1 || fx.gate.coil(0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;

    fx.present_card(STRANGER, "陌生人").await?;
    sub.wait_until(WAIT, "the block event", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    let block = &sub.decisions(EVENTS_TOPIC)[1];
    assert_eq!(block.decision(), pb::Decision::Block);
    assert_eq!(block.reason(), pb::Reason::UnknownPerson);
    assert_eq!(block.person_id, "");
    assert_eq!(block.seq, 2);
    assert_eq!(block.subject, "440524********0014");

    fx.present_card(FORGED, "伪造").await?;
    sub.wait_until(WAIT, "the invalid-number event", |s| s.decisions(EVENTS_TOPIC).len() == 3).await?;
    let forged = &sub.decisions(EVENTS_TOPIC)[2];
    assert_eq!(forged.reason(), pb::Reason::InvalidIdNumber);
    assert_eq!(forged.subject, "350203********1237");

    // A later refusal through the same path: a wrongly issued unlock would
    // have reached the board before it.
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx, 0), 1, "only the resident unlocked the gate");
    assert_eq!(unlocks(&fx, 1), 0, "the exit side was never unlocked");

    let status = sub.last_status(STATUS_TOPIC).expect("a retained status");
    assert!(status.online);
    assert_eq!(status.version, gate_app::VERSION);
    let names: Vec<&str> = status.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["id_card", "gate"]);
    daemon.stop().await?;
    // A clean stop replaces the retained status with offline.
    sub.wait_until(WAIT, "the offline status", |s| s.last_status(STATUS_TOPIC).is_some_and(|st| !st.online)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_survives_broker_outage_and_daemon_restart_in_seq_order() -> Result<()> {
    init_test_logging();
    let mut broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    broker.stop();
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三"), resident("p-002", LI, "李四")])?;

    // Broker down: the daemon keeps deciding and queues.
    let daemon = RunningDaemon::start(fx.config());
    // Each resident walks through before the next card (the simulated
    // turnstile reports one passage per unlock).
    for (id, passages) in [(ZHANG, 1), (LI, 2), (STRANGER, 2)] {
        fx.present_card(id, "x").await?;
        wait_for(|| daemon.observed.decisions.passages.load(Ordering::Relaxed) == passages).await?;
    }
    wait_for(|| daemon.observed.decisions.passed.load(Ordering::Relaxed) == 2).await?;
    wait_for(|| daemon.observed.decisions.blocked.load(Ordering::Relaxed) == 1).await?;
    wait_for(|| unlocks(&fx, 0) == 2).await?;
    // Three decisions and the two passages the simulated turnstile reported.
    wait_for(|| daemon.observed.decisions.passages.load(Ordering::Relaxed) == 2).await?;
    assert_eq!(outbox_depth(&fx), 5);

    broker.resume()?;
    sub.wait_until(WAIT, "the five queued events", |s| s.unique_events(EVENTS_TOPIC).len() == 5).await?;
    wait_for(|| outbox_depth(&fx) == 0).await?;

    // Down again; two more cards; the daemon restarts mid-way; one more card.
    broker.stop();
    for (id, passages) in [(LI, 3), (ZHANG, 4)] {
        fx.present_card(id, "x").await?;
        wait_for(|| daemon.observed.decisions.passages.load(Ordering::Relaxed) == passages).await?;
    }
    wait_for(|| daemon.observed.decisions.passed.load(Ordering::Relaxed) == 4).await?;
    wait_for(|| daemon.observed.decisions.passages.load(Ordering::Relaxed) == 4).await?;
    daemon.stop().await?;
    let daemon = RunningDaemon::start(fx.config());
    fx.present_card(STRANGER, "x").await?;
    wait_for(|| daemon.observed.decisions.blocked.load(Ordering::Relaxed) == 1).await?;
    assert_eq!(outbox_depth(&fx), 5, "two decisions, two passages, one decision after the restart");

    broker.resume()?;
    sub.wait_until(WAIT, "all ten events", |s| s.unique_events(EVENTS_TOPIC).len() == 10).await?;
    let seqs: Vec<u64> = sub.unique_events(EVENTS_TOPIC).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>(), "gap-free and in order across the outage and the restart");
    let reasons: Vec<pb::Reason> = sub
        .unique_events(EVENTS_TOPIC)
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Decision)
        .map(|e| e.reason())
        .collect();
    use pb::Reason::{UnknownPerson, Unspecified as Ok_};
    assert_eq!(reasons, [Ok_, Ok_, UnknownPerson, Ok_, Ok_, UnknownPerson]);
    wait_for(|| outbox_depth(&fx) == 0).await?;
    daemon.stop().await?;

    // The database never held an ID number in clear.
    assert_no_id_numbers_in(&fx, &[ZHANG, LI, STRANGER]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_frames_and_a_silent_reader_never_unlock_and_recover() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], marker_lamp())?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    fx.idcard.corrupt_next_replies(4);
    fx.idcard.inject_garbage(vec![0x00, 0xAA, 0x13, 0x96, 0xFF]);
    wait_for(|| daemon.observed.id_card.snapshot().checksum_errors >= 1).await?;
    assert_eq!(unlocks(&fx, 0), 0);

    fx.idcard.set_silent(true);
    let timeouts = daemon.observed.id_card.snapshot().timeouts;
    wait_for(|| daemon.observed.id_card.snapshot().timeouts > timeouts).await?;
    fx.idcard.set_silent(false);

    // After all that, one card is one decision and one unlock.
    fx.present_card(ZHANG, "张三").await?;
    wait_for(|| daemon.observed.decisions.passed.load(Ordering::Relaxed) == 1).await?;
    wait_for(|| unlocks(&fx, 0) == 1).await?;
    // A later card's decision: a second read of the first would come before it.
    fx.settle_gate(&daemon).await?;
    assert_eq!(daemon.observed.decisions.passed.load(Ordering::Relaxed), 1, "a card is read once");
    assert_eq!(daemon.observed.decisions.blocked.load(Ordering::Relaxed), 1, "the marker's refusal only");
    assert_eq!(unlocks(&fx, 0), 1);
    daemon.stop().await?;
    Ok(())
}

async fn wait_for(done: impl Fn() -> bool) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok(())
}

fn outbox_depth(fx: &GateFixture) -> u64 {
    gate_store::Store::open(&fx.store_path).and_then(|s| s.outbox_stats()).map(|s| s.depth).expect("outbox stats")
}

fn assert_no_id_numbers_in(fx: &GateFixture, numbers: &[&str]) {
    let dir = fx.store_path.parent().expect("state folder");
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("state folder") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("readable");
        files += 1;
        for number in numbers {
            let utf16: Vec<u8> = number.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let utf16be: Vec<u8> = number.encode_utf16().flat_map(u16::to_be_bytes).collect();
            for needle in [number.as_bytes(), &utf16, &utf16be] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds an ID number in clear",
                    path.display()
                );
            }
        }
    }
    assert!(files >= 1, "the database exists");
}
