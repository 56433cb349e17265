//! What the gate does (decisions, alerts, passages, manual opens, gate IO
//! events), as the daemon's live feed carries it to `gatectl tail`. Every
//! subject is already masked when it enters the feed.

use serde::{Deserialize, Serialize};

/// One thing that happened at the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Activity {
    /// A credential was decided and the decision recorded.
    Decision(DecisionSummary),
    /// An alert to the management departments was recorded.
    Alert { at_ms: i64, seq: u64, reason: String, subject: String, repeat: u32 },
    /// The turnstile reported someone going through.
    Passage { at_ms: i64, seq: Option<u64>, side: String },
    /// A technician opened the gate (`gatectl open`, `gatectl selftest`).
    ManualOpen { at_ms: i64, seq: u64, side: String, operator: String, note: String },
    /// A gate alarm (forced door, fire input...).
    Alarm { at_ms: i64, seq: Option<u64>, name: String },
    /// The IO board switched an unlock coil, or failed.
    Gate { at_ms: i64, event: GateActivity, side: Option<String>, detail: Option<String> },
}

/// What the IO board did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateActivity {
    Unlocked,
    Relocked,
    Fault,
}

/// One recorded decision, as `gatectl tail` shows it. `subject` is masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionSummary {
    pub at_ms: i64,
    /// The event's sequence number in the events stream.
    pub seq: u64,
    /// `pass` or `block`.
    pub decision: String,
    /// The block reason, `None` for a pass.
    pub reason: Option<String>,
    pub credential: String,
    pub subject: String,
    pub person_id: Option<String>,
    pub category: Option<String>,
    pub mode: String,
    pub side: String,
}

impl Activity {
    /// One human-readable line (no personal data in clear: subjects are masked).
    pub fn line(&self) -> String {
        match self {
            Activity::Decision(d) => {
                let mut line =
                    format!("#{} {} {}", d.seq, d.decision.to_uppercase(), d.reason.as_deref().unwrap_or("-"));
                line.push_str(&format!(" {} {} side={} mode={}", d.credential, d.subject, d.side, d.mode));
                if let Some(person) = &d.person_id {
                    line.push_str(&format!(" person={person}"));
                }
                if let Some(category) = &d.category {
                    line.push_str(&format!(" category={category}"));
                }
                line
            }
            Activity::Alert { seq, reason, subject, repeat, .. } => {
                format!("alert #{seq} {reason} {subject} repeat={repeat}")
            }
            Activity::Passage { seq, side, .. } => match seq {
                Some(seq) => format!("#{seq} passage side={side}"),
                None => format!("passage side={side} (not recorded)"),
            },
            Activity::ManualOpen { seq, side, operator, note, .. } => {
                format!("#{seq} MANUAL OPEN side={side} by {operator}: {note}")
            }
            Activity::Alarm { seq, name, .. } => match seq {
                Some(seq) => format!("#{seq} ALARM {name}"),
                None => format!("ALARM {name}"),
            },
            Activity::Gate { event, side, detail, .. } => {
                let mut line = match event {
                    GateActivity::Unlocked => "gate unlocked".to_owned(),
                    GateActivity::Relocked => "gate relocked".to_owned(),
                    GateActivity::Fault => "GATE FAULT".to_owned(),
                };
                if let Some(side) = side {
                    line.push_str(&format!(" side={side}"));
                }
                if let Some(detail) = detail {
                    line.push_str(&format!(": {detail}"));
                }
                line
            }
        }
    }

    /// When it happened (ms since the epoch).
    pub fn at_ms(&self) -> i64 {
        match self {
            Activity::Decision(d) => d.at_ms,
            Activity::Alert { at_ms, .. }
            | Activity::Passage { at_ms, .. }
            | Activity::ManualOpen { at_ms, .. }
            | Activity::Alarm { at_ms, .. }
            | Activity::Gate { at_ms, .. } => *at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_carry_masked_subjects_only() {
        let d = Activity::Decision(DecisionSummary {
            at_ms: 1,
            seq: 7,
            decision: "block".into(),
            reason: Some("category_not_allowed".into()),
            credential: "id_number".into(),
            subject: "350203********123X".into(),
            person_id: Some("p-001".into()),
            category: Some("resident".into()),
            mode: "normal".into(),
            side: "entry".into(),
        });
        assert_eq!(
            d.line(),
            "#7 BLOCK category_not_allowed id_number 350203********123X side=entry mode=normal person=p-001 category=resident"
        );
        let json = serde_json::to_string(&d).expect("json");
        assert!(json.starts_with(r#"{"type":"decision","at_ms":1,"seq":7"#), "{json}");
        assert_eq!(serde_json::from_str::<Activity>(&json).expect("back"), d);
    }
}
