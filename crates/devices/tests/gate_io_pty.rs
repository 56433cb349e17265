//! The gate IO driver over a real pseudo-terminal, against a tiny Modbus RTU
//! board on the master side (hand-written CRC): the FC05 on/off writes of a
//! pulse and a level unlock, the Passage event from FC02, fail-secure
//! behaviour on exceptions and silence.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::gate_io::{
    GateCommand, GateIoEvent, GateIoSettings, PassageSide, UnlockMode, run_gate_io,
};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{crc16_modbus, pty, with_crc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const UNIT: u8 = 7;
const ENTRY_COIL: u16 = 3;
const EXIT_COIL: u16 = 4;
const ENTRY_INPUT: u16 = 0;
const EXIT_INPUT: u16 = 2;

#[test]
fn crc_check_value() {
    // CRC-16/MODBUS check value from the catalogue, and a known frame.
    assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
    assert_eq!(
        with_crc(vec![0x01, 0x05, 0x00, 0x00, 0xFF, 0x00]),
        [0x01, 0x05, 0x00, 0x00, 0xFF, 0x00, 0x8C, 0x3A]
    );
}

/// One request the board received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: Instant,
    function: u8,
    addr: u16,
    value: u16,
}

/// How the fake board behaves.
#[derive(Default)]
struct Board {
    /// Discrete input levels, bit n = address n.
    inputs: AtomicU16,
    /// Answer a coil-on write with exception 04 (server device failure).
    refuse_on: AtomicBool,
    /// Answer nothing at all.
    silent: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

impl Board {
    fn writes(&self) -> Vec<(u16, bool)> {
        let seen = self.seen.lock().expect("seen");
        seen.iter()
            .filter(|s| s.function == 0x05)
            .map(|s| (s.addr, s.value == 0xFF00))
            .collect()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn set_input(&self, addr: u16, level: bool) {
        if level {
            self.inputs.fetch_or(1 << addr, Ordering::SeqCst);
        } else {
            self.inputs.fetch_and(!(1 << addr), Ordering::SeqCst);
        }
    }
}

/// Serves FC05 and FC02 requests of 8 bytes for unit `UNIT`, checking the
/// CRC of each; ends when the slave side is gone for good.
fn spawn_board(mut master: std::fs::File, board: Arc<Board>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = match master.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 8 {
                let frame: Vec<u8> = buf.drain(..8).collect();
                let crc = u16::from_le_bytes([frame[6], frame[7]]);
                assert_eq!(
                    crc,
                    crc16_modbus(&frame[..6]),
                    "driver sent a bad CRC: {frame:02X?}"
                );
                assert_eq!(frame[0], UNIT, "driver addressed the wrong unit");
                let function = frame[1];
                let addr = u16::from_be_bytes([frame[2], frame[3]]);
                let value = u16::from_be_bytes([frame[4], frame[5]]);
                board.seen.lock().expect("seen").push(Seen {
                    at: Instant::now(),
                    function,
                    addr,
                    value,
                });
                if board.silent.load(Ordering::SeqCst) {
                    continue;
                }
                let reply = match function {
                    0x05 if value == 0xFF00 && board.refuse_on.load(Ordering::SeqCst) => {
                        with_crc(vec![UNIT, 0x85, 0x04])
                    }
                    // FC05 answers with an echo of the request.
                    0x05 => frame.clone(),
                    0x02 => {
                        let bits = board.inputs.load(Ordering::SeqCst) >> addr;
                        let count = usize::from(value);
                        let bytes = count.div_ceil(8);
                        let mut pdu = vec![UNIT, 0x02, bytes as u8];
                        for i in 0..bytes {
                            let mask = if count - i * 8 >= 8 {
                                0xFF
                            } else {
                                (1u16 << (count - i * 8)) - 1
                            };
                            pdu.push(((bits >> (i * 8)) & mask) as u8);
                        }
                        with_crc(pdu)
                    }
                    other => with_crc(vec![UNIT, other | 0x80, 0x01]),
                };
                if master.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    })
}

struct Running {
    commands: mpsc::Sender<GateCommand>,
    events: mpsc::Receiver<GateIoEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(path: std::path::PathBuf, mode: UnlockMode, unlock: Duration) -> Running {
    let settings = GateIoSettings {
        port: path,
        baud: 9600,
        unit_id: UNIT,
        unlock_entry_coil: ENTRY_COIL,
        unlock_exit_coil: EXIT_COIL,
        unlock_mode: mode,
        unlock,
        passage_entry_input: ENTRY_INPUT,
        passage_exit_input: EXIT_INPUT,
        poll_interval: Duration::from_millis(20),
        request_timeout: Duration::from_millis(150),
    };
    let (commands, command_rx) = mpsc::channel(8);
    let (event_tx, events) = mpsc::channel(64);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_gate_io(
        settings,
        command_rx,
        event_tx,
        health.clone(),
        shutdown.clone(),
    ));
    Running {
        commands,
        events,
        health,
        shutdown,
        task,
    }
}

impl Running {
    /// Stops the driver; gives back the events it sent meanwhile.
    async fn stop(mut self) -> Vec<GateIoEvent> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("driver stops within 2 s of shutdown")
            .expect("driver did not panic");
        let mut left = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            left.push(event);
        }
        left
    }

    async fn unlock(&self, side: PassageSide) {
        self.commands
            .send(GateCommand::Unlock(side))
            .await
            .expect("driver running");
    }

    async fn next_event(&mut self) -> GateIoEvent {
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

#[tokio::test]
async fn pulse_unlock_writes_on_then_off_and_passage_is_an_edge() {
    let pty = pty();
    let board = Arc::new(Board::default());
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(
        pty.path.clone(),
        UnlockMode::Pulse,
        Duration::from_millis(150),
    );

    // Fail-secure start: both unlock coils off before anything else.
    wait_until("the connect writes", || board.writes().len() >= 2).await;
    assert_eq!(board.writes(), [(ENTRY_COIL, false), (EXIT_COIL, false)]);
    wait_until("connected", || running.health.snapshot().connected).await;

    running.unlock(PassageSide::Entry).await;
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Unlocked(PassageSide::Entry)
    );
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Relocked(PassageSide::Entry)
    );
    assert_eq!(
        board.writes(),
        [
            (ENTRY_COIL, false),
            (EXIT_COIL, false),
            (ENTRY_COIL, true),
            (ENTRY_COIL, false)
        ]
    );
    let fc05: Vec<Seen> = board
        .seen()
        .into_iter()
        .filter(|s| s.function == 0x05)
        .collect();
    let held = fc05[3].at - fc05[2].at;
    assert!(
        held >= Duration::from_millis(150) && held < Duration::from_millis(1000),
        "pulse held {held:?}"
    );

    // A passage is a rising edge of the input, once.
    board.set_input(EXIT_INPUT, true);
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Passage(PassageSide::Exit)
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        running.events.try_recv().is_err(),
        "a held input is one passage"
    );
    board.set_input(EXIT_INPUT, false);
    tokio::time::sleep(Duration::from_millis(60)).await;
    board.set_input(EXIT_INPUT, true);
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Passage(PassageSide::Exit)
    );
    // The inputs are read as one FC02 span covering both.
    assert!(
        board
            .seen()
            .iter()
            .any(|s| s.function == 0x02 && s.addr == 0 && s.value == 3)
    );

    let health = running.health.snapshot();
    assert_eq!(health.timeouts + health.status_errors, 0, "{health:?}");
    assert!(running.stop().await.is_empty());
    // Shutdown switches both coils off last.
    let writes = board.writes();
    assert_eq!(
        &writes[writes.len() - 2..],
        [(ENTRY_COIL, false), (EXIT_COIL, false)]
    );
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn level_unlock_ends_at_the_passage() {
    let pty = pty();
    let board = Arc::new(Board::default());
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone(), UnlockMode::Level, Duration::from_secs(5));
    wait_until("connected", || running.health.snapshot().connected).await;

    running.unlock(PassageSide::Exit).await;
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Unlocked(PassageSide::Exit)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        board.writes().last(),
        Some(&(EXIT_COIL, true)),
        "level mode holds the coil"
    );
    let started = Instant::now();
    board.set_input(EXIT_INPUT, true);
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Passage(PassageSide::Exit)
    );
    assert_eq!(
        running.next_event().await,
        GateIoEvent::Relocked(PassageSide::Exit)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "relocked at the passage, not the 5 s limit"
    );
    assert_eq!(board.writes()[2..], [(EXIT_COIL, true), (EXIT_COIL, false)]);
    running.stop().await;
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn an_exception_is_a_fault_and_the_gate_stays_locked() {
    let pty = pty();
    let board = Arc::new(Board::default());
    board.refuse_on.store(true, Ordering::SeqCst);
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(
        pty.path.clone(),
        UnlockMode::Pulse,
        Duration::from_millis(150),
    );
    wait_until("connected", || running.health.snapshot().connected).await;

    running.unlock(PassageSide::Entry).await;
    match running.next_event().await {
        GateIoEvent::Fault(message) => assert!(message.contains("exception"), "{message}"),
        other => panic!("expected a fault, got {other:?}"),
    }
    // Reconnected: the coils are written off again before anything else.
    wait_until("the reconnect writes", || board.writes().len() >= 5).await;
    assert_eq!(
        board.writes()[2..5],
        [(ENTRY_COIL, true), (ENTRY_COIL, false), (EXIT_COIL, false)]
    );
    wait_until("connected again", || running.health.snapshot().connected).await;
    let health = running.health.snapshot();
    assert_eq!(health.status_errors, 1, "{health:?}");
    assert!(health.reconnects >= 1, "{health:?}");
    let left = running.stop().await;
    assert!(
        !left.iter().any(|e| matches!(e, GateIoEvent::Unlocked(_))),
        "{left:?}"
    );
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn a_silent_board_refuses_unlocks_instead_of_queueing_them() {
    let pty = pty();
    let board = Arc::new(Board::default());
    board.silent.store(true, Ordering::SeqCst);
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(
        pty.path.clone(),
        UnlockMode::Pulse,
        Duration::from_millis(150),
    );

    match running.next_event().await {
        GateIoEvent::Fault(message) => assert!(message.contains("no reply"), "{message}"),
        other => panic!("expected a fault, got {other:?}"),
    }
    running.unlock(PassageSide::Entry).await;
    match running.next_event().await {
        GateIoEvent::Fault(message) => assert!(message.contains("refused"), "{message}"),
        other => panic!("expected the unlock refused, got {other:?}"),
    }
    // The board comes back: it is driven locked, and the old unlock is not
    // replayed.
    board.silent.store(false, Ordering::SeqCst);
    wait_until("connected", || running.health.snapshot().connected).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        board.writes().iter().all(|&(_, on)| !on),
        "{:?}",
        board.writes()
    );
    let health = running.health.snapshot();
    assert!(health.timeouts >= 1 && health.reconnects >= 1, "{health:?}");
    let left = running.stop().await;
    assert!(
        !left.iter().any(|e| matches!(e, GateIoEvent::Unlocked(_))),
        "{left:?}"
    );
    drop(pty.slave_guard);
    fake.join().expect("board");
}
