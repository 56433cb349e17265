//! Store tests against real SQLite files in temporary folders.

use super::*;
use crate::faults;
use gate_core::SiteKey;
use gate_core::{AllowedGates, Category, CredentialKind, PersonRecord, PersonStatus, TimeWindow};
use rusqlite::Connection;

fn person(id: &str) -> PersonRecord {
    let mut p = PersonRecord::new(id, Category::Resident, PersonStatus::Active, 0, i64::MAX);
    p.display_name = "张三".into();
    p
}

#[test]
fn credentials_are_found_only_by_their_keyed_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let key = SiteKey::from_bytes([9; 32]);
    let id = "35020319900101123X";
    let hash = key.credential_key(CredentialKind::IdNumber, id);
    store
        .import_people(&[NewPerson { person: person("p1"), credentials: vec![(CredentialKind::IdNumber, hash)] }])
        .expect("import");
    let found = store.find_person_by_credential(CredentialKind::IdNumber, &hash).expect("query");
    assert_eq!(found.map(|p| p.person_id), Some("p1".to_string()));
    let other = SiteKey::from_bytes([8; 32]).credential_key(CredentialKind::IdNumber, id);
    assert_eq!(store.find_person_by_credential(CredentialKind::IdNumber, &other).expect("query"), None);
    assert_eq!(store.find_person_by_credential(CredentialKind::Plate, &hash).expect("query"), None);
}

#[test]
fn reimport_replaces_a_persons_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let (a, b) = ([1u8; 32], [2u8; 32]);
    store
        .import_people(&[NewPerson { person: person("p1"), credentials: vec![(CredentialKind::IdNumber, a)] }])
        .expect("import");
    let mut suspended = person("p1");
    suspended.status = PersonStatus::Suspended;
    store
        .import_people(&[NewPerson { person: suspended, credentials: vec![(CredentialKind::IdNumber, b)] }])
        .expect("import");
    assert_eq!(store.find_person_by_credential(CredentialKind::IdNumber, &a).expect("query"), None);
    let p = store.find_person_by_credential(CredentialKind::IdNumber, &b).expect("query").expect("found");
    assert_eq!(p.status, PersonStatus::Suspended);
    assert_eq!(store.person_count().expect("count"), 1);
}

#[test]
fn sequence_is_gap_free_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        let mut store = Store::open(&path).expect("open");
        for expected in 1..=3u64 {
            let seq = store
                .append_event("gate-events", Priority::Routine, 10, |seq| seq.to_be_bytes().to_vec())
                .expect("append");
            assert_eq!(seq, expected);
        }
    }
    let mut store = Store::open(&path).expect("reopen");
    assert_eq!(store.next_seq("gate-events").expect("next"), 4);
    assert_eq!(store.append_event("gate-events", Priority::Routine, 11, |s| vec![s as u8]).expect("append"), 4);
    assert_eq!(store.append_event("other", Priority::Important, 11, |s| vec![s as u8]).expect("append"), 1);
    let entries = store.outbox_after(0, 100).expect("outbox");
    let seqs: Vec<(String, u64)> = entries.iter().map(|e| (e.stream.clone(), e.seq)).collect();
    assert_eq!(
        seqs,
        vec![
            ("gate-events".into(), 1),
            ("gate-events".into(), 2),
            ("gate-events".into(), 3),
            ("gate-events".into(), 4),
            ("other".into(), 1)
        ]
    );
    assert_eq!(entries[0].payload, 1u64.to_be_bytes().to_vec());
    assert_eq!(store.outbox_stats().expect("stats"), OutboxStats { depth: 5, oldest_created_ms: Some(10) });
    store.outbox_remove(&[entries[0].id]).expect("remove");
    store.outbox_remove(&[entries[0].id]).expect("remove twice is harmless");
    assert_eq!(store.outbox_after(0, 100).expect("outbox").len(), 4);
    assert_eq!(store.outbox_after(entries[2].id, 100).expect("outbox").len(), 2);
}

#[test]
fn removing_acknowledged_entries_leaves_every_later_commit_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let synchronous = |store: &Store, schema: &str| -> i64 {
        store.conn.pragma_query_value(Some(schema), "synchronous", |r| r.get(0)).expect("pragma")
    };
    // 2 is FULL: every commit waits for its fsync.
    assert_eq!(synchronous(&store, "main"), 2);
    store.append_event("events", Priority::Routine, 10, |seq| vec![seq as u8]).expect("append");
    let entries = store.outbox_after(0, 10).expect("outbox");
    store.outbox_remove(&[entries[0].id]).expect("remove");
    assert_eq!(store.outbox_after(0, 10).expect("outbox"), vec![]);
    // The removal's own commit skipped the fsync; the decisions' do not.
    assert_eq!(synchronous(&store, "main"), 2);
    assert_eq!(synchronous(&store, "ident"), 2);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99).expect("pragma");
    }
    assert!(matches!(Store::open(&path), Err(StoreError::SchemaTooNew { found: 99, .. })));
}

#[test]
fn person_fields_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let mut p = person("w1");
    p.category = Category::Worker;
    p.tags = vec!["catering".into(), "tenant".into()];
    p.allowed_gates = AllowedGates::Only(vec!["east-1".into(), "west-2".into()]);
    p.time_windows =
        vec![TimeWindow::parse("mon-fri 07:00-19:00").expect("w"), TimeWindow::parse("sat 22:00-02:00").expect("w")];
    let key = [5u8; 32];
    store
        .import_people(&[NewPerson { person: p.clone(), credentials: vec![(CredentialKind::IcCard, key)] }])
        .expect("import");
    // Every field comes back as written, but the name: only its mask is kept.
    p.display_name = "张*".into();
    assert_eq!(store.find_person_by_credential(CredentialKind::IcCard, &key).expect("query"), Some(p.clone()));
    assert_eq!(store.find_person("w1").expect("query"), Some(p));
    assert_eq!(store.find_person("nobody").expect("query"), None);
}

#[test]
fn deltas_apply_in_order_once_and_report_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let d1 = IdentityDelta {
        from_version: 0,
        to_version: 1,
        upserts: vec![NewPerson { person: person("p1"), credentials: vec![(CredentialKind::IdNumber, [1; 32])] }],
        watch_add: vec![(CredentialKind::IdNumber, [9; 32])],
        revoke_passes: vec!["vp-1".into()],
        ..Default::default()
    };
    assert_eq!(store.apply_delta(&d1, 100).expect("apply"), DeltaOutcome::Applied);
    assert_eq!(store.apply_delta(&d1, 101).expect("apply"), DeltaOutcome::AlreadyApplied);
    assert_eq!(store.identity_state().expect("state"), IdentityState { version: 1, synced_at_ms: Some(100) });
    assert!(store.is_watchlisted(CredentialKind::IdNumber, &[9; 32]).expect("watch"));
    assert!(store.is_pass_revoked("vp-1").expect("revoked"));
    let d3 = IdentityDelta { from_version: 2, to_version: 3, deletes: vec!["p1".into()], ..Default::default() };
    assert_eq!(store.apply_delta(&d3, 102).expect("apply"), DeltaOutcome::Gap { local_version: 1 });
    assert_eq!(store.person_count().expect("count"), 1, "a gap changes nothing");
    let d2 = IdentityDelta {
        from_version: 1,
        to_version: 2,
        deletes: vec!["p1".into()],
        watch_remove: vec![(CredentialKind::IdNumber, [9; 32])],
        ..Default::default()
    };
    assert_eq!(store.apply_delta(&d2, 103).expect("apply"), DeltaOutcome::Applied);
    assert_eq!(store.person_count().expect("count"), 0);
    assert_eq!(store.find_person_by_credential(CredentialKind::IdNumber, &[1; 32]).expect("query"), None);
    assert!(!store.is_watchlisted(CredentialKind::IdNumber, &[9; 32]).expect("watch"));
}

#[test]
fn pass_uses_and_passback_are_local_and_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        let mut store = Store::open(&path).expect("open");
        assert_eq!(store.pass_uses("vp-1").expect("uses"), 0);
        assert_eq!(store.count_pass_use("vp-1").expect("count"), 1);
        assert_eq!(store.count_pass_use("vp-1").expect("count"), 2);
        store.record_passage("p1", "entry", 10).expect("record");
        store.record_passage("p1", "exit", 20).expect("record");
        store.meta_set("mode", "wartime").expect("meta");
        assert_eq!(store.mode_schedule().expect("mode"), None);
        let schedule = gate_core::ModeSchedule::constant(gate_core::Mode::Normal).with_change(
            5,
            gate_core::Mode::Wartime,
            7,
            gate_core::ModeOrigin { operator: "technician:li".into(), reason: "drill".into() },
        );
        store.set_mode_schedule(&schedule).expect("set mode");
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.pass_uses("vp-1").expect("uses"), 2);
    assert_eq!(store.last_passage("p1").expect("last"), Some(PassbackEntry { side: "exit".into(), at_ms: 20 }));
    assert_eq!(store.meta_get("mode").expect("meta").as_deref(), Some("wartime"));
    let schedule = store.mode_schedule().expect("mode").expect("set");
    assert_eq!((schedule.at(6), schedule.at(7)), (gate_core::Mode::Normal, gate_core::Mode::Wartime));
    assert_eq!(schedule.origin.operator, "technician:li");
    assert!(identity_path(&path).exists(), "the identity database is its own file");
}

#[test]
fn health_batches_apply_in_order_and_records_round_trip() {
    use gate_core::{HealthColour, HealthRecord, NatResult};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let record = HealthRecord {
        person_id: "p1".into(),
        colour: HealthColour::Yellow,
        nat: Some(NatResult { positive: false, sampled_at_ms: 5 }),
        vaccine_doses: 2,
        last_dose_at_ms: Some(3),
        travel_risk: true,
        risk_areas: vec!["A区".into(), "B区".into()],
        assessed_at_ms: 6,
        expires_at_ms: 7,
    };
    let batch = HealthBatch { from_version: 0, to_version: 1, upserts: vec![record.clone()], deletes: vec![] };
    assert_eq!(store.apply_health_batch(&batch, 10).expect("apply"), DeltaOutcome::Applied);
    assert_eq!(store.apply_health_batch(&batch, 11).expect("apply"), DeltaOutcome::AlreadyApplied);
    assert_eq!(store.health_record("p1").expect("get"), Some(record.clone()));
    let gap = HealthBatch { from_version: 5, to_version: 6, ..Default::default() };
    assert_eq!(store.apply_health_batch(&gap, 12).expect("apply"), DeltaOutcome::Gap { local_version: 1 });
    assert_eq!(store.health_state().expect("state"), HealthState { version: 1, synced_at_ms: Some(10) });
    let mut fresh = record.clone();
    fresh.colour = HealthColour::Green;
    fresh.nat = None;
    store.put_health_record(&fresh).expect("put");
    assert_eq!(store.health_record("p1").expect("get"), Some(fresh));
    let del = HealthBatch { from_version: 1, to_version: 2, upserts: vec![], deletes: vec!["p1".into()] };
    assert_eq!(store.apply_health_batch(&del, 13).expect("apply"), DeltaOutcome::Applied);
    assert_eq!(store.health_record("p1").expect("get"), None);
}

#[test]
fn trust_list_only_moves_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    assert_eq!(store.trust_list().expect("get"), None);
    assert_eq!(store.trust_list_version().expect("version"), 0);
    assert!(store.set_trust_list(2, &[vec![1, 2], vec![3]]).expect("set"));
    assert!(!store.set_trust_list(1, &[vec![9]]).expect("older"));
    assert!(!store.set_trust_list(2, &[vec![9]]).expect("same"));
    assert_eq!(store.trust_list().expect("get"), Some((2, vec![vec![1, 2], vec![3]])));
    assert_eq!(store.trust_list_version().expect("version"), 2);
}

#[test]
fn versioned_batches_do_not_wait_for_the_main_database() {
    // A decision holding the main database's write lock (its outbox
    // transaction) must not stop a delta or health batch, and the other way
    // round: each takes only its own file's lock.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    let other = Connection::open(&path).expect("second connection");
    other.busy_timeout(std::time::Duration::from_millis(0)).expect("no waiting");
    other.execute_batch("BEGIN; INSERT INTO meta (key, value) VALUES ('held', 'x');").expect("hold main");
    let started = std::time::Instant::now();
    let delta = IdentityDelta { from_version: 0, to_version: 1, ..Default::default() };
    assert_eq!(store.apply_delta(&delta, 1).expect("delta"), DeltaOutcome::Applied);
    let batch = HealthBatch { from_version: 0, to_version: 1, ..Default::default() };
    assert_eq!(store.apply_health_batch(&batch, 1).expect("health"), DeltaOutcome::Applied);
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "waited {:?}", started.elapsed());
    other.execute_batch("ROLLBACK").expect("release");
}

#[test]
fn a_write_waits_for_another_connections_write_lock_then_lands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let store = Store::open(&path).expect("open");
    let other = Connection::open(&path).expect("second connection");
    other.execute_batch("BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('held', 'x');").expect("hold main");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        other.execute_batch("COMMIT").expect("release");
    });
    let started = std::time::Instant::now();
    store.meta_set("after", "y").expect("written once the lock is free, not refused as busy");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "it did wait: {:?}", started.elapsed());
    release.join().expect("releaser");
    assert_eq!(store.meta_get("held").expect("read").as_deref(), Some("x"));
}

#[test]
fn the_busy_handler_gives_up_after_the_busy_wait() {
    let tries_until_refused = (0..).find(|&t| super::busy_pause(t).is_none()).expect("gives up");
    // 100 quick tries (10 ms), then one a millisecond up to 5 s.
    assert_eq!(tries_until_refused, 100 + 4990);
}

/// Every write one decision makes, in one transaction.
fn decision_like(w: &mut Writer<'_>) -> Result<()> {
    w.append_event("events", Priority::Routine, 10, |seq| vec![seq as u8])?;
    w.count_pass_use("vp-1")?;
    w.record_passage("pass:vp-1", "entry", 10)?;
    w.add_pending_grant("entry", 10, 5_010)?;
    w.append_event("alerts", Priority::Important, 10, |seq| vec![seq as u8])?;
    let schedule = gate_core::ModeSchedule::constant(gate_core::Mode::Sporadic);
    w.set_mode_schedule(&schedule)
}

#[test]
fn a_transaction_failing_at_any_statement_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    let before = faults::row_counts(&path).expect("counts");
    let statements: [(&str, Option<&str>); 8] = [
        ("sequence", Some("NEW.stream = 'events'")),
        ("sequence", Some("NEW.stream = '#outbox'")),
        ("outbox", Some("NEW.stream = 'events'")),
        ("pass_use", None),
        ("passback", None),
        ("pending_grant", None),
        ("outbox", Some("NEW.stream = 'alerts'")),
        ("meta", None),
    ];
    for (table, condition) in statements {
        faults::fail_writes(&path, table, condition).expect("inject");
        let err = store.write(decision_like).expect_err(&format!("a fault in {table} {condition:?} fails the write"));
        assert!(err.to_string().contains("injected fault"), "{err}");
        assert_eq!(faults::row_counts(&path).expect("counts"), before, "nothing of it stays ({table} {condition:?})");
        assert_eq!(store.next_seq("events").expect("seq"), 1, "no seq taken ({table})");
        faults::heal_writes(&path, table).expect("heal");
    }
    store.write(decision_like).expect("healed: the whole transaction commits");
    let after: Vec<i64> = faults::row_counts(&path).expect("counts").into_iter().map(|(_, n)| n).collect();
    // outbox 2, sequence 3 (events, alerts, the outbox positions), pass_use 1,
    // passback 1, pending_grant 1, meta 1
    assert_eq!(after, [2, 3, 1, 1, 1, 1]);
}

#[test]
fn a_full_database_fails_the_whole_decision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    // Fill the database up to a page limit just above its size.
    let pages: i64 = store.conn.pragma_query_value(Some("main"), "page_count", |r| r.get(0)).expect("pages");
    store.conn.pragma_update(Some("main"), "max_page_count", pages).expect("limit");
    let before = faults::row_counts(&path).expect("counts");
    let mut failures = 0;
    for _ in 0..200 {
        match store.write(|w| {
            w.append_event("events", Priority::Routine, 10, |_| vec![7; 2000])?;
            w.record_passage("person:p1", "entry", 10)
        }) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.class(), ErrorClass::Full, "{e}");
                failures += 1;
                break;
            }
        }
    }
    assert_eq!(failures, 1, "the page limit was reached");
    // What committed before is intact; the failed one left nothing.
    let counts = faults::row_counts(&path).expect("counts");
    let outbox = counts.iter().find(|(t, _)| t == "outbox").map(|(_, n)| *n).unwrap_or(0);
    assert_eq!(store.next_seq("events").expect("seq") as i64, outbox + 1, "seq and outbox move together");
    assert!(counts != before || outbox == 0);
}

#[test]
fn queued_rows_keep_their_stream_through_the_migration_from_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        // A database as the previous version left it: topics in the outbox.
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(crate::schema::MAIN_MIGRATIONS[0]).expect("v1");
        conn.execute_batch(crate::schema::MAIN_MIGRATIONS[1]).expect("v2");
        conn.pragma_update(None, "user_version", 2).expect("version");
        conn.execute_batch(
            "INSERT INTO outbox (stream, seq, topic, payload, created_ms)
                 VALUES ('events', 1, 'old-prefix/s/g/events', x'01', 5),
                        ('alerts', 1, 'old-prefix/s/alerts', x'02', 6);
             INSERT INTO sequence (stream, next_seq) VALUES ('events', 2), ('alerts', 2);",
        )
        .expect("rows");
    }
    let mut store = Store::open(&path).expect("migrated");
    let entries = store.outbox_after(0, 10).expect("outbox");
    let streams: Vec<(&str, u64, &[u8])> = entries.iter().map(|e| (e.stream.as_str(), e.seq, &e.payload[..])).collect();
    assert_eq!(streams, [("events", 1, &[1u8][..]), ("alerts", 1, &[2u8][..])]);
    // Whatever prefix the uplink uses now, it maps these streams: nothing
    // is stranded under the old topic. Numbering goes on.
    assert_eq!(store.append_event("events", Priority::Routine, 7, |s| vec![s as u8]).expect("append"), 2);
}

#[test]
fn outbox_positions_never_repeat_even_once_the_outbox_was_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    for _ in 0..3 {
        store.append_event("events", Priority::Routine, 1, |s| vec![s as u8]).expect("append");
    }
    let sent = store.outbox_after(0, 10).expect("outbox");
    let cursor = sent.last().expect("queued").id;
    store.outbox_remove(&sent.iter().map(|e| e.id).collect::<Vec<_>>()).expect("acked");
    drop(store);
    // A plain rowid would start again at 1 in an empty table, behind the
    // uplink's cursor, and the event would never be sent.
    let mut store = Store::open(&path).expect("reopen");
    store.append_event("alerts", Priority::Important, 2, |s| vec![s as u8]).expect("append");
    let next = store.outbox_after(cursor, 10).expect("outbox");
    assert_eq!(next.len(), 1, "the new entry is after the cursor");
    assert_eq!((next[0].stream.as_str(), next[0].seq), ("alerts", 1));
}

#[test]
fn connections_appending_at_once_all_succeed_in_one_gap_free_sequence() {
    // A decision's transaction must take the write lock with its first
    // statement: one that reads first and writes later fails at once with
    // SQLITE_BUSY (no busy handler helps) when another connection commits
    // in between, and a card is refused for it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    Store::open(&path).expect("create");
    let writers: Vec<_> = (0..3)
        .map(|n| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut store = Store::open(&path).expect("open");
                for _ in 0..300 {
                    store
                        .write(|w| {
                            w.append_event("events", Priority::Routine, 1, |s| s.to_be_bytes().to_vec())?;
                            w.count_pass_use(&format!("vp-{n}")).map(|_| ())
                        })
                        .expect("a concurrent append waits its turn, never fails");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let store = Store::open(&path).expect("open");
    let seqs: Vec<u64> = store.outbox_after(0, 1000).expect("outbox").into_iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=900).collect::<Vec<u64>>());
}

/// Write-ahead log frames (pages) written since the last checkpoint.
fn wal_frames(store: &Store) -> i64 {
    store.conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| r.get(1)).expect("checkpoint")
}

#[test]
fn an_event_commit_writes_two_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    // Warm: the first appends create the counters' rows and grow the tables.
    for _ in 0..20 {
        store.append_event("events", Priority::Routine, 1, |_| vec![7; 200]).expect("append");
    }
    store.conn.query_row("PRAGMA main.wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("truncate");
    for _ in 0..10 {
        store.append_event("events", Priority::Routine, 1, |_| vec![7; 200]).expect("append");
    }
    // The counters' page and the outbox's last page; a fsync flushes every
    // frame of a commit, and an index or an AUTOINCREMENT counter would
    // add one to each (five pages a commit before schema version 4). A
    // page split now and then adds a few.
    let frames = wal_frames(&store);
    assert!((20..=24).contains(&frames), "{frames} frames for 10 appends");
}

#[test]
fn queued_rows_and_their_positions_survive_the_migration_to_plain_rowids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        // Version 3: AUTOINCREMENT positions, and the newest rows already
        // sent and removed, so the counter is past the highest row.
        let conn = Connection::open(&path).expect("open");
        for sql in &crate::schema::MAIN_MIGRATIONS[..3] {
            conn.execute_batch(sql).expect("migration");
        }
        conn.pragma_update(None, "user_version", 3).expect("version");
        conn.execute_batch(
            "INSERT INTO outbox (stream, seq, payload, created_ms, priority) VALUES
                ('events', 1, x'01', 5, 0), ('alerts', 1, x'02', 6, 1), ('events', 2, x'03', 7, 0),
                ('events', 3, x'04', 8, 0), ('events', 4, x'05', 9, 0);
             DELETE FROM outbox WHERE seq >= 3;
             INSERT INTO sequence (stream, next_seq) VALUES ('events', 5), ('alerts', 2);
             INSERT INTO pending_grant (side, granted_at_ms, deadline_ms) VALUES ('entry', 10, 99), ('exit', 11, 98);",
        )
        .expect("rows");
    }
    let mut store = Store::open(&path).expect("migrated");
    let queued: Vec<(i64, String, u64)> =
        store.outbox_after(0, 10).expect("outbox").into_iter().map(|e| (e.id, e.stream, e.seq)).collect();
    assert_eq!(queued, [(1, "events".into(), 1), (2, "alerts".into(), 1), (3, "events".into(), 2)]);
    assert_eq!(store.append_event("events", Priority::Routine, 10, |s| vec![s as u8]).expect("append"), 5);
    let newest = store.outbox_after(3, 10).expect("outbox");
    assert_eq!(newest.iter().map(|e| e.id).collect::<Vec<_>>(), [6], "after 5, the last position AUTOINCREMENT gave");
    let grants: Vec<String> = store.pending_grants(0).expect("grants").into_iter().map(|g| g.side).collect();
    assert_eq!(grants, ["entry", "exit"]);
    let autoincrement: i64 =
        store.conn.query_row("SELECT count(*) FROM main.sqlite_sequence", [], |r| r.get(0)).expect("count");
    assert_eq!(autoincrement, 0, "no table counts with AUTOINCREMENT any more");
}

#[test]
fn past_its_capacity_the_outbox_drops_routine_entries_first_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    // events 1-3 routine, 4 important (a block), 5-6 routine; alerts 1 important.
    for priority in [Priority::Routine, Priority::Routine, Priority::Routine, Priority::Important] {
        store.append_event("events", priority, 1, |s| vec![s as u8]).expect("append");
    }
    store.append_event("alerts", Priority::Important, 1, |s| vec![s as u8]).expect("append");
    for _ in 0..2 {
        store.append_event("events", Priority::Routine, 1, |s| vec![s as u8]).expect("append");
    }
    assert_eq!(store.enforce_outbox_capacity(7, |_, _| panic!("within capacity")).expect("check"), None);
    let dropped = store
        .enforce_outbox_capacity(3, |w, dropped| {
            let note = format!("{dropped:?}").into_bytes();
            w.append_event("events", Priority::Important, 2, |_| note).map(|_| ())
        })
        .expect("trim")
        .expect("over capacity");
    // 7 queued, room for 3 with the overflow event: 5 go, all 5 routine.
    assert_eq!(dropped, [("events".to_owned(), 1, 3), ("events".to_owned(), 5, 6)]);
    let left: Vec<(String, u64)> =
        store.outbox_after(0, 10).expect("outbox").into_iter().map(|e| (e.stream, e.seq)).collect();
    assert_eq!(left, [("events".into(), 4), ("alerts".into(), 1), ("events".into(), 7)]);
    // Capacity 1: even blocks and alerts go, oldest first; the explanation stays.
    let dropped = store.enforce_outbox_capacity(1, |_, _| Ok(())).expect("trim").expect("over");
    assert_eq!(dropped, [("alerts".to_owned(), 1, 1), ("events".to_owned(), 4, 4), ("events".to_owned(), 7, 7)]);
}

#[test]
fn routine_entries_past_the_search_window_are_not_looked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    // events 1-4 important (blocks), 5 routine.
    for priority in
        [Priority::Important, Priority::Important, Priority::Important, Priority::Important, Priority::Routine]
    {
        store.append_event("events", priority, 1, |s| vec![s as u8]).expect("append");
    }
    // Dropping 1 with a window of 1 + 3 sees events 1-4 only: no routine
    // one among them, so the oldest goes, not the routine 5th.
    let dropped = store.write(|w| w.drop_oldest_within(1, 3)).expect("drop");
    assert_eq!(dropped, [("events".to_owned(), 1, 1)]);
    // A window reaching it finds it.
    let dropped = store.write(|w| w.drop_oldest_within(1, 4)).expect("drop");
    assert_eq!(dropped, [("events".to_owned(), 5, 5)]);
}

/// Whether any file of the database pair (and their logs) holds `needle`.
fn files_hold(main: &std::path::Path, needle: &str) -> bool {
    let ident = identity_path(main);
    let mut files = vec![main.to_owned(), ident.clone()];
    for base in [main, ident.as_path()] {
        for suffix in ["-wal", "-journal"] {
            files.push(std::path::PathBuf::from(format!("{}{suffix}", base.display())));
        }
    }
    files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

#[test]
fn names_stored_in_clear_by_an_older_version_are_masked_and_leave_no_trace_in_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        // The identity file as version 2 left it: names in clear, one in a
        // live row, one in a row deleted since, one in a table dropped by a
        // snapshot switch (its page on the free list, never overwritten).
        let conn = Connection::open(&path).expect("open");
        conn.execute("ATTACH DATABASE ?1 AS ident", [identity_path(&path).to_string_lossy()]).expect("attach");
        for step in &crate::schema::IDENTITY_MIGRATIONS[..2] {
            let crate::schema::Step::Sql(sql) = step else { panic!("the first two steps are SQL") };
            conn.execute_batch(sql).expect("old step");
        }
        conn.pragma_update(Some("ident"), "user_version", 2).expect("version");
        conn.execute_batch(
            "INSERT INTO ident.person (person_id, category, status, valid_from_ms, valid_to_ms, display_name)
                 VALUES ('p1', 'resident', 'active', 0, 1, '陈建国'), ('p2', 'resident', 'active', 0, 1, '李四光');
             DELETE FROM ident.person WHERE person_id = 'p2';
             CREATE TABLE ident.person_old (display_name TEXT);
             INSERT INTO ident.person_old VALUES ('王小明');
             DROP TABLE ident.person_old;",
        )
        .expect("rows");
    }
    for name in ["陈建国", "李四光", "王小明"] {
        assert!(files_hold(&path, name), "{name} is in the old file (else this test proves nothing)");
    }
    let store = Store::open(&path).expect("migrated");
    assert_eq!(store.find_person("p1").expect("find").map(|p| p.display_name).as_deref(), Some("陈*国"));
    for name in ["陈建国", "李四光", "王小明"] {
        assert!(!files_hold(&path, name), "{name} is still in a file with the store open");
    }
    drop(store);
    for name in ["陈建国", "李四光", "王小明"] {
        assert!(!files_hold(&path, name), "{name} is still in a file after closing");
    }
    assert!(files_hold(&path, "陈*国"), "the masked form is what is kept");
}

#[test]
fn a_name_is_stored_masked_and_a_deleted_persons_row_is_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    let mut p = person("p-tmp");
    p.display_name = "王小明".into();
    store
        .import_people(&[NewPerson { person: p, credentials: vec![(CredentialKind::IdNumber, [4; 32])] }])
        .expect("import");
    assert_eq!(store.find_person("p-tmp").expect("find").map(|p| p.display_name).as_deref(), Some("王*明"));
    assert!(!files_hold(&path, "王小明"));
    assert!(files_hold(&path, "p-tmp"));
    let delta = IdentityDelta { from_version: 0, to_version: 1, deletes: vec!["p-tmp".into()], ..Default::default() };
    assert_eq!(store.apply_delta(&delta, 1).expect("delta"), DeltaOutcome::Applied);
    drop(store);
    // secure_delete: the deleted row's bytes are zeroed, not left in a free slot.
    assert!(!files_hold(&path, "p-tmp"), "the deleted person's row is gone from the files");
}

#[test]
fn upgrading_lists_each_persons_credentials_on_their_row_and_drops_the_index_by_person() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        // The identity file as version 3 left it: two people with
        // credentials, the index by person, a snapshot being staged.
        let mut conn = Connection::open(&path).expect("open");
        conn.execute("ATTACH DATABASE ?1 AS ident", [identity_path(&path).to_string_lossy()]).expect("attach");
        for step in &crate::schema::IDENTITY_MIGRATIONS[..3] {
            let tx = conn.transaction().expect("tx");
            match step {
                crate::schema::Step::Sql(sql) => tx.execute_batch(sql).expect("old step"),
                crate::schema::Step::Rust(apply) => apply(&tx).expect("old step"),
            }
            tx.commit().expect("commit");
        }
        conn.pragma_update(Some("ident"), "user_version", 3).expect("version");
        conn.execute_batch(
            "INSERT INTO ident.person (person_id, category, status, valid_from_ms, valid_to_ms, display_name)
                 VALUES ('p1', 'resident', 'active', 0, 9, '陈*国'), ('p2', 'worker', 'active', 0, 9, '李*光'),
                        ('p3', 'visitor', 'active', 0, 9, '王*明');
             INSERT INTO ident.credential (kind, key, person_id)
                 VALUES ('id_number', zeroblob(32), 'p1'), ('qr_token', randomblob(32), 'p1'),
                        ('id_number', x'0101010101010101010101010101010101010101010101010101010101010101', 'p2');
             CREATE TABLE ident.person_next (person_id TEXT NOT NULL);
             CREATE TABLE ident.snapshot_progress (id INTEGER PRIMARY KEY);",
        )
        .expect("rows");
    }
    let mut store = Store::open(&path).expect("migrated");
    let schema_count = |condition: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM ident.sqlite_schema WHERE {condition}");
        store.conn.query_row(&sql, [], |r| r.get(0)).expect("schema")
    };
    assert_eq!(schema_count("type = 'index' AND name LIKE 'credential_person%'"), 0, "the index by person is dropped");
    assert_eq!(
        schema_count("name IN ('person_next', 'snapshot_progress')"),
        0,
        "the staging of the old layout is discarded"
    );
    let listed = |store: &Store, id: &str| -> usize {
        let raw: Vec<u8> = store
            .conn
            .query_row("SELECT credential_keys FROM ident.person WHERE person_id = ?1", [id], |r| r.get(0))
            .expect("row");
        crate::identity::listed_credentials(&raw).len()
    };
    assert_eq!((listed(&store, "p1"), listed(&store, "p2"), listed(&store, "p3")), (2, 1, 0));
    // The lists are what deltas go by: p1 replaced with a new card, p2 deleted.
    let replaced = NewPerson { person: person("p1"), credentials: vec![(CredentialKind::IdNumber, [7; 32])] };
    let delta = IdentityDelta {
        from_version: 0,
        to_version: 1,
        upserts: vec![replaced],
        deletes: vec!["p2".into()],
        ..Default::default()
    };
    assert_eq!(store.apply_delta(&delta, 1).expect("delta"), DeltaOutcome::Applied);
    let credentials: i64 =
        store.conn.query_row("SELECT count(*) FROM ident.credential", [], |r| r.get(0)).expect("count");
    assert_eq!(credentials, 1, "p1's two old credentials and p2's are gone, p1's new one is there");
    let found = store.find_person_by_credential(CredentialKind::IdNumber, &[7; 32]).expect("lookup");
    assert_eq!(found.map(|p| p.person_id).as_deref(), Some("p1"));
    assert_eq!(store.find_person_by_credential(CredentialKind::IdNumber, &[0; 32]).expect("lookup"), None);
}

#[test]
fn a_person_a_snapshot_drops_leaves_no_trace_in_the_files() {
    use crate::{SnapshotChunk, SnapshotOutcome};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut store = Store::open(&path).expect("open");
    let chunk = |version: u64, ids: &[&str]| SnapshotChunk {
        version,
        chunk_index: 0,
        chunk_count: 1,
        people: ids
            .iter()
            .enumerate()
            .map(|(i, id)| NewPerson {
                person: person(id),
                credentials: vec![(CredentialKind::IdNumber, [i as u8; 32])],
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(
        store.stage_snapshot_chunk(&chunk(1, &["p-kept", "p-dropped"]), 1).expect("stage"),
        SnapshotOutcome::Activated { version: 1 }
    );
    store.free_replaced_identity_tables().expect("free");
    assert_eq!(
        store.stage_snapshot_chunk(&chunk(2, &["p-kept"]), 2).expect("stage"),
        SnapshotOutcome::Activated { version: 2 }
    );
    store.free_replaced_identity_tables().expect("free");
    assert!(store.find_person("p-dropped").expect("find").is_none());
    drop(store);
    assert!(files_hold(&path, "p-kept"), "the kept person is in the file (else this test proves nothing)");
    assert!(!files_hold(&path, "p-dropped"), "the dropped person's rows are zeroed, in every copy");
}
