//! A full disk on a real small file system: the state folder on an 8 MiB
//! tmpfs, filled by another writer while the daemon runs. The ballast is
//! released, `disk_low` and then `disk_full` go out, the status says so, and
//! decisions go on being recorded and published.
//!
//! Mounting needs root (CI runs as root); elsewhere the test says it was
//! skipped and why.

use anyhow::{Context, Result, bail};
use gate_app::control::client;
use gate_app::control::protocol::{Command, Reply, StatusReport};
use gate_tests::{
    ALERTS_TOPIC, EVENTS_TOPIC, GateFixture, Mosquitto, RunningDaemon, Subscriber, init_test_logging, resident,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const WAIT: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

/// A tmpfs mounted over a folder, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `path`; `None`, with the
    /// reason printed, where this machine does not allow it.
    fn mount(path: &Path, size: &str) -> Result<Option<Tmpfs>> {
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match output {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs { path: path.to_owned() })),
            Ok(out) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} (needs root; CI runs as root): {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); this test needs root to mount a tmpfs");
                Ok(None)
            }
        }
    }

    /// (free, total) bytes, as `df` would say.
    fn space(&self) -> Result<(u64, u64)> {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail,size"]).arg(&self.path).output()?;
        let text = String::from_utf8(out.stdout)?;
        let line = text.lines().nth(1).context("df printed no figures")?;
        let mut figures = line.split_whitespace().map(str::parse::<u64>);
        match (figures.next(), figures.next()) {
            (Some(Ok(free)), Some(Ok(total))) => Ok((free, total)),
            _ => bail!("unexpected df output {text:?}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it anyway, so no
            // mount outlives the test.
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Writes zeros into `path` until `bytes` are written or the disk is full;
/// returns how many were written.
fn fill(path: &Path, bytes: u64) -> Result<u64> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < bytes {
        let n = (bytes - written).min(chunk.len() as u64) as usize;
        match file.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
    // tmpfs allocates at write: what was written holds its pages now.
    let _ = file.sync_all();
    Ok(written)
}

async fn status(socket: PathBuf) -> Result<StatusReport> {
    match tokio::task::spawn_blocking(move || client::request(&socket, Command::Status)).await?? {
        Reply::Status(report) => Ok(report),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Polls the control socket until `done` holds for the status; returns it.
async fn wait_status(socket: &Path, what: &str, done: impl Fn(&StatusReport) -> bool) -> Result<StatusReport> {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = status(socket.to_owned()).await?;
        if done(&report) {
            return Ok(report);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}; the status says store {:?}", report.store);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alarms(sub: &Subscriber) -> Vec<String> {
    sub.alerts(ALERTS_TOPIC).into_iter().map(|a| a.alarm).filter(|a| !a.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_releases_the_ballast_alerts_and_keeps_recording_decisions() -> Result<()> {
    init_test_logging();
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let state = fx.dir.path().join("state");
    // Declared after the fixture: unmounted before its folder is removed.
    let Some(tmpfs) = Tmpfs::mount(&state, "8m")? else { return Ok(()) };
    // disk_low at 30% of 8 MiB (2.4 MiB free), before the ballast (1 MiB)
    // has to go.
    let text = std::fs::read_to_string(&fx.config_path)?.replace("disk_low_percent = 0", "disk_low_percent = 30");
    std::fs::write(&fx.config_path, text)?;
    fx.import(&[resident("p-001", ZHANG, "张三")])?;
    let config = fx.config();
    let socket = config.control.socket.clone();
    let ballast = state.join("gated.ballast");
    let daemon = RunningDaemon::start(config);
    daemon.wait_connected().await?;
    let d = daemon.observed.decisions.clone();

    // Room to spare: the ballast is made, the store is ok.
    let ok = wait_status(&socket, "the ballast and an ok store", |s| s.store.state == "ok" && ballast.exists()).await?;
    assert_eq!(std::fs::metadata(&ballast)?.len(), MIB, "ballast_mb = 1");
    assert!(ok.store.disk_free_bytes > 4 * MIB, "{:?}", ok.store);
    fx.present_card(ZHANG, "张三").await?;
    sub.wait_until(WAIT, "the first decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;

    // Another writer leaves 2 MiB: under the low margin, the ballast still there.
    let (free, _) = tmpfs.space()?;
    fill(&state.join("filler-1"), free - 2 * MIB)?;
    let low = wait_status(&socket, "the store low", |s| s.store.state == "low").await?;
    assert!(low.store.disk_free_bytes < 2400 * 1024, "{:?}", low.store);
    sub.wait_until(WAIT, "the disk_low alert", |s| alarms(s).contains(&"disk_low".to_owned())).await?;
    assert!(ballast.exists(), "low is not full: the ballast stays");

    // Then it takes every last byte.
    fill(&state.join("filler-2"), u64::MAX)?;
    let full = wait_status(&socket, "the store full", |s| s.store.state == "full").await?;
    assert!(!ballast.exists(), "the ballast is released when the disk fills");
    assert!(full.store.disk_free_bytes >= MIB / 2, "the ballast's space is free again: {:?}", full.store);
    sub.wait_until(WAIT, "the disk_full alert", |s| alarms(s).contains(&"disk_full".to_owned())).await?;
    assert_eq!(alarms(&sub).iter().filter(|a| *a == "disk_full").count(), 1, "one disk_full alert");

    // The gate goes on: each decision recorded and published, none failed.
    let failed = d.failed.load(Ordering::Relaxed);
    for n in 2..=4 {
        fx.present_card(ZHANG, "张三").await?;
        sub.wait_until(WAIT, "a decision on the full disk", |s| s.decisions(EVENTS_TOPIC).len() == n).await?;
    }
    assert_eq!(d.failed.load(Ordering::Relaxed), failed, "no decision failed for want of space");
    assert_eq!(d.passed.load(Ordering::Relaxed), 4);
    let seqs: Vec<u64> = sub.unique_events(EVENTS_TOPIC).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gap-free");
    // The status published to the platform tells the same story.
    sub.wait_until(Duration::from_secs(20), "a GateStatus with the store's state", |s| {
        s.last_status(gate_tests::STATUS_TOPIC)
            .is_some_and(|st| matches!(st.store_state.as_str(), "full" | "low") && st.disk_free_bytes < 2 * MIB)
    })
    .await?;

    daemon.stop().await?;
    drop(tmpfs);
    Ok(())
}
