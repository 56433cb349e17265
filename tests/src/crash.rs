//! The crash suite: the real `gated` binary against hw-sim devices and a
//! real Mosquitto, cards flowing, the broker flapping, and `kill -9` at
//! seeded random points, including during an identity snapshot, a mode
//! change, a configuration reload and a full outbox drain.
//!
//! After each kill, before the restart: every database passes
//! `PRAGMA integrity_check`, and the identity table is one whole version
//! (its person count is that of the version it says). At the end, with the
//! broker up and the outbox drained: the events a persistent subscriber
//! received, deduplicated by `event_id`, have gap-free `seq` and no `seq`
//! with two event ids; every unlock the IO board saw matches an earlier
//! recorded grant; the single-use visitor pass was honoured at most once.

use crate::{EVENTS_TOPIC, FixtureOptions, GateFixture, Mosquitto, SITE, Subscriber, free_port};
use anyhow::{Context, Result, bail};
use gate_core::CredentialKind;
use gate_proto::v1 as pb;
use hw_sim::platform::{Platform, PlatformConfig, PlatformPerson, generate_people};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the kill falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Scenario {
    /// Cards being decided.
    Cards,
    /// The broker stopped and started again.
    BrokerFlap,
    /// A chunked identity snapshot arriving.
    Snapshot,
    /// A mode change from the platform arriving.
    ModeChange,
    /// A configuration reload (SIGHUP) being applied.
    Reload,
    /// A full outbox draining after a broker outage.
    Drain,
}

const SCENARIOS: [Scenario; 6] = [
    Scenario::Cards,
    Scenario::Snapshot,
    Scenario::ModeChange,
    Scenario::Reload,
    Scenario::Drain,
    Scenario::BrokerFlap,
];

/// What a run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CrashSummary {
    pub seed: u64,
    pub trials: u32,
    /// `seq` numbers recorded by the gate and never delivered (gaps not
    /// explained by an `outbox_overflow` event).
    pub lost: u64,
    /// `seq` numbers delivered with two different event ids.
    pub duplicated_seq: u64,
    /// Unlocks the IO board saw with no earlier recorded grant.
    pub stray_unlocks: u64,
    /// Databases failing `integrity_check`, or an identity table that is
    /// not one whole version, after a kill.
    pub corrupt: u64,
    /// Restarts after which the daemon did not come up.
    pub failed_restarts: u64,
    /// Times the single-use visitor pass let someone through beyond once.
    pub pass_reuse: u64,
    /// The last `seq` the gate recorded on its event stream.
    pub recorded: u64,
    /// Distinct `seq` numbers delivered.
    pub events: u64,
    pub unlocks: u64,
    /// Times the single-use visitor pass let someone through (1 expected).
    pub pass_honoured: u64,
    /// Identity versions found in force after a kill (each one whole).
    pub identity_versions: BTreeSet<u64>,
    /// Mode changes the gate recorded (events of kind mode change).
    pub mode_changes: u64,
    pub kills: BTreeMap<String, u32>,
    pub seconds: f64,
    /// Where the run's files were kept, if asked.
    pub kept: Option<PathBuf>,
}

impl CrashSummary {
    pub fn line(&self) -> String {
        format!(
            "trials {} / lost {} / duplicated seq {} / stray unlocks {} / corrupt {} / failed restarts {}",
            self.trials, self.lost, self.duplicated_seq, self.stray_unlocks, self.corrupt, self.failed_restarts
        )
    }

    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated_seq == 0
            && self.stray_unlocks == 0
            && self.corrupt == 0
            && self.failed_restarts == 0
            && self.pass_reuse == 0
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct CrashOptions {
    pub trials: u32,
    pub seed: u64,
    /// The `gated` binary.
    pub gated: PathBuf,
    /// Copy the databases, WAL files, the daemon's log and the MQTT capture
    /// here at the end (for the privacy scan).
    pub keep: Option<PathBuf>,
}

/// SplitMix64: the run follows from its seed alone.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn ms(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

/// The `gated` binary beside the running test or tool (`target/<profile>`).
pub fn find_gated() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("a folder")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("gated");
    if !path.exists() {
        bail!("{} is missing: build it first (`cargo build -p gated`; `cargo test --workspace` does)", path.display());
    }
    Ok(path)
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The daemon as a child process, its output appended to a log file.
struct Daemon {
    child: Option<Child>,
    gated: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics_port: u16,
}

impl Daemon {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.gated)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting gated")?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reaped.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, waited for (the daemon switches coils off and stops).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child, Duration::from_secs(15));
        }
    }

    /// Ready: the metrics endpoint answers (it starts after the store
    /// opened and the tasks were spawned).
    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if metric(self.metrics_port, "gated_uptime_seconds").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "gated did not answer on its metrics port within {timeout:?}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One sample of the metrics endpoint, summed over its label sets; `Err`
/// when the endpoint does not answer.
pub async fn metric(port: u16, name: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).context("an HTTP response")?;
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        if key == name || key.starts_with(&format!("{name}{{")) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found.with_context(|| format!("no {name} in the metrics"))
}

/// `PRAGMA integrity_check` of one database file.
pub fn integrity_ok(path: &Path) -> Result<bool> {
    let conn = rusqlite::Connection::open(path)?;
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    Ok(verdict == "ok")
}

/// The gate's last recorded `seq` of a stream (0 when none).
fn last_seq(store: &Path, stream: &str) -> Result<u64> {
    Ok(gate_store::Store::open(store)?.next_seq(stream)?.saturating_sub(1))
}

fn outbox_depth(store: &Path) -> Result<u64> {
    Ok(gate_store::Store::open(store)?.outbox_stats()?.depth)
}

/// The two identity tables the platform alternates between: whichever
/// version is in force, its person count must be exactly this.
fn village(version: u64) -> Vec<PlatformPerson> {
    let all = generate_people(40);
    let n = if version.is_multiple_of(2) { 40 } else { 25 };
    all.into_iter().take(n).collect()
}

/// Runs the suite.
pub async fn run(options: CrashOptions) -> Result<CrashSummary> {
    let started = Instant::now();
    let mut rng = Rng(options.seed);
    let mut summary = CrashSummary { seed: options.seed, ..CrashSummary::default() };
    let mut broker = Mosquitto::start()?;
    // Everything under the site: the capture the privacy scan reads.
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let platform_key = ed25519_dalek::SigningKey::from_bytes(&[11; 32]);
    let metrics_port = free_port();
    let fx = GateFixture::build(
        broker.port(),
        &[],
        FixtureOptions {
            qr_scanner: true,
            extra_toml: format!(
                "[passes]\nplatform_keys = [\"{}\"]\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n[policy]\nversion = \"crash-0\"\n",
                hex::encode(platform_key.verifying_key().to_bytes())
            ),
            ..Default::default()
        },
    )?;
    let site_key = hw_sim::platform::read_site_key(&fx.dir.path().join("site.key"))?;
    let mut platform_config = PlatformConfig::new("127.0.0.1", broker.port(), SITE, site_key);
    platform_config.answer_sync = true;
    platform_config.signing = Some(crate::platform_key());
    let platform = Platform::connect(platform_config).await?;
    // Version 1, before the daemon first starts: applied at its first
    // connection through the resync it asks for.
    let mut versions: HashMap<u64, u64> = HashMap::new();
    versions.insert(0, 0);
    let mut identity_version = 1;
    versions.insert(identity_version, village(identity_version).len() as u64);
    platform.publish_snapshot(&village(identity_version), identity_version, 10).await?;

    let log = fx.dir.path().join("gated.log");
    let mut daemon =
        Daemon { child: None, gated: options.gated.clone(), config: fx.config_path.clone(), log, metrics_port };
    daemon.spawn()?;
    daemon.wait_ready(Duration::from_secs(20)).await.context("the first start")?;

    // The clock pair that puts the IO board's writes on the events' clock.
    let (base_instant, base_wall) = (Instant::now(), wall_ms());

    // Cards flow all the time, the daemon alive or not.
    let flowing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let idcard = fx.idcard.clone();
        let flowing = flowing.clone();
        let mut feed_rng = Rng(options.seed ^ 0xCA4D);
        let people = village(0);
        tokio::spawn(async move {
            while flowing.load(Ordering::Relaxed) {
                let i = (feed_rng.next() % (people.len() as u64 + 5)) as usize;
                let (id, name) = match people.get(i) {
                    Some(p) => (p.id_number.clone(), p.name.clone()),
                    None => ("440524188001010014".to_owned(), "路人".to_owned()),
                };
                let reads = idcard.base_info_reads();
                idcard.place(hw_sim::SimCard::resident(&id, &name));
                let deadline = Instant::now() + Duration::from_millis(800);
                while idcard.base_info_reads() == reads && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                idcard.remove();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // One single-use visitor pass, shown once in every trial.
    let now = wall_ms();
    let pass = gate_pass::sign(
        &gate_pass::VisitorPass {
            kid: String::new(),
            site: SITE.into(),
            pass_id: "vp-single-use".into(),
            host_person_id: "p-host".into(),
            visitor_id_hash: hex::encode(fx.credential_key(CredentialKind::IdNumber, "11010519491231002X")),
            valid_from_ms: now - 60_000,
            valid_to_ms: now + 24 * 3_600_000,
            gates: vec![],
            max_uses: 1,
        },
        &platform_key,
    );
    let qr = fx.qr.clone().context("a QR scanner")?;
    let identity_db = gate_store::identity_path(&fx.store_path);
    let mut mode_toggle = false;

    for trial in 0..options.trials {
        let scenario = SCENARIOS[(trial as usize + (options.seed % 6) as usize) % SCENARIOS.len()];
        *summary.kills.entry(format!("{scenario:?}")).or_default() += 1;
        tokio::time::sleep(rng.ms(200, 700)).await;
        qr.scan(&pass);
        match scenario {
            Scenario::Cards => tokio::time::sleep(rng.ms(0, 1500)).await,
            Scenario::BrokerFlap => {
                broker.stop();
                tokio::time::sleep(rng.ms(200, 800)).await;
                broker.resume()?;
                tokio::time::sleep(rng.ms(0, 800)).await;
            }
            Scenario::Snapshot => {
                identity_version += 1;
                let people = village(identity_version);
                versions.insert(identity_version, people.len() as u64);
                platform.publish_snapshot(&people, identity_version, 5).await?;
                tokio::time::sleep(rng.ms(0, 150)).await;
            }
            Scenario::ModeChange => {
                mode_toggle = !mode_toggle;
                let mode = if mode_toggle { pb::Mode::Sporadic } else { pb::Mode::Normal };
                platform.publish_mode(mode, wall_ms(), "crash-suite", "trial").await?;
                tokio::time::sleep(rng.ms(0, 60)).await;
            }
            Scenario::Reload => {
                let text = std::fs::read_to_string(&fx.config_path)?;
                let start = text.find("version = \"crash-").context("the policy version line")?;
                let end = start + text[start..].find('\n').context("a line end")?;
                let text = format!("{}version = \"crash-{}\"{}", &text[..start], trial + 1, &text[end..]);
                std::fs::write(&fx.config_path, text)?;
                if let Some(pid) = daemon.pid() {
                    let _ = Command::new("kill").arg("-HUP").arg(pid.to_string()).status();
                }
                tokio::time::sleep(rng.ms(0, 60)).await;
            }
            Scenario::Drain => {
                broker.stop();
                tokio::time::sleep(rng.ms(1000, 2000)).await;
                broker.resume()?;
                // Killed while the queue drains: after the reconnection.
                let deadline = Instant::now() + Duration::from_secs(10);
                while metric(metrics_port, "gated_mqtt_connected").await.unwrap_or(0.0) < 1.0
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(rng.ms(0, 300)).await;
            }
        }
        daemon.kill9();
        // The files as the last kill left them (WAL included), for the
        // privacy scan.
        if let Some(keep) = options.keep.as_ref().filter(|_| trial + 1 == options.trials) {
            copy_files(fx.store_path.parent().context("the state folder")?, &keep.join("after-kill"))?;
        }
        // Dead: the files as the kill left them.
        for db in [&fx.store_path, &identity_db] {
            if !integrity_ok(db).with_context(|| format!("integrity_check of {}", db.display()))? {
                summary.corrupt += 1;
                eprintln!("crash suite: trial {trial} ({scenario:?}): {} fails integrity_check", db.display());
            }
        }
        {
            let store = gate_store::Store::open(&fx.store_path)?;
            let version = store.identity_state()?.version;
            let people = store.person_count()?;
            summary.identity_versions.insert(version);
            if versions.get(&version) != Some(&people) {
                summary.corrupt += 1;
                eprintln!(
                    "crash suite: trial {trial} ({scenario:?}): identity version {version} holds {people} people, not {:?}",
                    versions.get(&version)
                );
            }
        }
        summary.trials += 1;
        daemon.spawn()?;
        if let Err(e) = daemon.wait_ready(Duration::from_secs(20)).await {
            summary.failed_restarts += 1;
            eprintln!("crash suite: trial {trial} ({scenario:?}): {e}");
            daemon.kill9();
            daemon.spawn()?;
            daemon.wait_ready(Duration::from_secs(20)).await.context("a second restart")?;
        }
    }

    // Settle: cards stop, the broker is up, the outbox drains, the
    // subscriber has every recorded event.
    flowing.store(false, Ordering::Relaxed);
    let _ = feeder.await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_depth(&fx.store_path)? > 0 {
        if Instant::now() > deadline {
            bail!("the outbox did not drain within 60 s ({} left)", outbox_depth(&fx.store_path)?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = last_seq(&fx.store_path, gate_sync::EVENT_STREAM)?;
    let delivered_all = sub
        .wait_until(Duration::from_secs(30), "every recorded event", |s| {
            s.unique_events(EVENTS_TOPIC).iter().map(|e| e.seq).collect::<BTreeSet<_>>().len() as u64 >= recorded
        })
        .await;
    daemon.stop();
    if let Err(e) = delivered_all {
        eprintln!("crash suite: {e}");
    }

    // Seq: every recorded number delivered, each with one event id.
    let events = sub.events(EVENTS_TOPIC);
    let findings = seq_findings(&events, recorded);
    summary.events = findings.delivered;
    summary.duplicated_seq = findings.duplicated;
    summary.lost = findings.lost;

    // Unlocks: each needs a grant recorded before it, used once.
    let grants: Vec<i64> = unique(&events)
        .iter()
        .filter(|e| {
            (e.kind() == pb::EventKind::Decision && e.decision == pb::Decision::Pass as i32)
                || e.kind() == pb::EventKind::ManualOpen
        })
        .map(|e| e.occurred_at_ms)
        .collect();
    let unlocks: Vec<i64> = fx
        .gate
        .coil_writes()
        .iter()
        .filter(|w| w.on && (w.coil == 0 || w.coil == 1))
        .map(|w| base_wall + w.at.saturating_duration_since(base_instant).as_millis() as i64)
        .collect();
    summary.unlocks = unlocks.len() as u64;
    summary.stray_unlocks = stray_unlocks(grants, &unlocks);
    let honoured = unique(&events)
        .iter()
        .filter(|e| {
            e.kind() == pb::EventKind::Decision
                && e.pass_id == "vp-single-use"
                && e.decision == pb::Decision::Pass as i32
        })
        .count() as u64;
    summary.pass_honoured = honoured;
    summary.pass_reuse = honoured.saturating_sub(1);
    summary.recorded = recorded;
    summary.mode_changes = unique(&events).iter().filter(|e| e.kind() == pb::EventKind::ModeChange).count() as u64;
    summary.seconds = started.elapsed().as_secs_f64();

    if let Some(keep) = &options.keep {
        copy_files(fx.store_path.parent().context("the state folder")?, keep)?;
        std::fs::copy(&daemon.log, keep.join("gated.log"))?;
        // Two captures: what the gate sent (uplink) and what the simulated
        // platform sent it (downlink), so a hit says which side carried it.
        let capture = |uplink: bool| -> Vec<u8> {
            sub.messages()
                .iter()
                .filter(|m| (crate::stream_of_topic(&m.topic) == "unknown") == uplink)
                .flat_map(|m| {
                    let mut bytes = m.topic.as_bytes().to_vec();
                    bytes.push(b'\n');
                    bytes.extend_from_slice(&m.payload);
                    bytes.push(b'\n');
                    bytes
                })
                .collect()
        };
        std::fs::write(keep.join("mqtt-uplink.bin"), capture(true))?;
        std::fs::write(keep.join("mqtt-downlink.bin"), capture(false))?;
        summary.kept = Some(keep.clone());
    }
    Ok(summary)
}

/// Copies the files (not folders) of `from` into `to`, made if missing.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().context("a name")?))?;
        }
    }
    Ok(())
}

fn unique(events: &[pb::GateEvent]) -> Vec<pb::GateEvent> {
    let mut seen = std::collections::HashSet::new();
    events.iter().filter(|e| seen.insert(e.event_id.clone())).cloned().collect()
}

/// What the delivered events say about the recorded `seq` numbers.
#[derive(Debug, PartialEq, Eq)]
struct SeqFindings {
    /// Distinct `seq` numbers delivered.
    delivered: u64,
    /// `seq` numbers delivered with more than one event id.
    duplicated: u64,
    /// Numbers in `1..=recorded` never delivered and not explained by an
    /// `outbox_overflow` event.
    lost: u64,
}

fn seq_findings(events: &[pb::GateEvent], recorded: u64) -> SeqFindings {
    let mut ids_by_seq: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for e in events {
        ids_by_seq.entry(e.seq).or_default().insert(e.event_id.as_str());
    }
    let overflowed = overflow_explained(events);
    SeqFindings {
        delivered: ids_by_seq.len() as u64,
        duplicated: ids_by_seq.values().filter(|ids| ids.len() > 1).count() as u64,
        lost: (1..=recorded).filter(|s| !ids_by_seq.contains_key(s) && !overflowed.contains(s)).count() as u64,
    }
}

/// Unlocks (wall-clock ms) with no grant recorded before them: each unlock
/// takes the latest unused grant at or before it (5 ms for the order in
/// which the two clocks were read), so one grant never explains two
/// unlocks.
pub(crate) fn stray_unlocks(mut grants: Vec<i64>, unlocks: &[i64]) -> u64 {
    grants.sort_unstable();
    let mut used = vec![false; grants.len()];
    let mut stray = 0;
    for unlock in unlocks {
        match (0..grants.len()).rev().find(|&i| !used[i] && grants[i] <= unlock + 5) {
            Some(i) => used[i] = true,
            None => stray += 1,
        }
    }
    stray
}

/// `seq` numbers of the event stream an `outbox_overflow` event says were
/// dropped (its `dropped` ranges), none when the gate never overflowed.
fn overflow_explained(events: &[pb::GateEvent]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in events.iter().filter(|e| e.kind() == pb::EventKind::OutboxOverflow) {
        for range in e.dropped.iter().filter(|r| r.stream == gate_sync::EVENT_STREAM) {
            out.extend(range.first..=range.last.min(range.first + 10_000_000));
        }
    }
    out
}

/// The ID numbers and names of everyone the crash suite shows the gate
/// (the platform's people, the stranger, the visitor), for the privacy scan.
pub fn test_people() -> (Vec<String>, Vec<String>) {
    let people = village(0);
    let mut ids: Vec<String> = people.iter().map(|p| p.id_number.clone()).collect();
    let mut names: Vec<String> = people.iter().map(|p| p.name.clone()).collect();
    ids.extend(["440524188001010014".to_owned(), "11010519491231002X".to_owned()]);
    names.push("路人".to_owned());
    (ids, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, id: &str) -> pb::GateEvent {
        pb::GateEvent { seq, event_id: id.into(), ..Default::default() }
    }

    #[test]
    fn a_missing_seq_is_lost_unless_an_overflow_event_names_it() {
        let events = vec![event(1, "a"), event(1, "a"), event(3, "c")];
        assert_eq!(seq_findings(&events, 3), SeqFindings { delivered: 2, duplicated: 0, lost: 1 });
        let mut overflow = event(4, "d");
        overflow.kind = pb::EventKind::OutboxOverflow as i32;
        overflow.dropped = vec![pb::SeqRange { stream: gate_sync::EVENT_STREAM.into(), first: 2, last: 2 }];
        let explained = [events, vec![overflow]].concat();
        assert_eq!(seq_findings(&explained, 4), SeqFindings { delivered: 3, duplicated: 0, lost: 0 });
    }

    #[test]
    fn one_seq_with_two_event_ids_is_a_duplicate() {
        let events = vec![event(1, "a"), event(2, "b"), event(2, "b2")];
        assert_eq!(seq_findings(&events, 2), SeqFindings { delivered: 2, duplicated: 1, lost: 0 });
    }

    #[test]
    fn an_unlock_before_any_grant_or_beyond_the_grants_is_stray() {
        assert_eq!(stray_unlocks(vec![1_000, 2_000], &[1_010, 2_020]), 0);
        // Before the first grant.
        assert_eq!(stray_unlocks(vec![1_000], &[900]), 1);
        // Two unlocks, one grant: the second is stray.
        assert_eq!(stray_unlocks(vec![1_000], &[1_010, 1_500]), 1);
    }
}
