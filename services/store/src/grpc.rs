//! The store service over gRPC: the server adapter that serves any [`StoreApi`], and the remote
//! implementation of [`StoreApi`] that calls it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kith_proto::store::v1 as pb;
use kith_proto::store::v1::store_client::StoreClient as GrpcClient;
use kith_proto::store::v1::store_server::{Store as StoreRpc, StoreServer};
use kith_service::{AuthChannel, Connection, MAX_MESSAGE_BYTES, ServiceError};
use tonic::{Request, Response, Status};

use crate::api::*;
use crate::backend::{LogInfo, MailboxStats, Stats, VerifyReport};
use crate::log::{LogKey, SignedRoot};
use crate::mailbox::{Deposited, MailboxKey, Record};
use crate::net::PeerId;

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

#[tonic::async_trait]
impl StoreRpc for StoreGrpc {
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
                nodes: 0,
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
}
