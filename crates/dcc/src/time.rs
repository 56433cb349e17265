//! Calendar dates and ISO 8601 / RFC 3339 timestamps, as certificates write them.
//!
//! Written by hand because the crate needs four small conversions, not a
//! time library: civil date <-> days since 1970, and a timestamp parser that
//! accepts what issuers actually wrote (any number of fractional digits,
//! `Z`, `+hh:mm` or `+hhmm`, and no zone at all, read as UTC).

use std::fmt;

const MS_PER_DAY: i64 = 86_400_000;

/// A full calendar date (proleptic Gregorian), as in `dt`, `fr`, `df`, `du`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CalendarDate {
    /// Year, e.g. 2021.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month, 1..=31 (checked against the month).
    pub day: u8,
}

impl CalendarDate {
    /// A checked date, or `None` for a day that does not exist.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(CalendarDate { year, month, day })
    }

    /// Parses exactly `YYYY-MM-DD`.
    pub fn parse(raw: &str) -> Option<Self> {
        let b = raw.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        Self::new(i32::try_from(year).ok()?, u8::try_from(month).ok()?, u8::try_from(day).ok()?)
    }

    /// Days since 1970-01-01 (negative before).
    pub fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil: exact for the proleptic Gregorian
        // calendar, no tables, no loops.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date of a day count since 1970-01-01.
    pub fn from_days_since_epoch(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // The casts cannot truncate: month and day are small by construction,
        // and the year of any i64 day count we are handed (milliseconds / a
        // day) fits i32.
        CalendarDate {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: u8::try_from(month).unwrap_or(1),
            day: u8::try_from(day).unwrap_or(1),
        }
    }

    /// Midnight UTC at the start of this date, in Unix milliseconds.
    pub fn start_ms(self) -> i64 {
        self.days_since_epoch() * MS_PER_DAY
    }
}

impl fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl fmt::Debug for CalendarDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a run of ASCII digits (no sign, no spaces).
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    b.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

/// Parses an ISO 8601 / RFC 3339 date-time into Unix milliseconds.
///
/// Accepts `YYYY-MM-DDTHH:MM:SS`, optional fraction of any length (cut to
/// milliseconds), then `Z`, `+hh:mm`, `+hhmm`, `+hh` or nothing, which is
/// read as UTC: about half of the conformance clocks and a few issuers'
/// sample times carry no zone, and UTC is what the issuers meant.
pub fn parse_datetime_ms(raw: &str) -> Option<i64> {
    let b = raw.trim().as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let date = CalendarDate::parse(std::str::from_utf8(&b[..10]).ok()?)?;
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let hour = i64::from(digits(&b[11..13])?);
    let minute = i64::from(digits(&b[14..16])?);
    let second = i64::from(digits(&b[17..19])?);
    // 60 is a leap second: it happens, and it is still a valid instant.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some((b'.' | b',', frac)) = rest.split_first() {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &c) in frac[..n.min(3)].iter().enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[n..];
    }
    let offset_minutes = match rest {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (h, m) = match zone {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = i64::from(h * 60 + m);
            if *sign == b'-' { -minutes } else { minutes }
        }
        _ => return None,
    };
    let local = date.start_ms() + ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    Some(local - offset_minutes * 60_000)
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (seconds precision).
pub fn format_datetime_utc(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY) / 1000;
    let date = CalendarDate::from_days_since_epoch(days);
    format!("{date}T{:02}:{:02}:{:02}Z", in_day / 3600, in_day / 60 % 60, in_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_day_counts() {
        for days in [-800_000, -1, 0, 1, 18_750, 59, 60, 11_016, 2_932_896] {
            let d = CalendarDate::from_days_since_epoch(days);
            assert_eq!(d.days_since_epoch(), days, "{d}");
        }
        assert_eq!(CalendarDate::new(1970, 1, 1).map(|d| d.days_since_epoch()), Some(0));
        assert_eq!(CalendarDate::new(2000, 3, 1).map(|d| d.days_since_epoch()), Some(11_017));
    }

    #[test]
    fn dates_are_checked() {
        assert!(CalendarDate::parse("2021-02-29").is_none());
        assert!(CalendarDate::parse("2024-02-29").is_some());
        assert!(CalendarDate::parse("2021-13-01").is_none());
        assert!(CalendarDate::parse("2021-1-01").is_none());
        assert!(CalendarDate::parse("2021-01-01T00:00:00").is_none());
        assert!(CalendarDate::parse("+021-01-01").is_none());
    }

    #[test]
    fn timestamps_in_the_shapes_issuers_write() {
        let base = 1_620_064_800_000; // 2021-05-03T18:00:00Z
        for (raw, want) in [
            ("2021-05-03T18:00:00Z", base),
            ("2021-05-03T18:00:00", base),
            ("2021-05-03T20:00:00+02:00", base),
            ("2021-05-03T20:00:00+0200", base),
            ("2021-05-03T16:00:00-02", base),
            ("2021-05-03T18:00:00.5Z", base + 500),
            ("2021-05-03T18:00:00.123456789Z", base + 123),
            ("2021-05-03t18:00:00.1234567+00:00", base + 123),
        ] {
            assert_eq!(parse_datetime_ms(raw), Some(want), "{raw}");
        }
        for raw in [
            "",
            "2021-05-03",
            "2021-05-03T24:00:00Z",
            "2021-05-03T18:00:00.Z",
            "2021-05-03T18:00:00+2",
            "2021-05-03T18:00:00 UTC",
        ] {
            assert_eq!(parse_datetime_ms(raw), None, "{raw}");
        }
    }

    #[test]
    fn formats_utc_seconds() {
        assert_eq!(format_datetime_utc(1_620_064_800_999), "2021-05-03T18:00:00Z");
        assert_eq!(format_datetime_utc(-1000), "1969-12-31T23:59:59Z");
    }
}
