//! Card read to unlock, end to end over pseudo-terminals: the daemon runs
//! in-process against the simulated SAM module and IO board. For each card
//! the latency is from the instant the simulator finished writing the last
//! byte of the 1295-byte read-base-info reply to the instant it received the
//! FC05 write switching the entry unlock coil on. In between: the reader
//! driver's decode, the identity lookup, the engine, the decision appended
//! to the outbox (SQLite, `synchronous = FULL`: durable before the gate
//! moves), the gate-control task's state machine and the Modbus driver.
//!
//! `cargo bench -p gate-tests --bench latency` (cards: `BENCH_CARDS`,
//! default 200). The database lives in a temporary folder, so `TMPDIR`
//! chooses the disk whose fsync is measured. Prints p50, p90, p99 and max.

use anyhow::{Context, Result, bail};
use gate_tests::{FixtureOptions, GateFixture, Mosquitto, RunningDaemon, resident};
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";

fn main() -> Result<()> {
    let cards: usize = std::env::var("BENCH_CARDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let samples = runtime.block_on(measure(cards))?;
    println!("{} cards over ptys", samples.len());
    report("card read frame -> unlock coil write", samples.iter().map(|s| s.total).collect());
    let splits: Vec<_> = samples.iter().filter_map(|s| s.split).collect();
    if !splits.is_empty() {
        report("  of which: frame -> decision recorded", splits.iter().map(|s| s.0).collect());
        report("  of which: recorded -> coil command sent", splits.iter().map(|s| s.1).collect());
        report("  of which: command sent -> FC05 at the board", splits.iter().map(|s| s.2).collect());
    }
    Ok(())
}

fn report(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = latencies.iter().sum::<Duration>() / latencies.len().max(1) as u32;
    println!(
        "{what}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  mean {:.3} ms",
        ms(at(0.50)),
        ms(at(0.90)),
        ms(at(0.99)),
        ms(at(1.0)),
        ms(mean)
    );
}

/// One card's path. The middle stamps are when the daemon's live feed
/// (`gatectl tail`'s) reported the recorded decision and the unlock command;
/// a feed reader's wake-up adds a little to each.
struct Sample {
    total: Duration,
    /// Frame to recorded, recorded to command sent, sent to FC05.
    split: Option<(Duration, Duration, Duration)>,
}

async fn measure(cards: usize) -> Result<Vec<Sample>> {
    let broker = Mosquitto::start()?;
    let options = FixtureOptions {
        // Someone walks through soon after each unlock, so every grant ends
        // in a passage before the next card.
        gate_sim: Some(hw_sim::gate::GateSimConfig {
            auto_passage_delay: Duration::from_millis(20),
            auto_passage_pulse: Duration::from_millis(80),
            ..Default::default()
        }),
        ..Default::default()
    };
    let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.observed.gate_io.snapshot().connected {
        if Instant::now() > deadline {
            bail!("the gate IO board did not connect");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stamps = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, bool)>::new()));
    let mut feed = daemon.observed.decisions.activity.subscribe();
    let sink = stamps.clone();
    tokio::spawn(async move {
        loop {
            let activity = match feed.recv().await {
                Ok(activity) => activity,
                // A reader that fell behind loses lines, not the feed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            let decided = matches!(activity, gate_app::Activity::Decision(_));
            let unlocked = matches!(activity, gate_app::Activity::Gate { event: gate_app::GateActivity::Unlocked, .. });
            if decided || unlocked {
                sink.lock().map(|mut s| s.push((Instant::now(), decided))).ok();
            }
        }
    });
    let stamp = |after: Instant, decided: bool| {
        stamps.lock().ok().and_then(|s| s.iter().find(|&&(at, d)| at >= after && d == decided).map(|&(at, _)| at))
    };
    let mut latencies = Vec::with_capacity(cards);
    // A few cards first: caches, the first SQLite pages, lazy connections.
    for i in 0..cards + 5 {
        let replies = fx.idcard.read_replies_written().len();
        let unlocks = unlock_writes(&fx).len();
        fx.idcard.place(hw_sim::SimCard::resident(ZHANG, "张三"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while unlock_writes(&fx).len() == unlocks {
            if Instant::now() > deadline {
                bail!("card {i}: no unlock within 5 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fx.idcard.remove();
        let read = *fx.idcard.read_replies_written().get(replies).context("the read reply was written")?;
        let unlock = unlock_writes(&fx)[unlocks];
        if i >= 5 {
            // The feed is read by another task: give it a moment.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let total = unlock.saturating_duration_since(read);
            // The breakdown is best effort: a feed line can be lost.
            let recorded = stamp(read, true);
            let commanded = recorded.and_then(|recorded| stamp(recorded, false));
            let split = recorded.zip(commanded).map(|(recorded, commanded)| {
                (
                    recorded.saturating_duration_since(read),
                    commanded.saturating_duration_since(recorded),
                    unlock.saturating_duration_since(commanded),
                )
            });
            latencies.push(Sample { total, split });
        }
        // The reader must see the field empty, and the passage complete.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop().await?;
    Ok(latencies)
}

/// When each FC05 "entry unlock on" was received by the simulated board.
fn unlock_writes(fx: &GateFixture) -> Vec<Instant> {
    fx.gate.coil_writes().into_iter().filter(|w| w.coil == 0 && w.on).map(|w| w.at).collect()
}
