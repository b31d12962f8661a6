-- Logs this node writes (it appended to them, or created them, with its own key), so they are
-- known as its own after a restart too: never mirrored, evicted or deleted.
CREATE TABLE own_logs (
    key BYTEA PRIMARY KEY CHECK (octet_length(key) = 32)
);
