-- Files: content-addressed ciphertext in 64 KiB blocks, held whole or in part (PostgreSQL).
CREATE TABLE files (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The BLAKE3 hash of the whole ciphertext (the file id); NULL while an import is hashing it.
    root BYTEA UNIQUE CHECK (root IS NULL OR octet_length(root) = 32),
    -- Ciphertext bytes (0 only while importing).
    size BIGINT NOT NULL CHECK (size >= 0),
    -- The outboard: each block's BLAKE3 chaining value, 32 bytes each (empty while importing).
    outboard BYTEA NOT NULL CHECK (octet_length(outboard) % 32 = 0)
);
-- The blocks held, each verified against the outboard before it was stored. `data` is the
-- block's ciphertext, or NULL when it is in the file's data file in the store's blob dir
-- (`<blob dir>/<files.id>.data`, the block at idx × 65536), written and synced before the row.
CREATE TABLE file_blocks (
    file_id BIGINT NOT NULL REFERENCES files (id),
    idx BIGINT NOT NULL CHECK (idx >= 0),
    data BYTEA,
    PRIMARY KEY (file_id, idx)
);
-- Blocks are ciphertext: compressing them is wasted work.
ALTER TABLE file_blocks ALTER COLUMN data SET STORAGE EXTERNAL;
