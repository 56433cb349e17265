//! The one verification path of every downlink message.
//!
//! Whatever arrives on a subscribed topic is a `gate.v1.SignedEnvelope`
//! (crate `gate-envelope` holds the format and the rules). [`check`] opens
//! it for the stream the topic carries, for this site and gate, under the
//! keys the gate trusts now, and applies the replay rule against the last
//! envelope accepted on that stream. Only an [`Checked::Accepted`] payload
//! ever reaches a handler. [`check`] is pure (no store, no clock): the
//! session loads the replay state and persists the new one
//! ([`load_last`], [`save_last`]), fuzz targets call it directly.

use crate::Topics;
use gate_envelope::{KeySpec, Opened, Refusal, Verifier, check_counter, parse_key_spec};
use gate_store::Store;
use sha2::{Digest, Sha256};

/// The stream a downlink topic carries, `None` for a topic the gate does
/// not handle.
pub fn stream_of(topics: &Topics, topic: &str) -> Option<&'static str> {
    [
        (&topics.mode, "mode"),
        (&topics.identity, "identity"),
        (&topics.health, "health"),
        (&topics.health_resp, "health_resp"),
        (&topics.trust, "trust"),
        (&topics.heartbeat, "heartbeat"),
        (&topics.keys, "keys"),
        (&topics.reset, "reset"),
    ]
    .into_iter()
    .find_map(|(t, stream)| (t == topic).then_some(stream))
}

/// What the gate checks an envelope against: the platform keys it trusts
/// now, its site and its gate.
#[derive(Debug, Clone)]
pub struct DownlinkTrust {
    pub verifier: Verifier,
    pub site: String,
    pub gate: String,
    /// The configured keys (`[platform] signing_keys` and the deprecated
    /// `[passes] platform_keys`), which a later configuration change lets
    /// override a rotation.
    pub configured: Vec<KeySpec>,
}

/// The last envelope accepted on one stream: its counter, and a digest of
/// its bytes so the same message delivered again (a retained message on
/// every connection, a QoS 1 redelivery) is told from a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastAccepted {
    pub counter: u64,
    pub digest: [u8; 32],
}

/// What [`check`] made of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Signed for this gate on this stream, newer than anything accepted:
    /// the handler may see `opened.payload`; `last` is the replay state to
    /// persist.
    Accepted { stream: &'static str, opened: Opened, last: LastAccepted },
    /// Exactly the last message accepted on its stream, again: nothing to do.
    Again { stream: &'static str },
    /// Not applied, counted by reason, logged with the topic.
    Refused { stream: Option<&'static str>, refusal: Refusal },
}

/// Checks one downlink message: `topic` and its `bytes` as received,
/// `last_accepted` giving the replay state of a stream's replay key (see
/// [`Opened::replay_key`]). Pure.
pub fn check(
    topics: &Topics,
    trust: &DownlinkTrust,
    topic: &str,
    bytes: &[u8],
    last_accepted: impl FnOnce(&str) -> Option<LastAccepted>,
) -> Checked {
    let Some(stream) = stream_of(topics, topic) else {
        return Checked::Refused { stream: None, refusal: Refusal::WrongStream };
    };
    let opened = match trust.verifier.open(bytes, &trust.site, &trust.gate, stream) {
        Ok(opened) => opened,
        Err(refusal) => return Checked::Refused { stream: Some(stream), refusal },
    };
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let last = last_accepted(&opened.replay_key());
    if last.is_some_and(|l| l.counter == opened.counter && l.digest == digest) {
        return Checked::Again { stream };
    }
    if let Err(refusal) = check_counter(last.map(|l| l.counter), opened.counter) {
        return Checked::Refused { stream: Some(stream), refusal };
    }
    let last = LastAccepted { counter: opened.counter, digest };
    Checked::Accepted { stream, opened, last }
}

const LAST_PREFIX: &str = "envelope.last.";
/// The key set a `KeyRotation` installed, one "KEYID:HEX" a line.
const ROTATED_KEYS: &str = "envelope.keys";
/// The configured key set when that rotation was accepted: a technician
/// who changes `[platform] signing_keys` later overrides the rotation.
const ROTATED_OVER: &str = "envelope.keys.config";

/// The persisted replay state of one replay key.
pub fn load_last(store: &Store, replay_key: &str) -> gate_store::Result<Option<LastAccepted>> {
    let Some(raw) = store.meta_get(&format!("{LAST_PREFIX}{replay_key}"))? else { return Ok(None) };
    let parsed = (|| {
        let (counter, digest) = raw.split_once(' ')?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digest, &mut bytes).ok()?;
        Some(LastAccepted { counter: counter.parse().ok()?, digest: bytes })
    })();
    // An unreadable entry must not reopen the window: refuse everything on
    // the stream until the platform resets it.
    Ok(Some(parsed.unwrap_or(LastAccepted { counter: u64::MAX, digest: [0; 32] })))
}

pub fn save_last(store: &Store, replay_key: &str, last: LastAccepted) -> gate_store::Result<()> {
    store.meta_set(&format!("{LAST_PREFIX}{replay_key}"), &format!("{} {}", last.counter, hex::encode(last.digest)))
}

/// Forgets the replay state of every stream but "keys" and "reset" (a
/// signed `SiteReset` with `counters`). Returns how many were forgotten.
pub fn forget_counters(store: &Store, streams: &[&str], gate: &str) -> gate_store::Result<usize> {
    let mut forgotten = 0;
    for stream in streams {
        for key in [gate_envelope::replay_key(stream, ""), gate_envelope::replay_key(stream, gate)] {
            let name = format!("{LAST_PREFIX}{key}");
            if store.meta_get(&name)?.is_some() {
                // meta has no delete; "0" under check_counter's rule accepts
                // any counter from 1 up, like a stream never seen.
                store.meta_set(&name, &format!("0 {}", hex::encode([0u8; 32])))?;
                forgotten += 1;
            }
        }
    }
    Ok(forgotten)
}

/// Where the trusted key set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Config,
    Rotation,
}

fn joined(keys: &[KeySpec]) -> String {
    let mut specs: Vec<String> = keys.iter().map(KeySpec::to_spec_string).collect();
    specs.sort();
    specs.join("\n")
}

/// The keys the gate trusts now: those of the last accepted `KeyRotation`,
/// unless the configured set changed since it was accepted (then the
/// technician's newer configuration wins).
pub fn effective_keys(store: &Store, configured: &[KeySpec]) -> gate_store::Result<(Vec<KeySpec>, KeySource)> {
    let (Some(rotated), Some(over)) = (store.meta_get(ROTATED_KEYS)?, store.meta_get(ROTATED_OVER)?) else {
        return Ok((configured.to_vec(), KeySource::Config));
    };
    if over != joined(configured) {
        return Ok((configured.to_vec(), KeySource::Config));
    }
    let keys: Vec<KeySpec> = rotated.lines().filter_map(|l| parse_key_spec(l).ok()).collect();
    if keys.is_empty() {
        return Ok((configured.to_vec(), KeySource::Config));
    }
    Ok((keys, KeySource::Rotation))
}

/// Persists a rotated key set.
pub fn save_rotation(store: &Store, keys: &[KeySpec], configured: &[KeySpec]) -> gate_store::Result<()> {
    store.meta_set(ROTATED_KEYS, &joined(keys))?;
    store.meta_set(ROTATED_OVER, &joined(configured))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_core::{GateId, SiteId};
    use gate_envelope::Signer;
    use prost::Message;

    fn setup() -> (Topics, DownlinkTrust, Signer) {
        let signer = Signer::from_seed([7; 32]);
        let topics = Topics::new(
            "village",
            &SiteId::try_new("heshan-c03").expect("site"),
            &GateId::try_new("east-1").expect("gate"),
        );
        let trust = DownlinkTrust {
            verifier: Verifier::new([signer.key_spec()]),
            site: "heshan-c03".into(),
            gate: "east-1".into(),
            configured: vec![signer.key_spec()],
        };
        (topics, trust, signer)
    }

    #[test]
    fn each_refusal_and_the_replay_window() {
        let (topics, trust, signer) = setup();
        let mode = "village/heshan-c03/mode";
        let good = signer.seal("heshan-c03", "", "mode", 5, 1, b"x");
        let Checked::Accepted { last, .. } = check(&topics, &trust, mode, &good, |_| None) else { panic!("accepted") };
        assert_eq!(last.counter, 5);
        assert_eq!(check(&topics, &trust, mode, &good, |_| Some(last)), Checked::Again { stream: "mode" });
        let older = signer.seal("heshan-c03", "", "mode", 4, 1, b"y");
        let refused = |r| Checked::Refused { stream: Some("mode"), refusal: r };
        assert_eq!(check(&topics, &trust, mode, &older, |_| Some(last)), refused(Refusal::Replay));
        let same_counter = signer.seal("heshan-c03", "", "mode", 5, 1, b"z");
        assert_eq!(check(&topics, &trust, mode, &same_counter, |_| Some(last)), refused(Refusal::Replay));
        // A bare inner message (the old unsigned form) is not an envelope.
        assert_eq!(check(&topics, &trust, mode, b"\x08\x03", |_| None), refused(Refusal::Malformed));
        let unsigned = gate_proto::v1::SignedEnvelope {
            body: gate_proto::v1::EnvelopeBody {
                site_id: "heshan-c03".into(),
                stream: "mode".into(),
                counter: 9,
                ..Default::default()
            }
            .encode_to_vec(),
            key_id: signer.key_id().into(),
            signature: vec![],
        };
        assert_eq!(check(&topics, &trust, mode, &unsigned.encode_to_vec(), |_| None), refused(Refusal::NoSignature));
        let other = Signer::from_seed([8; 32]);
        assert_eq!(
            check(&topics, &trust, mode, &other.seal("heshan-c03", "", "mode", 6, 1, b"x"), |_| None),
            refused(Refusal::UnknownKey)
        );
        let forged = other.with_key_id(signer.key_id()).expect("id").seal("heshan-c03", "", "mode", 6, 1, b"x");
        assert_eq!(check(&topics, &trust, mode, &forged, |_| None), refused(Refusal::BadSignature));
        let mut flipped = good.clone();
        let at = flipped.len() - 70;
        flipped[at] ^= 1;
        assert!(matches!(check(&topics, &trust, mode, &flipped, |_| None), Checked::Refused { .. }));
        assert_eq!(
            check(&topics, &trust, mode, &signer.seal("other-site", "", "mode", 6, 1, b"x"), |_| None),
            refused(Refusal::WrongSite)
        );
        let resp = "village/heshan-c03/east-1/health/resp";
        assert_eq!(
            check(&topics, &trust, resp, &signer.seal("heshan-c03", "west-2", "health_resp", 6, 1, b"x"), |_| None),
            Checked::Refused { stream: Some("health_resp"), refusal: Refusal::WrongGate }
        );
        // Signed for the identity stream, published on the mode topic.
        assert_eq!(
            check(&topics, &trust, mode, &signer.seal("heshan-c03", "", "identity", 6, 1, b"x"), |_| None),
            refused(Refusal::WrongStream)
        );
    }

    #[test]
    fn replay_state_survives_a_reopen_and_a_corrupt_entry_closes_the_stream() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("g.db");
        let last = LastAccepted { counter: 42, digest: [9; 32] };
        save_last(&Store::open(&path).expect("store"), "mode", last).expect("save");
        let store = Store::open(&path).expect("reopen");
        assert_eq!(load_last(&store, "mode").expect("load"), Some(last));
        assert_eq!(load_last(&store, "identity").expect("load"), None);
        store.meta_set("envelope.last.trust", "garbage").expect("set");
        assert_eq!(load_last(&store, "trust").expect("load").map(|l| l.counter), Some(u64::MAX));
        assert_eq!(forget_counters(&store, &["mode", "identity"], "east-1").expect("forget"), 1);
        assert_eq!(load_last(&store, "mode").expect("load").map(|l| l.counter), Some(0));
    }
}
