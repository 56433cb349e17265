//! TLS to the broker, against a real Mosquitto that requires a client
//! certificate (`require_certificate true`), with certificates made by
//! `openssl` for each run: the right certificate connects and events flow;
//! no certificate, a certificate from another CA and a broker the gate's CA
//! does not vouch for are each refused, said in the log's words by
//! `gatectl status`, and the events wait in the outbox. Replacing the
//! certificate on disk and reloading (what SIGHUP does) connects without a
//! restart and delivers what waited.

use anyhow::{Context, Result, bail, ensure};
use gate_tests::pki::{CLIENT_EXT, Pair, SERVER_EXT, issue, make_ca};
use gate_tests::{EVENTS_TOPIC, GateFixture, Mosquitto, Subscriber, free_port, init_test_logging, resident};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ZHANG: &str = "35020319900101123X";
const WAIT: Duration = Duration::from_secs(20);

/// Two CAs: the site's (signs the broker and the gate) and a stranger's.
struct Pki {
    _dir: tempfile::TempDir,
    site_ca: Pair,
    other_ca: Pair,
    server: Pair,
    client: Pair,
    foreign_client: Pair,
}

fn pki() -> Result<Pki> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let site_ca = make_ca(d, "site-ca")?;
    let other_ca = make_ca(d, "other-ca")?;
    let server = issue(d, &site_ca, "broker", SERVER_EXT)?;
    let client = issue(d, &site_ca, "gated-heshan-c03-east-1", CLIENT_EXT)?;
    let foreign_client = issue(d, &other_ca, "impostor", CLIENT_EXT)?;
    Ok(Pki { _dir: dir, site_ca, other_ca, server, client, foreign_client })
}

/// Mosquitto with a TLS listener that requires a client certificate from
/// the site's CA, and a plain loopback listener for the test's subscriber.
fn tls_broker(pki: &Pki, plain_port: u16) -> Result<Mosquitto> {
    Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\n\
         listener {plain_port} 127.0.0.1\n",
        pki.site_ca.cert.display(),
        pki.server.cert.display(),
        pki.server.key.display(),
    ))
}

/// The fixture's `[mqtt]` with the TLS keys given.
fn with_tls(fx: &GateFixture, keys: &str) -> Result<gate_config::Config> {
    let text = std::fs::read_to_string(&fx.config_path)?;
    let text = text.replace("keep_alive_s = 5\n", &format!("keep_alive_s = 5\n{keys}"));
    std::fs::write(&fx.config_path, text)?;
    Ok(fx.config())
}

fn keys(ca: &Path, client: Option<&Pair>) -> String {
    let mut keys = format!("ca_file = \"{}\"\n", ca.display());
    if let Some(pair) = client {
        keys.push_str(&format!("cert_file = \"{}\"\nkey_file = \"{}\"\n", pair.cert.display(), pair.key.display()));
    }
    keys
}

struct Daemon {
    observed: Arc<gate_app::Observed>,
    reload: tokio::sync::watch::Sender<gate_config::Config>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), gate_app::StartError>>,
}

fn start(config: gate_config::Config) -> Daemon {
    let (reload, reloads) = tokio::sync::watch::channel(config.clone());
    let shutdown = CancellationToken::new();
    let observed = Arc::new(gate_app::Observed::default());
    let handle = tokio::spawn(gate_app::run_with_reload(config, reloads, shutdown.clone(), observed.clone()));
    Daemon { observed, reload, shutdown, handle }
}

impl Daemon {
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.handle).await.context("daemon stop")???;
        Ok(())
    }

    /// Waits for two refused attempts and returns the reason kept for status.
    async fn refused(&self) -> Result<String> {
        let link = &self.observed.link;
        wait_for("two refused connection attempts", || {
            link.connection_errors.load(Ordering::Relaxed) >= 2 && link.last_error().is_some()
        })
        .await?;
        ensure!(!link.connected.load(Ordering::Relaxed), "refused, yet connected");
        ensure!(link.connections.load(Ordering::Relaxed) == 0, "refused, yet a CONNACK was received");
        Ok(link.last_error().unwrap_or_default())
    }
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

async fn gatectl_status(fx: &GateFixture) -> Result<String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatectl"))
        .args(["status", "--config", fx.config_path.to_str().context("utf-8 path")?])
        .env_remove("SUDO_USER")
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A card is decided, and its event waits in the outbox while the broker
/// refuses the gate; `gatectl status` says why.
async fn refused_and_queued(fx: &GateFixture, daemon: &Daemon, sub: &Subscriber, expect: &str) -> Result<String> {
    let reason = daemon.refused().await?;
    ensure!(reason.contains(expect), "the reason {reason:?} should say {expect:?}");
    wait_for("the control socket", || fx.config().control.socket.exists()).await?;
    fx.present_card(ZHANG, "张三").await?;
    wait_for("the pass", || daemon.observed.decisions.passed.load(Ordering::Relaxed) >= 1).await?;
    let status = gatectl_status(fx).await?;
    ensure!(status.contains("NOT connected to 127.0.0.1:"), "{status}");
    let line = status.lines().find(|l| l.contains("last error:")).context("a last error line")?.to_owned();
    ensure!(line.contains(&reason), "status line {line:?} says the logged reason {reason:?}");
    let queued = status.lines().find(|l| l.starts_with("outbox:")).context("the outbox line")?;
    ensure!(!queued.contains(" 0 queued"), "the decision waits in the outbox: {queued}");
    ensure!(sub.decisions(EVENTS_TOPIC).is_empty(), "nothing reached the broker");
    Ok(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_certificate_connects_and_events_flow() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let plain = free_port();
    let broker = tls_broker(&pki, plain)?;
    let sub = Subscriber::connect(plain, "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let config = with_tls(&fx, &keys(&pki.site_ca.cert, Some(&pki.client)))?;
    assert!(config.mqtt.tls.is_some(), "ca_file implies tls");
    let daemon = start(config);
    wait_for("the TLS connection", || daemon.observed.link.connected.load(Ordering::Relaxed)).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the pass event over TLS", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    ensure!(broker.log().contains("New client connected"), "{}", broker.log());
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_is_refused_and_events_wait() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let plain = free_port();
    let broker = tls_broker(&pki, plain)?;
    let sub = Subscriber::connect(plain, "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let daemon = start(with_tls(&fx, &keys(&pki.site_ca.cert, None))?);
    refused_and_queued(&fx, &daemon, &sub, "client certificate").await?;
    daemon.stop().await?;
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_until_the_right_one_is_reloaded() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let plain = free_port();
    let broker = tls_broker(&pki, plain)?;
    let sub = Subscriber::connect(plain, "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    // The gate's own files, which the technician will replace.
    let (cert, key) = (fx.dir.path().join("gate.pem"), fx.dir.path().join("gate.key"));
    std::fs::copy(&pki.foreign_client.cert, &cert)?;
    std::fs::copy(&pki.foreign_client.key, &key)?;
    let mine = Pair { cert: cert.clone(), key: key.clone() };
    let config = with_tls(&fx, &keys(&pki.site_ca.cert, Some(&mine)))?;
    let daemon = start(config.clone());
    refused_and_queued(&fx, &daemon, &sub, "client certificate").await?;

    // The right certificate, put in place and reloaded: no restart.
    std::fs::copy(&pki.client.cert, &cert)?;
    std::fs::copy(&pki.client.key, &key)?;
    daemon.reload.send(config)?;
    wait_for("the connection with the new certificate", || daemon.observed.link.connected.load(Ordering::Relaxed))
        .await?;
    sub.wait_until(WAIT, "the queued pass event", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    let status = gatectl_status(&fx).await?;
    ensure!(status.contains("connected to 127.0.0.1:") && !status.contains("last error:"), "{status}");
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_the_gates_ca_does_not_vouch_for_is_refused() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let plain = free_port();
    let broker = tls_broker(&pki, plain)?;
    let sub = Subscriber::connect(plain, "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    // The gate trusts only the other CA: the broker's certificate is not
    // one it may believe.
    let daemon = start(with_tls(&fx, &keys(&pki.other_ca.cert, Some(&pki.client)))?);
    let line = refused_and_queued(&fx, &daemon, &sub, "does not chain to [mqtt] ca_file").await?;
    ensure!(line.contains("UnknownIssuer"), "{line}");
    daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_others_may_read_stops_the_start() -> Result<()> {
    init_test_logging();
    let pki = pki()?;
    let fx = GateFixture::new(free_port(), &[])?;
    std::fs::set_permissions(&pki.client.key, std::fs::Permissions::from_mode(0o644))?;
    let config = with_tls(&fx, &keys(&pki.site_ca.cert, Some(&pki.client)))?;
    let outcome = tokio::time::timeout(WAIT, gate_app::run(config, CancellationToken::new())).await?;
    let err = outcome.expect_err("the daemon refuses to start").to_string();
    ensure!(err.contains("client key file") && err.contains("chmod 600"), "{err}");
    Ok(())
}
