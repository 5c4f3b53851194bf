-- The audit table without the unique index on request_id. Ids are UUIDv7s the relay makes itself
-- (unique by construction) and nothing reads a record by id; the index was one more B-tree to
-- update on every insert. A UUIDv7 starts with its creation time in ms, so a lookup by id can
-- still go through audit_requests_created. SQLite cannot drop a primary key:
-- the table is rebuilt (one copy of the existing rows, once).
CREATE TABLE audit_requests_new (
    request_id      TEXT    NOT NULL,
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
    created_at      BIGINT  NOT NULL,
    session_node    TEXT
);
INSERT INTO audit_requests_new (request_id, tenant, target, method, path, status, outcome, bytes_in,
    bytes_out, duration_ms, visitor, session_id, relay_node, created_at, session_node)
SELECT request_id, tenant, target, method, path, status, outcome, bytes_in, bytes_out, duration_ms,
    visitor, session_id, relay_node, created_at, session_node FROM audit_requests;
DROP TABLE audit_requests;
ALTER TABLE audit_requests_new RENAME TO audit_requests;
CREATE INDEX audit_requests_created ON audit_requests(created_at);
CREATE INDEX audit_requests_tenant ON audit_requests(tenant, created_at);
CREATE INDEX audit_requests_status ON audit_requests(status, created_at);
