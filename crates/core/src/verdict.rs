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
/// it (`REASON_` + upper case).
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
    /// The entry is blocked by the management office.
    Blocked,
    /// The card's ID number fails its check character.
    InvalidIdNumber,
    /// The card is of a type the gate cannot read (e.g. the 2023 foreigner card).
    UnsupportedCard,
    /// The physical card is past its printed validity.
    CardExpired,
}

impl BlockReason {
    pub const ALL: [BlockReason; 8] = [
        BlockReason::UnknownPerson,
        BlockReason::Expired,
        BlockReason::NotYetValid,
        BlockReason::Suspended,
        BlockReason::Blocked,
        BlockReason::InvalidIdNumber,
        BlockReason::UnsupportedCard,
        BlockReason::CardExpired,
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
        }
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
}

impl Verdict {
    pub fn block(reason: BlockReason) -> Self {
        Self {
            decision: Decision::Block,
            reason: Some(reason),
            person_id: None,
            category: None,
        }
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
