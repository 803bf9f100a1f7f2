-- Fleet store schema, version 4: a host's heartbeat says how many rows its outbox dropped
-- while the store was out of reach (`fleet.outbox_max_rows`), so the fleet view shows what it
-- misses of that host instead of looking complete. Applied only by `sentinel fleet init`.

ALTER TABLE fleet_hosts ADD COLUMN outbox_dropped bigint NOT NULL DEFAULT 0;
