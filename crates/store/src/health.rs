//! Health records (synced in versioned batches, or fetched one at a time
//! from the platform) and the trust list for signed health certificates.

use crate::identity::encode_list;
use crate::{Result, Store, StoreError};
use gate_core::{HealthColour, HealthRecord, NatResult, UnixMillis};
use rusqlite::{OptionalExtension, Transaction, params};

/// A health batch from the platform, valid only on top of `from_version`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthBatch {
    pub from_version: u64,
    pub to_version: u64,
    pub upserts: Vec<HealthRecord>,
    pub deletes: Vec<String>,
}

/// The synced health version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthState {
    pub version: u64,
    pub synced_at_ms: Option<UnixMillis>,
}

fn upsert(tx: &Transaction<'_>, r: &HealthRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO ident.health (person_id, colour, nat_positive, nat_sampled_at_ms, vaccine_doses,
                                   last_dose_at_ms, travel_risk, risk_areas, assessed_at_ms, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (person_id) DO UPDATE SET
           colour = excluded.colour, nat_positive = excluded.nat_positive,
           nat_sampled_at_ms = excluded.nat_sampled_at_ms, vaccine_doses = excluded.vaccine_doses,
           last_dose_at_ms = excluded.last_dose_at_ms, travel_risk = excluded.travel_risk,
           risk_areas = excluded.risk_areas, assessed_at_ms = excluded.assessed_at_ms,
           expires_at_ms = excluded.expires_at_ms",
    )?
    .execute(params![
        r.person_id,
        r.colour.as_str(),
        r.nat.map(|n| n.positive),
        r.nat.map(|n| n.sampled_at_ms),
        r.vaccine_doses,
        r.last_dose_at_ms,
        r.travel_risk,
        encode_list(&r.risk_areas),
        r.assessed_at_ms,
        r.expires_at_ms,
    ])?;
    Ok(())
}

impl Store {
    /// One person's health record.
    pub fn health_record(&self, person_id: &str) -> Result<Option<HealthRecord>> {
        type Row = (String, Option<bool>, Option<i64>, i64, Option<i64>, bool, String, i64, i64);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT colour, nat_positive, nat_sampled_at_ms, vaccine_doses, last_dose_at_ms, travel_risk,
                        risk_areas, assessed_at_ms, expires_at_ms
                 FROM ident.health WHERE person_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![person_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((colour, nat_positive, nat_sampled, doses, last_dose, travel, areas, assessed, expires)) = row else {
            return Ok(None);
        };
        let colour = HealthColour::parse(&colour).ok_or_else(|| StoreError::CorruptRow {
            path: self.path.clone(),
            table: "health",
            detail: format!("unknown colour {colour:?}"),
        })?;
        Ok(Some(HealthRecord {
            person_id: person_id.to_owned(),
            colour,
            nat: match (nat_positive, nat_sampled) {
                (Some(positive), Some(sampled_at_ms)) => Some(NatResult { positive, sampled_at_ms }),
                _ => None,
            },
            vaccine_doses: doses.max(0) as u32,
            last_dose_at_ms: last_dose,
            travel_risk: travel,
            risk_areas: if areas.is_empty() { Vec::new() } else { areas.split('\u{1f}').map(str::to_owned).collect() },
            assessed_at_ms: assessed,
            expires_at_ms: expires,
        }))
    }

    /// Stores one record fetched from the platform (no version change).
    pub fn put_health_record(&mut self, record: &HealthRecord) -> Result<()> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(wrap)?;
        upsert(&tx, record).map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    pub fn health_state(&self) -> Result<HealthState> {
        self.conn
            .query_row("SELECT version, synced_at_ms FROM ident.health_state WHERE id = 1", [], |r| {
                Ok(HealthState { version: r.get::<_, i64>(0)? as u64, synced_at_ms: r.get(1)? })
            })
            .map_err(|e| self.err(e))
    }

    /// Applies a health batch in one transaction, only on top of its
    /// `from_version`; the same batch twice changes nothing.
    pub fn apply_health_batch(&mut self, batch: &HealthBatch, now_ms: UnixMillis) -> Result<crate::DeltaOutcome> {
        self.apply_versioned("health_state", batch.from_version, batch.to_version, now_ms, |tx| {
            for id in &batch.deletes {
                tx.prepare_cached("DELETE FROM ident.health WHERE person_id = ?1")?.execute(params![id])?;
            }
            for record in &batch.upserts {
                upsert(tx, record)?;
            }
            Ok(())
        })
    }

    /// The accepted trust list's version (0 when none), without loading it.
    pub fn trust_list_version(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT coalesce(max(version), 0) FROM main.trust_list", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    /// The accepted trust list: its version and signer certificates (DER).
    pub fn trust_list(&self) -> Result<Option<(u64, Vec<Vec<u8>>)>> {
        let version: Option<i64> = self
            .conn
            .query_row("SELECT max(version) FROM main.trust_list", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let Some(version) = version else { return Ok(None) };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT der FROM main.trust_list WHERE version = ?1 ORDER BY position")
            .map_err(|e| self.err(e))?;
        let ders = stmt
            .query_map(params![version], |r| r.get::<_, Vec<u8>>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(Some((version as u64, ders)))
    }

    /// Replaces the trust list with a newer one; an older or equal version
    /// changes nothing and returns false.
    pub fn set_trust_list(&mut self, version: u64, certificates: &[Vec<u8>]) -> Result<bool> {
        let path = self.path.clone();
        let wrap = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(wrap)?;
        let current: Option<i64> =
            tx.query_row("SELECT max(version) FROM main.trust_list", [], |r| r.get(0)).map_err(wrap)?;
        if current.is_some_and(|c| c as u64 >= version) {
            return Ok(false);
        }
        tx.execute("DELETE FROM main.trust_list", []).map_err(wrap)?;
        for (position, der) in certificates.iter().enumerate() {
            tx.execute(
                "INSERT INTO main.trust_list (version, position, der) VALUES (?1, ?2, ?3)",
                params![version as i64, position as i64, der],
            )
            .map_err(wrap)?;
        }
        tx.commit().map_err(wrap)?;
        Ok(true)
    }
}
