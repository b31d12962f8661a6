-- Rooms' discovery topics (SQLite). The topic itself is never stored: `key` is one-way derived
-- from it (enough to announce and look it up and to prove knowledge of it to peers, not to
-- recover it), `name` is the public id derived from that key (what queries name).
CREATE TABLE topics (
    id INTEGER PRIMARY KEY,
    name BLOB NOT NULL UNIQUE CHECK (length(name) = 32),
    key BLOB NOT NULL CHECK (length(key) = 32)
);
-- The topics a log carries, each with its writer's signature putting the log under the topic's
-- id (what peers that prove the topic are given). `own`: this node's writer tagged it.
CREATE TABLE log_topics (
    topic INTEGER NOT NULL REFERENCES topics (id),
    log_id INTEGER NOT NULL REFERENCES logs (id),
    signature BLOB NOT NULL CHECK (length(signature) = 64),
    own INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, log_id)
) WITHOUT ROWID;
CREATE INDEX log_topics_by_log ON log_topics (log_id);
-- Topics this node mirrors: every log found under one is mirrored with this policy.
CREATE TABLE topic_mirrors (
    topic INTEGER PRIMARY KEY REFERENCES topics (id),
    -- Each found log's own quota; NULL: only the node's total quota applies.
    quota_bytes INTEGER CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
    priority INTEGER NOT NULL DEFAULT 0,
    added_ms INTEGER NOT NULL CHECK (added_ms >= 0),
    last_check_ms INTEGER
);
-- 1: mirrored because it was asked for by key; 0: only because a mirrored topic listed it.
ALTER TABLE mirrors ADD COLUMN by_key INTEGER NOT NULL DEFAULT 1;
