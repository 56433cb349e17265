//! The gate IO board driver: one task owns the Modbus RTU link to the relay /
//! IO board. It is a thin I/O layer under the gate safety state machine
//! (`gate_engine::gate_fsm`, driven by the app): it writes the coils it is
//! told to, reports the levels of every wired input, and says whether the
//! board answers. Timing, edges and alarms are the state machine's business.
//!
//! Fail-secure is the rule that shapes this file:
//! - Any failed exchange drops the link and reopens the port (a fresh port
//!   discards half-received frames); a few failures in a row mean the board
//!   is lost, which is reported and retried with back-off.
//! - Every (re)connect writes every mapped coil before anything else. After
//!   a loss (and at start) that write is "off", except for coils held on for
//!   a fire alarm: an unlock asked for while the board was away is never
//!   executed late. A quick reconnect within one outage-free spell restores
//!   the coils as last commanded, since the controller still counts on them.
//! - At shutdown every coil goes off, unless a fire alarm holds the unlocks
//!   on: stopping the daemon must not lock people in.
//! - With a board that times pulses itself ([`BoardTimed`]), an unlock coil
//!   is switched on only by a timed pulse (FC05 to 0x0200 + coil, width in
//!   100 ms units): the board drops it even if this process is killed. A
//!   fire alarm alone holds an unlock coil on with a plain write.
//!
//! The coil bookkeeping and input change detection are pure (`CoilBook`,
//! `InputWatch`) and unit-tested; the async functions only do Modbus calls.

use crate::backoff::Backoff;
use crate::health::DeviceHealth;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_serial::{SerialPort, SerialPortBuilderExt};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// Pause before reopening the port after a single failed exchange: long
/// enough for a late reply to land in the old port, short enough that a
/// pending unlock is hardly delayed.
const QUICK_RETRY: Duration = Duration::from_millis(20);

/// Events kept while the consumer is slow; beyond this the oldest input
/// snapshot is dropped (a newer one carries the current levels anyway).
const MAX_QUEUED_EVENTS: usize = 256;

/// Where the board is and which channels are wired. Coil and input numbers
/// are zero-based Modbus addresses (the board's relay 1 / input 1 is 0).
#[derive(Debug, Clone)]
pub struct GateIoSettings {
    pub port: PathBuf,
    pub baud: u32,
    pub unit_id: u8,
    /// Every coil wired to something. Only these are ever written: all of
    /// them on each (re)connect and at shutdown, each on command.
    pub coils: Vec<u16>,
    /// Every wired discrete input; read as one FC02 span per poll.
    pub inputs: Vec<u16>,
    /// Discrete inputs are read this often; keep it shorter than the
    /// turnstile's passage pulse or passages are missed.
    pub poll_interval: Duration,
    /// Deadline of one Modbus request and its reply (default 500 ms).
    pub request_timeout: Duration,
    /// Failed exchanges in a row after which the board counts as lost
    /// (default 3). A single bad frame only reopens the port.
    pub failures_before_lost: u32,
    /// The board times the unlock pulses itself; `None` (the default) when
    /// the host switches every coil off again.
    pub board_timed: Option<BoardTimed>,
}

/// Coils the board pulses on its own, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardTimed {
    /// The unlock coils; switched on only by a timed pulse (unless a fire
    /// alarm holds them).
    pub coils: Vec<u16>,
    /// The pulse width, rounded up to the board's 100 ms unit.
    pub width: Duration,
}

impl BoardTimed {
    /// The width in the board's 100 ms units, rounded up (so the board never
    /// cuts a pulse shorter than asked), at least 1.
    pub fn units(&self) -> u16 {
        let units = self.width.as_millis().div_ceil(u128::from(TIMED_PULSE_UNIT_MS)).max(1);
        u16::try_from(units).unwrap_or(u16::MAX)
    }
}

/// FC05 to this address plus the coil number starts a timed pulse.
pub const TIMED_PULSE_BASE: u16 = 0x0200;
/// The unit of a timed pulse's width, in milliseconds.
pub const TIMED_PULSE_UNIT_MS: u64 = 100;

impl GateIoSettings {
    /// The usual board: unit 1 at 9600 baud, unlock coils 0 / 1, passage
    /// inputs 0 / 1, inputs polled every 50 ms, 500 ms request timeout,
    /// lost after 3 failures in a row.
    pub fn new(port: PathBuf) -> Self {
        Self {
            port,
            baud: 9600,
            unit_id: 1,
            coils: vec![0, 1],
            inputs: vec![0, 1],
            poll_interval: Duration::from_millis(50),
            request_timeout: Duration::from_millis(500),
            failures_before_lost: 3,
            board_timed: None,
        }
    }
}

/// The levels of every wired input at one reading, by input address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InputLevels(BTreeMap<u16, bool>);

impl InputLevels {
    /// The level of `input`, `None` when it is not wired.
    pub fn get(&self, input: u16) -> Option<bool> {
        self.0.get(&input).copied()
    }

    /// Every wired input and its level, by address.
    pub fn iter(&self) -> impl Iterator<Item = (u16, bool)> + '_ {
        self.0.iter().map(|(&input, &on)| (input, on))
    }
}

impl FromIterator<(u16, bool)> for InputLevels {
    fn from_iter<I: IntoIterator<Item = (u16, bool)>>(iter: I) -> Self {
        InputLevels(iter.into_iter().collect())
    }
}

/// What the board reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateIoEvent {
    /// Every wired input: once after each (re)connect (before
    /// `Reachable(true)`), then whenever any level changes.
    Inputs(InputLevels),
    /// The board answers again (`true`, also after the first connect) or is
    /// lost (`false`: failures in a row, or the port is gone). Only changes
    /// are reported.
    Reachable(bool),
}

/// What the controller asks of the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateCommand {
    /// Switch one coil; it must be one of [`GateIoSettings::coils`].
    SetCoil { coil: u16, on: bool },
    /// Whether a fire alarm is active. While it is, the coils wanted on are
    /// kept on through a reconnect after a loss and at shutdown.
    FireAlarm(bool),
}

/// The coils as the controller wants them, and what to write when.
#[derive(Debug, Clone)]
struct CoilBook {
    wanted: BTreeMap<u16, bool>,
    fire: bool,
}

impl CoilBook {
    fn new(coils: &[u16]) -> Self {
        Self { wanted: coils.iter().map(|&c| (c, false)).collect(), fire: false }
    }

    /// Records a command; `false` for a coil that is not mapped (refused).
    fn set(&mut self, coil: u16, on: bool) -> bool {
        match self.wanted.get_mut(&coil) {
            Some(slot) => {
                *slot = on;
                true
            }
            None => false,
        }
    }

    /// The writes of a (re)connect. `after_loss`: the board was lost (or
    /// never reached) since the controller last saw it answer, so only a
    /// fire alarm may keep a coil on; the others are forgotten as off.
    fn on_connect(&mut self, after_loss: bool) -> Vec<(u16, bool)> {
        let fire = self.fire;
        for on in self.wanted.values_mut() {
            *on &= !after_loss || fire;
        }
        self.all()
    }

    /// The writes of a shutdown: everything off unless a fire alarm holds it.
    fn at_shutdown(&self) -> Vec<(u16, bool)> {
        self.wanted.iter().map(|(&coil, &on)| (coil, on && self.fire)).collect()
    }

    fn all(&self) -> Vec<(u16, bool)> {
        self.wanted.iter().map(|(&coil, &on)| (coil, on)).collect()
    }
}

/// Change detection over whole readings.
#[derive(Debug, Default)]
struct InputWatch {
    /// The last reading reported, `None` until the first one of a link.
    last: Option<InputLevels>,
}

impl InputWatch {
    /// A new link: the next reading is reported whatever it holds.
    fn forget(&mut self) {
        self.last = None;
    }

    /// The reading to report, if it is the first or differs from the last.
    fn read(&mut self, levels: InputLevels) -> Option<InputLevels> {
        if self.last.as_ref() == Some(&levels) {
            return None;
        }
        self.last = Some(levels.clone());
        Some(levels)
    }
}

/// Why a Modbus request failed.
#[derive(Debug)]
enum CallError {
    Timeout,
    Exception(ExceptionCode),
    Protocol(String),
    BadReply(String),
    Io(io::Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no reply in time"),
            CallError::Exception(code) => write!(f, "exception {:#04x} ({code})", u8::from(*code)),
            CallError::Protocol(message) => write!(f, "protocol error: {message}"),
            CallError::BadReply(message) => write!(f, "unexpected reply: {message}"),
            CallError::Io(err) => write!(f, "I/O error: {err}"),
        }
    }
}

/// The serial port, counting the bytes read from it. tokio-modbus skips
/// line noise before a reply without telling; comparing what was read with
/// the length of the reply decoded is how that noise gets counted.
///
/// Cloneable: tokio-modbus owns one handle, and the driver keeps another
/// for the one exchange tokio-modbus cannot decode (a timed pulse's echo
/// carries a width, not FF00/0000). The driver makes one exchange at a
/// time, so the two never read at once; the lock is held only per poll.
#[derive(Debug)]
struct CountingPort<T> {
    inner: Arc<std::sync::Mutex<T>>,
    read: Arc<AtomicU64>,
}

impl<T> Clone for CountingPort<T> {
    fn clone(&self) -> Self {
        CountingPort { inner: Arc::clone(&self.inner), read: Arc::clone(&self.read) }
    }
}

impl<T> CountingPort<T> {
    fn port(&self) -> std::sync::MutexGuard<'_, T> {
        // Plain bytes behind the lock: a panic elsewhere leaves nothing torn.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingPort<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.port()).poll_read(cx, buf);
        this.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingPort<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().port()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().port()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().port()).poll_shutdown(cx)
    }
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// `body` followed by its CRC.
fn rtu_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = body.to_vec();
    frame.extend_from_slice(&crc16_modbus(body).to_le_bytes());
    frame
}

/// What the bytes read so far after a timed pulse request say.
#[derive(Debug, PartialEq, Eq)]
enum EchoScan {
    /// Not yet a whole answer.
    More,
    /// The echo, after this many bytes of line noise.
    Echo { noise: usize },
    /// An exception reply with this code.
    Exception(u8),
}

/// Looks for the echo of `request` (or an exception reply from its unit)
/// at the end of `read`: the board answers only after the request, so
/// anything before the answer is noise.
fn scan_echo(request: &[u8], read: &[u8]) -> EchoScan {
    if read.ends_with(request) {
        return EchoScan::Echo { noise: read.len() - request.len() };
    }
    if read.len() >= 5 {
        let tail = &read[read.len() - 5..];
        if tail[0] == request[0] && tail[1] == request[1] | 0x80 && tail[3..] == crc16_modbus(&tail[..3]).to_le_bytes()
        {
            return EchoScan::Exception(tail[2]);
        }
    }
    EchoScan::More
}

/// The RTU frame length of a reply: unit, PDU, CRC.
fn reply_len(response: &Response) -> u64 {
    let pdu = match response {
        Response::ReadDiscreteInputs(bits) | Response::ReadCoils(bits) => 2 + bits.len().div_ceil(8),
        _ => 5,
    };
    (1 + pdu + 2) as u64
}

/// The link to the board plus what every call needs.
struct Link<'a> {
    ctx: Context,
    /// The same port, for the timed pulse tokio-modbus cannot decode.
    raw: CountingPort<tokio_serial::SerialStream>,
    unit_id: u8,
    timeout: Duration,
    health: &'a DeviceHealth,
    /// Bytes read from the port so far.
    read: Arc<AtomicU64>,
}

impl Link<'_> {
    async fn call(&mut self, request: Request<'static>) -> Result<Response, CallError> {
        let read_before = self.read.load(Ordering::Relaxed);
        let result = match tokio::time::timeout(self.timeout, self.ctx.call(request)).await {
            Err(_elapsed) => Err(CallError::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(err))) => Err(CallError::Io(err)),
            Ok(Err(tokio_modbus::Error::Protocol(err))) => Err(CallError::Protocol(err.to_string())),
            Ok(Ok(Err(code))) => Err(CallError::Exception(code)),
            Ok(Ok(Ok(response))) => Ok(response),
        };
        let counter = match &result {
            Ok(_) => &self.health.frames_ok,
            Err(CallError::Timeout) => &self.health.timeouts,
            Err(CallError::Exception(_) | CallError::Protocol(_) | CallError::BadReply(_)) => {
                &self.health.status_errors
            }
            // tokio-modbus silently drops bytes with a bad CRC and gives up
            // with InvalidData after too many: that is a corrupt line.
            Err(CallError::Io(err)) if err.kind() == io::ErrorKind::InvalidData => &self.health.checksum_errors,
            Err(CallError::Io(_)) => return result,
        };
        DeviceHealth::bump(counter, 1);
        if let Ok(response) = &result {
            // Exceptions are errors already; a good reply with more bytes
            // read than it has came after line noise.
            let read = self.read.load(Ordering::Relaxed).saturating_sub(read_before);
            let noise = read.saturating_sub(reply_len(response));
            if noise > 0 {
                DeviceHealth::bump(&self.health.garbage_bytes, noise);
                let message = format!("{noise} bytes of line noise before a reply");
                warn!(error = %message, "gate IO line noise");
                self.health.set_last_error(message);
            }
        }
        result
    }

    /// FC05; the echo must match, or the board did something else.
    async fn write_coil(&mut self, addr: u16, on: bool) -> Result<(), CallError> {
        // `Client::call` rather than `Writer::write_single_coil`: the latter
        // only debug-asserts the echo, which would panic on a bad board
        // instead of reporting it.
        match self.call(Request::WriteSingleCoil(addr, on)).await? {
            Response::WriteSingleCoil(echo_addr, echo_on) if echo_addr == addr && echo_on == on => Ok(()),
            other => {
                DeviceHealth::bump(&self.health.status_errors, 1);
                Err(CallError::BadReply(format!("write coil {addr} = {on} answered {other:?}")))
            }
        }
    }

    /// FC05 to [`TIMED_PULSE_BASE`] + `coil` with the width in 100 ms units:
    /// the board switches the coil on and off again by itself. The echo must
    /// match byte for byte. Framed here because tokio-modbus rejects an FC05
    /// echo whose value is not FF00/0000.
    async fn timed_pulse(&mut self, coil: u16, units: u16) -> Result<(), CallError> {
        let Some(addr) = TIMED_PULSE_BASE.checked_add(coil) else {
            // Refused by the configuration already; never wrapped around.
            return Err(CallError::BadReply(format!("coil {coil} has no timed-pulse address")));
        };
        let [a_hi, a_lo] = addr.to_be_bytes();
        let [u_hi, u_lo] = units.to_be_bytes();
        let request = rtu_frame(&[self.unit_id, 0x05, a_hi, a_lo, u_hi, u_lo]);
        let exchange = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // Leftovers of an earlier, abandoned exchange are no answer.
            let _ = tokio_serial::SerialPort::clear(&*self.raw.port(), tokio_serial::ClearBuffer::Input);
            self.raw.write_all(&request).await?;
            let mut read = Vec::with_capacity(16);
            let mut buf = [0u8; 64];
            loop {
                let n = self.raw.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                read.extend_from_slice(&buf[..n]);
                match scan_echo(&request, &read) {
                    EchoScan::More if read.len() < 256 => {}
                    EchoScan::More => return Ok(EchoScan::More),
                    answer => return Ok(answer),
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_elapsed) => Err(CallError::Timeout),
            Ok(Err(err)) => Err(CallError::Io(err)),
            Ok(Ok(EchoScan::Echo { noise })) => {
                if noise > 0 {
                    DeviceHealth::bump(&self.health.garbage_bytes, noise as u64);
                }
                Ok(())
            }
            Ok(Ok(EchoScan::Exception(code))) => Err(CallError::Exception(ExceptionCode::new(code))),
            Ok(Ok(EchoScan::More)) => Err(CallError::BadReply(format!("timed pulse of coil {coil}: no echo"))),
        };
        let counter = match &result {
            Ok(()) => &self.health.frames_ok,
            Err(CallError::Timeout) => &self.health.timeouts,
            Err(CallError::Io(_)) => return result,
            Err(_) => &self.health.status_errors,
        };
        DeviceHealth::bump(counter, 1);
        result
    }

    /// FC02 over the span `first..first + count`.
    async fn read_inputs(&mut self, first: u16, count: u16) -> Result<Vec<bool>, CallError> {
        match self.call(Request::ReadDiscreteInputs(first, count)).await? {
            Response::ReadDiscreteInputs(bits) if bits.len() >= usize::from(count) => Ok(bits),
            other => {
                DeviceHealth::bump(&self.health.status_errors, 1);
                Err(CallError::BadReply(format!("read {count} inputs from {first} answered {other:?}")))
            }
        }
    }
}

/// The driver's state across links.
struct Driver<'a> {
    settings: &'a GateIoSettings,
    port_name: String,
    events: &'a mpsc::Sender<GateIoEvent>,
    health: &'a DeviceHealth,
    shutdown: &'a CancellationToken,
    book: CoilBook,
    watch: InputWatch,
    /// Events the consumer has not taken yet (it is never waited for).
    queued: VecDeque<GateIoEvent>,
    /// What the consumer was last told; `None` before the first outcome.
    reachable: Option<bool>,
    /// Failed exchanges or opens since the board last answered properly.
    failures: u32,
}

enum SessionEnd {
    Stop,
    Failed(String),
}

/// Runs until `shutdown` is cancelled (or the command sender is dropped).
///
/// Owns the Modbus RTU client on the serial port. On each (re)connect every
/// mapped coil is written (see the module documentation for which value),
/// then the inputs are read and reported as [`GateIoEvent::Inputs`]
/// followed by [`GateIoEvent::Reachable`]`(true)` when that is news. Every
/// `poll_interval` the wired inputs are read (FC02); a change is reported.
/// [`GateCommand::SetCoil`] writes one coil (FC05). Every call has
/// `request_timeout`. Exceptions, timeouts, bad CRCs and bad replies are
/// counted in `health`; a failed exchange reopens the port, and
/// `failures_before_lost` of them in a row report `Reachable(false)` and
/// retry with a back-off of 200 ms doubling to 5 s. Never panics on what
/// the board sends, and never waits on the event consumer.
pub async fn run_gate_io(
    settings: GateIoSettings,
    mut commands: mpsc::Receiver<GateCommand>,
    events: mpsc::Sender<GateIoEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
) {
    let port_name = settings.port.display().to_string();
    let span = tracing::info_span!("gate_io", port = %port_name, unit = settings.unit_id);
    let mut driver = Driver {
        settings: &settings,
        port_name,
        events: &events,
        health: &health,
        shutdown: &shutdown,
        book: CoilBook::new(&settings.coils),
        watch: InputWatch::default(),
        queued: VecDeque::new(),
        reachable: None,
        failures: 0,
    };
    driver.run(&mut commands).instrument(span).await;
    health.set_connected(false);
}

impl<'a> Driver<'a> {
    async fn run(&mut self, commands: &mut mpsc::Receiver<GateCommand>) {
        let mut backoff = Backoff::default();
        let mut first_attempt = true;
        loop {
            if !first_attempt {
                DeviceHealth::bump(&self.health.reconnects, 1);
            }
            first_attempt = false;
            let problem = match self.open() {
                Ok(mut link) => match self.session(&mut link, commands, &mut backoff).await {
                    SessionEnd::Stop => return,
                    SessionEnd::Failed(problem) => problem,
                },
                Err(err) => format!("cannot open gate IO port {}: {err}", self.port_name),
            };
            // Dropping the link closed the port; the next connect writes
            // the coils before anything else.
            self.health.set_connected(false);
            self.health.set_last_error(problem.clone());
            self.failures = self.failures.saturating_add(1);
            let lost = self.failures >= self.settings.failures_before_lost.max(1);
            let delay = if lost {
                if self.reachable != Some(false) {
                    warn!(error = %problem, "gate IO board lost; gate stays locked");
                    self.reachable = Some(false);
                    self.emit(GateIoEvent::Reachable(false));
                }
                let delay = backoff.next_delay();
                debug!(error = %problem, retry_in_ms = delay.as_millis() as u64, "gate IO board still offline");
                delay
            } else {
                warn!(error = %problem, failures = self.failures, "gate IO exchange failed; reopening the port");
                QUICK_RETRY
            };
            if !self.wait_offline(delay, commands).await {
                self.take_pending(commands);
                self.last_chance(lost).await;
                return;
            }
        }
    }

    /// Opens the port; the link borrows only the shared parts, so the
    /// driver's own state stays free to change during a session.
    fn open(&self) -> Result<Link<'a>, tokio_serial::Error> {
        let port = tokio_serial::new(&self.port_name, self.settings.baud).open_native_async()?;
        // Bytes from before this open (a late reply, line noise) are not
        // answers to anything we will ask.
        let _ = port.clear(tokio_serial::ClearBuffer::Input);
        let read = Arc::new(AtomicU64::new(0));
        let port = CountingPort { inner: Arc::new(std::sync::Mutex::new(port)), read: Arc::clone(&read) };
        let raw = port.clone();
        let ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(self.settings.unit_id));
        Ok(Link {
            ctx,
            raw,
            unit_id: self.settings.unit_id,
            timeout: self.settings.request_timeout,
            health: self.health,
            read,
        })
    }

    /// Sleeps out `delay`, taking commands (the book follows them; nothing
    /// is written) and handing queued events over. `false` when the driver
    /// must stop.
    async fn wait_offline(&mut self, delay: Duration, commands: &mut mpsc::Receiver<GateCommand>) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            let (events, shutdown) = (self.events, self.shutdown);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = &mut sleep => return true,
                command = commands.recv() => match command {
                    None => return false,
                    Some(command) => {
                        if let GateCommand::SetCoil { coil, on: true } = command {
                            debug!(coil, "coil wanted on while the board is offline; written only on a reconnect that allows it");
                        }
                        self.apply(&command);
                    }
                },
                permit = events.reserve(), if !self.queued.is_empty() => self.hand_over(permit),
            }
        }
    }

    /// Shutdown while offline: one more try at the shutdown writes, in case
    /// the link broke while a coil was on.
    async fn last_chance(&self, lost: bool) {
        if lost {
            // Lost for good; a fresh open would only wait out the timeout.
            return;
        }
        if let Ok(mut link) = self.open() {
            for (coil, on) in self.book.at_shutdown() {
                let _ = self.write(&mut link, coil, on).await;
            }
        }
    }

    /// Books the commands already sent: a fire alarm raised just before a
    /// shutdown must still hold the unlocks on.
    fn take_pending(&mut self, commands: &mut mpsc::Receiver<GateCommand>) {
        while let Ok(command) = commands.try_recv() {
            self.apply(&command);
        }
    }

    /// Records a command in the book; `false` when it is refused.
    fn apply(&mut self, command: &GateCommand) -> bool {
        match *command {
            GateCommand::SetCoil { coil, on } => {
                let known = self.book.set(coil, on);
                if !known {
                    warn!(coil, on, "coil command refused: the coil is not mapped");
                }
                known
            }
            GateCommand::FireAlarm(active) => {
                self.book.fire = active;
                false
            }
        }
    }

    async fn session(
        &mut self,
        link: &mut Link<'a>,
        commands: &mut mpsc::Receiver<GateCommand>,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        let after_loss = self.reachable != Some(true);
        for (coil, on) in self.book.on_connect(after_loss) {
            if let Err(err) = self.write(link, coil, on).await {
                return SessionEnd::Failed(format!("writing coil {coil} = {on} on connect: {err}"));
            }
        }
        self.watch.forget();
        if let Err(problem) = self.poll(link).await {
            return SessionEnd::Failed(problem);
        }
        self.failures = 0;
        backoff.reset();
        self.health.set_connected(true);
        if self.reachable != Some(true) {
            info!("gate IO board connected");
            self.reachable = Some(true);
            self.emit(GateIoEvent::Reachable(true));
        }

        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The connect just read the inputs.
        poll.reset();
        loop {
            let (events, shutdown) = (self.events, self.shutdown);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.take_pending(commands);
                    self.shutdown_writes(link).await;
                    return SessionEnd::Stop;
                }
                // Commands before polls: an unlock must not wait for a read.
                command = commands.recv() => match command {
                    None => {
                        info!("gate command sender gone; gate IO driver stops");
                        self.shutdown_writes(link).await;
                        return SessionEnd::Stop;
                    }
                    Some(command) => {
                        let fire_before = self.book.fire;
                        if self.apply(&command)
                            && let GateCommand::SetCoil { coil, on } = command
                        {
                            if let Err(err) = self.write(link, coil, on).await {
                                return SessionEnd::Failed(format!("writing coil {coil} = {on}: {err}"));
                            }
                            debug!(coil, on, "coil written");
                        }
                        if self.book.fire && !fire_before
                            && let Err(problem) = self.hold_timed_coils(link).await
                        {
                            return SessionEnd::Failed(problem);
                        }
                    }
                },
                permit = events.reserve(), if !self.queued.is_empty() => self.hand_over(permit),
                _ = poll.tick() => {
                    if let Err(problem) = self.poll(link).await {
                        return SessionEnd::Failed(problem);
                    }
                    self.failures = 0;
                }
            }
        }
    }

    /// Writes one coil the way the board wants it: an unlock coil of a
    /// board that times pulses goes on by a timed pulse, unless a fire alarm
    /// holds it on; everything else by a plain FC05.
    async fn write(&self, link: &mut Link<'_>, coil: u16, on: bool) -> Result<(), CallError> {
        match &self.settings.board_timed {
            Some(timed) if on && !self.book.fire && timed.coils.contains(&coil) => {
                link.timed_pulse(coil, timed.units()).await
            }
            _ => link.write_coil(coil, on).await,
        }
    }

    /// A fire alarm began: unlock coils already on by a timed pulse would
    /// drop when their width runs out, so they are held on plainly.
    async fn hold_timed_coils(&self, link: &mut Link<'_>) -> Result<(), String> {
        let Some(timed) = &self.settings.board_timed else { return Ok(()) };
        for &coil in &timed.coils {
            if self.book.wanted.get(&coil) == Some(&true) {
                link.write_coil(coil, true)
                    .await
                    .map_err(|err| format!("holding coil {coil} on for a fire alarm: {err}"))?;
            }
        }
        Ok(())
    }

    /// Reads every wired input and reports a change.
    async fn poll(&mut self, link: &mut Link<'_>) -> Result<(), String> {
        let Some((first, count)) = input_span(&self.settings.inputs)? else {
            // Nothing wired to read: report the empty set once per link.
            if let Some(levels) = self.watch.read(InputLevels::default()) {
                self.emit(GateIoEvent::Inputs(levels));
            }
            return Ok(());
        };
        let bits =
            link.read_inputs(first, count).await.map_err(|err| format!("reading inputs {first}..+{count}: {err}"))?;
        let levels: InputLevels = self
            .settings
            .inputs
            .iter()
            .map(|&input| {
                // Every wired input is at or above `first`, the minimum.
                let at = input.checked_sub(first).map(usize::from);
                (input, at.and_then(|at| bits.get(at)).copied().unwrap_or(false))
            })
            .collect();
        if let Some(levels) = self.watch.read(levels) {
            debug!(?levels, "inputs changed");
            self.emit(GateIoEvent::Inputs(levels));
        }
        Ok(())
    }

    /// Shutdown: the shutdown writes, best effort.
    /// One line says how it ended: "coils off" only when the board
    /// confirmed every write (a failed write leaves the relay as it was; with
    /// fail-secure wiring a board without power or link is locked anyway).
    async fn shutdown_writes(&self, link: &mut Link<'_>) {
        let mut failed = None;
        for (coil, on) in self.book.at_shutdown() {
            if let Err(err) = self.write(link, coil, on).await {
                let problem = format!("writing coil {coil} = {on} at shutdown: {err}");
                self.health.set_last_error(problem.clone());
                failed.get_or_insert(problem);
            }
        }
        match (self.book.fire, failed) {
            (true, _) => warn!("gate IO driver stopped during a fire alarm: unlock coils left on for egress"),
            (false, None) => info!("gate IO driver stopped, coils off"),
            (false, Some(problem)) => warn!(
                error = %problem,
                "gate IO driver stopped; the board did not confirm the coils off (it relies on its fail-secure wiring)"
            ),
        }
    }

    /// Queues an event and hands over what the channel takes now. Never
    /// waits on the consumer: coil commands come from it, so waiting could
    /// deadlock.
    fn emit(&mut self, event: GateIoEvent) {
        if self.queued.len() >= MAX_QUEUED_EVENTS {
            let oldest_inputs = self.queued.iter().position(|e| matches!(e, GateIoEvent::Inputs(_)));
            if let Some(at) = oldest_inputs {
                self.queued.remove(at);
                warn!("gate IO event consumer is slow: an input snapshot was dropped");
            }
        }
        self.queued.push_back(event);
        while let Some(event) = self.queued.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.queued.push_front(event);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("gate IO event receiver gone");
                    self.queued.clear();
                }
            }
        }
    }

    fn hand_over(&mut self, permit: Result<mpsc::Permit<'_, GateIoEvent>, mpsc::error::SendError<()>>) {
        match permit {
            Ok(permit) => {
                if let Some(event) = self.queued.pop_front() {
                    permit.send(event);
                }
            }
            Err(_closed) => self.queued.clear(),
        }
    }
}

/// The most inputs one FC02 request may read (the Modbus standard's limit).
pub const MAX_INPUT_SPAN: u16 = 2000;

/// The smallest FC02 read covering every wired input: `Ok(None)` when none
/// is wired, an error when they lie further apart than one read covers
/// (the configuration refuses that; settings built by hand may not).
fn input_span(inputs: &[u16]) -> Result<Option<(u16, u16)>, String> {
    let (Some(&first), Some(&last)) = (inputs.iter().min(), inputs.iter().max()) else {
        return Ok(None);
    };
    // In u32: inputs 0 and 65535 span 65536, more than a u16 holds.
    let span = u32::from(last) - u32::from(first) + 1;
    match u16::try_from(span) {
        Ok(count) if count <= MAX_INPUT_SPAN => Ok(Some((first, count))),
        _ => Err(format!(
            "wired inputs {first}..={last} span {span} inputs; one FC02 read covers at most {MAX_INPUT_SPAN}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_after_a_loss_writes_everything_off_unless_fire() {
        let mut book = CoilBook::new(&[0, 1, 5]);
        assert!(book.set(0, true));
        assert!(book.set(5, true));
        assert!(!book.set(9, true), "an unmapped coil is refused");
        // A quick reopen while the board counts as reachable restores them.
        assert_eq!(book.on_connect(false), [(0, true), (1, false), (5, true)]);
        // After a loss an unlock is never executed late...
        assert_eq!(book.on_connect(true), [(0, false), (1, false), (5, false)]);
        // ... and stays forgotten.
        assert_eq!(book.on_connect(false), [(0, false), (1, false), (5, false)]);
        // A fire alarm keeps its coils on through the loss.
        book.fire = true;
        book.set(0, true);
        book.set(1, true);
        assert_eq!(book.on_connect(true), [(0, true), (1, true), (5, false)]);
    }

    #[test]
    fn shutdown_switches_off_unless_fire_holds_the_coils() {
        let mut book = CoilBook::new(&[0, 1]);
        book.set(0, true);
        assert_eq!(book.at_shutdown(), [(0, false), (1, false)]);
        book.fire = true;
        assert_eq!(book.at_shutdown(), [(0, true), (1, false)]);
    }

    #[test]
    fn inputs_are_reported_first_and_on_change() {
        let mut watch = InputWatch::default();
        let levels = |a: bool, b: bool| InputLevels::from_iter([(0, a), (4, b)]);
        assert_eq!(watch.read(levels(true, false)), Some(levels(true, false)));
        assert_eq!(watch.read(levels(true, false)), None);
        assert_eq!(watch.read(levels(false, false)), Some(levels(false, false)));
        watch.forget();
        assert_eq!(watch.read(levels(false, false)), Some(levels(false, false)));
        let read = levels(false, true);
        assert_eq!((read.get(4), read.get(1)), (Some(true), None));
    }

    #[test]
    fn input_span_covers_every_wired_input() {
        assert_eq!(input_span(&[5, 2, 9]), Ok(Some((2, 8))));
        assert_eq!(input_span(&[3]), Ok(Some((3, 1))));
        assert_eq!(input_span(&[]), Ok(None));
        assert_eq!(input_span(&[65535]), Ok(Some((65535, 1))));
        assert_eq!(input_span(&[100, 2099]), Ok(Some((100, 2000))));
        // No overflow, no wrap: a span too wide for one read is an error.
        assert!(input_span(&[0, 65535]).expect_err("0..=65535").contains("span 65536"));
        assert!(input_span(&[0, 2000]).is_err());
    }

    #[test]
    fn a_timed_pulse_echo_is_found_after_noise_and_exceptions_are_read() {
        // FC05 to 0x0200 (coil 0), width 5 units, unit 1.
        let request = rtu_frame(&[1, 5, 0x02, 0x00, 0x00, 0x05]);
        assert_eq!(scan_echo(&request, &request), EchoScan::Echo { noise: 0 });
        assert_eq!(scan_echo(&request, &request[..7]), EchoScan::More);
        let mut noisy = vec![0xAA, 0x01];
        noisy.extend(&request);
        assert_eq!(scan_echo(&request, &noisy), EchoScan::Echo { noise: 2 });
        let exception = rtu_frame(&[1, 0x85, 0x02]);
        assert_eq!(scan_echo(&request, &exception), EchoScan::Exception(2));
        // An exception with a bad CRC is not one.
        let mut bad = exception.clone();
        bad[4] ^= 0xFF;
        assert_eq!(scan_echo(&request, &bad), EchoScan::More);
        // The published frame: FC05 coil 0 on for unit 1 is 8C 3A.
        assert_eq!(rtu_frame(&[1, 5, 0, 0, 0xFF, 0])[6..], [0x8C, 0x3A]);
    }

    #[test]
    fn timed_pulse_width_rounds_up_to_the_boards_unit() {
        let timed = |ms| BoardTimed { coils: vec![0], width: Duration::from_millis(ms) };
        assert_eq!(timed(500).units(), 5);
        assert_eq!(timed(550).units(), 6);
        assert_eq!(timed(50).units(), 1);
        assert_eq!(timed(0).units(), 1);
        assert_eq!(timed(60_000).units(), 600);
    }
}
