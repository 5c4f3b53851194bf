-- One row per visitor request, written off the request path in batches. Query strings are not
-- stored (they often carry secrets). Append-only from the relay's point of view; a retention job
-- deletes rows older than the configured age.
CREATE TABLE audit_requests (
    request_id      TEXT    PRIMARY KEY NOT NULL,
    tenant          TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    status          BIGINT  NOT NULL,
    outcome         TEXT    NOT NULL,
    bytes_in        BIGINT  NOT NULL,
    bytes_out       BIGINT  NOT NULL,
    duration_ms     BIGINT  NOT NULL,
    visitor         TEXT    NOT NULL,
    session_id      TEXT    NOT NULL,
    relay_node      TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL
);
CREATE INDEX audit_requests_created ON audit_requests(created_at);
CREATE INDEX audit_requests_tenant ON audit_requests(tenant, created_at);
