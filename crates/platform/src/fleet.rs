//! `gate-platform fleet`: one line per gate from the `gates` table, its open
//! gaps and its recent alarms; `--json` for scripts. Online means the last
//! retained status said so and is younger than three status intervals.

use deadpool_postgres::Pool;
use serde_json::{Value, json};

use crate::config::RouteConfig;
use crate::db::DbError;
use crate::routes::RouteLine;

/// A status older than this (3 intervals of 15 s) is shown as stale.
pub const STALE_MS: i64 = 45_000;
/// Alarms counted as open: those of the last day.
const ALARM_WINDOW: &str = "24 hours";

/// One gate as the fleet view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GateLine {
    pub site_id: String,
    pub gate_id: String,
    /// `online`, `offline`, `stale` (no fresh status) or `unknown` (never one).
    pub state: String,
    pub last_event_age_ms: Option<i64>,
    pub outbox_depth: Option<i64>,
    pub oldest_queued_age_ms: Option<i64>,
    pub version: Option<String>,
    pub identity_version: Option<i64>,
    pub health_version: Option<i64>,
    pub trust_version: Option<i64>,
    /// What the platform last published for the gate's site (`None`:
    /// nothing), to compare with the gate's own versions.
    pub platform_identity_version: Option<i64>,
    pub platform_trust_version: Option<i64>,
    pub open_gaps: i64,
    pub missing_events: i64,
    pub open_alarms: i64,
}

/// Whether a gate counts as online at `now_ms`.
pub fn state(online: Option<bool>, reported_at_ms: Option<i64>, now_ms: i64) -> &'static str {
    match (online, reported_at_ms) {
        (None, _) | (_, None) => "unknown",
        (Some(false), _) => "offline",
        (Some(true), Some(at)) if now_ms - at > STALE_MS => "stale",
        (Some(true), Some(_)) => "online",
    }
}

pub async fn lines(pool: &Pool, now_ms: i64) -> Result<Vec<GateLine>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT g.site_id, g.gate_id, g.online,
                    (extract(epoch FROM g.status_reported_at) * 1000)::bigint,
                    (extract(epoch FROM greatest(g.last_event_at,
                        (SELECT s.last_event_at FROM seq_streams s WHERE s.site_id = g.site_id
                            AND s.gate_id = g.gate_id AND s.stream = 'events'))) * 1000)::bigint,
                    g.outbox_depth, g.oldest_queued_age_ms, g.version, g.identity_version, g.health_version,
                    g.trust_version,
                    (SELECT count(*) FROM gaps p WHERE p.site_id = g.site_id AND p.gate_id = g.gate_id
                        AND p.filled_at IS NULL),
                    (SELECT count(*) FROM alerts a WHERE a.site_id = g.site_id AND a.gate_id = g.gate_id
                        AND a.kind IN ('alarm', 'gap') AND a.occurred_at > now() - interval '{ALARM_WINDOW}'),
                    nullif(d.identity_published, 0), nullif(d.trust_version, 0)
                 FROM gates g LEFT JOIN site_downlink d ON d.site_id = g.site_id
                 ORDER BY g.site_id, g.gate_id"
            ),
            &[],
        )
        .await?;
    let missing = client
        .query(
            "SELECT s.site_id, s.gate_id, coalesce(sum(h.\"to\" - h.\"from\" + 1), 0)::bigint
             FROM seq_streams s, jsonb_to_recordset(s.holes) AS h(\"from\" bigint, \"to\" bigint)
             GROUP BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (site, gate): (String, String) = (r.get(0), r.get(1));
            let missing_events = missing
                .iter()
                .find(|m| m.get::<_, String>(0) == site && m.get::<_, String>(1) == gate)
                .map_or(0, |m| m.get(2));
            GateLine {
                state: state(r.get(2), r.get(3), now_ms).into(),
                last_event_age_ms: r.get::<_, Option<i64>>(4).map(|at| now_ms - at),
                outbox_depth: r.get(5),
                oldest_queued_age_ms: r.get(6),
                version: r.get(7),
                identity_version: r.get(8),
                health_version: r.get(9),
                trust_version: r.get(10),
                open_gaps: r.get(11),
                missing_events,
                open_alarms: r.get(12),
                platform_identity_version: r.get(13),
                platform_trust_version: r.get(14),
                site_id: site,
                gate_id: gate,
            }
        })
        .collect())
}

fn age(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 0 => "0s".into(),
        Some(ms) if ms < 120_000 => format!("{}s", ms / 1000),
        Some(ms) if ms < 7_200_000 => format!("{}m", ms / 60_000),
        Some(ms) if ms < 172_800_000 => format!("{}h", ms / 3_600_000),
        Some(ms) => format!("{}d", ms / 86_400_000),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), ToString::to_string)
}

/// `gate/platform` when the platform published something, else the gate's.
fn against(gate: &Option<i64>, platform: &Option<i64>) -> String {
    match platform {
        Some(p) => format!("{}/{p}", opt(gate)),
        None => opt(gate),
    }
}

pub fn to_json(lines: &[GateLine], routes: &[RouteLine]) -> Value {
    json!({
        "routes": routes.iter().map(|r| json!({
            "name": r.name, "delivered": r.delivered, "pending": r.pending, "failures": r.failures,
            "last_delivery_age_ms": r.last_delivery_age_ms, "last_error": r.last_error,
        })).collect::<Vec<_>>(),
        "gates": lines.iter().map(|l| json!({
            "site_id": l.site_id, "gate_id": l.gate_id, "state": l.state,
            "last_event_age_ms": l.last_event_age_ms, "outbox_depth": l.outbox_depth,
            "oldest_queued_age_ms": l.oldest_queued_age_ms, "version": l.version,
            "identity_version": l.identity_version, "health_version": l.health_version,
            "trust_version": l.trust_version, "open_gaps": l.open_gaps,
            "platform_identity_version": l.platform_identity_version,
            "platform_trust_version": l.platform_trust_version,
            "missing_events": l.missing_events, "open_alarms": l.open_alarms,
        })).collect::<Vec<_>>()
    })
}

pub fn to_table(lines: &[GateLine]) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<8} {:>10} {:>7} {:>8} {:>11} {:>6} {:>9} {:>5} {:>7} {:>6}\n",
        "SITE",
        "GATE",
        "STATE",
        "LAST EVENT",
        "OUTBOX",
        "OLDEST",
        "IDENTITY G/P",
        "HEALTH",
        "TRUST G/P",
        "GAPS",
        "MISSING",
        "ALARMS"
    );
    for l in lines {
        out.push_str(&format!(
            "{:<16} {:<12} {:<8} {:>10} {:>7} {:>8} {:>11} {:>6} {:>9} {:>5} {:>7} {:>6}\n",
            l.site_id,
            l.gate_id,
            l.state,
            age(l.last_event_age_ms),
            opt(&l.outbox_depth),
            age(l.oldest_queued_age_ms),
            against(&l.identity_version, &l.platform_identity_version),
            opt(&l.health_version),
            against(&l.trust_version, &l.platform_trust_version),
            l.open_gaps,
            l.missing_events,
            l.open_alarms
        ));
    }
    out
}

/// The routes' table: last delivery and failures of each `[[route]]`.
pub fn routes_table(routes: &[RouteLine]) -> String {
    let mut out = format!(
        "{:<16} {:>9} {:>7} {:>8} {:>13}  {}\n",
        "ROUTE", "DELIVERED", "PENDING", "FAILURES", "LAST DELIVERY", "LAST ERROR"
    );
    for r in routes {
        out.push_str(&format!(
            "{:<16} {:>9} {:>7} {:>8} {:>13}  {}\n",
            r.name,
            r.delivered,
            r.pending,
            r.failures,
            age(r.last_delivery_age_ms),
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}

pub async fn print(pool: &Pool, routes: &[RouteConfig], json: bool, now_ms: i64) -> Result<(), DbError> {
    crate::db::migrate(pool).await?;
    let lines = lines(pool, now_ms).await?;
    let routes = crate::routes::lines(pool, routes, now_ms).await?;
    if json {
        println!("{}", to_json(&lines, &routes));
    } else {
        print!("{}", to_table(&lines));
        if !routes.is_empty() {
            println!();
            print!("{}", routes_table(&routes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_is_online_only_with_a_fresh_online_status() {
        assert_eq!(state(Some(true), Some(1_000), 1_000 + STALE_MS), "online");
        assert_eq!(state(Some(true), Some(1_000), 1_001 + STALE_MS), "stale");
        assert_eq!(state(Some(false), Some(1_000), 1_000), "offline");
        assert_eq!(state(None, None, 0), "unknown");
    }
}
