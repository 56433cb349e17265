//! The CWT claims of the signed payload, and the health certificate they carry.
//!
//! The certificate itself is turned into a JSON value: its schema is a JSON
//! schema, issuers and the conformance data describe it as JSON, and one
//! shape lets the same checks run on a decoded payload and on a JSON file.

use ciborium::value::{Integer, Value};
use serde_json::{Map, Number, Value as Json};

use crate::error::DccError;
use crate::time::format_datetime_utc;

const CLAIM_ISS: i128 = 1;
const CLAIM_EXP: i128 = 4;
const CLAIM_IAT: i128 = 6;
const CLAIM_HCERT: i128 = -260;
const HCERT_EU_DCC_V1: i128 = 1;

/// The claims of a health certificate CWT.
#[derive(Clone, PartialEq)]
pub struct CwtClaims {
    /// Claim 1: the issuing country.
    pub issuer: Option<String>,
    /// Claim 6, in Unix milliseconds.
    pub issued_at_ms: Option<i64>,
    /// Claim 4, in Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// Claim -260 / 1: the certificate, as JSON.
    pub hcert: Json,
}

/// The certificate holds a name and a birth date: never print it.
impl std::fmt::Debug for CwtClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CwtClaims")
            .field("issuer", &self.issuer)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("hcert", &"<hidden>")
            .finish()
    }
}

fn read_cbor(bytes: &[u8]) -> Result<Value, DccError> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader(&mut reader).map_err(|e| DccError::cbor(format!("not CBOR: {e}")))?;
    if !reader.is_empty() {
        return Err(DccError::cbor(format!("{} bytes after the CBOR item", reader.len())));
    }
    Ok(value)
}

fn int_key(key: &Value) -> Option<i128> {
    match key {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    }
}

/// A NumericDate (seconds since 1970, integer or float, possibly tag 1) in
/// milliseconds.
fn numeric_date_ms(value: &Value, claim: &str) -> Result<i64, DccError> {
    let bad = || DccError::cbor(format!("claim {claim} is not a NumericDate"));
    match value {
        Value::Integer(i) => i64::try_from(i128::from(*i)).ok().and_then(|s| s.checked_mul(1000)).ok_or_else(bad),
        // Whole milliseconds are all the precision a gate needs; the range
        // check keeps the cast exact.
        Value::Float(f) if f.is_finite() && f.abs() < 1e15 => Ok((f * 1000.0).floor() as i64),
        Value::Tag(1, inner) => numeric_date_ms(inner, claim),
        _ => Err(bad()),
    }
}

/// Parses the CWT claims of a COSE payload.
pub fn decode_cwt(payload: &[u8]) -> Result<CwtClaims, DccError> {
    let Value::Map(entries) = read_cbor(payload)? else {
        return Err(DccError::cbor("the CWT is not a map"));
    };
    let mut issuer = None;
    let mut issued_at_ms = None;
    let mut expires_at_ms = None;
    let mut hcert = None;
    let mut seen = Vec::new();
    for (key, value) in &entries {
        let Some(key) = int_key(key) else {
            // Text-keyed claims are private claims nobody here reads.
            continue;
        };
        if seen.contains(&key) {
            return Err(DccError::cbor(format!("claim {key} appears twice")));
        }
        seen.push(key);
        match key {
            CLAIM_ISS => match value {
                Value::Text(t) => issuer = Some(t.clone()),
                _ => return Err(DccError::cbor("claim 1 (iss) is not text")),
            },
            CLAIM_EXP => expires_at_ms = Some(numeric_date_ms(value, "4 (exp)")?),
            CLAIM_IAT => issued_at_ms = Some(numeric_date_ms(value, "6 (iat)")?),
            CLAIM_HCERT => {
                let Value::Map(inner) = value else {
                    return Err(DccError::cbor("claim -260 (hcert) is not a map"));
                };
                let mut found = None;
                for (k, v) in inner {
                    if int_key(k) == Some(HCERT_EU_DCC_V1) {
                        if found.is_some() {
                            return Err(DccError::cbor("claim -260 holds key 1 twice"));
                        }
                        found = Some(v);
                    }
                }
                let v = found.ok_or_else(|| DccError::cbor("claim -260 has no key 1"))?;
                hcert = Some(cbor_to_json(v)?);
            }
            _ => {}
        }
    }
    Ok(CwtClaims {
        issuer,
        issued_at_ms,
        expires_at_ms,
        hcert: hcert.ok_or_else(|| DccError::cbor("no claim -260 (hcert)"))?,
    })
}

/// Decodes a CBOR-encoded health certificate (the value under -260 / 1) on
/// its own, as JSON.
pub fn decode_hcert(cbor: &[u8]) -> Result<Json, DccError> {
    cbor_to_json(&read_cbor(cbor)?)
}

/// Converts the certificate's CBOR to JSON. Refuses what JSON cannot say
/// (byte strings, non-text keys, NaN) and duplicate keys, which would let
/// two readers see two different certificates.
pub fn cbor_to_json(value: &Value) -> Result<Json, DccError> {
    Ok(match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Integer(i) => integer_to_json(*i)?,
        Value::Float(f) => Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| DccError::cbor("a number in the certificate is not finite"))?,
        Value::Text(t) => Json::String(t.clone()),
        Value::Bytes(_) => return Err(DccError::cbor("byte string inside the certificate")),
        Value::Array(items) => Json::Array(items.iter().map(cbor_to_json).collect::<Result<_, _>>()?),
        Value::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let Value::Text(k) = k else {
                    return Err(DccError::cbor("non-text key inside the certificate"));
                };
                if map.insert(k.clone(), cbor_to_json(v)?).is_some() {
                    return Err(DccError::cbor(format!("key {k:?} appears twice")));
                }
            }
            Json::Object(map)
        }
        // Tag 0 is an RFC 3339 text date-time, tag 1 an epoch date-time: both
        // are the JSON schema's date-time strings.
        Value::Tag(0, inner) => match inner.as_ref() {
            Value::Text(t) => Json::String(t.clone()),
            _ => return Err(DccError::cbor("tag 0 does not hold text")),
        },
        Value::Tag(1, inner) => Json::String(format_datetime_utc(numeric_date_ms(inner, "date")?)),
        Value::Tag(_, inner) => cbor_to_json(inner)?,
        _ => return Err(DccError::cbor("unsupported CBOR item inside the certificate")),
    })
}

fn integer_to_json(i: Integer) -> Result<Json, DccError> {
    let wide = i128::from(i);
    if let Ok(n) = i64::try_from(wide) {
        Ok(Json::from(n))
    } else if let Ok(n) = u64::try_from(wide) {
        Ok(Json::from(n))
    } else {
        Err(DccError::cbor("an integer in the certificate is out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(value, &mut out).expect("serialize to a Vec");
        out
    }

    fn claims(hcert: Value) -> Value {
        Value::Map(vec![
            (Value::from(1), Value::from("CN")),
            (Value::from(4), Value::from(1_700_000_000)),
            (Value::from(6), Value::Float(1_600_000_000.5)),
            (Value::from(-260), Value::Map(vec![(Value::from(1), hcert)])),
        ])
    }

    #[test]
    fn reads_the_claims() {
        let hcert = Value::Map(vec![(Value::from("ver"), Value::from("1.3.0"))]);
        let c = decode_cwt(&cbor(&claims(hcert))).expect("valid CWT");
        assert_eq!(c.issuer.as_deref(), Some("CN"));
        assert_eq!(c.expires_at_ms, Some(1_700_000_000_000));
        assert_eq!(c.issued_at_ms, Some(1_600_000_000_500));
        assert_eq!(c.hcert, serde_json::json!({"ver": "1.3.0"}));
    }

    #[test]
    fn refuses_ambiguous_certificates() {
        let dup =
            Value::Map(vec![(Value::from("dob"), Value::from("1990")), (Value::from("dob"), Value::from("1991"))]);
        assert!(decode_cwt(&cbor(&claims(dup))).is_err());
        let bytes = Value::Map(vec![(Value::from("ver"), Value::Bytes(vec![1]))]);
        assert!(decode_cwt(&cbor(&claims(bytes))).is_err());
        assert!(decode_cwt(&cbor(&Value::Array(vec![]))).is_err());
        assert!(decode_cwt(b"\xff\xff").is_err());
    }

    #[test]
    fn epoch_dates_become_date_time_strings() {
        let v = Value::Tag(1, Box::new(Value::from(1_620_064_800)));
        assert_eq!(cbor_to_json(&v).ok(), Some(Json::from("2021-05-03T18:00:00Z")));
    }
}
