//! Reads the TOML configuration file and validates every key into a
//! [`Config`], collecting all errors (with file, line, column and dotted key)
//! instead of stopping at the first one.
//!
//! The document is parsed with `toml_edit`, which keeps byte spans, and then
//! walked by hand: each table lists the keys it knows, so an unknown or
//! misspelt key is always reported, never ignored.

use crate::MetricsConfig;
use crate::diag::{base_folder, describe, position, suggest, unknown_key_message};
use crate::{
    AlertsConfig, AntiPassback, CameraConfig, CameraSource, CategorySet, CertificateMatch, Config, ControlConfig,
    DevicesConfig, GateConfig, GateDriver, GateIoConfig, HealthConfig, IdCardConfig, IdentityConfig, MqttConfig,
    PassesConfig, PlateReaderConfig, PlatformConfig, Policy, PolicyConfig, QrScannerConfig, QrTerminator, Side,
    SiteConfig, StoreConfig, TlsConfig, UnlockMode,
};
use gate_core::{Category, HealthColour, Mode};
use gate_core::{Direction, GateId, Lane, SiteId, UtcOffset};
use gate_engine::{HealthFallback, HealthRules, HealthRulesByCategory};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml_edit::{Document, Item, TableLike, Value};

/// Serial speeds the devices accept.
const BAUD_RATES: &[i64] = &[9600, 19200, 38400, 57600, 115200];

const ROOT_KEYS: &[&str] = &[
    "site", "gate", "store", "mqtt", "identity", "devices", "policy", "passes", "alerts", "control", "metrics",
    "health", "platform",
];
const SITE_KEYS: &[&str] = &["id", "utc_offset"];
const GATE_KEYS: &[&str] = &["id", "lane", "direction", "flexible", "anti_passback", "anti_passback_s"];
const STORE_KEYS: &[&str] = &["path", "ballast_mb", "disk_low_percent", "disk_low_mb", "outbox_max_events"];
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
const IDENTITY_KEYS: &[&str] = &["hmac_key_file"];
const DEVICES_KEYS: &[&str] = &["id_card", "gate", "qr_scanner", "plate_reader", "camera"];
const CAMERA_KEYS: &[&str] = &["device", "snapshot_file", "frames_dir", "interval_ms", "side"];
const ID_CARD_KEYS: &[&str] = &["port", "baud", "poll_interval_ms", "side"];
const QR_SCANNER_KEYS: &[&str] = &["port", "baud", "terminator", "prefix", "side"];
const PLATE_READER_KEYS: &[&str] = &["port", "baud", "min_confidence", "side"];
const POLICY_KEYS: &[&str] = &["version", "normal", "sporadic", "wartime"];
const POLICY_MODE_KEYS: &[&str] =
    &["allowed_categories", "visitor_pass_required", "enforce_time_windows", "health_required_for", "health"];
const HEALTH_RULE_KEYS: &[&str] = &[
    "allowed_colours",
    "nat_required",
    "nat_window_h",
    "min_doses",
    "refuse_travel_risk",
    "max_record_age_h",
    "fallback",
    "accept_stale_max_h",
];
/// `[policy.<mode>.health]` takes the rule keys and one subtable per category.
const HEALTH_TABLE_KEYS: &[&str] = &[
    "allowed_colours",
    "nat_required",
    "nat_window_h",
    "min_doses",
    "refuse_travel_risk",
    "max_record_age_h",
    "fallback",
    "accept_stale_max_h",
    "resident",
    "worker",
    "visitor",
];
const HEALTH_KEYS: &[&str] = &["online_timeout_ms", "trust_list_file", "certificate_window_s", "certificate_match"];

/// Static section paths of the health tables, by mode.
fn health_paths(mode: Mode) -> (&'static str, [&'static str; 3]) {
    match mode {
        Mode::Normal => (
            "policy.normal.health",
            ["policy.normal.health.resident", "policy.normal.health.worker", "policy.normal.health.visitor"],
        ),
        Mode::Sporadic => (
            "policy.sporadic.health",
            ["policy.sporadic.health.resident", "policy.sporadic.health.worker", "policy.sporadic.health.visitor"],
        ),
        Mode::Wartime => (
            "policy.wartime.health",
            ["policy.wartime.health.resident", "policy.wartime.health.worker", "policy.wartime.health.visitor"],
        ),
    }
}
const PASSES_KEYS: &[&str] = &["platform_keys", "companion_window_s"];
const PLATFORM_KEYS: &[&str] = &["signing_keys", "stale_after_s", "refuse_when_stale", "clock_ahead_s"];
const ALERTS_KEYS: &[&str] = &["quiet_period_s"];
const CONTROL_KEYS: &[&str] = &["socket", "group"];
const METRICS_KEYS: &[&str] = &["listen", "allow_remote"];
const GATE_IO_KEYS: &[&str] = &[
    "driver",
    "port",
    "baud",
    "unit_id",
    "unlock_entry_coil",
    "unlock_exit_coil",
    "unlock_mode",
    "unlock_ms",
    "passage_entry_input",
    "passage_exit_input",
    "poll_interval_ms",
    "fire_alarm_input",
    "fire_alarm_normally_closed",
    "io_loss_is_fire_alarm",
    "fire_alarm_io_loss_ms",
    "beam_input",
    "intrusion_input",
    "green_lamp_coil",
    "red_lamp_coil",
    "buzzer_coil",
    "indicator_ms",
    "pass_timeout_ms",
    "held_open_ms",
];

/// Every table and the keys it accepts ("" is the document root). The walk
/// below uses the per-table constants; this list lets tests check that the
/// example file documents every key.
#[cfg(test)]
pub(crate) const SCHEMA: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("site", SITE_KEYS),
    ("gate", GATE_KEYS),
    ("store", STORE_KEYS),
    ("mqtt", MQTT_KEYS),
    ("identity", IDENTITY_KEYS),
    ("devices", DEVICES_KEYS),
    ("devices.id_card", ID_CARD_KEYS),
    ("devices.qr_scanner", QR_SCANNER_KEYS),
    ("devices.plate_reader", PLATE_READER_KEYS),
    ("devices.camera", &["snapshot_file", "interval_ms", "side"]),
    ("policy", POLICY_KEYS),
    // The example shows health rules for wartime only; the other modes take
    // the same table.
    ("policy.normal", &["allowed_categories", "visitor_pass_required", "enforce_time_windows", "health_required_for"]),
    (
        "policy.sporadic",
        &["allowed_categories", "visitor_pass_required", "enforce_time_windows", "health_required_for"],
    ),
    ("policy.wartime", POLICY_MODE_KEYS),
    ("policy.wartime.health", HEALTH_RULE_KEYS),
    ("health", HEALTH_KEYS),
    ("passes", PASSES_KEYS),
    ("platform", PLATFORM_KEYS),
    ("alerts", ALERTS_KEYS),
    ("control", CONTROL_KEYS),
    ("metrics", METRICS_KEYS),
    ("devices.gate", GATE_IO_KEYS),
];

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, absent when the file could not be read at all.
    pub line: Option<usize>,
    /// 1-based column, counted in characters.
    pub column: Option<usize>,
    /// Dotted key, e.g. `devices.gate.baud`.
    pub key: Option<String>,
    /// What was found and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: KEY: MESSAGE`, leaving out the parts that are missing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a configuration file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `check-config` of `gated` and `gatectl`, one wording for both: loads
/// `path` and prints `PATH: ok` on stdout, or every error and their count on
/// stderr. True when the file is good.
pub fn check_and_report(path: &Path) -> bool {
    match load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            true
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            false
        }
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read(path) {
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => parse(path, text),
            Err(e) => Err(ConfigErrors(vec![not_utf8(path, &bytes, &e)])),
        },
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        }])),
    }
}

/// Validates configuration text. `source` names the file in messages, and
/// its folder is the base of relative paths. Opens nothing.
pub fn parse(source: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let doc = match Document::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let (line, column) = position(text, e.span().map_or(0, |span| span.start));
            return Err(ConfigErrors(vec![ConfigError {
                file: source.to_path_buf(),
                line: Some(line),
                column: Some(column),
                key: None,
                message: format!("invalid TOML: {}", e.message()),
            }]));
        }
    };
    let mut checker = Checker { file: source, text, base: base_folder(source), errors: Vec::new() };
    let config = checker.config(doc.as_table());
    let mut errors = checker.errors;
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            if errors.is_empty() {
                // Unreachable by construction: every `None` above pushed an error.
                errors.push(ConfigError {
                    file: source.to_path_buf(),
                    line: None,
                    column: None,
                    key: None,
                    message: "invalid configuration".to_owned(),
                });
            }
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(errors))
        }
    }
}

/// A file that is not UTF-8 (TOML must be), pinned to its first bad byte so
/// a technician can find a stray Latin-1 or GBK character.
fn not_utf8(path: &Path, bytes: &[u8], e: &std::str::Utf8Error) -> ConfigError {
    let good = e.valid_up_to();
    // The prefix up to `good` is valid UTF-8 by definition.
    let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
    let (line, column) = position(prefix, good);
    let bad: Vec<String> = bytes[good..].iter().take(e.error_len().unwrap_or(1)).map(|b| format!("{b:#04x}")).collect();
    ConfigError {
        file: path.to_path_buf(),
        line: Some(line),
        column: Some(column),
        key: None,
        message: format!(
            "the file is not UTF-8: byte {} cannot start or continue a character here; save it as UTF-8",
            bad.join(" ")
        ),
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn alternatives(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// The outcome of looking up one key.
enum Got<T> {
    /// Not in the file.
    Absent,
    /// In the file but wrong; the error is already recorded.
    Invalid,
    Found(T),
}

impl<T> Got<T> {
    fn map_found<U>(self, f: impl FnOnce(T) -> U) -> Got<U> {
        match self {
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
            Got::Found(v) => Got::Found(f(v)),
        }
    }

    /// The value, or `default` when the key is absent.
    fn or(self, default: T) -> Option<T> {
        match self {
            Got::Absent => Some(default),
            Got::Invalid => None,
            Got::Found(v) => Some(v),
        }
    }
}

/// A table being validated.
#[derive(Clone, Copy)]
struct Section<'d> {
    /// Dotted path, "" for the root.
    path: &'static str,
    table: &'d dyn TableLike,
    /// Byte offset of its header (0 when the table is absent).
    at: usize,
}

impl Section<'_> {
    fn dotted(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// Where `key`'s value starts, or the table's header.
    fn value_at(&self, key: &str) -> usize {
        self.table.get(key).and_then(Item::span).map_or(self.at, |span| span.start)
    }

    /// Where `key`'s name starts, or its value, or the table's header.
    fn key_at(&self, key: &str) -> usize {
        self.table.key(key).and_then(|k| k.span()).map_or_else(|| self.value_at(key), |span| span.start)
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

    fn section<'d>(&mut self, parent: Section<'d>, name: &str, path: &'static str) -> Got<Section<'d>> {
        let Some(item) = parent.table.get(name) else {
            return Got::Absent;
        };
        match item.as_table_like() {
            Some(table) => Got::Found(Section { path, table, at: item.span().map_or(parent.at, |span| span.start) }),
            None => {
                let message = format!("expected a table, found {}", describe(item));
                self.push(parent.value_at(name), path.to_owned(), message);
                Got::Invalid
            }
        }
    }

    fn required_section<'d>(&mut self, root: Section<'d>, name: &'static str, must_set: &str) -> Option<Section<'d>> {
        match self.section(root, name, name) {
            Got::Found(sec) => Some(sec),
            Got::Invalid => None,
            Got::Absent => {
                self.push(0, name.to_owned(), format!("missing required table `[{name}]` (it must set {must_set})"));
                None
            }
        }
    }

    fn required<T>(&mut self, sec: Section<'_>, key: &str, got: Got<T>) -> Option<T> {
        match got {
            Got::Found(v) => Some(v),
            Got::Invalid => None,
            Got::Absent => {
                let message = format!("missing required key `{key}` in `[{}]`", sec.path);
                self.push(sec.at, sec.dotted(key), message);
                None
            }
        }
    }

    /// A value of one TOML type; anything else is a type error.
    fn value<'d, T>(
        &mut self,
        sec: Section<'d>,
        key: &str,
        expected: &str,
        cast: impl Fn(&'d Value) -> Option<T>,
    ) -> Got<(T, usize)> {
        let Some(item) = sec.table.get(key) else {
            return Got::Absent;
        };
        let at = item.span().map_or(sec.at, |span| span.start);
        if let Some(v) = item.as_value().and_then(cast) {
            return Got::Found((v, at));
        }
        self.push(at, sec.dotted(key), format!("expected {expected}, found {}", describe(item)));
        Got::Invalid
    }

    fn string<'d>(&mut self, sec: Section<'d>, key: &str) -> Got<(&'d str, usize)> {
        self.value(sec, key, "a string", Value::as_str)
    }

    fn boolean(&mut self, sec: Section<'_>, key: &str) -> Got<bool> {
        match self.value(sec, key, "a boolean (true or false)", Value::as_bool) {
            Got::Found((b, _)) => Got::Found(b),
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// An integer within `range`, converted to `T`.
    fn int_in<T: TryFrom<i64>>(&mut self, sec: Section<'_>, key: &str, range: RangeInclusive<i64>) -> Got<T> {
        let expected = format!("an integer from {} to {}", range.start(), range.end());
        match self.value(sec, key, &expected, Value::as_integer) {
            Got::Found((v, at)) => {
                match T::try_from(v) {
                    Ok(t) if range.contains(&v) => return Got::Found(t),
                    _ => {}
                }
                self.push(at, sec.dotted(key), format!("expected {expected}, found {v}"));
                Got::Invalid
            }
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    fn baud(&mut self, sec: Section<'_>, key: &str) -> Got<u32> {
        let listed: Vec<String> = BAUD_RATES.iter().map(i64::to_string).collect();
        let expected = format!("one of {}", listed.join(", "));
        match self.value(sec, key, &expected, Value::as_integer) {
            Got::Found((v, at)) => match u32::try_from(v) {
                Ok(baud) if BAUD_RATES.contains(&v) => Got::Found(baud),
                _ => {
                    self.push(at, sec.dotted(key), format!("expected {expected}, found {v}"));
                    Got::Invalid
                }
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// One of a fixed set of strings.
    fn choice<T: Copy>(&mut self, sec: Section<'_>, key: &str, options: &[(&str, T)]) -> Got<T> {
        let names: Vec<&str> = options.iter().map(|&(name, _)| name).collect();
        let expected = alternatives(&names);
        match self.value(sec, key, &expected, Value::as_str) {
            Got::Found((s, at)) => match options.iter().find(|&&(name, _)| name == s) {
                Some(&(_, t)) => Got::Found(t),
                None => {
                    let mut message = format!("expected {expected}, found {s:?}");
                    if let Some(close) = suggest(s, &names) {
                        message.push_str(&format!("; did you mean {close:?}?"));
                    }
                    self.push(at, sec.dotted(key), message);
                    Got::Invalid
                }
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// A string turned into a domain type by `parse`.
    fn parsed<T, E: fmt::Display>(
        &mut self,
        sec: Section<'_>,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Got<T> {
        match self.string(sec, key) {
            Got::Found((s, at)) => match parse(s) {
                Ok(t) => Got::Found(t),
                Err(e) => {
                    self.push(at, sec.dotted(key), format!("invalid {what} {s:?}: {e}"));
                    Got::Invalid
                }
            },
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    /// A file or device path; relative ones are resolved against the
    /// config file's folder.
    fn path(&mut self, sec: Section<'_>, key: &str) -> Got<PathBuf> {
        match self.string(sec, key) {
            Got::Found((s, at)) => {
                if s.is_empty() || s.contains('\0') {
                    self.push(at, sec.dotted(key), format!("expected a non-empty path, found {s:?}"));
                    return Got::Invalid;
                }
                let raw = Path::new(s);
                if raw.is_absolute() {
                    return Got::Found(raw.to_path_buf());
                }
                let mut resolved = self.base.clone();
                for part in raw.components().filter(|c| *c != Component::CurDir) {
                    resolved.push(part);
                }
                Got::Found(resolved)
            }
            Got::Absent => Got::Absent,
            Got::Invalid => Got::Invalid,
        }
    }

    fn config(&mut self, root_table: &toml_edit::Table) -> Option<Config> {
        let root = Section { path: "", table: root_table, at: 0 };
        self.unknown_keys(root, ROOT_KEYS);

        let site = self.required_section(root, "site", "`id`").and_then(|s| self.site(s));
        let gate = self.required_section(root, "gate", "`id`").and_then(|s| self.gate(s));
        let store = self.required_section(root, "store", "`path`").and_then(|s| self.store(s));
        let identity = self.required_section(root, "identity", "`hmac_key_file`").and_then(|s| self.identity(s));
        let empty = toml_edit::Table::new();
        let mqtt = match self.section(root, "mqtt", "mqtt") {
            Got::Found(s) => self.mqtt(s, site.as_ref(), gate.as_ref()),
            Got::Absent => self.mqtt(Section { path: "mqtt", table: &empty, at: 0 }, site.as_ref(), gate.as_ref()),
            Got::Invalid => None,
        };
        let devices = match self.section(root, "devices", "devices") {
            Got::Found(s) => self.devices(s),
            Got::Absent => Some(DevicesConfig::default()),
            Got::Invalid => None,
        };

        let policy = match self.section(root, "policy", "policy") {
            Got::Found(s) => self.policy(s),
            Got::Absent => self.policy(Section { path: "policy", table: &empty, at: 0 }),
            Got::Invalid => None,
        };
        let passes = match self.section(root, "passes", "passes") {
            Got::Found(s) => self.passes(s),
            Got::Absent => self.passes(Section { path: "passes", table: &empty, at: 0 }),
            Got::Invalid => None,
        };

        let alerts = match self.section(root, "alerts", "alerts") {
            Got::Found(s) => self.alerts(s),
            Got::Absent => self.alerts(Section { path: "alerts", table: &empty, at: 0 }),
            Got::Invalid => None,
        };

        let control = match self.section(root, "control", "control") {
            Got::Found(s) => self.control(s, store.as_ref()),
            Got::Absent => self.control(Section { path: "control", table: &empty, at: 0 }, store.as_ref()),
            Got::Invalid => None,
        };
        let metrics = match self.section(root, "metrics", "metrics") {
            Got::Found(s) => self.metrics(s),
            Got::Absent => Some(MetricsConfig::default()),
            Got::Invalid => None,
        };

        let platform = match self.section(root, "platform", "platform") {
            Got::Found(s) => self.platform(s),
            Got::Absent => self.platform(Section { path: "platform", table: &empty, at: 0 }),
            Got::Invalid => None,
        };

        let health = match self.section(root, "health", "health") {
            Got::Found(s) => self.health(s),
            Got::Absent => self.health(Section { path: "health", table: &empty, at: 0 }),
            Got::Invalid => None,
        };

        Some(Config {
            health: health?,
            control: control?,
            metrics: metrics?,
            alerts: alerts?,
            policy: policy?,
            passes: passes?,
            platform: platform?,
            source: self.file.to_path_buf(),
            site: site?,
            gate: gate?,
            store: store?,
            mqtt: mqtt?,
            identity: identity?,
            devices: devices?,
        })
    }

    fn site(&mut self, s: Section<'_>) -> Option<SiteConfig> {
        self.unknown_keys(s, SITE_KEYS);
        let id = self.parsed(s, "id", "site id", |raw| SiteId::try_new(raw));
        let id = self.required(s, "id", id);
        let utc_offset = self.parsed(s, "utc_offset", "UTC offset", UtcOffset::parse).or(UtcOffset::CHINA);
        Some(SiteConfig { id: id?, utc_offset: utc_offset? })
    }

    fn gate(&mut self, s: Section<'_>) -> Option<GateConfig> {
        self.unknown_keys(s, GATE_KEYS);
        let id = self.parsed(s, "id", "gate id", |raw| GateId::try_new(raw));
        let id = self.required(s, "id", id);
        let lane = self
            .choice(s, "lane", &[("pedestrian", Lane::Pedestrian), ("vehicle", Lane::Vehicle)])
            .or(Lane::Pedestrian);
        let direction = self
            .choice(
                s,
                "direction",
                &[("entry", Direction::Entry), ("exit", Direction::Exit), ("both", Direction::Both)],
            )
            .or(Direction::Entry);
        let flexible = self.boolean(s, "flexible").or(false);
        #[derive(Clone, Copy)]
        enum Apb {
            Off,
            Paired,
            Timed,
        }
        let apb = self
            .choice(s, "anti_passback", &[("off", Apb::Off), ("paired", Apb::Paired), ("timed", Apb::Timed)])
            .or(Apb::Off);
        let apb_s = self.int_in::<i64>(s, "anti_passback_s", 1..=86_400).or(30);
        let anti_passback = match (apb, apb_s) {
            (Some(Apb::Off), _) => Some(AntiPassback::Off),
            (Some(Apb::Paired), _) => Some(AntiPassback::Paired),
            (Some(Apb::Timed), Some(secs)) => Some(AntiPassback::Timed { window_ms: secs * 1000 }),
            _ => None,
        };
        Some(GateConfig {
            id: id?,
            lane: lane?,
            direction: direction?,
            flexible: flexible?,
            anti_passback: anti_passback?,
        })
    }

    fn store(&mut self, s: Section<'_>) -> Option<StoreConfig> {
        self.unknown_keys(s, STORE_KEYS);
        let path = self.path(s, "path");
        let ballast_mb = self.int_in::<u64>(s, "ballast_mb", 0..=65_536).or(64);
        let disk_low_percent = self.int_in::<u8>(s, "disk_low_percent", 0..=99).or(10);
        let disk_low_mb = self.int_in::<u64>(s, "disk_low_mb", 1..=16_777_216).or(2048);
        let outbox_max_events = self.int_in::<u64>(s, "outbox_max_events", 1..=i64::MAX).or(10_000_000);
        Some(StoreConfig {
            path: self.required(s, "path", path)?,
            ballast_mb: ballast_mb?,
            disk_low_percent: disk_low_percent?,
            disk_low_mb: disk_low_mb?,
            outbox_max_events: outbox_max_events?,
        })
    }

    fn identity(&mut self, s: Section<'_>) -> Option<IdentityConfig> {
        self.unknown_keys(s, IDENTITY_KEYS);
        let file = self.path(s, "hmac_key_file");
        Some(IdentityConfig { hmac_key_file: self.required(s, "hmac_key_file", file)? })
    }

    fn mqtt(&mut self, s: Section<'_>, site: Option<&SiteConfig>, gate: Option<&GateConfig>) -> Option<MqttConfig> {
        self.unknown_keys(s, MQTT_KEYS);
        let host = match self.string(s, "host") {
            Got::Found((h, at)) => {
                if h.is_empty() || h.chars().any(char::is_whitespace) {
                    self.push(at, s.dotted("host"), format!("expected a host name or IP address, found {h:?}"));
                    None
                } else {
                    Some(h.to_owned())
                }
            }
            Got::Absent => Some("127.0.0.1".to_owned()),
            Got::Invalid => None,
        };
        let tls = self.tls(s);
        let default_port = if matches!(tls, Some(Some(_))) { 8883u16 } else { 1883 };
        let port = self.int_in(s, "port", 1..=65535).or(default_port);
        let username = match self.string(s, "username") {
            Got::Found((u, at)) => {
                if u.is_empty() || u.chars().any(char::is_control) {
                    self.push(at, s.dotted("username"), format!("expected a user name, found {u:?}"));
                    None
                } else {
                    Some(Some(u.to_owned()))
                }
            }
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let password_file = match self.path(s, "password_file") {
            Got::Found(_) if matches!(username, Some(None)) => {
                self.push(s.key_at("password_file"), s.dotted("password_file"), "a password needs `username`".into());
                None
            }
            Got::Found(p) => Some(Some(p)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let client_id = match self.string(s, "client_id") {
            Got::Found((id, at)) => {
                let n = id.chars().count();
                if (1..=128).contains(&n) {
                    Some(id.to_owned())
                } else {
                    let message = format!("expected a client id of 1 to 128 characters, found {n} characters");
                    self.push(at, s.dotted("client_id"), message);
                    None
                }
            }
            Got::Absent => match (site, gate) {
                (Some(site), Some(gate)) => {
                    let derived = format!("gated-{}-{}", site.id, gate.id);
                    let n = derived.chars().count();
                    if n <= 128 {
                        Some(derived)
                    } else {
                        let message = format!(
                            "the default client id `gated-{{site}}-{{gate}}` would be {n} characters, \
                             at most 128 are allowed; set a shorter `client_id` in `[mqtt]`"
                        );
                        self.push(s.at, s.dotted("client_id"), message);
                        None
                    }
                }
                _ => None,
            },
            Got::Invalid => None,
        };
        let topic_prefix = match self.string(s, "topic_prefix") {
            Got::Found((p, at)) => {
                let problem = if p.is_empty() {
                    Some("a non-empty topic prefix")
                } else if p.contains(['+', '#']) {
                    Some("a topic prefix without the MQTT wildcards '+' and '#'")
                } else if p.starts_with('/') || p.ends_with('/') {
                    Some("a topic prefix without a leading or trailing '/'")
                } else {
                    None
                };
                match problem {
                    Some(expected) => {
                        self.push(at, s.dotted("topic_prefix"), format!("expected {expected}, found {p:?}"));
                        None
                    }
                    None => Some(p.to_owned()),
                }
            }
            Got::Absent => Some("village".to_owned()),
            Got::Invalid => None,
        };
        let keep_alive = self.int_in(s, "keep_alive_s", 5..=3600).or(30u64);
        Some(MqttConfig {
            host: host?,
            port: port?,
            client_id: client_id?,
            topic_prefix: topic_prefix?,
            keep_alive: Duration::from_secs(keep_alive?),
            tls: tls?,
            username: username?,
            password_file: password_file?,
        })
    }

    /// `tls`, `ca_file`, `cert_file`, `key_file`: `Some(None)` for a plain
    /// connection, `None` after an error.
    fn tls(&mut self, s: Section<'_>) -> Option<Option<TlsConfig>> {
        let tls = self.boolean(s, "tls");
        let ca_file = self.path(s, "ca_file");
        let cert_file = self.path(s, "cert_file");
        let key_file = self.path(s, "key_file");
        let opt = |got: Got<PathBuf>| match got {
            Got::Found(p) => Some(Some(p)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let tls = match tls {
            Got::Found(b) => Some(Some(b)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let (tls, ca_file, cert_file, key_file) = (tls?, opt(ca_file)?, opt(cert_file)?, opt(key_file)?);
        if cert_file.is_some() != key_file.is_some() {
            let (present, missing) =
                if cert_file.is_some() { ("cert_file", "key_file") } else { ("key_file", "cert_file") };
            let message = format!("a client certificate needs both `cert_file` and `key_file`; `{missing}` is missing");
            self.push(s.key_at(present), s.dotted(present), message);
            return None;
        }
        let implied = ca_file.is_some() || cert_file.is_some();
        if tls == Some(false) && implied {
            let message = "`tls = false` contradicts `ca_file` / `cert_file`".to_owned();
            self.push(s.value_at("tls"), s.dotted("tls"), message);
            return None;
        }
        Some(tls.unwrap_or(implied).then_some(TlsConfig { ca_file, cert_file, key_file }))
    }

    fn devices(&mut self, d: Section<'_>) -> Option<DevicesConfig> {
        self.unknown_keys(d, DEVICES_KEYS);
        let id_card = match self.section(d, "id_card", "devices.id_card") {
            Got::Found(s) => self.id_card(s).map(Some),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let gate_section = self.section(d, "gate", "devices.gate");
        let gate = match gate_section {
            Got::Found(s) => self.gate_io(s).map(Some),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        // The ID card reader speaks its own protocol: it cannot share a
        // serial port with the gate controller.
        match (&id_card, &gate, gate_section) {
            (Some(Some(card)), Some(Some(io)), Got::Found(s)) if card.port == io.port => {
                let message = format!(
                    "expected a serial port other than the ID card reader's, found {} (also `devices.id_card.port`)",
                    io.port.display()
                );
                self.push(s.value_at("port"), s.dotted("port"), message);
                return None;
            }
            _ => {}
        }
        let qr_scanner = match self.section(d, "qr_scanner", "devices.qr_scanner") {
            Got::Found(s) => self.qr_scanner(s).map(Some),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let plate_reader = match self.section(d, "plate_reader", "devices.plate_reader") {
            Got::Found(s) => self.plate_reader(s).map(Some),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let camera = match self.section(d, "camera", "devices.camera") {
            Got::Found(s) => self.camera(s).map(Some),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        Some(DevicesConfig {
            id_card: id_card?,
            gate: gate?,
            qr_scanner: qr_scanner?,
            plate_reader: plate_reader?,
            camera: camera?,
        })
    }

    fn id_card(&mut self, s: Section<'_>) -> Option<IdCardConfig> {
        self.unknown_keys(s, ID_CARD_KEYS);
        let port = self.path(s, "port");
        let port = self.required(s, "port", port);
        let baud = self.baud(s, "baud").or(115_200);
        let poll = self.int_in(s, "poll_interval_ms", 50..=10_000).or(300u64);
        let side = self.side(s);
        Some(IdCardConfig { port: port?, baud: baud?, poll_interval: Duration::from_millis(poll?), side: side? })
    }

    fn side(&mut self, s: Section<'_>) -> Option<Option<Side>> {
        match self.choice(s, "side", &[("entry", Side::Entry), ("exit", Side::Exit)]) {
            Got::Found(side) => Some(Some(side)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        }
    }

    fn qr_scanner(&mut self, s: Section<'_>) -> Option<QrScannerConfig> {
        self.unknown_keys(s, QR_SCANNER_KEYS);
        let port = self.path(s, "port");
        let port = self.required(s, "port", port);
        let baud = self.baud(s, "baud").or(9600);
        let terminator = self
            .choice(
                s,
                "terminator",
                &[
                    ("cr", QrTerminator::Cr),
                    ("lf", QrTerminator::Lf),
                    ("crlf", QrTerminator::CrLf),
                    ("tab", QrTerminator::Tab),
                    ("none", QrTerminator::None),
                ],
            )
            .or(QrTerminator::Cr);
        let prefix = match self.string(s, "prefix") {
            Got::Found((p, at)) => {
                if p.is_empty() || p.chars().count() > 16 {
                    self.push(at, s.dotted("prefix"), format!("expected 1 to 16 characters, found {p:?}"));
                    None
                } else {
                    Some(Some(p.to_owned()))
                }
            }
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let side = self.side(s);
        Some(QrScannerConfig { port: port?, baud: baud?, terminator: terminator?, prefix: prefix?, side: side? })
    }

    fn camera(&mut self, s: Section<'_>) -> Option<CameraConfig> {
        self.unknown_keys(s, CAMERA_KEYS);
        let device = self.int_in::<u32>(s, "device", 0..=63);
        let snapshot = self.path(s, "snapshot_file");
        let folder = self.path(s, "frames_dir");
        let interval = self.int_in::<u64>(s, "interval_ms", 20..=5_000).or(100);
        let side = self.side(s);
        let mut sources = Vec::new();
        let mut invalid = false;
        for (got, make) in [
            (device.map_found(CameraSource::V4l2), "device"),
            (snapshot.map_found(CameraSource::SnapshotFile), "snapshot_file"),
            (folder.map_found(CameraSource::FramesDir), "frames_dir"),
        ] {
            match got {
                Got::Found(source) => sources.push((source, make)),
                Got::Invalid => invalid = true,
                Got::Absent => {}
            }
        }
        if invalid {
            return None;
        }
        let source = match sources.len() {
            1 => sources.remove(0).0,
            0 => {
                let message = "expected one of `device`, `snapshot_file` or `frames_dir`".to_owned();
                self.push(s.at, s.path.to_owned(), message);
                return None;
            }
            _ => {
                let names: Vec<&str> = sources.iter().map(|(_, k)| *k).collect();
                self.push(
                    s.at,
                    s.path.to_owned(),
                    format!("expected only one camera source, found {}", names.join(", ")),
                );
                return None;
            }
        };
        Some(CameraConfig { source, interval: Duration::from_millis(interval?), side: side? })
    }

    fn plate_reader(&mut self, s: Section<'_>) -> Option<PlateReaderConfig> {
        self.unknown_keys(s, PLATE_READER_KEYS);
        let port = self.path(s, "port");
        let port = self.required(s, "port", port);
        let baud = self.baud(s, "baud").or(9600);
        let min_confidence = match self.value(s, "min_confidence", "a number from 0.0 to 1.0", |v| {
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        }) {
            Got::Found((c, at)) => {
                if (0.0..=1.0).contains(&c) {
                    Some(c as f32)
                } else {
                    self.push(at, s.dotted("min_confidence"), format!("expected a number from 0.0 to 1.0, found {c}"));
                    None
                }
            }
            Got::Absent => Some(0.8),
            Got::Invalid => None,
        };
        let side = self.side(s);
        Some(PlateReaderConfig { port: port?, baud: baud?, min_confidence: min_confidence?, side: side? })
    }

    fn string_list(&mut self, sec: Section<'_>, key: &str) -> Got<Vec<(String, usize)>> {
        let Some(item) = sec.table.get(key) else { return Got::Absent };
        let at = item.span().map_or(sec.at, |span| span.start);
        let Some(array) = item.as_array() else {
            self.push(at, sec.dotted(key), format!("expected an array of strings, found {}", describe(item)));
            return Got::Invalid;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for v in array.iter() {
            let vat = v.span().map_or(at, |span| span.start);
            match v.as_str() {
                Some(s) => out.push((s.to_owned(), vat)),
                None => {
                    ok = false;
                    self.push(vat, sec.dotted(key), "expected a string in the array".to_owned());
                }
            }
        }
        if ok { Got::Found(out) } else { Got::Invalid }
    }

    fn categories(&mut self, sec: Section<'_>, key: &str, default: CategorySet) -> Option<CategorySet> {
        match self.string_list(sec, key) {
            Got::Found(list) => {
                let mut cats = Vec::new();
                let mut ok = true;
                for (name, at) in list {
                    match Category::parse(&name) {
                        Some(c) => cats.push(c),
                        None => {
                            ok = false;
                            self.push(
                                at,
                                sec.dotted(key),
                                format!("expected \"resident\", \"worker\" or \"visitor\", found {name:?}"),
                            );
                        }
                    }
                }
                ok.then(|| CategorySet::of(&cats))
            }
            Got::Absent => Some(default),
            Got::Invalid => None,
        }
    }

    fn policy(&mut self, s: Section<'_>) -> Option<PolicyConfig> {
        self.unknown_keys(s, POLICY_KEYS);
        let version = match self.string(s, "version") {
            Got::Found((v, at)) => {
                if v.is_empty() || v.chars().count() > 64 {
                    self.push(at, s.dotted("version"), format!("expected 1 to 64 characters, found {v:?}"));
                    None
                } else {
                    Some(Some(v.to_owned()))
                }
            }
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let empty = toml_edit::Table::new();
        let mode_policy = |this: &mut Self, name: &'static str, path: &'static str, mode: Mode| {
            let sec = match this.section(s, name, path) {
                Got::Found(sec) => sec,
                Got::Absent => Section { path, table: &empty, at: s.at },
                Got::Invalid => return None,
            };
            this.unknown_keys(sec, POLICY_MODE_KEYS);
            let d = Policy::default_for(mode);
            let allowed_categories = this.categories(sec, "allowed_categories", d.allowed_categories);
            let visitor_pass_required = this.boolean(sec, "visitor_pass_required").or(d.visitor_pass_required);
            let enforce_time_windows = this.boolean(sec, "enforce_time_windows").or(d.enforce_time_windows);
            let health_required_for = this.categories(sec, "health_required_for", d.health_required_for);
            let health_rules = this.health_rules(sec, mode, &d.health_rules);
            Some(Policy {
                allowed_categories: allowed_categories?,
                visitor_pass_required: visitor_pass_required?,
                enforce_time_windows: enforce_time_windows?,
                health_required_for: health_required_for?,
                health_rules: health_rules?,
            })
        };
        let normal = mode_policy(self, "normal", "policy.normal", Mode::Normal);
        let sporadic = mode_policy(self, "sporadic", "policy.sporadic", Mode::Sporadic);
        let wartime = mode_policy(self, "wartime", "policy.wartime", Mode::Wartime);
        let (normal, sporadic, wartime) = (normal?, sporadic?, wartime?);
        let version = version?.unwrap_or_else(|| {
            // Stable across builds and machines: FNV-1a over a canonical text.
            let text = format!("{normal:?}|{sporadic:?}|{wartime:?}");
            let hash =
                text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
            format!("auto-{:08x}", hash >> 32)
        });
        Some(PolicyConfig { version, normal, sporadic, wartime })
    }

    /// `[policy.<mode>.health]`: rules for every category, overridden per
    /// category by its subtable.
    fn health_rules(
        &mut self,
        mode_sec: Section<'_>,
        mode: Mode,
        defaults: &HealthRulesByCategory,
    ) -> Option<HealthRulesByCategory> {
        let (path, category_paths) = health_paths(mode);
        let sec = match self.section(mode_sec, "health", path) {
            Got::Found(sec) => sec,
            Got::Absent => return Some(defaults.clone()),
            Got::Invalid => return None,
        };
        self.unknown_keys(sec, HEALTH_TABLE_KEYS);
        let mut out = defaults.clone();
        let mut ok = true;
        // The mode's table applies to every category (the shipped defaults
        // are the same for all three), each subtable on top of it.
        let base = self.rule_keys(sec, &defaults.resident);
        for (category, category_path) in Category::ALL.into_iter().zip(category_paths) {
            let rules = match (&base, self.section(sec, category.as_str(), category_path)) {
                (Some(base), Got::Found(sub)) => {
                    self.unknown_keys(sub, HEALTH_RULE_KEYS);
                    self.rule_keys(sub, base)
                }
                (base, Got::Absent) => base.clone(),
                (_, Got::Invalid) | (None, _) => None,
            };
            match (rules, category) {
                (Some(r), Category::Resident) => out.resident = r,
                (Some(r), Category::Worker) => out.worker = r,
                (Some(r), Category::Visitor) => out.visitor = r,
                (None, _) => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule_keys(&mut self, sec: Section<'_>, base: &HealthRules) -> Option<HealthRules> {
        let allowed_colours = match self.string_list(sec, "allowed_colours") {
            Got::Found(list) => {
                let mut colours = Vec::new();
                let mut ok = true;
                for (name, at) in list {
                    match HealthColour::parse(&name) {
                        Some(c) => colours.push(c),
                        None => {
                            ok = false;
                            self.push(
                                at,
                                sec.dotted("allowed_colours"),
                                format!("expected \"green\", \"yellow\", \"red\" or \"unassessed\", found {name:?}"),
                            );
                        }
                    }
                }
                ok.then_some(colours)
            }
            Got::Absent => Some(base.allowed_colours.clone()),
            Got::Invalid => None,
        };
        let nat_required = self.boolean(sec, "nat_required").or(base.nat_required);
        let nat_window_h = self.int_in::<u32>(sec, "nat_window_h", 1..=720).or(base.nat_window_h);
        let min_doses = self.int_in::<u32>(sec, "min_doses", 0..=10).or(base.min_doses);
        let refuse_travel_risk = self.boolean(sec, "refuse_travel_risk").or(base.refuse_travel_risk);
        let max_record_age_h = self.int_in::<u32>(sec, "max_record_age_h", 1..=720).or(base.max_record_age_h);
        #[derive(Clone, Copy)]
        enum Fallback {
            Refuse,
            AcceptStale,
        }
        let base_fallback = match base.fallback {
            HealthFallback::Refuse => (Fallback::Refuse, 24),
            HealthFallback::AcceptStale { max_age_h } => (Fallback::AcceptStale, max_age_h),
        };
        let fallback = self
            .choice(sec, "fallback", &[("refuse", Fallback::Refuse), ("accept_stale", Fallback::AcceptStale)])
            .or(base_fallback.0);
        let stale_h = self.int_in::<u32>(sec, "accept_stale_max_h", 1..=720).or(base_fallback.1);
        let fallback = match (fallback?, stale_h?) {
            (Fallback::Refuse, _) => HealthFallback::Refuse,
            (Fallback::AcceptStale, max_age_h) => HealthFallback::AcceptStale { max_age_h },
        };
        Some(HealthRules {
            allowed_colours: allowed_colours?,
            nat_required: nat_required?,
            nat_window_h: nat_window_h?,
            min_doses: min_doses?,
            refuse_travel_risk: refuse_travel_risk?,
            max_record_age_h: max_record_age_h?,
            fallback,
        })
    }

    fn health(&mut self, s: Section<'_>) -> Option<HealthConfig> {
        self.unknown_keys(s, HEALTH_KEYS);
        let timeout = self.int_in::<u64>(s, "online_timeout_ms", 50..=30_000).or(800);
        let trust_list_file = match self.path(s, "trust_list_file") {
            Got::Found(p) => Some(Some(p)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let window = self.int_in::<u64>(s, "certificate_window_s", 1..=3600).or(60);
        let matching = self
            .choice(
                s,
                "certificate_match",
                &[("name_and_birth", CertificateMatch::NameAndBirth), ("birth_only", CertificateMatch::BirthOnly)],
            )
            .or(CertificateMatch::NameAndBirth);
        Some(HealthConfig {
            online_timeout: Duration::from_millis(timeout?),
            trust_list_file: trust_list_file?,
            certificate_window: Duration::from_secs(window?),
            certificate_match: matching?,
        })
    }

    fn alerts(&mut self, s: Section<'_>) -> Option<AlertsConfig> {
        self.unknown_keys(s, ALERTS_KEYS);
        let quiet = self.int_in::<u64>(s, "quiet_period_s", 0..=86_400).or(300);
        Some(AlertsConfig { quiet_period: Duration::from_secs(quiet?) })
    }

    /// `[control]`. The default socket sits next to the database, in the one
    /// folder the daemon may write to under systemd (`ReadWritePaths`).
    fn control(&mut self, s: Section<'_>, store: Option<&StoreConfig>) -> Option<ControlConfig> {
        self.unknown_keys(s, CONTROL_KEYS);
        let socket = match self.path(s, "socket") {
            Got::Found(path) => Some(path),
            Got::Absent => store.map(|st| st.path.parent().unwrap_or(Path::new("/")).join("gated.sock")),
            Got::Invalid => None,
        };
        // A Unix socket path is limited to 107 bytes (sun_path); say so here
        // rather than let the daemon start without its control socket.
        let socket = match socket {
            Some(path) if path.as_os_str().len() > 107 => {
                let message = format!(
                    "expected a socket path of at most 107 bytes, found {} bytes ({}); set a shorter `socket`",
                    path.as_os_str().len(),
                    path.display()
                );
                self.push(s.value_at("socket"), s.dotted("socket"), message);
                None
            }
            other => other,
        };
        let group = match self.string(s, "group") {
            Got::Found((g, at)) => {
                // The characters `useradd` accepts; the group need not exist
                // yet (checking it would open /etc/group, and this opens nothing).
                let valid = !g.is_empty()
                    && g.len() <= 32
                    && !g.starts_with('-')
                    && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if valid {
                    Some(Some(g.to_owned()))
                } else {
                    self.push(
                        at,
                        s.dotted("group"),
                        format!("expected a group name (letters, digits, `_`, `-`, `.`; at most 32), found {g:?}"),
                    );
                    None
                }
            }
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        Some(ControlConfig { socket: socket?, group: group? })
    }

    /// `[metrics]`: off unless `listen` is set; loopback only unless
    /// `allow_remote`, because the endpoint has no authentication.
    fn metrics(&mut self, s: Section<'_>) -> Option<MetricsConfig> {
        self.unknown_keys(s, METRICS_KEYS);
        let allow_remote = self.boolean(s, "allow_remote").or(false);
        let listen = match self.string(s, "listen") {
            Got::Found((raw, at)) => {
                let parsed = raw.parse::<std::net::SocketAddr>().ok().or_else(|| {
                    // A bare port: loopback, the safe default.
                    raw.parse::<u16>().ok().map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                });
                match parsed {
                    Some(addr) if addr.port() == 0 => {
                        self.push(at, s.dotted("listen"), format!("expected a port from 1 to 65535, found {raw:?}"));
                        None
                    }
                    Some(addr) if !addr.ip().is_loopback() && allow_remote == Some(false) => {
                        let message = format!(
                            "expected a loopback address such as \"127.0.0.1:9464\", found {raw:?}; \
                             the endpoint has no authentication: set `allow_remote = true` to expose it anyway"
                        );
                        self.push(at, s.dotted("listen"), message);
                        None
                    }
                    Some(addr) => Some(Some(addr)),
                    None => {
                        let message =
                            format!("expected an address and port such as \"127.0.0.1:9464\" or a port, found {raw:?}");
                        self.push(at, s.dotted("listen"), message);
                        None
                    }
                }
            }
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        Some(MetricsConfig { listen: listen?, allow_remote: allow_remote? })
    }

    fn passes(&mut self, s: Section<'_>) -> Option<PassesConfig> {
        self.unknown_keys(s, PASSES_KEYS);
        let keys = match self.string_list(s, "platform_keys") {
            Got::Found(list) => {
                let mut keys = Vec::new();
                let mut ok = true;
                for (hex_key, at) in list {
                    let mut bytes = [0u8; 32];
                    if hex_key.len() == 64 && hex::decode_to_slice(&hex_key, &mut bytes).is_ok() {
                        keys.push(bytes);
                    } else {
                        ok = false;
                        self.push(
                            at,
                            s.dotted("platform_keys"),
                            format!(
                                "expected an Ed25519 public key as 64 hex characters, found {} characters",
                                hex_key.chars().count()
                            ),
                        );
                    }
                }
                ok.then_some(keys)
            }
            Got::Absent => Some(Vec::new()),
            Got::Invalid => None,
        };
        let window = self.int_in::<u64>(s, "companion_window_s", 1..=3600).or(60);
        Some(PassesConfig { platform_keys: keys?, companion_window: Duration::from_secs(window?) })
    }

    /// `[platform]`: the keys downlink messages must be signed with, and
    /// how long the platform may stay silent.
    fn platform(&mut self, s: Section<'_>) -> Option<PlatformConfig> {
        self.unknown_keys(s, PLATFORM_KEYS);
        let signing_keys = match self.string_list(s, "signing_keys") {
            Got::Found(list) => {
                let mut keys: Vec<gate_envelope::KeySpec> = Vec::new();
                let mut ok = true;
                for (spec, at) in list {
                    match gate_envelope::parse_key_spec(&spec) {
                        Ok(key) if keys.iter().any(|k| k.key_id == key.key_id) => {
                            ok = false;
                            let message = format!("expected each key id once, found {:?} twice", key.key_id);
                            self.push(at, s.dotted("signing_keys"), message);
                        }
                        Ok(key) => keys.push(key),
                        Err(e) => {
                            ok = false;
                            // The key id part is not secret; the rest is a public key.
                            let shown: String = spec.chars().take(80).collect();
                            self.push(at, s.dotted("signing_keys"), format!("{e}, found {shown:?}"));
                        }
                    }
                }
                ok.then_some(keys)
            }
            Got::Absent => Some(Vec::new()),
            Got::Invalid => None,
        };
        let stale_after = self.int_in::<u64>(s, "stale_after_s", 60..=30 * 86_400).or(3600);
        let refuse_when_stale = self.boolean(s, "refuse_when_stale").or(false);
        let clock_ahead = self.int_in::<u64>(s, "clock_ahead_s", 60..=366 * 86_400).or(86_400);
        Some(PlatformConfig {
            signing_keys: signing_keys?,
            stale_after: Duration::from_secs(stale_after?),
            refuse_when_stale: refuse_when_stale?,
            clock_ahead: Duration::from_secs(clock_ahead?),
        })
    }

    /// Reports each channel number that an earlier key already took;
    /// `false` when there was any.
    fn distinct_channels(&mut self, s: Section<'_>, what: &str, keys: &[(&str, Option<Option<u16>>)]) -> bool {
        let mut ok = true;
        for (i, &(key, channel)) in keys.iter().enumerate() {
            let Some(Some(n)) = channel else { continue };
            if let Some(&(first, _)) = keys[..i].iter().find(|(_, other)| *other == Some(Some(n))) {
                let message = format!("expected {what} other than `{first}`'s, found {n}");
                self.push(s.value_at(key), s.dotted(key), message);
                ok = false;
            }
        }
        ok
    }

    /// Every wired input is read by one FC02 request, which covers at most
    /// [`crate::MAX_INPUT_SPAN`] inputs from the lowest wired one; the input
    /// that reaches past that is reported. `false` when one does.
    fn input_span_fits(&mut self, s: Section<'_>, keys: &[(&str, Option<Option<u16>>)]) -> bool {
        let wired: Vec<(&str, u16)> = keys.iter().filter_map(|&(key, channel)| Some((key, channel??))).collect();
        let Some(&(low_key, low)) = wired.iter().min_by_key(|&&(_, n)| n) else { return true };
        let Some(&(high_key, high)) = wired.iter().max_by_key(|&&(_, n)| n) else { return true };
        // u32: inputs 0 and 65535 span 65536, one more than a u16 holds.
        let span = u32::from(high) - u32::from(low) + 1;
        if span <= u32::from(crate::MAX_INPUT_SPAN) {
            return true;
        }
        let message = format!(
            "expected the wired inputs within {} of each other (one FC02 read covers them all), found `{low_key}` = {low} and {high} here: a span of {span}",
            crate::MAX_INPUT_SPAN
        );
        self.push(s.value_at(high_key), s.dotted(high_key), message);
        false
    }

    fn gate_io(&mut self, s: Section<'_>) -> Option<GateIoConfig> {
        self.unknown_keys(s, GATE_IO_KEYS);
        let driver = self.choice(s, "driver", &[("modbus-rtu", GateDriver::ModbusRtu)]);
        let driver = self.required(s, "driver", driver);
        let port = self.path(s, "port");
        let port = self.required(s, "port", port);
        let baud = self.baud(s, "baud").or(9600);
        let unit_id = self.int_in(s, "unit_id", 1..=247).or(1u8);
        let unlock_entry_coil = self.int_in(s, "unlock_entry_coil", 0..=65_535).or(0u16);
        let unlock_exit_coil = self.int_in(s, "unlock_exit_coil", 0..=65_535).or(1u16);
        let unlock_mode = self
            .choice(
                s,
                "unlock_mode",
                &[
                    ("pulse", UnlockMode::Pulse),
                    ("daemon_timed", UnlockMode::Pulse),
                    ("level", UnlockMode::Level),
                    ("board_timed", UnlockMode::BoardTimed),
                ],
            )
            .or(UnlockMode::Pulse);
        let unlock_ms = match self.int_in::<u64>(s, "unlock_ms", 50..=60_000) {
            Got::Found(ms) => Some(ms),
            Got::Invalid => None,
            Got::Absent => unlock_mode.map(|mode| match mode {
                UnlockMode::Pulse | UnlockMode::BoardTimed => 500,
                UnlockMode::Level => 5000,
            }),
        };
        // A board-timed pulse addresses coil 0x0200 + n: the unlock coils
        // must leave room for that offset.
        let mut coils_fit = true;
        if unlock_mode == Some(UnlockMode::BoardTimed) {
            let highest = u16::MAX - crate::TIMED_PULSE_BASE;
            for (key, coil) in [("unlock_entry_coil", unlock_entry_coil), ("unlock_exit_coil", unlock_exit_coil)] {
                if let Some(n) = coil
                    && n > highest
                {
                    coils_fit = false;
                    let message = format!(
                        "expected a coil of 0-{highest} with unlock_mode = \"board_timed\" (the timed pulse goes to 0x0200 + coil), found {n}"
                    );
                    self.push(s.value_at(key), s.dotted(key), message);
                }
            }
        }
        let passage_entry_input = self.int_in(s, "passage_entry_input", 0..=65_535).or(0u16);
        let passage_exit_input = self.int_in(s, "passage_exit_input", 0..=65_535).or(1u16);
        let poll = self.int_in(s, "poll_interval_ms", 10..=5000).or(100u64);
        // An input or coil left out is not wired: the signal is never read
        // or written.
        let channel = |this: &mut Self, key: &str| match this.int_in::<u16>(s, key, 0..=65_535) {
            Got::Found(n) => Some(Some(n)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let fire_alarm_input = channel(self, "fire_alarm_input");
        let beam_input = channel(self, "beam_input");
        let intrusion_input = channel(self, "intrusion_input");
        let green_lamp_coil = channel(self, "green_lamp_coil");
        let red_lamp_coil = channel(self, "red_lamp_coil");
        let buzzer_coil = channel(self, "buzzer_coil");
        let fire_alarm_normally_closed = self.boolean(s, "fire_alarm_normally_closed").or(true);
        let io_loss_is_fire_alarm = self.boolean(s, "io_loss_is_fire_alarm").or(false);
        let fire_alarm_io_loss = self.int_in::<u64>(s, "fire_alarm_io_loss_ms", 100..=600_000).or(5_000);
        let indicator = self.int_in::<u64>(s, "indicator_ms", 0..=60_000).or(2_000);
        let pass_timeout = self.int_in::<u64>(s, "pass_timeout_ms", 500..=600_000).or(10_000);
        let held_open = self.int_in::<u64>(s, "held_open_ms", 1_000..=3_600_000).or(30_000);
        // One channel, one meaning: a lamp sharing the unlock relay would
        // open the gate for every refusal.
        let coils = [
            ("unlock_entry_coil", unlock_entry_coil.map(Some)),
            ("unlock_exit_coil", unlock_exit_coil.map(Some)),
            ("green_lamp_coil", green_lamp_coil),
            ("red_lamp_coil", red_lamp_coil),
            ("buzzer_coil", buzzer_coil),
        ];
        let inputs = [
            ("passage_entry_input", passage_entry_input.map(Some)),
            ("passage_exit_input", passage_exit_input.map(Some)),
            ("fire_alarm_input", fire_alarm_input),
            ("beam_input", beam_input),
            ("intrusion_input", intrusion_input),
        ];
        let distinct = self.distinct_channels(s, "a coil", &coils) & self.distinct_channels(s, "an input", &inputs);
        let span_fits = self.input_span_fits(s, &inputs);
        if !distinct || !coils_fit || !span_fits {
            return None;
        }
        Some(GateIoConfig {
            driver: driver?,
            port: port?,
            baud: baud?,
            unit_id: unit_id?,
            unlock_entry_coil: unlock_entry_coil?,
            unlock_exit_coil: unlock_exit_coil?,
            unlock_mode: unlock_mode?,
            unlock: Duration::from_millis(unlock_ms?),
            passage_entry_input: passage_entry_input?,
            passage_exit_input: passage_exit_input?,
            poll_interval: Duration::from_millis(poll?),
            fire_alarm_input: fire_alarm_input?,
            fire_alarm_normally_closed: fire_alarm_normally_closed?,
            io_loss_is_fire_alarm: io_loss_is_fire_alarm?,
            fire_alarm_io_loss: Duration::from_millis(fire_alarm_io_loss?),
            beam_input: beam_input?,
            intrusion_input: intrusion_input?,
            green_lamp_coil: green_lamp_coil?,
            red_lamp_coil: red_lamp_coil?,
            buzzer_coil: buzzer_coil?,
            indicator: Duration::from_millis(indicator?),
            pass_timeout: Duration::from_millis(pass_timeout?),
            held_open: Duration::from_millis(held_open?),
        })
    }
}

#[cfg(test)]
mod tests;
