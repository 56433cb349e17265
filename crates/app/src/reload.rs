//! Configuration reload (SIGHUP): the daemon binary validates the new file
//! and hands it over; this task decides what of it applies live and publishes
//! the configuration in force to the decision loop, the control server and
//! the metrics endpoint.
//!
//! Live: the policy, visitor passes, alerts, the gate's decision settings
//! (`flexible`, `anti_passback`), the site's UTC offset, and any table not
//! named below. Needs a restart: what running tasks were built from (devices
//! and their ports, the broker, the store, the site key, the gate's identity,
//! the control socket, the metrics listener). Those keys keep their running
//! values and the log names each one that changed.

use gate_config::Config;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Applies `candidate` on top of `running`: the result, and the dotted keys
/// that changed but need a restart (kept at their running values).
pub(crate) fn merge(running: &Config, candidate: Config) -> (Config, Vec<&'static str>) {
    let mut applied = candidate;
    let mut restart = Vec::new();
    // Debug renderings compare values without requiring `PartialEq` on every
    // config type; none of these hold secrets (the key is a path).
    macro_rules! keep {
        ($key:literal, $($field:tt).+) => {
            if format!("{:?}", running.$($field).+) != format!("{:?}", applied.$($field).+) {
                restart.push($key);
                applied.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("site.id", site.id);
    keep!("gate.id", gate.id);
    keep!("gate.lane", gate.lane);
    keep!("gate.direction", gate.direction);
    keep!("store", store);
    keep!("mqtt", mqtt);
    keep!("identity", identity);
    keep!("devices", devices);
    keep!("control", control);
    keep!("metrics", metrics);
    (applied, restart)
}

/// Follows validated candidates from the binary until `shutdown`.
pub(crate) async fn follow(
    mut running: Config,
    mut candidates: watch::Receiver<Config>,
    applied: watch::Sender<Config>,
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
        running = next.clone();
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
        assert_eq!(restart, ["devices"]);
        assert_eq!(applied.policy, candidate.policy, "the policy is live");
        assert_eq!(applied.devices, running.devices, "the running port stays");
        let (_, none) = merge(&running, running.clone());
        assert!(none.is_empty());
    }
}
