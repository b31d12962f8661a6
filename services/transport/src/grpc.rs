//! The transport service over gRPC: the server adapter that serves any [`TransportApi`], and
//! the remote implementation of [`TransportApi`] that calls it.
//!
//! Streams to peers ride gRPC bidirectional streams of [`pb::StreamFrame`]s: `open` (or
//! `accept`) first, `opened` back, then `data` both ways and `finish` for the end of a
//! direction. On the remote side they become the same [`PeerStream`] (an `AsyncRead` and an
//! `AsyncWrite`) an in-process caller gets.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kith_proto::transport::v1 as pb;
use kith_proto::transport::v1::stream_frame::Frame;
use kith_proto::transport::v1::transport_client::TransportClient as GrpcClient;
use kith_proto::transport::v1::transport_server::{Transport, TransportServer};
use kith_service::stream::WriteChunk;
use kith_service::{AuthChannel, Connection, MAX_MESSAGE_BYTES, ServiceError};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::PollSender;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::api::*;
use crate::dht::DhtStatus;
use crate::dht::NodeId;
use crate::discovery::NameRecord;
use crate::node::PeerAddrs;
use crate::node::nat::NatStatus;
use crate::peer::PeerId;
use crate::wire::{peer_from_wire, topic_from_wire};

/// Largest `data` frame sent; larger writes are split.
pub const MAX_DATA_FRAME: usize = 64 * 1024;
/// Incoming streams announced by `Listen` and not yet taken by `AcceptStream`, at most.
pub const MAX_PENDING_STREAMS: usize = 256;
/// How long a stream call stays up after its reader was dropped, for writes still in flight.
pub const DRAIN_AFTER_DROP: Duration = Duration::from_secs(60);
/// How long an announced stream waits for `AcceptStream` before it is dropped.
pub const PENDING_STREAM_TTL: Duration = Duration::from_secs(30);

/// Serves `api` as the `kith.transport.v1.Transport` gRPC service.
pub fn grpc_service(api: Arc<dyn TransportApi>) -> TransportServer<TransportGrpc> {
    TransportServer::new(TransportGrpc {
        api,
        pending: Arc::new(Pending::default()),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The gRPC adapter over any transport implementation.
pub struct TransportGrpc {
    api: Arc<dyn TransportApi>,
    pending: Arc<Pending>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn status(err: ApiError) -> Status {
    err.to_status()
}

fn invalid(message: &str) -> Status {
    status(ApiError::InvalidArgument(message.into()))
}

/// Streams peers opened on a listened protocol, waiting for `AcceptStream`.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    streams: Mutex<HashMap<u64, (Instant, PeerStream)>>,
}

impl Pending {
    /// Parks `stream` under a fresh id; `None` when too many wait.
    fn park(&self, stream: PeerStream) -> Option<u64> {
        let mut streams = lock(&self.streams);
        let now = Instant::now();
        streams.retain(|_, (at, _)| now.duration_since(*at) < PENDING_STREAM_TTL);
        if streams.len() >= MAX_PENDING_STREAMS {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        streams.insert(id, (now, stream));
        Some(id)
    }

    fn take(&self, id: u64) -> Option<PeerStream> {
        let (at, stream) = lock(&self.streams).remove(&id)?;
        (at.elapsed() < PENDING_STREAM_TTL).then_some(stream)
    }
}

type FrameStream = ReceiverStream<Result<pb::StreamFrame, Status>>;

fn frame(frame: Frame) -> pb::StreamFrame {
    pb::StreamFrame { frame: Some(frame) }
}

fn opened(stream: &PeerStream) -> pb::StreamFrame {
    frame(Frame::Opened(pb::Opened {
        peer_id: stream.peer.as_bytes().to_vec().into(),
        alpn: stream.alpn.clone(),
    }))
}

/// Carries `stream` over a gRPC call: request frames into its writer, its reader into response
/// frames (the first being `opened`).
fn pump(stream: PeerStream, mut requests: Streaming<pb::StreamFrame>) -> FrameStream {
    let (tx, rx) = mpsc::channel(16);
    let first = opened(&stream);
    let PeerStream {
        mut send, mut recv, ..
    } = stream;
    let requests_done = tokio::spawn(async move {
        let mut finished = false;
        // Read the request stream to its end (a half-read HTTP/2 body would be reset).
        loop {
            match requests.message().await {
                Ok(Some(pb::StreamFrame {
                    frame: Some(Frame::Data(data)),
                })) if !finished => {
                    if send.write_chunk(data).await.is_err() {
                        break;
                    }
                }
                Ok(Some(pb::StreamFrame {
                    frame: Some(Frame::Finish(_)),
                })) if !finished => {
                    finished = true;
                    let _ = send.shutdown().await;
                }
                // The caller's request stream ended: that finishes its direction too.
                Ok(None) => {
                    if !finished {
                        let _ = send.shutdown().await;
                    }
                    break;
                }
                Ok(Some(_)) => {
                    debug!("unexpected frame on an open stream");
                    break;
                }
                Err(error) => {
                    debug!(%error, "stream call ended");
                    break;
                }
            }
        }
    });
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; MAX_DATA_FRAME];
        loop {
            let item = tokio::select! {
                read = recv.read(&mut buf) => match read {
                    Ok(0) => Ok(frame(Frame::Finish(true))),
                    Ok(n) => Ok(frame(Frame::Data(Bytes::copy_from_slice(&buf[..n])))),
                    Err(error) => Err(status(ApiError::ConnectionLost(format!("stream: {error}")))),
                },
                _ = tx.closed() => return,
            };
            let finish = matches!(
                item,
                Ok(pb::StreamFrame {
                    frame: Some(Frame::Finish(_))
                })
            );
            let error = item.is_err();
            if tx.send(item).await.is_err() || error {
                return;
            }
            if finish {
                // End the call only once the caller's direction is done too: ending it earlier
                // lets HTTP/2 reset the stream and drop request data still in flight.
                tokio::select! {
                    _ = requests_done => {}
                    _ = tx.closed() => {}
                }
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[async_trait]
impl Transport for TransportGrpc {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let s = self.api.status().await.map_err(status)?;
        Ok(Response::new((&s).into()))
    }

    async fn nat_status(
        &self,
        _: Request<pb::NatStatusRequest>,
    ) -> Result<Response<pb::NatStatusResponse>, Status> {
        let s = self.api.nat_status().await.map_err(status)?;
        Ok(Response::new((&s).into()))
    }

    async fn dht_status(
        &self,
        _: Request<pb::DhtStatusRequest>,
    ) -> Result<Response<pb::DhtStatusResponse>, Status> {
        let s = self.api.dht_status().await.map_err(status)?;
        Ok(Response::new((&s).into()))
    }

    async fn connect(
        &self,
        request: Request<pb::ConnectRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        let r = request.into_inner();
        let target = match r.target {
            Some(pb::connect_request::Target::PeerId(peer)) => Target::Peer {
                peer: peer_from_wire(&peer, "peer_id").map_err(status)?,
                hints: r
                    .hints
                    .map(PeerAddrs::try_from)
                    .transpose()
                    .map_err(status)?,
            },
            Some(pb::connect_request::Target::Name(name)) => {
                if r.hints.is_some() {
                    return Err(invalid("hints are for a peer id, not a name"));
                }
                Target::Name(name)
            }
            None => return Err(invalid("target (peer_id or name) is required")),
        };
        let c = self.api.connect(target).await.map_err(status)?;
        Ok(Response::new(pb::ConnectResponse {
            peer: Some((&c.peer).into()),
            connect_us: c.connect.as_micros() as u64,
            ping_us: c.ping.as_micros() as u64,
        }))
    }

    async fn list_peers(
        &self,
        _: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let peers = self.api.peers().await.map_err(status)?;
        Ok(Response::new(pb::ListPeersResponse {
            peers: peers.iter().map(Into::into).collect(),
        }))
    }

    async fn resolve_name(
        &self,
        request: Request<pb::ResolveNameRequest>,
    ) -> Result<Response<pb::ResolveNameResponse>, Status> {
        let r = self
            .api
            .resolve_name(request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new((&r).into()))
    }

    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceResponse>, Status> {
        let topic = topic_from_wire(&request.into_inner().topic).map_err(status)?;
        let stored = self.api.announce(topic).await.map_err(status)?;
        Ok(Response::new(pb::AnnounceResponse {
            stored: stored as u64,
        }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let topic = topic_from_wire(&request.into_inner().topic).map_err(status)?;
        let peers = self.api.lookup(topic).await.map_err(status)?;
        Ok(Response::new(pb::LookupResponse {
            peers: peers.iter().map(Into::into).collect(),
        }))
    }

    type OpenStreamStream = FrameStream;

    async fn open_stream(
        &self,
        request: Request<Streaming<pb::StreamFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let mut requests = request.into_inner();
        let open = match requests.message().await? {
            Some(pb::StreamFrame {
                frame: Some(Frame::Open(open)),
            }) => open,
            _ => return Err(invalid("the first frame must be `open`")),
        };
        let peer = peer_from_wire(&open.peer_id, "open.peer_id").map_err(status)?;
        let hints = open
            .hints
            .map(PeerAddrs::try_from)
            .transpose()
            .map_err(status)?;
        let stream = self
            .api
            .open_stream(peer, open.alpn, hints)
            .await
            .map_err(status)?;
        Ok(Response::new(pump(stream, requests)))
    }

    type ListenStream = ReceiverStream<Result<pb::IncomingStream, Status>>;

    async fn listen(
        &self,
        request: Request<pb::ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let mut listener = self
            .api
            .listen(request.into_inner().alpn)
            .await
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(16);
        let pending = self.pending.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    stream = listener.accept() => match stream {
                        Some(stream) => stream,
                        None => return,
                    },
                    // The caller went away: dropping the listener stops serving the protocol.
                    _ = tx.closed() => return,
                };
                let announce = pb::IncomingStream {
                    stream_id: 0,
                    peer_id: stream.peer.as_bytes().to_vec().into(),
                    alpn: stream.alpn.clone(),
                };
                let Some(id) = pending.park(stream) else {
                    debug!("too many streams waiting to be accepted; one dropped");
                    continue;
                };
                let announce = pb::IncomingStream {
                    stream_id: id,
                    ..announce
                };
                if tx.send(Ok(announce)).await.is_err() {
                    pending.take(id);
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type AcceptStreamStream = FrameStream;

    async fn accept_stream(
        &self,
        request: Request<Streaming<pb::StreamFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let mut requests = request.into_inner();
        let id = match requests.message().await? {
            Some(pb::StreamFrame {
                frame: Some(Frame::Accept(accept)),
            }) => accept.stream_id,
            _ => return Err(invalid("the first frame must be `accept`")),
        };
        let stream = self.pending.take(id).ok_or_else(|| {
            status(ApiError::NotFound(format!(
                "no incoming stream {id} (taken, expired or never announced)"
            )))
        })?;
        Ok(Response::new(pump(stream, requests)))
    }
}

/// [`TransportApi`] over gRPC.
pub struct RemoteTransport {
    client: GrpcClient<AuthChannel>,
}

impl RemoteTransport {
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

    /// Starts a stream call whose first frame is `first`; returns the peer stream once the
    /// server answered `opened`.
    async fn stream_call(
        client: GrpcClient<AuthChannel>,
        first: pb::StreamFrame,
        accept: bool,
    ) -> Result<PeerStream> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first)
            .await
            .map_err(|_| ApiError::Internal("request channel closed".into()))?;
        let mut client = client;
        let response = if accept {
            client.accept_stream(ReceiverStream::new(rx)).await
        } else {
            client.open_stream(ReceiverStream::new(rx)).await
        }
        .map_err(|s| ApiError::from_status(&s))?;
        let mut responses = response.into_inner();
        let (peer, alpn) = match responses.message().await {
            Ok(Some(pb::StreamFrame {
                frame: Some(Frame::Opened(o)),
            })) => (peer_from_wire(&o.peer_id, "opened.peer_id")?, o.alpn),
            Ok(_) => {
                return Err(ApiError::Internal(
                    "the service did not answer `opened`".into(),
                ));
            }
            Err(s) => return Err(ApiError::from_status(&s)),
        };
        // The call is driven by a task of its own, not by the reader: dropping a bidirectional
        // call's response resets the HTTP/2 stream and loses request data still in flight, so
        // the task reads the response to its end (the service ends it once both directions are
        // done), handing data to the reader while there is one.
        let (data_tx, data_rx) = mpsc::channel::<io::Result<Bytes>>(16);
        tokio::spawn(async move {
            let mut reader = Some(data_tx);
            let mut deadline: Option<tokio::time::Instant> = None;
            loop {
                let next = match deadline {
                    Some(at) => match tokio::time::timeout_at(at, responses.message()).await {
                        Ok(next) => next,
                        Err(_) => return,
                    },
                    None => responses.message().await,
                };
                let item = match next {
                    Ok(Some(pb::StreamFrame {
                        frame: Some(Frame::Data(data)),
                    })) => Ok(data),
                    Ok(Some(pb::StreamFrame {
                        frame: Some(Frame::Finish(_)),
                    })) => {
                        reader = None;
                        continue;
                    }
                    Ok(None) => return,
                    Ok(Some(_)) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected frame on an open stream",
                    )),
                    Err(s) => Err(io::Error::other(ApiError::from_status(&s))),
                };
                let error = item.is_err();
                if let Some(tx) = &reader
                    && tx.send(item).await.is_err()
                {
                    // The reader is gone: keep the call up a while for our writes in flight.
                    reader = None;
                    deadline.get_or_insert(tokio::time::Instant::now() + DRAIN_AFTER_DROP);
                }
                if error {
                    return;
                }
            }
        });
        Ok(PeerStream {
            peer,
            alpn,
            send: Box::new(FrameWriter {
                tx: PollSender::new(tx),
                finished: false,
            }),
            recv: Box::new(tokio_util::io::StreamReader::new(ReceiverStream::new(
                data_rx,
            ))),
        })
    }
}

/// Writes become `data` frames on a stream call; shutdown sends `finish`.
struct FrameWriter {
    tx: PollSender<pb::StreamFrame>,
    finished: bool,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the stream call has ended")
}

impl AsyncWrite for FrameWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.finished {
            return Poll::Ready(Err(closed()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_DATA_FRAME);
        self.tx
            .send_item(frame(Frame::Data(Bytes::copy_from_slice(&buf[..n]))))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
            self.tx
                .send_item(frame(Frame::Finish(true)))
                .map_err(|_| closed())?;
            self.finished = true;
            self.tx.close();
        }
        Poll::Ready(Ok(()))
    }
}

impl ChunkWrite for FrameWriter {
    /// Sends the chunk's pieces as data frames, without copying them.
    fn write_chunk(&mut self, mut chunk: Bytes) -> WriteChunk<'_> {
        Box::pin(async move {
            while !chunk.is_empty() {
                if self.finished {
                    return Err(closed());
                }
                std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
                    .await
                    .map_err(|_| closed())?;
                let piece = chunk.split_to(chunk.len().min(MAX_DATA_FRAME));
                self.tx
                    .send_item(frame(Frame::Data(piece)))
                    .map_err(|_| closed())?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl TransportApi for RemoteTransport {
    async fn status(&self) -> Result<NodeStatus> {
        self.call(
            pb::StatusRequest {},
            |mut c, r| async move { c.status(r).await },
        )
        .await?
        .try_into()
    }

    async fn nat_status(&self) -> Result<NatStatus> {
        self.call(pb::NatStatusRequest {}, |mut c, r| async move {
            c.nat_status(r).await
        })
        .await?
        .try_into()
    }

    async fn dht_status(&self) -> Result<DhtStatus> {
        self.call(pb::DhtStatusRequest {}, |mut c, r| async move {
            c.dht_status(r).await
        })
        .await?
        .try_into()
    }

    async fn connect(&self, target: Target) -> Result<Connected> {
        let request = match target {
            Target::Peer { peer, hints } => pb::ConnectRequest {
                target: Some(pb::connect_request::Target::PeerId(
                    peer.as_bytes().to_vec().into(),
                )),
                hints: hints.as_ref().map(Into::into),
            },
            Target::Name(name) => pb::ConnectRequest {
                target: Some(pb::connect_request::Target::Name(name)),
                hints: None,
            },
        };
        let r = self
            .call(request, |mut c, r| async move { c.connect(r).await })
            .await?;
        Ok(Connected {
            peer: r
                .peer
                .ok_or_else(|| ApiError::InvalidArgument("peer is required".into()))?
                .try_into()?,
            connect: Duration::from_micros(r.connect_us),
            ping: Duration::from_micros(r.ping_us),
        })
    }

    async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.call(pb::ListPeersRequest {}, |mut c, r| async move {
            c.list_peers(r).await
        })
        .await?
        .peers
        .into_iter()
        .map(TryInto::try_into)
        .collect()
    }

    async fn resolve_name(&self, name: String) -> Result<NameRecord> {
        self.call(pb::ResolveNameRequest { name }, |mut c, r| async move {
            c.resolve_name(r).await
        })
        .await?
        .try_into()
    }

    async fn announce(&self, topic: NodeId) -> Result<usize> {
        let request = pb::AnnounceRequest {
            topic: topic.as_bytes().to_vec().into(),
        };
        let r = self
            .call(request, |mut c, r| async move { c.announce(r).await })
            .await?;
        Ok(usize::try_from(r.stored).unwrap_or(usize::MAX))
    }

    async fn lookup(&self, topic: NodeId) -> Result<Vec<TopicPeer>> {
        let request = pb::LookupRequest {
            topic: topic.as_bytes().to_vec().into(),
        };
        self.call(request, |mut c, r| async move { c.lookup(r).await })
            .await?
            .peers
            .into_iter()
            .map(TryInto::try_into)
            .collect()
    }

    async fn open_stream(
        &self,
        peer: PeerId,
        alpn: String,
        hints: Option<PeerAddrs>,
    ) -> Result<PeerStream> {
        check_protocol(&alpn)?;
        let first = frame(Frame::Open(pb::OpenRequest {
            peer_id: peer.as_bytes().to_vec().into(),
            alpn,
            hints: hints.as_ref().map(Into::into),
        }));
        Self::stream_call(self.client.clone(), first, false).await
    }

    async fn listen(&self, alpn: String) -> Result<Listener> {
        check_protocol(&alpn)?;
        let mut announcements = self
            .call(
                pb::ListenRequest { alpn: alpn.clone() },
                |mut c, r| async move { c.listen(r).await },
            )
            .await?;
        let (tx, rx) = mpsc::channel(16);
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            loop {
                let announced = tokio::select! {
                    next = announcements.message() => match next {
                        Ok(Some(announced)) => announced,
                        Ok(None) | Err(_) => return,
                    },
                    _ = tx.closed() => return,
                };
                let first = frame(Frame::Accept(pb::AcceptRequest {
                    stream_id: announced.stream_id,
                }));
                match Self::stream_call(client.clone(), first, true).await {
                    Ok(stream) => {
                        if tx.send(stream).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => debug!(%error, "announced stream not taken"),
                }
            }
        });
        Ok(Listener::new(alpn, rx, AbortOnDrop(task)))
    }
}

/// Ends the remote listener's task (and so its `Listen` call) with the listener.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
