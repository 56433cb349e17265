//! The connection to the broker: no message on a subscribed topic, of any
//! size the broker accepts, can stall the uplink. A real Mosquitto, the
//! daemon in-process, cards on a simulated reader.

use anyhow::Result;
use gate_tests::{
    EVENTS_TOPIC, GateFixture, IDENTITY_TOPIC, MODE_TOPIC, Mosquitto, RunningDaemon, Subscriber, init_test_logging,
    publish, resident,
};
use std::sync::atomic::Ordering;
use std::time::Duration;

const ZHANG: &str = "35020319900101123X";
const TRUST_TOPIC: &str = "village/heshan-c03/trust";
const WAIT: Duration = Duration::from_secs(20);
/// Bigger than anything the gate accepts (8 MiB), well under Mosquitto's
/// default message size limit (256 MB).
const NINE_MB: usize = 9 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_megabyte_messages_on_subscribed_topics_do_not_stall_the_uplink() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    // The gate's own topics only: the test subscriber has a 1 MiB limit too.
    let sub = Subscriber::connect(broker.port(), "village/heshan-c03/east-1/#").await?;
    // Waiting for the gate before it even connects: a retained 9 MB trust list.
    publish(broker.port(), TRUST_TOPIC, vec![0x5a; NINE_MB], true).await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the first pass event", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;

    // While connected: more oversized messages, retained and not.
    publish(broker.port(), IDENTITY_TOPIC, vec![0xa5; NINE_MB], false).await?;
    publish(broker.port(), MODE_TOPIC, vec![0x08; NINE_MB], true).await?;
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the second pass event", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;

    let link = &daemon.observed.link;
    assert_eq!(link.connections.load(Ordering::Relaxed), 1, "one connection: no reconnect loop");
    assert_eq!(link.connection_errors.load(Ordering::Relaxed), 0);
    assert_eq!(link.downlink.mode_changes.load(Ordering::Relaxed), 0, "nothing of the oversized mode was applied");
    // The broker, told our Maximum Packet Size at CONNECT, dropped all three
    // for this client instead of sending them.
    let dropped = broker.log().matches("Dropping too large outgoing PUBLISH for gated-heshan-c03-east-1").count();
    assert_eq!(dropped, 3, "the broker dropped the three oversized messages for the gate");
    let events = sub.unique_events(EVENTS_TOPIC);
    assert_eq!(sub.events(EVENTS_TOPIC).len(), events.len(), "no event delivered twice");
    daemon.stop().await?;
    Ok(())
}
