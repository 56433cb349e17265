//! People in the local identity table and the cards read at the gate.

use crate::{CivilDate, IdNumber, UnixMillis};
use std::fmt;

/// Who a person is to the village.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// 常住人口
    Resident,
    /// 从业人员
    Worker,
    /// 访客
    Visitor,
}

impl Category {
    pub const ALL: [Category; 3] = [Category::Resident, Category::Worker, Category::Visitor];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Resident => "resident",
            Category::Worker => "worker",
            Category::Visitor => "visitor",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Administrative status of a person's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersonStatus {
    Active,
    Suspended,
    Blocked,
}

impl PersonStatus {
    pub const ALL: [PersonStatus; 3] = [
        PersonStatus::Active,
        PersonStatus::Suspended,
        PersonStatus::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PersonStatus::Active => "active",
            PersonStatus::Suspended => "suspended",
            PersonStatus::Blocked => "blocked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

/// A row of the identity table as the decision engine sees it. Credentials
/// are not here: they are only ever looked up by their keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRecord {
    pub person_id: String,
    pub category: Category,
    pub status: PersonStatus,
    /// First instant the person may pass (inclusive).
    pub valid_from_ms: UnixMillis,
    /// Last instant the person may pass (inclusive).
    pub valid_to_ms: UnixMillis,
    /// For the local display only; never published, never logged.
    pub display_name: String,
}

/// Sex code of GB/T 2261.1 as printed on the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Unknown,
    Male,
    Female,
    Unstated,
}

impl Sex {
    pub fn from_code(code: &str) -> Self {
        match code {
            "1" => Sex::Male,
            "2" => Sex::Female,
            "9" => Sex::Unstated,
            _ => Sex::Unknown,
        }
    }
}

/// What kind of card the reader found (card-type byte at text offset 248).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardKind {
    /// Second-generation resident ID card.
    ResidentId,
    /// 'J': Hong Kong / Macao / Taiwan residence permit.
    HkMacaoTaiwanPermit,
    /// 'I': foreigner permanent residence card (2017 layout).
    ForeignerPermanent,
}

/// The card's printed "valid to": a date, or 长期 (long-term).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardValidTo {
    Date(CivilDate),
    LongTerm,
}

/// A card as read from the SAM module. The ID number has passed its check
/// character. `Debug` masks the personal fields.
#[derive(Clone, PartialEq, Eq)]
pub struct CardRecord {
    pub kind: CardKind,
    pub name: String,
    pub sex: Sex,
    pub nation_code: String,
    pub birth_date: Option<CivilDate>,
    pub address: String,
    pub id_number: IdNumber,
    pub issuer: String,
    pub valid_from: Option<CivilDate>,
    pub valid_to: Option<CardValidTo>,
}

impl fmt::Debug for CardRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardRecord")
            .field("kind", &self.kind)
            .field("id_number", &self.id_number)
            .field("name", &"<redacted>")
            .field("valid_to", &self.valid_to)
            .finish_non_exhaustive()
    }
}
