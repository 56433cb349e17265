//! Visitor QR passes: compact tokens the platform signs with Ed25519 and
//! the gate verifies offline.
//!
//! Token: `VP2.` + base64url(a `gate.v1.SignedEnvelope`), sealed and opened
//! by `gate-envelope` like every other message the platform signs: stream
//! `pass`, the site it is for, no gate (the pass lists its gates), and as
//! payload the pass as JSON: the site, the pass id, the host, the visitor's
//! ID-number hash (the same HMAC under the site key the identity table
//! uses, so the pass carries no ID number in clear), a validity window,
//! allowed gates and a use count. The envelope's counter is not a replay
//! guard here (a pass is shown many times; its use count and window are):
//! the issuer sets it to the issuing time.
//!
//! The first format, `VP1.` + base64url(payload JSON) + `.` +
//! base64url(signature over the payload, with its own `kid`), still
//! verifies for one release under the same keys; the gate warns when it
//! accepts one.
//!
//! This crate checks form and signature only. Whether a valid pass admits
//! someone now (window, gate, uses, revocation) is the decision engine's
//! job, with the gate's local use counts.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

/// The prefix of a visitor pass in a signed envelope.
pub const PREFIX: &str = "VP2.";
/// The prefix of the first, deprecated format (its own signature scheme).
pub const LEGACY_PREFIX: &str = "VP1.";
/// The envelope stream passes are sealed on.
pub const STREAM: &str = "pass";

/// Whether a QR payload is a visitor pass, in either format.
pub fn is_pass(text: &str) -> bool {
    text.starts_with(PREFIX) || text.starts_with(LEGACY_PREFIX)
}
/// Longer QR payloads are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 2048;

/// The signed content of a pass.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorPass {
    /// Which platform key signed it: inside a `VP1.` payload; for `VP2.`
    /// the envelope names the key, and this is filled in from it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    pub site: String,
    pub pass_id: String,
    /// The resident or office who invited the visitor.
    pub host_person_id: String,
    /// HMAC-SHA256 of the visitor's ID number under the site key, hex.
    pub visitor_id_hash: String,
    pub valid_from_ms: i64,
    pub valid_to_ms: i64,
    /// Empty: every gate of the site.
    #[serde(default)]
    pub gates: Vec<String>,
    /// 0: unlimited.
    pub max_uses: u32,
}

impl fmt::Debug for VisitorPass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VisitorPass")
            .field("pass_id", &self.pass_id)
            .field("site", &self.site)
            .field("kid", &self.kid)
            .field("valid_from_ms", &self.valid_from_ms)
            .field("valid_to_ms", &self.valid_to_ms)
            .field("gates", &self.gates)
            .field("max_uses", &self.max_uses)
            .finish_non_exhaustive()
    }
}

/// Why a token is not a valid pass. Every variant is a forgery or a
/// corruption from the gate's point of view (`pass_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("not a visitor pass (no {PREFIX} or {LEGACY_PREFIX} prefix)")]
    NotAPass,
    #[error("token too long ({0} characters)")]
    TooLong(usize),
    #[error("token is not PREFIX.payload.signature")]
    Shape,
    #[error("token is not valid base64url")]
    Encoding,
    #[error("signed by an unknown key {0:?}")]
    UnknownKey(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("payload is not a pass: {0}")]
    Payload(String),
    #[error("pass for site {found:?}, this is {expected:?}")]
    WrongSite { expected: String, found: String },
    /// The envelope was refused (`gate-envelope`'s reason).
    #[error("envelope refused: {0}")]
    Envelope(gate_envelope::Refusal),
}

/// The key id of a public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..4])
}

/// The platform keys a gate trusts: the envelope verifier for `VP2.`
/// passes, and the same keys by their `VP1.` key id.
#[derive(Debug, Clone, Default)]
pub struct PlatformKeys {
    envelope: gate_envelope::Verifier,
    keys: HashMap<String, VerifyingKey>,
}

impl PlatformKeys {
    /// Keys from their 32 raw bytes (under their generated key ids); an
    /// invalid point is refused with its index.
    pub fn from_raw(raw: &[[u8; 32]]) -> Result<Self, usize> {
        let mut specs = Vec::with_capacity(raw.len());
        for (i, bytes) in raw.iter().enumerate() {
            let key = VerifyingKey::from_bytes(bytes).map_err(|_| i)?;
            specs.push(gate_envelope::KeySpec { key_id: gate_envelope::key_id_for(&key), key });
        }
        Ok(PlatformKeys::from_specs(specs))
    }

    /// The keys a gate trusts for everything the platform signs
    /// (`Config::envelope_keys`).
    pub fn from_specs(specs: Vec<gate_envelope::KeySpec>) -> Self {
        let keys = specs.iter().map(|spec| (key_id(&spec.key), spec.key)).collect();
        PlatformKeys { envelope: gate_envelope::Verifier::new(specs), keys }
    }

    pub fn len(&self) -> usize {
        self.envelope.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envelope.is_empty()
    }

    /// Checks a detached signature by the key `kid` over `message` (signed
    /// platform messages such as the trust list).
    pub fn verify_detached(&self, kid: &str, message: &[u8], signature: &[u8]) -> Result<(), PassError> {
        let key = self.keys.get(kid).ok_or_else(|| PassError::UnknownKey(kid.to_owned()))?;
        let sig: [u8; 64] = signature.try_into().map_err(|_| PassError::Shape)?;
        key.verify_strict(message, &Signature::from_bytes(&sig)).map_err(|_| PassError::BadSignature)
    }

    /// Checks form, key and signature; then that the pass is for `site`.
    pub fn verify(&self, token: &str, site: &str) -> Result<VisitorPass, PassError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(PassError::TooLong(token.len()));
        }
        if let Some(rest) = token.strip_prefix(PREFIX) {
            return self.verify_envelope(rest, site);
        }
        let rest = token.strip_prefix(LEGACY_PREFIX).ok_or(PassError::NotAPass)?;
        let (payload_b64, sig_b64) = rest.split_once('.').ok_or(PassError::Shape)?;
        if sig_b64.contains('.') {
            return Err(PassError::Shape);
        }
        let payload = B64.decode(payload_b64).map_err(|_| PassError::Encoding)?;
        let sig_bytes: [u8; 64] =
            B64.decode(sig_b64).map_err(|_| PassError::Encoding)?.try_into().map_err(|_| PassError::Shape)?;
        // The key id is read before the signature is checked, only to pick
        // the key; nothing else of the payload is trusted until it verifies.
        #[derive(Deserialize)]
        struct KidOnly {
            kid: String,
        }
        let kid = serde_json::from_slice::<KidOnly>(&payload).map_err(|e| PassError::Payload(e.to_string()))?.kid;
        let key = self.keys.get(&kid).ok_or_else(|| PassError::UnknownKey(kid.clone()))?;
        key.verify_strict(&payload, &Signature::from_bytes(&sig_bytes)).map_err(|_| PassError::BadSignature)?;
        let pass: VisitorPass = serde_json::from_slice(&payload).map_err(|e| PassError::Payload(e.to_string()))?;
        if pass.site != site {
            return Err(PassError::WrongSite { expected: site.to_owned(), found: pass.site });
        }
        Ok(pass)
    }

    /// A `VP2.` token: the envelope opened by the one verification path
    /// (`gate-envelope`) for this site, site-wide, on the `pass` stream.
    fn verify_envelope(&self, rest: &str, site: &str) -> Result<VisitorPass, PassError> {
        let bytes = B64.decode(rest).map_err(|_| PassError::Encoding)?;
        let opened = self.envelope.open(&bytes, site, "", STREAM).map_err(PassError::Envelope)?;
        let mut pass: VisitorPass =
            serde_json::from_slice(&opened.payload).map_err(|e| PassError::Payload(e.to_string()))?;
        // The signed payload must agree with the signed envelope.
        if pass.site != site {
            return Err(PassError::WrongSite { expected: site.to_owned(), found: pass.site });
        }
        if !pass.kid.is_empty() {
            return Err(PassError::Payload("a kid inside an envelope pass".into()));
        }
        pass.kid = opened.key_id;
        Ok(pass)
    }
}

/// Seals a pass in a signed envelope and returns its QR text (`VP2.`): the
/// platform's way, and `gatectl pass issue`'s. `issued_at_ms` is also the
/// envelope's counter.
pub fn seal(pass: &VisitorPass, signer: &gate_envelope::Signer, issued_at_ms: i64) -> String {
    let mut pass = pass.clone();
    pass.kid = String::new();
    #[allow(clippy::expect_used)] // A struct of strings and integers always serialises.
    let payload = serde_json::to_vec(&pass).expect("a pass serialises");
    let counter = u64::try_from(issued_at_ms).unwrap_or(0).max(1);
    let envelope = signer.seal(&pass.site, "", STREAM, counter, issued_at_ms, &payload);
    format!("{PREFIX}{}", B64.encode(envelope))
}

/// Signs a pass in the deprecated `VP1.` format (kept to test that old
/// passes still verify). The pass's `kid` is set from the key.
pub fn sign(pass: &VisitorPass, key: &SigningKey) -> String {
    let mut pass = pass.clone();
    pass.kid = key_id(&key.verifying_key());
    #[allow(clippy::expect_used)] // A struct of strings and integers always serialises.
    let payload = serde_json::to_vec(&pass).expect("a pass serialises");
    let signature = key.sign(&payload);
    format!("{LEGACY_PREFIX}{}.{}", B64.encode(&payload), B64.encode(signature.to_bytes()))
}

/// Signs a platform message with a detached signature; returns (kid, signature).
pub fn sign_detached(message: &[u8], key: &SigningKey) -> (String, Vec<u8>) {
    (key_id(&key.verifying_key()), key.sign(message).to_bytes().to_vec())
}

/// A signing key from 64 hex characters (the private key file's content).
pub fn signing_key_from_hex(text: &str) -> Option<SigningKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn pass() -> VisitorPass {
        VisitorPass {
            kid: String::new(),
            site: "heshan-c03".into(),
            pass_id: "vp-1".into(),
            host_person_id: "R-0001".into(),
            visitor_id_hash: "00".repeat(32),
            valid_from_ms: 1,
            valid_to_ms: 2,
            gates: vec!["east-1".into()],
            max_uses: 2,
        }
    }

    fn keys(seeds: &[u8]) -> PlatformKeys {
        let raw: Vec<[u8; 32]> = seeds.iter().map(|s| key(*s).verifying_key().to_bytes()).collect();
        PlatformKeys::from_raw(&raw).expect("valid keys")
    }

    #[test]
    fn a_signed_pass_verifies_with_the_right_key_only() {
        let token = sign(&pass(), &key(1));
        let got = keys(&[2, 1]).verify(&token, "heshan-c03").expect("valid");
        assert_eq!(got.pass_id, "vp-1");
        assert_eq!(got.kid, key_id(&key(1).verifying_key()));
        assert!(matches!(keys(&[2]).verify(&token, "heshan-c03"), Err(PassError::UnknownKey(_))));
        assert_eq!(
            keys(&[1]).verify(&token, "other-site"),
            Err(PassError::WrongSite { expected: "other-site".into(), found: "heshan-c03".into() })
        );
    }

    #[test]
    fn tampering_is_caught() {
        let token = sign(&pass(), &key(1));
        let (head, sig) = token.rsplit_once('.').expect("shape");
        // A payload with more uses, keeping the old signature.
        let mut more = pass();
        more.max_uses = 99;
        more.kid = key_id(&key(1).verifying_key());
        let forged_payload = B64.encode(serde_json::to_vec(&more).expect("json"));
        let forged = format!("{LEGACY_PREFIX}{forged_payload}.{sig}");
        assert_eq!(keys(&[1]).verify(&forged, "heshan-c03"), Err(PassError::BadSignature));
        // A flipped signature bit.
        let mut sig_bytes = B64.decode(sig).expect("b64");
        sig_bytes[10] ^= 1;
        let flipped = format!("{head}.{}", B64.encode(&sig_bytes));
        assert_eq!(keys(&[1]).verify(&flipped, "heshan-c03"), Err(PassError::BadSignature));
        // Signed by an attacker who claims the platform's key id.
        let mut claimed = pass();
        claimed.kid = key_id(&key(1).verifying_key());
        let payload = serde_json::to_vec(&claimed).expect("json");
        let attacker =
            format!("{LEGACY_PREFIX}{}.{}", B64.encode(&payload), B64.encode(key(9).sign(&payload).to_bytes()));
        assert_eq!(keys(&[1]).verify(&attacker, "heshan-c03"), Err(PassError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panic() {
        let k = keys(&[1]);
        let cases: Vec<(String, PassError)> = vec![
            ("hello".into(), PassError::NotAPass),
            ("VP1.".into(), PassError::Shape),
            ("VP1.abc".into(), PassError::Shape),
            ("VP1.a.b.c".into(), PassError::Shape),
            ("VP1.!!!.AAAA".into(), PassError::Encoding),
            (format!("VP1.{}.AAAA", B64.encode(b"{}")), PassError::Shape),
            ("VP1.".to_owned() + &"A".repeat(3000), PassError::TooLong(3004)),
        ];
        for (token, want) in cases {
            assert_eq!(k.verify(&token, "heshan-c03"), Err(want), "{token:.40}");
        }
        let sig = B64.encode([0u8; 64]);
        assert!(matches!(k.verify(&format!("VP1.{}.{sig}", B64.encode(b"not json")), "s"), Err(PassError::Payload(_))));
    }

    #[test]
    fn detached_signatures() {
        let (kid, sig) = sign_detached(b"trust list v2", &key(1));
        let k = keys(&[1]);
        assert_eq!(k.verify_detached(&kid, b"trust list v2", &sig), Ok(()));
        assert_eq!(k.verify_detached(&kid, b"trust list v3", &sig), Err(PassError::BadSignature));
        let (forged_kid, forged) = sign_detached(b"trust list v2", &key(2));
        assert!(matches!(k.verify_detached(&forged_kid, b"trust list v2", &forged), Err(PassError::UnknownKey(_))));
        assert_eq!(k.verify_detached(&kid, b"trust list v2", &forged), Err(PassError::BadSignature));
        assert_eq!(k.verify_detached(&kid, b"x", &[1, 2]), Err(PassError::Shape));
    }

    fn signer(seed: u8) -> gate_envelope::Signer {
        gate_envelope::Signer::from_seed([seed; 32])
    }

    fn envelope_keys(seeds: &[u8]) -> PlatformKeys {
        PlatformKeys::from_specs(seeds.iter().map(|s| signer(*s).key_spec()).collect())
    }

    #[test]
    fn a_sealed_pass_verifies_through_the_envelope() {
        let token = seal(&pass(), &signer(1), 1_700_000_000_000);
        assert!(token.starts_with("VP2.") && token.len() < MAX_TOKEN_LEN, "{token}");
        let got = envelope_keys(&[2, 1]).verify(&token, "heshan-c03").expect("valid");
        assert_eq!((got.pass_id.as_str(), got.max_uses, got.kid.as_str()), ("vp-1", 2, signer(1).key_id()));
        // A gate that lists the key the old way ([passes] platform_keys)
        // knows it under its generated key id, which the signer uses too.
        assert!(keys(&[1]).verify(&token, "heshan-c03").is_ok());
        // The same keys verify old passes too.
        assert!(envelope_keys(&[1]).verify(&sign(&pass(), &key(1)), "heshan-c03").is_ok());
    }

    #[test]
    fn a_forged_pass_or_one_for_another_site_is_refused() {
        let k = envelope_keys(&[1]);
        // An unknown signer.
        let stranger = seal(&pass(), &signer(9), 5);
        assert_eq!(k.verify(&stranger, "heshan-c03"), Err(PassError::Envelope(gate_envelope::Refusal::UnknownKey)));
        // An attacker claiming the platform's key id.
        let claimed = signer(9).with_key_id(signer(1).key_id()).expect("id");
        let forged = seal(&pass(), &claimed, 5);
        assert_eq!(k.verify(&forged, "heshan-c03"), Err(PassError::Envelope(gate_envelope::Refusal::BadSignature)));
        // One bit of a genuine pass flipped, anywhere in the envelope.
        let genuine = seal(&pass(), &signer(1), 5);
        let bytes = B64.decode(genuine.strip_prefix(PREFIX).expect("VP2")).expect("b64");
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            let token = format!("{PREFIX}{}", B64.encode(&flipped));
            assert!(k.verify(&token, "heshan-c03").is_err(), "byte {i} flipped still verifies");
        }
        // Genuine, for another site.
        let mut elsewhere = pass();
        elsewhere.site = "liwan-a01".into();
        let token = seal(&elsewhere, &signer(1), 5);
        assert_eq!(k.verify(&token, "heshan-c03"), Err(PassError::Envelope(gate_envelope::Refusal::WrongSite)));
        assert!(k.verify(&token, "liwan-a01").is_ok());
        // An envelope for this site around a pass naming another one.
        let payload = serde_json::to_vec(&elsewhere).expect("json");
        let mixed = signer(1).seal("heshan-c03", "", STREAM, 5, 5, &payload);
        let token = format!("{PREFIX}{}", B64.encode(mixed));
        assert!(matches!(k.verify(&token, "heshan-c03"), Err(PassError::WrongSite { .. })));
        // Another stream's envelope (a mode change) is not a pass.
        let mode = signer(1).seal("heshan-c03", "", "mode", 5, 5, &serde_json::to_vec(&pass()).expect("json"));
        let token = format!("{PREFIX}{}", B64.encode(mode));
        assert_eq!(k.verify(&token, "heshan-c03"), Err(PassError::Envelope(gate_envelope::Refusal::WrongStream)));
        assert_eq!(k.verify("VP2.!!", "heshan-c03"), Err(PassError::Encoding));
        assert!(matches!(k.verify("VP2.", "heshan-c03"), Err(PassError::Envelope(_))));
    }

    #[test]
    fn debug_does_not_show_the_visitor_hash() {
        let shown = format!("{:?}", pass());
        assert!(!shown.contains(&"00".repeat(32)), "{shown}");
    }
}
