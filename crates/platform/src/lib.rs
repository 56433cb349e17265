//! `gate-platform`, the central side of the gates: ingest of every gate's
//! events, alerts and status from MQTT shared subscriptions into PostgreSQL
//! (batched, acknowledged after commit, deduplicated on `event_id`), gap
//! detection on each gate's `seq`, the fleet view and the flows.
//!
//! Layout: `config` (platform.toml), `db` (pool, migrations), `wire`
//! (gate.v1 → rows), `seqtrack` (pure gap bookkeeping), `ingest` (the
//! consumer replica), `progress` (that bookkeeping, applied off the
//! write path), `fleet` and `report` (read side), `keys` (the signing key
//! file).

pub mod config;
pub mod db;
pub mod downlink;
pub mod fleet;
pub mod health;
pub mod identity;
pub mod ingest;
pub mod keys;
pub mod progress;
pub mod report;
pub mod routes;
pub mod seqtrack;
pub mod sim;
pub mod simulate;
pub mod wire;
