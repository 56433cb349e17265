//! The only crate that knows MQTT and protobuf.
//!
//! Uplink: the outbox (durable, in SQLite) is published in outbox order at
//! QoS 1; an entry leaves the outbox only after the broker's PUBACK. The MQTT
//! session is clean: the outbox, not the broker, is the source of truth, so
//! after every (re)connection publishing starts again from the oldest
//! unacknowledged entry. Delivery is therefore at least once; consumers
//! deduplicate by `event_id`.
//!
//! The session speaks MQTT 5 (`rumqttc::v5`) so that it can announce a
//! Maximum Packet Size at CONNECT: the broker then drops any larger message
//! for this client rather than sending it, and no message on a subscribed
//! topic, retained or not, can break the session and stall the uplink.
//!
//! Status: a retained `GateStatus` on `{prefix}/{site}/{gate}/status` on every
//! connection and periodically, and a retained last will saying offline.
//!
//! Downlink: the site mode (`{prefix}/{site}/mode`, retained), the identity
//! table (`{prefix}/{site}/identity`), health batches and answers, the trust
//! list, the platform's heartbeat, key rotations and resets. Every message
//! is a signed envelope verified in one place (`signed`) before its content
//! is even decoded; then the content is checked whole (`limits` bounds every
//! string) before anything is applied. A refused or malformed message is
//! counted, logged with its topic and reason, and dropped.

mod convert;
mod downlink;
mod encode;
mod health;
mod identity;
pub mod limits;
pub mod signed;
mod tls;
mod uplink;
pub mod watch;

pub use downlink::{DownlinkCounters, EventContext, handle_downlink, set_mode_by_technician};
pub use encode::{AlertRecord, EventBody, EventRecord, Side, SiteState, encode_alert, encode_event, encode_status};
pub use gate_envelope::Refusal;
pub use health::{HealthAnswer, HealthQuery, encode_health_batch_for_tests, encode_trust_list};
pub use identity::{IdentityOutcome, MAX_SNAPSHOT_CHUNKS, SNAPSHOT_STALL_MS, check_stalled, handle_identity};
pub use tls::{AuthError, BrokerAuth, Loaded, TlsFiles};
pub use uplink::{DeviceReport, LinkState, SyncSettings, run_sync};
pub use watch::{PlatformWatch, load_floor};

use gate_core::{GateId, SiteId};

/// The MQTT topics of one gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// `{prefix}/{site}/{gate}/events`, up: `GateEvent`.
    pub events: String,
    /// `{prefix}/{site}/{gate}/status`, up, retained: `GateStatus`.
    pub status: String,
    /// `{prefix}/{site}/{gate}/sync`, up: `SyncRequest`.
    pub sync: String,
    /// `{prefix}/{site}/alerts`, up: `Alert`.
    pub alerts: String,
    /// `{prefix}/{site}/mode`, down, retained: `ModeChange`.
    pub mode: String,
    /// `{prefix}/{site}/identity`, down: `IdentityBatch`.
    pub identity: String,
    /// `{prefix}/{site}/health`, down: `HealthBatch`.
    pub health: String,
    /// `{prefix}/{site}/trust`, down, retained: `SignedTrustList`.
    pub trust: String,
    /// `{prefix}/{site}/{gate}/health/req`, up: `HealthRequest`.
    pub health_req: String,
    /// `{prefix}/{site}/{gate}/health/resp`, down: `HealthResponse`.
    pub health_resp: String,
    /// `{prefix}/{site}/heartbeat`, down, retained: `PlatformHeartbeat`.
    pub heartbeat: String,
    /// `{prefix}/{site}/keys`, down, retained: `KeyRotation`.
    pub keys: String,
    /// `{prefix}/{site}/reset`, down: `SiteReset`.
    pub reset: String,
}

impl Topics {
    /// The topic an outbox stream is published on; `None` for a stream
    /// this daemon does not know.
    pub fn for_stream(&self, stream: &str) -> Option<&str> {
        match stream {
            EVENT_STREAM => Some(&self.events),
            ALERT_STREAM => Some(&self.alerts),
            _ => None,
        }
    }

    pub fn new(prefix: &str, site: &SiteId, gate: &GateId) -> Self {
        let base = format!("{prefix}/{site}/{gate}");
        Topics {
            events: format!("{base}/events"),
            status: format!("{base}/status"),
            sync: format!("{base}/sync"),
            alerts: format!("{prefix}/{site}/alerts"),
            mode: format!("{prefix}/{site}/mode"),
            identity: format!("{prefix}/{site}/identity"),
            health: format!("{prefix}/{site}/health"),
            trust: format!("{prefix}/{site}/trust"),
            health_req: format!("{base}/health/req"),
            health_resp: format!("{base}/health/resp"),
            heartbeat: format!("{prefix}/{site}/heartbeat"),
            keys: format!("{prefix}/{site}/keys"),
            reset: format!("{prefix}/{site}/reset"),
        }
    }
}

/// The outbox stream that carries a gate's `GateEvent`s (one `seq` space).
pub const EVENT_STREAM: &str = "events";
/// The outbox stream of a gate's `Alert`s (its own gap-free `seq`).
pub const ALERT_STREAM: &str = "alerts";
