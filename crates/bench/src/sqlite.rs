//! The store's figures and the raw SQLite ceilings beside them: durable
//! single-row commits, point lookups on the identity tables, a bulk insert;
//! and the generated data (queued events).
//!
//! The raw ceilings talk to SQLite directly (rusqlite), on purpose: they are
//! what the hardware and SQLite give without the store's code.

use crate::report::{Row, Stats};
use crate::{Ctx, hw_key};
use anyhow::{Context, Result};
use gate_core::{CredentialKind, SiteKey};
use gate_proto::v1 as pb;
use gate_store::Store;
use prost::Message;
use rusqlite::{Connection, params};
use std::path::Path;
use std::time::{Duration, Instant};

/// A fresh database beside `dir`'s others, on the same disk, set up as the
/// gate's are: WAL, `synchronous = FULL`.
pub(crate) fn raw_db(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")?;
    Ok(conn)
}

/// The store's credential lookup, as a bare statement on the identity
/// file (the ceiling of every lookup figure).
pub(crate) const RAW_LOOKUP: &str =
    "SELECT p.person_id, p.category, p.status, p.valid_from_ms, p.valid_to_ms, p.display_name,
            p.tags, p.allowed_gates, p.time_windows
     FROM credential c JOIN person p ON p.person_id = c.person_id
     WHERE c.kind = ?1 AND c.key = ?2";

/// One durable single-row commit on a [`raw_db`].
pub(crate) fn raw_commit(conn: &mut Connection, payload: &[u8]) -> Result<()> {
    let tx = conn.transaction()?;
    tx.prepare_cached("INSERT INTO t (payload) VALUES (?1)")?.execute(params![payload])?;
    tx.commit()?;
    Ok(())
}

/// As many durable single-row commits as fit in `budget`: their number.
fn raw_commits_for(conn: &mut Connection, budget: Duration, payload: &[u8]) -> Result<u64> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        raw_commit(conn, payload)?;
        n += 1;
    }
    Ok(n)
}

/// `decisions_per_s`: the decision loop's store work at saturation (the
/// credential lookup, then the event appended durably with its seq), as
/// fast as it goes, against raw single-row durable commits; in alternating
/// slices so both see the same machine.
pub fn decisions_per_s(ctx: &Ctx, dir: &Path) -> Result<Row> {
    let key = SiteKey::from_bytes(hw_key());
    let db = dir.join("gated.db");
    let mut store = Store::open(&db)?;
    let people: Vec<_> = (0..1000).map(|i| crate::daemon::new_person(&key, i)).collect();
    store.import_people(&people)?;
    let keys: Vec<[u8; 32]> = (0..1000)
        .map(|i| key.credential_key(CredentialKind::IdNumber, &hw_sim::platform::synthetic_id_number(i)))
        .collect();
    let mut raw = raw_db(&dir.join("raw-commit.db"))?;
    let payload = event_payload(1);
    let slices = 4u32;
    let slice = Duration::from_secs_f64(ctx.sizes.decisions_seconds / f64::from(slices));
    let (mut ours, mut theirs) = (0u64, 0u64);
    let (mut ours_time, mut theirs_time) = (Duration::ZERO, Duration::ZERO);
    let mut n = 0usize;
    for _ in 0..slices {
        let start = Instant::now();
        theirs += raw_commits_for(&mut raw, slice, &payload)?;
        theirs_time += start.elapsed();
        let start = Instant::now();
        while start.elapsed() < slice {
            let person = store.find_person_by_credential(CredentialKind::IdNumber, &keys[n % keys.len()])?;
            anyhow::ensure!(person.is_some(), "a generated person is missing");
            store.append_event(gate_sync_event_stream(), gate_store::Priority::Routine, 0, event_payload)?;
            n += 1;
            ours += 1;
        }
        ours_time += start.elapsed();
    }
    let rate = ours as f64 / ours_time.as_secs_f64();
    let ceiling = theirs as f64 / theirs_time.as_secs_f64();
    Ok(Row::new("decisions_per_s", rate, "decisions/s")
        .ceiling("raw durable single-row commits/s", ceiling)
        .goal(">= 80% of the ceiling", rate >= 0.8 * ceiling)
        .detail("decisions", ours)
        .detail("seconds", ours_time.as_secs_f64()))
}

/// The stream the daemon's decisions take their seq from (`gate_sync::EVENT_STREAM`).
fn gate_sync_event_stream() -> &'static str {
    "events"
}

pub const EVENTS_TOPIC: &str = gate_tests::EVENTS_TOPIC;

/// A decision event as the daemon sends it, with `seq`: about 200 bytes.
pub fn event_payload(seq: u64) -> Vec<u8> {
    pb::GateEvent {
        event_id: format!("{:08x}-0000-4000-8000-{:012x}", seq as u32, seq),
        seq,
        site_id: gate_tests::SITE.to_owned(),
        gate_id: gate_tests::GATE.to_owned(),
        occurred_at_ms: 1_800_000_000_000 + seq as i64,
        credential_type: pb::CredentialType::IdCard as i32,
        subject: "350203********1234".to_owned(),
        person_id: format!("G{:07}", seq % 10_000_000),
        category: pb::Category::Resident as i32,
        decision: pb::Decision::Pass as i32,
        kind: pb::EventKind::Decision as i32,
        lane: pb::Lane::Pedestrian as i32,
        direction: pb::Direction::Entry as i32,
        mode: pb::Mode::Normal as i32,
        policy_version: "normal/1".to_owned(),
        tags: vec!["tenant".to_owned()],
        side: pb::Direction::Entry as i32,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Queues `count` decision events in the outbox of the store at `db`, through
/// the store's own `append_event` (each its own durable transaction). Done on
/// a memory file system when there is one (the commits' fsyncs cost nothing
/// there) and copied back: filling 10 million events at the disk's commit
/// rate would take hours.
pub fn fill_outbox(ctx: &Ctx, db: &Path, count: u64) -> Result<()> {
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() { Some(tempfile::tempdir_in(shm)?) } else { None };
    let fill_db = match &scratch {
        Some(dir) => {
            let to = dir.path().join("gated.db");
            for (from, to) in
                [(db.to_owned(), to.clone()), (gate_store::identity_path(db), gate_store::identity_path(&to))]
            {
                if from.exists() {
                    std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
                }
            }
            to
        }
        None => db.to_owned(),
    };
    {
        let mut store = Store::open(&fill_db)?;
        let bar = ctx.progress("queueing events", count);
        for i in 0..count {
            store.append_event(
                gate_sync_event_stream(),
                gate_store::Priority::Routine,
                1_800_000_000_000,
                event_payload,
            )?;
            if i % 1000 == 0 {
                bar.set_position(i);
            }
        }
        bar.finish_and_clear();
    }
    if scratch.is_some() {
        // The store is closed: its WAL is checkpointed into the file.
        for (from, to) in
            [(fill_db.clone(), db.to_owned()), (gate_store::identity_path(&fill_db), gate_store::identity_path(db))]
        {
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
            }
        }
    }
    Ok(())
}

/// Point lookups of credentials (a tenth of them unknown) through the store
/// and through a bare prepared statement running the same query on the same
/// tables; alternating blocks of fresh random keys.
pub fn lookups(db: &Path, people: usize, count: usize, name: &str) -> Result<Row> {
    let key = SiteKey::from_bytes(hw_key());
    let store = Store::open(db)?;
    let raw = Connection::open(gate_store::identity_path(db))?;
    let mut stmt = raw.prepare(RAW_LOOKUP)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut next_keys = |n: usize| -> Vec<([u8; 32], bool)> {
        (0..n)
            .map(|i| {
                if i % 10 == 9 {
                    (key.credential_key(CredentialKind::IdNumber, &format!("missing-{}", rng.below(u64::MAX))), false)
                } else {
                    let k = rng.below(people as u64) as usize;
                    (key.credential_key(CredentialKind::IdNumber, &hw_sim::platform::synthetic_id_number(k)), true)
                }
            })
            .collect()
    };
    let block = 5_000.min(count.max(10));
    let (mut ours, mut theirs) = (Vec::with_capacity(count), Vec::with_capacity(count));
    // Warm-up of both paths.
    for (k, _) in next_keys(1000) {
        store.find_person_by_credential(CredentialKind::IdNumber, &k)?;
        stmt.query_map(params!["id_number", &k[..]], |r| r.get::<_, String>(0))?.for_each(drop);
    }
    while ours.len() < count {
        for (k, exists) in next_keys(block) {
            let start = Instant::now();
            let found = store.find_person_by_credential(CredentialKind::IdNumber, &k)?;
            ours.push(start.elapsed());
            anyhow::ensure!(found.is_some() == exists, "lookup found {:?}, expected {exists}", found.is_some());
        }
        for (k, exists) in next_keys(block) {
            let start = Instant::now();
            let mut rows = stmt.query(params!["id_number", &k[..]])?;
            let found = match rows.next()? {
                Some(r) => {
                    let row = (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, Option<String>>(7)?,
                        r.get::<_, String>(8)?,
                    );
                    std::hint::black_box(row);
                    true
                }
                None => false,
            };
            theirs.push(start.elapsed());
            anyhow::ensure!(found == exists, "raw lookup found {found}, expected {exists}");
        }
    }
    let ours = Stats::of(&ours).context("no lookups")?;
    let theirs = Stats::of(&theirs).context("no lookups")?;
    let ratio = ours.p99 / theirs.p99;
    Ok(Row::new(name, ours.p99, "us")
        .p50(ours.p50)
        .ceiling("raw rusqlite lookup p99", theirs.p99)
        .goal("<= 1.5x and p99 <= 50 us", ratio <= 1.5 && ours.p99 <= 50.0)
        .detail("people", people as u64)
        .detail("lookups", ours.count as u64)
        .detail("ceiling_p50", theirs.p50))
}

/// The identity tables of `source` (its schema, then its rows, in one
/// transaction, then its indexes) written into a fresh database at `to`:
/// the raw cost of putting a snapshot's rows on this disk.
pub fn raw_bulk_insert(source: &Path, to: &Path) -> Result<(Duration, u64)> {
    let src = Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut schema: Vec<(String, String, String)> = src
        .prepare(
            "SELECT type, name, sql FROM sqlite_master
             WHERE tbl_name IN ('person', 'credential') AND sql IS NOT NULL ORDER BY type DESC",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    schema.sort_by_key(|(kind, _, _)| kind != "table");
    let start = Instant::now();
    let mut dst = Connection::open(to)?;
    dst.pragma_update(None, "journal_mode", "WAL")?;
    dst.pragma_update(None, "synchronous", "FULL")?;
    for (_, _, sql) in schema.iter().filter(|(kind, _, _)| kind == "table") {
        dst.execute_batch(sql)?;
    }
    let mut rows = 0u64;
    let tx = dst.transaction()?;
    for table in ["person", "credential"] {
        let columns: Vec<String> = src
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let marks = vec!["?"; columns.len()].join(", ");
        let mut insert = tx.prepare(&format!("INSERT INTO {table} VALUES ({marks})"))?;
        let mut select = src.prepare(&format!("SELECT * FROM {table}"))?;
        let mut cursor = select.query([])?;
        while let Some(row) = cursor.next()? {
            let values: Vec<rusqlite::types::Value> =
                (0..columns.len()).map(|i| row.get(i)).collect::<Result<_, _>>()?;
            insert.execute(rusqlite::params_from_iter(values))?;
            rows += 1;
        }
    }
    tx.commit()?;
    for (_, _, sql) in schema.iter().filter(|(kind, _, _)| kind == "index") {
        dst.execute_batch(sql)?;
    }
    Ok((start.elapsed(), rows))
}

/// splitmix64: reproducible and enough to pick rows.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}
