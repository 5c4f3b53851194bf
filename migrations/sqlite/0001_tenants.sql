-- Tenants, their connector credentials, admin users, and a revision counter that every change
-- bumps so that relays notice changes made by other processes (the CLI, the management web).
CREATE TABLE tenants (
    id                      TEXT    PRIMARY KEY NOT NULL,
    name                    TEXT    NOT NULL UNIQUE,
    display_name            TEXT    NOT NULL DEFAULT '',
    enabled                 INTEGER NOT NULL DEFAULT 1,
    max_body_bytes          INTEGER,
    max_concurrent_streams  INTEGER,
    request_timeout_ms      INTEGER,
    created_at              INTEGER NOT NULL
);

CREATE TABLE credentials (
    id              TEXT    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    label           TEXT    NOT NULL DEFAULT '',
    secret_hash     BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    revoked_at      INTEGER
);
CREATE INDEX credentials_tenant ON credentials(tenant_id);

CREATE TABLE admin_users (
    id              TEXT    PRIMARY KEY NOT NULL,
    username        TEXT    NOT NULL UNIQUE,
    password_hash   TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE revision (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    value   INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TRIGGER tenants_insert AFTER INSERT ON tenants BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER tenants_update AFTER UPDATE ON tenants BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER tenants_delete AFTER DELETE ON tenants BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER credentials_insert AFTER INSERT ON credentials BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER credentials_revoke AFTER UPDATE OF revoked_at ON credentials BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER credentials_delete AFTER DELETE ON credentials BEGIN UPDATE revision SET value = value + 1; END;
