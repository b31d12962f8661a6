//! The store service's API: one trait, [`StoreApi`], implemented in-process by
//! [`crate::service::StoreService`] and remotely by [`crate::grpc::RemoteStore`]; callers hold a
//! [`StoreClient`] and cannot tell which. Errors are one typed enum, [`ApiError`], the same
//! locally and over gRPC.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio_stream::Stream;

use crate::backend::{LogInfo, MailboxStats, Stats, VerifyReport};
use crate::error::StoreError;
use crate::files::{FetchProgress, FileId, FileInfo};
use crate::log::LogKey;
use crate::mailbox::{Deposited, MailboxKey, Record};
use crate::net::PeerId;
use crate::replicate::{MirrorInfo, MirrorPolicy, SyncReport, TopicMirrorInfo, TopicSyncReport};
use crate::topic::{RoomTopic, TopicId};

kith_service::service_error! {
    /// Everything a store API call can fail with, for local and remote callers alike.
    pub enum ApiError {
        /// A request field is malformed (key, name, sizes, ...).
        InvalidArgument => (InvalidArgument, "invalid_argument"),
        /// No such log (or entry).
        NotFound => (NotFound, "not_found"),
        /// Data failed verification (a signature, a proof, fork evidence).
        BadData => (InvalidArgument, "bad_data"),
        /// The log is forked; it takes no more entries.
        Forked => (FailedPrecondition, "forked"),
        /// A mailbox or a quota is full, or an entry or record is too large.
        Full => (ResourceExhausted, "full"),
        /// The node runs without a network (no transport), or the store is not set up for it.
        FailedPrecondition => (FailedPrecondition, "failed_precondition"),
        /// A peer could not be reached, or refused.
        Unreachable => (Unavailable, "unreachable"),
        /// The database failed (full disk, lost connection): nothing was changed.
        Storage => (Unavailable, "storage"),
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = kith_service::error_chain(&error);
        match error {
            StoreError::InvalidKey(_)
            | StoreError::Malformed(_)
            | StoreError::OutOfRange
            | StoreError::WrongLog { .. }
            | StoreError::WrongSigner
            | StoreError::StaleRoot { .. } => ApiError::InvalidArgument(message),
            StoreError::BadSignature | StoreError::BadProof | StoreError::Protocol(_) => {
                ApiError::BadData(message)
            }
            StoreError::NotHeld { .. }
            | StoreError::EntryNotHeld { .. }
            | StoreError::LogNotFound { .. }
            | StoreError::FileNotFound { .. }
            | StoreError::BlockNotHeld { .. } => ApiError::NotFound(message),
            StoreError::FileTooLarge => ApiError::Full(message),
            StoreError::Decrypt { .. } => ApiError::BadData(message),
            StoreError::InvalidTicket(_) => ApiError::InvalidArgument(message),
            StoreError::Io(_) => ApiError::Internal(message),
            StoreError::EntryTooLarge { .. }
            | StoreError::BatchTooLarge { .. }
            | StoreError::MailboxFull(_)
            | StoreError::TopicLimit(_) => ApiError::Full(message),
            StoreError::Forked { .. } => ApiError::Forked(message),
            StoreError::Remote { ref reason, .. } => match reason.as_str() {
                "mailbox_full" | "entry_too_large" | "batch_too_large" => ApiError::Full(message),
                "invalid_key" | "malformed" | "out_of_range" => ApiError::InvalidArgument(message),
                "file_not_found" | "block_not_held" | "log_not_found" => {
                    ApiError::NotFound(message)
                }
                "bad_signature" | "bad_proof" => ApiError::BadData(message),
                _ => ApiError::Unreachable(message),
            },
            StoreError::Network(_) => ApiError::Unreachable(message),
            StoreError::Conflict { .. } | StoreError::Database(_) => ApiError::Storage(message),
            StoreError::InvalidUrl(_) | StoreError::Schema(_) | StoreError::Corrupt(_) => {
                ApiError::Internal(message)
            }
        }
    }
}

/// The longest writer-log name.
pub const MAX_LOG_NAME: usize = 48;

/// Checks a writer-log name: 1 to [`MAX_LOG_NAME`] characters of `a-z 0-9 . _ -`.
pub fn check_log_name(name: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if name.is_empty() || name.len() > MAX_LOG_NAME || !name.chars().all(ok) {
        return Err(ApiError::InvalidArgument(format!(
            "log name {name:?} must be 1 to {MAX_LOG_NAME} characters of a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// The identity scope whose delegated key writes the log `name`.
pub fn log_scope(name: &str) -> String {
    format!("store/log/{name}")
}

/// The identity scope whose delegated key owns this node's mailbox.
pub const MAILBOX_SCOPE: &str = "store/mailbox";

/// The store and everything in it, in totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    #[serde(flatten)]
    pub stats: Stats,
    pub mailboxes: MailboxStats,
}

/// A mailbox record as the owner reads it.
pub type MailboxRecord = Record;

/// Bytes streamed in or out (file ciphertext), in pieces of at most [`MAX_DATA_PIECE`].
pub type DataStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// The largest piece of a [`DataStream`].
pub const MAX_DATA_PIECE: usize = 1024 * 1024;

/// Where a file fetch stands; the last update carries the file as held afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FetchUpdate {
    pub progress: FetchProgress,
    pub done: Option<FileInfo>,
}

/// A log and the room topics it carries (by id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogTopics {
    pub key: LogKey,
    pub topics: Vec<TopicId>,
}

/// The updates of a fetch.
pub type FetchStream = Pin<Box<dyn Stream<Item = Result<FetchUpdate>> + Send>>;

/// The store service.
#[async_trait]
pub trait StoreApi: Send + Sync + 'static {
    async fn status(&self) -> Result<StoreStatus>;
    /// Appends `entries` (ciphertext) to this node's writer log `name`; answers once durable.
    async fn append(&self, name: String, entries: Vec<Vec<u8>>) -> Result<LogInfo>;
    /// This node's writer log `name`, created empty if new.
    async fn writer_log(&self, name: String) -> Result<LogInfo>;
    /// Entries `[start, end)`; every one must be held.
    async fn get_entries(&self, key: LogKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>>;
    async fn list_logs(&self) -> Result<Vec<LogInfo>>;
    async fn get_log(&self, key: LogKey) -> Result<LogInfo>;
    async fn verify_log(&self, key: LogKey) -> Result<VerifyReport>;

    /// Deposits `record` in `mailbox` at `peer` (`None`: this node).
    async fn mailbox_put(
        &self,
        peer: Option<PeerId>,
        mailbox: MailboxKey,
        record: Vec<u8>,
        ttl_seconds: u64,
    ) -> Result<Deposited>;
    /// This node's mailbox at `peer` (`None`: this node); with `ack`, removes what was returned.
    async fn mailbox_fetch(&self, peer: Option<PeerId>, ack: bool) -> Result<Vec<MailboxRecord>>;
    /// This node's mailbox key.
    async fn mailbox_key(&self) -> Result<MailboxKey>;

    /// Brings a log up to date once, from `peer` or from the peers under its topic.
    async fn sync_log(&self, key: LogKey, peer: Option<PeerId>) -> Result<SyncReport>;
    /// Mirrors a log by its key alone: replicates, serves and follows it within `policy`.
    async fn add_mirror(&self, key: LogKey, policy: MirrorPolicy) -> Result<MirrorInfo>;
    /// Stops mirroring a log and drops what is held of it; `false` if it was not mirrored.
    async fn remove_mirror(&self, key: LogKey) -> Result<bool>;
    async fn list_mirrors(&self) -> Result<Vec<MirrorInfo>>;

    /// Puts this node's writer log `name` in a room: signs the tag that puts it under the
    /// room's `topic`, keeps it, and announces the topic, so peers that prove they know the
    /// topic are given the log. Answers the log's topics afterwards.
    async fn tag_log(&self, name: String, topic: RoomTopic) -> Result<LogTopics>;
    /// Takes writer log `name` out of `topic` here; `false` if it did not carry it. (Tags
    /// handed out before stay valid: a tag cannot be withdrawn.)
    async fn untag_log(&self, name: String, topic: RoomTopic) -> Result<bool>;
    /// The logs held under `topic` (own, mirrored or synced), ordered by key.
    async fn topic_logs(&self, topic: RoomTopic) -> Result<Vec<LogInfo>>;
    /// Brings every log of a room up to date once, knowing only its topic: asks the peers
    /// announced under it for its logs, then syncs each.
    async fn sync_topic(&self, topic: RoomTopic) -> Result<TopicSyncReport>;
    /// Mirrors a room by its topic alone: finds its logs, mirrors each within `policy` (the
    /// quota applies per log), answers and announces for the topic, and keeps asking for logs
    /// of new members.
    async fn add_topic_mirror(
        &self,
        topic: RoomTopic,
        policy: MirrorPolicy,
    ) -> Result<TopicMirrorInfo>;
    /// Stops mirroring a topic (by id, as listed) and drops the logs mirrored only because it
    /// listed them; `false` if it was not mirrored.
    async fn remove_topic_mirror(&self, id: TopicId) -> Result<bool>;
    async fn list_topic_mirrors(&self) -> Result<Vec<TopicMirrorInfo>>;

    /// Stores a file's ciphertext (the caller encrypted it), streamed in order; answers once
    /// it is all durable.
    async fn put_file(&self, ciphertext: DataStream) -> Result<FileInfo>;
    /// Ciphertext bytes `[start, end)` (`end` clamped to the file; `None`: to the end) of a
    /// held file, each block verified against the file's id as it is read.
    async fn read_file(&self, id: FileId, start: u64, end: Option<u64>) -> Result<DataStream>;
    /// Fetches `blocks` of a file from `peer` (or the peers under the file's topic) into this
    /// store, verified and kept as they arrive.
    async fn fetch_file(
        &self,
        id: FileId,
        peer: Option<PeerId>,
        blocks: Range<u64>,
    ) -> Result<FetchStream>;
    async fn get_file(&self, id: FileId) -> Result<FileInfo>;
    async fn list_files(&self) -> Result<Vec<FileInfo>>;
}

/// The client every caller of the store service holds, in-process or remote.
pub type StoreClient = kith_service::Client<dyn StoreApi>;

impl kith_service::RemoteApi for dyn StoreApi {
    fn remote(connection: kith_service::Connection) -> Arc<Self> {
        Arc::new(crate::grpc::RemoteStore::new(connection))
    }
}
