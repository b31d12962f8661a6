-- Logs, their entries, tree nodes and fork evidence (SQLite).
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE CHECK (length(key) = 32),
    length INTEGER NOT NULL DEFAULT 0 CHECK (length >= 0),
    byte_length INTEGER NOT NULL DEFAULT 0 CHECK (byte_length >= 0),
    root BLOB,
    forked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE entries (
    log_id INTEGER NOT NULL REFERENCES logs (id),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    data BLOB NOT NULL,
    -- The tree nodes this entry's append completed (its leaf, then each parent of which it is the
    -- rightmost entry), 40 bytes each (hash, size u64 LE): the writer's nodes ride in its
    -- entries, no row of their own.
    tree BLOB NOT NULL CHECK (length(tree) % 40 = 0 AND length(tree) > 0),
    PRIMARY KEY (log_id, idx)
) WITHOUT ROWID;
-- Nodes held without the entry that completes them (a sparse holder's proof nodes).
CREATE TABLE nodes (
    log_id INTEGER NOT NULL REFERENCES logs (id),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    hash BLOB NOT NULL CHECK (length(hash) = 32),
    size INTEGER NOT NULL CHECK (size >= 0),
    PRIMARY KEY (log_id, idx)
) WITHOUT ROWID;
CREATE TABLE fork_evidence (
    id INTEGER PRIMARY KEY,
    log_id INTEGER NOT NULL REFERENCES logs (id),
    digest BLOB NOT NULL,
    evidence BLOB NOT NULL,
    UNIQUE (log_id, digest)
);
