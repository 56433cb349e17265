-- Names in clear are masked in place. The identity table keeps each person
-- as an encoded gate.v1.Person (bytea), which SQL cannot rewrite, so the
-- work is done in Rust, in the same transaction as this migration
-- (`db::mask_stored_names`). Rows imported by a gate-platform that already
-- masked names are left as they are: masking is idempotent. No row's
-- `changed_version` moves: the gates mask every name they store already.
SELECT 1;
