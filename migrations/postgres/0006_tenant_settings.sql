-- Tenant settings: a free-text description for admins, and whether the audit log may keep the
-- query strings of this tenant's requests (off by default: they often carry secrets).
ALTER TABLE tenants ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN audit_query_strings INTEGER NOT NULL DEFAULT 0;
