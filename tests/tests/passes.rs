//! Visitor passes in the platform's signed envelope, end to end: a `VP2.`
//! pass scanned at the real daemon's QR scanner passes; after a signed key
//! rotation, a pass sealed with the new key passes and one sealed with the
//! key rotated out is refused, as every other platform message would be.

use anyhow::Result;
use gate_core::CredentialKind;
use gate_proto::v1 as pb;
use gate_tests::{
    EVENTS_TOPIC, FixtureOptions, GateFixture, Mosquitto, PLATFORM_KEY_ID, RunningDaemon, Subscriber,
    init_test_logging, publish_signed, resident,
};
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const LI: &str = "11010519491231002X";
const KEYS_TOPIC: &str = "village/heshan-c03/keys";
const WAIT: Duration = Duration::from_secs(10);

/// A pass for east-1, one use, valid for the next hour, sealed by `signer`.
fn pass(fx: &GateFixture, signer: &gate_envelope::Signer, id: &str) -> String {
    let now = gate_app::wall_clock_ms();
    let pass = gate_pass::VisitorPass {
        kid: String::new(),
        site: gate_tests::SITE.into(),
        pass_id: id.into(),
        host_person_id: "p-001".into(),
        visitor_id_hash: hex::encode(fx.credential_key(CredentialKind::IdNumber, LI)),
        valid_from_ms: now - 60_000,
        valid_to_ms: now + 3_600_000,
        gates: vec!["east-1".into()],
        max_uses: 1,
    };
    gate_pass::seal(&pass, signer, now)
}

async fn scan(sub: &Subscriber, qr: &hw_sim::qr::QrHandle, token: &str) -> Result<pb::GateEvent> {
    let before = sub.decisions(EVENTS_TOPIC).len();
    qr.scan(token);
    sub.wait_until(WAIT, "a pass decision", |s| s.decisions(EVENTS_TOPIC).len() > before).await?;
    Ok(sub.decisions(EVENTS_TOPIC)[before].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_passes_follow_the_platforms_key_rotation() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/heshan-c03/east-1/#").await?;
    let options = FixtureOptions { qr_scanner: true, ..Default::default() };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let qr = fx.qr.clone().expect("a QR scanner");
    // The test platform's key, as `gatectl pass issue --key-id` would use it.
    let current = gate_envelope::Signer::from_seed([0x5e; 32]).with_key_id(PLATFORM_KEY_ID)?;
    let next = gate_envelope::Signer::from_seed([0x42; 32]);

    let event = scan(&sub, &qr, &pass(&fx, &current, "vp-1")).await?;
    assert_eq!((event.decision(), event.pass_id.as_str()), (pb::Decision::Pass, "vp-1"));
    let event = scan(&sub, &qr, &pass(&fx, &next, "vp-2")).await?;
    assert_eq!(event.reason(), pb::Reason::PassInvalid, "a key the gate does not trust yet");

    // The platform hands over to the next key, signed with the current one.
    let rotation = pb::KeyRotation { keys: vec![next.key_spec().to_spec_string()], note: "yearly".into() };
    publish_signed(broker.port(), KEYS_TOPIC, rotation.encode_to_vec(), true).await?;
    let deadline = Instant::now() + WAIT;
    while daemon.observed.link.downlink.key_rotations.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the rotation was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let event = scan(&sub, &qr, &pass(&fx, &next, "vp-3")).await?;
    assert_eq!((event.decision(), event.pass_id.as_str()), (pb::Decision::Pass, "vp-3"), "the new key's pass");
    let event = scan(&sub, &qr, &pass(&fx, &current, "vp-4")).await?;
    assert_eq!(event.reason(), pb::Reason::PassInvalid, "a pass sealed with the key rotated out");
    daemon.stop().await?;
    Ok(())
}
