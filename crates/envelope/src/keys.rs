//! Platform keys: the "KEYID:HEX" form a gate's config lists them in, key
//! ids for generated keys, and the signer (a private key read from a file
//! only its owner may read).

use crate::DOMAIN;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use gate_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 32;

/// One trusted platform key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub key_id: String,
    pub key: VerifyingKey,
}

impl KeySpec {
    /// The "KEYID:HEX" form.
    pub fn to_spec_string(&self) -> String {
        format!("{}:{}", self.key_id, hex::encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_spec_string())
    }
}

/// Why a "KEYID:HEX" string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected \"KEYID:HEX\" (a key id, a colon, 64 hex digits)")]
    Shape,
    #[error("key id must be 1-32 characters of A-Z a-z 0-9 . _ -")]
    KeyId,
    #[error("expected an Ed25519 public key as 64 hex digits")]
    Hex,
    #[error("not a valid Ed25519 public key")]
    Point,
}

/// Whether `id` is a valid key id: 1-32 characters of `[A-Za-z0-9._-]`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The key id tools give a key they generate: the first 16 hex digits of
/// SHA-256 of the public key.
pub fn key_id_for(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Parses "KEYID:HEX".
pub fn parse_key_spec(spec: &str) -> Result<KeySpec, KeyError> {
    let (id, hex_part) = spec.trim().split_once(':').ok_or(KeyError::Shape)?;
    if !valid_key_id(id) {
        return Err(KeyError::KeyId);
    }
    let mut bytes = [0u8; 32];
    if hex_part.len() != 64 {
        return Err(KeyError::Hex);
    }
    hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| KeyError::Hex)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Point)?;
    if key.is_weak() {
        // A small-order point: signatures under it prove nothing.
        return Err(KeyError::Point);
    }
    Ok(KeySpec { key_id: id.to_owned(), key })
}

/// Why a signing key file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error(
        "signing key file {} has mode {mode:04o}, which lets group or others read it; \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("signing key file {}: expected 64 hex digits (an Ed25519 private key seed)", path.display())]
    Format { path: PathBuf },
    #[error("signing key file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The platform side: seals messages into envelopes.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl fmt::Debug for Signer {
    // Never the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a 32-byte seed, with the generated key id.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id_for(&key.verifying_key());
        Signer { key, key_id }
    }

    /// A signer from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut seed = [0u8; 32];
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        hex::decode_to_slice(text, &mut seed).ok()?;
        Some(Signer::from_seed(seed))
    }

    /// Reads a private key file (64 hex digits), refusing one whose mode
    /// grants any permission to group or others, as the gate does for its
    /// site key.
    pub fn from_file(path: &Path) -> Result<Self, SignerError> {
        let io_err = |source| SignerError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        // The mode of the file actually opened, not of whatever the path
        // names a moment later.
        let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SignerError::Permissions { path: path.to_path_buf(), mode });
        }
        let mut text = String::new();
        // A key file is 65 bytes; reading at most 4 KiB keeps a wrong path
        // (a device, a huge file) from being slurped.
        file.take(4096).read_to_string(&mut text).map_err(|_| SignerError::Format { path: path.to_path_buf() })?;
        Signer::from_hex(&text).ok_or_else(|| SignerError::Format { path: path.to_path_buf() })
    }

    /// The same key under another key id (one a platform already uses).
    pub fn with_key_id(mut self, key_id: &str) -> Result<Self, KeyError> {
        if !valid_key_id(key_id) {
            return Err(KeyError::KeyId);
        }
        key_id.clone_into(&mut self.key_id);
        Ok(self)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// What a gate lists in `[platform] signing_keys` to trust this signer.
    pub fn key_spec(&self) -> KeySpec {
        KeySpec { key_id: self.key_id.clone(), key: self.key.verifying_key() }
    }

    /// The private key as 64 hex digits (the key file's content).
    pub fn seed_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The underlying key, for the other formats the same platform key signs
    /// (visitor passes).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Seals `payload` (an encoded inner gate.v1 message) for `site`, for one
    /// gate (`gate` non-empty) or the whole site, on `stream`, with the
    /// stream's next `counter`. Returns the encoded `SignedEnvelope`.
    pub fn seal(
        &self,
        site: &str,
        gate: &str,
        stream: &str,
        counter: u64,
        issued_at_ms: i64,
        payload: &[u8],
    ) -> Vec<u8> {
        let body = pb::EnvelopeBody {
            site_id: site.to_owned(),
            gate_id: gate.to_owned(),
            stream: stream.to_owned(),
            counter,
            issued_at_ms,
            payload: payload.to_vec(),
        }
        .encode_to_vec();
        self.seal_body(body)
    }

    /// Seals an already encoded body as it is (tests and tools that must
    /// produce unusual bodies; the signature covers exactly these bytes).
    pub fn seal_body(&self, body: Vec<u8>) -> Vec<u8> {
        let mut signed = Vec::with_capacity(DOMAIN.len() + body.len());
        signed.extend_from_slice(DOMAIN);
        signed.extend_from_slice(&body);
        let signature = self.key.sign(&signed).to_bytes().to_vec();
        pb::SignedEnvelope { body, key_id: self.key_id.clone(), signature }.encode_to_vec()
    }
}
