//! The live feed of what the gate does, for `gatectl tail` and the control
//! server's own checks (the line types are in `gate-control-proto`).
//!
//! A `tokio::sync::broadcast` channel: the decision loop never waits for a
//! reader, a slow reader only loses lines (and is told how many).

pub use gate_control_proto::activity::{Activity, DecisionSummary, GateActivity};
use tokio::sync::broadcast;

/// Lines kept for a reader that falls behind before it starts losing them.
const FEED_CAPACITY: usize = 256;

/// The sending side of the feed; readers [`subscribe`](Self::subscribe).
#[derive(Debug, Clone)]
pub struct ActivityFeed(broadcast::Sender<Activity>);

impl Default for ActivityFeed {
    fn default() -> Self {
        ActivityFeed(broadcast::channel(FEED_CAPACITY).0)
    }
}

impl ActivityFeed {
    /// Sends to whoever listens; nobody listening is the normal case.
    pub fn publish(&self, activity: Activity) {
        let _ = self.0.send(activity);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Activity> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_without_readers_drops_silently() {
        let feed = ActivityFeed::default();
        feed.publish(Activity::Passage { at_ms: 1, seq: Some(1), side: "entry".into() });
        let mut rx = feed.subscribe();
        feed.publish(Activity::Passage { at_ms: 2, seq: Some(2), side: "exit".into() });
        assert_eq!(rx.try_recv().expect("one").at_ms(), 2);
    }
}
