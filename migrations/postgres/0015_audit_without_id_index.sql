-- The audit table without the unique index on request_id. Ids are UUIDv7s the relay makes itself
-- (unique by construction) and nothing reads a record by id; the index was one more B-tree to
-- update on every insert. A UUIDv7 starts with its creation time in ms, so a lookup by id can
-- still go through audit_requests_created.
ALTER TABLE audit_requests DROP CONSTRAINT audit_requests_pkey;
