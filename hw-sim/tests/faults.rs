//! Misbehaviour over real ptys, seen from the host side as the daemon sees
//! it: an unplugged cable (the port hangs up, the link goes away and comes
//! back on a new pty), slow replies, given statuses and exceptions, cut
//! replies, and the gate's scenario inputs. Frames are built by hand here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hw_sim::play::{Target, play};
use hw_sim::script::{Device, parse_script_for};
use hw_sim::{GateSim, GateSimConfig, IdCardSim, QrSim, SimCard, SimTerminator, StatusFault, StatusTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

const WAIT: Duration = Duration::from_secs(3);

fn open(path: &Path) -> SerialStream {
    tokio_serial::new(path.to_string_lossy(), 9600).open_native_async().expect("open pty slave with tokio-serial")
}

fn unique_link(tag: &str) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("hw-sim-faults-{tag}-{}-{nanos}", std::process::id()))
}

fn crc(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc.to_le_bytes()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend(crc(body));
    f
}

async fn recv(port: &mut SerialStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, port.read_exact(&mut buf)).await.expect("reply within timeout").expect("read");
    buf
}

/// FC02 inputs 0..8 of unit 1, returns the bit byte.
async fn read_inputs(port: &mut SerialStream) -> u8 {
    port.write_all(&frame(&[1, 2, 0, 0, 0, 8])).await.expect("write");
    let reply = recv(port, 6).await;
    assert_eq!(reply[..3], [1, 2, 1], "{reply:02X?}");
    reply[3]
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_unplugged_gate_hangs_up_and_comes_back_at_the_same_link() {
    let link = unique_link("gate-unplug");
    let sim = GateSim::start(Some(&link), GateSimConfig::default()).expect("start");
    let mut port = open(&link);
    sim.set_input(5, true);
    assert_eq!(read_inputs(&mut port).await, 0x20);

    sim.unplug(Duration::from_millis(150));
    wait_for("the link to go", || std::fs::symlink_metadata(&link).is_err()).await;
    // The host's open port is dead: a read ends (EOF or EIO), never hangs.
    let mut buf = [0u8; 8];
    let _ = port.write_all(&frame(&[1, 2, 0, 0, 0, 8])).await;
    let dead = tokio::time::timeout(WAIT, port.read(&mut buf)).await.expect("the hang-up is seen");
    assert!(matches!(dead, Ok(0) | Err(_)), "{dead:?}");
    drop(port);

    // A new pty (the kernel may hand out the same number again).
    wait_for("the replug", || sim.replugs() == 1).await;
    let mut port = open(&link);
    // The board kept its inputs through the unplug.
    assert_eq!(read_inputs(&mut port).await, 0x20);
    sim.stop();
    sim.wait_stopped().await;
    assert!(std::fs::symlink_metadata(&link).is_err(), "link removed at stop");
}

#[tokio::test]
async fn gate_replies_can_be_slow_refused_or_cut() {
    let config = GateSimConfig { fire_input: Some(4), ..GateSimConfig::default() };
    let sim = GateSim::start(None, config).expect("start");
    let mut port = open(&sim.device_path());
    // A normally closed fire contact at rest.
    assert_eq!(read_inputs(&mut port).await, 0x10);

    sim.set_slow(Duration::from_millis(120));
    let started = Instant::now();
    read_inputs(&mut port).await;
    assert!(started.elapsed() >= Duration::from_millis(120));
    sim.set_slow(Duration::ZERO);

    sim.inject_status(StatusFault { code: 0x04, target: Some(StatusTarget::Write), sticky: false });
    read_inputs(&mut port).await;
    port.write_all(&frame(&[1, 5, 0, 0, 0xFF, 0])).await.expect("write");
    assert_eq!(recv(&mut port, 5).await, frame(&[1, 0x85, 0x04]));
    assert!(!sim.coil(0), "a refused write is not executed");

    sim.truncate_next_replies(1);
    port.write_all(&frame(&[1, 2, 0, 0, 0, 8])).await.expect("write");
    assert_eq!(recv(&mut port, 3).await, [1, 2, 1]);
    let mut rest = [0u8; 8];
    assert!(tokio::time::timeout(Duration::from_millis(200), port.read(&mut rest)).await.is_err(), "cut short");

    // The scenario inputs, played from a script.
    let steps = parse_script_for("fire on\nbeam on\nintrusion on\ninput 7 on\n", Device::Gate).expect("script");
    play(Target::Gate(&sim), &steps, |_| {}).await;
    assert_eq!(read_inputs(&mut port).await, 0x8C);
    let steps = parse_script_for("fire off\nbeam off\nintrusion off\npassage exit\n", Device::Gate).expect("script");
    play(Target::Gate(&sim), &steps, |_| {}).await;
    wait_for("the passage pulse", || sim.input(1)).await;
    wait_for("the pulse to end", || !sim.input(1)).await;
    assert_eq!(read_inputs(&mut port).await, 0x90);
    sim.stop();
    sim.wait_stopped().await;
}

const FIND: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x20, 0x01, 0x22];
const SELECT: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x20, 0x02, 0x21];
const READ: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x30, 0x01, 0x32];

#[tokio::test]
async fn the_sam_answers_a_given_status_and_times_its_read_replies() {
    let sim = IdCardSim::start(None).expect("start");
    let mut port = open(&sim.device_path());
    sim.place(SimCard::resident("35020319900101123X", "张三"));
    sim.inject_status(StatusFault { code: 0x31, target: Some(StatusTarget::Read), sticky: false });
    for (cmd, len, sw3) in [(FIND, 15, 0x9F), (SELECT, 19, 0x90), (READ, 11, 0x31)] {
        port.write_all(&cmd).await.expect("write");
        assert_eq!(recv(&mut port, len).await[9], sw3);
    }
    assert!(sim.read_replies_written().is_empty());
    // The card was not read: it is found and read again.
    for (cmd, len) in [(FIND, 15), (SELECT, 19), (READ, 1295)] {
        port.write_all(&cmd).await.expect("write");
        recv(&mut port, len).await;
    }
    let written = sim.read_replies_written();
    assert_eq!((written.len(), sim.base_info_reads()), (1, 1));
    assert!(written[0].elapsed() < WAIT);
    sim.stop();
    sim.wait_stopped().await;
}

#[tokio::test]
async fn a_qr_scanner_cable_pulled_and_back_and_a_damaged_scan() {
    let link = unique_link("qr-unplug");
    let sim = QrSim::start(Some(&link), SimTerminator::Cr, None).expect("start");
    let mut port = open(&link);
    sim.corrupt_next_scans(1);
    sim.scan("ABCDEF");
    assert_eq!(recv(&mut port, 7).await, b"ABC\xFFEF\r");
    sim.unplug(Duration::from_millis(100));
    wait_for("the replug", || sim.replugs() == 1).await;
    drop(port);
    let mut port = open(&link);
    sim.scan("XYZ");
    assert_eq!(recv(&mut port, 4).await, b"XYZ\r");
    sim.stop();
    sim.wait_stopped().await;
}

#[test]
fn every_scenario_example_in_the_readme_parses_for_its_device() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let mut seen = Vec::new();
    for block in readme.split("```text\n").skip(1) {
        let text = block.split("```").next().unwrap_or("");
        let device = match text.lines().next().unwrap_or("") {
            l if l.starts_with("# idcard.scenario") => Device::IdCard,
            l if l.starts_with("# gate.scenario") => Device::Gate,
            l if l.starts_with("# qr.scenario") => Device::Qr,
            l if l.starts_with("# plate.scenario") => Device::Plate,
            _ => continue,
        };
        if let Err(e) = parse_script_for(text, device) {
            panic!("README example for {}: {e}", device.name());
        }
        seen.push(device);
    }
    assert_eq!(seen, [Device::IdCard, Device::Gate, Device::Qr, Device::Plate]);
}

/// A timed pulse (FC05 to 0x0200 + coil, width in 100 ms units) is dropped by
/// the board itself after its width, with nobody writing the coil again; a
/// later write to the coil (the host switching it off early, or on again)
/// takes over from the board's timer.
#[tokio::test]
async fn a_timed_pulse_drops_on_its_own_and_a_later_write_takes_over() {
    let link = unique_link("timed");
    let sim = GateSim::start(Some(&link), GateSimConfig { auto_passage: vec![], ..GateSimConfig::default() })
        .expect("start gate sim");
    let mut port = open(&sim.device_path());
    let mut events = sim.subscribe();

    // Coil 0 for 300 ms.
    let pulse = frame(&[1, 5, 0x02, 0x00, 0x00, 0x03]);
    port.write_all(&pulse).await.expect("write");
    assert_eq!(recv(&mut port, 8).await, pulse, "echoed");
    let on_at = Instant::now();
    assert!(sim.coil(0));
    let dropped = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(hw_sim::gate::GateEvent::Coil { coil: 0, on: false }) = events.recv().await {
                return Instant::now();
            }
        }
    })
    .await
    .expect("the board drops the coil itself");
    let width = dropped - on_at;
    assert!(width >= Duration::from_millis(250) && width < Duration::from_millis(900), "dropped after {width:?}");
    assert!(!sim.coil(0));

    // On again by a timed pulse, then held by a plain write: the plain write
    // wins, the pulse's timer must not drop a coil the host holds.
    port.write_all(&pulse).await.expect("write");
    recv(&mut port, 8).await;
    let hold = frame(&[1, 5, 0x00, 0x00, 0xFF, 0x00]);
    port.write_all(&hold).await.expect("write");
    recv(&mut port, 8).await;
    // A second, shorter pulse on coil 1 is the positive marker that the
    // first pulse's width has run out by the time it is checked.
    let marker = frame(&[1, 5, 0x02, 0x01, 0x00, 0x04]);
    port.write_all(&marker).await.expect("write");
    recv(&mut port, 8).await;
    wait_for("coil 1's pulse to end", || !sim.coil(1)).await;
    assert!(sim.coil(0), "a coil held by a plain write stays on after an earlier pulse's width");
    sim.stop();
}
