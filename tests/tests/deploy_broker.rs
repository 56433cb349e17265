//! The gate box's local broker as deployed: a real Mosquitto run from
//! `deploy/mosquitto-bridge.conf` and `deploy/mosquitto-gate.acl`, changed
//! only where a test must (ephemeral ports, files in temporary folders, the
//! test's certificates), bridged over TLS with a client certificate to a
//! second Mosquitto standing in for the platform. Shown: an anonymous
//! client is refused; gate east-2's credentials can publish neither east-1's
//! topics nor a downlink topic; gated with its own credentials delivers its
//! events up through the bridge, and a signed platform message comes down
//! through it.

use anyhow::{Context, Result, bail, ensure};
use gate_proto::v1 as pb;
use gate_tests::pki::{CLIENT_EXT, SERVER_EXT, issue, make_ca};
use gate_tests::{
    EVENTS_TOPIC, GateFixture, MODE_TOPIC, Mosquitto, RunningDaemon, Subscriber, free_port, init_test_logging,
    mode_change, publish_signed, resident,
};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ZHANG: &str = "35020319900101123X";
const WAIT: Duration = Duration::from_secs(20);
const EAST_2_EVENTS: &str = "village/heshan-c03/east-2/events";

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// The example with the value of each `key value` line named in `values`
/// replaced. Every key must be there exactly once, so the example cannot
/// drift away from what this test runs.
fn adapt(example: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = String::new();
    let mut seen = vec![0; values.len()];
    for line in example.lines() {
        let key = line.split_whitespace().next().unwrap_or("");
        match values.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                seen[i] += 1;
                text.push_str(&format!("{key} {}\n", values[i].1));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    for (i, (key, _)) in values.iter().enumerate() {
        ensure!(seen[i] == 1, "the example has {} `{key}` lines, expected one", seen[i]);
    }
    Ok(text)
}

fn mosquitto_passwd(file: &Path, user: &str, password: &str, create: bool) -> Result<()> {
    let mut command = std::process::Command::new("mosquitto_passwd");
    if create {
        command.arg("-c");
    }
    let out = command.arg("-b").arg(file).arg(user).arg(password).output().context("running mosquitto_passwd")?;
    ensure!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Connects with these credentials (or none) and publishes each message at
/// QoS 1, waiting for each acknowledgement; or the broker's refusal.
async fn publish_as(
    port: u16,
    credentials: Option<(&str, &str)>,
    messages: &[(&str, &[u8])],
) -> Result<(), ConnectionError> {
    let mut options = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    for (topic, payload) in messages {
        let _ = client.publish(*topic, QoS::AtLeastOnce, false, payload.to_vec()).await;
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked < messages.len() {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Err(ConnectionError::NetworkTimeout),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

struct Deployment {
    platform: Mosquitto,
    /// The platform's plain listener, for the test's own clients.
    platform_plain: u16,
    local: Mosquitto,
    dir: tempfile::TempDir,
}

const PASSWORDS: [(&str, &str); 3] =
    [("gated-east-1", "east-1-secret"), ("gated-east-2", "east-2-secret"), ("technician", "tech-secret")];

async fn deploy() -> Result<Deployment> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = make_ca(d, "platform-ca")?;
    let server = issue(d, &ca, "platform-broker", SERVER_EXT)?;
    let bridge = issue(d, &ca, "gate-heshan-c03-east-1", CLIENT_EXT)?;
    // The platform: TLS with a client certificate required for the bridge,
    // a plain loopback listener for the test.
    let platform_plain = free_port();
    let platform = Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nallow_anonymous true\n\
         listener {platform_plain} 127.0.0.1\n",
        ca.cert.display(),
        server.cert.display(),
        server.key.display(),
    ))?;
    let bridge_up = Subscriber::connect(platform_plain, "bridge/#").await?;

    let passwd = d.join("gate.passwd");
    for (i, (user, password)) in PASSWORDS.iter().enumerate() {
        mosquitto_passwd(&passwd, user, password, i == 0)?;
    }
    let acl = d.join("gate.acl");
    std::fs::copy(repo_file("deploy/mosquitto-gate.acl"), &acl)?;
    let example = std::fs::read_to_string(repo_file("deploy/mosquitto-bridge.conf"))?;
    let tls_port = platform.port();
    let mut adapted = None;
    let local = Mosquitto::start_from(|dir, port| {
        adapted = Some(adapt(
            &example,
            &[
                ("listener", format!("{port} 127.0.0.1")),
                ("password_file", passwd.display().to_string()),
                ("acl_file", acl.display().to_string()),
                ("address", format!("127.0.0.1:{tls_port}")),
                ("bridge_cafile", ca.cert.display().to_string()),
                ("bridge_certfile", bridge.cert.display().to_string()),
                ("bridge_keyfile", bridge.key.display().to_string()),
            ],
        ));
        // What Debian's own mosquitto.conf adds.
        let data = dir.join("data");
        let _ = std::fs::create_dir_all(&data);
        let text = adapted.as_ref().and_then(|r| r.as_ref().ok()).cloned().unwrap_or_default();
        format!("{text}persistence true\npersistence_location {}/\n", data.display())
    })?;
    adapted.context("adapted")??;
    // The bridge announces itself on the platform once its TLS session is up.
    bridge_up
        .wait_until(WAIT, "the bridge's connected notification", |s| {
            s.messages().iter().any(|m| m.topic == "bridge/heshan-c03/east-1/state" && m.payload == b"1")
        })
        .await
        .with_context(|| format!("local broker log:\n{}", local.log()))?;
    Ok(Deployment { platform, platform_plain, local, dir })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_local_broker_refuses_strangers_and_keeps_each_gate_to_its_topics() -> Result<()> {
    init_test_logging();
    let deployment = deploy().await?;
    let local = deployment.local.port();
    let (tech_user, tech_password) = PASSWORDS[2];
    let watch_local = Subscriber::connect_as(local, "village/#", tech_user, tech_password).await?;
    let watch_platform = Subscriber::connect(deployment.platform_plain, "village/#").await?;

    // Anonymous: refused at CONNECT.
    match publish_as(local, None, &[(EVENTS_TOPIC, b"anonymous")]).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert!(matches!(code, ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword))
        }
        other => bail!("an anonymous client was not refused: {other:?}"),
    }
    // A wrong password: refused too.
    let wrong = publish_as(local, Some(("gated-east-1", "guess")), &[(EVENTS_TOPIC, b"guessed")]).await;
    assert!(matches!(wrong, Err(ConnectionError::ConnectionRefused(_))), "{wrong:?}");

    // Gate east-2's credentials: east-1's events and a downlink topic are
    // dropped by the broker; its own events go through (published last, on
    // the same session, so once they have arrived the others would have).
    publish_as(
        local,
        Some(PASSWORDS[1]),
        &[(EVENTS_TOPIC, b"forged east-1"), (MODE_TOPIC, b"forged mode"), (EAST_2_EVENTS, b"east-2 marker")],
    )
    .await
    .map_err(|e| anyhow::anyhow!("gate east-2 could not publish: {e}"))?;
    for (watcher, place) in [(&watch_local, "the local broker"), (&watch_platform, "the platform")] {
        watcher
            .wait_until(WAIT, "east-2's own event", |s| s.messages().iter().any(|m| m.topic == EAST_2_EVENTS))
            .await
            .with_context(|| place.to_owned())?;
        let forged: Vec<String> = watcher
            .messages()
            .iter()
            .filter(|m| m.payload.starts_with(b"forged") || m.payload == b"anonymous" || m.payload == b"guessed")
            .map(|m| m.topic.clone())
            .collect();
        assert!(forged.is_empty(), "{place} received {forged:?}");
    }
    let log = deployment.local.log();
    for topic in [EVENTS_TOPIC, MODE_TOPIC] {
        let quoted = format!("'{topic}'");
        let denied = log.lines().any(|l| l.contains("Denied PUBLISH") && l.contains(&quoted));
        assert!(denied, "the broker logs no denial for {topic}:\n{log}");
    }

    // gated with its own credentials: its events reach the platform through
    // the TLS bridge, and a signed mode change comes down the same way.
    let fx = GateFixture::new(local, &[resident("p-001", ZHANG, "张三")])?;
    let password_file = fx.dir.path().join("mqtt.password");
    std::fs::write(&password_file, format!("{}\n", PASSWORDS[0].1))?;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
    let text = std::fs::read_to_string(&fx.config_path)?.replace(
        "keep_alive_s = 5\n",
        &format!("keep_alive_s = 5\nusername = \"gated-east-1\"\npassword_file = \"{}\"\n", password_file.display()),
    );
    std::fs::write(&fx.config_path, text)?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;
    fx.present_card(ZHANG, "张三").await?;
    watch_platform
        .wait_until(WAIT, "gated's decision at the platform", |s| !s.decisions(EVENTS_TOPIC).is_empty())
        .await?;
    assert_eq!(watch_platform.decisions(EVENTS_TOPIC)[0].decision(), pb::Decision::Pass);

    publish_signed(deployment.platform_plain, MODE_TOPIC, mode_change(pb::Mode::Wartime, 0, "heshan-office"), true)
        .await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let schedule = gate_store::Store::open(&fx.store_path)?.mode_schedule()?;
        if schedule.is_some_and(|s| s.at(gate_app::wall_clock_ms()) == gate_core::Mode::Wartime) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the platform's mode change did not come down the bridge:\n{}", deployment.local.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await?;
    drop(deployment.dir);
    drop(deployment.platform);
    Ok(())
}
