-- Admin API tokens (management API, `Authorization: Bearer`): stored as an HMAC of the token with
-- the relay's pepper, like connector credentials; shown once when created.
CREATE TABLE api_tokens (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL UNIQUE,
    token_hash      BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    revoked_at      INTEGER
);

-- Who changed what, from the CLI or the management web.
CREATE TABLE admin_actions (
    id              TEXT    PRIMARY KEY NOT NULL,
    actor           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    object          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX admin_actions_created ON admin_actions(created_at);
