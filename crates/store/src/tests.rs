//! Store tests against real SQLite files in temporary folders.

use super::*;
use gate_core::SiteKey;

fn person(id: &str) -> PersonRecord {
    PersonRecord {
        person_id: id.into(),
        category: Category::Resident,
        status: PersonStatus::Active,
        valid_from_ms: 0,
        valid_to_ms: i64::MAX,
        display_name: "张三".into(),
    }
}

#[test]
fn credentials_are_found_only_by_their_keyed_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let key = SiteKey::from_bytes([9; 32]);
    let id = "35020319900101123X";
    let hash = key.credential_key(CredentialKind::IdNumber, id);
    store
        .import_people(&[NewPerson {
            person: person("p1"),
            credentials: vec![(CredentialKind::IdNumber, hash)],
        }])
        .expect("import");
    let found = store
        .find_person_by_credential(CredentialKind::IdNumber, &hash)
        .expect("query");
    assert_eq!(found.map(|p| p.person_id), Some("p1".to_string()));
    let other = SiteKey::from_bytes([8; 32]).credential_key(CredentialKind::IdNumber, id);
    assert_eq!(
        store
            .find_person_by_credential(CredentialKind::IdNumber, &other)
            .expect("query"),
        None
    );
    assert_eq!(
        store
            .find_person_by_credential(CredentialKind::Plate, &hash)
            .expect("query"),
        None
    );
}

#[test]
fn reimport_replaces_a_persons_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("g.db")).expect("open");
    let (a, b) = ([1u8; 32], [2u8; 32]);
    store
        .import_people(&[NewPerson {
            person: person("p1"),
            credentials: vec![(CredentialKind::IdNumber, a)],
        }])
        .expect("import");
    let mut suspended = person("p1");
    suspended.status = PersonStatus::Suspended;
    store
        .import_people(&[NewPerson {
            person: suspended,
            credentials: vec![(CredentialKind::IdNumber, b)],
        }])
        .expect("import");
    assert_eq!(
        store
            .find_person_by_credential(CredentialKind::IdNumber, &a)
            .expect("query"),
        None
    );
    let p = store
        .find_person_by_credential(CredentialKind::IdNumber, &b)
        .expect("query")
        .expect("found");
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
                .append_event("gate-events", "t", 10, |seq| seq.to_be_bytes().to_vec())
                .expect("append");
            assert_eq!(seq, expected);
        }
    }
    let mut store = Store::open(&path).expect("reopen");
    assert_eq!(store.next_seq("gate-events").expect("next"), 4);
    assert_eq!(
        store
            .append_event("gate-events", "t", 11, |s| vec![s as u8])
            .expect("append"),
        4
    );
    assert_eq!(
        store
            .append_event("other", "t", 11, |s| vec![s as u8])
            .expect("append"),
        1
    );
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
    assert_eq!(
        store.outbox_stats().expect("stats"),
        OutboxStats {
            depth: 5,
            oldest_created_ms: Some(10)
        }
    );
    store.outbox_remove(entries[0].id).expect("remove");
    store
        .outbox_remove(entries[0].id)
        .expect("remove twice is harmless");
    assert_eq!(store.outbox_after(0, 100).expect("outbox").len(), 4);
    assert_eq!(
        store
            .outbox_after(entries[2].id, 100)
            .expect("outbox")
            .len(),
        2
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    {
        let conn = Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("pragma");
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}
