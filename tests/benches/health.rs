//! What health verification adds to one decision when the record is local:
//! reading the person's health record from the identity database and
//! evaluating the mode's rules, against a table of 100,000 records. Prints
//! p50 / p99 / max in microseconds (target: p99 at most 20 µs).
//!
//! `cargo bench -p gate-tests --bench health`

use gate_core::{HealthColour, HealthRecord, NatResult};
use gate_engine::{CertificateFacts, HealthRules, evaluate_health};
use std::time::Instant;

const PEOPLE: usize = 100_000;
const SAMPLES: usize = 20_000;
const HOUR: i64 = 3_600_000;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = gate_store::Store::open(&dir.path().join("gated.db")).expect("store");
    let now = 1_800_000_000_000i64;
    let records: Vec<HealthRecord> = (0..PEOPLE)
        .map(|i| HealthRecord {
            person_id: format!("P-{i:08}"),
            colour: if i % 50 == 0 { HealthColour::Yellow } else { HealthColour::Green },
            nat: Some(NatResult { positive: false, sampled_at_ms: now - (i as i64 % 72) * HOUR }),
            vaccine_doses: (i % 4) as u32,
            last_dose_at_ms: Some(now - 2_000 * HOUR),
            travel_risk: i % 97 == 0,
            risk_areas: vec![],
            assessed_at_ms: now - (i as i64 % 20) * HOUR,
            expires_at_ms: now + 24 * HOUR,
        })
        .collect();
    let start = Instant::now();
    for (n, chunk) in records.chunks(5_000).enumerate() {
        let batch = gate_store::HealthBatch {
            from_version: n as u64,
            to_version: n as u64 + 1,
            upserts: chunk.to_vec(),
            deletes: vec![],
        };
        store.apply_health_batch(&batch, now).expect("batch");
    }
    println!("loaded {PEOPLE} health records in {:.1} s", start.elapsed().as_secs_f64());

    let rules = HealthRules { min_doses: 2, ..HealthRules::default() };
    let none = CertificateFacts::default();
    let mut lookup_eval = Vec::with_capacity(SAMPLES);
    let mut eval_only = Vec::with_capacity(SAMPLES);
    let mut passed = 0usize;
    for i in 0..SAMPLES {
        let id = format!("P-{:08}", (i * 7919) % PEOPLE);
        let t0 = Instant::now();
        let record = store.health_record(&id).expect("read");
        let t1 = Instant::now();
        let verdict = evaluate_health(record.as_ref(), &none, &rules, now);
        let t2 = Instant::now();
        passed += usize::from(verdict.outcome.is_ok());
        lookup_eval.push((t2 - t0).as_nanos() as f64 / 1000.0);
        eval_only.push((t2 - t1).as_nanos() as f64 / 1000.0);
    }
    for (name, mut v) in [("record lookup + rules", lookup_eval), ("rules only", eval_only)] {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        println!(
            "{name:>22}: p50 {:6.2} µs  p99 {:6.2} µs  max {:8.2} µs  ({} samples)",
            at(0.50),
            at(0.99),
            v[v.len() - 1],
            v.len()
        );
    }
    println!("({passed} of {SAMPLES} passed the rules)");
}
