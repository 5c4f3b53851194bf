-- Pairing across the relay nodes of a cluster (docs/pairing.md): which node holds each online
-- peer, the document ids it joined, and the connections waiting for their partner. Rows of nodes
-- that stopped heartbeating are ignored and purged. A single SQLite node keeps all of this in
-- memory and leaves the tables empty.
CREATE TABLE pairing_peers (
    tenant_id   TEXT    NOT NULL,
    peer_id     TEXT    NOT NULL,
    node_id     TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, peer_id)
);

CREATE TABLE pairing_documents (
    tenant_id   TEXT    NOT NULL,
    document_id TEXT    NOT NULL,
    peer_id     TEXT    NOT NULL,
    node_id     TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, document_id, peer_id)
);
CREATE INDEX pairing_documents_peer ON pairing_documents(tenant_id, peer_id);

CREATE TABLE pairing_held (
    tenant_id   TEXT    NOT NULL,
    a           TEXT    NOT NULL,
    b           TEXT    NOT NULL,
    document_id TEXT    NOT NULL,
    node_id     TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, a, b, document_id)
);
