//! The gate safety state machine: turnstile inputs, decisions and time in,
//! coil commands and alarm events out.
//!
//! It is pure like the rest of the engine: no I/O, no clock, no async. The
//! driver feeds it every input with the instant it was seen, and calls
//! [`GateFsm::tick`] at [`GateFsm::next_deadline`] so that timeouts fire on
//! time. Every coil change is an explicit [`GateOutput::SetCoil`] emitted only
//! when the wanted state differs from the last one emitted, so the driver can
//! write them as they come and a simulator can rebuild the coil state from the
//! outputs alone.
//!
//! Rules that shape this file:
//! - A fire alarm beats everything: while it is active every wired unlock
//!   coil is on and nothing relocks, whatever else happens (grants, IO loss).
//! - Otherwise a lost IO board is fail-secure: every coil off, grants ended.
//! - Every Grant or Manual ends in exactly one `Passage` or `NotPassed`
//!   event (refused at once when the gate can't honour it), so the
//!   platform can close every pass decision.

use std::fmt;

/// The engine's one notion of a side, shared with the decision policy.
pub use crate::Side;

const SIDES: [Side; 2] = [Side::Entry, Side::Exit];

fn index(side: Side) -> usize {
    match side {
        Side::Entry => 0,
        Side::Exit => 1,
    }
}

fn opposite(side: Side) -> Side {
    match side {
        Side::Entry => Side::Exit,
        Side::Exit => Side::Entry,
    }
}

/// An output of the IO board the machine drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    UnlockEntry,
    UnlockExit,
    GreenLamp,
    RedLamp,
    Buzzer,
}

impl Signal {
    pub const ALL: [Signal; 5] =
        [Signal::UnlockEntry, Signal::UnlockExit, Signal::GreenLamp, Signal::RedLamp, Signal::Buzzer];

    /// The unlock coil of `side`.
    pub fn unlock(side: Side) -> Signal {
        match side {
            Side::Entry => Signal::UnlockEntry,
            Side::Exit => Signal::UnlockExit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::UnlockEntry => "unlock_entry",
            Signal::UnlockExit => "unlock_exit",
            Signal::GreenLamp => "green_lamp",
            Signal::RedLamp => "red_lamp",
            Signal::Buzzer => "buzzer",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Signal::UnlockEntry => 1,
            Signal::UnlockExit => 1 << 1,
            Signal::GreenLamp => 1 << 2,
            Signal::RedLamp => 1 << 3,
            Signal::Buzzer => 1 << 4,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Signal`]s: which are wired, which are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SignalSet(u8);

impl SignalSet {
    pub const EMPTY: SignalSet = SignalSet(0);
    pub const ALL: SignalSet = SignalSet(0b1_1111);

    /// The set holding exactly `signals`.
    pub fn of(signals: &[Signal]) -> SignalSet {
        signals.iter().fold(SignalSet::EMPTY, |set, &s| set.with(s))
    }

    pub fn contains(self, signal: Signal) -> bool {
        self.0 & signal.bit() != 0
    }

    /// This set plus `signal`.
    #[must_use]
    pub fn with(self, signal: Signal) -> SignalSet {
        SignalSet(self.0 | signal.bit())
    }

    /// This set less `signal`.
    #[must_use]
    pub fn without(self, signal: Signal) -> SignalSet {
        SignalSet(self.0 & !signal.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members, in [`Signal::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Signal> {
        Signal::ALL.into_iter().filter(move |&s| self.contains(s))
    }

    fn intersect(self, other: SignalSet) -> SignalSet {
        SignalSet(self.0 & other.0)
    }
}

/// How the turnstile takes an unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockMode {
    /// Coil on for `unlock_ms`, then off even if nobody has passed yet; the
    /// grant itself stays open until `pass_timeout_ms`.
    Pulse,
    /// Coil held on until the passage or `pass_timeout_ms`.
    Level,
}

/// Timings and wiring. Durations are milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateFsmConfig {
    pub unlock_mode: UnlockMode,
    /// Pulse length in [`UnlockMode::Pulse`]; unused in level mode.
    pub unlock_ms: u32,
    /// How long a grant waits for its passage.
    pub pass_timeout_ms: u32,
    /// A passage sensor active longer than this raises `held_open`.
    pub held_open_ms: u32,
    /// How long the green lamp (grant) or red lamp and buzzer (deny) stay on.
    pub indicator_ms: u32,
    /// True when the fire contact is closed at rest: an open contact is then
    /// the alarm (a cut wire also releases the gate).
    pub fire_alarm_normally_closed: bool,
    /// Whether an IO board lost for `fire_alarm_io_loss_ms` counts as a
    /// fire alarm (the fire contact can't be read any more).
    pub io_loss_is_fire_alarm: bool,
    pub fire_alarm_io_loss_ms: u32,
    /// The signals that have a channel; the others never get a `SetCoil`.
    pub wired: SignalSet,
}

impl Default for GateFsmConfig {
    /// A 500 ms pulse, 10 s to pass, 30 s held open, 2 s indicators, a
    /// normally closed fire contact, IO loss fail-secure, everything wired.
    fn default() -> Self {
        Self {
            unlock_mode: UnlockMode::Pulse,
            unlock_ms: 500,
            pass_timeout_ms: 10_000,
            held_open_ms: 30_000,
            indicator_ms: 2_000,
            fire_alarm_normally_closed: true,
            io_loss_is_fire_alarm: false,
            fire_alarm_io_loss_ms: 10_000,
            wired: SignalSet::ALL,
        }
    }
}

/// What happens to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateInput {
    /// A decision said pass this way.
    Grant { side: Side },
    /// A decision said block: red lamp and buzzer.
    Deny,
    /// The turnstile's passage-completed input of `side` (a level).
    PassageSensor { side: Side, active: bool },
    /// The tailgating beam (a level).
    Beam { active: bool },
    /// The door-forced / intrusion input (a level).
    Intrusion { active: bool },
    /// The raw fire contact level; what it means depends on
    /// [`GateFsmConfig::fire_alarm_normally_closed`].
    FireAlarm { contact_closed: bool },
    /// Whether the Modbus IO board answers.
    IoBoard { reachable: bool },
    /// A technician's manual open: a grant without a decision (no lamp).
    Manual { side: Side },
    /// A grant given before a restart whose passage was not seen yet: its
    /// passage is awaited for `remaining_ms` more, without unlocking again
    /// and without a lamp, so the person walking through is a passage and
    /// not a forced door.
    Resume { side: Side, remaining_ms: u32 },
}

/// What the machine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateFsmEvent {
    /// A granted passage completed.
    Passage {
        side: Side,
    },
    /// A grant ended without its passage (timeout, superseded, refused,
    /// or overtaken by a fire alarm or an IO loss).
    NotPassed {
        side: Side,
    },
    DoorForced,
    HeldOpen,
    Tailgating,
    /// A passage the wrong way while the other side was granted.
    ReversePassage {
        side: Side,
    },
    FireAlarm,
    FireAlarmCleared,
    IoLost,
    IoRestored,
}

impl GateFsmEvent {
    /// The event's name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GateFsmEvent::Passage { .. } => "passage",
            GateFsmEvent::NotPassed { .. } => "not_passed",
            GateFsmEvent::DoorForced => "door_forced",
            GateFsmEvent::HeldOpen => "held_open",
            GateFsmEvent::Tailgating => "tailgating",
            GateFsmEvent::ReversePassage { .. } => "reverse_passage",
            GateFsmEvent::FireAlarm => "fire_alarm",
            GateFsmEvent::FireAlarmCleared => "fire_alarm_cleared",
            GateFsmEvent::IoLost => "io_lost",
            GateFsmEvent::IoRestored => "io_restored",
        }
    }
}

/// One command or event out of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutput {
    SetCoil { signal: Signal, on: bool },
    Event(GateFsmEvent),
}

/// An open grant of one side.
#[derive(Debug, Clone, Copy)]
struct Grant {
    /// When the grant lapses without a passage.
    deadline: i64,
    /// When the unlock coil goes off (the pulse end in pulse mode, the
    /// deadline in level mode).
    coil_until: i64,
    /// Whether the coil is still wanted on; cleared at `coil_until`.
    coil_on: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct SideState {
    grant: Option<Grant>,
    /// A passage completed a grant whose window runs until then: another
    /// passage this way before it is a second body on one grant.
    spent_until: Option<i64>,
    /// Last passage sensor level.
    sensor: bool,
    /// When the current activation becomes `held_open`; `None` once
    /// reported or while inactive.
    held_deadline: Option<i64>,
    /// The current sensor activation completed a grant: the body is still
    /// in the passage, so the beam breaking now is a follower.
    completing: bool,
}

/// The gate safety state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct GateFsm {
    config: GateFsmConfig,
    sides: [SideState; 2],
    /// The fire contact, read as alarm / no alarm.
    fire_contact: bool,
    /// An IO loss lasted `fire_alarm_io_loss_ms` with
    /// `io_loss_is_fire_alarm` set.
    io_fire: bool,
    io_lost_since: Option<i64>,
    beam: bool,
    intrusion: bool,
    green_until: Option<i64>,
    red_until: Option<i64>,
    /// The coil state as last emitted.
    coils: SignalSet,
    /// The latest instant seen: time never runs backwards in here.
    now: i64,
}

impl GateFsm {
    /// A machine at rest: board reachable, every input inactive, no fire
    /// alarm, every coil off.
    pub fn new(config: GateFsmConfig) -> Self {
        Self {
            config,
            sides: [SideState::default(); 2],
            fire_contact: false,
            io_fire: false,
            io_lost_since: None,
            beam: false,
            intrusion: false,
            green_until: None,
            red_until: None,
            coils: SignalSet::EMPTY,
            now: i64::MIN,
        }
    }

    pub fn config(&self) -> &GateFsmConfig {
        &self.config
    }

    /// The coils as last commanded.
    pub fn coils(&self) -> SignalSet {
        self.coils
    }

    /// Whether a fire alarm (contact or IO loss) is active.
    pub fn fire_alarm(&self) -> bool {
        self.fire_contact || self.io_fire
    }

    /// Takes one input seen at `now_ms`. Timeouts due by then are applied
    /// first, so a late tick never reorders events.
    pub fn handle(&mut self, input: GateInput, now_ms: i64) -> Vec<GateOutput> {
        let now = self.clock(now_ms);
        let mut out = Vec::new();
        self.expire(now, &mut out);
        self.apply(input, now, &mut out);
        self.sync_coils(&mut out);
        // A zero-length timer set by this input is due already.
        self.expire(now, &mut out);
        out
    }

    /// Applies every timeout due by `now_ms`.
    pub fn tick(&mut self, now_ms: i64) -> Vec<GateOutput> {
        let now = self.clock(now_ms);
        let mut out = Vec::new();
        self.expire(now, &mut out);
        out
    }

    /// The earliest instant at which [`tick`](Self::tick) has something to
    /// do, `None` when no timer runs.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut deadlines = Vec::with_capacity(8);
        for side in &self.sides {
            if let Some(grant) = side.grant {
                deadlines.push(grant.deadline);
                if grant.coil_on {
                    deadlines.push(grant.coil_until);
                }
            }
            deadlines.extend(side.held_deadline);
        }
        deadlines.extend(self.green_until);
        deadlines.extend(self.red_until);
        deadlines.extend(self.io_fire_at());
        deadlines.into_iter().min()
    }

    fn clock(&mut self, now_ms: i64) -> i64 {
        // A driver reading a monotonic clock never goes back; if one does,
        // holding time still keeps every deadline reachable.
        self.now = self.now.max(now_ms);
        self.now
    }

    fn io_fire_at(&self) -> Option<i64> {
        match self.io_lost_since {
            Some(since) if self.config.io_loss_is_fire_alarm && !self.io_fire => {
                Some(since.saturating_add(i64::from(self.config.fire_alarm_io_loss_ms)))
            }
            _ => None,
        }
    }

    /// Advances timer by timer in time order, so events come out in the
    /// order they would have with a punctual tick.
    fn expire(&mut self, now: i64, out: &mut Vec<GateOutput>) {
        while let Some(at) = self.next_deadline() {
            if at > now {
                break;
            }
            self.advance(at, out);
            self.sync_coils(out);
        }
    }

    /// Fires every timer due at `at` (each one clears itself, so
    /// [`expire`](Self::expire) always makes progress).
    fn advance(&mut self, at: i64, out: &mut Vec<GateOutput>) {
        let fire = self.fire_alarm();
        for side in SIDES {
            let state = &mut self.sides[index(side)];
            if let Some(grant) = &mut state.grant {
                if grant.coil_on && grant.coil_until <= at {
                    grant.coil_on = false;
                }
                if grant.deadline <= at {
                    state.grant = None;
                    out.push(GateOutput::Event(GateFsmEvent::NotPassed { side }));
                }
            }
            if state.held_deadline.is_some_and(|d| d <= at) {
                state.held_deadline = None;
                // During a fire alarm the gate stands open by design.
                if !fire {
                    out.push(GateOutput::Event(GateFsmEvent::HeldOpen));
                }
            }
        }
        if self.green_until.is_some_and(|d| d <= at) {
            self.green_until = None;
        }
        if self.red_until.is_some_and(|d| d <= at) {
            self.red_until = None;
        }
        if self.io_fire_at().is_some_and(|d| d <= at) {
            self.set_fire(out, |fsm| fsm.io_fire = true);
        }
    }

    fn apply(&mut self, input: GateInput, now: i64, out: &mut Vec<GateOutput>) {
        match input {
            GateInput::Grant { side } => self.grant(side, now, true, out),
            GateInput::Manual { side } => self.grant(side, now, false, out),
            GateInput::Resume { side, remaining_ms } => {
                if self.fire_alarm() || self.io_lost_since.is_some() {
                    return;
                }
                let state = &mut self.sides[index(side)];
                let deadline = after(now, remaining_ms);
                // Granted once already: never a second unlock.
                state.grant = Some(Grant { deadline, coil_until: now, coil_on: false });
            }
            GateInput::Deny => {
                // A lost board can't light anything; a late lamp would
                // mislead the next person.
                if self.io_lost_since.is_none() {
                    self.red_until = Some(after(now, self.config.indicator_ms));
                }
            }
            GateInput::PassageSensor { side, active } => {
                let state = &mut self.sides[index(side)];
                if state.sensor == active {
                    return;
                }
                state.sensor = active;
                if active {
                    state.held_deadline = Some(after(now, self.config.held_open_ms));
                    self.passage(side, now, out);
                } else {
                    state.held_deadline = None;
                    state.completing = false;
                }
            }
            GateInput::Beam { active } => {
                if self.beam == active {
                    return;
                }
                self.beam = active;
                let granted_passage = self.sides.iter().any(|s| s.grant.is_some() || s.completing);
                if active && granted_passage && !self.fire_alarm() {
                    out.push(GateOutput::Event(GateFsmEvent::Tailgating));
                }
            }
            GateInput::Intrusion { active } => {
                if self.intrusion == active {
                    return;
                }
                self.intrusion = active;
                // Reported even during a fire alarm: it is the hardware's own
                // word, independent of the gate's state.
                if active {
                    out.push(GateOutput::Event(GateFsmEvent::DoorForced));
                }
            }
            GateInput::FireAlarm { contact_closed } => {
                let alarm = contact_closed != self.config.fire_alarm_normally_closed;
                self.set_fire(out, |fsm| fsm.fire_contact = alarm);
            }
            GateInput::IoBoard { reachable: true } => {
                if self.io_lost_since.take().is_some() {
                    out.push(GateOutput::Event(GateFsmEvent::IoRestored));
                    self.set_fire(out, |fsm| fsm.io_fire = false);
                }
            }
            GateInput::IoBoard { reachable: false } => {
                if self.io_lost_since.is_none() {
                    self.io_lost_since = Some(now);
                    out.push(GateOutput::Event(GateFsmEvent::IoLost));
                    // Fail-secure: an unlock can't be honoured or even seen
                    // to end, so no grant outlives the board.
                    self.end_grants(out);
                    self.green_until = None;
                    self.red_until = None;
                }
            }
        }
    }

    fn grant(&mut self, side: Side, now: i64, lamp: bool, out: &mut Vec<GateOutput>) {
        if lamp && self.io_lost_since.is_none() {
            self.green_until = Some(after(now, self.config.indicator_ms));
        }
        let not_passed = GateOutput::Event(GateFsmEvent::NotPassed { side });
        if self.fire_alarm() || self.io_lost_since.is_some() {
            // A fire alarm already frees the gate and tracks no passage; a
            // lost board can't unlock, and a queued unlock executed later
            // would let the wrong person through.
            out.push(not_passed);
            return;
        }
        let state = &mut self.sides[index(side)];
        if state.grant.is_some() {
            // One grant, one body: the newer grant takes over the unlock.
            out.push(not_passed);
        }
        let deadline = after(now, self.config.pass_timeout_ms);
        let coil_until = match self.config.unlock_mode {
            UnlockMode::Pulse => after(now, self.config.unlock_ms).min(deadline),
            UnlockMode::Level => deadline,
        };
        state.grant = Some(Grant { deadline, coil_until, coil_on: true });
    }

    /// A passage completed on `side` (the sensor's rising edge).
    fn passage(&mut self, side: Side, now: i64, out: &mut Vec<GateOutput>) {
        if self.fire_alarm() {
            // Free egress: nobody is granted, nobody is forcing.
            return;
        }
        let other_granted = self.sides[index(opposite(side))].grant.is_some();
        let state = &mut self.sides[index(side)];
        let event = if let Some(grant) = state.grant.take() {
            state.spent_until = Some(grant.deadline);
            state.completing = true;
            GateFsmEvent::Passage { side }
        } else if state.spent_until.is_some_and(|until| now < until) {
            GateFsmEvent::Tailgating
        } else if other_granted {
            GateFsmEvent::ReversePassage { side }
        } else {
            GateFsmEvent::DoorForced
        };
        out.push(GateOutput::Event(event));
    }

    /// Changes a fire alarm source and reports the alarm's edges.
    fn set_fire(&mut self, out: &mut Vec<GateOutput>, change: impl FnOnce(&mut Self)) {
        let was = self.fire_alarm();
        change(self);
        let is = self.fire_alarm();
        if !was && is {
            out.push(GateOutput::Event(GateFsmEvent::FireAlarm));
            // Everyone may walk out now: passages are no longer counted
            // against grants, so the open ones end here.
            self.end_grants(out);
        } else if was && !is {
            out.push(GateOutput::Event(GateFsmEvent::FireAlarmCleared));
        }
    }

    fn end_grants(&mut self, out: &mut Vec<GateOutput>) {
        for side in SIDES {
            let state = &mut self.sides[index(side)];
            if state.grant.take().is_some() {
                out.push(GateOutput::Event(GateFsmEvent::NotPassed { side }));
            }
            state.spent_until = None;
            state.completing = false;
        }
    }

    /// The coils the current state wants.
    fn wanted(&self) -> SignalSet {
        let mut set = SignalSet::EMPTY;
        if self.fire_alarm() {
            // Nothing relocks during a fire alarm, a lost board included:
            // losing the reader of the contact is no sign the fire is out.
            set = set.with(Signal::UnlockEntry).with(Signal::UnlockExit);
        } else if self.io_lost_since.is_none() {
            for side in SIDES {
                if self.sides[index(side)].grant.is_some_and(|g| g.coil_on) {
                    set = set.with(Signal::unlock(side));
                }
            }
        }
        if self.io_lost_since.is_none() {
            if self.green_until.is_some() {
                set = set.with(Signal::GreenLamp);
            }
            if self.red_until.is_some() {
                set = set.with(Signal::RedLamp).with(Signal::Buzzer);
            }
        }
        set.intersect(self.config.wired)
    }

    fn sync_coils(&mut self, out: &mut Vec<GateOutput>) {
        let wanted = self.wanted();
        for signal in Signal::ALL {
            let on = wanted.contains(signal);
            if on != self.coils.contains(signal) {
                out.push(GateOutput::SetCoil { signal, on });
            }
        }
        self.coils = wanted;
    }
}

fn after(now: i64, ms: u32) -> i64 {
    now.saturating_add(i64::from(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type E = GateFsmEvent;
    type I = GateInput;
    use Side::{Entry, Exit};
    use Signal::{Buzzer, GreenLamp, RedLamp, UnlockEntry, UnlockExit};

    /// Short timings so the scenarios read easily: 200 ms pulse, 5 s to
    /// pass, 3 s held open, 1 s indicators, 4 s IO loss before fire.
    fn cfg() -> GateFsmConfig {
        GateFsmConfig {
            unlock_mode: UnlockMode::Pulse,
            unlock_ms: 200,
            pass_timeout_ms: 5_000,
            held_open_ms: 3_000,
            indicator_ms: 1_000,
            fire_alarm_normally_closed: true,
            io_loss_is_fire_alarm: false,
            fire_alarm_io_loss_ms: 4_000,
            wired: SignalSet::ALL,
        }
    }

    fn level() -> GateFsmConfig {
        GateFsmConfig { unlock_mode: UnlockMode::Level, ..cfg() }
    }

    fn on(signal: Signal) -> GateOutput {
        GateOutput::SetCoil { signal, on: true }
    }

    fn off(signal: Signal) -> GateOutput {
        GateOutput::SetCoil { signal, on: false }
    }

    fn ev(event: GateFsmEvent) -> GateOutput {
        GateOutput::Event(event)
    }

    fn sensor(side: Side, active: bool) -> GateInput {
        I::PassageSensor { side, active }
    }

    /// Drives the machine as a punctual driver would: before each input,
    /// a tick at every deadline due by then; after the last, ticks until no
    /// timer runs. Returns every output with the instant it came out.
    fn run(config: GateFsmConfig, steps: &[(i64, GateInput)]) -> Vec<(i64, GateOutput)> {
        let mut fsm = GateFsm::new(config);
        let mut outputs = Vec::new();
        fn drain(fsm: &mut GateFsm, until: i64, outputs: &mut Vec<(i64, GateOutput)>) {
            while let Some(at) = fsm.next_deadline().filter(|&at| at <= until) {
                outputs.extend(fsm.tick(at).into_iter().map(|o| (at, o)));
            }
        }
        for &(at, input) in steps {
            drain(&mut fsm, at, &mut outputs);
            outputs.extend(fsm.handle(input, at).into_iter().map(|o| (at, o)));
        }
        drain(&mut fsm, i64::MAX, &mut outputs);
        outputs
    }

    type Scenario = (&'static str, GateFsmConfig, Vec<(i64, GateInput)>, Vec<(i64, GateOutput)>);

    /// One row per rule and per alarm: (what, config, inputs, outputs).
    #[test]
    fn scenarios() {
        let cases: Vec<Scenario> = vec![
            (
                "pulse: unlock, relock after the pulse, passage within the timeout",
                cfg(),
                vec![(0, I::Grant { side: Entry }), (1_000, sensor(Entry, true)), (1_500, sensor(Entry, false))],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockEntry)),
                    (1_000, off(GreenLamp)),
                    (1_000, ev(E::Passage { side: Entry })),
                ],
            ),
            (
                "pulse: nobody passes, the grant lapses at pass_timeout",
                cfg(),
                vec![(0, I::Grant { side: Exit })],
                vec![
                    (0, on(UnlockExit)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockExit)),
                    (1_000, off(GreenLamp)),
                    (5_000, ev(E::NotPassed { side: Exit })),
                ],
            ),
            (
                "pulse: a passage during the pulse relocks at once",
                cfg(),
                vec![(0, I::Manual { side: Exit }), (100, sensor(Exit, true)), (150, sensor(Exit, false))],
                vec![(0, on(UnlockExit)), (100, ev(E::Passage { side: Exit })), (100, off(UnlockExit))],
            ),
            (
                "pulse longer than pass_timeout: coil off at the timeout",
                GateFsmConfig { unlock_ms: 8_000, ..cfg() },
                vec![(0, I::Manual { side: Entry })],
                vec![(0, on(UnlockEntry)), (5_000, ev(E::NotPassed { side: Entry })), (5_000, off(UnlockEntry))],
            ),
            (
                "level: coil held until the passage",
                level(),
                vec![(0, I::Grant { side: Entry }), (700, sensor(Entry, true)), (800, sensor(Entry, false))],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (700, ev(E::Passage { side: Entry })),
                    (700, off(UnlockEntry)),
                    (1_000, off(GreenLamp)),
                ],
            ),
            (
                "level: no passage, relock and not_passed at pass_timeout",
                level(),
                vec![(0, I::Grant { side: Entry })],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (1_000, off(GreenLamp)),
                    (5_000, ev(E::NotPassed { side: Entry })),
                    (5_000, off(UnlockEntry)),
                ],
            ),
            (
                "a newer grant on the same side supersedes the open one",
                cfg(),
                vec![(0, I::Grant { side: Entry }), (300, I::Grant { side: Entry })],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockEntry)),
                    (300, ev(E::NotPassed { side: Entry })),
                    (300, on(UnlockEntry)),
                    (500, off(UnlockEntry)),
                    (1_300, off(GreenLamp)),
                    (5_300, ev(E::NotPassed { side: Entry })),
                ],
            ),
            (
                "door_forced: a passage without a grant",
                cfg(),
                vec![(0, sensor(Entry, true)), (100, sensor(Entry, false))],
                vec![(0, ev(E::DoorForced))],
            ),
            (
                "door_forced: the intrusion input, once per activation",
                cfg(),
                vec![
                    (0, I::Intrusion { active: true }),
                    (50, I::Intrusion { active: true }),
                    (100, I::Intrusion { active: false }),
                    (200, I::Intrusion { active: true }),
                ],
                vec![(0, ev(E::DoorForced)), (200, ev(E::DoorForced))],
            ),
            (
                "held_open: the passage sensor stays active past held_open_ms",
                cfg(),
                vec![(0, I::Grant { side: Entry }), (300, sensor(Entry, true)), (4_000, sensor(Entry, false))],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockEntry)),
                    (300, ev(E::Passage { side: Entry })),
                    (1_000, off(GreenLamp)),
                    (3_300, ev(E::HeldOpen)),
                ],
            ),
            (
                "held_open: released in time, nothing",
                cfg(),
                vec![(0, I::Manual { side: Entry }), (300, sensor(Entry, true)), (3_299, sensor(Entry, false))],
                vec![(0, on(UnlockEntry)), (200, off(UnlockEntry)), (300, ev(E::Passage { side: Entry }))],
            ),
            (
                "tailgating: a second passage on one grant",
                cfg(),
                vec![
                    (0, I::Grant { side: Entry }),
                    (300, sensor(Entry, true)),
                    (400, sensor(Entry, false)),
                    (600, sensor(Entry, true)),
                    (700, sensor(Entry, false)),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockEntry)),
                    (300, ev(E::Passage { side: Entry })),
                    (600, ev(E::Tailgating)),
                    (1_000, off(GreenLamp)),
                ],
            ),
            (
                "a passage after the spent grant's window is door_forced again",
                cfg(),
                vec![
                    (0, I::Manual { side: Entry }),
                    (300, sensor(Entry, true)),
                    (400, sensor(Entry, false)),
                    (5_000, sensor(Entry, true)),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (200, off(UnlockEntry)),
                    (300, ev(E::Passage { side: Entry })),
                    (5_000, ev(E::DoorForced)),
                    (8_000, ev(E::HeldOpen)),
                ],
            ),
            (
                "tailgating: the beam breaks while a grant is open",
                level(),
                vec![
                    (0, I::Manual { side: Entry }),
                    (100, I::Beam { active: true }),
                    (150, I::Beam { active: false }),
                    (400, sensor(Entry, true)),
                    (500, sensor(Entry, false)),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (100, ev(E::Tailgating)),
                    (400, ev(E::Passage { side: Entry })),
                    (400, off(UnlockEntry)),
                ],
            ),
            (
                "tailgating: the beam breaks while the granted body is in the passage",
                level(),
                vec![
                    (0, I::Manual { side: Exit }),
                    (300, sensor(Exit, true)),
                    (350, I::Beam { active: true }),
                    (400, I::Beam { active: false }),
                    (500, sensor(Exit, false)),
                    (600, I::Beam { active: true }),
                ],
                vec![
                    (0, on(UnlockExit)),
                    (300, ev(E::Passage { side: Exit })),
                    (300, off(UnlockExit)),
                    (350, ev(E::Tailgating)),
                ],
            ),
            (
                "the beam with no granted passage: nothing",
                cfg(),
                vec![(0, I::Beam { active: true }), (100, I::Beam { active: false })],
                vec![],
            ),
            (
                "reverse_passage: a passage on the side opposite the grant",
                cfg(),
                vec![(0, I::Grant { side: Entry }), (300, sensor(Exit, true)), (400, sensor(Exit, false))],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (200, off(UnlockEntry)),
                    (300, ev(E::ReversePassage { side: Exit })),
                    (1_000, off(GreenLamp)),
                    (5_000, ev(E::NotPassed { side: Entry })),
                ],
            ),
            (
                "deny: red lamp and buzzer for indicator_ms",
                cfg(),
                vec![(0, I::Deny)],
                vec![(0, on(RedLamp)), (0, on(Buzzer)), (1_000, off(RedLamp)), (1_000, off(Buzzer))],
            ),
            (
                "unwired signals get no SetCoil",
                GateFsmConfig { wired: SignalSet::of(&[UnlockEntry]), ..cfg() },
                vec![(0, I::Grant { side: Entry }), (50, I::Deny), (60, I::Grant { side: Exit })],
                vec![
                    (0, on(UnlockEntry)),
                    (200, off(UnlockEntry)),
                    (5_000, ev(E::NotPassed { side: Entry })),
                    (5_060, ev(E::NotPassed { side: Exit })),
                ],
            ),
            (
                "fire alarm, normally closed: an open contact frees both ways",
                cfg(),
                vec![
                    (0, I::FireAlarm { contact_closed: true }),
                    (100, I::FireAlarm { contact_closed: false }),
                    (200, I::Grant { side: Entry }),
                    (300, sensor(Entry, true)),
                    (400, sensor(Entry, false)),
                    (9_000, I::FireAlarm { contact_closed: true }),
                ],
                vec![
                    (100, ev(E::FireAlarm)),
                    (100, on(UnlockEntry)),
                    (100, on(UnlockExit)),
                    (200, ev(E::NotPassed { side: Entry })),
                    (200, on(GreenLamp)),
                    (1_200, off(GreenLamp)),
                    (9_000, ev(E::FireAlarmCleared)),
                    (9_000, off(UnlockEntry)),
                    (9_000, off(UnlockExit)),
                ],
            ),
            (
                "fire alarm, normally open: a closed contact is the alarm",
                GateFsmConfig { fire_alarm_normally_closed: false, ..cfg() },
                vec![
                    (0, I::FireAlarm { contact_closed: false }),
                    (100, I::FireAlarm { contact_closed: true }),
                    (200, I::FireAlarm { contact_closed: false }),
                ],
                vec![
                    (100, ev(E::FireAlarm)),
                    (100, on(UnlockEntry)),
                    (100, on(UnlockExit)),
                    (200, ev(E::FireAlarmCleared)),
                    (200, off(UnlockEntry)),
                    (200, off(UnlockExit)),
                ],
            ),
            (
                "fire alarm overtakes an open grant: nothing relocks at pass_timeout",
                level(),
                vec![
                    (0, I::Manual { side: Entry }),
                    (100, I::FireAlarm { contact_closed: false }),
                    (8_000, I::FireAlarm { contact_closed: true }),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (100, ev(E::FireAlarm)),
                    (100, ev(E::NotPassed { side: Entry })),
                    (100, on(UnlockExit)),
                    (8_000, ev(E::FireAlarmCleared)),
                    (8_000, off(UnlockEntry)),
                    (8_000, off(UnlockExit)),
                ],
            ),
            (
                "fire alarm: free egress raises no alarm, held open included",
                cfg(),
                vec![
                    (0, I::FireAlarm { contact_closed: false }),
                    (100, sensor(Exit, true)),
                    (150, I::Beam { active: true }),
                    (9_000, sensor(Exit, false)),
                ],
                vec![(0, ev(E::FireAlarm)), (0, on(UnlockEntry)), (0, on(UnlockExit))],
            ),
            (
                "io_lost: fail-secure, grants end and are refused until restored",
                level(),
                vec![
                    (0, I::Grant { side: Entry }),
                    (100, I::IoBoard { reachable: false }),
                    (200, I::Grant { side: Exit }),
                    (300, I::Deny),
                    (60_000, I::IoBoard { reachable: true }),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (0, on(GreenLamp)),
                    (100, ev(E::IoLost)),
                    (100, ev(E::NotPassed { side: Entry })),
                    (100, off(UnlockEntry)),
                    (100, off(GreenLamp)),
                    (200, ev(E::NotPassed { side: Exit })),
                    (60_000, ev(E::IoRestored)),
                ],
            ),
            (
                "io_lost during a fire alarm: the gate stays free",
                cfg(),
                vec![
                    (0, I::FireAlarm { contact_closed: false }),
                    (100, I::IoBoard { reachable: false }),
                    (200, I::IoBoard { reachable: true }),
                    (300, I::FireAlarm { contact_closed: true }),
                ],
                vec![
                    (0, ev(E::FireAlarm)),
                    (0, on(UnlockEntry)),
                    (0, on(UnlockExit)),
                    (100, ev(E::IoLost)),
                    (200, ev(E::IoRestored)),
                    (300, ev(E::FireAlarmCleared)),
                    (300, off(UnlockEntry)),
                    (300, off(UnlockExit)),
                ],
            ),
            (
                "io loss as fire alarm (configured): after fire_alarm_io_loss_ms",
                GateFsmConfig { io_loss_is_fire_alarm: true, ..cfg() },
                vec![
                    (0, I::Manual { side: Entry }),
                    (100, I::IoBoard { reachable: false }),
                    (6_000, I::IoBoard { reachable: true }),
                ],
                vec![
                    (0, on(UnlockEntry)),
                    (100, ev(E::IoLost)),
                    (100, ev(E::NotPassed { side: Entry })),
                    (100, off(UnlockEntry)),
                    (4_100, ev(E::FireAlarm)),
                    (4_100, on(UnlockEntry)),
                    (4_100, on(UnlockExit)),
                    (6_000, ev(E::IoRestored)),
                    (6_000, ev(E::FireAlarmCleared)),
                    (6_000, off(UnlockEntry)),
                    (6_000, off(UnlockExit)),
                ],
            ),
            (
                "io loss as fire alarm (configured): a short loss is no fire",
                GateFsmConfig { io_loss_is_fire_alarm: true, ..cfg() },
                vec![(0, I::IoBoard { reachable: false }), (3_999, I::IoBoard { reachable: true })],
                vec![(0, ev(E::IoLost)), (3_999, ev(E::IoRestored))],
            ),
            (
                "io loss as fire alarm: restored while the contact still alarms",
                GateFsmConfig { io_loss_is_fire_alarm: true, ..cfg() },
                vec![
                    (0, I::IoBoard { reachable: false }),
                    (5_000, I::FireAlarm { contact_closed: false }),
                    (6_000, I::IoBoard { reachable: true }),
                    (7_000, I::FireAlarm { contact_closed: true }),
                ],
                vec![
                    (0, ev(E::IoLost)),
                    (4_000, ev(E::FireAlarm)),
                    (4_000, on(UnlockEntry)),
                    (4_000, on(UnlockExit)),
                    (6_000, ev(E::IoRestored)),
                    (7_000, ev(E::FireAlarmCleared)),
                    (7_000, off(UnlockEntry)),
                    (7_000, off(UnlockExit)),
                ],
            ),
        ];
        for (what, config, steps, expected) in cases {
            assert_eq!(run(config, &steps), expected, "{what}");
        }
    }

    #[test]
    fn late_tick_keeps_time_order() {
        // The driver ticks only at 10 s: the pulse end, the lamp, the
        // held-open alarm and the lapsed grant still come out in the order
        // they fell due.
        let mut fsm = GateFsm::new(cfg());
        let _ = fsm.handle(I::Grant { side: Entry }, 0);
        assert_eq!(fsm.handle(sensor(Exit, true), 100), vec![ev(E::ReversePassage { side: Exit })]);
        assert_eq!(
            fsm.tick(10_000),
            vec![off(UnlockEntry), off(GreenLamp), ev(E::HeldOpen), ev(E::NotPassed { side: Entry })]
        );
        assert_eq!(fsm.next_deadline(), None);
    }

    #[test]
    fn a_resumed_grant_takes_its_passage_without_unlocking_again() {
        let mut fsm = GateFsm::new(cfg());
        assert!(fsm.handle(I::Resume { side: Entry, remaining_ms: 3_000 }, 0).is_empty(), "no coil, no lamp");
        assert_eq!(fsm.coils(), SignalSet::EMPTY);
        assert_eq!(fsm.handle(sensor(Entry, true), 1_000), vec![ev(E::Passage { side: Entry })]);
        // Unpassed, it lapses like any grant.
        let mut fsm = GateFsm::new(cfg());
        let _ = fsm.handle(I::Resume { side: Exit, remaining_ms: 500 }, 0);
        assert_eq!(fsm.tick(600), vec![ev(E::NotPassed { side: Exit })]);
        assert_eq!(fsm.handle(sensor(Exit, true), 700), vec![ev(E::DoorForced)]);
    }

    #[test]
    fn next_deadline_tracks_the_earliest_timer() {
        let mut fsm = GateFsm::new(level());
        assert_eq!(fsm.next_deadline(), None);
        let _ = fsm.handle(I::Grant { side: Exit }, 1_000);
        assert_eq!(fsm.next_deadline(), Some(2_000)); // green lamp
        let _ = fsm.tick(2_000);
        assert_eq!(fsm.next_deadline(), Some(6_000)); // pass timeout
        // A clock that steps back is held, not followed.
        assert!(fsm.tick(500).is_empty());
        assert_eq!(fsm.coils(), SignalSet::of(&[UnlockExit]));
    }

    #[test]
    fn event_names() {
        assert_eq!(E::NotPassed { side: Entry }.as_str(), "not_passed");
        assert_eq!(E::ReversePassage { side: Exit }.as_str(), "reverse_passage");
        assert_eq!(E::FireAlarmCleared.as_str(), "fire_alarm_cleared");
        assert_eq!(Signal::unlock(Exit), UnlockExit);
    }

    fn any_side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Entry), Just(Exit)]
    }

    fn any_input() -> impl Strategy<Value = GateInput> {
        prop_oneof![
            3 => any_side().prop_map(|side| I::Grant { side }),
            1 => any_side().prop_map(|side| I::Manual { side }),
            1 => Just(I::Deny),
            4 => (any_side(), any::<bool>()).prop_map(|(side, active)| I::PassageSensor { side, active }),
            1 => any::<bool>().prop_map(|active| I::Beam { active }),
            1 => any::<bool>().prop_map(|active| I::Intrusion { active }),
            1 => any::<bool>().prop_map(|contact_closed| I::FireAlarm { contact_closed }),
            1 => any::<bool>().prop_map(|reachable| I::IoBoard { reachable }),
        ]
    }

    fn any_config() -> impl Strategy<Value = GateFsmConfig> {
        (
            any::<bool>(),
            0u32..2_000,
            0u32..5_000,
            0u32..5_000,
            0u32..3_000,
            any::<bool>(),
            any::<bool>(),
            0u32..5_000,
            0u8..32,
        )
            .prop_map(|(level, unlock_ms, pass, held, indicator, nc, io_fire, io_ms, wired)| GateFsmConfig {
                unlock_mode: if level { UnlockMode::Level } else { UnlockMode::Pulse },
                unlock_ms,
                pass_timeout_ms: pass,
                held_open_ms: held,
                indicator_ms: indicator,
                fire_alarm_normally_closed: nc,
                io_loss_is_fire_alarm: io_fire,
                fire_alarm_io_loss_ms: io_ms,
                wired: SignalSet(wired),
            })
    }

    /// What the safety property may rely on, rebuilt from the inputs alone
    /// (not from the machine's state), plus the coils rebuilt from outputs.
    struct Model {
        config: GateFsmConfig,
        last_grant: [Option<i64>; 2],
        passed_since_grant: [bool; 2],
        sensor: [bool; 2],
        contact_alarm: bool,
        lost_since: Option<i64>,
        coils: SignalSet,
        grants: usize,
        grant_ends: usize,
    }

    impl Model {
        fn new(config: GateFsmConfig) -> Self {
            Self {
                config,
                last_grant: [None; 2],
                passed_since_grant: [false; 2],
                sensor: [false; 2],
                contact_alarm: false,
                lost_since: None,
                coils: SignalSet::EMPTY,
                grants: 0,
                grant_ends: 0,
            }
        }

        fn input(&mut self, input: GateInput, at: i64) {
            match input {
                I::Grant { side } | I::Manual { side } => {
                    self.grants += 1;
                    self.last_grant[index(side)] = Some(at);
                    self.passed_since_grant[index(side)] = false;
                }
                I::PassageSensor { side, active } => {
                    let i = index(side);
                    if active && !self.sensor[i] {
                        self.passed_since_grant[i] = true;
                    }
                    self.sensor[i] = active;
                }
                I::FireAlarm { contact_closed } => {
                    self.contact_alarm = contact_closed != self.config.fire_alarm_normally_closed;
                }
                I::IoBoard { reachable } => {
                    if reachable {
                        self.lost_since = None;
                    } else if self.lost_since.is_none() {
                        self.lost_since = Some(at);
                    }
                }
                I::Deny | I::Beam { .. } | I::Intrusion { .. } | I::Resume { .. } => {}
            }
        }

        fn outputs(&mut self, outputs: &[GateOutput]) -> Result<(), TestCaseError> {
            for &output in outputs {
                match output {
                    GateOutput::SetCoil { signal, on } => {
                        prop_assert!(self.config.wired.contains(signal), "unwired {signal}");
                        prop_assert_ne!(self.coils.contains(signal), on, "redundant {}", signal);
                        self.coils = if on { self.coils.with(signal) } else { self.coils.without(signal) };
                    }
                    GateOutput::Event(E::Passage { .. } | E::NotPassed { .. }) => {
                        self.grant_ends += 1;
                    }
                    GateOutput::Event(_) => {}
                }
            }
            Ok(())
        }

        fn fire(&self, at: i64) -> bool {
            self.contact_alarm
                || (self.config.io_loss_is_fire_alarm
                    && self.lost_since.is_some_and(|since| at >= since + i64::from(self.config.fire_alarm_io_loss_ms)))
        }

        /// The latest instant an unlock of `side` may still be on without
        /// a fire alarm, `None` when it may not be on at all.
        fn unlock_allowed_until(&self, side: Side) -> Option<i64> {
            let granted = self.last_grant[index(side)]?;
            if self.passed_since_grant[index(side)] {
                return None;
            }
            let window = match self.config.unlock_mode {
                UnlockMode::Pulse => self.config.unlock_ms.min(self.config.pass_timeout_ms),
                UnlockMode::Level => self.config.pass_timeout_ms,
            };
            Some(granted + i64::from(window))
        }

        /// The safety property at instant `at`, and until the machine's next
        /// deadline (the coils can't change before it without an input).
        fn check(&self, fsm: &GateFsm, at: i64) -> Result<(), TestCaseError> {
            prop_assert_eq!(self.coils, fsm.coils());
            if self.fire(at) {
                return Ok(());
            }
            for side in SIDES {
                if !self.coils.contains(Signal::unlock(side)) {
                    continue;
                }
                let until = self.unlock_allowed_until(side);
                prop_assert!(
                    until.is_some_and(|until| at < until),
                    "{} unlocked at {at} without a live grant or a fire alarm",
                    side.as_str()
                );
                prop_assert!(
                    fsm.next_deadline().zip(until).is_some_and(|(next, until)| next <= until),
                    "{} would stay unlocked past {until:?}",
                    side.as_str()
                );
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// SAFETY: an unlock coil is never on unless a grant or manual open
        /// of that side is live (within pass_timeout, not yet passed) or a
        /// fire alarm is active; once the alarm clears and every grant has
        /// lapsed, every coil ends off and every grant got its end event.
        #[test]
        fn unlock_only_with_a_live_grant_or_fire(
            config in any_config(),
            steps in prop::collection::vec((0i64..2_000, any_input()), 0..80),
        ) {
            let mut fsm = GateFsm::new(config);
            let mut model = Model::new(config);
            let mut now = 0i64;
            for (dt, input) in steps {
                now += dt;
                while let Some(at) = fsm.next_deadline().filter(|&at| at <= now) {
                    model.outputs(&fsm.tick(at))?;
                    model.check(&fsm, at)?;
                }
                model.input(input, now);
                model.outputs(&fsm.handle(input, now))?;
                model.check(&fsm, now)?;
            }
            now += 1;
            for input in [
                I::FireAlarm { contact_closed: config.fire_alarm_normally_closed },
                I::IoBoard { reachable: true },
            ] {
                model.input(input, now);
                model.outputs(&fsm.handle(input, now))?;
                model.check(&fsm, now)?;
            }
            model.outputs(&fsm.tick(now + 1_000_000))?;
            prop_assert!(!fsm.fire_alarm());
            prop_assert_eq!(model.coils, SignalSet::EMPTY);
            prop_assert_eq!(fsm.next_deadline(), None);
            prop_assert_eq!(model.grants, model.grant_ends, "every grant ends once");
        }

        /// A driver that ticks late gets the same outputs, in the same order,
        /// as a punctual one: `handle` applies due timeouts first.
        #[test]
        fn late_ticks_change_nothing_but_timing(
            config in any_config(),
            steps in prop::collection::vec((0i64..2_000, any_input()), 0..60),
        ) {
            let mut punctual = GateFsm::new(config);
            let mut late = GateFsm::new(config);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut now = 0i64;
            for (dt, input) in steps {
                now += dt;
                while let Some(at) = punctual.next_deadline().filter(|&at| at <= now) {
                    a.extend(punctual.tick(at));
                }
                a.extend(punctual.handle(input, now));
                b.extend(late.handle(input, now));
            }
            a.extend(punctual.tick(i64::MAX));
            b.extend(late.tick(i64::MAX));
            prop_assert_eq!(a, b);
        }
    }
}
