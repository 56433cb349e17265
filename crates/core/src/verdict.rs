//! The gate's decision and the closed set of reasons for a block.

use crate::Category;
use std::fmt;

/// Pass or block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Pass,
    Block,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Block => "block",
        }
    }
}

/// Why a person was blocked. A closed set: the platform counts by it, so a
/// block never carries free text. The protobuf enum `gate.v1.Reason` mirrors
/// it (`REASON_` + upper case); a test keeps the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// No identity-table entry for this credential.
    UnknownPerson,
    /// The person's validity window has ended.
    Expired,
    /// The person's validity window has not begun.
    NotYetValid,
    /// The entry is suspended.
    Suspended,
    /// The entry's status is blocked by the management office.
    Blocked,
    /// The card's ID number fails its check character.
    InvalidIdNumber,
    /// The card is of a type the gate cannot read (e.g. the 2023 foreigner card).
    UnsupportedCard,
    /// The physical card is past its printed validity.
    CardExpired,
    /// The card's printed validity dates cannot be read (a damaged or
    /// tampered field): never taken as "no expiry".
    CardUnreadable,
    /// Wartime: this flexible checkpoint is closed.
    CheckpointClosed,
    /// The mode's policy does not admit this category.
    CategoryNotAllowed,
    /// The person may not use this gate.
    GateNotAllowed,
    /// A worker outside their weekly time windows.
    OutsideTimeWindow,
    /// The credential is on the watchlist / blocklist (raises an alert).
    Blocklisted,
    /// A visitor without a valid pass where the policy requires one.
    VisitorPassRequired,
    /// A QR pass that does not parse or whose signature fails (a forgery).
    PassInvalid,
    /// A QR pass outside its validity window.
    PassExpired,
    /// A QR pass not valid at this gate.
    PassWrongGate,
    /// A QR pass whose uses are spent.
    PassUsedUp,
    /// A QR pass the platform revoked.
    PassRevoked,
    /// Entered and not exited yet, or again too soon.
    AntiPassback,
    /// A plate with no vehicle credential.
    UnknownVehicle,
    /// Health code red.
    HealthCodeRed,
    /// Health code yellow.
    HealthCodeYellow,
    /// No nucleic-acid test on record where one is required.
    NatMissing,
    /// The last nucleic-acid sample is older than the window.
    NatExpired,
    /// The last nucleic-acid test was positive.
    NatPositive,
    /// Fewer vaccine doses than required.
    VaccinationInsufficient,
    /// Visited a risk area within 14 days.
    TravelRisk,
    /// The health record is older than the policy accepts.
    HealthRecordStale,
    /// Health verification required and not possible (no record, platform unreachable).
    HealthUnverified,
    /// Wartime, `[platform] refuse_when_stale`, and the platform is stale:
    /// the gate cannot vouch for its lists.
    PlatformStale,
}

impl BlockReason {
    pub const ALL: [BlockReason; 32] = [
        BlockReason::UnknownPerson,
        BlockReason::Expired,
        BlockReason::NotYetValid,
        BlockReason::Suspended,
        BlockReason::Blocked,
        BlockReason::InvalidIdNumber,
        BlockReason::UnsupportedCard,
        BlockReason::CardExpired,
        BlockReason::CheckpointClosed,
        BlockReason::CategoryNotAllowed,
        BlockReason::GateNotAllowed,
        BlockReason::OutsideTimeWindow,
        BlockReason::Blocklisted,
        BlockReason::VisitorPassRequired,
        BlockReason::PassInvalid,
        BlockReason::PassExpired,
        BlockReason::PassWrongGate,
        BlockReason::PassUsedUp,
        BlockReason::PassRevoked,
        BlockReason::AntiPassback,
        BlockReason::UnknownVehicle,
        BlockReason::HealthCodeRed,
        BlockReason::HealthCodeYellow,
        BlockReason::NatMissing,
        BlockReason::NatExpired,
        BlockReason::NatPositive,
        BlockReason::VaccinationInsufficient,
        BlockReason::TravelRisk,
        BlockReason::HealthRecordStale,
        BlockReason::HealthUnverified,
        BlockReason::CardUnreadable,
        BlockReason::PlatformStale,
    ];

    /// The reason's stable name, as in configs, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::UnknownPerson => "unknown_person",
            BlockReason::Expired => "expired",
            BlockReason::NotYetValid => "not_yet_valid",
            BlockReason::Suspended => "suspended",
            BlockReason::Blocked => "blocked",
            BlockReason::InvalidIdNumber => "invalid_id_number",
            BlockReason::UnsupportedCard => "unsupported_card",
            BlockReason::CardExpired => "card_expired",
            BlockReason::CardUnreadable => "card_unreadable",
            BlockReason::CheckpointClosed => "checkpoint_closed",
            BlockReason::CategoryNotAllowed => "category_not_allowed",
            BlockReason::GateNotAllowed => "gate_not_allowed",
            BlockReason::OutsideTimeWindow => "outside_time_window",
            BlockReason::Blocklisted => "blocklisted",
            BlockReason::VisitorPassRequired => "visitor_pass_required",
            BlockReason::PassInvalid => "pass_invalid",
            BlockReason::PassExpired => "pass_expired",
            BlockReason::PassWrongGate => "pass_wrong_gate",
            BlockReason::PassUsedUp => "pass_used_up",
            BlockReason::PassRevoked => "pass_revoked",
            BlockReason::AntiPassback => "anti_passback",
            BlockReason::UnknownVehicle => "unknown_vehicle",
            BlockReason::HealthCodeRed => "health_code_red",
            BlockReason::HealthCodeYellow => "health_code_yellow",
            BlockReason::NatMissing => "nat_missing",
            BlockReason::NatExpired => "nat_expired",
            BlockReason::NatPositive => "nat_positive",
            BlockReason::VaccinationInsufficient => "vaccination_insufficient",
            BlockReason::TravelRisk => "travel_risk",
            BlockReason::HealthRecordStale => "health_record_stale",
            BlockReason::HealthUnverified => "health_unverified",
            BlockReason::PlatformStale => "platform_stale",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }

    /// Whether a block for this reason must alert the management departments.
    pub fn raises_alert(self) -> bool {
        self.is_health()
            || matches!(self, BlockReason::Blocklisted | BlockReason::PassInvalid | BlockReason::InvalidIdNumber)
    }

    /// Whether this reason comes from the health rules (its event and alert
    /// carry the health facts behind it).
    pub fn is_health(self) -> bool {
        matches!(
            self,
            BlockReason::HealthCodeRed
                | BlockReason::HealthCodeYellow
                | BlockReason::NatMissing
                | BlockReason::NatExpired
                | BlockReason::NatPositive
                | BlockReason::VaccinationInsufficient
                | BlockReason::TravelRisk
                | BlockReason::HealthRecordStale
                | BlockReason::HealthUnverified
        )
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one attempt at the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// Set exactly when `decision` is `Block`.
    pub reason: Option<BlockReason>,
    pub person_id: Option<String>,
    pub category: Option<Category>,
    /// The person's identity tags, carried into the event.
    pub tags: Vec<String>,
}

impl Verdict {
    pub fn block(reason: BlockReason) -> Self {
        Self { decision: Decision::Block, reason: Some(reason), person_id: None, category: None, tags: Vec::new() }
    }

    pub fn pass() -> Self {
        Self { decision: Decision::Pass, reason: None, person_id: None, category: None, tags: Vec::new() }
    }
}

/// Which traffic a lane carries (人车分流).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Pedestrian,
    Vehicle,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Pedestrian => "pedestrian",
            Lane::Vehicle => "vehicle",
        }
    }
}

/// Which way a gate lets people through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Entry,
    Exit,
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
            Direction::Both => "both",
        }
    }
}
