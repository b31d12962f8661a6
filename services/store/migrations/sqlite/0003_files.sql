-- Files: content-addressed ciphertext in 64 KiB blocks, held whole or in part (SQLite).
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    -- The BLAKE3 hash of the whole ciphertext (the file id); NULL while an import is hashing it.
    root BLOB UNIQUE CHECK (root IS NULL OR length(root) = 32),
    -- Ciphertext bytes (0 only while importing).
    size INTEGER NOT NULL CHECK (size >= 0),
    -- The outboard: each block's BLAKE3 chaining value, 32 bytes each (empty while importing).
    outboard BLOB NOT NULL CHECK (length(outboard) % 32 = 0)
);
-- The blocks held, each verified against the outboard before it was stored. `data` is the
-- block's ciphertext, or NULL when it is in the file's data file in the store's blob dir
-- (`<blob dir>/<files.id>.data`, the block at idx × 65536), written and synced before the row. A rowid table:
-- 64 KiB rows would make a WITHOUT ROWID b-tree slow.
CREATE TABLE file_blocks (
    file_id INTEGER NOT NULL REFERENCES files (id),
    idx INTEGER NOT NULL CHECK (idx >= 0),
    data BLOB,
    PRIMARY KEY (file_id, idx)
);
