//! The store's one error type. Bad input (a forged signature, a bad proof, an oversized entry)
//! has its own variant and never changes stored state; database failures keep sqlx's error as
//! the source.

use crate::log::LogKey;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bytes that were supposed to be a log key are not a usable ed25519 public key.
    #[error("invalid log key: {0}")]
    InvalidKey(&'static str),

    /// A root's signature does not verify under the log's key.
    #[error("bad root signature")]
    BadSignature,

    /// A signer was asked to sign a root of a log it does not hold the key for.
    #[error("signer does not hold this log's key")]
    WrongSigner,

    /// An encoding could not be decoded.
    #[error("malformed input: {0}")]
    Malformed(&'static str),

    /// A proof does not lead to the signed root.
    #[error("bad proof")]
    BadProof,

    /// Entries or nodes outside the tree of the given length.
    #[error("out of range")]
    OutOfRange,

    /// The holder lacks a tree node needed for a proof (it holds only part of the log).
    #[error("node {index} not held")]
    NotHeld { index: u64 },

    /// The holder lacks an entry.
    #[error("entry {index} not held")]
    EntryNotHeld { index: u64 },

    /// An entry is larger than [`crate::log::MAX_ENTRY_BYTES`].
    #[error("entry of {size} bytes is larger than the maximum of 65536")]
    EntryTooLarge { size: usize },

    /// A batch has more entries than [`crate::log::MAX_BATCH_ENTRIES`].
    #[error("batch of {count} entries is larger than the maximum of 4096")]
    BatchTooLarge { count: usize },

    /// A root is for another log.
    #[error("root is for log {actual}, not {expected}")]
    WrongLog { expected: LogKey, actual: LogKey },

    /// A root shorter than the one held whose peaks the holder cannot place in its own tree; ask
    /// for a proof against the held length instead.
    #[error("root of length {offered} is older than the held length {held} and cannot be placed")]
    StaleRoot { offered: u64, held: u64 },

    /// The log is marked forked; it takes no more entries.
    #[error("log {key} is forked")]
    Forked { key: LogKey },

    /// No such log in this store.
    #[error("log {key} not found")]
    LogNotFound { key: LogKey },

    /// Another writer appended to the log at the same time (another process on the same
    /// database); nothing was written, retry after reopening.
    #[error("log {key} was appended to concurrently")]
    Conflict { key: LogKey },

    /// The database URL is not `sqlite://…` or `postgres://…`.
    #[error("unsupported database url: {0}")]
    InvalidUrl(String),

    /// The database holds a schema this build does not know (newer, or altered).
    #[error("schema: {0}")]
    Schema(String),

    /// Stored data fails verification: the database was altered or damaged.
    #[error("corrupt store: {0}")]
    Corrupt(String),

    /// Reaching a peer failed (no route, the transport refused, the stream broke).
    #[error("network: {0}")]
    Network(String),

    /// A peer broke the wire protocol (a malformed or oversized message, a reply to nothing).
    /// The session with it ends; nothing it sent is stored.
    #[error("protocol: {0}")]
    Protocol(String),

    /// A mailbox (or the node's mailbox quota) is full, or a record is too large.
    #[error("mailbox: {0}")]
    MailboxFull(String),

    /// A log carries the most topics it may, or a topic lists the most logs it may.
    #[error("topic: {0}")]
    TopicLimit(String),

    /// A peer refused a request: its stable reason (as [`StoreError::reason`]) and message.
    #[error("peer refused: {message}")]
    Remote { reason: String, message: String },
    /// No such file in this store (or, from a peer, the peer does not have it).
    #[error("file {id} not found")]
    FileNotFound { id: crate::files::FileId },

    /// The holder lacks a block of a file (it holds only part of it).
    #[error("block {index} of the file not held")]
    BlockNotHeld { index: u64 },

    /// A file is larger than [`crate::files::MAX_FILE_BYTES`].
    #[error("file is larger than the maximum of 16 GiB")]
    FileTooLarge,

    /// A file's block does not open with the key: the key is wrong or the ciphertext altered.
    #[error("cannot decrypt block {index}: wrong key or altered ciphertext")]
    Decrypt { index: u64 },

    /// A string that should be a `kithfile1…` ticket is not one.
    #[error("invalid file ticket: {0}")]
    InvalidTicket(String),

    /// Reading or writing a local file or stream (not the database) failed.
    #[error("i/o: {0}")]
    Io(String),

    /// The database failed (I/O, full disk, lost connection, ...).
    #[error("database")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// A stable reason string for logs and, later, the gRPC error detail.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::InvalidKey(_) => "invalid_key",
            StoreError::BadSignature => "bad_signature",
            StoreError::WrongSigner => "wrong_signer",
            StoreError::Malformed(_) => "malformed",
            StoreError::BadProof => "bad_proof",
            StoreError::OutOfRange => "out_of_range",
            StoreError::NotHeld { .. } => "not_held",
            StoreError::EntryNotHeld { .. } => "entry_not_held",
            StoreError::EntryTooLarge { .. } => "entry_too_large",
            StoreError::BatchTooLarge { .. } => "batch_too_large",
            StoreError::WrongLog { .. } => "wrong_log",
            StoreError::StaleRoot { .. } => "stale_root",
            StoreError::Forked { .. } => "forked",
            StoreError::LogNotFound { .. } => "log_not_found",
            StoreError::Conflict { .. } => "conflict",
            StoreError::InvalidUrl(_) => "invalid_url",
            StoreError::Schema(_) => "schema",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Network(_) => "network",
            StoreError::Protocol(_) => "protocol",
            StoreError::MailboxFull(_) => "mailbox_full",
            StoreError::TopicLimit(_) => "topic_limit",
            StoreError::Remote { .. } => "remote",
            StoreError::FileNotFound { .. } => "file_not_found",
            StoreError::BlockNotHeld { .. } => "block_not_held",
            StoreError::FileTooLarge => "file_too_large",
            StoreError::Decrypt { .. } => "decrypt",
            StoreError::InvalidTicket(_) => "invalid_ticket",
            StoreError::Io(_) => "io",
            StoreError::Database(_) => "database",
        }
    }
}
