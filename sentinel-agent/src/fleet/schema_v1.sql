-- Fleet store schema, version 1 (see docs/fleet.md). Every row a host ships is keyed by
-- (host, id) and carries the host's outbox sequence number `seq`: upserts only replace an
-- older version.

-- One row per host: its last heartbeat.
CREATE TABLE fleet_hosts (
    host        text PRIMARY KEY,
    version     text NOT NULL,
    last_seen   timestamptz NOT NULL,
    heartbeat_s integer NOT NULL,      -- silent after 3 missed heartbeats
    sensors     jsonb NOT NULL,        -- {"exec": {"attached", "seen", "lost"}, ...}
    lost        bigint NOT NULL,
    pending     bigint NOT NULL,
    outbox      bigint NOT NULL        -- rows the host has not shipped yet
);

-- Alerts (SPEC §5 fields in body), latest version.
CREATE TABLE fleet_alerts (
    host      text NOT NULL,
    id        text NOT NULL,
    seq       bigint NOT NULL,
    ts        timestamptz NOT NULL,
    anomaly   text NOT NULL,
    state     text NOT NULL,
    target_ip inet,
    body      jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX fleet_alerts_latest ON fleet_alerts (ts DESC);

-- Decisions of the dead man's switch (the whole decision document in body, targets included).
CREATE TABLE fleet_decisions (
    host     text NOT NULL,
    id       text NOT NULL,
    seq      bigint NOT NULL,
    state    text NOT NULL,
    deadline timestamptz NOT NULL,
    ended    timestamptz,
    body     jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX fleet_decisions_pending ON fleet_decisions (deadline) WHERE state = 'pending';

-- Blocks each host put in force (lifted = true once unblocked).
CREATE TABLE fleet_blocks (
    host        text NOT NULL,
    addr        inet NOT NULL,
    seq         bigint NOT NULL,
    decision_id text NOT NULL,
    expires     timestamptz NOT NULL,
    lifted      boolean NOT NULL,
    body        jsonb NOT NULL,
    PRIMARY KEY (host, addr)
);

-- Processes killed by enforce.kill.
CREATE TABLE fleet_kills (
    host text NOT NULL,
    id   text NOT NULL,
    seq  bigint NOT NULL,
    at   timestamptz NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (host, id)
);

-- Raw exec/connect/cpu events (only from hosts with fleet.ship_events = true); id is the
-- host's event store id.
CREATE TABLE fleet_events (
    host text NOT NULL,
    id   bigint NOT NULL,
    ts   timestamptz NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX fleet_events_ts ON fleet_events (ts DESC);

-- Answers given in the fleet view (`sentinel fleet decide`), picked up by the owning agent.
CREATE TABLE fleet_answers (
    id           bigserial PRIMARY KEY,
    host         text NOT NULL,
    decision_id  text NOT NULL,
    verdict      text NOT NULL CHECK (verdict IN ('safe', 'block')),
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    status       text NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'applied', 'refused')),
    result       text,
    done_at      timestamptz
);
CREATE INDEX fleet_answers_waiting ON fleet_answers (host) WHERE status = 'waiting';

-- Shared defence: addresses a human confirmed as hostile on some host (lifted_at set once the
-- fleet view unblocked them).
CREATE TABLE fleet_shared_blocks (
    addr         inet PRIMARY KEY,
    origin_host  text,
    decision_id  text,
    confirmed_by text,
    at           timestamptz NOT NULL,
    lifted_at    timestamptz,
    lifted_by    text
);

-- Agents LISTEN on sentinel_fleet: a new answer wakes its host, a shared block every host.
CREATE FUNCTION sentinel_fleet_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'fleet_answers' THEN
        PERFORM pg_notify('sentinel_fleet', 'answer ' || NEW.host);
    ELSE
        PERFORM pg_notify('sentinel_fleet', 'shared');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER fleet_answers_notify AFTER INSERT ON fleet_answers
    FOR EACH ROW EXECUTE FUNCTION sentinel_fleet_notify();
CREATE TRIGGER fleet_shared_blocks_notify AFTER INSERT OR UPDATE ON fleet_shared_blocks
    FOR EACH ROW EXECUTE FUNCTION sentinel_fleet_notify();
