-- Flows for the grid workers: passes by the side the credential was shown
-- at, per site, gate, category and local hour. A site without a `sites`
-- row counts in China time (UTC+8).
CREATE VIEW flows_hourly AS
SELECT e.site_id,
       e.gate_id,
       coalesce(e.category, 'unknown') AS category,
       date_trunc('hour', (e.occurred_at AT TIME ZONE 'UTC')
                          + make_interval(mins => coalesce(s.utc_offset_minutes, 480))) AS local_hour,
       count(*) FILTER (WHERE e.side = 'entry') AS entries,
       count(*) FILTER (WHERE e.side = 'exit') AS exits
FROM events e
LEFT JOIN sites s ON s.site_id = e.site_id
WHERE e.kind = 'decision' AND e.decision = 'pass'
GROUP BY 1, 2, 3, 4;

-- The same per local day, for headcounts (摸清底数).
CREATE VIEW flows_daily AS
SELECT site_id, gate_id, category, date_trunc('day', local_hour)::date AS local_day,
       sum(entries)::bigint AS entries, sum(exits)::bigint AS exits
FROM flows_hourly
GROUP BY 1, 2, 3, 4;
