//! The raw QoS 1 publisher (the outbox drain's ceiling) and a subscriber
//! that checks the order of what the gate sends; the broker is the tests'
//! (`gate_tests::Mosquitto::start_quiet`).

use anyhow::{Result, bail};
use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn options(id: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(format!("{id}-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_start(true);
    options
}

/// Publishes `count` payloads (`payload(i)`, i from 1, encoded gate events)
/// at QoS 1 with up to 100 in flight, to a topic a [`Subscriber`] follows,
/// as the gate's events are followed while it drains: the time from the
/// first publish until the last PUBACK and the subscriber's last message.
/// Without the subscriber the broker would do half the work it does for
/// the gate (receive, but never forward).
pub async fn raw_publish(port: u16, topic: &str, count: u64, payload: impl Fn(u64) -> Vec<u8>) -> Result<Duration> {
    let subscriber = Subscriber::connect(port, topic).await?;
    let mut opts = options("bench-raw", port);
    opts.set_outgoing_inflight_upper_limit(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 200);
    let acked = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicBool::new(false));
    let (acks, up) = (acked.clone(), connected.clone());
    let driver = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => up.store(true, Ordering::Relaxed),
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err::<(), _>(anyhow::anyhow!("raw publisher: {e}")),
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !connected.load(Ordering::Relaxed) {
        if Instant::now() > deadline || driver.is_finished() {
            bail!("the raw publisher did not connect");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let payloads: Vec<Vec<u8>> = (1..=count).map(&payload).collect();
    let start = Instant::now();
    for p in payloads {
        client.publish(topic, QoS::AtLeastOnce, false, p).await?;
    }
    let delivered = || subscriber.seen.unique.load(Ordering::Relaxed);
    while acked.load(Ordering::Relaxed) < count || delivered() < count {
        if driver.is_finished() {
            bail!("the raw publisher's connection ended after {} PUBACKs", acked.load(Ordering::Relaxed));
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("the raw publisher's subscriber got {} of {count} messages in 30 minutes", delivered());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = start.elapsed();
    driver.abort();
    Ok(took)
}

/// What a [`Subscriber`] saw of a gate's events.
#[derive(Debug, Default)]
pub struct Seen {
    /// Distinct events, counted once each.
    pub unique: AtomicU64,
    /// The highest `seq` so far.
    pub highest: AtomicU64,
    /// Redeliveries (a `seq` at or below one already seen, as at-least-once allows).
    pub repeats: AtomicU64,
    /// A `seq` that skipped ahead: the first such, else 0.
    pub first_out_of_order: AtomicU64,
    pub undecodable: AtomicU64,
}

/// A QoS 1 subscriber to one topic that checks the gate's events arrive in
/// `seq` order, without keeping them.
pub struct Subscriber {
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn connect(port: u16, topic: &str) -> Result<Subscriber> {
        let (client, mut eventloop) = AsyncClient::new(options("bench-sub", port), 1000);
        client.subscribe(topic, QoS::AtLeastOnce).await?;
        let seen = Arc::new(Seen::default());
        let subscribed = Arc::new(AtomicBool::new(false));
        let (s, sub) = (seen.clone(), subscribed.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => sub.store(true, Ordering::Relaxed),
                    Ok(Event::Incoming(Packet::Publish(p))) => match pb::GateEvent::decode(&p.payload[..]) {
                        Ok(event) => {
                            let highest = s.highest.load(Ordering::Relaxed);
                            if event.seq <= highest {
                                s.repeats.fetch_add(1, Ordering::Relaxed);
                            } else {
                                if event.seq != highest + 1 && s.first_out_of_order.load(Ordering::Relaxed) == 0 {
                                    s.first_out_of_order.store(event.seq, Ordering::Relaxed);
                                }
                                s.highest.store(event.seq, Ordering::Relaxed);
                                s.unique.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            s.undecodable.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscribed.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                bail!("the subscriber was not acknowledged within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Subscriber { seen, task })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
