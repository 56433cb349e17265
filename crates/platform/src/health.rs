//! `gate-platform health publish`: health records from a CSV file, sent to
//! a site's gates as one signed `HealthBatch` on top of the site's current
//! health version (`from_version` → `from_version + 1`), as the gates apply
//! them. Every row is checked before anything is sent.
//!
//! Columns: `person_id,colour,nat,nat_sampled_at,vaccine_doses,last_dose_at,
//! travel_risk,assessed_at,expires_at`. `colour` is green, yellow, red or
//! unassessed; `nat` none, negative or positive; times as `--at` takes them
//! (`2026-12-02T08:00+08:00`, or Unix milliseconds), empty when unknown;
//! `travel_risk` true or false.

use std::path::Path;

use gate_proto::v1 as pb;
use prost::Message;

use crate::downlink::{Downlink, Outgoing, SiteLock, parse_time, publish};

pub const HEADER: [&str; 9] = [
    "person_id",
    "colour",
    "nat",
    "nat_sampled_at",
    "vaccine_doses",
    "last_dose_at",
    "travel_risk",
    "assessed_at",
    "expires_at",
];

/// Parses every row; on any bad row returns every problem with its line.
pub fn parse_records(file: &Path, text: &str) -> Result<Vec<pb::HealthRecord>, Vec<String>> {
    let at = |line: u64, message: String| format!("{}:{line}: {message}", file.display());
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return Err(vec![at(1, format!("cannot read the header: {e}"))]),
    };
    if header != HEADER {
        return Err(vec![at(1, format!("the header must be `{}`, found `{}`", HEADER.join(","), header.join(",")))]);
    }
    let mut errors = Vec::new();
    let mut records = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(at(e.position().map_or(0, |p| p.line()), "malformed row".into()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).unwrap_or("");
        let mut row = Vec::new();
        let person_id = field(0);
        if person_id.is_empty() || person_id.len() > 64 {
            row.push("person_id must be 1 to 64 characters".to_owned());
        }
        let colour = match field(1) {
            "green" => pb::HealthColour::Green,
            "yellow" => pb::HealthColour::Yellow,
            "red" => pb::HealthColour::Red,
            "unassessed" => pb::HealthColour::Unassessed,
            other => {
                row.push(format!("colour must be green, yellow, red or unassessed, found {other:?}"));
                pb::HealthColour::Unspecified
            }
        };
        let nat = match field(2) {
            "none" => pb::NatOutcome::None,
            "negative" => pb::NatOutcome::Negative,
            "positive" => pb::NatOutcome::Positive,
            other => {
                row.push(format!("nat must be none, negative or positive, found {other:?}"));
                pb::NatOutcome::Unspecified
            }
        };
        let mut time = |i: usize, required: bool| -> i64 {
            match field(i) {
                "" if !required => 0,
                raw => parse_time(raw).unwrap_or_else(|e| {
                    row.push(format!("{}: {e}", HEADER[i]));
                    0
                }),
            }
        };
        let nat_sampled_at_ms = time(3, nat != pb::NatOutcome::None);
        let last_dose_at_ms = time(5, false);
        let assessed_at_ms = time(7, true);
        let expires_at_ms = time(8, true);
        let doses = field(4).parse::<u32>().unwrap_or_else(|_| {
            row.push(format!("vaccine_doses must be a whole number, found {:?}", field(4)));
            0
        });
        let travel_risk = match field(6) {
            "true" => true,
            "false" => false,
            other => {
                row.push(format!("travel_risk must be true or false, found {other:?}"));
                false
            }
        };
        if expires_at_ms < assessed_at_ms {
            row.push("expires_at is before assessed_at".into());
        }
        if !row.is_empty() {
            errors.extend(row.into_iter().map(|m| at(line, m)));
            continue;
        }
        records.push(pb::HealthRecord {
            person_id: person_id.to_owned(),
            colour: colour as i32,
            nat: nat as i32,
            nat_sampled_at_ms,
            vaccine_doses: doses,
            last_dose_at_ms,
            travel_risk,
            risk_areas: Vec::new(),
            assessed_at_ms,
            expires_at_ms,
        });
    }
    if errors.is_empty() { Ok(records) } else { Err(errors) }
}

/// Sends `records` as the site's next health batch; returns (from, to).
pub async fn publish_batch(
    d: &Downlink<'_>,
    site: &str,
    records: Vec<pb::HealthRecord>,
    now_ms: i64,
) -> Result<(u64, u64), String> {
    let mut lock = SiteLock::acquire(d.pool, site).await.map_err(|e| e.to_string())?;
    let result = async {
        let from: i64 = lock
            .client
            .query_one("SELECT health_version FROM site_downlink WHERE site_id = $1", &[&site])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        let to = from + 1;
        let batch =
            pb::HealthBatch { from_version: from as u64, to_version: to as u64, upserts: records, deletes: Vec::new() };
        let message = Outgoing { gate: String::new(), stream: "health", retain: false, payload: batch.encode_to_vec() };
        let sealed = lock
            .seal(d.signer, &d.config.mqtt.topic_prefix, site, &[message], now_ms)
            .await
            .map_err(|e| e.to_string())?;
        publish(&d.config.mqtt, "health", &sealed).await?;
        lock.client
            .execute("UPDATE site_downlink SET health_version = $2 WHERE site_id = $1", &[&site, &to])
            .await
            .map_err(|e| e.to_string())?;
        Ok((from as u64, to as u64))
    }
    .await;
    let _ = lock.release().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_records_and_bad_rows_are_all_reported() {
        let text = "person_id,colour,nat,nat_sampled_at,vaccine_doses,last_dose_at,travel_risk,assessed_at,expires_at\n\
                    p1,green,negative,1970-01-01T08:00+08:00,3,,false,1000,2000\n\
                    p2,purple,maybe,,x,,perhaps,5,1\n";
        let errors = parse_records(Path::new("h.csv"), text).expect_err("p2 is bad");
        let all = errors.join("\n");
        for needle in [
            "h.csv:3: colour",
            "h.csv:3: nat must",
            "h.csv:3: vaccine_doses",
            "h.csv:3: travel_risk",
            "h.csv:3: expires_at is before",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        let good = parse_records(Path::new("h.csv"), &text[..text.rfind("p2").expect("p2")]).expect("p1 is good");
        assert_eq!(good.len(), 1);
        assert_eq!(
            (good[0].colour(), good[0].nat(), good[0].nat_sampled_at_ms),
            (pb::HealthColour::Green, pb::NatOutcome::Negative, 0)
        );
        assert_eq!((good[0].vaccine_doses, good[0].assessed_at_ms, good[0].expires_at_ms), (3, 1000, 2000));
    }
}
