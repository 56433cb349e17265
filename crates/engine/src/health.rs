//! Health verification rules: a person's health record (and any signed
//! certificate shown in the same transaction) against the mode's rules for
//! their category. Pure: `now` is an argument.
//!
//! The order of the checks names the reason: the record's freshness first,
//! then health code colour, travel record, nucleic-acid test, vaccination.

use gate_core::{BlockReason, HealthColour, HealthRecord, UnixMillis};

const HOUR_MS: i64 = 3_600_000;

/// What to do when no fresh record is available and the platform did not
/// answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFallback {
    /// Refuse with `health_unverified`.
    Refuse,
    /// Decide on a stale record as long as it is at most this many hours old;
    /// older is `health_record_stale`.
    AcceptStale { max_age_h: u32 },
}

/// The rules of one mode for one category (`[policy.<mode>.health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRules {
    pub allowed_colours: Vec<HealthColour>,
    pub nat_required: bool,
    /// A nucleic-acid sample older than this does not count.
    pub nat_window_h: u32,
    pub min_doses: u32,
    pub refuse_travel_risk: bool,
    /// A record assessed longer ago than this is stale.
    pub max_record_age_h: u32,
    pub fallback: HealthFallback,
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            allowed_colours: vec![HealthColour::Green],
            nat_required: true,
            nat_window_h: 48,
            min_doses: 0,
            refuse_travel_risk: true,
            max_record_age_h: 24,
            fallback: HealthFallback::Refuse,
        }
    }
}

/// Facts from signed certificates verified in this transaction, already
/// checked to belong to the person at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertificateFacts {
    /// A vaccination certificate: doses received.
    pub vaccine_doses: Option<u32>,
    /// A test certificate: negative result and when sampled.
    pub negative_test_sampled_at_ms: Option<UnixMillis>,
    /// A valid recovery certificate (counts as vaccinated).
    pub recovered: bool,
}

/// Whether a record is fresh enough to decide on without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Missing,
    Stale,
    Fresh,
}

/// The freshness of `record` under `rules` at `now`.
pub fn freshness(record: Option<&HealthRecord>, rules: &HealthRules, now: UnixMillis) -> Freshness {
    match record {
        None => Freshness::Missing,
        Some(r) if now > r.expires_at_ms || now - r.assessed_at_ms > i64::from(rules.max_record_age_h) * HOUR_MS => {
            Freshness::Stale
        }
        Some(_) => Freshness::Fresh,
    }
}

/// The outcome, with the facts behind it (never more than needed: colour,
/// hours since sampling, doses, whether a risk area was visited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthVerdict {
    pub outcome: Result<(), BlockReason>,
    pub facts: Vec<(String, String)>,
}

/// Evaluates the rules. `online_failed` says the platform was asked for a
/// fresh record and did not answer (or the gate is offline): then the
/// fallback decides what a missing or stale record means.
pub fn evaluate(
    record: Option<&HealthRecord>,
    certificates: &CertificateFacts,
    rules: &HealthRules,
    now: UnixMillis,
) -> HealthVerdict {
    let mut facts = Vec::new();
    let fail = |reason, facts| HealthVerdict { outcome: Err(reason), facts };
    let record = match (freshness(record, rules, now), record) {
        (Freshness::Fresh, Some(r)) => Some(r),
        (Freshness::Stale, Some(r)) => {
            let age_h = (now - r.assessed_at_ms) / HOUR_MS;
            facts.push(("record_age_h".into(), age_h.to_string()));
            match rules.fallback {
                HealthFallback::AcceptStale { max_age_h }
                    if age_h <= i64::from(max_age_h) && now <= r.expires_at_ms =>
                {
                    facts.push(("stale_accepted".into(), "true".into()));
                    Some(r)
                }
                HealthFallback::AcceptStale { .. } => return fail(BlockReason::HealthRecordStale, facts),
                HealthFallback::Refuse => return fail(BlockReason::HealthUnverified, facts),
            }
        }
        _ => None,
    };
    // Without a record only certificates can speak, and they carry no health
    // code: a colour rule then cannot be met.
    let Some(record) = record else {
        let colour_rule = !rules.allowed_colours.is_empty();
        if colour_rule || (*certificates == CertificateFacts::default()) {
            facts.push(("record".into(), "missing".into()));
            return fail(BlockReason::HealthUnverified, facts);
        }
        return check_tests_and_doses(None, certificates, rules, now, facts);
    };
    facts.push(("colour".into(), record.colour.as_str().into()));
    if !rules.allowed_colours.is_empty() && !rules.allowed_colours.contains(&record.colour) {
        let reason = match record.colour {
            HealthColour::Red => BlockReason::HealthCodeRed,
            HealthColour::Yellow => BlockReason::HealthCodeYellow,
            HealthColour::Green | HealthColour::Unassessed => BlockReason::HealthUnverified,
        };
        return fail(reason, facts);
    }
    if rules.refuse_travel_risk && record.travel_risk {
        facts.push(("travel_risk".into(), "true".into()));
        return fail(BlockReason::TravelRisk, facts);
    }
    check_tests_and_doses(Some(record), certificates, rules, now, facts)
}

fn check_tests_and_doses(
    record: Option<&HealthRecord>,
    certificates: &CertificateFacts,
    rules: &HealthRules,
    now: UnixMillis,
    mut facts: Vec<(String, String)>,
) -> HealthVerdict {
    let fail = |reason, facts| HealthVerdict { outcome: Err(reason), facts };
    if rules.nat_required {
        // The most recent evidence counts: a certificate's negative test or
        // the record's result.
        let from_record = record.and_then(|r| r.nat);
        let from_cert = certificates.negative_test_sampled_at_ms;
        let latest = match (from_record, from_cert) {
            (Some(r), Some(c)) if c > r.sampled_at_ms => Some((false, c)),
            (Some(r), _) => Some((r.positive, r.sampled_at_ms)),
            (None, Some(c)) => Some((false, c)),
            (None, None) => None,
        };
        let Some((positive, sampled)) = latest else {
            return fail(BlockReason::NatMissing, facts);
        };
        let hours = (now - sampled).max(0) / HOUR_MS;
        facts.push(("hours_since_sampling".into(), hours.to_string()));
        if positive {
            return fail(BlockReason::NatPositive, facts);
        }
        if now - sampled > i64::from(rules.nat_window_h) * HOUR_MS {
            return fail(BlockReason::NatExpired, facts);
        }
    }
    if rules.min_doses > 0 {
        let doses = record.map_or(0, |r| r.vaccine_doses).max(certificates.vaccine_doses.unwrap_or(0));
        facts.push(("doses".into(), doses.to_string()));
        if doses < rules.min_doses && !certificates.recovered {
            return fail(BlockReason::VaccinationInsufficient, facts);
        }
    }
    HealthVerdict { outcome: Ok(()), facts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::NatResult;

    const NOW: i64 = 1_000 * HOUR_MS;

    fn record() -> HealthRecord {
        HealthRecord {
            person_id: "p".into(),
            colour: HealthColour::Green,
            nat: Some(NatResult { positive: false, sampled_at_ms: NOW - 10 * HOUR_MS }),
            vaccine_doses: 3,
            last_dose_at_ms: Some(NOW - 1_000 * HOUR_MS),
            travel_risk: false,
            risk_areas: vec![],
            assessed_at_ms: NOW - HOUR_MS,
            expires_at_ms: NOW + 24 * HOUR_MS,
        }
    }

    fn rules() -> HealthRules {
        HealthRules { min_doses: 2, ..HealthRules::default() }
    }

    /// Every reason and its boundary: exactly at the window passes, one
    /// second past fails.
    #[test]
    fn rule_table() {
        let none = CertificateFacts::default();
        type Case = (&'static str, Box<dyn Fn(&mut HealthRecord, &mut HealthRules)>, Option<BlockReason>);
        let cases: Vec<Case> = vec![
            ("all good", Box::new(|_, _| {}), None),
            ("red", Box::new(|r, _| r.colour = HealthColour::Red), Some(BlockReason::HealthCodeRed)),
            ("yellow", Box::new(|r, _| r.colour = HealthColour::Yellow), Some(BlockReason::HealthCodeYellow)),
            ("unassessed", Box::new(|r, _| r.colour = HealthColour::Unassessed), Some(BlockReason::HealthUnverified)),
            (
                "yellow allowed",
                Box::new(|r, p| {
                    r.colour = HealthColour::Yellow;
                    p.allowed_colours.push(HealthColour::Yellow)
                }),
                None,
            ),
            ("travel risk", Box::new(|r, _| r.travel_risk = true), Some(BlockReason::TravelRisk)),
            (
                "travel risk tolerated",
                Box::new(|r, p| {
                    r.travel_risk = true;
                    p.refuse_travel_risk = false
                }),
                None,
            ),
            ("no test", Box::new(|r, _| r.nat = None), Some(BlockReason::NatMissing)),
            (
                "no test, not required",
                Box::new(|r, p| {
                    r.nat = None;
                    p.nat_required = false
                }),
                None,
            ),
            (
                "positive",
                Box::new(|r, _| r.nat = Some(NatResult { positive: true, sampled_at_ms: NOW - HOUR_MS })),
                Some(BlockReason::NatPositive),
            ),
            (
                "sampled exactly 48 h ago",
                Box::new(|r, _| r.nat = Some(NatResult { positive: false, sampled_at_ms: NOW - 48 * HOUR_MS })),
                None,
            ),
            (
                "sampled 48 h and one second ago",
                Box::new(|r, _| r.nat = Some(NatResult { positive: false, sampled_at_ms: NOW - 48 * HOUR_MS - 1_000 })),
                Some(BlockReason::NatExpired),
            ),
            (
                "a 72 h window",
                Box::new(|r, p| {
                    r.nat = Some(NatResult { positive: false, sampled_at_ms: NOW - 60 * HOUR_MS });
                    p.nat_window_h = 72
                }),
                None,
            ),
            ("one dose short", Box::new(|r, _| r.vaccine_doses = 1), Some(BlockReason::VaccinationInsufficient)),
            ("exactly the doses", Box::new(|r, _| r.vaccine_doses = 2), None),
            ("assessed exactly 24 h ago", Box::new(|r, _| r.assessed_at_ms = NOW - 24 * HOUR_MS), None),
            (
                "assessed 24 h and one second ago, refuse",
                Box::new(|r, _| r.assessed_at_ms = NOW - 24 * HOUR_MS - 1_000),
                Some(BlockReason::HealthUnverified),
            ),
            (
                "stale but within the accepted age",
                Box::new(|r, p| {
                    r.assessed_at_ms = NOW - 30 * HOUR_MS;
                    p.fallback = HealthFallback::AcceptStale { max_age_h: 36 }
                }),
                None,
            ),
            (
                "stale beyond the accepted age",
                Box::new(|r, p| {
                    r.assessed_at_ms = NOW - 40 * HOUR_MS;
                    p.fallback = HealthFallback::AcceptStale { max_age_h: 36 }
                }),
                Some(BlockReason::HealthRecordStale),
            ),
            (
                "expired record",
                Box::new(|r, p| {
                    r.expires_at_ms = NOW - 1;
                    p.fallback = HealthFallback::AcceptStale { max_age_h: 36 }
                }),
                Some(BlockReason::HealthRecordStale),
            ),
            (
                "red beats an old test",
                Box::new(|r, _| {
                    r.colour = HealthColour::Red;
                    r.nat = None
                }),
                Some(BlockReason::HealthCodeRed),
            ),
        ];
        for (what, change, want) in cases {
            let (mut r, mut p) = (record(), rules());
            change(&mut r, &mut p);
            assert_eq!(evaluate(Some(&r), &none, &p, NOW).outcome, want.map_or(Ok(()), Err), "{what}");
        }
        assert_eq!(evaluate(None, &none, &rules(), NOW).outcome, Err(BlockReason::HealthUnverified), "no record");
    }

    #[test]
    fn facts_say_what_decided_and_nothing_more() {
        let mut r = record();
        r.nat = Some(NatResult { positive: false, sampled_at_ms: NOW - 50 * HOUR_MS });
        r.risk_areas = vec!["思明区某街道".into()];
        let v = evaluate(Some(&r), &CertificateFacts::default(), &rules(), NOW);
        assert_eq!(v.outcome, Err(BlockReason::NatExpired));
        assert_eq!(v.facts, vec![("colour".into(), "green".into()), ("hours_since_sampling".into(), "50".into())]);
    }

    #[test]
    fn certificates_stand_in_for_tests_and_doses() {
        let mut r = record();
        r.nat = None;
        r.vaccine_doses = 0;
        let certs = CertificateFacts {
            vaccine_doses: Some(2),
            negative_test_sampled_at_ms: Some(NOW - 5 * HOUR_MS),
            recovered: false,
        };
        assert_eq!(evaluate(Some(&r), &certs, &rules(), NOW).outcome, Ok(()));
        let recovered = CertificateFacts { recovered: true, ..CertificateFacts::default() };
        let no_test = HealthRules { nat_required: false, ..rules() };
        assert_eq!(evaluate(Some(&r), &recovered, &no_test, NOW).outcome, Ok(()));
        // Without a record, a colour rule cannot be met by certificates.
        assert_eq!(evaluate(None, &certs, &rules(), NOW).outcome, Err(BlockReason::HealthUnverified));
        let no_colour = HealthRules { allowed_colours: vec![], ..rules() };
        assert_eq!(evaluate(None, &certs, &no_colour, NOW).outcome, Ok(()));
    }
}
