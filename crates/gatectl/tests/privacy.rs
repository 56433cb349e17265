//! Privacy at rest, end to end: residents reach a gate both ways (a
//! `gatectl identity import` of a CSV file and a signed snapshot from the
//! platform through a real Mosquitto), present their ID cards on the
//! simulated reader and pass; then every file the gate wrote (databases,
//! write-ahead logs, the daemon's log at debug level, the technician
//! screens) is scanned byte by byte for their names and ID numbers in UTF-8,
//! UTF-16LE and UTF-16BE. The same scan is first shown to find a planted
//! name in each encoding, so a clean result means something.

use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use gate_tests::{EVENTS_TOPIC, GateFixture, Mosquitto, RunningDaemon, SITE, Subscriber};
use hw_sim::platform::{Platform, PlatformConfig, PlatformPerson};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
/// 2020-01-01 to 2099-12-31, China time.
const VALID: (i64, i64) = (1_577_808_000_000, 4_102_415_999_999);

/// (person id, ID number, name, masked name): the first two come by
/// `gatectl identity import`, the others in the platform's snapshot.
const IMPORTED: [(&str, &str, &str, &str); 2] =
    [("p-chen", "35020319900101123X", "陈建国", "陈*国"), ("p-ouyang", "11010519491231002X", "欧阳娜娜", "欧**娜")];
const SNAPSHOT: [(&str, &str, &str, &str); 2] =
    [("p-smith", "440524188001010014", "John Smith", "J*** S****"), ("p-li", "810000199408230021", "李四光", "李*光")];

/// The daemon's log: every line of this test process, at debug level, in a
/// file of the gate's folder (set once per process; the file is chosen by
/// the one test below).
static LOG_FILE: OnceLock<Arc<Mutex<Option<std::fs::File>>>> = OnceLock::new();

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Option<std::fs::File>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().map_err(|_| std::io::Error::other("log lock"))?.as_mut() {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().map_err(|_| std::io::Error::other("log lock"))?.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

fn capture_log_into(path: &Path) -> Result<()> {
    let slot = LOG_FILE.get_or_init(|| {
        let slot = Arc::new(Mutex::new(None));
        let writer = LogWriter(slot.clone());
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("debug")
            .with_writer(move || writer.clone())
            .try_init();
        slot
    });
    *slot.lock().map_err(|_| anyhow::anyhow!("log lock"))? = Some(std::fs::File::create(path)?);
    Ok(())
}

/// The ways a text can sit in a file: UTF-8, UTF-16 little- and big-endian.
fn encodings(text: &str) -> [(&'static str, Vec<u8>); 3] {
    let units: Vec<u16> = text.encode_utf16().collect();
    [
        ("UTF-8", text.as_bytes().to_vec()),
        ("UTF-16LE", units.iter().flat_map(|u| u.to_le_bytes()).collect()),
        ("UTF-16BE", units.iter().flat_map(|u| u.to_be_bytes()).collect()),
    ]
}

/// Every regular file under `dir` (symbolic links, such as the simulated
/// devices' pseudo-terminals, are not followed).
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files.extend(regular_files(&entry.path())?);
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Each (file, secret, encoding) where a secret is found.
fn scan(dir: &Path, secrets: &[&str]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for file in regular_files(dir)? {
        let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        for secret in secrets {
            for (encoding, needle) in encodings(secret) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    found.push(format!("{} holds {secret:?} in {encoding}", file.display()));
                }
            }
        }
    }
    Ok(found)
}

fn secrets() -> Vec<&'static str> {
    IMPORTED.iter().chain(&SNAPSHOT).flat_map(|(_, id, name, _)| [*id, *name]).collect()
}

async fn gatectl(args: &[&str], log: &Path) -> Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_gatectl")).args(args).kill_on_drop(true).output(),
    )
    .await
    .context("gatectl hung")??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // What the technician saw goes into the scanned log too.
    std::fs::OpenOptions::new().append(true).create(true).open(log)?.write_all(text.as_bytes())?;
    Ok(text)
}

#[test]
fn the_scan_finds_a_planted_name_in_each_encoding() -> Result<()> {
    for (encoding, bytes) in encodings("陈建国") {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("state"))?;
        let mut planted = b"SQLite format 3\0 some page bytes ".to_vec();
        planted.extend(&bytes);
        planted.extend(b" more bytes");
        std::fs::write(dir.path().join("state/gated.identity.db-wal"), planted)?;
        let found = scan(dir.path(), &["陈建国", "35020319900101123X"])?;
        assert_eq!(found.len(), 1, "{encoding}: {found:?}");
        assert!(found[0].ends_with(&format!("holds \"陈建国\" in {encoding}")), "{found:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_name_or_id_number_in_clear_in_any_file_after_a_real_run() -> Result<()> {
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/heshan-c03/east-1/#").await?;
    let fx = GateFixture::new(broker.port(), &[])?;
    let log = fx.dir.path().join("gated.log");
    capture_log_into(&log)?;
    let config = fx.config_path.to_str().context("utf-8 path")?.to_owned();

    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    // The platform's snapshot, signed, through the broker.
    let key = hw_sim::platform::read_site_key(&fx.dir.path().join("site.key"))?;
    let mut platform_config = PlatformConfig::new("127.0.0.1", broker.port(), SITE, key);
    platform_config.signing = Some(gate_tests::platform_key());
    // A platform that sends names in clear: the gate must mask them itself.
    platform_config.clear_names = true;
    let platform = Platform::connect(platform_config).await?;
    let people: Vec<PlatformPerson> = SNAPSHOT
        .iter()
        .map(|(person_id, id_number, name, _)| PlatformPerson {
            person_id: (*person_id).into(),
            category: pb::Category::Resident,
            id_number: (*id_number).into(),
            name: (*name).into(),
            valid_from_ms: VALID.0,
            valid_to_ms: VALID.1,
        })
        .collect();
    for chunk in platform.snapshot_payloads(&people, 5, 1) {
        platform.publish_identity(chunk).await?;
    }
    platform.flush(WAIT).await?;
    let deadline = Instant::now() + WAIT;
    while gate_store::Store::open(&fx.store_path)?.identity_state()?.version != 5 {
        if Instant::now() > deadline {
            bail!("the snapshot was not applied within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The technician's import, from a CSV file kept outside the gate's folder.
    let csv_dir = tempfile::tempdir()?;
    let csv = csv_dir.path().join("people.csv");
    let mut rows = String::from("person_id,category,id_number,name,valid_from,valid_to\n");
    for (person_id, id_number, name, _) in IMPORTED {
        rows.push_str(&format!("{person_id},resident,{id_number},{name},2020-01-01,2099-12-31\n"));
    }
    std::fs::write(&csv, rows)?;
    let out = gatectl(&["identity", "import", "--config", &config, csv.to_str().context("utf-8")?], &log).await?;
    assert!(out.contains("imported 2 people"), "{out}");

    // Each of them at the window, with their real card.
    for (n, (person_id, id_number, name, _)) in IMPORTED.iter().chain(&SNAPSHOT).enumerate() {
        fx.present_card(id_number, name).await?;
        sub.wait_until(WAIT, "a decision", |s| s.decisions(EVENTS_TOPIC).len() > n).await?;
        let event = &sub.decisions(EVENTS_TOPIC)[n];
        assert_eq!((event.decision(), event.person_id.as_str()), (pb::Decision::Pass, *person_id), "{name}");
    }

    // The screens show the masked names, so a technician can still tell
    // people apart.
    for (_, id_number, _, masked) in IMPORTED.iter().chain(&SNAPSHOT) {
        let out = gatectl(&["lookup", "--config", &config, "--id-number", id_number], &log).await?;
        assert!(out.contains(&format!(", {masked})")), "{out}");
    }
    gatectl(&["status", "--config", &config], &log).await?;

    // Nothing uplink either: events carry masked numbers and no names.
    for message in sub.messages() {
        for secret in secrets() {
            for (encoding, needle) in encodings(secret) {
                let leaked = message.payload.windows(needle.len()).any(|w| w == needle.as_slice());
                assert!(!leaked, "{} carries {secret:?} in {encoding}", message.topic);
            }
        }
    }

    // With the daemon running, its write-ahead logs are there too.
    let wal = fx.store_path.with_file_name("gated.identity.db-wal");
    assert!(wal.exists(), "the identity database's write-ahead log is scanned while it exists");
    let found = scan(fx.dir.path(), &secrets())?;
    assert!(found.is_empty(), "in clear while running:\n{}", found.join("\n"));

    daemon.stop().await?;
    drop(platform);
    let found = scan(fx.dir.path(), &secrets())?;
    assert!(found.is_empty(), "in clear after the stop:\n{}", found.join("\n"));

    // The scan did read the gate's data: the masked forms are there, and the
    // log has lines of the run.
    let masked = scan(fx.dir.path(), &["陈*国", "J*** S****", "350203********123X"])?;
    assert!(masked.iter().any(|f| f.contains("gated.identity.db") && f.contains("陈*国")), "{masked:?}");
    assert!(masked.iter().any(|f| f.contains("J*** S****")), "{masked:?}");
    assert!(masked.iter().any(|f| f.contains("gated.log") && f.contains("350203********123X")), "{masked:?}");
    drop(broker);
    Ok(())
}
