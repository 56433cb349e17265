//! The control socket's wire format: one JSON object per line. The client
//! sends one [`Request`]; the daemon answers with one [`Response`] (or, for
//! `tail`, a stream of them until either side closes). Every message carries
//! the protocol version `v`, so an old `gatectl` against a newer daemon gets
//! a clear refusal instead of a misread field.

use crate::activity::Activity;
use serde::{Deserialize, Serialize};

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads (a lookup is well under 1 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Request { v: PROTOCOL_VERSION, command }
    }
}

/// Reads one request line as the daemon does: a request this build
/// understands, or the message to send back (a different protocol version
/// named as such, anything else as malformed). The line is never echoed: a
/// lookup carries a credential in clear.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let unsupported = |v: u32| {
        format!(
            "protocol version {v} is not supported (this daemon speaks {PROTOCOL_VERSION}); use the gatectl of the same release"
        )
    };
    match serde_json::from_str::<Request>(line) {
        Ok(request) if request.v == PROTOCOL_VERSION => Ok(request),
        Ok(request) => Err(unsupported(request.v)),
        Err(_) => {
            let versioned = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("v")?.as_u64())
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX));
            match versioned {
                Some(v) if v != PROTOCOL_VERSION => Err(unsupported(v)),
                _ => Err("malformed request".to_owned()),
            }
        }
    }
}

/// What a technician asks of the running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Mode, versions, broker, outbox, devices, uptime.
    Status,
    /// Decisions and alarms as they happen, until the client closes.
    Tail,
    /// What the gate would decide now; records nothing, unlocks nothing.
    Lookup {
        credential: Credential,
        /// `entry` or `exit`; default the gate's usual side.
        side: Option<String>,
    },
    /// A manual unlock, recorded as an event first.
    Open {
        reason: String,
        side: Option<String>,
        /// The login behind `sudo`, when the client runs as root; the daemon
        /// names non-root operators from their uid itself.
        sudo_user: Option<String>,
    },
    /// Per-device checks for commissioning.
    Selftest {
        /// Pulse each wired unlock output (recorded as manual opens).
        pulse: bool,
        sudo_user: Option<String>,
    },
    /// Queue depth, oldest entry, by topic.
    Outbox,
    /// A technician's mode override (no platform key needed): recorded
    /// with the operator the daemon names from the peer's uid.
    SetMode {
        /// `normal`, `sporadic` or `wartime`.
        mode: String,
        reason: String,
        sudo_user: Option<String>,
    },
}

/// A credential typed in by the technician. Travels only over the local,
/// permission-checked socket; the daemon hashes it and never logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Credential {
    IdNumber(String),
    Card(String),
    Plate(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    #[serde(flatten)]
    pub reply: Reply,
}

impl Response {
    pub fn new(reply: Reply) -> Self {
        Response { v: PROTOCOL_VERSION, reply }
    }
}

// One reply is built per request and written out at once: the status
// variant's size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(StatusReport),
    /// The tail is subscribed: every later line is an `activity`.
    Tailing,
    Activity {
        activity: Activity,
    },
    /// The reader fell behind and this many lines were dropped.
    Lagged {
        missed: u64,
    },
    Lookup(LookupReport),
    Opened(OpenReport),
    Selftest(SelftestReport),
    Outbox(OutboxReport),
    ModeSet(ModeSetReport),
    /// The request was refused or failed; the message says why.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub site: String,
    pub gate: String,
    pub uptime_s: u64,
    pub mode: String,
    pub policy_version: String,
    pub identity_version: u64,
    pub identity_synced_at_ms: Option<i64>,
    /// What the identity table holds.
    #[serde(default)]
    pub identity: IdentityCounts,
    /// When the identity table last changed, and how (a platform sync or a
    /// technician's import); `None` when it never did.
    #[serde(default)]
    pub identity_changed_at_ms: Option<i64>,
    #[serde(default)]
    pub identity_changed_how: Option<String>,
    pub health_version: u64,
    pub health_synced_at_ms: Option<i64>,
    pub broker: BrokerReport,
    pub outbox: OutboxSummary,
    /// The local store: its state and the state folder's free space.
    #[serde(default)]
    pub store: StoreSummary,
    pub decisions: DecisionTotals,
    pub devices: Vec<DeviceStatus>,
    /// Milliseconds since the decision loop last turned.
    pub decision_loop_age_ms: Option<u64>,
    /// What the gate cannot vouch for now, one line each, starting with its
    /// alert name (`platform_stale`, `clock_behind`, `clock_ahead`).
    #[serde(default)]
    pub platform_warnings: Vec<String>,
    /// The platform's signed heartbeat: when the last fresh one was signed.
    #[serde(default)]
    pub platform_heartbeat_at_ms: Option<i64>,
    /// Keys changed in the file by a reload that only a restart applies
    /// (the daemon runs on their old values until then).
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

/// People by category and credentials by kind in the identity table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityCounts {
    pub people: u64,
    pub residents: u64,
    pub workers: u64,
    pub visitors: u64,
    /// Resident ID cards (ID numbers).
    pub id_cards: u64,
    pub ic_cards: u64,
    pub plates: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerReport {
    pub address: String,
    pub connected: bool,
    pub published: u64,
    pub acked: u64,
    pub connections: u64,
    pub connection_errors: u64,
    /// Why the last connection attempt failed, while not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxSummary {
    pub depth: u64,
    pub oldest_age_s: Option<u64>,
}

/// The store's health for `gatectl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSummary {
    /// `ok`, `low`, `full`, `busy`, `io`, `corrupt`; empty before the first check.
    pub state: String,
    pub disk_free_bytes: u64,
    /// Store failures so far, by class (`full`, `busy`, `io`, `corrupt`, `other`).
    pub errors: Vec<(String, u64)>,
    /// Unsent events dropped because the outbox was over capacity.
    pub outbox_dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionTotals {
    pub passed: u64,
    pub blocked: u64,
    pub failed: u64,
    pub passages: u64,
    pub alerts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub name: String,
    pub port: String,
    pub connected: bool,
    pub frames_ok: u64,
    pub checksum_errors: u64,
    pub length_errors: u64,
    pub garbage_bytes: u64,
    pub timeouts: u64,
    pub reconnects: u64,
    pub status_errors: u64,
    pub auth_errors: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReport {
    /// `id_number`, `ic_card` or `plate`.
    pub credential: String,
    /// Masked.
    pub subject: String,
    /// `pass` or `block`.
    pub decision: String,
    pub reason: Option<String>,
    pub person_id: Option<String>,
    pub category: Option<String>,
    pub mode: String,
    pub side: String,
    /// The facts that led to the decision, one per line.
    pub why: Vec<String>,
    /// The person's first and last valid day (site time, `YYYY-MM-DD`).
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_to: Option<String>,
    /// The person's state now: `active`, `expired`, `not_yet_valid`,
    /// `suspended` or `blocked`.
    #[serde(default)]
    pub state: Option<String>,
    /// The person's name, masked (`陈*国`): the gate keeps no other form.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReport {
    /// The recorded `ManualOpen` event's sequence number.
    pub seq: u64,
    pub side: String,
    pub operator: String,
    /// The IO board confirmed the unlock coil went on.
    pub confirmed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSetReport {
    pub mode: String,
    /// Who it is recorded as (`technician:<login>`).
    pub operator: String,
    /// The recorded `ModeChange` event's sequence number.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelftestReport {
    pub checks: Vec<Check>,
}

/// One device's result, saying exactly what was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub device: String,
    /// Nothing failed (true for a skipped check too, so it does not fail
    /// the selftest; `skipped` tells them apart).
    pub passed: bool,
    /// The check was not run (e.g. `--no-pulse`): shown as SKIP, never PASS.
    #[serde(default)]
    pub skipped: bool,
    pub checked: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxReport {
    pub depth: u64,
    pub oldest_age_s: Option<u64>,
    pub topics: Vec<TopicBacklog>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicBacklog {
    pub topic: String,
    pub depth: u64,
    pub oldest_age_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_json_lines() {
        let r = Request::new(Command::Lookup { credential: Credential::Plate("闽D12345".into()), side: None });
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json, r#"{"v":1,"cmd":"lookup","credential":{"kind":"plate","value":"闽D12345"},"side":null}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).expect("back"), r);
        let status: Request = serde_json::from_str(r#"{"v":1,"cmd":"status"}"#).expect("status");
        assert_eq!(status.command, Command::Status);
    }

    #[test]
    fn replies_round_trip_including_nested_activity() {
        let line = Response::new(Reply::Activity {
            activity: Activity::Passage { at_ms: 5, seq: Some(3), side: "entry".into() },
        });
        let json = serde_json::to_string(&line).expect("json");
        assert_eq!(
            json,
            r#"{"v":1,"reply":"activity","activity":{"type":"passage","at_ms":5,"seq":3,"side":"entry"}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&json).expect("back"), line);
        let err = Response::new(Reply::Error { message: "no".into() });
        let json = serde_json::to_string(&err).expect("json");
        assert_eq!(serde_json::from_str::<Response>(&json).expect("back"), err);
        let tailing: Response = serde_json::from_str(r#"{"v":1,"reply":"tailing"}"#).expect("tailing");
        assert_eq!(tailing.reply, Reply::Tailing);
    }
}
