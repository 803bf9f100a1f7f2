-- Fleet store schema, version 2: a role per host, rows by owner (see docs/fleet.md, "Roles").
-- Applied only by `sentinel fleet init`, which creates the three group roles first:
--   sentinel_owner     owns every table (NOLOGIN: nobody works as the owner);
--   sentinel_host      every host's login role is a member, and its name is the host's name;
--   sentinel_operator  the people who read the whole fleet and answer (`sentinel fleet ...`).
-- A host inserts and updates only rows whose `host` is its own role, reads only those, its own
-- answers and the shared blocks, deletes nothing, and never runs DDL.

ALTER TABLE fleet_hosts ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_decisions ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_kills ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE fleet_shared_blocks ENABLE ROW LEVEL SECURITY;

GRANT SELECT ON sentinel_migrations TO sentinel_host, sentinel_operator;

-- What a host ships: its own rows only (no DELETE is granted).
GRANT SELECT, INSERT, UPDATE
    ON fleet_hosts, fleet_alerts, fleet_decisions, fleet_blocks, fleet_kills, fleet_events
    TO sentinel_host;
CREATE POLICY host_own ON fleet_hosts TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);
CREATE POLICY host_own ON fleet_alerts TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);
CREATE POLICY host_own ON fleet_decisions TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);
CREATE POLICY host_own ON fleet_blocks TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);
CREATE POLICY host_own ON fleet_kills TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);
CREATE POLICY host_own ON fleet_events TO sentinel_host
    USING (host = current_user) WITH CHECK (host = current_user);

-- Answers: a host reads those addressed to it and records only their outcome.
GRANT SELECT, UPDATE (status, result, done_at) ON fleet_answers TO sentinel_host;
CREATE POLICY host_read ON fleet_answers FOR SELECT TO sentinel_host
    USING (host = current_user);
CREATE POLICY host_outcome ON fleet_answers FOR UPDATE TO sentinel_host
    USING (host = current_user AND status = 'waiting') WITH CHECK (host = current_user);

-- Shared blocks: every host reads them all; with fleet.share_blocks a host publishes (or
-- re-publishes, after a lift) only under its own name, and never lifts.
GRANT SELECT, INSERT, UPDATE ON fleet_shared_blocks TO sentinel_host;
CREATE POLICY host_read ON fleet_shared_blocks FOR SELECT TO sentinel_host USING (true);
CREATE POLICY host_share ON fleet_shared_blocks FOR INSERT TO sentinel_host
    WITH CHECK (origin_host = current_user AND lifted_at IS NULL AND lifted_by IS NULL);
CREATE POLICY host_reshare ON fleet_shared_blocks FOR UPDATE TO sentinel_host
    USING (lifted_at IS NOT NULL)
    WITH CHECK (origin_host = current_user AND lifted_at IS NULL AND lifted_by IS NULL);

-- Operators: read everything, answer, share and lift; delete nothing.
GRANT SELECT
    ON fleet_hosts, fleet_alerts, fleet_decisions, fleet_blocks, fleet_kills, fleet_events,
       fleet_answers, fleet_shared_blocks
    TO sentinel_operator;
GRANT INSERT ON fleet_answers TO sentinel_operator;
GRANT USAGE ON SEQUENCE fleet_answers_id_seq TO sentinel_operator;
GRANT INSERT, UPDATE ON fleet_shared_blocks TO sentinel_operator;
CREATE POLICY operator_all ON fleet_hosts TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_alerts TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_decisions TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_blocks TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_kills TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_events TO sentinel_operator USING (true);
CREATE POLICY operator_all ON fleet_answers TO sentinel_operator
    USING (true) WITH CHECK (true);
CREATE POLICY operator_all ON fleet_shared_blocks TO sentinel_operator
    USING (true) WITH CHECK (true);
