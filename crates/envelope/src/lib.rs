//! The one place that signs and verifies platform-to-gate messages.
//!
//! Every downlink message travels as a `gate.v1.SignedEnvelope`: an encoded
//! `EnvelopeBody` (site, gate, stream, counter, issued_at, inner payload),
//! the id of the platform key that signed it, and an Ed25519 signature over
//! [`DOMAIN`] followed by the exact body bytes. The domain prefix keeps an
//! envelope signature from ever being valid as a visitor pass or any other
//! message the same key may sign; verifying the received bytes (never a
//! re-encoding) means two encoders can never disagree about what was signed.
//!
//! This crate does no I/O beyond reading a signing key file, reads no clock
//! (`issued_at_ms` is an argument) and knows nothing of MQTT. What it does
//! not decide: freshness (the caller compares `issued_at_ms` with its own
//! floor) and the replay window, whose *state* lives in the gate's store but
//! whose *rule* is [`check_counter`], here, so it exists once.

mod keys;

pub use keys::{KeyError, KeySpec, Signer, SignerError, key_id_for, parse_key_spec, valid_key_id};

use ed25519_dalek::{Signature, VerifyingKey};
use gate_proto::v1 as pb;
use prost::Message;
use std::collections::BTreeMap;
use std::fmt;

/// What the signature covers before the body bytes.
pub const DOMAIN: &[u8] = b"gate.v1.envelope\0";

/// The largest encoded envelope accepted (an identity snapshot chunk is the
/// biggest legitimate message); anything larger is refused before decoding.
pub const MAX_ENVELOPE_BYTES: usize = 8 << 20;

/// Longest site id, gate id or stream name inside a body.
pub const MAX_NAME_LEN: usize = 64;

/// The streams a platform may sign for. A body naming any other stream is
/// refused as malformed, so a new kind of message must be added here first.
/// (`pass` is a visitor pass, which travels in a QR code, not on a topic.)
pub const STREAMS: &[&str] =
    &["mode", "identity", "health", "health_resp", "trust", "heartbeat", "revocation", "keys", "reset", "pass"];

/// Why an envelope was refused. A closed set: each has a stable name for
/// metrics and logs ([`Refusal::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// Not an envelope at all (a bare inner message, garbage, truncated), or
    /// a body that does not decode or names an unknown stream.
    Malformed,
    /// An envelope with no signature.
    NoSignature,
    /// Larger than [`MAX_ENVELOPE_BYTES`].
    Oversize,
    /// A key id this gate does not trust.
    UnknownKey,
    /// The signature does not verify under the named key.
    BadSignature,
    /// Signed for another site.
    WrongSite,
    /// Signed for another gate of this site.
    WrongGate,
    /// Signed for another stream than the topic it arrived on carries.
    WrongStream,
    /// The counter is not above the last one accepted on its stream.
    Replay,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Malformed,
        Refusal::NoSignature,
        Refusal::Oversize,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::WrongSite,
        Refusal::WrongGate,
        Refusal::WrongStream,
        Refusal::Replay,
    ];

    /// The stable name (metrics label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::NoSignature => "no_signature",
            Refusal::Oversize => "oversize",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongSite => "wrong_site",
            Refusal::WrongGate => "wrong_gate",
            Refusal::WrongStream => "wrong_stream",
            Refusal::Replay => "replay",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Refusal {}

/// A verified envelope: everything in it was signed by `key_id`.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    pub stream: String,
    /// Empty when the message is for the whole site.
    pub gate_id: String,
    pub counter: u64,
    pub issued_at_ms: i64,
    pub payload: Vec<u8>,
    pub key_id: String,
}

impl Opened {
    /// The name under which the last accepted counter of this message's
    /// stream is kept: the stream for a site-wide message, `stream/gate`
    /// for a message to one gate (the platform counts those separately).
    pub fn replay_key(&self) -> String {
        replay_key(&self.stream, &self.gate_id)
    }
}

impl fmt::Debug for Opened {
    // The payload may carry personal data (health records): show its size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("stream", &self.stream)
            .field("gate_id", &self.gate_id)
            .field("counter", &self.counter)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("payload_len", &self.payload.len())
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// See [`Opened::replay_key`].
pub fn replay_key(stream: &str, gate_id: &str) -> String {
    if gate_id.is_empty() { stream.to_owned() } else { format!("{stream}/{gate_id}") }
}

/// The replay rule, in one place: a counter is accepted only above the last
/// one accepted on its stream (`None`: nothing accepted yet, so any counter
/// from 1 up). Counter 0 is never valid, so a default-valued field cannot
/// pass for a fresh message.
pub fn check_counter(last_accepted: Option<u64>, counter: u64) -> Result<(), Refusal> {
    match last_accepted {
        _ if counter == 0 => Err(Refusal::Replay),
        Some(last) if counter <= last => Err(Refusal::Replay),
        _ => Ok(()),
    }
}

/// The platform keys a gate trusts, by key id.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: BTreeMap<String, VerifyingKey>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("key_ids", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl Verifier {
    /// A verifier trusting these keys. A later key with the same id replaces
    /// an earlier one.
    pub fn new(keys: impl IntoIterator<Item = KeySpec>) -> Self {
        Verifier { keys: keys.into_iter().map(|k| (k.key_id, k.key)).collect() }
    }

    /// From "KEYID:HEX" strings; the first bad one is refused with its index.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Self, (usize, KeyError)> {
        let mut keys = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            keys.push(parse_key_spec(spec.as_ref()).map_err(|e| (i, e))?);
        }
        Ok(Verifier::new(keys))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The trusted keys as "KEYID:HEX" strings, sorted by key id.
    pub fn specs(&self) -> Vec<String> {
        self.keys.iter().map(|(id, key)| format!("{id}:{}", hex::encode(key.as_bytes()))).collect()
    }

    /// Checks an envelope as received on a topic of `expected_stream` for
    /// site `expected_site`, at the gate `own_gate`. On success everything
    /// returned was signed by a trusted key for exactly this site, this gate
    /// (or the whole site) and this stream. The replay counter is the
    /// caller's to check, with [`check_counter`], against its stored state.
    pub fn open(
        &self,
        bytes: &[u8],
        expected_site: &str,
        own_gate: &str,
        expected_stream: &str,
    ) -> Result<Opened, Refusal> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Refusal::Oversize);
        }
        let envelope = pb::SignedEnvelope::decode(bytes).map_err(|_| Refusal::Malformed)?;
        if envelope.signature.is_empty() {
            return Err(Refusal::NoSignature);
        }
        if envelope.body.is_empty() {
            return Err(Refusal::Malformed);
        }
        // The key id is looked up as-is; one that is not a valid id cannot be
        // in the map, so it is simply unknown.
        let key = self.keys.get(&envelope.key_id).ok_or(Refusal::UnknownKey)?;
        let signature: [u8; 64] = envelope.signature.as_slice().try_into().map_err(|_| Refusal::BadSignature)?;
        let mut signed = Vec::with_capacity(DOMAIN.len() + envelope.body.len());
        signed.extend_from_slice(DOMAIN);
        signed.extend_from_slice(&envelope.body);
        // verify_strict: refuses small-order keys and non-canonical
        // signatures, so one message has exactly one valid signature.
        key.verify_strict(&signed, &Signature::from_bytes(&signature)).map_err(|_| Refusal::BadSignature)?;
        // Only now is anything in the body trusted.
        let body = pb::EnvelopeBody::decode(envelope.body.as_slice()).map_err(|_| Refusal::Malformed)?;
        for name in [&body.site_id, &body.gate_id, &body.stream] {
            if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(Refusal::Malformed);
            }
        }
        if !STREAMS.contains(&body.stream.as_str()) {
            return Err(Refusal::Malformed);
        }
        if body.site_id != expected_site {
            return Err(Refusal::WrongSite);
        }
        if !body.gate_id.is_empty() && body.gate_id != own_gate {
            return Err(Refusal::WrongGate);
        }
        if body.stream != expected_stream {
            return Err(Refusal::WrongStream);
        }
        Ok(Opened {
            stream: body.stream,
            gate_id: body.gate_id,
            counter: body.counter,
            issued_at_ms: body.issued_at_ms,
            payload: body.payload,
            key_id: envelope.key_id,
        })
    }
}

#[cfg(test)]
mod tests;
