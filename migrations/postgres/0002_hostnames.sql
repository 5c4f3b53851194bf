-- Hostnames a tenant owns: a visitor's Host (and SNI) selects the tenant and target directly.
CREATE TABLE hostnames (
    hostname    TEXT    PRIMARY KEY NOT NULL,
    tenant_id   TEXT    NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    target      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX hostnames_tenant ON hostnames(tenant_id);

CREATE TRIGGER hostnames_changed AFTER INSERT OR UPDATE OR DELETE ON hostnames
    FOR EACH STATEMENT EXECUTE FUNCTION bump_revision();
