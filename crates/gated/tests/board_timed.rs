//! A daemon death cannot hold a door open: with `[devices.gate] unlock_mode
//! = "board_timed"` the pulse width goes to the IO board with the unlock, and
//! the board (hw-sim, served by this test) drops the relay on its own. The
//! daemon is killed with SIGKILL right after a grant reaches the board; the
//! relay must drop within the pulse width with no daemon left to do it.

use anyhow::{Context, Result, bail};
use gate_tests::{FixtureOptions, GateFixture, free_port, resident};
use hw_sim::gate::{GateEvent, GateSimConfig};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const UNLOCK_MS: u64 = 1500;

/// Kills the daemon if the test fails half-way.
use gate_tests::KillOnDrop as Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_leaves_no_relay_on_with_board_timed_unlocks() -> Result<()> {
    // Nobody walks through: only the board's timer can drop the relay.
    let options = FixtureOptions {
        gate_sim: Some(GateSimConfig { auto_passage: vec![], ..GateSimConfig::default() }),
        ..FixtureOptions::default()
    };
    let fx = GateFixture::build(free_port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let text = std::fs::read_to_string(&fx.config_path)?;
    let text = text.replace(
        "unlock_mode = \"pulse\"\nunlock_ms = 200\n",
        &format!("unlock_mode = \"board_timed\"\nunlock_ms = {UNLOCK_MS}\n"),
    );
    anyhow::ensure!(text.contains("board_timed"), "the fixture's gate keys changed");
    std::fs::write(&fx.config_path, text)?;
    let log = fx.dir.path().join("gated.log");
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_gated"))
            .arg("--config")
            .arg(&fx.config_path)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start gated")?,
    );
    let mut events = fx.gate.subscribe();
    fx.present_card(ZHANG, "张三").await?;

    // The unlock reaches the board: kill the daemon at once.
    wait_for_coil(&mut events, true, Duration::from_secs(15)).await.with_context(|| {
        format!("no unlock reached the board; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    })?;
    daemon.0.kill()?;
    daemon.0.wait()?;
    // When the board executed the unlock (the event above may be read late).
    let unlocked_at = fx
        .gate
        .coil_writes()
        .iter()
        .rev()
        .find(|w| w.coil == 0 && w.on)
        .map(|w| w.at)
        .context("the board recorded no unlock write")?;
    assert!(unlocked_at.elapsed() < Duration::from_millis(UNLOCK_MS), "killed within the pulse");

    // No daemon any more: the board's own timer drops the relay.
    let dropped_at = wait_for_coil(&mut events, false, Duration::from_millis(UNLOCK_MS + 2000))
        .await
        .context("the relay stayed on after the daemon was killed")?;
    let held = dropped_at - unlocked_at;
    assert!(
        held >= Duration::from_millis(UNLOCK_MS - 100) && held <= Duration::from_millis(UNLOCK_MS + 300),
        "the relay dropped {held:?} after the unlock, the pulse width is {UNLOCK_MS} ms"
    );
    assert!(!fx.gate.coil(0));
    // The daemon never wrote the relay off: it was dead (one timed pulse,
    // and the plain offs of its start-up only).
    let writes = fx.gate.coil_writes();
    let after_unlock: Vec<_> = writes.iter().filter(|w| w.coil == 0 && w.at > unlocked_at).collect();
    assert!(after_unlock.is_empty(), "a write to the relay after the unlock: {after_unlock:?}");
    Ok(())
}

/// Waits for the board to switch coil 0 to `on`; when it did.
async fn wait_for_coil(
    events: &mut tokio::sync::broadcast::Receiver<GateEvent>,
    on: bool,
    within: Duration,
) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => bail!("coil 0 not switched {} within {within:?}", if on { "on" } else { "off" }),
            Ok(Ok(GateEvent::Coil { coil: 0, on: now })) if now == on => return Ok(Instant::now()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("board events: {e}"),
        }
    }
}
