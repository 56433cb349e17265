//! Benchmark of `verify` end to end (QR text in, verified certificate out): p50 / p99 per call.
//!
//! Uses an ES256 (and, for comparison, a PS256) case of the conformance data
//! read at run time, the first one that passes every step at its own
//! validation clock. Without the data it mints an ES256 certificate itself.
//! Target: p99 <= 2 ms per verification on the gate's 2-core machine.
//!
//! Run: `cargo bench -p gate-dcc --bench verify`

use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gate_dcc::{Kid, SignerKey, TrustList, parse_datetime_ms, verify};

const WARMUP: usize = 200;
const ITERATIONS: usize = 2_000;
const TARGET_P99: Duration = Duration::from_millis(2);

struct Sample {
    label: String,
    qr: String,
    trust: TrustList,
    now_ms: i64,
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
    let mut files = Vec::new();
    json_files(dir, &mut files);
    files.sort();
    files.into_iter().find_map(|path| {
        let text = std::fs::read_to_string(&path).ok()?;
        let doc: serde_json::Value = serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()?;
        let qr = doc.get("PREFIX")?.as_str()?.to_string();
        let ctx = doc.get("TESTCTX")?;
        let now_ms = parse_datetime_ms(ctx.get("VALIDATIONCLOCK")?.as_str()?)?;
        let mut trust = TrustList::new();
        let kid = trust.add_certificate_base64(ctx.get("CERTIFICATE")?.as_str()?).ok()?;
        if !want(&trust.get(&kid).first()?.key) || verify(&qr, &trust, now_ms).is_err() {
            return None;
        }
        let rel = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        Some(Sample { label: format!("{alg}, conformance case {rel}"), qr, trust, now_ms })
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
    Some(Sample { label: "ES256, self-made certificate".to_string(), qr, trust, now_ms })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Times `verify` on one sample; returns its p99.
fn run(sample: &Sample) -> Duration {
    for _ in 0..WARMUP {
        let _ = black_box(verify(black_box(&sample.qr), &sample.trust, sample.now_ms));
    }
    let mut times = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let start = Instant::now();
        let result = verify(black_box(&sample.qr), &sample.trust, sample.now_ms);
        times.push(start.elapsed());
        assert!(black_box(result).is_ok(), "the sample stopped verifying");
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / ITERATIONS as u32;
    let p99 = percentile(&times, 0.99);
    println!(
        "verify [{}]: {ITERATIONS} runs, QR {} chars: min {:?}  p50 {:?}  mean {:?}  p99 {:?}  max {:?}",
        sample.label,
        sample.qr.len(),
        times[0],
        percentile(&times, 0.50),
        mean,
        p99,
        times[times.len() - 1],
    );
    p99
}

fn main() {
    let dir = match std::env::var_os("GATE_DCC_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/dgc-testdata"),
    };
    let es256 = if dir.is_dir() {
        from_conformance(&dir, |k| matches!(k, SignerKey::P256(_)), "ES256")
    } else {
        println!("no conformance data at {}: minting an ES256 certificate", dir.display());
        None
    };
    let Some(es256) = es256.or_else(self_made) else {
        println!("no ES256 sample could be built: nothing measured");
        return;
    };
    let p99 = run(&es256);
    println!("target p99 <= {TARGET_P99:?}: {}", if p99 <= TARGET_P99 { "met" } else { "MISSED" });
    if dir.is_dir() {
        match from_conformance(&dir, |k| matches!(k, SignerKey::Rsa(_)), "PS256") {
            Some(ps256) => {
                run(&ps256);
            }
            None => println!("no PS256 case verifies end to end: PS256 not measured"),
        }
    }
}
