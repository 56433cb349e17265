//! The control server: a Unix socket next to the database that `gatectl`
//! uses to ask the running daemon for its status, follow its decisions, dry-run
//! a credential, open the gate by hand, run a commissioning self-test and see
//! the outbox. JSON lines ([`protocol`]); one request per connection.
//!
//! Access: every connection's peer credentials (`SO_PEERCRED`) are checked
//! before anything is read: root, the daemon's own user and members of
//! `[control] group` are served; anyone else gets one error line and the
//! connection is closed. The file mode (0660) is only the first fence.
//!
//! The decision loop owns its store connection; this server opens its own per
//! request (WAL: reads never block the loop's writes), and sends manual
//! unlocks through the same gate command channel the loop grants through,
//! after recording them.

pub use gate_control_proto::{client, protocol};

use crate::activity::{Activity, GateActivity};
use crate::gate_control::GateRequest;
use crate::{Observed, decide};
use gate_config::{Config, Side};
use gate_core::{CredentialKind, Direction, Mode, SiteKey};
use gate_devices::DeviceHealth;
use gate_devices::HealthSnapshot;
use gate_store::Priority;
use gate_store::Store;
use gate_sync::{EVENT_STREAM, EventBody, Topics, encode_event};
use protocol::{
    BrokerReport, Check, Command, Credential, DecisionTotals, DeviceStatus, IdentityCounts, LookupReport,
    MAX_REQUEST_BYTES, ModeSetReport, OpenReport, OutboxReport, OutboxSummary, Reply, Response, SelftestReport,
    StatusReport, TopicBacklog,
};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// A client has this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an unlock may take to be echoed by the IO board.
const UNLOCK_CONFIRM: Duration = Duration::from_secs(2);

/// One configured device, as status, selftest and metrics list them.
#[derive(Debug, Clone)]
pub(crate) struct ConfiguredDevice {
    pub name: &'static str,
    pub port: PathBuf,
    pub health: Arc<DeviceHealth>,
}

/// The devices the configuration names, in a fixed order.
pub(crate) fn configured_devices(config: &Config, observed: &Observed) -> Vec<ConfiguredDevice> {
    let mut devices = Vec::new();
    let d = &config.devices;
    let mut add = |name, port: Option<&PathBuf>, health: &Arc<DeviceHealth>| {
        if let Some(port) = port {
            devices.push(ConfiguredDevice { name, port: port.clone(), health: health.clone() });
        }
    };
    add("id_card", d.id_card.as_ref().map(|c| &c.port), &observed.id_card);
    add("gate", d.gate.as_ref().map(|c| &c.port), &observed.gate_io);
    add("qr_scanner", d.qr_scanner.as_ref().map(|c| &c.port), &observed.qr_scanner);
    add("plate_reader", d.plate_reader.as_ref().map(|c| &c.port), &observed.plate_reader);
    devices
}

/// What the server needs from the rest of the daemon.
#[derive(Clone)]
pub(crate) struct ControlContext {
    pub observed: Arc<Observed>,
    /// The configuration in force (follows reloads).
    pub config: watch::Receiver<Config>,
    pub site_key: SiteKey,
    /// The channel the decision loop grants through (the gate-control task).
    pub gate: Option<mpsc::Sender<GateRequest>>,
    pub outbox_changed: Arc<Notify>,
    pub started: Instant,
    pub devices: Vec<ConfiguredDevice>,
    pub tracker: TaskTracker,
}

/// Who may connect, fixed at start (the socket's file mode depends on it).
#[derive(Debug, Clone)]
struct Access {
    daemon_uid: u32,
    group: Option<String>,
}

/// Serves the control socket at `[control] socket` until `shutdown`, then
/// removes it. A socket that cannot be set up is logged and the daemon runs
/// on without it: the gate matters more than its tools. `bound` is answered
/// (or dropped, on failure) once the socket accepts connections.
pub(crate) async fn run_control(
    ctx: ControlContext,
    bound: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let (path, group) = {
        let config = ctx.config.borrow();
        (config.control.socket.clone(), config.control.group.clone())
    };
    let access = Access { daemon_uid: nix::unistd::geteuid().as_raw(), group };
    let listener = match bind(&path, access.group.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            error!(socket = %path.display(), error = %e, "no control socket: gatectl status/tail/lookup/open/selftest/outbox will not reach this daemon");
            return;
        }
    };
    info!(socket = %path.display(), "control socket ready");
    let _ = bound.send(());
    let connections = AtomicU64::new(0);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
        let ctx2 = ctx.clone();
        ctx.tracker.spawn(
            serve(stream, ctx2, access.clone(), shutdown.clone()).instrument(info_span!("control", connection = n)),
        );
    }
    if let Err(e) = std::fs::remove_file(&path) {
        debug!(socket = %path.display(), error = %e, "control socket not removed");
    }
}

/// Creates the socket fresh. A leftover socket file (a crash) is replaced;
/// a live one (another daemon on the same config) or anything that is not a
/// socket is left alone.
fn bind(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; not replacing it",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::new(ErrorKind::AddrInUse, "another daemon is listening on it"));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode(group)))?;
    Ok(listener)
}

/// 0660: the daemon's user and group. A `[control] group` other than the
/// daemon's own cannot own the file without `chown`, which the systemd unit's
/// system-call filter forbids; then the mode is opened to all (0666) and the
/// peer-credential check alone decides, with a clear refusal.
fn socket_mode(group: Option<&str>) -> u32 {
    let Some(name) = group else { return 0o660 };
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) if g.gid == nix::unistd::getegid() => 0o660,
        Ok(Some(_)) => {
            info!(
                group = name,
                "the control socket is mode 0666; the peer-credential check admits root, the daemon's user and members of the group"
            );
            0o666
        }
        _ => {
            warn!(group = name, "[control] group does not exist; only root and the daemon's user can use gatectl");
            0o660
        }
    }
}

/// Root, the daemon's own user, or a member of the control group (its
/// primary group, or listed in the group database).
fn authorize(uid: u32, gid: u32, access: &Access) -> Result<(), String> {
    use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
    if uid == 0 || uid == access.daemon_uid {
        return Ok(());
    }
    let refusal = || {
        let mut message =
            format!("permission denied: uid {uid} is not root or the daemon's user (uid {})", access.daemon_uid);
        match &access.group {
            Some(g) => message.push_str(&format!(" and not a member of the control group {g:?}")),
            None => message.push_str(" and no [control] group is configured"),
        }
        message
    };
    let Some(name) = &access.group else { return Err(refusal()) };
    let Ok(Some(group)) = Group::from_name(name) else { return Err(refusal()) };
    if Gid::from_raw(gid) == group.gid {
        return Ok(());
    }
    if let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) {
        if group.mem.contains(&user.name) {
            return Ok(());
        }
        if let Ok(cname) = std::ffi::CString::new(user.name.clone())
            && getgrouplist(&cname, user.gid).is_ok_and(|groups| groups.contains(&group.gid))
        {
            return Ok(());
        }
    }
    Err(refusal())
}

async fn write_reply(writer: &mut OwnedWriteHalf, reply: Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(&Response::new(reply)).map_err(std::io::Error::other)?;
    line.push('\n');
    writer.write_all(line.as_bytes()).await
}

fn error(message: impl Into<String>) -> Reply {
    Reply::Error { message: message.into() }
}

async fn serve(stream: UnixStream, ctx: ControlContext, access: Access, shutdown: CancellationToken) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot read the peer's credentials; connection closed");
            return;
        }
    };
    let (read_half, mut writer) = stream.into_split();
    // Checked before reading a byte: a refused peer never gets a parser.
    if let Err(message) = authorize(cred.uid(), cred.gid(), &access) {
        warn!(uid = cred.uid(), "control connection refused: not root, the daemon's user or the control group");
        ctx.observed.control_refused.fetch_add(1, Ordering::Relaxed);
        let _ = write_reply(&mut writer, error(message)).await;
        let _ = writer.shutdown().await;
        return;
    }
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    let mut limited = (&mut reader).take(MAX_REQUEST_BYTES as u64);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => {}
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => {
            ctx.observed.control_refused.fetch_add(1, Ordering::Relaxed);
            let _ = write_reply(&mut writer, error("request line too long or not ended by a newline")).await;
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "control read failed");
            return;
        }
        Err(_) => {
            ctx.observed.control_refused.fetch_add(1, Ordering::Relaxed);
            let _ = write_reply(&mut writer, error("no request within 30 s")).await;
            return;
        }
    }
    // Parsed without echoing the line: a lookup carries a credential in clear.
    let request = match protocol::parse_request(&line) {
        Ok(request) => request,
        Err(message) => {
            ctx.observed.control_refused.fetch_add(1, Ordering::Relaxed);
            let _ = write_reply(&mut writer, error(message)).await;
            return;
        }
    };
    let uid = cred.uid();
    let reply = match request.command {
        Command::Tail => {
            tail(&ctx, reader, writer, shutdown).await;
            return;
        }
        Command::Status => status(&ctx).await,
        Command::Outbox => outbox(&ctx).await,
        Command::Lookup { credential, side } => lookup(&ctx, credential, side.as_deref()).await,
        Command::Open { reason, side, sudo_user } => {
            open(&ctx, &operator(uid, sudo_user.as_deref()), &reason, side.as_deref()).await
        }
        Command::Selftest { pulse, sudo_user } => selftest(&ctx, &operator(uid, sudo_user.as_deref()), pulse).await,
        Command::SetMode { mode, reason, sudo_user } => {
            set_mode(&ctx, &operator(uid, sudo_user.as_deref()), &mode, &reason).await
        }
    };
    let _ = write_reply(&mut writer, reply).await;
    let _ = writer.shutdown().await;
}

/// Longest reason a technician may give for a mode override.
const MAX_MODE_REASON_CHARS: usize = 200;

/// A technician's mode override: the schedule and its `ModeChange` event in
/// one transaction (`gate_sync::set_mode_by_technician`, the path
/// `gatectl` also takes when the daemon is stopped), under the operator
/// named from the connection's uid. The decision loop reads the mode from
/// the store at its next decision.
async fn set_mode(ctx: &ControlContext, operator: &str, mode: &str, reason: &str) -> Reply {
    let Some(mode) = Mode::parse(mode) else {
        return error(format!("expected normal, sporadic or wartime, found {mode:?}"));
    };
    let reason = reason.trim();
    if reason.is_empty() {
        return error("the reason must say why");
    }
    if reason.chars().count() > MAX_MODE_REASON_CHARS || reason.chars().any(char::is_control) {
        return error(format!("the reason must be at most {MAX_MODE_REASON_CHARS} characters, no control characters"));
    }
    let config = ctx.config.borrow().clone();
    let context = crate::event_context(&config);
    let now = crate::wall_clock_ms();
    let (operator_owned, reason_owned) = (operator.to_owned(), reason.to_owned());
    let recorded = with_store(config.store.path.clone(), move |store| {
        gate_sync::set_mode_by_technician(store, &context, mode, &operator_owned, &reason_owned, now)
    })
    .await;
    match recorded {
        Ok(seq) => {
            ctx.outbox_changed.notify_one();
            info!(mode = mode.as_str(), operator, seq, "mode set by a technician through the control socket");
            Reply::ModeSet(ModeSetReport { mode: mode.as_str().to_owned(), operator: operator.to_owned(), seq })
        }
        Err(e) => error(format!("cannot record the mode change: {e}")),
    }
}

/// Runs a database job on the blocking pool (SQLite calls block).
async fn with_store<T: Send + 'static>(
    path: PathBuf,
    job: impl FnOnce(&mut Store) -> gate_store::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || {
        let mut store = Store::open(&path).map_err(|e| e.to_string())?;
        job(&mut store).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("database task failed: {e}"))?
}

fn age_s(now: i64, then: i64) -> u64 {
    (now - then).max(0) as u64 / 1000
}

async fn status(ctx: &ControlContext) -> Reply {
    let config = ctx.config.borrow().clone();
    let now = crate::wall_clock_ms();
    let db = with_store(config.store.path.clone(), move |store| {
        let mode = store.mode_schedule()?.map_or(Mode::Normal, |s| s.at(now));
        Ok((mode, store.identity_state()?, store.identity_summary()?, store.health_state()?, store.outbox_stats()?))
    })
    .await;
    let (mode, identity, summary, health, outbox) = match db {
        Ok(found) => found,
        Err(e) => return error(format!("cannot read the database: {e}")),
    };
    // The later of the platform's last sync and a technician's last import.
    let synced =
        identity.synced_at_ms.map(|at| (at, format!("synced from the platform (version {})", identity.version)));
    let imported = summary
        .last_import
        .as_ref()
        .map(|i| (i.at_ms, format!("imported from a CSV file by {} ({} people)", i.operator, i.people)));
    let last_change = match (synced, imported) {
        (Some(s), Some(i)) => Some(if i.0 > s.0 { i } else { s }),
        (s, i) => s.or(i),
    };
    let o = &ctx.observed;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let devices = ctx
        .devices
        .iter()
        .map(|d| {
            let s = d.health.snapshot();
            DeviceStatus {
                name: d.name.to_owned(),
                port: d.port.display().to_string(),
                connected: s.connected,
                frames_ok: s.frames_ok,
                checksum_errors: s.checksum_errors,
                length_errors: s.length_errors,
                garbage_bytes: s.garbage_bytes,
                timeouts: s.timeouts,
                reconnects: s.reconnects,
                status_errors: s.status_errors,
                auth_errors: s.auth_errors,
                last_error: s.last_error,
            }
        })
        .collect();
    Reply::Status(StatusReport {
        version: crate::VERSION.to_owned(),
        site: config.site.id.to_string(),
        gate: config.gate.id.to_string(),
        uptime_s: ctx.started.elapsed().as_secs(),
        mode: mode.as_str().to_owned(),
        policy_version: config.policy.version.clone(),
        identity_version: identity.version,
        identity_synced_at_ms: identity.synced_at_ms,
        identity: IdentityCounts {
            people: summary.people,
            residents: summary.residents,
            workers: summary.workers,
            visitors: summary.visitors,
            id_cards: summary.id_cards,
            ic_cards: summary.ic_cards,
            plates: summary.plates,
        },
        identity_changed_at_ms: last_change.as_ref().map(|(at, _)| *at),
        identity_changed_how: last_change.map(|(_, how)| how),
        health_version: health.version,
        health_synced_at_ms: health.synced_at_ms,
        broker: BrokerReport {
            address: format!("{}:{}", config.mqtt.host, config.mqtt.port),
            connected: o.broker_connected(),
            published: load(&o.link.published),
            acked: load(&o.link.acked),
            connections: load(&o.link.connections),
            connection_errors: load(&o.link.connection_errors),
            last_error: if o.broker_connected() { None } else { o.link.last_error() },
        },
        outbox: OutboxSummary { depth: outbox.depth, oldest_age_s: outbox.oldest_created_ms.map(|t| age_s(now, t)) },
        store: gate_control_proto::protocol::StoreSummary {
            state: o.store.state().to_owned(),
            disk_free_bytes: o.store.disk_free_bytes.load(std::sync::atomic::Ordering::Relaxed),
            errors: gate_store::ErrorClass::ALL
                .iter()
                .map(|c| (c.as_str().to_owned(), o.decisions.store_errors.of(*c)))
                .collect(),
            outbox_dropped: load(&o.store.outbox_dropped),
        },
        decisions: DecisionTotals {
            passed: load(&o.decisions.passed),
            blocked: load(&o.decisions.blocked),
            failed: load(&o.decisions.failed),
            passages: load(&o.decisions.passages),
            alerts: load(&o.decisions.alerts),
        },
        devices,
        decision_loop_age_ms: o.decisions.heartbeat.age().map(|a| a.as_millis() as u64),
        platform_warnings: o.link.platform.warnings(),
        platform_heartbeat_at_ms: Some(o.link.platform.heartbeat_issued_ms.load(Ordering::Relaxed)).filter(|&t| t > 0),
        restart_needed: o
            .restart_needed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
    })
}

async fn outbox(ctx: &ControlContext) -> Reply {
    let path = ctx.config.borrow().store.path.clone();
    let now = crate::wall_clock_ms();
    let config = ctx.config.borrow().clone();
    let topics = Topics::new(&config.mqtt.topic_prefix, &config.site.id, &config.gate.id);
    match with_store(path, |store| Ok((store.outbox_stats()?, store.outbox_by_stream()?))).await {
        Ok((stats, streams)) => Reply::Outbox(OutboxReport {
            depth: stats.depth,
            oldest_age_s: stats.oldest_created_ms.map(|t| age_s(now, t)),
            // Shown by the topic each stream goes to now.
            topics: streams
                .into_iter()
                .map(|(stream, depth, oldest)| TopicBacklog {
                    topic: topics.for_stream(&stream).map_or_else(|| format!("(stream {stream})"), str::to_owned),
                    depth,
                    oldest_age_s: age_s(now, oldest),
                })
                .collect(),
        }),
        Err(e) => error(format!("cannot read the outbox: {e}")),
    }
}

/// The side asked for, or the refusal message.
fn parse_side(raw: Option<&str>, config: &Config) -> Result<Side, String> {
    match raw {
        None => Ok(config.gate.default_side()),
        Some(s) => Side::parse(s).ok_or_else(|| format!("expected side \"entry\" or \"exit\", found {s:?}")),
    }
}

async fn lookup(ctx: &ControlContext, credential: Credential, side: Option<&str>) -> Reply {
    let config = ctx.config.borrow().clone();
    let side = match parse_side(side, &config) {
        Ok(s) => s,
        Err(message) => return error(message),
    };
    let (kind, value) = match credential {
        Credential::IdNumber(v) => (CredentialKind::IdNumber, v),
        Credential::Card(v) => (CredentialKind::IcCard, v),
        Credential::Plate(v) => (CredentialKind::Plate, v),
    };
    let key = ctx.site_key.clone();
    let now = crate::wall_clock_ms();
    let path = config.store.path.clone();
    let policy_config = config.clone();
    let found =
        with_store(path, move |store| decide::dry_run(store, &policy_config, &key, kind, &value, side, now)).await;
    match found {
        Ok(run) => {
            debug!(credential = kind.as_str(), subject = %run.subject, decision = run.verdict.decision.as_str(), "lookup (dry run)");
            Reply::Lookup(LookupReport {
                credential: kind.as_str().to_owned(),
                subject: run.subject,
                decision: run.verdict.decision.as_str().to_owned(),
                reason: run.verdict.reason.map(|r| r.as_str().to_owned()),
                person_id: run.verdict.person_id,
                category: run.verdict.category.map(|c| c.as_str().to_owned()),
                mode: run.mode.as_str().to_owned(),
                side: side.as_str().to_owned(),
                why: run.why,
                valid_from: run.valid.map(|(from, _)| from.to_string()),
                valid_to: run.valid.map(|(_, to)| to.to_string()),
                state: run.state.map(str::to_owned),
                name: run.name,
            })
        }
        Err(e) => error(format!("lookup failed: {e}")),
    }
}

use gate_control_proto::operator;

/// Records a `ManualOpen` event (durable before any coil moves).
async fn record_manual_open(ctx: &ControlContext, side: Side, operator: &str, note: &str) -> Result<u64, String> {
    let config = ctx.config.borrow().clone();
    let now = crate::wall_clock_ms();
    let (operator_owned, note_owned) = (operator.to_owned(), note.to_owned());
    let seq = with_store(config.store.path.clone(), move |store| {
        let mode = store.mode_schedule()?.map_or(Mode::Normal, |s| s.at(now));
        let record = crate::event_record(
            &config,
            now,
            mode,
            EventBody::ManualOpen { side: crate::wire_side(side), operator: operator_owned, note: note_owned },
        );
        // The event and the grant it opens, together: a restart before the
        // passage still knows the door was opened on purpose.
        let deadline = config.devices.gate.as_ref().map(|io| now.saturating_add(io.pass_timeout.as_millis() as i64));
        store.write(|w| {
            let seq = w.append_event(EVENT_STREAM, Priority::Important, now, |seq| encode_event(&record, seq))?;
            if let Some(deadline) = deadline {
                w.add_pending_grant(side.as_str(), now, deadline)?;
            }
            Ok(seq)
        })
    })
    .await?;
    ctx.outbox_changed.notify_one();
    ctx.observed.decisions.activity.publish(Activity::ManualOpen {
        at_ms: now,
        seq,
        side: side.as_str().to_owned(),
        operator: operator.to_owned(),
        note: note.to_owned(),
    });
    Ok(seq)
}

/// Waits for the gate-control task to report switching the unlock coil of
/// `side` (`Unlocked`: on, `Relocked`: off).
async fn wait_gate(
    feed: &mut broadcast::Receiver<Activity>,
    event: GateActivity,
    side: Side,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return false,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Ok(Activity::Gate { event: e, side: Some(s), .. })) if e == event && s == side.as_str() => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Checks that a manual unlock can be carried out before anything is recorded.
fn gate_ready(ctx: &ControlContext) -> Result<mpsc::Sender<GateRequest>, String> {
    let Some(gate) = ctx.gate.clone() else {
        return Err("no [devices.gate] configured: there is nothing to open".to_owned());
    };
    if !ctx.observed.gate_io.connected.load(Ordering::Relaxed) {
        let last = ctx.observed.gate_io.snapshot().last_error.unwrap_or_else(|| "not connected".to_owned());
        return Err(format!("the gate IO board is offline ({last}): nothing was recorded or opened"));
    }
    Ok(gate)
}

async fn open(ctx: &ControlContext, operator: &str, reason: &str, side: Option<&str>) -> Reply {
    let reason = reason.trim();
    if reason.is_empty() {
        return error("--reason must say why the gate is opened");
    }
    if reason.chars().count() > 200 {
        return error("--reason is limited to 200 characters");
    }
    let config = ctx.config.borrow().clone();
    let side = match parse_side(side, &config) {
        Ok(s) => s,
        Err(message) => return error(message),
    };
    let gate = match gate_ready(ctx) {
        Ok(g) => g,
        Err(message) => return error(message),
    };
    // Subscribed before the command, so the board's echo cannot be missed.
    let mut feed = ctx.observed.decisions.activity.subscribe();
    let seq = match record_manual_open(ctx, side, operator, reason).await {
        Ok(seq) => seq,
        Err(e) => return error(format!("could not record the manual open, so the gate stays shut: {e}")),
    };
    // The reason is the technician's free text: kept in the event, not the log.
    info!(seq, side = side.as_str(), operator, "manual open recorded; unlocking");
    // A grant like the decision loop's: the gate-control task times the
    // unlock and watches for the passage.
    if gate.send(GateRequest::Grant { side }).await.is_err() {
        return Reply::Opened(OpenReport {
            seq,
            side: side.as_str().to_owned(),
            operator: operator.to_owned(),
            confirmed: false,
            detail: "recorded, but gate control is not running: the gate stayed shut".to_owned(),
        });
    }
    let confirmed = wait_gate(&mut feed, GateActivity::Unlocked, side, UNLOCK_CONFIRM).await;
    let detail = if confirmed {
        "unlocked: gate control switched the unlock output on".to_owned()
    } else {
        format!("granted, but gate control did not switch the unlock output on within {} s", UNLOCK_CONFIRM.as_secs())
    };
    Reply::Opened(OpenReport { seq, side: side.as_str().to_owned(), operator: operator.to_owned(), confirmed, detail })
}

/// The sides the gate's readers are on: the outputs that are wired.
fn wired_sides(config: &Config) -> Vec<Side> {
    let d = &config.devices;
    let mut sides = vec![config.gate.default_side()];
    if config.gate.direction == Direction::Both {
        sides = vec![Side::Entry, Side::Exit];
    }
    let readers = [
        d.id_card.as_ref().and_then(|r| r.side),
        d.qr_scanner.as_ref().and_then(|r| r.side),
        d.plate_reader.as_ref().and_then(|r| r.side),
    ];
    for side in readers.into_iter().flatten() {
        if !sides.contains(&side) {
            sides.push(side);
        }
    }
    sides
}

fn new_errors(before: &HealthSnapshot, after: &HealthSnapshot) -> u64 {
    let sum = |s: &HealthSnapshot| s.checksum_errors + s.length_errors + s.timeouts + s.status_errors + s.auth_errors;
    sum(after).saturating_sub(sum(before))
}

async fn selftest(ctx: &ControlContext, operator: &str, pulse: bool) -> Reply {
    let config = ctx.config.borrow().clone();
    // Long enough for a few polls of the slowest polled device.
    let slowest = [
        config.devices.id_card.as_ref().map(|c| c.poll_interval),
        config.devices.gate.as_ref().map(|c| c.poll_interval),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default();
    let window = (slowest * 3).clamp(Duration::from_secs(2), Duration::from_secs(30));
    let before: Vec<HealthSnapshot> = ctx.devices.iter().map(|d| d.health.snapshot()).collect();
    // Ask the reader driver to query the SAM's status between two polls.
    for device in ctx.devices.iter().filter(|d| d.name == "id_card") {
        device.health.sam_query_requested.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    tokio::time::sleep(window).await;
    let secs = window.as_secs_f32();
    let mut checks = Vec::new();
    for (device, before) in ctx.devices.iter().zip(&before) {
        let after = device.health.snapshot();
        let replies = after.frames_ok.saturating_sub(before.frames_ok);
        let errors = new_errors(before, &after);
        let port = device.port.display();
        // `connected` means the device answers (or, for a passive one, that
        // its port is open); a port that opens on a silent device is not
        // "not open", and the technician's next step differs.
        let open = match (after.connected, after.last_error.as_deref()) {
            (true, _) => "open",
            (false, Some(e)) if e.starts_with("cannot open") => "does NOT open",
            (false, _) => "opens but the device does NOT answer",
        };
        let last = after.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
        let (passed, checked) = match device.name {
            "id_card" => {
                let queried = after.sam_status_replies > before.sam_status_replies;
                let sam_ok = queried && after.last_sam_status == 0x90;
                let sam = if !queried {
                    "the SAM status query got no answer".to_owned()
                } else if sam_ok {
                    "SAM status 0x90 (ready)".to_owned()
                } else {
                    format!("SAM status {:#04x} (not ready)", after.last_sam_status)
                };
                (
                    after.connected && replies > 0 && sam_ok,
                    format!(
                        "port {port} {open}; {sam}; the SAM answered {replies} command(s) in {secs:.1} s \
                         ({errors} new error(s)){last}"
                    ),
                )
            }
            "gate" => {
                let inputs = config
                    .devices
                    .gate
                    .as_ref()
                    .map(|g| format!("{} and {}", g.passage_entry_input, g.passage_exit_input))
                    .unwrap_or_default();
                (
                    after.connected && replies > 0,
                    format!(
                        "port {port} {open}; discrete inputs {inputs} read by Modbus {replies} time(s) in {secs:.1} s \
                         ({errors} new error(s)){last}"
                    ),
                )
            }
            _ => (
                after.connected && errors == 0,
                format!(
                    "port {port} {open}; a passive device that only sends when it reads: nothing to query \
                     ({errors} new error(s) in {secs:.1} s){last}"
                ),
            ),
        };
        checks.push(protocol::Check { device: device.name.to_owned(), passed, skipped: false, checked });
    }
    if let Some(io) = &config.devices.gate {
        for side in wired_sides(&config) {
            let coil = match side {
                Side::Entry => io.unlock_entry_coil,
                Side::Exit => io.unlock_exit_coil,
            };
            let device = format!("gate {} output (coil {coil})", side.as_str());
            if !pulse {
                checks.push(Check {
                    device,
                    passed: true,
                    skipped: true,
                    checked: "not pulsed (--no-pulse): this output was not tested".to_owned(),
                });
                continue;
            }
            checks.push(pulse_output(ctx, operator, side, device, io.unlock).await);
        }
    }
    Reply::Selftest(SelftestReport { checks })
}

/// Pulses one unlock output through the decision loop's gate channel,
/// recorded first like any manual open, and watches the board confirm it on
/// and then off again.
async fn pulse_output(ctx: &ControlContext, operator: &str, side: Side, device: String, unlock: Duration) -> Check {
    let fail = |checked: String| Check { device: device.clone(), passed: false, skipped: false, checked };
    let gate = match gate_ready(ctx) {
        Ok(g) => g,
        Err(message) => return fail(format!("not pulsed: {message}")),
    };
    let mut feed = ctx.observed.decisions.activity.subscribe();
    let seq = match record_manual_open(ctx, side, operator, "selftest: output pulse").await {
        Ok(seq) => seq,
        Err(e) => return fail(format!("not pulsed: could not record it first: {e}")),
    };
    let started = Instant::now();
    let before = ctx.observed.gate_io.snapshot();
    if gate.send(GateRequest::Grant { side }).await.is_err() {
        return fail(format!("recorded as event #{seq}, but gate control is not running"));
    }
    if !wait_gate(&mut feed, GateActivity::Unlocked, side, UNLOCK_CONFIRM).await {
        return fail(format!("recorded as event #{seq}; granted, but gate control did not switch the coil on"));
    }
    if !wait_gate(&mut feed, GateActivity::Relocked, side, unlock + Duration::from_secs(2)).await {
        return fail(format!("recorded as event #{seq}; the coil was switched on but not off again"));
    }
    // Modbus writes are answered (or counted as errors) by the driver: the
    // board's replies across the pulse show the writes reached it.
    let after = ctx.observed.gate_io.snapshot();
    let errors = new_errors(&before, &after);
    let answered = after.frames_ok.saturating_sub(before.frames_ok);
    Check {
        device,
        passed: errors == 0 && after.connected,
        skipped: false,
        checked: format!(
            "recorded as event #{seq}; coil switched on, then off after {} ms; the board answered {answered} \
             Modbus request(s) meanwhile with {errors} error(s)",
            started.elapsed().as_millis()
        ),
    }
}

/// Streams activity lines until the client closes or the daemon stops.
async fn tail(
    ctx: &ControlContext,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    shutdown: CancellationToken,
) {
    let mut feed = ctx.observed.decisions.activity.subscribe();
    if write_reply(&mut writer, Reply::Tailing).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    loop {
        let reply = tokio::select! {
            _ = shutdown.cancelled() => break,
            // The client sends nothing more: a read returning means it left.
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            next = feed.recv() => match next {
                Ok(activity) => Reply::Activity { activity },
                Err(broadcast::error::RecvError::Lagged(missed)) => Reply::Lagged { missed },
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if write_reply(&mut writer, reply).await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_daemon_user_are_always_allowed() {
        let access = Access { daemon_uid: 990, group: None };
        assert!(authorize(0, 0, &access).is_ok());
        assert!(authorize(990, 990, &access).is_ok());
        let refused = authorize(65534, 65534, &access).expect_err("nobody");
        assert!(refused.starts_with("permission denied: uid 65534"), "{refused}");
        assert!(refused.contains("no [control] group"), "{refused}");
    }

    #[test]
    fn a_control_group_admits_its_primary_members_only() {
        // `nogroup` is nobody's primary group on Debian.
        let access = Access { daemon_uid: 990, group: Some("nogroup".into()) };
        if nix::unistd::Group::from_name("nogroup").ok().flatten().is_some() {
            assert!(authorize(65534, 65534, &access).is_ok());
        }
        let other = Access { daemon_uid: 990, group: Some("no-such-group-here".into()) };
        let refused = authorize(65534, 65534, &other).expect_err("no such group");
        assert!(refused.contains("\"no-such-group-here\""), "{refused}");
    }
}
