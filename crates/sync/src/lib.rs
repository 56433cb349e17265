//! The only crate that knows MQTT and protobuf.
//!
//! Uplink: the outbox (durable, in SQLite) is published in outbox order at
//! QoS 1; an entry leaves the outbox only after the broker's PUBACK. The MQTT
//! session is clean: the outbox, not the broker, is the source of truth, so
//! after every (re)connection publishing starts again from the oldest
//! unacknowledged entry. Delivery is therefore at least once; consumers
//! deduplicate by `event_id`.
//!
//! Status: a retained `GateStatus` on `{prefix}/{site}/{gate}/status` on every
//! connection and periodically, and a retained last will saying offline.

mod encode;
mod uplink;

pub use encode::{DecisionRecord, encode_decision_event, encode_status};
pub use uplink::{DeviceReport, LinkState, SyncSettings, run_sync};

use gate_core::{GateId, SiteId};

/// The MQTT topics of one gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub events: String,
    pub status: String,
}

impl Topics {
    pub fn new(prefix: &str, site: &SiteId, gate: &GateId) -> Self {
        let base = format!("{prefix}/{site}/{gate}");
        Topics {
            events: format!("{base}/events"),
            status: format!("{base}/status"),
        }
    }
}

/// The outbox stream that carries a gate's `GateEvent`s (one `seq` space).
pub const EVENT_STREAM: &str = "events";
