//! Alert deduplication: the same subject refused for the same reason within
//! the quiet period raises the repeat count of the open alert (same
//! `alert_id`) instead of opening a new one.

use gate_core::UnixMillis;
use std::collections::HashMap;

/// One alert as it goes out: new (`repeat_count == 1`) or a repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occurrence {
    pub alert_id: String,
    pub repeat_count: u32,
    pub first_at_ms: UnixMillis,
}

#[derive(Debug)]
struct Open {
    alert_id: String,
    count: u32,
    first_at_ms: UnixMillis,
    last_at_ms: UnixMillis,
}

/// Open alerts by (subject, reason). Pure: time is an argument.
#[derive(Debug)]
pub(crate) struct AlertBook {
    quiet_ms: i64,
    open: HashMap<(String, String), Open>,
}

impl AlertBook {
    pub(crate) fn new(quiet_ms: i64) -> Self {
        AlertBook { quiet_ms, open: HashMap::new() }
    }

    /// A reloaded quiet period. Open alerts keep their ids and counts; the
    /// new period decides from now on when they close.
    pub(crate) fn set_quiet_period(&mut self, quiet: std::time::Duration) {
        self.quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
    }

    /// The alert a device alarm of `source` ("gate", "store") raises;
    /// repeats within the quiet period raise the open alert's count. Its
    /// mode is filled in where it is written.
    pub(crate) fn alarm(
        &mut self,
        config: &gate_config::Config,
        source: &str,
        alarm: &str,
        facts: Vec<(String, String)>,
        now: UnixMillis,
    ) -> gate_sync::AlertRecord {
        let occurrence = self.record(source, alarm, now);
        gate_sync::AlertRecord {
            alert_id: occurrence.alert_id,
            site_id: config.site.id.to_string(),
            gate_id: config.gate.id.to_string(),
            occurred_at_ms: now,
            subject: String::new(),
            person_id: None,
            category: None,
            reason: None,
            alarm: Some(alarm.to_owned()),
            facts,
            repeat_count: occurrence.repeat_count,
            first_occurred_at_ms: occurrence.first_at_ms,
            mode: gate_core::Mode::Normal,
        }
    }

    pub(crate) fn record(&mut self, subject: &str, reason: &str, now: UnixMillis) -> Occurrence {
        let quiet = self.quiet_ms;
        self.open.retain(|_, o| now - o.last_at_ms <= quiet);
        let key = (subject.to_owned(), reason.to_owned());
        let open = self.open.entry(key).or_insert_with(|| Open {
            alert_id: uuid::Uuid::new_v4().to_string(),
            count: 0,
            first_at_ms: now,
            last_at_ms: now,
        });
        open.count += 1;
        open.last_at_ms = now;
        Occurrence { alert_id: open.alert_id.clone(), repeat_count: open.count, first_at_ms: open.first_at_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_quiet_period_share_one_alert() {
        let mut book = AlertBook::new(1_000);
        let a = book.record("s1", "blocklisted", 0);
        let b = book.record("s1", "blocklisted", 900);
        assert_eq!((b.alert_id == a.alert_id, b.repeat_count, b.first_at_ms), (true, 2, 0));
        // The quiet period runs from the last refusal.
        let c = book.record("s1", "blocklisted", 1_800);
        assert_eq!((c.alert_id == a.alert_id, c.repeat_count), (true, 3));
        let d = book.record("s1", "blocklisted", 2_801);
        assert_ne!(d.alert_id, a.alert_id);
        assert_eq!(d.repeat_count, 1);
        // Another reason or subject is another alert.
        assert_ne!(book.record("s1", "health_code_red", 2_802).alert_id, d.alert_id);
        assert_ne!(book.record("s2", "blocklisted", 2_803).alert_id, d.alert_id);
    }

    #[test]
    fn a_reloaded_quiet_period_decides_from_then_on() {
        let mut book = AlertBook::new(1_000);
        let a = book.record("gate", "door_forced", 0);
        // Lengthened: a repeat after 5 s still joins the open alert.
        book.set_quiet_period(std::time::Duration::from_secs(10));
        let b = book.record("gate", "door_forced", 5_000);
        assert_eq!((b.alert_id == a.alert_id, b.repeat_count), (true, 2));
        // Shortened to nothing: the next one is a new alert.
        book.set_quiet_period(std::time::Duration::ZERO);
        assert_ne!(book.record("gate", "door_forced", 5_001).alert_id, a.alert_id);
    }
}
