-- Cross-node forwarding: a relay node finds the nodes holding a tenant's sessions here.
-- node_id: the relay_nodes.id of the process holding the session (NULL for rows written before
-- this migration). targets: the target names the connector announced, space-separated ('' = it
-- did not say, and may be asked for any).
ALTER TABLE connector_sessions ADD COLUMN node_id TEXT;
ALTER TABLE connector_sessions ADD COLUMN targets TEXT;
CREATE INDEX connector_sessions_node ON connector_sessions(node_id, disconnected_at);
-- The node holding the session that served a request, when it is not the node the visitor
-- reached (the request was forwarded); NULL otherwise.
ALTER TABLE audit_requests ADD COLUMN session_node TEXT;
-- The address connectors may dial a node on directly (`[cluster] public_address`), listed to them
-- in `Welcome` so that a connector keeps sessions on more than one node; NULL: none of its own.
ALTER TABLE relay_nodes ADD COLUMN public_address TEXT;
