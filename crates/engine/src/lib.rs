//! The pure decision engine: facts about an attempt and `now` in, a
//! [`Verdict`] out. It never awaits, never reads a clock and never touches a
//! device or a database, so every rule is tested with plain values.

use gate_core::{
    BlockReason, CardValidTo, CivilDate, Decision, PersonRecord, PersonStatus, UnixMillis,
    UtcOffset, Verdict,
};

/// What the credential itself tells us, before the identity table is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialFacts {
    /// A resident ID card that parsed and passed its check character.
    IdCard {
        /// The card's printed validity end.
        card_valid_to: Option<CardValidTo>,
    },
    /// The credential was refused at reading (bad check character,
    /// unsupported card type): the reason is final.
    Refused(BlockReason),
}

/// Everything the engine needs for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub credential: CredentialFacts,
    /// The identity-table entry the credential's keyed hash matched.
    pub person: Option<&'a PersonRecord>,
}

/// Decides one attempt at instant `now`; `site_offset` places the card's
/// printed dates in the site's day.
pub fn decide(attempt: Attempt<'_>, now: UnixMillis, site_offset: UtcOffset) -> Verdict {
    match attempt.credential {
        CredentialFacts::Refused(reason) => return Verdict::block(reason),
        CredentialFacts::IdCard {
            card_valid_to: Some(CardValidTo::Date(valid_to)),
        } if CivilDate::of_instant(now, site_offset) > valid_to => {
            return with_person(Verdict::block(BlockReason::CardExpired), attempt.person);
        }
        CredentialFacts::IdCard { .. } => {}
    }
    let Some(person) = attempt.person else {
        return Verdict::block(BlockReason::UnknownPerson);
    };
    let reason = match person.status {
        PersonStatus::Blocked => Some(BlockReason::Blocked),
        PersonStatus::Suspended => Some(BlockReason::Suspended),
        PersonStatus::Active if now < person.valid_from_ms => Some(BlockReason::NotYetValid),
        PersonStatus::Active if now > person.valid_to_ms => Some(BlockReason::Expired),
        PersonStatus::Active => None,
    };
    let verdict = match reason {
        Some(reason) => Verdict::block(reason),
        None => Verdict {
            decision: Decision::Pass,
            reason: None,
            person_id: None,
            category: None,
        },
    };
    with_person(verdict, Some(person))
}

fn with_person(mut verdict: Verdict, person: Option<&PersonRecord>) -> Verdict {
    if let Some(person) = person {
        verdict.person_id = Some(person.person_id.clone());
        verdict.category = Some(person.category);
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::Category;

    const DAY: i64 = 86_400_000;

    fn date(y: i32, m: u8, d: u8) -> CivilDate {
        CivilDate::try_new(y, m, d).expect("test date")
    }

    fn person(status: PersonStatus) -> PersonRecord {
        PersonRecord {
            person_id: "p-1".into(),
            category: Category::Worker,
            status,
            valid_from_ms: date(2026, 1, 1).start_ms(UtcOffset::CHINA),
            valid_to_ms: date(2026, 12, 31).end_ms(UtcOffset::CHINA),
            display_name: "x".into(),
        }
    }

    type Case = (
        &'static str,
        CredentialFacts,
        Option<PersonRecord>,
        i64,
        Decision,
        Option<BlockReason>,
    );

    /// One row per rule: (what, credential, person, now, expected decision, expected reason).
    #[test]
    fn decision_table() {
        let noon = date(2026, 6, 1).start_ms(UtcOffset::CHINA) + DAY / 2;
        let card = CredentialFacts::IdCard {
            card_valid_to: Some(CardValidTo::LongTerm),
        };
        let active = person(PersonStatus::Active);
        let cases: Vec<Case> = vec![
            (
                "active in window",
                card,
                Some(active.clone()),
                noon,
                Decision::Pass,
                None,
            ),
            (
                "unknown",
                card,
                None,
                noon,
                Decision::Block,
                Some(BlockReason::UnknownPerson),
            ),
            (
                "suspended",
                card,
                Some(person(PersonStatus::Suspended)),
                noon,
                Decision::Block,
                Some(BlockReason::Suspended),
            ),
            (
                "blocked",
                card,
                Some(person(PersonStatus::Blocked)),
                noon,
                Decision::Block,
                Some(BlockReason::Blocked),
            ),
            (
                "first ms of window",
                card,
                Some(active.clone()),
                active.valid_from_ms,
                Decision::Pass,
                None,
            ),
            (
                "before window",
                card,
                Some(active.clone()),
                active.valid_from_ms - 1,
                Decision::Block,
                Some(BlockReason::NotYetValid),
            ),
            (
                "last ms of window",
                card,
                Some(active.clone()),
                active.valid_to_ms,
                Decision::Pass,
                None,
            ),
            (
                "after window",
                card,
                Some(active.clone()),
                active.valid_to_ms + 1,
                Decision::Block,
                Some(BlockReason::Expired),
            ),
            (
                "refused at reading",
                CredentialFacts::Refused(BlockReason::InvalidIdNumber),
                Some(active.clone()),
                noon,
                Decision::Block,
                Some(BlockReason::InvalidIdNumber),
            ),
            (
                "card expired yesterday (site time)",
                CredentialFacts::IdCard {
                    card_valid_to: Some(CardValidTo::Date(date(2026, 5, 31))),
                },
                Some(active.clone()),
                noon,
                Decision::Block,
                Some(BlockReason::CardExpired),
            ),
            (
                "card valid through today",
                CredentialFacts::IdCard {
                    card_valid_to: Some(CardValidTo::Date(date(2026, 6, 1))),
                },
                Some(active.clone()),
                noon,
                Decision::Pass,
                None,
            ),
        ];
        for (what, credential, person, now, decision, reason) in cases {
            let verdict = decide(
                Attempt {
                    credential,
                    person: person.as_ref(),
                },
                now,
                UtcOffset::CHINA,
            );
            assert_eq!(
                (verdict.decision, verdict.reason),
                (decision, reason),
                "{what}"
            );
            if person.is_some() && !matches!(credential, CredentialFacts::Refused(_)) {
                assert_eq!(verdict.person_id.as_deref(), Some("p-1"), "{what}");
                assert_eq!(verdict.category, Some(Category::Worker), "{what}");
            }
        }
    }

    #[test]
    fn card_expiry_uses_site_day_not_utc_day() {
        // 2026-06-01T23:30+08:00 is still 2026-06-01 at the site but 15:30Z.
        // 2026-06-02T00:30+08:00 is 2026-06-01T16:30Z: UTC still says June 1st,
        // the site says June 2nd, so a card valid to June 1st has expired.
        let card = CredentialFacts::IdCard {
            card_valid_to: Some(CardValidTo::Date(date(2026, 6, 1))),
        };
        let active = person(PersonStatus::Active);
        let just_after_midnight = date(2026, 6, 2).start_ms(UtcOffset::CHINA) + 30 * 60_000;
        let v = decide(
            Attempt {
                credential: card,
                person: Some(&active),
            },
            just_after_midnight,
            UtcOffset::CHINA,
        );
        assert_eq!(v.reason, Some(BlockReason::CardExpired));
    }
}
