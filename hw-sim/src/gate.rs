//! Turnstile IO board simulator: a Modbus RTU relay/input board (docs/PROTOCOLS.md
//! §5) served on a pty, with simulated people walking through after an unlock,
//! scenario inputs (passages, the tailgating beam, the fire alarm contact,
//! the intrusion input) and faults (garbage, bad CRCs, cut replies, slow or
//! no answers, exceptions, an unplugged cable).

pub mod modbus;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::faults::FrameFaults;
use crate::pty::{self, Input, Line, SimPty};
use crate::script::{PassageDir, StatusFault};
use modbus::{Bank, Split, split_request, with_crc};

/// RTU frames end with 3.5 character times of silence; a pty loses timing, so
/// this much quiet marks any half-received bytes as garbage.
const IDLE_RESYNC: Duration = Duration::from_millis(50);

/// Board configuration.
#[derive(Clone, Debug)]
pub struct GateSimConfig {
    /// Modbus unit address, default 1.
    pub unit_id: u8,
    /// Number of coils, default 8.
    pub coils: u16,
    /// Number of discrete inputs, default 8.
    pub inputs: u16,
    /// When an unlock coil turns on, pulse the mapped discrete input (on for
    /// `pulse`, then off) after `delay`: a person walking through. (coil, input) pairs.
    pub auto_passage: Vec<(u16, u16)>,
    /// Default 300 ms.
    pub auto_passage_delay: Duration,
    /// Default 200 ms; also how long a scripted `passage` holds its input.
    pub auto_passage_pulse: Duration,
    /// Passage-completed inputs (entry, exit) pulsed by a scripted
    /// `passage`; default 0 and 1.
    pub passage_inputs: [u16; 2],
    /// The tailgating beam input; default 2.
    pub beam_input: u16,
    /// The door-forced / intrusion input; default 3.
    pub intrusion_input: u16,
    /// The fire alarm contact, `None` (the default) when not wired.
    pub fire_input: Option<u16>,
    /// Contact closed at rest (default true): the input then starts on,
    /// and a fire alarm switches it off.
    pub fire_normally_closed: bool,
}

impl Default for GateSimConfig {
    fn default() -> Self {
        GateSimConfig {
            unit_id: 1,
            coils: 8,
            inputs: 8,
            auto_passage: vec![(0, 0), (1, 1)],
            auto_passage_delay: Duration::from_millis(300),
            auto_passage_pulse: Duration::from_millis(200),
            passage_inputs: [0, 1],
            beam_input: 2,
            intrusion_input: 3,
            fire_input: None,
            fire_normally_closed: true,
        }
    }
}

/// One coil write as received (FC0F gives one entry per coil).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoilWrite {
    /// Coil address.
    pub coil: u16,
    /// Written value.
    pub on: bool,
    /// When the request was executed.
    pub at: Instant,
}

/// Something the board did, for tools that want to narrate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateEvent {
    /// A coil changed state (writes that keep the state are not events).
    Coil {
        /// Coil address.
        coil: u16,
        /// New state.
        on: bool,
    },
    /// A simulated passage raised this input.
    Passage {
        /// Input address.
        input: u16,
    },
}

struct BoardState {
    bank: Bank,
    rx: Vec<u8>,
    silent: bool,
    served: u64,
    writes: Vec<CoilWrite>,
    faults: FrameFaults,
    status: Option<StatusFault>,
    /// Per coil, how many times it was written: a timed pulse drops its coil
    /// only if nothing wrote the coil since it started.
    generation: Vec<u64>,
}

impl BoardState {
    /// Feeds bytes (or an idle gap) in; returns reply bytes and the coil
    /// transitions to react to.
    /// `pulses` receives each timed pulse started: (coil, width, generation).
    fn on_input(
        &mut self,
        input: Input<'_>,
        changes: &mut Vec<(u16, bool)>,
        pulses: &mut Vec<(u16, Duration, u64)>,
    ) -> Vec<u8> {
        let idle = match input {
            Input::Bytes(b) => {
                self.rx.extend_from_slice(b);
                false
            }
            Input::Idle => true,
        };
        let mut out = Vec::new();
        while !self.rx.is_empty() {
            match split_request(&self.rx, idle) {
                Split::NeedMore => break,
                Split::Drop1 => {
                    self.rx.remove(0);
                }
                Split::Frame(n) => {
                    let frame: Vec<u8> = self.rx.drain(..n).collect();
                    if self.silent {
                        continue;
                    }
                    if let Some(reply) = self.exception(&frame) {
                        out.extend(self.shape(reply));
                        continue;
                    }
                    let outcome = self.bank.execute(&frame);
                    let now = Instant::now();
                    for (coil, on, was) in outcome.writes {
                        self.writes.push(CoilWrite { coil, on, at: now });
                        if let Some(g) = self.generation.get_mut(usize::from(coil)) {
                            *g += 1;
                        }
                        if on != was {
                            changes.push((coil, on));
                        }
                    }
                    for (coil, units) in outcome.pulses {
                        let width = Duration::from_millis(u64::from(units) * modbus::TIMED_PULSE_UNIT_MS);
                        let generation = self.generation.get(usize::from(coil)).copied().unwrap_or(0);
                        pulses.push((coil, width, generation));
                    }
                    if outcome.served {
                        self.served += 1;
                    }
                    if let Some(reply) = outcome.reply {
                        out.extend(self.shape(reply));
                    }
                }
            }
        }
        out
    }

    /// A pending `status` for this request: the board refuses it with that
    /// exception code instead of executing it.
    fn exception(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let fault = self.status?;
        let (unit, fc) = (frame[0], frame[1]);
        // Not ours, or a broadcast (never answered): nothing to refuse.
        if unit != self.bank.unit_id || !fault.target.is_none_or(|t| t.matches_modbus(fc)) {
            return None;
        }
        if !fault.sticky {
            self.status = None;
        }
        self.served += 1;
        Some(with_crc(vec![unit, fc | 0x80, fault.code]))
    }

    /// Garbage, a broken CRC or a cut, as pending.
    fn shape(&mut self, reply: Vec<u8>) -> Vec<u8> {
        self.faults
            .shape(reply, |frame| {
                if let Some(last) = frame.last_mut() {
                    *last ^= 0xFF;
                }
            })
            .0
    }
}

struct Shared {
    state: Mutex<BoardState>,
    config: GateSimConfig,
    cancel: CancellationToken,
    stopped: watch::Sender<bool>,
    events: broadcast::Sender<GateEvent>,
    line: Arc<Line>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, BoardState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_input(&self, input: u16, on: bool) {
        if let Some(slot) = self.state().bank.inputs.get_mut(usize::from(input)) {
            *slot = on;
        }
    }

    /// The board's own timer of a timed pulse: the coil drops after `width`
    /// unless it was written again meanwhile. It runs without the host: a
    /// host that dies mid-pulse leaves no relay on.
    fn end_pulse_after(self: &Arc<Self>, coil: u16, width: Duration, generation: u64) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = me.cancel.cancelled() => return,
                _ = tokio::time::sleep(width) => {}
            }
            let dropped = {
                let mut state = me.state();
                let current = state.generation.get(usize::from(coil)).copied();
                match state.bank.coils.get_mut(usize::from(coil)) {
                    Some(slot) if current == Some(generation) && *slot => {
                        *slot = false;
                        true
                    }
                    _ => false,
                }
            };
            if dropped {
                let _ = me.events.send(GateEvent::Coil { coil, on: false });
            }
        });
    }

    /// A person walks through: after the delay the passage sensor pulses.
    fn schedule_passage(self: &Arc<Self>, input: u16) {
        self.pulse_input(input, self.config.auto_passage_delay);
    }

    /// The input goes on after `delay`, and off `auto_passage_pulse` later.
    fn pulse_input(self: &Arc<Self>, input: u16, delay: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let walk = async {
                tokio::time::sleep(delay).await;
                me.set_input(input, true);
                let _ = me.events.send(GateEvent::Passage { input });
                tokio::time::sleep(me.config.auto_passage_pulse).await;
            };
            tokio::select! {
                _ = me.cancel.cancelled() => {}
                _ = walk => {}
            }
            me.set_input(input, false);
        });
    }
}

/// Entry point for the IO board simulator.
#[derive(Debug)]
pub struct GateSim;

impl GateSim {
    /// Opens a pty (see [`SimPty::open`]) and spawns a tokio task serving
    /// Modbus RTU on it. Returns at once. Must be called inside a tokio
    /// runtime; the task lives until [`GateHandle::stop`] or runtime shutdown.
    pub fn start(link: Option<&Path>, config: GateSimConfig) -> anyhow::Result<GateHandle> {
        let pty = SimPty::open(link)?;
        let (stopped, _) = watch::channel(false);
        let mut bank = Bank::new(config.unit_id, config.coils, config.inputs);
        if let Some(fire) = config.fire_input
            && config.fire_normally_closed
            && let Some(slot) = bank.inputs.get_mut(usize::from(fire))
        {
            // A normally closed contact at rest: no alarm.
            *slot = true;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(BoardState {
                bank,
                rx: Vec::new(),
                silent: false,
                served: 0,
                writes: Vec::new(),
                faults: FrameFaults::default(),
                status: None,
                generation: vec![0; usize::from(config.coils)],
            }),
            config,
            cancel: CancellationToken::new(),
            stopped,
            events: broadcast::channel(256).0,
            line: Line::new(&pty),
        });
        let task_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let s = Arc::clone(&task_shared);
            let line = Arc::clone(&task_shared.line);
            let serve = pty::serve(
                pty,
                line,
                task_shared.cancel.clone(),
                IDLE_RESYNC,
                move |input| {
                    let mut changes = Vec::new();
                    let mut pulses = Vec::new();
                    let out = s.state().on_input(input, &mut changes, &mut pulses);
                    for (coil, width, generation) in pulses {
                        s.end_pulse_after(coil, width, generation);
                    }
                    for (coil, on) in changes {
                        let _ = s.events.send(GateEvent::Coil { coil, on });
                        if on {
                            let mapped = s.config.auto_passage.iter().filter(|(c, _)| *c == coil);
                            for &(_, input) in mapped {
                                s.schedule_passage(input);
                            }
                        }
                    }
                    out
                },
                |_| {},
            );
            serve.await;
            task_shared.stopped.send_replace(true);
        });
        Ok(GateHandle { shared })
    }
}

/// Control handle for a running IO board simulator; cheap to clone.
#[derive(Clone)]
pub struct GateHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for GateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateHandle")
            .field("device_path", &self.shared.line.device_path())
            .field("unit_id", &self.shared.config.unit_id)
            .finish_non_exhaustive()
    }
}

impl GateHandle {
    /// Path the daemon should open (the symlink if one was given).
    pub fn device_path(&self) -> PathBuf {
        self.shared.line.device_path()
    }

    /// The `/dev/pts/N` slave behind [`Self::device_path`] (a new one after
    /// each replug).
    pub fn slave_path(&self) -> PathBuf {
        self.shared.line.slave_path()
    }

    /// Every FC05/FC0F write in order (FC0F: one entry per coil), including
    /// broadcasts and writes that did not change the state.
    pub fn coil_writes(&self) -> Vec<CoilWrite> {
        self.shared.state().writes.clone()
    }

    /// Current state of a coil (false if out of range).
    pub fn coil(&self, coil: u16) -> bool {
        self.shared.state().bank.coils.get(usize::from(coil)).copied().unwrap_or(false)
    }

    /// Current state of a discrete input (false if out of range).
    pub fn input(&self, input: u16) -> bool {
        self.shared.state().bank.inputs.get(usize::from(input)).copied().unwrap_or(false)
    }

    /// Sets a discrete input, e.g. a passage sensor or a fire alarm contact.
    /// Out-of-range inputs are ignored.
    pub fn set_input(&self, input: u16, on: bool) {
        self.shared.set_input(input, on);
    }

    /// Requests executed for this unit (or broadcast), exceptions included;
    /// requests swallowed while silent are not counted.
    pub fn requests_served(&self) -> u64 {
        self.shared.state().served
    }

    /// Board stops answering (requests are swallowed, not executed).
    pub fn set_silent(&self, silent: bool) {
        self.shared.state().silent = silent;
    }

    /// Someone walks through this way now: the passage input pulses for
    /// `auto_passage_pulse`, whether or not anything was unlocked.
    pub fn passage(&self, dir: PassageDir) {
        let input = match dir {
            PassageDir::Entry => self.shared.config.passage_inputs[0],
            PassageDir::Exit => self.shared.config.passage_inputs[1],
        };
        let _ = self.shared.events.send(GateEvent::Passage { input });
        self.shared.pulse_input(input, Duration::ZERO);
    }

    /// The tailgating beam is broken (`true`) or clear.
    pub fn set_beam(&self, broken: bool) {
        self.shared.set_input(self.shared.config.beam_input, broken);
    }

    /// The door-forced / intrusion input.
    pub fn set_intrusion(&self, active: bool) {
        self.shared.set_input(self.shared.config.intrusion_input, active);
    }

    /// Raises or clears the fire alarm on the configured contact (a normally
    /// closed contact opens for the alarm). `false` when no fire input is
    /// configured.
    pub fn set_fire_alarm(&self, alarm: bool) -> bool {
        let Some(input) = self.shared.config.fire_input else {
            return false;
        };
        self.shared.set_input(input, alarm != self.shared.config.fire_normally_closed);
        true
    }

    /// `bytes` are written just before the next reply.
    pub fn inject_garbage(&self, bytes: Vec<u8>) {
        self.shared.state().faults.garbage.extend(bytes);
    }

    /// The next `n` replies get a wrong CRC.
    pub fn corrupt_next_replies(&self, n: u32) {
        self.shared.state().faults.corrupt = n;
    }

    /// The next `n` replies are cut to half their length.
    pub fn truncate_next_replies(&self, n: u32) {
        self.shared.state().faults.truncate = n;
    }

    /// Requests are refused with exception `fault.code` instead of being
    /// executed: the next one, or the next of the targeted kind (`read`:
    /// FC01/FC02, `write`: FC05/FC0F), or every such one while `sticky`.
    pub fn inject_status(&self, fault: StatusFault) {
        self.shared.state().status = Some(fault);
    }

    /// Cancels a pending or sticky [`Self::inject_status`].
    pub fn clear_status(&self) {
        self.shared.state().status = None;
    }

    /// Every reply waits this long before it is written; zero for none.
    pub fn set_slow(&self, delay: Duration) {
        self.shared.line.set_slow(delay);
    }

    /// Pulls the cable for `downtime` (see [`Line::unplug`]). The board keeps
    /// its coils and inputs, as a real board does when its cable is pulled.
    pub fn unplug(&self, downtime: Duration) {
        self.shared.line.unplug(downtime);
    }

    /// How many times the cable was plugged back in.
    pub fn replugs(&self) -> u64 {
        self.shared.line.replugs()
    }

    /// Narration of coil changes and passages.
    pub fn subscribe(&self) -> broadcast::Receiver<GateEvent> {
        self.shared.events.subscribe()
    }

    /// Ends the task and closes the pty (removing the symlink), asynchronously;
    /// await [`Self::wait_stopped`] to know it is done.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
    }

    /// Resolves once the serving task has ended and the pty is closed.
    pub async fn wait_stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modbus::with_crc;

    fn board() -> BoardState {
        BoardState {
            bank: Bank::new(1, 8, 8),
            rx: Vec::new(),
            silent: false,
            served: 0,
            writes: Vec::new(),
            faults: FrameFaults::default(),
            status: None,
            generation: vec![0; 8],
        }
    }

    #[test]
    fn exceptions_crc_faults_and_cuts() {
        use crate::script::StatusTarget;
        let mut b = board();
        let on = with_crc(vec![1, 5, 0, 0, 0xFF, 0]);
        let read = with_crc(vec![1, 2, 0, 0, 0, 8]);
        // A sticky exception on writes: refused and not executed; reads go on.
        b.status = Some(StatusFault { code: 4, target: Some(StatusTarget::Write), sticky: true });
        assert_eq!(b.on_input(Input::Bytes(&on), &mut Vec::new(), &mut Vec::new()), with_crc(vec![1, 0x85, 4]));
        assert_eq!(b.on_input(Input::Bytes(&read), &mut Vec::new(), &mut Vec::new()), with_crc(vec![1, 2, 1, 0]));
        assert!(!b.bank.coils[0]);
        b.status = None;
        b.faults.corrupt = 1;
        let bad = b.on_input(Input::Bytes(&on), &mut Vec::new(), &mut Vec::new());
        assert_eq!(bad.len(), 8);
        assert!(!modbus::crc_ok(&bad));
        assert!(b.bank.coils[0], "a reply with a bad CRC still reports an executed write");
        b.faults.truncate = 1;
        b.faults.garbage = vec![0xEE];
        assert_eq!(b.on_input(Input::Bytes(&read), &mut Vec::new(), &mut Vec::new()), [0xEE, 1, 2, 1]);
    }

    #[test]
    fn records_writes_and_transitions() {
        let mut b = board();
        let mut changes = Vec::new();
        let on = with_crc(vec![1, 5, 0, 0, 0xFF, 0]);
        let out = b.on_input(Input::Bytes(&on), &mut changes, &mut Vec::new());
        assert_eq!(out, on);
        b.on_input(Input::Bytes(&on), &mut changes, &mut Vec::new());
        assert_eq!(changes, vec![(0, true)], "second write is no transition");
        assert_eq!(b.writes.len(), 2);
        assert_eq!(b.served, 2);
    }

    #[test]
    fn garbage_then_frame_across_reads_and_idle() {
        let mut b = board();
        let mut changes = Vec::new();
        let req = with_crc(vec![1, 1, 0, 0, 0, 8]);
        // Garbage that looks like the start of a long FC0F frame stalls until idle.
        let mut bytes = vec![0x01, 0x0F, 0x00, 0x00, 0x00, 0x10, 0xF0];
        bytes.extend(&req);
        assert!(b.on_input(Input::Bytes(&bytes), &mut changes, &mut Vec::new()).is_empty());
        assert_eq!(b.on_input(Input::Idle, &mut changes, &mut Vec::new()), with_crc(vec![1, 1, 1, 0]));
        assert!(b.rx.is_empty());
    }

    #[test]
    fn silent_swallows() {
        let mut b = board();
        b.silent = true;
        let on = with_crc(vec![1, 5, 0, 0, 0xFF, 0]);
        assert!(b.on_input(Input::Bytes(&on), &mut Vec::new(), &mut Vec::new()).is_empty());
        assert!(!b.bank.coils[0]);
        assert_eq!(b.served, 0);
    }
}
