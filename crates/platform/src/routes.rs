//! Alert routing to the departments: `[[route]]` rules, the durable
//! delivery queue in PostgreSQL (`deliveries`), and the webhook POST.
//!
//! An alert is queued for every matching route in the transaction that
//! stores it; every ingest replica runs a dispatcher that takes due rows
//! (`FOR UPDATE SKIP LOCKED`, then a lease), POSTs the JSON document below
//! and marks the row delivered on a 2xx answer, or schedules the next try
//! with exponential backoff. Delivery is at least once: a receiver
//! deduplicates on `alert.alert_id` (also sent as `X-Gate-Alert-Id`).
//!
//! The document (`schema` = [`SCHEMA`]):
//!
//! ```json
//! {"schema": "gate-platform.alert.v1", "route": "police", "attempt": 1,
//!  "alert": {"alert_id": "…", "source": "gate", "kind": "refusal",
//!            "site_id": "…", "gate_id": "…", "seq": 12, "occurred_at_ms": 1764000000000,
//!            "reason": "blocklisted", "category": "visitor", "subject": "350203********1234",
//!            "person_id": "…", "alarm": null, "mode": "normal", "repeat_count": 1,
//!            "detail": null, "facts": {"list": "police"}}}
//! ```
//!
//! Headers: `X-Gate-Timestamp` (Unix ms of the attempt) and
//! `X-Gate-Signature: sha256=HEX`, HEX being HMAC-SHA256 under the route's
//! secret over the timestamp, one `.`, and the exact body bytes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Transaction;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RouteConfig;
use crate::db::DbError;

/// The `schema` field of every document sent.
pub const SCHEMA: &str = "gate-platform.alert.v1";
/// Longest wait for a receiver's answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a taken row stays out of the others' reach: past the HTTP
/// timeout, so two replicas never post the same row at once on purpose.
const LEASE: Duration = Duration::from_secs(30);
/// Rows taken per round.
const BATCH: i64 = 20;
/// How often an idle dispatcher looks for due rows.
const POLL: Duration = Duration::from_millis(250);

/// What a route's filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFacts {
    pub alert_id: String,
    pub site_id: String,
    /// `refusal`, `alarm` (from a gate) or `gap` (raised by the platform).
    pub kind: String,
    pub reason: Option<String>,
    pub category: Option<String>,
}

/// Whether every filter the route sets matches the alert.
pub fn matches(route: &RouteConfig, alert: &AlertFacts) -> bool {
    let ok = |filter: &Option<String>, value: Option<&str>| filter.as_deref().is_none_or(|f| Some(f) == value);
    ok(&route.site, Some(&alert.site_id))
        && ok(&route.kind, Some(&alert.kind))
        && ok(&route.reason, alert.reason.as_deref())
        && ok(&route.category, alert.category.as_deref())
}

/// Wait before attempt `attempts + 1` after `attempts` failed ones: 1 s,
/// doubling, at most 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// `sha256=HEX` over `{timestamp}.{body}`.
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Queues `alerts` for every route they match, in the caller's transaction
/// (the one storing them). Returns the number of rows queued.
pub async fn enqueue(tx: &Transaction<'_>, routes: &[RouteConfig], alerts: &[AlertFacts]) -> Result<u64, DbError> {
    let mut names = Vec::new();
    let mut ids = Vec::new();
    for alert in alerts {
        for route in routes.iter().filter(|r| matches(r, alert)) {
            names.push(route.name.clone());
            ids.push(alert.alert_id.clone());
        }
    }
    if names.is_empty() {
        return Ok(0);
    }
    Ok(tx
        .execute(
            "INSERT INTO deliveries (route, alert_id)
             SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            &[&names, &ids],
        )
        .await?)
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "route secret file {path} has mode {mode:04o}, which lets group or others read it; restrict it with \
         `chmod 600 {path}`",
        path = .0.display(),
        mode = .1
    )]
    Permissions(PathBuf, u32),
    #[error("route secret file {}: empty", .0.display())]
    Empty(PathBuf),
    #[error("route file {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, std::io::Error),
    #[error("route ca_file {path}: {error}", path = .0.display(), error = .1)]
    Ca(PathBuf, String),
    #[error("an https:// route without ca_file, and the system's trust store has no certificate")]
    NoSystemRoots,
}

/// Reads a route's secret (the file's bytes, trailing blanks removed),
/// refusing a file group or others may read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let file = std::fs::File::open(path).map_err(|e| SecretError::Io(path.into(), e))?;
    let mode = file.metadata().map_err(|e| SecretError::Io(path.into(), e))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions(path.into(), mode));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 4096), &mut bytes)
        .map_err(|e| SecretError::Io(path.into(), e))?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(SecretError::Empty(path.into()));
    }
    Ok(bytes)
}

/// A route ready to send: its rule, its secret, and for https:// its TLS
/// client settings.
#[derive(Clone)]
pub struct Route {
    pub config: RouteConfig,
    secret: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Route {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("name", &self.config.name).field("url", &self.config.url).finish()
    }
}

impl Route {
    /// Reads the secret and, for https://, the CA file: a route that could
    /// not deliver stops the start rather than failing every attempt.
    pub fn load(config: &RouteConfig) -> Result<Self, SecretError> {
        let secret = read_secret(&config.secret_file)?;
        let https = parse_http_url(&config.url).is_ok_and(|u| u.tls);
        let tls = if https { Some(Arc::new(tls_client(config.ca_file.as_deref())?)) } else { None };
        Ok(Route { config: config.clone(), secret, tls })
    }
}

/// TLS client settings for webhooks: rustls with the ring provider (as the
/// MQTT connections), roots from `ca_file` or the system's trust store.
pub fn tls_client(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SecretError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| SecretError::Io(path.to_path_buf(), e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SecretError::Ca(path.to_path_buf(), e.to_string()))?;
                roots.add(cert).map_err(|e| SecretError::Ca(path.to_path_buf(), e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(SecretError::Ca(path.to_path_buf(), "no PEM certificate in it".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(SecretError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SecretError::Ca(PathBuf::new(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What a dispatcher counted.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
}

/// The parts of an `http[s]://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// https://: TLS, the certificate checked against the host name.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses an `http://` or `https://` URL (default ports 80 and 443).
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err("expected an http:// or https:// URL".to_owned()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok(HttpUrl { tls, host: host.into(), port, path: path.into() })
}

/// One POST; returns the status code. A deliberately small HTTP/1.1 client
/// (one request per connection, `Connection: close`): the receivers are a
/// handful of department endpoints, not a browser's web. `tls` is required
/// for an https:// URL.
pub async fn post(
    url: &HttpUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<u16, String> {
    let exchange = async {
        let stream =
            tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await.map_err(|e| format!("connect: {e}"))?;
        if !url.tls {
            return request(stream, url, headers, body).await;
        }
        let config = tls.ok_or("an https:// URL without TLS settings")?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("TLS: {:?} is not a server name: {e}", url.host))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        request(stream, url, headers, body).await
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange).await.map_err(|_| "timed out".to_owned())?
}

/// The request on an open connection, and the status of the answer.
async fn request<S>(mut stream: S, url: &HttpUrl, headers: &[(&str, String)], body: &[u8]) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\nUser-Agent: gate-platform/{}\r\n",
        url.path,
        url.host,
        url.port,
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    stream.write_all(body).await.map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    // Only the status line matters; read until it is complete.
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line in the answer".to_owned())
}

/// The document sent for one alert row.
pub fn document(route: &str, attempt: i32, alert: &Value) -> Vec<u8> {
    json!({"schema": SCHEMA, "route": route, "attempt": attempt, "alert": alert}).to_string().into_bytes()
}

/// Runs the dispatcher until `shutdown`.
pub async fn run_dispatcher(pool: Pool, routes: Vec<Route>, stats: Arc<DeliveryStats>, shutdown: CancellationToken) {
    if routes.is_empty() {
        return;
    }
    info!(routes = routes.len(), "alert routing started");
    loop {
        let worked = match deliver_due(&pool, &routes, &stats).await {
            Ok(n) => n > 0,
            Err(e) => {
                warn!(error = %e, "alert delivery round failed; retrying");
                false
            }
        };
        if !worked {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Takes the due rows of the configured routes, posts them, records each
/// outcome. Returns how many rows were attempted.
pub async fn deliver_due(pool: &Pool, routes: &[Route], stats: &DeliveryStats) -> Result<usize, DbError> {
    let names: Vec<String> = routes.iter().map(|r| r.config.name.clone()).collect();
    let client = pool.get().await?;
    // Taking rows and leasing them is one statement: a row taken here is
    // invisible to the other replicas' rounds until the lease ends.
    let lease = LEASE.as_secs_f64();
    let taken = client
        .query(
            "WITH due AS (
                 SELECT route, alert_id FROM deliveries
                 WHERE delivered_at IS NULL AND next_attempt_at <= now() AND route = ANY($1)
                 ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => $3)
             FROM due WHERE d.route = due.route AND d.alert_id = due.alert_id
             RETURNING d.route, d.alert_id, d.attempts,
                 (SELECT json_build_object(
                     'alert_id', a.alert_id, 'source', a.source, 'kind', a.kind, 'site_id', a.site_id,
                     'gate_id', a.gate_id, 'seq', a.seq,
                     'occurred_at_ms', (extract(epoch FROM a.occurred_at) * 1000)::bigint,
                     'reason', a.reason, 'category', a.category, 'subject', a.subject,
                     'person_id', a.person_id, 'alarm', a.alarm, 'mode', a.mode,
                     'repeat_count', a.repeat_count, 'detail', a.detail, 'facts', a.facts)::jsonb
                  FROM alerts a WHERE a.alert_id = d.alert_id)",
            &[&names, &BATCH, &lease],
        )
        .await?;
    for row in &taken {
        let (name, alert_id, attempts): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        let alert: Value = row.get(3);
        let Some(route) = routes.iter().find(|r| r.config.name == name) else { continue };
        let attempt = attempts + 1;
        let outcome = match parse_http_url(&route.config.url) {
            Ok(url) => {
                let body = document(&name, attempt, &alert);
                let timestamp = crate::ingest::now_ms();
                let headers = [
                    ("X-Gate-Alert-Id", alert_id.clone()),
                    ("X-Gate-Timestamp", timestamp.to_string()),
                    ("X-Gate-Signature", signature(&route.secret, timestamp, &body)),
                ];
                post(&url, route.tls.as_ref(), &headers, &body).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                client
                    .execute(
                        "UPDATE deliveries SET attempts = $3, last_attempt_at = now(), last_status = $4,
                             last_error = NULL, delivered_at = now()
                         WHERE route = $1 AND alert_id = $2",
                        &[&name, &alert_id, &attempt, &i32::from(status)],
                    )
                    .await?;
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                info!(route = name, alert_id, attempt, status, "alert delivered");
            }
            failed => {
                let (status, error) = match failed {
                    Ok(status) => (Some(i32::from(status)), format!("HTTP status {status}")),
                    Err(e) => (None, e),
                };
                let wait = backoff(attempt as u32).as_secs_f64();
                client
                    .execute(
                        "UPDATE deliveries SET attempts = $3, last_attempt_at = now(), last_status = $4,
                             last_error = $5, next_attempt_at = now() + make_interval(secs => $6)
                         WHERE route = $1 AND alert_id = $2",
                        &[&name, &alert_id, &attempt, &status, &error, &wait],
                    )
                    .await?;
                stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                warn!(route = name, alert_id, attempt, error, retry_in_s = wait, "alert not delivered");
            }
        }
    }
    Ok(taken.len())
}

/// One route as the fleet view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteLine {
    pub name: String,
    pub delivered: i64,
    pub pending: i64,
    /// Failed attempts, over every alert of the route.
    pub failures: i64,
    pub last_delivery_age_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Per configured route: deliveries, pending, failures, last delivery.
pub async fn lines(pool: &Pool, routes: &[RouteConfig], now_ms: i64) -> Result<Vec<RouteLine>, DbError> {
    let client = pool.get().await?;
    let mut out = Vec::with_capacity(routes.len());
    for route in routes {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL),
                        count(*) FILTER (WHERE delivered_at IS NULL),
                        coalesce(sum(attempts - CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END), 0)::bigint,
                        (extract(epoch FROM max(delivered_at)) * 1000)::bigint,
                        (SELECT last_error FROM deliveries WHERE route = $1 AND last_error IS NOT NULL
                         ORDER BY last_attempt_at DESC LIMIT 1)
                 FROM deliveries WHERE route = $1",
                &[&route.name],
            )
            .await?;
        out.push(RouteLine {
            name: route.name.clone(),
            delivered: row.get(0),
            pending: row.get(1),
            failures: row.get(2),
            last_delivery_age_ms: row.get::<_, Option<i64>>(3).map(|at| now_ms - at),
            last_error: row.get(4),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(site: Option<&str>, kind: Option<&str>, reason: Option<&str>, category: Option<&str>) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            url: "http://127.0.0.1:9/x".into(),
            secret_file: "/s".into(),
            ca_file: None,
            site: site.map(Into::into),
            kind: kind.map(Into::into),
            reason: reason.map(Into::into),
            category: category.map(Into::into),
        }
    }

    #[test]
    fn a_route_takes_an_alert_only_when_every_filter_it_sets_matches() {
        let alert = AlertFacts {
            alert_id: "a".into(),
            site_id: "s1".into(),
            kind: "refusal".into(),
            reason: Some("blocklisted".into()),
            category: None,
        };
        assert!(matches(&route(None, None, None, None), &alert));
        assert!(matches(&route(Some("s1"), Some("refusal"), Some("blocklisted"), None), &alert));
        assert!(!matches(&route(Some("s2"), None, None, None), &alert));
        assert!(!matches(&route(None, Some("gap"), None, None), &alert));
        assert!(!matches(&route(None, None, Some("expired"), None), &alert));
        // A category filter never matches an alert without a category.
        assert!(!matches(&route(None, None, None, Some("visitor")), &alert));
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '0.what do ya want for nothing?' | openssl dgst -sha256 -hmac Jefe
        assert_eq!(
            signature(b"Jefe", 0, b"what do ya want for nothing?"),
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(signature(b"Jefe", 1, b"x"), signature(b"Jefe", 0, b"x"));
    }

    #[test]
    fn urls_are_split_with_the_default_port_of_their_scheme() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/hook?x=1"),
            Ok(HttpUrl { tls: false, host: "127.0.0.1".into(), port: 8080, path: "/hook?x=1".into() })
        );
        assert_eq!(
            parse_http_url("http://example.org"),
            Ok(HttpUrl { tls: false, host: "example.org".into(), port: 80, path: "/".into() })
        );
        assert_eq!(
            parse_http_url("https://example.org/hook"),
            Ok(HttpUrl { tls: true, host: "example.org".into(), port: 443, path: "/hook".into() })
        );
        assert!(parse_http_url("ftp://example.org/").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
    }
}
