-- Fleet store schema, version 3: operators sign what they order (see docs/fleet.md, "Operator
-- keys"). Applied only by `sentinel fleet init`. An agent acts on an answer, a shared block or
-- a lift only when `signature` verifies, with one of its `fleet.operator_keys`, the operator's
-- signature over what the row says (host, decision id or address, verdict or action),
-- `signed_ms` (milliseconds since the epoch) and `operator` / `signer`.

ALTER TABLE fleet_answers
    ADD COLUMN operator  text,
    ADD COLUMN signed_ms bigint,
    ADD COLUMN signature text;

ALTER TABLE fleet_shared_blocks
    ADD COLUMN signer    text,
    ADD COLUMN signed_ms bigint,
    ADD COLUMN signature text;

-- A host never writes a signature column: it publishes and re-publishes unsigned rows only,
-- and cannot put back an old signature it has read (a replayed block).
REVOKE INSERT, UPDATE ON fleet_shared_blocks FROM sentinel_host;
GRANT INSERT (addr, origin_host, decision_id, confirmed_by, at) ON fleet_shared_blocks
    TO sentinel_host;
GRANT UPDATE (origin_host, decision_id, confirmed_by, at, lifted_at, lifted_by)
    ON fleet_shared_blocks TO sentinel_host;

-- Replay across restarts: an agent looks for an answer it already settled with the same
-- signature.
CREATE INDEX fleet_answers_signature ON fleet_answers (signature) WHERE signature IS NOT NULL;
