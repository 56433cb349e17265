//! The signed downlink: every platform-to-gate message sealed in the
//! `gate.v1.SignedEnvelope` of `gate-envelope`, with a counter strictly
//! increasing per (site, gate, stream) kept in PostgreSQL.
//!
//! Ordering: a gate refuses a counter not above the last it accepted, so
//! two senders must never publish one stream's messages out of order. All
//! downlink of a site is therefore sent under a PostgreSQL session advisory
//! lock of that site, from taking the counters (committed first, so a
//! counter is never handed out twice) until the broker acknowledged every
//! message. A process that dies while holding it releases it with its
//! connection; a counter taken and never sent only leaves a hole, which the
//! gates accept.
//!
//! What is sent: `mode set` (stream `mode`, retained), `identity publish`
//! (a snapshot in chunks, or a delta from the last published version;
//! stream `identity`), `trust publish` (stream `trust`, retained), `keys
//! rotate` (stream `keys`, retained), `reset` (stream `reset`), the
//! per-site heartbeat (stream `heartbeat`, retained), and the snapshot
//! answering a gate's `SyncRequest` (sent by the ingest replicas).

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use gate_core::Category;
use gate_envelope::Signer;
use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{MqttConfig, PlatformConfig};
use crate::db::DbError;

/// How long a batch of messages may take to be acknowledged by the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message sent (an identity snapshot chunk is the biggest).
const MAX_PACKET: usize = gate_envelope::MAX_ENVELOPE_BYTES + 1024;

pub fn category_to_wire(c: Category) -> pb::Category {
    match c {
        Category::Resident => pb::Category::Resident,
        Category::Worker => pb::Category::Worker,
        Category::Visitor => pb::Category::Visitor,
    }
}

/// The downlink topics of a site.
pub fn topic(prefix: &str, site: &str, stream: &str) -> String {
    format!("{prefix}/{site}/{stream}")
}

/// One message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Empty: for every gate of the site.
    pub gate: String,
    pub stream: &'static str,
    pub retain: bool,
    /// The encoded inner gate.v1 message.
    pub payload: Vec<u8>,
}

/// A sealed message, ready for the broker.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub topic: String,
    pub retain: bool,
    pub counter: u64,
    pub bytes: Vec<u8>,
}

/// What sending needs: the database, the key, the broker settings.
#[derive(Debug, Clone, Copy)]
pub struct Downlink<'a> {
    pub pool: &'a Pool,
    pub signer: &'a Signer,
    pub config: &'a PlatformConfig,
}

/// The site's lock, held on one pooled connection.
pub struct SiteLock {
    pub client: Object,
    key: i64,
}

impl std::fmt::Debug for SiteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteLock").field("key", &self.key).finish()
    }
}

fn lock_key(site: &str) -> i64 {
    let digest = Sha256::digest(format!("gate-platform downlink {site}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

impl SiteLock {
    pub async fn acquire(pool: &Pool, site: &str) -> Result<Self, DbError> {
        let client = pool.get().await?;
        let key = lock_key(site);
        client.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
        client.execute("INSERT INTO site_downlink (site_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&site]).await?;
        Ok(SiteLock { client, key })
    }

    pub async fn release(self) -> Result<(), DbError> {
        self.client.execute("SELECT pg_advisory_unlock($1)", &[&self.key]).await?;
        Ok(())
    }

    /// Takes the counters, seals, records, commits: the messages may then
    /// be published (in the order given).
    pub async fn seal(
        &mut self,
        signer: &Signer,
        prefix: &str,
        site: &str,
        messages: &[Outgoing],
        now_ms: i64,
    ) -> Result<Vec<Sealed>, DbError> {
        let tx = self.client.transaction().await?;
        let mut sealed = Vec::with_capacity(messages.len());
        for m in messages {
            let counter: i64 = tx
                .query_one(
                    "INSERT INTO downlink_counters (site_id, gate_id, stream, counter) VALUES ($1, $2, $3, 1)
                     ON CONFLICT (site_id, gate_id, stream) DO UPDATE SET counter = downlink_counters.counter + 1
                     RETURNING counter",
                    &[&site, &m.gate, &m.stream],
                )
                .await?
                .get(0);
            let bytes = signer.seal(site, &m.gate, m.stream, counter as u64, now_ms, &m.payload);
            let topic = topic(prefix, site, m.stream);
            tx.execute(
                "INSERT INTO downlink_log (site_id, gate_id, stream, counter, topic, issued_at, bytes)
                 VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000), $7)",
                &[&site, &m.gate, &m.stream, &counter, &topic, &(now_ms as f64), &(bytes.len() as i32)],
            )
            .await?;
            sealed.push(Sealed { topic, retain: m.retain, counter: counter as u64, bytes });
        }
        tx.commit().await?;
        Ok(sealed)
    }
}

/// Publishes `messages` in order on a connection of its own (clean
/// session, client id `{client_id}-{role}-{pid}`) and returns once the
/// broker acknowledged every one (QoS 1).
pub async fn publish(mqtt: &MqttConfig, role: &str, messages: &[Sealed]) -> Result<(), String> {
    if messages.is_empty() {
        return Ok(());
    }
    let client_id = format!("{}-{role}-{}", mqtt.client_id, std::process::id());
    let mut options = mqtt.options(client_id).map_err(|e| e.to_string())?;
    options.set_clean_session(true).set_max_packet_size(MAX_PACKET, MAX_PACKET).set_inflight(50);
    let (client, mut eventloop) = AsyncClient::new(options, messages.len().max(10));
    let exchange = async {
        for m in messages {
            client
                .publish(m.topic.as_str(), QoS::AtLeastOnce, m.retain, m.bytes.clone())
                .await
                .map_err(|e| format!("cannot queue a message: {e}"))?;
        }
        let mut acked = 0;
        while acked < messages.len() {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("broker {}:{}: {e}", mqtt.host, mqtt.port)),
            }
        }
        let _ = client.disconnect().await;
        // Let the DISCONNECT go out.
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        Ok(())
    };
    tokio::time::timeout(PUBLISH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("the broker did not acknowledge within {PUBLISH_TIMEOUT:?}"))?
}

/// Seals and publishes under the site's lock; runs `after` (still under
/// the lock) once the broker acknowledged everything.
async fn send(
    d: &Downlink<'_>,
    role: &str,
    site: &str,
    messages: Vec<Outgoing>,
    now_ms: i64,
    after: &str,
    after_params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Sealed>, String> {
    let mut lock = SiteLock::acquire(d.pool, site).await.map_err(|e| e.to_string())?;
    let result = async {
        let sealed = lock
            .seal(d.signer, &d.config.mqtt.topic_prefix, site, &messages, now_ms)
            .await
            .map_err(|e| e.to_string())?;
        publish(&d.config.mqtt, role, &sealed).await?;
        if !after.is_empty() {
            lock.client.execute(after, after_params).await.map_err(|e| e.to_string())?;
        }
        Ok(sealed)
    }
    .await;
    let _ = lock.release().await;
    result
}

pub fn parse_mode(raw: &str) -> Option<pb::Mode> {
    match raw {
        "normal" => Some(pb::Mode::Normal),
        "sporadic" => Some(pb::Mode::Sporadic),
        "wartime" => Some(pb::Mode::Wartime),
        _ => None,
    }
}

/// `YYYY-MM-DDTHH:MM[:SS](Z|±HH:MM)` or Unix milliseconds → Unix ms.
pub fn parse_time(raw: &str) -> Result<i64, String> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("expected YYYY-MM-DDTHH:MM[:SS] with Z or an offset like +08:00, found {raw:?}");
    let (date, rest) = raw.split_once('T').ok_or_else(bad)?;
    let date = gate_core::CivilDate::parse_iso(date).map_err(|_| bad())?;
    let split = rest.rfind(['Z', '+', '-']).ok_or_else(bad)?;
    let (clock, offset) = rest.split_at(split);
    let offset = gate_core::UtcOffset::parse(offset).map_err(|_| bad())?;
    let parts: Vec<u32> = clock.split(':').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (h, m, s) = match parts.as_slice() {
        [h, m] => (*h, *m, 0),
        [h, m, s] => (*h, *m, *s),
        _ => return Err(bad()),
    };
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(date.start_ms(offset) + i64::from(h * 3600 + m * 60 + s) * 1000)
}

/// `mode set`: a retained, signed `ModeChange` for the whole site.
pub async fn mode_set(
    d: &Downlink<'_>,
    site: &str,
    mode: pb::Mode,
    reason: &str,
    effective_at_ms: i64,
    now_ms: i64,
) -> Result<u64, String> {
    let change =
        pb::ModeChange { mode: mode as i32, effective_at_ms, issued_by: "gate-platform".into(), reason: reason.into() };
    let message = Outgoing { gate: String::new(), stream: "mode", retain: true, payload: change.encode_to_vec() };
    let sealed = send(d, "mode", site, vec![message], now_ms, "", &[]).await?;
    let counter = sealed.first().map_or(0, |s| s.counter);
    let client = d.pool.get().await.map_err(|e| e.to_string())?;
    client
        .execute(
            "UPDATE site_downlink SET mode = $2, mode_reason = $3, mode_effective_at = to_timestamp($4::float8 / 1000),
                 mode_counter = greatest(mode_counter, $5) WHERE site_id = $1",
            &[&site, &crate::wire::mode_name(mode as i32), &reason, &(effective_at_ms as f64), &(counter as i64)],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(counter)
}

/// What `identity publish` sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Snapshot { version: i64, people: usize, chunks: usize },
    Delta { from: i64, to: i64, upserts: usize, deletes: usize },
    NothingNew { version: i64 },
}

/// The site's whole table as snapshot chunks of `version`.
async fn snapshot_messages(
    client: &Object,
    site: &str,
    version: i64,
    chunk_people: usize,
) -> Result<(Vec<Outgoing>, usize), DbError> {
    let rows = client
        .query("SELECT person FROM identity_people WHERE site_id = $1 AND NOT deleted ORDER BY person_id", &[&site])
        .await?;
    let people: Vec<pb::Person> =
        rows.iter().filter_map(|r| pb::Person::decode(r.get::<_, Vec<u8>>(0).as_slice()).ok()).collect();
    let count = people.len();
    let chunks: Vec<&[pb::Person]> =
        if people.is_empty() { vec![&[][..]] } else { people.chunks(chunk_people.max(1)).collect() };
    let chunk_count = chunks.len() as u32;
    let messages = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let batch = pb::IdentityBatch {
                body: Some(pb::identity_batch::Body::Snapshot(pb::IdentitySnapshotChunk {
                    version: version as u64,
                    chunk_index: i as u32,
                    chunk_count,
                    people: chunk.to_vec(),
                    ..Default::default()
                })),
            };
            Outgoing { gate: String::new(), stream: "identity", retain: false, payload: batch.encode_to_vec() }
        })
        .collect();
    Ok((messages, count))
}

/// `identity publish`: a delta from the last published version, or a
/// snapshot (the first time, or when asked).
pub async fn identity_publish(
    d: &Downlink<'_>,
    site: &str,
    force_snapshot: bool,
    now_ms: i64,
) -> Result<Published, String> {
    let err = |e: DbError| e.to_string();
    let mut lock = SiteLock::acquire(d.pool, site).await.map_err(err)?;
    let result = async {
        let row = lock
            .client
            .query_one("SELECT identity_version, identity_published FROM site_downlink WHERE site_id = $1", &[&site])
            .await
            .map_err(|e| e.to_string())?;
        let (version, published): (i64, i64) = (row.get(0), row.get(1));
        if version == 0 {
            return Err(format!("bad request: site {site} has no identity table yet (gate-platform identity import)"));
        }
        let (messages, outcome) = if force_snapshot || published == 0 {
            let (messages, people) =
                snapshot_messages(&lock.client, site, version, d.config.chunk_people()).await.map_err(err)?;
            let chunks = messages.len();
            (messages, Published::Snapshot { version, people, chunks })
        } else if published >= version {
            return Ok(Published::NothingNew { version });
        } else {
            let rows = lock
                .client
                .query(
                    "SELECT person, deleted, person_id FROM identity_people
                     WHERE site_id = $1 AND changed_version > $2 ORDER BY person_id",
                    &[&site, &published],
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut delta =
                pb::IdentityDelta { from_version: published as u64, to_version: version as u64, ..Default::default() };
            for r in &rows {
                if r.get::<_, bool>(1) {
                    delta.deletes.push(r.get(2));
                } else if let Ok(p) = pb::Person::decode(r.get::<_, Vec<u8>>(0).as_slice()) {
                    delta.upserts.push(p);
                }
            }
            let outcome = Published::Delta {
                from: published,
                to: version,
                upserts: delta.upserts.len(),
                deletes: delta.deletes.len(),
            };
            let batch = pb::IdentityBatch { body: Some(pb::identity_batch::Body::Delta(delta)) };
            (
                vec![Outgoing {
                    gate: String::new(),
                    stream: "identity",
                    retain: false,
                    payload: batch.encode_to_vec(),
                }],
                outcome,
            )
        };
        let sealed = lock.seal(d.signer, &d.config.mqtt.topic_prefix, site, &messages, now_ms).await.map_err(err)?;
        publish(&d.config.mqtt, "identity", &sealed).await?;
        lock.client
            .execute(
                "UPDATE site_downlink SET identity_published = greatest(identity_published, $2) WHERE site_id = $1",
                &[&site, &version],
            )
            .await
            .map_err(|e| e.to_string())?;
        if matches!(outcome, Published::Snapshot { .. }) {
            lock.client
                .execute(
                    "UPDATE site_downlink SET snapshot_sent_at = now(), snapshot_version = $2 WHERE site_id = $1",
                    &[&site, &version],
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(outcome)
    }
    .await;
    let _ = lock.release().await;
    result
}

/// Answers a gate's `SyncRequest` with a snapshot of the site's current
/// table, unless a snapshot started after `received_at_ms` (another gate's
/// request, another replica) already covers it. Returns whether one was sent.
pub async fn answer_sync(d: &Downlink<'_>, request: &pb::SyncRequest, received_at_ms: i64) -> Result<bool, String> {
    let site = request.site_id.as_str();
    let err = |e: DbError| e.to_string();
    let mut lock = SiteLock::acquire(d.pool, site).await.map_err(err)?;
    let result = async {
        let row = lock
            .client
            .query_one(
                "SELECT identity_version, identity_published,
                        coalesce((extract(epoch FROM snapshot_sent_at) * 1000)::bigint, 0),
                        (extract(epoch FROM now()) * 1000)::bigint
                 FROM site_downlink WHERE site_id = $1",
                &[&site],
            )
            .await
            .map_err(|e| e.to_string())?;
        let (version, published, sent_at, started): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if published == 0 || version == 0 {
            warn!(
                site,
                gate = request.gate_id,
                "SyncRequest for a site with no published identity table; not answered"
            );
            return Ok(false);
        }
        if sent_at >= received_at_ms {
            return Ok(false);
        }
        // The current table: an import not yet published goes out with it
        // (and counts as published from now on).
        let (messages, people) =
            snapshot_messages(&lock.client, site, version, d.config.chunk_people()).await.map_err(err)?;
        let sealed = lock
            .seal(d.signer, &d.config.mqtt.topic_prefix, site, &messages, crate::ingest::now_ms())
            .await
            .map_err(err)?;
        publish(&d.config.mqtt, "sync", &sealed).await?;
        lock.client
            .execute(
                "UPDATE site_downlink SET snapshot_sent_at = to_timestamp($2::float8 / 1000), snapshot_version = $3,
                     identity_published = greatest(identity_published, $3)
                 WHERE site_id = $1",
                &[&site, &(started as f64), &version],
            )
            .await
            .map_err(|e| e.to_string())?;
        info!(
            site,
            gate = request.gate_id,
            local_version = request.local_version,
            reason = request.reason,
            version,
            people,
            "SyncRequest answered with a snapshot"
        );
        Ok(true)
    }
    .await;
    let _ = lock.release().await;
    result
}

/// `trust publish`: a retained, signed `TrustList` of DER certificates.
pub async fn trust_publish(
    d: &Downlink<'_>,
    site: &str,
    version: u64,
    certificates: Vec<Vec<u8>>,
    now_ms: i64,
) -> Result<u64, String> {
    let list = pb::TrustList { version, certificates, issued_at_ms: now_ms };
    let message = Outgoing { gate: String::new(), stream: "trust", retain: true, payload: list.encode_to_vec() };
    let v = version as i64;
    let sealed = send(
        d,
        "trust",
        site,
        vec![message],
        now_ms,
        "UPDATE site_downlink SET trust_version = greatest(trust_version, $1) WHERE site_id = $2",
        &[&v, &site],
    )
    .await?;
    Ok(sealed.first().map_or(0, |s| s.counter))
}

/// Keys in one rotation at most (what the gates take).
pub const ROTATION_KEYS_MAX: usize = 16;
/// A rotation's or a reset's note at most, in bytes (what the gates take).
pub const NOTE_MAX: usize = 256;

/// `keys rotate`: a retained, signed `KeyRotation` for the whole site. The
/// gates trust exactly `keys` ("KEYID:HEX") from then on, so it is signed
/// with the key they trust now (`[signing] key_file`), and the platform
/// signs with one of `keys` afterwards.
pub async fn keys_rotate(
    d: &Downlink<'_>,
    site: &str,
    keys: &[gate_envelope::KeySpec],
    note: &str,
    now_ms: i64,
) -> Result<u64, String> {
    if keys.is_empty() || keys.len() > ROTATION_KEYS_MAX {
        return Err(format!("bad request: a rotation names 1 to {ROTATION_KEYS_MAX} keys, not {}", keys.len()));
    }
    if note.len() > NOTE_MAX {
        return Err(format!("bad request: the note is {} bytes, at most {NOTE_MAX}", note.len()));
    }
    let rotation = pb::KeyRotation { keys: keys.iter().map(|k| k.to_spec_string()).collect(), note: note.into() };
    let message = Outgoing { gate: String::new(), stream: "keys", retain: true, payload: rotation.encode_to_vec() };
    let sealed = send(d, "keys", site, vec![message], now_ms, "", &[]).await?;
    let ids: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
    info!(site, keys = ?ids, "key rotation sent");
    Ok(sealed.first().map_or(0, |s| s.counter))
}

/// `reset`: a signed `SiteReset` (not retained: it is applied once, by the
/// gates connected now and those whose session queues it). With
/// `identity` or `health` the gates take the next snapshot or batch of any
/// version; with `counters` they forget the counters of every stream but
/// `keys` and `reset`. For a platform whose database was rebuilt.
pub async fn site_reset(d: &Downlink<'_>, site: &str, reset: &pb::SiteReset, now_ms: i64) -> Result<u64, String> {
    if !(reset.identity || reset.health || reset.counters) {
        return Err("bad request: a reset names at least one of identity, health, counters".into());
    }
    if reset.note.len() > NOTE_MAX {
        return Err(format!("bad request: the note is {} bytes, at most {NOTE_MAX}", reset.note.len()));
    }
    let message = Outgoing { gate: String::new(), stream: "reset", retain: false, payload: reset.encode_to_vec() };
    let sealed = send(d, "reset", site, vec![message], now_ms, "", &[]).await?;
    info!(site, identity = reset.identity, health = reset.health, counters = reset.counters, "site reset sent");
    Ok(sealed.first().map_or(0, |s| s.counter))
}

/// What the heartbeat of a site says now.
pub async fn heartbeat_of(client: &Object, site: &str) -> Result<pb::PlatformHeartbeat, DbError> {
    let row = client
        .query_one(
            "SELECT identity_published, health_version, mode_counter, trust_version FROM site_downlink
             WHERE site_id = $1",
            &[&site],
        )
        .await?;
    Ok(pb::PlatformHeartbeat {
        identity_version: row.get::<_, i64>(0) as u64,
        health_version: row.get::<_, i64>(1) as u64,
        mode_counter: row.get::<_, i64>(2) as u64,
        trust_version: row.get::<_, i64>(3) as u64,
    })
}

/// Sends the heartbeat of every site whose turn it is (every site with a
/// gate or a downlink state), each `[signing] heartbeat_s`. Any number of
/// replicas may run this: a site's turn is taken by one of them.
pub async fn heartbeat_round(d: &Downlink<'_>) -> Result<usize, String> {
    let err = |e: DbError| e.to_string();
    let every = d.config.signing.as_ref().map_or(120, |s| s.heartbeat_s) as f64;
    let sites: Vec<String> = {
        let client = d.pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute(
                "INSERT INTO site_downlink (site_id) SELECT DISTINCT site_id FROM gates ON CONFLICT DO NOTHING",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        client
            .query(
                "UPDATE site_downlink SET heartbeat_due = now() + make_interval(secs => $1)
                 WHERE site_id IN (SELECT site_id FROM site_downlink WHERE heartbeat_due <= now()
                                   ORDER BY site_id FOR UPDATE SKIP LOCKED)
                 RETURNING site_id",
                &[&every],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for site in &sites {
        let mut lock = SiteLock::acquire(d.pool, site).await.map_err(err)?;
        let result = async {
            let beat = heartbeat_of(&lock.client, site).await.map_err(err)?;
            let message =
                Outgoing { gate: String::new(), stream: "heartbeat", retain: true, payload: beat.encode_to_vec() };
            let sealed = lock
                .seal(d.signer, &d.config.mqtt.topic_prefix, site, &[message], crate::ingest::now_ms())
                .await
                .map_err(err)?;
            publish(&d.config.mqtt, "heartbeat", &sealed).await
        }
        .await;
        let _ = lock.release().await;
        if let Err(e) = result {
            warn!(site, error = %e, "heartbeat not sent; the next round tries again");
            let client = d.pool.get().await.map_err(|e| e.to_string())?;
            let _ = client.execute("UPDATE site_downlink SET heartbeat_due = now() WHERE site_id = $1", &[site]).await;
        }
    }
    Ok(sites.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_with_their_offset() {
        assert_eq!(parse_time("1764660000000"), Ok(1_764_660_000_000));
        assert_eq!(parse_time("1970-01-01T08:00+08:00"), Ok(0));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(parse_time("1970-01-02T00:00:00-01:00"), Ok(25 * 3_600_000));
        assert!(parse_time("1970-01-01T08:00").is_err());
        assert!(parse_time("1970-01-01T24:00Z").is_err());
        assert!(parse_time("tomorrow").is_err());
    }

    #[test]
    fn modes_by_name() {
        assert_eq!(parse_mode("wartime"), Some(pb::Mode::Wartime));
        assert_eq!(parse_mode("Wartime"), None);
    }

    #[test]
    fn sealed_messages_open_under_the_gate_verifier() {
        let signer = Signer::from_seed([9; 32]);
        let verifier = gate_envelope::Verifier::new([signer.key_spec()]);
        let bytes = signer.seal("s1", "", "mode", 3, 1000, b"x");
        let opened = verifier.open(&bytes, "s1", "g1", "mode").expect("opens");
        assert_eq!((opened.counter, opened.payload.as_slice()), (3, &b"x"[..]));
        assert_eq!(lock_key("s1"), lock_key("s1"));
        assert_ne!(lock_key("s1"), lock_key("s2"));
    }
}
