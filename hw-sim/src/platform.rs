//! A stand-in for the central platform on MQTT: publishes identity
//! snapshots and deltas (`gate.v1.IdentityBatch`) and the site mode, records
//! what the gates send up (events, alerts, status, sync requests), checks
//! each gate's `seq` for gaps and duplicates, and answers a `SyncRequest` by
//! publishing the latest snapshot again. Used by the demo and the tests.
//!
//! It knows the site key, as the real platform does, to compute credential
//! keys: HMAC-SHA256(site key, kind || 0x00 || value), `kind` being the
//! credential kind's lowercase name (`id_number`). Written from the schema
//! and that rule, not from the daemon's code.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use gate_proto::v1 as pb;
use hmac::{Hmac, Mac};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::mask_id;

/// Identity chunks are large; the gate accepts up to 8 MiB.
const MAX_PACKET: usize = 16 << 20;
/// The site's default offset from UTC (China), for CSV dates.
pub const CHINA_OFFSET_MINUTES: i32 = 8 * 60;

/// Where the platform connects and what it signs with.
#[derive(Clone)]
pub struct PlatformConfig {
    pub host: String,
    pub port: u16,
    /// `{prefix}/{site}/...` topics.
    pub prefix: String,
    pub site: String,
    pub site_key: [u8; 32],
    pub client_id: String,
    /// Answer a gate's `SyncRequest` by publishing the latest snapshot again.
    pub answer_sync: bool,
    /// Print one line per received message on stdout (the command line).
    pub print: bool,
    /// The platform key every downlink message is sealed with; `None`
    /// publishes bare payloads (what an intruder would send).
    pub signing: Option<Arc<PlatformKey>>,
    /// Send each person's name in clear instead of masked (`陈*国`): a
    /// platform that does not minimise what it sends, so tests can show the
    /// gate masks a name before storing it anyway. Off by default: a gate
    /// never needs more than the masked form.
    pub clear_names: bool,
}

/// The platform's Ed25519 signing key and the id gates know it by.
pub struct PlatformKey {
    key: ed25519_dalek::SigningKey,
    pub key_id: String,
    /// The last envelope counter used: counters are strictly increasing
    /// across every stream and, taken from the clock in microseconds when
    /// that is higher, across runs of the program too.
    counter: AtomicU64,
}

impl fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// What an envelope signature covers before the body bytes.
pub const ENVELOPE_DOMAIN: &[u8] = b"gate.v1.envelope\0";

impl PlatformKey {
    /// From the 32-byte seed, with the key id gates list it under; `None`
    /// for the id tools derive: the first 8 bytes of SHA-256 of the public
    /// key, in hex.
    pub fn from_seed(seed: [u8; 32], key_id: Option<&str>) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let key_id = key_id.map_or_else(|| derived_key_id(&key.verifying_key().to_bytes()), str::to_owned);
        PlatformKey { key, key_id, counter: AtomicU64::new(0) }
    }

    /// Reads a key file of 64 hex digits, refused when group or others may read it.
    pub fn from_file(path: &std::path::Path, key_id: Option<&str>) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("signing key {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "signing key {} has mode {mode:04o}; restrict it with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading signing key {}", path.display()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| anyhow::anyhow!("signing key {}: expected 64 hex characters", path.display()))?;
        Ok(PlatformKey::from_seed(seed, key_id))
    }

    /// "KEYID:HEX", as a gate lists it in `[platform] signing_keys`.
    pub fn key_spec(&self) -> String {
        format!("{}:{}", self.key_id, hex::encode(self.key.verifying_key().to_bytes()))
    }

    /// The next counter: above the last one and at least the clock in µs.
    pub fn next_counter(&self) -> u64 {
        let clock = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut last = self.counter.load(Ordering::Relaxed);
        loop {
            let next = clock.max(last + 1);
            match self.counter.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A `SignedEnvelope` around `payload` for `site` (and `gate`, empty for
    /// the whole site) on `stream`, with the next counter, issued now.
    pub fn seal(&self, site: &str, gate: &str, stream: &str, payload: &[u8]) -> Vec<u8> {
        self.seal_with(site, gate, stream, self.next_counter(), now_ms(), payload)
    }

    /// The same with a chosen counter and time (tests of replay and clocks).
    pub fn seal_with(
        &self,
        site: &str,
        gate: &str,
        stream: &str,
        counter: u64,
        issued_at_ms: i64,
        payload: &[u8],
    ) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        let body = pb::EnvelopeBody {
            site_id: site.to_owned(),
            gate_id: gate.to_owned(),
            stream: stream.to_owned(),
            counter,
            issued_at_ms,
            payload: payload.to_vec(),
        }
        .encode_to_vec();
        let mut signed = ENVELOPE_DOMAIN.to_vec();
        signed.extend_from_slice(&body);
        let signature = self.key.sign(&signed).to_bytes().to_vec();
        pb::SignedEnvelope { body, key_id: self.key_id.clone(), signature }.encode_to_vec()
    }
}

/// The key id tools derive for a public key: SHA-256 of its 32 bytes, the
/// first 8 bytes in hex.
pub fn derived_key_id(public: &[u8; 32]) -> String {
    use sha2::Digest;
    hex::encode(&Sha256::digest(public)[..8])
}

impl PlatformConfig {
    /// Defaults: prefix `village`, answering sync requests, quiet.
    pub fn new(host: &str, port: u16, site: &str, site_key: [u8; 32]) -> Self {
        PlatformConfig {
            host: host.to_owned(),
            port,
            prefix: "village".to_owned(),
            site: site.to_owned(),
            site_key,
            client_id: format!("hw-sim-platform-{}-{}", std::process::id(), now_ms() % 100_000),
            answer_sync: true,
            print: false,
            signing: None,
            clear_names: false,
        }
    }
}

impl fmt::Debug for PlatformConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .field("site", &self.site)
            .field("site_key", &"<secret>")
            .field("client_id", &self.client_id)
            .field("answer_sync", &self.answer_sync)
            .field("signing", &self.signing)
            .finish()
    }
}

/// One person as the platform holds them: the ID number in clear (the
/// platform's side of the line), sent only as a keyed hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PlatformPerson {
    pub person_id: String,
    pub category: pb::Category,
    pub id_number: String,
    pub name: String,
    pub valid_from_ms: i64,
    pub valid_to_ms: i64,
}

impl fmt::Debug for PlatformPerson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformPerson")
            .field("person_id", &self.person_id)
            .field("category", &self.category)
            .field("id_number", &mask_id(&self.id_number))
            .field("valid_from_ms", &self.valid_from_ms)
            .field("valid_to_ms", &self.valid_to_ms)
            .finish_non_exhaustive()
    }
}

/// A `GateEvent` and the gate whose topic it came on.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub gate: String,
    pub event: pb::GateEvent,
}

/// Which per-gate sequence a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Events,
    Alerts,
}

/// Numbers missing from a gate's sequence: `from..=to` never arrived
/// (between the first and the highest number received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqGap {
    pub gate: String,
    pub stream: Stream,
    pub from: u64,
    pub to: u64,
}

/// A `seq` received again with a different `event_id`: two events claim
/// the same number. (A redelivery, same `event_id`, is only counted.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqDuplicate {
    pub gate: String,
    pub stream: Stream,
    pub seq: u64,
}

#[derive(Debug, Default)]
struct Tracker {
    seen: BTreeSet<u64>,
}

#[derive(Debug, Clone)]
struct Latest {
    people: Arc<Vec<PlatformPerson>>,
    version: u64,
    chunk_size: usize,
}

#[derive(Debug, Default)]
struct State {
    events: Vec<ReceivedEvent>,
    alerts: Vec<pb::Alert>,
    statuses: BTreeMap<String, pb::GateStatus>,
    sync_requests: Vec<(String, pb::SyncRequest)>,
    trackers: HashMap<(String, Stream), Tracker>,
    /// `seq` per `event_id`/`alert_id` seen, to tell redeliveries from conflicts.
    ids: HashMap<(String, Stream), HashMap<u64, String>>,
    duplicates: Vec<SeqDuplicate>,
    event_ids: HashSet<String>,
    alert_ids: HashSet<String>,
    redeliveries: u64,
    malformed: u64,
    latest: Option<Latest>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// QoS 1 publishes handed to the client, and PUBACKs received.
    requested: AtomicU64,
    acked: AtomicU64,
    connected: AtomicBool,
    /// Set by `disconnect`, so the connection's end is not reported as a failure.
    closing: AtomicBool,
    subscribed: AtomicBool,
    republishing: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the state half-written in a way
        // that matters to a simulator: keep going with what is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The simulated platform: one MQTT connection, a task that drives it.
pub struct Platform {
    config: Arc<PlatformConfig>,
    client: AsyncClient,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Platform {
    /// Connects and subscribes to what the gates of the site publish;
    /// returns once the subscriptions are acknowledged.
    pub async fn connect(config: PlatformConfig) -> anyhow::Result<Platform> {
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, eventloop) = AsyncClient::new(options, 64);
        let platform = Platform {
            config: Arc::new(config),
            client,
            shared: Arc::new(Shared::default()),
            stop: CancellationToken::new(),
        };
        tokio::spawn(drive(
            eventloop,
            platform.client.clone(),
            platform.config.clone(),
            platform.shared.clone(),
            platform.stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !platform.shared.subscribed.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                platform.stop.cancel();
                bail!("no broker at {}:{} (or no SUBACK) within 10 s", platform.config.host, platform.config.port);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(platform)
    }

    /// `{prefix}/{site}/identity`.
    pub fn identity_topic(&self) -> String {
        format!("{}/{}/identity", self.config.prefix, self.config.site)
    }

    /// The encoded `IdentityBatch`es of a snapshot, chunk 0 first.
    pub fn snapshot_payloads(&self, people: &[PlatformPerson], version: u64, chunk_size: usize) -> Vec<Vec<u8>> {
        let count = chunk_count(people.len(), chunk_size);
        (0..count).map(|i| snapshot_chunk(&self.config, people, version, chunk_size, i)).collect()
    }

    /// The encoded `IdentityBatch` of a delta.
    pub fn delta_payload(
        &self,
        from_version: u64,
        to_version: u64,
        upserts: &[PlatformPerson],
        deletes: &[String],
    ) -> Vec<u8> {
        let delta = pb::IdentityDelta {
            from_version,
            to_version,
            upserts: upserts.iter().map(|p| person_to_wire(&self.config, p)).collect(),
            deletes: deletes.to_vec(),
            ..Default::default()
        };
        pb::IdentityBatch { body: Some(pb::identity_batch::Body::Delta(delta)) }.encode_to_vec()
    }

    /// Publishes any `IdentityBatch` bytes on the identity topic, sealed
    /// when the platform signs (tests use it for corrupt messages).
    pub async fn publish_identity(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        let sealed = seal(&self.config, "", "identity", payload);
        publish(&self.client, &self.shared, self.identity_topic(), sealed, false).await
    }

    /// Seals `payload` for `stream` (and one `gate`, or "" for the whole
    /// site) as this platform would; bare when it has no signing key.
    pub fn seal(&self, gate: &str, stream: &str, payload: Vec<u8>) -> Vec<u8> {
        seal(&self.config, gate, stream, payload)
    }

    /// Publishes `bytes` as they are on `{prefix}/{site}/{suffix}` (tests:
    /// tampered, replayed or unsigned messages).
    pub async fn publish_raw(&self, suffix: &str, bytes: Vec<u8>, retain: bool) -> anyhow::Result<()> {
        let topic = format!("{}/{}/{suffix}", self.config.prefix, self.config.site);
        publish(&self.client, &self.shared, topic, bytes, retain).await
    }

    /// Seals `payload` for `stream` and publishes it on `{prefix}/{site}/{suffix}`.
    pub async fn publish_sealed(
        &self,
        suffix: &str,
        gate: &str,
        stream: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        let sealed = self.seal(gate, stream, payload);
        self.publish_raw(suffix, sealed, retain).await
    }

    /// The signed heartbeat (`{prefix}/{site}/heartbeat`, retained): the
    /// versions the platform holds now.
    pub async fn publish_heartbeat(&self, heartbeat: pb::PlatformHeartbeat) -> anyhow::Result<()> {
        self.publish_sealed("heartbeat", "", "heartbeat", heartbeat.encode_to_vec(), true).await
    }

    /// A key rotation (`{prefix}/{site}/keys`, retained), signed with the
    /// current key: `keys` ("KEYID:HEX") are trusted from then on.
    pub async fn publish_key_rotation(&self, keys: &[String], note: &str) -> anyhow::Result<()> {
        let rotation = pb::KeyRotation { keys: keys.to_vec(), note: note.to_owned() };
        self.publish_sealed("keys", "", "keys", rotation.encode_to_vec(), true).await
    }

    /// A deliberate reset of the site's versions (`{prefix}/{site}/reset`).
    pub async fn publish_reset(&self, reset: pb::SiteReset) -> anyhow::Result<()> {
        self.publish_sealed("reset", "", "reset", reset.encode_to_vec(), false).await
    }

    /// Publishes a full snapshot in chunks, in order, and remembers it to
    /// answer sync requests. Returns the number of chunks.
    pub async fn publish_snapshot(
        &self,
        people: &[PlatformPerson],
        version: u64,
        chunk_size: usize,
    ) -> anyhow::Result<u32> {
        let people = Arc::new(people.to_vec());
        self.shared.state().latest = Some(Latest { people: people.clone(), version, chunk_size });
        publish_snapshot(&self.client, &self.config, &self.shared, &people, version, chunk_size).await
    }

    /// Publishes a delta; the remembered snapshot follows it when it was at
    /// `from_version`.
    pub async fn publish_delta(
        &self,
        from_version: u64,
        to_version: u64,
        upserts: &[PlatformPerson],
        deletes: &[String],
    ) -> anyhow::Result<()> {
        {
            let mut state = self.shared.state();
            if let Some(latest) = state.latest.as_mut().filter(|l| l.version == from_version) {
                let gone: HashSet<&str> =
                    deletes.iter().map(String::as_str).chain(upserts.iter().map(|p| p.person_id.as_str())).collect();
                let mut people: Vec<PlatformPerson> =
                    latest.people.iter().filter(|p| !gone.contains(p.person_id.as_str())).cloned().collect();
                people.extend(upserts.iter().cloned());
                latest.people = Arc::new(people);
                latest.version = to_version;
            }
        }
        let payload = self.delta_payload(from_version, to_version, upserts, deletes);
        self.publish_identity(payload).await
    }

    /// Publishes the site mode, retained, as the platform's order.
    pub async fn publish_mode(
        &self,
        mode: pb::Mode,
        effective_at_ms: i64,
        issued_by: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let change = pb::ModeChange {
            mode: mode as i32,
            effective_at_ms,
            issued_by: issued_by.to_owned(),
            reason: reason.to_owned(),
        };
        self.publish_sealed("mode", "", "mode", change.encode_to_vec(), true).await
    }

    /// Waits until every publish so far is acknowledged by the broker.
    pub async fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.shared.acked.load(Ordering::Relaxed) < self.shared.requested.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                bail!(
                    "{} of {} publishes unacknowledged after {timeout:?}",
                    self.shared.requested.load(Ordering::Relaxed) - self.shared.acked.load(Ordering::Relaxed),
                    self.shared.requested.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Events received, one per `event_id` (redeliveries dropped), in arrival order.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        self.shared.state().events.clone()
    }

    pub fn alerts(&self) -> Vec<pb::Alert> {
        self.shared.state().alerts.clone()
    }

    /// Sequence numbers currently missing, per gate and stream.
    pub fn gaps(&self) -> Vec<SeqGap> {
        let state = self.shared.state();
        let mut gaps = Vec::new();
        let mut keys: Vec<&(String, Stream)> = state.trackers.keys().collect();
        keys.sort();
        for key in keys {
            let seen = &state.trackers[key].seen;
            let mut previous: Option<u64> = None;
            for &seq in seen {
                if let Some(p) = previous
                    && seq > p + 1
                {
                    gaps.push(SeqGap { gate: key.0.clone(), stream: key.1, from: p + 1, to: seq - 1 });
                }
                previous = Some(seq);
            }
        }
        gaps
    }

    /// Numbers claimed by two different events.
    pub fn duplicates(&self) -> Vec<SeqDuplicate> {
        self.shared.state().duplicates.clone()
    }

    /// Events received again with an `event_id` already seen (at-least-once delivery).
    pub fn redeliveries(&self) -> u64 {
        self.shared.state().redeliveries
    }

    /// Messages from the gates that did not decode.
    pub fn malformed(&self) -> u64 {
        self.shared.state().malformed
    }

    /// Every `SyncRequest` received, with the gate that sent it.
    pub fn sync_requests(&self) -> Vec<(String, pb::SyncRequest)> {
        self.shared.state().sync_requests.clone()
    }

    /// The last status of each gate.
    pub fn statuses(&self) -> BTreeMap<String, pb::GateStatus> {
        self.shared.state().statuses.clone()
    }

    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Disconnects and stops the driving task.
    pub async fn disconnect(self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop.cancel();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn publish(
    client: &AsyncClient,
    shared: &Shared,
    topic: String,
    payload: Vec<u8>,
    retain: bool,
) -> anyhow::Result<()> {
    shared.requested.fetch_add(1, Ordering::Relaxed);
    client.publish(topic, QoS::AtLeastOnce, retain, payload).await.context("publishing")
}

/// Chunks are built one at a time, so a two-million-person snapshot never
/// sits encoded in memory whole.
async fn publish_snapshot(
    client: &AsyncClient,
    config: &PlatformConfig,
    shared: &Shared,
    people: &[PlatformPerson],
    version: u64,
    chunk_size: usize,
) -> anyhow::Result<u32> {
    let count = chunk_count(people.len(), chunk_size);
    let topic = format!("{}/{}/identity", config.prefix, config.site);
    for index in 0..count {
        let payload = snapshot_chunk(config, people, version, chunk_size, index);
        publish(client, shared, topic.clone(), seal(config, "", "identity", payload), false).await?;
    }
    Ok(count)
}

fn seal(config: &PlatformConfig, gate: &str, stream: &str, payload: Vec<u8>) -> Vec<u8> {
    match &config.signing {
        Some(key) => key.seal(&config.site, gate, stream, &payload),
        None => payload,
    }
}

/// The name as the platform sends it: each word keeps its first character,
/// the rest starred (`陈**`, `J*** S****`). Written here from the privacy
/// rule rather than taken from the gate's code, like everything in hw-sim.
pub fn masked_name(name: &str) -> String {
    name.split(' ')
        .map(|word| match word.chars().count() {
            1 => "*".to_owned(),
            _ => word.chars().enumerate().map(|(i, c)| if i == 0 { c } else { '*' }).collect::<String>(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn chunk_count(people: usize, chunk_size: usize) -> u32 {
    people.div_ceil(chunk_size.max(1)).max(1) as u32
}

fn snapshot_chunk(
    config: &PlatformConfig,
    people: &[PlatformPerson],
    version: u64,
    chunk_size: usize,
    index: u32,
) -> Vec<u8> {
    let size = chunk_size.max(1);
    let start = (index as usize * size).min(people.len());
    let end = (start + size).min(people.len());
    let chunk = pb::IdentitySnapshotChunk {
        version,
        chunk_index: index,
        chunk_count: chunk_count(people.len(), chunk_size),
        people: people[start..end].iter().map(|p| person_to_wire(config, p)).collect(),
        watchlist: Vec::new(),
        revoked_passes: Vec::new(),
    };
    pb::IdentityBatch { body: Some(pb::identity_batch::Body::Snapshot(chunk)) }.encode_to_vec()
}

/// HMAC-SHA256(site key, kind || 0x00 || value).
pub fn credential_key(site_key: &[u8; 32], kind: &str, value: &str) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(site_key) else { unreachable!("HMAC takes keys of any length") };
    mac.update(kind.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    mac.finalize().into_bytes().into()
}

fn person_to_wire(config: &PlatformConfig, p: &PlatformPerson) -> pb::Person {
    let key = &config.site_key;
    pb::Person {
        person_id: p.person_id.clone(),
        category: p.category as i32,
        status: pb::PersonStatus::Active as i32,
        valid_from_ms: p.valid_from_ms,
        valid_to_ms: p.valid_to_ms,
        display_name: if config.clear_names { p.name.clone() } else { masked_name(&p.name) },
        credentials: vec![pb::Credential {
            r#type: pb::CredentialType::IdCard as i32,
            key: credential_key(key, "id_number", &p.id_number).to_vec(),
        }],
        ..Default::default()
    }
}

/// Drives the connection: subscribes on every connection (the session is
/// clean), records what arrives, counts acknowledgements.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    config: Arc<PlatformConfig>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let base = format!("{}/{}", config.prefix, config.site);
    let filters =
        [format!("{base}/+/events"), format!("{base}/alerts"), format!("{base}/+/sync"), format!("{base}/+/status")];
    let mut warned = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                shared.connected.store(true, Ordering::Relaxed);
                warned = false;
                let client = client.clone();
                let filters: Vec<rumqttc::SubscribeFilter> =
                    filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)).collect();
                // Not awaited here: this task must keep polling for the
                // request queue to drain.
                tokio::spawn(async move { client.subscribe_many(filters).await });
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => shared.subscribed.store(true, Ordering::Relaxed),
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                on_message(&client, &config, &shared, &base, &p.topic, &p.payload);
            }
            Ok(_) => {}
            Err(e) => {
                shared.connected.store(false, Ordering::Relaxed);
                if shared.closing.load(Ordering::Relaxed) {
                    break;
                }
                if config.print && !warned {
                    println!("platform: broker {}:{}: {e}; retrying", config.host, config.port);
                    warned = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

fn say(config: &PlatformConfig, line: String) {
    if config.print {
        println!("{line}");
    }
}

fn short<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn on_message(
    client: &AsyncClient,
    config: &Arc<PlatformConfig>,
    shared: &Arc<Shared>,
    base: &str,
    topic: &str,
    payload: &[u8],
) {
    let Some(rest) = topic.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else { return };
    let (gate, what) = match rest.rsplit_once('/') {
        Some((gate, what)) => (gate, what),
        None => ("", rest),
    };
    let malformed = |kind: &str, e: prost::DecodeError| {
        shared.state().malformed += 1;
        say(config, format!("platform: MALFORMED {kind} on {topic}: {e}"));
    };
    match what {
        "events" => match pb::GateEvent::decode(payload) {
            Ok(event) => on_event(config, shared, gate, event),
            Err(e) => malformed("GateEvent", e),
        },
        "alerts" => match pb::Alert::decode(payload) {
            Ok(alert) => on_alert(config, shared, alert),
            Err(e) => malformed("Alert", e),
        },
        "status" => match pb::GateStatus::decode(payload) {
            Ok(status) => {
                let mut state = shared.state();
                let changed = state.statuses.get(gate).is_none_or(|old| {
                    (old.online, old.identity_version, old.mode)
                        != (status.online, status.identity_version, status.mode)
                });
                if changed {
                    say(
                        config,
                        format!(
                            "status {gate} {} mode={} identity_version={} outbox={}",
                            if status.online { "online" } else { "OFFLINE" },
                            short(status.mode().as_str_name(), "MODE_"),
                            status.identity_version,
                            status.outbox_depth
                        ),
                    );
                }
                state.statuses.insert(gate.to_owned(), status);
            }
            Err(e) => malformed("GateStatus", e),
        },
        "sync" => match pb::SyncRequest::decode(payload) {
            Ok(request) => on_sync(client, config, shared, gate, request),
            Err(e) => malformed("SyncRequest", e),
        },
        _ => {}
    }
}

fn on_event(config: &PlatformConfig, shared: &Shared, gate: &str, event: pb::GateEvent) {
    let mut state = shared.state();
    let key = (gate.to_owned(), Stream::Events);
    if let Some(note) = track(&mut state, &key, event.seq, &event.event_id) {
        say(config, note);
    }
    if !state.event_ids.insert(event.event_id.clone()) {
        return;
    }
    let kind = short(event.kind().as_str_name(), "EVENT_KIND_").to_lowercase();
    let line = match event.kind() {
        pb::EventKind::Decision => format!(
            "event {gate} seq={} {} {} {} person={}",
            event.seq,
            event.subject,
            short(event.decision().as_str_name(), "DECISION_"),
            short(event.reason().as_str_name(), "REASON_"),
            if event.person_id.is_empty() { "-" } else { &event.person_id }
        ),
        pb::EventKind::Alarm => format!("event {gate} seq={} alarm {}", event.seq, event.alarm),
        _ => format!("event {gate} seq={} {kind} {} {}", event.seq, event.operator, event.note),
    };
    say(config, line);
    state.events.push(ReceivedEvent { gate: gate.to_owned(), event });
}

fn on_alert(config: &PlatformConfig, shared: &Shared, alert: pb::Alert) {
    let mut state = shared.state();
    let key = (alert.gate_id.clone(), Stream::Alerts);
    if let Some(note) = track(&mut state, &key, alert.seq, &alert.alert_id) {
        say(config, note);
    }
    if !state.alert_ids.insert(alert.alert_id.clone()) {
        return;
    }
    say(
        config,
        format!(
            "alert {} seq={} {} {} repeat={}{}",
            alert.gate_id,
            alert.seq,
            short(alert.reason().as_str_name(), "REASON_"),
            alert.subject,
            alert.repeat_count,
            if alert.alarm.is_empty() { String::new() } else { format!(" alarm={}", alert.alarm) }
        ),
    );
    state.alerts.push(alert);
}

/// Records a sequence number; returns a line to print for a gap, a
/// conflicting duplicate or a redelivery.
fn track(state: &mut State, key: &(String, Stream), seq: u64, id: &str) -> Option<String> {
    let (gate, stream) = (&key.0, key.1);
    let ids = state.ids.entry(key.clone()).or_default();
    if let Some(known) = ids.get(&seq) {
        if known == id {
            state.redeliveries += 1;
            return None;
        }
        state.duplicates.push(SeqDuplicate { gate: gate.clone(), stream, seq });
        return Some(format!("platform: DUPLICATE {gate} {stream:?} seq={seq} claimed by two events"));
    }
    ids.insert(seq, id.to_owned());
    let tracker = state.trackers.entry(key.clone()).or_default();
    let highest = tracker.seen.last().copied();
    tracker.seen.insert(seq);
    match highest {
        Some(h) if seq > h + 1 => Some(format!(
            "platform: GAP {gate} {stream:?}: expected seq {}, got {seq} ({} missing)",
            h + 1,
            seq - h - 1
        )),
        Some(h) if seq < h => Some(format!("platform: {gate} {stream:?} seq={seq} arrived late")),
        _ => None,
    }
}

fn on_sync(
    client: &AsyncClient,
    config: &Arc<PlatformConfig>,
    shared: &Arc<Shared>,
    gate: &str,
    request: pb::SyncRequest,
) {
    say(config, format!("sync-request {gate} local_version={} reason={}", request.local_version, request.reason));
    let latest = {
        let mut state = shared.state();
        state.sync_requests.push((gate.to_owned(), request.clone()));
        state.latest.clone()
    };
    let Some(latest) = latest.filter(|l| config.answer_sync && l.version != request.local_version) else { return };
    // One answer at a time: requests during a republish get its chunks too.
    if shared.republishing.swap(true, Ordering::Relaxed) {
        return;
    }
    say(
        config,
        format!(
            "platform: republishing snapshot version {} ({} people, chunks of {})",
            latest.version,
            latest.people.len(),
            latest.chunk_size
        ),
    );
    let (client, config, shared) = (client.clone(), config.clone(), shared.clone());
    tokio::spawn(async move {
        if let Err(e) =
            publish_snapshot(&client, &config, &shared, &latest.people, latest.version, latest.chunk_size).await
        {
            say(&config, format!("platform: republishing failed: {e:#}"));
        }
        shared.republishing.store(false, Ordering::Relaxed);
    });
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reads a site key file: 64 hex characters, surrounding whitespace ignored.
pub fn read_site_key(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading site key {}", path.display()))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| anyhow::anyhow!("site key {}: expected 64 hex characters", path.display()))?;
    Ok(key)
}

/// The GB 11643 check character of the first 17 digits.
pub fn check_character(first17: &[u8; 17]) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(d, w)| u32::from(d.saturating_sub(b'0')) * w).sum();
    b"10X98765432"[(sum % 11) as usize] as char
}

fn valid_id_number(id: &str) -> bool {
    let bytes = id.as_bytes();
    let Ok(first17) = <[u8; 17]>::try_from(&bytes[..bytes.len().min(17)]) else { return false };
    bytes.len() == 18
        && first17.iter().all(u8::is_ascii_digit)
        && check_character(&first17) == (bytes[17] as char).to_ascii_uppercase()
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_date(text: &str) -> Option<(i64, u32, u32)> {
    let mut parts = text.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    (parts.next().is_none() && (1..=days_in_month).contains(&day)).then_some((year, month, day))
}

/// First and last millisecond of a local date.
fn day_bounds_ms(text: &str, offset_minutes: i32) -> Option<(i64, i64)> {
    let (y, m, d) = parse_date(text)?;
    let start = days_from_civil(y, m, d) * 86_400_000 - i64::from(offset_minutes) * 60_000;
    Some((start, start + 86_400_000 - 1))
}

/// Parses `person_id,category,id_number,name,valid_from,valid_to` (dates
/// `YYYY-MM-DD`, site-local). Errors name the line, never the ID number.
pub fn people_from_csv(text: &str, offset_minutes: i32) -> anyhow::Result<Vec<PlatformPerson>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    if header != ["person_id", "category", "id_number", "name", "valid_from", "valid_to"] {
        bail!("line 1: the header must be person_id,category,id_number,name,valid_from,valid_to");
    }
    let mut people = Vec::new();
    for record in reader.records() {
        let record = record.context("malformed CSV row")?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let category = match field(1) {
            "resident" => pb::Category::Resident,
            "worker" => pb::Category::Worker,
            "visitor" => pb::Category::Visitor,
            other => bail!("line {line}: unknown category {other:?}"),
        };
        if !valid_id_number(field(2)) {
            bail!("line {line}: id_number {} is not a valid GB 11643 number", mask_id(field(2)));
        }
        let from = day_bounds_ms(field(4), offset_minutes).with_context(|| format!("line {line}: bad valid_from"))?;
        let to = day_bounds_ms(field(5), offset_minutes).with_context(|| format!("line {line}: bad valid_to"))?;
        if field(0).is_empty() {
            bail!("line {line}: empty person_id");
        }
        people.push(PlatformPerson {
            person_id: field(0).to_owned(),
            category,
            id_number: field(2).to_ascii_uppercase(),
            name: field(3).to_owned(),
            valid_from_ms: from.0,
            valid_to_ms: to.1,
        });
    }
    Ok(people)
}

/// A valid ID number, distinct for each `i` below 40 million: region code,
/// birth date, sequence, check character.
pub fn synthetic_id_number(i: usize) -> String {
    const REGIONS: [&str; 4] = ["350203", "350206", "350211", "440524"];
    let day = i % 10_000;
    let (year, month, dom) = (1950 + day / 336, 1 + (day / 28) % 12, 1 + day % 28);
    let seq = (i / 10_000) % 1000;
    let first17 = format!("{}{year:04}{month:02}{dom:02}{seq:03}", REGIONS[(i / 10_000_000) % 4]);
    let mut digits = [0u8; 17];
    digits.copy_from_slice(first17.as_bytes());
    format!("{first17}{}", check_character(&digits))
}

/// `n` synthetic people (`G0000001`, ...): mostly residents, some workers
/// and visitors, valid 2020-01-01 to 2035-12-31 (China time).
pub fn generate_people(n: usize) -> Vec<PlatformPerson> {
    const SURNAMES: [&str; 8] = ["陈", "林", "黄", "吴", "王", "李", "张", "刘"];
    const GIVEN: [&str; 6] = ["建国", "秀英", "志强", "小雨", "海峰", "丽"];
    let offset = CHINA_OFFSET_MINUTES;
    let from = day_bounds_ms("2020-01-01", offset).map_or(0, |b| b.0);
    let to = day_bounds_ms("2035-12-31", offset).map_or(0, |b| b.1);
    (0..n)
        .map(|i| PlatformPerson {
            person_id: format!("G{:07}", i + 1),
            category: match i % 10 {
                0..=6 => pb::Category::Resident,
                7 | 8 => pb::Category::Worker,
                _ => pb::Category::Visitor,
            },
            id_number: synthetic_id_number(i),
            name: format!("{}{}", SURNAMES[i % SURNAMES.len()], GIVEN[(i / SURNAMES.len()) % GIVEN.len()]),
            valid_from_ms: from,
            valid_to_ms: to,
        })
        .collect()
}

/// `hw-sim platform`.
#[derive(clap::Args, Debug)]
pub struct PlatformArgs {
    /// MQTT broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// MQTT broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Topic prefix: `{prefix}/{site}/...`.
    #[arg(long, default_value = "village")]
    pub prefix: String,
    /// The site id: `{prefix}/{site}/...`.
    #[arg(long)]
    pub site: String,
    /// The site key file (64 hex characters), to compute credential keys.
    #[arg(long, value_name = "FILE")]
    pub site_key: PathBuf,
    /// The platform's Ed25519 private key (64 hex characters, mode 0600):
    /// every message is sealed in a signed envelope with it.
    #[arg(long, value_name = "FILE", required_unless_present = "unsigned")]
    pub signing_key: Option<PathBuf>,
    /// The key id gates list the key under (default: derived from the key).
    #[arg(long, value_name = "ID", requires = "signing_key")]
    pub key_id: Option<String>,
    /// Publish bare, unsigned messages (what an intruder sends; gates refuse them).
    #[arg(long, conflicts_with = "signing_key")]
    pub unsigned: bool,
    /// People: `person_id,category,id_number,name,valid_from,valid_to`.
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub csv: Option<PathBuf>,
    /// Synthetic people instead of a CSV.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// People per snapshot chunk.
    #[arg(long, default_value_t = 5000)]
    pub chunk_size: usize,
    /// The snapshot's version.
    #[arg(long, default_value_t = 1)]
    pub version: u64,
    /// Publish a delta from this version instead of a snapshot (the CSV
    /// rows, if any, are its upserts).
    #[arg(long, requires = "delta_to", conflicts_with = "generate")]
    pub delta_from: Option<u64>,
    /// The version the delta leads to.
    #[arg(long, requires = "delta_from")]
    pub delta_to: Option<u64>,
    /// A person to delete in the delta; repeat for several.
    #[arg(long, value_name = "PERSON_ID", requires = "delta_from")]
    pub delete: Vec<String>,
    /// Publish a retained mode change: normal, sporadic or wartime.
    #[arg(long)]
    pub mode: Option<String>,
    /// When the mode takes effect (default: now).
    #[arg(long, requires = "mode")]
    pub effective_at_ms: Option<i64>,
    /// Who ordered the mode (department, officer id).
    #[arg(long, default_value = "hw-sim", requires = "mode")]
    pub issued_by: String,
    /// Why, for the mode change.
    #[arg(long, default_value = "", requires = "mode")]
    pub reason: String,
    /// The site's offset from UTC in minutes, for CSV dates.
    #[arg(long, default_value_t = CHINA_OFFSET_MINUTES, allow_hyphen_values = true)]
    pub utc_offset_minutes: i32,
    /// Publish, wait for the broker's acknowledgements, exit.
    #[arg(long)]
    pub once: bool,
    /// Do not answer sync requests.
    #[arg(long)]
    pub no_answer_sync: bool,
}

/// Runs the command line until `shutdown` (or after publishing, `--once`).
pub async fn run_cli(args: PlatformArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let key = read_site_key(&args.site_key)?;
    let people = match (&args.csv, args.generate) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(people_from_csv(&text, args.utc_offset_minutes).with_context(|| path.display().to_string())?)
        }
        (None, Some(n)) => Some(generate_people(n)),
        (None, None) => None,
    };
    let mode = match args.mode.as_deref() {
        None => None,
        Some("normal") => Some(pb::Mode::Normal),
        Some("sporadic") => Some(pb::Mode::Sporadic),
        Some("wartime") => Some(pb::Mode::Wartime),
        Some(other) => bail!("--mode must be normal, sporadic or wartime, not {other:?}"),
    };
    let mut config = PlatformConfig::new(&args.host, args.port, &args.site, key);
    config.prefix = args.prefix.clone();
    config.answer_sync = !args.no_answer_sync;
    config.print = true;
    if let Some(path) = &args.signing_key {
        config.signing = Some(Arc::new(PlatformKey::from_file(path, args.key_id.as_deref())?));
    }
    let signing = config.signing.as_ref().map_or_else(|| "UNSIGNED".to_owned(), |k| format!("signing as {}", k.key_id));
    let platform = Platform::connect(config).await?;
    println!("platform: connected to {}:{}, site {}, {signing}", args.host, args.port, args.site);
    let mut published = 0usize;
    if let Some(mode) = mode {
        let at = args.effective_at_ms.unwrap_or_else(now_ms);
        platform.publish_mode(mode, at, &args.issued_by, &args.reason).await?;
        println!("platform: mode {} effective at {at} (retained)", short(mode.as_str_name(), "MODE_").to_lowercase());
    }
    match (args.delta_from, args.delta_to, &people) {
        (Some(from), Some(to), _) => {
            let upserts = people.as_deref().unwrap_or_default();
            platform.publish_delta(from, to, upserts, &args.delete).await?;
            println!("platform: delta {from} -> {to}: {} upserts, {} deletes", upserts.len(), args.delete.len());
        }
        (_, _, Some(people)) => {
            let started = Instant::now();
            let chunks = platform.publish_snapshot(people, args.version, args.chunk_size).await?;
            println!(
                "platform: snapshot version {}: {} people in {chunks} chunks, published in {:.2} s",
                args.version,
                people.len(),
                started.elapsed().as_secs_f64()
            );
            published = people.len();
        }
        _ => {}
    }
    platform.flush(Duration::from_secs(60 + published as u64 / 10_000)).await?;
    if args.once {
        platform.disconnect().await;
        return Ok(());
    }
    println!("platform: listening for events, alerts, status and sync requests (Ctrl-C to stop)");
    shutdown.await;
    let gaps = platform.gaps();
    println!(
        "platform: {} events, {} alerts, {} redeliveries, {} gaps{}, {} duplicates, {} malformed",
        platform.events().len(),
        platform.alerts().len(),
        platform.redeliveries(),
        gaps.len(),
        gaps.iter().map(|g| format!(" [{} {:?} {}..={}]", g.gate, g.stream, g.from, g.to)).collect::<String>(),
        platform.duplicates().len(),
        platform.malformed()
    );
    platform.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_numbers_are_valid_and_distinct() {
        let ids: HashSet<String> = (0..50_000).map(synthetic_id_number).collect();
        assert_eq!(ids.len(), 50_000);
        assert!(ids.iter().all(|id| valid_id_number(id)));
        // Published examples (GB 11643 appendix and the demo data).
        assert!(valid_id_number("11010519491231002X"));
        assert!(valid_id_number("35020319900101123X"));
        assert!(!valid_id_number("350203199001011237"));
    }

    #[test]
    fn names_go_down_masked_unless_a_test_asks_for_them_in_clear() {
        assert_eq!(masked_name("陈建国"), "陈**");
        assert_eq!(masked_name("John Smith"), "J*** S****");
        assert_eq!(masked_name("陈"), "*");
        let person = PlatformPerson {
            person_id: "R-1".into(),
            category: pb::Category::Resident,
            id_number: "35020319900101123X".into(),
            name: "陈建国".into(),
            valid_from_ms: 0,
            valid_to_ms: 1,
        };
        let mut config = PlatformConfig::new("127.0.0.1", 1883, "s", [7; 32]);
        let sent = |config: &PlatformConfig| {
            let payload = snapshot_chunk(config, std::slice::from_ref(&person), 1, 10, 0);
            let Some(pb::identity_batch::Body::Snapshot(chunk)) =
                pb::IdentityBatch::decode(&*payload).expect("a batch").body
            else {
                panic!("a snapshot chunk");
            };
            chunk.people[0].display_name.clone()
        };
        assert_eq!(sent(&config), "陈**");
        config.clear_names = true;
        assert_eq!(sent(&config), "陈建国");
    }

    #[test]
    fn csv_dates_are_site_local_days() {
        let people = people_from_csv(
            "person_id,category,id_number,name,valid_from,valid_to\nR-1,resident,35020319900101123X,张三,2024-01-01,2024-01-01\n",
            CHINA_OFFSET_MINUTES,
        )
        .expect("parse");
        // 2024-01-01T00:00+08:00 = 2023-12-31T16:00Z.
        assert_eq!(people[0].valid_from_ms, 1_704_038_400_000);
        assert_eq!(people[0].valid_to_ms, 1_704_038_400_000 + 86_400_000 - 1);
        let bad = people_from_csv(
            "person_id,category,id_number,name,valid_from,valid_to\nR-1,resident,350203199001011237,张三,2024-01-01,2024-01-01\n",
            CHINA_OFFSET_MINUTES,
        );
        let message = format!("{:#}", bad.expect_err("bad check character"));
        assert!(message.contains("350203********1237") && !message.contains("19900101"), "{message}");
    }

    #[test]
    fn credential_keys_follow_the_rule() {
        // RFC 4231 style check of the construction: key, kind, NUL, value.
        let a = credential_key(&[1; 32], "id_number", "35020319900101123X");
        assert_ne!(a, credential_key(&[2; 32], "id_number", "35020319900101123X"));
        assert_ne!(a, credential_key(&[1; 32], "plate", "35020319900101123X"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&[1; 32]).expect("key");
        mac.update(b"id_number\x0035020319900101123X");
        assert_eq!(a, <[u8; 32]>::from(mac.finalize().into_bytes()));
    }

    #[test]
    fn sequence_tracking_reports_gaps_duplicates_and_redeliveries() {
        let mut state = State::default();
        let key = ("east-1".to_owned(), Stream::Events);
        assert_eq!(track(&mut state, &key, 1, "a"), None);
        assert_eq!(track(&mut state, &key, 2, "b"), None);
        assert!(track(&mut state, &key, 5, "e").is_some_and(|l| l.contains("GAP")));
        assert_eq!(track(&mut state, &key, 2, "b"), None, "a redelivery");
        assert!(track(&mut state, &key, 2, "x").is_some_and(|l| l.contains("DUPLICATE")));
        assert!(track(&mut state, &key, 3, "c").is_some_and(|l| l.contains("late")));
        assert_eq!(state.redeliveries, 1);
        assert_eq!(state.duplicates, vec![SeqDuplicate { gate: "east-1".into(), stream: Stream::Events, seq: 2 }]);
        assert_eq!(state.trackers[&key].seen.iter().copied().collect::<Vec<_>>(), vec![1, 2, 3, 5]);
    }
}
