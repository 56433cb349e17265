//! QR codes from a camera: frames from a source (a folder of images, or a
//! V4L2 camera with the `camera` feature), every QR payload found in a
//! frame, and a debouncer so that a code held in front of the lens counts
//! once.
//!
//! The payloads go into the same channel type as the serial QR scanner's
//! (plain `String`s), so the decision loop does not care where a code came
//! from.

mod finder;
mod folder;
mod luma;
#[cfg(feature = "camera")]
mod v4l;

pub use folder::{FolderSource, SnapshotFileSource};
pub use luma::{PixelLayout, to_luma};
#[cfg(feature = "camera")]
pub use v4l::V4lSource;

use rxing::common::HybridBinarizer;
use rxing::multi::MultipleBarcodeReader;
use rxing::qrcode::cpp_port::QrReader;
use rxing::{BarcodeFormat, BinaryBitmap, DecodeHints, Luma8Source, LuminanceSource};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// One 8-bit grayscale picture, row-major, `width * height` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

impl Frame {
    /// A frame whose buffer matches its size; anything else is refused here
    /// rather than handed to the decoder.
    pub fn new(width: u32, height: u32, luma: Vec<u8>) -> Result<Frame, CameraError> {
        let frame = Frame { width, height, luma };
        frame.check()?;
        Ok(frame)
    }

    fn check(&self) -> Result<(), CameraError> {
        let expected = u64::from(self.width) * u64::from(self.height);
        if self.width == 0 || self.height == 0 || self.luma.len() as u64 != expected {
            return Err(CameraError::BadFrame { width: self.width, height: self.height, len: self.luma.len() });
        }
        Ok(())
    }
}

impl fmt::Debug for Frame {
    // A frame is hundreds of kilobytes: its size says enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("luma_len", &self.luma.len())
            .finish()
    }
}

/// Why a frame could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Image { path: PathBuf, source: image::ImageError },
    #[error("{}: not a PGM image: {detail}", path.display())]
    Pgm { path: PathBuf, detail: String },
    #[error("frame of {width}x{height} with {len} bytes of luma")]
    BadFrame { width: u32, height: u32, len: usize },
    #[error("{layout:?} frame of {width}x{height}: {detail}")]
    Convert { layout: PixelLayout, width: u32, height: u32, detail: String },
    #[error("no camera found (V4L2 lists none)")]
    NoCamera,
    #[error("no camera with index {index}; present: {present:?}")]
    CameraNotFound { index: u32, present: Vec<String> },
    #[error("camera: {0}")]
    Camera(String),
}

/// Where frames come from. `Ok(None)` means the source is exhausted (the
/// end of a folder); a camera never ends.
pub trait FrameSource: Send {
    fn next_frame(&mut self) -> Result<Option<Frame>, CameraError>;
}

/// Every QR payload found in `frame`: none, one or several, each once, in
/// the order found. A frame of the wrong size yields none.
///
/// A frame without a finder pattern is not decoded at all; otherwise the
/// region around the finder patterns is decoded first, and the whole frame
/// only when that region yields nothing.
pub fn decode_qr(frame: &Frame) -> Vec<String> {
    if frame.check().is_err() {
        return Vec::new();
    }
    let crossings = finder::crossings(frame);
    if crossings.is_empty() {
        return Vec::new();
    }
    if let Some(region) = finder::region(&crossings, frame.width, frame.height) {
        let found = decode_region(frame, region);
        if !found.is_empty() {
            return found;
        }
    }
    decode_region(frame, finder::Region::whole(frame.width, frame.height))
}

/// The full decode of one region of a frame of the right size.
fn decode_region(frame: &Frame, region: finder::Region) -> Vec<String> {
    let Ok(whole) = Luma8Source::new_with_slice(&frame.luma, frame.width, frame.height) else {
        return Vec::new();
    };
    let Ok(source) =
        whole.crop(region.left as usize, region.top as usize, region.width as usize, region.height as usize)
    else {
        return Vec::new();
    };
    let mut bitmap = BinaryBitmap::new(HybridBinarizer::new(source));
    let hints = DecodeHints {
        PossibleFormats: Some(HashSet::from([BarcodeFormat::QR_CODE])),
        // A finer finder-pattern scan: codes on a phone screen at arm's
        // length are small in a 640x480 frame.
        TryHarder: Some(true),
        MinimumModuleSize: (region.min_module > 1).then_some(region.min_module),
        ..DecodeHints::default()
    };
    // The ZXing-C++ port finds every code in one pass over the finder
    // patterns; "nothing found" is an error there, and means no payload.
    let results = QrReader.decode_multiple_with_hints(&mut bitmap, &hints).unwrap_or_default();
    let mut seen = HashSet::new();
    results.into_iter().map(|r| r.getText().to_owned()).filter(|text| seen.insert(text.clone())).collect()
}

/// Turns "seen in this frame" into "new code": a payload is reported when
/// it appears, not again while it stays in view, and again only after it
/// has been out of view for `hold`.
#[derive(Debug)]
pub struct QrDebouncer {
    hold_ms: i64,
    /// When each payload in view was last seen.
    last_seen: HashMap<String, i64>,
}

impl QrDebouncer {
    pub fn new(hold: Duration) -> QrDebouncer {
        QrDebouncer { hold_ms: i64::try_from(hold.as_millis()).unwrap_or(i64::MAX), last_seen: HashMap::new() }
    }

    /// Takes the payloads of one frame seen at `now_ms`; returns the ones
    /// that are new.
    pub fn observe(&mut self, payloads: Vec<String>, now_ms: i64) -> Vec<String> {
        // Out of view for `hold` (a missed frame or two is not "out of
        // view": the code is still there, the decoder just blinked).
        let hold = self.hold_ms;
        self.last_seen.retain(|_, last| now_ms.saturating_sub(*last) < hold);
        let mut fresh = Vec::new();
        for payload in payloads {
            match self.last_seen.insert(payload.clone(), now_ms) {
                Some(_) => {}
                None => fresh.push(payload),
            }
        }
        fresh
    }
}

/// Reads frames from `source` every `interval`, decodes them off the async
/// threads and sends each new payload into `out`. Returns when the source
/// ends, the receiver is gone, or `shutdown` is cancelled. A failing frame
/// is logged and skipped: a camera that glitches must not stop the gate.
pub async fn run_camera(
    source: Box<dyn FrameSource>,
    interval: Duration,
    out: mpsc::Sender<String>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    // A slow decode delays the next frame instead of bursting to catch up:
    // stale frames are worth nothing.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut debouncer = QrDebouncer::new(DEBOUNCE_HOLD);
    let mut source = Some(source);
    let mut errors: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Some(mut taken) = source.take() else { break };
        let job = tokio::task::spawn_blocking(move || {
            let result = taken.next_frame().map(|frame| frame.map(|f| decode_qr(&f)));
            (taken, result)
        });
        let (returned, result) = match job.await {
            Ok(done) => done,
            Err(e) => {
                // The source went down with the panicking task: nothing to
                // read from any more.
                warn!(error = %e, "camera decode task failed; camera stopped");
                break;
            }
        };
        source = Some(returned);
        let payloads = match result {
            Ok(Some(payloads)) => payloads,
            Ok(None) => {
                info!("camera source ended");
                break;
            }
            Err(e) => {
                errors += 1;
                // Logged on the first failure and then sparsely: a camera
                // unplugged fails on every frame.
                if errors.is_power_of_two() {
                    warn!(error = %e, errors, "camera frame failed");
                }
                continue;
            }
        };
        let now_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        for payload in debouncer.observe(payloads, now_ms) {
            debug!(len = payload.len(), "camera QR code");
            tokio::select! {
                () = shutdown.cancelled() => return,
                sent = out.send(payload) => if sent.is_err() { return },
            }
        }
    }
}

/// How long a code must be out of view before it counts again: longer than
/// a decoder miss on a few frames, shorter than someone stepping back and
/// showing the code again.
pub const DEBOUNCE_HOLD: Duration = Duration::from_millis(1_500);

/// The synthetic frames the integration tests and the benchmark draw (they
/// name this crate `gate_camera`).
#[cfg(test)]
extern crate self as gate_camera;
#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_frames;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_frames as support;

    fn whole(frame: &Frame) -> Vec<String> {
        decode_region(frame, finder::Region::whole(frame.width, frame.height))
    }

    fn may_hold_a_code(frame: &Frame) -> bool {
        !finder::crossings(frame).is_empty()
    }

    #[test]
    fn the_finder_scan_passes_every_code_the_decoder_reads_and_skips_an_empty_lane() {
        assert!(may_hold_a_code(&support::clean_frame()));
        assert!(may_hold_a_code(&support::noisy_frame()));
        assert!(may_hold_a_code(&support::two_codes_frame()));
        assert!(!may_hold_a_code(&support::empty_frame()));
        assert!(!may_hold_a_code(&support::blank(640, 480)));
        // Narrower than the scan's window, and a single row: no panic, no code.
        assert!(!may_hold_a_code(&support::blank(20, 3)));
        assert!(!may_hold_a_code(&support::blank(640, 1)));
        // Module sizes from tiny to filling the frame, contrasts from crisp
        // to dull, with and without noise and blur: wherever the full
        // decoder reads the code, the scan must have let the frame through,
        // and the decode (of the region around the finder patterns first)
        // must read what the whole frame's decode reads.
        let mut read = 0;
        for module in [1, 2, 3, 4, 6, 9] {
            for (dark, light) in [(20, 235), (60, 200), (100, 150)] {
                for noise in [0, 12, 40] {
                    let mut frame = support::blank(640, 480);
                    support::draw_qr(&mut frame, support::PASS, 7 + module * 3, 5 + module, module, dark, light);
                    if noise > 0 {
                        support::degrade(&mut frame, noise, 0x5eed + u64::from(module));
                    }
                    let expected = whole(&frame);
                    if !expected.is_empty() {
                        read += 1;
                        let case = format!("module {module}, {dark}/{light}, noise {noise}");
                        assert!(may_hold_a_code(&frame), "{case}");
                        assert_eq!(decode_qr(&frame), expected, "{case}");
                    }
                }
            }
        }
        assert!(read >= 30, "only {read} of the frames were readable at all");
    }

    #[test]
    fn a_code_at_any_angle_and_place_reads_through_its_region() {
        let (mut read, mut cut, mut alone) = (0, 0, 0);
        for (i, degrees) in [0.0f32, 10.0, 25.0, 45.0, 60.0, 80.0, 135.0, 200.0, 290.0].into_iter().enumerate() {
            for (cx, cy, module) in [(320.0, 240.0, 3.0), (150.0, 130.0, 2.0), (500.0, 350.0, 2.5), (330.0, 250.0, 5.0)]
            {
                let mut frame = support::blank(640, 480);
                support::draw_qr_rotated(&mut frame, support::PASS, (cx, cy), module, degrees, 30, 220);
                support::degrade(&mut frame, 10, 0x1234 + i as u64);
                let expected = whole(&frame);
                if expected.is_empty() {
                    continue;
                }
                read += 1;
                let case = format!("{degrees} degrees at ({cx}, {cy}), module {module}");
                let crossings = finder::crossings(&frame);
                // A region is cut unless the code fills most of the frame, and
                // alone it reads the code: the rest of the frame is not needed.
                if let Some(region) = finder::region(&crossings, frame.width, frame.height) {
                    cut += 1;
                    if decode_region(&frame, region) == expected {
                        alone += 1;
                    }
                }
                // And whatever the region did, the answer is the whole frame's.
                assert_eq!(decode_qr(&frame), expected, "{case}");
            }
        }
        assert!(read >= 18, "only {read} of the rotated codes were readable at all");
        assert!(cut * 2 >= read, "a region was cut for only {cut} of {read} codes");
        assert!(alone * 4 >= cut * 3, "the region alone read only {alone} of the {cut} codes it was cut for");
    }

    #[test]
    fn two_codes_far_apart_are_both_in_the_region() {
        let mut frame = support::blank(640, 480);
        support::draw_qr_rotated(&mut frame, support::LEFT, (110.0, 110.0), 3.0, 0.0, 20, 235);
        support::draw_qr_rotated(&mut frame, support::RIGHT, (520.0, 370.0), 3.0, 30.0, 20, 235);
        let mut found = decode_qr(&frame);
        found.sort();
        assert_eq!(found, vec![support::LEFT.to_owned(), support::RIGHT.to_owned()]);
    }

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn debouncer_reports_on_appearance_only() {
        let mut d = QrDebouncer::new(Duration::from_millis(500));
        assert_eq!(d.observe(v(&["a"]), 0), v(&["a"]));
        assert_eq!(d.observe(v(&["a", "a"]), 100), v(&[]));
        // A blink shorter than `hold` is the same presentation.
        assert_eq!(d.observe(v(&[]), 200), v(&[]));
        assert_eq!(d.observe(v(&["a", "b"]), 599), v(&["b"]));
        assert_eq!(d.observe(v(&["b"]), 1_000), v(&[]));
        // Last seen at 599: out of view for `hold` at 1099, so new again.
        assert_eq!(d.observe(v(&["a", "b"]), 1_099), v(&["a"]));
        // Time stepping back keeps codes in view rather than repeating them.
        assert_eq!(d.observe(v(&["a"]), 0), v(&[]));
    }

    #[test]
    fn duplicates_in_one_frame_count_once() {
        let mut d = QrDebouncer::new(Duration::ZERO);
        assert_eq!(d.observe(v(&["x", "x"]), 0), v(&["x"]));
        // A zero hold reports every frame.
        assert_eq!(d.observe(v(&["x"]), 0), v(&["x"]));
    }

    #[test]
    fn frame_debug_is_short() {
        let frame = Frame { width: 2, height: 1, luma: vec![1, 2] };
        assert_eq!(format!("{frame:?}"), "Frame { width: 2, height: 1, luma_len: 2 }");
    }
}
