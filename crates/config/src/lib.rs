//! The daemon's configuration: a TOML file, loaded in two stages (raw
//! document with spans, then validated types) so that every error is
//! collected and reported with file, line and column before any device is
//! opened.
//!
//! The key names are an interface technicians write against; the example
//! `config/gated.example.toml` documents each of them.

pub mod diag;
mod keyfile;
mod load;
pub mod people_csv;

pub use keyfile::{KeyFileError, load_site_key, write_new_site_key};
pub use load::{ConfigError, ConfigErrors, check_and_report, load, parse};

impl GateConfig {
    /// The side a reader is on when its config does not say: exit gates read at the exit, others at the entry.
    pub fn default_side(&self) -> Side {
        match self.direction {
            Direction::Exit => Side::Exit,
            Direction::Entry | Direction::Both => Side::Entry,
        }
    }
}

use gate_core::{Direction, GateId, Lane, Mode, SiteId, UtcOffset};
pub use gate_engine::{AntiPassback, CategorySet, Policy, Side};
use std::path::PathBuf;
use std::time::Duration;

/// A validated configuration. Paths are absolute (relative ones were
/// resolved against the config file's folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was loaded from.
    pub source: PathBuf,
    pub site: SiteConfig,
    pub gate: GateConfig,
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    pub identity: IdentityConfig,
    pub devices: DevicesConfig,
    pub policy: PolicyConfig,
    pub passes: PassesConfig,
    pub platform: PlatformConfig,
    pub alerts: AlertsConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
}

/// How a signed health certificate is tied to the person at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateMatch {
    /// Name and birth date must match the ID card read in the window.
    NameAndBirth,
    /// Birth date only (for cards whose name script differs from the certificate's).
    BirthOnly,
}

/// `[health]`: how health verification reaches beyond the local record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `[health] online_timeout_ms`, default 800: how long a decision waits
    /// for the platform's answer about a missing or stale record.
    pub online_timeout: Duration,
    /// `[health] trust_list_file`: signer certificates for signed health
    /// certificates (PEM or base64 DER), besides those synced on the trust topic.
    pub trust_list_file: Option<PathBuf>,
    /// `[health] certificate_window_s`, default 60: a certificate and an ID
    /// card read within this many seconds belong to one transaction.
    pub certificate_window: Duration,
    /// `[health] certificate_match`, default "name_and_birth".
    pub certificate_match: CertificateMatch,
}

/// `[control]`: the local socket `gatectl` talks to the running daemon over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// `[control] socket`, default `gated.sock` in the state folder (the
    /// folder of `[store] path`).
    pub socket: PathBuf,
    /// `[control] group`: members of this group may use the socket, besides
    /// root and the daemon's own user. Default none.
    pub group: Option<String>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `[metrics] listen`, e.g. `127.0.0.1:9464`; absent: no endpoint. A bare
    /// port means loopback.
    pub listen: Option<std::net::SocketAddr>,
    /// `[metrics] allow_remote`, default false: without it a non-loopback
    /// `listen` address is refused.
    pub allow_remote: bool,
}

/// `[alerts]`: alerts to the management departments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// `[alerts] quiet_period_s`, default 300: the same subject refused for
    /// the same reason within this period raises the open alert's repeat
    /// count instead of a new alert.
    pub quiet_period: Duration,
}

/// `[policy]` and `[policy.<mode>]`: what each mode allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `[policy] version`, default derived from the policy's content
    /// (`auto-` and 8 hex digits), carried in every event.
    pub version: String,
    pub normal: Policy,
    pub sporadic: Policy,
    pub wartime: Policy,
}

impl PolicyConfig {
    pub fn for_mode(&self, mode: Mode) -> &Policy {
        match mode {
            Mode::Normal => &self.normal,
            Mode::Sporadic => &self.sporadic,
            Mode::Wartime => &self.wartime,
        }
    }
}

/// `[passes]`: visitor QR passes signed by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PassesConfig {
    /// `[passes] platform_keys`: Ed25519 public keys (64 hex characters each)
    /// whose signatures the gate accepts.
    pub platform_keys: Vec<[u8; 32]>,
    /// `[passes] companion_window_s`, default 60: a visitor's ID card read
    /// this long after their pass was scanned counts as covered by it.
    pub companion_window: Duration,
}

/// `[platform]`: what makes a downlink message the platform's, and how long
/// the gate may go without hearing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformConfig {
    /// `[platform] signing_keys`: "KEYID:HEX" entries, the keys every
    /// downlink message must be signed with. Visitor passes are accepted
    /// under them too.
    pub signing_keys: Vec<gate_envelope::KeySpec>,
    /// `[platform] stale_after_s`, default 3600: no signed heartbeat for this
    /// long raises `platform_stale`.
    pub stale_after: Duration,
    /// `[platform] refuse_when_stale`, default false: in wartime, a stale
    /// platform makes the gate refuse what it can no longer vouch for.
    pub refuse_when_stale: bool,
    /// `[platform] clock_ahead_s`, default 86400: a wall clock this far past
    /// the trusted time floor is flagged `clock_ahead`.
    pub clock_ahead: Duration,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            signing_keys: Vec::new(),
            stale_after: Duration::from_secs(3600),
            refuse_when_stale: false,
            clock_ahead: Duration::from_secs(86_400),
        }
    }
}

impl Config {
    /// Every key a downlink envelope may be signed with: `[platform]
    /// signing_keys`, then the deprecated `[passes] platform_keys` (kept
    /// working for one release) under their generated key ids.
    pub fn envelope_keys(&self) -> Vec<gate_envelope::KeySpec> {
        let mut keys = self.platform.signing_keys.clone();
        for raw in &self.passes.platform_keys {
            let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(raw) else { continue };
            if !keys.iter().any(|k| k.key == key) {
                keys.push(gate_envelope::KeySpec { key_id: gate_envelope::key_id_for(&key), key });
            }
        }
        keys
    }

    /// Every key a visitor pass may be signed with: `[passes] platform_keys`
    /// and `[platform] signing_keys`.
    pub fn pass_keys(&self) -> Vec<[u8; 32]> {
        let mut keys = self.passes.platform_keys.clone();
        for spec in &self.platform.signing_keys {
            let raw = spec.key.to_bytes();
            if !keys.contains(&raw) {
                keys.push(raw);
            }
        }
        keys
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    /// `[site] id`
    pub id: SiteId,
    /// `[site] utc_offset`, default `+08:00`: turns validity dates into instants.
    pub utc_offset: UtcOffset,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// `[gate] id`
    pub id: GateId,
    /// `[gate] lane`, default pedestrian.
    pub lane: Lane,
    /// `[gate] direction`, default entry.
    pub direction: Direction,
    /// `[gate] flexible`, default false: a flexible checkpoint closes in wartime.
    pub flexible: bool,
    /// `[gate] anti_passback` = "off" | "paired" | "timed", with
    /// `[gate] anti_passback_s` (default 30) for "timed".
    pub anti_passback: AntiPassback,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `[store] path`: the SQLite database file.
    pub path: PathBuf,
    /// `[store] ballast_mb`, default 64: a file of this size kept in the
    /// state folder and deleted when the disk fills, so decisions go on
    /// being recorded while the alert goes out. 0: no ballast.
    pub ballast_mb: u64,
    /// `[store] disk_low_percent`, default 10: below this share of free
    /// space the `disk_low` alert goes out.
    pub disk_low_percent: u8,
    /// `[store] disk_low_mb`, default 2048: the low margin never exceeds
    /// this many MB, so a large shared disk with GBs free is not `low`.
    pub disk_low_mb: u64,
    /// `[store] outbox_max_events`, default 10,000,000, at least 1: past it
    /// the oldest unsent events are dropped (routine passes first), and an
    /// `outbox_overflow` event names them.
    pub outbox_max_events: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// `[mqtt] host`, default `127.0.0.1`.
    pub host: String,
    /// `[mqtt] port`, default 1883.
    pub port: u16,
    /// `[mqtt] client_id`, default `gated-{site}-{gate}`.
    pub client_id: String,
    /// `[mqtt] topic_prefix`, default `village`.
    pub topic_prefix: String,
    /// `[mqtt] keep_alive_s`, default 30.
    pub keep_alive: Duration,
    /// `[mqtt] tls` (implied by `ca_file` and `cert_file`): TLS to the
    /// broker, with these files.
    pub tls: Option<TlsConfig>,
    /// `[mqtt] username`.
    pub username: Option<String>,
    /// `[mqtt] password_file`: the password on its first line; the file
    /// must be readable by its owner only.
    pub password_file: Option<PathBuf>,
}

/// The TLS files of `[mqtt]`. All are read when the uplink starts and again
/// on every reload (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `[mqtt] ca_file`: the certificates the broker's must chain to (PEM);
    /// absent, the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `[mqtt] cert_file`: this gate's client certificate chain (PEM), for
    /// brokers that require one.
    pub cert_file: Option<PathBuf>,
    /// `[mqtt] key_file`: its private key (PEM); refused unless readable by
    /// its owner only.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// `[identity] hmac_key_file`
    pub hmac_key_file: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicesConfig {
    /// `[devices.id_card]`, absent when the box has no reader.
    pub id_card: Option<IdCardConfig>,
    /// `[devices.gate]`, absent when the box drives no gate.
    pub gate: Option<GateIoConfig>,
    /// `[devices.qr_scanner]`, absent when the box has no serial QR scanner.
    pub qr_scanner: Option<QrScannerConfig>,
    /// `[devices.plate_reader]`, absent when the lane has no plate camera.
    pub plate_reader: Option<PlateReaderConfig>,
    /// `[devices.camera]`, absent when no camera reads QR codes.
    pub camera: Option<CameraConfig>,
}

/// Where camera frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSource {
    /// `[devices.camera] device`: a V4L2 camera by index (builds with the
    /// `camera` feature).
    V4l2(u32),
    /// `[devices.camera] snapshot_file`: an image file another program keeps
    /// replacing with the current view (a camera adapter, `hw-sim camera`).
    SnapshotFile(PathBuf),
    /// `[devices.camera] frames_dir`: a folder of recorded frames, played once.
    FramesDir(PathBuf),
}

/// `[devices.camera]`: QR codes read from camera frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraConfig {
    pub source: CameraSource,
    /// `[devices.camera] interval_ms`, default 100: time between frames.
    pub interval: Duration,
    /// `[devices.camera] side`, default the gate's direction.
    pub side: Option<Side>,
}

/// How a QR scanner module ends each code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrTerminator {
    Cr,
    Lf,
    CrLf,
    Tab,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrScannerConfig {
    /// `[devices.qr_scanner] port`
    pub port: PathBuf,
    /// `[devices.qr_scanner] baud`, default 9600.
    pub baud: u32,
    /// `[devices.qr_scanner] terminator`, default "cr".
    pub terminator: QrTerminator,
    /// `[devices.qr_scanner] prefix`, default none (e.g. "]Q1").
    pub prefix: Option<String>,
    /// `[devices.qr_scanner] side`, default the gate's direction.
    pub side: Option<Side>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlateReaderConfig {
    /// `[devices.plate_reader] port`
    pub port: PathBuf,
    /// `[devices.plate_reader] baud`, default 9600.
    pub baud: u32,
    /// `[devices.plate_reader] min_confidence`, default 0.8: lower reads are
    /// not decisions.
    pub min_confidence: f32,
    /// `[devices.plate_reader] side`, default the gate's direction.
    pub side: Option<Side>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdCardConfig {
    /// `[devices.id_card] port`
    pub port: PathBuf,
    /// `[devices.id_card] baud`, default 115200.
    pub baud: u32,
    /// `[devices.id_card] poll_interval_ms`, default 300.
    pub poll_interval: Duration,
    /// `[devices.id_card] side` = "entry" | "exit", default the gate's direction.
    pub side: Option<Side>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDriver {
    ModbusRtu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockMode {
    /// Coil on, then off after `unlock_ms`, timed by the daemon (`"pulse"`,
    /// also spelt `"daemon_timed"`).
    Pulse,
    /// Coil on until passage is seen or `unlock_ms` runs out, timed by the
    /// daemon.
    Level,
    /// `"board_timed"`: the board is told the pulse width with the unlock
    /// and drops the relay on its own, so a daemon that dies mid-pulse
    /// cannot hold the door open. The daemon still relocks at a passage.
    BoardTimed,
}

impl UnlockMode {
    /// Whether the IO board times the unlock pulse itself.
    pub fn board_timed(self) -> bool {
        self == UnlockMode::BoardTimed
    }
}

/// The most discrete inputs one Modbus FC02 request may read (the standard's
/// limit): every wired input of `[devices.gate]` must lie within this span.
pub const MAX_INPUT_SPAN: u16 = 2000;

/// A board-timed pulse is written to this coil address plus the coil number
/// (docs/PROTOCOLS.md, Modbus: FC05 to 0x0200 + n, width in 100 ms units).
pub const TIMED_PULSE_BASE: u16 = 0x0200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateIoConfig {
    /// `[devices.gate] driver`, only `"modbus-rtu"` for now.
    pub driver: GateDriver,
    /// `[devices.gate] port`
    pub port: PathBuf,
    /// `[devices.gate] baud`, default 9600.
    pub baud: u32,
    /// `[devices.gate] unit_id`, default 1 (1..=247).
    pub unit_id: u8,
    /// `[devices.gate] unlock_entry_coil`, default 0 (zero-based coil address).
    pub unlock_entry_coil: u16,
    /// `[devices.gate] unlock_exit_coil`, default 1.
    pub unlock_exit_coil: u16,
    /// `[devices.gate] unlock_mode`, default pulse.
    pub unlock_mode: UnlockMode,
    /// `[devices.gate] unlock_ms`, default 500 for pulse and board_timed,
    /// 5000 for level.
    pub unlock: Duration,
    /// `[devices.gate] passage_entry_input`, default 0 (zero-based input address).
    pub passage_entry_input: u16,
    /// `[devices.gate] passage_exit_input`, default 1.
    pub passage_exit_input: u16,
    /// `[devices.gate] poll_interval_ms`, default 100.
    pub poll_interval: Duration,
    /// `[devices.gate] fire_alarm_input`, default none (not wired): the fire
    /// alarm contact; an alarm releases every unlock output.
    pub fire_alarm_input: Option<u16>,
    /// `[devices.gate] fire_alarm_normally_closed`, default true: an open
    /// contact (or a cut wire) is the alarm.
    pub fire_alarm_normally_closed: bool,
    /// `[devices.gate] io_loss_is_fire_alarm`, default false: whether an IO
    /// board lost for `fire_alarm_io_loss_ms` counts as a fire alarm.
    pub io_loss_is_fire_alarm: bool,
    /// `[devices.gate] fire_alarm_io_loss_ms`, default 5000.
    pub fire_alarm_io_loss: Duration,
    /// `[devices.gate] beam_input`, default none: the tailgating beam.
    pub beam_input: Option<u16>,
    /// `[devices.gate] intrusion_input`, default none: the turnstile's own
    /// door-forced / intrusion output.
    pub intrusion_input: Option<u16>,
    /// `[devices.gate] green_lamp_coil`, default none.
    pub green_lamp_coil: Option<u16>,
    /// `[devices.gate] red_lamp_coil`, default none.
    pub red_lamp_coil: Option<u16>,
    /// `[devices.gate] buzzer_coil`, default none.
    pub buzzer_coil: Option<u16>,
    /// `[devices.gate] indicator_ms`, default 2000: how long the lamps and
    /// the buzzer stay on after a decision.
    pub indicator: Duration,
    /// `[devices.gate] pass_timeout_ms`, default 10000: how long a grant
    /// waits for its passage.
    pub pass_timeout: Duration,
    /// `[devices.gate] held_open_ms`, default 30000: a passage sensor active
    /// longer raises `held_open`.
    pub held_open: Duration,
}
