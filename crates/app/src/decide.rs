//! The decision loop: one task that owns the store connection used for
//! decisions (on its own thread, [`StoreThread`]). For each credential it
//! reads the facts (identity table, watchlist, pass state, anti-passback,
//! mode, health record) in one call, lets the engine decide, writes
//! everything the decision changes (event, pass use, anti-passback, pending
//! grant, alert) in one transaction, and only after that commit commands the
//! gate. A fact that cannot be read, or a transaction that does not commit,
//! leaves the gate shut.

use crate::alerts::AlertBook;
use crate::gate_control::GateRequest;
use gate_config::{Config, Side};
use gate_core::{
    BlockReason, CivilDate, CredentialKind, Decision, Lane, Mode, ModeSchedule, SiteKey, UnixMillis, Verdict,
};
use gate_devices::idcard::CardEvent;
use gate_devices::plate_reader::{PlateEvent, PlateRead};
use gate_devices::qr_scanner::QrEvent;
use gate_devices::sam::CardError;
use gate_engine::{AntiPassback, Attempt, CredentialFacts, GateContext, HealthCheck, LastPassage, PassFacts, decide};
use gate_pass::PlatformKeys;
use gate_store::{PassbackEntry, Priority, Store, StoreError, StoreThread};
use gate_sync::{ALERT_STREAM, AlertRecord, EVENT_STREAM, EventBody, EventRecord, encode_alert, encode_event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Counts of what the loop did, for diagnostics, metrics and tests.
#[derive(Debug, Default)]
pub struct DecisionCounters {
    pub passed: AtomicU64,
    pub blocked: AtomicU64,
    /// Attempts that could not be decided or recorded (the gate stayed shut).
    pub failed: AtomicU64,
    /// Card reads the reader could not make sense of (no decision made).
    pub unreadable_cards: AtomicU64,
    /// QR frames that were not usable (not UTF-8, too long).
    pub unreadable_qr: AtomicU64,
    /// Plate reads below the confidence threshold or malformed (not decisions).
    pub unusable_plates: AtomicU64,
    pub passages: AtomicU64,
    pub alerts: AtomicU64,
    /// Blocks by reason name.
    pub blocked_by_reason: Mutex<HashMap<&'static str, u64>>,
    /// Health certificates that verified and wait for their holder's card.
    pub certificates_verified: AtomicU64,
    /// Online health checks the platform answered in time.
    pub health_online_answers: AtomicU64,
    /// Online health checks that timed out.
    pub health_online_timeouts: AtomicU64,
    /// Online health checks not sent because the gate was offline.
    pub health_online_unavailable: AtomicU64,
    /// Time to gather, decide and record each decided attempt (metrics).
    pub latency: crate::metrics::LatencyHistogram,
    /// Stamped on every turn of the loop: the watchdog's evidence it is not stuck.
    pub heartbeat: crate::heartbeat::Heartbeat,
    /// Decisions, alerts and gate events as they happen (`gatectl tail`).
    pub activity: crate::activity::ActivityFeed,
    /// Store failures by class (decision loop, gate control, control socket).
    pub store_errors: crate::store_health::StoreErrors,
}

impl DecisionCounters {
    fn count_block(&self, reason: BlockReason) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let mut by = self.blocked_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *by.entry(reason.as_str()).or_default() += 1;
    }

    /// An attempt that failed on the store: the gate stayed shut.
    pub(crate) fn failed_on(&self, error: &StoreError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.store_errors.count(error);
    }

    pub(crate) fn store_error(&self, error: &StoreError) {
        self.store_errors.count(error);
    }

    /// Blocks so far for one reason.
    pub fn blocked_for(&self, reason: BlockReason) -> u64 {
        let by = self.blocked_by_reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        by.get(reason.as_str()).copied().unwrap_or(0)
    }
}

/// A credential presented at one side of the gate.
#[derive(Debug)]
pub(crate) enum Presented {
    Card(CardEvent, Side),
    Qr(QrEvent, Side),
    Plate(PlateEvent, Side),
}

/// The trust list for health certificates: the configured file plus the
/// list synced from the platform, rebuilt when the synced version or the
/// configured file changes (a reload empties it).
#[derive(Debug, Default)]
struct TrustCache {
    list: gate_dcc::TrustList,
    /// (synced version, configured file) the list was built from.
    built_from: Option<(u64, Option<std::path::PathBuf>)>,
}

impl TrustCache {
    async fn refresh(&mut self, store: &StoreThread, config: &Config) {
        let version = store.call(|s| s.trust_list_version()).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the synced trust list");
            0
        });
        let file = config.health.trust_list_file.clone();
        if self.built_from.as_ref() == Some(&(version, file.clone())) {
            return;
        }
        let synced = match store.call(|s| s.trust_list()).await {
            Ok(synced) => synced,
            Err(e) => {
                warn!(error = %e, "cannot read the synced trust list");
                None
            }
        };
        let mut list = match &file {
            Some(path) => gate_dcc::TrustList::load_pem_or_base64_file(path).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "cannot load the trust list file");
                gate_dcc::TrustList::new()
            }),
            None => gate_dcc::TrustList::new(),
        };
        for der in synced.map(|(_, ders)| ders).unwrap_or_default() {
            if let Err(e) = list.add_certificate_der(&der) {
                warn!(error = %e, "a synced signer certificate was refused");
            }
        }
        debug!(signers = list.len(), version, "trust list for health certificates ready");
        self.list = list;
        self.built_from = Some((version, file));
    }
}

/// What the loop remembers between two credentials of one transaction (a
/// health certificate before its holder's ID card, a visitor pass before
/// the visitor's card): personal data, so kept no longer than its window
/// and never more than `cap` of it, whatever the mode (in a mode without
/// health checks nothing ever reads the certificates: they must still go).
#[derive(Debug)]
struct Recent<T> {
    items: std::collections::VecDeque<(UnixMillis, T)>,
    cap: usize,
}

impl<T> Recent<T> {
    fn new(cap: usize) -> Self {
        Recent { items: std::collections::VecDeque::with_capacity(cap), cap }
    }

    /// Keeps `item` seen at `now`, after dropping what expired; past `cap`,
    /// the oldest goes.
    fn push(&mut self, now: UnixMillis, window_ms: i64, item: T) {
        self.prune(now, window_ms);
        while self.items.len() >= self.cap {
            self.items.pop_front();
        }
        self.items.push_back((now, item));
    }

    /// Drops everything older than `window_ms` at `now`.
    fn prune(&mut self, now: UnixMillis, window_ms: i64) {
        self.items.retain(|(at, _)| now - at <= window_ms);
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, item)| item)
    }
}

/// At most this many verified certificates wait for their holder's card
/// (a vaccination and a test, presented twice: still a handful).
const RECENT_CERTIFICATES_MAX: usize = 8;
/// At most this many visitor passes wait for their visitor's card.
const RECENT_PASSES_MAX: usize = 64;

/// A valid visitor pass seen recently: a visitor's ID card read soon after
/// counts as covered by it.
#[derive(Debug, Clone)]
struct RecentPass {
    visitor_id_hash: String,
}

pub(crate) struct DecisionLoop {
    site_key: SiteKey,
    store: StoreThread,
    outbox_changed: Arc<Notify>,
    gate: Option<mpsc::Sender<GateRequest>>,
    counters: Arc<DecisionCounters>,
    config: Config,
    passes: PlatformKeys,
    /// The uplink's count of key rotations `passes` was built at (`None`:
    /// build it again before the next pass), so a signed rotation applies
    /// to passes as to every other platform message.
    passes_at_rotation: Option<u64>,
    recent_passes: Recent<RecentPass>,
    alerts: AlertBook,
    /// The signer certificates health certificates are checked against.
    trust: TrustCache,
    recent_certificates: Recent<RecentCertificate>,
    /// Why the last health certificate was refused (a fact for its alert).
    certificate_failure: Option<String>,
    /// Online health checks go to the uplink through here.
    health_queries: Option<mpsc::Sender<gate_sync::HealthQuery>>,
    /// The mode last logged by [`Self::watch_mode`].
    mode_seen: Option<Mode>,
    /// The platform's freshness and the trusted time floor (the uplink keeps them).
    platform: Arc<gate_sync::LinkState>,
    /// Configurations applied on SIGHUP, swapped in between two decisions.
    reload: Option<tokio::sync::watch::Receiver<Config>>,
}

/// Facts gathered for one attempt, before the engine runs.
struct Gathered {
    credential: CredentialKind,
    facts: CredentialFacts,
    subject: String,
    /// The keyed hash of the credential, when it has one.
    key: Option<[u8; 32]>,
    pass_id: Option<String>,
    visitor_id_hash: Option<String>,
    /// From an ID card: the name and birth date a health certificate must match.
    holder: Option<(String, Option<gate_core::CivilDate>)>,
}

/// A signed health certificate verified at the scanner, waiting for the ID
/// card of the same transaction.
#[derive(Debug, Clone)]
struct RecentCertificate {
    certificate: gate_dcc::VerifiedCertificate,
}

impl DecisionLoop {
    pub(crate) fn new(
        config: &Config,
        site_key: SiteKey,
        store: StoreThread,
        outbox_changed: Arc<Notify>,
        gate: Option<mpsc::Sender<GateRequest>>,
        counters: Arc<DecisionCounters>,
    ) -> Self {
        // The keys every platform message is verified with (config keys
        // are checked points: `[passes] platform_keys` folded in).
        let passes = PlatformKeys::from_specs(config.envelope_keys());
        DecisionLoop {
            site_key,
            store,
            outbox_changed,
            gate,
            counters,
            config: config.clone(),
            passes,
            passes_at_rotation: None,
            recent_passes: Recent::new(RECENT_PASSES_MAX),
            alerts: AlertBook::new(config.alerts.quiet_period.as_millis() as i64),
            reload: None,
            trust: TrustCache::default(),
            recent_certificates: Recent::new(RECENT_CERTIFICATES_MAX),
            certificate_failure: None,
            health_queries: None,
            mode_seen: None,
            platform: Arc::default(),
        }
    }

    /// The uplink's view of the platform: its freshness and the time floor.
    pub(crate) fn with_platform(mut self, link: Arc<gate_sync::LinkState>) -> Self {
        self.platform = link;
        self
    }

    /// The time a decision uses: the wall clock, never below the trusted
    /// floor (a reset clock must not decide as if it were 2000).
    fn trusted_now(&self) -> UnixMillis {
        self.platform.platform.trusted_now(crate::wall_clock_ms())
    }

    /// Where online health checks go (the uplink).
    pub(crate) fn with_health_queries(mut self, queries: mpsc::Sender<gate_sync::HealthQuery>) -> Self {
        self.health_queries = Some(queries);
        self
    }

    /// Follows `configs`: each new value replaces the loop's configuration
    /// between two decisions (the same task, so no attempt is lost or
    /// decided half under each).
    pub(crate) fn with_reload(mut self, configs: tokio::sync::watch::Receiver<Config>) -> Self {
        self.reload = Some(configs);
        self
    }

    fn apply_config(&mut self, config: Config) {
        self.passes = PlatformKeys::from_specs(config.envelope_keys());
        self.passes_at_rotation = None;
        self.alerts.set_quiet_period(config.alerts.quiet_period);
        // The trust list file is read again (it may have changed on disk
        // even when its name did not).
        self.trust.built_from = None;
        info!(policy = %config.policy.version, "decisions now follow the reloaded configuration");
        self.config = config;
    }

    pub(crate) async fn run(mut self, mut presented: mpsc::Receiver<Presented>, shutdown: CancellationToken) {
        let mut presented_open = true;
        // An idle gate still turns the loop, so the watchdog can tell idle
        // from stuck.
        let mut beat = tokio::time::interval(crate::heartbeat::IDLE_BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload = self.reload.take();
        loop {
            self.counters.heartbeat.beat();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beat.tick() => {
                    let now = self.trusted_now();
                    // Nothing waits in memory past its window, decisions or not.
                    self.prune_recent(now);
                    self.watch_mode(now).await;
                }
                config = next_config(&mut reload) => self.apply_config(config),
                item = presented.recv(), if presented_open => match item {
                    Some(item) => {
                        let now = self.trusted_now();
                        // The gate is told inside, as soon as the decision is recorded.
                        self.on_presented(item, now).await;
                        // A recorded decision is part of the trusted time floor.
                        self.platform.platform.raise_floor(now);
                    }
                    None => presented_open = false,
                },
            }
        }
    }

    /// Drops the certificates and passes whose window has passed.
    fn prune_recent(&mut self, now: UnixMillis) {
        self.recent_certificates.prune(now, self.config.health.certificate_window.as_millis() as i64);
        self.recent_passes.prune(now, self.config.passes.companion_window.as_millis() as i64);
    }

    /// Logs the mode in force when it differs from the last one seen, with
    /// who set it and why: a technician's `gatectl mode set` (another
    /// process), the platform, or a scheduled change coming due all show in
    /// the daemon's own log within a heartbeat.
    async fn watch_mode(&mut self, now: UnixMillis) {
        let read = self.store.call(|s| s.mode_schedule()).await;
        self.note_mode(&read, now);
    }

    /// The logging half of [`Self::watch_mode`], for a schedule already
    /// read (a decision's own read of its facts carries one).
    fn note_mode(&mut self, read: &gate_store::Result<Option<ModeSchedule>>, now: UnixMillis) {
        let constant;
        let schedule = match read {
            Ok(Some(schedule)) => schedule,
            Ok(None) => {
                constant = ModeSchedule::constant(Mode::Normal);
                &constant
            }
            // The decision logs the error, and decides as in wartime.
            Err(_) => return,
        };
        let mode = schedule.at(now);
        let origin = &schedule.origin;
        if origin.operator.is_empty() {
            // Never set by anyone: the default.
            if self.mode_seen.replace(mode).is_none() {
                info!(mode = mode.as_str(), "site mode in force (the default; never set)");
            }
            return;
        }
        match self.mode_seen.replace(mode) {
            None => {
                info!(mode = mode.as_str(), set_by = %origin.operator, reason = %origin.reason, "site mode in force")
            }
            Some(previous) if previous != mode => info!(
                mode = mode.as_str(),
                previous = previous.as_str(),
                set_by = %origin.operator,
                reason = %origin.reason,
                "site mode changed"
            ),
            Some(_) => {}
        }
    }

    async fn gather(&mut self, item: Presented) -> Option<(Gathered, Side)> {
        match item {
            Presented::Card(card, side) => self.gather_card(card).map(|g| (g, side)),
            Presented::Qr(qr, side) => self.gather_qr(qr).await.map(|g| (g, side)),
            Presented::Plate(plate, side) => self.gather_plate(plate).map(|g| (g, side)),
        }
    }

    fn gather_card(&mut self, card: CardEvent) -> Option<Gathered> {
        let g = |facts, subject, key| Gathered {
            credential: CredentialKind::IdNumber,
            facts,
            subject,
            key,
            pass_id: None,
            visitor_id_hash: None,
            holder: None,
        };
        match card {
            CardEvent::Read(record) => {
                let key = self.site_key.credential_key(CredentialKind::IdNumber, record.id_number.expose());
                let mut gathered =
                    g(CredentialFacts::IdCard { card_valid_to: record.valid_to }, record.id_number.masked(), Some(key));
                gathered.holder = Some((record.name.clone(), record.birth_date));
                Some(gathered)
            }
            CardEvent::Rejected(CardError::InvalidIdNumber { masked }) => {
                Some(g(CredentialFacts::Refused(BlockReason::InvalidIdNumber), masked, None))
            }
            CardEvent::Rejected(CardError::UnsupportedCardType { .. }) => {
                Some(g(CredentialFacts::Refused(BlockReason::UnsupportedCard), String::new(), None))
            }
            CardEvent::Rejected(other) => {
                self.counters.unreadable_cards.fetch_add(1, Ordering::Relaxed);
                warn!(error = %other, "card could not be read; no decision made");
                None
            }
        }
    }

    async fn gather_qr(&mut self, qr: QrEvent) -> Option<Gathered> {
        let text = match qr {
            QrEvent::Scanned(text) => text,
            QrEvent::Rejected(e) => {
                self.counters.unreadable_qr.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "QR frame unusable; no decision made");
                return None;
            }
        };
        if gate_pass::is_pass(&text) {
            return self.gather_pass(&text).await;
        }
        if text.starts_with("HC1:") {
            return self.gather_certificate(&text).await;
        }
        // Any other code is a static QR credential registered to a person.
        let key = self.site_key.credential_key(CredentialKind::QrPass, &text);
        Some(Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::IdCard { card_valid_to: None },
            subject: gate_core::id_number::mask_id_like(&text),
            key: Some(key),
            pass_id: None,
            visitor_id_hash: None,
            holder: None,
        })
    }

    /// A signed health certificate: verified offline and kept for the ID card
    /// of the same transaction (no decision on its own). A certificate that
    /// fails verification is a refused credential, and alerts.
    async fn gather_certificate(&mut self, text: &str) -> Option<Gathered> {
        let now = self.trusted_now();
        // Only certificates need the trust list: other attempts never pay for it.
        self.trust.refresh(&self.store, &self.config).await;
        match gate_dcc::verify(text, &self.trust.list, now) {
            Ok(certificate) => {
                info!(kind = ?certificate.kind, "health certificate verified; waiting for the holder's ID card");
                self.counters.certificates_verified.fetch_add(1, Ordering::Relaxed);
                let window = self.config.health.certificate_window.as_millis() as i64;
                self.recent_certificates.push(now, window, RecentCertificate { certificate });
                None
            }
            Err(e) => {
                warn!(step = ?e.step(), error = %e, "health certificate refused");
                self.certificate_failure = Some(format!("{:?}", e.step()).to_lowercase());
                Some(Gathered {
                    credential: CredentialKind::QrPass,
                    facts: CredentialFacts::Refused(BlockReason::HealthUnverified),
                    subject: "certificate".to_owned(),
                    key: None,
                    pass_id: None,
                    visitor_id_hash: None,
                    holder: None,
                })
            }
        }
    }

    /// The health check of one attempt, from the local record (refreshed by
    /// the online check before the decision when needed) and any matching
    /// certificate of the same transaction.
    fn health_for(
        &mut self,
        person: Option<&gate_core::PersonRecord>,
        stored: Option<Result<Option<gate_core::HealthRecord>, StoreError>>,
        holder: Option<&(String, Option<gate_core::CivilDate>)>,
        policy: &gate_engine::Policy,
        now: UnixMillis,
    ) -> (HealthCheck, Vec<(String, String)>) {
        let Some(person) = person else { return (HealthCheck::NotChecked, Vec::new()) };
        if !policy.health_required_for.contains(person.category) {
            return (HealthCheck::NotChecked, Vec::new());
        }
        let record = match stored {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                self.counters.store_error(&e);
                error!(error = %e, "cannot read the health record");
                return (HealthCheck::Unavailable, Vec::new());
            }
            None => None,
        };
        self.prune_recent(now);
        let mut certificates = gate_engine::CertificateFacts::default();
        let mut facts = Vec::new();
        if let Some((name, birth)) = holder {
            for recent in self.recent_certificates.iter() {
                let cert = &recent.certificate;
                let birth_ok =
                    birth.is_some_and(|b| gate_dcc::birth_date_matches(&cert.birth_date, b.year, b.month, b.day));
                let name_ok = match self.config.health.certificate_match {
                    gate_config::CertificateMatch::NameAndBirth => gate_dcc::holder_name_matches(cert, name),
                    gate_config::CertificateMatch::BirthOnly => true,
                };
                if !(birth_ok && name_ok) {
                    facts.push(("certificate".into(), "another_person".into()));
                    continue;
                }
                facts.push(("certificate".into(), "matched".into()));
                match &cert.kind {
                    gate_dcc::CertKind::Vaccination { dose_number, .. } => {
                        certificates.vaccine_doses = Some(certificates.vaccine_doses.unwrap_or(0).max(*dose_number));
                    }
                    gate_dcc::CertKind::Test { result_negative: true, sample_time_ms } => {
                        certificates.negative_test_sampled_at_ms = Some(*sample_time_ms);
                    }
                    gate_dcc::CertKind::Test { .. } => {}
                    gate_dcc::CertKind::Recovery { .. } => certificates.recovered = true,
                }
            }
        }
        let rules = policy.health_rules.for_category(person.category);
        let verdict = gate_engine::evaluate_health(record.as_ref(), &certificates, rules, now);
        facts.extend(verdict.facts);
        match verdict.outcome {
            Ok(()) => (HealthCheck::Passed, facts),
            Err(reason) => (HealthCheck::Failed(reason), facts),
        }
    }

    /// Whether to ask the platform before deciding: the person's health
    /// matters in the mode in force, and the local record (read with the
    /// attempt's facts) is missing or stale. The person to ask about, if so.
    fn health_to_refresh(&self, credential: CredentialKind, stored: &StoredFacts, now: UnixMillis) -> Option<String> {
        // Cards and plates, as the platform knows them; a visitor pass
        // carries its own answer.
        if !matches!(credential, CredentialKind::IdNumber | CredentialKind::Plate) {
            return None;
        }
        self.health_queries.as_ref()?;
        let person = stored.person.as_ref()?;
        // A record that cannot be read is the fallback's to decide (it
        // fails closed), not a question for the platform.
        let Some(Ok(record)) = &stored.health_record else { return None };
        // Unreadable: wartime, as the decision will say (and log).
        let policy = self.config.policy.for_mode(mode_at(&stored.mode, now));
        // In a mode without health checks (normal, by default) a decision
        // pays nothing here.
        if !policy.health_required_for.contains(person.category) {
            return None;
        }
        let rules = policy.health_rules.for_category(person.category);
        (gate_engine::freshness(record.as_ref(), rules, now) != gate_engine::Freshness::Fresh)
            .then(|| person.person_id.clone())
    }

    /// Asks the platform for a person's health record, bounded by
    /// `[health] online_timeout_ms`. The answer lands in the store; a
    /// timeout or an offline gate leaves the fallback to decide.
    async fn ask_platform_for_health(&mut self, person_id: String) {
        let Some(queries) = self.health_queries.clone() else { return };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let query = gate_sync::HealthQuery { person_id, reply };
        if queries.try_send(query).is_err() {
            return;
        }
        match tokio::time::timeout(self.config.health.online_timeout, answer).await {
            Ok(Ok(_)) => {
                self.counters.health_online_answers.fetch_add(1, Ordering::Relaxed);
                debug!("platform answered the health check");
            }
            Ok(Err(_)) => {
                self.counters.health_online_unavailable.fetch_add(1, Ordering::Relaxed);
                debug!("gate offline; the health fallback decides");
            }
            Err(_) => {
                self.counters.health_online_timeouts.fetch_add(1, Ordering::Relaxed);
                warn!(
                    timeout_ms = self.config.health.online_timeout.as_millis() as u64,
                    "platform did not answer the health check in time; the fallback decides"
                );
            }
        }
    }

    /// Passes are checked under the keys every platform message is: the
    /// configured ones, or those of the last signed rotation (persisted by
    /// the uplink). Read again from the store after each rotation and at
    /// the first pass; an unreadable store keeps the keys in hand.
    async fn follow_key_rotations(&mut self) {
        let rotations = self.platform.downlink.key_rotations.load(Ordering::Relaxed);
        if self.passes_at_rotation == Some(rotations) {
            return;
        }
        let configured = self.config.envelope_keys();
        match self.store.call(move |s| gate_sync::signed::effective_keys(s, &configured)).await {
            Ok((keys, _)) => {
                self.passes = PlatformKeys::from_specs(keys);
                self.passes_at_rotation = Some(rotations);
            }
            Err(e) => {
                warn!(error = %e, "cannot read the platform keys in force; passes checked under the keys in hand")
            }
        }
    }

    async fn gather_pass(&mut self, token: &str) -> Option<Gathered> {
        let refused = |reason| Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::Refused(reason),
            subject: String::new(),
            key: None,
            pass_id: None,
            visitor_id_hash: None,
            holder: None,
        };
        self.follow_key_rotations().await;
        let pass = match self.passes.verify(token, self.config.site.id.as_str()) {
            Ok(pass) if token.starts_with(gate_pass::LEGACY_PREFIX) => {
                warn!(
                    pass_id = %pass.pass_id,
                    "visitor pass in the old VP1 format accepted; it stops working in a later release: \
                     issue a new one (VP2, a signed envelope)"
                );
                pass
            }
            Ok(pass) => pass,
            Err(e) => {
                warn!(error = %e, "visitor pass refused as invalid");
                return Some(refused(BlockReason::PassInvalid));
            }
        };
        let pass_id = pass.pass_id.clone();
        let (uses_so_far, revoked) =
            match self.store.call(move |s| Ok((s.pass_uses(&pass_id)?, s.is_pass_revoked(&pass_id)?))).await {
                Ok(found) => found,
                Err(e) => {
                    // Unknown use count or revocation: fail closed.
                    self.counters.failed_on(&e);
                    error!(error = %e, "cannot read pass uses or revocations; gate stays shut");
                    return None;
                }
            };
        let facts = PassFacts {
            pass_id: pass.pass_id.clone(),
            valid_from_ms: pass.valid_from_ms,
            valid_to_ms: pass.valid_to_ms,
            allowed_gates: pass.gates.clone(),
            max_uses: pass.max_uses,
            uses_so_far,
            revoked,
        };
        Some(Gathered {
            credential: CredentialKind::QrPass,
            facts: CredentialFacts::VisitorPass(facts),
            subject: format!("pass:{}", pass.pass_id),
            key: None,
            pass_id: Some(pass.pass_id),
            visitor_id_hash: Some(pass.visitor_id_hash),
            holder: None,
        })
    }

    fn gather_plate(&mut self, plate: PlateEvent) -> Option<Gathered> {
        match plate {
            PlateEvent::Read(PlateRead { plate, .. }) => {
                let key = self.site_key.credential_key(CredentialKind::Plate, &plate);
                Some(Gathered {
                    credential: CredentialKind::Plate,
                    facts: CredentialFacts::Plate,
                    subject: mask_plate(&plate),
                    key: Some(key),
                    pass_id: None,
                    visitor_id_hash: None,
                    holder: None,
                })
            }
            PlateEvent::LowConfidence { confidence } => {
                self.counters.unusable_plates.fetch_add(1, Ordering::Relaxed);
                debug!(confidence, "plate read below the confidence threshold; not a decision");
                None
            }
            PlateEvent::Rejected(e) => {
                self.counters.unusable_plates.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "plate line unusable; not a decision");
                None
            }
        }
    }

    /// Every stored fact of one attempt, in one visit to the store thread;
    /// `None` (logged, counted) when any cannot be read: the gate stays shut.
    async fn read_facts(&self, query: FactQuery) -> Option<StoredFacts> {
        match self.store.call(move |s| Ok(read_facts(s, &query))).await.and_then(|f| f) {
            Ok(stored) => Some(stored),
            Err(e) => {
                self.counters.failed_on(&e);
                error!(error = %e, "cannot read the facts of this attempt; gate stays shut");
                None
            }
        }
    }

    /// Decides and records one attempt: its facts read in one visit to the
    /// store, the engine's verdict recorded in one transaction, then the
    /// gate told (a grant or a deny). Returns the verdict once it is
    /// durable; `None` when nothing was decided (unreadable input, a fact
    /// that could not be read) or the decision could not be recorded: the
    /// gate is not told, and stays shut.
    pub(crate) async fn on_presented(&mut self, item: Presented, now: UnixMillis) -> Option<(Verdict, Side)> {
        let started = std::time::Instant::now();
        let (g, side) = self.gather(item).await?;
        if self.config.gate.lane == Lane::Vehicle && g.credential != CredentialKind::Plate {
            debug!("a person's credential at a vehicle lane is decided like any other");
        }
        let query = FactQuery {
            credential: g.credential,
            key: g.key,
            pass_id: g.pass_id.clone(),
            anti_passback: self.config.gate.anti_passback != AntiPassback::Off,
        };
        let mut stored = self.read_facts(query.clone()).await?;
        // One read gives the mode too: a change shows in the log with the
        // first decision under it.
        self.note_mode(&stored.mode, now);
        if let Some(person_id) = self.health_to_refresh(g.credential, &stored, now) {
            self.ask_platform_for_health(person_id).await;
            // Whatever came back is in the store now; the decision reads
            // every fact again, so they are all of one moment.
            stored = self.read_facts(query).await?;
        }
        let StoredFacts { person, watchlisted, passback_subject, last_passage, mode, health_record } = stored;
        let last_passage =
            last_passage.and_then(|e| Side::parse(&e.side).map(|side| LastPassage { side, at_ms: e.at_ms }));
        self.prune_recent(now);
        let companion_pass = g.key.is_some_and(|key| {
            let hash = hex::encode(key);
            self.recent_passes.iter().any(|p| p.visitor_id_hash.eq_ignore_ascii_case(&hash))
        });
        if let Err(e) = &mode {
            self.counters.store_error(e);
        }
        let mode = mode_in_force(mode, now);
        let policy = self.config.policy.for_mode(mode).clone();
        let (health, mut health_facts) =
            self.health_for(person.as_ref(), health_record, g.holder.as_ref(), &policy, now);
        if let Some(step) = self.certificate_failure.take() {
            health_facts.push(("certificate".into(), format!("refused_at_{step}")));
        }
        let context = GateContext {
            gate_id: self.config.gate.id.as_str(),
            flexible: self.config.gate.flexible,
            mode,
            policy: &policy,
            offset: self.config.site.utc_offset,
            anti_passback: self.config.gate.anti_passback,
            side,
            refuse_unvouched: self.config.platform.refuse_when_stale && self.platform.platform.unvouched(),
        };
        let attempt = Attempt {
            credential: &g.facts,
            person: person.as_ref(),
            watchlisted,
            last_passage,
            companion_pass,
            health,
        };
        let verdict = decide(attempt, context, now);
        let alert_reason = verdict.reason.filter(|r| r.raises_alert());
        let facts_if_health = |r: Option<BlockReason>| {
            if r.is_some_and(BlockReason::is_health) { health_facts.clone() } else { Vec::new() }
        };
        let event = crate::event_record(
            &self.config,
            now,
            mode,
            EventBody::Decision {
                credential: g.credential,
                subject_masked: g.subject.clone(),
                verdict: verdict.clone(),
                side: crate::wire_side(side),
                pass_id: g.pass_id.clone(),
                facts: facts_if_health(verdict.reason),
            },
        );
        let granted = verdict.decision == Decision::Pass;
        let alert = alert_reason.map(|reason| {
            let occurrence = self.alerts.record(&g.subject, reason.as_str(), now);
            AlertRecord {
                alert_id: occurrence.alert_id,
                site_id: self.config.site.id.to_string(),
                gate_id: self.config.gate.id.to_string(),
                occurred_at_ms: now,
                subject: g.subject.clone(),
                person_id: verdict.person_id.clone(),
                category: verdict.category,
                reason: Some(reason),
                alarm: None,
                facts: facts_if_health(Some(reason)),
                repeat_count: occurrence.repeat_count,
                first_occurred_at_ms: occurrence.first_at_ms,
                mode,
            }
        });
        let write = DecisionWrite {
            event,
            // Routine passes are what an overfull outbox drops first.
            priority: if granted { Priority::Routine } else { Priority::Important },
            now,
            pass_use: g.pass_id.clone().filter(|_| granted),
            passage: passback_subject
                .filter(|_| granted && self.config.gate.anti_passback != AntiPassback::Off)
                .map(|subject| (subject, side.as_str())),
            pending_grant: self
                .config
                .devices
                .gate
                .as_ref()
                .filter(|_| granted)
                .map(|io| (side.as_str(), now.saturating_add(io.pass_timeout.as_millis() as i64))),
            alert,
        };
        let repeat = write.alert.as_ref().map(|a| a.repeat_count);
        // Recorded before the gate moves: a pass that cannot be recorded is
        // not a pass, and nothing of it (use, anti-passback, alert) stays.
        let (seq, alert_seq) = match self.store.call(move |s| s.write(|w| write.apply(w))).await {
            Ok(seqs) => seqs,
            Err(e) => {
                self.counters.failed_on(&e);
                error!(error = %e, "could not record the decision; gate stays shut");
                return None;
            }
        };
        // Recorded: the gate moves now, and the logging, the activity feed
        // and the counters follow (a person at the gate waits for none of
        // them).
        tell_gate(self.gate.clone(), verdict.decision, side).await;
        let reason = verdict.reason.map_or("", BlockReason::as_str);
        let person_id = verdict.person_id.as_deref().unwrap_or("");
        let category = verdict.category.map_or("", |c| c.as_str());
        self.counters.activity.publish(crate::activity::Activity::Decision(crate::activity::DecisionSummary {
            at_ms: now,
            seq,
            decision: verdict.decision.as_str().to_owned(),
            reason: verdict.reason.map(|r| r.as_str().to_owned()),
            credential: g.credential.as_str().to_owned(),
            subject: g.subject.clone(),
            person_id: verdict.person_id.clone(),
            category: verdict.category.map(|c| c.as_str().to_owned()),
            mode: mode.as_str().to_owned(),
            side: side.as_str().to_owned(),
        }));
        match verdict.decision {
            Decision::Pass => {
                self.counters.passed.fetch_add(1, Ordering::Relaxed);
                info!(seq, decision = "pass", credential = g.credential.as_str(), subject = %g.subject, person_id, category, mode = mode.as_str(), side = side.as_str(), "decision");
                if g.pass_id.is_some()
                    && let Some(hash) = &g.visitor_id_hash
                {
                    let window = self.config.passes.companion_window.as_millis() as i64;
                    self.recent_passes.push(now, window, RecentPass { visitor_id_hash: hash.clone() });
                }
            }
            Decision::Block => {
                if let Some(r) = verdict.reason {
                    self.counters.count_block(r);
                }
                info!(seq, decision = "block", reason, credential = g.credential.as_str(), subject = %g.subject, person_id, category, mode = mode.as_str(), side = side.as_str(), "decision");
            }
        }
        if let (Some(alert_seq), Some(reason), Some(repeat)) = (alert_seq, alert_reason, repeat) {
            self.counters.alerts.fetch_add(1, Ordering::Relaxed);
            self.counters.activity.publish(crate::activity::Activity::Alert {
                at_ms: now,
                seq: alert_seq,
                reason: reason.as_str().to_owned(),
                subject: g.subject.clone(),
                repeat,
            });
            warn!(seq = alert_seq, reason = reason.as_str(), subject = %g.subject, repeat, "alert to the management departments");
        }
        self.outbox_changed.notify_one();
        self.counters.latency.observe(started.elapsed());
        Some((verdict, side))
    }
}

/// The mode in force at `now` from a schedule read (or not) from the store:
/// the default before any was ever set; the strictest when unreadable, so an
/// unreadable mode never opens the site up.
pub(crate) fn mode_in_force(read: gate_store::Result<Option<ModeSchedule>>, now: UnixMillis) -> Mode {
    if let Err(e) = &read {
        error!(error = %e, "cannot read the site mode; deciding as in wartime");
    }
    mode_at(&read, now)
}

/// [`mode_in_force`] without the log line.
fn mode_at(read: &gate_store::Result<Option<ModeSchedule>>, now: UnixMillis) -> Mode {
    match read {
        Ok(Some(schedule)) => schedule.at(now),
        Ok(None) => Mode::Normal,
        Err(_) => Mode::Wartime,
    }
}

/// What one attempt asks of the store.
#[derive(Clone)]
struct FactQuery {
    credential: CredentialKind,
    key: Option<[u8; 32]>,
    pass_id: Option<String>,
    anti_passback: bool,
}

/// The stored facts of one attempt, read in one visit to the store thread.
struct StoredFacts {
    person: Option<gate_core::PersonRecord>,
    watchlisted: bool,
    /// Whose anti-passback state this attempt reads and writes.
    passback_subject: Option<String>,
    last_passage: Option<PassbackEntry>,
    /// Read apart: an unreadable mode decides as wartime, it does not stop
    /// the decision.
    mode: gate_store::Result<Option<ModeSchedule>>,
    /// The person's health record (read whenever there is a person: one
    /// point lookup, cheaper than a second visit).
    health_record: Option<gate_store::Result<Option<gate_core::HealthRecord>>>,
}

/// Reads every stored fact of one attempt. Any fact that cannot be read
/// (identity, watchlist, anti-passback) fails the whole read: the attempt is
/// not decided and the gate stays shut.
fn read_facts(store: &Store, q: &FactQuery) -> gate_store::Result<StoredFacts> {
    let (person, watchlisted) = match &q.key {
        Some(key) => (store.find_person_by_credential(q.credential, key)?, store.is_watchlisted(q.credential, key)?),
        None => (None, false),
    };
    let passback_subject = person
        .as_ref()
        .map(|p| format!("person:{}", p.person_id))
        .or_else(|| q.pass_id.as_ref().map(|id| format!("pass:{id}")));
    let last_passage = match (&passback_subject, q.anti_passback) {
        (Some(subject), true) => store.last_passage(subject)?,
        _ => None,
    };
    let health_record = person.as_ref().map(|p| store.health_record(&p.person_id));
    Ok(StoredFacts { person, watchlisted, passback_subject, last_passage, mode: store.mode_schedule(), health_record })
}

/// Everything one decision changes, written in one transaction.
struct DecisionWrite {
    event: EventRecord,
    priority: Priority,
    now: UnixMillis,
    /// A granted visitor pass: one more use.
    pass_use: Option<String>,
    /// A grant with anti-passback on: (subject, side).
    passage: Option<(String, &'static str)>,
    /// A grant the gate will act on: (side, deadline), until its passage.
    pending_grant: Option<(&'static str, UnixMillis)>,
    alert: Option<AlertRecord>,
}

impl DecisionWrite {
    /// The event's and the alert's `seq`.
    fn apply(self, w: &mut gate_store::Writer<'_>) -> gate_store::Result<(u64, Option<u64>)> {
        let seq = w.append_event(EVENT_STREAM, self.priority, self.now, |seq| encode_event(&self.event, seq))?;
        if let Some(pass_id) = &self.pass_use {
            w.count_pass_use(pass_id)?;
        }
        if let Some((subject, side)) = &self.passage {
            w.record_passage(subject, side, self.now)?;
        }
        if let Some((side, deadline)) = self.pending_grant {
            w.add_pending_grant(side, self.now, deadline)?;
        }
        let alert_seq = match &self.alert {
            Some(alert) => {
                Some(w.append_event(ALERT_STREAM, Priority::Important, self.now, |seq| encode_alert(alert, seq))?)
            }
            None => None,
        };
        Ok((seq, alert_seq))
    }
}

/// Plates: province and the last two characters kept.
fn mask_plate(plate: &str) -> String {
    let chars: Vec<char> = plate.chars().collect();
    chars.iter().enumerate().map(|(i, c)| if i == 0 || i + 2 >= chars.len() { *c } else { '*' }).collect()
}

/// Hands a recorded decision to the gate-control task: a grant unlocks
/// (the safety state machine times it and watches the passage), a block
/// lights the red lamp.
async fn tell_gate(gate: Option<mpsc::Sender<GateRequest>>, decision: Decision, side: Side) {
    let Some(gate) = gate else {
        debug!("no gate configured; nothing to unlock");
        return;
    };
    let request = match decision {
        Decision::Pass => GateRequest::Grant { side },
        Decision::Block => GateRequest::Deny,
    };
    if gate.send(request).await.is_err() {
        warn!("gate control is not running; the gate stays shut");
    }
}

/// Sets the mode as a technician (recorded as an event with who and why).
/// Used by `gatectl mode set` through the store, so it works with the
/// daemon stopped too.
pub fn set_mode_locally(
    store: &mut Store,
    config: &Config,
    mode: Mode,
    operator: &str,
    reason: &str,
    now: UnixMillis,
) -> gate_store::Result<u64> {
    let context = crate::event_context(config);
    gate_sync::set_mode_by_technician(store, &context, mode, &format!("technician:{operator}"), reason, now)
}

/// The next configuration to apply; never resolves once the sender is gone
/// (the daemon then runs on the configuration it has).
async fn next_config(reload: &mut Option<tokio::sync::watch::Receiver<Config>>) -> Config {
    if let Some(rx) = reload {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().clone();
        }
        *reload = None;
    }
    std::future::pending().await
}

/// What [`dry_run`] found, for `gatectl lookup`: the verdict and the facts
/// that led to it, all masked.
#[derive(Debug, Clone)]
pub(crate) struct DryRun {
    pub verdict: Verdict,
    pub mode: Mode,
    pub subject: String,
    pub why: Vec<String>,
    /// The person's validity, first and last day in site time.
    pub valid: Option<(CivilDate, CivilDate)>,
    /// The person's state now: `active`, `expired`, `not_yet_valid`,
    /// `suspended` or `blocked` (the stored status alone says `active` for
    /// an expired visitor).
    pub state: Option<&'static str>,
    /// The person's name as the store keeps it: masked (`陈*国`).
    pub name: Option<String>,
}

/// The state a person is really in at `now`: a blocked or suspended status
/// first, then the validity dates.
pub(crate) fn person_state(person: &gate_core::PersonRecord, now: UnixMillis) -> &'static str {
    match person.status {
        gate_core::PersonStatus::Active if now < person.valid_from_ms => "not_yet_valid",
        gate_core::PersonStatus::Active if now > person.valid_to_ms => "expired",
        status => status.as_str(),
    }
}

/// What the gate would decide now for a credential typed in by a technician,
/// without recording, counting a use or unlocking: the same facts and the same
/// engine as [`DecisionLoop::on_presented`], read through the caller's own
/// store connection. No card is in the reader, so the card's own expiry is not
/// checked, and health is reported as not checked.
pub(crate) fn dry_run(
    store: &Store,
    config: &Config,
    site_key: &SiteKey,
    kind: CredentialKind,
    value: &str,
    side: Side,
    now: UnixMillis,
) -> gate_store::Result<DryRun> {
    let mut why = Vec::new();
    let value = value.trim();
    let (facts, subject, key) = match kind {
        CredentialKind::IdNumber => match gate_core::IdNumber::parse(value) {
            Ok(id) => {
                let key = site_key.credential_key(kind, id.expose());
                (CredentialFacts::IdCard { card_valid_to: None }, id.masked(), Some(key))
            }
            Err(e) => {
                why.push(format!("the ID number is not valid ({e})"));
                (
                    CredentialFacts::Refused(BlockReason::InvalidIdNumber),
                    gate_core::id_number::mask_id_like(value),
                    None,
                )
            }
        },
        CredentialKind::Plate => {
            let plate = gate_core::normalise_plate(value).unwrap_or_else(|| value.to_owned());
            let key = site_key.credential_key(kind, &plate);
            (CredentialFacts::Plate, mask_plate(&plate), Some(key))
        }
        CredentialKind::IcCard | CredentialKind::QrPass => {
            // Card UIDs are keyed as the reader reports them: upper-case hex.
            let uid: String =
                value.chars().filter(|c| !matches!(c, ':' | '-' | ' ')).collect::<String>().to_uppercase();
            let key = site_key.credential_key(kind, &uid);
            (CredentialFacts::IdCard { card_valid_to: None }, gate_core::id_number::mask_id_like(&uid), Some(key))
        }
    };
    let (person, watchlisted) = match &key {
        Some(key) => (store.find_person_by_credential(kind, key)?, store.is_watchlisted(kind, key)?),
        None => (None, false),
    };
    let offset = config.site.utc_offset;
    let valid = person
        .as_ref()
        .map(|p| (CivilDate::of_instant(p.valid_from_ms, offset), CivilDate::of_instant(p.valid_to_ms, offset)));
    let state = person.as_ref().map(|p| person_state(p, now));
    match (&person, valid, state) {
        (Some(p), Some((from, to)), Some(state)) => why.push(format!(
            "identity table: person {} ({}), valid {from} to {to}, {state} now",
            p.person_id,
            p.category.as_str()
        )),
        (None, ..) if key.is_some() => why.push("identity table: no entry for this credential".to_owned()),
        _ => {}
    }
    if watchlisted {
        why.push("watchlist: listed".to_owned());
    }
    let last_passage = match (&person, config.gate.anti_passback) {
        (Some(p), mode) if mode != AntiPassback::Off => {
            store.last_passage(&format!("person:{}", p.person_id))?.and_then(|e| {
                why.push(format!(
                    "anti-passback: last passage at the {} side, {} s ago",
                    e.side,
                    (now - e.at_ms) / 1000
                ));
                Side::parse(&e.side).map(|side| LastPassage { side, at_ms: e.at_ms })
            })
        }
        _ => None,
    };
    let mode = match store.mode_schedule()? {
        Some(schedule) => schedule.at(now),
        None => Mode::Normal,
    };
    let policy = config.policy.for_mode(mode);
    why.push(format!("mode: {} (policy {})", mode.as_str(), config.policy.version));
    why.push("not checked here: the card's own expiry (no card in the reader) and health".to_owned());
    let context = GateContext {
        gate_id: config.gate.id.as_str(),
        flexible: config.gate.flexible,
        mode,
        policy,
        offset: config.site.utc_offset,
        anti_passback: config.gate.anti_passback,
        side,
        // A lookup explains the lists, not the platform's freshness.
        refuse_unvouched: false,
    };
    let attempt = Attempt {
        credential: &facts,
        person: person.as_ref(),
        watchlisted,
        last_passage,
        companion_pass: false,
        health: HealthCheck::NotChecked,
    };
    let verdict = decide(attempt, context, now);
    // Masked again on the way out, whatever an older file held.
    let name = person.as_ref().map(|p| gate_core::mask_name(&p.display_name)).filter(|n| !n.is_empty());
    Ok(DryRun { verdict, mode, subject, why, valid, state, name })
}

#[cfg(test)]
mod tests {
    //! The decision loop against a real SQLite file made to fail (triggers
    //! that abort a write, tables renamed away), with the gate-control
    //! channel as the witness: nothing reaches it unless the whole decision
    //! committed.

    use super::*;
    use gate_core::{CardKind, CardRecord, CardValidTo, Category, IdNumber, PersonRecord, PersonStatus, Sex};
    use gate_store::faults;

    const LI: &str = "11010519491231002X";
    const OTHER: &str = "35020319900101123X";

    struct Harness {
        dir: tempfile::TempDir,
        decisions: DecisionLoop,
        gate: mpsc::Receiver<GateRequest>,
        counters: Arc<DecisionCounters>,
    }

    impl Harness {
        fn db(&self) -> std::path::PathBuf {
            self.dir.path().join("gated.db")
        }

        async fn present(&mut self, card: CardRecord) -> Option<(Verdict, Side)> {
            self.decisions.on_presented(Presented::Card(CardEvent::Read(card), Side::Entry), 1_000).await
        }

        fn told_gate(&mut self) -> Option<GateRequest> {
            self.gate.try_recv().ok()
        }

        fn counts(&self) -> Vec<(String, i64)> {
            faults::row_counts(&self.db()).expect("counts")
        }
    }

    async fn harness(gate_extra: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"[site]
id = "heshan-c03"
[gate]
id = "east-1"
{gate_extra}
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
"#
        );
        let config = gate_config::parse(&dir.path().join("gated.toml"), &text).expect("config");
        let site_key = SiteKey::from_bytes([7; 32]);
        let mut store = Store::open(&config.store.path).expect("open");
        let people: Vec<gate_store::NewPerson> = [("p-li", LI, false), ("p-other", OTHER, true)]
            .into_iter()
            .map(|(id, number, _)| gate_store::NewPerson {
                person: PersonRecord::new(id, Category::Resident, PersonStatus::Active, 0, i64::MAX),
                credentials: vec![(
                    CredentialKind::IdNumber,
                    site_key.credential_key(CredentialKind::IdNumber, number),
                )],
            })
            .collect();
        store.import_people(&people).expect("import");
        // OTHER is watchlisted: a block that raises an alert.
        store
            .watchlist_add(&[(CredentialKind::IdNumber, site_key.credential_key(CredentialKind::IdNumber, OTHER))])
            .expect("watchlist");
        let thread = StoreThread::open(&config.store.path, "test").await.expect("store thread");
        let (gate_tx, gate) = mpsc::channel(16);
        let counters = Arc::new(DecisionCounters::default());
        let decisions =
            DecisionLoop::new(&config, site_key, thread, Arc::new(Notify::new()), Some(gate_tx), counters.clone());
        Harness { dir, decisions, gate, counters }
    }

    fn card(number: &str, valid_to: CardValidTo) -> CardRecord {
        CardRecord {
            kind: CardKind::ResidentId,
            name: "李四".into(),
            sex: Sex::Male,
            nation_code: "01".into(),
            birth_date: None,
            address: String::new(),
            id_number: IdNumber::parse(number).expect("valid"),
            issuer: String::new(),
            valid_from: None,
            valid_to: Some(valid_to),
        }
    }

    #[tokio::test]
    async fn a_grant_or_an_alerting_block_is_all_written_or_the_gate_stays_shut() {
        let mut h = harness("anti_passback = \"paired\"").await;
        let db = h.db();
        // Each statement of a decision's transaction, made to fail in turn.
        let statements: [(&str, Option<&str>, &str); 6] = [
            ("sequence", Some("NEW.stream = 'events'"), LI),
            ("outbox", Some("NEW.stream = 'events'"), LI),
            ("passback", None, LI),
            ("pending_grant", None, LI),
            ("outbox", Some("NEW.stream = 'alerts'"), OTHER),
            ("sequence", Some("NEW.stream = 'alerts'"), OTHER),
        ];
        let before = h.counts();
        for (table, condition, who) in statements {
            faults::fail_writes(&db, table, condition).expect("inject");
            let decided = h.present(card(who, CardValidTo::LongTerm)).await;
            assert!(decided.is_none(), "a decision that did not commit is no decision ({table} {condition:?})");
            assert_eq!(h.told_gate(), None, "the gate is told nothing ({table} {condition:?})");
            assert_eq!(h.counts(), before, "nothing half-written ({table} {condition:?})");
            faults::heal_writes(&db, table).expect("heal");
        }
        assert_eq!(h.counters.failed.load(Ordering::Relaxed), 6);
        assert_eq!(h.counters.store_errors.of(gate_store::ErrorClass::Other), 6, "constraint aborts count as other");
        // Healed: the same two attempts commit whole, and only then move the gate.
        let (verdict, _) = h.present(card(LI, CardValidTo::LongTerm)).await.expect("decided");
        assert_eq!(verdict.decision, Decision::Pass);
        assert_eq!(h.told_gate(), Some(GateRequest::Grant { side: Side::Entry }));
        let (verdict, _) = h.present(card(OTHER, CardValidTo::LongTerm)).await.expect("decided");
        assert_eq!(verdict.reason, Some(BlockReason::Blocklisted));
        assert_eq!(h.told_gate(), Some(GateRequest::Deny));
        let counts: std::collections::HashMap<_, _> = h.counts().into_iter().collect();
        assert_eq!((counts["outbox"], counts["passback"], counts["pending_grant"]), (3, 1, 1), "2 events + 1 alert");
    }

    #[tokio::test]
    async fn unreadable_facts_keep_the_gate_shut() {
        let mut h = harness("anti_passback = \"paired\"").await;
        let db = h.db();
        // Anti-passback state, the identity table, the watchlist: each
        // unreadable in turn. Never "no previous passage" or "not listed".
        for table in ["passback", "ident.credential", "ident.watchlist"] {
            let before = h.counts();
            faults::fail_reads(&db, table).expect("inject");
            assert!(h.present(card(LI, CardValidTo::LongTerm)).await.is_none(), "{table}");
            assert_eq!(h.told_gate(), None, "{table}");
            faults::heal_reads(&db, table).expect("heal");
            assert_eq!(h.counts(), before, "{table}");
        }
        assert_eq!(h.counters.failed.load(Ordering::Relaxed), 3);
        assert!(h.present(card(LI, CardValidTo::LongTerm)).await.is_some());
        assert_eq!(h.told_gate(), Some(GateRequest::Grant { side: Side::Entry }));
    }

    /// A visitor pass for this site, signed by a key `h` now trusts.
    fn visitor_pass(h: &mut Harness, pass_id: &str) -> String {
        let key = gate_pass::signing_key_from_hex(&"07".repeat(32)).expect("key");
        h.decisions.passes = PlatformKeys::from_raw(&[key.verifying_key().to_bytes()]).expect("trusted");
        // These keys are in force: no rotation to follow.
        h.decisions.passes_at_rotation = Some(0);
        let pass = gate_pass::VisitorPass {
            kid: String::new(),
            site: "heshan-c03".into(),
            pass_id: pass_id.into(),
            host_person_id: "p-li".into(),
            visitor_id_hash: "00".repeat(32),
            valid_from_ms: 0,
            valid_to_ms: i64::MAX,
            gates: Vec::new(),
            max_uses: 1,
        };
        gate_pass::sign(&pass, &key)
    }

    #[tokio::test]
    async fn unreadable_pass_uses_or_revocations_keep_the_gate_shut() {
        let mut h = harness("").await;
        let db = h.db();
        let token = visitor_pass(&mut h, "vp-1");
        let scan = |token: &str| Presented::Qr(QrEvent::Scanned(token.to_owned()), Side::Entry);
        // The use count of a single-use pass, then the revocations: each
        // unreadable in turn. Never "not used yet" or "not revoked".
        for table in ["pass_use", "ident.pass_revoked"] {
            let before = h.counts();
            faults::fail_reads(&db, table).expect("inject");
            let failed = h.counters.failed.load(Ordering::Relaxed);
            assert!(h.decisions.on_presented(scan(&token), 1_000).await.is_none(), "{table}: not decided");
            assert_eq!(h.told_gate(), None, "{table}: the gate is told nothing");
            assert_eq!(h.counters.failed.load(Ordering::Relaxed), failed + 1, "{table}: counted");
            faults::heal_reads(&db, table).expect("heal");
            assert_eq!(h.counts(), before, "{table}: nothing written");
        }
        let by_class: u64 = gate_store::ErrorClass::ALL.iter().map(|c| h.counters.store_errors.of(*c)).sum();
        assert_eq!(by_class, 2, "both failed reads counted by class");
        // Readable again: the pass admits once, and only once.
        let (verdict, side) = h.decisions.on_presented(scan(&token), 1_000).await.expect("decided");
        assert_eq!(verdict.decision, Decision::Pass);
        assert_eq!(side, Side::Entry);
        assert_eq!(h.told_gate(), Some(GateRequest::Grant { side: Side::Entry }));
        let (verdict, _) = h.decisions.on_presented(scan(&token), 2_000).await.expect("decided");
        assert_eq!(verdict.reason, Some(BlockReason::PassUsedUp));
    }

    #[test]
    fn what_waits_for_a_card_is_bounded_and_forgotten_after_its_window() {
        let mut recent = Recent::new(3);
        // Pruned when pushed: what expired goes before anything is added.
        recent.push(0, 1_000, "old");
        recent.push(2_000, 1_000, "a");
        assert_eq!(recent.iter().copied().collect::<Vec<_>>(), ["a"]);
        // Bounded: past its capacity the oldest goes.
        for (at, item) in [(2_100, "b"), (2_200, "c"), (2_300, "d"), (2_400, "e")] {
            recent.push(at, 1_000, item);
        }
        assert_eq!(recent.iter().copied().collect::<Vec<_>>(), ["c", "d", "e"]);
        // Forgotten with no new push at all (the idle beat prunes).
        recent.prune(3_250, 1_000);
        assert_eq!(recent.iter().copied().collect::<Vec<_>>(), ["d", "e"]);
        recent.prune(10_000, 1_000);
        assert_eq!(recent.iter().count(), 0);
    }

    #[tokio::test]
    async fn the_decision_loop_forgets_passes_and_certificates_past_their_window() {
        let mut h = harness("").await;
        let window = h.decisions.config.passes.companion_window.as_millis() as i64;
        for i in 0..(RECENT_PASSES_MAX as i64 + 10) {
            h.decisions.recent_passes.push(i, window, RecentPass { visitor_id_hash: format!("{i:064x}") });
        }
        assert_eq!(h.decisions.recent_passes.iter().count(), RECENT_PASSES_MAX, "bounded");
        h.decisions.prune_recent(RECENT_PASSES_MAX as i64 + 10 + window + 1);
        assert_eq!(h.decisions.recent_passes.iter().count(), 0, "gone after the window");
    }

    #[tokio::test]
    async fn an_unreadable_mode_decides_as_wartime() {
        let mut h = harness("flexible = true").await;
        faults::put_meta(&h.db(), "mode_schedule", "not a schedule").expect("corrupt");
        let (verdict, _) = h.present(card(LI, CardValidTo::LongTerm)).await.expect("decided");
        assert_eq!(verdict.reason, Some(BlockReason::CheckpointClosed), "a flexible checkpoint closes in wartime");
        assert_eq!(h.told_gate(), Some(GateRequest::Deny));
        assert_eq!(h.counters.store_errors.of(gate_store::ErrorClass::Corrupt), 1);
    }

    #[tokio::test]
    async fn a_card_with_unreadable_dates_is_blocked() {
        let mut h = harness("").await;
        let (verdict, _) = h.present(card(LI, CardValidTo::Unreadable)).await.expect("decided");
        assert_eq!(verdict.reason, Some(BlockReason::CardUnreadable));
        assert_eq!(h.told_gate(), Some(GateRequest::Deny));
        assert_eq!(h.counters.blocked_for(BlockReason::CardUnreadable), 1);
    }
}
