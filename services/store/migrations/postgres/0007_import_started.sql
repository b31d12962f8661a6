-- When an import began (Unix seconds), so a provisional row (`root IS NULL`) that a crash or a
-- cancelled import left behind can be told from one still being written, and removed.
-- Rows from before this migration get 0: a provisional one among them is a leftover.
ALTER TABLE files ADD COLUMN import_started BIGINT NOT NULL DEFAULT 0;
