//! Generated protobuf types of package `gate.v1` (from `proto/gate/v1`),
//! and nothing else: conversions from domain types live in `gate-sync`.

#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/gate.v1.rs"));
}
