//! A person's health status as the platform assessed it (health code,
//! nucleic-acid test, vaccination, travel record). Epidemic-mode checks
//! read it; nothing here decides.

use crate::UnixMillis;

/// Health code colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthColour {
    Green,
    Yellow,
    Red,
    /// Not yet assessed ("init").
    Unassessed,
}

impl HealthColour {
    pub const ALL: [HealthColour; 4] =
        [HealthColour::Green, HealthColour::Yellow, HealthColour::Red, HealthColour::Unassessed];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthColour::Green => "green",
            HealthColour::Yellow => "yellow",
            HealthColour::Red => "red",
            HealthColour::Unassessed => "unassessed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

/// The last nucleic-acid test on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatResult {
    pub positive: bool,
    pub sampled_at_ms: UnixMillis,
}

/// One person's health record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    pub person_id: String,
    pub colour: HealthColour,
    pub nat: Option<NatResult>,
    pub vaccine_doses: u32,
    pub last_dose_at_ms: Option<UnixMillis>,
    /// Visited a risk area within 14 days.
    pub travel_risk: bool,
    /// Which areas (names of districts, not addresses).
    pub risk_areas: Vec<String>,
    /// When the platform assessed this record.
    pub assessed_at_ms: UnixMillis,
    /// After this instant the record no longer counts.
    pub expires_at_ms: UnixMillis,
}
