//! The transport service's API: the trait every implementation and every client speaks, its
//! domain types and its typed errors.
//!
//! [`crate::service::TransportService`] implements it over a running [`crate::Node`];
//! [`crate::grpc::RemoteTransport`] implements it over gRPC. A caller holds a
//! [`TransportClient`] and cannot tell which: streams to peers are the same
//! [`PeerStream`] (an `AsyncRead` and a [`ChunkWrite`]) either way, and errors are the same
//! [`ApiError`] variants.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::dht::{DhtStatus, NodeId};
use crate::discovery::NameRecord;
use crate::error::TransportError;
use crate::node::nat::NatStatus;
use crate::node::{PeerAddrs, RelayAddr};
use crate::peer::PeerId;
#[doc(no_inline)]
pub use kith_service::stream::ChunkWrite;

/// The built-in protocol every node serves: each bidirectional stream echoes up to
/// [`MAX_PING_BYTES`] and finishes. `kith peer connect` measures its round trip.
pub const PING_ALPN: &[u8] = b"kith/ping/1";
/// Largest ping payload echoed.
pub const MAX_PING_BYTES: usize = 64;

kith_service::service_error! {
    /// Everything a transport API call can fail with, for local and remote callers alike.
    pub enum ApiError {
        /// A request field is malformed (peer id, address, protocol name, ...).
        InvalidArgument => (InvalidArgument, "invalid_argument"),
        /// No way to reach the peer (no relay, no answer, handshake failed).
        Unreachable => (Unavailable, "unreachable"),
        /// The peer at the address proved another key; refused in the handshake.
        WrongPeer => (PermissionDenied, "wrong_peer"),
        /// The peer does not serve the protocol.
        ProtocolRefused => (FailedPrecondition, "protocol_refused"),
        /// This node already serves the protocol (one listener per protocol).
        ProtocolTaken => (AlreadyExists, "protocol_taken"),
        /// A name could not be resolved to an identity and its nodes.
        Name => (NotFound, "name"),
        /// Nothing is known under that id (an incoming stream already taken or expired, ...).
        NotFound => (NotFound, "not_found"),
        /// The node runs without that part (no DHT).
        FailedPrecondition => (FailedPrecondition, "failed_precondition"),
        /// The connection to the peer was lost.
        ConnectionLost => (Unavailable, "connection_lost"),
        /// Too many pending streams, listeners or peers.
        TooMany => (ResourceExhausted, "too_many"),
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl From<TransportError> for ApiError {
    fn from(error: TransportError) -> Self {
        let message = kith_service::error_chain(&error);
        match error {
            TransportError::InvalidPeerId(_) | TransportError::InvalidAlpn => {
                ApiError::InvalidArgument(message)
            }
            TransportError::Bind { .. } | TransportError::Config(_) => ApiError::Internal(message),
            TransportError::Connect { .. }
            | TransportError::Handshake { .. }
            | TransportError::Unreachable { .. } => ApiError::Unreachable(message),
            TransportError::WrongPeer { .. } => ApiError::WrongPeer(message),
            TransportError::ProtocolRefused { .. } => ApiError::ProtocolRefused(message),
            TransportError::Connection(_) | TransportError::Protocol(_) => {
                ApiError::ConnectionLost(message)
            }
            TransportError::Name { .. } => ApiError::Name(message),
            TransportError::ProtocolTaken(_) => ApiError::ProtocolTaken(message),
            TransportError::Closed => ApiError::Unavailable(message),
            TransportError::NoDht => ApiError::FailedPrecondition(message),
            TransportError::Dht(crate::dht::DhtError::NoContacts) => ApiError::Unreachable(message),
            TransportError::Dht(_) => ApiError::Internal(message),
        }
    }
}

/// Checks a protocol name: 1 to 255 bytes (TLS ALPN), printable ASCII.
pub fn check_protocol(alpn: &str) -> Result<()> {
    if alpn.is_empty() || alpn.len() > 255 || !alpn.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidArgument(format!(
            "protocol name {alpn:?} must be 1 to 255 printable ASCII characters"
        )));
    }
    Ok(())
}

/// Everything public about this node's transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub peer_id: PeerId,
    /// Where the socket is bound.
    pub local_addr: SocketAddr,
    /// Addresses peers may try (local and observed public ones).
    pub candidates: Vec<SocketAddr>,
    /// Relays this node is registered with now.
    pub relays: Vec<RelayAddr>,
    /// Whether this node relays for others.
    pub relaying: bool,
    pub nat: NatStatus,
    /// `None` when the node runs without a DHT.
    pub dht: Option<DhtStatus>,
    /// Protocols served.
    pub protocols: Vec<String>,
}

/// Whom to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A peer by key; with hints (addresses, relay) the node uses them instead of looking the
    /// peer up.
    Peer {
        peer: PeerId,
        hints: Option<PeerAddrs>,
    },
    /// A name such as `alice.example.com` (DNS TXT under `_kith.<name>`).
    Name(String),
}

/// A peer this node has a path or a connection to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// `direct`, `relay` or `none`.
    pub route: String,
    pub direct_addr: Option<SocketAddr>,
    /// The round trip that proved the direct path, in microseconds.
    pub direct_rtt_us: Option<u64>,
    pub relay_addr: Option<SocketAddr>,
    /// Protocols of the open connections to it.
    pub protocols: Vec<String>,
    /// QUIC's smoothed round trip of its connection, in microseconds.
    pub rtt_us: Option<u64>,
}

/// A peer announced under a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicPeer {
    pub peer_id: PeerId,
    /// Its direct addresses, as it announced them.
    pub addrs: Vec<SocketAddr>,
    /// The relays it is reachable through (by peer id; `connect` finds their addresses).
    pub relays: Vec<PeerId>,
}

/// What `connect` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Connected {
    pub peer: PeerInfo,
    /// From the start of the call until the connection was up.
    #[serde(serialize_with = "micros")]
    pub connect: Duration,
    /// The ping's round trip.
    #[serde(serialize_with = "micros")]
    pub ping: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

/// The sending half of a [`PeerStream`]: an `AsyncWrite` that also takes owned chunks
/// ([`ChunkWrite::write_chunk`]), without a copy where the stream is QUIC.
pub type StreamWriter = kith_service::stream::BoxChunkWrite;
/// The receiving half of a [`PeerStream`].
pub type StreamReader = Box<dyn AsyncRead + Send + Unpin>;

/// A bidirectional stream to a peer, over QUIC in-process or relayed through gRPC. Shutting
/// the writer down (`AsyncWriteExt::shutdown`) finishes our direction; the reader ends when the
/// peer finished its. A stream opened with `open_stream` reaches the peer with its first byte.
pub struct PeerStream {
    /// The authenticated peer.
    pub peer: PeerId,
    /// The protocol.
    pub alpn: String,
    pub send: StreamWriter,
    pub recv: StreamReader,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.peer)
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

/// Streams peers open on a protocol this node serves. Dropping it stops serving the protocol.
pub struct Listener {
    alpn: String,
    streams: mpsc::Receiver<PeerStream>,
    _guard: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// `guard` is dropped with the listener (it unregisters the protocol).
    pub fn new(
        alpn: String,
        streams: mpsc::Receiver<PeerStream>,
        guard: impl Send + Sync + 'static,
    ) -> Self {
        Self {
            alpn,
            streams,
            _guard: Box::new(guard),
        }
    }

    /// The protocol served.
    pub fn alpn(&self) -> &str {
        &self.alpn
    }

    /// The next stream a peer opened, or `None` once the service stopped serving it.
    pub async fn accept(&mut self) -> Option<PeerStream> {
        self.streams.recv().await
    }
}

/// The transport service. Implemented by [`crate::service::TransportService`] (in-process) and
/// by the gRPC remote client.
#[async_trait]
pub trait TransportApi: Send + Sync + 'static {
    async fn status(&self) -> Result<NodeStatus>;
    async fn nat_status(&self) -> Result<NatStatus>;
    /// Fails with `FailedPrecondition` when the node runs without a DHT.
    async fn dht_status(&self) -> Result<DhtStatus>;
    /// Connects (reusing an open connection) and pings the peer over [`PING_ALPN`].
    async fn connect(&self, target: Target) -> Result<Connected>;
    /// Peers with a path or a connection, sorted by id.
    async fn peers(&self) -> Result<Vec<PeerInfo>>;
    async fn resolve_name(&self, name: String) -> Result<NameRecord>;
    /// Announces this node under a topic's DHT key ([`crate::dht::topic_key`] of the topic's
    /// secret: the service never sees the secret). Returns how many DHT nodes stored it.
    async fn announce(&self, topic: NodeId) -> Result<usize>;
    /// The peers announced under a topic's DHT key.
    async fn lookup(&self, topic: NodeId) -> Result<Vec<TopicPeer>>;
    /// Opens a stream to `peer` for protocol `alpn`, connecting first if needed.
    async fn open_stream(
        &self,
        peer: PeerId,
        alpn: String,
        hints: Option<PeerAddrs>,
    ) -> Result<PeerStream>;
    /// Starts serving `alpn`: every stream a peer opens on it arrives at the listener.
    async fn listen(&self, alpn: String) -> Result<Listener>;
}

/// The client every caller of the transport service holds, in-process or remote.
pub type TransportClient = kith_service::Client<dyn TransportApi>;

impl kith_service::RemoteApi for dyn TransportApi {
    fn remote(connection: kith_service::Connection) -> Arc<Self> {
        Arc::new(crate::grpc::RemoteTransport::new(connection))
    }
}
