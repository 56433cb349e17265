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

#[test]
fn pass_keygen_and_issue_make_a_pass_the_gate_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = site(dir.path());
    let key = dir.path().join("platform.key");
    let out = gatectl(&["pass", "keygen", key.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{:?}", text(&out));
    let public = text(&out)
        .0
        .lines()
        .find_map(|l| l.strip_prefix("public key (for [passes] platform_keys): "))
        .map(str::to_owned)
        .expect("public key");
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let out = gatectl(&[
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
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let token = text(&out).0.trim().to_owned();
    assert!(token.starts_with("VP1."));
    assert!(!token.contains("11010519491231002X"));
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&public, &mut raw).expect("hex");
    let keys = gate_pass::PlatformKeys::from_raw(&[raw]).expect("key");
    let pass = keys.verify(&token, "heshan-c03").expect("the gate accepts it");
    assert_eq!(
        (pass.pass_id.as_str(), pass.max_uses, pass.gates.as_slice()),
        ("vp-7", 1, ["east-1".to_owned()].as_slice())
    );
}
