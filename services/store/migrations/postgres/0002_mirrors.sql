-- Logs this node mirrors: it replicates and serves them without any decryption key (PostgreSQL).
CREATE TABLE mirrors (
    log_id BIGINT PRIMARY KEY REFERENCES logs (id),
    -- The most entry bytes to hold for this log; NULL: no quota of its own.
    quota_bytes BIGINT CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    -- Over the total quota, the lowest priority is evicted first.
    priority BIGINT NOT NULL DEFAULT 0,
    -- Entries below this index were evicted for quota and are not fetched again.
    evicted_below BIGINT NOT NULL DEFAULT 0 CHECK (evicted_below >= 0),
    added_ms BIGINT NOT NULL CHECK (added_ms >= 0),
    last_sync_ms BIGINT
);
CREATE INDEX mirrors_priority ON mirrors (priority);
