//! The QR scanner driver over a real pseudo-terminal: the test plays the
//! module on the master side, writing payloads as docs/PROTOCOLS.md §3 describes
//! (prefix, text, terminator), and checks the events and counters.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::qr_scanner::{QrEvent, QrFrameError, QrScannerSettings, Terminator, run_qr_scanner};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::pty;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    events: mpsc::Receiver<QrEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(settings: QrScannerSettings) -> Running {
    let (tx, events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_qr_scanner(settings, tx, health.clone(), shutdown.clone()));
    Running { events, health, shutdown, task }
}

impl Running {
    async fn next_event(&mut self) -> QrEvent {
        tokio::time::timeout(Duration::from_secs(3), self.events.recv())
            .await
            .expect("an event within 3 s")
            .expect("channel open")
    }

    async fn connected(&self) {
        wait_until("port open", || self.health.snapshot().connected).await;
    }

    async fn stop(self) -> mpsc::Receiver<QrEvent> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("driver stops within 2 s of shutdown")
            .expect("driver did not panic");
        self.events
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn settings(path: PathBuf, terminator: Terminator, prefix: Option<&str>) -> QrScannerSettings {
    QrScannerSettings { terminator, prefix: prefix.map(str::to_string), ..QrScannerSettings::new(path) }
}

/// 600 characters over the base45 alphabet (space, `$%*+-./:` included).
fn hc1_like() -> String {
    const B45: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
    let mut s = String::from("HC1:");
    s.extend((0..596).map(|i| char::from(B45[(i * 11 + 5) % B45.len()])));
    s
}

#[tokio::test]
async fn payloads_in_events_out() {
    let mut pty = pty();
    let mut running = start(settings(pty.path.clone(), Terminator::Cr, Some("]Q1")));
    running.connected().await;

    // A CRLF module on a CR config, with the AIM prefix.
    pty.master.write_all(b"]Q1HELLO 1\r\n").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("HELLO 1".into()));

    // A long payload dribbling in over many reads, without the prefix.
    let long = hc1_like();
    let mut bytes = long.clone().into_bytes();
    bytes.extend_from_slice(b"\r\n");
    for chunk in bytes.chunks(37) {
        pty.master.write_all(chunk).expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(running.next_event().await, QrEvent::Scanned(long));

    // Two payloads in one write, one split before its LF.
    pty.master.write_all(b"]Q1A\r\n]Q1B\r").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("A".into()));
    assert_eq!(running.next_event().await, QrEvent::Scanned("B".into()));
    pty.master.write_all(b"\n]Q1C\r").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("C".into()));

    let health = running.health.snapshot();
    assert!(health.connected);
    assert_eq!(health.frames_ok, 5, "{health:?}");
    assert_eq!(health.garbage_bytes + health.length_errors, 0, "{health:?}");
    let mut events = running.stop().await;
    assert!(events.try_recv().is_err());
    drop(pty.slave_guard);
}

#[tokio::test]
async fn garbage_is_counted_and_survived() {
    let mut pty = pty();
    let mut running = start(QrScannerSettings { max_len: 64, ..settings(pty.path.clone(), Terminator::Lf, None) });
    running.connected().await;

    pty.master.write_all(b"\xFF\xFE\x80\n").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Rejected(QrFrameError::NotUtf8));
    let mut too_long = vec![b'A'; 100];
    too_long.extend_from_slice(b"\r\n");
    pty.master.write_all(&too_long).expect("write");
    assert_eq!(running.next_event().await, QrEvent::Rejected(QrFrameError::TooLong { len: 100 }));
    pty.master.write_all(b"\n").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Rejected(QrFrameError::Empty));
    pty.master.write_all(b"STILL ALIVE\n").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("STILL ALIVE".into()));

    let health = running.health.snapshot();
    assert!(health.connected, "{health:?}");
    assert_eq!(health.frames_ok, 1, "{health:?}");
    assert_eq!(health.garbage_bytes, 3, "{health:?}");
    assert_eq!(health.length_errors, 2, "{health:?}");
    assert_eq!(health.reconnects, 0, "{health:?}");
    let last = health.last_error.unwrap_or_default();
    assert!(last.contains("empty"), "{last}");
    running.stop().await;
    drop(pty.slave_guard);
}

#[tokio::test]
async fn without_terminator_silence_ends_a_payload() {
    let mut pty = pty();
    let mut running = start(QrScannerSettings {
        idle_gap: Duration::from_millis(60),
        ..settings(pty.path.clone(), Terminator::None, Some("]Q1"))
    });
    running.connected().await;

    // Written in two pieces closer together than the gap: one payload.
    pty.master.write_all(b"]Q1ABC ").expect("write");
    tokio::time::sleep(Duration::from_millis(10)).await;
    pty.master.write_all(b"DEF").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("ABC DEF".into()));
    pty.master.write_all(b"]Q1XYZ").expect("write");
    assert_eq!(running.next_event().await, QrEvent::Scanned("XYZ".into()));
    running.stop().await;
    drop(pty.slave_guard);
}

#[tokio::test]
async fn a_missing_port_is_retried_with_backoff() {
    let path = std::env::temp_dir().join(format!("gate-qr-missing-{}", std::process::id())).join("ttyNOPE");
    let running = start(settings(path.clone(), Terminator::Cr, None));
    // Attempts at 0, 200 ms, 600 ms: two reconnects within about 0.9 s.
    wait_until("two reconnect attempts", || running.health.snapshot().reconnects >= 2).await;
    let health = running.health.snapshot();
    assert!(!health.connected);
    assert!(health.reconnects <= 3, "back-off too short: {health:?}");
    let error = health.last_error.unwrap_or_default();
    assert!(error.contains(&path.display().to_string()), "{error}");
    running.stop().await;
}
