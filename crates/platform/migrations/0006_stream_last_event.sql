-- The newest event time of a gate moves from `gates` (whose rows the
-- writers lock for the gates' statuses, so a progress round updating every
-- gate's row made them wait) to the gate's `events` row of `seq_streams`,
-- which only the progress round writes. `gates.last_event_at` stays for the
-- rows written before; the fleet view takes the newer of the two.
ALTER TABLE seq_streams ADD COLUMN last_event_at timestamptz;
