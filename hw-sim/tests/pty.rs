//! End-to-end checks of the simulators over real ptys: raw hand-built frames go
//! in through tokio-serial (as the daemon would open the port), replies are
//! checked byte for byte.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hw_sim::{GateSim, GateSimConfig, IdCardSim, SimCard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPortBuilderExt, SerialStream};

const WAIT: Duration = Duration::from_secs(3);

fn open(path: &std::path::Path) -> SerialStream {
    tokio_serial::new(path.to_string_lossy(), 115_200).open_native_async().expect("open pty slave with tokio-serial")
}

async fn send(port: &mut SerialStream, bytes: &[u8]) {
    port.write_all(bytes).await.expect("write to pty");
}

async fn recv(port: &mut SerialStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, port.read_exact(&mut buf)).await.expect("reply within timeout").expect("read from pty");
    buf
}

/// Asserts nothing arrives for a while (the device must stay quiet).
async fn expect_silence(port: &mut SerialStream) {
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), port.read(&mut buf)).await {
        let n = r.expect("read from pty");
        panic!("expected silence, got {:02X?}", &buf[..n]);
    }
}

fn unique_link(tag: &str) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("hw-sim-test-{tag}-{}-{nanos}", std::process::id()))
}

// ---- SAM module: frames straight from the docs/PROTOCOLS.md table ----

const RESET: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x10, 0xFF, 0xEC];
const SAM_STATUS: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x11, 0xFF, 0xED];
const FIND: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x20, 0x01, 0x22];
const SELECT: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x20, 0x02, 0x21];
const READ: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x30, 0x01, 0x32];
const READ_FP: [u8; 10] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x30, 0x10, 0x23];

const FIND_FAIL: [u8; 11] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x04, 0x00, 0x00, 0x80, 0x84];
const FIND_OK: [u8; 15] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x08, 0x00, 0x00, 0x9F, 0x00, 0x00, 0x00, 0x00, 0x97];
const STATUS_OK: [u8; 11] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x04, 0x00, 0x00, 0x90, 0x94];
const SELECT_OK: [u8; 19] = [0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x0C, 0x00, 0x00, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0x9C];

fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// Test-local UCS-2LE field decoder, independent of the crate's.
fn field(text: &[u8], from: usize, to: usize) -> String {
    let units: Vec<u16> = text[from..to].chunks(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
    String::from_utf16(&units).expect("valid UCS-2").trim_end_matches(' ').to_string()
}

#[tokio::test]
async fn idcard_find_select_read_cycle() {
    let sim = IdCardSim::start(None).expect("start SAM sim");
    assert!(sim.device_path().starts_with("/dev/pts"));
    let mut port = open(&sim.device_path());

    send(&mut port, &RESET).await;
    assert_eq!(recv(&mut port, 11).await, STATUS_OK);
    send(&mut port, &SAM_STATUS).await;
    assert_eq!(recv(&mut port, 11).await, STATUS_OK);

    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL, "no card yet");

    let mut card = SimCard::resident("35020319900101123X", "张三");
    card.valid_to = "长期".to_string();
    sim.place(card.clone());
    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 15).await, FIND_OK);
    send(&mut port, &SELECT).await;
    assert_eq!(recv(&mut port, 19).await, SELECT_OK);

    send(&mut port, &READ).await;
    let r = recv(&mut port, 1295).await;
    assert_eq!(&r[..10], &[0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x05, 0x08, 0x00, 0x00, 0x90]);
    assert_eq!(&r[10..14], &[0x01, 0x00, 0x04, 0x00], "text and photo lengths");
    assert_eq!(xor(&r[5..1294]), r[1294], "checksum");
    let text = &r[14..14 + 256];
    assert_eq!(field(text, 0, 30), "张三");
    assert_eq!(field(text, 30, 32), "1");
    assert_eq!(field(text, 32, 36), "01");
    assert_eq!(field(text, 36, 52), "19900101");
    assert_eq!(field(text, 52, 122), card.address);
    assert_eq!(field(text, 122, 158), "35020319900101123X");
    assert_eq!(field(text, 158, 188), card.issuer);
    assert_eq!(field(text, 188, 204), card.valid_from);
    assert_eq!(field(text, 204, 220), "长期");
    assert_eq!(field(text, 220, 256), "");
    assert_eq!(sim.base_info_reads(), 1);

    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL, "card still held: read once");

    sim.remove();
    sim.place(card);
    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 15).await, FIND_OK, "placed again");

    send(&mut port, &READ_FP).await;
    let r = recv(&mut port, 2321).await;
    assert_eq!(&r[5..7], &[0x09, 0x0A]);
    assert_eq!(&r[10..16], &[0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
    assert_eq!(xor(&r[5..2320]), r[2320]);
    assert_eq!(sim.base_info_reads(), 2);
    sim.stop();
}

#[tokio::test]
async fn idcard_card_type_byte() {
    let sim = IdCardSim::start(None).expect("start SAM sim");
    let mut port = open(&sim.device_path());
    let mut card = SimCard::resident("830000199001011234", "林小明");
    card.card_type = Some('J');
    sim.place(card);
    send(&mut port, &READ).await;
    let r = recv(&mut port, 1295).await;
    let text = &r[14..270];
    assert_eq!(&text[248..250], &[b'J', 0x00]);
    sim.stop();
}

#[tokio::test]
async fn idcard_faults_and_resync() {
    let sim = IdCardSim::start(None).expect("start SAM sim");
    let mut port = open(&sim.device_path());

    // Garbage on the line before a frame, and a frame split across writes.
    send(&mut port, &[0x00, 0xAA, 0x55, 0xAA, 0xAA]).await;
    send(&mut port, &FIND[..4]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    send(&mut port, &FIND[4..]).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL);

    // Bad checksum, bad length, unknown command.
    let mut bad = FIND;
    bad[9] ^= 0x01;
    send(&mut port, &bad).await;
    assert_eq!(recv(&mut port, 11).await[9], 0x10);
    send(&mut port, &[0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x01, 0x00]).await;
    let r = recv(&mut port, 11).await;
    assert_eq!(r[9], 0x11);
    assert_eq!(xor(&r[5..10]), r[10]);
    send(&mut port, &[0xAA, 0xAA, 0xAA, 0x96, 0x69, 0x00, 0x03, 0x40, 0x01, 0x42]).await;
    assert_eq!(recv(&mut port, 11).await[9], 0x21);
    // Whatever the bad-length frame left behind must not swallow the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL);

    sim.inject_garbage(vec![0x13, 0x37, 0xAA]);
    send(&mut port, &FIND).await;
    let r = recv(&mut port, 14).await;
    assert_eq!(&r[..3], &[0x13, 0x37, 0xAA]);
    assert_eq!(&r[3..], &FIND_FAIL);

    sim.corrupt_next_replies(1);
    send(&mut port, &FIND).await;
    let r = recv(&mut port, 11).await;
    assert_eq!(&r[..10], &FIND_FAIL[..10]);
    assert_ne!(r[10], FIND_FAIL[10]);
    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL, "only one corrupted");

    sim.set_silent(true);
    send(&mut port, &FIND).await;
    expect_silence(&mut port).await;
    sim.set_silent(false);
    send(&mut port, &FIND).await;
    assert_eq!(recv(&mut port, 11).await, FIND_FAIL);
    sim.stop();
}

#[tokio::test]
async fn idcard_link_reopen_and_stop() {
    let link = unique_link("idcard");
    // A stale symlink from an earlier run is replaced.
    std::os::unix::fs::symlink("/dev/null/gone", &link).expect("stale link");
    let sim = IdCardSim::start(Some(&link)).expect("start SAM sim");
    assert_eq!(sim.device_path(), link);
    assert_eq!(std::fs::read_link(&link).expect("symlink"), sim.slave_path());

    // The daemon closes and reopens the port; the sim keeps serving.
    for _ in 0..2 {
        let mut port = open(&link);
        send(&mut port, &FIND).await;
        assert_eq!(recv(&mut port, 11).await, FIND_FAIL);
        drop(port);
    }

    sim.stop();
    tokio::time::timeout(WAIT, sim.wait_stopped()).await.expect("sim stops");
    assert!(std::fs::symlink_metadata(&link).is_err(), "symlink removed on stop");
}

// ---- Modbus IO board ----

/// Test-local CRC-16/MODBUS, bit by bit from the definition.
fn crc(frame: &[u8]) -> [u8; 2] {
    let mut c: u16 = 0xFFFF;
    for &b in frame {
        c ^= u16::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xA001 } else { c >> 1 };
        }
    }
    c.to_le_bytes()
}

fn rtu(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend(crc(body));
    f
}

async fn read_inputs(port: &mut SerialStream) -> u8 {
    send(port, &rtu(&[0x01, 0x02, 0x00, 0x00, 0x00, 0x08])).await;
    let r = recv(port, 6).await;
    assert_eq!(&r[..3], &[0x01, 0x02, 0x01]);
    assert_eq!(&r[4..], &crc(&r[..4]));
    r[3]
}

#[tokio::test]
async fn gate_fc05_echo_and_auto_passage() {
    let sim = GateSim::start(None, GateSimConfig::default()).expect("start gate sim");
    let mut port = open(&sim.device_path());

    assert_eq!(read_inputs(&mut port).await, 0x00);

    let unlock = [0x01, 0x05, 0x00, 0x00, 0xFF, 0x00, 0x8C, 0x3A];
    let sent = Instant::now();
    send(&mut port, &unlock).await;
    assert_eq!(recv(&mut port, 8).await, unlock, "FC05 is echoed");
    let writes = sim.coil_writes();
    assert_eq!(writes.len(), 1);
    assert_eq!((writes[0].coil, writes[0].on), (0, true));
    assert!(sim.coil(0));

    send(&mut port, &rtu(&[0x01, 0x01, 0x00, 0x00, 0x00, 0x08])).await;
    assert_eq!(recv(&mut port, 6).await, rtu(&[0x01, 0x01, 0x01, 0x01]));

    // The simulated person: input 0 rises after ~300 ms and falls ~200 ms later.
    let deadline = Instant::now() + WAIT;
    while read_inputs(&mut port).await & 0x01 == 0 {
        assert!(Instant::now() < deadline, "passage input never rose");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.elapsed() >= Duration::from_millis(250), "passage came too early");
    while read_inputs(&mut port).await & 0x01 != 0 {
        assert!(Instant::now() < deadline, "passage input never fell");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let lock = rtu(&[0x01, 0x05, 0x00, 0x00, 0x00, 0x00]);
    send(&mut port, &lock).await;
    assert_eq!(recv(&mut port, 8).await, lock);
    assert!(!sim.coil(0));
    assert_eq!(sim.coil_writes().len(), 2);
    sim.stop();
}

#[tokio::test]
async fn gate_fc0f_exceptions_units_and_resync() {
    let config = GateSimConfig { auto_passage: Vec::new(), ..GateSimConfig::default() };
    let sim = GateSim::start(None, config).expect("start gate sim");
    let mut port = open(&sim.device_path());

    // FC0F coils 1..=3 = on, off, on.
    send(&mut port, &rtu(&[0x01, 0x0F, 0x00, 0x01, 0x00, 0x03, 0x01, 0x05])).await;
    assert_eq!(recv(&mut port, 8).await, rtu(&[0x01, 0x0F, 0x00, 0x01, 0x00, 0x03]));
    let w: Vec<(u16, bool)> = sim.coil_writes().iter().map(|w| (w.coil, w.on)).collect();
    assert_eq!(w, vec![(1, true), (2, false), (3, true)]);

    // Exceptions: bad address, bad value, unknown function.
    send(&mut port, &rtu(&[0x01, 0x05, 0x00, 0x08, 0xFF, 0x00])).await;
    assert_eq!(recv(&mut port, 5).await, rtu(&[0x01, 0x85, 0x02]));
    send(&mut port, &rtu(&[0x01, 0x05, 0x00, 0x00, 0x00, 0x01])).await;
    assert_eq!(recv(&mut port, 5).await, rtu(&[0x01, 0x85, 0x03]));
    send(&mut port, &rtu(&[0x01, 0x02, 0x00, 0x07, 0x00, 0x02])).await;
    assert_eq!(recv(&mut port, 5).await, rtu(&[0x01, 0x82, 0x02]));
    send(&mut port, &rtu(&[0x01, 0x2B, 0x0E, 0x01, 0x00])).await;
    assert_eq!(recv(&mut port, 5).await, rtu(&[0x01, 0xAB, 0x01]));

    // Another unit's request gets no reply.
    send(&mut port, &rtu(&[0x02, 0x01, 0x00, 0x00, 0x00, 0x08])).await;
    expect_silence(&mut port).await;

    // Garbage before a request, then a request with a broken CRC: resync.
    let mut bytes = vec![0x55, 0x01, 0x77];
    bytes.extend(rtu(&[0x01, 0x01, 0x00, 0x00, 0x00, 0x08]));
    send(&mut port, &bytes).await;
    assert_eq!(recv(&mut port, 6).await, rtu(&[0x01, 0x01, 0x01, 0x0A]));
    let mut broken = rtu(&[0x01, 0x01, 0x00, 0x00, 0x00, 0x08]);
    broken[7] ^= 0xFF;
    send(&mut port, &broken).await;
    expect_silence(&mut port).await;
    send(&mut port, &rtu(&[0x01, 0x01, 0x00, 0x00, 0x00, 0x08])).await;
    assert_eq!(recv(&mut port, 6).await, rtu(&[0x01, 0x01, 0x01, 0x0A]));

    // A sensor set by the test shows up on FC02.
    sim.set_input(5, true);
    assert_eq!(read_inputs(&mut port).await, 0x20);

    let served = sim.requests_served();
    sim.set_silent(true);
    send(&mut port, &rtu(&[0x01, 0x01, 0x00, 0x00, 0x00, 0x08])).await;
    expect_silence(&mut port).await;
    assert_eq!(sim.requests_served(), served);
    sim.set_silent(false);
    assert_eq!(read_inputs(&mut port).await, 0x20);
    sim.stop();
}
