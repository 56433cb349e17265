//! Offline verification of signed health certificates in the EU Digital COVID Certificate format.
//!
//! A QR code's text goes through [`verify`]: `HC1:` prefix, base45, zlib
//! (bounded), COSE_Sign1, the signer looked up by key id in a [`TrustList`]
//! and its ES256 / PS256 signature checked, then the CWT claims, the
//! validity window, the minimal schema and the signer's key usage. Each step
//! is also public on its own, so the conformance run checks each one against
//! the public test data, and every error says which [`Step`] refused.
//!
//! No I/O except [`TrustList::load_pem_or_base64_file`], and no clock:
//! the validation time is an argument. Names and birth dates never appear
//! in `Debug` output or error messages.

mod cose;
mod cwt;
mod decode;
mod error;
mod holder;
mod schema;
mod time;
mod trust;

use std::fmt;

pub use cose::{Algorithm, CoseMessage, decode_cose, verify_signature};
pub use cwt::{CwtClaims, cbor_to_json, decode_cwt, decode_hcert};
pub use decode::{MAX_BASE45_CHARS, MAX_INFLATED_BYTES, PREFIX, base45_decode, inflate, unprefix};
pub use error::{DccError, ExpirationFailure, Step, VerifyFailure};
pub use holder::{birth_date_matches, holder_name_matches, std_name_matches};
pub use schema::{
    CertKind, CertType, CertificateContent, TEST_RESULT_DETECTED, TEST_RESULT_NOT_DETECTED, certificate_type,
    check_schema,
};
pub use time::{CalendarDate, format_datetime_utc, parse_datetime_ms};
pub use trust::{KeyUsage, Kid, Signer, SignerKey, TrustList};

/// A certificate that passed every step.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// What it certifies.
    pub kind: CertKind,
    /// `nam.fnt`: ICAO 9303 transliterated family name.
    pub family_name_std: String,
    /// `nam.gnt`: ICAO 9303 transliterated given name (may be empty).
    pub given_name_std: String,
    /// `nam.fn` / `nam.gn` as written, any script; may be empty.
    pub family_name: String,
    pub given_name: String,
    /// `dob` as written: `YYYY-MM-DD`, `YYYY-MM`, `YYYY` or empty.
    pub birth_date: String,
    /// CWT issued-at, Unix milliseconds.
    pub issued_at_ms: i64,
    /// CWT expiry, Unix milliseconds.
    pub expires_at_ms: i64,
    /// CWT issuer claim (a country code); empty if the issuer left it out.
    pub issuer_country: String,
    /// Key id of the signer that verified it.
    pub kid: Kid,
}

/// Hides the holder: this value may be logged by whoever holds it.
impl fmt::Debug for VerifiedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCertificate")
            .field("kind", &self.kind)
            .field("family_name_std", &"<hidden>")
            .field("given_name_std", &"<hidden>")
            .field("birth_date", &"<hidden>")
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("issuer_country", &self.issuer_country)
            .field("kid", &self.kid)
            .finish()
    }
}

/// The time checks: signer notBefore <= issued-at <= now <= expiry <=
/// signer notAfter. Returns (issued-at, expiry).
///
/// The last condition refuses a certificate that outlives its signer: the
/// format's rule, which stops a signer about to expire from minting
/// long-lived certificates.
pub fn check_expiration(claims: &CwtClaims, signer: &Signer, now_ms: i64) -> Result<(i64, i64), DccError> {
    let issued_at_ms = claims.issued_at_ms.ok_or_else(|| DccError::cbor("no claim 6 (iat)"))?;
    let expires_at_ms = claims.expires_at_ms.ok_or_else(|| DccError::cbor("no claim 4 (exp)"))?;
    let failure = if issued_at_ms < signer.not_before_ms {
        Some(ExpirationFailure::IssuedBeforeSigner { issued_at_ms, not_before_ms: signer.not_before_ms })
    } else if now_ms < issued_at_ms {
        Some(ExpirationFailure::NotYetValid { issued_at_ms, now_ms })
    } else if now_ms > expires_at_ms {
        Some(ExpirationFailure::Expired { expires_at_ms, now_ms })
    } else if expires_at_ms > signer.not_after_ms {
        Some(ExpirationFailure::OutlivesSigner { expires_at_ms, not_after_ms: signer.not_after_ms })
    } else {
        None
    };
    match failure {
        Some(f) => Err(f.into()),
        None => Ok((issued_at_ms, expires_at_ms)),
    }
}

/// The key usage check: a signer whose certificate names some of the
/// profile's extended key usages may sign only those types.
pub fn check_key_usage(cert_type: CertType, signer: &Signer) -> Result<(), DccError> {
    let allowed = match cert_type {
        CertType::Vaccination => signer.usage.vaccination,
        CertType::Test => signer.usage.test,
        CertType::Recovery => signer.usage.recovery,
    };
    if allowed { Ok(()) } else { Err(DccError::KeyUsage { cert_type: cert_type.name() }) }
}

/// The full pipeline, from the QR code's text to a verified certificate.
///
/// `now_ms` is the validation time in Unix milliseconds; the caller reads
/// the clock, once.
pub fn verify(qr_text: &str, trust: &TrustList, now_ms: i64) -> Result<VerifiedCertificate, DccError> {
    let compressed = base45_decode(unprefix(qr_text)?)?;
    let message = decode_cose(&inflate(&compressed)?)?;
    // The signature is checked before the payload is parsed any further:
    // everything after this line reads authenticated bytes only.
    let signer = verify_signature(&message, trust)?;
    let payload = message.payload().unwrap_or_default();
    let claims = decode_cwt(payload)?;
    let (issued_at_ms, expires_at_ms) = check_expiration(&claims, signer, now_ms)?;
    let content = check_schema(&claims.hcert)?;
    check_key_usage(content.kind.cert_type(), signer)?;
    Ok(VerifiedCertificate {
        kind: content.kind,
        family_name_std: content.family_name_std,
        given_name_std: content.given_name_std,
        family_name: content.family_name,
        given_name: content.given_name,
        birth_date: content.birth_date,
        issued_at_ms,
        expires_at_ms,
        issuer_country: claims.issuer.unwrap_or_default(),
        kid: signer.kid,
    })
}
