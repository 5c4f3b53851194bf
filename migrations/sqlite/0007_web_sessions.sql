-- Management-web login sessions. The cookie carries 256 random bits; only their SHA-256 is stored,
-- so a copy of the database does not hold usable sessions. Each session has its own CSRF token.
CREATE TABLE web_sessions (
    id_hash     TEXT    PRIMARY KEY NOT NULL,
    user_id     TEXT    NOT NULL REFERENCES admin_users(id) ON DELETE CASCADE,
    csrf        TEXT    NOT NULL,
    created_at  INTEGER  NOT NULL,
    expires_at  INTEGER  NOT NULL
);
CREATE INDEX web_sessions_expires ON web_sessions(expires_at);
CREATE INDEX audit_requests_status ON audit_requests(status, created_at);
CREATE INDEX connector_sessions_live ON connector_sessions(disconnected_at, tenant);
