//! The MQTT session task: owns the client and its event loop, publishes the
//! outbox in order, removes entries on PUBACK (in batches: one transaction,
//! one fsync, for many acknowledgements), keeps the retained status, and
//! hands downlink messages to `downlink`.
//!
//! The task never touches SQLite itself: its connection lives on its own
//! thread ([`StoreThread`]), and downlink messages are applied there whole.

use crate::downlink::{self, DownlinkCounters, EventContext, Reply};
use crate::encode::SiteState;
use crate::tls::BrokerAuth;
use crate::{Topics, encode_status};
use gate_core::{Direction, GateId, Lane, Mode, SiteId, UnixMillis};
use gate_proto::v1 as pb;
use gate_store::{Store, StoreThread};
use prost::Message;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Publishes in flight at once (fewer when the broker's Receive Maximum
/// says so). Bounded so a long backlog does not flood the client's queue,
/// large enough to drain a backlog at broker speed: the loop stops for an
/// outbox read and for the removal of a batch of acknowledged entries once
/// per half window, so a small window made those stops the drain's limit
/// (a quarter of a raw publisher's rate at 64).
const WINDOW: usize = 256;
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often freshness and the clock are judged.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// The largest packet this client accepts: the largest downlink message plus
/// room for the topic and properties.
const MAX_INCOMING_PACKET: u32 = (downlink::MAX_DOWNLINK_BYTES + 1024) as u32;
/// Acknowledged outbox entries removed in one transaction; fewer wait at
/// most [`ACK_FLUSH_INTERVAL`]. Removing is not what frees the window (an
/// acknowledgement does), so the batch can be four windows: a backlog
/// draining at 30,000 events a second commits (and fsyncs) about 30 times
/// a second instead of 230, which a card's commit had to queue behind.
/// After a crash at most this many (and 50 ms worth) are sent again;
/// consumers deduplicate by `event_id`.
const ACK_BATCH: usize = WINDOW * 4;
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

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
    pub lane: Lane,
    pub direction: Direction,
    pub store_path: PathBuf,
    /// The daemon's version, reported in the status message.
    pub version: String,
    /// The policy version, reported in status and mode-change events.
    pub policy_version: String,
    /// The mode before any was ever set.
    pub default_mode: Mode,
    /// How often the retained status is refreshed while connected.
    pub status_interval: Duration,
    /// The platform keys downlink envelopes must be signed with, as
    /// configured (`Config::envelope_keys`); a signed rotation may replace them.
    pub platform_keys: Vec<gate_envelope::KeySpec>,
    /// `[platform] stale_after_s`: no fresh signed heartbeat this long is `platform_stale`.
    pub stale_after: Duration,
    /// `[platform] clock_ahead_s`: a wall clock this far past the platform's is `clock_ahead`.
    pub clock_ahead: Duration,
    /// The policy version after a configuration reload, when reloads happen.
    pub policy_updates: Option<tokio::sync::watch::Receiver<String>>,
    /// TLS and credentials (`[mqtt] tls`, `ca_file`, `cert_file`,
    /// `key_file`, `username`, `password_file`).
    pub auth: BrokerAuth,
    /// Changes at every reload (SIGHUP): the broker's files are read again
    /// and used from the next connection on.
    pub reloads: Option<tokio::sync::watch::Receiver<u64>>,
    /// The configured platform keys after a reload: the downlink trust is
    /// rebuilt from them (a changed configured set also ends a rotation).
    pub platform_key_updates: Option<tokio::sync::watch::Receiver<Vec<gate_envelope::KeySpec>>>,
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
    /// Downlink subscriptions the broker granted on this connection (reset
    /// on every connect and disconnect): platform orders published before
    /// all of them are granted may never reach this gate.
    pub subscriptions_granted: AtomicU64,
    /// Downlink subscriptions the broker refused (an ACL, say), in all.
    pub subscriptions_refused: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub connections: AtomicU64,
    pub connection_errors: AtomicU64,
    pub downlink: DownlinkCounters,
    /// Why the last connection attempt failed (TLS refusals included), for
    /// `gatectl status`; cleared when a connection is accepted.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// The store's state for the status message (set by the daemon's
    /// store monitor): `ok`, `low`, `full`, `busy`, `io`, `corrupt`.
    pub store_state: std::sync::Mutex<String>,
    /// Free bytes in the state folder's file system.
    pub disk_free_bytes: AtomicU64,
    /// Freshness of the platform and the trusted time floor.
    pub platform: crate::watch::PlatformWatch,
}

impl LinkState {
    /// Connected, and every downlink topic's subscription granted.
    pub fn downlink_subscribed(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.subscriptions_granted.load(Ordering::Relaxed) >= DOWNLINK_TOPIC_COUNT as u64
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }
}

#[derive(Debug, Clone, Copy)]
enum Tracked {
    Outbox(i64),
    Other,
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
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How many topics the gate subscribes to (see [`downlink_topics`]).
const DOWNLINK_TOPIC_COUNT: usize = 8;

/// Every topic the platform commands this gate on, one subscription each.
fn downlink_topics(topics: &Topics) -> [String; DOWNLINK_TOPIC_COUNT] {
    [
        topics.mode.clone(),
        topics.identity.clone(),
        topics.health.clone(),
        topics.trust.clone(),
        topics.health_resp.clone(),
        topics.keys.clone(),
        topics.reset.clone(),
        topics.heartbeat.clone(),
    ]
}

struct Session<'a> {
    settings: &'a SyncSettings,
    topics: Topics,
    client: AsyncClient,
    store: StoreThread,
    inflight: InFlight,
    /// Outbox entries the broker acknowledged, not yet removed.
    acked: Vec<i64>,
    link: Arc<LinkState>,
    devices: Arc<dyn Fn() -> Vec<DeviceReport> + Send + Sync>,
    context: EventContext,
    /// The platform keys, site and gate envelopes are checked against;
    /// used on the store's thread, where downlink messages are applied.
    trust: Arc<std::sync::Mutex<crate::signed::DownlinkTrust>>,
    /// Freshness bookkeeping, updated where downlink messages are applied.
    freshness: Arc<std::sync::Mutex<crate::watch::Freshness>>,
    /// Online health checks waiting for the platform, by correlation id.
    health_pending: HashMap<String, tokio::sync::oneshot::Sender<crate::HealthAnswer>>,
}

impl Session<'_> {
    /// A reload changed the configured platform keys: the downlink is
    /// checked against the new set from the next message on (a rotation
    /// made over the old set gives way to it).
    async fn retrust(&mut self, updates: &mut Option<tokio::sync::watch::Receiver<Vec<gate_envelope::KeySpec>>>) {
        let Some(configured) = updates.as_mut().map(|rx| rx.borrow_and_update().clone()) else { return };
        let (site, gate) = (self.settings.site.to_string(), self.settings.gate.to_string());
        match self.store.call(move |s| Ok(downlink_trust(configured, site, gate, s))).await {
            Ok(trust) => *self.trust.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = trust,
            Err(e) => warn!(error = %e, "cannot apply the reloaded platform keys; the ones in force stay"),
        }
    }

    /// The policy version in force: the latest reload's, or the start-up one.
    fn policy_version(&self) -> String {
        match &self.settings.policy_updates {
            Some(updates) => updates.borrow().clone(),
            None => self.settings.policy_version.clone(),
        }
    }

    async fn status(&self, online: bool) -> Vec<u8> {
        let now = now_ms();
        let default_mode = self.settings.default_mode;
        // One visit to the store thread; what cannot be read is reported as
        // unknown (defaults), the status still goes out.
        let read = self
            .store
            .call(move |s| {
                let mode = match s.mode_schedule() {
                    Ok(Some(schedule)) => schedule.at(now),
                    _ => default_mode,
                };
                Ok((
                    mode,
                    s.identity_state().unwrap_or_default(),
                    s.health_state().unwrap_or_default(),
                    s.trust_list_version().unwrap_or(0),
                    s.outbox_stats().unwrap_or_default(),
                ))
            })
            .await;
        let (mode, identity, health, trust_version, outbox) = read.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the store for the status message");
            (default_mode, Default::default(), Default::default(), 0, Default::default())
        });
        let store_state = self.link.store_state.lock().map(|s| s.clone()).unwrap_or_default();
        let state = SiteState {
            mode,
            policy_version: self.policy_version(),
            identity,
            health,
            trust_version,
            store_state,
            disk_free_bytes: self.link.disk_free_bytes.load(Ordering::Relaxed),
        };
        encode_status(
            online,
            self.settings.site.as_str(),
            self.settings.gate.as_str(),
            &self.settings.version,
            outbox,
            &(self.devices)(),
            &state,
            now,
        )
    }

    fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
        match self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => self.inflight.awaiting_pkid.push_back(Tracked::Other),
            Err(e) => debug!(topic, error = %e, "not published this time"),
        }
    }

    async fn publish_status(&mut self) {
        let payload = self.status(true).await;
        let topic = self.topics.status.clone();
        self.publish(&topic, payload, true);
    }

    fn request_resync(&mut self, local_version: u64, reason: &str) {
        self.link.downlink.resync_requests.fetch_add(1, Ordering::Relaxed);
        let request = pb::SyncRequest {
            site_id: self.settings.site.to_string(),
            gate_id: self.settings.gate.to_string(),
            local_version,
            reason: reason.to_owned(),
            requested_at_ms: now_ms(),
        };
        let topic = self.topics.sync.clone();
        self.publish(&topic, request.encode_to_vec(), false);
    }

    async fn on_connected(&mut self) {
        self.inflight = InFlight::default();
        // A new session: checks asked on the old one will not be answered.
        self.health_pending.clear();
        for topic in downlink_topics(&self.topics) {
            if let Err(e) = self.client.try_subscribe(&topic, QoS::AtLeastOnce) {
                warn!(topic, error = %e, "could not subscribe");
            }
        }
        self.publish_status().await;
        // Deltas published while we were away are lost with the clean
        // session: say where we are, so the platform sends what is missing.
        let local = self.store.call(|s| s.identity_state()).await.map(|s| s.version).unwrap_or(0);
        self.request_resync(local, "connect");
        self.pump().await;
    }

    async fn on_publish(&mut self, topic: &str, payload: impl AsRef<[u8]> + Send + 'static) -> bool {
        self.context.policy_version = self.policy_version();
        // Applied whole on the store's thread.
        let (topics, context, link, keys, fresh) =
            (self.topics.clone(), self.context.clone(), self.link.clone(), self.trust.clone(), self.freshness.clone());
        let owned_topic = topic.to_owned();
        let now = now_ms();
        let handled = self
            .store
            .call(move |store| {
                let mut trust = keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut fresh = fresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(downlink::handle(
                    store,
                    &topics,
                    &context,
                    &link.downlink,
                    &mut trust,
                    (&mut fresh, &link.platform),
                    &owned_topic,
                    payload.as_ref(),
                    now,
                ))
            })
            .await;
        let reply = handled.unwrap_or_else(|e| {
            warn!(topic, error = %e, "the store could not take a downlink message; dropped");
            Reply::None
        });
        match reply {
            Reply::None => false,
            Reply::OutboxChanged => true,
            Reply::Resync { local_version, reason } => {
                self.request_resync(local_version, reason);
                false
            }
            Reply::HealthResync { local_version } => {
                self.request_resync(local_version, "health_gap");
                false
            }
            Reply::HealthAnswer { correlation_id, answer } => {
                if let Some(waiting) = self.health_pending.remove(&correlation_id) {
                    let _ = waiting.send(answer);
                }
                false
            }
        }
    }

    /// Asks the platform for one person's record; the answer comes back
    /// through `on_publish`. Offline, the query is dropped at once so the
    /// decision loop falls back without waiting.
    fn ask_health(&mut self, query: crate::HealthQuery) {
        if !self.link.connected.load(Ordering::Relaxed) {
            return;
        }
        // Checks nobody waits for any more (the decision timed out) go.
        self.health_pending.retain(|_, tx| !tx.is_closed());
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let request = pb::HealthRequest {
            correlation_id: correlation_id.clone(),
            person_id: query.person_id,
            site_id: self.settings.site.to_string(),
            gate_id: self.settings.gate.to_string(),
            requested_at_ms: now_ms(),
        };
        let topic = self.topics.health_req.clone();
        self.publish(&topic, request.encode_to_vec(), false);
        self.health_pending.insert(correlation_id, query.reply);
    }

    /// Judges freshness and the clock (every few seconds, connected or not:
    /// a freeze is most likely while the link is down). A condition that
    /// begins is logged and sent as an alert; the floor is persisted.
    async fn watch_platform(&mut self) {
        let gate = self.settings.gate.to_string();
        let Ok(held) = self.store.call(move |s| Ok(downlink::held_versions(s, &gate))).await else { return };
        let at = std::time::Instant::now();
        let wall = now_ms();
        let (transitions, floor) = {
            let mut fresh = self.freshness.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            fresh.check_behind(held, at);
            let transitions = fresh.evaluate(&self.link.platform, wall, at);
            (transitions, fresh.floor_to_persist(&self.link.platform))
        };
        let mut alerted = false;
        for t in transitions {
            let facts: String = t.facts.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            if t.began {
                warn!(alarm = t.alarm, facts = facts.trim_end(), "alert: the gate can no longer vouch for this");
                alerted |= self.platform_alert(t.alarm, t.facts, wall).await;
            } else {
                info!(alarm = t.alarm, "condition cleared");
            }
        }
        if let Some(floor) = floor
            && let Err(e) = self.store.call(move |s| s.meta_set(crate::watch::FLOOR_KEY, &floor.to_string())).await
        {
            warn!(error = %e, "cannot persist the trusted time floor");
        }
        if alerted && self.link.connected.load(Ordering::Relaxed) {
            self.pump().await;
        }
    }

    /// Queues an alert about the platform or the clock; `true` when queued.
    async fn platform_alert(&mut self, alarm: &'static str, facts: Vec<(String, String)>, wall: UnixMillis) -> bool {
        let now = self.link.platform.trusted_now(wall);
        let default_mode = self.settings.default_mode;
        let context = self.context.clone();
        let written = self
            .store
            .call(move |s| {
                let mode = match s.mode_schedule() {
                    Ok(Some(schedule)) => schedule.at(now),
                    _ => default_mode,
                };
                let record = crate::AlertRecord {
                    alert_id: uuid::Uuid::new_v4().to_string(),
                    site_id: context.site_id,
                    gate_id: context.gate_id,
                    occurred_at_ms: now,
                    subject: String::new(),
                    person_id: None,
                    category: None,
                    reason: None,
                    alarm: Some(alarm.to_owned()),
                    facts,
                    repeat_count: 1,
                    first_occurred_at_ms: now,
                    mode,
                };
                s.append_event(crate::ALERT_STREAM, gate_store::Priority::Important, now, |seq| {
                    crate::encode_alert(&record, seq)
                })
            })
            .await;
        match written {
            Ok(_) => true,
            Err(e) => {
                warn!(alarm, error = %e, "could not record the alert");
                false
            }
        }
    }

    /// Hands queued outbox entries to the client until the window is full.
    async fn pump(&mut self) {
        while self.inflight.outbox_outstanding < WINDOW {
            let room = WINDOW - self.inflight.outbox_outstanding;
            let cursor = self.inflight.cursor;
            let batch = match self.store.call(move |s| s.outbox_after(cursor, room)).await {
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
                // The outbox keeps streams; which topic each goes to is
                // decided here, with the prefix in force now.
                let Some(topic) = self.topics.for_stream(&entry.stream).map(str::to_owned) else {
                    warn!(stream = %entry.stream, seq = entry.seq, "outbox entry of an unknown stream; skipped");
                    self.inflight.cursor = entry.id;
                    continue;
                };
                if let Err(e) = self.client.try_publish(topic, QoS::AtLeastOnce, false, entry.payload) {
                    // The client queue is full: the rest waits for acknowledgements.
                    debug!(error = %e, "publish deferred");
                    return;
                }
                debug!(stream = %entry.stream, seq = entry.seq, "queued entry handed to the broker connection");
                self.inflight.awaiting_pkid.push_back(Tracked::Outbox(entry.id));
                self.inflight.cursor = entry.id;
                self.inflight.outbox_outstanding += 1;
                self.link.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn on_puback(&mut self, pkid: u16) {
        if let Some(Tracked::Outbox(id)) = self.inflight.by_pkid.remove(&pkid) {
            self.acked.push(id);
            self.link.acked.fetch_add(1, Ordering::Relaxed);
            self.inflight.outbox_outstanding = self.inflight.outbox_outstanding.saturating_sub(1);
            if self.acked.len() >= ACK_BATCH {
                self.flush_acks().await;
            }
            // Refilled by half windows: one outbox read for many acks.
            if self.inflight.outbox_outstanding <= WINDOW / 2 {
                self.pump().await;
            }
        }
    }

    /// Removes the acknowledged entries, in one transaction. One that is
    /// not removed (the store failed) is sent again later: at least once.
    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acked);
        if let Err(e) = self.store.call(move |s| s.outbox_remove(&ids)).await {
            warn!(error = %e, "could not remove acknowledged outbox entries; they will be sent again");
        }
    }
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
    mut health_queries: tokio::sync::mpsc::Receiver<crate::HealthQuery>,
    shutdown: CancellationToken,
) {
    let store = loop {
        // Background: publishing a backlog or applying a snapshot must not
        // take the CPU a card's decision needs.
        match StoreThread::open_with(&settings.store_path, "uplink", gate_store::Urgency::Background).await {
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
    let (trust, floor) = {
        let settings = settings.clone();
        let (configured, site, gate) =
            (settings.platform_keys.clone(), settings.site.to_string(), settings.gate.to_string());
        match store.call(move |s| Ok((downlink_trust(configured, site, gate, s), crate::watch::load_floor(s)))).await {
            Ok(read) => read,
            Err(e) => {
                warn!(error = %e, "uplink cannot read its platform keys; not started");
                return;
            }
        }
    };
    link.platform.raise_floor(floor);
    // A stop during the clean-up behind a snapshot's switch leaves the
    // tables it replaced, people it dropped among them: freed before going on.
    if let Err(e) = store.call(|s| s.free_replaced_identity_tables()).await {
        warn!(error = %e, "cannot free the identity tables the last snapshot replaced");
    }
    let freshness =
        crate::watch::Freshness::new(settings.stale_after, settings.clock_ahead, std::time::Instant::now(), floor);
    let topics = Topics::new(&settings.topic_prefix, &settings.site, &settings.gate);
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(WINDOW as u16)
        // MQTT 5 Maximum Packet Size, announced at CONNECT: the broker drops
        // a larger message for this client instead of sending it, so no
        // message of any size on a subscribed topic (a retained one comes
        // again on every connection) can break the session and stall the
        // uplink. The 3.1.1 client could only fail the connection.
        .set_max_packet_size(Some(MAX_INCOMING_PACKET));
    // The TLS files were checked before the daemon started; should they have
    // gone bad since, say so and wait for a reload rather than connect
    // without them.
    let mut reloads = settings.reloads.clone();
    loop {
        match settings.auth.load() {
            Ok(loaded) => {
                options.set_transport(loaded.transport);
                if let Some((user, password)) = loaded.credentials {
                    options.set_credentials(user, password);
                }
                break;
            }
            Err(e) => {
                error!(error = %e, "broker TLS settings unusable; events queue in the outbox until they are fixed and reloaded");
                link.set_last_error(Some(e.to_string()));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    Ok(()) = changed(&mut reloads) => {}
                }
            }
        }
    }
    // Room for a full window plus status and resync messages: try_publish
    // never blocks the task that also drives the event loop.
    let (client, mut eventloop) = AsyncClient::new(options.clone(), WINDOW * 2 + 16);
    let context = EventContext {
        site_id: settings.site.to_string(),
        gate_id: settings.gate.to_string(),
        lane: settings.lane,
        direction: settings.direction,
        policy_version: settings.policy_version.clone(),
    };
    let mut session = Session {
        settings: &settings,
        topics: topics.clone(),
        client,
        store,
        inflight: InFlight::default(),
        acked: Vec::new(),
        link: link.clone(),
        devices,
        context,
        trust: Arc::new(std::sync::Mutex::new(trust)),
        freshness: Arc::new(std::sync::Mutex::new(freshness)),
        health_pending: HashMap::new(),
    };
    // The last will is fixed at connect time; it says offline with the
    // state at start, which is what the platform needs to know.
    eventloop.options.set_last_will(LastWill::new(
        &topics.status,
        session.status(false).await,
        QoS::AtLeastOnce,
        true,
        None,
    ));

    // A reloaded policy shows in the retained status at once.
    let mut policy_updates = settings.policy_updates.clone();
    let mut key_updates = settings.platform_key_updates.clone();
    let mut backoff = BACKOFF_START;
    let mut status_tick = tokio::time::interval(settings.status_interval);
    let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let broker = format!("{}:{}", settings.host, settings.port);
    let mut last_logged_error: Option<String> = None;
    let mut ack_flush = tokio::time::interval(ACK_FLUSH_INTERVAL);
    ack_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let connected = link.connected.load(Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = eventloop.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    info!(%broker, "connected to the broker");
                    link.subscriptions_granted.store(0, Ordering::Relaxed);
                    link.connected.store(true, Ordering::Relaxed);
                    link.connections.fetch_add(1, Ordering::Relaxed);
                    link.set_last_error(None);
                    last_logged_error = None;
                    backoff = BACKOFF_START;
                    // Clean session: nothing of the last connection survives,
                    // so publishing restarts at the oldest queued entry.
                    session.on_connected().await;
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(tracked) = session.inflight.awaiting_pkid.pop_front() {
                        session.inflight.by_pkid.insert(pkid, tracked);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => session.on_puback(ack.pkid).await,
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for code in &ack.return_codes {
                        if matches!(code, SubscribeReasonCode::Success(_)) {
                            link.subscriptions_granted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            link.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                            warn!(%broker, reason = ?code, "the broker refused a downlink subscription; platform orders on it cannot arrive");
                        }
                    }
                    if link.downlink_subscribed() {
                        debug!(%broker, "every downlink subscription granted");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // MQTT 5 topics are bytes on the wire; a topic that is
                    // not UTF-8 matches none of ours and is counted as unknown.
                    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                    if session.on_publish(&topic, publish.payload).await {
                        session.pump().await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    link.connection_errors.fetch_add(1, Ordering::Relaxed);
                    let error = describe(&e, settings.auth.tls.is_some());
                    // A new reason is worth a WARN (the broker came back
                    // but refuses our certificate); the same one again is not.
                    let new_reason = last_logged_error.as_deref() != Some(error.as_str());
                    if connected {
                        warn!(%broker, %error, "lost the broker; events queue in the outbox");
                    } else if new_reason {
                        warn!(%broker, %error, "broker unreachable; decisions go on and events queue in the outbox until it returns");
                    } else {
                        debug!(%broker, %error, "broker still unreachable");
                    }
                    link.set_last_error(Some(error.clone()));
                    last_logged_error = Some(error);
                    link.connected.store(false, Ordering::Relaxed);
                    link.subscriptions_granted.store(0, Ordering::Relaxed);
                    session.inflight = InFlight::default();
                    if !matches!(e, ConnectionError::RequestsDone) {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            },
            _ = outbox_changed.notified(), if connected => session.pump().await,
            _ = ack_flush.tick(), if !session.acked.is_empty() => session.flush_acks().await,
            _ = watch_tick.tick() => session.watch_platform().await,
            Some(query) = health_queries.recv() => session.ask_health(query),
            Ok(()) = changed(&mut reloads) => match settings.auth.load() {
                Ok(loaded) => {
                    eventloop.options.set_transport(loaded.transport);
                    if let Some((user, password)) = loaded.credentials {
                        eventloop.options.set_credentials(user, password);
                    }
                    info!("broker certificates and credentials read again; used from the next connection");
                }
                Err(e) => {
                    warn!(error = %e, "broker certificates could not be read again; the ones read before stay in use");
                }
            },
            Ok(()) = changed(&mut key_updates) => session.retrust(&mut key_updates).await,
            Ok(()) = changed(&mut policy_updates) => {
                if connected {
                    session.publish_status().await;
                }
            }
            _ = status_tick.tick(), if connected => {
                session.publish_status().await;
                // A snapshot chunk that never came is noticed here, not on a message.
                let now = now_ms();
                if let Ok(Some(crate::IdentityOutcome::Resync { local_version, reason })) =
                    session.store.call(move |s| Ok(crate::check_stalled(s, now))).await
                {
                    session.request_resync(local_version, reason);
                }
            }
        }
    }

    // A clean stop says so in the retained status, instead of leaving the
    // last will to the broker's keep-alive timeout.
    session.flush_acks().await;
    if link.connected.load(Ordering::Relaxed) {
        let offline = session.status(false).await;
        let _ = session.client.try_publish(&topics.status, QoS::AtLeastOnce, true, offline);
        let _ = session.client.try_disconnect();
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
    // The store connection is closed before the task ends.
    let closed = session.store.closed();
    drop(session);
    closed.wait().await;
    info!("uplink stopped");
}

/// Resolves at the next change of `updates`; never when there are none or
/// their sender is gone.
async fn changed<T>(updates: &mut Option<tokio::sync::watch::Receiver<T>>) -> Result<(), ()> {
    match updates {
        Some(rx) => match rx.changed().await {
            Ok(()) => Ok(()),
            Err(_) => {
                *updates = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// A connection failure as a technician needs it: TLS refusals say which
/// side's certificate to look at.
fn describe(error: &ConnectionError, tls: bool) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = if !tls {
        None
    } else if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") {
        Some("the broker's certificate does not chain to [mqtt] ca_file")
    } else if lower.contains("notvalidforname") {
        Some("the broker's certificate does not name [mqtt] host")
    } else if lower.contains("certificaterequired") {
        Some("the broker requires a client certificate: set [mqtt] cert_file and key_file")
    } else if lower.contains("unknownca") || lower.contains("badcertificate") {
        Some("the broker refuses this gate's client certificate ([mqtt] cert_file): not signed by a CA it trusts")
    } else if lower.contains("alert") || lower.contains("reset") || lower.contains("closed") || lower.contains("eof") {
        Some("the broker ended the TLS session: it may refuse this gate's client certificate ([mqtt] cert_file)")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

/// The keys in force (a persisted rotation or the configured set), this
/// site and gate.
fn downlink_trust(
    configured: Vec<gate_envelope::KeySpec>,
    site: String,
    gate: String,
    store: &Store,
) -> crate::signed::DownlinkTrust {
    let (keys, source) = crate::signed::effective_keys(store, &configured).unwrap_or_else(|e| {
        warn!(error = %e, "cannot read rotated platform keys; using the configured ones");
        (configured.clone(), crate::signed::KeySource::Config)
    });
    if keys.is_empty() {
        warn!(
            "no platform signing key is configured ([platform] signing_keys): every downlink message will be refused"
        );
    }
    let verifier = gate_envelope::Verifier::new(keys);
    info!(keys = %verifier.key_ids().collect::<Vec<_>>().join(","), ?source, "platform keys for downlink messages");
    crate::signed::DownlinkTrust { verifier, site, gate, configured }
}
