//! Minimal schema checks of a health certificate, and the typed content they yield.
//!
//! Not a JSON schema engine: the checks the gate relies on, taken from the
//! DCC schema (1.0.0 to 1.3.0, where they agree): the version, the
//! standardised names, the birth date, exactly one entry of exactly one type,
//! the fields each type requires, date formats, dose numbers. Value sets
//! (vaccine products, test devices, countries) are not checked: the schema
//! names them as annotations, not constraints, and they change faster than
//! a gate's software.
//!
//! Error messages name the field, never its value.

use std::fmt;

use serde_json::{Map, Value as Json};

use crate::error::DccError;
use crate::time::{CalendarDate, parse_datetime_ms};

/// SNOMED CT "not detected", the negative test result.
pub const TEST_RESULT_NOT_DETECTED: &str = "260415000";
/// SNOMED CT "detected", the positive test result.
pub const TEST_RESULT_DETECTED: &str = "260373001";

const MAX_TEXT: usize = 80;

/// What the certificate certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// A vaccination (`v`).
    Vaccination {
        /// `dn`: which dose this is.
        dose_number: u32,
        /// `sd`: doses in the series.
        total_doses: u32,
        /// `dt`: date of this dose.
        date: CalendarDate,
    },
    /// A test (`t`).
    Test {
        /// `tr` is the value set's "not detected" code.
        result_negative: bool,
        /// `sc`: when the sample was taken, Unix milliseconds.
        sample_time_ms: i64,
    },
    /// A recovery (`r`).
    Recovery {
        /// `df`: first day the certificate is valid.
        valid_from: CalendarDate,
        /// `du`: last day the certificate is valid.
        valid_until: CalendarDate,
    },
}

impl CertKind {
    /// Its type, without the details.
    pub fn cert_type(&self) -> CertType {
        match self {
            CertKind::Vaccination { .. } => CertType::Vaccination,
            CertKind::Test { .. } => CertType::Test,
            CertKind::Recovery { .. } => CertType::Recovery,
        }
    }

    /// `vaccination`, `test` or `recovery`.
    pub fn type_name(&self) -> &'static str {
        self.cert_type().name()
    }
}

/// The three certificate types, as the signer's key usage restricts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertType {
    /// `v`.
    Vaccination,
    /// `t`.
    Test,
    /// `r`.
    Recovery,
}

impl CertType {
    /// `vaccination`, `test` or `recovery`.
    pub fn name(self) -> &'static str {
        match self {
            CertType::Vaccination => "vaccination",
            CertType::Test => "test",
            CertType::Recovery => "recovery",
        }
    }
}

/// The type of a certificate: which one of `v`, `t`, `r` it holds. Only
/// that much is checked, so the key usage can be judged on a certificate
/// whose other fields the schema would refuse.
pub fn certificate_type(hcert: &Json) -> Result<CertType, DccError> {
    let root = hcert.as_object().ok_or_else(|| DccError::schema("not an object"))?;
    let present: Vec<CertType> = [("v", CertType::Vaccination), ("t", CertType::Test), ("r", CertType::Recovery)]
        .into_iter()
        .filter(|(k, _)| root.contains_key(*k))
        .map(|(_, t)| t)
        .collect();
    match present.as_slice() {
        [one] => Ok(*one),
        [] => Err(DccError::schema("no v, t or r entry")),
        _ => Err(DccError::schema("more than one of v, t and r")),
    }
}

/// A certificate that passed the schema checks: what it certifies and whom.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateContent {
    /// What it certifies.
    pub kind: CertKind,
    /// `nam.fnt`: ICAO 9303 transliterated family name.
    pub family_name_std: String,
    /// `nam.gnt`: ICAO 9303 transliterated given name (may be empty).
    pub given_name_std: String,
    /// `nam.fn` and `nam.gn` as written (any script, e.g. Chinese
    /// characters); empty when the issuer left them out.
    pub family_name: String,
    pub given_name: String,
    /// `dob` as written: `YYYY-MM-DD`, `YYYY-MM`, `YYYY` or empty.
    pub birth_date: String,
    /// `ver`: the schema version the issuer followed.
    pub schema_version: String,
}

impl fmt::Debug for CertificateContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateContent")
            .field("kind", &self.kind)
            .field("family_name_std", &"<hidden>")
            .field("given_name_std", &"<hidden>")
            .field("birth_date", &"<hidden>")
            .field("schema_version", &self.schema_version)
            .finish()
    }
}

fn text<'a>(obj: &'a Map<String, Json>, path: &str, key: &str) -> Result<&'a str, DccError> {
    match obj.get(key) {
        Some(Json::String(s)) if s.chars().count() <= MAX_TEXT => Ok(s),
        Some(Json::String(_)) => Err(DccError::schema(format!("{path}{key} is longer than {MAX_TEXT} characters"))),
        Some(_) => Err(DccError::schema(format!("{path}{key} is not text"))),
        None => Err(DccError::schema(format!("{path}{key} is missing"))),
    }
}

fn optional_text<'a>(obj: &'a Map<String, Json>, path: &str, key: &str) -> Result<Option<&'a str>, DccError> {
    if obj.contains_key(key) { text(obj, path, key).map(Some) } else { Ok(None) }
}

/// A full date. The schema says `YYYY-MM-DD`; some issuers wrote a full
/// date-time instead (`2021-05-18T08:10:00+02:00`), which JSON schema
/// validators let through (they do not assert `format`) and which names the
/// same day, so its date part is taken as written.
fn date(obj: &Map<String, Json>, path: &str, key: &str) -> Result<CalendarDate, DccError> {
    let raw = text(obj, path, key)?;
    let date_part = match raw.get(..10) {
        Some(d) if raw.len() == 10 => Some(d),
        Some(d) if parse_datetime_ms(raw).is_some() => Some(d),
        _ => None,
    };
    date_part
        .and_then(CalendarDate::parse)
        .ok_or_else(|| DccError::schema(format!("{path}{key} is not a YYYY-MM-DD date")))
}

/// `dn` and `sd`: positive integers. A float with no fraction is an integer
/// to JSON schema, so it is one here.
fn dose(obj: &Map<String, Json>, key: &str) -> Result<u32, DccError> {
    let bad = || DccError::schema(format!("v[0].{key} is not a positive integer"));
    let n = obj.get(key).ok_or_else(|| DccError::schema(format!("v[0].{key} is missing")))?;
    let n = match n.as_u64() {
        Some(n) => n,
        None => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (1.0..=f64::from(u32::MAX)).contains(&f) => f as u64,
            _ => return Err(bad()),
        },
    };
    u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(bad)
}

/// `^[A-Z<]*$`: the machine-readable-zone alphabet of ICAO 9303.
fn is_icao(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_uppercase() || b == b'<')
}

/// `^((19|20)\d\d(-\d\d){0,2}){0,1}$`, with month and day in range.
fn is_birth_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        // The 1.3.0 schema allows an empty date of birth for "unknown".
        return true;
    }
    let all_digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    if !(b.len() >= 4 && all_digits(&b[..4]) && (b.starts_with(b"19") || b.starts_with(b"20"))) {
        return false;
    }
    match b.len() {
        4 => true,
        7 => b[4] == b'-' && all_digits(&b[5..7]) && (1..=12).contains(&two(&b[5..7])),
        10 => CalendarDate::parse(s).is_some(),
        _ => false,
    }
}

fn two(b: &[u8]) -> u8 {
    (b[0] - b'0') * 10 + (b[1] - b'0')
}

/// `^\d+.\d+.\d+$` as the schema means it.
fn is_semver(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The one entry of the group, checked to be an array of exactly one object.
fn single_entry<'a>(group: &'a Json, key: &str) -> Result<&'a Map<String, Json>, DccError> {
    match group {
        Json::Array(items) if items.len() == 1 => {
            items[0].as_object().ok_or_else(|| DccError::schema(format!("{key}[0] is not an object")))
        }
        Json::Array(items) if items.is_empty() => Err(DccError::schema(format!("{key} has no entry"))),
        Json::Array(_) => Err(DccError::schema(format!("{key} has more than one entry"))),
        _ => Err(DccError::schema(format!("{key} is not an array"))),
    }
}

fn common_entry_fields(entry: &Map<String, Json>, path: &str) -> Result<(), DccError> {
    for key in ["tg", "is", "ci"] {
        text(entry, path, key)?;
    }
    let co = text(entry, path, "co")?;
    if co.is_empty() || co.len() > 10 || !co.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(DccError::schema(format!("{path}co is not a country code")));
    }
    Ok(())
}

/// Runs the minimal schema checks on a certificate (the value under
/// -260 / 1, as JSON) and returns its typed content.
pub fn check_schema(hcert: &Json) -> Result<CertificateContent, DccError> {
    let root = hcert.as_object().ok_or_else(|| DccError::schema("not an object"))?;
    let ver = text(root, "", "ver")?;
    if !is_semver(ver) {
        return Err(DccError::schema("ver is not a version number"));
    }
    let nam = match root.get("nam") {
        Some(Json::Object(nam)) => nam,
        Some(_) => return Err(DccError::schema("nam is not an object")),
        None => return Err(DccError::schema("nam is missing")),
    };
    let fnt = text(nam, "nam.", "fnt")?;
    let gnt = optional_text(nam, "nam.", "gnt")?.unwrap_or("");
    for (key, value) in [("fnt", fnt), ("gnt", gnt)] {
        if !is_icao(value) {
            return Err(DccError::schema(format!("nam.{key} is not ICAO 9303 (A-Z and <)")));
        }
    }
    let family_name = optional_text(nam, "nam.", "fn")?.unwrap_or("");
    let given_name = optional_text(nam, "nam.", "gn")?.unwrap_or("");
    let dob = text(root, "", "dob")?;
    if !is_birth_date(dob) {
        return Err(DccError::schema("dob is not YYYY, YYYY-MM or YYYY-MM-DD (1900-2099)"));
    }

    let kind = match certificate_type(hcert)? {
        CertType::Vaccination => {
            let e = single_entry(&root["v"], "v")?;
            common_entry_fields(e, "v[0].")?;
            for key in ["vp", "mp", "ma"] {
                text(e, "v[0].", key)?;
            }
            CertKind::Vaccination {
                dose_number: dose(e, "dn")?,
                total_doses: dose(e, "sd")?,
                date: date(e, "v[0].", "dt")?,
            }
        }
        CertType::Test => {
            let e = single_entry(&root["t"], "t")?;
            common_entry_fields(e, "t[0].")?;
            text(e, "t[0].", "tt")?;
            for key in ["nm", "ma", "tc"] {
                optional_text(e, "t[0].", key)?;
            }
            let sample_time_ms = parse_datetime_ms(text(e, "t[0].", "sc")?)
                .ok_or_else(|| DccError::schema("t[0].sc is not a date-time"))?;
            // Only the value set's "not detected" is a negative result; any
            // other text (the other code, or an issuer's own word for it)
            // is not one a gate may rely on, though the schema allows it.
            let result_negative = text(e, "t[0].", "tr")? == TEST_RESULT_NOT_DETECTED;
            CertKind::Test { result_negative, sample_time_ms }
        }
        CertType::Recovery => {
            let e = single_entry(&root["r"], "r")?;
            common_entry_fields(e, "r[0].")?;
            date(e, "r[0].", "fr")?;
            CertKind::Recovery { valid_from: date(e, "r[0].", "df")?, valid_until: date(e, "r[0].", "du")? }
        }
    };
    Ok(CertificateContent {
        kind,
        family_name_std: fnt.to_string(),
        given_name_std: gnt.to_string(),
        family_name: family_name.to_string(),
        given_name: given_name.to_string(),
        birth_date: dob.to_string(),
        schema_version: ver.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vaccination() -> Json {
        json!({
            "ver": "1.3.0",
            "nam": {"fn": "Zhang", "fnt": "ZHANG", "gn": "San", "gnt": "SAN"},
            "dob": "1990-01-31",
            "v": [{"tg": "840539006", "vp": "1119349007", "mp": "EU/1/20/1528",
                   "ma": "ORG-100030215", "dn": 2, "sd": 2, "dt": "2021-06-01",
                   "co": "CN", "is": "Issuer", "ci": "URN:UVCI:01:CN:X"}]
        })
    }

    fn refused(doc: &Json) -> String {
        match check_schema(doc) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_valid_vaccination() {
        let c = check_schema(&vaccination()).expect("valid");
        assert_eq!(c.kind.type_name(), "vaccination");
        assert_eq!(c.family_name_std, "ZHANG");
        assert!(!format!("{c:?}").contains("ZHANG"), "names stay out of Debug");
    }

    #[test]
    fn each_rule_refuses() {
        let mut doc = vaccination();
        doc["v"][0]["dn"] = json!(0);
        assert!(refused(&doc).contains("dn"));

        let mut doc = vaccination();
        doc["v"][0]["dt"] = json!("2021-6-1");
        assert!(refused(&doc).contains("dt"));

        let mut doc = vaccination();
        doc["dob"] = json!("1890-01-01");
        assert!(refused(&doc).contains("dob"));

        let mut doc = vaccination();
        doc["nam"]["fnt"] = json!("Zhang");
        assert!(refused(&doc).contains("fnt"));

        let mut doc = vaccination();
        doc["r"] = json!([{}]);
        assert!(refused(&doc).contains("more than one"));

        let mut doc = vaccination();
        doc["v"] = json!([doc["v"][0].clone(), doc["v"][0].clone()]);
        assert!(refused(&doc).contains("more than one entry"));

        let mut doc = vaccination();
        doc.as_object_mut().map(|o| o.remove("v"));
        assert!(refused(&doc).contains("no v, t or r"));
    }

    #[test]
    fn date_times_name_their_day() {
        let mut doc = vaccination();
        doc["v"][0]["dt"] = json!("2021-05-18T08:10:00+02:00");
        let c = check_schema(&doc).expect("valid");
        assert!(matches!(c.kind, CertKind::Vaccination { date, .. } if date.to_string() == "2021-05-18"));
        doc["v"][0]["dt"] = json!("2021-05-18Tlater");
        assert!(refused(&doc).contains("dt"));
    }

    #[test]
    fn partial_birth_dates() {
        for ok in ["1990", "1990-02", "1990-02-28", ""] {
            assert!(is_birth_date(ok), "{ok}");
        }
        for bad in ["1890", "1990-13", "1990-02-30", "90-01-01", "1990-1-1", "1990-XX-XX"] {
            assert!(!is_birth_date(bad), "{bad}");
        }
    }

    #[test]
    fn test_results_are_read() {
        let doc = json!({
            "ver": "1.3.0", "nam": {"fnt": "LI"}, "dob": "1985",
            "t": [{"tg": "840539006", "tt": "LP6464-4", "sc": "2021-06-01T08:00:00+08:00",
                   "tr": "260415000", "tc": "Lab", "co": "CN", "is": "I", "ci": "C"}]
        });
        let c = check_schema(&doc).expect("valid");
        assert_eq!(c.kind, CertKind::Test { result_negative: true, sample_time_ms: 1_622_505_600_000 });
        let mut doc = doc;
        for (tr, negative) in [(TEST_RESULT_DETECTED, false), ("NEGATIVO", false)] {
            doc["t"][0]["tr"] = json!(tr);
            let c = check_schema(&doc).expect("valid");
            assert!(matches!(c.kind, CertKind::Test { result_negative, .. } if result_negative == negative));
        }
    }
}
