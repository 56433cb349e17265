//! Identity sync from the platform: `gate.v1.IdentityBatch` on
//! `{prefix}/{site}/identity`, decoded, checked and applied to the store.

use crate::convert;
use gate_proto::v1 as pb;
use gate_store::{DeltaOutcome, IdentityDelta, Store};
use prost::Message;

/// What one identity message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityOutcome {
    /// The local table is now at `version`.
    Applied { version: u64 },
    /// Already applied before: nothing changed.
    Duplicate,
    /// A snapshot chunk was staged; the snapshot is not complete yet.
    Staged { version: u64, chunk_index: u32, chunk_count: u32 },
    /// Nothing applied; the gate must ask for a resync from `local_version`.
    Resync { local_version: u64, reason: &'static str },
    /// Nothing applied: the message is malformed (counted, logged by topic).
    Rejected { why: String },
}

/// Handles one message. Never applies part of a message.
pub fn handle_identity(store: &mut Store, payload: &[u8], now_ms: i64) -> IdentityOutcome {
    let batch = match pb::IdentityBatch::decode(payload) {
        Ok(batch) => batch,
        Err(e) => return IdentityOutcome::Rejected { why: format!("not an IdentityBatch: {e}") },
    };
    match batch.body {
        None => IdentityOutcome::Rejected { why: "empty IdentityBatch".into() },
        Some(pb::identity_batch::Body::Delta(delta)) => apply_delta(store, delta, now_ms),
        Some(pb::identity_batch::Body::Snapshot(_)) => {
            IdentityOutcome::Rejected { why: "snapshot chunks are not applied by this build".into() }
        }
    }
}

fn apply_delta(store: &mut Store, delta: pb::IdentityDelta, now_ms: i64) -> IdentityOutcome {
    if delta.to_version <= delta.from_version {
        return IdentityOutcome::Rejected { why: "delta to_version must exceed from_version".into() };
    }
    let converted = (|| -> Result<IdentityDelta, String> {
        Ok(IdentityDelta {
            from_version: delta.from_version,
            to_version: delta.to_version,
            upserts: delta.upserts.into_iter().map(convert::person_from_wire).collect::<Result<_, _>>()?,
            deletes: delta.deletes,
            watch_add: delta.watch_add.iter().map(convert::credential_from_wire).collect::<Result<_, _>>()?,
            watch_remove: delta.watch_remove.iter().map(convert::credential_from_wire).collect::<Result<_, _>>()?,
            revoke_passes: delta.revoke_passes,
        })
    })();
    let delta = match converted {
        Ok(delta) => delta,
        Err(why) => return IdentityOutcome::Rejected { why },
    };
    match store.apply_delta(&delta, now_ms) {
        Ok(DeltaOutcome::Applied) => IdentityOutcome::Applied { version: delta.to_version },
        Ok(DeltaOutcome::AlreadyApplied) => IdentityOutcome::Duplicate,
        Ok(DeltaOutcome::Gap { local_version }) => IdentityOutcome::Resync { local_version, reason: "gap" },
        Err(e) => IdentityOutcome::Rejected { why: format!("store refused the delta: {e}") },
    }
}
