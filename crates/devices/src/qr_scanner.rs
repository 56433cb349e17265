//! The QR scanner driver (docs/PROTOCOLS.md §3): a pure framing codec that turns the
//! module's byte stream into payloads, and one task that owns the serial port
//! and sends each payload (or refused frame) as a [`QrEvent`].
//!
//! Payloads are opaque text that may carry personal data (a health
//! certificate, a pass code): they are never logged in clear, only their
//! length and a masked form (see [`mask_payload`]).

use crate::health::DeviceHealth;
use crate::line::{LineDevice, Link, Read, SessionEnd, run_line};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const TAB: u8 = b'\t';

/// What the module sends after each payload (a config key: modules ship with
/// different defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminator {
    /// `\r`, the most common default. An LF right after it is swallowed, so a
    /// module that actually sends CRLF still works.
    Cr,
    /// `\n`. A CR right before it is dropped, so CRLF works too.
    Lf,
    /// `\r\n`. Framed on the LF with the CR before it dropped, so a module
    /// sending a bare LF still works.
    CrLf,
    /// `\t` (keyboard-wedge style modules).
    Tab,
    /// Nothing: a payload ends after [`QrScannerSettings::idle_gap`] of silence.
    None,
}

/// Where the scanner is and how it frames its output.
#[derive(Debug, Clone)]
pub struct QrScannerSettings {
    /// Serial device, e.g. `/dev/ttyUSB1`.
    pub port: PathBuf,
    /// 9600 on most modules, sometimes 115200.
    pub baud: u32,
    pub terminator: Terminator,
    /// Text the module puts before each payload (e.g. the AIM id `]Q1`);
    /// stripped when present, tolerated when absent.
    pub prefix: Option<String>,
    /// With [`Terminator::None`], a payload ends after this much silence.
    pub idle_gap: Duration,
    /// Longest frame accepted, in bytes before the terminator (prefix
    /// included); a longer one is refused as a whole.
    pub max_len: usize,
}

impl QrScannerSettings {
    /// The usual module defaults: 9600 baud, CR, no prefix, 50 ms idle gap,
    /// 4096-byte frames.
    pub fn new(port: PathBuf) -> Self {
        Self {
            port,
            baud: 9600,
            terminator: Terminator::Cr,
            prefix: None,
            idle_gap: Duration::from_millis(50),
            max_len: 4096,
        }
    }
}

/// One scan, or a frame that could not be one.
#[derive(Clone, PartialEq, Eq)]
pub enum QrEvent {
    /// The decoded payload, prefix stripped, otherwise exactly as sent
    /// (spaces included: the base45 alphabet has them).
    Scanned(String),
    Rejected(QrFrameError),
}

impl fmt::Debug for QrEvent {
    // A payload may hold personal data; `{:?}` of an event ends up in logs
    // and test output, so it shows only the length and a masked form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QrEvent::Scanned(text) => f
                .debug_struct("Scanned")
                .field("len", &text.chars().count())
                .field("masked", &mask_payload(text))
                .finish(),
            QrEvent::Rejected(err) => f.debug_tuple("Rejected").field(err).finish(),
        }
    }
}

/// Why a frame was refused. Carries no payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrFrameError {
    /// More than `max_len` bytes before the terminator; `len` is how many.
    #[error("frame too long ({len} bytes)")]
    TooLong { len: usize },
    #[error("frame is not UTF-8")]
    NotUtf8,
    /// A terminator with nothing (or only the prefix) before it.
    #[error("empty frame")]
    Empty,
}

/// Splits the scanner's byte stream into payloads. Pure: bytes in, frames
/// out; keeps partial frames across reads.
#[derive(Debug)]
pub struct QrFramer {
    terminator: Terminator,
    prefix: Vec<u8>,
    max_len: usize,
    buf: Vec<u8>,
    /// `Some(bytes so far)` once the current frame is known too long: its
    /// bytes are counted, not kept, until the terminator.
    overflow: Option<usize>,
    /// The last frame ended on CR in [`Terminator::Cr`] mode: an LF now is
    /// the second half of a CRLF, not data.
    skip_lf: bool,
    /// The last byte kept (or counted) was a CR.
    last_cr: bool,
    /// Bytes of frames refused as not UTF-8, not yet taken by the driver.
    garbage: usize,
}

impl QrFramer {
    /// `prefix` is stripped from the front of a frame when present.
    pub fn new(terminator: Terminator, prefix: Option<String>, max_len: usize) -> Self {
        Self {
            terminator,
            prefix: prefix.map(String::into_bytes).unwrap_or_default(),
            max_len,
            buf: Vec::new(),
            overflow: None,
            skip_lf: false,
            last_cr: false,
            garbage: 0,
        }
    }

    /// Feeds bytes as they came off the line; returns every frame they
    /// completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<String, QrFrameError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.skip_lf) && b == LF {
                continue;
            }
            let ends = match self.terminator {
                Terminator::Cr => b == CR,
                Terminator::Lf | Terminator::CrLf => b == LF,
                Terminator::Tab => b == TAB,
                Terminator::None => false,
            };
            if ends {
                self.skip_lf = self.terminator == Terminator::Cr;
                out.push(self.end_frame());
            } else {
                self.keep(b);
            }
        }
        out
    }

    /// With [`Terminator::None`], called after `idle_gap` of silence: the
    /// bytes so far are one frame. `None` when nothing is pending, and always
    /// with a real terminator (a partial frame then waits for its end).
    pub fn flush_idle(&mut self) -> Option<Result<String, QrFrameError>> {
        (self.terminator == Terminator::None && self.has_pending()).then(|| self.end_frame())
    }

    /// Part of a frame has been received.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty() || self.overflow.is_some()
    }

    /// The silence after which [`Self::flush_idle`] is due, if any.
    fn flush_idle_due(&self, idle_gap: Duration) -> Option<Duration> {
        (self.terminator == Terminator::None && self.has_pending()).then_some(idle_gap)
    }

    /// Bytes dropped in frames refused as not UTF-8 since the last call, for
    /// the `garbage_bytes` counter.
    pub fn take_garbage_bytes(&mut self) -> usize {
        std::mem::take(&mut self.garbage)
    }

    fn keep(&mut self, b: u8) {
        self.last_cr = b == CR;
        if let Some(len) = &mut self.overflow {
            *len += 1;
        } else if self.buf.len() > self.max_len {
            // One byte of slack beyond max_len is kept for the CR an LF
            // terminator drops; past that the frame is too long whatever
            // follows, so stop storing it.
            self.overflow = Some(self.buf.len() + 1);
            self.buf = Vec::new();
        } else {
            self.buf.push(b);
        }
    }

    fn end_frame(&mut self) -> Result<String, QrFrameError> {
        let mut frame = std::mem::take(&mut self.buf);
        // In LF modes a CR right before the LF belongs to the terminator.
        let cr_ends = matches!(self.terminator, Terminator::Lf | Terminator::CrLf) && std::mem::take(&mut self.last_cr);
        if let Some(len) = self.overflow.take() {
            return Err(QrFrameError::TooLong { len: len - usize::from(cr_ends) });
        }
        if cr_ends {
            frame.pop();
        }
        if frame.len() > self.max_len {
            return Err(QrFrameError::TooLong { len: frame.len() });
        }
        if !self.prefix.is_empty() && frame.starts_with(&self.prefix) {
            frame.drain(..self.prefix.len());
        }
        if frame.is_empty() {
            return Err(QrFrameError::Empty);
        }
        let len = frame.len();
        String::from_utf8(frame).map_err(|_| {
            self.garbage += len;
            QrFrameError::NotUtf8
        })
    }
}

/// A payload for logs: the first two and last two characters around an
/// ellipsis; four characters or fewer are starred entirely, since 2 + 2
/// would show them in clear.
pub fn mask_payload(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let mut out: String = chars[..2].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - 2..]);
    out
}

/// Runs until `shutdown` is cancelled (or the event receiver is dropped).
///
/// Opens the port, frames what the module sends and emits one [`QrEvent`]
/// per frame: refused frames are counted in `health` (too long / empty in
/// `length_errors`, non-UTF-8 bytes in `garbage_bytes`) and reported, never
/// a crash. A lost port is reopened with a back-off of 200 ms doubling to
/// 5 s; a partial frame does not survive a reconnection. An event is never
/// dropped: the driver waits for room in the channel.
pub async fn run_qr_scanner(
    settings: QrScannerSettings,
    events: mpsc::Sender<QrEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
) {
    let port_name = settings.port.display().to_string();
    let span = tracing::info_span!("qr_scanner", port = %port_name);
    let baud = settings.baud;
    let mut scanner = Scanner { settings, events };
    run_line(&mut scanner, &port_name, baud, &health, &shutdown).instrument(span).await;
}

/// The scanner's part of the shared line driver.
struct Scanner {
    settings: QrScannerSettings,
    events: mpsc::Sender<QrEvent>,
}

impl LineDevice for Scanner {
    const KIND: &'static str = "qr scanner";
    const OFFLINE: &'static str = "qr scanner offline";

    fn log_open(&self, baud: u32) {
        info!(baud, "qr scanner port open");
    }

    fn log_offline(&self, problem: &str, retry_in: Duration) {
        warn!(error = %problem, retry_in_ms = retry_in.as_millis() as u64, "qr scanner offline");
    }

    async fn session(&mut self, mut port: SerialStream, link: &mut Link<'_>) -> SessionEnd {
        let settings = &self.settings;
        let mut framer = QrFramer::new(settings.terminator, settings.prefix.clone(), settings.max_len);
        let mut buf = [0u8; 1024];
        loop {
            // Only a terminator-less module needs the line's silence, and
            // only while a frame is open; otherwise wait for bytes.
            let idle = framer.flush_idle_due(settings.idle_gap);
            let frames = match link.read(&mut port, &mut buf, idle).await {
                Read::Stop => return SessionEnd::Stop,
                Read::Lost(err) => return SessionEnd::Lost(err),
                Read::Bytes(n) => framer.push(&buf[..n]),
                Read::Idle => framer.flush_idle().into_iter().collect(),
            };
            let health = link.health;
            DeviceHealth::bump(&health.garbage_bytes, framer.take_garbage_bytes() as u64);
            for frame in frames {
                let event = match frame {
                    Ok(text) => {
                        DeviceHealth::bump(&health.frames_ok, 1);
                        link.answered();
                        info!(
                            len = text.chars().count(),
                            masked = %mask_payload(&text),
                            "qr scanned"
                        );
                        QrEvent::Scanned(text)
                    }
                    Err(err) => {
                        if !matches!(err, QrFrameError::NotUtf8) {
                            DeviceHealth::bump(&health.length_errors, 1);
                        }
                        let message = format!("qr frame refused: {err}");
                        if link.warn_now("qr scanner frame error") {
                            warn!(error = %message, "qr scanner frame error");
                        }
                        health.set_last_error(message);
                        QrEvent::Rejected(err)
                    }
                };
                if !link.send(&self.events, event).await {
                    return SessionEnd::Stop;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Frames = Vec<Result<String, QrFrameError>>;
    /// A frame as written in a table.
    type Want = Result<&'static str, QrFrameError>;

    fn ok(s: &str) -> Result<String, QrFrameError> {
        Ok(s.to_string())
    }

    fn framer(t: Terminator) -> QrFramer {
        QrFramer::new(t, None, 4096)
    }

    /// 600 characters drawn from the whole base45 alphabet, space included.
    fn hc1_like() -> String {
        const B45: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
        let mut s = String::from("HC1:");
        s.extend((0..596).map(|i| char::from(B45[(i * 7 + 3) % B45.len()])));
        s
    }

    #[test]
    fn each_terminator_ends_a_frame() {
        let cases: &[(Terminator, &[u8], &[&str])] = &[
            (Terminator::Cr, b"ABC\rDEF\r", &["ABC", "DEF"]),
            (Terminator::Lf, b"ABC\nDEF\n", &["ABC", "DEF"]),
            (Terminator::CrLf, b"ABC\r\nDEF\r\n", &["ABC", "DEF"]),
            (Terminator::Tab, b"ABC\tDEF\t", &["ABC", "DEF"]),
            // Other terminators are data in another mode.
            (Terminator::Tab, b"A\rB\nC\t", &["A\rB\nC"]),
            (Terminator::Cr, b"A\tB\nC\r", &["A\tB\nC"]),
            // Tolerances: CRLF on an LF config, a bare LF on a CRLF config.
            (Terminator::Lf, b"ABC\r\n", &["ABC"]),
            (Terminator::CrLf, b"ABC\n", &["ABC"]),
        ];
        for (t, bytes, want) in cases {
            let got = framer(*t).push(bytes);
            let want: Frames = want.iter().map(|s| ok(s)).collect();
            assert_eq!(got, want, "{t:?} {bytes:?}");
        }
    }

    #[test]
    fn no_terminator_frames_on_idle() {
        let mut f = framer(Terminator::None);
        assert!(f.flush_idle().is_none(), "nothing pending");
        assert!(f.push(b"ABC\r\nDEF").is_empty());
        assert!(f.has_pending());
        assert_eq!(f.flush_idle(), Some(ok("ABC\r\nDEF")));
        assert!(!f.has_pending());
        assert!(f.flush_idle().is_none());
        // A real terminator never flushes on idle: the frame waits.
        let mut f = framer(Terminator::Cr);
        assert!(f.push(b"AB").is_empty());
        assert!(f.flush_idle().is_none());
        assert_eq!(f.push(b"C\r"), vec![ok("ABC")]);
    }

    #[test]
    fn prefix_is_stripped_when_present() {
        let cases: &[(&[u8], &[Want])] = &[
            (b"]Q1HELLO\r", &[Ok("HELLO")]),
            (b"HELLO\r", &[Ok("HELLO")]),
            (b"]Q1]Q1X\r", &[Ok("]Q1X")]),
            (b"]Q\r", &[Ok("]Q")]),
            (b"]Q1\r", &[Err(QrFrameError::Empty)]),
        ];
        for (bytes, want) in cases {
            let mut f = QrFramer::new(Terminator::Cr, Some("]Q1".into()), 4096);
            let want: Frames = want.iter().map(|r| r.clone().map(str::to_string)).collect();
            assert_eq!(f.push(bytes), want, "{bytes:?}");
        }
        let mut f = QrFramer::new(Terminator::None, Some("]Q1".into()), 4096);
        f.push(b"]Q1ABC");
        assert_eq!(f.flush_idle(), Some(ok("ABC")));
    }

    #[test]
    fn bytes_split_across_reads_byte_by_byte() {
        let payload = format!("]Q1{}", hc1_like());
        for t in [Terminator::Cr, Terminator::Lf, Terminator::CrLf, Terminator::Tab] {
            let end: &[u8] = match t {
                Terminator::Cr => b"\r",
                Terminator::Lf => b"\n",
                Terminator::CrLf => b"\r\n",
                _ => b"\t",
            };
            let mut stream = Vec::new();
            for _ in 0..2 {
                stream.extend_from_slice(payload.as_bytes());
                stream.extend_from_slice(end);
            }
            let mut f = QrFramer::new(t, Some("]Q1".into()), 4096);
            let got: Frames = stream.iter().flat_map(|b| f.push(&[*b])).collect();
            assert_eq!(got, vec![ok(&hc1_like()), ok(&hc1_like())], "{t:?}");
            assert!(!f.has_pending());
        }
        // Multi-byte UTF-8 split in the middle of a character.
        let mut f = framer(Terminator::Cr);
        let bytes = "闽D12345\r".as_bytes();
        let got: Frames = bytes.iter().flat_map(|b| f.push(&[*b])).collect();
        assert_eq!(got, vec![ok("闽D12345")]);
    }

    #[test]
    fn a_600_char_hc1_payload_passes_whole() {
        let payload = hc1_like();
        assert_eq!(payload.len(), 600);
        assert!(payload.contains(' ') && payload.contains('$') && payload.contains(':'));
        let mut f = framer(Terminator::Cr);
        let mut bytes = payload.clone().into_bytes();
        bytes.push(CR);
        assert_eq!(f.push(&bytes), vec![Ok(payload)]);
    }

    #[test]
    fn too_long_is_refused_then_resynchronised() {
        let mut f = QrFramer::new(Terminator::Cr, None, 8);
        assert_eq!(f.push(b"12345678\r"), vec![ok("12345678")], "max_len fits");
        assert_eq!(f.push(b"123456789\rOK\r"), vec![Err(QrFrameError::TooLong { len: 9 }), ok("OK")]);
        // Far too long, fed in pieces: not stored, counted, then resync.
        for _ in 0..100 {
            assert!(f.push(b"0123456789").is_empty());
        }
        assert_eq!(f.push(b"\rNEXT\r"), vec![Err(QrFrameError::TooLong { len: 1000 }), ok("NEXT")]);
        // The CR an LF terminator drops does not count against the limit.
        let mut f = QrFramer::new(Terminator::CrLf, None, 8);
        assert_eq!(f.push(b"12345678\r\n"), vec![ok("12345678")]);
        assert_eq!(f.push(b"123456789\r\n"), vec![Err(QrFrameError::TooLong { len: 9 })]);
        // Without a terminator the idle gap ends the refused frame.
        let mut f = QrFramer::new(Terminator::None, None, 8);
        f.push(&[b'x'; 20]);
        assert_eq!(f.flush_idle(), Some(Err(QrFrameError::TooLong { len: 20 })));
        assert!(!f.has_pending());
    }

    #[test]
    fn not_utf8_is_refused_and_counted() {
        let mut f = framer(Terminator::Cr);
        assert_eq!(
            f.push(b"\xFF\xFEAB\rGOOD\r\xC3\r"),
            vec![Err(QrFrameError::NotUtf8), ok("GOOD"), Err(QrFrameError::NotUtf8)]
        );
        assert_eq!(f.take_garbage_bytes(), 5);
        assert_eq!(f.take_garbage_bytes(), 0);
    }

    #[test]
    fn cr_then_lf_tolerance() {
        let cases: &[(&[&[u8]], &[Want])] = &[
            // CRLF module on a CR config, in one read and split between reads.
            (&[b"ABC\r\nDEF\r\n"], &[Ok("ABC"), Ok("DEF")]),
            (&[b"ABC\r", b"\nDEF\r", b"\n"], &[Ok("ABC"), Ok("DEF")]),
            // Only one LF is swallowed, and only right after a CR.
            (&[b"ABC\r\n\nDEF\r"], &[Ok("ABC"), Ok("\nDEF")]),
            (&[b"\nABC\r"], &[Ok("\nABC")]),
            // Two CRs: the second ends an empty frame.
            (&[b"ABC\r\r"], &[Ok("ABC"), Err(QrFrameError::Empty)]),
        ];
        for (reads, want) in cases {
            let mut f = framer(Terminator::Cr);
            let got: Frames = reads.iter().flat_map(|r| f.push(r)).collect();
            let want: Frames = want.iter().map(|r| r.clone().map(str::to_string)).collect();
            assert_eq!(got, want, "{reads:?}");
        }
    }

    #[test]
    fn empty_frames() {
        assert_eq!(framer(Terminator::Lf).push(b"\r\n"), vec![Err(QrFrameError::Empty)]);
        assert_eq!(framer(Terminator::Tab).push(b"\t"), vec![Err(QrFrameError::Empty)]);
    }

    #[test]
    fn masking_and_debug_hide_the_payload() {
        assert_eq!(mask_payload("HC1:6BFOXN*TS0BI$ZD"), "HC…ZD");
        assert_eq!(mask_payload("闽D12345"), "闽D…45");
        assert_eq!(mask_payload("ABCD"), "****");
        assert_eq!(mask_payload(""), "");
        let shown = format!("{:?}", QrEvent::Scanned(hc1_like()));
        assert!(!shown.contains(&hc1_like()[..10]), "{shown}");
        assert!(shown.contains("600"), "{shown}");
    }
}
