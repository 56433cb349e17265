//! The gate-control task: owns the gate safety state machine
//! ([`gate_engine::gate_fsm::GateFsm`]) and stands between the decision loop
//! and the IO board driver.
//!
//! In: grants and denies from the decision loop (each already durably
//! recorded), input snapshots and reachability from the driver, and the
//! machine's own deadlines. Out: coil commands to the driver, and the
//! machine's events into the outbox (passages, `not_passed`, alarms), the
//! alarms also as alerts.
//!
//! Rules that shape this file:
//! - Coil commands go out before anything is recorded, and this task never
//!   waits on the database: records are handed to the store's own thread
//!   ([`StoreThread::try_submit`]) and written there, so a relock, a fire
//!   alarm release or a passage is never late behind an fsync or a draining
//!   outbox, and the gate keeps working when the database does not (its
//!   failures are counted and logged).
//! - Grants that were given but not yet passed are in the store (written
//!   with the decision); at start they are resumed, so the passage that
//!   follows a restart is a passage, not a forced door.
//! - Time is read once per input: a monotonic instant for the machine (a
//!   wall clock step must not fire or stretch timeouts) and the wall clock
//!   for what is recorded. The machine itself never reads a clock.
//! - The first snapshot after a (re)connect is a baseline for the passage
//!   sensors: a body already in the passage when the board came back is no
//!   passage this task saw happen.

use crate::activity::{Activity, GateActivity};
use crate::alerts::AlertBook;
use crate::decide::DecisionCounters;
use gate_config::{Config, GateIoConfig, Side};
use gate_core::UnixMillis;
use gate_devices::gate_io::{GateCommand, GateIoEvent, GateIoSettings, InputLevels};
use gate_engine::gate_fsm::{
    GateFsm, GateFsmConfig, GateFsmEvent, GateInput, GateOutput, Signal, SignalSet, UnlockMode,
};
use gate_store::{PendingGrant, Priority, Store, StoreThread};
use gate_sync::{ALERT_STREAM, AlertRecord, EVENT_STREAM, EventBody, EventContext, encode_alert, encode_event};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// What the decision loop tells the gate, once the decision is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateRequest {
    /// Let one person through on this side.
    Grant { side: Side },
    /// Refused: red lamp and buzzer.
    Deny,
}

/// The driver's settings for a configured gate: every wired coil and input.
pub(crate) fn driver_settings(io: &GateIoConfig) -> GateIoSettings {
    let wiring = Wiring::new(io);
    GateIoSettings {
        port: io.port.clone(),
        baud: io.baud,
        unit_id: io.unit_id,
        coils: wiring.coils.iter().map(|&(_, coil)| coil).collect(),
        inputs: wiring.inputs().collect(),
        poll_interval: io.poll_interval,
        request_timeout: Duration::from_millis(500),
        failures_before_lost: 3,
        // The board drops an unlock relay itself after `unlock_ms`; the
        // state machine still switches it off earlier at a passage.
        board_timed: io.unlock_mode.board_timed().then(|| gate_devices::gate_io::BoardTimed {
            coils: vec![io.unlock_entry_coil, io.unlock_exit_coil],
            width: io.unlock,
        }),
    }
}

/// The state machine's timings and wiring for a configured gate.
pub(crate) fn fsm_config(io: &GateIoConfig) -> GateFsmConfig {
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let wiring = Wiring::new(io);
    GateFsmConfig {
        // Both configured modes are the machine's pulse: the coil is on for
        // `unlock_ms` or until the passage, whichever comes first, and the
        // grant stays open for `pass_timeout_ms`. That is exactly what
        // `[devices.gate] unlock_mode = "level"` documents (a held level cut
        // by the passage or by `unlock_ms`); "pulse" only differs by its
        // shorter default. The machine's own level mode would hold the coil
        // for the whole `pass_timeout_ms` and ignore `unlock_ms`. With
        // "board_timed" the board also times the pulse (see the driver).
        unlock_mode: UnlockMode::Pulse,
        unlock_ms: ms(io.unlock),
        pass_timeout_ms: ms(io.pass_timeout),
        held_open_ms: ms(io.held_open),
        indicator_ms: ms(io.indicator),
        fire_alarm_normally_closed: io.fire_alarm_normally_closed,
        io_loss_is_fire_alarm: io.io_loss_is_fire_alarm,
        fire_alarm_io_loss_ms: ms(io.fire_alarm_io_loss),
        wired: SignalSet::of(&wiring.coils.iter().map(|&(signal, _)| signal).collect::<Vec<_>>()),
    }
}

/// Which channel carries which signal.
#[derive(Debug, Clone)]
struct Wiring {
    coils: Vec<(Signal, u16)>,
    passage: [u16; 2],
    fire: Option<u16>,
    beam: Option<u16>,
    intrusion: Option<u16>,
}

impl Wiring {
    fn new(io: &GateIoConfig) -> Self {
        let mut coils = vec![(Signal::UnlockEntry, io.unlock_entry_coil), (Signal::UnlockExit, io.unlock_exit_coil)];
        for (signal, coil) in [
            (Signal::GreenLamp, io.green_lamp_coil),
            (Signal::RedLamp, io.red_lamp_coil),
            (Signal::Buzzer, io.buzzer_coil),
        ] {
            coils.extend(coil.map(|c| (signal, c)));
        }
        Wiring {
            coils,
            passage: [io.passage_entry_input, io.passage_exit_input],
            fire: io.fire_alarm_input,
            beam: io.beam_input,
            intrusion: io.intrusion_input,
        }
    }

    fn coil(&self, signal: Signal) -> Option<u16> {
        self.coils.iter().find(|&&(s, _)| s == signal).map(|&(_, coil)| coil)
    }

    fn inputs(&self) -> impl Iterator<Item = u16> + '_ {
        self.passage.into_iter().chain(self.fire).chain(self.beam).chain(self.intrusion)
    }
}

const SIDES: [Side; 2] = [Side::Entry, Side::Exit];

/// Turns the driver's level snapshots into the machine's inputs: only
/// changes, fire contact first (so a crowd leaving in the same snapshot is
/// free egress, not forced entries), then intrusion, beam, passages.
#[derive(Debug)]
struct InputMap {
    wiring: Wiring,
    /// The levels the machine was given, by signal.
    fire: Option<bool>,
    beam: bool,
    intrusion: bool,
    passage: [bool; 2],
    /// A passage sensor found active by a baseline snapshot: ignored until
    /// it is seen low.
    masked: [bool; 2],
    /// The next snapshot follows a (re)connect.
    baseline: bool,
}

impl InputMap {
    fn new(wiring: Wiring) -> Self {
        InputMap {
            wiring,
            fire: None,
            beam: false,
            intrusion: false,
            passage: [false; 2],
            masked: [false; 2],
            baseline: true,
        }
    }

    /// The board was lost: its next snapshot is a baseline again.
    fn lost(&mut self) {
        self.baseline = true;
    }

    fn translate(&mut self, levels: &InputLevels) -> Vec<GateInput> {
        let baseline = std::mem::take(&mut self.baseline);
        let mut out = Vec::new();
        if let Some(closed) = self.wiring.fire.and_then(|i| levels.get(i))
            && self.fire != Some(closed)
        {
            self.fire = Some(closed);
            out.push(GateInput::FireAlarm { contact_closed: closed });
        }
        if let Some(active) = self.wiring.intrusion.and_then(|i| levels.get(i))
            && self.intrusion != active
        {
            self.intrusion = active;
            out.push(GateInput::Intrusion { active });
        }
        if let Some(active) = self.wiring.beam.and_then(|i| levels.get(i))
            && self.beam != active
        {
            self.beam = active;
            out.push(GateInput::Beam { active });
        }
        for (i, side) in SIDES.into_iter().enumerate() {
            let Some(active) = levels.get(self.wiring.passage[i]) else { continue };
            if !active {
                self.masked[i] = false;
            } else if self.masked[i] || (baseline && !self.passage[i]) {
                self.masked[i] = true;
                continue;
            }
            if self.passage[i] != active {
                self.passage[i] = active;
                out.push(GateInput::PassageSensor { side, active });
            }
        }
        out
    }
}

/// The task's fixed parts and its state.
pub(crate) struct GateControl {
    fsm: GateFsm,
    inputs: InputMap,
    /// Only ever handed jobs without waiting ([`StoreThread::try_submit`]).
    store: StoreThread,
    /// Grants from before the restart, resumed when the task starts.
    resumed: Vec<PendingGrant>,
    driver: mpsc::Sender<GateCommand>,
    outbox_changed: Arc<Notify>,
    counters: Arc<DecisionCounters>,
    context: EventContext,
    config: Config,
    alerts: AlertBook,
    reloads: Option<watch::Receiver<Config>>,
    /// The machine's time zero.
    origin: Instant,
    /// The fire alarm state the driver was last told.
    fire_told: bool,
    /// The IO board is lost (between `IoLost` and `IoRestored`): a grant
    /// that ends unpassed then was refused by a device fault, not by the
    /// person, and is a warning.
    io_lost: bool,
}

impl GateControl {
    pub(crate) fn new(
        config: &Config,
        io: &GateIoConfig,
        store: StoreThread,
        resumed: Vec<PendingGrant>,
        driver: mpsc::Sender<GateCommand>,
        outbox_changed: Arc<Notify>,
        counters: Arc<DecisionCounters>,
    ) -> Self {
        GateControl {
            fsm: GateFsm::new(fsm_config(io)),
            inputs: InputMap::new(Wiring::new(io)),
            store,
            resumed,
            driver,
            outbox_changed,
            counters,
            context: crate::event_context(config),
            config: config.clone(),
            alerts: AlertBook::new(config.alerts.quiet_period.as_millis() as i64),
            reloads: None,
            origin: Instant::now(),
            fire_told: false,
            io_lost: false,
        }
    }

    /// Runs until `shutdown`. The driver does its own shutdown writes (it
    /// knows whether a fire alarm holds the unlocks).
    pub(crate) async fn run(
        mut self,
        mut requests: mpsc::Receiver<GateRequest>,
        mut io_events: mpsc::Receiver<GateIoEvent>,
        shutdown: CancellationToken,
    ) {
        let mut requests_open = true;
        let mut io_open = true;
        self.resume_grants().await;
        loop {
            let deadline = self.fsm.next_deadline().map(|ms| self.instant_of(ms));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                request = requests.recv(), if requests_open => match request {
                    Some(request) => {
                        let input = match request {
                            GateRequest::Grant { side } => GateInput::Grant { side },
                            GateRequest::Deny => GateInput::Deny,
                        };
                        self.handle(&[input]).await;
                    }
                    None => requests_open = false,
                },
                event = io_events.recv(), if io_open => match event {
                    Some(GateIoEvent::Inputs(levels)) => {
                        let inputs = self.inputs.translate(&levels);
                        self.handle(&inputs).await;
                    }
                    Some(GateIoEvent::Reachable(reachable)) => {
                        if !reachable {
                            self.inputs.lost();
                        }
                        self.handle(&[GateInput::IoBoard { reachable }]).await;
                    }
                    None => io_open = false,
                },
                () = sleep_until(deadline) => {
                    let (now, wall) = self.clocks();
                    let outputs = self.fsm.tick(now);
                    self.act(outputs, wall).await;
                }
            }
        }
    }

    /// Grants recorded before a restart whose passage is still awaited
    /// (read by the caller before this task starts): the machine expects
    /// their passage, without unlocking again.
    async fn resume_grants(&mut self) {
        let (_, wall) = self.clocks();
        for grant in std::mem::take(&mut self.resumed) {
            let Some(side) = Side::parse(&grant.side) else { continue };
            let Ok(remaining_ms) = u32::try_from(grant.deadline_ms.saturating_sub(wall)) else { continue };
            if remaining_ms == 0 {
                continue;
            }
            info!(side = side.as_str(), remaining_ms, "a grant from before the restart awaits its passage");
            self.handle(&[GateInput::Resume { side, remaining_ms }]).await;
        }
    }

    /// The machine's time now, and the wall clock, each read once.
    fn clocks(&self) -> (i64, UnixMillis) {
        let now = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        (now, crate::wall_clock_ms())
    }

    fn instant_of(&self, ms: i64) -> Instant {
        self.origin + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    async fn handle(&mut self, inputs: &[GateInput]) {
        if inputs.is_empty() {
            return;
        }
        let (now, wall) = self.clocks();
        let mut outputs = Vec::new();
        for &input in inputs {
            debug!(?input, "gate input");
            outputs.extend(self.fsm.handle(input, now));
        }
        self.act(outputs, wall).await;
    }

    /// Coils first, then the records.
    async fn act(&mut self, outputs: Vec<GateOutput>, wall: UnixMillis) {
        let fire = self.fsm.fire_alarm();
        if fire != self.fire_told {
            self.fire_told = fire;
            self.command(GateCommand::FireAlarm(fire)).await;
        }
        let mut events = Vec::new();
        for output in outputs {
            match output {
                GateOutput::SetCoil { signal, on } => match self.inputs.wiring.coil(signal) {
                    Some(coil) => {
                        self.command(GateCommand::SetCoil { coil, on }).await;
                        self.publish_unlock(signal, on, wall);
                    }
                    // The machine only drives wired signals.
                    None => debug!(signal = signal.as_str(), "unwired signal"),
                },
                GateOutput::Event(event) => events.push(event),
            }
        }
        for event in events {
            self.record(event, wall);
        }
    }

    /// Unlock coil changes go to the live feed (`gatectl tail`).
    fn publish_unlock(&self, signal: Signal, on: bool, now: UnixMillis) {
        let side = match signal {
            Signal::UnlockEntry => Side::Entry,
            Signal::UnlockExit => Side::Exit,
            Signal::GreenLamp | Signal::RedLamp | Signal::Buzzer => return,
        };
        let event = if on { GateActivity::Unlocked } else { GateActivity::Relocked };
        self.counters.activity.publish(Activity::Gate {
            at_ms: now,
            event,
            side: Some(side.as_str().to_owned()),
            detail: None,
        });
    }

    /// `&mut self` rather than `&self`: the future stays `Send` (the store
    /// connection is `Send` but not `Sync`).
    async fn command(&mut self, command: GateCommand) {
        // The driver never waits on this task, so waiting for room here
        // cannot deadlock; it only ever lags by a Modbus exchange.
        if self.driver.send(command).await.is_err() {
            warn!("gate IO driver is not running; the gate stays as it is");
        }
    }

    fn record(&mut self, event: GateFsmEvent, now: UnixMillis) {
        let name = event.as_str();
        let side = match event {
            GateFsmEvent::Passage { side }
            | GateFsmEvent::NotPassed { side }
            | GateFsmEvent::ReversePassage { side } => Some(side),
            _ => None,
        };
        let alarm = matches!(
            event,
            GateFsmEvent::DoorForced
                | GateFsmEvent::HeldOpen
                | GateFsmEvent::Tailgating
                | GateFsmEvent::ReversePassage { .. }
                | GateFsmEvent::FireAlarm
                | GateFsmEvent::FireAlarmCleared
                | GateFsmEvent::IoLost
        );
        match event {
            GateFsmEvent::Passage { side } => {
                self.counters.passages.fetch_add(1, Ordering::Relaxed);
                info!(side = side.as_str(), "passage");
            }
            GateFsmEvent::NotPassed { side } if self.io_lost => {
                // A device fault refused a pass the engine granted: shown by
                // `journalctl -p warning`, unlike a person who walked away.
                warn!(side = side.as_str(), "unlock refused: gate IO board offline; the gate stays locked")
            }
            GateFsmEvent::NotPassed { side } => info!(side = side.as_str(), "granted but not passed"),
            GateFsmEvent::IoRestored => {
                self.io_lost = false;
                info!("gate IO board answers again")
            }
            GateFsmEvent::IoLost => {
                self.io_lost = true;
                warn!(alarm = name, "gate alarm")
            }
            _ => warn!(alarm = name, side = side.map(Side::as_str), "gate alarm"),
        }
        let body = match event {
            GateFsmEvent::Passage { side } => EventBody::Passage { side: crate::wire_side(side) },
            _ => EventBody::Alarm { name: name.to_owned() },
        };
        // A passage or an unpassed grant ends the oldest pending grant of
        // its side.
        let grant_ended = match event {
            GateFsmEvent::Passage { side } | GateFsmEvent::NotPassed { side } => Some(side.as_str()),
            _ => None,
        };
        let alert = alarm.then(|| self.alert_record(name, side, now));
        let priority =
            if matches!(event, GateFsmEvent::Passage { .. }) { Priority::Routine } else { Priority::Important };
        let context = self.context.clone();
        let counters = self.counters.clone();
        let outbox_changed = self.outbox_changed.clone();
        let span = tracing::Span::current();
        let job = move |store: &mut Store| {
            let _entered = span.enter();
            let mode = crate::decide::mode_in_force(store.mode_schedule(), now);
            let record = context.record(now, mode, body);
            let written = store.write(|w| {
                let seq = w.append_event(EVENT_STREAM, priority, now, |seq| encode_event(&record, seq))?;
                if let Some(side) = grant_ended {
                    w.end_pending_grant(side, now)?;
                }
                let alert_seq = match alert {
                    Some(mut alert) => {
                        alert.mode = mode;
                        let seq =
                            w.append_event(ALERT_STREAM, Priority::Important, now, |seq| encode_alert(&alert, seq))?;
                        Some((seq, alert.repeat_count))
                    }
                    None => None,
                };
                Ok((seq, alert_seq))
            });
            let seq = match written {
                Ok((seq, alert)) => {
                    debug!(seq, event = name, "gate event recorded");
                    if let Some((alert_seq, repeat)) = alert {
                        warn!(seq = alert_seq, alarm = name, repeat, "alert to the management departments");
                    }
                    outbox_changed.notify_one();
                    Some(seq)
                }
                Err(e) => {
                    counters.store_error(&e);
                    error!(error = %e, event = name, "could not record a gate event");
                    None
                }
            };
            counters.activity.publish(activity(event, side, now, seq));
        };
        if let Err(e) = self.store.try_submit(job) {
            error!(error = %e, event = name, "could not record a gate event");
            self.counters.activity.publish(activity(event, side, now, None));
        }
    }

    /// Follows configuration reloads for what this task applies live: the
    /// alerts' quiet period (everything else it was built from needs a
    /// restart).
    pub(crate) fn following_reloads(mut self, reloads: watch::Receiver<Config>) -> Self {
        self.reloads = Some(reloads);
        self
    }

    /// The alert an alarm raises; its mode is filled in where it is written.
    fn alert_record(&mut self, name: &'static str, side: Option<Side>, now: UnixMillis) -> AlertRecord {
        if let Some(reloads) = &mut self.reloads
            && reloads.has_changed().unwrap_or(false)
        {
            self.config.alerts = reloads.borrow_and_update().alerts.clone();
            self.alerts.set_quiet_period(self.config.alerts.quiet_period);
        }
        // Repeats of one alarm within the quiet period raise the open
        // alert's count, like refusals of one person.
        let facts = side.map(|s| ("side".to_owned(), s.as_str().to_owned())).into_iter().collect();
        self.alerts.alarm(&self.config, "gate", name, facts, now)
    }
}

/// What `gatectl tail` shows of a gate event.
fn activity(event: GateFsmEvent, side: Option<Side>, at_ms: UnixMillis, seq: Option<u64>) -> Activity {
    match (event, side) {
        (GateFsmEvent::Passage { .. }, Some(side)) => Activity::Passage { at_ms, seq, side: side.as_str().to_owned() },
        _ => Activity::Alarm { at_ms, seq, name: event.as_str().to_owned() },
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiring() -> Wiring {
        Wiring {
            coils: vec![(Signal::UnlockEntry, 0), (Signal::UnlockExit, 1), (Signal::GreenLamp, 5)],
            passage: [0, 1],
            fire: Some(4),
            beam: Some(2),
            intrusion: Some(3),
        }
    }

    /// Levels of inputs 0..=4 from a bit pattern (bit n = input n).
    fn levels(bits: u8) -> InputLevels {
        (0..5u16).map(|i| (i, bits & (1 << i) != 0)).collect()
    }

    #[test]
    fn fire_comes_first_and_only_changes_pass() {
        let mut map = InputMap::new(wiring());
        // Baseline: the fire contact closed (input 4) is news; nothing else.
        assert_eq!(map.translate(&levels(0b1_0000)), [GateInput::FireAlarm { contact_closed: true }]);
        assert!(map.translate(&levels(0b1_0000)).is_empty());
        // The contact opens while two bodies rush through the exit with the
        // beam broken: the fire alarm reaches the machine first.
        assert_eq!(
            map.translate(&levels(0b0_0110)),
            [
                GateInput::FireAlarm { contact_closed: false },
                GateInput::Beam { active: true },
                GateInput::PassageSensor { side: Side::Exit, active: true },
            ]
        );
        assert_eq!(
            map.translate(&levels(0b0_1000)),
            [
                GateInput::Intrusion { active: true },
                GateInput::Beam { active: false },
                GateInput::PassageSensor { side: Side::Exit, active: false },
            ]
        );
    }

    #[test]
    fn a_passage_sensor_active_at_connect_is_no_passage_until_it_falls() {
        let mut map = InputMap::new(wiring());
        assert_eq!(map.translate(&levels(0b1_0001)), [GateInput::FireAlarm { contact_closed: true }]);
        // Still held, and another input changes: still masked.
        assert_eq!(map.translate(&levels(0b1_0101)), [GateInput::Beam { active: true }]);
        assert_eq!(map.translate(&levels(0b1_0100)), []);
        // The next body is a passage.
        assert_eq!(map.translate(&levels(0b1_0101)), [GateInput::PassageSensor { side: Side::Entry, active: true }]);
        // Lost with the sensor high, back with it high: the machine already
        // knows it is high, so nothing is repeated; once low it falls.
        map.lost();
        assert_eq!(map.translate(&levels(0b1_0101)), []);
        assert_eq!(map.translate(&levels(0b1_0100)), [GateInput::PassageSensor { side: Side::Entry, active: false }]);
        // Lost with it low, back with it high: a baseline, masked.
        map.lost();
        assert_eq!(map.translate(&levels(0b1_0101)), []);
    }

    const GATE_CONFIG: &str = r#"[site]
id = "heshan-c03"
[gate]
id = "east-1"
[store]
path = "gated.db"
[mqtt]
host = "127.0.0.1"
port = 1883
[identity]
hmac_key_file = "site.key"
[devices.gate]
driver = "modbus-rtu"
port = "gate-io"
unlock_entry_coil = 0
unlock_exit_coil = 1
passage_entry_input = 0
passage_exit_input = 1
unlock_mode = "pulse"
unlock_ms = 200
pass_timeout_ms = 1000
"#;

    /// Alarms raised after a reload follow its quiet period.
    #[tokio::test]
    async fn a_reloaded_quiet_period_reaches_the_gates_alarms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = gate_config::parse(&dir.path().join("gated.toml"), GATE_CONFIG).expect("config");
        let io = config.devices.gate.clone().expect("gate");
        let store = StoreThread::open(&config.store.path, "gate").await.expect("store");
        let (driver_tx, _driver) = mpsc::channel(16);
        let (reload_tx, reloads) = watch::channel(config.clone());
        let counters = Arc::new(DecisionCounters::default());
        let mut control =
            GateControl::new(&config, &io, store, Vec::new(), driver_tx, Arc::new(Notify::new()), counters)
                .following_reloads(reloads);
        let first = control.alert_record("door_forced", None, 0);
        let repeat = control.alert_record("door_forced", None, 1_000);
        assert_eq!((repeat.alert_id == first.alert_id, repeat.repeat_count), (true, 2), "within the default 300 s");
        let mut reloaded = config.clone();
        reloaded.alerts.quiet_period = Duration::ZERO;
        reload_tx.send(reloaded).expect("send");
        let after = control.alert_record("door_forced", None, 1_001);
        assert_ne!(after.alert_id, first.alert_id, "a quiet period of zero opens a new alert");
        assert_eq!(after.repeat_count, 1);
    }

    /// A relock is timed by this task alone: with the store wedged (its
    /// thread stuck in a job, its queue full), the unlock coil still goes
    /// off exactly `unlock_ms` after it went on, and gate events that cannot
    /// be handed over are dropped with an error, never waited for.
    #[tokio::test(start_paused = true)]
    async fn a_relock_never_waits_for_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = GATE_CONFIG;
        let config = gate_config::parse(&dir.path().join("gated.toml"), text).expect("config");
        let io = config.devices.gate.clone().expect("gate");
        let store = StoreThread::open(&config.store.path, "wedged").await.expect("store");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        store
            .try_submit(move |_| {
                let _ = stuck.recv();
            })
            .expect("wedge");
        while store.try_submit(|_| {}).is_ok() {}
        let (driver_tx, mut driver) = mpsc::channel(16);
        let (requests_tx, requests) = mpsc::channel(4);
        let (_io_tx, io_events) = mpsc::channel(4);
        let counters = Arc::new(DecisionCounters::default());
        let control =
            GateControl::new(&config, &io, store, Vec::new(), driver_tx, Arc::new(Notify::new()), counters.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control.run(requests, io_events, shutdown.clone()));

        requests_tx.send(GateRequest::Grant { side: Side::Entry }).await.expect("send");
        assert_eq!(driver.recv().await, Some(GateCommand::SetCoil { coil: 0, on: true }));
        let unlocked = Instant::now();
        assert_eq!(driver.recv().await, Some(GateCommand::SetCoil { coil: 0, on: false }));
        assert_eq!(unlocked.elapsed(), Duration::from_millis(200), "relocked on time");
        // The grant lapses unpassed: its event cannot be handed over, and the
        // task goes on serving the next grant on time.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        requests_tx.send(GateRequest::Grant { side: Side::Exit }).await.expect("send");
        assert_eq!(driver.recv().await, Some(GateCommand::SetCoil { coil: 1, on: true }));
        let unlocked = Instant::now();
        assert_eq!(driver.recv().await, Some(GateCommand::SetCoil { coil: 1, on: false }));
        assert_eq!(unlocked.elapsed(), Duration::from_millis(200), "relocked on time");
        shutdown.cancel();
        task.await.expect("stopped");
        drop(release);
    }

    #[test]
    fn unwired_inputs_are_never_fed() {
        let mut map = InputMap::new(Wiring { fire: None, beam: None, intrusion: None, ..wiring() });
        assert_eq!(map.translate(&levels(0b1_1100)), []);
        let driver = map.wiring.inputs().collect::<Vec<_>>();
        assert_eq!(driver, [0, 1]);
    }
}
