//! Epidemic-mode verification end to end: health batches from the platform,
//! the online check (answered, unanswered, offline), signed health
//! certificates at the QR scanner (the holder's and someone else's), a
//! trust list signed with the wrong key, and the alert a red code raises.

use anyhow::Result;
use gate_core::{BlockReason, HealthColour, HealthRecord, NatResult};
use gate_proto::v1 as pb;
use gate_tests::{
    ALERTS_TOPIC, EVENTS_TOPIC, FixtureOptions, GateFixture, MARKER_LAMP_KEYS, Mosquitto, RunningDaemon, Subscriber,
    init_test_logging, publish, publish_signed, resident,
};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ZHANG: &str = "35020319900101123X";
const WAIT: Duration = Duration::from_secs(10);
const HOUR: i64 = 3_600_000;
const HEALTH_TOPIC: &str = "village/heshan-c03/health";
const TRUST_TOPIC: &str = "village/heshan-c03/trust";
const REQ_TOPIC: &str = "village/heshan-c03/east-1/health/req";
const RESP_TOPIC: &str = "village/heshan-c03/east-1/health/resp";

fn unlocks(fx: &GateFixture) -> usize {
    fx.unlock_writes()
}

fn record(colour: HealthColour, assessed_ago_h: i64, sampled_ago_h: i64) -> HealthRecord {
    let now = gate_app::wall_clock_ms();
    HealthRecord {
        person_id: "p-001".into(),
        colour,
        nat: Some(NatResult { positive: false, sampled_at_ms: now - sampled_ago_h * HOUR }),
        vaccine_doses: 3,
        last_dose_at_ms: None,
        travel_risk: false,
        risk_areas: vec![],
        assessed_at_ms: now - assessed_ago_h * HOUR,
        expires_at_ms: now + 24 * HOUR,
    }
}

fn wartime(fx: &GateFixture) -> Result<()> {
    let config = fx.config();
    let mut store = gate_store::Store::open(&config.store.path)?;
    gate_app::set_mode_locally(
        &mut store,
        &config,
        gate_core::Mode::Wartime,
        "test",
        "health",
        gate_app::wall_clock_ms(),
    )?;
    Ok(())
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

fn last_decision(sub: &Subscriber) -> pb::GateEvent {
    sub.decisions(EVENTS_TOPIC).last().cloned().expect("a decision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wartime_red_code_blocks_without_unlock_and_alerts_once() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let options = FixtureOptions { gate_keys: MARKER_LAMP_KEYS.into(), ..Default::default() };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
    wartime(&fx)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    let batch = gate_sync::encode_health_batch_for_tests(0, 1, &[record(HealthColour::Red, 1, 5)]);
    publish_signed(broker.port(), HEALTH_TOPIC, batch, false).await?;
    wait_for("the health batch", || daemon.observed.link.downlink.health_applied.load(Ordering::Relaxed) == 1).await?;

    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    let d = last_decision(&sub);
    assert_eq!((d.decision(), d.reason()), (pb::Decision::Block, pb::Reason::HealthCodeRed));
    assert_eq!(d.facts.get("colour").map(String::as_str), Some("red"));
    sub.wait_until(WAIT, "the alert", |s| !s.alerts(ALERTS_TOPIC).is_empty()).await?;
    // A later refusal with its own alert: once it is through, nothing more
    // of the first one can follow.
    fx.settle_gate(&daemon).await?;
    sub.wait_until(WAIT, "the marker's alert", |s| {
        s.alerts(ALERTS_TOPIC).iter().any(|a| a.reason() == pb::Reason::InvalidIdNumber)
    })
    .await?;
    let alerts = sub.alerts(ALERTS_TOPIC);
    assert_eq!(alerts.len(), 2, "exactly one alert for the red code, then the marker's");
    assert_eq!((alerts[0].reason(), alerts[0].person_id.as_str()), (pb::Reason::HealthCodeRed, "p-001"));
    assert_eq!(alerts[0].facts.get("colour").map(String::as_str), Some("red"));
    assert_eq!(unlocks(&fx), 0, "no unlock coil write");
    daemon.stop().await?;
    Ok(())
}

/// A test platform that answers health requests with `answer`.
async fn answer_health_requests(port: u16, answer: HealthRecord) -> Result<tokio::task::JoinHandle<()>> {
    let mut options = MqttOptions::new("test-health-platform", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(REQ_TOPIC, QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == REQ_TOPIC => {
                    let Ok(req) = pb::HealthRequest::decode(p.payload.as_ref()) else { continue };
                    let mut record = answer.clone();
                    record.person_id = req.person_id.clone();
                    let batch = gate_sync::encode_health_batch_for_tests(0, 1, &[record]);
                    let wire = pb::HealthBatch::decode(batch.as_slice()).expect("batch").upserts.remove(0);
                    let resp = pb::HealthResponse { correlation_id: req.correlation_id, record: Some(wire) };
                    let sealed = gate_tests::seal_for(RESP_TOPIC, &resp.encode_to_vec());
                    let _ = client.try_publish(RESP_TOPIC, QoS::AtLeastOnce, false, sealed);
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(WAIT, ready_rx).await??;
    Ok(handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_record_with_platform_answering_silent_and_offline() -> Result<()> {
    init_test_logging();
    let mut broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", ZHANG, "张三")],
        FixtureOptions { extra_toml: "[health]\nonline_timeout_ms = 300\n".into(), ..Default::default() },
    )?;
    wartime(&fx)?;
    // A stale local record (assessed 30 hours ago; wartime allows 24).
    gate_store::Store::open(&fx.store_path)?.put_health_record(&record(HealthColour::Green, 30, 5))?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    // Nobody answers: the wartime fallback refuses.
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the unanswered decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    assert_eq!(last_decision(&sub).reason(), pb::Reason::HealthUnverified);
    assert_eq!(daemon.observed.decisions.health_online_timeouts.load(Ordering::Relaxed), 1);

    // The platform answers with a fresh green record: pass, and the answer
    // is kept locally.
    let platform = answer_health_requests(broker.port(), record(HealthColour::Green, 0, 5)).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the answered decision", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    assert_eq!(last_decision(&sub).decision(), pb::Decision::Pass);
    assert_eq!(daemon.observed.decisions.health_online_answers.load(Ordering::Relaxed), 1);
    let kept = gate_store::Store::open(&fx.store_path)?.health_record("p-001")?.expect("record");
    assert!(gate_app::wall_clock_ms() - kept.assessed_at_ms < HOUR);
    platform.abort();
    wait_for("the unlock", || unlocks(&fx) == 1).await?;

    // Offline with a stale record again: refused at once, no wait.
    gate_store::Store::open(&fx.store_path)?.put_health_record(&record(HealthColour::Green, 30, 5))?;
    broker.stop();
    wait_for("the disconnect", || !daemon.observed.broker_connected()).await?;
    fx.present_card(ZHANG, "张三").await?;
    wait_for("the offline refusal", || daemon.observed.decisions.blocked_for(BlockReason::HealthUnverified) == 2)
        .await?;
    assert_eq!(daemon.observed.decisions.health_online_unavailable.load(Ordering::Relaxed), 1);
    assert_eq!(unlocks(&fx), 1);
    daemon.stop().await?;
    Ok(())
}

/// Mints EU DCC certificates with a self-signed P-256 signer.
mod mint {
    use ciborium::value::Value;
    use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use sha2_free::kid_of;
    use std::io::Write as _;

    pub struct Issuer {
        key: EcdsaKeyPair,
        pub der: Vec<u8>,
    }

    impl Issuer {
        pub fn new() -> Issuer {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, "Test DSC");
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2090, 1, 1);
            let cert = params.self_signed(&key).expect("self-signed certificate");
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &SystemRandom::new())
                    .expect("PKCS#8");
            Issuer { key, der: cert.der().to_vec() }
        }

        /// A negative test certificate for `family`/`given` (as written)
        /// born `dob`, sampled `sampled_ms`.
        pub fn test_certificate(&self, family: &str, given: &str, dob: &str, sampled_ms: i64, now_ms: i64) -> String {
            let text = |s: &str| Value::Text(s.to_string());
            let hcert = Value::Map(vec![
                (text("ver"), text("1.3.0")),
                (
                    text("nam"),
                    Value::Map(vec![
                        (text("fn"), text(family)),
                        (text("fnt"), text("X")),
                        (text("gn"), text(given)),
                        (text("gnt"), text("Y")),
                    ]),
                ),
                (text("dob"), text(dob)),
                (
                    text("t"),
                    Value::Array(vec![Value::Map(vec![
                        (text("tg"), text("840539006")),
                        (text("tt"), text("LP6464-4")),
                        (text("sc"), text(&rfc3339(sampled_ms))),
                        (text("tr"), text("260415000")),
                        (text("tc"), text("Test centre")),
                        (text("co"), text("CN")),
                        (text("is"), text("Test issuer")),
                        (text("ci"), text("URN:UVCI:01:CN:TEST#2")),
                    ])]),
                ),
            ]);
            let claims = Value::Map(vec![
                (Value::from(1), Value::Text("CN".into())),
                (Value::from(6), Value::from(now_ms / 1000 - 3600)),
                (Value::from(4), Value::from(now_ms / 1000 + 86_400)),
                (Value::from(-260), Value::Map(vec![(Value::from(1), hcert)])),
            ]);
            let mut payload = Vec::new();
            ciborium::ser::into_writer(&claims, &mut payload).expect("CBOR");
            let sign1 = CoseSign1Builder::new()
                .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES256).key_id(kid_of(&self.der)).build())
                .payload(payload)
                .create_signature(b"", |data| {
                    self.key.sign(&SystemRandom::new(), data).expect("sign").as_ref().to_vec()
                })
                .build();
            let cose = sign1.to_tagged_vec().expect("COSE");
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&cose).expect("zlib");
            format!("HC1:{}", base45::encode(enc.finish().expect("zlib")))
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` from Unix milliseconds.
    fn rfc3339(ms: i64) -> String {
        let date = gate_core::CivilDate::of_instant(ms, gate_core::UtcOffset::UTC);
        let secs = (ms / 1000).rem_euclid(86_400);
        format!("{date}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
    }

    mod sha2_free {
        /// The key id: the first 8 bytes of SHA-256 of the DER certificate.
        pub fn kid_of(der: &[u8]) -> Vec<u8> {
            ring::digest::digest(&ring::digest::SHA256, der).as_ref()[..8].to_vec()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_count_only_for_their_holder_and_trust_lists_need_the_platform_key() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    // Someone else's key, under the platform's key id.
    let intruder = hw_sim::platform::PlatformKey::from_seed([9; 32], Some(gate_tests::PLATFORM_KEY_ID));
    let fx = GateFixture::build(
        broker.port(),
        &[resident("p-001", ZHANG, "张三")],
        FixtureOptions {
            qr_scanner: true,
            extra_toml: "[health]\nonline_timeout_ms = 200\n".into(),
            ..Default::default()
        },
    )?;
    wartime(&fx)?;
    // Green code but no test on record: only a certificate can supply it.
    let mut green = record(HealthColour::Green, 1, 0);
    green.nat = None;
    gate_store::Store::open(&fx.store_path)?.put_health_record(&green)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let issuer = mint::Issuer::new();

    // A trust list signed by someone else is ignored and counted.
    let list = gate_sync::encode_trust_list(1, vec![issuer.der.clone()], 0);
    publish(broker.port(), TRUST_TOPIC, intruder.seal(gate_tests::SITE, "", "trust", &list), true).await?;
    wait_for("the refused trust list", || daemon.observed.link.downlink.trust_rejected.load(Ordering::Relaxed) == 1)
        .await?;
    let qr = fx.qr.clone().expect("a QR scanner");
    let now = gate_app::wall_clock_ms();
    qr.scan(&issuer.test_certificate("张", "三", "1990-01-01", now - 5 * HOUR, now));
    sub.wait_until(WAIT, "the untrusted certificate", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    assert_eq!(last_decision(&sub).reason(), pb::Reason::HealthUnverified, "an untrusted signer proves nothing");

    // The platform's own trust list is accepted.
    let list = gate_sync::encode_trust_list(2, vec![issuer.der.clone()], 0);
    publish_signed(broker.port(), TRUST_TOPIC, list, true).await?;
    wait_for("the trust list", || daemon.observed.link.downlink.trust_updates.load(Ordering::Relaxed) == 1).await?;

    // Someone else's certificate, then the card: it proves nothing.
    let verified = || daemon.observed.decisions.certificates_verified.load(Ordering::Relaxed);
    qr.scan(&issuer.test_certificate("李", "四", "1949-12-31", now - 5 * HOUR, now));
    wait_for("the other person's certificate verified", || verified() == 1).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the other person's certificate", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    let d = last_decision(&sub);
    assert_eq!(d.reason(), pb::Reason::NatMissing);
    assert_eq!(d.facts.get("certificate").map(String::as_str), Some("another_person"));

    // The holder's own certificate (name as written and birth date match the card).
    qr.scan(&issuer.test_certificate("张", "三", "1990-01-01", now - 5 * HOUR, now));
    wait_for("the holder's certificate verified", || verified() == 2).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the holder's certificate", |s| s.decisions(EVENTS_TOPIC).len() == 3).await?;
    assert_eq!(last_decision(&sub).decision(), pb::Decision::Pass);
    daemon.stop().await?;
    Ok(())
}
