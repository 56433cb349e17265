//! `gatectl` against a running daemon: each control command run as a
//! process against a daemon running in this test on simulated hardware
//! (hw-sim on pseudo-terminals), the socket refusing users without
//! permission, and the messages when no daemon runs.
//!
//! No broker is started: the port is closed, so every event stays in the
//! outbox where `gatectl outbox` and the assertions can see it.

use anyhow::{Context, Result, bail};
use gate_proto::v1 as pb;
use gate_tests::{FixtureOptions, GateFixture, RunningDaemon, free_port, init_test_logging, resident};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const ZHANG: &str = "35020319900101123X";
const ZHANG_MASKED: &str = "350203********123X";
/// Valid check character, but nobody in the identity table.
const STRANGER: &str = "440524188001010014";
/// A visitor whose entry ended in 2024.
const VISITOR: &str = "11010519491231002X";
/// Wrong check character.
const FORGED: &str = "350203199001011237";
const WAIT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

struct Gate {
    fx: GateFixture,
    daemon: RunningDaemon,
    config: String,
    socket: PathBuf,
}

/// A daemon on simulated devices, its control socket up and both devices
/// connected.
async fn running_gate(extra_toml: &str) -> Result<Gate> {
    running_gate_with(FixtureOptions { extra_toml: extra_toml.to_owned(), ..FixtureOptions::default() }).await
}

async fn running_gate_with(options: FixtureOptions) -> Result<Gate> {
    init_test_logging();
    let fx = GateFixture::build(free_port(), &[resident("p-001", ZHANG, "张三")], options)?;
    let config = fx.config();
    let socket = config.control.socket.clone();
    let daemon = RunningDaemon::start(config);
    wait_for("the control socket and both devices", || {
        socket.exists()
            && daemon.observed.id_card.connected.load(Ordering::Relaxed)
            && daemon.observed.gate_io.connected.load(Ordering::Relaxed)
    })
    .await?;
    let config = fx.config_path.to_str().context("utf-8 path")?.to_owned();
    Ok(Gate { fx, daemon, config, socket })
}

async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn gatectl() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_gatectl"));
    command.env_remove("SUDO_USER").kill_on_drop(true);
    command
}

async fn run(args: &[&str]) -> Result<Output> {
    Ok(tokio::time::timeout(Duration::from_secs(30), gatectl().args(args).output()).await.context("gatectl hung")??)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_no_clear_ids(output: &str) {
    for id in [ZHANG, STRANGER, FORGED] {
        assert!(!output.contains(id), "an ID number in clear in:\n{output}");
    }
}

fn coil_on_writes(fx: &GateFixture, coil: u16) -> usize {
    fx.gate.coil_writes().iter().filter(|w| w.coil == coil && w.on).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_outbox_report_the_running_daemon() -> Result<()> {
    let gate = running_gate("").await?;
    gate.fx.present_card(ZHANG, "张三").await?;
    wait_for("the pass", || gate.daemon.observed.decisions.passed.load(Ordering::Relaxed) == 1).await?;
    wait_for("the passage", || gate.daemon.observed.decisions.passages.load(Ordering::Relaxed) == 1).await?;

    let out = run(&["status", "--config", &gate.config]).await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("gated {} at heshan-c03/east-1, up ", env!("CARGO_PKG_VERSION"))), "{stdout}");
    assert!(stdout.contains("mode:          normal (policy auto-"), "{stdout}");
    assert!(
        stdout.contains(
            "identity:      1 people (1 residents, 0 workers, 0 visitors); credentials: 1 ID cards, 0 IC cards, 0 plates"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("               platform version 0, never synced from the platform"), "{stdout}");
    assert!(stdout.contains("health table:  version 0, never synced from the platform"), "{stdout}");
    assert!(stdout.contains("broker:        NOT connected to 127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("decisions:     1 passed, 0 blocked, 0 failed"), "{stdout}");
    assert!(stdout.contains("decision loop: last turn"), "{stdout}");
    for device in ["id_card", "gate"] {
        let line = stdout.lines().find(|l| l.starts_with(&format!("  {device} "))).expect("a device line");
        assert!(line.contains(" connected "), "{line}");
    }
    assert_no_clear_ids(&stdout);

    let out = run(&["status", "--config", &gate.config, "--json"]).await?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["decisions"]["passed"], 1);
    assert_eq!(status["mode"], "normal");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> =
        status["devices"].as_array().expect("devices").iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["id_card", "gate"]);
    assert!(status["outbox"]["depth"].as_u64().expect("depth") >= 1);

    // The broker is down: the decision (and the passage the simulated
    // turnstile reported) wait in the outbox.
    let out = run(&["outbox", "--config", &gate.config]).await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let depth = gate.fx.queued_events().len();
    assert!(stdout.starts_with(&format!("outbox: {depth} queued, oldest ")), "{stdout}");
    assert!(stdout.contains("village/heshan-c03/east-1/events"), "{stdout}");
    let out = run(&["outbox", "--config", &gate.config, "--json"]).await?;
    let outbox: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(outbox["depth"].as_u64(), Some(depth as u64));
    assert_eq!(outbox["topics"][0]["topic"], "village/heshan-c03/east-1/events");

    // A technician's import shows as the table's last change, with who; an
    // expired visitor is looked up as expired, with the dates, exit 1.
    let csv = gate.fx.dir.path().join("visitors.csv");
    std::fs::write(
        &csv,
        format!(
            "person_id,category,id_number,name,valid_from,valid_to\nV-1,visitor,{VISITOR},李四,2024-01-01,2024-06-30\n"
        ),
    )?;
    let out = run(&["identity", "import", "--config", &gate.config, csv.to_str().context("utf-8")?]).await?;
    assert!(out.status.success(), "{:?}", text(&out));
    let out = run(&["status", "--config", &gate.config]).await?;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("identity:      2 people (1 residents, 0 workers, 1 visitors)"), "{stdout}");
    let login = std::process::Command::new("id").arg("-un").output()?;
    let login = String::from_utf8_lossy(&login.stdout).trim().to_owned();
    assert!(stdout.contains(&format!("imported from a CSV file by technician:{login} (1 people)")), "{stdout}");
    let out = run(&["lookup", "--config", &gate.config, "--id-number", VISITOR]).await?;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "a block exits 1: {stdout}");
    assert!(stdout.contains("BLOCK (expired)"), "{stdout}");
    assert!(stdout.contains("valid:    2024-01-01 to 2024-06-30"), "{stdout}");
    assert!(stdout.contains("state:    expired"), "{stdout}");
    assert!(!stdout.contains("active"), "an expired visitor is not active: {stdout}");
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_explains_without_recording_or_unlocking() -> Result<()> {
    let gate =
        running_gate_with(FixtureOptions { gate_keys: gate_tests::MARKER_LAMP_KEYS.into(), ..Default::default() })
            .await?;
    let events_before = gate.fx.queued_events().len();

    let out = run(&["lookup", "--config", &gate.config, "--id-number", ZHANG]).await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("id_number {ZHANG_MASKED} at the entry side: PASS")), "{stdout}");
    // The name as the gate keeps it: masked, never 张三.
    assert!(stdout.contains("person:   p-001 (resident, 张*)"), "{stdout}");
    assert!(!stdout.contains("张三"), "{stdout}");
    assert!(stdout.contains("identity table: person p-001 (resident), valid "), "{stdout}");
    assert!(stdout.contains("state:    active"), "{stdout}");
    assert!(stdout.contains("mode: normal (policy auto-"), "{stdout}");
    assert!(stdout.contains("nothing was recorded"), "{stdout}");
    assert_no_clear_ids(&stdout);

    let out = run(&["lookup", "--config", &gate.config, "--id-number", STRANGER, "--json"]).await?;
    assert_eq!(out.status.code(), Some(1), "a block exits 1, --json too");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((report["decision"].as_str(), report["reason"].as_str()), (Some("block"), Some("unknown_person")));
    assert_eq!(report["subject"], "440524********0014");

    let out = run(&["lookup", "--config", &gate.config, "--id-number", FORGED]).await?;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("BLOCK (invalid_id_number)"), "{stdout}");
    assert_no_clear_ids(&stdout);

    let out = run(&["lookup", "--config", &gate.config, "--plate", "闽D12345"]).await?;
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("plate 闽****45 at the entry side: BLOCK (unknown_vehicle)"), "{stdout}");

    let out = run(&["lookup", "--config", &gate.config, "--card", "04:a2:2b:3c", "--side", "exit"]).await?;
    let (stdout, _) = text(&out);
    assert!(stdout.contains("at the exit side: BLOCK (unknown_person)"), "{stdout}");

    let out = run(&["lookup", "--config", &gate.config]).await?;
    assert_eq!(out.status.code(), Some(2), "one credential is required");

    // A dry run: nothing recorded, nothing counted, no coil moved. A real
    // refusal after the lookups is the marker: it is recorded and reaches
    // the board after anything they could have caused.
    gate.fx.settle_gate(&gate.daemon).await?;
    assert_eq!(gate.fx.queued_events().len(), events_before + 1, "the marker's event only");
    let d = &gate.daemon.observed.decisions;
    assert_eq!((d.passed.load(Ordering::Relaxed), d.blocked.load(Ordering::Relaxed)), (0, 1));
    assert_eq!(coil_on_writes(&gate.fx, 0), 0);
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_decisions_masked_in_text_and_json() -> Result<()> {
    let gate = running_gate("").await?;
    for json in [true, false] {
        let mut args = vec!["tail", "--config", gate.config.as_str()];
        if json {
            args.push("--json");
        }
        let mut child = gatectl().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        // The tail is subscribed once it says so: nothing after is missed.
        let ready = tokio::time::timeout(WAIT, stderr.next_line()).await??.context("tail's first line")?;
        assert!(ready.starts_with("following decisions and alarms at "), "{ready}");

        let (card, masked) = if json { (ZHANG, ZHANG_MASKED) } else { (STRANGER, "440524********0014") };
        gate.fx.present_card(card, "x").await?;
        let line = loop {
            let line = tokio::time::timeout(WAIT, stdout.next_line()).await??.context("a tail line")?;
            if line.contains("decision") || line.contains("PASS") || line.contains("BLOCK") {
                break line;
            }
        };
        assert_no_clear_ids(&line);
        if json {
            let activity: serde_json::Value = serde_json::from_str(&line)?;
            assert_eq!(activity["type"], "decision");
            assert_eq!(activity["decision"], "pass");
            assert_eq!(activity["subject"], masked);
            assert_eq!(activity["person_id"], "p-001");
            assert_eq!(activity["category"], "resident");
            assert_eq!(activity["seq"], 1);
        } else {
            assert!(
                line.contains(&format!("BLOCK unknown_person id_number {masked} side=entry mode=normal")),
                "{line}"
            );
        }
        child.kill().await?;
    }
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_records_the_operator_and_reason_then_unlocks() -> Result<()> {
    let gate = running_gate("").await?;
    let out = gatectl()
        .args(["open", "--config", &gate.config, "--reason", "delivery cart"])
        .env("SUDO_USER", "alice")
        .output()
        .await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("manual open of the entry side recorded as event #1 by technician:alice; unlocked"),
        "{stdout}"
    );
    wait_for("the unlock coil", || coil_on_writes(&gate.fx, 0) == 1).await?;

    let open = gate.fx.queued_events().into_iter().find(|e| e.kind() == pb::EventKind::ManualOpen).expect("recorded");
    assert_eq!((open.seq, open.operator.as_str(), open.note.as_str()), (1, "technician:alice", "delivery cart"));
    assert_eq!(open.side(), pb::Direction::Entry);

    let out = run(&["open", "--config", &gate.config, "--reason", "  "]).await?;
    assert_eq!(out.status.code(), Some(64), "a reason is required");
    let out = run(&["open", "--config", &gate.config, "--reason", "x", "--side", "roof"]).await?;
    let (_, stderr) = text(&out);
    assert!(stderr.contains("gated: expected side \"entry\" or \"exit\", found \"roof\""), "{stderr}");
    assert_eq!(coil_on_writes(&gate.fx, 0), 1, "refused requests move nothing");
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_set_goes_through_the_socket_and_names_the_operator_from_the_uid() -> Result<()> {
    let gate = running_gate("").await?;
    let login = std::process::Command::new("id").arg("-un").output()?;
    let login = String::from_utf8_lossy(&login.stdout).trim().to_owned();
    // $USER and $LOGNAME say someone else: they are not asked.
    let out = gatectl()
        .args(["mode", "set", "--config", &gate.config, "wartime", "--reason", "district order 17"])
        .env("USER", "mallory")
        .env("LOGNAME", "mallory")
        .output()
        .await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("mode set to wartime by technician:{login} (event seq ")), "{stdout}");
    assert!(!stderr.contains("directly"), "the running daemon recorded it: {stderr}");
    assert!(!stdout.contains("mallory"), "{stdout}");
    let change = gate.fx.queued_events().into_iter().find(|e| e.kind() == pb::EventKind::ModeChange).expect("recorded");
    assert_eq!(
        (change.operator.as_str(), change.note.as_str(), change.mode()),
        (format!("technician:{login}").as_str(), "district order 17", pb::Mode::Wartime)
    );
    // The daemon decides in the new mode at once.
    let out = run(&["lookup", "--config", &gate.config, "--id-number", ZHANG]).await?;
    assert!(text(&out).0.contains("mode: wartime"), "{}", text(&out).0);
    // Root names the technician behind sudo, as for a manual open.
    if running_as_root() {
        let out = gatectl()
            .args(["mode", "set", "--config", &gate.config, "normal", "--reason", "order lifted"])
            .env("SUDO_USER", "alice")
            .output()
            .await?;
        assert!(text(&out).0.starts_with("mode set to normal by technician:alice"), "{:?}", text(&out));
    }
    // The daemon refuses what gatectl would not send.
    let refused = gate_control_proto::client::request(
        &gate.socket,
        gate_control_proto::protocol::Command::SetMode {
            mode: "wartime".into(),
            reason: "x\u{1b}[2J".into(),
            sudo_user: None,
        },
    );
    assert!(
        matches!(&refused, Err(gate_control_proto::client::ClientError::Daemon(m)) if m.contains("no control characters")),
        "{refused:?}"
    );
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_checks_each_device_and_pulses_the_wired_output() -> Result<()> {
    let gate = running_gate("").await?;
    let out = run(&["selftest", "--config", &gate.config]).await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("PASS id_card: port ") && lines[0].contains("SAM status 0x90 (ready)"), "{stdout}");
    assert!(
        lines[1].starts_with("PASS gate: port ") && lines[1].contains("discrete inputs 0 and 1 read by Modbus"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("PASS gate entry output (coil 0): recorded as event #1; coil switched on"),
        "{stdout}"
    );
    assert_eq!(coil_on_writes(&gate.fx, 0), 1, "one pulse");
    let pulse = gate.fx.queued_events().into_iter().find(|e| e.kind() == pb::EventKind::ManualOpen).expect("recorded");
    assert_eq!(pulse.note, "selftest: output pulse");

    // A SAM that fails its self-test fails the selftest, even though it
    // answers every poll.
    gate.fx.idcard.inject_status(hw_sim::script::StatusFault {
        code: 0x60,
        target: Some(hw_sim::script::StatusTarget::SamStatus),
        sticky: true,
    });
    let out = run(&["selftest", "--config", &gate.config, "--no-pulse"]).await?;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL id_card:") && stdout.contains("SAM status 0x60 (not ready)"), "{stdout}");
    gate.fx.idcard.clear_status();

    // Without pulses, and with a device gone.
    gate.fx.idcard.set_silent(true);
    let out = run(&["selftest", "--config", &gate.config, "--no-pulse"]).await?;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL id_card:"), "{stdout}");
    assert!(
        stdout.contains("SKIP gate entry output (coil 0): not pulsed (--no-pulse): this output was not tested"),
        "{stdout}"
    );
    assert!(!stdout.contains("PASS gate entry output"), "a check not run is not a pass: {stdout}");
    assert_eq!(coil_on_writes(&gate.fx, 0), 1, "no second pulse");

    // A board whose port opens but which does not answer is said so, not
    // "not open" (the technician's next step is the unit id or the wiring).
    gate.fx.gate.set_silent(true);
    wait_for("the silent board to count as lost", || !gate.daemon.observed.gate_io.connected.load(Ordering::Relaxed))
        .await?;
    let out = run(&["selftest", "--config", &gate.config, "--no-pulse"]).await?;
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("FAIL gate: ")).unwrap_or_default();
    assert!(line.contains("opens but the device does NOT answer"), "{stdout}");
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_refuses_a_user_without_permission() -> Result<()> {
    if !running_as_root() {
        eprintln!("skipped: needs root to run gatectl as another user");
        return Ok(());
    }
    let gate = running_gate("").await?;
    // Let `nobody` reach the config and the socket's folder.
    open_up(gate.fx.dir.path())?;
    let as_nobody = || {
        let mut command = gatectl();
        command.uid(NOBODY).gid(NOBODY).args(["status", "--config", &gate.config]);
        command
    };
    // The file mode (0660, root's group) stops it first.
    let mode = std::fs::metadata(&gate.socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let out = as_nobody().output().await?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("permission denied on the control socket {}", gate.socket.display())), "{stderr}");
    // With the mode opened, the daemon's own check refuses it, and says why.
    std::fs::set_permissions(&gate.socket, std::fs::Permissions::from_mode(0o666))?;
    let out = as_nobody().output().await?;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(77), "{stdout}{stderr}");
    assert!(
        stderr.contains("gated: permission denied: uid 65534 is not root or the daemon's user (uid 0) and no [control] group is configured"),
        "{stderr}"
    );
    assert!(stdout.is_empty());
    // Root is served as before.
    assert!(run(&["status", "--config", &gate.config]).await?.status.success());
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_the_control_group_is_served() -> Result<()> {
    if !running_as_root() || !group_exists("nogroup") {
        eprintln!("skipped: needs root and the group nogroup");
        return Ok(());
    }
    // `nobody`'s primary group: a group other than the daemon's, so the
    // socket is opened to all and the credential check decides.
    let gate = running_gate("[control]\ngroup = \"nogroup\"\n").await?;
    open_up(gate.fx.dir.path())?;
    // The socket exists a moment before its mode is set.
    let mode = || std::fs::metadata(&gate.socket).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    wait_for("the socket opened to the group", || mode() == 0o666).await?;
    let out = gatectl().uid(NOBODY).gid(NOBODY).args(["status", "--config", &gate.config, "--json"]).output().await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(status["gate"], "east-1");
    gate.daemon.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_message_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gated.toml");
    std::fs::write(
        &config,
        "[site]\nid = \"heshan-c03\"\n[gate]\nid = \"east-1\"\n[store]\npath = \"state/gated.db\"\n\
         [identity]\nhmac_key_file = \"site.key\"\n",
    )?;
    let config = config.to_str().context("utf-8")?;
    let socket = dir.path().join("state/gated.sock");
    for command in ["status", "tail", "outbox", "selftest"] {
        let out = run(&[command, "--config", config]).await?;
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(69), "{command}: {stderr}");
        assert!(stderr.contains(&format!("gated is not running (no socket at {})", socket.display())), "{stderr}");
    }
    // A socket left behind by a daemon that died.
    std::fs::create_dir_all(socket.parent().context("state")?)?;
    drop(std::os::unix::net::UnixListener::bind(&socket)?);
    let out = run(&["open", "--config", config, "--reason", "test"]).await?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("gated is not running (stale socket at"), "{stderr}");
    // A bad config: its errors, and no guess at a socket.
    let out = run(&["status", "--config", "/nonexistent/gated.toml"]).await?;
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_lists_what_sysfs_knows_without_a_daemon() -> Result<()> {
    let out = run(&["ports"]).await?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("no serial ports found") || stdout.lines().next().is_some_and(|l| l.starts_with("/dev/")),
        "{stdout}"
    );
    Ok(())
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

fn group_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/group").is_ok_and(|g| g.lines().any(|l| l.split(':').next() == Some(name)))
}

/// The fixture's folder is private (0700): open it so another user can
/// read the config and reach the socket.
fn open_up(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
