//! Test support for the end-to-end suites: a real Mosquitto broker on an
//! ephemeral port, an MQTT subscriber that decodes what the gate publishes,
//! and a gate fixture (site key, config file, simulated devices on
//! pseudo-terminals, identities) in a temporary folder.

use anyhow::{Context, Result, bail};
use gate_core::{Category, CivilDate, CredentialKind, IdNumber, PersonRecord, PersonStatus, SiteKey, UtcOffset};
use gate_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where Debian puts the broker; `PATH` is searched first.
fn mosquitto_binary() -> Result<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/local/sbin"]) {
        let candidate = Path::new(dir).join("mosquitto");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("mosquitto is not installed: the end-to-end tests need a real broker (apt-get install -y mosquitto)")
}

/// A free TCP port on loopback (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// SIGTERM to `child`, waited for up to `grace`, then SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub mod crash;
pub mod diskfull;
pub mod outage;
pub mod pki;
pub mod postgres;
pub mod privacy;

/// A Mosquitto broker started by the test, stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Lines for the listener (TLS files, `require_certificate`...) and
    /// general options; anonymous access is allowed unless they say otherwise.
    extra: String,
    /// `extra` is the whole configuration, listener included.
    complete: bool,
    /// The last start ended with the broker exiting before it listened
    /// (a port taken in the meantime, most often).
    exited_early: bool,
}

impl Mosquitto {
    pub fn start() -> Result<Self> {
        Self::start_with("allow_anonymous true\n")
    }

    /// A broker whose configuration has `extra` after its listener line:
    /// listener options (TLS) and general ones (`allow_anonymous`,
    /// `password_file`, `acl_file`).
    pub fn start_with(extra: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let broker = Mosquitto {
            child: None,
            port: free_port(),
            dir,
            extra: extra.to_owned(),
            complete: false,
            exited_early: false,
        };
        broker.first_start(|_| None)
    }

    /// A broker run from a complete configuration (a deployment example
    /// adapted by the test): `config` gets the broker's folder and the port
    /// to listen on, and returns the file's text. The log goes to the
    /// folder's `mosquitto.log` ([`Mosquitto::log`]).
    pub fn start_from(mut config: impl FnMut(&Path, u16) -> String) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut text_for = |dir: &Path, port: u16| {
            format!(
                "{}
user root
log_dest file {}
log_type all
",
                config(dir, port),
                dir.join("mosquitto.log").display()
            )
        };
        let port = free_port();
        let text = text_for(dir.path(), port);
        let broker = Mosquitto { child: None, port, dir, extra: text, complete: true, exited_early: false };
        broker.first_start(|b| Some(text_for(b.dir.path(), b.port)))
    }

    /// A broker for measurements: anonymous, no persistence, no bound on
    /// the messages queued or in flight for a client, and only errors
    /// logged (`log_type all` writes a line per message, which at a million
    /// messages costs more than the messages).
    pub fn start_quiet() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let text_for = |dir: &Path, port: u16| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n\
                 user root\nlog_dest file {}\nlog_type error\n",
                dir.join("mosquitto.log").display()
            )
        };
        let port = free_port();
        let text = text_for(dir.path(), port);
        let broker = Mosquitto { child: None, port, dir, extra: text, complete: true, exited_early: false };
        broker.first_start(|b| Some(text_for(b.dir.path(), b.port)))
    }

    /// The first start, on another free port when the chosen one was taken
    /// between `free_port` and the broker's bind (tests pick ports in
    /// parallel): `config_for` gives a complete configuration its new port.
    fn first_start(mut self, mut config_for: impl FnMut(&Mosquitto) -> Option<String>) -> Result<Self> {
        let mut attempt = 1;
        loop {
            match self.resume() {
                Ok(()) => return Ok(self),
                Err(e) if attempt < 5 && self.exited_early => {
                    attempt += 1;
                    self.port = free_port();
                    if let Some(text) = config_for(&self) {
                        self.extra = text;
                    }
                    eprintln!("mosquitto: {e:#}; trying port {} (attempt {attempt})", self.port);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The broker's folder (its configuration, log and data live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the broker logged so far (`log_type all`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker with SIGTERM, so it saves its sessions (the port
    /// stays reserved for `resume`).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }

    /// Starts the broker again on the same port.
    pub fn resume(&mut self) -> Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        // Persistence keeps the test subscriber's session (and the messages
        // queued for it) across a broker restart; `user root` keeps the
        // broker able to write its folder when the tests run as root.
        let store = self.dir.path().join("data");
        std::fs::create_dir_all(&store)?;
        if self.complete {
            std::fs::write(&conf, &self.extra)?;
        } else {
            std::fs::write(
                &conf,
                format!(
                    "listener {} 127.0.0.1\n{}\npersistence true\npersistence_location {}/\nuser root\n\
                 log_dest file {}\nlog_type all\n",
                    self.port,
                    self.extra,
                    store.display(),
                    self.dir.path().join("mosquitto.log").display(),
                ),
            )?;
        }
        // What the broker says before its log file is open (a port in use,
        // a configuration it refuses) goes to stderr: kept for the error.
        let stderr_path = self.dir.path().join("mosquitto.stderr");
        let mut child = Command::new(mosquitto_binary()?)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting mosquitto")?;
        self.exited_early = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                self.exited_early = true;
                let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let log = self.log();
                let lines: Vec<&str> = said.lines().chain(log.lines()).collect();
                let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
                bail!("mosquitto exited ({status}) before listening on port {}: {tail}", self.port);
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                bail!("mosquitto did not listen on port {} within 20 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message the subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// Subscribes to everything under a prefix and keeps what arrives.
#[derive(Debug, Clone)]
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl Subscriber {
    /// Connects, subscribes to `filter` and returns once the subscription is
    /// acknowledged. The session is persistent: across a broker restart
    /// nothing published for the subscriber is lost.
    pub async fn connect(port: u16, filter: &str) -> Result<Self> {
        Self::connect_with(port, filter, None).await
    }

    /// [`Subscriber::connect`] with a user name and password.
    pub async fn connect_as(port: u16, filter: &str, user: &str, password: &str) -> Result<Self> {
        Self::connect_with(port, filter, Some((user, password))).await
    }

    async fn connect_with(port: u16, filter: &str, credentials: Option<(&str, &str)>) -> Result<Self> {
        let mut options = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(false).set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let sink = messages.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _client = client;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            sink.lock().expect("lock").push(Received { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain });
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.context("no SUBACK within 10 s")??;
        Ok(Subscriber { messages, stop })
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().expect("lock").clone()
    }

    /// Every `GateEvent` received on `topic`, decoded, in arrival order.
    pub fn events(&self, topic: &str) -> Vec<pb::GateEvent> {
        self.messages()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| pb::GateEvent::decode(m.payload.as_slice()).expect("a GateEvent"))
            .collect()
    }

    /// Decision events only (passages, alarms and mode changes left out), in arrival order.
    pub fn decisions(&self, topic: &str) -> Vec<pb::GateEvent> {
        self.events(topic).into_iter().filter(|e| e.kind() == pb::EventKind::Decision).collect()
    }

    /// Decoded alerts received on `topic`, in arrival order.
    pub fn alerts(&self, topic: &str) -> Vec<pb::Alert> {
        self.messages()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| pb::Alert::decode(m.payload.as_slice()).expect("an Alert"))
            .collect()
    }

    /// Events deduplicated by `event_id` (delivery is at least once), first arrival kept.
    pub fn unique_events(&self, topic: &str) -> Vec<pb::GateEvent> {
        let mut seen = std::collections::HashSet::new();
        self.events(topic).into_iter().filter(|e| seen.insert(e.event_id.clone())).collect()
    }

    /// The last `GateStatus` received on `topic`.
    pub fn last_status(&self, topic: &str) -> Option<pb::GateStatus> {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .map(|m| pb::GateStatus::decode(m.payload.as_slice()).expect("a GateStatus"))
    }

    /// Waits until `done` holds for the subscriber, or fails after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Subscriber) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; received {} messages", self.messages().len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if Arc::strong_count(&self.messages) <= 2 {
            self.stop.cancel();
        }
    }
}

/// A person to put into the identity table.
#[derive(Debug, Clone)]
pub struct Person {
    pub person_id: &'static str,
    pub category: Category,
    pub id_number: &'static str,
    pub name: &'static str,
    pub status: PersonStatus,
}

/// A resident with a valid ID number (checked by `IdNumber::parse`).
pub fn resident(person_id: &'static str, id_number: &'static str, name: &'static str) -> Person {
    Person { person_id, category: Category::Resident, id_number, name, status: PersonStatus::Active }
}

/// A temporary gate: folder, site key, simulated devices, config file.
pub struct GateFixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub store_path: PathBuf,
    pub key: SiteKey,
    pub idcard: hw_sim::idcard::IdCardHandle,
    pub gate: hw_sim::gate::GateHandle,
    /// Present when the fixture was built with a QR scanner.
    pub qr: Option<hw_sim::qr::QrHandle>,
    /// Present when the fixture was built with a plate reader.
    pub plate: Option<hw_sim::plate::PlateHandle>,
}

/// What a fixture's gate looks like beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct FixtureOptions {
    /// `[gate] flexible = true`.
    pub flexible: bool,
    /// `[gate] lane = "vehicle"`.
    pub vehicle_lane: bool,
    /// A serial QR scanner (`[devices.qr_scanner]`).
    pub qr_scanner: bool,
    /// A plate reader (`[devices.plate_reader]`).
    pub plate_reader: bool,
    /// More TOML appended to the config (e.g. `[passes]`, `[policy.*]`).
    pub extra_toml: String,
    /// `[gate] anti_passback` value, if any.
    pub anti_passback: Option<&'static str>,
    /// More `key = value` lines for `[devices.gate]` (lamps, fire input...).
    pub gate_keys: String,
    /// The simulated IO board's wiring and timing, default when `None`.
    pub gate_sim: Option<hw_sim::gate::GateSimConfig>,
}

impl std::fmt::Debug for GateFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateFixture").field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

pub const SITE: &str = "heshan-c03";
pub const GATE: &str = "east-1";
pub const EVENTS_TOPIC: &str = "village/heshan-c03/east-1/events";
pub const STATUS_TOPIC: &str = "village/heshan-c03/east-1/status";

impl GateFixture {
    /// Builds the fixture; must be called inside a tokio runtime (the
    /// simulators run as tasks).
    pub fn new(mqtt_port: u16, people: &[Person]) -> Result<Self> {
        Self::build(mqtt_port, people, FixtureOptions::default())
    }

    /// A fixture with `options`; must be called inside a tokio runtime.
    pub fn build(mqtt_port: u16, people: &[Person], options: FixtureOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key_path = dir.path().join("site.key");
        gate_config::write_new_site_key(&key_path)?;
        let key = gate_config::load_site_key(&key_path)?;
        let idcard = hw_sim::idcard::IdCardSim::start(Some(&dir.path().join("idcard")))?;
        let gate = hw_sim::gate::GateSim::start(
            Some(&dir.path().join("gate-io")),
            options.gate_sim.clone().unwrap_or_default(),
        )?;
        let qr = if options.qr_scanner {
            Some(hw_sim::qr::QrSim::start(Some(&dir.path().join("qr")), hw_sim::qr::SimTerminator::Cr, None)?)
        } else {
            None
        };
        let plate = if options.plate_reader {
            Some(hw_sim::plate::PlateSim::start(Some(&dir.path().join("plate")))?)
        } else {
            None
        };
        let config_path = dir.path().join("gated.toml");
        std::fs::write(&config_path, config_text(mqtt_port, &options))?;
        let store_path = dir.path().join("state/gated.db");
        std::fs::create_dir_all(dir.path().join("state"))?;
        let fixture = GateFixture { dir, config_path, store_path, key, idcard, gate, qr, plate };
        fixture.import(people)?;
        Ok(fixture)
    }

    /// Writes people with arbitrary records and credentials.
    pub fn import_records(&self, rows: &[gate_store::NewPerson]) -> Result<()> {
        gate_store::Store::open(&self.store_path)?.import_people(rows)?;
        Ok(())
    }

    /// The keyed hash of a credential under this fixture's site key.
    pub fn credential_key(&self, kind: CredentialKind, value: &str) -> [u8; 32] {
        self.key.credential_key(kind, value)
    }

    pub fn config(&self) -> gate_config::Config {
        gate_config::load(&self.config_path).expect("the fixture's config is valid")
    }

    /// Writes people straight into the store (the CLI path has its own tests).
    pub fn import(&self, people: &[Person]) -> Result<()> {
        let mut store = gate_store::Store::open(&self.store_path)?;
        let from = CivilDate::try_new(2020, 1, 1).expect("date").start_ms(UtcOffset::CHINA);
        let to = CivilDate::try_new(2099, 12, 31).expect("date").end_ms(UtcOffset::CHINA);
        let rows: Vec<gate_store::NewPerson> = people
            .iter()
            .map(|p| {
                let id = IdNumber::parse(p.id_number).expect("fixture ID numbers are valid");
                let mut person = PersonRecord::new(p.person_id, p.category, p.status, from, to);
                person.display_name = p.name.into();
                gate_store::NewPerson {
                    person,
                    credentials: vec![(
                        CredentialKind::IdNumber,
                        self.key.credential_key(CredentialKind::IdNumber, id.expose()),
                    )],
                }
            })
            .collect();
        store.import_people(&rows)?;
        Ok(())
    }

    /// Places a card, waits until the reader has read it, and removes it.
    pub async fn present_card(&self, id_number: &str, name: &str) -> Result<()> {
        let before = self.idcard.base_info_reads();
        self.idcard.place(hw_sim::idcard::SimCard::resident(id_number, name));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.idcard.base_info_reads() == before {
            if Instant::now() > deadline {
                self.idcard.remove();
                bail!("the daemon did not read the card within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.idcard.remove();
        // A hand takes longer than a few polls to swap cards; the reader must
        // see the field empty before it reports the next card.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }
}

/// An ID number whose check digit is wrong: refused (`invalid_id_number`,
/// with an alert) wherever it is presented.
pub const FORGED_ID: &str = "350203199001011237";

/// The coil [`MARKER_LAMP_KEYS`] wires the red lamp to (no test unlocks it).
pub const MARKER_LAMP: u16 = 7;

/// `[devices.gate]` keys (for [`FixtureOptions::gate_keys`]) that light a
/// red lamp on [`MARKER_LAMP`] for 1 ms at every refusal, so each refusal
/// leaves one coil write of its own: what [`GateFixture::settle_gate`] waits for.
pub const MARKER_LAMP_KEYS: &str = "red_lamp_coil = 7\nindicator_ms = 1\n";

impl GateFixture {
    /// The events this gate queued and did not send yet (with no broker,
    /// every one), in outbox order.
    pub fn queued_events(&self) -> Vec<pb::GateEvent> {
        let store = gate_store::Store::open(&self.store_path).expect("store");
        store
            .outbox_after(0, 1000)
            .expect("outbox")
            .into_iter()
            .filter(|e| e.stream == gate_sync::EVENT_STREAM)
            .map(|e| pb::GateEvent::decode(e.payload.as_slice()).expect("a GateEvent"))
            .collect()
    }

    /// How many times the unlock coils (0 and 1) were switched on.
    pub fn unlock_writes(&self) -> usize {
        self.gate.coil_writes().iter().filter(|w| w.coil < 2 && w.on).count()
    }

    /// A later marker through the whole gate path, for a test about to
    /// assert that something did NOT happen at the board: presents a forged
    /// card and waits until its refusal, and every refusal before it, lit
    /// the red lamp. Decisions reach the board in order, so by then every
    /// coil write of every earlier decision has been made; a grant sent in
    /// place of a refusal leaves the lamp one short and fails here. Needs
    /// [`MARKER_LAMP_KEYS`] and a board that answers; adds one refusal and
    /// one alert.
    pub async fn settle_gate(&self, daemon: &RunningDaemon) -> Result<()> {
        let blocked = || daemon.observed.decisions.blocked.load(std::sync::atomic::Ordering::Relaxed) as usize;
        // This daemon's refusals only: an earlier one's were all written before it stopped.
        let lit = || {
            self.gate.coil_writes().iter().filter(|w| w.coil == MARKER_LAMP && w.on && w.at >= daemon.started).count()
        };
        let marker = blocked() + 1;
        self.present_card(FORGED_ID, "伪造").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while blocked() < marker || lit() != blocked() {
            if Instant::now() > deadline {
                bail!("the gate did not settle: {} refusals, the red lamp lit {} times", blocked(), lit());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

fn config_text(mqtt_port: u16, options: &FixtureOptions) -> String {
    let gate_keys = &options.gate_keys;
    let mut text = format!(
        r#"[site]
id = "{SITE}"

[gate]
id = "{GATE}"
lane = "pedestrian"
direction = "entry"

[store]
path = "state/gated.db"
# Small: every test daemon writes its ballast. No disk_low alert from the
# host's own disk in tests about something else.
ballast_mb = 1
disk_low_percent = 0

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keep_alive_s = 5

[identity]
hmac_key_file = "site.key"

[devices.id_card]
port = "idcard"
poll_interval_ms = 50

[devices.gate]
driver = "modbus-rtu"
port = "gate-io"
baud = 9600
unit_id = 1
unlock_entry_coil = 0
unlock_exit_coil = 1
unlock_mode = "pulse"
unlock_ms = 200
passage_entry_input = 0
passage_exit_input = 1
poll_interval_ms = 50
{gate_keys}"#
    );
    if options.qr_scanner {
        text.push_str("\n[devices.qr_scanner]\nport = \"qr\"\nterminator = \"cr\"\n");
    }
    if options.plate_reader {
        text.push_str("\n[devices.plate_reader]\nport = \"plate\"\nmin_confidence = 0.8\n");
    }
    let mut gate_extra = String::new();
    if options.flexible {
        gate_extra.push_str("flexible = true\n");
    }
    if let Some(apb) = options.anti_passback {
        gate_extra.push_str(&format!("anti_passback = \"{apb}\"\n"));
    }
    let text = text.replace("direction = \"entry\"\n", &format!("direction = \"entry\"\n{gate_extra}"));
    let text =
        if options.vehicle_lane { text.replace("lane = \"pedestrian\"\n", "lane = \"vehicle\"\n") } else { text };
    // A test that writes its own [platform] table starts it with
    // `platform_toml()`, so the gate still trusts the test platform's key.
    let platform = if options.extra_toml.contains("[platform]") { String::new() } else { platform_toml() };
    format!("{text}\n{platform}\n{}", options.extra_toml)
}

/// The id the fixtures' gates know the test platform's key by.
pub const PLATFORM_KEY_ID: &str = "test-platform";

/// The test platform's signing key (one per test process, so its envelope
/// counters only ever increase).
pub fn platform_key() -> Arc<hw_sim::platform::PlatformKey> {
    static KEY: std::sync::OnceLock<Arc<hw_sim::platform::PlatformKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::new(hw_sim::platform::PlatformKey::from_seed([0x5e; 32], Some(PLATFORM_KEY_ID)))).clone()
}

/// A `[platform]` table trusting the test platform's key; more keys of the
/// table may follow on the next lines.
pub fn platform_toml() -> String {
    format!("[platform]\nsigning_keys = [\"{}\"]\n", platform_key().key_spec())
}

/// The stream a downlink topic carries, from its last segments.
pub fn stream_of_topic(topic: &str) -> &'static str {
    const STREAMS: [(&str, &str); 8] = [
        ("/health/resp", "health_resp"),
        ("/mode", "mode"),
        ("/identity", "identity"),
        ("/health", "health"),
        ("/trust", "trust"),
        ("/heartbeat", "heartbeat"),
        ("/keys", "keys"),
        ("/reset", "reset"),
    ];
    STREAMS.iter().find(|(suffix, _)| topic.ends_with(suffix)).map_or("unknown", |(_, stream)| stream)
}

/// `payload` sealed by the test platform for the fixture's site on the
/// stream `topic` carries (for one gate when the topic is a gate's own).
pub fn seal_for(topic: &str, payload: &[u8]) -> Vec<u8> {
    let stream = stream_of_topic(topic);
    let gate = if topic.contains(&format!("/{GATE}/")) { GATE } else { "" };
    platform_key().seal(SITE, gate, stream, payload)
}

/// Publishes `payload` sealed by the test platform (see [`seal_for`]).
pub async fn publish_signed(port: u16, topic: &str, payload: Vec<u8>, retain: bool) -> Result<()> {
    publish(port, topic, seal_for(topic, &payload), retain).await
}

/// A child process (the real `gated`), killed and reaped if the test
/// fails half-way.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The daemon running in-process on a fixture.
#[derive(Debug)]
pub struct RunningDaemon {
    pub shutdown: CancellationToken,
    pub observed: Arc<gate_app::Observed>,
    /// When it was started: what the board did before is another daemon's.
    pub started: Instant,
    handle: tokio::task::JoinHandle<Result<(), gate_app::StartError>>,
}

impl RunningDaemon {
    pub fn start(config: gate_config::Config) -> Self {
        let shutdown = CancellationToken::new();
        let observed = Arc::new(gate_app::Observed::default());
        let started = Instant::now();
        let handle = tokio::spawn(gate_app::run_observed(config, shutdown.clone(), observed.clone()));
        RunningDaemon { shutdown, observed, started, handle }
    }

    /// Stops the daemon and waits for every task to finish.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .context("daemon did not stop within 10 s")???;
        Ok(())
    }

    /// Waits until the uplink is connected and its downlink subscriptions granted.
    pub async fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Subscribed, not just connected: a platform order published between
        // CONNACK and SUBACK would be lost, and a test waiting for its effect
        // would time out on a loaded machine.
        while !self.observed.downlink_subscribed() {
            if Instant::now() > deadline {
                bail!("the daemon did not connect to the broker and subscribe within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Installs a test log subscriber once (output captured by the test harness).
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

/// Publishes one message as the platform would (QoS 1), and waits for the
/// broker's acknowledgement.
pub async fn publish(port: u16, topic: &str, payload: Vec<u8>, retain: bool) -> Result<()> {
    let mut options = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5)).set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.publish(topic, QoS::AtLeastOnce, retain, payload).await?;
    let acked = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("publish failed: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked).await.context("no PUBACK within 10 s")??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(())
}

/// A `ModeChange` as the platform sends it.
pub fn mode_change(mode: pb::Mode, effective_at_ms: i64, issued_by: &str) -> Vec<u8> {
    pb::ModeChange { mode: mode as i32, effective_at_ms, issued_by: issued_by.into(), reason: "test".into() }
        .encode_to_vec()
}

pub const ALERTS_TOPIC: &str = "village/heshan-c03/alerts";
pub const MODE_TOPIC: &str = "village/heshan-c03/mode";
pub const IDENTITY_TOPIC: &str = "village/heshan-c03/identity";
pub const SYNC_TOPIC: &str = "village/heshan-c03/east-1/sync";
