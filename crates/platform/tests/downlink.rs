//! The signed downlink against a real PostgreSQL and a real Mosquitto,
//! checked with the gates' verifier (`gate-envelope`): `mode set`,
//! `identity import` + `identity publish` (snapshot, then delta, then
//! nothing new), the snapshot answering a `SyncRequest`, the per-site
//! heartbeat; counters strictly increasing per stream; a key file others
//! may read is refused.

mod support;

use anyhow::{Context, Result};
use gate_core::{CredentialKind, SiteKey};
use gate_envelope::{Opened, Refusal, Verifier, check_counter};
use gate_proto::v1 as pb;
use gate_tests::postgres::Postgres;
use gate_tests::{Mosquitto, Subscriber, init_test_logging};
use prost::Message;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::{BROKER_CONF, Replica, run, write_config};

const WAIT: Duration = Duration::from_secs(30);
const SITE: &str = "site-d";
const SITE_KEY_HEX: &str = "0303030303030303030303030303030303030303030303030303030303030303";

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every message on `topic`, opened by a gate of `SITE` named `gate`.
fn opened(sub: &Subscriber, verifier: &Verifier, stream: &str) -> Vec<Opened> {
    let topic = format!("village/{SITE}/{stream}");
    sub.messages()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| verifier.open(&m.payload, SITE, "g1", stream).expect("a valid envelope"))
        .collect()
}

fn identity_batches(sub: &Subscriber, verifier: &Verifier) -> Vec<(u64, pb::identity_batch::Body)> {
    opened(sub, verifier, "identity")
        .into_iter()
        .map(|o| {
            let batch = pb::IdentityBatch::decode(o.payload.as_slice()).expect("an IdentityBatch");
            (o.counter, batch.body.expect("a body"))
        })
        .collect()
}

fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).expect("written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_identity_sync_and_heartbeat_go_down_signed_with_increasing_counters() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let broker = Mosquitto::start_with(BROKER_CONF)?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("platform.key");
    let signing = format!("[signing]\nkey_file = \"{}\"\nheartbeat_s = 1\nsnapshot_chunk_people = 2\n", key.display());
    let config = write_config(dir.path(), &pg.url(), broker.port(), &signing);
    let keygen = ok(&run(&config, &["keygen", key.to_str().context("utf-8")?]));
    let verifier =
        Verifier::from_specs(&[keygen.lines().last().context("key line")?]).map_err(|(_, e)| anyhow::anyhow!("{e}"))?;
    let sub = Subscriber::connect(broker.port(), &format!("village/{SITE}/#")).await?;

    // The mode, twice: counters 1 then 2 on stream "mode".
    ok(&run(
        &config,
        &["mode", "set", "--site", SITE, "wartime", "--reason", "drill", "--at", "2026-12-02T08:00+08:00"],
    ));
    ok(&run(&config, &["mode", "set", "--site", SITE, "normal", "--reason", "drill over"]));
    sub.wait_until(WAIT, "two mode messages", |s| opened(s, &verifier, "mode").len() == 2).await?;
    let modes = opened(&sub, &verifier, "mode");
    assert_eq!(modes.iter().map(|o| o.counter).collect::<Vec<_>>(), [1, 2]);
    let first = pb::ModeChange::decode(modes[0].payload.as_slice())?;
    assert_eq!((first.mode(), first.reason.as_str()), (pb::Mode::Wartime, "drill"));
    assert_eq!(first.effective_at_ms, 1_796_169_600_000, "2026-12-02T00:00Z");
    // Altered: any byte of the signed body changes and the gate refuses it.
    let mut altered = sub.messages().into_iter().find(|m| m.topic.ends_with("/mode")).context("mode")?.payload;
    // Inside the body (field 1 leads the envelope: tag, length, then body).
    altered[10] ^= 0x01;
    assert!(matches!(verifier.open(&altered, SITE, "g1", "mode"), Err(Refusal::BadSignature | Refusal::Malformed)));
    // Replayed: the first message's counter is not above the last accepted.
    assert_eq!(check_counter(Some(modes[1].counter), modes[0].counter), Err(Refusal::Replay));

    // The identity table: import, then the first publish is a snapshot.
    let site_key = dir.path().join("site.key");
    private_file(&site_key, &format!("{SITE_KEY_HEX}\n"));
    let csv = dir.path().join("people.csv");
    std::fs::write(
        &csv,
        "person_id,category,id_number,name,valid_from,valid_to\n\
         p-001,resident,35020319900101123X,张三,2024-01-01,2030-12-31\n\
         p-002,worker,440524188001010014,李四,2024-01-01,2030-12-31\n\
         p-003,visitor,110101199003077774,王五,2024-01-01,2030-12-31\n",
    )?;
    let import = |file: &Path| {
        run(
            &config,
            &[
                "identity",
                "import",
                "--site",
                SITE,
                "--hmac-key-file",
                site_key.to_str().expect("utf-8"),
                file.to_str().expect("utf-8"),
            ],
        )
    };
    let out = ok(&import(&csv));
    assert!(out.contains("3 new, 0 changed, 0 unchanged; identity version 1 (published: 0)"), "{out}");
    let out = ok(&run(&config, &["identity", "publish", "--site", SITE]));
    assert!(out.contains("snapshot of version 1 sent (3 people, 2 chunk(s))"), "{out}");
    sub.wait_until(WAIT, "two snapshot chunks", |s| identity_batches(s, &verifier).len() == 2).await?;
    let mut people = Vec::new();
    for (i, (counter, body)) in identity_batches(&sub, &verifier).into_iter().enumerate() {
        assert_eq!(counter, i as u64 + 1);
        let pb::identity_batch::Body::Snapshot(chunk) = body else { panic!("a snapshot chunk") };
        assert_eq!((chunk.version, chunk.chunk_index, chunk.chunk_count), (1, i as u32, 2));
        people.extend(chunk.people);
    }
    assert_eq!(people.iter().map(|p| p.person_id.as_str()).collect::<Vec<_>>(), ["p-001", "p-002", "p-003"]);
    let expected = SiteKey::from_hex(SITE_KEY_HEX)?.credential_key(CredentialKind::IdNumber, "35020319900101123X");
    assert_eq!(people[0].credentials[0].key, expected.to_vec(), "the keyed hash the gates look up");
    for m in sub.messages() {
        let clear = b"35020319900101123X";
        assert!(!m.payload.windows(clear.len()).any(|w| w == clear), "no ID number in clear on the wire");
    }

    // One person changes: the next publish is a delta 1 -> 2.
    let changed = dir.path().join("changed.csv");
    std::fs::write(
        &changed,
        "person_id,category,id_number,name,valid_from,valid_to\n\
         p-002,worker,440524188001010014,李四,2024-01-01,2027-06-30\n\
         p-003,visitor,110101199003077774,王五,2024-01-01,2030-12-31\n",
    )?;
    let out = ok(&import(&changed));
    assert!(out.contains("0 new, 1 changed, 1 unchanged; identity version 2 (published: 1)"), "{out}");
    let out = ok(&run(&config, &["identity", "publish", "--site", SITE]));
    assert!(out.contains("delta 1 -> 2 sent (1 upsert(s), 0 delete(s))"), "{out}");
    sub.wait_until(WAIT, "the delta", |s| identity_batches(s, &verifier).len() == 3).await?;
    let (counter, body) = identity_batches(&sub, &verifier).pop().context("delta")?;
    let pb::identity_batch::Body::Delta(delta) = body else { panic!("a delta") };
    assert_eq!((counter, delta.from_version, delta.to_version), (3, 1, 2));
    assert_eq!(delta.upserts.iter().map(|p| p.person_id.as_str()).collect::<Vec<_>>(), ["p-002"]);
    let out = ok(&run(&config, &["identity", "publish", "--site", SITE]));
    assert!(out.contains("version 2 is already published; nothing sent"), "{out}");

    // Health records: the site's first batch, 0 -> 1.
    let health = dir.path().join("health.csv");
    std::fs::write(
        &health,
        "person_id,colour,nat,nat_sampled_at,vaccine_doses,last_dose_at,travel_risk,assessed_at,expires_at\n\
         p-001,green,negative,2026-12-01T09:00+08:00,3,,false,2026-12-01T10:00+08:00,2026-12-08T10:00+08:00\n",
    )?;
    let out = ok(&run(&config, &["health", "publish", "--site", SITE, health.to_str().context("utf-8")?]));
    assert!(out.contains("health batch 0 -> 1 sent (1 record(s))"), "{out}");
    sub.wait_until(WAIT, "the health batch", |s| opened(s, &verifier, "health").len() == 1).await?;
    let batch = pb::HealthBatch::decode(opened(&sub, &verifier, "health")[0].payload.as_slice())?;
    assert_eq!((batch.from_version, batch.to_version, batch.upserts.len()), (0, 1, 1));
    assert_eq!(batch.upserts[0].colour(), pb::HealthColour::Green);

    // An ingest replica answers a gate's SyncRequest with a snapshot, and
    // sends the site's heartbeat.
    let replica = Replica::start(&config, "d1")?;
    replica.wait_subscribed().await?;
    let request = pb::SyncRequest {
        site_id: SITE.into(),
        gate_id: "g1".into(),
        local_version: 1,
        reason: "gap".into(),
        requested_at_ms: gate_platform::ingest::now_ms(),
    };
    gate_tests::publish(broker.port(), &format!("village/{SITE}/g1/sync"), request.encode_to_vec(), false).await?;
    sub.wait_until(WAIT, "the snapshot answering the SyncRequest", |s| identity_batches(s, &verifier).len() == 5)
        .await?;
    let answer = identity_batches(&sub, &verifier);
    for (i, (counter, body)) in answer[3..].iter().enumerate() {
        assert_eq!(*counter, 4 + i as u64);
        let pb::identity_batch::Body::Snapshot(chunk) = body else { panic!("a snapshot chunk") };
        assert_eq!((chunk.version, chunk.chunk_index, chunk.chunk_count), (2, i as u32, 2));
    }
    replica.wait_log("SyncRequest answered with a snapshot", 1, WAIT).await?;
    sub.wait_until(WAIT, "two heartbeats", |s| opened(s, &verifier, "heartbeat").len() >= 2).await?;
    let beats = opened(&sub, &verifier, "heartbeat");
    assert!(beats.windows(2).all(|w| w[1].counter > w[0].counter), "heartbeat counters increase");
    let beat = pb::PlatformHeartbeat::decode(beats[beats.len() - 1].payload.as_slice())?;
    assert_eq!((beat.identity_version, beat.mode_counter), (2, 2));
    // The fleet compares a gate's identity version with the platform's.
    let sim = gate_platform::sim::SimGate::connect("127.0.0.1", broker.port(), "village", SITE, "g1");
    sim.publish_status(true, 0, gate_platform::ingest::now_ms()).await?;
    support::wait_sql(&pg, "SELECT identity_version FROM gates WHERE gate_id = 'g1'", "1", WAIT).await?;
    let fleet: serde_json::Value = serde_json::from_str(&ok(&run(&config, &["fleet", "--json"])))?;
    let gate = &fleet["gates"][0];
    assert_eq!((gate["identity_version"].as_i64(), gate["platform_identity_version"].as_i64()), (Some(1), Some(2)));
    let table = ok(&run(&config, &["fleet"]));
    assert!(table.lines().any(|l| l.starts_with(SITE) && l.contains(" 1/2 ")), "{table}");
    // The counters PostgreSQL keeps are those of the last messages.
    assert_eq!(
        pg.psql("SELECT stream, counter FROM downlink_counters WHERE stream <> 'heartbeat' ORDER BY stream")?,
        "health|1\nidentity|5\nmode|2"
    );

    // A key file group or others may read is refused before anything is sent.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640))?;
    let out = run(&config, &["mode", "set", "--site", SITE, "sporadic", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = run(&config, &["mode", "set", "--site", SITE, "martial", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(64));
    Ok(())
}

/// A database an older `gate-platform` filled with names in clear: the
/// next `migrate` masks them in place, once, leaves masked names and rows
/// it cannot decode as they are, and moves no `changed_version`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_masks_names_an_older_platform_stored_in_clear() -> Result<()> {
    init_test_logging();
    let pg = Postgres::start()?;
    let dir = tempfile::tempdir()?;
    // The database as the older program left it: at version 6.
    let pool = support::pool_at_version(dir.path(), &pg, 6).await?;
    let client = pool.get().await?;
    let insert = "INSERT INTO identity_people (site_id, person_id, person, changed_version) VALUES ($1, $2, $3, 1)";
    for (id, name) in [("p-1", "陈建国"), ("p-2", "John Smith"), ("p-3", "王*")] {
        let person = pb::Person { person_id: id.into(), display_name: name.into(), ..Default::default() };
        client.execute(insert, &[&SITE, &id, &person.encode_to_vec()]).await?;
    }
    let junk = vec![0xffu8, 0xff, 0xff];
    client.execute(insert, &[&SITE, &"p-junk", &junk]).await?;
    // More than one page of the masking step (10,000 rows a page).
    let many = |name: &str| pb::Person { person_id: "q".into(), display_name: name.into(), ..Default::default() };
    client
        .execute(
            "INSERT INTO identity_people (site_id, person_id, person, changed_version)
             SELECT $1, 'q-' || lpad(g::text, 5, '0'), $2, 1 FROM generate_series(1, 12000) g",
            &[&SITE, &many("李小四").encode_to_vec()],
        )
        .await?;
    let latest = gate_platform::db::MIGRATIONS.len() as i32;
    assert_eq!(gate_platform::db::migrate(&pool).await?, (6, latest));
    let paged = client
        .query("SELECT DISTINCT person FROM identity_people WHERE person_id LIKE 'q-%'", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, Vec<u8>>(0))
        .collect::<Vec<_>>();
    assert_eq!(paged, [many("李*四").encode_to_vec()], "every page masked");
    let rows = client
        .query(
            "SELECT person_id, person, changed_version FROM identity_people WHERE person_id NOT LIKE 'q-%' ORDER BY person_id",
            &[],
        )
        .await?;
    let mut names = Vec::new();
    for row in &rows {
        let (id, bytes, changed): (String, Vec<u8>, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(changed, 1, "{id}: no version moves");
        if id == "p-junk" {
            assert_eq!(bytes, junk, "a row that does not decode is left alone");
        } else {
            names.push((id, pb::Person::decode(bytes.as_slice())?.display_name));
        }
    }
    let expected = [("p-1", "陈*国"), ("p-2", "J*** S****"), ("p-3", "王*")];
    assert_eq!(names, expected.map(|(id, name)| (id.to_owned(), name.to_owned())));
    assert_eq!(gate_platform::db::migrate(&pool).await?, (latest, latest), "applied once");
    Ok(())
}
