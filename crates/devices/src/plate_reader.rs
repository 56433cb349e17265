//! The licence-plate camera adapter on a serial line: one text line per read,
//! `PLATE,COLOUR,CONFIDENCE\r\n` (e.g. `闽D12345,blue,0.93`). Pure parsing,
//! normalisation and debounce, and one task that owns the port and sends
//! each usable read as a [`PlateEvent`].
//!
//! A plate identifies a vehicle's keeper, so it is personal data: logs and
//! `Debug` output show it only masked (first two and last two characters).

use crate::health::DeviceHealth;
use crate::line::{LineDevice, Link, Read, SessionEnd, run_line};
use crate::qr_scanner::mask_payload;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// A camera repeats the plate of a car waiting at the barrier; repeats closer
/// together than this are one read.
pub const DEBOUNCE_WINDOW: Duration = Duration::from_secs(3);

/// Where the camera adapter is and what to accept from it.
#[derive(Debug, Clone)]
pub struct PlateReaderSettings {
    /// Serial device, e.g. `/dev/ttyUSB2`.
    pub port: PathBuf,
    pub baud: u32,
    /// Reads below this are reported as [`PlateEvent::LowConfidence`], never
    /// as a plate.
    pub min_confidence: f32,
    /// Longest line accepted, in bytes without the line end.
    pub max_line: usize,
}

impl PlateReaderSettings {
    /// 9600 baud, confidence 0.8, 256-byte lines.
    pub fn new(port: PathBuf) -> Self {
        Self { port, baud: 9600, min_confidence: 0.8, max_line: 256 }
    }
}

/// Plate background colour as the camera names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlateColour {
    Blue,
    Yellow,
    /// New-energy vehicles.
    Green,
    White,
    Black,
    /// A name this code does not know, kept as sent (trimmed).
    Other(String),
}

impl PlateColour {
    /// Case-insensitive for the known names.
    pub fn parse(text: &str) -> PlateColour {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "blue" => PlateColour::Blue,
            "yellow" => PlateColour::Yellow,
            "green" => PlateColour::Green,
            "white" => PlateColour::White,
            "black" => PlateColour::Black,
            _ => PlateColour::Other(text.to_string()),
        }
    }
}

/// One accepted read.
#[derive(Clone, PartialEq)]
pub struct PlateRead {
    /// Normalised: upper case, separators removed, province character kept.
    pub plate: String,
    pub colour: PlateColour,
    /// 0..=1 as reported.
    pub confidence: f32,
}

impl fmt::Debug for PlateRead {
    // Debug output reaches logs and test failures: the plate is masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlateRead")
            .field("plate", &mask_payload(&self.plate))
            .field("colour", &self.colour)
            .field("confidence", &self.confidence)
            .finish()
    }
}

/// What the driver reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PlateEvent {
    /// A plate read at or above the confidence threshold, once per car.
    Read(PlateRead),
    /// The camera saw something but is not sure enough; for the status page,
    /// not a decision. Carries no plate.
    LowConfidence { confidence: f32 },
    /// A line that is not a usable read. Carries no plate text.
    Rejected(PlateLineError),
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlateLineError {
    #[error("line too long ({len} bytes)")]
    TooLong { len: usize },
    #[error("line is not UTF-8 ({len} bytes)")]
    NotUtf8 { len: usize },
    #[error("expected PLATE,COLOUR,CONFIDENCE, got {found} field(s)")]
    Fields { found: usize },
    /// What is left after normalisation is not a plate; `len` in characters.
    #[error("not a plate number ({len} characters)")]
    BadPlate { len: usize },
    #[error("colour field is empty")]
    NoColour,
    #[error("confidence is not a number between 0 and 1")]
    BadConfidence,
}

/// Plate normalisation is a domain rule (the identity table keys plates
/// the same way); it lives in `gate-core`.
pub use gate_core::normalise_plate;

/// The three fields of a line, the confidence checked, the plate not yet.
fn split_fields(line: &str) -> Result<(&str, &str, f32), PlateLineError> {
    let fields: Vec<&str> = line.trim_end_matches(['\r', '\n']).split(',').map(str::trim).collect();
    let [plate, colour, confidence] = fields[..] else {
        return Err(PlateLineError::Fields { found: fields.len() });
    };
    let confidence: f32 = confidence.parse().map_err(|_| PlateLineError::BadConfidence)?;
    // `contains` is false for NaN, so NaN is refused here too.
    if !(0.0..=1.0).contains(&confidence) {
        return Err(PlateLineError::BadConfidence);
    }
    if colour.is_empty() {
        return Err(PlateLineError::NoColour);
    }
    Ok((plate, colour, confidence))
}

/// Parses one line (with or without its line end) into a normalised read.
/// The confidence threshold is not applied here.
pub fn parse_plate_line(line: &str) -> Result<PlateRead, PlateLineError> {
    let (plate, colour, confidence) = split_fields(line)?;
    let normalised = normalise_plate(plate).ok_or(PlateLineError::BadPlate { len: plate.chars().count() })?;
    Ok(PlateRead { plate: normalised, colour: PlateColour::parse(colour), confidence })
}

/// Suppresses a plate seen again within the window of its *last* sighting,
/// so a car waiting at the barrier for a minute is still one read. Pure: the
/// caller passes the time.
#[derive(Debug, Clone)]
pub struct PlateDebounce {
    window_ms: u64,
    /// Plates seen within the window, with when they were last seen.
    recent: Vec<(String, u64)>,
}

impl PlateDebounce {
    pub fn new(window: Duration) -> Self {
        Self { window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX), recent: Vec::new() }
    }

    /// True when `plate` should be reported now; either way `now_ms` becomes
    /// its last sighting. Times must not go backwards (a monotonic clock).
    pub fn admit(&mut self, plate: &str, now_ms: u64) -> bool {
        let window = self.window_ms;
        // Forgetting old plates keeps the list as short as the traffic of
        // one window.
        self.recent.retain(|(_, seen)| now_ms.saturating_sub(*seen) < window);
        match self.recent.iter_mut().find(|(p, _)| p == plate) {
            Some((_, seen)) => {
                *seen = now_ms;
                false
            }
            None => {
                self.recent.push((plate.to_string(), now_ms));
                true
            }
        }
    }
}

impl Default for PlateDebounce {
    fn default() -> Self {
        Self::new(DEBOUNCE_WINDOW)
    }
}

/// Splits the byte stream into lines at CR and/or LF (so `\r\n`, `\n` and a
/// bare `\r` all work), skipping blank lines; a line longer than `max_line`
/// is refused and skipped up to its end without being stored.
#[derive(Debug)]
struct LineSplitter {
    max_line: usize,
    buf: Vec<u8>,
    /// `Some(bytes so far)` while skipping a too-long line.
    overflow: Option<usize>,
}

impl LineSplitter {
    fn new(max_line: usize) -> Self {
        Self { max_line, buf: Vec::new(), overflow: None }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, PlateLineError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                if let Some(len) = self.overflow.take() {
                    out.push(Err(PlateLineError::TooLong { len }));
                } else if !self.buf.is_empty() {
                    out.push(Ok(std::mem::take(&mut self.buf)));
                }
            } else if let Some(len) = &mut self.overflow {
                *len += 1;
            } else if self.buf.len() == self.max_line {
                self.overflow = Some(self.buf.len() + 1);
                self.buf = Vec::new();
            } else {
                self.buf.push(b);
            }
        }
        out
    }
}

/// Turns one line into the event to send, if any: the pure core of the
/// driver (threshold, then normalisation, then debounce).
fn event_for_line(
    line: Result<Vec<u8>, PlateLineError>,
    min_confidence: f32,
    debounce: &mut PlateDebounce,
    now_ms: u64,
) -> Option<PlateEvent> {
    let bytes = match line {
        Ok(bytes) => bytes,
        Err(err) => return Some(PlateEvent::Rejected(err)),
    };
    let len = bytes.len();
    let Ok(text) = String::from_utf8(bytes) else {
        return Some(PlateEvent::Rejected(PlateLineError::NotUtf8 { len }));
    };
    let (_, _, confidence) = match split_fields(&text) {
        Ok(fields) => fields,
        Err(err) => return Some(PlateEvent::Rejected(err)),
    };
    // Checked before the plate's shape: an unsure read is usually a garbled
    // plate, and that is expected noise rather than a line error.
    if confidence < min_confidence {
        return Some(PlateEvent::LowConfidence { confidence });
    }
    let read = match parse_plate_line(&text) {
        Ok(read) => read,
        Err(err) => return Some(PlateEvent::Rejected(err)),
    };
    if debounce.admit(&read.plate, now_ms) {
        Some(PlateEvent::Read(read))
    } else {
        debug!(plate = %mask_payload(&read.plate), "plate repeated within the debounce window");
        None
    }
}

/// Runs until `shutdown` is cancelled (or the event receiver is dropped).
///
/// Reads lines, reports each read at or above `min_confidence` once per car
/// (the same plate within 3 s of its last sighting is dropped), reports unsure
/// reads as [`PlateEvent::LowConfidence`] and bad lines as
/// [`PlateEvent::Rejected`]. Counts: good lines in `frames_ok`, too-long
/// lines in `length_errors`, the bytes of other bad lines in `garbage_bytes`.
/// A lost port is reopened with a back-off of 200 ms doubling to 5 s. Never
/// panics; an event is never dropped (the driver waits for room).
pub async fn run_plate_reader(
    settings: PlateReaderSettings,
    events: mpsc::Sender<PlateEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
) {
    let port_name = settings.port.display().to_string();
    let span = tracing::info_span!("plate_reader", port = %port_name);
    let baud = settings.baud;
    // The debounce outlives sessions: a camera reconnecting while a car
    // waits must not report it again.
    let mut camera = Camera { settings, events, debounce: PlateDebounce::default(), epoch: Instant::now() };
    run_line(&mut camera, &port_name, baud, &health, &shutdown).instrument(span).await;
}

/// The camera's part of the shared line driver.
struct Camera {
    settings: PlateReaderSettings,
    events: mpsc::Sender<PlateEvent>,
    debounce: PlateDebounce,
    epoch: Instant,
}

impl LineDevice for Camera {
    const KIND: &'static str = "plate reader";
    const OFFLINE: &'static str = "plate reader offline";

    fn log_open(&self, baud: u32) {
        info!(baud, "plate reader port open");
    }

    fn log_offline(&self, problem: &str, retry_in: Duration) {
        warn!(error = %problem, retry_in_ms = retry_in.as_millis() as u64, "plate reader offline");
    }

    async fn session(&mut self, mut port: SerialStream, link: &mut Link<'_>) -> SessionEnd {
        let mut lines = LineSplitter::new(self.settings.max_line);
        let mut buf = [0u8; 1024];
        loop {
            let n = match link.read(&mut port, &mut buf, None).await {
                Read::Stop => return SessionEnd::Stop,
                Read::Lost(err) => return SessionEnd::Lost(err),
                Read::Bytes(n) => n,
                Read::Idle => continue,
            };
            for line in lines.push(&buf[..n]) {
                let len = line.as_ref().map_or(0, Vec::len);
                let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let event = event_for_line(line, self.settings.min_confidence, &mut self.debounce, now_ms);
                let Some(event) = account(event, len, link) else { continue };
                if !link.send(&self.events, event).await {
                    return SessionEnd::Stop;
                }
            }
        }
    }
}

/// Counts and logs one line's outcome.
fn account(event: Option<PlateEvent>, line_len: usize, link: &mut Link<'_>) -> Option<PlateEvent> {
    let health = link.health;
    match event {
        // A repeat of a waiting car: a good line, nothing to send.
        None => {
            DeviceHealth::bump(&health.frames_ok, 1);
            link.answered();
            None
        }
        Some(PlateEvent::Read(read)) => {
            DeviceHealth::bump(&health.frames_ok, 1);
            link.answered();
            info!(
                plate = %mask_payload(&read.plate),
                colour = ?read.colour,
                confidence = read.confidence,
                "plate read"
            );
            Some(PlateEvent::Read(read))
        }
        Some(PlateEvent::LowConfidence { confidence }) => {
            DeviceHealth::bump(&health.frames_ok, 1);
            link.answered();
            debug!(confidence, "plate read below the confidence threshold");
            Some(PlateEvent::LowConfidence { confidence })
        }
        Some(PlateEvent::Rejected(err)) => {
            match err {
                PlateLineError::TooLong { .. } => {
                    DeviceHealth::bump(&health.length_errors, 1);
                }
                _ => DeviceHealth::bump(&health.garbage_bytes, line_len as u64),
            }
            let message = format!("plate line refused: {err}");
            if link.warn_now("plate reader line error") {
                warn!(error = %message, "plate reader line error");
            }
            health.set_last_error(message);
            Some(PlateEvent::Rejected(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("闽D12345", Some("闽D12345")),
            ("闽d 12345", Some("闽D12345")),
            ("粤B·D12345", Some("粤BD12345")),
            ("粤B.D1234-5", Some("粤BD12345")),
            (" 京A-F0236 ", Some("京AF0236")),
            ("沪ａｂ１２３４", Some("沪AB1234")),
            // New-energy: 8 characters.
            ("苏E·D12345", Some("苏ED12345")),
            ("浙A12345F", Some("浙A12345F")),
            // Suffixes.
            ("闽D1234学", Some("闽D1234学")),
            ("粤Z1234港", Some("粤Z1234港")),
            ("鲁B1234挂", Some("鲁B1234挂")),
            ("京A1234警", Some("京A1234警")),
            ("粤Z1234澳", Some("粤Z1234澳")),
            // Letter first.
            ("wj12345", Some("WJ12345")),
            ("闽D1234", Some("闽D1234")),
            // Invalid.
            ("", None),
            ("闽D123", None),
            ("闽D1234567", None),
            ("中D12345", None),
            ("1D12345", None),
            ("闽D12学45", None),
            ("闽D12345学港", None),
            ("闽D12_345", None),
            ("闽DÉ2345", None),
            ("闽闽12345", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_plate(raw).as_deref(), *want, "normalise_plate({raw:?})");
        }
    }

    #[test]
    fn line_parsing() {
        let read = parse_plate_line("闽D12345,blue,0.93\r\n").expect("valid line");
        assert_eq!(read, PlateRead { plate: "闽D12345".into(), colour: PlateColour::Blue, confidence: 0.93 });
        let read = parse_plate_line("粤b·d12345 , GREEN , 1").expect("valid line");
        assert_eq!(read.plate, "粤BD12345");
        assert_eq!(read.colour, PlateColour::Green);
        assert_eq!(parse_plate_line("闽D12345,Purple,0.9").map(|r| r.colour), Ok(PlateColour::Other("Purple".into())));
        let errors: &[(&str, PlateLineError)] = &[
            ("闽D12345,blue", PlateLineError::Fields { found: 2 }),
            ("闽D12345,blue,0.9,x", PlateLineError::Fields { found: 4 }),
            ("闽D12345,blue,high", PlateLineError::BadConfidence),
            ("闽D12345,blue,1.5", PlateLineError::BadConfidence),
            ("闽D12345,blue,-0.1", PlateLineError::BadConfidence),
            ("闽D12345,blue,NaN", PlateLineError::BadConfidence),
            ("闽D12345,,0.9", PlateLineError::NoColour),
            ("XX,blue,0.9", PlateLineError::BadPlate { len: 2 }),
        ];
        for (line, want) in errors {
            assert_eq!(parse_plate_line(line).as_ref(), Err(want), "{line}");
        }
    }

    #[test]
    fn errors_and_debug_hide_the_plate() {
        let err = parse_plate_line("闽D12_345,blue,0.9").expect_err("bad plate");
        assert!(!err.to_string().contains("12_345"), "{err}");
        let read = parse_plate_line("闽D12345,blue,0.9").expect("valid");
        let shown = format!("{:?}", PlateEvent::Read(read));
        assert!(!shown.contains("D12345") && shown.contains("闽D…45"), "{shown}");
    }

    #[test]
    fn confidence_threshold() {
        let cases: &[(&str, Option<PlateEvent>)] = &[
            (
                "闽D12345,blue,0.80",
                Some(PlateEvent::Read(PlateRead {
                    plate: "闽D12345".into(),
                    colour: PlateColour::Blue,
                    confidence: 0.8,
                })),
            ),
            ("闽D12345,blue,0.79", Some(PlateEvent::LowConfidence { confidence: 0.79 })),
            // Unsure and garbled: low confidence, not a line error.
            ("??,blue,0.2", Some(PlateEvent::LowConfidence { confidence: 0.2 })),
            ("??,blue,0.9", Some(PlateEvent::Rejected(PlateLineError::BadPlate { len: 2 }))),
        ];
        for (line, want) in cases {
            let mut debounce = PlateDebounce::default();
            let got = event_for_line(Ok(line.as_bytes().to_vec()), 0.8, &mut debounce, 0);
            assert_eq!(&got, want, "{line}");
        }
    }

    #[test]
    fn debounce_reports_a_waiting_car_once() {
        let mut d = PlateDebounce::new(Duration::from_secs(3));
        // (plate, now_ms, reported)
        let steps: &[(&str, u64, bool)] = &[
            ("闽D12345", 0, true),
            ("闽D12345", 500, false),
            ("闽D12345", 3_000, false), // 2.5 s after the last sighting
            ("闽D12345", 5_900, false), // still waiting: 2.9 s since last
            ("粤B88888", 6_000, true),  // another car, other lane
            ("闽D12345", 6_100, false),
            ("闽D12345", 9_100, true), // gone for exactly 3 s: a new arrival
            ("粤B88888", 9_200, true),
            ("粤B88888", 9_200, false),
        ];
        for &(plate, now, want) in steps {
            assert_eq!(d.admit(plate, now), want, "{plate} at {now} ms");
        }
        assert!(d.recent.len() <= 2);
    }

    #[test]
    fn repeated_lines_become_one_event() {
        let mut d = PlateDebounce::default();
        let line = || Ok("闽D12345,blue,0.93".as_bytes().to_vec());
        assert!(matches!(event_for_line(line(), 0.8, &mut d, 0), Some(PlateEvent::Read(_))));
        assert_eq!(event_for_line(line(), 0.8, &mut d, 1_000), None);
        assert_eq!(event_for_line(line(), 0.8, &mut d, 2_000), None);
        // Low-confidence lines are not debounced and do not refresh it.
        let low = Ok("闽D12345,blue,0.5".as_bytes().to_vec());
        assert!(matches!(event_for_line(low, 0.8, &mut d, 2_500), Some(PlateEvent::LowConfidence { .. })));
        assert!(matches!(event_for_line(line(), 0.8, &mut d, 5_000), Some(PlateEvent::Read(_))));
    }

    #[test]
    fn line_splitting() {
        let mut s = LineSplitter::new(10);
        let got = s.push(b"A,b,1\r\nC,d,0\nE,f,0\r\r\n\n");
        let want: Vec<Result<Vec<u8>, PlateLineError>> =
            vec![Ok(b"A,b,1".to_vec()), Ok(b"C,d,0".to_vec()), Ok(b"E,f,0".to_vec())];
        assert_eq!(got, want);
        // Split across reads byte by byte.
        let got: Vec<_> = "闽D12,x\r\n".as_bytes().iter().flat_map(|b| s.push(&[*b])).collect();
        assert_eq!(got, vec![Ok("闽D12,x".as_bytes().to_vec())]);
        // Too long: refused whole, then the next line is fine.
        let got = s.push(b"0123456789A\r\nOK\r\n");
        assert_eq!(got, vec![Err(PlateLineError::TooLong { len: 11 }), Ok(b"OK".to_vec())]);
        assert_eq!(s.push(b"0123456789\n"), vec![Ok(b"0123456789".to_vec())]);
    }

    #[test]
    fn not_utf8_line_is_rejected() {
        let mut d = PlateDebounce::default();
        assert_eq!(
            event_for_line(Ok(vec![0xFF, b',', 0xFE]), 0.8, &mut d, 0),
            Some(PlateEvent::Rejected(PlateLineError::NotUtf8 { len: 3 }))
        );
    }
}
