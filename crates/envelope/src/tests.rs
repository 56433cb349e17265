//! Each refusal of the envelope, from the bytes an attacker could send.

use super::*;
use ed25519_dalek::SigningKey;

const SITE: &str = "heshan-c03";
const GATE: &str = "east-1";

fn signer(seed: u8) -> Signer {
    Signer::from_seed([seed; 32])
}

fn verifier(seeds: &[u8]) -> Verifier {
    Verifier::new(seeds.iter().map(|s| signer(*s).key_spec()))
}

fn open(bytes: &[u8]) -> Result<Opened, Refusal> {
    verifier(&[1]).open(bytes, SITE, GATE, "mode")
}

#[test]
fn a_sealed_message_opens_with_everything_it_was_sealed_with() {
    let s = signer(1);
    let bytes = s.seal(SITE, "", "mode", 7, 1_700_000_000_000, b"\x08\x03");
    let opened = open(&bytes).expect("valid");
    assert_eq!(opened.stream, "mode");
    assert_eq!(opened.gate_id, "");
    assert_eq!(opened.counter, 7);
    assert_eq!(opened.issued_at_ms, 1_700_000_000_000);
    assert_eq!(opened.payload, b"\x08\x03");
    assert_eq!(opened.key_id, s.key_id());
    assert_eq!(opened.replay_key(), "mode");
    // For this gate only.
    let bytes = s.seal(SITE, GATE, "mode", 8, 1, b"");
    let opened = open(&bytes).expect("valid for this gate");
    assert_eq!(opened.replay_key(), "mode/east-1");
}

#[test]
fn the_attacks_of_issue_10_are_refused() {
    // The anonymous 2-byte ModeChange (mode = wartime): not an envelope.
    assert_eq!(open(b"\x08\x03"), Err(Refusal::Malformed));
    // An empty message, and garbage.
    assert_eq!(open(b""), Err(Refusal::NoSignature));
    assert_eq!(open(&[0xff; 22]), Err(Refusal::Malformed));
    // A 22-byte identity delta, published bare.
    let delta = pb::IdentityBatch {
        body: Some(pb::identity_batch::Body::Delta(pb::IdentityDelta {
            from_version: 3,
            to_version: 4,
            deletes: vec!["R-1".into(), "R-2".into()],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    assert!(verifier(&[1]).open(&delta, SITE, GATE, "identity").is_err());
}

#[test]
fn no_signature_is_refused() {
    let body = pb::EnvelopeBody { site_id: SITE.into(), stream: "mode".into(), counter: 1, ..Default::default() };
    let unsigned =
        pb::SignedEnvelope { body: body.encode_to_vec(), key_id: signer(1).key_id().into(), signature: vec![] }
            .encode_to_vec();
    assert_eq!(open(&unsigned), Err(Refusal::NoSignature));
}

#[test]
fn an_unknown_key_is_refused() {
    let bytes = signer(2).seal(SITE, "", "mode", 1, 1, b"x");
    assert_eq!(open(&bytes), Err(Refusal::UnknownKey));
    // An attacker's key under a trusted key id: the signature fails.
    let forged = signer(2).with_key_id(signer(1).key_id()).expect("id").seal(SITE, "", "mode", 1, 1, b"x");
    assert_eq!(open(&forged), Err(Refusal::BadSignature));
    // A verifier with no keys trusts nothing.
    let bytes = signer(1).seal(SITE, "", "mode", 1, 1, b"x");
    assert_eq!(Verifier::default().open(&bytes, SITE, GATE, "mode"), Err(Refusal::UnknownKey));
}

#[test]
fn every_flipped_bit_and_every_truncation_is_refused() {
    let bytes = signer(1).seal(SITE, "", "mode", 1, 1_700_000_000_000, b"\x08\x03\x1a\x04ops1");
    // One bit of every byte (which bit varies with the position: a debug
    // build verifies slowly, and every bit of every byte adds nothing).
    for i in 0..bytes.len() {
        let bit = (i * 3) % 8;
        let mut flipped = bytes.clone();
        flipped[i] ^= 1 << bit;
        // A flip in the key id may turn it into another (unknown) id;
        // everything else breaks the framing or the signature.
        assert!(open(&flipped).is_err(), "byte {i} bit {bit} accepted");
    }
    for len in 0..bytes.len() {
        assert!(open(&bytes[..len]).is_err(), "truncation to {len} accepted");
    }
    // A byte appended after the envelope is an unfinished field.
    let mut garbage = bytes;
    garbage.push(0xff);
    assert_eq!(open(&garbage), Err(Refusal::Malformed));
}

#[test]
fn the_signature_covers_the_domain() {
    // A plain Ed25519 signature over the body (no domain prefix), as another
    // format signed by the same key would carry, does not verify.
    let key = SigningKey::from_bytes(&[1; 32]);
    let body = pb::EnvelopeBody { site_id: SITE.into(), stream: "mode".into(), counter: 1, ..Default::default() }
        .encode_to_vec();
    let signature = ed25519_dalek::Signer::sign(&key, &body).to_bytes().to_vec();
    let bytes = pb::SignedEnvelope { body, key_id: signer(1).key_id().into(), signature }.encode_to_vec();
    assert_eq!(open(&bytes), Err(Refusal::BadSignature));
}

#[test]
fn a_short_signature_is_a_bad_signature() {
    let good = pb::SignedEnvelope::decode(signer(1).seal(SITE, "", "mode", 1, 1, b"").as_slice()).expect("decodes");
    let short = pb::SignedEnvelope { signature: good.signature[..63].to_vec(), ..good }.encode_to_vec();
    assert_eq!(open(&short), Err(Refusal::BadSignature));
}

#[test]
fn site_gate_and_stream_are_bound() {
    let s = signer(1);
    assert_eq!(open(&s.seal("other-site", "", "mode", 1, 1, b"")), Err(Refusal::WrongSite));
    assert_eq!(open(&s.seal(SITE, "west-2", "mode", 1, 1, b"")), Err(Refusal::WrongGate));
    assert_eq!(open(&s.seal(SITE, "", "identity", 1, 1, b"")), Err(Refusal::WrongStream));
    // A stream the platform may not sign for at all.
    assert_eq!(open(&s.seal(SITE, "", "firmware", 1, 1, b"")), Err(Refusal::Malformed));
}

#[test]
fn names_in_the_body_are_bounded_and_printable() {
    let s = signer(1);
    let long_site = "s".repeat(MAX_NAME_LEN + 1);
    assert_eq!(
        verifier(&[1]).open(&s.seal(&long_site, "", "mode", 1, 1, b""), &long_site, GATE, "mode"),
        Err(Refusal::Malformed)
    );
    let site_with_newline = "heshan\nc03";
    assert_eq!(
        verifier(&[1]).open(&s.seal(site_with_newline, "", "mode", 1, 1, b""), site_with_newline, GATE, "mode"),
        Err(Refusal::Malformed)
    );
    // A body that is not an EnvelopeBody, properly signed.
    assert_eq!(open(&s.seal_body(vec![0xff, 0xff])), Err(Refusal::Malformed));
}

#[test]
fn oversize_is_refused_before_decoding() {
    let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(open(&huge), Err(Refusal::Oversize));
}

#[test]
fn replay_rule() {
    assert_eq!(check_counter(None, 1), Ok(()));
    assert_eq!(check_counter(None, 0), Err(Refusal::Replay));
    assert_eq!(check_counter(Some(5), 6), Ok(()));
    assert_eq!(check_counter(Some(5), 5), Err(Refusal::Replay));
    assert_eq!(check_counter(Some(5), 4), Err(Refusal::Replay));
    assert_eq!(check_counter(Some(u64::MAX), u64::MAX), Err(Refusal::Replay));
}

#[test]
fn key_specs() {
    let s = signer(1);
    let spec = s.key_spec().to_spec_string();
    assert_eq!(parse_key_spec(&spec), Ok(s.key_spec()));
    assert_eq!(s.key_id().len(), 16);
    assert_eq!(s.key_id(), &key_id_for(&s.verifying_key()));
    let hex = hex::encode(s.verifying_key().as_bytes());
    assert_eq!(parse_key_spec(&format!("p-2026.01_a:{hex}")).map(|k| k.key_id), Ok("p-2026.01_a".to_owned()));
    assert_eq!(parse_key_spec(&hex), Err(KeyError::Shape));
    assert_eq!(parse_key_spec(&format!(":{hex}")), Err(KeyError::KeyId));
    assert_eq!(parse_key_spec(&format!("{}:{hex}", "k".repeat(33))), Err(KeyError::KeyId));
    assert_eq!(parse_key_spec(&format!("a b:{hex}")), Err(KeyError::KeyId));
    assert_eq!(parse_key_spec("k:abcd"), Err(KeyError::Hex));
    assert_eq!(parse_key_spec(&format!("k:{}", "zz".repeat(32))), Err(KeyError::Hex));
    // The identity point is of small order: refused.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(parse_key_spec(&format!("k:{}", hex::encode(identity))), Err(KeyError::Point));
    let v = Verifier::from_specs(std::slice::from_ref(&spec)).expect("valid");
    assert_eq!(v.specs(), vec![spec]);
    assert_eq!(Verifier::from_specs(&["nope"]).map(|v| v.len()), Err((0, KeyError::Shape)));
}

#[test]
fn key_files_must_be_private() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("platform.key");
    let mut file = std::fs::File::create(&path).expect("create");
    writeln!(file, "{}", signer(3).seed_hex()).expect("write");
    drop(file);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(Signer::from_file(&path), Err(SignerError::Permissions { mode: 0o644, .. })));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let loaded = Signer::from_file(&path).expect("private file");
    assert_eq!(loaded.key_id(), signer(3).key_id());
    std::fs::write(&path, "not a key\n").expect("write");
    assert!(matches!(Signer::from_file(&path), Err(SignerError::Format { .. })));
    assert!(matches!(Signer::from_file(&dir.path().join("absent")), Err(SignerError::Io { .. })));
    // Debug never shows the private key.
    assert!(!format!("{loaded:?}").contains(&signer(3).seed_hex()));
}
