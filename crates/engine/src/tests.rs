//! Decision tables. Time is an argument everywhere; no clock is read.

use super::*;
use gate_core::{AllowedGates, Decision, TimeWindow};

const DAY: i64 = 86_400_000;

fn date(y: i32, m: u8, d: u8) -> CivilDate {
    CivilDate::try_new(y, m, d).expect("test date")
}

/// Monday 2026-06-01, 12:00 in Xiamen.
fn noon() -> UnixMillis {
    date(2026, 6, 1).start_ms(UtcOffset::CHINA) + DAY / 2
}

fn person(category: Category, status: PersonStatus) -> PersonRecord {
    let mut p = PersonRecord::new(
        "p-1",
        category,
        status,
        date(2026, 1, 1).start_ms(UtcOffset::CHINA),
        date(2026, 12, 31).end_ms(UtcOffset::CHINA),
    );
    p.tags = vec!["tenant".into()];
    p
}

fn gate<'a>(mode: Mode, flexible: bool, policy: &'a Policy) -> GateContext<'a> {
    GateContext {
        gate_id: "east-1",
        flexible,
        mode,
        policy,
        offset: UtcOffset::CHINA,
        anti_passback: AntiPassback::Off,
        side: Side::Entry,
        refuse_unvouched: false,
    }
}

#[test]
fn a_stale_platform_refuses_in_wartime_only_when_configured() {
    let p = person(Category::Resident, PersonStatus::Active);
    for (mode, refuse, want) in [
        (Mode::Wartime, true, Some(BlockReason::PlatformStale)),
        (Mode::Wartime, false, None),
        (Mode::Normal, true, None),
    ] {
        let policy = Policy::default_for(mode);
        let ctx = GateContext { refuse_unvouched: refuse, ..gate(mode, false, &policy) };
        assert_eq!(decide(attempt(&CARD, Some(&p)), ctx, noon()).reason, want, "{mode:?} {refuse}");
    }
}

fn attempt<'a>(credential: &'a CredentialFacts, person: Option<&'a PersonRecord>) -> Attempt<'a> {
    Attempt {
        credential,
        person,
        watchlisted: false,
        last_passage: None,
        companion_pass: false,
        health: HealthCheck::Passed,
    }
}

const CARD: CredentialFacts = CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::LongTerm) };

#[derive(Debug, Clone, Copy)]
enum Window {
    Before,
    Inside,
    After,
}

/// The specification, stated plainly, for a card attempt with default policies.
fn expected_card(c: Category, s: PersonStatus, w: Window, mode: Mode, flexible: bool) -> Option<BlockReason> {
    if mode == Mode::Wartime && flexible {
        return Some(BlockReason::CheckpointClosed);
    }
    match s {
        PersonStatus::Blocked => return Some(BlockReason::Blocked),
        PersonStatus::Suspended => return Some(BlockReason::Suspended),
        PersonStatus::Active => {}
    }
    match w {
        Window::Before => return Some(BlockReason::NotYetValid),
        Window::After => return Some(BlockReason::Expired),
        Window::Inside => {}
    }
    if mode == Mode::Wartime && c == Category::Visitor {
        return Some(BlockReason::CategoryNotAllowed);
    }
    if c == Category::Visitor {
        // Every shipped policy requires a pass from visitors.
        return Some(BlockReason::VisitorPassRequired);
    }
    None
}

/// Every category x mode x flexible x status x window, for ID cards.
#[test]
fn card_decision_table() {
    let mut cases = 0;
    for mode in Mode::ALL {
        let policy = Policy::default_for(mode);
        for flexible in [false, true] {
            for category in Category::ALL {
                for status in PersonStatus::ALL {
                    for window in [Window::Before, Window::Inside, Window::After] {
                        let p = person(category, status);
                        let now = match window {
                            Window::Before => p.valid_from_ms - 1,
                            Window::Inside => noon(),
                            Window::After => p.valid_to_ms + 1,
                        };
                        let v = decide(attempt(&CARD, Some(&p)), gate(mode, flexible, &policy), now);
                        let want = expected_card(category, status, window, mode, flexible);
                        let what = format!("{mode} flexible={flexible} {category} {status:?} {window:?}");
                        assert_eq!(v.reason, want, "{what}");
                        assert_eq!(v.decision, if want.is_none() { Decision::Pass } else { Decision::Block }, "{what}");
                        assert_eq!(v.person_id.as_deref(), Some("p-1"), "{what}");
                        assert_eq!(v.tags, ["tenant"], "{what}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 3 * 2 * 3 * 3 * 3);
}

fn pass(state: PassState) -> PassFacts {
    let mut p = PassFacts {
        pass_id: "vp-1".into(),
        valid_from_ms: noon() - DAY,
        valid_to_ms: noon() + DAY,
        allowed_gates: vec!["east-1".into()],
        max_uses: 2,
        uses_so_far: 1,
        revoked: false,
    };
    match state {
        PassState::Valid => {}
        PassState::Expired => p.valid_to_ms = noon() - 1,
        PassState::WrongGate => p.allowed_gates = vec!["west-2".into()],
        PassState::UsedUp => p.uses_so_far = 2,
        PassState::Revoked => p.revoked = true,
    }
    p
}

/// Every pass state x mode x flexible.
#[test]
fn visitor_pass_table() {
    let states = [
        (PassState::Valid, None),
        (PassState::Expired, Some(BlockReason::PassExpired)),
        (PassState::WrongGate, Some(BlockReason::PassWrongGate)),
        (PassState::UsedUp, Some(BlockReason::PassUsedUp)),
        (PassState::Revoked, Some(BlockReason::PassRevoked)),
    ];
    for mode in Mode::ALL {
        let policy = Policy::default_for(mode);
        for flexible in [false, true] {
            for (state, pass_reason) in states {
                let credential = CredentialFacts::VisitorPass(pass(state));
                let v = decide(attempt(&credential, None), gate(mode, flexible, &policy), noon());
                let want = if mode == Mode::Wartime && flexible {
                    Some(BlockReason::CheckpointClosed)
                } else if pass_reason.is_some() {
                    pass_reason
                } else if mode == Mode::Wartime {
                    Some(BlockReason::CategoryNotAllowed)
                } else if mode == Mode::Sporadic {
                    // Health is required in sporadic mode; this attempt passed it.
                    None
                } else {
                    None
                };
                assert_eq!(v.reason, want, "{mode} flexible={flexible} {state:?}");
            }
        }
    }
    // A forged pass never gets that far.
    let forged = CredentialFacts::Refused(BlockReason::PassInvalid);
    let policy = Policy::default_for(Mode::Normal);
    assert_eq!(
        decide(attempt(&forged, None), gate(Mode::Normal, false, &policy), noon()).reason,
        Some(BlockReason::PassInvalid)
    );
}

#[test]
fn a_visitors_card_passes_with_a_companion_pass() {
    let policy = Policy::default_for(Mode::Normal);
    let visitor = person(Category::Visitor, PersonStatus::Active);
    let mut a = attempt(&CARD, Some(&visitor));
    assert_eq!(decide(a, gate(Mode::Normal, false, &policy), noon()).reason, Some(BlockReason::VisitorPassRequired));
    a.companion_pass = true;
    assert_eq!(decide(a, gate(Mode::Normal, false, &policy), noon()).decision, Decision::Pass);
    let lenient = Policy { visitor_pass_required: false, ..policy.clone() };
    a.companion_pass = false;
    assert_eq!(decide(a, gate(Mode::Normal, false, &lenient), noon()).decision, Decision::Pass);
}

#[test]
fn workers_time_windows_in_site_time() {
    let policy = Policy::default_for(Mode::Normal);
    let mut worker = person(Category::Worker, PersonStatus::Active);
    worker.time_windows = vec![TimeWindow::parse("mon-fri 07:00-19:00").expect("window")];
    let monday = date(2026, 6, 1).start_ms(UtcOffset::CHINA);
    let cases = [
        (monday + 7 * 3_600_000, None),
        (monday + 19 * 3_600_000 - 1, None),
        (monday + 19 * 3_600_000, Some(BlockReason::OutsideTimeWindow)),
        (monday + 6 * 3_600_000, Some(BlockReason::OutsideTimeWindow)),
        (monday + 5 * DAY + 10 * 3_600_000, Some(BlockReason::OutsideTimeWindow)), // Saturday
    ];
    for (now, want) in cases {
        assert_eq!(
            decide(attempt(&CARD, Some(&worker)), gate(Mode::Normal, false, &policy), now).reason,
            want,
            "{now}"
        );
    }
    let relaxed = Policy { enforce_time_windows: false, ..policy.clone() };
    assert_eq!(decide(attempt(&CARD, Some(&worker)), gate(Mode::Normal, false, &relaxed), monday).reason, None);
    // Residents have no windows even if some were set.
    let mut resident = person(Category::Resident, PersonStatus::Active);
    resident.time_windows = worker.time_windows.clone();
    assert_eq!(decide(attempt(&CARD, Some(&resident)), gate(Mode::Normal, false, &policy), monday).reason, None);
}

#[test]
fn gates_watchlist_card_expiry_and_plates() {
    let policy = Policy::default_for(Mode::Normal);
    let ctx = gate(Mode::Normal, false, &policy);
    let mut p = person(Category::Resident, PersonStatus::Active);
    p.allowed_gates = AllowedGates::Only(vec!["west-2".into()]);
    assert_eq!(decide(attempt(&CARD, Some(&p)), ctx, noon()).reason, Some(BlockReason::GateNotAllowed));
    p.allowed_gates = AllowedGates::Only(vec!["west-2".into(), "east-1".into()]);
    assert_eq!(decide(attempt(&CARD, Some(&p)), ctx, noon()).reason, None);

    let mut watched = attempt(&CARD, Some(&p));
    watched.watchlisted = true;
    assert_eq!(decide(watched, ctx, noon()).reason, Some(BlockReason::Blocklisted));
    let mut watched_stranger = attempt(&CARD, None);
    watched_stranger.watchlisted = true;
    assert_eq!(decide(watched_stranger, ctx, noon()).reason, Some(BlockReason::Blocklisted));

    let expired_card = CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Date(date(2026, 5, 31))) };
    assert_eq!(decide(attempt(&expired_card, Some(&p)), ctx, noon()).reason, Some(BlockReason::CardExpired));
    let today_card = CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Date(date(2026, 6, 1))) };
    assert_eq!(decide(attempt(&today_card, Some(&p)), ctx, noon()).reason, None);
    // Dates that cannot be read are never "no expiry".
    let unreadable = CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Unreadable) };
    assert_eq!(decide(attempt(&unreadable, Some(&p)), ctx, noon()).reason, Some(BlockReason::CardUnreadable));
    assert_eq!(decide(attempt(&unreadable, None), ctx, noon()).reason, Some(BlockReason::CardUnreadable));

    assert_eq!(decide(attempt(&CredentialFacts::Plate, None), ctx, noon()).reason, Some(BlockReason::UnknownVehicle));
    assert_eq!(decide(attempt(&CredentialFacts::Plate, Some(&p)), ctx, noon()).reason, None);
    assert_eq!(decide(attempt(&CARD, None), ctx, noon()).reason, Some(BlockReason::UnknownPerson));
}

#[test]
fn card_expiry_uses_site_day_not_utc_day() {
    let policy = Policy::default_for(Mode::Normal);
    let p = person(Category::Resident, PersonStatus::Active);
    let card = CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Date(date(2026, 6, 1))) };
    // 2026-06-02T00:30+08:00 is still June 1st in UTC; the site says June 2nd.
    let just_after_midnight = date(2026, 6, 2).start_ms(UtcOffset::CHINA) + 30 * 60_000;
    let v = decide(attempt(&card, Some(&p)), gate(Mode::Normal, false, &policy), just_after_midnight);
    assert_eq!(v.reason, Some(BlockReason::CardExpired));
}

#[test]
fn anti_passback_paired_and_timed() {
    let policy = Policy::default_for(Mode::Normal);
    let p = person(Category::Resident, PersonStatus::Active);
    let entered = Some(LastPassage { side: Side::Entry, at_ms: noon() - 3_600_000 });
    let exited = Some(LastPassage { side: Side::Exit, at_ms: noon() - 1_000 });
    let cases = [
        (AntiPassback::Paired, Side::Entry, entered, Some(BlockReason::AntiPassback)),
        (AntiPassback::Paired, Side::Entry, exited, None),
        (AntiPassback::Paired, Side::Exit, entered, None),
        (AntiPassback::Paired, Side::Entry, None, None),
        (AntiPassback::Timed { window_ms: 30_000 }, Side::Exit, exited, Some(BlockReason::AntiPassback)),
        (AntiPassback::Timed { window_ms: 30_000 }, Side::Entry, exited, None),
        (AntiPassback::Timed { window_ms: 30_000 }, Side::Entry, entered, None),
        (AntiPassback::Timed { window_ms: 1_000 }, Side::Exit, exited, None),
        (AntiPassback::Off, Side::Entry, entered, None),
    ];
    for (mode, side, last, want) in cases {
        let ctx = GateContext { anti_passback: mode, side, ..gate(Mode::Normal, false, &policy) };
        let mut a = attempt(&CARD, Some(&p));
        a.last_passage = last;
        assert_eq!(decide(a, ctx, noon()).reason, want, "{mode:?} {side:?} {last:?}");
    }
}

#[test]
fn health_hook_follows_the_policy() {
    let p = person(Category::Resident, PersonStatus::Active);
    let cases = [
        (Mode::Normal, HealthCheck::NotChecked, None),
        (Mode::Wartime, HealthCheck::Passed, None),
        (Mode::Wartime, HealthCheck::NotChecked, Some(BlockReason::HealthUnverified)),
        (Mode::Wartime, HealthCheck::Unavailable, Some(BlockReason::HealthUnverified)),
        (Mode::Wartime, HealthCheck::Failed(BlockReason::HealthCodeRed), Some(BlockReason::HealthCodeRed)),
        (Mode::Sporadic, HealthCheck::Failed(BlockReason::NatExpired), Some(BlockReason::NatExpired)),
    ];
    for (mode, health, want) in cases {
        let policy = Policy::default_for(mode);
        let mut a = attempt(&CARD, Some(&p));
        a.health = health;
        assert_eq!(decide(a, gate(mode, false, &policy), noon()).reason, want, "{mode} {health:?}");
    }
}

#[test]
fn refused_credentials_keep_their_reason() {
    let policy = Policy::default_for(Mode::Normal);
    for reason in [BlockReason::InvalidIdNumber, BlockReason::UnsupportedCard, BlockReason::PassInvalid] {
        let c = CredentialFacts::Refused(reason);
        assert_eq!(decide(attempt(&c, None), gate(Mode::Wartime, true, &policy), noon()).reason, Some(reason));
    }
}
