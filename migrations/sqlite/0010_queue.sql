-- Queue mode: requests accepted for a tenant whose connector may be offline, delivered when it is
-- online (by a node holding one of its sessions), responses kept for pickup.
-- id: the unguessable message id (128 random bits, hex) the status URL carries. seq orders
-- messages (per tenant and target, for ordered tenants). state: queued, delivering, delivered,
-- failed, expired, cancelled. A delivering message belongs to lease_node until lease_until; after
-- that any node may claim it again (attempts counts every claim). purged: bodies and the response
-- were dropped after the retention period (the status answers 410).
CREATE TABLE queue_messages (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT    NOT NULL UNIQUE,
    tenant_id           TEXT    NOT NULL,
    tenant              TEXT    NOT NULL,
    target              TEXT    NOT NULL,
    method              TEXT    NOT NULL,
    path                TEXT    NOT NULL,
    headers             TEXT    NOT NULL,
    body                BLOB,
    body_bytes          INTEGER  NOT NULL,
    idempotency_key     TEXT,
    state               TEXT    NOT NULL,
    attempts            INTEGER  NOT NULL DEFAULT 0,
    last_error          TEXT,
    created_at          INTEGER  NOT NULL,
    expires_at          INTEGER  NOT NULL,
    next_attempt_at     INTEGER  NOT NULL,
    lease_until         INTEGER,
    lease_node          TEXT,
    finished_at         INTEGER,
    response_status     INTEGER,
    response_headers    TEXT,
    response_body       BLOB,
    response_truncated  INTEGER  NOT NULL DEFAULT 0,
    purged              INTEGER  NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX queue_messages_idempotency ON queue_messages(tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX queue_messages_due ON queue_messages(state, next_attempt_at);
CREATE INDEX queue_messages_tenant ON queue_messages(tenant_id, state, seq);
CREATE INDEX queue_messages_created ON queue_messages(created_at);
CREATE INDEX queue_messages_expiry ON queue_messages(state, expires_at);
CREATE INDEX queue_messages_finished ON queue_messages(purged, finished_at);

-- Per-tenant queue settings; a tenant without a row uses the relay's [queue] defaults.
-- ordered: 1 = per target, a message waits until the one before it is final.
CREATE TABLE tenant_queue_settings (
    tenant_id       TEXT    PRIMARY KEY NOT NULL,
    ordered         INTEGER  NOT NULL DEFAULT 0,
    ttl_ms          INTEGER,
    max_messages    INTEGER,
    max_bytes       INTEGER
);
