//! `gated` under a stand-in for systemd: the daemon is started with
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` pointing at a socket of the test, and
//! must report `READY=1`, keep sending `WATCHDOG=1`, and on SIGTERM report
//! `STOPPING=1` and exit 0. No device is configured and the broker port is
//! closed: the daemon must run all the same, queueing its events.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemon if the test fails half-way.
use gate_tests::KillOnDrop as Daemon;

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
    // dropped here: nothing listens on the port any more
}

fn write_site_key(path: &Path) {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("create the key file");
    writeln!(file, "{}", "5a".repeat(32)).expect("write the key");
}

fn write_config(dir: &Path, mqtt_port: u16) -> std::path::PathBuf {
    let path = dir.join("gated.toml");
    let text = format!(
        r#"[site]
id = "notify-test"

[gate]
id = "lane-1"

[store]
path = "state/gated.db"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keep_alive_s = 5

[identity]
hmac_key_file = "site.key"
"#
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Reads notifications until one equals `wanted`; returns all read.
fn wait_for(socket: &UnixDatagram, wanted: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))))
            .expect("read timeout");
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|line| line == wanted);
                seen.push(message);
                if done {
                    return seen;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {wanted} within {within:?}; received {seen:?}");
}

fn wait_for_log(path: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        if Instant::now() >= deadline {
            panic!("the daemon never logged {needle:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reports_ready_watchdog_and_stopping_to_systemd() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_site_key(&dir.path().join("site.key"));
    let config = write_config(dir.path(), closed_port());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let log_path = dir.path().join("gated.log");
    let log = File::create(&log_path).expect("log file");

    let child = Command::new(env!("CARGO_BIN_EXE_gated"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        // 1 s watchdog: a keep-alive every 0.5 s.
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gated");
    let mut daemon = Daemon(child);

    wait_for(&socket, "READY=1", Duration::from_secs(30));
    // Work no card waits for runs nicer than the card path. The uplink
    // opens its store after READY, and a new thread shows its parent's
    // name (and nice value) until it sets its own: wait for all of them.
    let background = ["uplink", "store-uplink", "store-monitor"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nices = thread_nices(daemon.0.id());
        let nice_of = |name: &str| nices.iter().find(|(n, _)| n == name).map(|(_, nice)| *nice);
        let lowered = nice_of("store-decisions")
            .is_some_and(|normal| background.iter().all(|name| nice_of(name) == Some((normal + 10).min(19))));
        if lowered {
            break;
        }
        assert!(Instant::now() < deadline, "background threads not at nice +10 after 10 s: {nices:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first keep-alive comes at once, the next one a period later.
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
    let started = Instant::now();
    wait_for(&socket, "WATCHDOG=1", Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(300), "keep-alives come every 0.5 s, not back to back");
    // Started without a broker, it says where its events go.
    wait_for_log(&log_path, "events queue", Duration::from_secs(10));

    let status = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM failed");
    wait_for(&socket, "STOPPING=1", Duration::from_secs(10));

    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = daemon.0.try_wait().expect("wait for gated") {
            break exit;
        }
        assert!(Instant::now() < deadline, "gated did not exit within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(exit.code(), Some(0), "gated exited with {exit}; log:\n{log}");
    assert!(log.contains("stopped"), "no orderly stop in the log:\n{log}");
}

/// Every thread of process `pid`: its name and nice value
/// (`/proc/PID/task/TID/stat`: the name in parentheses, nice the 19th field).
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    let mut nices = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        // Fields from the 3rd (state) on, after the name.
        let nice = stat[close + 1..].split_whitespace().nth(19 - 3).and_then(|n| n.parse().ok());
        if let Some(nice) = nice {
            nices.push((name, nice));
        }
    }
    nices
}

fn wait_for_exit(daemon: &mut Daemon, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = daemon.0.try_wait().expect("wait for gated") {
            return Some(exit);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `READY=1` means the daemon works: by the time it arrives, the key has
/// been read, the store opened and the control socket answers.
#[test]
fn ready_comes_after_the_store_and_the_control_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_site_key(&dir.path().join("site.key"));
    let config = write_config(dir.path(), closed_port());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let child = Command::new(env!("CARGO_BIN_EXE_gated"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gated");
    let mut daemon = Daemon(child);
    wait_for(&socket, "READY=1", Duration::from_secs(30));
    // Checked right at READY=1, before anything else can catch up.
    let control = dir.path().join("state/gated.sock");
    assert!(dir.path().join("state/gated.db").exists(), "READY=1 before the store was opened");
    std::os::unix::net::UnixStream::connect(&control).expect("READY=1 before the control socket accepted connections");
    let _ = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status();
    assert!(wait_for_exit(&mut daemon, Duration::from_secs(15)).is_some(), "gated did not stop");
}

/// A daemon that cannot start (an unusable site key) never says READY=1:
/// systemd must see a failed start, not a running service that then exits.
#[test]
fn no_ready_when_the_key_is_unusable() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("site.key"), "not a key\n").expect("write a bad key");
    let config = write_config(dir.path(), closed_port());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket.set_nonblocking(true).expect("non-blocking");
    let child = Command::new(env!("CARGO_BIN_EXE_gated"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gated");
    let mut daemon = Daemon(child);
    // The exit is the positive marker: everything it sent is queued by then.
    let exit = wait_for_exit(&mut daemon, Duration::from_secs(30)).expect("gated exits on a bad key");
    assert_eq!(exit.code(), Some(78), "EX_CONFIG on an unusable key");
    let mut buf = [0u8; 4096];
    let mut received = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !received.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 sent by a daemon that could not start: {received:?}"
    );
}

/// SIGTERM stops the daemon within its grace even when nobody reads its
/// output any more (`gated ... 2>&1 | head -1`): a log line to a closed pipe
/// must not take down the task that handles the signal.
#[test]
fn sigterm_stops_the_daemon_whose_output_pipe_is_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_site_key(&dir.path().join("site.key"));
    let config = write_config(dir.path(), closed_port());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gated"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gated");
    // Like `head -1`: read a line, then close both pipes.
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).expect("a first log line");
    drop(err);
    drop(child.stdout.take());
    let mut daemon = Daemon(child);
    wait_for(&socket, "READY=1", Duration::from_secs(30));
    // The daemon keeps logging (debug, a broker it cannot reach) into the
    // closed pipe; a reconnect attempt or two is the positive marker.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status();
    wait_for(&socket, "STOPPING=1", Duration::from_secs(10));
    let exit = wait_for_exit(&mut daemon, Duration::from_secs(10)).expect("gated did not stop within 10 s of SIGTERM");
    assert_eq!(exit.code(), Some(0), "orderly stop");
}
