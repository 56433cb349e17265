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
    pub const ALL: [PersonStatus; 3] = [PersonStatus::Active, PersonStatus::Suspended, PersonStatus::Blocked];

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
    /// For the local display only; never published, never logged. The
    /// store keeps only its masked form ([`crate::mask_name`]): read back,
    /// this is `陈*国`, never the name.
    pub display_name: String,
    /// Free labels the platform assigns (tenant, landlord, catering worker);
    /// carried into events.
    pub tags: Vec<String>,
    /// The gates this person may use.
    pub allowed_gates: AllowedGates,
    /// For workers: when they may pass, in site-local time. Empty means any time.
    pub time_windows: Vec<TimeWindow>,
}

impl PersonRecord {
    /// A person with no restrictions beyond category, status and validity.
    pub fn new(
        person_id: impl Into<String>,
        category: Category,
        status: PersonStatus,
        valid_from_ms: UnixMillis,
        valid_to_ms: UnixMillis,
    ) -> Self {
        PersonRecord {
            person_id: person_id.into(),
            category,
            status,
            valid_from_ms,
            valid_to_ms,
            display_name: String::new(),
            tags: Vec::new(),
            allowed_gates: AllowedGates::All,
            time_windows: Vec::new(),
        }
    }
}

/// Which gates a person may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedGates {
    #[default]
    All,
    /// Only these gate ids.
    Only(Vec<String>),
}

impl AllowedGates {
    pub fn allows(&self, gate_id: &str) -> bool {
        match self {
            AllowedGates::All => true,
            AllowedGates::Only(gates) => gates.iter().any(|g| g == gate_id),
        }
    }
}

/// A weekly time window in site-local time: some weekdays, from `start_min`
/// (inclusive) to `end_min` (exclusive) minutes after midnight. A window
/// with `end_min <= start_min` runs past midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit 0 = Monday ... bit 6 = Sunday.
    pub weekdays: u8,
    pub start_min: u16,
    pub end_min: u16,
}

impl TimeWindow {
    pub const ALL_DAYS: u8 = 0b111_1111;

    /// Parses `mon-fri 07:00-19:00`, `sat,sun 09:30-12:00`, `daily 22:00-06:00`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (days, hours) = raw.trim().split_once(' ').ok_or("expected `DAYS HH:MM-HH:MM`")?;
        let weekdays = parse_weekdays(days.trim())?;
        let (start, end) = hours.trim().split_once('-').ok_or("expected HH:MM-HH:MM")?;
        let start_min = parse_hhmm(start)?;
        let end_min = parse_hhmm(end)?;
        if start_min == end_min {
            return Err("a window must not be empty".into());
        }
        Ok(TimeWindow { weekdays, start_min, end_min })
    }

    /// Whether site-local minute-of-week falls inside the window.
    /// `weekday` 0 = Monday.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        let on = |day: u8| self.weekdays & (1 << (day % 7)) != 0;
        if self.start_min < self.end_min {
            on(weekday) && minute >= self.start_min && minute < self.end_min
        } else {
            // Over midnight: the evening part belongs to the listed day, the
            // early-morning part to the day after it.
            (on(weekday) && minute >= self.start_min) || (on((weekday + 6) % 7) && minute < self.end_min)
        }
    }
}

fn parse_hhmm(raw: &str) -> Result<u16, String> {
    let (h, m) = raw.trim().split_once(':').ok_or_else(|| format!("expected HH:MM, found {raw:?}"))?;
    let h: u16 = h.parse().map_err(|_| format!("bad hour in {raw:?}"))?;
    let m: u16 = m.parse().map_err(|_| format!("bad minute in {raw:?}"))?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("no such time {raw:?}"));
    }
    Ok(h * 60 + m)
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_weekdays(raw: &str) -> Result<u8, String> {
    if raw == "daily" {
        return Ok(TimeWindow::ALL_DAYS);
    }
    let day = |name: &str| {
        DAY_NAMES.iter().position(|d| *d == name).map(|i| i as u8).ok_or_else(|| format!("unknown weekday {name:?}"))
    };
    let mut mask = 0u8;
    for part in raw.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (day(a)?, day(b)?);
            if a > b {
                return Err(format!("weekday range {part:?} runs backwards"));
            }
            for d in a..=b {
                mask |= 1 << d;
            }
        } else {
            mask |= 1 << day(part)?;
        }
    }
    Ok(mask)
}

/// The site's mode (疫情防控等级).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// 常态
    #[default]
    Normal,
    /// 散发: sporadic outbreak
    Sporadic,
    /// 战时: wartime / lockdown
    Wartime,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Normal, Mode::Sporadic, Mode::Wartime];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Sporadic => "sporadic",
            Mode::Wartime => "wartime",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// A printed validity date (from or to) that does not parse: a damaged
    /// or tampered card, refused rather than taken as "no expiry".
    Unreadable,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_windows_parse_and_contain() {
        let day = TimeWindow::parse("mon-fri 07:00-19:00").expect("valid");
        assert_eq!(day.weekdays, 0b001_1111);
        assert!(day.contains(0, 7 * 60));
        assert!(!day.contains(0, 19 * 60), "end is exclusive");
        assert!(!day.contains(5, 8 * 60), "Saturday");
        let night = TimeWindow::parse("fri 22:00-06:00").expect("valid");
        assert!(night.contains(4, 23 * 60), "Friday evening");
        assert!(night.contains(5, 5 * 60), "Saturday early morning belongs to Friday's shift");
        assert!(!night.contains(4, 5 * 60), "Friday early morning belongs to Thursday");
        assert_eq!(TimeWindow::parse("daily 00:00-24:00").map(|w| w.weekdays), Ok(TimeWindow::ALL_DAYS));
        assert!(TimeWindow::parse("sat,sun 09:30-12:00").is_ok());
        for bad in ["mon 7-19", "xyz 07:00-08:00", "fri-mon 07:00-08:00", "mon 25:00-26:00", "mon 08:00-08:00", "mon"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
