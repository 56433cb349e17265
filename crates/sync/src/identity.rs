//! Identity sync from the platform: `gate.v1.IdentityBatch` on
//! `{prefix}/{site}/identity`, decoded, checked and applied to the store.
//!
//! A delta applies in one transaction on top of its `from_version`. A
//! snapshot arrives in chunks, any order, staged by the store and switched
//! in when the last one is there; a snapshot that stops receiving chunks
//! asks for a resync ([`check_stalled`]).

use crate::convert;
use gate_proto::v1 as pb;
use gate_store::{DeltaOutcome, IdentityDelta, SnapshotChunk, SnapshotOutcome, Store};
use prost::Message;

/// More chunks than this is a mistake or an attack: at 5,000 people a chunk
/// it would be half a billion people.
pub const MAX_SNAPSHOT_CHUNKS: u32 = 100_000;
/// A snapshot that received no chunk for this long is missing some: the
/// gate asks for a resync, and again after each further such wait.
pub const SNAPSHOT_STALL_MS: i64 = 60_000;

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
    if let Err(e) = crate::limits::identity_batch(&batch) {
        return IdentityOutcome::Rejected { why: e.to_string() };
    }
    match batch.body {
        None => IdentityOutcome::Rejected { why: "empty IdentityBatch".into() },
        Some(pb::identity_batch::Body::Delta(delta)) => apply_delta(store, delta, now_ms),
        Some(pb::identity_batch::Body::Snapshot(chunk)) => stage_snapshot(store, chunk, now_ms),
    }
}

/// Asks for a resync when the snapshot being staged has waited longer than
/// [`SNAPSHOT_STALL_MS`] for a chunk. Messages alone cannot notice a chunk
/// that never comes, so the session calls this on its status tick. Returns
/// `Resync { reason: "missing_chunk" }` at most once per wait.
pub fn check_stalled(store: &mut Store, now_ms: i64) -> Option<IdentityOutcome> {
    let progress = store.snapshot_progress().ok()??;
    let local_version = store.identity_state().ok()?.version;
    if progress.version <= local_version {
        // Overtaken (a delta chain got there first): nothing to wait for.
        let _ = store.discard_snapshot();
        return None;
    }
    if now_ms.saturating_sub(progress.last_activity_ms) < SNAPSHOT_STALL_MS {
        return None;
    }
    // Restart the wait, so the platform gets one request per timeout.
    store.note_snapshot_resync(now_ms).ok()?;
    Some(IdentityOutcome::Resync { local_version, reason: "missing_chunk" })
}

fn stage_snapshot(store: &mut Store, chunk: pb::IdentitySnapshotChunk, now_ms: i64) -> IdentityOutcome {
    let (version, chunk_index, chunk_count) = (chunk.version, chunk.chunk_index, chunk.chunk_count);
    // The store keeps versions as SQLite integers.
    if version == 0 || version > i64::MAX as u64 {
        return IdentityOutcome::Rejected { why: format!("snapshot version {version} out of range") };
    }
    if chunk_count == 0 || chunk_count > MAX_SNAPSHOT_CHUNKS {
        return IdentityOutcome::Rejected { why: format!("snapshot chunk_count {chunk_count} out of range") };
    }
    if chunk_index >= chunk_count {
        return IdentityOutcome::Rejected { why: format!("snapshot chunk {chunk_index} of {chunk_count}") };
    }
    let converted = (|| -> Result<SnapshotChunk, String> {
        if let Some(bad) = chunk.revoked_passes.iter().find(|p| p.is_empty() || p.len() > 128) {
            return Err(format!("revoked pass id of {} bytes", bad.len()));
        }
        Ok(SnapshotChunk {
            version,
            chunk_index,
            chunk_count,
            people: chunk.people.into_iter().map(convert::person_from_wire).collect::<Result<_, _>>()?,
            watchlist: chunk.watchlist.iter().map(convert::credential_from_wire).collect::<Result<_, _>>()?,
            revoked_passes: chunk.revoked_passes,
        })
    })();
    let chunk = match converted {
        Ok(chunk) => chunk,
        Err(why) => return IdentityOutcome::Rejected { why },
    };
    match off_the_runtime(|| store.stage_snapshot_chunk(&chunk, now_ms)) {
        Ok(SnapshotOutcome::Staged { .. }) => IdentityOutcome::Staged { version, chunk_index, chunk_count },
        Ok(SnapshotOutcome::Activated { version }) => IdentityOutcome::Applied { version },
        Ok(SnapshotOutcome::Duplicate | SnapshotOutcome::Stale) => IdentityOutcome::Duplicate,
        Err(e) => IdentityOutcome::Rejected { why: format!("store refused the snapshot chunk: {e}") },
    }
}

/// Staging a chunk takes tens of milliseconds and the last chunk's switch
/// seconds at two million people: on a multi-thread runtime, let the other
/// tasks of this worker (the decision loop among them) move to another
/// thread meanwhile.
pub(crate) fn off_the_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
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
