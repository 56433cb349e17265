-- The signed downlink. Per site: the identity table's version and the
-- newest one sent to the gates, the trust list and health versions, the
-- counter of the newest mode message, when the next heartbeat is due and
-- when the last snapshot started (a SyncRequest received before that is
-- already answered).
CREATE TABLE site_downlink (
    site_id            text PRIMARY KEY,
    identity_version   bigint NOT NULL DEFAULT 0,
    identity_published bigint NOT NULL DEFAULT 0,
    health_version     bigint NOT NULL DEFAULT 0,
    trust_version      bigint NOT NULL DEFAULT 0,
    mode               text,
    mode_reason        text,
    mode_effective_at  timestamptz,
    mode_counter       bigint NOT NULL DEFAULT 0,
    heartbeat_due      timestamptz NOT NULL DEFAULT now(),
    snapshot_sent_at   timestamptz,
    snapshot_version   bigint
);

-- The identity table of each site: an encoded gate.v1.Person per person,
-- whose credentials are keyed hashes under the site key (never an ID
-- number). `changed_version` is the site version that last changed the row:
-- a delta from version P is every row changed after P.
CREATE TABLE identity_people (
    site_id         text NOT NULL,
    person_id       text NOT NULL,
    person          bytea NOT NULL,
    changed_version bigint NOT NULL,
    deleted         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (site_id, person_id)
);
CREATE INDEX identity_people_changed ON identity_people (site_id, changed_version);

-- The envelope counter of each (site, gate, stream); gate '' is the whole
-- site. Taken in a committed transaction before the message is published,
-- so a counter is never handed out twice.
CREATE TABLE downlink_counters (
    site_id text NOT NULL,
    gate_id text NOT NULL,
    stream  text NOT NULL,
    counter bigint NOT NULL,
    PRIMARY KEY (site_id, gate_id, stream)
);

-- What was signed, when, and its size (not its content).
CREATE TABLE downlink_log (
    id        bigserial PRIMARY KEY,
    site_id   text NOT NULL,
    gate_id   text NOT NULL,
    stream    text NOT NULL,
    counter   bigint NOT NULL,
    topic     text NOT NULL,
    issued_at timestamptz NOT NULL,
    bytes     integer NOT NULL
);
