//! Only the platform may command a gate: every downlink message is a signed
//! envelope. A real Mosquitto, the daemon in-process on real SQLite files;
//! altered, replayed, unsigned and misaddressed messages are published as an
//! intruder on the broker would, and must not take effect.

use anyhow::{Result, bail};
use gate_proto::v1 as pb;
use gate_sync::Refusal;
use gate_tests::{
    GATE, GateFixture, MODE_TOPIC, Mosquitto, RunningDaemon, SITE, init_test_logging, mode_change, platform_key,
    publish, publish_signed, resident,
};
use hw_sim::platform::PlatformKey;
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
const RESP_TOPIC: &str = "village/heshan-c03/east-1/health/resp";
const KEYS_TOPIC: &str = "village/heshan-c03/keys";

fn mode_now(fx: &GateFixture) -> gate_core::Mode {
    let store = gate_store::Store::open(&fx.store_path).expect("store");
    store.mode_schedule().expect("mode").map_or(gate_core::Mode::Normal, |s| s.at(gate_app::wall_clock_ms()))
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until one more envelope was refused for `reason`.
async fn refused_once_more(daemon: &RunningDaemon, reason: Refusal, before: u64) -> Result<()> {
    let link = daemon.observed.link.clone();
    wait_for(&format!("a {reason} refusal"), || link.downlink.refused(reason) > before).await
}

fn refused(daemon: &RunningDaemon, reason: Refusal) -> u64 {
    daemon.observed.link.downlink.refused(reason)
}

fn mode_changes(daemon: &RunningDaemon) -> u64 {
    daemon.observed.link.downlink.mode_changes.load(Ordering::Relaxed)
}

fn wartime(issued_by: &str) -> Vec<u8> {
    mode_change(pb::Mode::Wartime, gate_app::wall_clock_ms() - 1_000, issued_by)
}

/// Flips one bit inside the signed body (in the inner message's last byte),
/// keeping the envelope well-formed.
fn flip_body_bit(sealed: &[u8]) -> Vec<u8> {
    let mut envelope = pb::SignedEnvelope::decode(sealed).expect("an envelope");
    let last = envelope.body.len() - 1;
    envelope.body[last] ^= 0x01;
    envelope.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_altered_misaddressed_and_replayed_messages_do_not_take_effect() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", "35020319900101123X", "张三")])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let key = platform_key();
    let port = broker.port();

    // The platform's own order is applied.
    let first = key.seal(SITE, "", "mode", &wartime("heshan-office"));
    publish(port, MODE_TOPIC, first.clone(), false).await?;
    wait_for("the signed mode change", || mode_changes(&daemon) == 1).await?;
    assert_eq!(mode_now(&fx), gate_core::Mode::Wartime);
    let normal = || mode_change(pb::Mode::Normal, gate_app::wall_clock_ms() - 1_000, "intruder");

    // A bare ModeChange, as the old gates took: not an envelope at all.
    let before = refused(&daemon, Refusal::Malformed);
    publish(port, MODE_TOPIC, normal(), false).await?;
    refused_once_more(&daemon, Refusal::Malformed, before).await?;

    // An envelope without a signature.
    let mut unsigned = pb::SignedEnvelope::decode(key.seal(SITE, "", "mode", &normal()).as_slice())?;
    unsigned.signature.clear();
    let before = refused(&daemon, Refusal::NoSignature);
    publish(port, MODE_TOPIC, unsigned.encode_to_vec(), false).await?;
    refused_once_more(&daemon, Refusal::NoSignature, before).await?;

    // The platform's signed message with one bit flipped.
    let before = refused(&daemon, Refusal::BadSignature);
    publish(port, MODE_TOPIC, flip_body_bit(&key.seal(SITE, "", "mode", &normal())), false).await?;
    refused_once_more(&daemon, Refusal::BadSignature, before).await?;

    // Signed by a key the gate does not know.
    let stranger = PlatformKey::from_seed([0x11; 32], Some("stranger"));
    let before = refused(&daemon, Refusal::UnknownKey);
    publish(port, MODE_TOPIC, stranger.seal(SITE, "", "mode", &normal()), false).await?;
    refused_once_more(&daemon, Refusal::UnknownKey, before).await?;

    // Signed by the platform, for another site.
    let before = refused(&daemon, Refusal::WrongSite);
    publish(port, MODE_TOPIC, key.seal("other-site", "", "mode", &normal()), false).await?;
    refused_once_more(&daemon, Refusal::WrongSite, before).await?;

    // A health answer signed for another gate of the site.
    let answer = pb::HealthResponse { correlation_id: "c-1".into(), record: None }.encode_to_vec();
    let before = refused(&daemon, Refusal::WrongGate);
    publish(port, RESP_TOPIC, key.seal(SITE, "west-2", "health_resp", &answer), false).await?;
    refused_once_more(&daemon, Refusal::WrongGate, before).await?;

    // Signed for the identity stream, replayed onto the mode topic.
    let before = refused(&daemon, Refusal::WrongStream);
    publish(port, MODE_TOPIC, key.seal(SITE, "", "identity", &normal()), false).await?;
    refused_once_more(&daemon, Refusal::WrongStream, before).await?;

    // A signed 1 MB `issued_by` is refused by its size; the mode stays.
    let rejected = daemon.observed.link.downlink.rejected.load(Ordering::Relaxed);
    publish_signed(port, MODE_TOPIC, wartime(&"A".repeat(1 << 20)), false).await?;
    let link = daemon.observed.link.clone();
    wait_for("the oversized issued_by refused", || link.downlink.rejected.load(Ordering::Relaxed) > rejected).await?;
    // And one with a control character in it.
    publish_signed(port, MODE_TOPIC, wartime("ops\u{1b}[2J"), false).await?;
    wait_for("the control character refused", || link.downlink.rejected.load(Ordering::Relaxed) > rejected + 1).await?;

    assert_eq!(mode_changes(&daemon), 1, "none of them changed the mode");
    assert_eq!(mode_now(&fx), gate_core::Mode::Wartime);
    let store = gate_store::Store::open(&fx.store_path)?;
    let schedule = store.mode_schedule()?.expect("a mode");
    assert_eq!(schedule.origin.operator, "platform:heshan-office");

    // The platform lifts wartime; the first (older) order replayed does not
    // bring it back.
    publish_signed(port, MODE_TOPIC, mode_change(pb::Mode::Normal, gate_app::wall_clock_ms() - 500, "office"), false)
        .await?;
    wait_for("the signed normal mode", || mode_changes(&daemon) == 2).await?;
    let before = refused(&daemon, Refusal::Replay);
    publish(port, MODE_TOPIC, first.clone(), false).await?;
    refused_once_more(&daemon, Refusal::Replay, before).await?;
    assert_eq!(mode_now(&fx), gate_core::Mode::Normal);

    // A restart does not reopen the window: the counter is in the store.
    daemon.stop().await?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    publish(port, MODE_TOPIC, first, false).await?;
    refused_once_more(&daemon, Refusal::Replay, 0).await?;
    assert_eq!(mode_changes(&daemon), 0);
    assert_eq!(mode_now(&fx), gate_core::Mode::Normal);
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_rotation_replaces_the_keys_and_survives_a_restart() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let port = broker.port();
    let old = platform_key();
    let new = PlatformKey::from_seed([0x22; 32], Some("platform-2027"));

    // A rotation signed by a key the gate does not trust is refused.
    let stranger = PlatformKey::from_seed([0x11; 32], Some("stranger"));
    let rotation = |keys: Vec<String>| pb::KeyRotation { keys, note: "yearly".into() }.encode_to_vec();
    publish(port, KEYS_TOPIC, stranger.seal(SITE, "", "keys", &rotation(vec![stranger.key_spec()])), true).await?;
    refused_once_more(&daemon, Refusal::UnknownKey, 0).await?;

    // Signed with the current key: the new set is in force at once.
    publish(port, KEYS_TOPIC, old.seal(SITE, "", "keys", &rotation(vec![new.key_spec()])), true).await?;
    let link = daemon.observed.link.clone();
    wait_for("the rotation", || link.downlink.key_rotations.load(Ordering::Relaxed) == 1).await?;
    let before = refused(&daemon, Refusal::UnknownKey);
    publish(port, MODE_TOPIC, old.seal(SITE, "", "mode", &wartime("old key")), false).await?;
    refused_once_more(&daemon, Refusal::UnknownKey, before).await?;
    publish(port, MODE_TOPIC, new.seal(SITE, GATE, "mode", &wartime("new key")), false).await?;
    wait_for("the new key's mode change", || mode_changes(&daemon) == 1).await?;

    // After a restart the rotated set still holds (the retained rotation
    // comes again and is recognised as the same message).
    daemon.stop().await?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    publish(port, MODE_TOPIC, old.seal(SITE, "", "mode", &wartime("old key again")), false).await?;
    refused_once_more(&daemon, Refusal::UnknownKey, 0).await?;
    publish(port, MODE_TOPIC, new.seal(SITE, "", "mode", &mode_change(pb::Mode::Normal, 0, "new key")), false).await?;
    wait_for("the new key after a restart", || mode_changes(&daemon) == 1).await?;
    assert_eq!(daemon.observed.link.downlink.key_rotations.load(Ordering::Relaxed), 0, "the rotation was not redone");
    daemon.stop().await?;
    Ok(())
}

fn identity_version(fx: &GateFixture) -> u64 {
    gate_store::Store::open(&fx.store_path).expect("store").identity_state().expect("state").version
}

async fn wait_identity_version(fx: &GateFixture, version: u64) -> Result<()> {
    wait_for(&format!("identity version {version}"), || identity_version(fx) == version).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rollback_without_the_platform_and_a_signed_reset_is_the_way_back() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let site_key = hw_sim::platform::read_site_key(&fx.dir.path().join("site.key"))?;
    let mut config = hw_sim::platform::PlatformConfig::new("127.0.0.1", broker.port(), SITE, site_key);
    config.answer_sync = false;
    config.signing = Some(platform_key());
    let platform = hw_sim::platform::Platform::connect(config).await?;
    let people = hw_sim::platform::generate_people(3);
    platform.publish_snapshot(&people, 3, 5000).await?;
    wait_identity_version(&fx, 3).await?;

    // An intruder's snapshot at version 2^63-1 with nobody in it: refused
    // before it is read, as is the same snapshot sealed by a stranger.
    let empty_at_max = platform.snapshot_payloads(&[], i64::MAX as u64, 5000).remove(0);
    // (A bare IdentityBatch happens to parse as an envelope without a
    // signature.)
    let unsigned = refused(&daemon, Refusal::NoSignature);
    platform.publish_raw("identity", empty_at_max.clone(), false).await?;
    refused_once_more(&daemon, Refusal::NoSignature, unsigned).await?;
    let stranger = PlatformKey::from_seed([0x11; 32], Some(gate_tests::PLATFORM_KEY_ID));
    let bad = refused(&daemon, Refusal::BadSignature);
    platform.publish_raw("identity", stranger.seal(SITE, "", "identity", &empty_at_max), false).await?;
    refused_once_more(&daemon, Refusal::BadSignature, bad).await?;
    // An older version, even signed, does not take the table back.
    let older = platform.seal("", "identity", platform.snapshot_payloads(&people[..1], 2, 5000).remove(0));
    let replays = refused(&daemon, Refusal::Replay);
    platform.publish_raw("identity", older, false).await?;
    platform.publish_snapshot(&people, 3, 5000).await?;
    let link = daemon.observed.link.clone();
    wait_for("the repeated snapshot", || link.downlink.identity_duplicates.load(Ordering::Relaxed) >= 1).await?;
    assert_eq!(identity_version(&fx), 3, "nothing unsigned moved the version");
    assert_eq!(gate_store::Store::open(&fx.store_path)?.person_count()?, 3);
    assert_eq!(refused(&daemon, Refusal::Replay), replays, "fresh counters: no replay");

    // The platform's own mistake, signed: the table jumps to 2^63-1 and its
    // next real snapshot (version 4) is not taken...
    platform.publish_identity(empty_at_max).await?;
    wait_identity_version(&fx, i64::MAX as u64).await?;
    let duplicates = link.downlink.identity_duplicates.load(Ordering::Relaxed);
    platform.publish_snapshot(&people, 4, 5000).await?;
    wait_for("the ignored snapshot", || link.downlink.identity_duplicates.load(Ordering::Relaxed) > duplicates).await?;
    assert_eq!(identity_version(&fx), i64::MAX as u64);

    // ...until the platform deliberately resets the site, signed.
    let reset = pb::SiteReset { identity: true, health: false, counters: false, note: "database rebuilt".into() };
    let sealed_reset = platform.seal("", "reset", reset.encode_to_vec());
    platform.publish_raw("reset", sealed_reset.clone(), false).await?;
    wait_for("the reset", || link.downlink.resets.load(Ordering::Relaxed) == 1).await?;
    assert_eq!(identity_version(&fx), 0);
    platform.publish_snapshot(&people, 4, 5000).await?;
    wait_identity_version(&fx, 4).await?;
    assert_eq!(gate_store::Store::open(&fx.store_path)?.person_count()?, 3);

    // The reset delivered again does nothing.
    let again = link.downlink.again.load(Ordering::Relaxed);
    platform.publish_raw("reset", sealed_reset, false).await?;
    wait_for("the repeated reset ignored", || link.downlink.again.load(Ordering::Relaxed) > again).await?;
    assert_eq!(identity_version(&fx), 4);
    assert_eq!(link.downlink.resets.load(Ordering::Relaxed), 1);
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_naming_versions_the_gate_lacks_alerts_and_refuses_in_wartime_when_configured() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = gate_tests::Subscriber::connect(broker.port(), "village/#").await?;
    let zhang = "35020319900101123X";
    let options = gate_tests::FixtureOptions {
        // The shortest stale_after_s gives a 5 s wait for a resync.
        extra_toml: format!(
            "{}stale_after_s = 60\nrefuse_when_stale = true\n[policy.wartime]\nhealth_required_for = []\n",
            gate_tests::platform_toml()
        ),
        ..Default::default()
    };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", zhang, "张三")], options)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let port = broker.port();
    publish_signed(port, MODE_TOPIC, wartime("heshan-office"), true).await?;
    wait_for("wartime", || mode_changes(&daemon) == 1).await?;
    let decide = |n: usize| {
        let fx = &fx;
        let sub = &sub;
        async move {
            fx.present_card(zhang, "张三").await?;
            sub.wait_until(WAIT, "a decision", |s| s.decisions(gate_tests::EVENTS_TOPIC).len() == n).await?;
            Ok::<_, anyhow::Error>(sub.decisions(gate_tests::EVENTS_TOPIC)[n - 1].clone())
        }
    };
    assert_eq!(decide(1).await?.decision(), pb::Decision::Pass, "fresh enough to start with");

    // The platform says it holds identity version 5; this gate has 0 and
    // nobody answers its resync: a freeze.
    let heartbeat = pb::PlatformHeartbeat { identity_version: 5, ..Default::default() };
    publish_signed(port, "village/heshan-c03/heartbeat", heartbeat.encode_to_vec(), true).await?;
    sub.wait_until(Duration::from_secs(20), "the platform_stale alert", |s| {
        s.alerts(gate_tests::ALERTS_TOPIC).iter().any(|a| a.alarm == "platform_stale")
    })
    .await?;
    let alert = sub.alerts(gate_tests::ALERTS_TOPIC).into_iter().find(|a| a.alarm == "platform_stale").expect("alert");
    assert_eq!(alert.facts.get("cause").map(String::as_str), Some("versions_behind"));
    assert_eq!(alert.facts.get("missing").map(String::as_str), Some("identity 5 (have 0)"));
    let warnings = daemon.observed.link.platform.warnings();
    assert!(
        warnings.iter().any(|w| w.starts_with("platform_stale: the platform's heartbeat names identity 5")),
        "{warnings:?}"
    );
    let sync_requests = sub.messages().iter().filter(|m| m.topic == gate_tests::SYNC_TOPIC).count();
    assert!(sync_requests >= 2, "the gate asked for what it lacks (connect + heartbeat)");
    let blocked = decide(2).await?;
    assert_eq!((blocked.decision(), blocked.reason()), (pb::Decision::Block, pb::Reason::PlatformStale));

    // The platform delivers: the gate catches up and vouches again.
    let site_key = hw_sim::platform::read_site_key(&fx.dir.path().join("site.key"))?;
    let mut config = hw_sim::platform::PlatformConfig::new("127.0.0.1", port, SITE, site_key);
    config.answer_sync = false;
    config.signing = Some(platform_key());
    let platform = hw_sim::platform::Platform::connect(config).await?;
    let people = vec![hw_sim::platform::PlatformPerson {
        person_id: "p-001".into(),
        category: pb::Category::Resident,
        id_number: zhang.into(),
        name: "张三".into(),
        valid_from_ms: 1_577_808_000_000,
        valid_to_ms: 4_102_415_999_999,
    }];
    platform.publish_snapshot(&people, 5, 5000).await?;
    let link = daemon.observed.link.clone();
    wait_for("the warning to clear", || !link.platform.unvouched() && link.platform.warnings().is_empty()).await?;
    assert_eq!(decide(3).await?.decision(), pb::Decision::Pass);
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_the_new_platform_keys_in_force_without_a_restart() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let port = broker.port();
    let fx = GateFixture::new(port, &[resident("p-001", "35020319900101123X", "张三")])?;
    let config = fx.config();
    let (reload, reloads) = tokio::sync::watch::channel(config.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let observed = std::sync::Arc::new(gate_app::Observed::default());
    let daemon = tokio::spawn(gate_app::run_with_reload(config.clone(), reloads, shutdown.clone(), observed.clone()));
    let downlink = || &observed.link.downlink;
    wait_for("the broker and the subscriptions", || observed.downlink_subscribed()).await?;

    // The platform's new key, not configured yet: refused.
    let next = PlatformKey::from_seed([0x6f; 32], Some("next-platform"));
    let unknown = downlink().refused(Refusal::UnknownKey);
    publish(port, MODE_TOPIC, next.seal(SITE, "", "mode", &wartime("heshan-office")), false).await?;
    wait_for("the refusal", || downlink().refused(Refusal::UnknownKey) == unknown + 1).await?;
    assert_eq!(mode_now(&fx), gate_core::Mode::Normal);

    // The file now lists only the new key; SIGHUP's reload hands it over.
    let text = std::fs::read_to_string(&fx.config_path)?;
    let text =
        text.replace(&gate_tests::platform_toml(), &format!("[platform]\nsigning_keys = [\"{}\"]\n", next.key_spec()));
    let candidate = gate_config::parse(&fx.config_path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        candidate.platform.signing_keys != config.platform.signing_keys,
        "the fixture's [platform] changed"
    );
    reload.send(candidate)?;
    // The uplink takes it between two messages: the new key's order is
    // applied once it does (sent again, with a new counter, until then).
    let deadline = Instant::now() + WAIT;
    while downlink().mode_changes.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            bail!("the reloaded key was never put in force");
        }
        publish(port, MODE_TOPIC, next.seal(SITE, "", "mode", &wartime("heshan-office")), false).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode_now(&fx), gate_core::Mode::Wartime);
    // And the key taken out of the file is no longer trusted.
    let unknown = downlink().refused(Refusal::UnknownKey);
    let normal = mode_change(pb::Mode::Normal, gate_app::wall_clock_ms() - 1_000, "heshan-office");
    publish(port, MODE_TOPIC, platform_key().seal(SITE, "", "mode", &normal), false).await?;
    wait_for("the old key refused", || downlink().refused(Refusal::UnknownKey) == unknown + 1).await?;
    assert_eq!(mode_now(&fx), gate_core::Mode::Wartime);

    shutdown.cancel();
    tokio::time::timeout(WAIT, daemon).await???;
    Ok(())
}
