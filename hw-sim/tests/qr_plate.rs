//! The QR scanner and plate camera simulators over real ptys: the slave is
//! opened with tokio-serial (as the daemon does) and every byte the simulated
//! device writes is compared with the framing docs/PROTOCOLS.md §3 and the camera
//! line format describe. Also runs the `hw-sim qr` / `hw-sim plate` binary.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hw_sim::{PlateSim, QrSim, SimTerminator};
use tokio::io::AsyncReadExt;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

const WAIT: Duration = Duration::from_secs(3);

fn open(path: &Path) -> SerialStream {
    tokio_serial::new(path.to_string_lossy(), 9600).open_native_async().expect("open pty slave with tokio-serial")
}

async fn recv(port: &mut SerialStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, port.read_exact(&mut buf)).await.expect("bytes within timeout").expect("read from pty");
    buf
}

/// Asserts nothing more arrives for a while: no stray terminator or echo.
async fn expect_silence(port: &mut SerialStream) {
    let mut buf = [0u8; 64];
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), port.read(&mut buf)).await {
        let n = r.expect("read from pty");
        panic!("expected silence, got {:02X?}", &buf[..n]);
    }
}

fn unique_link(tag: &str) -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("hw-sim-test-{tag}-{}-{nanos}", std::process::id()))
}

/// 600 characters over the base45 alphabet, space and `$%*+-./:` included.
fn hc1_like() -> String {
    const B45: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
    let mut s = String::from("HC1:");
    s.extend((0..596).map(|i| char::from(B45[(i * 13 + 1) % B45.len()])));
    s
}

// ---- QR scanner -----------------------------------------------------------

#[tokio::test]
async fn qr_each_terminator_byte_for_byte() {
    let cases: [(SimTerminator, Option<&str>, &[u8]); 6] = [
        (SimTerminator::Cr, None, b"HC1:AB C\r"),
        (SimTerminator::Lf, None, b"HC1:AB C\n"),
        (SimTerminator::CrLf, None, b"HC1:AB C\r\n"),
        (SimTerminator::Tab, None, b"HC1:AB C\t"),
        (SimTerminator::None, None, b"HC1:AB C"),
        (SimTerminator::Cr, Some("]Q1"), b"]Q1HC1:AB C\r"),
    ];
    for (terminator, prefix, want) in cases {
        let sim = QrSim::start(None, terminator, prefix.map(str::to_string)).expect("start");
        assert!(sim.device_path().starts_with("/dev/pts"));
        let mut port = open(&sim.device_path());
        sim.scan("HC1:AB C");
        assert_eq!(recv(&mut port, want.len()).await, want, "{terminator:?}");
        expect_silence(&mut port).await;
        sim.stop();
        tokio::time::timeout(WAIT, sim.wait_stopped()).await.expect("stops");
    }
}

#[tokio::test]
async fn qr_long_payload_utf8_and_raw_bytes() {
    let sim = QrSim::start(None, SimTerminator::CrLf, None).expect("start");
    let mut port = open(&sim.device_path());

    let long = hc1_like();
    sim.scan(&long);
    let mut want = long.into_bytes();
    want.extend_from_slice(b"\r\n");
    assert_eq!(recv(&mut port, 602).await, want);

    sim.scan("闽D·通行");
    let want = "闽D·通行\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);

    // Raw bytes go out untouched, no terminator added; order is kept.
    sim.send_raw(vec![0xFF, 0x00, 0x0D]);
    sim.scan("OK");
    assert_eq!(recv(&mut port, 7).await, [0xFF, 0x00, 0x0D, b'O', b'K', b'\r', b'\n']);
    expect_silence(&mut port).await;
    sim.stop();
}

#[tokio::test]
async fn qr_link_reopen_and_stop() {
    let link = unique_link("qr");
    let sim = QrSim::start(Some(&link), SimTerminator::Cr, None).expect("start");
    assert_eq!(sim.device_path(), link);
    assert_eq!(std::fs::read_link(&link).expect("symlink"), sim.slave_path());

    // The daemon closes and reopens its port: the device is still there.
    let mut port = open(&link);
    sim.scan("ONE");
    assert_eq!(recv(&mut port, 4).await, b"ONE\r");
    drop(port);
    let mut port = open(&link);
    sim.scan("TWO");
    assert_eq!(recv(&mut port, 4).await, b"TWO\r");

    sim.stop();
    tokio::time::timeout(WAIT, sim.wait_stopped()).await.expect("stops");
    assert!(std::fs::symlink_metadata(&link).is_err(), "symlink removed on stop");
}

// ---- Plate camera ---------------------------------------------------------

#[tokio::test]
async fn plate_lines_byte_for_byte() {
    let sim = PlateSim::start(None).expect("start");
    let mut port = open(&sim.device_path());

    sim.read("闽D12345", "blue", 0.93);
    let want = "闽D12345,blue,0.93\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);

    // Plates go out as given, separators and all; confidence text verbatim.
    sim.read_text("粤B·D12345", "green", "0.910");
    let want = "粤B·D12345,green,0.910\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);

    sim.read("京A12345", "yellow", 1.0);
    let want = "京A12345,yellow,1\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);

    sim.send_raw(vec![0xFF, 0xFE, b'\r', b'\n']);
    assert_eq!(recv(&mut port, 4).await, [0xFF, 0xFE, b'\r', b'\n']);
    expect_silence(&mut port).await;
    sim.stop();
    tokio::time::timeout(WAIT, sim.wait_stopped()).await.expect("stops");
}

// ---- The binary -----------------------------------------------------------

/// Kills the child on drop, so a failing assertion leaves no process behind.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> (Sim, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hw-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hw-sim");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (Sim(child), stdout)
}

fn line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).expect("read stdout");
    assert!(!line.is_empty(), "hw-sim exited early");
    line.trim_end().to_string()
}

/// The pty path from a "<device>: ... on /dev/pts/N ..." banner.
fn banner_path(banner: &str) -> PathBuf {
    let after = banner.split(" on ").nth(1).expect("banner names the pty");
    PathBuf::from(after.split_whitespace().next().expect("path"))
}

#[tokio::test]
async fn cli_qr_scans_with_prefix_and_masks_its_output() {
    let payload = hc1_like();
    let (_sim, mut out) = spawn(&[
        "qr",
        "--terminator",
        "crlf",
        "--prefix",
        "]Q1",
        "--scan",
        &payload,
        "--scan",
        "SECOND",
        "--gap-ms",
        "50",
    ]);
    let banner = line(&mut out);
    assert!(banner.starts_with("qr: scanner on /dev/pts/"), "{banner}");
    let mut port = open(&banner_path(&banner));

    let mut want = format!("]Q1{payload}\r\n").into_bytes();
    want.extend_from_slice(b"]Q1SECOND\r\n");
    assert_eq!(recv(&mut port, want.len()).await, want);

    let narration: Vec<String> = (0..4).map(|_| line(&mut out)).collect();
    let tail: String = payload.chars().skip(598).collect();
    assert_eq!(
        narration,
        [
            format!("qr: scanned 600 chars HC…{tail}"),
            "qr: wait 50 ms".to_string(),
            "qr: scanned 6 chars SE…ND".to_string(),
            "qr: wait 50 ms".to_string(),
        ]
    );
    expect_silence(&mut port).await;
}

#[tokio::test]
async fn cli_plate_script_and_reads() {
    let script = unique_link("plate-script");
    std::fs::write(&script, "plate 闽D12345 blue 0.93  # at the barrier\nraw 0d0a\nwait 20\n").expect("write script");
    let script_arg = script.to_string_lossy().to_string();
    let (_sim, mut out) = spawn(&["plate", "--script", &script_arg]);
    let banner = line(&mut out);
    assert!(banner.starts_with("plate: camera on /dev/pts/"), "{banner}");
    let mut port = open(&banner_path(&banner));
    let want = "闽D12345,blue,0.93\r\n\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);
    assert_eq!(line(&mut out), "plate: read 闽D…45 blue 0.93");
    assert_eq!(line(&mut out), "plate: sent 2 raw bytes");
    drop(port);

    let (_sim, mut out) = spawn(&["plate", "--read", "粤BD12345:green", "--read", "京A12345"]);
    let mut port = open(&banner_path(&line(&mut out)));
    let want = "粤BD12345,green,0.95\r\n".as_bytes();
    assert_eq!(recv(&mut port, want.len()).await, want);
    assert_eq!(line(&mut out), "plate: read 粤B…45 green 0.95");
    let _ = std::fs::remove_file(&script);
}

#[test]
fn cli_refuses_a_step_the_device_does_not_understand() {
    let script = unique_link("qr-script");
    std::fs::write(&script, "scan ABC\nwait 10\nplate 闽D12345 blue 0.9\n").expect("write");
    let output =
        Command::new(env!("CARGO_BIN_EXE_hw-sim")).args(["qr", "--script"]).arg(&script).output().expect("run hw-sim");
    let _ = std::fs::remove_file(&script);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("script line 3: `plate` is not a step of the qr simulator"), "{stderr}");
    assert!(!stderr.contains("D12345"), "{stderr}");
    assert!(output.stdout.is_empty(), "no pty was opened");

    let output =
        Command::new(env!("CARGO_BIN_EXE_hw-sim")).args(["qr", "--terminator", "nul"]).output().expect("run hw-sim");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown terminator"), "{stderr}");
}
