//! The serial line driver the ID card reader, the QR scanner and the plate
//! reader share: a device unplugged and plugged in again is picked up, and a
//! warning a device repeats (a missing port every 5 s, a card that fails to
//! authenticate at every poll) is logged once with the count of its repeats
//! ("... 57 more times in the last minute"). Logs are captured from the
//! driver's own `tracing` output.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::idcard::{IdCardSettings, run_id_card_reader};
use gate_devices::qr_scanner::{QrEvent, QrScannerSettings, run_qr_scanner};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{PREAMBLE, pty, sam_reply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything the drivers log on this thread, as plain text lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned();
        text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// The counts of the "... N more times in the last minute" lines.
    fn repeats(&self) -> Vec<u64> {
        self.lines("more times in the last minute")
            .iter()
            .map(|l| {
                let after = l.split("... ").nth(1).expect("summary shape");
                after.split(' ').next().expect("count").parse().expect("a number")
            })
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("driver stops within 2 s of shutdown")
        .expect("driver did not panic");
}

/// A device behind a stable name (as udev's `/dev/gate-qr` link is) that is
/// unplugged and plugged in again: the link then points at a new terminal.
#[tokio::test]
async fn a_device_unplugged_and_plugged_in_again_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("gate-line-replug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let link: PathBuf = dir.join("gate-qr");
    let _ = std::fs::remove_file(&link);
    let first = pty();
    std::os::unix::fs::symlink(&first.path, &link).expect("symlink");

    let (tx, mut events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_qr_scanner(QrScannerSettings::new(link.clone()), tx, health.clone(), shutdown.clone()));
    wait_until("the first port open", || health.snapshot().connected).await;
    let mut master = first.master;
    master.write_all(b"FIRST\r").expect("write");
    let event = tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("a scan").expect("open");
    assert_eq!(event, QrEvent::Scanned("FIRST".into()));

    // Unplugged: the terminal is gone, and so is the link.
    std::fs::remove_file(&link).expect("unlink");
    drop(master);
    drop(first.slave_guard);
    wait_until("the loss", || !health.snapshot().connected).await;
    wait_until("a failed reopen", || health.snapshot().reconnects >= 2).await;
    let error = health.snapshot().last_error.unwrap_or_default();
    assert!(error.contains("qr scanner port") && error.contains("gate-qr"), "{error}");

    // Plugged in again.
    let second = pty();
    std::os::unix::fs::symlink(&second.path, &link).expect("symlink");
    wait_until("the port open again", || health.snapshot().connected).await;
    let mut master = second.master;
    master.write_all(b"SECOND\r").expect("write");
    let event = tokio::time::timeout(Duration::from_secs(3), events.recv()).await.expect("a scan").expect("open");
    assert_eq!(event, QrEvent::Scanned("SECOND".into()));
    let snapshot = health.snapshot();
    assert_eq!(snapshot.frames_ok, 2, "{snapshot:?}");
    stop(shutdown, task).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A missing port, retried every 5 s for minutes (paused clock): one WARN
/// a minute, and each minute's repeats said once with their count.
#[tokio::test(start_paused = true)]
async fn a_missing_port_warns_once_a_minute_with_a_count() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let path = std::env::temp_dir().join(format!("gate-line-missing-{}", std::process::id())).join("ttyNOPE");
    let (tx, _events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_id_card_reader(IdCardSettings::new(path), tx, health.clone(), shutdown.clone()));
    // Attempts at 0, 0.2, 0.6, 1.4, 3, 6.2 s, then every 5 s: the 30th
    // reconnect is about 2.5 minutes in.
    for _ in 0..300 {
        if health.snapshot().reconnects >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(health.snapshot().reconnects >= 30, "{:?}", health.snapshot());
    let offline = logs.lines("id card reader offline error=");
    assert_eq!(offline.len(), 3, "one line a minute: {offline:#?}");
    assert!(offline[0].contains("WARN") && offline[0].contains("No such file"), "{}", offline[0]);
    let summaries = logs.repeats();
    assert_eq!(summaries.len(), 2, "{:#?}", logs.lines("more times"));
    assert!(summaries.iter().all(|&n| (10..=16).contains(&n)), "{summaries:?}");
    stop(shutdown, task).await;
    // At the stop the repeats not yet said are said: every attempt is
    // either a WARN line or counted in a summary.
    let attempts = health.snapshot().reconnects + 1;
    let said = logs.lines("id card reader offline error=").len() as u64 + logs.repeats().iter().sum::<u64>();
    assert_eq!(said, attempts);
}

/// A card that fails to authenticate (SW3 0x31) lies on the reader: every
/// poll fails, one WARN is logged, and the repeats are counted.
#[tokio::test]
async fn a_card_failing_authentication_warns_once_with_a_count() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let pty = pty();
    let mut master = pty.master.try_clone().expect("clone master");
    let fake = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = match master.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(start) = buf.windows(5).position(|w| w == PREAMBLE) {
                if buf.len() < start + 7 {
                    break;
                }
                let len = usize::from(u16::from_be_bytes([buf[start + 5], buf[start + 6]]));
                if buf.len() < start + 7 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..start + 7 + len).skip(start).collect();
                let reply = match (frame[7], frame[8]) {
                    (0x10, 0xFF) | (0x11, 0xFF) => sam_reply(0x90, &[]),
                    (0x20, 0x01) => sam_reply(0x9F, &[0, 0, 0, 0]),
                    // Select: the card does not authenticate to the SAM.
                    _ => sam_reply(0x31, &[]),
                };
                if master.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    });
    let settings = IdCardSettings { poll_interval: Duration::from_millis(10), ..IdCardSettings::new(pty.path.clone()) };
    let (tx, mut events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_id_card_reader(settings, tx, health.clone(), shutdown.clone()));
    wait_until("40 failed authentications", || health.snapshot().auth_errors >= 40).await;
    let warned = logs.lines("id card reader error status");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("WARN") && warned[0].contains("CardAuthSamFailed"), "{}", warned[0]);
    stop(shutdown, task).await;
    let failures = health.snapshot().auth_errors;
    assert_eq!(logs.repeats(), vec![failures - 1], "the stop says the repeats");
    assert!(events.try_recv().is_err(), "a card that fails is never an event");
    drop(pty.slave_guard);
    drop(pty.master);
    fake.join().expect("fake module");
}
