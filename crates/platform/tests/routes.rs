//! Alert routing against a real PostgreSQL, a real Mosquitto and a webhook
//! receiver started by the test: an alert queued while the receiver is
//! down survives a SIGKILL of the replica that held it and is delivered,
//! signed, once the receiver is up and a replica runs again; a gap raised
//! by the platform is routed too; `fleet` shows each route's state.

mod support;

use anyhow::{Context, Result, bail};
use gate_platform::sim::SimGate;
use gate_proto::v1 as pb;
use gate_tests::postgres::Postgres;
use gate_tests::{Mosquitto, init_test_logging};
use prost::Message;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{BROKER_CONF, Replica, run, wait_sql, write_config};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(40);
const SECRET: &str = "department-shared-secret";

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A webhook receiver on a fixed port: records every request, answers 200.
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(port: u16) -> Result<Self> {
        Self::start_with(port, None).await
    }

    /// With `tls`, an https:// receiver: TLS first, then the same HTTP.
    async fn start_with(port: u16, tls: Option<tokio_rustls::TlsAcceptor>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (sink, tls) = (sink.clone(), tls.clone());
                tokio::spawn(async move {
                    let request = match tls {
                        None => read_request(stream).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => read_request(stream).await,
                            Err(e) => Err(e.into()),
                        },
                    };
                    if let Ok(request) = request {
                        sink.lock().expect("lock").push(request);
                    }
                });
            }
        });
        Ok(Receiver { got, task })
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    async fn wait_for(&self, count: usize) -> Result<Vec<Received>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.requests();
            if got.len() >= count {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!("the receiver got {} request(s), not {count}, within {WAIT:?}", got.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) -> Result<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    if parts.next() != Some("POST") {
        bail!("not a POST: {line:?}");
    }
    let path = parts.next().context("path")?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').context("header")?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let length: usize = headers.get("content-length").context("content-length")?.parse()?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
    reader.get_mut().flush().await?;
    reader.get_mut().shutdown().await?;
    Ok(Received { path, headers, body })
}

fn secret_file(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{SECRET}\n")).expect("secret written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path.display().to_string()
}

fn fleet_route(config: &Path, name: &str) -> Result<serde_json::Value> {
    let out = run(config, &["fleet", "--json"]);
    if !out.status.success() {
        bail!("fleet failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == name).cloned())
        .with_context(|| format!("no route {name} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_the_webhook_signed_after_a_receiver_outage_and_a_replica_kill() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    // A port nobody listens on yet: the receiver is down.
    let port = gate_tests::free_port();
    let routes = format!(
        "[ingest]\ngap_timeout_s = 1\n\n\
         [[route]]\nname = \"police\"\nurl = \"http://127.0.0.1:{port}/police\"\nsecret_file = \"{}\"\n\
         site = \"site-r\"\nkind = \"refusal\"\nreason = \"blocklisted\"\n\n\
         [[route]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/ops\"\nsecret_file = \"{}\"\nkind = \"gap\"\n\n\
         [[route]]\nname = \"elsewhere\"\nurl = \"http://127.0.0.1:{port}/x\"\nsecret_file = \"{}\"\n\
         site = \"another-site\"\n",
        secret_file(dir.path(), "police.secret"),
        secret_file(dir.path(), "ops.secret"),
        secret_file(dir.path(), "elsewhere.secret"),
    );
    let config = write_config(dir.path(), &pg.url(), broker.port(), &routes);
    let mut replica = Replica::start(&config, "r1")?;
    replica.wait_subscribed().await?;

    let alert = pb::Alert {
        alert_id: "7d0c3f4e-0000-4000-8000-000000000001".into(),
        seq: 1,
        site_id: "site-r".into(),
        gate_id: "east-1".into(),
        occurred_at_ms: gate_platform::ingest::now_ms(),
        subject: "440524********0014".into(),
        person_id: "p-9".into(),
        category: pb::Category::Visitor as i32,
        reason: pb::Reason::Blocklisted as i32,
        repeat_count: 1,
        ..Default::default()
    };
    gate_tests::publish(broker.port(), "village/site-r/alerts", alert.encode_to_vec(), false).await?;
    // Queued for the one matching route, tried, failed, kept.
    wait_sql(
        &pg,
        "SELECT route, attempts > 0, delivered_at IS NULL, last_error IS NOT NULL FROM deliveries",
        "police|t|t|t",
        WAIT,
    )
    .await?;
    let police = fleet_route(&config, "police")?;
    assert_eq!((police["delivered"].as_i64(), police["pending"].as_i64()), (Some(0), Some(1)), "{police}");
    assert!(police["failures"].as_i64().is_some_and(|f| f >= 1), "{police}");
    assert!(police["last_error"].as_str().is_some_and(|e| e.contains("connect")), "{police}");
    let table = String::from_utf8_lossy(&run(&config, &["fleet"]).stdout).into_owned();
    assert!(table.lines().any(|l| l.starts_with("police") && l.contains("connect")), "{table}");

    // The replica dies with the alert undelivered; the receiver comes up;
    // a replica runs again: the queue in PostgreSQL still has it.
    replica.kill();
    let receiver = Receiver::start(port).await?;
    let replica = Replica::start(&config, "r1")?;
    replica.wait_subscribed().await?;
    let got = receiver.wait_for(1).await?;
    let request = &got[0];
    assert_eq!(request.path, "/police");
    let timestamp: i64 = request.headers["x-gate-timestamp"].parse()?;
    assert_eq!(
        request.headers["x-gate-signature"],
        gate_platform::routes::signature(SECRET.as_bytes(), timestamp, &request.body),
        "signed with the route's secret over timestamp.body"
    );
    assert_eq!(request.headers["x-gate-alert-id"], alert.alert_id);
    let doc: serde_json::Value = serde_json::from_slice(&request.body)?;
    assert_eq!(doc["schema"], "gate-platform.alert.v1");
    assert_eq!(doc["route"], "police");
    assert!(doc["attempt"].as_i64().is_some_and(|a| a >= 2), "{doc}");
    let a = &doc["alert"];
    assert_eq!(
        (a["alert_id"].as_str(), a["kind"].as_str(), a["reason"].as_str(), a["category"].as_str()),
        (Some(alert.alert_id.as_str()), Some("refusal"), Some("blocklisted"), Some("visitor"))
    );
    assert_eq!((a["site_id"].as_str(), a["gate_id"].as_str()), (Some("site-r"), Some("east-1")));
    assert_eq!(a["subject"], "440524********0014", "masked, as the gate sent it");
    wait_sql(&pg, "SELECT route, delivered_at IS NOT NULL FROM deliveries", "police|t", WAIT).await?;
    let police = fleet_route(&config, "police")?;
    assert_eq!((police["delivered"].as_i64(), police["pending"].as_i64()), (Some(1), Some(0)), "{police}");
    assert!(police["last_delivery_age_ms"].as_i64().is_some_and(|age| (0..60_000).contains(&age)), "{police}");

    // A gap the platform raises goes to the route that asks for gaps.
    let mut sim = SimGate::connect("127.0.0.1", broker.port(), "village", "site-g", "west-2");
    let first = sim.next_event(gate_platform::ingest::now_ms());
    sim.skip(1);
    let third = sim.next_event(gate_platform::ingest::now_ms());
    sim.publish(&first).await?;
    sim.publish(&third).await?;
    let got = receiver.wait_for(2).await?;
    let gap = got.iter().find(|r| r.path == "/ops").context("the gap went to /ops")?;
    let doc: serde_json::Value = serde_json::from_slice(&gap.body)?;
    assert_eq!((doc["alert"]["kind"].as_str(), doc["alert"]["gate_id"].as_str()), (Some("gap"), Some("west-2")));
    assert_eq!(doc["alert"]["facts"]["from_seq"], 2);
    wait_sql(&pg, "SELECT string_agg(route, ',' ORDER BY route) FROM deliveries", "ops,police", WAIT).await?;
    assert!(got.iter().all(|r| r.path != "/x"), "no alert matched the other site's route");
    Ok(())
}

#[test]
fn a_route_secret_readable_by_others_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("s.secret");
    std::fs::write(&secret, "x\n").expect("w");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let routes = format!("[[route]]\nurl = \"http://127.0.0.1:9/x\"\nsecret_file = \"{}\"\n", secret.display());
    // No database is reached: the secret is checked first.
    let config = write_config(dir.path(), "postgres://nobody@127.0.0.1:1/none", 1, &routes);
    let out = run(&config, &["ingest"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
}

/// A TLS acceptor serving `pair` (a certificate and its key, PEM).
fn acceptor(pair: &gate_tests::pki::Pair) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&pair.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&pair.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_reaches_an_https_webhook_and_a_receiver_its_ca_does_not_vouch_for_gets_nothing() -> Result<()> {
    use gate_tests::pki::{SERVER_EXT, issue, make_ca};
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let (ca, other_ca) = (make_ca(dir.path(), "receiver-ca")?, make_ca(dir.path(), "other-ca")?);
    let receiver_cert = issue(dir.path(), &ca, "receiver", SERVER_EXT)?;
    let port = gate_tests::free_port();
    let receiver = Receiver::start_with(port, Some(acceptor(&receiver_cert)?)).await?;
    let routes = format!(
        "[[route]]\nname = \"secure\"\nurl = \"https://127.0.0.1:{port}/secure\"\nsecret_file = \"{}\"\n\
         ca_file = \"{}\"\n\n\
         [[route]]\nname = \"doubting\"\nurl = \"https://127.0.0.1:{port}/doubting\"\nsecret_file = \"{}\"\n\
         ca_file = \"{}\"\n",
        secret_file(dir.path(), "secure.secret"),
        ca.cert.display(),
        secret_file(dir.path(), "doubting.secret"),
        other_ca.cert.display(),
    );
    let config = write_config(dir.path(), &pg.url(), broker.port(), &routes);
    let replica = Replica::start(&config, "tls")?;
    replica.wait_subscribed().await?;
    let alert = pb::Alert {
        alert_id: "7d0c3f4e-0000-4000-8000-000000000002".into(),
        seq: 1,
        site_id: "site-s".into(),
        gate_id: "east-1".into(),
        occurred_at_ms: gate_platform::ingest::now_ms(),
        reason: pb::Reason::Blocklisted as i32,
        repeat_count: 1,
        ..Default::default()
    };
    gate_tests::publish(broker.port(), "village/site-s/alerts", alert.encode_to_vec(), false).await?;
    let got = receiver.wait_for(1).await?;
    let request = &got[0];
    assert_eq!(request.path, "/secure");
    let timestamp: i64 = request.headers["x-gate-timestamp"].parse()?;
    assert_eq!(
        request.headers["x-gate-signature"],
        gate_platform::routes::signature(SECRET.as_bytes(), timestamp, &request.body)
    );
    wait_sql(&pg, "SELECT delivered_at IS NOT NULL FROM deliveries WHERE route = 'secure'", "t", WAIT).await?;
    // The other route trusts another CA: the receiver's certificate does
    // not chain to it, the attempt fails before anything is sent.
    wait_sql(
        &pg,
        "SELECT delivered_at IS NULL, last_error LIKE 'TLS:%' FROM deliveries WHERE route = 'doubting'",
        "t|t",
        WAIT,
    )
    .await?;
    let doubting = fleet_route(&config, "doubting")?;
    assert!(doubting["last_error"].as_str().is_some_and(|e| e.contains("UnknownIssuer")), "{doubting}");
    assert!(receiver.requests().iter().all(|r| r.path != "/doubting"));
    Ok(())
}
