-- Hostnames a tenant owns: a visitor's Host (and SNI) selects the tenant and target directly.
CREATE TABLE hostnames (
    hostname    TEXT    PRIMARY KEY NOT NULL,
    tenant_id   TEXT    NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    target      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX hostnames_tenant ON hostnames(tenant_id);

CREATE TRIGGER hostnames_insert AFTER INSERT ON hostnames BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER hostnames_update AFTER UPDATE ON hostnames BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER hostnames_delete AFTER DELETE ON hostnames BEGIN UPDATE revision SET value = value + 1; END;
