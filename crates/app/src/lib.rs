//! The composition root of the gate daemon: it turns a validated [`Config`]
//! into running tasks (device drivers, the decision loop, the MQTT uplink)
//! and runs them until the shutdown token is cancelled.
//!
//! Only this crate spawns long-lived tasks. Every task is tracked, and
//! [`run`] returns only after all of them have stopped, so a SIGTERM never
//! cuts a SQLite write or a coil command in half.

mod alerts;
mod decide;

use gate_config::Config;
use gate_devices::DeviceHealth;
use gate_devices::gate_io::{GateIoSettings, UnlockMode};
use gate_devices::idcard::IdCardSettings;
use gate_devices::plate_reader::PlateReaderSettings;
use gate_devices::qr_scanner::{QrScannerSettings, Terminator};
use gate_store::Store;
use gate_sync::{DeviceReport, LinkState, SyncSettings};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub use decide::{DecisionCounters, set_mode_locally};

/// The daemon's version, as reported to the platform.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the daemon could not start. Each names what a technician must fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    SiteKey(#[from] gate_config::KeyFileError),
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] gate_store::StoreError),
}

/// The wall clock, read only at the edge: the engine gets `now` as an argument.
pub fn wall_clock_ms() -> gate_core::UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Live state shared with diagnostics (status message, tests).
#[derive(Debug, Default)]
pub struct Observed {
    pub id_card: Arc<DeviceHealth>,
    pub gate_io: Arc<DeviceHealth>,
    pub qr_scanner: Arc<DeviceHealth>,
    pub plate_reader: Arc<DeviceHealth>,
    pub link: Arc<LinkState>,
    pub decisions: Arc<DecisionCounters>,
}

/// Runs the daemon until `shutdown` is cancelled. Returns an error only when
/// it cannot start (bad key file, unusable database); once running, device
/// and broker failures are retried, never fatal.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    run_observed(config, shutdown, Arc::new(Observed::default())).await
}

/// [`run`], sharing its live counters through `observed`.
pub async fn run_observed(
    config: Config,
    shutdown: CancellationToken,
    observed: Arc<Observed>,
) -> Result<(), StartError> {
    let site_key = gate_config::load_site_key(&config.identity.hmac_key_file)?;
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::StateDir { path: dir.to_owned(), source })?;
    }
    let store = Store::open(&config.store.path)?;
    let people = store.person_count()?;
    let span = info_span!("gate", site = %config.site.id, gate = %config.gate.id, lane = config.gate.lane.as_str());
    span.in_scope(|| {
        info!(version = VERSION, store = %config.store.path.display(), people, "gated starting");
        if people == 0 {
            warn!("the identity table is empty: every card will be refused until identities are imported");
        }
    });

    let tracker = TaskTracker::new();
    let outbox_changed = Arc::new(Notify::new());
    let (presented_tx, presented_rx) = mpsc::channel::<decide::Presented>(32);
    let (gate_cmd_tx, gate_cmd_rx) = mpsc::channel(16);
    let (gate_evt_tx, gate_evt_rx) = mpsc::channel(64);
    let default_side = config.gate.default_side();

    if let Some(reader) = &config.devices.id_card {
        let settings = IdCardSettings {
            port: reader.port.clone(),
            baud: reader.baud,
            poll_interval: reader.poll_interval,
            reply_timeout: Duration::from_secs(1),
        };
        let side = reader.side.unwrap_or(default_side);
        let (tx, rx) = mpsc::channel(16);
        tracker.spawn(
            gate_devices::idcard::run_id_card_reader(settings, tx, observed.id_card.clone(), shutdown.clone())
                .instrument(info_span!(parent: &span, "id_card")),
        );
        tracker.spawn(forward(rx, presented_tx.clone(), move |e| decide::Presented::Card(e, side)));
    }
    if let Some(scanner) = &config.devices.qr_scanner {
        let mut settings = QrScannerSettings::new(scanner.port.clone());
        settings.baud = scanner.baud;
        settings.prefix = scanner.prefix.clone();
        settings.terminator = match scanner.terminator {
            gate_config::QrTerminator::Cr => Terminator::Cr,
            gate_config::QrTerminator::Lf => Terminator::Lf,
            gate_config::QrTerminator::CrLf => Terminator::CrLf,
            gate_config::QrTerminator::Tab => Terminator::Tab,
            gate_config::QrTerminator::None => Terminator::None,
        };
        let side = scanner.side.unwrap_or(default_side);
        let (tx, rx) = mpsc::channel(16);
        tracker.spawn(
            gate_devices::qr_scanner::run_qr_scanner(settings, tx, observed.qr_scanner.clone(), shutdown.clone())
                .instrument(info_span!(parent: &span, "qr_scanner")),
        );
        tracker.spawn(forward(rx, presented_tx.clone(), move |e| decide::Presented::Qr(e, side)));
    }
    if let Some(camera) = &config.devices.plate_reader {
        let mut settings = PlateReaderSettings::new(camera.port.clone());
        settings.baud = camera.baud;
        settings.min_confidence = camera.min_confidence;
        let side = camera.side.unwrap_or(default_side);
        let (tx, rx) = mpsc::channel(16);
        tracker.spawn(
            gate_devices::plate_reader::run_plate_reader(settings, tx, observed.plate_reader.clone(), shutdown.clone())
                .instrument(info_span!(parent: &span, "plate_reader")),
        );
        tracker.spawn(forward(rx, presented_tx.clone(), move |e| decide::Presented::Plate(e, side)));
    }
    drop(presented_tx);

    let gate_commands = if let Some(io) = &config.devices.gate {
        let settings = GateIoSettings {
            port: io.port.clone(),
            baud: io.baud,
            unit_id: io.unit_id,
            unlock_entry_coil: io.unlock_entry_coil,
            unlock_exit_coil: io.unlock_exit_coil,
            unlock_mode: match io.unlock_mode {
                gate_config::UnlockMode::Pulse => UnlockMode::Pulse,
                gate_config::UnlockMode::Level => UnlockMode::Level,
            },
            unlock: io.unlock,
            passage_entry_input: io.passage_entry_input,
            passage_exit_input: io.passage_exit_input,
            poll_interval: io.poll_interval,
            request_timeout: Duration::from_millis(500),
        };
        tracker.spawn(
            gate_devices::gate_io::run_gate_io(
                settings,
                gate_cmd_rx,
                gate_evt_tx,
                observed.gate_io.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!(parent: &span, "gate_io", port = %io.port.display())),
        );
        Some(gate_cmd_tx)
    } else {
        span.in_scope(|| info!("no [devices.gate] configured: decisions are recorded, nothing is unlocked"));
        None
    };

    let sync_settings = SyncSettings {
        host: config.mqtt.host.clone(),
        port: config.mqtt.port,
        client_id: config.mqtt.client_id.clone(),
        keep_alive: config.mqtt.keep_alive,
        topic_prefix: config.mqtt.topic_prefix.clone(),
        site: config.site.id.clone(),
        gate: config.gate.id.clone(),
        store_path: config.store.path.clone(),
        lane: config.gate.lane,
        direction: config.gate.direction,
        policy_version: config.policy.version.clone(),
        default_mode: gate_core::Mode::Normal,
        version: VERSION.to_owned(),
        status_interval: Duration::from_secs(15),
    };
    let devices = device_reporter(&config, &observed);
    tracker.spawn(
        gate_sync::run_sync(sync_settings, outbox_changed.clone(), devices, observed.link.clone(), shutdown.clone())
            .instrument(
                info_span!(parent: &span, "uplink", broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port)),
            ),
    );

    let decider =
        decide::DecisionLoop::new(&config, site_key, store, outbox_changed, gate_commands, observed.decisions.clone());
    tracker.spawn(
        decider.run(presented_rx, gate_evt_rx, shutdown.clone()).instrument(info_span!(parent: &span, "decisions")),
    );

    tracker.close();
    shutdown.cancelled().await;
    span.in_scope(|| info!("stopping"));
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        span.in_scope(|| warn!("some tasks did not stop within 5 s"));
    }
    span.in_scope(|| info!("stopped"));
    Ok(())
}

fn device_reporter(config: &Config, observed: &Observed) -> Arc<dyn Fn() -> Vec<DeviceReport> + Send + Sync> {
    let mut sources = Vec::new();
    if config.devices.id_card.is_some() {
        sources.push(("id_card".to_owned(), observed.id_card.clone()));
    }
    if config.devices.gate.is_some() {
        sources.push(("gate".to_owned(), observed.gate_io.clone()));
    }
    if config.devices.qr_scanner.is_some() {
        sources.push(("qr_scanner".to_owned(), observed.qr_scanner.clone()));
    }
    if config.devices.plate_reader.is_some() {
        sources.push(("plate_reader".to_owned(), observed.plate_reader.clone()));
    }
    Arc::new(move || {
        sources
            .iter()
            .map(|(name, health)| {
                let s = health.snapshot();
                DeviceReport {
                    name: name.clone(),
                    connected: s.connected,
                    errors: s.checksum_errors + s.length_errors + s.timeouts + s.status_errors + s.auth_errors,
                    reconnects: s.reconnects,
                    last_error: s.last_error,
                }
            })
            .collect()
    })
}

impl Observed {
    /// Whether the uplink currently holds a broker connection.
    pub fn broker_connected(&self) -> bool {
        self.link.connected.load(Ordering::Relaxed)
    }
}

/// Moves one device's events into the decision loop's single queue, tagged
/// with where they came from; ends when either side closes.
async fn forward<T>(
    mut from: mpsc::Receiver<T>,
    to: mpsc::Sender<decide::Presented>,
    tag: impl Fn(T) -> decide::Presented,
) {
    while let Some(event) = from.recv().await {
        if to.send(tag(event)).await.is_err() {
            break;
        }
    }
}
