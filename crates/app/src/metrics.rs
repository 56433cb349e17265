//! Prometheus metrics over HTTP: a deliberately tiny HTTP/1.1 server (GET
//! `/metrics` only, one request per connection, served one at a time) that
//! renders the text exposition format from the live counters in
//! [`Observed`], the outbox and the identity state.
//!
//! Hand-rolled rather than a web framework: one route, no body parsing, and
//! nothing in it that a scraper on the network could push into the decision
//! path. Off unless `[metrics] listen` is set, loopback unless allowed.

use crate::Observed;
use gate_config::Config;
use gate_devices::DeviceHealth;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Upper bounds of the decision latency buckets, in microseconds. A decision
/// is a few SQLite reads and one synchronous (fsync'd) write: milliseconds on
/// an SD card, more when the card is worn.
pub const LATENCY_BUCKETS_US: [u64; 12] =
    [250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];

/// A fixed-bucket histogram of decision latencies, written by the decision
/// loop without locks.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot is above the
    /// largest bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A copy of the histogram: cumulative counts per bound, total and sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// (upper bound in µs, observations at or below it).
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slot = LATENCY_BUCKETS_US.iter().position(|&bound| us <= bound).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS_US.len());
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push((*bound, running));
        }
        let count = running + self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
        LatencySnapshot { cumulative, count, sum_us: self.sum_us.load(Ordering::Relaxed) }
    }
}

/// Everything a scrape reads.
#[derive(Clone)]
pub(crate) struct MetricsSource {
    pub observed: Arc<Observed>,
    pub config: watch::Receiver<Config>,
    pub devices: Vec<(&'static str, Arc<DeviceHealth>)>,
    pub store_path: PathBuf,
    pub started: Instant,
}

/// Serves `GET /metrics` on `listen` until `shutdown`. A port that cannot be
/// bound is logged and the daemon runs on without metrics: the gate matters
/// more than its dashboard.
pub(crate) async fn run_metrics(listen: SocketAddr, source: MetricsSource, shutdown: CancellationToken) {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(%listen, error = %e, "cannot listen for metrics; running without the metrics endpoint");
            return;
        }
    };
    info!(%listen, "metrics on http://{listen}/metrics");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // One at a time with a deadline: a slow or silent client delays the
        // next scrape, never the gate.
        match tokio::time::timeout(Duration::from_secs(5), serve_one(stream, &source)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
            Err(_) => debug!(%peer, "metrics request timed out"),
        }
    }
}

async fn serve_one(mut stream: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8192 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "request too large\n")
                .await;
        }
    }
    let request_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let source = source.clone();
            let body = tokio::task::spawn_blocking(move || render(&source))
                .await
                .unwrap_or_else(|e| format!("# render failed: {e}\n"));
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &body).await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "only /metrics is served here\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The text exposition format, one family at a time.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

/// Renders every metric. Reads the database through its own connection
/// (WAL: never blocks the decision loop's writes).
pub(crate) fn render(source: &MetricsSource) -> String {
    let config = source.config.borrow().clone();
    let observed = &source.observed;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let now = crate::wall_clock_ms();
    let mut out = Exposition(String::with_capacity(8192));

    out.family("gated_info", "gauge", "The daemon's version and the gate it runs.");
    out.sample(
        "gated_info",
        &[("version", crate::VERSION), ("site", config.site.id.as_str()), ("gate", config.gate.id.as_str())],
        1,
    );
    out.single(
        "gated_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        source.started.elapsed().as_secs(),
    );

    let d = &observed.decisions;
    out.family("gated_decisions_total", "counter", "Decisions recorded since start, by result and block reason.");
    out.sample("gated_decisions_total", &[("result", "pass")], load(&d.passed));
    let mut by_reason: Vec<(&str, u64)> = d
        .blocked_by_reason
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    by_reason.sort_unstable();
    for (reason, n) in by_reason {
        out.sample("gated_decisions_total", &[("result", "block"), ("reason", reason)], n);
    }
    out.sample("gated_decisions_total", &[("result", "failed")], load(&d.failed));

    let latency = d.latency.snapshot();
    out.family(
        "gated_decision_latency_seconds",
        "histogram",
        "Time from a credential read to its decision being durable.",
    );
    for (bound_us, n) in &latency.cumulative {
        let le = format!("{}", *bound_us as f64 / 1e6);
        out.sample("gated_decision_latency_seconds_bucket", &[("le", &le)], n);
    }
    out.sample("gated_decision_latency_seconds_bucket", &[("le", "+Inf")], latency.count);
    out.sample("gated_decision_latency_seconds_sum", &[], format!("{:.6}", latency.sum_us as f64 / 1e6));
    out.sample("gated_decision_latency_seconds_count", &[], latency.count);

    out.family("gated_unusable_reads_total", "counter", "Reads that were not decisions (unreadable, low confidence).");
    out.sample("gated_unusable_reads_total", &[("kind", "id_card")], load(&d.unreadable_cards));
    out.sample("gated_unusable_reads_total", &[("kind", "qr")], load(&d.unreadable_qr));
    out.sample("gated_unusable_reads_total", &[("kind", "plate")], load(&d.unusable_plates));
    out.family("gated_health_online_checks_total", "counter", "Online health checks before a decision, by outcome.");
    for (outcome, c) in [
        ("answered", &d.health_online_answers),
        ("timeout", &d.health_online_timeouts),
        ("unavailable", &d.health_online_unavailable),
    ] {
        out.sample("gated_health_online_checks_total", &[("outcome", outcome)], load(c));
    }
    out.single("gated_passages_total", "counter", "Passages the turnstile reported.", load(&d.passages));
    out.single("gated_alerts_total", "counter", "Alerts recorded for the management departments.", load(&d.alerts));
    let beat = d.heartbeat.age().map_or_else(|| "NaN".to_owned(), |a| format!("{:.3}", a.as_secs_f64()));
    out.single(
        "gated_decision_loop_heartbeat_age_seconds",
        "gauge",
        "Seconds since the decision loop last turned (NaN before its first turn).",
        beat,
    );

    let link = &observed.link;
    out.single(
        "gated_mqtt_connected",
        "gauge",
        "1 while the broker connection is up.",
        u8::from(observed.broker_connected()),
    );
    out.single(
        "gated_mqtt_downlink_subscribed",
        "gauge",
        "1 while connected with every downlink subscription granted.",
        u8::from(observed.downlink_subscribed()),
    );
    out.single(
        "gated_mqtt_subscriptions_refused_total",
        "counter",
        "Downlink subscriptions the broker refused (platform orders on them cannot arrive).",
        load(&link.subscriptions_refused),
    );
    out.single("gated_mqtt_published_total", "counter", "Messages handed to the broker.", load(&link.published));
    out.single("gated_mqtt_acked_total", "counter", "Publishes the broker acknowledged.", load(&link.acked));
    out.single("gated_mqtt_connections_total", "counter", "Broker connections made.", load(&link.connections));
    out.single(
        "gated_mqtt_connection_errors_total",
        "counter",
        "Broker connections lost or refused (each is followed by a reconnect).",
        load(&link.connection_errors),
    );
    let dl = &link.downlink;
    out.single(
        "gated_control_refused_total",
        "counter",
        "Control-socket requests refused before any command ran (peer, length, JSON, protocol version).",
        load(&observed.control_refused),
    );
    out.family("gated_downlink_messages_total", "counter", "Messages from the platform, by outcome.");
    for (kind, c) in [
        ("mode_change", &dl.mode_changes),
        ("identity_applied", &dl.identity_applied),
        ("identity_staged", &dl.identity_staged),
        ("identity_duplicate", &dl.identity_duplicates),
        ("resync_request", &dl.resync_requests),
        ("rejected", &dl.rejected),
        ("key_rotation", &dl.key_rotations),
        ("again", &dl.again),
    ] {
        out.sample("gated_downlink_messages_total", &[("kind", kind)], load(c));
    }
    out.family(
        "gated_downlink_refused_total",
        "counter",
        "Downlink envelopes refused before anything was read, by reason.",
    );
    for reason in gate_sync::Refusal::ALL {
        out.sample("gated_downlink_refused_total", &[("reason", reason.as_str())], dl.refused(reason));
    }

    out.family("gated_device_connected", "gauge", "1 while the device's port is open.");
    for (name, h) in &source.devices {
        out.sample("gated_device_connected", &[("device", name)], u8::from(h.snapshot().connected));
    }
    out.family("gated_device_frames_total", "counter", "Replies or lines accepted from the device.");
    for (name, h) in &source.devices {
        out.sample("gated_device_frames_total", &[("device", name)], h.snapshot().frames_ok);
    }
    out.family("gated_device_errors_total", "counter", "Device errors by kind.");
    for (name, h) in &source.devices {
        let s = h.snapshot();
        for (kind, n) in [
            ("checksum", s.checksum_errors),
            ("length", s.length_errors),
            ("timeout", s.timeouts),
            ("status", s.status_errors),
            ("auth", s.auth_errors),
        ] {
            out.sample("gated_device_errors_total", &[("device", name), ("kind", kind)], n);
        }
    }
    out.family("gated_device_garbage_bytes_total", "counter", "Bytes dropped while resynchronising on a frame start.");
    for (name, h) in &source.devices {
        out.sample("gated_device_garbage_bytes_total", &[("device", name)], h.snapshot().garbage_bytes);
    }
    out.family("gated_device_reconnects_total", "counter", "Times the device's port was opened again.");
    for (name, h) in &source.devices {
        out.sample("gated_device_reconnects_total", &[("device", name)], h.snapshot().reconnects);
    }

    out.family("gated_store_errors_total", "counter", "Store failures by class.");
    for class in gate_store::ErrorClass::ALL {
        out.sample("gated_store_errors_total", &[("class", class.as_str())], observed.decisions.store_errors.of(class));
    }
    out.single(
        "gated_disk_free_bytes",
        "gauge",
        "Free bytes in the state folder's file system.",
        load(&observed.store.disk_free_bytes),
    );
    out.single(
        "gated_outbox_dropped_total",
        "counter",
        "Unsent events dropped because the outbox was over capacity.",
        load(&observed.store.outbox_dropped),
    );
    out.family("gated_store_state", "gauge", "1 for the store's state.");
    for state in ["ok", "low", "full", "busy", "io", "corrupt"] {
        out.sample("gated_store_state", &[("state", state)], u8::from(observed.store.state() == state));
    }
    out.family("gated_policy_info", "gauge", "The policy version in force.");
    out.sample("gated_policy_info", &[("version", &config.policy.version)], 1);

    match gate_store::Store::open(&source.store_path) {
        Ok(store) => {
            let mode = match store.mode_schedule() {
                Ok(Some(s)) => Some(s.at(now)),
                Ok(None) => Some(gate_core::Mode::Normal),
                Err(_) => None,
            };
            if let Some(mode) = mode {
                out.family("gated_mode", "gauge", "1 for the site mode in force.");
                for m in [gate_core::Mode::Normal, gate_core::Mode::Sporadic, gate_core::Mode::Wartime] {
                    out.sample("gated_mode", &[("mode", m.as_str())], u8::from(m == mode));
                }
            }
            if let Ok(stats) = store.outbox_stats() {
                out.single("gated_outbox_depth", "gauge", "Events waiting for the broker.", stats.depth);
                let age = stats.oldest_created_ms.map_or(0, |t| now.saturating_sub(t).max(0) as u64);
                out.single(
                    "gated_outbox_oldest_age_seconds",
                    "gauge",
                    "Age of the oldest queued event (0 when the outbox is empty).",
                    seconds(age),
                );
            }
            if let Ok(health) = store.health_state() {
                out.single(
                    "gated_health_version",
                    "gauge",
                    "Health table version synced from the platform.",
                    health.version,
                );
            }
            if let Ok(identity) = store.identity_state() {
                out.single(
                    "gated_identity_version",
                    "gauge",
                    "Identity table version synced from the platform.",
                    identity.version,
                );
                if let Some(at) = identity.synced_at_ms {
                    out.single(
                        "gated_identity_synced_timestamp_seconds",
                        "gauge",
                        "When the identity table last changed from the platform (Unix time).",
                        seconds(at.max(0) as u64),
                    );
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "metrics: cannot open the database; outbox and sync metrics left out");
            out.single("gated_store_readable", "gauge", "0 when the metrics endpoint could not read the database.", 0);
        }
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_an_overflow_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(600));
        h.observe(Duration::from_micros(1_000));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[0], (250, 1));
        assert_eq!(s.cumulative[1], (500, 1));
        assert_eq!(s.cumulative[2], (1_000, 3), "a bound is inclusive");
        assert_eq!(s.cumulative.last(), Some(&(1_000_000, 3)), "3 s is only in +Inf");
        assert_eq!(s.sum_us, 100 + 600 + 1_000 + 3_000_000);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition(String::new());
        e.sample("m", &[("a", "x\"y\\z\nw")], 1);
        assert_eq!(e.0, "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }
}
