//! Conformance run: every case of the public DCC test data through the verifier's own steps.
//!
//! The data (`dgc-testdata`, Apache-2.0) is read at run time from
//! `../shared/conformance/dgc-testdata` beside the workspace, or from
//! `GATE_DCC_CONFORMANCE_DIR`; none of it is copied into the project.
//! Each `EXPECTED...` flag of a case is checked with the public function the
//! daemon uses for that step, fed with the case's own input for the step
//! (the previous field, or, where the case leaves it out, the output of our
//! previous step). Then `verify` runs end to end on the QR text, and must
//! refuse at a step the flags say fails, or pass when none fails.
//!
//! Skipped: the cases `known_issues.csv` lists (still run, shown apart) and
//! the steps we do not perform (QR image decoding, encoding). Disputed: the
//! few flags listed in `DISPUTED` below, which contradict the format's rules
//! or the case's own data; each still runs, must give the spec's verdict,
//! and is printed with its reason. Any other mismatch fails the test.
//! Missing data skips the run, saying so and where to get the data, so that
//! a plain clone passes `cargo test --workspace`; `GATE_DCC_CONFORMANCE=require`
//! (set by `.ci/run` where the data is present) makes missing data a failure,
//! and `GATE_DCC_CONFORMANCE=skip` skips on purpose.
//!
//! The table prints with `cargo test -p gate-dcc --test conformance -- --nocapture`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gate_dcc::{
    DccError, Signer, Step, TrustList, base45_decode, certificate_type, check_expiration, check_key_usage,
    check_schema, decode_cose, decode_cwt, decode_hcert, inflate, parse_datetime_ms, unprefix, verify,
    verify_signature,
};
use serde_json::{Map, Value as Json};

/// One row of the table: an `EXPECTED...` flag, or the end-to-end run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    Unprefix,
    B45Decode,
    Compression,
    Decode,
    ValidJson,
    Verify,
    Expiration,
    KeyUsage,
    Schema,
    ValidObject,
    Picture,
    Encode,
    EndToEnd,
}

impl Check {
    const FLAGS: [Check; 12] = [
        Check::Unprefix,
        Check::B45Decode,
        Check::Compression,
        Check::Decode,
        Check::ValidJson,
        Check::Verify,
        Check::Expiration,
        Check::KeyUsage,
        Check::Schema,
        Check::ValidObject,
        Check::Picture,
        Check::Encode,
    ];

    fn flag(self) -> &'static str {
        match self {
            Check::Unprefix => "EXPECTEDUNPREFIX",
            Check::B45Decode => "EXPECTEDB45DECODE",
            Check::Compression => "EXPECTEDCOMPRESSION",
            Check::Decode => "EXPECTEDDECODE",
            Check::ValidJson => "EXPECTEDVALIDJSON",
            Check::Verify => "EXPECTEDVERIFY",
            Check::Expiration => "EXPECTEDEXPIRATIONCHECK",
            Check::KeyUsage => "EXPECTEDKEYUSAGE",
            Check::Schema => "EXPECTEDSCHEMAVALIDATION",
            Check::ValidObject => "EXPECTEDVALIDOBJECT",
            Check::Picture => "EXPECTEDPICTUREDECODE",
            Check::Encode => "EXPECTEDENCODE",
            Check::EndToEnd => "verify() end to end",
        }
    }

    /// What of ours answers the flag.
    fn ours(self) -> &'static str {
        match self {
            Check::Unprefix => "unprefix",
            Check::B45Decode => "base45_decode",
            Check::Compression => "inflate",
            Check::Decode => "decode_cwt/decode_hcert vs JSON",
            Check::ValidJson => "whole chain vs JSON",
            Check::Verify => "decode_cose+verify_signature",
            Check::Expiration => "check_expiration",
            Check::KeyUsage => "check_key_usage",
            Check::Schema => "check_schema (payload)",
            Check::ValidObject => "check_schema (JSON)",
            Check::Picture => "-",
            Check::Encode => "-",
            Check::EndToEnd => "verify",
        }
    }

    /// The upstream pytest functions whose names `known_issues.csv` uses.
    fn upstream_tests(self) -> &'static [&'static str] {
        match self {
            Check::Unprefix => &["test_un_prefix"],
            Check::B45Decode => &["test_b45decode"],
            Check::Compression => &["test_compression"],
            Check::Decode => &["test_cose_json", "test_cose_cbor"],
            Check::ValidJson => &["test_cbor_json"],
            Check::Verify => &["test_verification_check"],
            Check::Expiration => &["test_expiration_check"],
            Check::KeyUsage => &["test_expected_key_usage"],
            Check::Schema => &["test_cose_schema"],
            // The upstream harness has no test for this flag; it is the same
            // schema validation of the same certificate (as JSON), so the
            // schema test's known issues are its known issues.
            Check::ValidObject => &["test_cose_schema"],
            Check::Picture => &["test_picture_decode"],
            Check::Encode | Check::EndToEnd => &[],
        }
    }

    /// Steps we do not implement: counted as skipped, with the reason.
    fn not_performed(self) -> Option<&'static str> {
        match self {
            Check::Picture => Some("QR image decoding is the camera's job, not this crate's"),
            Check::Encode => Some("this crate verifies; it does not issue certificates"),
            _ => None,
        }
    }

    /// The flags that vouch for one of our pipeline steps: `verify` refusing
    /// at that step contradicts the case if one of them is true.
    fn vouching_for(step: Step) -> &'static [Check] {
        match step {
            Step::Unprefix => &[Check::Unprefix],
            Step::Base45 => &[Check::B45Decode],
            Step::Inflate => &[Check::Compression],
            Step::CoseDecode => &[Check::Verify, Check::ValidJson],
            Step::Verify => &[Check::Verify],
            Step::CborDecode => &[Check::Decode, Check::ValidJson],
            Step::Expiration => &[Check::Expiration],
            Step::KeyUsage => &[Check::KeyUsage],
            Step::Schema => &[Check::Schema],
        }
    }

    /// The flags of steps `verify` runs.
    const PIPELINE: [Check; 7] = [
        Check::Unprefix,
        Check::B45Decode,
        Check::Compression,
        Check::Verify,
        Check::Expiration,
        Check::KeyUsage,
        Check::Schema,
    ];
}

/// What one step did with the case's input.
enum Got {
    /// It succeeded and matched the case's reference output, if any.
    Ok,
    /// It refused, with our error.
    Refused(String),
    /// It succeeded but its output differs from the case's next field.
    Differs(String),
}

impl Got {
    fn describe(&self) -> String {
        match self {
            Got::Ok => "ok".to_string(),
            Got::Refused(why) => format!("refused: {why}"),
            Got::Differs(what) => format!("accepted, but {what}"),
        }
    }

    fn of<T>(r: Result<T, DccError>) -> Got {
        match r {
            Ok(_) => Got::Ok,
            Err(e) => Got::Refused(e.to_string()),
        }
    }
}

enum Outcome {
    Pass,
    Mismatch { expected: bool, got: String },
    KnownIssue { reason: String, got: String, agrees: bool },
    Disputed { why: &'static str, got: String },
    Skipped(String),
}

struct KnownIssues(Vec<(String, String, String, String)>);

impl KnownIssues {
    fn load(dir: &Path) -> Result<KnownIssues, String> {
        let path = dir.join("known_issues.csv");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(KnownIssues(Vec::new()));
        };
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        if header.trim() != "test_name,country,test_set,reason" {
            return Err(format!("{}: unexpected header {header:?}", path.display()));
        }
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.splitn(4, ',').map(str::trim).collect();
            let [test, country, set, reason] = cols[..] else {
                return Err(format!("{}: line {} has {} columns", path.display(), n + 2, cols.len()));
            };
            rows.push((test.into(), country.into(), set.into(), reason.into()));
        }
        Ok(KnownIssues(rows))
    }

    /// The upstream harness's rule: a row names a test function (or none,
    /// for all) and a country, and a file stem (or none, for all).
    fn reason(&self, check: Check, country: &str, stem: &str) -> Option<&str> {
        self.0.iter().find_map(|(test, c, set, reason)| {
            let test_ok = test.is_empty() || check.upstream_tests().contains(&test.as_str());
            (test_ok && c == country && (set.is_empty() || set == stem)).then_some(reason.as_str())
        })
    }
}

/// A case whose flag contradicts the format's rules or the case's own
/// data. It still runs: our step must give `spec_says`, and it is counted
/// and listed as disputed, never as passed. An entry whose step stops giving
/// `spec_says` is a failure, so the list cannot go stale.
struct Disputed {
    file: &'static str,
    check: Check,
    spec_says: bool,
    why: &'static str,
}

const VALUE_SETS: &str = "the value is outside the EU value set, but the DCC schema names \
     value sets as annotations (valueset-uri), not constraints, and so does not refuse it; \
     checking value sets is a business rule (upstream issue #246 disputes this for co)";
const EDITED_JSON: &str = "the JSON field holds another person than the signed CBOR/COSE \
     payload (name and birth date differ), so decoding cannot match it";
const OUTLIVES_DSC: &str = "exp is 47 s after the signer certificate's notAfter; the rule \
     (and the upstream harness) require exp <= notAfter: TESTCTX holds a different DSC \
     than the one that signed";
const NO_PROFILE_OID: &str = "the signer's only extended key usage is 2.23.136.1.1.14.2, none \
     of the DCC OIDs; the hcert spec: 'if none of these OIDs are present the document shall \
     be considered valid for all three' (the case's description also says 'valid, no key usage')";

const DISPUTED: &[Disputed] = &[
    Disputed { file: "PL/1.0.0/2DCode/raw/7.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.0.0/2DCode/raw/8.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.0.0/2DCode/raw/9.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.2.1/2DCode/raw/7.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.2.1/2DCode/raw/8.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.2.1/2DCode/raw/9.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.3.0/2DCode/raw/7.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.3.0/2DCode/raw/8.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.3.0/2DCode/raw/9.json", check: Check::Schema, spec_says: true, why: VALUE_SETS },
    Disputed { file: "PL/1.3.0/2DCode/raw/1.json", check: Check::Decode, spec_says: false, why: EDITED_JSON },
    Disputed { file: "PL/1.3.0/2DCode/raw/1.json", check: Check::ValidJson, spec_says: false, why: EDITED_JSON },
    Disputed { file: "PL/1.3.0/2DCode/raw/5.json", check: Check::Decode, spec_says: false, why: EDITED_JSON },
    Disputed { file: "PL/1.3.0/2DCode/raw/5.json", check: Check::ValidJson, spec_says: false, why: EDITED_JSON },
    Disputed { file: "PL/1.3.0/2DCode/raw/6.json", check: Check::Expiration, spec_says: false, why: OUTLIVES_DSC },
    Disputed { file: "IS/2DCode/raw/3.json", check: Check::KeyUsage, spec_says: true, why: NO_PROFILE_OID },
];

fn disputed(rel: &str, check: Check) -> Option<&'static Disputed> {
    DISPUTED.iter().find(|d| d.file == rel && d.check == check)
}

struct Case {
    rel: String,
    country: String,
    stem: String,
    doc: Map<String, Json>,
}

impl Case {
    fn text(&self, key: &str) -> Option<&str> {
        self.doc.get(key).and_then(Json::as_str)
    }

    fn ctx(&self, key: &str) -> Option<&str> {
        self.doc.get("TESTCTX").and_then(|c| c.get(key)).and_then(Json::as_str)
    }

    fn hex(&self, key: &str) -> Option<Result<Vec<u8>, String>> {
        let raw = self.text(key)?;
        let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
        Some(hex::decode(compact).map_err(|e| format!("the case's {key} is not hex: {e}")))
    }

    fn expected(&self, check: Check) -> Option<bool> {
        self.doc.get("EXPECTEDRESULTS").and_then(|r| r.get(check.flag())).and_then(Json::as_bool)
    }

    /// The expectation end to end: the flag, or the spec's verdict where
    /// the flag is disputed.
    fn expected_by_spec(&self, check: Check) -> Option<bool> {
        match disputed(&self.rel, check) {
            Some(d) => Some(d.spec_says),
            None => self.expected(check),
        }
    }

    fn clock_ms(&self) -> Option<i64> {
        self.ctx("VALIDATIONCLOCK").and_then(parse_datetime_ms)
    }

    fn json(&self) -> Option<&Json> {
        self.doc.get("JSON").filter(|j| !j.is_null())
    }

    /// The input of each step: the case's field, else our previous step's
    /// output on the case's earlier field.
    fn base45(&self) -> Option<String> {
        match self.text("BASE45") {
            Some(b) => Some(b.to_string()),
            None => unprefix(self.text("PREFIX")?).ok().map(str::to_string),
        }
    }

    fn compressed(&self) -> Option<Result<Vec<u8>, String>> {
        match self.hex("COMPRESSED") {
            Some(r) => Some(r),
            None => base45_decode(&self.base45()?).ok().map(Ok),
        }
    }

    fn cose(&self) -> Option<Result<Vec<u8>, String>> {
        match self.hex("COSE") {
            Some(r) => Some(r),
            None => match self.compressed()? {
                Ok(c) => inflate(&c).ok().map(Ok),
                Err(e) => Some(Err(e)),
            },
        }
    }

    fn signer(&self) -> Option<Result<Signer, DccError>> {
        let b64 = self.ctx("CERTIFICATE")?;
        let mut list = TrustList::new();
        Some(list.add_certificate_base64(b64).map(|kid| list.get(&kid)[0].clone()))
    }

    fn trust(&self) -> Option<Result<TrustList, DccError>> {
        let b64 = self.ctx("CERTIFICATE")?;
        let mut list = TrustList::new();
        Some(list.add_certificate_base64(b64).map(|_| list))
    }
}

/// The certificate of a COSE message, decoded without verifying.
fn hcert_of_cose(cose: &[u8]) -> Result<(gate_dcc::CwtClaims, Json), DccError> {
    let message = decode_cose(cose)?;
    let claims = decode_cwt(message.payload().unwrap_or_default())?;
    let hcert = claims.hcert.clone();
    Ok((claims, hcert))
}

/// A `CBOR` field holds either the whole CWT or the certificate alone.
fn hcert_of_cbor(cbor: &[u8]) -> Result<Json, DccError> {
    decode_cwt(cbor).map(|c| c.hcert).or_else(|_| decode_hcert(cbor))
}

/// Where two certificates differ, by path only: the values are personal.
fn json_difference(ours: &Json, theirs: &Json, path: &str) -> Option<String> {
    match (ours, theirs) {
        (Json::Object(a), Json::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                let here = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = json_difference(x, y, &here) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => return Some(format!("{here} only in the payload")),
                    (None, _) => return Some(format!("{here} only in JSON")),
                }
            }
            None
        }
        (Json::Array(a), Json::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| json_difference(x, y, &format!("{path}[{i}]")))
        }
        (Json::Number(a), Json::Number(b)) if a.as_f64() == b.as_f64() => None,
        (Json::String(a), Json::String(b)) if a == b => None,
        // The same instant written two ways (zone, fraction) is the same
        // value; the upstream harness compares date-times to the second.
        (Json::String(a), Json::String(b)) => match (parse_datetime_ms(a), parse_datetime_ms(b)) {
            (Some(x), Some(y)) if x.div_euclid(1000) == y.div_euclid(1000) => None,
            _ => Some(format!("{path} differs")),
        },
        (a, b) if a == b => None,
        _ => Some(format!("{path} differs")),
    }
}

fn compare(ours: &Json, theirs: &Json) -> Got {
    match json_difference(ours, theirs, "$") {
        None => Got::Ok,
        Some(d) => Got::Differs(d),
    }
}

/// Runs one flag's step on the case; `None` when the case lacks its input.
fn run_check(case: &Case, check: Check) -> Result<Got, String> {
    let missing = |what: &str| Err(format!("no input: the case has no {what}"));
    Ok(match check {
        Check::Unprefix => {
            let Some(prefix) = case.text("PREFIX") else { return missing("PREFIX") };
            match unprefix(prefix) {
                Err(e) => Got::Refused(e.to_string()),
                Ok(b) => match case.text("BASE45") {
                    Some(want) if want != b => Got::Differs("differs from BASE45".into()),
                    _ => Got::Ok,
                },
            }
        }
        Check::B45Decode => {
            let Some(b45) = case.base45() else { return missing("BASE45 or PREFIX") };
            match base45_decode(&b45) {
                Err(e) => Got::Refused(e.to_string()),
                Ok(bytes) => match case.hex("COMPRESSED").transpose()? {
                    Some(want) if want != bytes => Got::Differs("differs from COMPRESSED".into()),
                    _ => Got::Ok,
                },
            }
        }
        Check::Compression => {
            let Some(compressed) = case.compressed().transpose()? else {
                return missing("COMPRESSED, BASE45 or PREFIX");
            };
            match inflate(&compressed) {
                Err(e) => Got::Refused(e.to_string()),
                Ok(bytes) => match case.hex("COSE").transpose()? {
                    Some(want) if want != bytes => Got::Differs("differs from COSE".into()),
                    _ => Got::Ok,
                },
            }
        }
        Check::Decode => {
            // Every source the case has must decode, and agree with JSON.
            let mut sources = Vec::new();
            if let Some(cbor) = case.hex("CBOR").transpose()? {
                sources.push(("CBOR", hcert_of_cbor(&cbor)));
            }
            if let Some(cose) = case.hex("COSE").transpose()? {
                sources.push(("COSE", hcert_of_cose(&cose).map(|(_, h)| h)));
            }
            if sources.is_empty() {
                return missing("CBOR or COSE");
            }
            let mut got = Got::Ok;
            for (name, decoded) in sources {
                let this = match (decoded, case.json()) {
                    (Err(e), _) => Got::Refused(format!("{name}: {e}")),
                    (Ok(h), Some(json)) => match compare(&h, json) {
                        Got::Differs(d) => Got::Differs(format!("{name} vs JSON: {d}")),
                        other => other,
                    },
                    (Ok(_), None) => Got::Ok,
                };
                if !matches!(this, Got::Ok) {
                    got = this;
                    break;
                }
            }
            got
        }
        Check::ValidJson => {
            let Some(json) = case.json() else { return missing("JSON") };
            let decoded = match case.text("PREFIX") {
                Some(prefix) => unprefix(prefix)
                    .and_then(base45_decode)
                    .and_then(|c| inflate(&c))
                    .and_then(|cose| hcert_of_cose(&cose).map(|(_, h)| h)),
                None => match case.hex("CBOR").transpose()? {
                    Some(cbor) => hcert_of_cbor(&cbor),
                    None => return missing("PREFIX or CBOR"),
                },
            };
            match decoded {
                Ok(h) => compare(&h, json),
                Err(e) => Got::Refused(e.to_string()),
            }
        }
        Check::Verify => {
            let Some(cose) = case.cose().transpose()? else { return missing("COSE") };
            let Some(trust) = case.trust() else { return missing("TESTCTX.CERTIFICATE") };
            match trust {
                Err(e) => Got::Refused(e.to_string()),
                Ok(trust) => Got::of(decode_cose(&cose).and_then(|m| verify_signature(&m, &trust).map(|_| ()))),
            }
        }
        Check::Expiration => {
            let Some(cose) = case.cose().transpose()? else { return missing("COSE") };
            let Some(signer) = case.signer() else { return missing("TESTCTX.CERTIFICATE") };
            let Some(now) = case.clock_ms() else { return missing("readable VALIDATIONCLOCK") };
            Got::of(signer.and_then(|signer| {
                let (claims, _) = hcert_of_cose(&cose)?;
                check_expiration(&claims, &signer, now)
            }))
        }
        Check::KeyUsage => {
            let Some(cose) = case.cose().transpose()? else { return missing("COSE") };
            let Some(signer) = case.signer() else { return missing("TESTCTX.CERTIFICATE") };
            Got::of(signer.and_then(|signer| {
                let (_, hcert) = hcert_of_cose(&cose)?;
                check_key_usage(certificate_type(&hcert)?, &signer)
            }))
        }
        Check::Schema => {
            let hcert = match case.cose().transpose()? {
                Some(cose) => hcert_of_cose(&cose).map(|(_, h)| h),
                None => match case.hex("CBOR").transpose()? {
                    Some(cbor) => hcert_of_cbor(&cbor),
                    None => return missing("COSE, PREFIX or CBOR"),
                },
            };
            Got::of(hcert.and_then(|h| check_schema(&h)))
        }
        Check::ValidObject => {
            let Some(json) = case.json() else { return missing("JSON") };
            Got::of(check_schema(json))
        }
        Check::Picture | Check::Encode | Check::EndToEnd => {
            return Err("not a per-step check".to_string());
        }
    })
}

/// `verify` on the QR text, judged against every pipeline flag of the case.
fn run_end_to_end(case: &Case) -> Result<(Option<bool>, Got), String> {
    let Some(prefix) = case.text("PREFIX") else { return Err("no input: no PREFIX".into()) };
    let Some(now) = case.clock_ms() else { return Err("no input: no VALIDATIONCLOCK".into()) };
    let Some(trust) = case.trust() else { return Err("no input: no CERTIFICATE".into()) };
    let flags: Vec<(Check, bool)> =
        Check::PIPELINE.iter().filter_map(|&c| case.expected_by_spec(c).map(|e| (c, e))).collect();
    if flags.is_empty() {
        return Err("no pipeline flag to judge by".into());
    }
    let any_false = flags.iter().any(|(_, e)| !e);
    let result = trust.map_err(|e| e.to_string()).map(|t| verify(prefix, &t, now));
    let result = match result {
        Ok(r) => r,
        Err(e) => return Ok((Some(!any_false), Got::Refused(format!("trust list: {e}")))),
    };
    match result {
        Ok(_) => Ok((Some(!any_false), Got::Ok)),
        Err(e) => {
            let vouched = Check::vouching_for(e.step()).iter().any(|c| case.expected_by_spec(*c) == Some(true));
            if vouched {
                // The data says this step passes: a refusal here disagrees.
                Ok((Some(true), Got::Refused(e.to_string())))
            } else if any_false {
                Ok((Some(false), Got::Refused(e.to_string())))
            } else {
                Err(format!("refused at {}, which no flag of the case judges", e.step()))
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    disputed: usize,
    known: usize,
    not_performed: usize,
    no_input: usize,
}

fn collect_json_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            out.push(path);
        }
    }
    Ok(())
}

fn data_dir() -> PathBuf {
    match std::env::var_os("GATE_DCC_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/dgc-testdata"),
    }
}

/// Where to get the data, for the skip message.
const WHERE_TO_GET: &str = "the public EU DCC test data (dgc-testdata, Apache-2.0: \
    git clone https://github.com/eu-digital-green-certificates/dgc-testdata) placed at \
    ../shared/conformance/dgc-testdata beside the checkout, or anywhere with GATE_DCC_CONFORMANCE_DIR=<folder>";

#[test]
fn dgc_testdata_conformance() {
    let dir = data_dir();
    let wanted = std::env::var("GATE_DCC_CONFORMANCE").unwrap_or_default();
    if wanted == "skip" {
        println!("conformance: SKIPPED by request (GATE_DCC_CONFORMANCE=skip)");
        return;
    }
    if !dir.is_dir() {
        if wanted == "require" {
            panic!(
                "conformance data required (GATE_DCC_CONFORMANCE=require) but not found at {}; it is {WHERE_TO_GET}",
                dir.display()
            );
        }
        let note = format!(
            "conformance: SKIPPED: no DCC conformance data at {}. To run it, use {WHERE_TO_GET}. \
             `.ci/run` requires it (GATE_DCC_CONFORMANCE=require).",
            dir.display()
        );
        // Straight to stderr, past the test harness's capture, so that a
        // passing `cargo test` still shows it.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{note}");
        return;
    }
    let known = KnownIssues::load(&dir).unwrap_or_else(|e| panic!("known_issues.csv: {e}"));

    let mut files = Vec::new();
    collect_json_files(&dir, &mut files).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files.sort();

    let mut tallies: BTreeMap<Check, Tally> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut known_runs: BTreeMap<(String, &'static str), (usize, usize, Vec<String>)> = BTreeMap::new();
    let mut disputes = Vec::new();
    let mut not_cases = Vec::new();
    let mut unreadable = Vec::new();
    let mut ignored_keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut no_input_reasons: BTreeMap<(Check, String), usize> = BTreeMap::new();
    let mut cases = 0;

    for path in &files {
        let rel = path.strip_prefix(&dir).unwrap_or(path).to_string_lossy().replace('\\', "/");
        let parts: Vec<&str> = rel.split('/').collect();
        // Cases live at <CC>/[version/]2DCode/<raw>/<name>.json.
        let in_2dcode = parts.len() >= 4 && parts[parts.len() - 3].eq_ignore_ascii_case("2DCode");
        if !in_2dcode {
            not_cases.push(rel);
            continue;
        }
        let doc = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Json>(t.trim_start_matches('\u{feff}')).map_err(|e| e.to_string()));
        let doc = match doc {
            Ok(Json::Object(doc)) if doc.contains_key("EXPECTEDRESULTS") => doc,
            Ok(_) => {
                unreadable.push(format!("{rel}: no EXPECTEDRESULTS object"));
                continue;
            }
            Err(e) => {
                unreadable.push(format!("{rel}: {e}"));
                continue;
            }
        };
        cases += 1;
        let stem = Path::new(&rel).file_stem().map(|s| s.to_string_lossy().to_string());
        let case = Case { country: parts[0].to_string(), stem: stem.unwrap_or_default(), rel: rel.clone(), doc };
        if let Some(Json::Object(results)) = case.doc.get("EXPECTEDRESULTS") {
            for (key, value) in results {
                let ours = Check::FLAGS.iter().any(|c| c.flag() == key) && value.is_boolean();
                if !ours {
                    *ignored_keys.entry(key.clone()).or_default() += 1;
                }
            }
        }

        let mut outcomes: Vec<(Check, Option<bool>, Outcome)> = Vec::new();
        for check in Check::FLAGS {
            let Some(expected) = case.expected(check) else { continue };
            if let Some(why) = check.not_performed() {
                outcomes.push((check, Some(expected), Outcome::Skipped(why.to_string())));
                continue;
            }
            let got = run_check(&case, check);
            let issue = known.reason(check, &case.country, &case.stem);
            let dispute = disputed(&case.rel, check);
            let outcome = match (got, issue) {
                (Err(why), _) => Outcome::Skipped(why),
                (Ok(got), None) if dispute.is_some() => {
                    let d = dispute.expect("checked just above");
                    if matches!(got, Got::Ok) == d.spec_says {
                        Outcome::Disputed { why: d.why, got: got.describe() }
                    } else {
                        Outcome::Mismatch {
                            expected: d.spec_says,
                            got: format!("{} (a disputed case: the spec's verdict is not ours)", got.describe()),
                        }
                    }
                }
                (Ok(got), Some(reason)) => Outcome::KnownIssue {
                    reason: reason.to_string(),
                    agrees: matches!(got, Got::Ok) == expected,
                    got: got.describe(),
                },
                (Ok(Got::Ok), None) if expected => Outcome::Pass,
                (Ok(Got::Refused(_)), None) if !expected => Outcome::Pass,
                (Ok(got), None) => Outcome::Mismatch { expected, got: got.describe() },
            };
            outcomes.push((check, Some(expected), outcome));
        }
        let end_to_end = match run_end_to_end(&case) {
            Err(why) => Outcome::Skipped(why),
            Ok((expected, got)) => {
                let issue = Check::PIPELINE
                    .iter()
                    .filter(|c| case.expected(**c).is_some())
                    .find_map(|c| known.reason(*c, &case.country, &case.stem));
                let expected = expected.unwrap_or(true);
                let agrees = matches!(got, Got::Ok) == expected;
                match issue {
                    Some(reason) => Outcome::KnownIssue { reason: reason.to_string(), agrees, got: got.describe() },
                    None if agrees => Outcome::Pass,
                    None => Outcome::Mismatch { expected, got: got.describe() },
                }
            }
        };
        outcomes.push((Check::EndToEnd, None, end_to_end));

        for (check, expected, outcome) in outcomes {
            let tally = tallies.entry(check).or_default();
            match outcome {
                Outcome::Pass => tally.passed += 1,
                Outcome::Mismatch { expected, got } => {
                    tally.failed += 1;
                    mismatches.push(format!(
                        "  {rel}  {}  expected {}  got {got}",
                        check.flag(),
                        if expected { "pass" } else { "fail" }
                    ));
                }
                Outcome::KnownIssue { reason, got, agrees } => {
                    tally.known += 1;
                    let group = known_runs.entry((reason, check.flag())).or_default();
                    if agrees {
                        group.0 += 1;
                    } else {
                        group.1 += 1;
                        if group.2.len() < 3 {
                            group.2.push(format!("{rel}: {got}"));
                        }
                    }
                }
                Outcome::Disputed { why, got } => {
                    tally.disputed += 1;
                    disputes.push(format!(
                        "  {rel}  {}  expected {}  got {got}\n      why: {why}",
                        check.flag(),
                        if expected == Some(true) { "pass" } else { "fail" },
                    ));
                }
                Outcome::Skipped(_) if check.not_performed().is_some() => tally.not_performed += 1,
                Outcome::Skipped(why) => {
                    tally.no_input += 1;
                    *no_input_reasons.entry((check, why)).or_default() += 1;
                }
            }
        }
    }

    let mut report = String::new();
    let _ = writeln!(report, "\nDCC conformance: {} ({cases} cases)", dir.display());
    let _ = writeln!(
        report,
        "{:<26} {:<32} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}",
        "flag", "checked with", "passed", "failed", "disputed", "skip:kn", "skip:n/a", "skip:in"
    );
    let mut total = Tally::default();
    for (check, t) in &tallies {
        let _ = writeln!(
            report,
            "{:<26} {:<32} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}",
            check.flag(),
            check.ours(),
            t.passed,
            t.failed,
            t.disputed,
            t.known,
            t.not_performed,
            t.no_input
        );
        total.passed += t.passed;
        total.failed += t.failed;
        total.disputed += t.disputed;
        total.known += t.known;
        total.not_performed += t.not_performed;
        total.no_input += t.no_input;
    }
    let _ = writeln!(
        report,
        "{:<26} {:<32} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8}",
        "total", "", total.passed, total.failed, total.disputed, total.known, total.not_performed, total.no_input
    );
    let _ = writeln!(
        report,
        "disputed = the flag contradicts the spec or the case's own data (listed with the \
         reason; our verdict must stay the spec's); skip:kn = listed in known_issues.csv \
         (run anyway, summarised below); skip:n/a = step not performed by this crate; \
         skip:in = the case lacks the step's input"
    );
    let _ = writeln!(report, "\nnot performed:");
    for check in Check::FLAGS {
        if let Some(why) = check.not_performed() {
            let _ = writeln!(report, "  {:<26} {why}", check.flag());
        }
    }
    if !no_input_reasons.is_empty() {
        let _ = writeln!(report, "\nskipped for want of input:");
        for ((check, why), n) in &no_input_reasons {
            let _ = writeln!(report, "  {:<26} {n:>4}  {why}", check.flag());
        }
    }
    if !ignored_keys.is_empty() {
        let _ = writeln!(report, "\nEXPECTEDRESULTS keys ignored (misspelled, nested or not boolean):");
        for (key, n) in &ignored_keys {
            let _ = writeln!(report, "  {key}: {n}");
        }
    }
    if !not_cases.is_empty() {
        let _ = writeln!(report, "\nJSON files outside */2DCode/*/ (not test cases, not run):");
        for rel in &not_cases {
            let _ = writeln!(report, "  {rel}");
        }
    }
    if !known_runs.is_empty() {
        let _ = writeln!(
            report,
            "\nknown issues ({} flag checks), run for information only \
             (agree / disagree with the flag, first disagreements):",
            total.known
        );
        for ((reason, flag), (agree, disagree, samples)) in &known_runs {
            let _ = writeln!(report, "  {reason}  {flag}: {agree} / {disagree}");
            for sample in samples {
                let _ = writeln!(report, "      {sample}");
            }
        }
    }
    if !disputes.is_empty() {
        let _ = writeln!(report, "\ndisputed ({}):", disputes.len());
        for line in &disputes {
            let _ = writeln!(report, "{line}");
        }
    }
    if !unreadable.is_empty() {
        let _ = writeln!(report, "\nunreadable cases ({}):", unreadable.len());
        for line in &unreadable {
            let _ = writeln!(report, "  {line}");
        }
    }
    // A dispute whose case or flag is gone from the data is stale.
    for d in DISPUTED {
        let used = disputes.iter().any(|line| line.starts_with(&format!("  {}  {} ", d.file, d.check.flag())));
        if !used {
            mismatches.push(format!("  {}  {}  stale dispute: the case or its flag is gone", d.file, d.check.flag()));
        }
    }
    let _ = writeln!(report, "\nmismatches: {}", mismatches.len());
    for line in &mismatches {
        let _ = writeln!(report, "{line}");
    }
    println!("{report}");
    assert!(cases > 0, "no test case found under {}", dir.display());
    assert!(unreadable.is_empty(), "{} unreadable cases", unreadable.len());
    assert!(mismatches.is_empty(), "{} mismatches (listed above)", mismatches.len());
}
