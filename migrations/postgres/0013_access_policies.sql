-- Visitor access policies (docs/policies.md, ADR 0005). One row per scope of a tenant: scope is
-- '' for the tenant itself, 'target:{name}' or 'host:{hostname}'. rules is JSON
-- (relay_store::PolicyRules); a rule kind set at a more specific scope replaces the same kind of
-- the less specific ones (hostname, then target, then tenant).
CREATE TABLE access_policies (
    tenant_id   TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    rules       TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, scope)
);

-- Visitor API keys (rak_{id}_{random}): only HMAC-SHA-256(pepper, key) is kept, like connector
-- credentials. Any active key of the tenant satisfies an api_key rule.
CREATE TABLE policy_api_keys (
    id          TEXT    PRIMARY KEY NOT NULL,
    tenant_id   TEXT    NOT NULL,
    key_hash    BYTEA   NOT NULL,
    label       TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX policy_api_keys_tenant ON policy_api_keys(tenant_id, created_at);

-- Relays keep both in their catalog snapshot: every change bumps the revision (and notifies).
CREATE TRIGGER access_policies_changed AFTER INSERT OR UPDATE OR DELETE ON access_policies
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
CREATE TRIGGER policy_api_keys_changed AFTER INSERT OR DELETE ON policy_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
CREATE TRIGGER policy_api_keys_revoked AFTER UPDATE OF revoked_at ON policy_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
