//! The one serial line driver behind the ID card reader, the QR scanner and
//! the plate reader: open the port, hand it to the device's session, reopen
//! it with back-off when it is lost, keep `connected` / `reconnects` /
//! `last_error` in [`DeviceHealth`], and rate-limit the warnings a device
//! repeats (a missing port every 5 s, a bad card every poll).
//!
//! Each device keeps only what is its own: the protocol of a session (a
//! request/reply cycle for the SAM module, a byte stream cut into frames for
//! the scanner and the camera) and the wording of its log lines.

use crate::backoff::{BACKOFF_MAX, Backoff};
use crate::health::DeviceHealth;
use std::io;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A warning repeated within this window after its first line is counted,
/// not logged; the count is logged once the window is over.
pub(crate) const WARN_WINDOW: Duration = Duration::from_secs(60);

/// How a connected session ended.
pub(crate) enum SessionEnd {
    /// Shutdown requested, or nobody listens to the events any more.
    Stop,
    /// The port failed; reopen it.
    Lost(io::Error),
}

/// What one device adds to the shared driver.
pub(crate) trait LineDevice {
    /// The device as a technician reads it in `last_error`: "qr scanner".
    const KIND: &'static str;

    /// The message of [`Self::log_offline`]'s line, which names the
    /// warning in the summary of its repeats.
    const OFFLINE: &'static str;

    /// Logs that the port opened (each device's own line, which the
    /// technician's guide quotes).
    fn log_open(&self, baud: u32);

    /// Logs that the port could not be opened or was lost. Called at most
    /// once a [`WARN_WINDOW`]; the repeats are counted and summarised.
    fn log_offline(&self, problem: &str, retry_in: Duration);

    /// Talks to the device on an open port until it is lost or the driver
    /// stops.
    async fn session(&mut self, port: SerialStream, link: &mut Link<'_>) -> SessionEnd;
}

/// What a session shares with the driver: health, shutdown, back-off and
/// the warning limiter.
pub(crate) struct Link<'a> {
    kind: &'static str,
    pub(crate) health: &'a DeviceHealth,
    pub(crate) shutdown: &'a CancellationToken,
    backoff: Backoff,
    warnings: WarnLimiter,
}

/// What [`Link::read`] gave.
pub(crate) enum Read {
    Bytes(usize),
    /// The line stayed silent for the idle gap asked for.
    Idle,
    Stop,
    Lost(io::Error),
}

impl<'a> Link<'a> {
    fn new(kind: &'static str, health: &'a DeviceHealth, shutdown: &'a CancellationToken) -> Self {
        Self { kind, health, shutdown, backoff: Backoff::default(), warnings: WarnLimiter::new(WARN_WINDOW) }
    }

    /// The device answered properly: the next loss starts the back-off
    /// afresh.
    pub(crate) fn answered(&mut self) {
        self.backoff.reset();
    }

    /// True when the warning `key` should be logged now; false when it is a
    /// repeat inside its window (then it is counted for the summary line).
    pub(crate) fn warn_now(&mut self, key: &'static str) -> bool {
        self.warnings.admit(key, Instant::now())
    }

    /// Logs the summary of every warning window that has ended.
    pub(crate) fn flush_warnings(&mut self) {
        self.warnings.flush(Instant::now());
    }

    /// Sends an event, waiting for room; false when the driver should stop
    /// (shutdown, or nobody listens any more). An event is never dropped.
    pub(crate) async fn send<E>(&self, events: &mpsc::Sender<E>, event: E) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = events.send(event) => {
                if sent.is_err() {
                    info!(device = self.kind, "event receiver gone; the device driver stops");
                }
                sent.is_ok()
            }
        }
    }

    /// Reads some bytes; with `idle`, returns [`Read::Idle`] after that much
    /// silence. Logs the summary of a warning window when it ends, even on a
    /// line that stays silent for hours.
    pub(crate) async fn read(&mut self, port: &mut SerialStream, buf: &mut [u8], idle: Option<Duration>) -> Read {
        let idle_at = idle.map(|gap| Instant::now() + gap);
        loop {
            let summary_at = self.warnings.next_due();
            let wake_at = match (idle_at, summary_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return Read::Stop,
                read = port.read(buf) => return match read {
                    Ok(0) => Read::Lost(io::Error::new(io::ErrorKind::UnexpectedEof, "serial port closed")),
                    Ok(n) => Read::Bytes(n),
                    Err(err) => Read::Lost(err),
                },
                () = sleep => {
                    self.flush_warnings();
                    if idle_at.is_some_and(|at| Instant::now() >= at) {
                        debug!("line idle");
                        return Read::Idle;
                    }
                }
            }
        }
    }
}

/// Runs one device until `shutdown` is cancelled or its session says stop:
/// opens `port_name` at `baud`, runs the session, and after a failure waits
/// a back-off of 200 ms doubling to 5 s before opening it again. A port
/// that stayed up for 5 s was a working connection even if the device said
/// nothing (a scanner may be silent for hours), so the next loss starts the
/// back-off afresh.
pub(crate) async fn run_line<D: LineDevice>(
    device: &mut D,
    port_name: &str,
    baud: u32,
    health: &DeviceHealth,
    shutdown: &CancellationToken,
) {
    let mut link = Link::new(D::KIND, health, shutdown);
    let mut first_attempt = true;
    while !shutdown.is_cancelled() {
        if !first_attempt {
            DeviceHealth::bump(&health.reconnects, 1);
        }
        first_attempt = false;
        let problem = match tokio_serial::new(port_name, baud).open_native_async() {
            Ok(port) => {
                device.log_open(baud);
                health.set_connected(true);
                let opened = Instant::now();
                let end = device.session(port, &mut link).await;
                health.set_connected(false);
                if opened.elapsed() >= BACKOFF_MAX {
                    link.answered();
                }
                match end {
                    SessionEnd::Stop => break,
                    SessionEnd::Lost(err) => format!("{} port {port_name} lost: {err}", D::KIND),
                }
            }
            Err(err) => format!("cannot open {} port {port_name}: {err}", D::KIND),
        };
        let delay = link.backoff.next_delay();
        if link.warn_now(D::OFFLINE) {
            device.log_offline(&problem, delay);
        }
        health.set_last_error(problem);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    health.set_connected(false);
    // Repeats not yet summarised are said now rather than lost.
    link.warnings.flush_all();
}

/// Rate limit for repeated warnings. The first occurrence of a key is
/// logged; repeats within [`WARN_WINDOW`] of it are counted; when the window
/// is over, one line says how many there were ("... 57 more times in the
/// last minute") and the next occurrence is logged again. Pure apart from
/// the summary line: the caller passes the time.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    window: Duration,
    /// Open windows: key, when it started, repeats counted since.
    open: Vec<(&'static str, Instant, u64)>,
}

impl WarnLimiter {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, open: Vec::new() }
    }

    pub(crate) fn admit(&mut self, key: &'static str, now: Instant) -> bool {
        self.flush(now);
        match self.open.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, _, repeats)) => {
                *repeats += 1;
                false
            }
            None => {
                self.open.push((key, now, 0));
                true
            }
        }
    }

    /// Ends the windows that are over, logging each one's repeats.
    pub(crate) fn flush(&mut self, now: Instant) {
        for (key, repeats) in self.take_ended(now) {
            log_repeats(key, repeats);
        }
    }

    fn flush_all(&mut self) {
        for (key, _, repeats) in std::mem::take(&mut self.open) {
            log_repeats(key, repeats);
        }
    }

    /// The windows over at `now` with their repeat counts (zero counts
    /// included: they end silently).
    pub(crate) fn take_ended(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let window = self.window;
        let mut ended = Vec::new();
        self.open.retain(|&(key, since, repeats)| {
            let over = now.saturating_duration_since(since) >= window;
            if over {
                ended.push((key, repeats));
            }
            !over
        });
        ended
    }

    /// When the earliest window with repeats to report ends.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.open.iter().filter(|(.., repeats)| *repeats > 0).map(|(_, since, _)| *since + self.window).min()
    }
}

fn log_repeats(key: &str, repeats: u64) {
    if repeats > 0 {
        warn!(warning = key, repeats, "... {repeats} more times in the last minute");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_logged_repeats_are_counted_then_summarised() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut limiter = WarnLimiter::new(Duration::from_secs(60));
        assert!(limiter.admit("sam", at(0)));
        // A bad card on the reader, polled every 300 ms for a minute.
        let repeats = (1..200).filter(|i| limiter.admit("sam", at(i * 300))).count();
        assert_eq!(repeats, 0, "repeats inside the window are not logged");
        assert_eq!(limiter.next_due(), Some(at(60_000)));
        // Another key has its own window.
        assert!(limiter.admit("offline", at(1_000)));
        assert_eq!(limiter.take_ended(at(59_999)), vec![]);
        assert_eq!(limiter.take_ended(at(60_000)), vec![("sam", 199)]);
        // The window is over: the next one is logged again.
        assert!(limiter.admit("sam", at(60_100)));
        assert!(!limiter.admit("sam", at(60_200)));
        // A window without repeats ends silently and is not due.
        assert_eq!(limiter.next_due(), Some(at(120_100)));
        assert_eq!(limiter.take_ended(at(61_000)), vec![("offline", 0)]);
    }
}
