//! A lightweight simulated gate: speaks the gates' uplink protocol (QoS 1
//! `GateEvent`s with a gap-free `seq` on `{prefix}/{site}/{gate}/events`, a
//! retained `GateStatus` and its last will) without devices or a database.
//! Used by the fleet simulation and the tests, next to real `gated`s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// One simulated gate and its MQTT session.
#[derive(Debug)]
pub struct SimGate {
    pub site: String,
    pub gate: String,
    prefix: String,
    next_seq: u64,
    client: AsyncClient,
    /// PUBACKs received (events and statuses).
    acked: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    /// Cancel to cut the connection for good.
    stop: CancellationToken,
    /// Cancel-and-replace to drop the connection once (it comes back).
    drop_once: Arc<tokio::sync::Notify>,
}

impl SimGate {
    /// Connects (persistent session, so unacknowledged publishes are sent
    /// again after a reconnection, as gated's outbox does).
    pub fn connect(host: &str, port: u16, prefix: &str, site: &str, gate: &str) -> Self {
        let mut options = MqttOptions::new(format!("sim-{site}-{gate}"), host, port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(false).set_inflight(200);
        let offline =
            pb::GateStatus { online: false, site_id: site.into(), gate_id: gate.into(), ..Default::default() };
        options.set_last_will(LastWill::new(
            format!("{prefix}/{site}/{gate}/status"),
            offline.encode_to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let drop_once = Arc::new(tokio::sync::Notify::new());
        let (a, c, s, d) = (acked.clone(), connected.clone(), stop.clone(), drop_once.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = d.notified() => {
                        // Drop the TCP connection as a WAN outage would: no
                        // DISCONNECT, so the last will fires.
                        eventloop.clean();
                        c.store(false, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => c.store(true, Ordering::SeqCst),
                        Ok(Event::Incoming(Packet::PubAck(_))) => { a.fetch_add(1, Ordering::Relaxed); }
                        Ok(_) => {}
                        Err(_) => {
                            c.store(false, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        });
        SimGate {
            site: site.into(),
            gate: gate.into(),
            prefix: prefix.into(),
            next_seq: 1,
            client,
            acked,
            connected,
            stop,
            drop_once,
        }
    }

    /// The next decision event (a resident passing, entry and exit in turn).
    pub fn next_event(&mut self, now_ms: i64) -> pb::GateEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        let side = if seq % 2 == 1 { pb::Direction::Entry } else { pb::Direction::Exit };
        pb::GateEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            seq,
            site_id: self.site.clone(),
            gate_id: self.gate.clone(),
            occurred_at_ms: now_ms,
            credential_type: pb::CredentialType::IdCard as i32,
            subject: "350203********1234".into(),
            person_id: format!("P-{:04}", seq % 500),
            category: pb::Category::Resident as i32,
            decision: pb::Decision::Pass as i32,
            kind: pb::EventKind::Decision as i32,
            lane: pb::Lane::Pedestrian as i32,
            direction: pb::Direction::Both as i32,
            mode: pb::Mode::Normal as i32,
            policy_version: "sim".into(),
            side: side as i32,
            ..Default::default()
        }
    }

    /// Skips `n` numbers (an event lost on the way, for gap tests).
    pub fn skip(&mut self, n: u64) {
        self.next_seq += n;
    }

    pub fn events_topic(&self) -> String {
        format!("{}/{}/{}/events", self.prefix, self.site, self.gate)
    }

    pub async fn publish(&self, event: &pb::GateEvent) -> Result<(), rumqttc::ClientError> {
        self.client.publish(self.events_topic(), QoS::AtLeastOnce, false, event.encode_to_vec()).await
    }

    pub async fn publish_status(
        &self,
        online: bool,
        outbox_depth: u64,
        now_ms: i64,
    ) -> Result<(), rumqttc::ClientError> {
        let status = pb::GateStatus {
            online,
            site_id: self.site.clone(),
            gate_id: self.gate.clone(),
            version: "sim".into(),
            outbox_depth,
            reported_at_ms: now_ms,
            identity_version: 1,
            ..Default::default()
        };
        let topic = format!("{}/{}/{}/status", self.prefix, self.site, self.gate);
        self.client.publish(topic, QoS::AtLeastOnce, true, status.encode_to_vec()).await
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Cuts the TCP connection once; the session resumes and what was not
    /// acknowledged is published again.
    pub fn drop_connection(&self) {
        self.drop_once.notify_one();
    }

    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for SimGate {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
