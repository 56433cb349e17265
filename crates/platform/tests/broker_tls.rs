//! `gate-platform` to a broker over TLS, with `gated`'s `[mqtt]` keys, the
//! same implementation as the gates' uplink (`gate_sync::BrokerAuth`):
//! a real Mosquitto that requires a client certificate from the site's CA,
//! certificates made by `openssl` for the run. The ingest stores a gate's
//! event and the downlink's mode change reaches the broker, both over TLS;
//! a replica that trusts another CA is refused and says why; a client key
//! others may read stops the start.

mod support;

use anyhow::{Context, Result};
use gate_platform::sim::SimGate;
use gate_tests::pki::{CLIENT_EXT, Pair, SERVER_EXT, issue, make_ca};
use gate_tests::postgres::Postgres;
use gate_tests::{Mosquitto, Subscriber, free_port, init_test_logging};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Replica, run, wait_sql, write_config};

const WAIT: Duration = Duration::from_secs(20);

struct Pki {
    _dir: tempfile::TempDir,
    site_ca: Pair,
    other_ca: Pair,
    client: Pair,
    broker: Pair,
}

fn pki() -> Result<Pki> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let site_ca = make_ca(d, "site-ca")?;
    let other_ca = make_ca(d, "other-ca")?;
    let broker = issue(d, &site_ca, "broker", SERVER_EXT)?;
    let client = issue(d, &site_ca, "gate-platform", CLIENT_EXT)?;
    Ok(Pki { _dir: dir, site_ca, other_ca, client, broker })
}

/// The TLS keys of `[mqtt]`, trusting `ca`.
fn tls_keys(ca: &Path, client: &Pair) -> String {
    format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.display(),
        client.cert.display(),
        client.key.display()
    )
}

fn now_ms() -> i64 {
    gate_platform::ingest::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_downlink_reach_a_broker_that_requires_tls_and_a_client_certificate() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let pg = Postgres::start()?;
    // TLS with a client certificate required; a plain loopback listener for
    // the simulated gate and the test's subscriber.
    let plain = free_port();
    let broker = Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\n\
         max_queued_messages 0\nlistener {plain} 127.0.0.1\n",
        pki.site_ca.cert.display(),
        pki.broker.cert.display(),
        pki.broker.key.display(),
    ))?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("platform.key");
    let signing = format!("[signing]\nkey_file = \"{}\"\n", key.display());
    let extra = format!("{}\n{signing}", tls_keys(&pki.site_ca.cert, &pki.client));
    let config = write_config(dir.path(), &pg.url(), broker.port(), &extra);
    let out = run(&config, &["check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run(&config, &["keygen", key.to_str().context("utf-8")?]).status.success());

    // The ingest, over TLS.
    let replica = Replica::start(&config, "tls")?;
    replica.wait_subscribed().await?;
    let mut gate = SimGate::connect("127.0.0.1", plain, "village", "site-t", "g1");
    let event = gate.next_event(now_ms());
    gate.publish(&event).await?;
    wait_sql(&pg, "SELECT event_id FROM events", &event.event_id, WAIT).await?;

    // The downlink, over TLS: the signed mode change reaches the broker.
    let sub = Subscriber::connect(plain, "village/site-t/mode").await?;
    let out = run(&config, &["mode", "set", "--site", "site-t", "wartime", "--reason", "drill"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sub.wait_until(WAIT, "the mode change", |s| !s.messages().is_empty()).await?;
    assert!(broker.log().contains("New client connected"), "{}", broker.log());

    // A replica that trusts another CA does not believe the broker.
    let other = tempfile::tempdir()?;
    let wrong = write_config(other.path(), &pg.url(), broker.port(), &tls_keys(&pki.other_ca.cert, &pki.client));
    let doubter = Replica::start(&wrong, "doubter")?;
    doubter.wait_log("broker connection lost", 1, WAIT).await?;
    let log = doubter.log();
    assert!(log.contains("UnknownIssuer") || log.contains("certificate"), "{log}");
    assert!(!log.contains("subscription acknowledged"), "{log}");
    drop(doubter);

    // A client key others may read stops the start (exit, with the reason).
    std::fs::set_permissions(&pki.client.key, std::fs::Permissions::from_mode(0o644))?;
    let mut loose = Replica::start(&config, "loose")?;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = loose.try_wait()? {
            break status;
        }
        anyhow::ensure!(Instant::now() < deadline, "the replica kept running: {}", loose.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    loose.wait_log("chmod 600", 1, WAIT).await?;
    drop(replica);
    Ok(())
}
