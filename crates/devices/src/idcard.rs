//! The ID card reader driver: one task owns the serial port of a SAM module,
//! polls for cards and sends each card read (or refused) as a [`CardEvent`].
//!
//! The protocol decisions live in the pure `cycle::ReaderCycle`; this file
//! only moves bytes, keeps time, counts problems in [`DeviceHealth`] and
//! reopens the port when it is lost.

mod cycle;

use crate::line::{LineDevice, Link, SessionEnd, run_line};
use crate::sam::{CardError, FrameDecoder, FrameError, Response, encode_command};
use cycle::{Awaiting, ReaderCycle, Report};
use gate_core::CardRecord;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

pub use crate::health::{DeviceHealth, HealthSnapshot};

/// Where the reader is and how to talk to it.
#[derive(Debug, Clone)]
pub struct IdCardSettings {
    /// Serial device, e.g. `/dev/ttyUSB0`.
    pub port: PathBuf,
    /// 115200 on most modules, 9600 on older ones.
    pub baud: u32,
    /// Pause between two find-card polls.
    pub poll_interval: Duration,
    /// How long to wait for a complete reply (default 1 s; a read-base-info
    /// reply is 1295 bytes, about 0.13 s at 115200 and 1.4 s at 9600 baud,
    /// so raise it on slow lines).
    pub reply_timeout: Duration,
}

impl IdCardSettings {
    /// The defaults of the protocol text: 115200 baud, 1 s reply timeout.
    pub fn new(port: PathBuf) -> Self {
        Self { port, baud: 115_200, poll_interval: Duration::from_millis(300), reply_timeout: Duration::from_secs(1) }
    }
}

/// A card presented to the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardEvent {
    /// Read and checked; the photo was dropped.
    Read(CardRecord),
    /// Read, but not usable (unsupported card type, failed ID check,
    /// malformed payload). Carries no personal data in clear.
    Rejected(CardError),
}

/// What one request/reply exchange gave.
enum Exchange {
    Reply(Response),
    Timeout,
    Corrupt(FrameError),
    Cancelled,
}

/// Runs until `shutdown` is cancelled (or the event receiver is dropped).
///
/// Opens the port, sends RESET and SAM_STATUS, then every `poll_interval`
/// FIND; on 9F SELECT and READ_BASE; sends the parsed card as a
/// [`CardEvent`]. A card resting on the reader is reported once, until a
/// FIND answers "no card". Reply timeouts and corrupt frames are counted and
/// the cycle retried at the next poll; a lost port is reopened with a
/// back-off of 200 ms doubling to 5 s. Never panics, and never emits an
/// event from a frame that failed its checksum. A card event is never
/// dropped: the driver waits for room in the channel. A warning repeated at
/// every poll (a card that fails to authenticate lies on the reader) is
/// logged once a minute with the count of its repeats.
///
/// `health.connected` means "port open": a module that stays silent on an
/// open port shows as a growing `timeouts` count instead.
pub async fn run_id_card_reader(
    settings: IdCardSettings,
    events: mpsc::Sender<CardEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
) {
    let port_name = settings.port.display().to_string();
    let span = tracing::info_span!("id_card_reader", port = %port_name);
    let baud = settings.baud;
    // The cycle outlives sessions: a card still resting on the reader after
    // a reconnection is not read again.
    let mut reader = Reader { settings, events, cycle: ReaderCycle::new() };
    run_line(&mut reader, &port_name, baud, &health, &shutdown).instrument(span).await;
}

/// The SAM module's part of the shared line driver.
struct Reader {
    settings: IdCardSettings,
    events: mpsc::Sender<CardEvent>,
    cycle: ReaderCycle,
}

impl LineDevice for Reader {
    const KIND: &'static str = "id card reader";
    const OFFLINE: &'static str = "id card reader offline";

    fn log_open(&self, baud: u32) {
        info!(baud, "id card reader port open");
    }

    fn log_offline(&self, problem: &str, retry_in: Duration) {
        warn!(error = %problem, retry_in_ms = retry_in.as_millis() as u64, "id card reader offline");
    }

    async fn session(&mut self, mut port: SerialStream, link: &mut Link<'_>) -> SessionEnd {
        let settings = &self.settings;
        let cycle = &mut self.cycle;
        let health = link.health;
        let mut decoder = FrameDecoder::default();
        let mut next = Some(cycle.start());
        loop {
            let Some(command) = next.take() else {
                link.flush_warnings();
                tokio::select! {
                    () = link.shutdown.cancelled() => return SessionEnd::Stop,
                    () = tokio::time::sleep(settings.poll_interval) => {}
                }
                next = Some(if health.sam_query_requested.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    cycle.query_sam()
                } else {
                    cycle.poll()
                });
                continue;
            };
            let during = cycle.awaiting().map_or("?", Awaiting::as_str);
            let exchange = match exchange(&mut port, &mut decoder, command, settings.reply_timeout, link).await {
                Ok(exchange) => exchange,
                Err(err) => return SessionEnd::Lost(err),
            };
            match exchange {
                Exchange::Cancelled => return SessionEnd::Stop,
                Exchange::Reply(response) => {
                    DeviceHealth::bump(&health.frames_ok, 1);
                    link.answered();
                    let outcome = cycle.on_response(&response);
                    if let Some(report) = outcome.report {
                        record_report(link, report);
                    }
                    if let Some(event) = outcome.event {
                        log_event(&event);
                        if !link.send(&self.events, event).await {
                            return SessionEnd::Stop;
                        }
                    }
                    next = outcome.send;
                }
                Exchange::Timeout => {
                    DeviceHealth::bump(&health.timeouts, 1);
                    let message = format!("no complete reply to {during} within {:?}", settings.reply_timeout);
                    debug!(error = %message, "id card reader timeout");
                    health.set_last_error(message);
                    abandon_exchange(&port, &mut decoder, health, cycle);
                }
                Exchange::Corrupt(err) => {
                    match err {
                        FrameError::Checksum { .. } => DeviceHealth::bump(&health.checksum_errors, 1),
                        FrameError::Length { .. } => DeviceHealth::bump(&health.length_errors, 1),
                        FrameError::Garbage { skipped } => DeviceHealth::bump(&health.garbage_bytes, skipped as u64),
                    }
                    let message = format!("corrupt reply to {during}: {err}");
                    if link.warn_now("id card reader frame error") {
                        warn!(error = %message, "id card reader frame error");
                    }
                    health.set_last_error(message);
                    abandon_exchange(&port, &mut decoder, health, cycle);
                }
            }
        }
    }
}

/// Drops everything left of a failed exchange, in the decoder and in the
/// port's input queue, so a late or partial reply cannot be taken for the
/// answer to the next command.
fn abandon_exchange(port: &SerialStream, decoder: &mut FrameDecoder, health: &DeviceHealth, cycle: &mut ReaderCycle) {
    DeviceHealth::bump(&health.garbage_bytes, decoder.pending_garbage() as u64);
    decoder.clear();
    // Best effort: if flushing fails the decoder still resynchronises on the
    // next preamble and the checksum guards the rest.
    let _ = port.clear(tokio_serial::ClearBuffer::Input);
    cycle.fail();
}

/// Sends one command and waits for one frame, counting line noise on the way.
async fn exchange(
    port: &mut SerialStream,
    decoder: &mut FrameDecoder,
    (cmd, para): (u8, u8),
    reply_timeout: Duration,
    link: &mut Link<'_>,
) -> io::Result<Exchange> {
    let (health, shutdown) = (link.health, link.shutdown);
    // Anything still buffered belongs to an earlier exchange.
    DeviceHealth::bump(&health.garbage_bytes, decoder.pending_garbage() as u64);
    decoder.clear();
    let deadline = Instant::now() + reply_timeout;
    let frame = encode_command(cmd, para, &[]);
    tokio::select! {
        () = shutdown.cancelled() => return Ok(Exchange::Cancelled),
        written = tokio::time::timeout_at(deadline, tokio::io::AsyncWriteExt::write_all(port, &frame)) => match written {
            Err(_elapsed) => return Ok(Exchange::Timeout),
            Ok(result) => result?,
        }
    }
    let mut buf = [0u8; 2048];
    loop {
        while let Some(item) = decoder.next_frame() {
            match item {
                Ok(response) => return Ok(Exchange::Reply(response)),
                // Noise before a frame is counted, and the frame after it
                // still has to pass its own checksum: keep reading.
                Err(FrameError::Garbage { skipped }) => {
                    // Counted and logged, but `last_error` keeps the last
                    // real failure: skipped noise does not lose a reply.
                    DeviceHealth::bump(&health.garbage_bytes, skipped as u64);
                    if link.warn_now("id card reader line noise before a reply") {
                        warn!(skipped, "id card reader line noise before a reply");
                    }
                }
                Err(err) => return Ok(Exchange::Corrupt(err)),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(Exchange::Cancelled),
            read = tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(port, &mut buf)) => match read {
                Err(_elapsed) => return Ok(Exchange::Timeout),
                Ok(Ok(0)) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "serial port closed")),
                Ok(Ok(n)) => decoder.push(&buf[..n]),
                Ok(Err(err)) => return Err(err),
            }
        }
    }
}

fn record_report(link: &mut Link<'_>, report: Report) {
    let health = link.health;
    if let Report::SamStatus(status) = &report {
        health.last_sam_status.store(status.code(), std::sync::atomic::Ordering::Relaxed);
        DeviceHealth::bump(&health.sam_status_replies, 1);
    }
    match report {
        Report::SamStatus(status) if status == crate::sam::Status::Ok => {
            info!(sam_status = ?status, "SAM ready");
        }
        Report::SamStatus(status) => {
            bump_status(health, status);
            let message = format!("SAM status {:#04x} ({status:?})", status.code());
            if link.warn_now("SAM not ready") {
                warn!(sam_status = ?status, "SAM not ready");
            }
            health.set_last_error(message);
        }
        Report::BadStatus { during, status } => {
            bump_status(health, status);
            let message = format!("{} answered {:#04x} ({status:?})", during.as_str(), status.code());
            if link.warn_now("id card reader error status") {
                warn!(command = during.as_str(), status = ?status, "id card reader error status");
            }
            health.set_last_error(message);
        }
    }
}

fn bump_status(health: &DeviceHealth, status: crate::sam::Status) {
    let counter = if status.is_auth_failure() { &health.auth_errors } else { &health.status_errors };
    DeviceHealth::bump(counter, 1);
}

/// Logs a card without personal data: kind and masked number only.
fn log_event(event: &CardEvent) {
    match event {
        CardEvent::Read(record) => info!(kind = ?record.kind, id = %record.id_number, "card read"),
        CardEvent::Rejected(err) => warn!(reason = %err, "card refused"),
    }
}
