//! Identity-table figures at village scale, printed by plain `Instant` loops:
//! (a) a full snapshot applied chunk by chunk, (b) credential lookups,
//! (c) decisions (lookup + durable event) while another snapshot is applied
//! from a second thread, (d) this process's peak RSS.
//!
//! `cargo bench -p gate-store --bench identity`. `GATE_BENCH_PEOPLE` (default
//! 2,000,000) sets the size; the database is kept in `GATE_BENCH_DIR`
//! (default `target/identity-bench`) for inspection. The daemon's own RSS
//! with that many identities: `bench/identity-rss.sh`.

use gate_core::{Category, CredentialKind, PersonRecord, PersonStatus, SiteKey, TimeWindow, check_character};
use gate_store::{NewPerson, SnapshotChunk, SnapshotOutcome, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 5_000;
/// A fixed site key: the credential keys are the same in every run.
const SITE_KEY: [u8; 32] = [0x5a; 32];
const DECISIONS: usize = 500;
const DECISION_INTERVAL: Duration = Duration::from_millis(20);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let people: usize = std::env::var("GATE_BENCH_PEOPLE").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let dir = std::env::var_os("GATE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/identity-bench"));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("gated.db");
    for file in ["gated.db", "gated.db-wal", "gated.db-shm", "gated.identity.db"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    let _ = std::fs::remove_file(dir.join("gated.identity.db-wal"));
    let _ = std::fs::remove_file(dir.join("gated.identity.db-shm"));
    let key = SiteKey::from_bytes(SITE_KEY);
    println!("identity bench: {people} people, chunks of {CHUNK}, database {}", db.display());

    // (a) A full snapshot into an empty store.
    let mut store = Store::open(&db)?;
    let applied = apply_snapshot(&mut store, &key, people, 1, 0)?;
    println!(
        "(a) snapshot of {people}: {:.2} s in stage_snapshot_chunk ({:.2} s staging {} chunks, {:.2} s index build + switch); {:.2} s wall with generation",
        applied.in_store.as_secs_f64(),
        applied.staging.as_secs_f64(),
        people.div_ceil(CHUNK),
        applied.activation.as_secs_f64(),
        applied.wall.as_secs_f64()
    );
    assert_eq!(store.person_count()? as usize, people);
    drop(store);

    // (b) Lookups from a fresh connection, as the decision loop has.
    let reader = Store::open(&db)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut keys = Vec::with_capacity(110_000);
    for i in 0..110_000 {
        if i % 11 == 10 {
            keys.push((key.credential_key(CredentialKind::IdNumber, &format!("missing-{i}")), false));
        } else {
            let n = rng.below(people as u64) as usize;
            keys.push((key.credential_key(CredentialKind::IdNumber, &id_number(n)), true));
        }
    }
    for (k, _) in keys.iter().take(1_000) {
        reader.find_person_by_credential(CredentialKind::IdNumber, k)?;
    }
    let mut lookups = Vec::with_capacity(keys.len());
    for (k, exists) in &keys {
        let start = Instant::now();
        let found = reader.find_person_by_credential(CredentialKind::IdNumber, k)?;
        lookups.push(start.elapsed());
        assert_eq!(found.is_some(), *exists);
    }
    let (p50, p99, max) = percentiles(&mut lookups);
    println!(
        "(b) lookup at {people}: {} lookups (10% missing): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        lookups.len(),
        micros(p50),
        micros(p99),
        micros(max)
    );
    drop(reader);

    // (d) Before (c), which adds a second thread's buffers.
    println!("(d) bench process peak RSS after loading and lookups: {} kB (VmHWM)", vm_hwm_kb().unwrap_or(0));

    // (c0) The same decisions with nothing else running: what this disk's
    // durable commit costs on its own.
    {
        let mut decider = Store::open(&db)?;
        let payload = vec![0x42u8; 200];
        let mut quiet = Vec::with_capacity(250);
        let mut next = Instant::now();
        for (k, _) in keys.iter().take(250) {
            next += DECISION_INTERVAL;
            let start = Instant::now();
            let person = decider.find_person_by_credential(CredentialKind::IdNumber, k)?;
            decider.append_event("events", gate_store::Priority::Routine, 0, |_seq| {
                let mut p = payload.clone();
                p.extend(person.as_ref().map(|p| p.person_id.as_bytes()).unwrap_or_default());
                p
            })?;
            quiet.push(start.elapsed());
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let (p50, p99, max) = percentiles(&mut quiet);
        println!(
            "(c0) decisions with no snapshot running: {} at {} /s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            quiet.len(),
            1000 / DECISION_INTERVAL.as_millis(),
            millis(p50),
            millis(p99),
            millis(max)
        );
    }

    // (c) Decisions while another connection applies snapshots.
    let applying = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicU64::new(0));
    let writer = {
        let (db, key, applying, stop, snapshots) =
            (db.clone(), key.clone(), applying.clone(), stop.clone(), snapshots.clone());
        std::thread::spawn(move || -> Result<Vec<Duration>, String> {
            let mut store = Store::open(&db).map_err(|e| e.to_string())?;
            let mut times = Vec::new();
            let mut version = 2;
            while !stop.load(Ordering::Relaxed) {
                let applied = apply_snapshot(&mut store, &key, people, version, version).map_err(|e| e.to_string())?;
                times.push(applied.in_store);
                snapshots.fetch_add(1, Ordering::Relaxed);
                version += 1;
            }
            applying.store(false, Ordering::Relaxed);
            Ok(times)
        })
    };
    let mut decider = Store::open(&db)?;
    let payload = vec![0x42u8; 200];
    let mut decisions = Vec::with_capacity(DECISIONS * 2);
    let (mut lookup_part, mut record_part) = (Vec::new(), Vec::new());
    let mut next = Instant::now();
    // Only decisions taken while a snapshot is being applied count; the
    // writer stops after the snapshot in progress when enough were taken.
    while applying.load(Ordering::Relaxed) {
        next += DECISION_INTERVAL;
        let (k, _) = &keys[decisions.len() % keys.len()];
        let start = Instant::now();
        let person = decider.find_person_by_credential(CredentialKind::IdNumber, k)?;
        let looked_up = start.elapsed();
        decider.append_event("events", gate_store::Priority::Routine, 0, |_seq| {
            let mut p = payload.clone();
            p.extend(person.as_ref().map(|p| p.person_id.as_bytes()).unwrap_or_default());
            p
        })?;
        let took = start.elapsed();
        if applying.load(Ordering::Relaxed) {
            decisions.push(took);
            lookup_part.push(looked_up);
            record_part.push(took - looked_up);
        }
        if decisions.len() >= DECISIONS {
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let snapshot_times = writer.join().map_err(|_| "the snapshot thread panicked")??;
    let (p50, p99, max) = percentiles(&mut decisions);
    let over_5ms = decisions.iter().filter(|d| **d > Duration::from_millis(5)).count();
    println!(
        "(c) decisions during {} snapshot(s) of {people} (each {:?} s): {} decisions at {} /s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} over 5 ms",
        snapshots.load(Ordering::Relaxed),
        snapshot_times.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
        decisions.len(),
        1000 / DECISION_INTERVAL.as_millis(),
        millis(p50),
        millis(p99),
        millis(max),
        over_5ms
    );
    let (l50, l99, lmax) = percentiles(&mut lookup_part);
    let (r50, r99, rmax) = percentiles(&mut record_part);
    println!(
        "    of which lookup p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms; durable append p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        millis(l50),
        millis(l99),
        millis(lmax),
        millis(r50),
        millis(r99),
        millis(rmax)
    );
    println!("(d) bench process peak RSS at the end: {} kB (VmHWM)", vm_hwm_kb().unwrap_or(0));
    println!("database kept: {} (and its .identity.db)", db.display());
    Ok(())
}

struct Applied {
    /// Time inside `stage_snapshot_chunk`, all chunks.
    in_store: Duration,
    staging: Duration,
    activation: Duration,
    wall: Duration,
}

/// Applies a snapshot of `people` generated people (`variant` changes their
/// data, not their credentials) as `version`.
fn apply_snapshot(
    store: &mut Store,
    key: &SiteKey,
    people: usize,
    version: u64,
    variant: u64,
) -> Result<Applied, gate_store::StoreError> {
    let wall = Instant::now();
    let chunk_count = people.div_ceil(CHUNK) as u32;
    let (mut staging, mut activation) = (Duration::ZERO, Duration::ZERO);
    // Out of order, as a broker may deliver them after a resync.
    let order: Vec<u32> = (0..chunk_count).rev().collect();
    for (n, chunk_index) in order.iter().enumerate() {
        let start = *chunk_index as usize * CHUNK;
        let chunk = SnapshotChunk {
            version,
            chunk_index: *chunk_index,
            chunk_count,
            people: (start..(start + CHUNK).min(people)).map(|i| generated_person(key, i, variant)).collect(),
            watchlist: if *chunk_index == 0 {
                (0..100)
                    .map(|i| (CredentialKind::IdNumber, key.credential_key(CredentialKind::IdNumber, &format!("w{i}"))))
                    .collect()
            } else {
                Vec::new()
            },
            revoked_passes: if *chunk_index == 0 {
                (0..100).map(|i| format!("vp-{i:06}")).collect()
            } else {
                Vec::new()
            },
        };
        let began = Instant::now();
        let outcome = store.stage_snapshot_chunk(&chunk, version as i64)?;
        let took = began.elapsed();
        if n + 1 == order.len() {
            assert_eq!(outcome, SnapshotOutcome::Activated { version });
            activation = took;
        } else {
            staging += took;
        }
    }
    Ok(Applied { in_store: staging + activation, staging, activation, wall: wall.elapsed() })
}

/// A valid GB 11643 number, distinct for each `i`.
fn id_number(i: usize) -> String {
    const REGIONS: [&str; 4] = ["350203", "110105", "440524", "320102"];
    let day = i % 10_000;
    let (year, month, dom) = (1950 + day / 336, 1 + (day / 28) % 12, 1 + day % 28);
    let seq = (i / 10_000) % 1000;
    let first17 = format!("{}{year:04}{month:02}{dom:02}{seq:03}", REGIONS[(i / 10_000_000) % 4]);
    let check = check_character(&first17).unwrap_or('0');
    format!("{first17}{check}")
}

/// Field sizes as the platform sends them: a 12-character person id, a
/// three-character name, a tag, some workers with time windows.
fn generated_person(key: &SiteKey, i: usize, variant: u64) -> NewPerson {
    // Ids scattered, as a platform's are, so staging order is not key order.
    let id = (i as u64).wrapping_mul(2_654_435_761) % 10_000_000_000;
    let category = match i % 10 {
        0..=6 => Category::Resident,
        7 | 8 => Category::Worker,
        _ => Category::Visitor,
    };
    let mut person = PersonRecord::new(
        format!("P{id:010}{}", variant % 10),
        category,
        PersonStatus::Active,
        1_577_808_000_000,
        4_102_415_999_000,
    );
    person.display_name = ["张三丰", "李四", "王小明", "欧阳娜娜"][i % 4].into();
    person.tags = match category {
        Category::Resident => vec![if i.is_multiple_of(3) { "landlord" } else { "tenant" }.into()],
        Category::Worker => vec!["catering".into()],
        Category::Visitor => Vec::new(),
    };
    if category == Category::Worker {
        person.time_windows = vec![TimeWindow { weekdays: 0x1f, start_min: 420, end_min: 1140 }];
    }
    NewPerson {
        person,
        credentials: vec![(CredentialKind::IdNumber, key.credential_key(CredentialKind::IdNumber, &id_number(i)))],
    }
}

/// splitmix64: reproducible and enough to pick rows.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
