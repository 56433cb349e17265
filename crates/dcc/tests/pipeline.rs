//! End-to-end tests of `verify` on certificates minted here: a self-signed P-256 signer, COSE, CWT, zlib, base45.
//!
//! Each refusal must name the step that refused: the daemon logs and counts
//! by step, and a refusal blamed on the wrong step would send a technician
//! after the wrong fault.

use std::io::Write as _;

use ciborium::value::Value;
use coset::{CborSerializable as _, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana};
use gate_dcc::{
    CertKind, DccError, ExpirationFailure, Kid, MAX_INFLATED_BYTES, Step, TrustList, VerifyFailure, verify,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

/// 2021-06-01T00:00:00Z.
const NOW: i64 = 1_622_505_600_000;
const DAY: i64 = 86_400_000;
const OID_TEST: [u64; 10] = [1, 3, 6, 1, 4, 1, 1847, 2021, 1, 1];
const OID_VACCINATION: [u64; 10] = [1, 3, 6, 1, 4, 1, 1847, 2021, 1, 2];

/// A signer (DSC): its key and its self-signed certificate.
struct Issuer {
    key: EcdsaKeyPair,
    der: Vec<u8>,
}

impl Issuer {
    fn new(ekus: &[&[u64]], valid_from_year: i32, valid_until_year: i32) -> Issuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "Test DSC");
        params.distinguished_name.push(rcgen::DnType::CountryName, "CN");
        params.not_before = rcgen::date_time_ymd(valid_from_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid_until_year, 1, 1);
        params.extended_key_usages =
            ekus.iter().map(|oid| rcgen::ExtendedKeyUsagePurpose::Other(oid.to_vec())).collect();
        let cert = params.self_signed(&key).expect("self-signed certificate");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &SystemRandom::new())
                .expect("ring reads rcgen's PKCS#8");
        Issuer { key, der: cert.der().to_vec() }
    }

    fn default() -> Issuer {
        Issuer::new(&[], 2021, 2030)
    }

    fn kid(&self) -> Kid {
        Kid::of_certificate(&self.der)
    }

    fn trust(&self) -> TrustList {
        let mut trust = TrustList::new();
        trust.add_certificate_der(&self.der).expect("our certificate parses");
        trust
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.key.sign(&SystemRandom::new(), data).expect("sign").as_ref().to_vec()
    }
}

fn vaccination() -> Value {
    let text = |s: &str| Value::Text(s.to_string());
    Value::Map(vec![
        (text("ver"), text("1.3.0")),
        (
            text("nam"),
            Value::Map(vec![
                (text("fn"), text("张")),
                (text("fnt"), text("ZHANG")),
                (text("gn"), text("三")),
                (text("gnt"), text("SAN")),
            ]),
        ),
        (text("dob"), text("1990-05-17")),
        (
            text("v"),
            Value::Array(vec![Value::Map(vec![
                (text("tg"), text("840539006")),
                (text("vp"), text("J07BX03")),
                (text("mp"), text("EU/1/20/1528")),
                (text("ma"), text("ORG-100030215")),
                (text("dn"), Value::from(2)),
                (text("sd"), Value::from(2)),
                (text("dt"), text("2021-05-10")),
                (text("co"), text("CN")),
                (text("is"), text("Test issuer")),
                (text("ci"), text("URN:UVCI:01:CN:TEST#1")),
            ])]),
        ),
    ])
}

fn cwt(iat_ms: i64, exp_ms: i64, hcert: Value) -> Vec<u8> {
    let claims = Value::Map(vec![
        (Value::from(1), Value::Text("CN".into())),
        (Value::from(6), Value::from(iat_ms / 1000)),
        (Value::from(4), Value::from(exp_ms / 1000)),
        (Value::from(-260), Value::Map(vec![(Value::from(1), hcert)])),
    ]);
    let mut out = Vec::new();
    ciborium::ser::into_writer(&claims, &mut out).expect("CBOR to a Vec");
    out
}

/// Where the key id goes.
enum KidAt {
    Protected(Vec<u8>),
    Unprotected(Vec<u8>),
    Both { protected: Vec<u8>, unprotected: Vec<u8> },
}

fn cose(issuer: &Issuer, kid: KidAt, payload: Vec<u8>) -> coset::CoseSign1 {
    let mut protected = HeaderBuilder::new().algorithm(iana::Algorithm::ES256);
    let mut unprotected = HeaderBuilder::new();
    match kid {
        KidAt::Protected(k) => protected = protected.key_id(k),
        KidAt::Unprotected(k) => unprotected = unprotected.key_id(k),
        KidAt::Both { protected: p, unprotected: u } => {
            protected = protected.key_id(p);
            unprotected = unprotected.key_id(u);
        }
    }
    CoseSign1Builder::new()
        .protected(protected.build())
        .unprotected(unprotected.build())
        .payload(payload)
        .create_signature(b"", |data| issuer.sign(data))
        .build()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("write to a Vec");
    enc.finish().expect("finish into a Vec")
}

fn qr_of_cose_bytes(cose: &[u8]) -> String {
    format!("HC1:{}", base45::encode(zlib(cose)))
}

fn qr(sign1: coset::CoseSign1) -> String {
    qr_of_cose_bytes(&sign1.to_tagged_vec().expect("COSE encodes"))
}

/// A valid vaccination certificate from `issuer`, issued a day ago,
/// expiring in a year.
fn valid_qr(issuer: &Issuer) -> String {
    let payload = cwt(NOW - DAY, NOW + 365 * DAY, vaccination());
    qr(cose(issuer, KidAt::Protected(issuer.kid().0.to_vec()), payload))
}

fn refused_at(result: Result<gate_dcc::VerifiedCertificate, DccError>) -> (Step, DccError) {
    match result {
        Ok(cert) => panic!("accepted: {cert:?}"),
        Err(e) => (e.step(), e),
    }
}

#[test]
fn a_self_made_es256_certificate_verifies() {
    let issuer = Issuer::default();
    let cert = verify(&valid_qr(&issuer), &issuer.trust(), NOW).expect("verifies");
    assert_eq!(
        cert.kind,
        CertKind::Vaccination {
            dose_number: 2,
            total_doses: 2,
            date: gate_dcc::CalendarDate::new(2021, 5, 10).expect("a date"),
        }
    );
    assert_eq!(cert.family_name_std, "ZHANG");
    assert_eq!(cert.given_name_std, "SAN");
    assert_eq!(cert.birth_date, "1990-05-17");
    assert_eq!(cert.issued_at_ms, NOW - DAY);
    assert_eq!(cert.expires_at_ms, NOW + 365 * DAY);
    assert_eq!(cert.issuer_country, "CN");
    assert_eq!(cert.kid, issuer.kid());
    assert!(gate_dcc::std_name_matches(&cert.family_name_std, "Zhang"));
    assert!(gate_dcc::birth_date_matches(&cert.birth_date, 1990, 5, 17));
    let shown = format!("{cert:?}");
    for secret in ["ZHANG", "SAN", "1990"] {
        assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
    }
}

#[test]
fn every_cose_shape_verifies() {
    let issuer = Issuer::default();
    let trust = issuer.trust();
    let kid = issuer.kid().0.to_vec();
    let payload = || cwt(NOW - DAY, NOW + DAY, vaccination());

    let untagged = cose(&issuer, KidAt::Protected(kid.clone()), payload()).to_vec().expect("COSE");
    assert!(verify(&qr_of_cose_bytes(&untagged), &trust, NOW).is_ok(), "untagged");

    let tagged = cose(&issuer, KidAt::Protected(kid.clone()), payload()).to_tagged_vec().expect("COSE");
    let mut cwt_tagged = vec![0xd8, 61];
    cwt_tagged.extend_from_slice(&tagged);
    assert!(verify(&qr_of_cose_bytes(&cwt_tagged), &trust, NOW).is_ok(), "tag 61 around 18");

    let unprotected_kid = qr(cose(&issuer, KidAt::Unprotected(kid.clone()), payload()));
    assert!(verify(&unprotected_kid, &trust, NOW).is_ok(), "kid in the unprotected header");

    // A correct protected kid wins over a wrong unprotected one.
    let both = KidAt::Both { protected: kid.clone(), unprotected: vec![0; 8] };
    assert!(verify(&qr(cose(&issuer, both, payload())), &trust, NOW).is_ok());
}

#[test]
fn a_tampered_signature_is_refused_at_verify() {
    let issuer = Issuer::default();
    let payload = cwt(NOW - DAY, NOW + DAY, vaccination());
    let mut sign1 = cose(&issuer, KidAt::Protected(issuer.kid().0.to_vec()), payload);
    sign1.signature[10] ^= 0x01;
    let (step, err) = refused_at(verify(&qr(sign1), &issuer.trust(), NOW));
    assert_eq!(step, Step::Verify);
    assert!(matches!(err, DccError::Verify(VerifyFailure::BadSignature)), "{err}");
}

#[test]
fn a_tampered_payload_is_refused_at_verify() {
    let issuer = Issuer::default();
    let payload = cwt(NOW - DAY, NOW + DAY, vaccination());
    let mut sign1 = cose(&issuer, KidAt::Protected(issuer.kid().0.to_vec()), payload);
    // A later expiry, as a forger would want it.
    sign1.payload = Some(cwt(NOW - DAY, NOW + 3650 * DAY, vaccination()));
    let (step, _) = refused_at(verify(&qr(sign1), &issuer.trust(), NOW));
    assert_eq!(step, Step::Verify);
}

#[test]
fn a_wrong_kid_is_refused_at_verify() {
    let issuer = Issuer::default();
    let payload = || cwt(NOW - DAY, NOW + DAY, vaccination());

    let unknown = qr(cose(&issuer, KidAt::Protected(vec![1, 2, 3, 4, 5, 6, 7, 8]), payload()));
    let (step, err) = refused_at(verify(&unknown, &issuer.trust(), NOW));
    assert_eq!(step, Step::Verify);
    assert!(matches!(err, DccError::Verify(VerifyFailure::UnknownKeyId(_))), "{err}");

    // A wrong protected kid is not rescued by a right unprotected one:
    // anyone can rewrite the unprotected header.
    let both = KidAt::Both { protected: vec![9; 8], unprotected: issuer.kid().0.to_vec() };
    let (step, _) = refused_at(verify(&qr(cose(&issuer, both, payload())), &issuer.trust(), NOW));
    assert_eq!(step, Step::Verify);

    // Another signer's key under a trusted kid.
    let forger = Issuer::default();
    let forged = qr(cose(&forger, KidAt::Protected(issuer.kid().0.to_vec()), payload()));
    let (step, err) = refused_at(verify(&forged, &issuer.trust(), NOW));
    assert_eq!(step, Step::Verify);
    assert!(matches!(err, DccError::Verify(VerifyFailure::BadSignature)), "{err}");

    let no_kid = qr(cose(&issuer, KidAt::Unprotected(Vec::new()), payload()));
    let (_, err) = refused_at(verify(&no_kid, &issuer.trust(), NOW));
    assert!(matches!(err, DccError::Verify(VerifyFailure::NoKeyId)), "{err}");
}

#[test]
fn expiry_and_issue_time_are_enforced() {
    let issuer = Issuer::default();
    let trust = issuer.trust();
    let kid = || KidAt::Protected(issuer.kid().0.to_vec());

    let expired = qr(cose(&issuer, kid(), cwt(NOW - 10 * DAY, NOW - DAY, vaccination())));
    let (step, err) = refused_at(verify(&expired, &trust, NOW));
    assert_eq!(step, Step::Expiration);
    assert!(matches!(err, DccError::Expiration(ExpirationFailure::Expired { .. })), "{err}");

    let future = qr(cose(&issuer, kid(), cwt(NOW + DAY, NOW + 10 * DAY, vaccination())));
    let (step, _) = refused_at(verify(&future, &trust, NOW));
    assert_eq!(step, Step::Expiration);

    // Valid until 2030-01-01: a certificate may not outlive its signer.
    let outliving = qr(cose(&issuer, kid(), cwt(NOW - DAY, 1_900_000_000_000, vaccination())));
    let (_, err) = refused_at(verify(&outliving, &trust, NOW));
    assert!(matches!(err, DccError::Expiration(ExpirationFailure::OutlivesSigner { .. })), "{err}");

    // The same certificate at a time inside its window passes.
    assert!(verify(&valid_qr(&issuer), &trust, NOW).is_ok());
    assert_eq!(refused_at(verify(&valid_qr(&issuer), &trust, NOW + 400 * DAY)).0, Step::Expiration);
}

#[test]
fn the_signers_key_usage_is_enforced() {
    let test_only = Issuer::new(&[&OID_TEST], 2021, 2030);
    let (step, err) = refused_at(verify(&valid_qr(&test_only), &test_only.trust(), NOW));
    assert_eq!(step, Step::KeyUsage);
    assert!(err.to_string().contains("vaccination"), "{err}");

    let vaccination_signer = Issuer::new(&[&OID_TEST, &OID_VACCINATION], 2021, 2030);
    assert!(verify(&valid_qr(&vaccination_signer), &vaccination_signer.trust(), NOW).is_ok());
}

#[test]
fn an_inflate_bomb_is_refused_at_inflate() {
    let bomb = zlib(&vec![b'A'; 4 * MAX_INFLATED_BYTES]);
    let qr = format!("HC1:{}", base45::encode(&bomb));
    assert!(qr.len() < 4_000, "fits a QR code: {}", qr.len());
    let (step, err) = refused_at(verify(&qr, &Issuer::default().trust(), NOW));
    assert_eq!(step, Step::Inflate);
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn garbage_is_refused_at_the_step_it_breaks() {
    let trust = Issuer::default().trust();
    let step = |qr: &str| refused_at(verify(qr, &trust, NOW)).0;
    assert_eq!(step("HC2:6BFOXN"), Step::Unprefix);
    assert_eq!(step("6BFOXN%TS3DH"), Step::Unprefix);
    assert_eq!(step("HC1:6bfoxn"), Step::Base45);
    assert_eq!(step("HC1:GGW"), Step::Base45);
    assert_eq!(step("HC1:6BFOXN%TS3DH"), Step::Inflate);
    let not_cose = format!("HC1:{}", base45::encode(zlib(b"\x82\x01\x02")));
    assert_eq!(step(&not_cose), Step::CoseDecode);
}

#[test]
fn a_broken_payload_is_refused_after_its_signature() {
    let issuer = Issuer::default();
    let trust = issuer.trust();
    let kid = || KidAt::Protected(issuer.kid().0.to_vec());

    let not_a_cwt = qr(cose(&issuer, kid(), vec![0x83, 1, 2, 3]));
    assert_eq!(refused_at(verify(&not_a_cwt, &trust, NOW)).0, Step::CborDecode);

    let mut no_dob = vaccination();
    if let Value::Map(entries) = &mut no_dob {
        entries.retain(|(k, _)| k.as_text() != Some("dob"));
    }
    let schema = qr(cose(&issuer, kid(), cwt(NOW - DAY, NOW + DAY, no_dob)));
    let (step, err) = refused_at(verify(&schema, &trust, NOW));
    assert_eq!(step, Step::Schema);
    assert_eq!(err.to_string(), "schema: dob is missing");
}

#[test]
fn trust_lists_load_from_pem_and_base64_files() {
    use base64::Engine as _;
    let (a, b) = (Issuer::default(), Issuer::default());
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let dir = tempfile::tempdir().expect("temp dir");

    let pem_path = dir.path().join("dsc.pem");
    let pem = [&a, &b]
        .iter()
        .map(|i| format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", b64(&i.der)))
        .collect::<String>();
    std::fs::write(&pem_path, pem).expect("write PEM");
    let list = TrustList::load_pem_or_base64_file(&pem_path).expect("PEM loads");
    assert_eq!(list.len(), 2);
    assert!(verify(&valid_qr(&b), &list, NOW).is_ok());

    let lines_path = dir.path().join("dsc.txt");
    std::fs::write(&lines_path, format!("# trust list\n{}\n\n{}\n", b64(&a.der), b64(&a.der))).expect("write base64");
    let list = TrustList::load_pem_or_base64_file(&lines_path).expect("base64 loads");
    assert_eq!(list.len(), 1, "the same certificate twice is one signer");

    let bad_path = dir.path().join("bad.txt");
    std::fs::write(&bad_path, "not a certificate\n").expect("write");
    let err = TrustList::load_pem_or_base64_file(&bad_path).expect_err("refused");
    assert_eq!(err.step(), Step::Verify);
    assert!(err.to_string().contains("bad.txt"), "{err}");
}

#[test]
fn mutated_certificates_never_panic_and_never_verify() {
    let issuer = Issuer::default();
    let trust = issuer.trust();
    let payload = cwt(NOW - DAY, NOW + DAY, vaccination());
    let good = cose(&issuer, KidAt::Protected(issuer.kid().0.to_vec()), payload).to_tagged_vec().expect("COSE");
    // xorshift64: deterministic, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3_000 {
        let mut bytes = good.clone();
        for _ in 0..=next() % 3 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (next() % 8);
        }
        if bytes == good {
            continue;
        }
        let result = verify(&qr_of_cose_bytes(&bytes), &trust, NOW);
        if let Ok(cert) = result {
            // Only a flip inside the unprotected header can leave the
            // signature intact; what it carries must still be the original.
            assert_eq!(cert.family_name_std, "ZHANG");
            assert_eq!(cert.expires_at_ms, NOW + DAY);
        }
    }
}
