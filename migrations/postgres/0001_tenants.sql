-- Tenants, their connector credentials, admin users, and a revision counter that every change
-- bumps (and announces on the relay_catalog channel) so that relays notice changes made by other
-- processes and nodes. Same tables as migrations/sqlite/0001_tenants.sql.
CREATE TABLE tenants (
    id                      TEXT    PRIMARY KEY NOT NULL,
    name                    TEXT    NOT NULL UNIQUE,
    display_name            TEXT    NOT NULL DEFAULT '',
    enabled                 BIGINT  NOT NULL DEFAULT 1,
    max_body_bytes          BIGINT,
    max_concurrent_streams  BIGINT,
    request_timeout_ms      BIGINT,
    created_at              BIGINT  NOT NULL
);

CREATE TABLE credentials (
    id              TEXT    PRIMARY KEY NOT NULL,
    tenant_id       TEXT    NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    label           TEXT    NOT NULL DEFAULT '',
    secret_hash     BYTEA   NOT NULL,
    created_at      BIGINT  NOT NULL,
    last_used_at    BIGINT,
    revoked_at      BIGINT
);
CREATE INDEX credentials_tenant ON credentials(tenant_id);

CREATE TABLE admin_users (
    id              TEXT    PRIMARY KEY NOT NULL,
    username        TEXT    NOT NULL UNIQUE,
    password_hash   TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL
);

CREATE TABLE revision (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    value   BIGINT  NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revision SET value = value + 1;
    PERFORM pg_notify('relay_catalog', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
CREATE TRIGGER credentials_changed AFTER INSERT OR DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
CREATE TRIGGER credentials_revoked AFTER UPDATE OF revoked_at ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
