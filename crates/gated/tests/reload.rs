//! `gated` as a process under signals: SIGHUP with a bad file (refused with
//! its errors, the running configuration stays) and with a good one (the new
//! policy decides the next card, no event lost), and the systemd watchdog fed
//! from the decision loop's heartbeat. Devices are hw-sim pseudo-terminals
//! served by this test; decisions are followed through the control socket.

use anyhow::{Context, Result, bail};
use gate_app::Activity;
use gate_app::control::client;
use gate_tests::{GateFixture, free_port, resident};
use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const WAIT: Duration = Duration::from_secs(15);

/// Kills the daemon if the test fails half-way.
use gate_tests::KillOnDrop as Daemon;

fn start_gated(config: &Path, log: &Path, env: &[(&str, &str)]) -> Result<Daemon> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gated"));
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(Daemon(command.spawn().context("start gated")?))
}

async fn wait_for_log(path: &Path, needle: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            bail!("the daemon never logged {needle:?}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(daemon: &Daemon, name: &str) -> Result<()> {
    let status = Command::new("kill").args([&format!("-{name}"), &daemon.0.id().to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

/// Follows the daemon's activity on a thread (the client is blocking).
fn follow(socket: PathBuf) -> Result<mpsc::Receiver<Activity>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = client::tail(
            &socket,
            move || {
                let _ = ready_tx.send(());
            },
            |_| {},
            move |a| tx.send(a).is_ok(),
        );
    });
    ready_rx.recv_timeout(WAIT).context("the tail did not start")?;
    Ok(rx)
}

/// The next decision, collecting every event seq seen on the way.
fn next_decision(rx: &mpsc::Receiver<Activity>, seqs: &mut Vec<u64>) -> Result<gate_app::DecisionSummary> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left).context("no decision in time")? {
            Activity::Decision(d) => {
                seqs.push(d.seq);
                return Ok(d);
            }
            Activity::Passage { seq: Some(seq), .. }
            | Activity::Alarm { seq: Some(seq), .. }
            | Activity::ManualOpen { seq, .. } => seqs.push(seq),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_file_and_applies_a_good_one() -> Result<()> {
    // No broker: the daemon queues, which changes nothing here.
    let fx = GateFixture::new(free_port(), &[resident("p-001", ZHANG, "张三")])?;
    let socket = fx.config().control.socket;
    let original = std::fs::read_to_string(&fx.config_path)?;
    let log = fx.dir.path().join("gated.log");
    let daemon = start_gated(&fx.config_path, &log, &[])?;
    wait_for_log(&log, "control socket ready").await?;
    let activity = follow(socket)?;
    let mut seqs = Vec::new();

    fx.present_card(ZHANG, "张三").await?;
    let first = next_decision(&activity, &mut seqs)?;
    assert_eq!((first.decision.as_str(), first.subject.as_str()), ("pass", "350203********123X"));

    // A bad file: every error logged with its line, nothing applied.
    let bad = format!("{original}\n[policy.normal]\nallowed_categories = [\"martian\"]\n");
    std::fs::write(&fx.config_path, &bad)?;
    signal(&daemon, "HUP")?;
    let logged = wait_for_log(&log, "configuration reload refused: the running configuration stays").await?;
    let line = bad.lines().count();
    assert!(logged.contains(&format!("gated.toml:{line}:")), "the error names its line:\n{logged}");
    assert!(logged.contains("policy.normal.allowed_categories"), "{logged}");
    fx.present_card(ZHANG, "张三").await?;
    let still = next_decision(&activity, &mut seqs)?;
    assert_eq!(still.decision, "pass", "the running policy stayed");

    // A good file: residents are no longer allowed in normal mode.
    let good = format!("{original}\n[policy.normal]\nallowed_categories = [\"worker\", \"visitor\"]\n");
    std::fs::write(&fx.config_path, &good)?;
    signal(&daemon, "HUP")?;
    // The idle loop wakes on the new configuration and swaps it in.
    wait_for_log(&log, "decisions now follow the reloaded configuration").await?;
    fx.present_card(ZHANG, "张三").await?;
    let blocked = next_decision(&activity, &mut seqs)?;
    assert_eq!((blocked.decision.as_str(), blocked.reason.as_deref()), ("block", Some("category_not_allowed")));

    // No event lost across the reloads: the events stream is gap-free.
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "event seqs across the reloads");

    signal(&daemon, "TERM")?;
    let deadline = Instant::now() + WAIT;
    let mut daemon = daemon;
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait()? {
            break exit;
        }
        anyhow::ensure!(Instant::now() < deadline, "gated did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read_to_string(&log)?;
    assert!(!log.contains(ZHANG), "no ID number in clear in the log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_arrive_while_the_decision_loop_turns() -> Result<()> {
    let fx = GateFixture::new(free_port(), &[resident("p-001", ZHANG, "张三")])?;
    let notify = fx.dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify)?;
    listener.set_read_timeout(Some(Duration::from_millis(200)))?;
    let log = fx.dir.path().join("gated.log");
    let notify_path = notify.to_str().context("utf-8")?;
    // A 1 s watchdog: a ping every 0.5 s while the loop's heartbeat is fresh.
    let daemon = start_gated(&fx.config_path, &log, &[("NOTIFY_SOCKET", notify_path), ("WATCHDOG_USEC", "1000000")])?;
    wait_for_log(&log, "control socket ready").await?;
    // Counted after start-up, so the pings come from a turning decision
    // loop, not from the start-up grace.
    let listen = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut pings = 0;
        let mut buf = [0u8; 256];
        while started.elapsed() < Duration::from_secs(3) {
            if let Ok(n) = listener.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "WATCHDOG=1")
            {
                pings += 1;
            }
        }
        pings
    });
    // Cards keep the loop busy meanwhile; it must keep beating.
    fx.present_card(ZHANG, "张三").await?;
    let pings = listen.await?;
    assert!((4..=8).contains(&pings), "about six pings in 3 s, got {pings}");
    let log_text = std::fs::read_to_string(&log)?;
    assert!(!log_text.contains("withholding the watchdog"), "{log_text}");
    drop(daemon);
    Ok(())
}
