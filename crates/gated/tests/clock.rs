//! A box whose clock was reset (a flat RTC battery gives 2000 after a power
//! cut) must not decide as if it were then. The real `gated` binary runs
//! with its wall clock really set back by libfaketime (Debian's
//! `libfaketime`, preloaded into the daemon itself, the monotonic clock left
//! alone); the trusted time floor it persisted from a verified platform
//! message keeps its decisions in the present, and it raises `clock_behind`.

use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use gate_tests::{
    ALERTS_TOPIC, EVENTS_TOPIC, GateFixture, MODE_TOPIC, Mosquitto, RunningDaemon, Subscriber, mode_change,
    publish_signed, resident,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const WAIT: Duration = Duration::from_secs(20);
/// 2000-01-01T00:00:00Z.
const Y2000_MS: i64 = 946_684_800_000;

/// Kills the daemon if the test fails half-way.
use gate_tests::KillOnDrop as Daemon;

fn floor(fx: &GateFixture) -> i64 {
    let store = gate_store::Store::open(&fx.store_path).expect("store");
    store.meta_get("time.floor").expect("meta").and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_reset_to_2000_decides_on_the_trusted_floor_and_says_clock_behind() -> Result<()> {
    if !Path::new(LIBFAKETIME).exists() {
        bail!("{LIBFAKETIME} is missing: apt-get install -y libfaketime (the test needs a really reset clock)");
    }
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;

    // With a true clock: a verified platform message sets the floor.
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let signed_at = gate_app::wall_clock_ms();
    publish_signed(broker.port(), MODE_TOPIC, mode_change(pb::Mode::Normal, 0, "heshan-office"), true).await?;
    let deadline = Instant::now() + WAIT;
    while floor(&fx) < signed_at - 5_000 {
        if Instant::now() > deadline {
            bail!("the floor was not persisted (it is {})", floor(&fx));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await?;
    let persisted = floor(&fx);

    // The power cut: the box comes back in 2000.
    let log = fx.dir.path().join("gated.log");
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_gated"))
            .arg("--config")
            .arg(&fx.config_path)
            .env("RUST_LOG", "info")
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", "@2000-01-01 08:00:00")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("TZ", "UTC")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start gated")?,
    );
    let show_log = || std::fs::read_to_string(&log).unwrap_or_default();
    sub.wait_until(WAIT, "the clock_behind alert", |s| {
        s.alerts(ALERTS_TOPIC).iter().any(|a| a.alarm == "clock_behind")
    })
    .await
    .with_context(|| format!("gated log:\n{}", show_log()))?;
    let alert = sub.alerts(ALERTS_TOPIC).into_iter().find(|a| a.alarm == "clock_behind").expect("alert");
    let wall_s: i64 = alert.facts.get("wall_s").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        (Y2000_MS / 1000..Y2000_MS / 1000 + 86_400).contains(&wall_s),
        "the daemon's clock really was 2000: {wall_s}"
    );
    assert!(alert.occurred_at_ms >= persisted, "the alert is dated on the floor, not in 2000");

    // The resident is valid from 2020: deciding in 2000 would refuse them
    // as not yet valid. The floor decides.
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the decision", |s| !s.decisions(EVENTS_TOPIC).is_empty())
        .await
        .with_context(|| format!("gated log:\n{}", show_log()))?;
    let decision = sub.decisions(EVENTS_TOPIC).pop().expect("a decision");
    assert_eq!(decision.decision(), pb::Decision::Pass, "{:?}", decision.reason());
    assert!(decision.occurred_at_ms >= persisted, "decided at {} (floor {persisted})", decision.occurred_at_ms);
    assert!(show_log().contains("clock_behind"), "the log says it");
    Ok(())
}
