//! The COSE_Sign1 envelope: parsing it, finding its key id, checking its signature.
//!
//! Accepts the three shapes issuers produce: tag 18, tag 61 (CWT) around
//! tag 18, and untagged. The key id comes from the protected header when it
//! is there, else from the unprotected one: an unprotected kid must never
//! override a protected one, since anyone can rewrite the unprotected header.

use ciborium::value::Value;
use coset::{AsCborValue as _, CoseSign1, iana};
use ring::signature::{self, UnparsedPublicKey};

use crate::error::{DccError, VerifyFailure};
use crate::trust::{Kid, Signer, SignerKey, TrustList};

const TAG_COSE_SIGN1: u64 = 18;
const TAG_CWT: u64 = 61;

/// The signature algorithms the health certificate format allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256; the signature is r || s, 64 bytes.
    Es256,
    /// RSASSA-PSS with SHA-256 and MGF1-SHA-256.
    Ps256,
}

impl Algorithm {
    /// The JOSE / COSE name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Ps256 => "PS256",
        }
    }
}

/// A parsed COSE_Sign1 message, not yet verified.
#[derive(Clone)]
pub struct CoseMessage {
    sign1: CoseSign1,
}

/// The payload carries the holder's name and birth date: `Debug` shows only
/// the headers and sizes.
impl std::fmt::Debug for CoseMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoseMessage")
            .field("key_id", &self.key_id())
            .field("algorithm", &self.algorithm().ok())
            .field("payload_len", &self.payload().map(<[u8]>::len))
            .field("signature_len", &self.sign1.signature.len())
            .finish()
    }
}

impl CoseMessage {
    /// The key id: protected header first, unprotected only if the
    /// protected one has none.
    pub fn key_id(&self) -> Option<&[u8]> {
        let protected = &self.sign1.protected.header.key_id;
        let unprotected = &self.sign1.unprotected.key_id;
        if !protected.is_empty() {
            Some(protected)
        } else if !unprotected.is_empty() {
            Some(unprotected)
        } else {
            None
        }
    }

    /// The algorithm header (protected first, like the key id).
    pub fn algorithm(&self) -> Result<Algorithm, VerifyFailure> {
        let alg = self
            .sign1
            .protected
            .header
            .alg
            .as_ref()
            .or(self.sign1.unprotected.alg.as_ref())
            .ok_or(VerifyFailure::NoAlgorithm)?;
        match alg {
            coset::Algorithm::Assigned(iana::Algorithm::ES256) => Ok(Algorithm::Es256),
            coset::Algorithm::Assigned(iana::Algorithm::PS256) => Ok(Algorithm::Ps256),
            other => Err(VerifyFailure::UnsupportedAlgorithm(format!("{other:?}"))),
        }
    }

    /// The payload bytes (the CWT), unverified.
    pub fn payload(&self) -> Option<&[u8]> {
        self.sign1.payload.as_deref()
    }

    /// The bytes the signature covers (the COSE `Sig_structure`).
    fn signed_bytes(&self) -> Vec<u8> {
        self.sign1.tbs_data(&[])
    }
}

/// Parses a COSE_Sign1 message (tag 18, tag 61 around tag 18, or untagged).
pub fn decode_cose(bytes: &[u8]) -> Result<CoseMessage, DccError> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader(&mut reader).map_err(|e| DccError::cose(format!("not CBOR: {e}")))?;
    if !reader.is_empty() {
        return Err(DccError::cose(format!("{} bytes after the message", reader.len())));
    }
    let value = match value {
        Value::Tag(TAG_CWT, inner) => match *inner {
            Value::Tag(TAG_COSE_SIGN1, inner) => *inner,
            _ => return Err(DccError::cose("tag 61 does not wrap a tag 18 COSE_Sign1")),
        },
        Value::Tag(TAG_COSE_SIGN1, inner) => *inner,
        Value::Tag(tag, _) => {
            return Err(DccError::cose(format!("tag {tag} is not a COSE_Sign1 tag")));
        }
        untagged => untagged,
    };
    let sign1 =
        CoseSign1::from_cbor_value(value).map_err(|e| DccError::cose(format!("not a COSE_Sign1 structure: {e}")))?;
    Ok(CoseMessage { sign1 })
}

/// Checks the message's signature against the trust list; returns the signer
/// that verified it.
pub fn verify_signature<'t>(message: &CoseMessage, trust: &'t TrustList) -> Result<&'t Signer, DccError> {
    let raw_kid = message.key_id().ok_or(VerifyFailure::NoKeyId)?;
    let unknown = || {
        use base64::Engine as _;
        VerifyFailure::UnknownKeyId(base64::engine::general_purpose::STANDARD.encode(raw_kid))
    };
    let kid = Kid::from_slice(raw_kid).ok_or_else(unknown)?;
    let candidates = trust.get(&kid);
    if candidates.is_empty() {
        return Err(unknown().into());
    }
    let alg = message.algorithm()?;
    if message.payload().is_none_or(<[u8]>::is_empty) {
        return Err(VerifyFailure::NoPayload.into());
    }
    let signed = message.signed_bytes();
    let signature = &message.sign1.signature;
    let mut last = VerifyFailure::BadSignature;
    for signer in candidates {
        let outcome = match (&signer.key, alg) {
            (SignerKey::P256(point), Algorithm::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(&signed, signature)
            }
            (SignerKey::Rsa(der), Algorithm::Ps256) => {
                UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, der).verify(&signed, signature)
            }
            (key, alg) => {
                last = VerifyFailure::KeyMismatch { alg: alg.name(), key: key.describe() };
                continue;
            }
        };
        match outcome {
            Ok(()) => return Ok(signer),
            Err(_) => last = VerifyFailure::BadSignature,
        }
    }
    Err(last.into())
}
