//! Health certificate verification, QR text to verdict (`dcc_es256`,
//! `dcc_ps256`), beside `ring` verifying the same certificate's signature
//! alone (the signed structure and key prepared beforehand).
//!
//! Samples: the first case of the public EU DCC conformance data
//! (`GATE_DCC_CONFORMANCE_DIR`, else `../shared/conformance/dgc-testdata`
//! beside the checkout) that verifies end to end at its own validation
//! clock, per algorithm. Without the data an ES256 certificate is minted
//! here; PS256 is then reported as not measured.

use crate::report::{Row, Stats};
use anyhow::{Context, Result, bail};
use gate_dcc::{Kid, SignerKey, TrustList, parse_datetime_ms, verify};
use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;
use x509_cert::der::Decode as _;

const GOAL_P99_US: f64 = 2000.0;

struct Sample {
    label: String,
    qr: String,
    trust: TrustList,
    now_ms: i64,
    /// The signer's certificate (DER), for the raw check.
    certificate: Vec<u8>,
}

pub fn conformance_dir() -> PathBuf {
    match std::env::var_os("GATE_DCC_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/dgc-testdata"),
    }
}

pub fn dcc_rows(iterations: usize) -> Vec<Row> {
    let dir = conformance_dir();
    let have_data = dir.is_dir();
    let es256 = if have_data { from_conformance(&dir, |k| matches!(k, SignerKey::P256(_)), "ES256") } else { None };
    let es256 = es256.or_else(self_made);
    let ps256 = if have_data { from_conformance(&dir, |k| matches!(k, SignerKey::Rsa(_)), "PS256") } else { None };
    let goal = "p99 <= 2 ms";
    let mut rows = Vec::new();
    for (name, sample, alg) in [("dcc_es256", es256, Alg::Es256), ("dcc_ps256", ps256, Alg::Ps256)] {
        let row = match sample {
            None => Row::missing(
                name,
                "us",
                goal,
                format!("no sample: no conformance case verifies at {} (GATE_DCC_CONFORMANCE_DIR)", dir.display()),
            ),
            Some(sample) => match measure(name, &sample, alg, iterations) {
                Ok(row) => row,
                Err(e) => Row::missing(name, "us", goal, format!("{e:#}")),
            },
        };
        rows.push(row);
    }
    rows
}

#[derive(Clone, Copy)]
enum Alg {
    Es256,
    Ps256,
}

fn measure(name: &str, sample: &Sample, alg: Alg, iterations: usize) -> Result<Row> {
    let (signed, signature) = signed_structure(&sample.qr)?;
    let certificate = x509_cert::Certificate::from_der(&sample.certificate).context("signer certificate")?;
    let public_key = certificate.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
    let algorithm: &dyn ring::signature::VerificationAlgorithm = match alg {
        Alg::Es256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
        Alg::Ps256 => &ring::signature::RSA_PSS_2048_8192_SHA256,
    };
    let key = ring::signature::UnparsedPublicKey::new(algorithm, public_key);
    if key.verify(&signed, &signature).is_err() {
        bail!("ring does not verify the sample's signature");
    }
    let full = time(iterations, || verify(black_box(&sample.qr), &sample.trust, sample.now_ms).is_ok())?;
    let raw = time(iterations, || key.verify(black_box(&signed), black_box(&signature)).is_ok())?;
    Ok(Row::new(name, full.p99, "us")
        .p50(full.p50)
        .ceiling("ring signature check p99", raw.p99)
        .goal("p99 <= 2 ms", full.p99 <= GOAL_P99_US)
        .detail("ceiling_p50", raw.p50)
        .detail("sample", sample.label.clone())
        .detail("qr_chars", sample.qr.len() as u64)
        .detail("iterations", iterations as u64))
}

fn time(iterations: usize, mut run: impl FnMut() -> bool) -> Result<Stats> {
    for _ in 0..iterations.div_ceil(10) {
        if !run() {
            bail!("the sample stopped verifying");
        }
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let ok = black_box(run());
        times.push(start.elapsed());
        if !ok {
            bail!("the sample stopped verifying");
        }
    }
    Stats::of(&times).context("no samples")
}

/// COSE_Sign1's `Sig_structure` (what was signed) and the signature, from
/// the QR text: `HC1:` + base45 + zlib.
fn signed_structure(qr: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    use coset::{CborSerializable as _, TaggedCborSerializable as _};
    let body = qr.strip_prefix("HC1:").context("no HC1: prefix")?;
    let compressed = base45::decode(body).context("base45")?;
    let mut cose = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..]).read_to_end(&mut cose).context("zlib")?;
    let sign1 = coset::CoseSign1::from_tagged_slice(&cose)
        .or_else(|_| coset::CoseSign1::from_slice(&cose))
        .map_err(|e| anyhow::anyhow!("COSE_Sign1: {e:?}"))?;
    Ok((sign1.tbs_data(b""), sign1.signature.clone()))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// The first conformance case signed with `want` that verifies end to end.
fn from_conformance(dir: &Path, want: fn(&SignerKey) -> bool, alg: &str) -> Option<Sample> {
    use base64::Engine as _;
    let mut files = Vec::new();
    json_files(dir, &mut files);
    files.sort();
    files.into_iter().find_map(|path| {
        let text = std::fs::read_to_string(&path).ok()?;
        let doc: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()?;
        let qr = doc.get("PREFIX")?.as_str()?.to_string();
        let ctx = doc.get("TESTCTX")?;
        let now_ms = parse_datetime_ms(ctx.get("VALIDATIONCLOCK")?.as_str()?)?;
        let certificate_b64 = ctx.get("CERTIFICATE")?.as_str()?;
        let mut trust = TrustList::new();
        let kid = trust.add_certificate_base64(certificate_b64).ok()?;
        if !want(&trust.get(&kid).first()?.key) || verify(&qr, &trust, now_ms).is_err() {
            return None;
        }
        let certificate = base64::engine::general_purpose::STANDARD.decode(certificate_b64.trim()).ok()?;
        let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        Some(Sample { label: format!("{alg}, conformance case {rel}"), qr, trust, now_ms, certificate })
    })
}

/// An ES256 certificate minted here, for machines without the data.
fn self_made() -> Option<Sample> {
    use ciborium::value::Value;
    use coset::{CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).ok()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).ok()?;
    params.not_before = rcgen::date_time_ymd(2021, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let der = params.self_signed(&key).ok()?.der().to_vec();
    let rng = ring::rand::SystemRandom::new();
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng).ok()?;

    let t = |s: &str| Value::Text(s.to_string());
    let entry = Value::Map(vec![
        (t("tg"), t("840539006")),
        (t("vp"), t("J07BX03")),
        (t("mp"), t("EU/1/20/1528")),
        (t("ma"), t("ORG-100030215")),
        (t("dn"), Value::from(2)),
        (t("sd"), Value::from(2)),
        (t("dt"), t("2021-05-10")),
        (t("co"), t("CN")),
        (t("is"), t("Bench issuer")),
        (t("ci"), t("URN:UVCI:01:CN:BENCH#1")),
    ]);
    let hcert = Value::Map(vec![
        (t("ver"), t("1.3.0")),
        (t("nam"), Value::Map(vec![(t("fnt"), t("ZHANG")), (t("gnt"), t("SAN"))])),
        (t("dob"), t("1990-05-17")),
        (t("v"), Value::Array(vec![entry])),
    ]);
    let now_ms = 1_622_505_600_000;
    let claims = Value::Map(vec![
        (Value::from(1), t("CN")),
        (Value::from(6), Value::from(now_ms / 1000 - 86_400)),
        (Value::from(4), Value::from(now_ms / 1000 + 86_400)),
        (Value::from(-260), Value::Map(vec![(Value::from(1), hcert)])),
    ]);
    let mut payload = Vec::new();
    ciborium::ser::into_writer(&claims, &mut payload).ok()?;
    let protected =
        HeaderBuilder::new().algorithm(iana::Algorithm::ES256).key_id(Kid::of_certificate(&der).0.to_vec()).build();
    let cose = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |data| signer.sign(&rng, data).map(|s| s.as_ref().to_vec()).unwrap_or_default())
        .build()
        .to_tagged_vec()
        .ok()?;
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&cose).ok()?;
    let qr = format!("HC1:{}", base45::encode(zlib.finish().ok()?));
    let mut trust = TrustList::new();
    trust.add_certificate_der(&der).ok()?;
    Some(Sample { label: "ES256, self-made certificate".to_string(), qr, trust, now_ms, certificate: der })
}
