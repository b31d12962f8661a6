-- Mailboxes: small encrypted records kept for a recipient that may be offline (PostgreSQL).
CREATE TABLE mailbox_records (
    id BYTEA PRIMARY KEY CHECK (length(id) = 32),
    mailbox BYTEA NOT NULL CHECK (length(mailbox) = 32),
    depositor BYTEA NOT NULL CHECK (length(depositor) = 32),
    data BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX mailbox_records_by_mailbox ON mailbox_records (mailbox, received_at);
CREATE INDEX mailbox_records_by_expiry ON mailbox_records (expires_at);
