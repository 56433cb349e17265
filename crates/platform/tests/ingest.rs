//! The ingest against a real PostgreSQL and a real Mosquitto: events of a
//! real `gated` (in-process, devices on pseudo-terminals) and of simulated
//! gates land exactly once while a replica is killed mid-stream; a hole in
//! a gate's `seq` becomes a gap and an alert, then fills; the fleet view
//! and the flow report read what was stored.

mod support;

use anyhow::Result;
use gate_platform::sim::SimGate;
use gate_tests::postgres::Postgres;
use gate_tests::{GateFixture, Mosquitto, RunningDaemon, Subscriber, init_test_logging, resident};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{BROKER_CONF, Replica, run, wait_sql, write_config};

const ZHANG: &str = "35020319900101123X";
const STRANGER: &str = "440524188001010014";
const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    gate_platform::ingest::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_exactly_once_while_a_replica_is_killed_mid_stream() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &pg.url(), broker.port(), "[ingest]\ngap_timeout_s = 600\n");
    let out = run(&config, &["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The ground truth: every event the broker accepted.
    let truth = Subscriber::connect(broker.port(), "village/+/+/events").await?;
    let mut a = Replica::start(&config, "a")?;
    let b = Replica::start(&config, "b")?;
    a.wait_subscribed().await?;
    b.wait_subscribed().await?;

    let fx = GateFixture::new(broker.port(), &[resident("p-001", ZHANG, "张三")])?;
    let daemon = RunningDaemon::start(fx.config());
    daemon.wait_connected().await?;

    const PER_GATE: usize = 250;
    let sims: Vec<SimGate> = (1..=3)
        .map(|i| SimGate::connect("127.0.0.1", broker.port(), "village", "sim-site", &format!("g{i}")))
        .collect();
    let publisher = tokio::spawn(async move {
        let mut sims = sims;
        for _ in 0..PER_GATE {
            for sim in sims.iter_mut() {
                let event = sim.next_event(now_ms());
                sim.publish(&event).await.expect("queued");
            }
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        sims
    });
    // Cards at the real gate while the simulated ones publish.
    let mut cards = 0;
    for (i, id) in [ZHANG, STRANGER, ZHANG, STRANGER].iter().enumerate() {
        fx.present_card(id, "某人").await?;
        cards += 1;
        if i == 1 {
            // Mid-stream: no chance to acknowledge what it holds.
            a.kill();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back under the same name: its session hands it what it never acknowledged.
    let a2 = Replica::start(&config, "a")?;
    let sims = publisher.await?;
    let gated_topic = "village/heshan-c03/east-1/events";
    truth.wait_until(WAIT, "the real gate's decisions", |s| s.decisions(gated_topic).len() == cards).await?;
    let sim_topics = ["village/sim-site/g1/events", "village/sim-site/g2/events", "village/sim-site/g3/events"];
    truth
        .wait_until(WAIT, "every simulated event", |s| {
            sim_topics.iter().map(|t| s.unique_events(t).len()).sum::<usize>() == 3 * PER_GATE
        })
        .await?;
    // The gate also reports passages: stop it so its count is final.
    daemon.stop().await?;
    let mut sent = BTreeSet::new();
    for topic in sim_topics.iter().chain([&gated_topic]) {
        sent.extend(truth.unique_events(topic).into_iter().map(|e| e.event_id));
    }
    let from_gated = truth.unique_events(gated_topic).len();
    wait_sql(&pg, "SELECT count(*) FROM events", &sent.len().to_string(), WAIT).await?;
    let stored: BTreeSet<String> =
        pg.psql("SELECT event_id FROM events ORDER BY 1")?.lines().map(str::to_owned).collect();
    assert_eq!(stored, sent, "exactly the events sent, each once");
    // Every stream complete, no hole, once a progress round applied the
    // writers' inbox (it runs beside them, not in their transactions).
    let streams = format!(
        "east-1|{from_gated}|{from_gated}|[]\ng1|{PER_GATE}|{PER_GATE}|[]\ng2|{PER_GATE}|{PER_GATE}|[]\n\
         g3|{PER_GATE}|{PER_GATE}|[]"
    );
    wait_sql(&pg, "SELECT gate_id, contiguous, max_seq, holes FROM seq_streams ORDER BY 1", &streams, WAIT).await?;
    assert_eq!(pg.psql("SELECT count(*) FROM seq_inbox_batches")?, "0", "every inbox row applied once");
    // The events the real gate decided keep their content, subject masked.
    let gated_rows = pg.psql(
        "SELECT decision, coalesce(reason, '-'), subject FROM events WHERE gate_id = 'east-1' AND kind = 'decision'
         ORDER BY seq",
    )?;
    assert_eq!(
        gated_rows,
        "pass|-|350203********123X\nblock|unknown_person|440524********0014\n\
         pass|-|350203********123X\nblock|unknown_person|440524********0014"
    );
    // The broker's messages for the killed replica did reach the new one.
    a2.wait_log("subscription acknowledged", 4, WAIT).await?;
    drop(sims);
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_becomes_a_gap_and_an_alert_then_fills_and_the_fleet_shows_it() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &pg.url(), broker.port(), "[ingest]\ngap_timeout_s = 1\n");
    let replica = Replica::start(&config, "solo")?;
    replica.wait_subscribed().await?;

    let mut sim = SimGate::connect("127.0.0.1", broker.port(), "village", "site-x", "north-2");
    sim.publish_status(true, 0, now_ms()).await?;
    let mut held_back = None;
    for seq in 1..=6 {
        let event = sim.next_event(now_ms());
        if seq == 4 {
            held_back = Some(event);
        } else {
            sim.publish(&event).await?;
        }
    }
    wait_sql(&pg, "SELECT count(*) FROM events", "5", WAIT).await?;
    wait_sql(&pg, "SELECT contiguous, max_seq FROM seq_streams", "3|6", WAIT).await?;
    // Past the timeout: a gap row and its alert.
    wait_sql(&pg, "SELECT from_seq, to_seq, filled_at IS NULL FROM gaps", "4|4|t", WAIT).await?;
    let alert = pg.psql("SELECT a.source, a.kind, a.gate_id FROM alerts a JOIN gaps g USING (alert_id)")?;
    assert_eq!(alert, "platform|gap|north-2");

    let fleet = run(&config, &["fleet", "--json"]);
    assert!(fleet.status.success(), "{}", String::from_utf8_lossy(&fleet.stderr));
    let json: serde_json::Value = serde_json::from_slice(&fleet.stdout)?;
    let gate = &json["gates"][0];
    assert_eq!((gate["gate_id"].as_str(), gate["state"].as_str()), (Some("north-2"), Some("online")));
    assert_eq!((gate["open_gaps"].as_i64(), gate["missing_events"].as_i64()), (Some(1), Some(1)));
    assert!(gate["last_event_age_ms"].as_i64().is_some_and(|age| (0..60_000).contains(&age)), "{gate}");

    // The gate republishes the missing event: the gap closes.
    sim.publish(&held_back.expect("event 4")).await?;
    wait_sql(&pg, "SELECT contiguous, max_seq, holes FROM seq_streams", "6|6|[]", WAIT).await?;
    wait_sql(&pg, "SELECT filled_at IS NOT NULL FROM gaps", "t", WAIT).await?;
    let table = run(&config, &["fleet"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().any(|l| l.starts_with("site-x") && l.contains("north-2") && l.contains("online")), "{text}");

    // A lost connection: the last will turns the gate offline.
    sim.drop_connection();
    wait_sql(&pg, "SELECT online FROM gates WHERE gate_id = 'north-2'", "f", WAIT).await?;
    let json: serde_json::Value = serde_json::from_slice(&run(&config, &["fleet", "--json"]).stdout)?;
    assert_eq!(json["gates"][0]["state"].as_str(), Some("offline"));

    // The flows of the day (China time): 3 entries (odd seq) and 3 exits.
    let day = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC' + interval '8 hours', 'YYYY-MM-DD')")?;
    let svg = dir.path().join("flow.svg");
    let out =
        run(&config, &["report", "flow", "--site", "site-x", "--day", &day, "--svg", svg.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let total = text.lines().find(|l| l.starts_with("total")).expect("a total line");
    assert_eq!(total.split_whitespace().collect::<Vec<_>>(), ["total", "3", "3"], "{text}");
    assert!(std::fs::read_to_string(&svg)?.contains("<polyline"));
    let out = run(&config, &["report", "flow", "--site", "site-x", "--day", "2026-02-30"]);
    assert_eq!(out.status.code(), Some(64), "a bad day is a usage error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_topics_are_counted_and_do_not_stop_the_ingest() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &pg.url(), broker.port(), "");
    let replica = Replica::start(&config, "solo")?;
    replica.wait_subscribed().await?;
    gate_tests::publish(broker.port(), "village/s/g/events", vec![0xff; 20], false).await?;
    let mut sim = SimGate::connect("127.0.0.1", broker.port(), "village", "s", "g");
    let mut forged = sim.next_event(now_ms());
    forged.gate_id = "other".into();
    sim.publish(&forged).await?;
    // Well formed for protobuf, refused by PostgreSQL: a NUL in a string,
    // a date past the year 294276. Each is rejected alone; the events
    // around them in the same batch land.
    let mut nul_note = sim.next_event(now_ms());
    nul_note.note = "a\0b".into();
    let mut far_future = sim.next_event(now_ms());
    far_future.occurred_at_ms = i64::MAX;
    let nul_status = gate_proto::v1::GateStatus {
        online: true,
        site_id: "s".into(),
        gate_id: "g".into(),
        version: "1.0\0".into(),
        reported_at_ms: now_ms(),
        ..Default::default()
    };
    let started = Instant::now();
    let mut good = sim.next_event(now_ms());
    good.tags = vec!["quote\"d".into(), "back\\slash".into(), "{brace,comma}".into(), String::new()];
    sim.publish(&nul_note).await?;
    sim.publish(&far_future).await?;
    gate_tests::publish(broker.port(), "village/s/g/status", prost::Message::encode_to_vec(&nul_status), false).await?;
    sim.publish(&good).await?;
    wait_sql(&pg, "SELECT seq FROM events", "4", WAIT).await?;
    replica.wait_log("message rejected", 5, WAIT).await?;
    assert!(started.elapsed() < WAIT);
    wait_sql(
        &pg,
        "SELECT array_to_string(tags, '|') FROM events WHERE seq = 4",
        "quote\"d|back\\slash|{brace,comma}|",
        WAIT,
    )
    .await?;
    // Still consuming after the rejections.
    let after = sim.next_event(now_ms());
    sim.publish(&after).await?;
    wait_sql(&pg, "SELECT count(*) FROM events", "2", WAIT).await?;
    // An empty retained status (a decommissioned gate's, removed by an
    // operator) is no rejection.
    gate_tests::publish(broker.port(), "village/s/g/status", Vec::new(), true).await?;
    let last = sim.next_event(now_ms());
    sim.publish(&last).await?;
    wait_sql(&pg, "SELECT count(*) FROM events", "3", WAIT).await?;
    assert_eq!(replica.log().matches("message rejected").count(), 5, "{}", replica.log());
    Ok(())
}

#[test]
fn check_config_reports_line_and_column_and_keygen_prints_the_key_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("platform.toml");
    std::fs::write(&config, "[postgres]\nurl = \"postgres://x@127.0.0.1/db\"\n[mqtt]\nhots = \"h\"\n").expect("w");
    let out = support::run(&config, &["check-config"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("platform.toml:4:1: mqtt.hots: unknown key `hots`"), "{err}");
    assert!(err.contains("did you mean `host`?"), "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/platform.example.toml");
    let out = support::run(std::path::Path::new(example), &["check-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let key = dir.path().join("platform.key");
    let out = support::run(&config, &["keygen", key.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("output");
    let (id, hex) = last.split_once(':').expect("KEYID:HEX");
    assert!(id.len() == 16 && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{last}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    let again = support::run(&config, &["keygen", key.to_str().expect("utf-8")]);
    assert_eq!(again.status.code(), Some(78), "never overwrites a key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_rows_an_older_platform_left_are_applied_after_the_upgrade() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let dir = tempfile::tempdir()?;
    // Version 7 kept one inbox row per event.
    let pool = support::pool_at_version(dir.path(), &pg, 7).await?;
    let client = pool.get().await?;
    let at = now_ms();
    for (stream, seq) in [("events", 1i64), ("events", 2), ("events", 4), ("alerts", 1)] {
        client
            .execute(
                "INSERT INTO seq_inbox (site_id, gate_id, stream, seq, occurred_at_ms) VALUES ('old', 'g1', $1, $2, $3)",
                &[&stream, &seq, &at],
            )
            .await?;
    }
    let latest = gate_platform::db::MIGRATIONS.len() as i32;
    assert_eq!(gate_platform::db::migrate(&pool).await?, (7, latest));
    let round = gate_platform::progress::apply_round(&pool, at).await?;
    assert_eq!((round.batches, round.applied), (1, 4), "the old rows, carried over as one batch");
    let streams = pg.psql("SELECT stream, contiguous, max_seq FROM seq_streams ORDER BY stream")?;
    assert_eq!(streams, "alerts|1|1\nevents|2|4");
    assert_eq!(pg.psql("SELECT count(*) FROM seq_inbox_batches")?, "0");
    Ok(())
}
