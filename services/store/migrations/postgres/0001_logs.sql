-- Logs, their entries, tree nodes and fork evidence (PostgreSQL).
CREATE TABLE logs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key BYTEA NOT NULL UNIQUE CHECK (octet_length(key) = 32),
    length BIGINT NOT NULL DEFAULT 0 CHECK (length >= 0),
    byte_length BIGINT NOT NULL DEFAULT 0 CHECK (byte_length >= 0),
    root BYTEA,
    forked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE entries (
    log_id BIGINT NOT NULL REFERENCES logs (id),
    idx BIGINT NOT NULL CHECK (idx >= 0),
    data BYTEA NOT NULL,
    -- The tree nodes this entry's append completed (its leaf, then each parent of which it is the
    -- rightmost entry), 40 bytes each (hash, size u64 LE): the writer's nodes ride in its
    -- entries, no row of their own.
    tree BYTEA NOT NULL CHECK (octet_length(tree) % 40 = 0 AND octet_length(tree) > 0),
    PRIMARY KEY (log_id, idx)
);
-- Entries are ciphertext: compressing them is wasted work.
ALTER TABLE entries ALTER COLUMN data SET STORAGE EXTERNAL;
-- Nodes held without the entry that completes them (a sparse holder's proof nodes).
CREATE TABLE nodes (
    log_id BIGINT NOT NULL REFERENCES logs (id),
    idx BIGINT NOT NULL CHECK (idx >= 0),
    hash BYTEA NOT NULL CHECK (octet_length(hash) = 32),
    size BIGINT NOT NULL CHECK (size >= 0),
    PRIMARY KEY (log_id, idx)
);
CREATE TABLE fork_evidence (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log_id BIGINT NOT NULL REFERENCES logs (id),
    digest BYTEA NOT NULL,
    evidence BYTEA NOT NULL,
    UNIQUE (log_id, digest)
);
