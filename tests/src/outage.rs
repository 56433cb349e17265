//! A broker outage under load: the daemon (in-process, on hw-sim devices
//! and real SQLite files) decides cards while the broker is down for a set
//! time; every card still gets its decision (residents pass, strangers are
//! blocked, the gate opens for each pass), and once the broker is back every
//! event recorded is delivered, in `seq` order, none lost.

use crate::{EVENTS_TOPIC, GateFixture, Mosquitto, RunningDaemon, Subscriber, resident};
use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OutageReport {
    pub outage_seconds: f64,
    /// Cards presented while the broker was down.
    pub cards_during_outage: u64,
    /// Of them, residents (must pass) and strangers (must be blocked).
    pub residents_during_outage: u64,
    pub passed_during_outage: u64,
    pub blocked_during_outage: u64,
    /// Decisions that failed (could not be recorded): must be 0.
    pub failed_decisions: u64,
    /// Unlocks the IO board saw during the outage (one per pass).
    pub unlocks_during_outage: u64,
    /// The outbox at its deepest, just before the broker came back.
    pub outbox_peak: u64,
    pub events_recorded: u64,
    pub events_delivered: u64,
    pub lost: u64,
    /// Every event's first arrival came after every lower `seq`'s.
    pub delivered_in_order: bool,
    /// From the broker's return to the last event delivered.
    pub drain_seconds: f64,
}

impl OutageReport {
    pub fn ok(&self) -> bool {
        self.failed_decisions == 0
            && self.lost == 0
            && self.delivered_in_order
            && self.passed_during_outage == self.residents_during_outage
            && self.blocked_during_outage == self.cards_during_outage - self.residents_during_outage
            && self.unlocks_during_outage == self.passed_during_outage
            && self.events_delivered >= self.events_recorded
    }
}

const PEOPLE: [(&str, &str, &str); 3] = [
    ("p-zhang", "35020319900101123X", "张三"),
    ("p-li", "11010519491231002X", "李四"),
    ("p-wang", "440524188001010014", "王五"),
];
/// Well formed, in no table.
const STRANGER: &str = "350203198001010013";

/// Runs the outage for `outage` with cards flowing.
pub async fn run(outage: Duration) -> Result<OutageReport> {
    let mut report = OutageReport::default();
    let mut broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/heshan-c03/east-1/#").await?;
    let people: Vec<_> = PEOPLE.iter().map(|(p, id, name)| resident(p, id, name)).collect();
    let fx = GateFixture::new(broker.port(), &people)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let counters = daemon.observed.decisions.clone();
    // One card with the broker up: the path works.
    fx.present_card(PEOPLE[0].1, PEOPLE[0].2).await?;

    broker.stop();
    let started = Instant::now();
    let (passed0, blocked0, failed0) = (
        counters.passed.load(Ordering::Relaxed),
        counters.blocked.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
    );
    let unlocks0 = fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count();
    let mut i = 0u64;
    let mut passed_so_far = passed0;
    while started.elapsed() < outage {
        let (id, name, is_resident) = match i % 4 {
            3 => (STRANGER, "路人", false),
            n => (PEOPLE[n as usize].1, PEOPLE[n as usize].2, true),
        };
        let decided = counters.passed.load(Ordering::Relaxed) + counters.blocked.load(Ordering::Relaxed);
        let unlocks_before = fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count();
        fx.present_card(id, name).await?;
        // The card's decision, before the next one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.passed.load(Ordering::Relaxed) + counters.blocked.load(Ordering::Relaxed) == decided {
            if Instant::now() > deadline {
                bail!("card {i} got no decision within 10 s during the outage");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A pass opens the gate: wait for its unlock and for the pulse to
        // end, so each pass has an unlock of its own to count.
        if counters.passed.load(Ordering::Relaxed) > passed_so_far {
            let deadline = Instant::now() + Duration::from_secs(10);
            while fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count() == unlocks_before
                || fx.gate.coil(0)
            {
                if Instant::now() > deadline {
                    bail!("card {i} passed during the outage but the gate did not open and close within 10 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        passed_so_far = counters.passed.load(Ordering::Relaxed);
        report.cards_during_outage += 1;
        report.residents_during_outage += u64::from(is_resident);
        i += 1;
    }
    report.passed_during_outage = counters.passed.load(Ordering::Relaxed) - passed0;
    report.blocked_during_outage = counters.blocked.load(Ordering::Relaxed) - blocked0;
    report.failed_decisions = counters.failed.load(Ordering::Relaxed) - failed0;
    report.unlocks_during_outage =
        (fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count() - unlocks0) as u64;
    report.outbox_peak = gate_store::Store::open(&fx.store_path)?.outbox_stats()?.depth;
    report.outage_seconds = started.elapsed().as_secs_f64();

    broker.resume()?;
    let back = Instant::now();
    let recorded = gate_store::Store::open(&fx.store_path)?.next_seq(gate_sync::EVENT_STREAM)?.saturating_sub(1);
    report.events_recorded = recorded;
    sub.wait_until(Duration::from_secs(600), "every recorded event after the outage", |s| {
        s.unique_events(EVENTS_TOPIC).iter().filter(|e| e.seq <= recorded).count() as u64 >= recorded
    })
    .await?;
    report.drain_seconds = back.elapsed().as_secs_f64();
    daemon.stop().await?;

    let unique = sub.unique_events(EVENTS_TOPIC);
    let seqs: BTreeSet<u64> = unique.iter().map(|e| e.seq).collect();
    report.events_delivered = seqs.len() as u64;
    report.lost = (1..=recorded).filter(|s| !seqs.contains(s)).count() as u64;
    report.delivered_in_order = unique.windows(2).all(|w| w[0].seq < w[1].seq);
    Ok(report)
}
