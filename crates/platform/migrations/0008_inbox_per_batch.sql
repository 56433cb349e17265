-- The progress inbox holds one row per writer batch (the batch's new
-- numbers as arrays) instead of one row per event. A batch of 500 events
-- appended 500 inbox rows and 500 index entries, and the progress round
-- deleted each of them again: a fifth of the database's work per event
-- went to bookkeeping the round then threw away. The rows an older
-- replica left are carried over as one batch, in their order.
CREATE TABLE seq_inbox_batches (
    id              bigserial PRIMARY KEY,
    site_ids        text[] NOT NULL,
    gate_ids        text[] NOT NULL,
    streams         text[] NOT NULL,
    seqs            bigint[] NOT NULL,
    occurred_at_ms  bigint[] NOT NULL,
    -- For an outbox_overflow event: the stream it names and its unparsed
    -- list of dropped numbers (`1-5,9`); NULL elements otherwise.
    explains_stream text[] NOT NULL,
    explains        text[] NOT NULL
);
INSERT INTO seq_inbox_batches (site_ids, gate_ids, streams, seqs, occurred_at_ms, explains_stream, explains)
SELECT array_agg(site_id ORDER BY id), array_agg(gate_id ORDER BY id), array_agg(stream ORDER BY id),
       array_agg(seq ORDER BY id), array_agg(occurred_at_ms ORDER BY id), array_agg(explains_stream ORDER BY id),
       array_agg(explains ORDER BY id)
FROM seq_inbox
HAVING count(*) > 0;
DROP TABLE seq_inbox;
