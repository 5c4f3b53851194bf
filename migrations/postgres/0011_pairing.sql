-- Pairing (docs/pairing.md): peer introductions and WebSocket pairing for local-first apps.
-- Per-tenant mode; a tenant without a row has pairing off. mode: open (anyone who knows the
-- tenant's base URL), token (a pairing token in the base URL).
CREATE TABLE tenant_pairing (
    tenant_id   TEXT    PRIMARY KEY NOT NULL,
    mode        TEXT    NOT NULL
);

-- Tokens for tenants in token mode. Only HMAC-SHA-256(pepper, token) is kept, like connector
-- credentials. peer_id: the one peer id the token admits, or NULL for any.
CREATE TABLE pairing_tokens (
    id          TEXT    PRIMARY KEY NOT NULL,
    tenant_id   TEXT    NOT NULL,
    token_hash  BYTEA   NOT NULL,
    peer_id     TEXT,
    label       TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX pairing_tokens_tenant ON pairing_tokens(tenant_id, created_at);
