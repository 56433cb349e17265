//! The pipeline's steps and its one error type, each failure naming the step it happened in.
//!
//! Messages name fields and reasons, never values taken from a certificate:
//! an error may end up in a log line, and the certificate carries a name and
//! a birth date.

use std::fmt;

/// One step of the verification pipeline, in the order `verify` runs them
/// (except that the payload is only decoded after its signature checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// Removing the `HC1:` context prefix.
    Unprefix,
    /// Base45 decoding (RFC 9285).
    Base45,
    /// zlib inflation, bounded in size.
    Inflate,
    /// Parsing the COSE_Sign1 envelope and its headers.
    CoseDecode,
    /// Parsing the CWT claims and the health certificate inside them.
    CborDecode,
    /// Key id lookup and signature check against the trust list.
    Verify,
    /// Issued-at, expiry, validation time and the signer's validity window.
    Expiration,
    /// The signer certificate's extended key usage against the certificate type.
    KeyUsage,
    /// Minimal structural checks of the health certificate.
    Schema,
}

impl Step {
    /// Every step, in pipeline order.
    pub const ALL: [Step; 9] = [
        Step::Unprefix,
        Step::Base45,
        Step::Inflate,
        Step::CoseDecode,
        Step::CborDecode,
        Step::Verify,
        Step::Expiration,
        Step::KeyUsage,
        Step::Schema,
    ];

    /// A short stable name, for tables and log fields.
    pub fn name(self) -> &'static str {
        match self {
            Step::Unprefix => "unprefix",
            Step::Base45 => "base45",
            Step::Inflate => "inflate",
            Step::CoseDecode => "cose-decode",
            Step::CborDecode => "cbor-decode",
            Step::Verify => "verify",
            Step::Expiration => "expiration",
            Step::KeyUsage => "key-usage",
            Step::Schema => "schema",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the signature step refused a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// Neither header carries a key id.
    #[error("no key id in the protected or unprotected header")]
    NoKeyId,
    /// The key id names no certificate of the trust list.
    #[error("key id {0} is not in the trust list")]
    UnknownKeyId(String),
    /// The algorithm header is missing.
    #[error("no algorithm in the protected or unprotected header")]
    NoAlgorithm,
    /// An algorithm other than ES256 or PS256.
    #[error("algorithm {0} is not ES256 or PS256")]
    UnsupportedAlgorithm(String),
    /// The signer's key cannot check this algorithm (an RSA key for ES256,
    /// a P-384 key, ...).
    #[error("signer key ({key}) does not fit algorithm {alg}")]
    KeyMismatch {
        /// The algorithm the message names.
        alg: &'static str,
        /// The kind of key the certificate holds.
        key: String,
    },
    /// The envelope carries no payload (detached payloads are not used by
    /// health certificates).
    #[error("the COSE payload is detached or empty")]
    NoPayload,
    /// The signature does not verify under any certificate with that key id.
    #[error("signature does not verify")]
    BadSignature,
    /// The trust list could not be built.
    #[error("trust list: {0}")]
    TrustList(String),
}

/// Why the time checks refused a certificate. Times are Unix milliseconds:
/// they say nothing about the holder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpirationFailure {
    /// Validation time before the issued-at claim.
    #[error("not yet valid: issued at {issued_at_ms} ms, now {now_ms} ms")]
    NotYetValid {
        /// Issued-at claim.
        issued_at_ms: i64,
        /// Validation time.
        now_ms: i64,
    },
    /// Validation time after the expiry claim.
    #[error("expired at {expires_at_ms} ms, now {now_ms} ms")]
    Expired {
        /// Expiry claim.
        expires_at_ms: i64,
        /// Validation time.
        now_ms: i64,
    },
    /// Issued before the signer certificate became valid.
    #[error("issued at {issued_at_ms} ms, before the signer certificate's notBefore {not_before_ms} ms")]
    IssuedBeforeSigner {
        /// Issued-at claim.
        issued_at_ms: i64,
        /// Signer certificate notBefore.
        not_before_ms: i64,
    },
    /// Expires after the signer certificate stops being valid.
    #[error("expires at {expires_at_ms} ms, after the signer certificate's notAfter {not_after_ms} ms")]
    OutlivesSigner {
        /// Expiry claim.
        expires_at_ms: i64,
        /// Signer certificate notAfter.
        not_after_ms: i64,
    },
}

/// Every way `verify` and its steps can refuse; each variant belongs to one
/// [`Step`].
#[derive(Debug, thiserror::Error)]
pub enum DccError {
    /// The text does not start with the `HC1:` context identifier.
    #[error("unprefix: {0}")]
    Unprefix(&'static str),
    /// Not valid base45.
    #[error("base45: {0}")]
    Base45(String),
    /// Not a complete zlib stream, or one that inflates past the limit.
    #[error("inflate: {0}")]
    Inflate(String),
    /// Not a COSE_Sign1 structure.
    #[error("COSE decode: {0}")]
    CoseDecode(String),
    /// The payload is not a CWT carrying a health certificate.
    #[error("CBOR decode: {0}")]
    CborDecode(String),
    /// Key id or signature refused.
    #[error("verify: {0}")]
    Verify(#[from] VerifyFailure),
    /// Outside its validity window, or outside the signer's.
    #[error("expiration: {0}")]
    Expiration(#[from] ExpirationFailure),
    /// The signer may not sign this type of certificate.
    #[error("key usage: signer may not sign {cert_type} certificates")]
    KeyUsage {
        /// `vaccination`, `test` or `recovery`.
        cert_type: &'static str,
    },
    /// A required field is missing or malformed.
    #[error("schema: {0}")]
    Schema(String),
}

impl DccError {
    /// The step that refused.
    pub fn step(&self) -> Step {
        match self {
            DccError::Unprefix(_) => Step::Unprefix,
            DccError::Base45(_) => Step::Base45,
            DccError::Inflate(_) => Step::Inflate,
            DccError::CoseDecode(_) => Step::CoseDecode,
            DccError::CborDecode(_) => Step::CborDecode,
            DccError::Verify(_) => Step::Verify,
            DccError::Expiration(_) => Step::Expiration,
            DccError::KeyUsage { .. } => Step::KeyUsage,
            DccError::Schema(_) => Step::Schema,
        }
    }

    pub(crate) fn trust(reason: impl Into<String>) -> Self {
        DccError::Verify(VerifyFailure::TrustList(reason.into()))
    }

    pub(crate) fn schema(reason: impl Into<String>) -> Self {
        DccError::Schema(reason.into())
    }

    pub(crate) fn cbor(reason: impl Into<String>) -> Self {
        DccError::CborDecode(reason.into())
    }

    pub(crate) fn cose(reason: impl Into<String>) -> Self {
        DccError::CoseDecode(reason.into())
    }
}
