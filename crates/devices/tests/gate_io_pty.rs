//! The gate IO driver over a real pseudo-terminal, against a tiny Modbus RTU
//! board on the master side (hand-written CRC): FC05 writes on command, input
//! snapshots from FC02, fail-secure connects and shutdowns, reachability on
//! exceptions and silence, and coils held through a fire alarm.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::gate_io::{BoardTimed, GateCommand, GateIoEvent, GateIoSettings, InputLevels, run_gate_io};
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
const LAMP_COIL: u16 = 6;
const ENTRY_INPUT: u16 = 0;
const EXIT_INPUT: u16 = 2;
const FIRE_INPUT: u16 = 3;

#[test]
fn crc_check_value() {
    // CRC-16/MODBUS check value from the catalogue, and a known frame.
    assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
    assert_eq!(with_crc(vec![0x01, 0x05, 0x00, 0x00, 0xFF, 0x00]), [0x01, 0x05, 0x00, 0x00, 0xFF, 0x00, 0x8C, 0x3A]);
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
    /// Line noise written before the next reply.
    noise: Mutex<Vec<u8>>,
    seen: Mutex<Vec<Seen>>,
}

impl Board {
    fn writes(&self) -> Vec<(u16, bool)> {
        let seen = self.seen.lock().expect("seen");
        seen.iter().filter(|s| s.function == 0x05).map(|s| (s.addr, s.value == 0xFF00)).collect()
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
                assert_eq!(crc, crc16_modbus(&frame[..6]), "driver sent a bad CRC: {frame:02X?}");
                assert_eq!(frame[0], UNIT, "driver addressed the wrong unit");
                let function = frame[1];
                let addr = u16::from_be_bytes([frame[2], frame[3]]);
                let value = u16::from_be_bytes([frame[4], frame[5]]);
                board.seen.lock().expect("seen").push(Seen { at: Instant::now(), function, addr, value });
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
                            let mask = if count - i * 8 >= 8 { 0xFF } else { (1u16 << (count - i * 8)) - 1 };
                            pdu.push(((bits >> (i * 8)) & mask) as u8);
                        }
                        with_crc(pdu)
                    }
                    other => with_crc(vec![UNIT, other | 0x80, 0x01]),
                };
                let mut bytes = std::mem::take(&mut *board.noise.lock().expect("noise"));
                bytes.extend(reply);
                if master.write_all(&bytes).is_err() {
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

fn start(path: std::path::PathBuf) -> Running {
    start_with(path, None)
}

fn start_with(path: std::path::PathBuf, board_timed: Option<BoardTimed>) -> Running {
    let settings = GateIoSettings {
        port: path,
        baud: 9600,
        unit_id: UNIT,
        coils: vec![ENTRY_COIL, EXIT_COIL, LAMP_COIL],
        inputs: vec![ENTRY_INPUT, EXIT_INPUT, FIRE_INPUT],
        poll_interval: Duration::from_millis(20),
        request_timeout: Duration::from_millis(150),
        failures_before_lost: 3,
        board_timed,
    };
    let (commands, command_rx) = mpsc::channel(8);
    let (event_tx, events) = mpsc::channel(64);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_gate_io(settings, command_rx, event_tx, health.clone(), shutdown.clone()));
    Running { commands, events, health, shutdown, task }
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

    async fn send(&self, command: GateCommand) {
        self.commands.send(command).await.expect("driver running");
    }

    async fn set_coil(&self, coil: u16, on: bool) {
        self.send(GateCommand::SetCoil { coil, on }).await;
    }

    async fn next_event(&mut self) -> GateIoEvent {
        tokio::time::timeout(Duration::from_secs(3), self.events.recv())
            .await
            .expect("an event within 3 s")
            .expect("channel open")
    }
}

fn levels(entry: bool, exit: bool, fire: bool) -> GateIoEvent {
    GateIoEvent::Inputs(InputLevels::from_iter([(ENTRY_INPUT, entry), (EXIT_INPUT, exit), (FIRE_INPUT, fire)]))
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
async fn coils_follow_commands_and_inputs_are_reported_on_change() {
    let pty = pty();
    let board = Arc::new(Board::default());
    board.set_input(FIRE_INPUT, true);
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone());

    // Fail-secure start: every mapped coil off before anything else, then
    // the first snapshot, then the board counts as reachable.
    assert_eq!(running.next_event().await, levels(false, false, true));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));
    assert_eq!(board.writes(), [(ENTRY_COIL, false), (EXIT_COIL, false), (LAMP_COIL, false)]);
    assert!(running.health.snapshot().connected);

    running.set_coil(ENTRY_COIL, true).await;
    running.set_coil(LAMP_COIL, true).await;
    wait_until("the two writes", || board.writes().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    running.set_coil(ENTRY_COIL, false).await;
    wait_until("the off write", || board.writes().len() == 6).await;
    assert_eq!(board.writes()[3..], [(ENTRY_COIL, true), (LAMP_COIL, true), (ENTRY_COIL, false)]);
    // The driver keeps no timer of its own: the coil stayed on until told.
    let fc05: Vec<Seen> = board.seen().into_iter().filter(|s| s.function == 0x05).collect();
    assert!(fc05[5].at - fc05[3].at >= Duration::from_millis(150));

    // An unmapped coil is never written.
    running.set_coil(9, true).await;

    // A level change is one snapshot with every wired input.
    board.set_input(EXIT_INPUT, true);
    assert_eq!(running.next_event().await, levels(false, true, true));
    // Held over two more reads of the inputs, then changed: the change is
    // the very next event (a second snapshot of the held level would come
    // before it).
    let reads = || board.seen().iter().filter(|s| s.function == 0x02).count();
    let held = reads() + 2;
    wait_until("two reads of the held input", || reads() >= held).await;
    board.set_input(EXIT_INPUT, false);
    board.set_input(FIRE_INPUT, false);
    assert_eq!(running.next_event().await, levels(false, false, false), "a held input is one snapshot");
    // The inputs are read as one FC02 span covering all of them.
    assert!(board.seen().iter().any(|s| s.function == 0x02 && s.addr == 0 && s.value == 4));

    let health = running.health.snapshot();
    assert_eq!(health.timeouts + health.status_errors, 0, "{health:?}");
    assert!(running.stop().await.is_empty());
    // Shutdown switches every coil off last; coil 9 was never touched.
    let writes = board.writes();
    assert_eq!(writes[writes.len() - 3..], [(ENTRY_COIL, false), (EXIT_COIL, false), (LAMP_COIL, false)]);
    assert!(writes.iter().all(|&(coil, _)| coil != 9), "{writes:?}");
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn refused_writes_reopen_then_lose_the_board_which_comes_back_locked() {
    let pty = pty();
    let board = Arc::new(Board::default());
    board.refuse_on.store(true, Ordering::SeqCst);
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone());
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));

    // Each refusal reopens the port and tries again (the controller still
    // wants the coil on); three in a row lose the board.
    running.set_coil(ENTRY_COIL, true).await;
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(false));
    // Back after the back-off: everything written off, the unlock forgotten.
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));
    let writes = board.writes();
    assert_eq!(writes[writes.len() - 3..], [(ENTRY_COIL, false), (EXIT_COIL, false), (LAMP_COIL, false)]);
    let health = running.health.snapshot();
    assert_eq!(health.status_errors, 3, "{health:?}");
    assert!(health.reconnects >= 3, "{health:?}");
    running.stop().await;
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn a_silent_board_is_lost_and_an_unlock_meanwhile_is_never_executed() {
    let pty = pty();
    let board = Arc::new(Board::default());
    board.silent.store(true, Ordering::SeqCst);
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone());

    assert_eq!(running.next_event().await, GateIoEvent::Reachable(false));
    running.set_coil(ENTRY_COIL, true).await;
    // The board comes back: it is driven locked, the old unlock not replayed.
    board.silent.store(false, Ordering::SeqCst);
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));
    // A later write as the marker: the board takes writes in order, so a
    // replayed unlock would come before it.
    running.set_coil(LAMP_COIL, true).await;
    wait_until("the marker write", || board.writes().last() == Some(&(LAMP_COIL, true))).await;
    let writes = board.writes();
    assert!(writes[..writes.len() - 1].iter().all(|&(_, on)| !on), "{writes:?}");
    let health = running.health.snapshot();
    assert!(health.timeouts >= 3 && health.reconnects >= 3, "{health:?}");
    running.stop().await;
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn a_fire_alarm_keeps_the_unlocks_on_through_a_loss_and_a_shutdown() {
    let pty = pty();
    let board = Arc::new(Board::default());
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone());
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));

    running.send(GateCommand::FireAlarm(true)).await;
    running.set_coil(ENTRY_COIL, true).await;
    running.set_coil(EXIT_COIL, true).await;
    wait_until("the unlock writes", || board.writes().len() == 5).await;
    board.silent.store(true, Ordering::SeqCst);
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(false));
    board.silent.store(false, Ordering::SeqCst);
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));
    let writes = board.writes();
    assert_eq!(writes[writes.len() - 3..], [(ENTRY_COIL, true), (EXIT_COIL, true), (LAMP_COIL, false)]);

    // Stopping the daemon must not lock anyone in.
    running.stop().await;
    let writes = board.writes();
    assert_eq!(writes[writes.len() - 3..], [(ENTRY_COIL, true), (EXIT_COIL, true), (LAMP_COIL, false)]);
    drop(pty.slave_guard);
    fake.join().expect("board");
}

#[tokio::test]
async fn line_noise_before_a_reply_is_counted_and_the_reply_still_taken() {
    let pty = pty();
    let board = Arc::new(Board::default());
    let fake = spawn_board(pty.master, board.clone());
    let mut running = start(pty.path.clone());
    assert!(matches!(running.next_event().await, GateIoEvent::Inputs(_)));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));

    // Noise the decoder can skip (other noise can look like the start of a
    // long frame: that ends as a timeout, counted as such).
    *board.noise.lock().expect("noise") = vec![0xFF, 0xFF, 0xFF];
    wait_until("the noise counted", || running.health.snapshot().garbage_bytes == 3).await;
    board.set_input(ENTRY_INPUT, true);
    assert_eq!(running.next_event().await, levels(true, false, false));
    let health = running.health.snapshot();
    assert_eq!(health.timeouts + health.status_errors + health.checksum_errors, 0, "{health:?}");
    assert!(health.last_error.is_some_and(|e| e.contains("line noise")));
    running.stop().await;
    drop(pty.slave_guard);
    fake.join().expect("board");
}

/// A board that times pulses: an unlock goes out as one FC05 to 0x0200 +
/// coil carrying the width in 100 ms units (rounded up), never as a plain
/// "on"; an early relock is a plain "off"; a fire alarm holds the unlock
/// coils on plainly (a timed pulse would drop them during the alarm), and a
/// lamp coil is written plainly as before.
#[tokio::test]
async fn a_board_timed_unlock_is_one_timed_pulse_and_fire_holds_it_plainly() {
    let pty = pty();
    let board = Arc::new(Board::default());
    let _fake = spawn_board(pty.master, board.clone());
    let timed = BoardTimed { coils: vec![ENTRY_COIL, EXIT_COIL], width: Duration::from_millis(1250) };
    let mut running = start_with(pty.path.clone(), Some(timed));
    assert_eq!(running.next_event().await, levels(false, false, false));
    assert_eq!(running.next_event().await, GateIoEvent::Reachable(true));
    // Connect: plain offs, never a timed pulse.
    assert_eq!(board.writes(), [(ENTRY_COIL, false), (EXIT_COIL, false), (LAMP_COIL, false)]);

    running.set_coil(ENTRY_COIL, true).await;
    running.set_coil(LAMP_COIL, true).await;
    running.set_coil(ENTRY_COIL, false).await;
    wait_until("three more writes", || board.writes().len() == 6).await;
    let fc05: Vec<(u16, u16)> =
        board.seen().into_iter().filter(|s| s.function == 0x05).map(|s| (s.addr, s.value)).collect();
    assert_eq!(
        fc05[3..],
        [(0x0200 + ENTRY_COIL, 13), (LAMP_COIL, 0xFF00), (ENTRY_COIL, 0x0000)],
        "unlock as a 1.3 s timed pulse, the lamp plainly, the relock plainly"
    );
    assert_eq!(running.health.snapshot().status_errors, 0, "the timed pulse's echo was accepted");

    // Unlocked by a pulse, then a fire alarm: held on plainly.
    running.set_coil(EXIT_COIL, true).await;
    running.send(GateCommand::FireAlarm(true)).await;
    running.set_coil(ENTRY_COIL, true).await;
    wait_until("the fire writes", || board.writes().len() == 9).await;
    let fc05: Vec<(u16, u16)> =
        board.seen().into_iter().filter(|s| s.function == 0x05).map(|s| (s.addr, s.value)).collect();
    assert_eq!(fc05[6..], [(0x0200 + EXIT_COIL, 13), (EXIT_COIL, 0xFF00), (ENTRY_COIL, 0xFF00)]);
    let left = running.stop().await;
    assert!(!left.contains(&GateIoEvent::Reachable(false)), "{left:?}");
    // Shutdown during the fire alarm: the unlock coils stay on, plainly.
    let fc05: Vec<(u16, u16)> =
        board.seen().into_iter().filter(|s| s.function == 0x05).map(|s| (s.addr, s.value)).collect();
    assert!(fc05[9..].contains(&(ENTRY_COIL, 0xFF00)) && fc05[9..].contains(&(EXIT_COIL, 0xFF00)), "{fc05:?}");
}
