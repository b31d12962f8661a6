//! [`TransportService`]: the [`TransportApi`] over a running [`Node`], in this process.
//!
//! It keeps one QUIC connection per (peer, protocol) and reuses it while it is open, serves the
//! built-in ping protocol ([`PING_ALPN`]), and turns protocols registered through
//! [`TransportApi::listen`] into streams handed to the listener.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use kith_service::stream::WriteChunk;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tracing::debug;

use crate::api::*;
use crate::connection::{Connection, close_code};
use crate::dht::{DhtStatus, NodeId};
use crate::discovery::NameRecord;
use crate::node::nat::NatStatus;
use crate::node::{Node, PeerAddrs};
use crate::peer::PeerId;
use crate::router::ProtocolHandler;

/// Most open connections the service keeps for its callers.
pub const MAX_CONNECTIONS: usize = 1024;
/// Streams a listener may have waiting before the protocol's peers are slowed down.
const LISTENER_BACKLOG: usize = 64;

/// The transport service over a node.
pub struct TransportService {
    node: Node,
    /// Connections this service dialled, one per (peer, protocol).
    connections: Mutex<HashMap<(PeerId, Vec<u8>), Connection>>,
    /// Connections peers dialled to our protocols (for `peers`).
    incoming: Incoming,
}

/// Connections accepted by the service's protocols, pruned of closed ones.
#[derive(Clone, Default)]
struct Incoming(Arc<Mutex<Vec<Connection>>>);

impl Incoming {
    fn add(&self, conn: &Connection) {
        let mut list = lock(&self.0);
        list.retain(|c| c.close_reason().is_none());
        if list.len() < MAX_CONNECTIONS {
            list.push(conn.clone());
        }
    }

    fn open(&self) -> Vec<Connection> {
        let mut list = lock(&self.0);
        list.retain(|c| c.close_reason().is_none());
        list.clone()
    }
}

impl std::fmt::Debug for TransportService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportService")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl TransportService {
    /// Serves the API over `node`, adding the ping protocol to it.
    pub fn new(node: Node) -> Result<Self> {
        let incoming = Incoming::default();
        node.add_protocol(
            PING_ALPN,
            Ping {
                incoming: incoming.clone(),
            },
        )?;
        Ok(Self {
            node,
            connections: Mutex::new(HashMap::new()),
            incoming,
        })
    }

    /// The node underneath.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops the node (connections, DHT, socket).
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }

    fn cached(&self, peer: PeerId, alpn: &[u8]) -> Option<Connection> {
        let mut connections = lock(&self.connections);
        let key = (peer, alpn.to_vec());
        match connections.get(&key) {
            Some(conn) if conn.close_reason().is_none() => Some(conn.clone()),
            Some(_) => {
                connections.remove(&key);
                None
            }
            None => None,
        }
    }

    /// An open connection to `peer` for `alpn`: the cached one, else a new one.
    async fn connection(
        &self,
        peer: PeerId,
        alpn: &[u8],
        hints: Option<PeerAddrs>,
    ) -> Result<Connection> {
        if let Some(conn) = self.cached(peer, alpn) {
            return Ok(conn);
        }
        let conn = match hints {
            Some(addrs) => self.node.connect(peer, addrs, alpn).await?,
            None => {
                // A peer this node already has a direct path to (a connection on another
                // protocol, a punched path) is dialled there first, before any lookup.
                let direct = self
                    .node
                    .paths()
                    .into_iter()
                    .find(|p| p.peer == peer)
                    .and_then(|p| p.direct);
                let known = match direct {
                    Some(addr) => {
                        let addrs = PeerAddrs {
                            addrs: vec![addr],
                            relay: None,
                        };
                        self.node.connect(peer, addrs, alpn).await.ok()
                    }
                    None => None,
                };
                match known {
                    Some(conn) => conn,
                    None => self.node.connect_by_id(peer, alpn).await?,
                }
            }
        };
        let mut connections = lock(&self.connections);
        connections.retain(|_, c| c.close_reason().is_none());
        if connections.len() >= MAX_CONNECTIONS {
            conn.close(close_code::SHUTDOWN, b"too many connections");
            return Err(ApiError::TooMany(format!(
                "at most {MAX_CONNECTIONS} open connections"
            )));
        }
        // Two callers may have connected at once: keep the first, use it.
        let kept = connections
            .entry((peer, alpn.to_vec()))
            .or_insert_with(|| conn.clone())
            .clone();
        if kept.quinn().stable_id() != conn.quinn().stable_id() {
            conn.close(close_code::SHUTDOWN, b"duplicate");
        }
        Ok(kept)
    }

    /// Every open connection, dialled or accepted.
    fn open_connections(&self) -> Vec<Connection> {
        let mut open: Vec<Connection> = lock(&self.connections)
            .values()
            .filter(|c| c.close_reason().is_none())
            .cloned()
            .collect();
        open.extend(self.incoming.open());
        open
    }

    fn peer_info(&self, peer: PeerId) -> PeerInfo {
        let path = self.node.paths().into_iter().find(|p| p.peer == peer);
        let mut protocols: Vec<String> = Vec::new();
        let mut rtt_us = None;
        for conn in self.open_connections() {
            if conn.remote_peer() == peer {
                protocols.push(String::from_utf8_lossy(conn.alpn()).into_owned());
                rtt_us = Some(conn.rtt().as_micros() as u64);
            }
        }
        protocols.sort();
        protocols.dedup();
        PeerInfo {
            peer_id: peer,
            route: path.as_ref().map_or("none", |p| p.route).to_owned(),
            direct_addr: path.as_ref().and_then(|p| p.direct),
            direct_rtt_us: path.as_ref().and_then(|p| p.direct_rtt_us),
            relay_addr: path.as_ref().and_then(|p| p.relay),
            protocols,
            rtt_us,
        }
    }

    async fn resolve_target(&self, target: Target) -> Result<(PeerId, Option<PeerAddrs>)> {
        match target {
            Target::Peer { peer, hints } => Ok((peer, hints)),
            Target::Name(name) => {
                let record = self.node.resolve_name(&name).await?;
                let mut last = None;
                for peer in record.nodes.iter().take(8) {
                    match self.node.find(*peer).await {
                        Ok(addrs) => return Ok((*peer, Some(addrs))),
                        Err(error) => last = Some(error),
                    }
                }
                Err(last.map_or_else(
                    || ApiError::Name(format!("{name} lists no node keys")),
                    ApiError::from,
                ))
            }
        }
    }
}

fn stream(
    peer: PeerId,
    alpn: &[u8],
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> PeerStream {
    PeerStream {
        peer,
        alpn: String::from_utf8_lossy(alpn).into_owned(),
        send: Box::new(QuicSend(send)),
        recv: Box::new(recv),
    }
}

/// A QUIC stream's sending half: chunks go to quinn as they are (it keeps them until the peer
/// acknowledges them) instead of being copied as `poll_write` does.
struct QuicSend(quinn::SendStream);

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

impl ChunkWrite for QuicSend {
    fn write_chunk(&mut self, chunk: Bytes) -> WriteChunk<'_> {
        Box::pin(async move { self.0.write_chunk(chunk).await.map_err(Into::into) })
    }

    fn write_chunks(&mut self, mut chunks: Vec<Bytes>) -> WriteChunk<'_> {
        Box::pin(async move {
            self.0
                .write_all_chunks(&mut chunks)
                .await
                .map_err(Into::into)
        })
    }
}

#[async_trait]
impl TransportApi for TransportService {
    async fn status(&self) -> Result<NodeStatus> {
        let dht = match self.node.dht() {
            Some(dht) => Some(
                dht.status()
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        let addrs = self.node.addrs();
        Ok(NodeStatus {
            peer_id: self.node.peer_id(),
            local_addr: self.node.endpoint().local_addr(),
            candidates: addrs.addrs,
            relays: self.node.registered_relays(),
            relaying: self.node.is_relay(),
            nat: self.node.nat_status(),
            dht,
            protocols: self
                .node
                .protocols()
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect(),
        })
    }

    async fn nat_status(&self) -> Result<NatStatus> {
        Ok(self.node.nat_status())
    }

    async fn dht_status(&self) -> Result<DhtStatus> {
        let dht = self
            .node
            .dht()
            .ok_or_else(|| ApiError::FailedPrecondition("this node runs without a DHT".into()))?;
        dht.status()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    async fn connect(&self, target: Target) -> Result<Connected> {
        let started = Instant::now();
        let (peer, hints) = self.resolve_target(target).await?;
        let conn = self.connection(peer, PING_ALPN, hints).await?;
        let connect = started.elapsed();
        let ping_started = Instant::now();
        let nonce: [u8; 16] = rand::random();
        let (mut send, mut recv) = conn.open_bi().await?;
        let lost =
            |e: &dyn std::fmt::Display| ApiError::ConnectionLost(format!("ping {peer}: {e}"));
        send.write_all(&nonce).await.map_err(|e| lost(&e))?;
        send.finish().map_err(|e| lost(&e))?;
        let mut echo = [0u8; 16];
        recv.read_exact(&mut echo).await.map_err(|e| lost(&e))?;
        if echo != nonce {
            return Err(ApiError::ConnectionLost(format!(
                "ping {peer}: the echo does not match"
            )));
        }
        Ok(Connected {
            peer: self.peer_info(peer),
            connect,
            ping: ping_started.elapsed(),
        })
    }

    async fn peers(&self) -> Result<Vec<PeerInfo>> {
        let mut peers: Vec<PeerId> = self.node.paths().iter().map(|p| p.peer).collect();
        peers.extend(self.open_connections().iter().map(Connection::remote_peer));
        peers.sort_by_key(|p| *p.as_bytes());
        peers.dedup();
        Ok(peers.into_iter().map(|p| self.peer_info(p)).collect())
    }

    async fn resolve_name(&self, name: String) -> Result<NameRecord> {
        Ok(self.node.resolve_name(&name).await?)
    }

    async fn announce(&self, topic: NodeId) -> Result<usize> {
        Ok(self.node.announce_topic(topic).await?)
    }

    async fn lookup(&self, topic: NodeId) -> Result<Vec<TopicPeer>> {
        Ok(self
            .node
            .lookup_topic(topic)
            .await?
            .into_iter()
            .map(|r| TopicPeer {
                peer_id: r.peer,
                addrs: r.addrs,
                relays: r.relays,
            })
            .collect())
    }

    async fn open_stream(
        &self,
        peer: PeerId,
        alpn: String,
        hints: Option<PeerAddrs>,
    ) -> Result<PeerStream> {
        check_protocol(&alpn)?;
        let conn = self.connection(peer, alpn.as_bytes(), hints).await?;
        match conn.open_bi().await {
            Ok((send, recv)) => Ok(stream(peer, alpn.as_bytes(), send, recv)),
            Err(error) => {
                // The cached connection died under us: one fresh try.
                debug!(%peer, %error, "cached connection lost, reconnecting");
                lock(&self.connections).remove(&(peer, alpn.as_bytes().to_vec()));
                let conn = self.connection(peer, alpn.as_bytes(), None).await?;
                let (send, recv) = conn.open_bi().await?;
                Ok(stream(peer, alpn.as_bytes(), send, recv))
            }
        }
    }

    async fn listen(&self, alpn: String) -> Result<Listener> {
        check_protocol(&alpn)?;
        if alpn.as_bytes() == PING_ALPN {
            return Err(ApiError::ProtocolTaken(format!(
                "protocol {alpn} is the node's own"
            )));
        }
        let (tx, rx) = mpsc::channel(LISTENER_BACKLOG);
        self.node.add_protocol(
            alpn.as_bytes(),
            Streams {
                streams: tx,
                incoming: self.incoming.clone(),
            },
        )?;
        let guard = Unregister {
            node: self.node.clone(),
            alpn: alpn.clone().into_bytes(),
        };
        Ok(Listener::new(alpn, rx, guard))
    }
}

/// Stops serving a protocol when its listener is dropped.
struct Unregister {
    node: Node,
    alpn: Vec<u8>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.node.remove_protocol(&self.alpn);
    }
}

/// Hands every stream peers open on a connection to the listener.
struct Streams {
    streams: mpsc::Sender<PeerStream>,
    incoming: Incoming,
}

#[async_trait]
impl ProtocolHandler for Streams {
    async fn accept(&self, conn: Connection) {
        self.incoming.add(&conn);
        let peer = conn.remote_peer();
        loop {
            let (send, recv) = tokio::select! {
                accepted = conn.accept_bi() => match accepted {
                    Ok(pair) => pair,
                    Err(_) => return,
                },
                _ = self.streams.closed() => {
                    conn.close(close_code::SHUTDOWN, b"protocol no longer served");
                    return;
                }
            };
            if self
                .streams
                .send(stream(peer, conn.alpn(), send, recv))
                .await
                .is_err()
            {
                conn.close(close_code::SHUTDOWN, b"protocol no longer served");
                return;
            }
        }
    }
}

/// The ping protocol: echo up to [`MAX_PING_BYTES`] per stream.
struct Ping {
    incoming: Incoming,
}

#[async_trait]
impl ProtocolHandler for Ping {
    async fn accept(&self, conn: Connection) {
        self.incoming.add(&conn);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let Ok(data) = recv.read_to_end(MAX_PING_BYTES).await else {
                    return;
                };
                if send.write_all(&data).await.is_ok() {
                    let _ = send.finish();
                }
            });
        }
    }
}
