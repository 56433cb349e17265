//! The daemon as a process: `check-config` exit codes and messages,
//! `--version`, refusing a readable key file, and the MQTT last will when the
//! process dies without saying goodbye.

use gate_proto::v1 as pb;
use gate_tests::{Mosquitto, STATUS_TOPIC, Subscriber};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn gated() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gated"))
}

fn minimal_config(dir: &Path, mqtt_port: u16) -> std::path::PathBuf {
    let path = dir.join("gated.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\nid = \"heshan-c03\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"state/gated.db\"\n\
             [mqtt]\nport = {mqtt_port}\nkeep_alive_s = 5\n[identity]\nhmac_key_file = \"site.key\"\n"
        ),
    )
    .expect("write config");
    path
}

#[test]
fn check_config_accepts_the_example_and_refuses_a_bad_file_with_64() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/gated.example.toml");
    let ok = gated().args(["check-config", example]).output().expect("run gated");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).ends_with("ok\n"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[site]\nid = \"a/b\"\n[gate]\nid = \"g\"\nlane = \"bus\"\n[store]\npath = \"x\"\n[mqtt]\nprot = 1\n",
    )
    .expect("write");
    let out = gated().args(["check-config"]).arg(&bad).output().expect("run gated");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    for expected in [
        format!("{file}:2:6: site.id: invalid site id \"a/b\""),
        format!("{file}:5:8: gate.lane: expected \"pedestrian\" or \"vehicle\", found \"bus\""),
        format!("{file}:9:1: mqtt.prot: unknown key `prot`"),
        format!("{file}:1:1: identity: missing required table `[identity]`"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");

    // Running with a bad file refuses to start, with the same status.
    let run = gated().arg("--config").arg(&bad).output().expect("run gated");
    assert_eq!(run.status.code(), Some(64));
}

/// A technician who types `--config`, as for the daemon itself, gets the
/// same check as with the path alone; a bad file still exits 64.
#[test]
fn check_config_takes_the_path_alone_or_after_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = minimal_config(dir.path(), 1);
    for args in [
        vec!["check-config".as_ref(), config.as_os_str()],
        vec!["check-config".as_ref(), "--config".as_ref(), config.as_os_str()],
    ] {
        let out = gated().args(&args).output().expect("run gated");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{}: ok", config.display()));
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[site]\nid = 3\n").expect("write");
    let out =
        gated().args(["check-config".as_ref(), "--config".as_ref(), bad.as_os_str()]).output().expect("run gated");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    let both = gated()
        .args(["check-config".as_ref(), config.as_os_str(), "--config".as_ref(), bad.as_os_str()])
        .output()
        .expect("run gated");
    assert_eq!(both.status.code(), Some(2), "a path and --config together are refused");
}

#[test]
fn version_is_printed() {
    let out = gated().arg("--version").output().expect("run gated");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("gated {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = minimal_config(dir.path(), 1);
    let key = dir.path().join("site.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = gated().arg("--config").arg(&config).output().expect("run gated");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_marks_a_killed_gate_offline() -> anyhow::Result<()> {
    let broker = Mosquitto::start()?;
    let sub = Subscriber::connect(broker.port(), "village/#").await?;
    let dir = tempfile::tempdir()?;
    let config = minimal_config(dir.path(), broker.port());
    gate_config_key(dir.path());
    let mut child = gated().arg("--config").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let online = |s: &Subscriber| s.last_status(STATUS_TOPIC).is_some_and(|st: pb::GateStatus| st.online);
    let waited = sub.wait_until(Duration::from_secs(10), "the online status", online).await;
    if waited.is_err() {
        let _ = child.kill();
    }
    waited?;
    // SIGKILL: no goodbye, so the broker publishes the last will.
    child.kill()?;
    child.wait()?;
    sub.wait_until(Duration::from_secs(10), "the last will", |s| {
        s.last_status(STATUS_TOPIC).is_some_and(|st| !st.online)
    })
    .await?;
    let will = sub.last_status(STATUS_TOPIC).expect("status");
    assert_eq!((will.site_id.as_str(), will.gate_id.as_str()), ("heshan-c03", "east-1"));
    Ok(())
}

/// A site key with the right permissions.
fn gate_config_key(dir: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("site.key"))
        .expect("key file");
    writeln!(f, "{}", "cd".repeat(32)).expect("write key");
}

/// The daemon logs the mode in force at start and every change made behind
/// its back (here through the store, as `gatectl mode set` does from another
/// process), with who and why, stamped in site time with the offset shown.
#[test]
fn mode_changes_show_in_the_daemon_log_in_site_time() -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir()?;
    // Port 1: no broker; the daemon runs offline.
    let config = minimal_config(dir.path(), 1);
    gate_config_key(dir.path());
    let mut child = gated()
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |needle: &str| -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        anyhow::bail!("no log line with {needle:?}; the log was:\n{}", seen.join("\n"))
    };
    let result = (|| -> anyhow::Result<()> {
        let start = wait_line("site mode in force")?;
        assert!(start.contains("mode=\"normal\"") || start.contains("mode=normal"), "{start}");
        // China is the default site offset: every line says +08:00.
        assert!(start.split_whitespace().next().is_some_and(|t| t.ends_with("+08:00")), "{start}");
        let loaded = gate_config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut store = gate_store::Store::open(&loaded.store.path)?;
        let context = gate_sync::EventContext {
            site_id: "heshan-c03".into(),
            gate_id: "east-1".into(),
            lane: loaded.gate.lane,
            direction: loaded.gate.direction,
            policy_version: loaded.policy.version.clone(),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        gate_sync::set_mode_by_technician(
            &mut store,
            &context,
            gate_core::Mode::Wartime,
            "technician:li.wei",
            "drill",
            now,
        )?;
        let changed = wait_line("site mode changed")?;
        for part in ["wartime", "previous", "normal", "technician:li.wei", "drill"] {
            assert!(changed.contains(part), "{part:?} missing in {changed}");
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
