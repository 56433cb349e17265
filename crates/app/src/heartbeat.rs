//! The decision loop's heartbeat: the loop stamps it on every turn (and at
//! least once a second when idle), and the daemon feeds the systemd watchdog
//! only while the stamp is fresh, so a wedged loop stops the keep-alives and
//! systemd restarts the process.
//!
//! A monotonic clock: a wall-clock jump (NTP, a technician setting the time)
//! must neither fake a fresh beat nor kill a healthy daemon.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often an idle decision loop still turns.
pub const IDLE_BEAT: Duration = Duration::from_secs(1);

/// The instant all heartbeats count from (first use in the process).
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The last turn of a loop, in ms after [`base`] plus one (0: never).
#[derive(Debug, Default)]
pub struct Heartbeat {
    last: AtomicU64,
}

impl Heartbeat {
    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = base().elapsed().as_millis() as u64;
        self.last.store(ms + 1, Ordering::Relaxed);
    }

    /// Time since the last beat; `None` before the first one.
    pub fn age(&self) -> Option<Duration> {
        let last = self.last.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let now = base().elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(last - 1)))
    }

    /// Beat within `max_age`. A loop that never beat is not fresh.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        self.age().is_some_and(|age| age <= max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_only_after_a_recent_beat() {
        let h = Heartbeat::default();
        assert_eq!(h.age(), None);
        assert!(!h.is_fresh(Duration::from_secs(3600)), "never beat: not alive");
        h.beat();
        assert!(h.is_fresh(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!h.is_fresh(Duration::from_millis(10)), "a stale beat");
        assert!(h.age().expect("beat") >= Duration::from_millis(30));
    }
}
