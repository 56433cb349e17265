//! The gate's real hardware behaviour, end to end: the safety state machine
//! driven by the simulated Modbus IO board's inputs (played from scenario
//! steps), its alarms as events and alerts through a real Mosquitto, the
//! fire alarm release in every mode, the indicator lamps, every SAM status
//! code, and unplugging the reader's and the board's cables over and over.

use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use gate_tests::{
    ALERTS_TOPIC, EVENTS_TOPIC, FORGED_ID, FixtureOptions, GateFixture, Mosquitto, RunningDaemon, Subscriber,
    init_test_logging, resident,
};
use hw_sim::gate::GateSimConfig;
use hw_sim::play::{Target, play};
use hw_sim::script::{Device, parse_script_for};
use hw_sim::{StatusFault, StatusTarget};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
/// Valid check character, but nobody in the identity table.
const STRANGER: &str = "440524188001010014";

const WAIT: Duration = Duration::from_secs(10);

/// Coils: 0 unlock entry, 1 unlock exit, 2 green, 3 red, 4 buzzer.
/// Inputs: 0 / 1 passage entry / exit, 2 beam, 3 intrusion, 4 fire (NC).
const ENTRY: u16 = 0;
const EXIT: u16 = 1;
const GREEN: u16 = 2;
const RED: u16 = 3;
const BUZZER: u16 = 4;

const GATE_KEYS: &str = "green_lamp_coil = 2
red_lamp_coil = 3
buzzer_coil = 4
indicator_ms = 400
beam_input = 2
intrusion_input = 3
fire_alarm_input = 4
pass_timeout_ms = 5000
held_open_ms = 1000
";

/// The simulated board wired as above; a person walks through `walk_ms`
/// after an unlock (`None`: nobody does).
fn board(walk_ms: Option<u64>) -> GateSimConfig {
    let defaults = GateSimConfig::default();
    GateSimConfig {
        fire_input: Some(4),
        auto_passage: if walk_ms.is_some() { defaults.auto_passage.clone() } else { Vec::new() },
        auto_passage_delay: Duration::from_millis(walk_ms.unwrap_or(300)),
        ..defaults
    }
}

fn options(walk_ms: Option<u64>) -> FixtureOptions {
    FixtureOptions { gate_keys: GATE_KEYS.to_owned(), gate_sim: Some(board(walk_ms)), ..Default::default() }
}

/// A broker, a subscriber, a fixture with one resident, the daemon running.
struct Rig {
    _broker: Mosquitto,
    sub: Subscriber,
    fx: GateFixture,
    daemon: RunningDaemon,
}

impl Rig {
    async fn start(options: FixtureOptions) -> Result<Rig> {
        Self::start_with(options, |_| Ok(())).await
    }

    /// `prepare` runs on the fixture before the daemon starts.
    async fn start_with(options: FixtureOptions, prepare: impl FnOnce(&GateFixture) -> Result<()>) -> Result<Rig> {
        init_test_logging();
        let broker = Mosquitto::start()?;
        let sub = Subscriber::connect(broker.port(), "village/#").await?;
        let fx = GateFixture::build(broker.port(), &[resident("p-001", ZHANG, "张三")], options)?;
        prepare(&fx)?;
        let daemon = RunningDaemon::start(fx.config());
        daemon.wait_connected().await?;
        wait_for("the gate IO board", || daemon.observed.gate_io.snapshot().connected).await?;
        Ok(Rig { _broker: broker, sub, fx, daemon })
    }

    /// Plays gate scenario steps on the simulated board.
    async fn gate(&self, script: &str) -> Result<()> {
        let steps = parse_script_for(script, Device::Gate).map_err(|e| anyhow::anyhow!("{e}"))?;
        play(Target::Gate(&self.fx.gate), &steps, |line| tracing::info!("{line}")).await;
        Ok(())
    }

    /// Alarm names of the alarm-kind events received, in order.
    fn alarm_events(&self) -> Vec<String> {
        self.sub
            .unique_events(EVENTS_TOPIC)
            .into_iter()
            .filter(|e| e.kind() == pb::EventKind::Alarm)
            .map(|e| e.alarm)
            .collect()
    }

    fn alerts(&self, name: &str) -> Vec<pb::Alert> {
        self.sub.alerts(ALERTS_TOPIC).into_iter().filter(|a| a.alarm == name).collect()
    }

    fn passages(&self) -> Vec<pb::Direction> {
        self.sub
            .unique_events(EVENTS_TOPIC)
            .into_iter()
            .filter(|e| e.kind() == pb::EventKind::Passage)
            .map(|e| e.side())
            .collect()
    }

    /// Waits for `n` alarm events named `name` and at least one alert of it
    /// (an alarm that is also an alert).
    async fn wait_alarm(&self, name: &str, n: usize, alert: bool) -> Result<()> {
        let what = format!("{n} `{name}` event(s)");
        wait_for(&what, || self.alarm_events().iter().filter(|a| *a == name).count() >= n).await?;
        if alert {
            wait_for(&format!("the `{name}` alert"), || !self.alerts(name).is_empty()).await?;
        }
        Ok(())
    }

    fn on_writes(&self, coil: u16) -> usize {
        self.fx.gate.coil_writes().iter().filter(|w| w.coil == coil && w.on).count()
    }

    async fn stop(self) -> Result<()> {
        self.daemon.stop().await
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn door_forced_by_a_passage_without_a_grant_or_by_the_intrusion_input() -> Result<()> {
    let rig = Rig::start(options(None)).await?;
    rig.gate("passage entry\n").await?;
    rig.wait_alarm("door_forced", 1, true).await?;
    rig.gate("intrusion on\nwait 200\nintrusion off\n").await?;
    rig.wait_alarm("door_forced", 2, true).await?;
    // The second within the quiet period repeats the open alert.
    wait_for("the repeated alert", || rig.alerts("door_forced").len() == 2).await?;
    let alerts = rig.alerts("door_forced");
    assert_eq!(alerts[0].alert_id, alerts[1].alert_id);
    assert_eq!((alerts[0].repeat_count, alerts[1].repeat_count), (1, 2));
    assert!(alerts[0].subject.is_empty() && alerts[0].person_id.is_empty(), "no person behind a gate alarm");
    assert_eq!(rig.passages(), [], "a forced passage is no passage");
    assert_eq!((rig.on_writes(ENTRY), rig.on_writes(EXIT)), (0, 0));
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_open_when_a_passage_sensor_stays_active() -> Result<()> {
    let rig = Rig::start(options(None)).await?;
    let started = Instant::now();
    rig.gate("input 0 on\n").await?;
    rig.wait_alarm("held_open", 1, true).await?;
    assert!(started.elapsed() >= Duration::from_millis(1000), "held_open_ms is 1000");
    rig.gate("input 0 off\n").await?;
    assert_eq!(rig.alarm_events(), ["door_forced", "held_open"]);
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailgating_on_a_second_body_or_the_beam_during_a_grant() -> Result<()> {
    // The granted person takes a second to walk through.
    let rig = Rig::start(options(Some(1000))).await?;
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the granted passage", || rig.passages().len() == 1).await?;
    // A second body on the same grant, within its window (once the first
    // has cleared the sensor, and the daemon has polled it clear).
    wait_for("the sensor clear", || !rig.fx.gate.input(0)).await?;
    rig.gate("wait 150\npassage entry\n").await?;
    rig.wait_alarm("tailgating", 1, true).await?;

    // The beam breaks while the next grant is still open.
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the second unlock", || rig.on_writes(ENTRY) == 2).await?;
    rig.gate("beam on\nwait 100\nbeam off\n").await?;
    rig.wait_alarm("tailgating", 2, true).await?;
    wait_for("the second granted passage", || rig.passages().len() == 2).await?;
    assert_eq!(rig.passages(), [pb::Direction::Entry, pb::Direction::Entry]);
    assert_eq!(rig.daemon.observed.decisions.passages.load(Ordering::Relaxed), 2, "passages recorded once each");
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_passage_while_the_other_side_is_granted() -> Result<()> {
    let rig = Rig::start(options(Some(1000))).await?;
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the entry unlock", || rig.on_writes(ENTRY) == 1).await?;
    rig.gate("passage exit\n").await?;
    rig.wait_alarm("reverse_passage", 1, true).await?;
    let alert = &rig.alerts("reverse_passage")[0];
    assert_eq!(alert.facts.get("side").map(String::as_str), Some("exit"));
    // The granted person still walks in.
    wait_for("the granted passage", || rig.passages() == [pb::Direction::Entry]).await?;
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_alarm_holds_every_unlock_on_until_it_clears() -> Result<()> {
    let rig = Rig::start(options(None)).await?;
    let before = rig.fx.gate.coil_writes().len();
    rig.gate("fire on\n").await?;
    rig.wait_alarm("fire_alarm", 1, true).await?;
    wait_for("every unlock coil on", || rig.fx.gate.coil(ENTRY) && rig.fx.gate.coil(EXIT)).await?;

    // Nothing relocks during the alarm: not a card, not a crowd, not time.
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the decision", || rig.daemon.observed.decisions.passed.load(Ordering::Relaxed) == 1).await?;
    rig.gate("passage exit\nwait 300\npassage exit\nwait 1200\n").await?;
    assert!(rig.fx.gate.coil(ENTRY) && rig.fx.gate.coil(EXIT), "still free egress");
    assert!(!rig.alarm_events().iter().any(|a| a == "door_forced" || a == "tailgating"), "{:?}", rig.alarm_events());
    let writes = rig.fx.gate.coil_writes();
    assert!(writes[before..].iter().filter(|w| w.coil <= EXIT).all(|w| w.on), "no relock write: {writes:?}");

    rig.gate("fire off\n").await?;
    rig.wait_alarm("fire_alarm_cleared", 1, true).await?;
    wait_for("every unlock coil off", || !rig.fx.gate.coil(ENTRY) && !rig.fx.gate.coil(EXIT)).await?;
    let events = rig.alarm_events();
    let fire = events.iter().position(|a| a == "fire_alarm");
    let cleared = events.iter().position(|a| a == "fire_alarm_cleared");
    assert!(fire < cleared, "{events:?}");
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_board_is_io_lost_and_nothing_unlocks_until_it_is_back() -> Result<()> {
    let rig = Rig::start(options(Some(300))).await?;
    rig.gate("silent on\n").await?;
    rig.wait_alarm("io_lost", 1, true).await?;
    assert!(!rig.daemon.observed.gate_io.snapshot().connected);

    // The decision is made and recorded, the gate stays shut.
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the decision", || rig.daemon.observed.decisions.passed.load(Ordering::Relaxed) == 1).await?;
    rig.wait_alarm("not_passed", 1, false).await?;
    rig.gate("silent off\n").await?;
    rig.wait_alarm("io_restored", 1, false).await?;
    // A later refusal's red lamp: the board takes commands in order, so a
    // late grant would have been written before it.
    rig.fx.present_card(FORGED_ID, "伪造").await?;
    wait_for("the later refusal's red lamp", || rig.on_writes(RED) == 1).await?;
    assert_eq!(rig.on_writes(ENTRY), 0, "the refused grant was never executed late");
    let health = rig.daemon.observed.gate_io.snapshot();
    assert!(health.timeouts >= 3 && health.reconnects >= 3, "{health:?}");

    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the unlock after the board came back", || rig.on_writes(ENTRY) == 1).await?;
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wartime_on_a_flexible_gate_blocks_the_resident_yet_the_fire_alarm_opens_every_unlock() -> Result<()> {
    let options = FixtureOptions { flexible: true, ..options(None) };
    let rig = Rig::start_with(options, |fx| {
        let config = fx.config();
        let mut store = gate_store::Store::open(&config.store.path)?;
        gate_app::set_mode_locally(
            &mut store,
            &config,
            gate_core::Mode::Wartime,
            "li.wei",
            "lockdown",
            gate_app::wall_clock_ms(),
        )?;
        Ok(())
    })
    .await?;
    rig.fx.present_card(ZHANG, "张三").await?;
    rig.sub.wait_until(WAIT, "the wartime decision", |s| s.decisions(EVENTS_TOPIC).len() == 1).await?;
    let closed = rig.sub.decisions(EVENTS_TOPIC)[0].clone();
    assert_eq!((closed.decision(), closed.reason()), (pb::Decision::Block, pb::Reason::CheckpointClosed));
    wait_for("the red lamp", || rig.on_writes(RED) == 1).await?;
    assert_eq!((rig.on_writes(ENTRY), rig.on_writes(EXIT)), (0, 0));

    rig.gate("fire on\n").await?;
    wait_for("every unlock coil on", || rig.fx.gate.coil(ENTRY) && rig.fx.gate.coil(EXIT)).await?;
    rig.wait_alarm("fire_alarm", 1, true).await?;
    let alert = &rig.alerts("fire_alarm")[0];
    assert_eq!(alert.mode(), pb::Mode::Wartime);
    // Lockdown does not close a fire exit: a card now changes nothing.
    rig.fx.present_card(ZHANG, "张三").await?;
    rig.sub.wait_until(WAIT, "the second decision", |s| s.decisions(EVENTS_TOPIC).len() == 2).await?;
    rig.gate("fire off\n").await?;
    wait_for("every unlock coil off", || !rig.fx.gate.coil(ENTRY) && !rig.fx.gate.coil(EXIT)).await?;
    // Each unlock coil went on once for the fire and off once at its end
    // (the later marker): the refusal in between switched nothing off.
    for coil in [ENTRY, EXIT] {
        let writes: Vec<bool> = rig.fx.gate.coil_writes().iter().filter(|w| w.coil == coil).map(|w| w.on).collect();
        let from_fire = writes.iter().position(|on| *on).expect("the fire's unlock");
        assert_eq!(writes[from_fire..], [true, false], "coil {coil}: on for the fire, off only at its end");
    }
    rig.stop().await
}

/// How long `coil` was on at its first on/off pair of writes.
fn first_on_span(fx: &GateFixture, coil: u16) -> Option<Duration> {
    let writes: Vec<_> = fx.gate.coil_writes().into_iter().filter(|w| w.coil == coil).collect();
    let on = writes.iter().position(|w| w.on)?;
    let off = writes[on..].iter().find(|w| !w.on)?;
    Some(off.at - writes[on].at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_lamp_on_a_pass_red_lamp_and_buzzer_on_a_block_for_indicator_ms() -> Result<()> {
    let rig = Rig::start(options(Some(300))).await?;
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the green lamp on and off", || first_on_span(&rig.fx, GREEN).is_some()).await?;
    let green = first_on_span(&rig.fx, GREEN).context("green span")?;
    assert!(green >= Duration::from_millis(380) && green < Duration::from_millis(1500), "green lit {green:?}");
    assert_eq!((rig.on_writes(RED), rig.on_writes(BUZZER)), (0, 0));

    rig.fx.present_card(STRANGER, "陌生人").await?;
    wait_for("the red lamp and the buzzer on and off", || {
        first_on_span(&rig.fx, RED).is_some() && first_on_span(&rig.fx, BUZZER).is_some()
    })
    .await?;
    for coil in [RED, BUZZER] {
        let span = first_on_span(&rig.fx, coil).context("span")?;
        assert!(span >= Duration::from_millis(380) && span < Duration::from_millis(1500), "coil {coil} lit {span:?}");
    }
    assert_eq!((rig.on_writes(GREEN), rig.on_writes(ENTRY)), (1, 1), "the stranger got no green and no unlock");
    rig.stop().await
}

/// Every SW3 code of docs/PROTOCOLS.md §1.
const SAM_STATUSES: [u8; 18] =
    [0x90, 0x91, 0x9F, 0x10, 0x11, 0x21, 0x23, 0x24, 0x31, 0x32, 0x33, 0x40, 0x41, 0x47, 0x60, 0x66, 0x80, 0x81];
/// Authentication failures, counted apart.
const AUTH_STATUSES: [u8; 5] = [0x23, 0x31, 0x32, 0x33, 0x66];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sam_status_is_a_counted_device_error_never_a_decision_or_an_unlock() -> Result<()> {
    let rig = Rig::start(options(Some(300))).await?;
    let health = || rig.daemon.observed.id_card.snapshot();
    let decisions = || {
        let d = &rig.daemon.observed.decisions;
        d.passed.load(Ordering::Relaxed) + d.blocked.load(Ordering::Relaxed) + d.failed.load(Ordering::Relaxed)
    };
    for code in SAM_STATUSES {
        let before = health();
        if code == 0x90 {
            // "OK" is an error only where it makes no sense: as the answer
            // to a find card (with no card on the reader).
            rig.fx.idcard.inject_status(StatusFault { code, target: Some(StatusTarget::Find), sticky: true });
        } else {
            // A card on the reader whose every read answers `code`.
            rig.fx.idcard.inject_status(StatusFault { code, target: Some(StatusTarget::Read), sticky: true });
            rig.fx.idcard.place(hw_sim::SimCard::resident(ZHANG, "张三"));
        }
        let auth = AUTH_STATUSES.contains(&code);
        let what = format!("status {code:02X} counted");
        wait_for(&what, || {
            let now = health();
            if auth { now.auth_errors > before.auth_errors } else { now.status_errors > before.status_errors }
        })
        .await?;
        rig.fx.idcard.remove();
        rig.fx.idcard.clear_status();
        let after = health();
        if auth {
            assert_eq!(after.status_errors, before.status_errors, "{code:02X} is an auth error only");
        } else {
            assert_eq!(after.auth_errors, before.auth_errors, "{code:02X} is no auth error");
        }
        assert!(after.last_error.is_some_and(|e| e.contains(&format!("{code:#04x}"))), "{code:02X} logged");
        // Let the reader see the field empty before the next code.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // The reader still works afterwards; and that card, read after every
    // status, is the later marker: a status taken for a card would have
    // been decided before it.
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the unlock", || rig.on_writes(ENTRY) == 1).await?;
    assert_eq!(decisions(), 1, "no status is a card: the one decision is the real card's");
    assert_eq!(rig.daemon.observed.decisions.passed.load(Ordering::Relaxed), 1);
    assert_eq!(rig.daemon.observed.decisions.unreadable_cards.load(Ordering::Relaxed), 0);
    assert_eq!((rig.on_writes(ENTRY), rig.on_writes(EXIT)), (1, 0));
    assert_eq!(rig.fx.idcard.base_info_reads(), 1);
    rig.stop().await
}

const REPLUGS: u64 = 20;
const RECOVERY: Duration = Duration::from_secs(2);

/// Waits for the `n`th replug, then returns when it happened (measured from
/// the moment this task saw it, which is no earlier).
async fn replugged(replugs: impl Fn() -> u64, n: u64) -> Result<Instant> {
    let deadline = Instant::now() + WAIT;
    while replugs() < n {
        if Instant::now() > deadline {
            bail!("the simulator did not replug");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_unplugged_20_times_reads_a_card_within_2_s_of_each_replug() -> Result<()> {
    let rig = Rig::start(options(Some(100))).await?;
    let mut worst = Duration::ZERO;
    for n in 1..=REPLUGS {
        rig.fx.idcard.unplug(Duration::from_millis(300));
        let back = replugged(|| rig.fx.idcard.replugs(), n).await?;
        let reads = rig.fx.idcard.base_info_reads();
        rig.fx.idcard.place(hw_sim::SimCard::resident(ZHANG, "张三"));
        while rig.fx.idcard.base_info_reads() == reads {
            if back.elapsed() > RECOVERY {
                bail!("replug {n}: no card read within {RECOVERY:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst = worst.max(back.elapsed());
        rig.fx.idcard.remove();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tracing::info!(?worst, "slowest recovery of the reader");
    wait_for("every card decided", || rig.daemon.observed.decisions.passed.load(Ordering::Relaxed) == REPLUGS).await?;
    assert!(rig.daemon.observed.id_card.snapshot().reconnects >= REPLUGS);
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_io_board_unplugged_20_times_takes_a_coil_write_within_2_s_of_each_replug() -> Result<()> {
    let rig = Rig::start(options(Some(100))).await?;
    let mut worst = Duration::ZERO;
    for n in 1..=REPLUGS {
        let writes = rig.fx.gate.coil_writes().len();
        rig.fx.gate.unplug(Duration::from_millis(300));
        let back = replugged(|| rig.fx.gate.replugs(), n).await?;
        // The driver writes every coil first thing on reconnecting.
        while rig.fx.gate.coil_writes().len() == writes {
            if back.elapsed() > RECOVERY {
                bail!("replug {n}: no coil write within {RECOVERY:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst = worst.max(back.elapsed());
        wait_for("the board reachable again", || rig.daemon.observed.gate_io.snapshot().connected).await?;
    }
    tracing::info!(?worst, "slowest recovery of the IO board");
    rig.wait_alarm("io_lost", REPLUGS as usize, true).await?;
    rig.wait_alarm("io_restored", REPLUGS as usize, false).await?;
    // Fail-secure all along, and the gate works after it all.
    assert_eq!(rig.on_writes(ENTRY), 0);
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the unlock", || rig.on_writes(ENTRY) == 1).await?;
    rig.stop().await
}

/// Every problem a driver counts, from one `DeviceHealth` snapshot.
macro_rules! errors {
    ($h:expr) => {{
        let h = $h;
        h.checksum_errors
            + h.length_errors
            + h.garbage_bytes
            + h.timeouts
            + h.reconnects
            + h.status_errors
            + h.auth_errors
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misbehaviour_of_the_board_and_the_reader_is_a_counted_error_never_an_unlock() -> Result<()> {
    let rig = Rig::start(options(Some(300))).await?;
    let gate_health = || rig.daemon.observed.gate_io.snapshot();
    for (step, undo) in [
        ("garbage 16", ""),
        ("corrupt 1", ""),
        ("truncate 1", ""),
        ("slow 700", "slow 0"),
        ("status 04 read", ""),
        ("unplug 200", ""),
    ] {
        let before = errors!(gate_health());
        rig.gate(&format!("{step}\n")).await?;
        wait_for(&format!("gate `{step}` counted"), || errors!(gate_health()) > before).await?;
        if !undo.is_empty() {
            rig.gate(&format!("{undo}\n")).await?;
        }
        assert!(gate_health().last_error.is_some(), "`{step}` logged");
        wait_for("the board back", || gate_health().connected).await?;
    }

    let reader_health = || rig.daemon.observed.id_card.snapshot();
    for (step, undo) in [
        ("garbage 16", ""),
        ("corrupt 1", ""),
        ("truncate 1", ""),
        ("slow 1500", "slow 0"),
        ("status 24", ""),
        ("silent on", "silent off"),
        ("unplug 200", ""),
    ] {
        let before = errors!(reader_health());
        let steps = parse_script_for(&format!("{step}\n"), Device::IdCard).map_err(|e| anyhow::anyhow!("{e}"))?;
        play(Target::IdCard(&rig.fx.idcard), &steps, |_| {}).await;
        wait_for(&format!("reader `{step}` counted"), || errors!(reader_health()) > before).await?;
        if !undo.is_empty() {
            let steps = parse_script_for(&format!("{undo}\n"), Device::IdCard).map_err(|e| anyhow::anyhow!("{e}"))?;
            play(Target::IdCard(&rig.fx.idcard), &steps, |_| {}).await;
        }
        // Skipped line noise is counted and logged, not a failure.
        assert!(step.starts_with("garbage") || reader_health().last_error.is_some(), "`{step}` recorded");
        // Healthy again (late replies drained) before the next misbehaviour.
        let ok = reader_health().frames_ok;
        wait_for("the reader answering again", || reader_health().frames_ok >= ok + 3).await?;
    }
    let d = &rig.daemon.observed.decisions;
    let decided = d.passed.load(Ordering::Relaxed) + d.blocked.load(Ordering::Relaxed);
    assert_eq!((decided, rig.on_writes(ENTRY), rig.on_writes(EXIT)), (0, 0, 0));

    // Nothing got stuck: the next card is decided and unlocks.
    rig.fx.present_card(ZHANG, "张三").await?;
    wait_for("the unlock", || rig.on_writes(ENTRY) == 1).await?;
    rig.stop().await
}
