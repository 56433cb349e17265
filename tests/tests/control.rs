//! The daemon's observability and live reconfiguration, in-process on
//! simulated hardware: Prometheus metrics scraped over HTTP and parsed (every
//! line a valid sample, the counters equal to the decisions made), the
//! control socket's protocol through the client library, and a reloaded
//! policy applied between two decisions with no event lost.

use anyhow::{Context, Result, bail};
use gate_app::control::client;
use gate_app::control::protocol::{Command, Reply};
use gate_core::BlockReason;
use gate_proto::v1 as pb;
use gate_tests::{FixtureOptions, GateFixture, Mosquitto, RunningDaemon, free_port, init_test_logging, resident};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ZHANG: &str = "35020319900101123X";
const STRANGER: &str = "440524188001010014";
const FORGED: &str = "350203199001011237";
const WAIT: Duration = Duration::from_secs(10);

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

/// One HTTP/1.1 request; returns the whole response.
async fn http(port: u16, request: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await??;
    Ok(response)
}

/// A parsed sample: metric name and labels in file order.
type Key = (String, Vec<(String, String)>);

/// Parses the text exposition format strictly: every line is a `# HELP`, a
/// `# TYPE` or a sample with a valid name, well-formed labels and a number;
/// every sample's family was typed before it.
fn parse_exposition(body: &str) -> Result<HashMap<Key, f64>> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for (i, line) in body.lines().enumerate() {
        let at = || format!("line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, text) = (parts.next(), parts.next(), parts.next());
            match (kind, name, text) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(t)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        bail!("unknown type, {}", at());
                    }
                    typed.insert(name.to_owned(), t.to_owned());
                }
                _ => bail!("bad comment, {}", at()),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(at)?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().with_context(at)?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').with_context(at)?;
                let mut labels = Vec::new();
                let mut rest = inner;
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").with_context(at)?;
                    if !valid_name(label) {
                        bail!("bad label name, {}", at());
                    }
                    // The value ends at the first quote not escaped.
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => bail!("bad escape, {}", at()),
                            },
                            Some((j, '"')) => break j,
                            Some((_, c)) => value.push(c),
                            None => bail!("unterminated label value, {}", at()),
                        }
                    };
                    labels.push((label.to_owned(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        if !valid_name(name) {
            bail!("bad metric name, {}", at());
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !typed.contains_key(family) {
            bail!("sample before its # TYPE, {}", at());
        }
        if samples.insert((name.to_owned(), labels), value).is_some() {
            bail!("duplicate series, {}", at());
        }
    }
    Ok(samples)
}

fn get(samples: &HashMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (name.to_owned(), labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    *samples.get(&key).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_parsed_and_match_the_decisions() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let port = free_port();
    let options = FixtureOptions {
        extra_toml: format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..FixtureOptions::default()
    };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let d = daemon.observed.decisions.clone();
    fx.present_card(ZHANG, "张三").await?;
    wait_for("the pass and its passage", || {
        d.passed.load(Ordering::Relaxed) == 1 && d.passages.load(Ordering::Relaxed) == 1
    })
    .await?;
    fx.present_card(STRANGER, "x").await?;
    fx.present_card(FORGED, "x").await?;
    wait_for("two blocks", || d.blocked.load(Ordering::Relaxed) == 2).await?;

    let response = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let (head, body) = response.split_once("\r\n\r\n").context("a header")?;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    let samples = parse_exposition(body)?;

    assert_eq!(get(&samples, "gated_decisions_total", &[("result", "pass")]), 1.0);
    assert_eq!(get(&samples, "gated_decisions_total", &[("result", "block"), ("reason", "unknown_person")]), 1.0);
    assert_eq!(get(&samples, "gated_decisions_total", &[("result", "block"), ("reason", "invalid_id_number")]), 1.0);
    assert_eq!(get(&samples, "gated_decisions_total", &[("result", "failed")]), 0.0);
    assert_eq!(d.blocked_for(BlockReason::UnknownPerson), 1);
    assert_eq!(get(&samples, "gated_decision_latency_seconds_count", &[]), 3.0);
    assert_eq!(get(&samples, "gated_decision_latency_seconds_bucket", &[("le", "+Inf")]), 3.0);
    assert!(get(&samples, "gated_decision_latency_seconds_sum", &[]) > 0.0);
    let buckets: Vec<f64> = gate_app::LATENCY_BUCKETS_US
        .iter()
        .map(|us| get(&samples, "gated_decision_latency_seconds_bucket", &[("le", &format!("{}", *us as f64 / 1e6))]))
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative: {buckets:?}");
    assert_eq!(get(&samples, "gated_passages_total", &[]), 1.0);
    assert_eq!(get(&samples, "gated_alerts_total", &[]), d.alerts.load(Ordering::Relaxed) as f64);
    assert_eq!(get(&samples, "gated_mqtt_connected", &[]), 1.0);
    assert_eq!(get(&samples, "gated_mqtt_downlink_subscribed", &[]), 1.0);
    assert_eq!(get(&samples, "gated_mqtt_subscriptions_refused_total", &[]), 0.0);
    assert!(get(&samples, "gated_mqtt_published_total", &[]) >= get(&samples, "gated_mqtt_acked_total", &[]) - 1.0);
    assert!(get(&samples, "gated_mqtt_connections_total", &[]) >= 1.0);
    assert_eq!(get(&samples, "gated_downlink_messages_total", &[("kind", "rejected")]), 0.0);
    assert_eq!(get(&samples, "gated_downlink_refused_total", &[("reason", "replay")]), 0.0);
    for device in ["id_card", "gate"] {
        assert_eq!(get(&samples, "gated_device_connected", &[("device", device)]), 1.0);
        assert!(get(&samples, "gated_device_frames_total", &[("device", device)]) > 0.0);
        get(&samples, "gated_device_errors_total", &[("device", device), ("kind", "checksum")]);
        get(&samples, "gated_device_reconnects_total", &[("device", device)]);
    }
    assert_eq!(get(&samples, "gated_mode", &[("mode", "normal")]), 1.0);
    assert_eq!(get(&samples, "gated_mode", &[("mode", "wartime")]), 0.0);
    assert_eq!(get(&samples, "gated_identity_version", &[]), 0.0);
    assert_eq!(get(&samples, "gated_health_version", &[]), 0.0);
    let depth = get(&samples, "gated_outbox_depth", &[]);
    assert!(depth >= 0.0);
    get(&samples, "gated_outbox_oldest_age_seconds", &[]);
    assert!(get(&samples, "gated_decision_loop_heartbeat_age_seconds", &[]) < 5.0);
    let version = fx.config().policy.version;
    assert_eq!(get(&samples, "gated_policy_info", &[("version", &version)]), 1.0);
    assert_eq!(
        get(&samples, "gated_info", &[("version", gate_app::VERSION), ("site", "heshan-c03"), ("gate", "east-1")]),
        1.0
    );
    for id in [ZHANG, STRANGER, FORGED] {
        assert!(!body.contains(id), "no ID number in the metrics");
    }

    let other = http(port, "GET /other HTTP/1.1\r\n\r\n").await?;
    assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
    let post = http(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await?;
    assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{post}");
    daemon.stop().await
}

async fn status(socket: std::path::PathBuf) -> Result<gate_app::control::protocol::StatusReport> {
    match tokio::task::spawn_blocking(move || client::request(&socket, Command::Status)).await?? {
        Reply::Status(report) => Ok(report),
        other => bail!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_decides_the_next_card_and_restart_keys_wait() -> Result<()> {
    init_test_logging();
    // No broker: every event stays in the outbox to be counted.
    let fx = GateFixture::new(free_port(), &[resident("p-001", ZHANG, "张三")])?;
    let config = fx.config();
    let socket = config.control.socket.clone();
    let (reload, reloads) = tokio::sync::watch::channel(config.clone());
    let shutdown = CancellationToken::new();
    let observed = Arc::new(gate_app::Observed::default());
    let daemon = tokio::spawn(gate_app::run_with_reload(config.clone(), reloads, shutdown.clone(), observed.clone()));
    wait_for("the control socket", || socket.exists()).await?;
    let d = observed.decisions.clone();

    fx.present_card(ZHANG, "张三").await?;
    wait_for("the pass and its passage", || {
        d.passed.load(Ordering::Relaxed) == 1 && d.passages.load(Ordering::Relaxed) == 1
    })
    .await?;
    let before = status(socket.clone()).await?;
    assert_eq!(before.policy_version, config.policy.version);

    // Residents no longer allowed in normal mode; and a new broker port,
    // which only a restart can apply.
    let text = std::fs::read_to_string(&fx.config_path)?;
    let text = text.replace("keep_alive_s = 5", "keep_alive_s = 7");
    let text = format!("{text}\n[policy.normal]\nallowed_categories = [\"worker\", \"visitor\"]\n");
    let candidate = gate_config::parse(&fx.config_path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let new_version = candidate.policy.version.clone();
    assert_ne!(new_version, config.policy.version);
    reload.send(candidate)?;
    let deadline = Instant::now() + WAIT;
    while status(socket.clone()).await?.policy_version != new_version {
        if Instant::now() > deadline {
            bail!("the reloaded policy never showed in the status");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The broker setting waits for a restart, and the status says so.
    assert_eq!(status(socket.clone()).await?.restart_needed, ["mqtt.keep_alive_s"]);

    fx.present_card(ZHANG, "张三").await?;
    wait_for("the block", || d.blocked_for(BlockReason::CategoryNotAllowed) == 1).await?;
    assert_eq!(d.passed.load(Ordering::Relaxed), 1);
    // A later refusal, recorded after anything the first two could still add.
    fx.present_card(FORGED, "伪造").await?;
    wait_for("the marker", || d.blocked_for(BlockReason::InvalidIdNumber) == 1).await?;

    // Every event recorded, gap-free, each under the policy in force when
    // it was decided.
    let events = fx.queued_events();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let decisions: Vec<&pb::GateEvent> = events.iter().filter(|e| e.kind() == pb::EventKind::Decision).collect();
    assert_eq!(decisions.len(), 3, "the two cards and the marker");
    assert_eq!(decisions[2].reason(), pb::Reason::InvalidIdNumber);
    assert_eq!(decisions[0].policy_version, config.policy.version);
    assert_eq!(decisions[1].policy_version, new_version);
    assert_eq!(decisions[1].reason(), pb::Reason::CategoryNotAllowed);

    shutdown.cancel();
    tokio::time::timeout(WAIT, daemon).await???;
    assert!(!socket.exists(), "the socket is removed on a clean stop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_policy_shows_in_the_retained_status_at_once() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = gate_tests::Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let config = fx.config();
    let (reload, reloads) = tokio::sync::watch::channel(config.clone());
    let shutdown = CancellationToken::new();
    let observed = Arc::new(gate_app::Observed::default());
    let daemon = tokio::spawn(gate_app::run_with_reload(config.clone(), reloads, shutdown.clone(), observed.clone()));
    let online_with = |version: String| {
        move |s: &gate_tests::Subscriber| {
            s.last_status(gate_tests::STATUS_TOPIC).is_some_and(|st| st.online && st.policy_version == version)
        }
    };
    sub.wait_until(WAIT, "the first status", online_with(config.policy.version.clone())).await?;

    let text = std::fs::read_to_string(&fx.config_path)?;
    let text = format!("{text}\n[policy]\nversion = \"district-order-17\"\n");
    let candidate = gate_config::parse(&fx.config_path, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    reload.send(candidate)?;
    // Well before the 15 s periodic refresh.
    sub.wait_until(
        Duration::from_secs(5),
        "the reloaded policy in the status",
        online_with("district-order-17".into()),
    )
    .await?;

    shutdown.cancel();
    tokio::time::timeout(WAIT, daemon).await???;
    Ok(())
}
