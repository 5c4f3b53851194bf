-- Which tenants have messages due: each tenant's earliest retry time among its waiting messages,
-- found with one seek. The index it replaces, (state, next_attempt_at), served no query (the
-- claims keep off it: it spans every tenant), and without this one the scan for due tenants read
-- through every waiting message of a tenant whose messages all wait for a retry (a backend
-- failing for hours behind a connected connector), at every scan. Partial: waiting messages only.
-- Built before the old index is dropped: on PostgreSQL the build lets reads through (it holds
-- writes), and the drop, which holds everything, comes last, just before the commit.
CREATE INDEX queue_messages_due_by_tenant ON queue_messages(tenant_id, next_attempt_at)
    WHERE state = 'queued';
DROP INDEX queue_messages_due;
