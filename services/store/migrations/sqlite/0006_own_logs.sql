-- Logs this node writes (it appended to them, or created them, with its own key), so they are
-- known as its own after a restart too: never mirrored, evicted or deleted.
CREATE TABLE own_logs (
    key BLOB PRIMARY KEY CHECK (length(key) = 32)
) WITHOUT ROWID;
