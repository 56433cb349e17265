//! Configuration reload (SIGHUP): the daemon binary validates the new file
//! and hands it over; this task decides what of it applies live and publishes
//! the configuration in force to every task that follows it.
//!
//! Live: the policy, visitor passes, alerts (the decision loop, gate control
//! and the store monitor all take a new quiet period), health, the gate's decision
//! settings (`flexible`, `anti_passback`), the site's UTC offset, the
//! platform's signing keys (the uplink rebuilds its downlink trust), the
//! store's ballast, low-space margin and outbox capacity (the store monitor
//! reads them at every check), and the broker's TLS files and password
//! (read again). Needs a restart: what running tasks were built from (the
//! site and gate identity, devices and their ports, the broker's address and
//! session, the database, the site key, the control socket, the metrics
//! listener, the platform's freshness limits). Those keys keep their running
//! values; the log names each one that changed, and `gatectl status` lists
//! them until a restart (or the file agrees with the running values again).

use gate_config::Config;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Applies `candidate` on top of `running`: the result, and the dotted keys
/// that changed but need a restart (kept at their running values).
pub(crate) fn merge(running: &Config, candidate: Config) -> (Config, Vec<&'static str>) {
    let mut applied = candidate;
    let mut restart = Vec::new();
    macro_rules! keep {
        ($($key:literal => $($field:ident).+;)+) => {$(
            if running.$($field).+ != applied.$($field).+ {
                restart.push($key);
                applied.$($field).+ = running.$($field).+.clone();
            }
        )+};
    }
    keep! {
        "site.id" => site.id;
        "gate.id" => gate.id;
        "gate.lane" => gate.lane;
        "gate.direction" => gate.direction;
        "store.path" => store.path;
        "mqtt.host" => mqtt.host;
        "mqtt.port" => mqtt.port;
        "mqtt.client_id" => mqtt.client_id;
        "mqtt.topic_prefix" => mqtt.topic_prefix;
        "mqtt.keep_alive_s" => mqtt.keep_alive;
        // The files themselves are read again at every reload; which files,
        // only at a start.
        "mqtt.ca_file / cert_file / key_file" => mqtt.tls;
        "mqtt.username" => mqtt.username;
        "mqtt.password_file" => mqtt.password_file;
        "identity.hmac_key_file" => identity.hmac_key_file;
        "devices.id_card" => devices.id_card;
        "devices.gate" => devices.gate;
        "devices.qr_scanner" => devices.qr_scanner;
        "devices.plate_reader" => devices.plate_reader;
        "devices.camera" => devices.camera;
        "control" => control;
        "metrics" => metrics;
        "platform.stale_after_s" => platform.stale_after;
        "platform.clock_ahead_s" => platform.clock_ahead;
    }
    (applied, restart)
}

/// Follows validated candidates from the binary until `shutdown`; the keys
/// waiting for a restart go to `observed` (for `gatectl status`).
pub(crate) async fn follow(
    mut running: Config,
    mut candidates: watch::Receiver<Config>,
    applied: watch::Sender<Config>,
    observed: std::sync::Arc<crate::Observed>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = candidates.changed() => if changed.is_err() { return },
        }
        let candidate = candidates.borrow_and_update().clone();
        let (next, restart) = merge(&running, candidate);
        for key in &restart {
            warn!(
                key,
                "configuration reloaded, but `{key}` only takes effect after a restart (systemctl restart gated); running on its old value"
            );
        }
        if next.policy.version != running.policy.version {
            info!(
                from = %running.policy.version,
                to = %next.policy.version,
                "policy changed: events carry the new version now; the retained status after the next restart"
            );
        }
        info!(source = %next.source.display(), needs_restart = restart.len(), "configuration reloaded");
        *observed.restart_needed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = restart;
        running = next.clone();
        // Sent even when equal: a reload also means "read your files again"
        // (TLS, the trust list), which may have changed under the same name.
        let _ = applied.send(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, port: &str) -> Config {
        let text = format!(
            "[site]\nid = \"s\"\n[gate]\nid = \"g\"\n[store]\npath = \"/var/lib/gated/gated.db\"\n\
             [identity]\nhmac_key_file = \"/etc/gated/site.key\"\n[devices.id_card]\nport = \"{port}\"\n{extra}"
        );
        gate_config::parse(std::path::Path::new("/etc/gated/gated.toml"), &text).expect("valid")
    }

    #[test]
    fn policy_applies_live_and_ports_wait_for_a_restart() {
        let running = config("", "/dev/ttyUSB0");
        let candidate = config("[policy.normal]\nallowed_categories = [\"worker\"]\n", "/dev/ttyUSB1");
        let (applied, restart) = merge(&running, candidate.clone());
        assert_eq!(restart, ["devices.id_card"]);
        assert_eq!(applied.policy, candidate.policy, "the policy is live");
        assert_eq!(applied.devices, running.devices, "the running port stays");
        let (_, none) = merge(&running, running.clone());
        assert!(none.is_empty());
    }

    #[test]
    fn each_changed_key_that_needs_a_restart_is_named_and_kept() {
        let running = config("", "/dev/ttyUSB0");
        let text = "[mqtt]\nport = 1884\nkeep_alive_s = 7\n[platform]\nstale_after_s = 120\nrefuse_when_stale = true\n";
        let mut candidate = config(text, "/dev/ttyUSB0");
        candidate.store.ballast_mb = 2;
        candidate.store.outbox_max_events = 10;
        let (applied, restart) = merge(&running, candidate.clone());
        assert_eq!(restart, ["mqtt.port", "mqtt.keep_alive_s", "platform.stale_after_s"]);
        assert_eq!(
            (applied.mqtt.port, applied.platform.stale_after),
            (running.mqtt.port, running.platform.stale_after)
        );
        // Live: the platform's refusal rule and the store's margins.
        assert!(applied.platform.refuse_when_stale);
        assert_eq!((applied.store.ballast_mb, applied.store.outbox_max_events), (2, 10));
        // Nothing changed: nothing to apply, nothing to restart.
        assert_eq!(merge(&running, running.clone()), (running.clone(), vec![]));
    }
}
