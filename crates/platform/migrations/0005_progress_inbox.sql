-- The seq bookkeeping leaves the write path. A replica's batch only appends:
-- its new events and alerts, and one inbox row per new event or alert, in
-- the transaction that inserts them. One replica at a time (whichever takes
-- the advisory lock of the round) moves the inbox into `seq_streams`,
-- `gaps` and `gates.last_event_at`, deleting the rows it applied in the same
-- transaction, so each number is applied exactly once. Replicas no longer
-- lock the rows of every gate their batch touched, which made them take
-- turns.
CREATE TABLE seq_inbox (
    id             bigserial PRIMARY KEY,
    site_id        text NOT NULL,
    gate_id        text NOT NULL,
    stream         text NOT NULL,
    seq            bigint NOT NULL,
    occurred_at_ms bigint NOT NULL,
    -- For an outbox_overflow event: the stream it names and its unparsed
    -- list of dropped numbers (`1-5,9`).
    explains_stream text,
    explains        text
);
