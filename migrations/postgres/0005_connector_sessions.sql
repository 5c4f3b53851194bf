-- Connector sessions as relays saw them: written when a session is established and when it ends
-- (never on the request path). A relay marks its own sessions left open by a crash as ended when
-- it starts.
CREATE TABLE connector_sessions (
    id                  TEXT    PRIMARY KEY NOT NULL,
    tenant              TEXT    NOT NULL,
    relay_node          TEXT    NOT NULL,
    connector_id        TEXT    NOT NULL,
    connector_version   TEXT    NOT NULL,
    transport           TEXT    NOT NULL,
    remote_addr         TEXT    NOT NULL,
    connected_at        BIGINT  NOT NULL,
    disconnected_at     BIGINT,
    close_code          TEXT
);
CREATE INDEX connector_sessions_tenant ON connector_sessions(tenant, connected_at);
CREATE INDEX connector_sessions_open ON connector_sessions(relay_node, disconnected_at);
