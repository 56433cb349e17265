//! `gate-platform`'s signed downlink at a real `gated` (in-process, real
//! SQLite, devices on pseudo-terminals, a real Mosquitto and PostgreSQL):
//! a mode change and an identity publish take effect; the same messages
//! altered, or replayed after newer ones, are refused and change nothing.

mod support;

use anyhow::{Context, Result, bail};
use gate_envelope::Refusal;
use gate_proto::v1 as pb;
use gate_tests::postgres::Postgres;
use gate_tests::{GateFixture, Mosquitto, RunningDaemon, Subscriber, init_test_logging, publish, resident};
use prost::Message;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{BROKER_CONF, run, write_config};

const WAIT: Duration = Duration::from_secs(20);
const SITE: &str = "heshan-c03";
const ZHANG: &str = "35020319900101123X";
const LI: &str = "440524188001010014";
const EVENTS: &str = "village/heshan-c03/east-1/events";

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// The envelopes the platform published on `topic`, in order.
fn sent(sub: &Subscriber, topic: &str) -> Vec<Vec<u8>> {
    sub.messages().into_iter().filter(|m| m.topic == topic).map(|m| m.payload).collect()
}

/// One bit flipped inside the signed body; the envelope stays well-formed.
fn altered(sealed: &[u8]) -> Vec<u8> {
    let mut envelope = pb::SignedEnvelope::decode(sealed).expect("an envelope");
    let last = envelope.body.len() - 1;
    envelope.body[last] ^= 0x01;
    envelope.encode_to_vec()
}

/// The modes the gate reported applying (its mode-change events).
fn applied_modes(sub: &Subscriber) -> Vec<pb::Mode> {
    sub.events(EVENTS).into_iter().filter(|e| e.kind() == pb::EventKind::ModeChange).map(|e| e.mode()).collect()
}

/// A real gate that trusts the platform key `line` ("KEYID:HEX"), its own
/// test key too.
fn gate_trusting(broker_port: u16, line: &str) -> Result<GateFixture> {
    let fx = GateFixture::new(broker_port, &[resident("p-001", ZHANG, "张三")])?;
    let text = std::fs::read_to_string(&fx.config_path)?;
    let trusted = text.replacen("signing_keys = [", &format!("signing_keys = [\"{line}\", "), 1);
    assert_ne!(trusted, text, "the fixture's config lists signing_keys");
    std::fs::write(&fx.config_path, trusted)?;
    Ok(fx)
}

/// `gate-platform keygen FILE`: the "KEYID:HEX" line.
fn keygen(config: &Path, file: &Path) -> Result<String> {
    let out = ok(&run(config, &["keygen", file.to_str().context("utf-8")?]));
    Ok(out.lines().last().context("the key line")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_mode_change_and_identity_publish_take_effect_and_altered_or_replayed_ones_do_not() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("platform.key");
    let config =
        write_config(dir.path(), &pg.url(), broker.port(), &format!("[signing]\nkey_file = \"{}\"\n", key.display()));
    let line = ok(&run(&config, &["keygen", key.to_str().context("utf-8")?])).lines().last().context("key")?.to_owned();

    let fx = gate_trusting(broker.port(), &line)?;
    let sub = Subscriber::connect(broker.port(), &format!("village/{SITE}/#")).await?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let link = daemon.observed.link.clone();
    let downlink = &link.downlink;
    let refused = |reason: Refusal| downlink.refused(reason);

    // Mode: wartime takes effect at the gate.
    ok(&run(&config, &["mode", "set", "--site", SITE, "wartime", "--reason", "drill"]));
    wait_for("the gate to apply wartime", || applied_modes(&sub).contains(&pb::Mode::Wartime)).await?;
    let mode_topic = format!("village/{SITE}/mode");
    let wartime = sent(&sub, &mode_topic).pop().context("the wartime envelope")?;
    ok(&run(&config, &["mode", "set", "--site", SITE, "normal", "--reason", "drill over"]));
    wait_for("the gate to apply normal", || applied_modes(&sub).last() == Some(&pb::Mode::Normal)).await?;
    let normal = sent(&sub, &mode_topic).pop().context("the normal envelope")?;
    let changes = downlink.mode_changes.load(Ordering::Relaxed);

    // Replayed: the older wartime message, as an intruder would resend it.
    let replays = refused(Refusal::Replay);
    publish(broker.port(), &mode_topic, wartime, true).await?;
    wait_for("the replay to be refused", || refused(Refusal::Replay) > replays).await?;
    // Altered: the newest message with one bit flipped.
    let forged = refused(Refusal::BadSignature);
    publish(broker.port(), &mode_topic, altered(&normal), true).await?;
    wait_for("the altered message to be refused", || refused(Refusal::BadSignature) > forged).await?;
    assert_eq!(downlink.mode_changes.load(Ordering::Relaxed), changes, "neither changed the mode");
    assert_eq!(applied_modes(&sub).last(), Some(&pb::Mode::Normal));

    // Identity: 李四 is unknown at the gate, then published by the platform.
    fx.present_card(LI, "李四").await?;
    wait_for("the refusal", || sub.decisions(EVENTS).iter().any(|e| e.decision() == pb::Decision::Block)).await?;
    let site_key = fx.dir.path().join("site.key");
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        format!(
            "person_id,category,id_number,name,valid_from,valid_to\n\
             p-001,resident,{ZHANG},张三,2020-01-01,2035-12-31\n\
             p-002,worker,{LI},李四,2020-01-01,2035-12-31\n"
        ),
    )?;
    let import = |file: &std::path::Path| {
        ok(&run(
            &config,
            &[
                "identity",
                "import",
                "--site",
                SITE,
                "--hmac-key-file",
                site_key.to_str().expect("utf-8"),
                file.to_str().expect("utf-8"),
            ],
        ))
    };
    import(&csv);
    let applied = downlink.identity_applied.load(Ordering::Relaxed);
    ok(&run(&config, &["identity", "publish", "--site", SITE]));
    wait_for("the snapshot to be applied", || downlink.identity_applied.load(Ordering::Relaxed) > applied).await?;
    fx.present_card(LI, "李四").await?;
    wait_for("李四 to pass", || {
        sub.decisions(EVENTS).iter().any(|e| e.decision() == pb::Decision::Pass && e.person_id == "p-002")
    })
    .await?;
    let identity_topic = format!("village/{SITE}/identity");
    let snapshot = sent(&sub, &identity_topic).pop().context("the snapshot")?;

    // A delta (李四 now valid only until 2021) replaces it; the old
    // snapshot replayed and the delta altered are refused.
    let expired = dir.path().join("expired.csv");
    std::fs::write(
        &expired,
        format!(
            "person_id,category,id_number,name,valid_from,valid_to\np-002,worker,{LI},李四,2020-01-01,2021-01-01\n"
        ),
    )?;
    import(&expired);
    let applied = downlink.identity_applied.load(Ordering::Relaxed);
    let out = ok(&run(&config, &["identity", "publish", "--site", SITE]));
    assert!(out.contains("delta 1 -> 2"), "{out}");
    wait_for("the delta to be applied", || downlink.identity_applied.load(Ordering::Relaxed) > applied).await?;
    let delta = sent(&sub, &identity_topic).pop().context("the delta")?;
    let (replays, forged) = (refused(Refusal::Replay), refused(Refusal::BadSignature));
    publish(broker.port(), &identity_topic, snapshot, false).await?;
    wait_for("the replayed snapshot to be refused", || refused(Refusal::Replay) > replays).await?;
    publish(broker.port(), &identity_topic, altered(&delta), false).await?;
    wait_for("the altered delta to be refused", || refused(Refusal::BadSignature) > forged).await?;
    // The delta holds: 李四 is refused now, not let in by the old snapshot.
    let blocks = sub.decisions(EVENTS).iter().filter(|e| e.decision() == pb::Decision::Block).count();
    fx.present_card(LI, "李四").await?;
    wait_for("李四 to be refused again", || {
        sub.decisions(EVENTS).iter().filter(|e| e.decision() == pb::Decision::Block).count() > blocks
    })
    .await?;
    let last = sub.decisions(EVENTS).pop().context("a decision")?;
    assert_eq!((last.decision(), last.reason()), (pb::Decision::Block, pb::Reason::Expired));
    daemon.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_is_applied_by_a_real_gate_and_a_site_reset_takes_effect() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let (old_key, new_key) = (dir.path().join("old.key"), dir.path().join("new.key"));
    let signing_with = |key: &Path| {
        write_config(dir.path(), &pg.url(), broker.port(), &format!("[signing]\nkey_file = \"{}\"\n", key.display()))
    };
    let config = signing_with(&old_key);
    let old_line = keygen(&config, &old_key)?;
    let new_line = keygen(&config, &new_key)?;
    assert_ne!(old_line, new_line);
    let fx = gate_trusting(broker.port(), &old_line)?;
    let sub = Subscriber::connect(broker.port(), &format!("village/{SITE}/#")).await?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let link = daemon.observed.link.clone();
    let downlink = &link.downlink;
    let refused = |reason: Refusal| downlink.refused(reason);

    // The rotation to the new key, signed with the old one, is applied.
    let new_key_arg = new_key.to_str().context("utf-8")?;
    let out = ok(&run(&config, &["keys", "rotate", "--site", SITE, "--key-file", new_key_arg, "--note", "yearly"]));
    assert!(out.contains("key rotation to"), "{out}");
    wait_for("the rotation", || downlink.key_rotations.load(Ordering::Relaxed) == 1).await?;
    let rotation = sent(&sub, &format!("village/{SITE}/keys")).pop().context("the rotation")?;
    let envelope = pb::SignedEnvelope::decode(rotation.as_slice())?;
    let old_id = old_line.split(':').next().context("key id")?;
    assert_eq!(envelope.key_id, old_id, "signed with the key the gate trusted");
    // The old key is trusted no more: what it signs changes nothing.
    let unknown = refused(Refusal::UnknownKey);
    ok(&run(&config, &["mode", "set", "--site", SITE, "wartime", "--reason", "old key"]));
    wait_for("the old key's mode change to be refused", || refused(Refusal::UnknownKey) > unknown).await?;
    assert!(!applied_modes(&sub).contains(&pb::Mode::Wartime));
    // Signed with the new key, the same change takes effect.
    let config = signing_with(&new_key);
    ok(&run(&config, &["mode", "set", "--site", SITE, "wartime", "--reason", "new key"]));
    wait_for("the new key's mode change", || applied_modes(&sub).contains(&pb::Mode::Wartime)).await?;

    // Reset: the gate holds identity version 1; the same snapshot again is
    // a duplicate, not applied...
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        format!(
            "person_id,category,id_number,name,valid_from,valid_to\np-002,worker,{LI},李四,2020-01-01,2035-12-31\n"
        ),
    )?;
    let site_key = fx.dir.path().join("site.key");
    let (site_key, csv) = (site_key.to_str().context("utf-8")?, csv.to_str().context("utf-8")?);
    ok(&run(&config, &["identity", "import", "--site", SITE, "--hmac-key-file", site_key, csv]));
    let applied = downlink.identity_applied.load(Ordering::Relaxed);
    ok(&run(&config, &["identity", "publish", "--site", SITE]));
    wait_for("the snapshot to be applied", || downlink.identity_applied.load(Ordering::Relaxed) > applied).await?;
    let (applied, duplicates) =
        (downlink.identity_applied.load(Ordering::Relaxed), downlink.identity_duplicates.load(Ordering::Relaxed));
    ok(&run(&config, &["identity", "publish", "--site", SITE, "--snapshot"]));
    wait_for("the repeated snapshot", || downlink.identity_duplicates.load(Ordering::Relaxed) > duplicates).await?;
    assert_eq!(downlink.identity_applied.load(Ordering::Relaxed), applied);
    // ...until a signed reset of the identity version: then it is taken.
    let out = ok(&run(&config, &["reset", "--site", SITE, "--identity", "--note", "database rebuilt"]));
    assert!(out.contains("reset sent"), "{out}");
    wait_for("the reset", || downlink.resets.load(Ordering::Relaxed) == 1).await?;
    ok(&run(&config, &["identity", "publish", "--site", SITE, "--snapshot"]));
    wait_for("the snapshot after the reset", || downlink.identity_applied.load(Ordering::Relaxed) > applied).await?;
    // A reset naming nothing is a usage error, and sends nothing.
    let out = run(&config, &["reset", "--site", SITE, "--note", "nothing"]);
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    daemon.stop().await?;
    Ok(())
}
