-- Initial tables. Enumerations are stored as their gate.v1 names in lower
-- case without the prefix (`pass`, `blocklisted`, `resident`), so SQL reads
-- like the domain and a new wire value needs no migration.

-- One row per event, whatever replica or redelivery brought it.
CREATE TABLE events (
    event_id        text PRIMARY KEY,
    site_id         text NOT NULL,
    gate_id         text NOT NULL,
    seq             bigint NOT NULL,
    occurred_at     timestamptz NOT NULL,
    kind            text NOT NULL,
    decision        text,
    reason          text,
    category        text,
    credential_type text,
    -- Masked by the gate (350203********1234); never in clear.
    subject         text,
    person_id       text,
    lane            text,
    direction       text,
    side            text,
    mode            text,
    policy_version  text,
    tags            text[],
    pass_id         text,
    operator        text,
    note            text,
    alarm           text,
    facts           jsonb,
    -- The commit time of the transaction that stored it (decision-to-row lag).
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_gate_seq ON events (site_id, gate_id, seq);
CREATE INDEX events_site_time ON events (site_id, occurred_at);

-- Alerts: from the gates (source 'gate', kind 'refusal' or 'alarm') and
-- raised by the platform itself (source 'platform', kind 'gap').
CREATE TABLE alerts (
    alert_id          text PRIMARY KEY,
    source            text NOT NULL,
    kind              text NOT NULL,
    site_id           text NOT NULL,
    gate_id           text NOT NULL,
    seq               bigint,
    occurred_at       timestamptz NOT NULL,
    reason            text,
    category          text,
    subject           text,
    person_id         text,
    alarm             text,
    mode              text,
    repeat_count      integer,
    first_occurred_at timestamptz,
    facts             jsonb,
    detail            text,
    stored_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_site_time ON alerts (site_id, occurred_at);

-- Per gate and stream ('events', 'alerts'): the highest seq below which
-- nothing is missing, the highest seen, and the open holes between them
-- (JSON array of {"from", "to", "opened_at_ms", "gap_id"}). Updated in the
-- transaction that inserts the rows, under this row's lock, so replicas
-- receiving one gate's messages out of order agree.
CREATE TABLE seq_streams (
    site_id    text NOT NULL,
    gate_id    text NOT NULL,
    stream     text NOT NULL,
    contiguous bigint NOT NULL,
    max_seq    bigint NOT NULL,
    holes      jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, gate_id, stream)
);
CREATE INDEX seq_streams_with_holes ON seq_streams (site_id, gate_id) WHERE holes <> '[]';

-- A hole that stayed open past [ingest] gap_timeout_s.
CREATE TABLE gaps (
    gap_id       bigserial PRIMARY KEY,
    site_id      text NOT NULL,
    gate_id      text NOT NULL,
    stream       text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    opened_at    timestamptz NOT NULL,
    detected_at  timestamptz NOT NULL,
    filled_at    timestamptz,
    -- 'outbox_overflow' when the gate said it dropped these events.
    explained_by text,
    alert_id     text
);
CREATE INDEX gaps_open ON gaps (site_id, gate_id) WHERE filled_at IS NULL;

-- The fleet: one row per gate, from its retained status and its events.
CREATE TABLE gates (
    site_id              text NOT NULL,
    gate_id              text NOT NULL,
    online               boolean,
    version              text,
    outbox_depth         bigint,
    oldest_queued_age_ms bigint,
    policy_version       text,
    identity_version     bigint,
    health_version       bigint,
    trust_version        bigint,
    devices              jsonb,
    status_reported_at   timestamptz,
    status_received_at   timestamptz,
    last_event_at        timestamptz,
    PRIMARY KEY (site_id, gate_id)
);

-- The site's offset from UTC, for local days and hours (China by default).
CREATE TABLE sites (
    site_id            text PRIMARY KEY,
    utc_offset_minutes integer NOT NULL DEFAULT 480
);
