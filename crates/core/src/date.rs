//! Calendar dates and the site's UTC offset, enough to turn a validity window
//! written as dates into instants. China keeps one offset all year (+08:00,
//! no daylight saving), so a fixed offset is exact for the target sites.

use crate::UnixMillis;
use std::fmt;

const MS_PER_DAY: i64 = 86_400_000;

/// Why a date or offset string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("expected a date as {0}")]
    Shape(&'static str),
    #[error("no such calendar day")]
    NoSuchDay,
    #[error("expected a UTC offset such as +08:00")]
    Offset,
}

/// A proleptic Gregorian calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CivilDate {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

impl CivilDate {
    pub fn try_new(year: i32, month: u8, day: u8) -> Result<Self, DateError> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(DateError::NoSuchDay);
        }
        Ok(Self { year, month, day })
    }

    /// `YYYY-MM-DD`, the form of the import files.
    pub fn parse_iso(raw: &str) -> Result<Self, DateError> {
        let shape = DateError::Shape("YYYY-MM-DD");
        let b = raw.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(shape);
        }
        Self::from_digits(&raw[0..4], &raw[5..7], &raw[8..10]).ok_or(shape)?
    }

    /// `YYYYMMDD`, the form on the ID card.
    pub fn parse_compact(raw: &str) -> Result<Self, DateError> {
        let shape = DateError::Shape("YYYYMMDD");
        if raw.len() != 8 || !raw.is_ascii() {
            return Err(shape);
        }
        Self::from_digits(&raw[0..4], &raw[4..6], &raw[6..8]).ok_or(shape)?
    }

    fn from_digits(y: &str, m: &str, d: &str) -> Option<Result<Self, DateError>> {
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !(all_digits(y) && all_digits(m) && all_digits(d)) {
            return None;
        }
        Some(Self::try_new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?))
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
    pub fn days_since_epoch(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The inverse of [`CivilDate::days_since_epoch`].
    pub fn from_days_since_epoch(days: i64) -> Self {
        let z = days + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// The first millisecond of this day at the site.
    pub fn start_ms(self, offset: UtcOffset) -> UnixMillis {
        self.days_since_epoch() * MS_PER_DAY - offset.millis()
    }

    /// The last millisecond of this day at the site (validity "to" dates
    /// include the whole day).
    pub fn end_ms(self, offset: UtcOffset) -> UnixMillis {
        self.start_ms(offset) + MS_PER_DAY - 1
    }

    /// Day of the week, 0 = Monday ... 6 = Sunday (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u8 {
        (self.days_since_epoch() + 3).rem_euclid(7) as u8
    }

    /// The site-local calendar day of an instant.
    pub fn of_instant(at: UnixMillis, offset: UtcOffset) -> Self {
        Self::from_days_since_epoch((at + offset.millis()).div_euclid(MS_PER_DAY))
    }
}

impl fmt::Display for CivilDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The site's fixed offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    minutes: i32,
}

impl UtcOffset {
    /// China Standard Time, the default.
    pub const CHINA: UtcOffset = UtcOffset { minutes: 480 };
    pub const UTC: UtcOffset = UtcOffset { minutes: 0 };

    /// `+08:00`, `-03:30`, `Z`.
    pub fn parse(raw: &str) -> Result<Self, DateError> {
        if raw == "Z" {
            return Ok(Self::UTC);
        }
        let b = raw.as_bytes();
        if b.len() != 6 || !matches!(b[0], b'+' | b'-') || b[3] != b':' {
            return Err(DateError::Offset);
        }
        let hours: i32 = raw[1..3].parse().map_err(|_| DateError::Offset)?;
        let mins: i32 = raw[4..6].parse().map_err(|_| DateError::Offset)?;
        if hours > 14 || mins > 59 {
            return Err(DateError::Offset);
        }
        let total = hours * 60 + mins;
        Ok(Self { minutes: if b[0] == b'-' { -total } else { total } })
    }

    /// Site-local weekday (0 = Monday) and minute of the day of an instant.
    pub fn local_weekday_minute(self, at: UnixMillis) -> (u8, u16) {
        let local = at + self.millis();
        let day = CivilDate::from_days_since_epoch(local.div_euclid(MS_PER_DAY));
        (day.weekday(), (local.rem_euclid(MS_PER_DAY) / 60_000) as u16)
    }

    pub fn millis(self) -> i64 {
        i64::from(self.minutes) * 60_000
    }

    /// An instant in site time with its offset, as the daemon's log and
    /// `gatectl` both print it, so the two always agree:
    /// `2026-03-04T12:34:56.789+08:00`.
    pub fn timestamp(self, at: UnixMillis) -> String {
        let local = at + self.millis();
        let date = CivilDate::from_days_since_epoch(local.div_euclid(MS_PER_DAY));
        let ms = local.rem_euclid(MS_PER_DAY);
        let (h, m, sec, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        format!("{date}T{h:02}:{m:02}:{sec:02}.{milli:03}{self}")
    }
}

/// `+08:00`: always the numeric form, so a reader sees the offset even at UTC.
impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minutes < 0 { '-' } else { '+' };
        let abs = self.minutes.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 60, abs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_arithmetic_round_trips() {
        for days in [-800_000, -1, 0, 1, 10_957, 19_000, 20_000, 2_932_896] {
            let d = CivilDate::from_days_since_epoch(days);
            assert_eq!(d.days_since_epoch(), days, "{d}");
        }
        assert_eq!(CivilDate::try_new(2000, 1, 1).map(CivilDate::days_since_epoch), Ok(10_957));
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(CivilDate::parse_iso("2024-02-29"), CivilDate::try_new(2024, 2, 29));
        assert_eq!(CivilDate::parse_iso("2023-02-29"), Err(DateError::NoSuchDay));
        assert_eq!(CivilDate::parse_iso("2023/02/01"), Err(DateError::Shape("YYYY-MM-DD")));
        assert_eq!(CivilDate::parse_compact("20301231"), CivilDate::try_new(2030, 12, 31));
        assert_eq!(CivilDate::parse_compact("长期"), Err(DateError::Shape("YYYYMMDD")));
    }

    #[test]
    fn timestamps_are_site_time_with_the_offset() {
        // 2024-01-01T00:00:00Z is 08:00 in China.
        assert_eq!(UtcOffset::CHINA.timestamp(1_704_067_200_123), "2024-01-01T08:00:00.123+08:00");
        assert_eq!(UtcOffset::UTC.timestamp(1_704_067_199_000), "2023-12-31T23:59:59.000+00:00");
        let west = UtcOffset::parse("-03:30").expect("offset");
        assert_eq!(west.timestamp(1_704_067_200_000), "2023-12-31T20:30:00.000-03:30");
        assert_eq!(UtcOffset::parse(&west.to_string()), Ok(west));
    }

    #[test]
    fn day_bounds_follow_the_site_offset() {
        let d = CivilDate::try_new(2026, 11, 26).expect("day");
        let start = d.start_ms(UtcOffset::CHINA);
        // 2026-11-26T00:00+08:00 is 2026-11-25T16:00Z.
        assert_eq!(start, CivilDate::try_new(2026, 11, 25).expect("day").start_ms(UtcOffset::UTC) + 16 * 3_600_000);
        assert_eq!(CivilDate::of_instant(start, UtcOffset::CHINA), d);
        assert_eq!(CivilDate::of_instant(start - 1, UtcOffset::CHINA), CivilDate::try_new(2026, 11, 25).expect("day"));
        assert_eq!(CivilDate::of_instant(d.end_ms(UtcOffset::CHINA), UtcOffset::CHINA), d);
        assert_eq!(UtcOffset::parse("-03:30").map(UtcOffset::millis), Ok(-210 * 60_000));
        assert!(UtcOffset::parse("8").is_err());
    }
}
