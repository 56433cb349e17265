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

/// Which way through the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Entry,
    Exit,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Entry, Side::Exit];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Entry => "entry",
            Side::Exit => "exit",
        }
    }

    /// The other way through.
    pub fn opposite(self) -> Side {
        match self {
            Side::Entry => Side::Exit,
            Side::Exit => Side::Entry,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Entry => 0,
            Side::Exit => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    pub const ALL: [Signal; 5] = [
        Signal::UnlockEntry,
        Signal::UnlockExit,
        Signal::GreenLamp,
        Signal::RedLamp,
        Signal::Buzzer,
    ];

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
}

/// What the machine reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateFsmEvent {
    /// A granted passage completed.
    Passage { side: Side },
    /// A grant ended without its passage (timeout, superseded, refused,
    /// or overtaken by a fire alarm or an IO loss).
    NotPassed { side: Side },
    DoorForced,
    HeldOpen,
    Tailgating,
    /// A passage the wrong way while the other side was granted.
    ReversePassage { side: Side },
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
        for side in Side::BOTH {
            let state = &mut self.sides[side.index()];
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
            GateInput::Deny => {
                // A lost board can't light anything; a late lamp would
                // mislead the next person.
                if self.io_lost_since.is_none() {
                    self.red_until = Some(after(now, self.config.indicator_ms));
                }
            }
            GateInput::PassageSensor { side, active } => {
                let state = &mut self.sides[side.index()];
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
                let granted_passage = self
                    .sides
                    .iter()
                    .any(|s| s.grant.is_some() || s.completing);
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
        let state = &mut self.sides[side.index()];
        if state.grant.is_some() {
            // One grant, one body: the newer grant takes over the unlock.
            out.push(not_passed);
        }
        let deadline = after(now, self.config.pass_timeout_ms);
        let coil_until = match self.config.unlock_mode {
            UnlockMode::Pulse => after(now, self.config.unlock_ms).min(deadline),
            UnlockMode::Level => deadline,
        };
        state.grant = Some(Grant {
            deadline,
            coil_until,
            coil_on: true,
        });
    }

    /// A passage completed on `side` (the sensor's rising edge).
    fn passage(&mut self, side: Side, now: i64, out: &mut Vec<GateOutput>) {
        if self.fire_alarm() {
            // Free egress: nobody is granted, nobody is forcing.
            return;
        }
        let other_granted = self.sides[side.opposite().index()].grant.is_some();
        let state = &mut self.sides[side.index()];
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
        for side in Side::BOTH {
            let state = &mut self.sides[side.index()];
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
            for side in Side::BOTH {
                if self.sides[side.index()].grant.is_some_and(|g| g.coil_on) {
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
mod tests;
