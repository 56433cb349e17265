//! A full disk: the daemon's state folder on a small tmpfs (16 MiB), filled
//! to the last byte while cards keep coming. What must hold: no unlock
//! without a recorded decision (the gate stays shut when recording fails),
//! the daemon keeps running, and once space is freed the next card is
//! decided, recorded and opens the gate again. Needs root (`mount`).

use crate::{EVENTS_TOPIC, GateFixture, Mosquitto, RunningDaemon, Subscriber, resident};
use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DiskFullReport {
    pub tmpfs_mib: u64,
    pub cards_while_full: u64,
    /// Decisions recorded while full (space SQLite still had in its files).
    pub recorded_while_full: u64,
    /// Decisions that could not be recorded: the gate stayed shut for them.
    pub failed_while_full: u64,
    pub unlocks_while_full: u64,
    /// Unlocks (over the whole run) with no pass decision recorded and
    /// delivered before them: must be 0.
    pub unrecorded_unlocks: u64,
    /// Every recorded event delivered after the disk had space again.
    pub lost: u64,
    /// The decision loop still turning after the disk was full.
    pub daemon_alive: bool,
    /// After freeing space: a resident's card passed, was recorded and opened the gate.
    pub recovered: bool,
}

impl DiskFullReport {
    pub fn ok(&self) -> bool {
        self.unrecorded_unlocks == 0
            && self.lost == 0
            && self.daemon_alive
            && self.recovered
            && self.cards_while_full > 0
    }
}

/// A tmpfs mounted for the lifetime of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Result<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs failed ({status}); the full-disk run needs root");
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

const ZHANG: (&str, &str) = ("35020319900101123X", "张三");

fn fill(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0xA5u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The last partial blocks too, byte by byte.
    while file.write(&[0]).map(|n| n > 0).unwrap_or(false) {}
    let _ = file.sync_all();
    Ok(path)
}

fn recorded(store: &Path) -> Result<u64> {
    Ok(gate_store::Store::open(store)?.next_seq(gate_sync::EVENT_STREAM)?.saturating_sub(1))
}

/// Runs the full-disk check with `cards` cards presented while full.
pub async fn run(cards: u64) -> Result<DiskFullReport> {
    let mib = 16;
    let mut report = DiskFullReport { tmpfs_mib: mib, ..DiskFullReport::default() };
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let fx = GateFixture::new(broker.port(), &[])?;
    // The clock pair that puts the IO board's writes on the events' clock.
    let (base_instant, base_wall) = (Instant::now(), gate_app::wall_clock_ms());
    let state = fx.store_path.parent().context("the state folder")?.to_owned();
    // The fixture's database files move onto the tmpfs.
    for entry in std::fs::read_dir(&state)? {
        std::fs::remove_file(entry?.path())?;
    }
    let _tmpfs = Tmpfs::mount(&state, mib)?;
    fx.import(&[resident("p-zhang", ZHANG.0, ZHANG.1)])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    let counters = daemon.observed.decisions.clone();
    fx.present_card(ZHANG.0, ZHANG.1).await?;
    if counters.passed.load(Ordering::Relaxed) != 1 {
        bail!("the first card did not pass with space left");
    }

    let filler = fill(&state)?;
    let (passed0, failed0, blocked0) = (
        counters.passed.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.blocked.load(Ordering::Relaxed),
    );
    let recorded0 = recorded(&fx.store_path).unwrap_or(0);
    let unlocks0 = fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count();
    for _ in 0..cards {
        let before = counters.passed.load(Ordering::Relaxed)
            + counters.failed.load(Ordering::Relaxed)
            + counters.blocked.load(Ordering::Relaxed);
        fx.present_card(ZHANG.0, ZHANG.1).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.passed.load(Ordering::Relaxed)
            + counters.failed.load(Ordering::Relaxed)
            + counters.blocked.load(Ordering::Relaxed)
            == before
        {
            if Instant::now() > deadline {
                bail!("a card got no outcome within 10 s on a full disk");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        report.cards_while_full += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let passed = counters.passed.load(Ordering::Relaxed) - passed0;
    report.failed_while_full = counters.failed.load(Ordering::Relaxed) - failed0;
    let blocked = counters.blocked.load(Ordering::Relaxed) - blocked0;
    report.unlocks_while_full =
        (fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count() - unlocks0) as u64;
    report.daemon_alive = daemon.observed.decision_loop_alive(Duration::from_secs(5));

    std::fs::remove_file(&filler)?;
    report.recorded_while_full = recorded(&fx.store_path)?.saturating_sub(recorded0);
    let _ = (passed, blocked);

    let unlocks1 = fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count();
    let passed1 = counters.passed.load(Ordering::Relaxed);
    let recorded1 = recorded(&fx.store_path)?;
    fx.present_card(ZHANG.0, ZHANG.1).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.passed.load(Ordering::Relaxed) == passed1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    report.recovered = counters.passed.load(Ordering::Relaxed) > passed1
        && recorded(&fx.store_path)? > recorded1
        && fx.gate.coil_writes().iter().filter(|w| w.on && w.coil == 0).count() > unlocks1;
    // Every recorded event delivered; every unlock preceded by a recorded
    // pass.
    let recorded_all = recorded(&fx.store_path)?;
    sub.wait_until(Duration::from_secs(60), "every recorded event", |s| {
        s.unique_events(EVENTS_TOPIC).iter().filter(|e| e.seq <= recorded_all).count() as u64 >= recorded_all
    })
    .await
    .ok();
    daemon.stop().await?;
    let events = sub.unique_events(EVENTS_TOPIC);
    let seqs: std::collections::BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    report.lost = (1..=recorded_all).filter(|s| !seqs.contains(s)).count() as u64;
    let grants: Vec<i64> = events
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Decision && e.decision == pb::Decision::Pass as i32)
        .map(|e| e.occurred_at_ms)
        .collect();
    let unlocks: Vec<i64> = fx
        .gate
        .coil_writes()
        .iter()
        .filter(|w| w.on && w.coil == 0)
        .map(|w| base_wall + w.at.saturating_duration_since(base_instant).as_millis() as i64)
        .collect();
    report.unrecorded_unlocks = crate::crash::stray_unlocks(grants, &unlocks);
    Ok(report)
}
