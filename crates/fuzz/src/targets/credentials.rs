//! Credentials a visitor shows: `VP1.` visitor passes and `HC1:` health
//! certificates. Both are signed; the targets hold real keys so that a
//! share of their inputs carries a valid signature and reaches the code
//! behind it.

use crate::rng::Rng;
use crate::{Target, class};
use ciborium::value::Value;
use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana};
use ed25519_dalek::SigningKey;
use gate_dcc::{Kid, Signer, TrustList};
use gate_pass::{PlatformKeys, VisitorPass};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use std::io::Write as _;

const SITE: &str = "sz-futian-01";

fn sample_pass(rng: &mut Rng) -> VisitorPass {
    VisitorPass {
        kid: String::new(),
        site: if rng.below(8) == 0 { rng.text() } else { SITE.to_owned() },
        pass_id: rng.text(),
        host_person_id: rng.text(),
        visitor_id_hash: hex::encode([rng.byte(); 32]),
        valid_from_ms: rng.number() as i64,
        valid_to_ms: rng.number() as i64,
        gates: (0..rng.below(3)).map(|_| rng.text()).collect(),
        max_uses: rng.number() as u32,
    }
}

/// `pass`: `VP1.` tokens through `PlatformKeys::verify`, then the verified
/// pass's fields checked the way the engine reads them.
#[derive(Debug)]
pub struct Pass {
    key: SigningKey,
    keys: PlatformKeys,
}

impl Default for Pass {
    fn default() -> Self {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[9; 32]);
        let keys = PlatformKeys::from_raw(&[key.verifying_key().to_bytes(), other.verifying_key().to_bytes()])
            .unwrap_or_else(|_| panic!("two valid Ed25519 keys"));
        Pass { key, keys }
    }
}

impl Target for Pass {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(3);
        let mut out: Vec<Vec<u8>> =
            (0..6).map(|_| gate_pass::sign(&sample_pass(&mut rng), &self.key).into_bytes()).collect();
        out.push(b"VP1.".to_vec());
        out.push(b"VP1.e30.".to_vec());
        out.push(b"VP1.eyJraWQiOiIwMDAwMDAwMCJ9.AAAA".to_vec());
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        // Signed, so the payload parser behind the signature is reached.
        Some(gate_pass::sign(&sample_pass(rng), &self.key).into_bytes())
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[b"VP1.", b".", b"-", b"_", b"=", b"eyJ", b"AAAA"])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let token = String::from_utf8_lossy(input);
        match self.keys.verify(&token, SITE) {
            Ok(pass) => {
                if pass.site != SITE {
                    panic!("a pass for another site verified");
                }
                class(&("ok", pass.gates.is_empty(), pass.max_uses == 0))
            }
            Err(e) => class(&format!("{e:?}").split(['(', ' ', '{']).next().map(str::to_owned)),
        }
    }
}

/// 2021-06-01T00:00:00Z, the validation time of the `hc1` target.
const NOW_MS: i64 = 1_622_505_600_000;
const DAY_MS: i64 = 86_400_000;

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(value, &mut out);
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn hcert(rng: &mut Rng) -> Value {
    let name = Value::Map(vec![
        (text("fn"), text("张")),
        (text("fnt"), text("ZHANG")),
        (text("gn"), text("三")),
        (text("gnt"), text("SAN")),
    ]);
    let (key, entry) = match rng.below(3) {
        0 => (
            "v",
            vec![
                (text("tg"), text("840539006")),
                (text("vp"), text("J07BX03")),
                (text("mp"), text("EU/1/20/1528")),
                (text("ma"), text("ORG-100030215")),
                (text("dn"), Value::from(rng.below(4) as u64)),
                (text("sd"), Value::from(2)),
                (text("dt"), text("2021-05-10")),
                (text("co"), text("CN")),
                (text("is"), text("Test issuer")),
                (text("ci"), text("URN:UVCI:01:CN:TEST#1")),
            ],
        ),
        1 => (
            "t",
            vec![
                (text("tg"), text("840539006")),
                (text("tt"), text("LP6464-4")),
                (text("sc"), text("2021-05-30T10:00:00Z")),
                (text("tr"), text(if rng.coin() { "260415000" } else { "260373001" })),
                (text("tc"), text("Test centre")),
                (text("co"), text("CN")),
                (text("is"), text("Test issuer")),
                (text("ci"), text("URN:UVCI:01:CN:TEST#2")),
            ],
        ),
        _ => (
            "r",
            vec![
                (text("tg"), text("840539006")),
                (text("fr"), text("2021-04-01")),
                (text("co"), text("CN")),
                (text("is"), text("Test issuer")),
                (text("df"), text("2021-05-01")),
                (text("du"), text("2021-10-01")),
                (text("ci"), text("URN:UVCI:01:CN:TEST#3")),
            ],
        ),
    };
    Value::Map(vec![
        (text("ver"), text("1.3.0")),
        (text("nam"), name),
        (text("dob"), text(["1990-05-17", "1990", "1990-05", "", "1990-13-45"][rng.below(5)])),
        (text(key), Value::Array(vec![Value::Map(entry)])),
    ])
}

fn cwt(rng: &mut Rng) -> Vec<u8> {
    cbor(&Value::Map(vec![
        (Value::from(1), text("CN")),
        (Value::from(6), Value::from((NOW_MS - DAY_MS) / 1000)),
        (Value::from(4), Value::from((NOW_MS + 365 * DAY_MS) / 1000 * if rng.below(6) == 0 { -1 } else { 1 })),
        (Value::from(-260), Value::Map(vec![(Value::from(1), hcert(rng))])),
    ]))
}

/// `hc1`: an EU DCC from QR text to holder, layer by layer. The first byte
/// of an input says which layer the rest is: the QR text itself, the zlib
/// stream under base45, the COSE message, the CWT claims behind a verified
/// signature, or the certificate CBOR; rarely, a CWT that is signed for
/// real and goes through the whole pipeline.
pub struct Hc1 {
    key: EcdsaKeyPair,
    kid: Kid,
    trust: TrustList,
    signer: Signer,
    rng: SystemRandom,
}

impl std::fmt::Debug for Hc1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hc1").finish_non_exhaustive()
    }
}

impl Default for Hc1 {
    fn default() -> Self {
        let failed = |what: &str| -> ! { panic!("hc1 target setup: {what}") };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap_or_else(|_| failed("P-256 key"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|_| failed("params"));
        params.distinguished_name.push(rcgen::DnType::CommonName, "Fuzz DSC");
        params.not_before = rcgen::date_time_ymd(2021, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let cert = params.self_signed(&key).unwrap_or_else(|_| failed("certificate"));
        let der = cert.der().to_vec();
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
            .unwrap_or_else(|_| failed("PKCS#8"));
        let mut trust = TrustList::new();
        let kid = trust.add_certificate_der(&der).unwrap_or_else(|_| failed("trust list"));
        let signer = Signer::from_der(&der).unwrap_or_else(|_| failed("signer"));
        Hc1 { key, kid, trust, signer, rng }
    }
}

impl Hc1 {
    fn cose(&self, payload: Vec<u8>) -> Vec<u8> {
        CoseSign1Builder::new()
            .protected(HeaderBuilder::new().algorithm(iana::Algorithm::ES256).key_id(self.kid.0.to_vec()).build())
            .payload(payload)
            .create_signature(b"", |data| {
                self.key.sign(&self.rng, data).map(|s| s.as_ref().to_vec()).unwrap_or_default()
            })
            .build()
            .to_tagged_vec()
            .unwrap_or_default()
    }

    fn qr_of_cose(cose: &[u8]) -> Vec<u8> {
        format!("HC1:{}", base45::encode(zlib(cose))).into_bytes()
    }

    fn layered(layer: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![layer];
        out.extend_from_slice(body);
        out
    }
}

/// Layers of an `hc1` input.
const QR: u8 = 0;
const ZLIB: u8 = 1;
const COSE: u8 = 2;
const CLAIMS: u8 = 3;
const HCERT: u8 = 4;
const SIGN: u8 = 5;

impl Target for Hc1 {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(5);
        let mut out = Vec::new();
        for _ in 0..3 {
            let claims = cwt(&mut rng);
            let cose = self.cose(claims.clone());
            out.push(Self::layered(QR, &Self::qr_of_cose(&cose)));
            out.push(Self::layered(ZLIB, &zlib(&cose)));
            out.push(Self::layered(COSE, &cose));
            out.push(Self::layered(CLAIMS, &claims));
            out.push(Self::layered(HCERT, &cbor(&hcert(&mut rng))));
        }
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let claims = cwt(rng);
        Some(match rng.below(4) {
            0 => Self::layered(SIGN, &claims),
            1 => Self::layered(CLAIMS, &claims),
            2 => Self::layered(HCERT, &cbor(&hcert(rng))),
            _ => Self::layered(COSE, &self.cose(claims)),
        })
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[
            b"HC1:",
            b"\xd2\x84",
            b"\xa1\x01\x26",
            b"\x19\xfe\xfb",
            b"\x78\x9c",
            b"\x60",
            b"\x40",
            b"\xf6",
            b"\xa0",
        ])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let Some((&layer, body)) = input.split_first() else { return 0 };
        let result: Result<&str, gate_dcc::DccError> = match layer % 8 {
            ZLIB => {
                let qr = format!("HC1:{}", base45::encode(body));
                gate_dcc::verify(&qr, &self.trust, NOW_MS).map(|_| "ok")
            }
            COSE => {
                gate_dcc::verify(&String::from_utf8_lossy(&Self::qr_of_cose(body)), &self.trust, NOW_MS).map(|_| "ok")
            }
            // Behind the signature: what `verify` does once the signer is known.
            CLAIMS => gate_dcc::decode_cwt(body).and_then(|claims| {
                gate_dcc::check_expiration(&claims, &self.signer, NOW_MS)?;
                let content = gate_dcc::check_schema(&claims.hcert)?;
                gate_dcc::check_key_usage(content.kind.cert_type(), &self.signer)?;
                Ok("ok")
            }),
            HCERT => gate_dcc::decode_hcert(body).and_then(|json| {
                gate_dcc::certificate_type(&json)?;
                gate_dcc::check_schema(&json).map(|_| "ok")
            }),
            // Exactly layer 5: signed for real (slow, so only this one byte value).
            SIGN if layer == SIGN => {
                let qr = Self::qr_of_cose(&self.cose(body.to_vec()));
                gate_dcc::verify(&String::from_utf8_lossy(&qr), &self.trust, NOW_MS).map(|_| "ok")
            }
            _ => gate_dcc::verify(&String::from_utf8_lossy(body), &self.trust, NOW_MS).map(|_| "ok"),
        };
        match result {
            Ok(ok) => class(&(layer % 8, ok)),
            Err(e) => class(&(layer % 8, e.step(), format!("{e}").split([':', '(']).next().map(str::to_owned))),
        }
    }
}
