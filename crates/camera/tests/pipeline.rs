//! The camera path end to end on synthetic frames written to a folder:
//! `FolderSource` → `decode_qr` → `QrDebouncer` / `run_camera`, the same
//! code the daemon runs on a live camera.

mod support;

use gate_camera::{CameraError, FolderSource, Frame, FrameSource, QrDebouncer, decode_qr, run_camera};
use std::path::Path;
use std::time::Duration;
use support::{LEFT, PASS, RIGHT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// clean, noisy, empty, two codes: the four fixtures as PNG, in that order.
fn write_fixtures(dir: &Path) {
    support::save_png(&support::clean_frame(), &dir.join("01-clean.png"));
    support::save_png(&support::noisy_frame(), &dir.join("02-noisy.png"));
    support::save_png(&support::empty_frame(), &dir.join("03-empty.png"));
    support::save_png(&support::two_codes_frame(), &dir.join("04-two.png"));
}

fn all_frames(source: &mut FolderSource) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = source.next_frame().expect("frame reads") {
        frames.push(frame);
    }
    frames
}

#[test]
fn folder_frames_decode_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_fixtures(dir.path());
    // Not frames: skipped.
    std::fs::write(dir.path().join("00-notes.txt"), "not a frame").expect("write");
    std::fs::create_dir(dir.path().join("05-subdir.png")).expect("mkdir");

    let mut source = FolderSource::open(dir.path()).expect("open folder");
    assert_eq!(source.remaining(), 4);
    let decoded: Vec<Vec<String>> = all_frames(&mut source).iter().map(|f| sorted(decode_qr(f))).collect();
    assert_eq!(decoded, vec![strings(&[PASS]), strings(&[PASS]), vec![], strings(&[LEFT, RIGHT])]);
    // Exhausted stays exhausted.
    assert!(source.next_frame().expect("no error").is_none());
}

#[test]
fn jpeg_and_pgm_frames_decode_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let frame = support::clean_frame();
    image::GrayImage::from_raw(frame.width, frame.height, frame.luma.clone())
        .expect("size")
        .save_with_format(dir.path().join("a.JPG"), image::ImageFormat::Jpeg)
        .expect("write JPEG");
    let mut pgm = format!("P5\n# written by the test\n{} {}\n255\n", frame.width, frame.height).into_bytes();
    pgm.extend_from_slice(&frame.luma);
    std::fs::write(dir.path().join("b.pgm"), pgm).expect("write PGM");

    let mut source = FolderSource::open(dir.path()).expect("open folder");
    let frames = all_frames(&mut source);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1], frame, "PGM is lossless");
    for f in &frames {
        assert_eq!(decode_qr(f), strings(&[PASS]));
    }
}

#[test]
fn unreadable_frames_are_errors_not_panics() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.png"), b"not a png").expect("write");
    std::fs::write(dir.path().join("b.pgm"), b"P5 2 2 255\n\x00").expect("write");
    let mut source = FolderSource::open(dir.path()).expect("open folder");
    assert!(matches!(source.next_frame(), Err(CameraError::Image { .. })));
    assert!(matches!(source.next_frame(), Err(CameraError::Pgm { .. })));
    assert!(matches!(source.next_frame(), Ok(None)));
    assert!(matches!(FolderSource::open(dir.path().join("missing")), Err(CameraError::Io { .. })));
}

#[test]
fn decode_qr_refuses_malformed_frames() {
    assert!(decode_qr(&Frame { width: 640, height: 480, luma: vec![0; 10] }).is_empty());
    assert!(decode_qr(&Frame { width: 0, height: 0, luma: vec![] }).is_empty());
    assert!(Frame::new(2, 2, vec![0; 3]).is_err());
}

#[test]
fn debouncer_over_folder_frames() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_fixtures(dir.path());
    support::save_png(&support::clean_frame(), &dir.path().join("05-clean-again.png"));
    let frames = all_frames(&mut FolderSource::open(dir.path()).expect("open folder"));
    let payloads: Vec<Vec<String>> = frames.iter().map(decode_qr).collect();

    // One frame every 100 ms. PASS is seen at 0 and 100 ms, gone at 200
    // and 300, back at 400.
    let run = |hold_ms: u64| -> Vec<Vec<String>> {
        let mut debouncer = QrDebouncer::new(Duration::from_millis(hold_ms));
        payloads.iter().zip((0..).step_by(100)).map(|(p, at)| sorted(debouncer.observe(p.clone(), at))).collect()
    };
    // Out of view for 300 ms < 1.5 s: still the same presentation.
    assert_eq!(run(1_500), vec![strings(&[PASS]), vec![], vec![], strings(&[LEFT, RIGHT]), vec![]]);
    // Out of view for 300 ms >= 250 ms: a new presentation.
    assert_eq!(run(250), vec![strings(&[PASS]), vec![], vec![], strings(&[LEFT, RIGHT]), strings(&[PASS])]);
}

#[tokio::test]
async fn run_camera_feeds_each_new_payload_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_fixtures(dir.path());
    let source = FolderSource::open(dir.path()).expect("open folder");
    let (tx, mut rx) = mpsc::channel(8);
    let task = tokio::spawn(run_camera(Box::new(source), Duration::from_millis(5), tx, CancellationToken::new()));
    let mut got = Vec::new();
    while let Some(payload) = rx.recv().await {
        got.push(payload);
    }
    task.await.expect("camera task");
    // PASS once though it is in two frames; the two codes in either order.
    assert_eq!(got.first().map(String::as_str), Some(PASS));
    assert_eq!(sorted(got), sorted(strings(&[PASS, LEFT, RIGHT])));
}

/// A camera that shows the same frame forever, failing now and then.
struct EndlessCamera {
    frame: Frame,
    calls: u32,
}

impl FrameSource for EndlessCamera {
    fn next_frame(&mut self) -> Result<Option<Frame>, CameraError> {
        self.calls += 1;
        if self.calls % 3 == 1 {
            return Err(CameraError::Camera("select timeout".into()));
        }
        Ok(Some(self.frame.clone()))
    }
}

#[tokio::test]
async fn run_camera_survives_frame_errors_and_stops_on_shutdown() {
    let source = EndlessCamera { frame: support::clean_frame(), calls: 0 };
    let (tx, mut rx) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_camera(Box::new(source), Duration::from_millis(5), tx, shutdown.clone()));
    // The first frame fails; the second one carries the code.
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a payload in time");
    assert_eq!(first.as_deref(), Some(PASS));
    // Held in view: not reported again.
    assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops in time").expect("no panic");
    assert_eq!(rx.recv().await, None);
}
