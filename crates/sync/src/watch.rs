//! How far the gate can still vouch for what it holds: the platform's
//! signed heartbeat (a freeze, where someone keeps the gate in the past by
//! withholding messages, shows as silence or as a heartbeat naming versions
//! the gate does not have), and the trusted time floor (a box whose clock
//! was reset must not decide as if it were 1970 or 2000).
//!
//! [`PlatformWatch`] is shared (status, metrics, the decision loop);
//! [`Freshness`] is the session's own bookkeeping. Every judgement takes
//! the wall clock and a monotonic instant as arguments.

use gate_core::UnixMillis;
use gate_proto::v1 as pb;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// A wall clock this far below the floor is `clock_behind` (NTP slews and
/// the floor's own granularity stay below it).
pub const CLOCK_BEHIND_TOLERANCE_MS: i64 = 60_000;
/// The meta key of the persisted floor.
pub(crate) const FLOOR_KEY: &str = "time.floor";

/// What the gate currently cannot vouch for, shared with status, metrics and
/// the decision loop.
#[derive(Debug, Default)]
pub struct PlatformWatch {
    /// No fresh signed heartbeat for `[platform] stale_after_s`.
    pub stale: AtomicBool,
    /// The last heartbeat names versions the gate does not have, for longer
    /// than a resync takes.
    pub behind: AtomicBool,
    /// The wall clock is below the trusted time floor.
    pub clock_behind: AtomicBool,
    /// The wall clock is far ahead of the platform's time.
    pub clock_ahead: AtomicBool,
    /// The newest `issued_at` of a verified message and the newest recorded
    /// decision (Unix ms; 0: none yet).
    floor_ms: AtomicI64,
    /// When the last fresh heartbeat was signed (Unix ms; 0: none since start).
    pub heartbeat_issued_ms: AtomicI64,
    /// One line per condition above that holds, for `gatectl status`.
    lines: Mutex<Vec<String>>,
}

impl PlatformWatch {
    pub fn floor_ms(&self) -> UnixMillis {
        self.floor_ms.load(Ordering::Relaxed)
    }

    /// Raises the floor to `ms` (never lowers it).
    pub fn raise_floor(&self, ms: UnixMillis) {
        self.floor_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The time decisions use: the wall clock, never below the floor.
    pub fn trusted_now(&self, wall: UnixMillis) -> UnixMillis {
        wall.max(self.floor_ms())
    }

    /// Whether a wartime gate with `[platform] refuse_when_stale` must refuse:
    /// the platform is stale or the gate is known to be behind it.
    pub fn unvouched(&self) -> bool {
        self.stale.load(Ordering::Relaxed) || self.behind.load(Ordering::Relaxed)
    }

    /// The warnings for `gatectl status`, each starting with its name
    /// (`platform_stale`, `clock_behind`, `clock_ahead`).
    pub fn warnings(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A condition that began or ended: the session logs it and raises an alert
/// when it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `platform_stale`, `clock_behind` or `clock_ahead`: the alert's alarm name.
    pub alarm: &'static str,
    pub began: bool,
    pub facts: Vec<(String, String)>,
}

/// The versions the gate holds, to compare with a heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub identity_version: u64,
    pub health_version: u64,
    pub trust_version: u64,
    pub mode_counter: u64,
}

/// The session's freshness bookkeeping.
#[derive(Debug)]
pub struct Freshness {
    stale_after: Duration,
    clock_ahead: Duration,
    started: Instant,
    heartbeat: Option<(Instant, pb::PlatformHeartbeat)>,
    /// The last verified message: when it came and when it was signed.
    verified: Option<(Instant, UnixMillis)>,
    behind_since: Option<Instant>,
    behind_detail: String,
    persisted_floor: UnixMillis,
}

impl Freshness {
    pub fn new(stale_after: Duration, clock_ahead: Duration, started: Instant, persisted_floor: UnixMillis) -> Self {
        Freshness {
            stale_after,
            clock_ahead,
            started,
            heartbeat: None,
            verified: None,
            behind_since: None,
            behind_detail: String::new(),
            persisted_floor,
        }
    }

    /// How long the gate waits for a resync before a heartbeat naming newer
    /// versions counts as `behind`: a sixtieth of `stale_after`, 5 s to 2 min.
    pub fn behind_grace(&self) -> Duration {
        (self.stale_after / 60).clamp(Duration::from_secs(5), Duration::from_secs(120))
    }

    /// Any verified envelope: its signing time raises the floor.
    pub fn on_verified(&mut self, watch: &PlatformWatch, issued_at_ms: UnixMillis, at: Instant) {
        watch.raise_floor(issued_at_ms);
        self.verified = Some((at, issued_at_ms));
    }

    /// A verified heartbeat. Returns whether it names versions the gate
    /// does not have (the caller then asks for a resync). A heartbeat signed
    /// longer than `stale_after` ago (by the trusted clock) is old news and
    /// does not count as one.
    pub fn on_heartbeat(
        &mut self,
        watch: &PlatformWatch,
        heartbeat: pb::PlatformHeartbeat,
        issued_at_ms: UnixMillis,
        held: Held,
        wall: UnixMillis,
        at: Instant,
    ) -> bool {
        let age_ms = watch.trusted_now(wall).saturating_sub(issued_at_ms);
        if age_ms > self.stale_after.as_millis() as i64 {
            return false;
        }
        watch.heartbeat_issued_ms.store(issued_at_ms, Ordering::Relaxed);
        self.heartbeat = Some((at, heartbeat));
        self.check_behind(held, at)
    }

    /// Compares the last heartbeat with what the gate holds; starts or ends
    /// the wait for a resync.
    pub fn check_behind(&mut self, held: Held, at: Instant) -> bool {
        let Some((_, hb)) = &self.heartbeat else { return false };
        let mut missing = Vec::new();
        for (name, named, have) in [
            ("identity", hb.identity_version, held.identity_version),
            ("health", hb.health_version, held.health_version),
            ("trust", hb.trust_version, held.trust_version),
            ("mode", hb.mode_counter, held.mode_counter),
        ] {
            if named > have {
                missing.push(format!("{name} {named} (have {have})"));
            }
        }
        if missing.is_empty() {
            self.behind_since = None;
            return false;
        }
        self.behind_detail = missing.join(", ");
        self.behind_since.get_or_insert(at);
        true
    }

    /// Judges every condition now; returns those that began or ended.
    pub fn evaluate(&mut self, watch: &PlatformWatch, wall: UnixMillis, at: Instant) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut lines = Vec::new();
        let mut flip = |flag: &AtomicBool, alarm: &'static str, on: bool, facts: Vec<(String, String)>| {
            if flag.swap(on, Ordering::Relaxed) != on {
                transitions.push(Transition { alarm, began: on, facts });
            }
        };

        let since = self.heartbeat.as_ref().map_or(self.started, |(t, _)| *t);
        let silent = at.saturating_duration_since(since);
        let stale = silent > self.stale_after;
        let silent_s = silent.as_secs().to_string();
        flip(
            &watch.stale,
            "platform_stale",
            stale,
            vec![("cause".into(), "no_heartbeat".into()), ("silent_s".into(), silent_s.clone())],
        );
        if stale {
            let heard = if self.heartbeat.is_some() { "since the last one" } else { "since start" };
            lines.push(format!(
                "platform_stale: no signed heartbeat for {silent_s} s {heard} (stale_after_s {})",
                self.stale_after.as_secs()
            ));
        }

        let behind = self.behind_since.is_some_and(|t| at.saturating_duration_since(t) > self.behind_grace());
        flip(
            &watch.behind,
            "platform_stale",
            behind,
            vec![("cause".into(), "versions_behind".into()), ("missing".into(), self.behind_detail.clone())],
        );
        if behind {
            lines.push(format!("platform_stale: the platform's heartbeat names {}", self.behind_detail));
        }

        let floor = watch.floor_ms();
        let clock_behind = floor > 0 && wall < floor - CLOCK_BEHIND_TOLERANCE_MS;
        let floor_s = (floor / 1000).to_string();
        flip(
            &watch.clock_behind,
            "clock_behind",
            clock_behind,
            vec![("wall_s".into(), (wall / 1000).to_string()), ("floor_s".into(), floor_s.clone())],
        );
        if clock_behind {
            lines.push(format!(
                "clock_behind: the wall clock is {} s behind the trusted time floor; decisions use the floor",
                (floor - wall) / 1000
            ));
        }

        // The platform's time now, estimated from the last verified message
        // and the monotonic time since: only while it is recent enough.
        let platform_now = self
            .verified
            .filter(|(t, _)| at.saturating_duration_since(*t) <= self.stale_after)
            .map(|(t, issued)| issued + at.saturating_duration_since(t).as_millis() as i64);
        let clock_ahead = platform_now.is_some_and(|p| wall > p + self.clock_ahead.as_millis() as i64);
        flip(
            &watch.clock_ahead,
            "clock_ahead",
            clock_ahead,
            vec![
                ("wall_s".into(), (wall / 1000).to_string()),
                ("platform_s".into(), platform_now.map_or(0, |p| p / 1000).to_string()),
            ],
        );
        if let (true, Some(p)) = (clock_ahead, platform_now) {
            lines.push(format!("clock_ahead: the wall clock is {} s ahead of the platform's", (wall - p) / 1000));
        }
        if let Ok(mut shared) = watch.lines.lock() {
            *shared = lines;
        }
        transitions
    }

    /// The floor to persist, when it moved since it last was.
    pub fn floor_to_persist(&mut self, watch: &PlatformWatch) -> Option<UnixMillis> {
        let floor = watch.floor_ms();
        (floor > self.persisted_floor).then(|| {
            self.persisted_floor = floor;
            floor
        })
    }
}

/// The persisted floor (0 when none).
pub fn load_floor(store: &gate_store::Store) -> UnixMillis {
    store.meta_get(FLOOR_KEY).ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn silence_past_stale_after_is_stale_and_a_fresh_heartbeat_ends_it() {
        let watch = PlatformWatch::default();
        let t0 = Instant::now();
        let wall = 1_800_000_000_000;
        let mut f = Freshness::new(HOUR, 24 * HOUR, t0, 0);
        assert!(f.evaluate(&watch, wall, t0 + HOUR / 2).is_empty());
        let began = f.evaluate(&watch, wall, t0 + HOUR + Duration::from_secs(1));
        assert_eq!(began.len(), 1);
        assert_eq!((began[0].alarm, began[0].began), ("platform_stale", true));
        assert!(watch.unvouched());
        assert!(watch.warnings()[0].starts_with("platform_stale: no signed heartbeat for 3601 s since start"));
        // An hour-old heartbeat is old news.
        let at = t0 + HOUR * 2;
        let held = Held::default();
        assert!(!f.on_heartbeat(&watch, pb::PlatformHeartbeat::default(), wall - 2 * 3_600_000, held, wall, at));
        assert!(f.evaluate(&watch, wall, at).is_empty(), "still stale");
        assert!(!f.on_heartbeat(&watch, pb::PlatformHeartbeat::default(), wall - 1_000, held, wall, at));
        let ended = f.evaluate(&watch, wall, at);
        assert_eq!((ended[0].alarm, ended[0].began), ("platform_stale", false));
        assert!(!watch.unvouched() && watch.warnings().is_empty());
    }

    #[test]
    fn a_heartbeat_naming_newer_versions_is_behind_after_the_grace() {
        let watch = PlatformWatch::default();
        let t0 = Instant::now();
        let wall = 1_800_000_000_000;
        let mut f = Freshness::new(HOUR, 24 * HOUR, t0, 0);
        let hb = pb::PlatformHeartbeat { identity_version: 7, health_version: 2, mode_counter: 3, trust_version: 0 };
        let held = Held { identity_version: 5, health_version: 2, trust_version: 0, mode_counter: 3 };
        assert!(f.on_heartbeat(&watch, hb, wall, held, wall, t0));
        assert!(f.evaluate(&watch, wall, t0 + Duration::from_secs(30)).is_empty(), "a resync may still come");
        let began = f.evaluate(&watch, wall, t0 + Duration::from_secs(61));
        assert_eq!(began[0].facts[1], ("missing".to_owned(), "identity 7 (have 5)".to_owned()));
        assert!(watch.behind.load(Ordering::Relaxed));
        let held = Held { identity_version: 7, ..held };
        assert!(!f.check_behind(held, t0 + Duration::from_secs(62)));
        assert!(!f.evaluate(&watch, wall, t0 + Duration::from_secs(63)).is_empty());
        assert!(!watch.behind.load(Ordering::Relaxed));
    }

    #[test]
    fn a_clock_below_the_floor_is_behind_and_decisions_use_the_floor() {
        let watch = PlatformWatch::default();
        let t0 = Instant::now();
        let mut f = Freshness::new(HOUR, 24 * HOUR, t0, 0);
        let signed_at = 1_800_000_000_000;
        f.on_verified(&watch, signed_at, t0);
        let year_2000 = 946_684_800_000;
        assert_eq!(watch.trusted_now(year_2000), signed_at);
        let began = f.evaluate(&watch, year_2000, t0);
        assert!(began.iter().any(|t| t.alarm == "clock_behind" && t.began));
        assert!(watch.clock_behind.load(Ordering::Relaxed));
        assert_eq!(f.floor_to_persist(&watch), Some(signed_at));
        assert_eq!(f.floor_to_persist(&watch), None);
        // Two days ahead of the platform's time.
        let began = f.evaluate(&watch, signed_at + 2 * 86_400_000, t0 + Duration::from_secs(1));
        assert!(began.iter().any(|t| t.alarm == "clock_ahead" && t.began));
        assert!(began.iter().any(|t| t.alarm == "clock_behind" && !t.began));
    }
}
