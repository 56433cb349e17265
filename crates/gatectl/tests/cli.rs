//! `gatectl` as a technician runs it: keys, identity import (all or
//! nothing), mode override, visitor passes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gatectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatectl")).args(args).output().expect("run gatectl")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A config in `dir` plus its site key, made with `gatectl keygen`.
fn site(dir: &Path) -> PathBuf {
    let config = dir.join("gated.toml");
    std::fs::write(
        &config,
        "[site]\nid = \"heshan-c03\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"state/gated.db\"\n[identity]\nhmac_key_file = \"site.key\"\n",
    )
    .expect("config");
    let out = gatectl(&["keygen", dir.join("site.key").to_str().expect("utf-8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    config
}

#[test]
fn keygen_writes_an_owner_only_key_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("site.key");
    let out = gatectl(&["keygen", key.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let content = std::fs::read_to_string(&key).expect("key");
    assert_eq!(content.trim().len(), 64);
    assert!(content.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    let again = gatectl(&["keygen", key.to_str().expect("utf-8")]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&key).expect("key"), content, "the old key is untouched");
}

#[test]
fn import_is_all_or_nothing_and_keeps_numbers_out_of_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let cfg = config.to_str().expect("utf-8");
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "person_id,category,id_number,name,valid_from,valid_to\n\
         R-1,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n\
         R-2,resident,350203199001011237,李四,2024-01-01,2030-12-31\n",
    )
    .expect("csv");
    let out = gatectl(&["identity", "import", "--config", cfg, bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("bad.csv:3: id_number 350203********1237"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(!stderr.contains("350203199001011237"), "an ID number in clear: {stderr}");
    let db = dir.path().join("state/gated.db");
    if db.exists() {
        assert_eq!(gate_store_people(&db), 0);
    }

    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "person_id,category,id_number,name,valid_from,valid_to\n\
         R-1,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n\
         W-1,worker,11010519491231002X,李四,2024-01-01,2030-12-31\n",
    )
    .expect("csv");
    let out = gatectl(&["identity", "import", "--config", cfg, good.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("imported 2 people"));
    assert_eq!(gate_store_people(&db), 2);
    for file in std::fs::read_dir(dir.path().join("state")).expect("state") {
        let bytes = std::fs::read(file.expect("entry").path()).expect("read");
        for number in ["35020319900101123X", "11010519491231002X"] {
            assert!(!bytes.windows(number.len()).any(|w| w == number.as_bytes()), "ID number in clear");
        }
    }
}

/// People in the identity table, read with the store crate.
fn gate_store_people(db: &Path) -> u64 {
    gate_store::Store::open(db).and_then(|s| s.person_count()).expect("count")
}

#[test]
fn mode_set_is_recorded_with_who_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let cfg = config.to_str().expect("utf-8");
    // The operator comes from the uid, whatever the environment claims.
    let out = Command::new(env!("CARGO_BIN_EXE_gatectl"))
        .args(["mode", "set", "--config", cfg, "wartime", "--reason", "district order 17"])
        .env("USER", "mallory")
        .env("LOGNAME", "mallory")
        .env_remove("SUDO_USER")
        .output()
        .expect("run gatectl");
    assert!(out.status.success(), "{:?}", text(&out));
    let login = Command::new("id").arg("-un").output().expect("id -un");
    let login = String::from_utf8_lossy(&login.stdout).trim().to_owned();
    let (stdout, _) = text(&out);
    assert!(stdout.contains(&format!("mode set to wartime by technician:{login} ")), "{stdout}");
    assert!(!stdout.contains("mallory"), "{stdout}");
    let show = gatectl(&["mode", "show", "--config", cfg]);
    let (stdout, _) = text(&show);
    assert!(stdout.contains("mode: wartime"), "{stdout}");
    assert!(stdout.contains("district order 17"), "{stdout}");
    assert!(stdout.contains(&format!("set by: technician:{login} ")), "{stdout}");
    let bad = gatectl(&["mode", "set", "--config", cfg, "lockdown", "--reason", "x"]);
    assert_eq!(bad.status.code(), Some(64));
    let store = gate_store::Store::open(&dir.path().join("state/gated.db")).expect("store");
    assert_eq!(store.outbox_stats().expect("stats").depth, 1, "the override is an event");
}

fn issue(config: &Path, key: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pass",
        "issue",
        "--config",
        config.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--pass-id",
        "vp-7",
        "--host",
        "R-1",
        "--visitor-id-number",
        "11010519491231002X",
        "--gates",
        "east-1",
        "--uses",
        "1",
    ];
    args.extend_from_slice(extra);
    gatectl(&args)
}

#[test]
fn pass_keygen_and_issue_make_a_pass_the_gate_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let key = dir.path().join("platform.key");
    let out = gatectl(&["pass", "keygen", key.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    let spec = text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("public key (for [platform] signing_keys): "))
        .map(str::to_owned)
        .expect("public key");
    let spec = gate_envelope::parse_key_spec(&spec).expect("a KEYID:HEX entry");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let out = issue(&config, &key, &[]);
    assert!(out.status.success(), "{:?}", text(&out));
    let token = text(&out).0.trim().to_owned();
    assert!(token.starts_with("VP2."), "sealed in the signed envelope: {token}");
    assert!(!token.contains("11010519491231002X"));
    // Verified as a gate does: the keys of `[platform] signing_keys`,
    // through the envelope's one verification path.
    let keys = gate_pass::PlatformKeys::from_specs(vec![spec.clone()]);
    let pass = keys.verify(&token, "heshan-c03").expect("the gate accepts it");
    assert_eq!(
        (pass.pass_id.as_str(), pass.max_uses, pass.gates.as_slice(), pass.kid.as_str()),
        ("vp-7", 1, ["east-1".to_owned()].as_slice(), spec.key_id.as_str())
    );
    // A gate that still lists the key the deprecated way accepts it too.
    let legacy = gate_pass::PlatformKeys::from_raw(&[spec.key.to_bytes()]).expect("key");
    assert!(legacy.verify(&token, "heshan-c03").is_ok());
    // Under the key id a platform already uses for this key.
    let out = issue(&config, &key, &["--key-id", "heshan-platform-2"]);
    let token = text(&out).0.trim().to_owned();
    let renamed = gate_envelope::KeySpec { key_id: "heshan-platform-2".into(), key: spec.key };
    assert_eq!(
        gate_pass::PlatformKeys::from_specs(vec![renamed]).verify(&token, "heshan-c03").map(|p| p.kid),
        Ok("heshan-platform-2".to_owned())
    );
    assert!(keys.verify(&token, "heshan-c03").is_err(), "the gate knows the key by another id");
}

#[test]
fn a_forged_pass_and_a_pass_for_another_site_are_refused() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let key = dir.path().join("platform.key");
    let out = gatectl(&["pass", "keygen", key.to_str().expect("utf-8")]);
    let spec = text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("public key (for [platform] signing_keys): "))
        .and_then(|s| gate_envelope::parse_key_spec(s).ok())
        .expect("public key");
    let keys = gate_pass::PlatformKeys::from_specs(vec![spec.clone()]);

    // Forged: a genuine pass with its use count raised, re-signed by
    // someone else's key under the platform's key id.
    let out = issue(&config, &key, &[]);
    let token = text(&out).0.trim().to_owned();
    let bytes = b64.decode(token.strip_prefix("VP2.").expect("VP2")).expect("base64url");
    let mut raised = bytes.clone();
    let at = raised.windows(12).position(|w| w == b"\"max_uses\":1").expect("the use count in the payload");
    raised[at + 11] = b'9';
    let forged = format!("VP2.{}", b64.encode(&raised));
    assert_eq!(
        keys.verify(&forged, "heshan-c03"),
        Err(gate_pass::PassError::Envelope(gate_envelope::Refusal::BadSignature))
    );
    let other = dir.path().join("other.key");
    assert!(gatectl(&["pass", "keygen", other.to_str().expect("utf-8")]).status.success());
    let out = issue(&config, &other, &["--key-id", &spec.key_id]);
    let impostor = text(&out).0.trim().to_owned();
    assert_eq!(
        keys.verify(&impostor, "heshan-c03"),
        Err(gate_pass::PassError::Envelope(gate_envelope::Refusal::BadSignature))
    );

    // Genuine, but issued for another site.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let other_site = site(elsewhere.path());
    let toml = std::fs::read_to_string(&other_site).expect("config").replace("heshan-c03", "liwan-a01");
    std::fs::write(&other_site, toml).expect("config");
    let out = issue(&other_site, &key, &[]);
    let token = text(&out).0.trim().to_owned();
    assert!(keys.verify(&token, "liwan-a01").is_ok());
    assert_eq!(
        keys.verify(&token, "heshan-c03"),
        Err(gate_pass::PassError::Envelope(gate_envelope::Refusal::WrongSite))
    );

    // A key file others may read is not used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = issue(&config, &key, &[]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success() && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[test]
fn a_gbk_file_is_detected_and_said_and_errors_echo_the_bad_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let cfg = config.to_str().expect("utf-8");
    // As Excel saves "CSV" on a Chinese Windows machine: GBK.
    let sample = "person_id,category,id_number,name,valid_from,valid_to\n\
                R-1,resident,35020319900101123X,陈建国,2024-01-01,2030-12-31\n";
    let gbk: Vec<u8> = gbk_encode(sample);
    let file = dir.path().join("excel.csv");
    std::fs::write(&file, &gbk).expect("csv");
    let out = gatectl(&["identity", "import", "--config", cfg, file.to_str().expect("utf-8")]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("excel.csv: not UTF-8; read as GBK (GB 18030)"), "{stderr}");
    assert!(stdout.contains("imported 1 people"), "{stdout}");
    // Told UTF-8, the same file is refused with a hint.
    let out = gatectl(&["identity", "import", "--config", cfg, "--encoding", "utf-8", file.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("try --encoding gbk"), "{stderr}");
    // Told GBK: read without a guess to report.
    let out = gatectl(&["identity", "import", "--config", cfg, "--encoding", "gbk", file.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert!(out.status.success() && !stderr.contains("read as GBK"), "{stderr}");

    let bad = dir.path().join("dates.csv");
    std::fs::write(
        &bad,
        "person_id,category,id_number,name,valid_from,valid_to\nR-1,resident,35020319900101123X,a,2024/01/01,2030-12-31\n",
    )
    .expect("csv");
    let out = gatectl(&["identity", "import", "--config", cfg, bad.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("dates.csv:2: valid_from \"2024/01/01\": "), "{stderr}");
}

/// GBK bytes of `text` (its Chinese characters are all in GB 2312's range).
fn gbk_encode(text: &str) -> Vec<u8> {
    // 陈建国 in GBK; everything else in the sample is ASCII.
    text.replace("陈建国", "\u{0}")
        .bytes()
        .flat_map(|b| if b == 0 { vec![0xB3, 0xC2, 0xBD, 0xA8, 0xB9, 0xFA] } else { vec![b] })
        .collect()
}

#[test]
fn keygen_into_a_missing_folder_says_why_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("no-such-folder/site.key");
    let out = gatectl(&["keygen", key.to_str().expect("utf-8")]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-folder/site.key"), "{stderr}");
}
