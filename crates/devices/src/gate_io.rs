//! The gate IO board driver: one task owns the Modbus RTU link to the relay /
//! IO board, switches the unlock relays on command and watches the
//! turnstile's passage-completed inputs.
//!
//! Fail-secure is the rule that shapes this file: any error drops the link,
//! and the first thing done on every (re)connect and on shutdown is to switch
//! both unlock coils off. An unlock requested while the board is offline is
//! refused, never queued: a stale unlock executed minutes later would let the
//! wrong person through.
//!
//! The per-side timing and edge detection live in the pure `GateState`;
//! the async functions only do Modbus calls.

use crate::backoff::Backoff;
use crate::health::DeviceHealth;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// How the turnstile takes an unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockMode {
    /// Coil on, then off after [`GateIoSettings::unlock`] (around 200-500 ms).
    Pulse,
    /// Coil held on until the passage input of that side is seen, or
    /// [`GateIoSettings::unlock`] runs out (around 5 s).
    Level,
}

/// Where the board is and which channels mean what. Coil and input numbers
/// are zero-based Modbus addresses (the board's relay 1 / input 1 is 0).
#[derive(Debug, Clone)]
pub struct GateIoSettings {
    pub port: PathBuf,
    pub baud: u32,
    pub unit_id: u8,
    pub unlock_entry_coil: u16,
    pub unlock_exit_coil: u16,
    pub unlock_mode: UnlockMode,
    pub unlock: Duration,
    pub passage_entry_input: u16,
    pub passage_exit_input: u16,
    /// Discrete inputs are read this often; keep it shorter than the
    /// turnstile's passage pulse or passages are missed.
    pub poll_interval: Duration,
    /// Deadline of one Modbus request and its reply (default 500 ms).
    pub request_timeout: Duration,
}

impl GateIoSettings {
    /// The usual board: unit 1 at 9600 baud, coils 0 / 1, inputs 0 / 1, a
    /// 500 ms pulse, inputs polled every 50 ms, 500 ms request timeout.
    pub fn new(port: PathBuf) -> Self {
        Self {
            port,
            baud: 9600,
            unit_id: 1,
            unlock_entry_coil: 0,
            unlock_exit_coil: 1,
            unlock_mode: UnlockMode::Pulse,
            unlock: Duration::from_millis(500),
            passage_entry_input: 0,
            passage_exit_input: 1,
            poll_interval: Duration::from_millis(50),
            request_timeout: Duration::from_millis(500),
        }
    }

    fn coil(&self, side: PassageSide) -> u16 {
        match side {
            PassageSide::Entry => self.unlock_entry_coil,
            PassageSide::Exit => self.unlock_exit_coil,
        }
    }
}

/// Which way through the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassageSide {
    Entry,
    Exit,
}

impl PassageSide {
    const BOTH: [PassageSide; 2] = [PassageSide::Entry, PassageSide::Exit];

    pub fn as_str(self) -> &'static str {
        match self {
            PassageSide::Entry => "entry",
            PassageSide::Exit => "exit",
        }
    }

    fn index(self) -> usize {
        match self {
            PassageSide::Entry => 0,
            PassageSide::Exit => 1,
        }
    }
}

impl fmt::Display for PassageSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the board reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateIoEvent {
    /// The unlock coil of that side is on (the board echoed the write).
    Unlocked(PassageSide),
    /// The unlock coil of that side is off again.
    Relocked(PassageSide),
    /// The turnstile signalled a completed passage (rising edge).
    Passage(PassageSide),
    /// The board failed or is offline; the gate is (being) kept locked.
    Fault(String),
}

/// What the daemon asks of the board.
#[derive(Debug, Clone)]
pub enum GateCommand {
    Unlock(PassageSide),
}

/// Unlock deadlines and input edges, without I/O.
#[derive(Debug)]
struct GateState {
    mode: UnlockMode,
    unlock: Duration,
    /// When each side's coil must go off again; `None` while locked.
    relock_at: [Option<Instant>; 2],
    /// Last levels read, `None` until the first read of a connection (which
    /// is a baseline: a beam already broken at connect is not a passage).
    inputs: Option<[bool; 2]>,
}

impl GateState {
    fn new(mode: UnlockMode, unlock: Duration) -> Self {
        Self {
            mode,
            unlock,
            relock_at: [None, None],
            inputs: None,
        }
    }

    fn unlocked(&mut self, side: PassageSide, now: Instant) {
        self.relock_at[side.index()] = Some(now + self.unlock);
    }

    fn relocked(&mut self, side: PassageSide) {
        self.relock_at[side.index()] = None;
    }

    fn is_unlocked(&self, side: PassageSide) -> bool {
        self.relock_at[side.index()].is_some()
    }

    fn unlocked_sides(&self) -> Vec<PassageSide> {
        PassageSide::BOTH
            .into_iter()
            .filter(|&s| self.is_unlocked(s))
            .collect()
    }

    fn next_relock(&self) -> Option<Instant> {
        self.relock_at.iter().flatten().min().copied()
    }

    fn due(&self, now: Instant) -> Vec<PassageSide> {
        PassageSide::BOTH
            .into_iter()
            .filter(|s| self.relock_at[s.index()].is_some_and(|at| at <= now))
            .collect()
    }

    /// A new link: the next reading is a baseline again.
    fn forget_inputs(&mut self) {
        self.inputs = None;
    }

    /// Rising edges since the last reading.
    fn read_inputs(&mut self, levels: [bool; 2]) -> Vec<PassageSide> {
        let previous = self.inputs.replace(levels);
        let Some(previous) = previous else {
            return Vec::new();
        };
        PassageSide::BOTH
            .into_iter()
            .filter(|s| levels[s.index()] && !previous[s.index()])
            .collect()
    }

    /// In level mode a passage on an unlocked side ends the unlock.
    fn relock_on_passage(&self, side: PassageSide) -> bool {
        self.mode == UnlockMode::Level && self.is_unlocked(side)
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

/// The link to the board plus what every call needs.
struct Link<'a> {
    ctx: Context,
    timeout: Duration,
    health: &'a DeviceHealth,
}

impl Link<'_> {
    async fn call(&mut self, request: Request<'static>) -> Result<Response, CallError> {
        let result = match tokio::time::timeout(self.timeout, self.ctx.call(request)).await {
            Err(_elapsed) => Err(CallError::Timeout),
            Ok(Err(tokio_modbus::Error::Transport(err))) => Err(CallError::Io(err)),
            Ok(Err(tokio_modbus::Error::Protocol(err))) => {
                Err(CallError::Protocol(err.to_string()))
            }
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
            Err(CallError::Io(err)) if err.kind() == io::ErrorKind::InvalidData => {
                &self.health.checksum_errors
            }
            Err(CallError::Io(_)) => return result,
        };
        DeviceHealth::bump(counter, 1);
        result
    }

    /// FC05; the echo must match, or the board did something else.
    async fn write_coil(&mut self, addr: u16, on: bool) -> Result<(), CallError> {
        // `Client::call` rather than `Writer::write_single_coil`: the latter
        // only debug-asserts the echo, which would panic on a bad board
        // instead of reporting it.
        match self.call(Request::WriteSingleCoil(addr, on)).await? {
            Response::WriteSingleCoil(echo_addr, echo_on) if echo_addr == addr && echo_on == on => {
                Ok(())
            }
            other => {
                DeviceHealth::bump(&self.health.status_errors, 1);
                Err(CallError::BadReply(format!(
                    "write coil {addr} = {on} answered {other:?}"
                )))
            }
        }
    }

    /// FC02 over the span `first..first + count`.
    async fn read_inputs(&mut self, first: u16, count: u16) -> Result<Vec<bool>, CallError> {
        match self.call(Request::ReadDiscreteInputs(first, count)).await? {
            Response::ReadDiscreteInputs(bits) if bits.len() >= usize::from(count) => Ok(bits),
            other => {
                DeviceHealth::bump(&self.health.status_errors, 1);
                Err(CallError::BadReply(format!(
                    "read {count} inputs from {first} answered {other:?}"
                )))
            }
        }
    }
}

/// The driver's fixed parts.
struct Driver<'a> {
    settings: &'a GateIoSettings,
    port_name: String,
    events: &'a mpsc::Sender<GateIoEvent>,
    health: &'a DeviceHealth,
    shutdown: &'a CancellationToken,
}

enum SessionEnd {
    Stop,
    /// `connected`: the session got as far as switching the coils off, so
    /// this failure starts a new outage.
    Failed {
        problem: String,
        connected: bool,
    },
}

/// Runs until `shutdown` is cancelled (or the command sender is dropped).
///
/// Owns the Modbus RTU client on the serial port. `Unlock` switches that
/// side's coil on (FC05); in pulse mode it goes off after `unlock`, in level
/// mode when that side's passage input rises or `unlock` runs out. Discrete
/// inputs are polled (FC02) every `poll_interval`; a rising passage input is
/// a [`GateIoEvent::Passage`]. Every call has `request_timeout`. Exceptions
/// and timeouts are counted in `health`, reported as a `Fault`, and the link
/// is reopened with back-off; the coils are switched off first thing on
/// every connect and before returning.
pub async fn run_gate_io(
    settings: GateIoSettings,
    mut commands: mpsc::Receiver<GateCommand>,
    events: mpsc::Sender<GateIoEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
) {
    let port_name = settings.port.display().to_string();
    let span = tracing::info_span!("gate_io", port = %port_name, unit = settings.unit_id);
    let driver = Driver {
        settings: &settings,
        port_name,
        events: &events,
        health: &health,
        shutdown: &shutdown,
    };
    driver.run(&mut commands).instrument(span).await;
    health.set_connected(false);
}

impl Driver<'_> {
    async fn run(&self, commands: &mut mpsc::Receiver<GateCommand>) {
        let mut backoff = Backoff::default();
        let mut state = GateState::new(self.settings.unlock_mode, self.settings.unlock);
        let mut first_attempt = true;
        // Open failures repeat every few seconds while the board is away;
        // one Fault per outage is enough.
        let mut fault_reported = false;
        loop {
            if !first_attempt {
                DeviceHealth::bump(&self.health.reconnects, 1);
            }
            first_attempt = false;
            let problem = match self.open() {
                Ok(mut link) => match self
                    .session(&mut link, &mut state, commands, &mut backoff)
                    .await
                {
                    SessionEnd::Stop => return,
                    SessionEnd::Failed { problem, connected } => {
                        // Dropping the link closes the port; the next
                        // connect switches the coils off before anything.
                        if connected {
                            fault_reported = false;
                        }
                        problem
                    }
                },
                Err(err) => format!("cannot open gate IO port {}: {err}", self.port_name),
            };
            self.health.set_connected(false);
            self.health.set_last_error(problem.clone());
            let delay = backoff.next_delay();
            warn!(error = %problem, retry_in_ms = delay.as_millis() as u64, "gate IO board offline; gate stays locked");
            if !fault_reported {
                self.emit(GateIoEvent::Fault(problem));
                fault_reported = true;
            }
            if !self.wait_offline(delay, commands).await {
                self.last_chance_off().await;
                return;
            }
        }
    }

    fn open(&self) -> Result<Link<'_>, tokio_serial::Error> {
        let port = tokio_serial::new(&self.port_name, self.settings.baud).open_native_async()?;
        let ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(self.settings.unit_id));
        Ok(Link {
            ctx,
            timeout: self.settings.request_timeout,
            health: self.health,
        })
    }

    /// Sleeps out the back-off, refusing any unlock that comes in meanwhile.
    /// `false` when the driver must stop.
    async fn wait_offline(
        &self,
        delay: Duration,
        commands: &mut mpsc::Receiver<GateCommand>,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return false,
                () = &mut sleep => return true,
                command = commands.recv() => match command {
                    None => return false,
                    Some(GateCommand::Unlock(side)) => {
                        warn!(side = side.as_str(), "unlock refused: gate IO board offline");
                        self.emit(GateIoEvent::Fault(format!("unlock {side} refused: gate IO board offline")));
                    }
                },
            }
        }
    }

    /// Shutdown while offline: one more try to switch the coils off, in case
    /// the link broke while one was on.
    async fn last_chance_off(&self) {
        if let Ok(mut link) = self.open() {
            for side in PassageSide::BOTH {
                let _ = link.write_coil(self.settings.coil(side), false).await;
            }
        }
    }

    async fn session(
        &self,
        link: &mut Link<'_>,
        state: &mut GateState,
        commands: &mut mpsc::Receiver<GateCommand>,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        // Fail-secure: whatever happened before (an error mid-unlock, a
        // restart), the gate starts locked.
        for side in PassageSide::BOTH {
            if let Err(err) = link.write_coil(self.settings.coil(side), false).await {
                let problem = format!("switching the {side} unlock coil off on connect: {err}");
                return SessionEnd::Failed {
                    problem,
                    connected: false,
                };
            }
        }
        for side in state.unlocked_sides() {
            state.relocked(side);
            self.emit(GateIoEvent::Relocked(side));
        }
        state.forget_inputs();
        self.health.set_connected(true);
        backoff.reset();
        info!("gate IO board connected, unlock coils off");

        let (first, count) = input_span(self.settings);
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let relock_at = state.next_relock();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.lock_all(link, state).await;
                    return SessionEnd::Stop;
                }
                () = sleep_until_opt(relock_at) => {
                    for side in state.due(Instant::now()) {
                        if let Err(problem) = self.relock(link, state, side).await {
                            return SessionEnd::Failed { problem, connected: true };
                        }
                    }
                }
                command = commands.recv() => match command {
                    None => {
                        info!("gate command sender gone; gate IO driver stops");
                        self.lock_all(link, state).await;
                        return SessionEnd::Stop;
                    }
                    Some(GateCommand::Unlock(side)) => {
                        let coil = self.settings.coil(side);
                        if let Err(err) = link.write_coil(coil, true).await {
                            let problem = format!("unlock {side} (coil {coil} on): {err}");
                            return SessionEnd::Failed { problem, connected: true };
                        }
                        // The clock starts when the board confirmed the coil
                        // is on; a repeated unlock extends the window.
                        state.unlocked(side, Instant::now());
                        debug!(side = side.as_str(), coil, "unlocked");
                        self.emit(GateIoEvent::Unlocked(side));
                    }
                },
                _ = poll.tick() => {
                    let bits = match link.read_inputs(first, count).await {
                        Ok(bits) => bits,
                        Err(err) => {
                            let problem = format!("reading inputs {first}..+{count}: {err}");
                            return SessionEnd::Failed { problem, connected: true };
                        }
                    };
                    let level = |input: u16| bits.get(usize::from(input - first)).copied().unwrap_or(false);
                    let levels = [level(self.settings.passage_entry_input), level(self.settings.passage_exit_input)];
                    for side in state.read_inputs(levels) {
                        debug!(side = side.as_str(), "passage");
                        self.emit(GateIoEvent::Passage(side));
                        let relocked =
                            if state.relock_on_passage(side) { self.relock(link, state, side).await } else { Ok(()) };
                        if let Err(problem) = relocked {
                            return SessionEnd::Failed { problem, connected: true };
                        }
                    }
                }
            }
        }
    }

    async fn relock(
        &self,
        link: &mut Link<'_>,
        state: &mut GateState,
        side: PassageSide,
    ) -> Result<(), String> {
        let coil = self.settings.coil(side);
        link.write_coil(coil, false)
            .await
            .map_err(|err| format!("relock {side} (coil {coil} off): {err}"))?;
        state.relocked(side);
        debug!(side = side.as_str(), coil, "relocked");
        self.emit(GateIoEvent::Relocked(side));
        Ok(())
    }

    /// Shutdown: both coils off, whatever the state says, best effort.
    async fn lock_all(&self, link: &mut Link<'_>, state: &mut GateState) {
        for side in PassageSide::BOTH {
            let coil = self.settings.coil(side);
            match link.write_coil(coil, false).await {
                Ok(()) if state.is_unlocked(side) => {
                    state.relocked(side);
                    self.emit(GateIoEvent::Relocked(side));
                }
                Ok(()) => {}
                Err(err) => {
                    let problem =
                        format!("switching the {side} unlock coil {coil} off at shutdown: {err}");
                    warn!(error = %problem, "gate IO shutdown");
                    self.health.set_last_error(problem);
                }
            }
        }
        info!("gate IO driver stopped, unlock coils off");
    }

    /// Never waits on the consumer: relock timing must not depend on how
    /// fast someone reads events. A full channel loses the event (logged).
    fn emit(&self, event: GateIoEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                warn!(?event, "gate IO event dropped: channel full")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => debug!("gate IO event receiver gone"),
        }
    }
}

/// The smallest FC02 read covering both passage inputs.
fn input_span(settings: &GateIoSettings) -> (u16, u16) {
    let first = settings
        .passage_entry_input
        .min(settings.passage_exit_input);
    let last = settings
        .passage_entry_input
        .max(settings.passage_exit_input);
    (first, last - first + 1)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_need_a_baseline_and_a_rise() {
        let mut s = GateState::new(UnlockMode::Pulse, Duration::from_millis(200));
        // Beam already broken at connect: baseline, not a passage.
        assert!(s.read_inputs([true, false]).is_empty());
        assert!(s.read_inputs([true, false]).is_empty());
        assert_eq!(s.read_inputs([false, true]), [PassageSide::Exit]);
        assert_eq!(s.read_inputs([true, true]), [PassageSide::Entry]);
        assert!(s.read_inputs([true, true]).is_empty());
        s.forget_inputs();
        assert!(s.read_inputs([false, false]).is_empty());
        assert_eq!(
            s.read_inputs([true, true]),
            [PassageSide::Entry, PassageSide::Exit]
        );
    }

    #[test]
    fn deadlines_per_side() {
        let mut s = GateState::new(UnlockMode::Level, Duration::from_millis(200));
        let t0 = Instant::now();
        assert_eq!(s.next_relock(), None);
        s.unlocked(PassageSide::Exit, t0);
        s.unlocked(PassageSide::Entry, t0 + Duration::from_millis(50));
        assert_eq!(s.next_relock(), Some(t0 + Duration::from_millis(200)));
        assert!(s.due(t0 + Duration::from_millis(199)).is_empty());
        assert_eq!(s.due(t0 + Duration::from_millis(200)), [PassageSide::Exit]);
        assert_eq!(
            s.due(t0 + Duration::from_millis(250)),
            [PassageSide::Entry, PassageSide::Exit]
        );
        assert!(s.relock_on_passage(PassageSide::Exit));
        s.relocked(PassageSide::Exit);
        assert!(!s.relock_on_passage(PassageSide::Exit));
        assert_eq!(s.unlocked_sides(), [PassageSide::Entry]);
        let mut pulse = GateState::new(UnlockMode::Pulse, Duration::from_millis(200));
        pulse.unlocked(PassageSide::Entry, t0);
        assert!(!pulse.relock_on_passage(PassageSide::Entry));
    }

    #[test]
    fn input_span_covers_both_inputs() {
        let mut s = GateIoSettings::new(PathBuf::from("/dev/null"));
        s.passage_entry_input = 5;
        s.passage_exit_input = 2;
        assert_eq!(input_span(&s), (2, 4));
    }
}
