-- Alert routing: the durable delivery queue. One row per (route, alert),
-- written in the transaction that stores the alert, so an alert is never
-- stored without its deliveries nor queued without being stored. A row
-- leaves the due set only when the receiver answered 2xx (`delivered_at`).
CREATE TABLE deliveries (
    route           text NOT NULL,
    alert_id        text NOT NULL REFERENCES alerts (alert_id),
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    -- Attempts made so far (a success included).
    attempts        integer NOT NULL DEFAULT 0,
    -- When a replica may try next. A replica taking the row moves it past
    -- its HTTP timeout first (a lease), so a replica killed mid-attempt
    -- only delays the delivery.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    -- HTTP status of the last attempt (NULL: no answer).
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    PRIMARY KEY (route, alert_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE delivered_at IS NULL;
