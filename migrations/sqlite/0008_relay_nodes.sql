-- Relay nodes sharing this database: each relay process registers a row at start (a fresh id per
-- start), refreshes heartbeat_at while it runs and deletes its row when it stops. Readers ignore
-- rows whose heartbeat is stale; any node deletes rows stale for long (a node killed with -9).
-- state: 'active' or 'draining' (set by `relay-server node drain`; the node then drains itself).
CREATE TABLE relay_nodes (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL,
    advertise       TEXT,
    state           TEXT    NOT NULL,
    started_at      INTEGER  NOT NULL,
    heartbeat_at    INTEGER  NOT NULL
);
CREATE INDEX relay_nodes_heartbeat ON relay_nodes(heartbeat_at);
