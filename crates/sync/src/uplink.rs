//! The MQTT session task: owns the client and its event loop, publishes the
//! outbox in order, removes entries on PUBACK, keeps the retained status.

use crate::{EVENT_STREAM, Topics, encode_status};
use gate_core::{GateId, SiteId, UnixMillis};
use gate_store::Store;
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Publishes in flight at once. Bounded so a long backlog does not flood the
/// client's queue, large enough to drain a backlog at broker speed.
const WINDOW: usize = 64;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the session needs to know.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    pub topic_prefix: String,
    pub site: SiteId,
    pub gate: GateId,
    pub store_path: PathBuf,
    /// The daemon's version, reported in the status message.
    pub version: String,
    /// How often the retained status is refreshed while connected.
    pub status_interval: Duration,
}

/// A device's health for the status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    pub name: String,
    pub connected: bool,
    pub errors: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Shared counters of the uplink, read by status and diagnostics.
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connections: AtomicU64,
    pub connection_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Tracked {
    Outbox(i64),
    Status,
}

/// Per-connection bookkeeping: which publish got which packet id.
#[derive(Debug, Default)]
struct InFlight {
    /// Publishes handed to the client, waiting for their packet id, in order.
    awaiting_pkid: VecDeque<Tracked>,
    by_pkid: HashMap<u16, Tracked>,
    /// Outbox entries published and not yet acknowledged.
    outbox_outstanding: usize,
    /// Highest outbox id handed to the client on this connection.
    cursor: i64,
}

fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the MQTT session until `shutdown`; `outbox_changed` is notified
/// whenever an entry was appended. `devices` reports device health for the
/// status message. Never returns early: a broker that is down is retried with
/// backoff while the outbox keeps growing on disk.
pub async fn run_sync(
    settings: SyncSettings,
    outbox_changed: Arc<Notify>,
    devices: Arc<dyn Fn() -> Vec<DeviceReport> + Send + Sync>,
    link: Arc<LinkState>,
    shutdown: CancellationToken,
) {
    let store = loop {
        match Store::open(&settings.store_path) {
            Ok(store) => break store,
            Err(e) => {
                warn!(error = %e, "uplink cannot open the store; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(BACKOFF_MAX) => {}
                }
            }
        }
    };
    let topics = Topics::new(&settings.topic_prefix, &settings.site, &settings.gate);
    let status = |online: bool, store: &Store| {
        let outbox = store.outbox_stats().unwrap_or_default();
        encode_status(
            online,
            settings.site.as_str(),
            settings.gate.as_str(),
            &settings.version,
            outbox,
            &devices(),
            now_ms(),
        )
    };

    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(true)
        .set_inflight(WINDOW as u16)
        .set_last_will(LastWill::new(
            &topics.status,
            status(false, &store),
            QoS::AtLeastOnce,
            true,
        ));
    // Room for a full window plus status messages: try_publish never blocks
    // the task that also drives the event loop.
    let (client, mut eventloop) = AsyncClient::new(options, WINDOW * 2 + 8);

    let mut inflight = InFlight::default();
    let mut backoff = BACKOFF_START;
    let mut status_tick = tokio::time::interval(settings.status_interval);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let broker = format!("{}:{}", settings.host, settings.port);

    loop {
        let connected = link.connected.load(Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    info!(%broker, "connected to the broker");
                    link.connected.store(true, Ordering::Relaxed);
                    link.connections.fetch_add(1, Ordering::Relaxed);
                    backoff = BACKOFF_START;
                    // Clean session: nothing of the last connection survives,
                    // so publishing restarts at the oldest queued entry.
                    inflight = InFlight::default();
                    publish_status(&client, &topics, status(true, &store), &mut inflight);
                    pump(&client, &store, &mut inflight, &link);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(tracked) = inflight.awaiting_pkid.pop_front() {
                        inflight.by_pkid.insert(pkid, tracked);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    match inflight.by_pkid.remove(&ack.pkid) {
                        Some(Tracked::Outbox(id)) => {
                            if let Err(e) = store.outbox_remove(id) {
                                warn!(error = %e, "could not remove an acknowledged outbox entry; it will be sent again");
                            }
                            link.acked.fetch_add(1, Ordering::Relaxed);
                            inflight.outbox_outstanding = inflight.outbox_outstanding.saturating_sub(1);
                            pump(&client, &store, &mut inflight, &link);
                        }
                        Some(Tracked::Status) | None => {}
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    link.connection_errors.fetch_add(1, Ordering::Relaxed);
                    if connected {
                        warn!(%broker, error = %e, "lost the broker; events queue in the outbox");
                    } else {
                        debug!(%broker, error = %e, "broker still unreachable");
                    }
                    if link.connections.load(Ordering::Relaxed) == 0 && link.connection_errors.load(Ordering::Relaxed) == 1 {
                        warn!(%broker, error = %e, "broker unreachable; decisions go on and events queue in the outbox until it returns");
                    }
                    link.connected.store(false, Ordering::Relaxed);
                    inflight = InFlight::default();
                    if !matches!(e, ConnectionError::RequestsDone) {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            },
            _ = outbox_changed.notified(), if connected => pump(&client, &store, &mut inflight, &link),
            _ = status_tick.tick(), if connected => publish_status(&client, &topics, status(true, &store), &mut inflight),
        }
    }

    // A clean stop says so in the retained status, instead of leaving the
    // last will to the broker's keep-alive timeout.
    if link.connected.load(Ordering::Relaxed) {
        let _ = client.try_publish(
            &topics.status,
            QoS::AtLeastOnce,
            true,
            status(false, &store),
        );
        let _ = client.try_disconnect();
        let drain = async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
    link.connected.store(false, Ordering::Relaxed);
    info!("uplink stopped");
}

fn publish_status(
    client: &AsyncClient,
    topics: &Topics,
    payload: Vec<u8>,
    inflight: &mut InFlight,
) {
    match client.try_publish(&topics.status, QoS::AtLeastOnce, true, payload) {
        Ok(()) => inflight.awaiting_pkid.push_back(Tracked::Status),
        Err(e) => debug!(error = %e, "status not published this time"),
    }
}

/// Hands queued outbox entries to the client until the window is full.
fn pump(client: &AsyncClient, store: &Store, inflight: &mut InFlight, link: &LinkState) {
    while inflight.outbox_outstanding < WINDOW {
        let room = WINDOW - inflight.outbox_outstanding;
        let batch = match store.outbox_after(inflight.cursor, room) {
            Ok(batch) => batch,
            Err(e) => {
                warn!(error = %e, "cannot read the outbox");
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        for entry in batch {
            if let Err(e) = client.try_publish(&entry.topic, QoS::AtLeastOnce, false, entry.payload)
            {
                // The client queue is full: the rest waits for acknowledgements.
                debug!(error = %e, "publish deferred");
                return;
            }
            if entry.stream == EVENT_STREAM {
                debug!(seq = entry.seq, "event handed to the broker connection");
            }
            inflight.awaiting_pkid.push_back(Tracked::Outbox(entry.id));
            inflight.cursor = entry.id;
            inflight.outbox_outstanding += 1;
            link.published.fetch_add(1, Ordering::Relaxed);
        }
    }
}
