//! The store service over gRPC: the server adapter that serves any [`StoreApi`], and the remote
//! implementation of [`StoreApi`] that calls it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kith_proto::store::v1 as pb;
use kith_proto::store::v1::store_client::StoreClient as GrpcClient;
use kith_proto::store::v1::store_server::{Store as StoreRpc, StoreServer};
use kith_service::{AuthChannel, Connection, MAX_MESSAGE_BYTES, ServiceError};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::api::*;
use crate::backend::{LogInfo, MailboxStats, Stats, VerifyReport};
use crate::files::{FetchProgress, FileId, FileInfo};
use crate::log::{LogKey, SignedRoot};
use crate::mailbox::{Deposited, MailboxKey, Record};
use crate::net::PeerId;
use crate::replicate::{
    MirrorInfo, MirrorPolicy, SyncReport, TopicLogSync, TopicMirrorInfo, TopicSyncReport,
};
use crate::topic::{RoomTopic, TopicId};

/// Serves `api` as the `kith.store.v1.Store` gRPC service.
pub fn grpc_service(api: Arc<dyn StoreApi>) -> StoreServer<StoreGrpc> {
    StoreServer::new(StoreGrpc { api })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The gRPC adapter over any store implementation.
pub struct StoreGrpc {
    api: Arc<dyn StoreApi>,
}

fn status(error: ApiError) -> Status {
    error.to_status()
}

fn key_from_wire(bytes: &[u8], field: &str) -> Result<LogKey> {
    LogKey::from_slice(bytes).map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")))
}

fn mailbox_from_wire(bytes: &[u8], field: &str) -> Result<MailboxKey> {
    MailboxKey::from_slice(bytes).map_err(|e| ApiError::InvalidArgument(format!("{field}: {e}")))
}

/// An optional peer id: empty bytes are `None`.
fn peer_from_wire(bytes: &[u8], field: &str) -> Result<Option<PeerId>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let key = LogKey::from_slice(bytes)
        .map_err(|e| ApiError::InvalidArgument(format!("{field}: not a peer id: {e}")))?;
    Ok(Some(*key.as_bytes()))
}

fn topic_from_wire(bytes: &[u8], field: &str) -> Result<RoomTopic> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ApiError::InvalidArgument(format!("{field}: a topic is 32 bytes")))?;
    Ok(RoomTopic::from_bytes(bytes))
}

fn topic_id_from_wire(bytes: &[u8], field: &str) -> Result<TopicId> {
    Ok(TopicId(id_from_wire(bytes, field)?))
}

fn topic_to_wire(topic: &RoomTopic) -> Bytes {
    Bytes::copy_from_slice(topic.as_bytes())
}

fn keys_from_wire(keys: &[Bytes], field: &str) -> Result<Vec<LogKey>> {
    keys.iter().map(|k| key_from_wire(k, field)).collect()
}

fn topic_ids_from_wire(ids: &[Bytes], field: &str) -> Result<Vec<TopicId>> {
    ids.iter().map(|id| topic_id_from_wire(id, field)).collect()
}

impl From<&LogTopics> for pb::LogTopics {
    fn from(t: &LogTopics) -> Self {
        pb::LogTopics {
            key: Bytes::copy_from_slice(t.key.as_bytes()),
            topics: t
                .topics
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
        }
    }
}

impl TryFrom<pb::LogTopics> for LogTopics {
    type Error = ApiError;
    fn try_from(t: pb::LogTopics) -> Result<Self> {
        Ok(LogTopics {
            key: key_from_wire(&t.key, "key")?,
            topics: topic_ids_from_wire(&t.topics, "topics")?,
        })
    }
}

impl From<&TopicMirrorInfo> for pb::TopicMirrorInfo {
    fn from(t: &TopicMirrorInfo) -> Self {
        pb::TopicMirrorInfo {
            topic_id: Bytes::copy_from_slice(t.id.as_bytes()),
            quota_bytes: t.policy.quota_bytes.unwrap_or(0),
            priority: t.policy.priority,
            logs: t
                .logs
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
            peers_seen: t.peers_seen,
            added_ms: t.added_ms,
            last_check_ms: t.last_check_ms.unwrap_or(0),
        }
    }
}

impl TryFrom<pb::TopicMirrorInfo> for TopicMirrorInfo {
    type Error = ApiError;
    fn try_from(t: pb::TopicMirrorInfo) -> Result<Self> {
        Ok(TopicMirrorInfo {
            id: topic_id_from_wire(&t.topic_id, "topic_id")?,
            policy: MirrorPolicy {
                quota_bytes: (t.quota_bytes != 0).then_some(t.quota_bytes),
                priority: t.priority,
            },
            logs: keys_from_wire(&t.logs, "logs")?,
            peers_seen: t.peers_seen,
            added_ms: t.added_ms,
            last_check_ms: (t.last_check_ms != 0).then_some(t.last_check_ms),
        })
    }
}

impl From<&TopicSyncReport> for pb::SyncTopicResponse {
    fn from(r: &TopicSyncReport) -> Self {
        pb::SyncTopicResponse {
            topic_id: Bytes::copy_from_slice(r.topic.as_bytes()),
            peers_found: r.peers_found as u64,
            peers_answered: r.peers_answered as u64,
            logs: r
                .logs
                .iter()
                .map(|l| pb::TopicLogSync {
                    key: Bytes::copy_from_slice(l.key.as_bytes()),
                    length: l.length,
                    entries_received: l.entries_received,
                    error: l.error.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::SyncTopicResponse> for TopicSyncReport {
    type Error = ApiError;
    fn try_from(r: pb::SyncTopicResponse) -> Result<Self> {
        Ok(TopicSyncReport {
            topic: topic_id_from_wire(&r.topic_id, "topic_id")?,
            peers_found: usize::try_from(r.peers_found)
                .map_err(|_| ApiError::InvalidArgument("peers_found".into()))?,
            peers_answered: usize::try_from(r.peers_answered)
                .map_err(|_| ApiError::InvalidArgument("peers_answered".into()))?,
            logs: r
                .logs
                .into_iter()
                .map(|l| {
                    Ok(TopicLogSync {
                        key: key_from_wire(&l.key, "logs.key")?,
                        length: l.length,
                        entries_received: l.entries_received,
                        error: (!l.error.is_empty()).then_some(l.error),
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

fn id_from_wire(bytes: &[u8], field: &str) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| ApiError::InvalidArgument(format!("{field}: expected 32 bytes")))
}

impl From<&LogInfo> for pb::LogInfo {
    fn from(info: &LogInfo) -> Self {
        pb::LogInfo {
            key: Bytes::copy_from_slice(info.key.as_bytes()),
            length: info.length,
            byte_length: info.byte_length,
            root: info
                .root
                .as_ref()
                .map(|r| Bytes::copy_from_slice(&r.to_bytes()))
                .unwrap_or_default(),
            held_entries: info.held_entries,
            forked: info.forked,
        }
    }
}

impl TryFrom<pb::LogInfo> for LogInfo {
    type Error = ApiError;
    fn try_from(info: pb::LogInfo) -> Result<Self> {
        let key = key_from_wire(&info.key, "log.key")?;
        let root = if info.root.is_empty() {
            None
        } else {
            let root = SignedRoot::from_bytes(&info.root)
                .map_err(|e| ApiError::BadData(format!("log.root: {e}")))?;
            if root.key() != key || root.length() != info.length {
                return Err(ApiError::BadData(
                    "log.root is for another log or length".into(),
                ));
            }
            Some(root)
        };
        Ok(LogInfo {
            key,
            length: info.length,
            byte_length: info.byte_length,
            root,
            held_entries: info.held_entries,
            forked: info.forked,
        })
    }
}

fn record_to_wire(r: &Record) -> pb::MailboxRecord {
    pb::MailboxRecord {
        id: Bytes::copy_from_slice(&r.id),
        record: Bytes::copy_from_slice(&r.data),
        received_at: r.received_at,
        expires_at: r.expires_at,
    }
}

fn file_id_from_wire(bytes: &[u8], field: &str) -> Result<FileId> {
    Ok(FileId(id_from_wire(bytes, field)?))
}

impl From<&FileInfo> for pb::FileInfo {
    fn from(f: &FileInfo) -> Self {
        pb::FileInfo {
            id: Bytes::copy_from_slice(f.id.as_bytes()),
            size: f.size,
            blocks: f.blocks,
            held_blocks: f.held_blocks,
            held_bytes: f.held_bytes,
        }
    }
}

impl TryFrom<pb::FileInfo> for FileInfo {
    type Error = ApiError;
    fn try_from(f: pb::FileInfo) -> Result<Self> {
        Ok(FileInfo {
            id: file_id_from_wire(&f.id, "file.id")?,
            size: f.size,
            blocks: f.blocks,
            held_blocks: f.held_blocks,
            held_bytes: f.held_bytes,
        })
    }
}

impl From<&MirrorInfo> for pb::MirrorInfo {
    fn from(m: &MirrorInfo) -> Self {
        pb::MirrorInfo {
            key: Bytes::copy_from_slice(m.key.as_bytes()),
            quota_bytes: m.policy.quota_bytes.unwrap_or(0),
            priority: m.policy.priority,
            length: m.length,
            held_entries: m.held_entries,
            bytes_held: m.bytes_held,
            evicted_below: m.evicted_below,
            peers_seen: m.peers_seen,
            last_sync_ms: m.last_sync_ms.unwrap_or(0),
            forked: m.forked,
            by_key: m.by_key,
            topics: m
                .topics
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
        }
    }
}

impl TryFrom<pb::MirrorInfo> for MirrorInfo {
    type Error = ApiError;
    fn try_from(m: pb::MirrorInfo) -> Result<Self> {
        Ok(MirrorInfo {
            key: key_from_wire(&m.key, "mirror.key")?,
            policy: MirrorPolicy {
                quota_bytes: (m.quota_bytes != 0).then_some(m.quota_bytes),
                priority: m.priority,
            },
            length: m.length,
            held_entries: m.held_entries,
            bytes_held: m.bytes_held,
            evicted_below: m.evicted_below,
            peers_seen: m.peers_seen,
            last_sync_ms: (m.last_sync_ms != 0).then_some(m.last_sync_ms),
            forked: m.forked,
            by_key: m.by_key,
            topics: topic_ids_from_wire(&m.topics, "mirror.topics")?,
        })
    }
}

fn blocks_from_wire(first: u64, end: u64) -> std::ops::Range<u64> {
    first..if end == 0 { u64::MAX } else { end }
}

type ResponseStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl StoreRpc for StoreGrpc {
    type ReadFileStream = ResponseStream<pb::FileData>;
    type FetchFileStream = ResponseStream<pb::FetchFileProgress>;

    async fn sync_log(
        &self,
        request: Request<pb::SyncLogRequest>,
    ) -> Result<Response<pb::SyncLogResponse>, Status> {
        let r = request.into_inner();
        let key = key_from_wire(&r.key, "key").map_err(status)?;
        let peer = peer_from_wire(&r.peer, "peer").map_err(status)?;
        let report = self.api.sync_log(key, peer).await.map_err(status)?;
        Ok(Response::new(pb::SyncLogResponse {
            peers_found: report.peers_found as u64,
            peers_synced: report.peers_synced as u64,
            entries_received: report.entries_received,
            length: report.length,
        }))
    }

    async fn add_mirror(
        &self,
        request: Request<pb::AddMirrorRequest>,
    ) -> Result<Response<pb::MirrorInfo>, Status> {
        let r = request.into_inner();
        let key = key_from_wire(&r.key, "key").map_err(status)?;
        let policy = MirrorPolicy {
            quota_bytes: (r.quota_bytes != 0).then_some(r.quota_bytes),
            priority: r.priority,
        };
        let info = self.api.add_mirror(key, policy).await.map_err(status)?;
        Ok(Response::new((&info).into()))
    }

    async fn remove_mirror(
        &self,
        request: Request<pb::RemoveMirrorRequest>,
    ) -> Result<Response<pb::RemoveMirrorResponse>, Status> {
        let key = key_from_wire(&request.into_inner().key, "key").map_err(status)?;
        let removed = self.api.remove_mirror(key).await.map_err(status)?;
        Ok(Response::new(pb::RemoveMirrorResponse { removed }))
    }

    async fn list_mirrors(
        &self,
        _: Request<pb::ListMirrorsRequest>,
    ) -> Result<Response<pb::ListMirrorsResponse>, Status> {
        let mirrors = self.api.list_mirrors().await.map_err(status)?;
        Ok(Response::new(pb::ListMirrorsResponse {
            mirrors: mirrors.iter().map(Into::into).collect(),
        }))
    }

    async fn tag_log(
        &self,
        request: Request<pb::TagLogRequest>,
    ) -> Result<Response<pb::LogTopics>, Status> {
        let r = request.into_inner();
        let topic = topic_from_wire(&r.topic, "topic").map_err(status)?;
        let tagged = self.api.tag_log(r.name, topic).await.map_err(status)?;
        Ok(Response::new((&tagged).into()))
    }

    async fn untag_log(
        &self,
        request: Request<pb::TagLogRequest>,
    ) -> Result<Response<pb::UntagLogResponse>, Status> {
        let r = request.into_inner();
        let topic = topic_from_wire(&r.topic, "topic").map_err(status)?;
        let removed = self.api.untag_log(r.name, topic).await.map_err(status)?;
        Ok(Response::new(pb::UntagLogResponse { removed }))
    }

    async fn topic_logs(
        &self,
        request: Request<pb::TopicLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        let topic = topic_from_wire(&request.into_inner().topic, "topic").map_err(status)?;
        let logs = self.api.topic_logs(topic).await.map_err(status)?;
        Ok(Response::new(pb::ListLogsResponse {
            logs: logs.iter().map(Into::into).collect(),
        }))
    }

    async fn sync_topic(
        &self,
        request: Request<pb::SyncTopicRequest>,
    ) -> Result<Response<pb::SyncTopicResponse>, Status> {
        let topic = topic_from_wire(&request.into_inner().topic, "topic").map_err(status)?;
        let report = self.api.sync_topic(topic).await.map_err(status)?;
        Ok(Response::new((&report).into()))
    }

    async fn add_topic_mirror(
        &self,
        request: Request<pb::AddTopicMirrorRequest>,
    ) -> Result<Response<pb::TopicMirrorInfo>, Status> {
        let r = request.into_inner();
        let topic = topic_from_wire(&r.topic, "topic").map_err(status)?;
        let policy = MirrorPolicy {
            quota_bytes: (r.quota_bytes != 0).then_some(r.quota_bytes),
            priority: r.priority,
        };
        let info = self
            .api
            .add_topic_mirror(topic, policy)
            .await
            .map_err(status)?;
        Ok(Response::new((&info).into()))
    }

    async fn remove_topic_mirror(
        &self,
        request: Request<pb::RemoveTopicMirrorRequest>,
    ) -> Result<Response<pb::RemoveMirrorResponse>, Status> {
        let id = topic_id_from_wire(&request.into_inner().topic_id, "topic_id").map_err(status)?;
        let removed = self.api.remove_topic_mirror(id).await.map_err(status)?;
        Ok(Response::new(pb::RemoveMirrorResponse { removed }))
    }

    async fn list_topic_mirrors(
        &self,
        _: Request<pb::ListTopicMirrorsRequest>,
    ) -> Result<Response<pb::ListTopicMirrorsResponse>, Status> {
        let mirrors = self.api.list_topic_mirrors().await.map_err(status)?;
        Ok(Response::new(pb::ListTopicMirrorsResponse {
            mirrors: mirrors.iter().map(Into::into).collect(),
        }))
    }

    async fn put_file(
        &self,
        request: Request<Streaming<pb::FileData>>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        let pieces = request.into_inner().map(|piece| match piece {
            Ok(piece) if piece.data.len() > MAX_DATA_PIECE => Err(ApiError::InvalidArgument(
                "a file data message larger than 1 MiB".into(),
            )),
            Ok(piece) => Ok(piece.data),
            Err(s) => Err(ApiError::from_status(&s)),
        });
        let info = self.api.put_file(Box::pin(pieces)).await.map_err(status)?;
        Ok(Response::new((&info).into()))
    }

    async fn read_file(
        &self,
        request: Request<pb::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let r = request.into_inner();
        let id = file_id_from_wire(&r.id, "id").map_err(status)?;
        let end = (r.end != 0).then_some(r.end);
        let data = self.api.read_file(id, r.start, end).await.map_err(status)?;
        let out = data.map(|piece| piece.map(|data| pb::FileData { data }).map_err(status));
        Ok(Response::new(Box::pin(out)))
    }

    async fn fetch_file(
        &self,
        request: Request<pb::FetchFileRequest>,
    ) -> Result<Response<Self::FetchFileStream>, Status> {
        let r = request.into_inner();
        let id = file_id_from_wire(&r.id, "id").map_err(status)?;
        let peer = peer_from_wire(&r.peer, "peer").map_err(status)?;
        let updates = self
            .api
            .fetch_file(id, peer, blocks_from_wire(r.first_block, r.end_block))
            .await
            .map_err(status)?;
        let out = updates.map(|update| {
            update
                .map(|u| pb::FetchFileProgress {
                    file_size: u.progress.file_size,
                    total: u.progress.total,
                    held: u.progress.held,
                    received: u.progress.received,
                    done: u.done.as_ref().map(Into::into),
                })
                .map_err(status)
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<pb::FileInfo>, Status> {
        let id = file_id_from_wire(&request.into_inner().id, "id").map_err(status)?;
        let info = self.api.get_file(id).await.map_err(status)?;
        Ok(Response::new((&info).into()))
    }

    async fn list_files(
        &self,
        _: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let files = self.api.list_files().await.map_err(status)?;
        Ok(Response::new(pb::ListFilesResponse {
            files: files.iter().map(Into::into).collect(),
        }))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.api.status().await.map_err(status)?;
        Ok(Response::new(pb::StatusResponse {
            backend: s.stats.backend.to_string(),
            logs: s.stats.logs,
            forked_logs: s.stats.forked_logs,
            entries: s.stats.entries,
            entry_bytes: s.stats.entry_bytes,
            fork_evidence: s.stats.fork_evidence,
            mailbox_records: s.mailboxes.records,
            mailbox_bytes: s.mailboxes.bytes,
            nodes: s.stats.nodes,
        }))
    }

    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let r = request.into_inner();
        let entries = r.entries.into_iter().map(|e| e.to_vec()).collect();
        let log = self.api.append(r.name, entries).await.map_err(status)?;
        Ok(Response::new(pb::AppendResponse {
            log: Some((&log).into()),
        }))
    }

    async fn writer_log(
        &self,
        request: Request<pb::WriterLogRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        let log = self
            .api
            .writer_log(request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new((&log).into()))
    }

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let r = request.into_inner();
        let key = key_from_wire(&r.key, "key").map_err(status)?;
        let entries = self
            .api
            .get_entries(key, r.start, r.end)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetEntriesResponse {
            entries: entries.into_iter().map(Bytes::from).collect(),
        }))
    }

    async fn list_logs(
        &self,
        _: Request<pb::ListLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        let logs = self.api.list_logs().await.map_err(status)?;
        Ok(Response::new(pb::ListLogsResponse {
            logs: logs.iter().map(Into::into).collect(),
        }))
    }

    async fn get_log(
        &self,
        request: Request<pb::GetLogRequest>,
    ) -> Result<Response<pb::LogInfo>, Status> {
        let key = key_from_wire(&request.into_inner().key, "key").map_err(status)?;
        let log = self.api.get_log(key).await.map_err(status)?;
        Ok(Response::new((&log).into()))
    }

    async fn verify_log(
        &self,
        request: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let key = key_from_wire(&request.into_inner().key, "key").map_err(status)?;
        let report = self.api.verify_log(key).await.map_err(status)?;
        Ok(Response::new(pb::VerifyLogResponse {
            length: report.length,
            held_entries: report.held_entries,
        }))
    }

    async fn mailbox_put(
        &self,
        request: Request<pb::MailboxPutRequest>,
    ) -> Result<Response<pb::MailboxPutResponse>, Status> {
        let r = request.into_inner();
        let peer = peer_from_wire(&r.peer, "peer").map_err(status)?;
        let mailbox = mailbox_from_wire(&r.mailbox, "mailbox").map_err(status)?;
        let d = self
            .api
            .mailbox_put(peer, mailbox, r.record.to_vec(), r.ttl_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MailboxPutResponse {
            id: Bytes::copy_from_slice(&d.id),
            expires_at: d.expires_at,
        }))
    }

    async fn mailbox_fetch(
        &self,
        request: Request<pb::MailboxFetchRequest>,
    ) -> Result<Response<pb::MailboxFetchResponse>, Status> {
        let r = request.into_inner();
        let peer = peer_from_wire(&r.peer, "peer").map_err(status)?;
        let records = self.api.mailbox_fetch(peer, r.ack).await.map_err(status)?;
        Ok(Response::new(pb::MailboxFetchResponse {
            records: records.iter().map(record_to_wire).collect(),
        }))
    }

    async fn mailbox_key(
        &self,
        _: Request<pb::MailboxKeyRequest>,
    ) -> Result<Response<pb::MailboxKeyResponse>, Status> {
        let key = self.api.mailbox_key().await.map_err(status)?;
        Ok(Response::new(pb::MailboxKeyResponse {
            key: Bytes::copy_from_slice(key.as_bytes()),
        }))
    }
}

/// The store service of another process, over gRPC.
#[derive(Clone, Debug)]
pub struct RemoteStore {
    client: GrpcClient<AuthChannel>,
}

impl RemoteStore {
    pub fn new(connection: Connection) -> Self {
        Self {
            client: GrpcClient::new(connection.channel())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(usize::MAX),
        }
    }

    async fn call<Q, R, F, Fut>(&self, request: Q, method: F) -> Result<R>
    where
        Q: Clone,
        F: Fn(GrpcClient<AuthChannel>, Q) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        kith_service::unary(&self.client, request, method).await
    }
}

fn peer_to_wire(peer: Option<PeerId>) -> Bytes {
    peer.map(|p| Bytes::copy_from_slice(&p)).unwrap_or_default()
}

#[async_trait]
impl StoreApi for RemoteStore {
    async fn status(&self) -> Result<StoreStatus> {
        let s = self
            .call(
                pb::StatusRequest {},
                |mut c, r| async move { c.status(r).await },
            )
            .await?;
        let backend = match s.backend.as_str() {
            "sqlite" => "sqlite",
            "postgres" => "postgres",
            other => return Err(ApiError::Internal(format!("unknown backend {other:?}"))),
        };
        Ok(StoreStatus {
            stats: Stats {
                backend,
                logs: s.logs,
                forked_logs: s.forked_logs,
                entries: s.entries,
                entry_bytes: s.entry_bytes,
                nodes: s.nodes,
                fork_evidence: s.fork_evidence,
            },
            mailboxes: MailboxStats {
                records: s.mailbox_records,
                bytes: s.mailbox_bytes,
            },
        })
    }

    async fn append(&self, name: String, entries: Vec<Vec<u8>>) -> Result<LogInfo> {
        let request = pb::AppendRequest {
            name,
            entries: entries.into_iter().map(Bytes::from).collect(),
        };
        let response = self
            .call(request, |mut c, r| async move { c.append(r).await })
            .await?;
        response
            .log
            .ok_or_else(|| ApiError::Internal("append answered no log".into()))?
            .try_into()
    }

    async fn writer_log(&self, name: String) -> Result<LogInfo> {
        self.call(pb::WriterLogRequest { name }, |mut c, r| async move {
            c.writer_log(r).await
        })
        .await?
        .try_into()
    }

    async fn get_entries(&self, key: LogKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>> {
        let request = pb::GetEntriesRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            start,
            end,
        };
        let response = self
            .call(request, |mut c, r| async move { c.get_entries(r).await })
            .await?;
        Ok(response.entries.into_iter().map(|e| e.to_vec()).collect())
    }

    async fn list_logs(&self) -> Result<Vec<LogInfo>> {
        self.call(pb::ListLogsRequest {}, |mut c, r| async move {
            c.list_logs(r).await
        })
        .await?
        .logs
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }

    async fn get_log(&self, key: LogKey) -> Result<LogInfo> {
        let request = pb::GetLogRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
        };
        self.call(request, |mut c, r| async move { c.get_log(r).await })
            .await?
            .try_into()
    }

    async fn verify_log(&self, key: LogKey) -> Result<VerifyReport> {
        let request = pb::VerifyLogRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
        };
        let r = self
            .call(request, |mut c, r| async move { c.verify_log(r).await })
            .await?;
        Ok(VerifyReport {
            length: r.length,
            held_entries: r.held_entries,
        })
    }

    async fn mailbox_put(
        &self,
        peer: Option<PeerId>,
        mailbox: MailboxKey,
        record: Vec<u8>,
        ttl_seconds: u64,
    ) -> Result<Deposited> {
        let request = pb::MailboxPutRequest {
            peer: peer_to_wire(peer),
            mailbox: Bytes::copy_from_slice(mailbox.as_bytes()),
            record: Bytes::from(record),
            ttl_seconds,
        };
        let r = self
            .call(request, |mut c, r| async move { c.mailbox_put(r).await })
            .await?;
        Ok(Deposited {
            id: id_from_wire(&r.id, "id")?,
            expires_at: r.expires_at,
        })
    }

    async fn mailbox_fetch(&self, peer: Option<PeerId>, ack: bool) -> Result<Vec<MailboxRecord>> {
        let request = pb::MailboxFetchRequest {
            peer: peer_to_wire(peer),
            ack,
        };
        let r = self
            .call(request, |mut c, r| async move { c.mailbox_fetch(r).await })
            .await?;
        r.records
            .into_iter()
            .map(|r| {
                Ok(Record {
                    id: id_from_wire(&r.id, "record.id")?,
                    data: r.record.to_vec(),
                    received_at: r.received_at,
                    expires_at: r.expires_at,
                })
            })
            .collect()
    }

    async fn mailbox_key(&self) -> Result<MailboxKey> {
        let r = self
            .call(pb::MailboxKeyRequest {}, |mut c, r| async move {
                c.mailbox_key(r).await
            })
            .await?;
        mailbox_from_wire(&r.key, "key")
    }

    async fn sync_log(&self, key: LogKey, peer: Option<PeerId>) -> Result<SyncReport> {
        let request = pb::SyncLogRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            peer: peer_to_wire(peer),
        };
        let r = self
            .call(request, |mut c, r| async move { c.sync_log(r).await })
            .await?;
        Ok(SyncReport {
            peers_found: r.peers_found as usize,
            peers_synced: r.peers_synced as usize,
            entries_received: r.entries_received,
            length: r.length,
        })
    }

    async fn add_mirror(&self, key: LogKey, policy: MirrorPolicy) -> Result<MirrorInfo> {
        let request = pb::AddMirrorRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            quota_bytes: policy.quota_bytes.unwrap_or(0),
            priority: policy.priority,
        };
        self.call(request, |mut c, r| async move { c.add_mirror(r).await })
            .await?
            .try_into()
    }

    async fn remove_mirror(&self, key: LogKey) -> Result<bool> {
        let request = pb::RemoveMirrorRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
        };
        Ok(self
            .call(request, |mut c, r| async move { c.remove_mirror(r).await })
            .await?
            .removed)
    }

    async fn list_mirrors(&self) -> Result<Vec<MirrorInfo>> {
        self.call(pb::ListMirrorsRequest {}, |mut c, r| async move {
            c.list_mirrors(r).await
        })
        .await?
        .mirrors
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }

    async fn tag_log(&self, name: String, topic: RoomTopic) -> Result<LogTopics> {
        let request = pb::TagLogRequest {
            name,
            topic: topic_to_wire(&topic),
        };
        self.call(request, |mut c, r| async move { c.tag_log(r).await })
            .await?
            .try_into()
    }

    async fn untag_log(&self, name: String, topic: RoomTopic) -> Result<bool> {
        let request = pb::TagLogRequest {
            name,
            topic: topic_to_wire(&topic),
        };
        Ok(self
            .call(request, |mut c, r| async move { c.untag_log(r).await })
            .await?
            .removed)
    }

    async fn topic_logs(&self, topic: RoomTopic) -> Result<Vec<LogInfo>> {
        let request = pb::TopicLogsRequest {
            topic: topic_to_wire(&topic),
        };
        self.call(request, |mut c, r| async move { c.topic_logs(r).await })
            .await?
            .logs
            .into_iter()
            .map(TryInto::try_into)
            .collect()
    }

    async fn sync_topic(&self, topic: RoomTopic) -> Result<TopicSyncReport> {
        let request = pb::SyncTopicRequest {
            topic: topic_to_wire(&topic),
        };
        self.call(request, |mut c, r| async move { c.sync_topic(r).await })
            .await?
            .try_into()
    }

    async fn add_topic_mirror(
        &self,
        topic: RoomTopic,
        policy: MirrorPolicy,
    ) -> Result<TopicMirrorInfo> {
        let request = pb::AddTopicMirrorRequest {
            topic: topic_to_wire(&topic),
            quota_bytes: policy.quota_bytes.unwrap_or(0),
            priority: policy.priority,
        };
        self.call(
            request,
            |mut c, r| async move { c.add_topic_mirror(r).await },
        )
        .await?
        .try_into()
    }

    async fn remove_topic_mirror(&self, id: TopicId) -> Result<bool> {
        let request = pb::RemoveTopicMirrorRequest {
            topic_id: Bytes::copy_from_slice(id.as_bytes()),
        };
        Ok(self
            .call(
                request,
                |mut c, r| async move { c.remove_topic_mirror(r).await },
            )
            .await?
            .removed)
    }

    async fn list_topic_mirrors(&self) -> Result<Vec<TopicMirrorInfo>> {
        self.call(pb::ListTopicMirrorsRequest {}, |mut c, r| async move {
            c.list_topic_mirrors(r).await
        })
        .await?
        .mirrors
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }

    async fn put_file(&self, ciphertext: DataStream) -> Result<FileInfo> {
        // A client stream cannot be replayed: no reconnect retry here. The caller's stream is
        // pumped by a task; a read error of it ends the upload (the service then keeps nothing
        // of it) and is what the call returns.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::FileData>(4);
        let mut pump = tokio::spawn(async move {
            let mut ciphertext = ciphertext;
            while let Some(piece) = ciphertext.next().await {
                match piece {
                    Ok(data) => {
                        if tx.send(pb::FileData { data }).await.is_err() {
                            return Ok(());
                        }
                    }
                    // The sender is kept (returned) so the upload does not look complete
                    // before the call is cancelled.
                    Err(error) => return Err((error, tx)),
                }
            }
            Ok(())
        });
        let mut client = self.client.clone();
        let mut call = Box::pin(async move {
            client
                .put_file(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        let result = tokio::select! {
            result = &mut call => result,
            pumped = &mut pump => match pumped {
                Ok(Err((error, tx))) => {
                    drop(call); // cancels the call (the stream is reset, not ended)
                    drop(tx);
                    return Err(error);
                }
                _ => call.await,
            },
        };
        result
            .map_err(|s| ApiError::from_status(&s))?
            .into_inner()
            .try_into()
    }

    async fn read_file(&self, id: FileId, start: u64, end: Option<u64>) -> Result<DataStream> {
        let request = pb::ReadFileRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
            start,
            end: end.unwrap_or(0),
        };
        let stream = self
            .call(request, |mut c, r| async move { c.read_file(r).await })
            .await?;
        Ok(Box::pin(stream.map(|piece| {
            piece.map(|p| p.data).map_err(|s| ApiError::from_status(&s))
        })))
    }

    async fn fetch_file(
        &self,
        id: FileId,
        peer: Option<PeerId>,
        blocks: std::ops::Range<u64>,
    ) -> Result<FetchStream> {
        let request = pb::FetchFileRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
            peer: peer_to_wire(peer),
            first_block: blocks.start,
            end_block: if blocks.end == u64::MAX {
                0
            } else {
                blocks.end
            },
        };
        let stream = self
            .call(request, |mut c, r| async move { c.fetch_file(r).await })
            .await?;
        Ok(Box::pin(stream.map(|update| {
            let u = update.map_err(|s| ApiError::from_status(&s))?;
            Ok(FetchUpdate {
                progress: FetchProgress {
                    file_size: u.file_size,
                    total: u.total,
                    held: u.held,
                    received: u.received,
                },
                done: u.done.map(TryInto::try_into).transpose()?,
            })
        })))
    }

    async fn get_file(&self, id: FileId) -> Result<FileInfo> {
        let request = pb::GetFileRequest {
            id: Bytes::copy_from_slice(id.as_bytes()),
        };
        self.call(request, |mut c, r| async move { c.get_file(r).await })
            .await?
            .try_into()
    }

    async fn list_files(&self) -> Result<Vec<FileInfo>> {
        self.call(pb::ListFilesRequest {}, |mut c, r| async move {
            c.list_files(r).await
        })
        .await?
        .files
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }
}
