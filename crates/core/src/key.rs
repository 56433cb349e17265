//! The site key and the keyed hashes that stand in for credentials.
//!
//! ID numbers, card UIDs and plates are never stored in clear: the identity
//! table is keyed by HMAC-SHA256(site key, kind || 0x00 || value). Without the
//! key, a stolen database does not reveal who lives in the village, and a
//! dictionary of all ID numbers cannot be matched against it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Which kind of credential a keyed hash stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    IdNumber,
    IcCard,
    QrPass,
    Plate,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::IdNumber => "id_number",
            CredentialKind::IcCard => "ic_card",
            CredentialKind::QrPass => "qr_pass",
            CredentialKind::Plate => "plate",
        }
    }
}

/// Why a site key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the site key must be 64 hex characters (32 bytes) on one line, found {0} characters")]
    Length(usize),
    #[error("the site key must be hex digits only")]
    NotHex,
}

/// The 32-byte site key. `Debug` never shows it.
#[derive(Clone)]
pub struct SiteKey([u8; 32]);

impl SiteKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key file's content: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::Length(text.chars().count()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| KeyError::NotHex)?;
        Ok(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The keyed hash under which a credential is stored and looked up.
    pub fn credential_key(&self, kind: CredentialKind, value: &str) -> [u8; 32] {
        #[allow(clippy::expect_used)] // HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SiteKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_format() {
        let hex64 = "00".repeat(32);
        assert!(SiteKey::from_hex(&format!("{hex64}\n")).is_ok());
        assert_eq!(SiteKey::from_hex("abcd").map(|_| ()), Err(KeyError::Length(4)));
        assert_eq!(SiteKey::from_hex(&"zz".repeat(32)).map(|_| ()), Err(KeyError::NotHex));
        assert_eq!(format!("{:?}", SiteKey::from_bytes([7; 32])), "SiteKey(<secret>)");
    }

    #[test]
    fn hashes_depend_on_key_and_kind() {
        let a = SiteKey::from_bytes([1; 32]);
        let b = SiteKey::from_bytes([2; 32]);
        let v = "350203199001011237";
        assert_ne!(a.credential_key(CredentialKind::IdNumber, v), b.credential_key(CredentialKind::IdNumber, v));
        assert_ne!(a.credential_key(CredentialKind::IdNumber, v), a.credential_key(CredentialKind::Plate, v));
        assert_eq!(a.credential_key(CredentialKind::IdNumber, v), a.credential_key(CredentialKind::IdNumber, v));
    }
}
