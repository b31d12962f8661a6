-- Mailboxes: small encrypted records kept for a recipient that may be offline (SQLite).
CREATE TABLE mailbox_records (
    id BLOB PRIMARY KEY CHECK (length(id) = 32),
    mailbox BLOB NOT NULL CHECK (length(mailbox) = 32),
    -- The peer that deposited it (for per-depositor limits).
    depositor BLOB NOT NULL CHECK (length(depositor) = 32),
    data BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mailbox_records_by_mailbox ON mailbox_records (mailbox, received_at);
CREATE INDEX mailbox_records_by_expiry ON mailbox_records (expires_at);
