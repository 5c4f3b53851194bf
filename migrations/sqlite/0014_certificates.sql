-- Certificates per hostname (docs/certificates.md). A hostname may be marked for ACME (acme = 1):
-- the relays then obtain and renew its certificate; or it may carry an uploaded certificate.
-- Private keys and ACME account credentials are sealed with AES-256-GCM under the relays'
-- keys/certificate-key (nonce || ciphertext || tag, the hostname or directory URL as associated
-- data); the database never holds them in the clear.
ALTER TABLE hostnames ADD COLUMN acme INTEGER NOT NULL DEFAULT 0;

-- The certificate served for a hostname: source 'upload' or 'acme'. Times in ms since the epoch.
CREATE TABLE certificates (
    hostname    TEXT    PRIMARY KEY NOT NULL REFERENCES hostnames(hostname) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    chain_pem   TEXT    NOT NULL,
    key_sealed  BLOB    NOT NULL,
    serial      TEXT    NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- ACME issuance state per hostname, shared by the nodes: failures back off (next_attempt_at), and
-- renew_requested forces a renewal at the next check.
CREATE TABLE acme_status (
    hostname        TEXT    PRIMARY KEY NOT NULL REFERENCES hostnames(hostname) ON DELETE CASCADE,
    failures        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    renew_requested INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL
);

-- One ACME account per CA directory URL: instant-acme's credentials JSON, sealed.
CREATE TABLE acme_accounts (
    directory           TEXT    PRIMARY KEY NOT NULL,
    credentials_sealed  BLOB    NOT NULL,
    created_at          INTEGER NOT NULL
);

-- Relays reload their certificates when the revision changes (hostnames already bump it).
CREATE TRIGGER certificates_insert AFTER INSERT ON certificates BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER certificates_update AFTER UPDATE ON certificates BEGIN UPDATE revision SET value = value + 1; END;
CREATE TRIGGER certificates_delete AFTER DELETE ON certificates BEGIN UPDATE revision SET value = value + 1; END;
