//! A daemon killed with SIGKILL during an unlock pulse and started again:
//! the granted person walking through afterwards is a passage, not a
//! `door_forced` alarm, and the new daemon does not unlock a second time.
//! With `unlock_mode = "board_timed"` the relay also dropped on the board's
//! own timer while no daemon was running. The real `gated` binary, the IO
//! board simulated by hw-sim on a pseudo-terminal, a real SQLite file.

use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use gate_tests::{FixtureOptions, GateFixture, free_port, resident};
use hw_sim::gate::{GateEvent, GateSimConfig};
use hw_sim::script::PassageDir;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const UNLOCK_MS: u64 = 1500;
const WAIT: Duration = Duration::from_secs(15);

/// Kills the daemon if the test fails half-way.
use gate_tests::KillOnDrop as Daemon;

fn start_gated(config: &Path, log: &Path) -> Result<Daemon> {
    Ok(Daemon(
        Command::new(env!("CARGO_BIN_EXE_gated"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start gated")?,
    ))
}

async fn wait_for_log(path: &Path, needle: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
        if Instant::now() > deadline {
            bail!("the daemon never logged {needle:?}; its log:\n{}", std::fs::read_to_string(path)?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits for the board to switch coil 0 to `on`.
async fn wait_for_coil(
    events: &mut tokio::sync::broadcast::Receiver<GateEvent>,
    on: bool,
    within: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("coil 0 not switched {} within {within:?}", if on { "on" } else { "off" }),
            Ok(Ok(GateEvent::Coil { coil: 0, on: now })) if now == on => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("board events: {e}"),
        }
    }
}

async fn killed_during_the_pulse(unlock_mode: &str) -> Result<()> {
    // Nobody walks through on their own: the test says when.
    let options = FixtureOptions {
        gate_sim: Some(GateSimConfig { auto_passage: vec![], ..GateSimConfig::default() }),
        ..FixtureOptions::default()
    };
    let fx = GateFixture::build(free_port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let text = std::fs::read_to_string(&fx.config_path)?.replace(
        "unlock_mode = \"pulse\"\nunlock_ms = 200\n",
        &format!("unlock_mode = \"{unlock_mode}\"\nunlock_ms = {UNLOCK_MS}\npass_timeout_ms = 30000\n"),
    );
    anyhow::ensure!(text.contains("pass_timeout_ms = 30000"), "the fixture's gate keys changed");
    std::fs::write(&fx.config_path, text)?;
    let mut events = fx.gate.subscribe();

    let first_log = fx.dir.path().join("first.log");
    let mut first = start_gated(&fx.config_path, &first_log)?;
    fx.present_card(ZHANG, "张三").await?;
    wait_for_coil(&mut events, true, WAIT).await.with_context(|| {
        format!("no unlock reached the board; log:\n{}", std::fs::read_to_string(&first_log).unwrap_or_default())
    })?;
    // Killed during the pulse: nothing of it can end the grant or the pulse.
    first.0.kill()?;
    first.0.wait()?;
    let unlocks = || fx.gate.coil_writes().iter().filter(|w| w.coil == 0 && w.on).count();
    assert_eq!(unlocks(), 1);
    if unlock_mode == "board_timed" {
        // No daemon: the board's own timer drops the relay.
        wait_for_coil(&mut events, false, Duration::from_millis(UNLOCK_MS + 2000))
            .await
            .context("the relay stayed on after the daemon was killed")?;
    }

    // Started again (as systemd would): the grant is resumed, not repeated.
    let second_log = fx.dir.path().join("second.log");
    let second = start_gated(&fx.config_path, &second_log)?;
    wait_for_log(&second_log, "a grant from before the restart awaits its passage").await?;
    wait_for_log(&second_log, "ready").await?;
    let deadline = Instant::now() + WAIT;
    while fx.gate.coil(0) {
        if Instant::now() > deadline {
            bail!("the relay is still on after the restart");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The granted person walks through now.
    fx.gate.passage(PassageDir::Entry);
    let after_restart = |e: &pb::GateEvent| {
        e.kind() == pb::EventKind::Passage || (e.kind() == pb::EventKind::Alarm && e.alarm == "door_forced")
    };
    let deadline = Instant::now() + WAIT;
    let recorded = loop {
        let found: Vec<pb::GateEvent> = fx.queued_events().into_iter().filter(after_restart).collect();
        if !found.is_empty() {
            break found;
        }
        if Instant::now() > deadline {
            bail!("the passage was not recorded; log:\n{}", std::fs::read_to_string(&second_log)?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<(pb::EventKind, String)> = recorded.iter().map(|e| (e.kind(), e.alarm.clone())).collect();
    assert_eq!(kinds, [(pb::EventKind::Passage, String::new())], "a passage, not a forced door ({unlock_mode})");
    assert_eq!(recorded[0].side(), pb::Direction::Entry);
    assert_eq!(unlocks(), 1, "the new daemon did not unlock a second time ({unlock_mode})");
    let decisions = fx.queued_events().iter().filter(|e| e.kind() == pb::EventKind::Decision).count();
    assert_eq!(decisions, 1, "one card, one decision");

    let status = Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    wait_for_log(&second_log, "stopped").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_pulse_the_passage_after_the_restart_is_no_forced_door() -> Result<()> {
    killed_during_the_pulse("pulse").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_board_timed_pulse_the_relay_drops_and_the_passage_is_no_forced_door() -> Result<()> {
    killed_during_the_pulse("board_timed").await
}
