//! The composition root of the gate daemon: it turns a validated [`Config`]
//! into running tasks (device drivers, the decision loop, the MQTT uplink)
//! and runs them until the shutdown token is cancelled.
//!
//! Only this crate spawns long-lived tasks. Every task is tracked, and
//! [`run`] returns only after all of them have stopped, so a SIGTERM never
//! cuts a SQLite write or a coil command in half.

mod activity;
mod alerts;
pub mod control;
mod decide;
mod gate_control;
mod heartbeat;
mod metrics;
mod reload;
mod store_health;

use gate_config::Config;
use gate_devices::DeviceHealth;
use gate_devices::idcard::IdCardSettings;
use gate_devices::plate_reader::PlateReaderSettings;
use gate_devices::qr_scanner::{QrScannerSettings, Terminator};
use gate_store::StoreThread;
use gate_sync::{DeviceReport, LinkState, SyncSettings};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub use activity::{Activity, ActivityFeed, DecisionSummary, GateActivity};
pub use decide::{DecisionCounters, set_mode_locally};
pub use heartbeat::{Heartbeat, IDLE_BEAT};
pub use metrics::{LATENCY_BUCKETS_US, LatencyHistogram, LatencySnapshot};
pub use store_health::{StoreErrors, StoreState};

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
    /// `[mqtt]` TLS or password files that cannot be used (missing, not
    /// PEM, a key others may read).
    #[error(transparent)]
    BrokerAuth(#[from] gate_sync::AuthError),
    /// A background task's thread or runtime could not be made.
    #[error("cannot start the {task} thread: {source}")]
    Thread {
        task: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The broker's security settings of `[mqtt]`, as the uplink takes them.
pub fn broker_auth(mqtt: &gate_config::MqttConfig) -> gate_sync::BrokerAuth {
    gate_sync::BrokerAuth {
        tls: mqtt.tls.as_ref().map(|t| gate_sync::TlsFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
        }),
        username: mqtt.username.clone(),
        password_file: mqtt.password_file.clone(),
    }
}

/// The wall clock, read only at the edge: the engine gets `now` as an argument.
pub fn wall_clock_ms() -> gate_core::UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What every event of this gate carries besides its body, from the
/// configuration in force.
pub(crate) fn event_context(config: &Config) -> gate_sync::EventContext {
    gate_sync::EventContext {
        site_id: config.site.id.to_string(),
        gate_id: config.gate.id.to_string(),
        lane: config.gate.lane,
        direction: config.gate.direction,
        policy_version: config.policy.version.clone(),
    }
}

/// A new event of this gate under `config`.
pub(crate) fn event_record(
    config: &Config,
    now: gate_core::UnixMillis,
    mode: gate_core::Mode,
    body: gate_sync::EventBody,
) -> gate_sync::EventRecord {
    event_context(config).record(now, mode, body)
}

/// A side of the gate as the wire knows it.
pub(crate) fn wire_side(side: gate_config::Side) -> gate_sync::Side {
    match side {
        gate_config::Side::Entry => gate_sync::Side::Entry,
        gate_config::Side::Exit => gate_sync::Side::Exit,
    }
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
    /// The store's state and the state folder's free space.
    pub store: Arc<store_health::StoreState>,
    /// Keys a reload changed that only a restart applies (`gatectl status`).
    pub restart_needed: std::sync::Mutex<Vec<&'static str>>,
    /// Control-socket requests refused before any command ran: a peer not
    /// permitted, a line too long, unended or late, malformed JSON, another
    /// protocol version.
    pub control_refused: AtomicU64,
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
    // No one reloads: the sender lives until the daemon stops.
    let (_no_reloads, reloads) = tokio::sync::watch::channel(config.clone());
    run_with_reload(config, reloads, shutdown, observed).await
}

/// [`run_observed`], following `reloads`: each configuration sent (already
/// validated, e.g. on SIGHUP) is applied between two decisions; keys that
/// need a restart keep their running values and are logged.
pub async fn run_with_reload(
    config: Config,
    reloads: tokio::sync::watch::Receiver<Config>,
    shutdown: CancellationToken,
    observed: Arc<Observed>,
) -> Result<(), StartError> {
    run_until_stopped(config, reloads, shutdown, observed, || {}).await
}

/// [`run_with_reload`], calling `ready` once the daemon works: the site key
/// loaded, the store open, every task spawned, the control socket bound (or
/// given up, logged) and the decision loop turned once. `gated` sends
/// systemd's `READY=1` from it. Not called when the daemon cannot start or is
/// stopped before it is ready.
pub async fn run_until_stopped(
    config: Config,
    reloads: tokio::sync::watch::Receiver<Config>,
    shutdown: CancellationToken,
    observed: Arc<Observed>,
    ready: impl FnOnce() + Send,
) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    let site_key = gate_config::load_site_key(&config.identity.hmac_key_file)?;
    broker_auth(&config.mqtt).check()?;
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::StateDir { path: dir.to_owned(), source })?;
    }
    // The decision loop's connection, on its own thread: no SQLite call on
    // an async worker.
    let store = StoreThread::open(&config.store.path, "decisions").await?;
    // Every connection thread is closed before `run` returns.
    let mut store_threads = vec![store.closed()];
    let people = store.call(|s| s.person_count()).await?;
    // Before the first decision: a reset clock is never believed.
    let floor = store.call(|s| Ok(gate_sync::load_floor(s))).await?;
    observed.link.platform.raise_floor(floor);
    let span = info_span!("gate", site = %config.site.id, gate = %config.gate.id, lane = config.gate.lane.as_str());
    span.in_scope(|| {
        info!(version = VERSION, store = %config.store.path.display(), people, "gated starting");
        if people == 0 {
            warn!("the identity table is empty: every card will be refused until identities are imported");
        }
        if !config.passes.platform_keys.is_empty() {
            // Folded into [platform] signing_keys; kept working for one release.
            warn!(
                keys = config.passes.platform_keys.len(),
                "[passes] platform_keys is deprecated: list the keys in [platform] signing_keys as \"KEYID:HEX\""
            );
        }
    });

    let tracker = TaskTracker::new();
    let outbox_changed = Arc::new(Notify::new());
    let (presented_tx, presented_rx) = mpsc::channel::<decide::Presented>(32);
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
    if let Some(camera) = &config.devices.camera {
        let side = camera.side.unwrap_or(default_side);
        match camera_source(&camera.source) {
            Ok(source) => {
                let (tx, rx) = mpsc::channel(16);
                tracker.spawn(
                    gate_camera::run_camera(source, camera.interval, tx, shutdown.clone())
                        .instrument(info_span!(parent: &span, "camera")),
                );
                // A code read from a frame takes the serial scanner's path.
                tracker.spawn(forward(rx, presented_tx.clone(), move |payload| {
                    decide::Presented::Qr(gate_devices::qr_scanner::QrEvent::Scanned(payload), side)
                }));
            }
            // A camera that cannot start is a device fault, not a reason to
            // leave the gate without its other readers.
            Err(e) => span.in_scope(|| warn!(error = %e, "camera not started")),
        }
    }
    drop(presented_tx);

    // The configuration in force, for every task that follows reloads.
    let (applied_tx, applied) = tokio::sync::watch::channel(config.clone());

    // The IO board driver under the gate-control task (the safety state
    // machine); decisions reach the gate only through the latter.
    let gate_commands = if let Some(io) = &config.devices.gate {
        let (driver_tx, driver_rx) = mpsc::channel(16);
        let (io_tx, io_rx) = mpsc::channel(64);
        tracker.spawn(
            gate_devices::gate_io::run_gate_io(
                gate_control::driver_settings(io),
                driver_rx,
                io_tx,
                observed.gate_io.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!(parent: &span, "gate_io", port = %io.port.display())),
        );
        let (request_tx, request_rx) = mpsc::channel(16);
        // Its own connection and thread: gate events never queue behind a
        // decision's transaction, and the task never waits for either.
        let gate_store = StoreThread::open(&config.store.path, "gate").await?;
        store_threads.push(gate_store.closed());
        // Grants given before a stop whose passage is still due: their
        // passage is a passage, not a forced door.
        let now = wall_clock_ms();
        let resumed = gate_store.call(move |s| s.pending_grants(now)).await.unwrap_or_else(|e| {
            span.in_scope(|| warn!(error = %e, "cannot read the grants pending at the last stop"));
            Vec::new()
        });
        let control = gate_control::GateControl::new(
            &config,
            io,
            gate_store,
            resumed,
            driver_tx,
            outbox_changed.clone(),
            observed.decisions.clone(),
        )
        .following_reloads(applied.clone());
        tracker.spawn(
            control.run(request_rx, io_rx, shutdown.clone()).instrument(info_span!(parent: &span, "gate_control")),
        );
        Some(request_tx)
    } else {
        span.in_scope(|| info!("no [devices.gate] configured: decisions are recorded, nothing is unlocked"));
        None
    };

    // Online health checks: the decision loop asks, the uplink publishes and
    // answers. A small queue: a check nobody can send is a fallback, not a wait.
    let (health_query_tx, health_query_rx) = mpsc::channel::<gate_sync::HealthQuery>(4);
    // The uplink reports the policy version in force in its status.
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(config.policy.version.clone());
    // Every reload, counted: the uplink reads its certificates again.
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(0u64);
    // The configured platform keys: the uplink rebuilds its downlink trust
    // when a reload changes them.
    let (keys_tx, keys_rx) = tokio::sync::watch::channel(config.envelope_keys());
    {
        let mut applied = applied.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = applied.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let (version, keys) = {
                            let config = applied.borrow();
                            (config.policy.version.clone(), config.envelope_keys())
                        };
                        let _ = policy_tx.send(version);
                        keys_tx.send_if_modified(|held| {
                            let changed = *held != keys;
                            *held = keys;
                            changed
                        });
                        reload_tx.send_modify(|n| *n += 1);
                    }
                }
            }
        });
    }
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
        platform_keys: config.envelope_keys(),
        stale_after: config.platform.stale_after,
        clock_ahead: config.platform.clock_ahead,
        policy_updates: Some(policy_rx),
        auth: broker_auth(&config.mqtt),
        reloads: Some(reload_rx),
        platform_key_updates: Some(keys_rx),
    };
    let devices = device_reporter(&config, &observed);
    spawn_background(
        &tracker,
        "uplink",
        gate_sync::run_sync(
            sync_settings,
            outbox_changed.clone(),
            devices,
            observed.link.clone(),
            health_query_rx,
            shutdown.clone(),
        )
        .instrument(
            info_span!(parent: &span, "uplink", broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port)),
        ),
    )?;

    tracker.spawn(
        reload::follow(config.clone(), reloads, applied_tx, observed.clone(), shutdown.clone())
            .instrument(info_span!(parent: &span, "reload")),
    );
    let control = control::ControlContext {
        observed: observed.clone(),
        config: applied.clone(),
        site_key: site_key.clone(),
        gate: gate_commands.clone(),
        outbox_changed: outbox_changed.clone(),
        started,
        devices: control::configured_devices(&config, &observed),
        tracker: tracker.clone(),
    };
    let (control_bound, control_ready) = tokio::sync::oneshot::channel();
    tracker.spawn(
        control::run_control(control, control_bound, shutdown.clone()).instrument(info_span!(parent: &span, "control")),
    );
    if let Some(listen) = config.metrics.listen {
        let source = metrics::MetricsSource {
            observed: observed.clone(),
            config: applied.clone(),
            devices: control::configured_devices(&config, &observed).into_iter().map(|d| (d.name, d.health)).collect(),
            store_path: config.store.path.clone(),
            started,
        };
        tracker.spawn(
            metrics::run_metrics(listen, source, shutdown.clone()).instrument(info_span!(parent: &span, "metrics")),
        );
    }

    let monitor = store_health::Monitor {
        store: StoreThread::open_with(&config.store.path, "monitor", gate_store::Urgency::Background).await?,
        config: config.clone(),
        reloads: applied.clone(),
        observed: observed.clone(),
        outbox_changed: outbox_changed.clone(),
        alerts: alerts::AlertBook::new(config.alerts.quiet_period.as_millis() as i64),
        last_state: "",
    };
    store_threads.push(monitor.store.closed());
    tracker.spawn(monitor.run(shutdown.clone()).instrument(info_span!(parent: &span, "store")));

    let decider =
        decide::DecisionLoop::new(&config, site_key, store, outbox_changed, gate_commands, observed.decisions.clone())
            .with_health_queries(health_query_tx)
            .with_platform(observed.link.clone())
            .with_reload(applied);
    tracker.spawn(decider.run(presented_rx, shutdown.clone()).instrument(info_span!(parent: &span, "decisions")));

    tracker.close();
    let running = async {
        // Bound, or failed and logged: either way the socket's task is done
        // starting; a missing socket does not keep the gate from working.
        let _ = control_ready.await;
        while observed.decisions.heartbeat.age().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = running => {
            span.in_scope(|| info!(elapsed_ms = started.elapsed().as_millis() as u64, "ready"));
            ready();
        }
    }
    shutdown.cancelled().await;
    span.in_scope(|| info!("stopping"));
    let stopped = async {
        tracker.wait().await;
        for closed in store_threads {
            closed.wait().await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), stopped).await.is_err() {
        span.in_scope(|| warn!("some tasks did not stop within 5 s"));
    }
    span.in_scope(|| info!("stopped"));
    Ok(())
}

/// Runs `task` to its end on a thread of its own (a single-threaded
/// runtime), at background priority (`gate_store::Urgency::Background`),
/// tracked by `tracker` like any task. The uplink runs there: while it
/// publishes a backlog at thousands of events a second, or decodes and
/// checks a snapshot, the runtime's workers and the CPU stay free for the
/// card path (reader, decision, gate).
fn spawn_background<F>(tracker: &TaskTracker, task: &'static str, future: F) -> Result<(), StartError>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let thread_error = |source| StartError::Thread { task, source };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(thread_error)?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(task.to_owned())
        .spawn(move || {
            gate_store::lower_this_threads_priority(task);
            runtime.block_on(future);
            drop(done_tx);
        })
        .map_err(thread_error)?;
    // Ends when the thread's future has (the sender dropped, or the thread gone).
    tracker.spawn(async move {
        let _ = done_rx.await;
    });
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

    /// Connected, and the broker granted every downlink subscription: from
    /// here on a platform order published is one this gate receives.
    pub fn downlink_subscribed(&self) -> bool {
        self.link.downlink_subscribed()
    }

    /// The decision loop turned within `max_age` (it turns at least every
    /// [`IDLE_BEAT`]): the condition for feeding the systemd watchdog.
    pub fn decision_loop_alive(&self, max_age: Duration) -> bool {
        self.decisions.heartbeat.is_fresh(max_age)
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

/// The frame source a camera config names.
fn camera_source(source: &gate_config::CameraSource) -> Result<Box<dyn gate_camera::FrameSource>, String> {
    match source {
        gate_config::CameraSource::SnapshotFile(path) => gate_camera::SnapshotFileSource::open(path)
            .map(|s| Box::new(s) as Box<dyn gate_camera::FrameSource>)
            .map_err(|e| e.to_string()),
        gate_config::CameraSource::FramesDir(dir) => gate_camera::FolderSource::open(dir)
            .map(|s| Box::new(s) as Box<dyn gate_camera::FrameSource>)
            .map_err(|e| e.to_string()),
        #[cfg(feature = "camera")]
        gate_config::CameraSource::V4l2(index) => gate_camera::V4lSource::open(*index)
            .map(|s| Box::new(s) as Box<dyn gate_camera::FrameSource>)
            .map_err(|e| e.to_string()),
        #[cfg(not(feature = "camera"))]
        gate_config::CameraSource::V4l2(index) => Err(format!(
            "[devices.camera] device = {index} needs a build with the `camera` feature (cargo build --features camera)"
        )),
    }
}
