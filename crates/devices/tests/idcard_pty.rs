//! The ID card reader driver over a real pseudo-terminal, against a tiny fake
//! SAM module on the master side: one read per resting card, corrupt replies
//! counted and never turned into events, silence counted as timeouts, a
//! missing port retried with back-off.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::idcard::{CardEvent, IdCardSettings, run_id_card_reader};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use support::{PREAMBLE, RESIDENT_ID, base_info_payload, pty, resident_text, sam_reply};
use tokio::sync::mpsc;
use tokio::task::JoinHandle as TaskHandle;
use tokio_util::sync::CancellationToken;

/// What the fake writes back for one command: `None` stays silent.
type Answer = Box<dyn FnMut(u8, u8) -> Option<Vec<u8>> + Send>;

/// Reads host frames from the master, checks their checksum, logs
/// `(CMD, PARA)` and writes `answer`'s reply. Ends when the slave side is
/// gone for good (read error), returning nothing; the log is shared.
fn spawn_fake_sam(mut master: std::fs::File, log: Arc<Mutex<Vec<(u8, u8)>>>, mut answer: Answer) -> JoinHandle<()> {
    std::thread::spawn(move || {
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
                let chk = frame[5..frame.len() - 1].iter().fold(0u8, |a, b| a ^ b);
                assert_eq!(chk, frame[frame.len() - 1], "driver sent a bad checksum: {frame:02X?}");
                let (cmd, para) = (frame[7], frame[8]);
                log.lock().expect("log").push((cmd, para));
                let reply = answer(cmd, para);
                if reply.is_some_and(|reply| master.write_all(&reply).is_err()) {
                    return;
                }
            }
        }
    })
}

/// A module with a card that is `present` while the flag is set.
fn card_module(
    present: Arc<AtomicBool>,
    no_card_answers: Arc<AtomicUsize>,
    mut read: impl FnMut() -> Vec<u8> + Send + 'static,
) -> Answer {
    Box::new(move |cmd, para| {
        Some(match (cmd, para) {
            (0x10, 0xFF) | (0x11, 0xFF) => sam_reply(0x90, &[]),
            (0x20, 0x01) if present.load(Ordering::SeqCst) => sam_reply(0x9F, &[0, 0, 0, 0]),
            (0x20, 0x01) => {
                no_card_answers.fetch_add(1, Ordering::SeqCst);
                sam_reply(0x80, &[])
            }
            (0x20, 0x02) => sam_reply(0x90, &[0; 8]),
            (0x30, 0x01) => read(),
            _ => sam_reply(0x21, &[]),
        })
    })
}

fn good_read() -> Vec<u8> {
    sam_reply(0x90, &base_info_payload(&resident_text(RESIDENT_ID, "长期")))
}

struct Running {
    events: mpsc::Receiver<CardEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
    task: TaskHandle<()>,
}

fn start(path: std::path::PathBuf, reply_timeout: Duration) -> Running {
    let settings =
        IdCardSettings { port: path, baud: 115_200, poll_interval: Duration::from_millis(20), reply_timeout };
    let (tx, events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_id_card_reader(settings, tx, health.clone(), shutdown.clone()));
    Running { events, health, shutdown, task }
}

impl Running {
    async fn stop(self) -> mpsc::Receiver<CardEvent> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("driver stops within 2 s of shutdown")
            .expect("driver did not panic");
        self.events
    }

    async fn next_event(&mut self) -> CardEvent {
        tokio::time::timeout(Duration::from_secs(3), self.events.recv())
            .await
            .expect("an event within 3 s")
            .expect("channel open")
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

fn count(log: &Mutex<Vec<(u8, u8)>>, command: (u8, u8)) -> usize {
    log.lock().expect("log").iter().filter(|&&c| c == command).count()
}

#[tokio::test]
async fn a_resting_card_is_one_event_until_it_leaves() {
    let pty = pty();
    let log = Arc::new(Mutex::new(Vec::new()));
    let present = Arc::new(AtomicBool::new(true));
    let gone = Arc::new(AtomicUsize::new(0));
    let fake = spawn_fake_sam(pty.master, log.clone(), card_module(present.clone(), gone.clone(), good_read));
    let mut running = start(pty.path.clone(), Duration::from_millis(500));

    match running.next_event().await {
        CardEvent::Read(record) => assert_eq!(record.id_number.expose(), RESIDENT_ID),
        other => panic!("expected a read, got {other:?}"),
    }
    // The card stays: many more polls, still one read.
    wait_until("10 more polls", || count(&log, (0x20, 0x01)) >= 12).await;
    assert!(running.events.try_recv().is_err(), "a resting card was reported twice");
    assert_eq!(count(&log, (0x30, 0x01)), 1, "the driver read a latched card again");
    {
        let log = log.lock().expect("log");
        assert_eq!(&log[..5], &[(0x10, 0xFF), (0x11, 0xFF), (0x20, 0x01), (0x20, 0x02), (0x30, 0x01)]);
    }

    // Lifted and put back: a second read.
    present.store(false, Ordering::SeqCst);
    wait_until("a no-card answer", || gone.load(Ordering::SeqCst) >= 1).await;
    present.store(true, Ordering::SeqCst);
    assert!(matches!(running.next_event().await, CardEvent::Read(_)));

    let health = running.health.snapshot();
    assert!(health.connected);
    assert_eq!(health.checksum_errors + health.timeouts + health.status_errors, 0, "{health:?}");
    let mut events = running.stop().await;
    assert!(events.try_recv().is_err());
    drop(pty.slave_guard);
    fake.join().expect("fake module");
}

#[tokio::test]
async fn a_corrupt_reply_is_counted_and_never_an_event() {
    let pty = pty();
    let log = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(AtomicUsize::new(0));
    let reads_in_fake = reads.clone();
    let read = move || {
        let mut reply = good_read();
        match reads_in_fake.fetch_add(1, Ordering::SeqCst) {
            // First read: one byte of the text damaged in transit.
            0 => reply[60] ^= 0x01,
            // Then intact, but with line noise in front, which must be
            // skipped and counted.
            _ => reply.splice(0..0, [0x00, 0xFF, 0x13]).for_each(drop),
        }
        reply
    };
    let fake = spawn_fake_sam(
        pty.master,
        log.clone(),
        card_module(Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)), read),
    );
    let mut running = start(pty.path.clone(), Duration::from_millis(500));

    match running.next_event().await {
        CardEvent::Read(record) => assert_eq!(record.id_number.expose(), RESIDENT_ID),
        other => panic!("expected a read, got {other:?}"),
    }
    assert_eq!(reads.load(Ordering::SeqCst), 2, "the event must come from the second, intact reply");
    let health = running.health.snapshot();
    assert_eq!(health.checksum_errors, 1, "{health:?}");
    assert!(health.garbage_bytes >= 3, "{health:?}");
    assert!(health.last_error.as_deref().is_some_and(|e| e.contains("checksum")), "{health:?}");
    // Recovered and latched: no further events while the card rests.
    wait_until("more polls", || count(&log, (0x20, 0x01)) >= 8).await;
    let mut events = running.stop().await;
    assert!(events.try_recv().is_err());
    drop(pty.slave_guard);
    fake.join().expect("fake module");
}

#[tokio::test]
async fn silence_is_a_counted_timeout_not_a_panic() {
    let pty = pty();
    let log = Arc::new(Mutex::new(Vec::new()));
    let fake = spawn_fake_sam(pty.master, log.clone(), Box::new(|_, _| None));
    let running = start(pty.path.clone(), Duration::from_millis(80));

    wait_until("three timeouts", || running.health.snapshot().timeouts >= 3).await;
    let health = running.health.snapshot();
    assert!(health.connected, "a silent module is not a lost port: {health:?}");
    assert_eq!(health.frames_ok, 0);
    assert!(health.last_error.as_deref().is_some_and(|e| e.contains("no complete reply")), "{health:?}");
    // The cycle carries on: reset first, then polls.
    assert_eq!(log.lock().expect("log").first(), Some(&(0x10, 0xFF)));
    let mut events = running.stop().await;
    assert!(events.try_recv().is_err());
    drop(pty.slave_guard);
    fake.join().expect("fake module");
}

#[tokio::test]
async fn a_missing_port_is_retried_with_backoff() {
    let dir = std::env::temp_dir().join(format!("gate-devices-missing-{}", std::process::id()));
    let path = dir.join("ttyNOPE");
    let running = start(path.clone(), Duration::from_millis(100));
    // Attempts at 0, 200 ms, 600 ms: two reconnects within about 0.9 s.
    wait_until("two reconnect attempts", || running.health.snapshot().reconnects >= 2).await;
    let health = running.health.snapshot();
    assert!(!health.connected);
    assert!(health.reconnects <= 3, "back-off too short: {health:?}");
    let error = health.last_error.unwrap_or_default();
    assert!(error.contains(&path.display().to_string()), "error names the port: {error}");
    running.stop().await;
}
