//! `gate-platform ingest`: one replica of the consumer group. Subscribes with
//! MQTT shared subscriptions to every gate's events, alerts and status,
//! decodes `gate.v1`, writes each batch in one PostgreSQL transaction and
//! acknowledges its messages (manual PUBACK) only after the commit.
//!
//! Two tasks: the MQTT task owns the session and only polls and forwards;
//! the writer owns the batches and the database. A replica killed at any
//! moment loses nothing: what it did not acknowledge the broker delivers
//! again (to it on its return, its session being persistent), and the
//! unique `event_id` / `alert_id` turn redeliveries into no-ops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::PlatformConfig;
use crate::db::DbError;
use crate::seqtrack::SeqState;
use crate::wire;

/// Largest message accepted (an event is a few hundred bytes).
const MAX_PACKET: usize = 1 << 20;
/// Requests (acknowledgements, subscriptions) queued for the MQTT task.
const INFLIGHT: usize = 1000;

/// What a replica counted since it started.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub received: AtomicU64,
    /// Events and alerts newly inserted (not already present).
    pub stored: AtomicU64,
    /// Events and alerts already present (redeliveries, republished outboxes).
    pub duplicates: AtomicU64,
    pub statuses: AtomicU64,
    /// Messages that could not be decoded or contradict their topic:
    /// acknowledged (a poison message must not loop) and logged.
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    /// Transactions retried after a deadlock, serialization failure or a
    /// lost connection.
    pub retries: AtomicU64,
    pub gaps_opened: AtomicU64,
    /// Gates' `SyncRequest`s received, and the snapshots sent for them.
    pub sync_requests: AtomicU64,
    pub snapshots_sent: AtomicU64,
    /// Set once the broker acknowledged the subscriptions.
    pub subscribed: AtomicU64,
}

/// The MQTT topics of one prefix.
#[derive(Debug, Clone)]
pub struct Filters {
    pub events: String,
    pub alerts: String,
    pub status: String,
    pub sync: String,
}

impl Filters {
    pub fn shared(group: &str, prefix: &str) -> Self {
        Filters {
            events: format!("$share/{group}/{prefix}/+/+/events"),
            alerts: format!("$share/{group}/{prefix}/+/alerts"),
            status: format!("$share/{group}/{prefix}/+/+/status"),
            sync: format!("$share/{group}/{prefix}/+/+/sync"),
        }
    }
}

/// What a topic is, once the prefix is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    Events { site: String, gate: String },
    Alerts { site: String },
    Status { site: String, gate: String },
    Sync { site: String, gate: String },
}

/// Parses `{prefix}/{site}/{gate}/events`, `{prefix}/{site}/alerts`,
/// `{prefix}/{site}/{gate}/status`.
pub fn classify(prefix: &str, topic: &str) -> Option<TopicKind> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [site, gate, "events"] => Some(TopicKind::Events { site: (*site).into(), gate: (*gate).into() }),
        [site, "alerts"] => Some(TopicKind::Alerts { site: (*site).into() }),
        [site, gate, "status"] => Some(TopicKind::Status { site: (*site).into(), gate: (*gate).into() }),
        [site, gate, "sync"] => Some(TopicKind::Sync { site: (*site).into(), gate: (*gate).into() }),
        _ => None,
    }
}

/// One message handed from the MQTT task to the writer.
struct Incoming {
    publish: Publish,
    /// The connection it came on: an acknowledgement is only sent on it.
    generation: u64,
}

/// A decoded message, ready for the database.
enum Decoded {
    Event(pb::GateEvent),
    Alert(pb::Alert),
    Status(pb::GateStatus),
    /// An empty retained message on a status topic: an operator (or the
    /// fleet simulation) removed a decommissioned gate's retained status.
    StatusCleared,
    Sync(pb::SyncRequest),
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Decodes a message and checks it against its topic.
fn decode(prefix: &str, publish: &Publish) -> Result<Decoded, String> {
    let kind = classify(prefix, &publish.topic).ok_or("unexpected topic")?;
    let bytes = publish.payload.as_ref();
    match kind {
        TopicKind::Events { site, gate } => {
            let e = pb::GateEvent::decode(bytes).map_err(|e| format!("not a GateEvent: {e}"))?;
            if e.site_id != site || e.gate_id != gate {
                return Err("site or gate differs from the topic's".into());
            }
            if e.event_id.is_empty() || e.event_id.len() > 64 || e.seq == 0 || e.seq > i64::MAX as u64 {
                return Err("missing event_id or seq".into());
            }
            Ok(Decoded::Event(e))
        }
        TopicKind::Alerts { site } => {
            let a = pb::Alert::decode(bytes).map_err(|e| format!("not an Alert: {e}"))?;
            if a.site_id != site || a.gate_id.is_empty() || a.gate_id.contains('/') {
                return Err("site differs from the topic's, or no gate".into());
            }
            if a.alert_id.is_empty() || a.alert_id.len() > 64 || a.seq > i64::MAX as u64 {
                return Err("missing alert_id".into());
            }
            Ok(Decoded::Alert(a))
        }
        TopicKind::Status { .. } if bytes.is_empty() => Ok(Decoded::StatusCleared),
        TopicKind::Status { site, gate } => {
            let s = pb::GateStatus::decode(bytes).map_err(|e| format!("not a GateStatus: {e}"))?;
            if s.site_id != site || s.gate_id != gate {
                return Err("site or gate differs from the topic's".into());
            }
            Ok(Decoded::Status(s))
        }
        TopicKind::Sync { site, gate } => {
            let r = pb::SyncRequest::decode(bytes).map_err(|e| format!("not a SyncRequest: {e}"))?;
            if r.site_id != site || r.gate_id != gate {
                return Err("site or gate differs from the topic's".into());
            }
            Ok(Decoded::Sync(r))
        }
    }
}

/// Runs one ingest replica until `shutdown`. `replica` names it in the
/// client id (`{client_id}-{replica}`), which must be stable across its
/// restarts so the broker hands back what it had not acknowledged.
pub async fn run_ingest(
    config: &PlatformConfig,
    pool: Pool,
    replica: Option<&str>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) -> Result<(), DbError> {
    // Every route's secret is read before anything is consumed: a route
    // that cannot sign must stop the start, not lose alerts later.
    let routes = config
        .routes
        .iter()
        .map(crate::routes::Route::load)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DbError::Invalid(e.to_string()))?;
    // The signing key too: a replica that could not answer SyncRequests
    // or send heartbeats must say so at start.
    let signer = match &config.signing {
        Some(s) => {
            Some(Arc::new(gate_envelope::Signer::from_file(&s.key_file).map_err(|e| DbError::Invalid(e.to_string()))?))
        }
        None => None,
    };
    crate::db::migrate(&pool).await?;
    let shared = Arc::new(config.clone());
    let client_id = match replica {
        Some(r) => format!("{}-{r}", config.mqtt.client_id),
        None => config.mqtt.client_id.clone(),
    };
    // TLS files and the password are read here: one unusable stops the start.
    let mut options = config.mqtt.options(&client_id).map_err(|e| DbError::Invalid(e.to_string()))?;
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(100);
    let (client, eventloop) = AsyncClient::new(options, INFLIGHT);
    let filters = Filters::shared(&config.ingest.group, &config.mqtt.topic_prefix);
    let generation = Arc::new(AtomicU64::new(0));
    // Unbounded on purpose: every message in it is unacknowledged, so the
    // broker's inflight limit bounds it; a bounded queue could stop the MQTT
    // task while the writer waits for that task to send its acks.
    let (tx, rx) = mpsc::unbounded_channel();
    info!(client_id, group = %config.ingest.group, "ingest starting");
    let mqtt = tokio::spawn(mqtt_task(
        eventloop,
        client.clone(),
        filters,
        tx,
        generation.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let sweeper = tokio::spawn(sweep_gaps(
        pool.clone(),
        config.ingest.gap_timeout,
        config.routes.clone(),
        stats.clone(),
        shutdown.clone(),
    ));
    let progress = tokio::spawn(crate::progress::run_progress(pool.clone(), shutdown.clone()));
    let dispatcher = tokio::spawn(crate::routes::run_dispatcher(
        pool.clone(),
        routes,
        Arc::new(crate::routes::DeliveryStats::default()),
        shutdown.clone(),
    ));
    let heartbeats = signer
        .clone()
        .map(|signer| tokio::spawn(send_heartbeats(pool.clone(), signer, shared.clone(), shutdown.clone())));
    let writer = Writer {
        sync: signer.map(|signer| SyncAnswers { pool: pool.clone(), signer, config: shared }),
        pool,
        routes: config.routes.clone(),
        client: client.clone(),
        prefix: config.mqtt.topic_prefix.clone(),
        batch_max: config.ingest.batch_max,
        batch_wait: config.ingest.batch_wait,
        generation,
        stats,
    };
    let result = writer.run(rx, shutdown.clone()).await;
    shutdown.cancel();
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), mqtt).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), sweeper).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), progress).await;
    let _ = tokio::time::timeout(crate::routes::HTTP_TIMEOUT, dispatcher).await;
    if let Some(h) = heartbeats {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    result
}

/// Owns the MQTT session: polls, (re)subscribes on every connection,
/// forwards publishes to the writer. Never awaits the database.
async fn mqtt_task(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Filters,
    tx: mpsc::UnboundedSender<Incoming>,
    generation: Arc<AtomicU64>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                let g = generation.fetch_add(1, Ordering::SeqCst) + 1;
                info!(generation = g, session_present = ack.session_present, "connected to the broker");
                // Subscribing again is harmless on a resumed session and
                // needed on a new one.
                for filter in [&filters.events, &filters.alerts, &filters.status, &filters.sync] {
                    if let Err(e) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                        warn!(error = %e, filter, "could not queue a subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                stats.subscribed.fetch_add(1, Ordering::Relaxed);
                info!(pkid = ack.pkid, "subscription acknowledged");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                let incoming = Incoming { publish, generation: generation.load(Ordering::SeqCst) };
                if tx.send(incoming).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// What answering a gate's `SyncRequest` needs.
#[derive(Clone)]
struct SyncAnswers {
    pool: Pool,
    signer: Arc<gate_envelope::Signer>,
    config: Arc<PlatformConfig>,
}

struct Writer {
    /// `None` without `[signing]`: requests are logged, not answered.
    sync: Option<SyncAnswers>,
    pool: Pool,
    routes: Vec<crate::config::RouteConfig>,
    client: AsyncClient,
    prefix: String,
    batch_max: usize,
    batch_wait: Duration,
    generation: Arc<AtomicU64>,
    stats: Arc<IngestStats>,
}

impl Writer {
    async fn run(&self, mut rx: mpsc::UnboundedReceiver<Incoming>, shutdown: CancellationToken) -> Result<(), DbError> {
        let mut batch: Vec<Incoming> = Vec::with_capacity(self.batch_max);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.batch_wait;
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(m)) => batch.push(m),
                        _ => break,
                    },
                }
            }
            // A batch is written even during shutdown only if it can finish;
            // otherwise it is left unacknowledged for redelivery.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.write_with_retries(&batch) => r?,
            }
            let current = self.generation.load(Ordering::SeqCst);
            for m in batch.drain(..) {
                // A message from an older connection is redelivered by the
                // broker on this one under another packet id: acknowledging
                // its old id here could acknowledge a different message.
                if m.generation == current {
                    let _ = self.client.ack(&m.publish).await;
                }
            }
        }
    }

    /// Decodes a batch (rejecting what does not decode, once) and writes
    /// the rest; a batch that PostgreSQL refuses as bad data (a NUL in a
    /// string, a date out of range: a hostile or broken publisher) is
    /// written again message by message, so the one bad message is
    /// rejected and counted and the rest of the batch lands. Without this
    /// the same batch would come back from the broker after every restart.
    async fn write_with_retries(&self, batch: &[Incoming]) -> Result<(), DbError> {
        let mut decoded = Vec::with_capacity(batch.len());
        for m in batch {
            match decode(&self.prefix, &m.publish) {
                Ok(Decoded::StatusCleared) => debug!(topic = %m.publish.topic, "retained status cleared"),
                Ok(d) => decoded.push((m, d)),
                Err(why) => self.reject(m, &why),
            }
        }
        match self.write_retrying(&decoded).await {
            Err(e) if is_bad_data(&e) => {
                warn!(messages = decoded.len(), error = %pg_summary(&e), "batch refused as bad data; writing it message by message");
                for item in &decoded {
                    match self.write_retrying(std::slice::from_ref(item)).await {
                        Ok(()) => {}
                        Err(e) if is_bad_data(&e) => self.reject(item.0, &pg_summary(&e)),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            r => r,
        }
    }

    fn reject(&self, m: &Incoming, why: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(topic = %m.publish.topic, bytes = m.publish.payload.len(), why, "message rejected");
    }

    async fn write_retrying(&self, batch: &[(&Incoming, Decoded)]) -> Result<(), DbError> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.write(batch).await {
                Ok(()) => return Ok(()),
                Err(e) if is_transient(&e) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "batch not written, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write(&self, batch: &[(&Incoming, Decoded)]) -> Result<(), DbError> {
        let started = Instant::now();
        let mut events = Vec::new();
        let mut alerts = Vec::new();
        let mut statuses = Vec::new();
        let mut syncs = Vec::new();
        for (_, d) in batch {
            match d {
                Decoded::Event(e) => events.push(e),
                Decoded::Alert(a) => alerts.push(a),
                Decoded::Status(s) => statuses.push(s),
                Decoded::Sync(r) => syncs.push(r.clone()),
                Decoded::StatusCleared => {}
            }
        }
        let mut client = self.pool.get().await?;
        if !events.is_empty() {
            ensure_staging(&client).await?;
        }
        let tx = client.transaction().await?;
        let now = now_ms();
        // Only appends: replicas write side by side. The seq bookkeeping is applied from the inbox
        // rows written here, off this path (`progress`).
        let (new_events, dup_events) = insert_events(&tx, &events).await?;
        let new_alerts = insert_alerts(&tx, &alerts).await?;
        crate::routes::enqueue(&tx, &self.routes, &new_alerts).await?;
        let (new_alerts, dup_alerts) = (new_alerts.len() as u64, (alerts.len() - new_alerts.len()) as u64);
        tx.commit().await?;
        // Statuses in a transaction of their own, after the rows: their
        // gate-row locks are then held for a few statements, not for the
        // whole insert, so the other replicas' statuses hardly wait. A crash
        // between the two commits acknowledges nothing; the redelivery
        // finds the rows stored and applies the statuses.
        if !statuses.is_empty() {
            let tx = client.transaction().await?;
            update_statuses(&tx, &statuses).await?;
            tx.commit().await?;
        }
        let s = &self.stats;
        s.stored.fetch_add(new_events + new_alerts, Ordering::Relaxed);
        s.duplicates.fetch_add(dup_events + dup_alerts, Ordering::Relaxed);
        s.statuses.fetch_add(statuses.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        self.answer(syncs, now);
        debug!(
            messages = batch.len(),
            new_events,
            dup_events,
            new_alerts,
            statuses = statuses.len(),
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }
}

impl Writer {
    /// Answers SyncRequests off the writer's path: a snapshot takes the
    /// site's downlink lock and waits for the broker, which must not hold
    /// up the events. A request lost with a replica is asked again by the
    /// gate (it repeats a request that stays unanswered).
    fn answer(&self, requests: Vec<pb::SyncRequest>, received_at_ms: i64) {
        for request in requests {
            self.stats.sync_requests.fetch_add(1, Ordering::Relaxed);
            let Some(sync) = self.sync.clone() else {
                warn!(
                    site = request.site_id,
                    gate = request.gate_id,
                    "SyncRequest received, but [signing] is not set: not answered"
                );
                continue;
            };
            let stats = self.stats.clone();
            tokio::spawn(async move {
                let d = crate::downlink::Downlink { pool: &sync.pool, signer: &sync.signer, config: &sync.config };
                match crate::downlink::answer_sync(&d, &request, received_at_ms).await {
                    Ok(true) => {
                        stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(site = request.site_id, gate = request.gate_id, error = %e, "SyncRequest not answered")
                    }
                }
            });
        }
    }
}

/// Every second, the heartbeats whose turn it is.
async fn send_heartbeats(
    pool: Pool,
    signer: Arc<gate_envelope::Signer>,
    config: Arc<PlatformConfig>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let d = crate::downlink::Downlink { pool: &pool, signer: &signer, config: &config };
        if let Err(e) = crate::downlink::heartbeat_round(&d).await {
            warn!(error = %e, "heartbeat round failed; retrying");
        }
    }
}

/// Errors worth another try: deadlock, serialization failure, a connection
/// lost or a pool that could not hand one out.
fn is_transient(e: &DbError) -> bool {
    match e {
        DbError::Postgres(pg) => {
            pg.is_closed()
                || pg.code().is_some_and(|c| {
                    let c = c.code();
                    c == "40P01" || c == "40001" || c.starts_with("08") || c == "57P01"
                })
        }
        DbError::Pool(_) => true,
        _ => false,
    }
}

/// A data exception (SQLSTATE class 22): this input can never be stored
/// as it is, however often it is retried.
fn is_bad_data(e: &DbError) -> bool {
    matches!(e, DbError::Postgres(pg) if pg.code().is_some_and(|c| c.code().starts_with("22")))
}

/// The SQLSTATE and message of a PostgreSQL error, without its detail and
/// context lines, which can quote the offending data (a subject, a name).
fn pg_summary(e: &DbError) -> String {
    match e {
        DbError::Postgres(pg) => match pg.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => pg.to_string(),
        },
        other => other.to_string(),
    }
}

/// The columns of the per-connection staging table the events are copied
/// into (binary `COPY`), in the order they are written.
const STAGING_TYPES: &[Type] = &[
    Type::INT4,       // ord: the batch's key order, kept by the insert
    Type::TEXT,       // event_id
    Type::TEXT,       // site_id
    Type::TEXT,       // gate_id
    Type::INT8,       // seq
    Type::INT8,       // occurred_at (Unix ms)
    Type::TEXT,       // kind
    Type::TEXT,       // decision
    Type::TEXT,       // reason
    Type::TEXT,       // category
    Type::TEXT,       // credential_type
    Type::TEXT,       // subject
    Type::TEXT,       // person_id
    Type::TEXT,       // lane
    Type::TEXT,       // direction
    Type::TEXT,       // side
    Type::TEXT,       // mode
    Type::TEXT,       // policy_version
    Type::TEXT_ARRAY, // tags
    Type::TEXT,       // pass_id
    Type::TEXT,       // operator
    Type::TEXT,       // note
    Type::TEXT,       // alarm
    Type::TEXT,       // facts (JSON text)
    Type::TEXT,       // explains_stream
    Type::TEXT,       // explains
];

/// Creates the session's staging table once per connection (it lives as
/// long as the connection; its rows only until each commit). Run outside
/// the batch's transaction; the notice of an existing table is not wanted.
async fn ensure_staging(client: &tokio_postgres::Client) -> Result<(), DbError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TEMP TABLE IF NOT EXISTS ingest_events_staging (
                 ord int, id text, site text, gate text, seq bigint, at bigint, kind text, decision text,
                 reason text, category text, credential_type text, subject text, person_id text, lane text,
                 direction text, side text, mode text, policy_version text, tags text[], pass_id text,
                 operator text, note text, alarm text, facts text, explains_stream text, explains text
             ) ON COMMIT DELETE ROWS",
        )
        .await?;
    Ok(())
}

/// Inserts events, ignoring those already stored, and one inbox row
/// holding the new ones' numbers; returns (new, duplicates). The rows go
/// to PostgreSQL as a binary `COPY` into the session's staging table, then
/// one `INSERT .. SELECT`: a third of the time the same rows took as 25
/// parameter arrays unnested by the server.
async fn insert_events(tx: &Transaction<'_>, events: &[&pb::GateEvent]) -> Result<(u64, u64), DbError> {
    if events.is_empty() {
        return Ok((0, 0));
    }
    let mut sorted: Vec<&pb::GateEvent> = events.to_vec();
    sorted.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    sorted.dedup_by(|a, b| a.event_id == b.event_id);
    let sink = tx.copy_in("COPY ingest_events_staging FROM STDIN (FORMAT binary)").await?;
    let writer = BinaryCopyInWriter::new(sink, STAGING_TYPES);
    futures_util::pin_mut!(writer);
    for (ord, e) in sorted.iter().enumerate() {
        let r = wire::EventRow::from(*e);
        let (explains_stream, explains) = wire::dropped_list(e).unzip();
        let ord = ord as i32;
        writer
            .as_mut()
            .write(&[
                &ord,
                &r.event_id,
                &r.site_id,
                &r.gate_id,
                &r.seq,
                &r.occurred_at_ms,
                &r.kind,
                &r.decision,
                &r.reason,
                &r.category,
                &r.credential_type,
                &r.subject,
                &r.person_id,
                &r.lane,
                &r.direction,
                &r.side,
                &r.mode,
                &r.policy_version,
                &r.tags,
                &r.pass_id,
                &r.operator,
                &r.note,
                &r.alarm,
                &r.facts_json,
                &explains_stream,
                &explains,
            ])
            .await?;
    }
    writer.finish().await?;
    // Rows go in key order: two replicas inserting the same event ids
    // (a redelivery) wait on each other in one order, never in a cycle.
    let inserted: i64 = tx
        .query_one(
            "WITH new AS (
             INSERT INTO events (event_id, site_id, gate_id, seq, occurred_at, kind, decision, reason, category,
                 credential_type, subject, person_id, lane, direction, side, mode, policy_version, tags, pass_id,
                 operator, note, alarm, facts, stored_at)
             SELECT u.id, u.site, u.gate, u.seq, to_timestamp(u.at::float8 / 1000), u.kind, u.decision, u.reason,
                 u.category, u.credential_type, u.subject, u.person_id, u.lane, u.direction, u.side, u.mode,
                 u.policy_version, u.tags, u.pass_id, u.operator, u.note, u.alarm, u.facts::jsonb, clock_timestamp()
             FROM ingest_events_staging u ORDER BY u.ord
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id, site_id, gate_id, seq),
             inbox AS (
             INSERT INTO seq_inbox_batches (site_ids, gate_ids, streams, seqs, occurred_at_ms, explains_stream, explains)
             SELECT array_agg(new.site_id), array_agg(new.gate_id), array_agg('events'::text), array_agg(new.seq),
                 array_agg(x.at), array_agg(x.explains_stream), array_agg(x.explains)
             FROM new JOIN ingest_events_staging x ON x.id = new.event_id
             HAVING count(*) > 0)
             SELECT count(*) FROM new",
            &[],
        )
        .await?
        .get(0);
    let inserted = inserted as u64;
    Ok((inserted, events.len() as u64 - inserted))
}

/// Inserts the gates' alerts, ignoring those already stored; returns the
/// new ones (to be routed).
async fn insert_alerts(tx: &Transaction<'_>, alerts: &[&pb::Alert]) -> Result<Vec<crate::routes::AlertFacts>, DbError> {
    let mut new = Vec::new();
    let mut sorted: Vec<&pb::Alert> = alerts.to_vec();
    sorted.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    for a in &sorted {
        let r = wire::AlertRow::from(*a);
        let inserted = tx
            .execute(
                "INSERT INTO alerts (alert_id, source, kind, site_id, gate_id, seq, occurred_at, reason, category,
                     subject, person_id, alarm, mode, repeat_count, first_occurred_at, facts)
                 VALUES ($1, 'gate', $2, $3, $4, $5, to_timestamp($6::float8 / 1000), $7, $8, $9, $10, $11, $12, $13,
                     to_timestamp($14::float8 / 1000), $15::text::jsonb)
                 ON CONFLICT (alert_id) DO NOTHING",
                &[
                    &r.alert_id,
                    &r.kind,
                    &r.site_id,
                    &r.gate_id,
                    &r.seq,
                    &(r.occurred_at_ms as f64),
                    &r.reason,
                    &r.category,
                    &r.subject,
                    &r.person_id,
                    &r.alarm,
                    &r.mode,
                    &r.repeat_count,
                    &(r.first_occurred_at_ms as f64),
                    &r.facts_json,
                ],
            )
            .await?;
        if inserted == 1
            && let Some(seq) = r.seq
        {
            tx.execute(
                "INSERT INTO seq_inbox_batches (site_ids, gate_ids, streams, seqs, occurred_at_ms, explains_stream, explains)
                 VALUES (ARRAY[$1::text], ARRAY[$2::text], ARRAY['alerts'], ARRAY[$3::bigint], ARRAY[$4::bigint],
                     ARRAY[NULL::text], ARRAY[NULL::text])",
                &[&r.site_id, &r.gate_id, &seq, &r.occurred_at_ms],
            )
            .await?;
        }
        if inserted == 1 {
            new.push(crate::routes::AlertFacts {
                alert_id: r.alert_id,
                site_id: r.site_id,
                kind: r.kind,
                reason: r.reason,
                category: r.category,
            });
        }
    }
    Ok(new)
}

/// The status fields of the fleet table. A status older than the stored
/// one is ignored, except that "offline" (gated's last will, dated when it
/// connected) always lands.
///
/// One statement per round, not per status: a replica that starts is
/// handed every gate's retained status at once, and hundreds of single-row
/// upserts in a row held the writer for seconds. Round k carries the k-th
/// status of each gate in the batch, so each gate's statuses still apply
/// in the order they came; within a round the gates are in key order, so
/// two writers lock them in the same order and never wait in a cycle
/// (every gate of a later round was locked by the first).
async fn update_statuses(tx: &Transaction<'_>, statuses: &[&pb::GateStatus]) -> Result<(), DbError> {
    for round in status_rounds(statuses) {
        let col = |f: &dyn Fn(&pb::GateStatus) -> i64| round.iter().map(|s| f(s)).collect::<Vec<i64>>();
        let sites: Vec<&str> = round.iter().map(|s| s.site_id.as_str()).collect();
        let gates: Vec<&str> = round.iter().map(|s| s.gate_id.as_str()).collect();
        let online: Vec<bool> = round.iter().map(|s| s.online).collect();
        let versions: Vec<&str> = round.iter().map(|s| s.version.as_str()).collect();
        let policies: Vec<&str> = round.iter().map(|s| s.policy_version.as_str()).collect();
        let devices: Vec<String> = round.iter().map(|s| wire::devices_json(s)).collect();
        let reported: Vec<f64> = round.iter().map(|s| s.reported_at_ms as f64).collect();
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        // A status older than the stored one changes nothing but, when
        // it says offline (a last will is dated when its gate connected),
        // the online flag.
        tx.execute(
            "INSERT INTO gates AS g (site_id, gate_id, online, version, outbox_depth, oldest_queued_age_ms,
                 policy_version, identity_version, health_version, trust_version, devices,
                 status_reported_at, status_received_at)
             SELECT u.site, u.gate, u.online, u.version, u.depth, u.oldest, u.policy, u.identity, u.health,
                 u.trust, u.devices::jsonb, to_timestamp(u.reported / 1000), now()
             FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::bigint[], $6::bigint[], $7::text[],
                 $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::float8[])
               AS u(site, gate, online, version, depth, oldest, policy, identity, health, trust, devices, reported)
             ON CONFLICT (site_id, gate_id) DO UPDATE SET
                 online = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.online ELSE false END,
                 version = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.version ELSE g.version END,
                 outbox_depth = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.outbox_depth ELSE g.outbox_depth END,
                 oldest_queued_age_ms = CASE WHEN g.status_reported_at IS NULL
                     OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.oldest_queued_age_ms ELSE g.oldest_queued_age_ms END,
                 policy_version = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.policy_version ELSE g.policy_version END,
                 identity_version = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.identity_version ELSE g.identity_version END,
                 health_version = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.health_version ELSE g.health_version END,
                 trust_version = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.trust_version ELSE g.trust_version END,
                 devices = CASE WHEN g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.devices ELSE g.devices END,
                 status_reported_at = CASE WHEN g.status_reported_at IS NULL
                     OR excluded.status_reported_at >= g.status_reported_at
                     THEN excluded.status_reported_at ELSE g.status_reported_at END,
                 status_received_at = now()
             WHERE g.status_reported_at IS NULL OR excluded.status_reported_at >= g.status_reported_at
                 OR NOT excluded.online",
            &[
                &sites,
                &gates,
                &online,
                &versions,
                &col(&|s| clamp(s.outbox_depth)),
                &col(&|s| s.oldest_queued_age_ms),
                &policies,
                &col(&|s| clamp(s.identity_version)),
                &col(&|s| clamp(s.health_version)),
                &col(&|s| clamp(s.trust_version)),
                &devices,
                &reported,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Splits a batch's statuses into rounds: round k holds the k-th status
/// of every gate that has one, each round in (site, gate) order.
fn status_rounds<'a>(statuses: &[&'a pb::GateStatus]) -> Vec<Vec<&'a pb::GateStatus>> {
    let mut by_gate: std::collections::BTreeMap<(&str, &str), Vec<&pb::GateStatus>> = Default::default();
    for &s in statuses {
        by_gate.entry((s.site_id.as_str(), s.gate_id.as_str())).or_default().push(s);
    }
    let depth = by_gate.values().map(Vec::len).max().unwrap_or(0);
    (0..depth).map(|k| by_gate.values().filter_map(|list| list.get(k).copied()).collect()).collect()
}

/// Every few seconds, turns holes older than the gap timeout into `gaps`
/// rows and platform alerts. Rows locked by a progress round are skipped
/// (SKIP LOCKED) and looked at on the next sweep.
async fn sweep_gaps(
    pool: Pool,
    timeout: Duration,
    routes: Vec<crate::config::RouteConfig>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) {
    let period = (timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        match sweep_once(&pool, timeout, &routes, now_ms()).await {
            Ok(n) if n > 0 => {
                stats.gaps_opened.fetch_add(n, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "gap sweep failed; retrying on the next round"),
        }
    }
}

/// One sweep at `now_ms`; returns the number of gaps opened.
pub async fn sweep_once(
    pool: &Pool,
    timeout: Duration,
    routes: &[crate::config::RouteConfig],
    now_ms: i64,
) -> Result<u64, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT site_id, gate_id, stream, contiguous, max_seq, holes FROM seq_streams
             WHERE holes <> '[]' ORDER BY site_id, gate_id, stream FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?;
    let mut opened = 0;
    for row in rows {
        let (site, gate, stream): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let mut state = SeqState::from_row(row.get(3), row.get(4), &row.get::<_, Value>(5));
        let due = state.due(now_ms, timeout.as_millis() as i64);
        if due.is_empty() {
            continue;
        }
        for i in due {
            let (from, to, opened_at) = (state.holes[i].from, state.holes[i].to, state.holes[i].opened_at_ms);
            let alert_id = uuid::Uuid::new_v4().to_string();
            let gap_id: i64 = tx
                .query_one(
                    "INSERT INTO gaps (site_id, gate_id, stream, from_seq, to_seq, opened_at, detected_at, alert_id)
                     VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), to_timestamp($7::float8 / 1000), $8)
                     RETURNING gap_id",
                    &[
                        &site,
                        &gate,
                        &stream,
                        &(from as i64),
                        &(to as i64),
                        &(opened_at as f64),
                        &(now_ms as f64),
                        &alert_id,
                    ],
                )
                .await?
                .get(0);
            let detail = format!("{stream} seq {from}..={to} missing since {opened_at} (Unix ms)");
            let facts = serde_json::json!({"stream": stream, "from_seq": from, "to_seq": to, "gap_id": gap_id});
            tx.execute(
                "INSERT INTO alerts (alert_id, source, kind, site_id, gate_id, occurred_at, detail, facts)
                 VALUES ($1, 'platform', 'gap', $2, $3, to_timestamp($4::float8 / 1000), $5, $6)",
                &[&alert_id, &site, &gate, &(now_ms as f64), &detail, &facts],
            )
            .await?;
            let routed = crate::routes::AlertFacts {
                alert_id: alert_id.clone(),
                site_id: site.clone(),
                kind: "gap".into(),
                reason: None,
                category: None,
            };
            crate::routes::enqueue(&tx, routes, std::slice::from_ref(&routed)).await?;
            warn!(site, gate, stream, from, to, gap_id, "gap: events missing past the timeout");
            state.holes[i].gap_id = Some(gap_id);
            opened += 1;
        }
        tx.execute(
            "UPDATE seq_streams SET holes = $4 WHERE site_id = $1 AND gate_id = $2 AND stream = $3",
            &[&site, &gate, &stream, &state.holes_json()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_classified_by_their_shape() {
        let table = [
            ("village/s1/g1/events", Some(TopicKind::Events { site: "s1".into(), gate: "g1".into() })),
            ("village/s1/alerts", Some(TopicKind::Alerts { site: "s1".into() })),
            ("village/s1/g1/status", Some(TopicKind::Status { site: "s1".into(), gate: "g1".into() })),
            ("village/s1/g1/sync", Some(TopicKind::Sync { site: "s1".into(), gate: "g1".into() })),
            ("village/s1/g1/health/req", None),
            ("villagex/s1/g1/events", None),
            ("other/s1/g1/events", None),
        ];
        for (topic, expected) in table {
            assert_eq!(classify("village", topic), expected, "{topic}");
        }
    }

    #[test]
    fn statuses_are_split_into_rounds_that_keep_each_gates_order() {
        let status = |site: &str, gate: &str, at: i64| pb::GateStatus {
            site_id: site.into(),
            gate_id: gate.into(),
            reported_at_ms: at,
            ..Default::default()
        };
        let batch = [status("s2", "g1", 1), status("s1", "g9", 2), status("s2", "g1", 3), status("s1", "g1", 4)];
        let refs: Vec<&pb::GateStatus> = batch.iter().collect();
        let rounds: Vec<Vec<(&str, &str, i64)>> = status_rounds(&refs)
            .iter()
            .map(|r| r.iter().map(|s| (s.site_id.as_str(), s.gate_id.as_str(), s.reported_at_ms)).collect())
            .collect();
        assert_eq!(
            rounds,
            vec![vec![("s1", "g1", 4), ("s1", "g9", 2), ("s2", "g1", 1)], vec![("s2", "g1", 3)]],
            "round 1 in key order, the second status of s2/g1 after its first"
        );
        assert!(status_rounds(&[]).is_empty());
    }

    #[test]
    fn a_message_that_contradicts_its_topic_is_rejected() {
        let event = pb::GateEvent {
            event_id: "e1".into(),
            seq: 1,
            site_id: "s1".into(),
            gate_id: "g2".into(),
            ..Default::default()
        };
        let publish = Publish::new("village/s1/g1/events", QoS::AtLeastOnce, event.encode_to_vec());
        assert!(decode("village", &publish).is_err());
        let publish = Publish::new("village/s1/g2/events", QoS::AtLeastOnce, event.encode_to_vec());
        assert!(matches!(decode("village", &publish), Ok(Decoded::Event(_))));
        let garbage = Publish::new("village/s1/g2/events", QoS::AtLeastOnce, vec![0xff, 0xff, 0xff]);
        assert!(decode("village", &garbage).is_err());
    }
}
