//! The pure decision engine: facts about an attempt, the gate's context and
//! `now` in, a [`Verdict`] out. It never awaits, never reads a clock and
//! never touches a device or a database, so every rule is tested with plain
//! values.
//!
//! The order of the checks is part of the contract (the first failing rule
//! names the reason): the credential itself, the checkpoint, the watchlist,
//! the pass, the identity entry, the mode's policy, the person's own limits,
//! anti-passback, and last health.

mod health;
mod policy;

pub use health::{
    CertificateFacts, Freshness, HealthFallback, HealthRules, HealthVerdict, evaluate as evaluate_health, freshness,
};
pub use policy::{
    AntiPassback, CategorySet, HealthCheck, HealthRulesByCategory, LastPassage, PassFacts, PassState, Policy, Side,
};

pub mod gate_fsm;

use gate_core::{
    BlockReason, CardValidTo, Category, CivilDate, Mode, PersonRecord, PersonStatus, UnixMillis, UtcOffset, Verdict,
};

/// What the credential itself tells us, before the identity table is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialFacts {
    /// A resident ID card that parsed and passed its check character.
    IdCard {
        /// The card's printed validity end.
        card_valid_to: Option<CardValidTo>,
    },
    /// A vehicle plate read with enough confidence.
    Plate,
    /// A visitor QR pass whose signature verified.
    VisitorPass(PassFacts),
    /// The credential was refused before any lookup (bad check character,
    /// unsupported card type, forged pass): the reason is final.
    Refused(BlockReason),
}

/// The gate and the site state an attempt is decided in.
#[derive(Debug, Clone, Copy)]
pub struct GateContext<'a> {
    pub gate_id: &'a str,
    /// A flexible checkpoint closes in wartime.
    pub flexible: bool,
    pub mode: Mode,
    /// The policy of the current mode.
    pub policy: &'a Policy,
    pub offset: UtcOffset,
    pub anti_passback: AntiPassback,
    /// The side of the gate the credential was presented at.
    pub side: Side,
    /// `[platform] refuse_when_stale` is set and the platform is stale: in
    /// wartime every attempt is refused (`platform_stale`).
    pub refuse_unvouched: bool,
}

/// Everything the engine needs for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub credential: &'a CredentialFacts,
    /// The identity-table entry the credential's keyed hash matched.
    pub person: Option<&'a PersonRecord>,
    /// The credential (or its person) is on the watchlist.
    pub watchlisted: bool,
    /// This person's last granted passage at this gate, for anti-passback.
    pub last_passage: Option<LastPassage>,
    /// A valid visitor pass for this person was scanned in the same
    /// transaction window (a visitor's ID card then counts as covered).
    pub companion_pass: bool,
    pub health: HealthCheck,
}

/// Decides one attempt at instant `now`.
pub fn decide(attempt: Attempt<'_>, gate: GateContext<'_>, now: UnixMillis) -> Verdict {
    match check(&attempt, &gate, now) {
        Ok(()) => with_person(Verdict::pass(), attempt.person),
        Err(reason) => with_person(Verdict::block(reason), attempt.person),
    }
}

fn check(attempt: &Attempt<'_>, gate: &GateContext<'_>, now: UnixMillis) -> Result<(), BlockReason> {
    if let CredentialFacts::Refused(reason) = attempt.credential {
        return Err(*reason);
    }
    if gate.mode == Mode::Wartime && gate.flexible {
        return Err(BlockReason::CheckpointClosed);
    }
    if gate.mode == Mode::Wartime && gate.refuse_unvouched {
        return Err(BlockReason::PlatformStale);
    }
    if let CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Date(valid_to)) } = attempt.credential
        && CivilDate::of_instant(now, gate.offset) > *valid_to
    {
        return Err(BlockReason::CardExpired);
    }
    if attempt.watchlisted {
        return Err(BlockReason::Blocklisted);
    }
    // After the watchlist, so a listed person's damaged card still alerts.
    if let CredentialFacts::IdCard { card_valid_to: Some(CardValidTo::Unreadable) } = attempt.credential {
        return Err(BlockReason::CardUnreadable);
    }
    if let CredentialFacts::VisitorPass(pass) = attempt.credential {
        check_pass(pass, gate, now)?;
    }
    let Some(person) = attempt.person else {
        return match attempt.credential {
            CredentialFacts::Plate => Err(BlockReason::UnknownVehicle),
            // A valid pass stands for a visitor the platform registered; the
            // pass itself is the identity entry.
            CredentialFacts::VisitorPass(_) => {
                check_category(Category::Visitor, gate).and(health(attempt, Category::Visitor, gate))
            }
            _ => Err(BlockReason::UnknownPerson),
        };
    };
    match person.status {
        PersonStatus::Blocked => return Err(BlockReason::Blocked),
        PersonStatus::Suspended => return Err(BlockReason::Suspended),
        PersonStatus::Active => {}
    }
    if now < person.valid_from_ms {
        return Err(BlockReason::NotYetValid);
    }
    if now > person.valid_to_ms {
        return Err(BlockReason::Expired);
    }
    check_category(person.category, gate)?;
    if !person.allowed_gates.allows(gate.gate_id) {
        return Err(BlockReason::GateNotAllowed);
    }
    if gate.policy.enforce_time_windows && person.category == Category::Worker && !person.time_windows.is_empty() {
        let (weekday, minute) = gate.offset.local_weekday_minute(now);
        if !person.time_windows.iter().any(|w| w.contains(weekday, minute)) {
            return Err(BlockReason::OutsideTimeWindow);
        }
    }
    if person.category == Category::Visitor
        && gate.policy.visitor_pass_required
        && !matches!(attempt.credential, CredentialFacts::VisitorPass(_))
        && !attempt.companion_pass
    {
        return Err(BlockReason::VisitorPassRequired);
    }
    check_passback(attempt.last_passage, gate, now)?;
    health(attempt, person.category, gate)
}

fn check_category(category: Category, gate: &GateContext<'_>) -> Result<(), BlockReason> {
    if gate.policy.allowed_categories.contains(category) { Ok(()) } else { Err(BlockReason::CategoryNotAllowed) }
}

fn check_pass(pass: &PassFacts, gate: &GateContext<'_>, now: UnixMillis) -> Result<(), BlockReason> {
    if pass.revoked {
        return Err(BlockReason::PassRevoked);
    }
    if now < pass.valid_from_ms || now > pass.valid_to_ms {
        return Err(BlockReason::PassExpired);
    }
    if !pass.allowed_gates.is_empty() && !pass.allowed_gates.iter().any(|g| g == gate.gate_id) {
        return Err(BlockReason::PassWrongGate);
    }
    if pass.max_uses > 0 && pass.uses_so_far >= pass.max_uses {
        return Err(BlockReason::PassUsedUp);
    }
    Ok(())
}

fn check_passback(last: Option<LastPassage>, gate: &GateContext<'_>, now: UnixMillis) -> Result<(), BlockReason> {
    let Some(last) = last else { return Ok(()) };
    match gate.anti_passback {
        AntiPassback::Off => Ok(()),
        // Entered and not exited since: no second entry.
        AntiPassback::Paired if gate.side == Side::Entry && last.side == Side::Entry => Err(BlockReason::AntiPassback),
        AntiPassback::Paired => Ok(()),
        AntiPassback::Timed { window_ms } if last.side == gate.side && now - last.at_ms < window_ms => {
            Err(BlockReason::AntiPassback)
        }
        AntiPassback::Timed { .. } => Ok(()),
    }
}

fn health(attempt: &Attempt<'_>, category: Category, gate: &GateContext<'_>) -> Result<(), BlockReason> {
    if !gate.policy.health_required_for.contains(category) {
        return Ok(());
    }
    match attempt.health {
        HealthCheck::Passed => Ok(()),
        HealthCheck::Failed(reason) => Err(reason),
        HealthCheck::NotChecked | HealthCheck::Unavailable => Err(BlockReason::HealthUnverified),
    }
}

fn with_person(mut verdict: Verdict, person: Option<&PersonRecord>) -> Verdict {
    if let Some(person) = person {
        verdict.person_id = Some(person.person_id.clone());
        verdict.category = Some(person.category);
        verdict.tags = person.tags.clone();
    }
    verdict
}

#[cfg(test)]
mod tests;
