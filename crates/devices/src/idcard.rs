//! The ID card reader driver: one task owns the serial port of a SAM module,
//! polls for cards and sends each card read (or refused) as a [`CardEvent`].
//!
//! The protocol decisions live in the pure `cycle::ReaderCycle`; this file
//! only moves bytes, keeps time, counts problems in [`DeviceHealth`] and
//! reopens the port when it is lost.

mod cycle;

use crate::backoff::Backoff;
use crate::sam::{CardError, FrameDecoder, FrameError, Response, encode_command};
use cycle::{Awaiting, ReaderCycle, Report};
use gate_core::CardRecord;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};
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

/// How a connected session ended.
enum SessionEnd {
    /// Shutdown requested, or nobody listens to the events any more.
    Stop,
    /// The port failed; reopen it.
    Lost(io::Error),
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
/// dropped: the driver waits for room in the channel.
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
    run_inner(&settings, &port_name, &events, &health, &shutdown).instrument(span).await;
    health.set_connected(false);
}

async fn run_inner(
    settings: &IdCardSettings,
    port_name: &str,
    events: &mpsc::Sender<CardEvent>,
    health: &DeviceHealth,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut cycle = ReaderCycle::new();
    let mut first_attempt = true;
    while !shutdown.is_cancelled() {
        if !first_attempt {
            DeviceHealth::bump(&health.reconnects, 1);
        }
        first_attempt = false;
        let problem = match tokio_serial::new(port_name, settings.baud).open_native_async() {
            Ok(port) => {
                info!(baud = settings.baud, "id card reader port open");
                health.set_connected(true);
                let end = session(port, settings, &mut cycle, events, health, shutdown, &mut backoff).await;
                health.set_connected(false);
                match end {
                    SessionEnd::Stop => return,
                    SessionEnd::Lost(err) => format!("id card reader port {port_name} lost: {err}"),
                }
            }
            Err(err) => format!("cannot open id card reader port {port_name}: {err}"),
        };
        health.set_connected(false);
        let delay = backoff.next_delay();
        warn!(error = %problem, retry_in_ms = delay.as_millis() as u64, "id card reader offline");
        health.set_last_error(problem);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    mut port: SerialStream,
    settings: &IdCardSettings,
    cycle: &mut ReaderCycle,
    events: &mpsc::Sender<CardEvent>,
    health: &DeviceHealth,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> SessionEnd {
    let mut decoder = FrameDecoder::default();
    let mut next = Some(cycle.start());
    loop {
        let Some(command) = next.take() else {
            tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Stop,
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
        let exchange = match exchange(&mut port, &mut decoder, command, settings.reply_timeout, health, shutdown).await
        {
            Ok(exchange) => exchange,
            Err(err) => return SessionEnd::Lost(err),
        };
        match exchange {
            Exchange::Cancelled => return SessionEnd::Stop,
            Exchange::Reply(response) => {
                DeviceHealth::bump(&health.frames_ok, 1);
                backoff.reset();
                let outcome = cycle.on_response(&response);
                if let Some(report) = outcome.report {
                    record_report(health, report);
                }
                if let Some(event) = outcome.event {
                    log_event(&event);
                    tokio::select! {
                        () = shutdown.cancelled() => return SessionEnd::Stop,
                        sent = events.send(event) => if sent.is_err() {
                            info!("card event receiver gone; id card reader stops");
                            return SessionEnd::Stop;
                        }
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
                warn!(error = %message, "id card reader frame error");
                health.set_last_error(message);
                abandon_exchange(&port, &mut decoder, health, cycle);
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
    health: &DeviceHealth,
    shutdown: &CancellationToken,
) -> io::Result<Exchange> {
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
                    warn!(skipped, "id card reader line noise before a reply");
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

fn record_report(health: &DeviceHealth, report: Report) {
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
            warn!(sam_status = ?status, "SAM not ready");
            health.set_last_error(message);
        }
        Report::BadStatus { during, status } => {
            bump_status(health, status);
            let message = format!("{} answered {:#04x} ({status:?})", during.as_str(), status.code());
            warn!(command = during.as_str(), status = ?status, "id card reader error status");
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
