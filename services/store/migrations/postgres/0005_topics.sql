-- Rooms' discovery topics (PostgreSQL). The topic itself is never stored: `key` is one-way
-- derived from it (enough to announce and look it up and to prove knowledge of it to peers, not
-- to recover it), `name` is the public id derived from that key (what queries name).
CREATE TABLE topics (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name BYTEA NOT NULL UNIQUE CHECK (octet_length(name) = 32),
    key BYTEA NOT NULL CHECK (octet_length(key) = 32)
);
-- The topics a log carries, each with its writer's signature putting the log under the topic's
-- id (what peers that prove the topic are given). `own`: this node's writer tagged it.
CREATE TABLE log_topics (
    topic BIGINT NOT NULL REFERENCES topics (id),
    log_id BIGINT NOT NULL REFERENCES logs (id),
    signature BYTEA NOT NULL CHECK (octet_length(signature) = 64),
    own BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, log_id)
);
CREATE INDEX log_topics_by_log ON log_topics (log_id);
-- Topics this node mirrors: every log found under one is mirrored with this policy.
CREATE TABLE topic_mirrors (
    topic BIGINT PRIMARY KEY REFERENCES topics (id),
    -- Each found log's own quota; NULL: only the node's total quota applies.
    quota_bytes BIGINT CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    priority BIGINT NOT NULL DEFAULT 0,
    added_ms BIGINT NOT NULL CHECK (added_ms >= 0),
    last_check_ms BIGINT
);
-- 1: mirrored because it was asked for by key; 0: only because a mirrored topic listed it.
ALTER TABLE mirrors ADD COLUMN by_key BIGINT NOT NULL DEFAULT 1;
