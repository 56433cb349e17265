//! Who may pass, when, end to end: modes from the platform and from a
//! technician, wartime at a flexible checkpoint, visitor passes over the QR
//! scanner, vehicle plates, anti-passback, the watchlist and its alerts.

use anyhow::Result;
use gate_core::{BlockReason, Category, CredentialKind, PersonRecord, PersonStatus};
use gate_proto::v1 as pb;
use gate_tests::{
    ALERTS_TOPIC, EVENTS_TOPIC, FixtureOptions, GateFixture, MARKER_LAMP_KEYS, MODE_TOPIC, Mosquitto, RunningDaemon,
    Subscriber, init_test_logging, mode_change, publish_signed, resident,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ZHANG: &str = "35020319900101123X";
const LI: &str = "11010519491231002X";
const WAIT: Duration = Duration::from_secs(10);

fn unlocks(fx: &GateFixture) -> usize {
    fx.unlock_writes()
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for {what}"))
}

fn last_decision(sub: &Subscriber) -> Option<pb::GateEvent> {
    sub.decisions(EVENTS_TOPIC).last().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wartime_closes_a_flexible_checkpoint_and_survives_a_restart_offline() -> Result<()> {
    init_test_logging();
    let mut broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", ZHANG, "张三")],
        FixtureOptions { flexible: true, gate_keys: MARKER_LAMP_KEYS.into(), ..Default::default() },
    )?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    // Normal mode: the resident passes.
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the first decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    assert_eq!(last_decision(&sub).map(|e| e.decision()), Some(pb::Decision::Pass));
    wait_for("the unlock", || unlocks(&fx) == 1).await?;

    // The platform declares wartime (retained), effective now.
    let now = gate_app::wall_clock_ms();
    publish_signed(broker.port(), MODE_TOPIC, mode_change(pb::Mode::Wartime, now - 1_000, "heshan-office"), true)
        .await?;
    sub.wait_until(WAIT, "the mode-change event", |s| {
        s.events(EVENTS_TOPIC).iter().any(|e| e.kind() == pb::EventKind::ModeChange)
    })
    .await?;
    let change = sub.events(EVENTS_TOPIC).into_iter().find(|e| e.kind() == pb::EventKind::ModeChange).expect("event");
    assert_eq!((change.mode(), change.operator.as_str()), (pb::Mode::Wartime, "platform:heshan-office"));

    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the wartime decision", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    let closed = last_decision(&sub).expect("decision");
    assert_eq!((closed.decision(), closed.reason()), (pb::Decision::Block, pb::Reason::CheckpointClosed));
    assert_eq!(closed.mode(), pb::Mode::Wartime);
    assert!(!closed.policy_version.is_empty());

    // Reboot with the broker down: the mode was persisted locally.
    daemon.stop().await?;
    broker.stop();
    let daemon = RunningDaemon::start(fx.config());
    fx.present_card(ZHANG, "张三").await?;
    wait_for("the offline wartime block", || daemon.observed.decisions.blocked_for(BlockReason::CheckpointClosed) == 1)
        .await?;
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx), 1, "no unlock coil was written in wartime at the flexible checkpoint");
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_override_is_an_event_and_fixed_gates_need_health_in_wartime() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let options = FixtureOptions { gate_keys: MARKER_LAMP_KEYS.into(), ..Default::default() };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    let config = fx.config();
    let mut store = gate_store::Store::open(&config.store.path)?;
    gate_app::set_mode_locally(
        &mut store,
        &config,
        gate_core::Mode::Wartime,
        "li.wei",
        "drill",
        gate_app::wall_clock_ms(),
    )?;
    drop(store);
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    // A fixed checkpoint stays open in wartime, but residents need health
    // verification, which no record here can give.
    let d = last_decision(&sub).expect("decision");
    assert_eq!((d.decision(), d.reason()), (pb::Decision::Block, pb::Reason::HealthUnverified));
    let change = sub.events(EVENTS_TOPIC).into_iter().find(|e| e.kind() == pb::EventKind::ModeChange).expect("event");
    assert_eq!((change.operator.as_str(), change.note.as_str()), ("technician:li.wei", "drill"));
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx), 0);
    daemon.stop().await?;
    Ok(())
}

fn pass_options(platform: &ed25519_dalek::SigningKey) -> FixtureOptions {
    FixtureOptions {
        qr_scanner: true,
        gate_keys: MARKER_LAMP_KEYS.into(),
        extra_toml: format!(
            "[passes]\nplatform_keys = [\"{}\"]\ncompanion_window_s = 60\n",
            hex::encode(platform.verifying_key().to_bytes())
        ),
        ..Default::default()
    }
}

fn visitor_pass(fx: &GateFixture, key: &ed25519_dalek::SigningKey, id: &str, gates: &[&str], uses: u32) -> String {
    let now = gate_app::wall_clock_ms();
    gate_pass::sign(
        &gate_pass::VisitorPass {
            kid: String::new(),
            site: gate_tests::SITE.into(),
            pass_id: id.into(),
            host_person_id: "p-001".into(),
            visitor_id_hash: hex::encode(fx.credential_key(CredentialKind::IdNumber, LI)),
            valid_from_ms: now - 60_000,
            valid_to_ms: now + 3_600_000,
            gates: gates.iter().map(|g| g.to_string()).collect(),
            max_uses: uses,
        },
        key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_passes_over_the_qr_scanner() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let platform = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forger = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], pass_options(&platform))?;
    // The visitor is registered as such; their card alone is not enough.
    let now = gate_app::wall_clock_ms();
    let mut visitor =
        PersonRecord::new("v-9", Category::Visitor, PersonStatus::Active, now - 86_400_000, now + 86_400_000);
    visitor.display_name = "李四".into();
    fx.import_records(&[gate_store::NewPerson {
        person: visitor,
        credentials: vec![(CredentialKind::IdNumber, fx.credential_key(CredentialKind::IdNumber, LI))],
    }])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let qr = fx.qr.clone().expect("a QR scanner");
    let decisions = |n: usize| move |s: &Subscriber| s.decisions(EVENTS_TOPIC).len() == n;

    fx.present_card(LI, "李四").await?;
    sub.wait_until(WAIT, "the card decision", decisions(1)).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::VisitorPassRequired));

    let pass = visitor_pass(&fx, &platform, "vp-1", &["east-1"], 2);
    let mut granted = 0;
    for (n, reason) in [(2, pb::Reason::Unspecified), (3, pb::Reason::Unspecified), (4, pb::Reason::PassUsedUp)] {
        qr.scan(&pass);
        sub.wait_until(WAIT, "a pass decision", decisions(n)).await?;
        let e = last_decision(&sub).expect("decision");
        assert_eq!((e.reason(), e.credential_type(), e.pass_id.as_str()), (reason, pb::CredentialType::QrCode, "vp-1"));
        if reason == pb::Reason::Unspecified {
            // Each grant its own pulse: the next one finds the coil off.
            granted += 1;
            wait_for("the pulse", || unlocks(&fx) == granted && !fx.gate.coil(0)).await?;
        }
    }
    // The visitor's card, just after their pass: covered by it.
    fx.present_card(LI, "李四").await?;
    sub.wait_until(WAIT, "the covered card", decisions(5)).await?;
    assert_eq!(last_decision(&sub).map(|e| (e.decision(), e.person_id)), Some((pb::Decision::Pass, "v-9".into())));

    qr.scan(&visitor_pass(&fx, &platform, "vp-2", &["west-2"], 1));
    sub.wait_until(WAIT, "the wrong-gate decision", decisions(6)).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::PassWrongGate));

    // A forged pass: refused and the departments are told.
    qr.scan(&visitor_pass(&fx, &forger, "vp-3", &[], 9));
    sub.wait_until(WAIT, "the forged decision", decisions(7)).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::PassInvalid));
    sub.wait_until(WAIT, "the alert", |s| !s.alerts(ALERTS_TOPIC).is_empty()).await?;
    let alert = &sub.alerts(ALERTS_TOPIC)[0];
    assert_eq!((alert.reason(), alert.seq, alert.repeat_count), (pb::Reason::PassInvalid, 1, 1));
    // Garbage on the scanner is not a decision and does not crash anything.
    qr.send_raw(vec![0xff, 0xfe, b'\r']);
    qr.scan("VP1.garbage");
    sub.wait_until(WAIT, "the garbage pass decision", decisions(8)).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::PassInvalid));
    assert_eq!(daemon.observed.decisions.unreadable_qr.load(Ordering::Relaxed), 1);
    // Two visitor passes and one covered card unlocked the gate, nothing else.
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx), 3);
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vehicle_lane_decides_on_plates() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::build(
        broker.port(),
        &[],
        FixtureOptions {
            plate_reader: true,
            vehicle_lane: true,
            gate_keys: MARKER_LAMP_KEYS.into(),
            ..Default::default()
        },
    )?;
    let now = gate_app::wall_clock_ms();
    fx.import_records(&[gate_store::NewPerson {
        person: PersonRecord::new("p-car", Category::Resident, PersonStatus::Active, now - 1_000, now + 86_400_000),
        credentials: vec![(CredentialKind::Plate, fx.credential_key(CredentialKind::Plate, "闽D12345"))],
    }])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let plate = fx.plate.clone().expect("a plate reader");

    plate.read("闽d 12345", "blue", 0.93);
    sub.wait_until(WAIT, "the plate decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    let e = last_decision(&sub).expect("decision");
    assert_eq!(
        (e.decision(), e.credential_type(), e.person_id.as_str()),
        (pb::Decision::Pass, pb::CredentialType::Plate, "p-car")
    );
    assert_eq!(e.lane(), pb::Lane::Vehicle);
    assert!(!e.subject.contains("12345"), "plates are masked: {}", e.subject);

    plate.read("粤B99999", "yellow", 0.55);
    plate.read("粤B99999", "yellow", 0.91);
    sub.wait_until(WAIT, "the unknown plate", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::UnknownVehicle));
    assert_eq!(
        daemon.observed.decisions.unusable_plates.load(Ordering::Relaxed),
        1,
        "a low-confidence read is not a decision"
    );
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx), 1);
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchlist_alerts_once_with_repeats_and_paired_anti_passback() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", ZHANG, "张三"), resident("p-002", LI, "李四")],
        FixtureOptions { anti_passback: Some("paired"), gate_keys: MARKER_LAMP_KEYS.into(), ..Default::default() },
    )?;
    gate_store::Store::open(&fx.store_path)?
        .watchlist_add(&[(CredentialKind::IdNumber, fx.credential_key(CredentialKind::IdNumber, LI))])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    for n in 1..=2 {
        fx.present_card(LI, "李四").await?;
        sub.wait_until(WAIT, "the watchlist decision", |s| s.decisions(EVENTS_TOPIC).len() == n).await?;
        assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::Blocklisted));
    }
    sub.wait_until(WAIT, "two alert messages", |s| s.alerts(ALERTS_TOPIC).len() == 2).await?;
    let alerts = sub.alerts(ALERTS_TOPIC);
    assert_eq!(alerts[0].alert_id, alerts[1].alert_id, "a repeat within the quiet period is the same alert");
    assert_eq!((alerts[0].repeat_count, alerts[1].repeat_count), (1, 2));
    assert_eq!((alerts[0].seq, alerts[1].seq), (1, 2));
    assert_eq!(alerts[1].person_id, "p-002");
    assert_eq!(alerts[1].subject, "110105********002X");

    // Paired anti-passback at an entry gate: in once, not twice.
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the entry", |s| s.decisions(EVENTS_TOPIC).len() == 3).await?;
    assert_eq!(last_decision(&sub).map(|e| e.decision()), Some(pb::Decision::Pass));
    wait_for("the entry's unlock", || unlocks(&fx) == 1).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the second entry", |s| s.decisions(EVENTS_TOPIC).len() == 4).await?;
    assert_eq!(last_decision(&sub).map(|e| e.reason()), Some(pb::Reason::AntiPassback));
    fx.settle_gate(&daemon).await?;
    assert_eq!(unlocks(&fx), 1);
    daemon.stop().await?;
    Ok(())
}
