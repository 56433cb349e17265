//! `platform.toml` → validated [`PlatformConfig`], every error collected with
//! file, line, column and dotted key (the same `ConfigError` format as
//! `gated`'s), unknown keys reported with a suggestion. Opens nothing.

use gate_config::diag::{base_folder, describe, position, unknown_key_message};
use gate_config::{ConfigError, ConfigErrors};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{Document, Item, TableLike};

const ROOT_KEYS: &[&str] = &["postgres", "mqtt", "ingest", "signing", "route"];
const POSTGRES_KEYS: &[&str] = &["url", "pool_size"];
const MQTT_KEYS: &[&str] = &[
    "host",
    "port",
    "client_id",
    "topic_prefix",
    "keep_alive_s",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password_file",
];
const INGEST_KEYS: &[&str] = &["group", "gap_timeout_s", "batch_max", "batch_wait_ms"];
const SIGNING_KEYS: &[&str] = &["key_file", "heartbeat_s", "snapshot_chunk_people"];
/// What `[[route]] kind` may say: the alerts' kinds.
const ROUTE_KINDS: &[&str] = &["refusal", "alarm", "gap"];
const ROUTE_KEYS: &[&str] = &["name", "url", "secret_file", "ca_file", "site", "kind", "reason", "category"];

/// Every table and the keys it accepts, so a test can check that the
/// documented example shows them all.
pub const SCHEMA: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("postgres", POSTGRES_KEYS),
    ("mqtt", MQTT_KEYS),
    ("ingest", INGEST_KEYS),
    ("signing", SIGNING_KEYS),
    ("route", ROUTE_KEYS),
];

/// The default place of the file.
pub const DEFAULT_PATH: &str = "/etc/gate-platform/platform.toml";

/// The whole platform configuration.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    pub postgres: PostgresConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    /// `[signing]`: absent on a platform that only ingests.
    pub signing: Option<SigningConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq-style URL or key=value string (`postgres://user@host:5432/db`).
    pub url: String,
    pub pool_size: usize,
}

impl std::fmt::Debug for PostgresConfig {
    /// The URL may carry a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig").field("url", &"<hidden>").field("pool_size", &self.pool_size).finish()
    }
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub keep_alive: Duration,
    pub tls: Option<TlsConfig>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl MqttConfig {
    /// The broker security settings as `gated`'s uplink takes them: one
    /// implementation of TLS (rustls, ring) and credentials for both.
    pub fn broker_auth(&self) -> gate_sync::BrokerAuth {
        gate_sync::BrokerAuth {
            tls: self.tls.as_ref().map(|t| gate_sync::TlsFiles {
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
            }),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
        }
    }

    /// Options for a connection as `client_id`: the broker's address, keep
    /// alive, and the transport (TLS with the files read now) and
    /// credentials of `[mqtt]`. Callers add what their connection needs.
    pub fn options(&self, client_id: impl Into<String>) -> Result<rumqttc::MqttOptions, gate_sync::AuthError> {
        let loaded = self.broker_auth().load()?;
        let mut options = rumqttc::MqttOptions::new(client_id, &self.host, self.port);
        options.set_keep_alive(self.keep_alive).set_transport(loaded.transport);
        if let Some((user, password)) = loaded.credentials {
            options.set_credentials(user, password);
        }
        Ok(options)
    }
}

/// The TLS keys of `gated`'s `[mqtt]`; `tls = true` is implied by `ca_file`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The shared-subscription group (`$share/{group}/...`).
    pub group: String,
    /// How long a hole in a gate's `seq` may stay open before it becomes a
    /// `gap` row and an alert.
    pub gap_timeout: Duration,
    /// Most messages written in one transaction.
    pub batch_max: usize,
    /// How long the first message of a batch waits for others.
    pub batch_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub key_file: PathBuf,
    /// How often each site's signed heartbeat is sent (retained).
    pub heartbeat_s: u64,
    /// People per identity snapshot chunk.
    pub snapshot_chunk_people: usize,
}

impl PlatformConfig {
    /// People per identity snapshot chunk.
    pub fn chunk_people(&self) -> usize {
        self.signing.as_ref().map_or(1000, |s| s.snapshot_chunk_people)
    }
}

/// One `[[route]]`: alerts matching every filter set go to `url`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// A label for the fleet view; defaults to `route-N` (1-based).
    pub name: String,
    pub url: String,
    pub secret_file: PathBuf,
    /// For an https:// URL: the CA certificates (PEM) the receiver's
    /// certificate must chain to; absent, the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub site: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub category: Option<String>,
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<PlatformConfig, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        }])),
    }
}

/// Validates configuration text; `source` names the file in messages and its
/// folder is the base of relative paths.
pub fn parse(source: &Path, text: &str) -> Result<PlatformConfig, ConfigErrors> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let (line, column) = position(text, e.span().map_or(0, |s| s.start));
            return Err(ConfigErrors(vec![ConfigError {
                file: source.to_path_buf(),
                line: Some(line),
                column: Some(column),
                key: None,
                message: format!("invalid TOML: {}", e.message()),
            }]));
        }
    };
    let mut c = Checker { file: source, text, base: base_folder(source), errors: Vec::new() };
    let config = c.config(doc.as_table());
    let mut errors = c.errors;
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                errors.push(ConfigError {
                    file: source.to_path_buf(),
                    line: None,
                    column: None,
                    key: None,
                    message: "invalid configuration".into(),
                });
            }
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
}

#[derive(Clone, Copy)]
struct Section<'d> {
    path: &'d str,
    table: &'d dyn TableLike,
    at: usize,
}

impl Section<'_> {
    fn dotted(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }
    fn value_at(&self, key: &str) -> usize {
        self.table.get(key).and_then(Item::span).map_or(self.at, |s| s.start)
    }
    fn key_at(&self, key: &str) -> usize {
        self.table.key(key).and_then(|k| k.span()).map_or_else(|| self.value_at(key), |s| s.start)
    }
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn push(&mut self, at: usize, key: String, message: String) {
        let (line, column) = position(self.text, at);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key: Some(key),
            message,
        });
    }

    fn unknown_keys(&mut self, sec: Section<'_>, known: &[&str]) {
        for (name, item) in sec.table.iter() {
            if known.contains(&name) {
                continue;
            }
            self.push(sec.key_at(name), sec.dotted(name), unknown_key_message(name, item, known));
        }
    }

    /// `Ok(None)` when absent, `Err(())` when present but not a table.
    fn section<'d>(&mut self, parent: Section<'d>, name: &str, path: &'d str) -> Result<Option<Section<'d>>, ()> {
        let Some(item) = parent.table.get(name) else { return Ok(None) };
        match item.as_table_like() {
            Some(table) => Ok(Some(Section { path, table, at: item.span().map_or(parent.at, |s| s.start) })),
            None => {
                self.push(
                    parent.value_at(name),
                    path.to_owned(),
                    format!("expected a table, found {}", describe(item)),
                );
                Err(())
            }
        }
    }

    /// A string: `Ok(None)` absent, `Err(())` wrong type (recorded).
    fn string(&mut self, sec: Section<'_>, key: &str) -> Result<Option<(String, usize)>, ()> {
        let Some(item) = sec.table.get(key) else { return Ok(None) };
        let at = item.span().map_or(sec.at, |s| s.start);
        match item.as_str() {
            Some(s) => Ok(Some((s.to_owned(), at))),
            None => {
                self.push(at, sec.dotted(key), format!("expected a string, found {}", describe(item)));
                Err(())
            }
        }
    }

    /// A non-empty string without surrounding blanks.
    fn word(&mut self, sec: Section<'_>, key: &str) -> Result<Option<String>, ()> {
        match self.string(sec, key)? {
            None => Ok(None),
            Some((s, at)) if s.trim().is_empty() || s.trim() != s => {
                self.push(at, sec.dotted(key), format!("expected a non-empty string without blanks, found {s:?}"));
                Err(())
            }
            Some((s, _)) => Ok(Some(s)),
        }
    }

    /// An MQTT topic level: no `/`, `+`, `#`, not empty.
    fn topic_level(&mut self, sec: Section<'_>, key: &str) -> Result<Option<String>, ()> {
        match self.string(sec, key)? {
            None => Ok(None),
            Some((s, at)) if s.is_empty() || s.contains(['/', '+', '#']) || s.contains(char::is_whitespace) => {
                let message = format!("expected one MQTT topic level (no `/`, `+`, `#` or blanks), found {s:?}");
                self.push(at, sec.dotted(key), message);
                Err(())
            }
            Some((s, _)) => Ok(Some(s)),
        }
    }

    fn path(&mut self, sec: Section<'_>, key: &str) -> Result<Option<PathBuf>, ()> {
        match self.string(sec, key)? {
            None => Ok(None),
            Some((s, at)) if s.is_empty() => {
                self.push(at, sec.dotted(key), "expected a file path, found an empty string".into());
                Err(())
            }
            Some((s, _)) => Ok(Some(self.base.join(s))),
        }
    }

    fn int_in(&mut self, sec: Section<'_>, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ()> {
        let Some(item) = sec.table.get(key) else { return Ok(None) };
        let at = item.span().map_or(sec.at, |s| s.start);
        match item.as_integer() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => {
                self.push(
                    at,
                    sec.dotted(key),
                    format!("expected an integer from {lo} to {hi}, found {}", describe(item)),
                );
                Err(())
            }
        }
    }

    fn boolean(&mut self, sec: Section<'_>, key: &str) -> Result<Option<bool>, ()> {
        let Some(item) = sec.table.get(key) else { return Ok(None) };
        let at = item.span().map_or(sec.at, |s| s.start);
        match item.as_bool() {
            Some(b) => Ok(Some(b)),
            None => {
                self.push(at, sec.dotted(key), format!("expected a boolean (true or false), found {}", describe(item)));
                Err(())
            }
        }
    }

    fn missing(&mut self, sec: Section<'_>, key: &str) {
        let message = if sec.path.is_empty() {
            format!("missing required table `[{key}]`")
        } else {
            format!("missing required key `{key}` in `[{}]`", sec.path)
        };
        self.push(sec.at, sec.dotted(key), message);
    }

    fn config(&mut self, root: &dyn TableLike) -> Option<PlatformConfig> {
        let root = Section { path: "", table: root, at: 0 };
        self.unknown_keys(root, ROOT_KEYS);
        let postgres = self.postgres(root);
        let mqtt = self.mqtt(root);
        let ingest = self.ingest(root);
        let signing = self.signing(root);
        let routes = self.routes(root);
        Some(PlatformConfig { postgres: postgres?, mqtt: mqtt?, ingest: ingest?, signing: signing?, routes: routes? })
    }

    fn postgres(&mut self, root: Section<'_>) -> Option<PostgresConfig> {
        let Some(sec) = self.section(root, "postgres", "postgres").ok()? else {
            self.missing(root, "postgres");
            return None;
        };
        self.unknown_keys(sec, POSTGRES_KEYS);
        let url = self.string(sec, "url");
        let pool_size = self.int_in(sec, "pool_size", 1, 256);
        let url = match url.ok()? {
            Some((url, at)) => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    self.push(at, sec.dotted("url"), format!("not a PostgreSQL connection string: {e}"));
                    return None;
                }
                url
            }
            None => {
                self.missing(sec, "url");
                return None;
            }
        };
        Some(PostgresConfig { url, pool_size: pool_size.ok()?.unwrap_or(8) as usize })
    }

    fn mqtt(&mut self, root: Section<'_>) -> Option<MqttConfig> {
        let Some(sec) = self.section(root, "mqtt", "mqtt").ok()? else {
            self.missing(root, "mqtt");
            return None;
        };
        self.unknown_keys(sec, MQTT_KEYS);
        let host = self.word(sec, "host");
        let port = self.int_in(sec, "port", 1, 65535);
        let client_id = self.word(sec, "client_id");
        let prefix = self.topic_level(sec, "topic_prefix");
        let keep_alive = self.int_in(sec, "keep_alive_s", 5, 3600);
        let tls = self.boolean(sec, "tls");
        let ca_file = self.path(sec, "ca_file");
        let cert_file = self.path(sec, "cert_file");
        let key_file = self.path(sec, "key_file");
        let username = self.word(sec, "username");
        let password_file = self.path(sec, "password_file");
        let host = match host.ok()? {
            Some(h) => h,
            None => {
                self.missing(sec, "host");
                return None;
            }
        };
        let (tls, ca_file, cert_file, key_file) = (tls.ok()?, ca_file.ok()?, cert_file.ok()?, key_file.ok()?);
        if cert_file.is_some() != key_file.is_some() {
            let key = if cert_file.is_some() { "key_file" } else { "cert_file" };
            let message = "mutual TLS needs both `cert_file` and `key_file`".to_owned();
            self.push(sec.key_at(if cert_file.is_some() { "cert_file" } else { "key_file" }), sec.dotted(key), message);
            return None;
        }
        let tls_on = tls.unwrap_or(ca_file.is_some() || cert_file.is_some());
        if tls == Some(false) && (ca_file.is_some() || cert_file.is_some()) {
            let message = "`tls = false` contradicts `ca_file` / `cert_file`".to_owned();
            self.push(sec.value_at("tls"), sec.dotted("tls"), message);
            return None;
        }
        let (username, password_file) = (username.ok()?, password_file.ok()?);
        if password_file.is_some() && username.is_none() {
            self.push(sec.key_at("password_file"), sec.dotted("password_file"), "a password needs `username`".into());
            return None;
        }
        let default_port = if tls_on { 8883 } else { 1883 };
        Some(MqttConfig {
            host,
            port: port.ok()?.unwrap_or(default_port) as u16,
            client_id: client_id.ok()?.unwrap_or_else(|| "gate-platform".to_owned()),
            topic_prefix: prefix.ok()?.unwrap_or_else(|| "village".to_owned()),
            keep_alive: Duration::from_secs(keep_alive.ok()?.unwrap_or(15) as u64),
            tls: tls_on.then_some(TlsConfig { ca_file, cert_file, key_file }),
            username,
            password_file,
        })
    }

    fn ingest(&mut self, root: Section<'_>) -> Option<IngestConfig> {
        let sec = self.section(root, "ingest", "ingest").ok()?;
        let mut config = IngestConfig {
            group: "ingest".into(),
            gap_timeout: Duration::from_secs(300),
            batch_max: 500,
            batch_wait: Duration::from_millis(20),
        };
        let Some(sec) = sec else { return Some(config) };
        self.unknown_keys(sec, INGEST_KEYS);
        let group = self.topic_level(sec, "group");
        let gap = self.int_in(sec, "gap_timeout_s", 1, 7 * 86_400);
        let batch_max = self.int_in(sec, "batch_max", 1, 10_000);
        let batch_wait = self.int_in(sec, "batch_wait_ms", 0, 10_000);
        if let Some(g) = group.ok()? {
            config.group = g;
        }
        if let Some(s) = gap.ok()? {
            config.gap_timeout = Duration::from_secs(s as u64);
        }
        if let Some(n) = batch_max.ok()? {
            config.batch_max = n as usize;
        }
        if let Some(ms) = batch_wait.ok()? {
            config.batch_wait = Duration::from_millis(ms as u64);
        }
        Some(config)
    }

    fn signing(&mut self, root: Section<'_>) -> Option<Option<SigningConfig>> {
        let Some(sec) = self.section(root, "signing", "signing").ok()? else { return Some(None) };
        self.unknown_keys(sec, SIGNING_KEYS);
        let heartbeat = self.int_in(sec, "heartbeat_s", 1, 86_400);
        let chunk = self.int_in(sec, "snapshot_chunk_people", 1, 20_000);
        let (heartbeat_s, chunk) = (heartbeat.ok()?.unwrap_or(120) as u64, chunk.ok()?.unwrap_or(1000) as usize);
        match self.path(sec, "key_file").ok()? {
            Some(key_file) => Some(Some(SigningConfig { key_file, heartbeat_s, snapshot_chunk_people: chunk })),
            None => {
                self.missing(sec, "key_file");
                None
            }
        }
    }

    fn routes(&mut self, root: Section<'_>) -> Option<Vec<RouteConfig>> {
        let Some(item) = root.table.get("route") else { return Some(Vec::new()) };
        let Some(array) = item.as_array_of_tables() else {
            let message = format!("expected `[[route]]` tables, found {}", describe(item));
            self.push(root.value_at("route"), "route".into(), message);
            return None;
        };
        let mut routes = Vec::new();
        let mut ok = true;
        for (i, table) in array.iter().enumerate() {
            let path = format!("route[{}]", i + 1);
            let sec = Section { path: &path, table, at: table.span().map_or(0, |s| s.start) };
            match self.route(sec, i) {
                Some(r) => routes.push(r),
                None => ok = false,
            }
        }
        ok.then_some(routes)
    }

    fn route(&mut self, sec: Section<'_>, index: usize) -> Option<RouteConfig> {
        self.unknown_keys(sec, ROUTE_KEYS);
        let name = self.word(sec, "name");
        let url = self.string(sec, "url");
        let secret = self.path(sec, "secret_file");
        let ca_file = self.path(sec, "ca_file");
        let site = self.word(sec, "site");
        let kind = self.word(sec, "kind");
        let reason = self.word(sec, "reason");
        let category = self.word(sec, "category");
        let url = match url.ok()? {
            Some((u, at)) => {
                if let Err(why) = crate::routes::parse_http_url(&u) {
                    self.push(at, sec.dotted("url"), format!("{why}, found {u:?}"));
                    return None;
                }
                u
            }
            None => {
                self.missing(sec, "url");
                return None;
            }
        };
        let secret_file = match secret.ok()? {
            Some(p) => p,
            None => {
                self.missing(sec, "secret_file");
                return None;
            }
        };
        let kind = kind.ok()?;
        if let Some(k) = &kind
            && !ROUTE_KINDS.contains(&k.as_str())
        {
            let message = format!("expected one of {}, found {k:?}", ROUTE_KINDS.join(", "));
            self.push(sec.value_at("kind"), sec.dotted("kind"), message);
            return None;
        }
        let reason = reason.ok()?;
        if let Some(r) = &reason
            && !crate::wire::reason_names().contains(r)
        {
            let message = format!("expected a gate.v1 reason name (such as \"blocklisted\"), found {r:?}");
            self.push(sec.value_at("reason"), sec.dotted("reason"), message);
            return None;
        }
        let category = category.ok()?;
        if let Some(c) = &category
            && !["resident", "worker", "visitor"].contains(&c.as_str())
        {
            let message = format!("expected \"resident\", \"worker\" or \"visitor\", found {c:?}");
            self.push(sec.value_at("category"), sec.dotted("category"), message);
            return None;
        }
        Some(RouteConfig {
            name: name.ok()?.unwrap_or_else(|| format!("route-{}", index + 1)),
            url,
            secret_file,
            ca_file: ca_file.ok()?,
            site: site.ok()?,
            kind,
            reason,
            category,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("/etc/p/platform.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const MINIMAL: &str = "[postgres]\nurl = \"postgres://gp@127.0.0.1:5432/gate\"\n[mqtt]\nhost = \"127.0.0.1\"\n";

    #[test]
    fn minimal_file_takes_the_documented_defaults() {
        let c = parse(Path::new("/etc/p/platform.toml"), MINIMAL).expect("valid");
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.topic_prefix, "village");
        assert_eq!(c.ingest.group, "ingest");
        assert_eq!(c.ingest.gap_timeout, Duration::from_secs(300));
        assert!(c.signing.is_none() && c.routes.is_empty() && c.mqtt.tls.is_none());
    }

    #[test]
    fn every_error_is_reported_with_line_and_column() {
        let text =
            "[postgres]\nurl = 5\n[mqtt]\nhost = \"h\"\nprot = 1883\n[ingest]\ngap_timeout_s = 0\ngroup = \"a/b\"\n";
        let errs = errors(text);
        assert_eq!(
            errs,
            vec![
                "/etc/p/platform.toml:2:7: postgres.url: expected a string, found integer 5",
                "/etc/p/platform.toml:5:1: mqtt.prot: unknown key `prot` (expected one of: host, port, client_id, \
                 topic_prefix, keep_alive_s, tls, ca_file, cert_file, key_file, username, password_file); did you \
                 mean `port`?",
                "/etc/p/platform.toml:7:17: ingest.gap_timeout_s: expected an integer from 1 to 604800, found integer 0",
                "/etc/p/platform.toml:8:9: ingest.group: expected one MQTT topic level (no `/`, `+`, `#` or blanks), \
                 found \"a/b\"",
            ]
        );
    }

    #[test]
    fn missing_tables_and_bad_routes_are_named() {
        let errs = errors("[[route]]\nurl = \"ftp://x\"\nsecret_file = \"s\"\ncategory = \"alien\"\n");
        assert!(errs.iter().any(|e| e.contains("missing required table `[postgres]`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("missing required table `[mqtt]`")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains(":2:7: route[1].url: expected an http")), "{errs:?}");
        let route = |body: &str| errors(&format!("{MINIMAL}[[route]]\nsecret_file = \"s\"\n{body}"));
        let errs = route("url = \"http://h/x\"\nkind = \"gate\"\n");
        assert_eq!(
            errs,
            ["/etc/p/platform.toml:8:8: route[1].kind: expected one of refusal, alarm, gap, found \"gate\""]
        );
        let errs = route("url = \"http://h/x\"\nreason = \"blocklist\"\n");
        assert!(errs[0].contains("route[1].reason: expected a gate.v1 reason name"), "{errs:?}");
        let errs = route("url = \"https://h/x\"\nca_file = 3\n");
        assert!(errs[0].contains("route[1].ca_file"), "{errs:?}");
    }

    #[test]
    fn routes_and_relative_paths_resolve_against_the_file() {
        let text = format!(
            "{MINIMAL}[signing]\nkey_file = \"platform.key\"\n[[route]]\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret_file = \"hook.secret\"\nkind = \"gap\"\n[[route]]\nname = \"police\"\nurl = \"http://p/x\"\n\
             secret_file = \"/s\"\nreason = \"blocklisted\"\n"
        );
        let c = parse(Path::new("/etc/p/platform.toml"), &text).expect("valid");
        assert_eq!(c.signing.expect("signing").key_file, PathBuf::from("/etc/p/platform.key"));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].name, "route-1");
        assert_eq!(c.routes[0].secret_file, PathBuf::from("/etc/p/hook.secret"));
        assert_eq!(c.routes[1].reason.as_deref(), Some("blocklisted"));
        let https = format!("{MINIMAL}[[route]]\nurl = \"https://h/x\"\nsecret_file = \"s\"\nca_file = \"ca.pem\"\n");
        let c = parse(Path::new("/etc/p/platform.toml"), &https).expect("valid");
        assert_eq!(c.routes[0].ca_file, Some(PathBuf::from("/etc/p/ca.pem")));
    }

    #[test]
    fn invalid_toml_has_a_position() {
        let errs = errors("[postgres\nurl = 1\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("/etc/p/platform.toml:1:"), "{errs:?}");
    }

    #[test]
    fn the_example_file_is_valid_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/platform.example.toml");
        let text = std::fs::read_to_string(&path).expect("the example exists");
        parse(&path, &text).expect("the example is valid");
        let doc: Document<String> = Document::parse(text.clone()).expect("toml");
        for (table, keys) in SCHEMA {
            for key in *keys {
                let found = match *table {
                    "" => doc.as_table().contains_key(key),
                    "route" => doc
                        .get("route")
                        .and_then(Item::as_array_of_tables)
                        .is_some_and(|a| a.iter().any(|t| t.contains_key(key))),
                    t => {
                        doc.get(t).and_then(Item::as_table_like).is_some_and(|s| s.contains_key(key))
                        // Keys shown commented out count as documented.
                        || text.contains(&format!("# {key} = "))
                    }
                };
                assert!(found, "the example does not show `{key}` in [{table}]");
            }
        }
    }
}
